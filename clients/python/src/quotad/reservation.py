"""A reservation as a context manager: reserve on entry, commit or release on exit.

quotad's Reserve / Commit / Release are two-phase: the hold keeps money aside so the job
cannot be starved halfway, and the commit charges what was actually used. The rules on
leaving the block are the ones that lose nothing and charge nothing twice:

- an exception releases the hold (the job did not run to the end; a metered job's
  reports were charged already and its commit is confirmed instead);
- no exception and no commit commits the reserved quantity, or what a meter reported;
- an explicit `commit()` or `release()` in the block is final.
"""

from __future__ import annotations

import enum
import logging
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Callable

from . import _convert as cv
from . import models as m
from .errors import Denied, Error
from .meter import Meter
from .v1 import quotad_pb2 as pb

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("quotad")


class State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    COMMITTED = "committed"
    RELEASED = "released"


class Reservation:
    """A hold on an account's money for one job (see `Client.reserve`)."""

    def __init__(
        self,
        client: Client,
        *,
        account: str,
        sku: str,
        quantity: int,
        resource: pb.Resource.ValueType,
        ttl_ms: int,
        reservation_id: str,
    ) -> None:
        self._client = client
        #: The reservation id: the key of every retry and of the job's charges.
        self.id = reservation_id
        self.account = account
        self.sku = sku
        self.quantity = quantity
        self.resource = cv.enum_out(m.Resource, pb.Resource, resource)
        self.ttl_ms = ttl_ms
        self.state = State.NEW
        #: Set by `open()`: what is held, what the account could still pay, in currency.
        self.held = Decimal(0)
        self.available = Decimal(0)
        self.currency = ""
        self.expires_at_ms = 0
        #: Admitted from a fail-open budget while the ledger was unreachable.
        self.fail_open = False
        #: Set by `commit()` (None after a release, or a metered job whose stream broke).
        self.committed: m.Committed | None = None
        #: GPU ms reported by meters of this reservation, and whether any ran.
        self.reported = 0
        self._metered = False
        self._meter_reconnected = False
        self._request = pb.ReserveRequest(
            account_id=account,
            reservation_id=reservation_id,
            resource=resource,
            sku=sku,
            quantity=quantity,
            ttl_ms=ttl_ms,
        )

    def __repr__(self) -> str:
        return (
            f"Reservation(id={self.id!r}, account={self.account!r}, sku={self.sku!r}, "
            f"quantity={self.quantity}, state={self.state.value}, held={self.held})"
        )

    def open(self) -> Reservation:
        """Reserves (what entering the block does); raises `quotad.Denied`."""
        if self.state is not State.NEW:
            raise Error(f"reservation {self.id} is {self.state.value} already")
        r = self._client._call(self._client.stub.Reserve, self._request)
        self._opened(r)
        return self

    def _opened(self, r: pb.ReserveResponse) -> None:
        self.available = cv.money_out(r.available)
        self.currency = r.available.currency or r.held.currency
        if not r.admitted:
            reason = cv.reason_out(r.reason) or m.DenyReason.UNSPECIFIED
            raise Denied(f"reservation {self.id}", reason, self.available, self.currency)
        self.held = cv.money_out(r.held)
        self.expires_at_ms = r.expires_at_ms
        self.fail_open = r.fail_open
        self.state = State.OPEN

    def _settle_quantity(self, quantity: int | None) -> int:
        if quantity is not None:
            return quantity
        return self.reported if self._metered else self.quantity

    def commit(self, quantity: int | None = None) -> m.Committed | None:
        """Charges `quantity` (default: the reserved quantity, or what this reservation's
        meters reported) and releases the rest of the hold. Repeating it with the same
        quantity returns the first answer. Returns None for a metered job whose stream
        had to reconnect: its first stream's end settled the reservation, and the
        reports were charged as they came."""
        if self.state is State.RELEASED:
            raise Error(f"reservation {self.id} was released")
        if self._meter_reconnected and quantity is None:
            self.state = State.COMMITTED
            return None
        req = pb.CommitRequest(reservation_id=self.id, quantity=self._settle_quantity(quantity))
        self.committed = cv.committed_out(self._client._call(self._client.stub.Commit, req))
        self.state = State.COMMITTED
        return self.committed

    def release(self) -> Decimal:
        """Gives the hold back without charging; returns what it held."""
        if self.state is State.COMMITTED:
            raise Error(f"reservation {self.id} was committed")
        req = pb.ReleaseRequest(reservation_id=self.id)
        released = cv.money_out(self._client._call(self._client.stub.Release, req).released)
        self.state = State.RELEASED
        return released

    def meter(
        self,
        *,
        on_stop: Callable[[m.Decision], None] | None = None,
        interval_ms: int | None = None,
        gpus: int = 1,
    ) -> Meter:
        """A usage stream for this reservation's job: it takes over the hold, reports are
        charged as they come, and leaving this reservation's block afterwards commits
        the reported total."""
        return Meter(
            self._client,
            account=self.account,
            work_id=self.id,
            sku=self.sku,
            resource=self._request.resource,
            on_stop=on_stop,
            reservation=self,
            background=(interval_ms, gpus),
        )

    def _meter_closed(self, reported: int, reconnected: bool) -> None:
        self._metered = True
        self.reported += reported
        self._meter_reconnected = self._meter_reconnected or reconnected

    def __enter__(self) -> Reservation:
        return self.open() if self.state is State.NEW else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state is not State.OPEN:
            return
        if exc_type is None:
            self.commit()
            return
        try:
            if self._metered:
                self.commit()
            else:
                self.release()
        except Error as e:
            # The block's own exception matters more; the hold expires at its TTL.
            log.warning(
                "reservation %s not settled after %s: %s (its hold expires at its TTL)",
                self.id,
                exc_type.__name__,
                e,
            )
