"""A reservation as an async context manager; the rules of the blocking
`quotad.reservation` (an exception releases, no commit commits the reserved quantity or
what a meter reported)."""

from __future__ import annotations

import logging
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING

from .. import _convert as cv
from .. import models as m
from ..errors import Denied, Error
from ..reservation import State
from ..v1 import quotad_pb2 as pb
from .meter import Meter
from .meter import OnStop as MeterOnStop

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("quotad")


class Reservation:
    """A hold on an account's money for one job (see `quotad.aio.Client.reserve`)."""

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
        self.id = reservation_id
        self.account = account
        self.sku = sku
        self.quantity = quantity
        self.resource = cv.enum_out(m.Resource, pb.Resource, resource)
        self.ttl_ms = ttl_ms
        self.state = State.NEW
        self.held = Decimal(0)
        self.available = Decimal(0)
        self.currency = ""
        self.expires_at_ms = 0
        self.fail_open = False
        self.committed: m.Committed | None = None
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

    async def open(self) -> Reservation:
        """Reserves (what entering the block does); raises `quotad.Denied`."""
        if self.state is not State.NEW:
            raise Error(f"reservation {self.id} is {self.state.value} already")
        r = await self._client._call(self._client.stub.Reserve, self._request)
        self.available = cv.money_out(r.available)
        self.currency = r.available.currency or r.held.currency
        if not r.admitted:
            reason = cv.reason_out(r.reason) or m.DenyReason.UNSPECIFIED
            raise Denied(f"reservation {self.id}", reason, self.available, self.currency)
        self.held = cv.money_out(r.held)
        self.expires_at_ms = r.expires_at_ms
        self.fail_open = r.fail_open
        self.state = State.OPEN
        return self

    async def commit(self, quantity: int | None = None) -> m.Committed | None:
        """Charges `quantity` (default: reserved, or what meters reported); see the
        blocking `Reservation.commit`."""
        if self.state is State.RELEASED:
            raise Error(f"reservation {self.id} was released")
        if self._meter_reconnected and quantity is None:
            self.state = State.COMMITTED
            return None
        if quantity is None:
            quantity = self.reported if self._metered else self.quantity
        req = pb.CommitRequest(reservation_id=self.id, quantity=quantity)
        r = await self._client._call(self._client.stub.Commit, req)
        self.committed = cv.committed_out(r)
        self.state = State.COMMITTED
        return self.committed

    async def release(self) -> Decimal:
        """Gives the hold back without charging; returns what it held."""
        if self.state is State.COMMITTED:
            raise Error(f"reservation {self.id} was committed")
        req = pb.ReleaseRequest(reservation_id=self.id)
        r = await self._client._call(self._client.stub.Release, req)
        self.state = State.RELEASED
        return cv.money_out(r.released)

    def meter(
        self,
        *,
        on_stop: MeterOnStop | None = None,
        interval_ms: int | None = None,
        gpus: int = 1,
    ) -> Meter:
        """A usage stream for this reservation's job (see the blocking one)."""
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

    async def __aenter__(self) -> Reservation:
        return await self.open() if self.state is State.NEW else self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state is not State.OPEN:
            return
        if exc_type is None:
            await self.commit()
            return
        try:
            if self._metered:
                await self.commit()
            else:
                await self.release()
        except Error as e:
            log.warning(
                "reservation %s not settled after %s: %s (its hold expires at its TTL)",
                self.id,
                exc_type.__name__,
                e,
            )
