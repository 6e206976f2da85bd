"""`quotad.Client`: the Quota service for workers and tool runtimes (blocking API).

Every call that carries a client id (Reserve, Commit, Release, sessions, usage reports)
is retried on UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED with the same id, since quotad
answers a repeated id with the first outcome; reads are retried too.
"""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from typing import Callable

from . import _convert as cv
from . import models as m
from ._connection import Connection
from .meter import Meter
from .reservation import Reservation
from .session import Session
from .v1 import quotad_pb2 as pb
from .v1 import quotad_pb2_grpc as pb_grpc
from .watch import Watch


class Client(Connection):
    """A connection to quotad's Quota service. Thread-safe; use one per process, as a
    context manager or with `close()`::

        with quotad.Client() as client:
            with client.reserve("acme", "gpu.shared.a10", 60_000) as r:
                run_job()
                r.commit(45_000)

    See `Connection.__init__` for the address, token, TLS and retry arguments.
    """

    @cached_property
    def stub(self) -> pb_grpc.QuotaStub:
        """The generated stub, for calls this class does not wrap."""
        return pb_grpc.QuotaStub(self.channel)

    def reserve(
        self,
        account: str,
        sku: str,
        quantity: int,
        resource: cv.ResourceArg | None = None,
        ttl_ms: int | None = None,
        reservation_id: str | None = None,
    ) -> Reservation:
        """A hold on the cost of `quantity` (GPU ms, bytes, requests) of `sku`, made when
        the block is entered (or by `Reservation.open()`); raises `quotad.Denied` if the
        account cannot pay. In the block, `r.commit(actual)` charges what was used;
        leaving it by an exception releases the hold; leaving it without a commit
        commits the reserved quantity (or, after `r.meter()`, what was reported).

        resource: default GPU_SHARED. ttl_ms: the hold's lifetime (default: quotad's,
        5 min). reservation_id: default a new UUID; retries reuse it.
        """
        return Reservation(
            self,
            account=account,
            sku=sku,
            quantity=quantity,
            resource=cv.resource_in(resource),
            ttl_ms=ttl_ms or 0,
            reservation_id=reservation_id or cv.new_id(),
        )

    def commit(self, reservation_id: str, quantity: int) -> m.Committed:
        """Charges `quantity` of an open reservation (by id) and releases the rest."""
        req = pb.CommitRequest(reservation_id=reservation_id, quantity=quantity)
        return cv.committed_out(self._call(self.stub.Commit, req))

    def release(self, reservation_id: str) -> Decimal:
        """Releases a reservation (by id) without charging; returns what it held."""
        req = pb.ReleaseRequest(reservation_id=reservation_id)
        return cv.money_out(self._call(self.stub.Release, req).released)

    def admit(
        self,
        account: str,
        sku: str,
        quantity: int,
        resource: cv.ResourceArg | None = None,
    ) -> m.Admission:
        """Whether work of this size could start now; holds nothing (see `reserve`)."""
        req = pb.AdmitRequest(
            account_id=account, resource=cv.resource_in(resource), sku=sku, quantity=quantity
        )
        return cv.admission_out(self._call(self.stub.Admit, req))

    def balance(self, account: str) -> m.Balance:
        """The account now: status, balance, available, held, grants, sessions, streams."""
        req = pb.GetBalanceRequest(account_id=account)
        return cv.balance_out(self._call(self.stub.GetBalance, req))

    def meter(
        self,
        account: str,
        work_id: str,
        sku: str,
        resource: cv.ResourceArg | None = None,
        *,
        on_stop: Callable[[m.Decision], None] | None = None,
        interval_ms: int | None = None,
        gpus: int = 1,
    ) -> Meter:
        """A usage stream for a running Shared-Edition job (a context manager): report
        GPU ms with `m.report(ms)`, or `m.start(interval_ms)` to report elapsed time from
        a thread; stop the job when `m.stopped` (`on_stop` is called once, with the STOP
        decision). Closing settles the job. A `work_id` that is an open reservation's id
        takes over its hold (`Reservation.meter()` does that for you). With
        `interval_ms`, entering the block starts the background mode (`m.start`)."""
        return Meter(
            self,
            account=account,
            work_id=work_id,
            sku=sku,
            resource=cv.resource_in(resource),
            on_stop=on_stop,
            background=(interval_ms, gpus),
        )

    def session(
        self,
        account: str,
        session_id: str,
        sku: str,
        auto_shutdown: bool = True,
        idle_timeout_ms: int | None = None,
        *,
        busy: Callable[[], bool] | None = None,
        heartbeat_interval_ms: int | None = None,
        on_stop: Callable[[m.Heartbeat], None] | None = None,
    ) -> Session:
        """An Exclusive-Edition session (a context manager): started on entering (raises
        `quotad.Denied`), kept alive by heartbeats from a thread, stopped on leaving.
        `busy()` says whether the instance is working (default: always, while the block
        runs); with auto-shutdown on, quotad stops an instance not busy for
        `idle_timeout_ms` (default 20 min), and `on_stop` is called with the heartbeat
        that said so."""
        return Session(
            self,
            account=account,
            session_id=session_id,
            sku=sku,
            auto_shutdown=auto_shutdown,
            idle_timeout_ms=idle_timeout_ms or 0,
            busy=busy,
            heartbeat_interval_ms=heartbeat_interval_ms,
            on_stop=on_stop,
        )

    def heartbeat(self, session_id: str, busy: bool) -> m.Heartbeat:
        """One heartbeat of a session (by id); `Session` sends them for you."""
        req = pb.HeartbeatRequest(session_id=session_id, busy=busy)
        return cv.heartbeat_out(self._call(self.stub.Heartbeat, req))

    def stop_session(self, session_id: str) -> m.SessionStopped:
        """Stops a session (by id) and bills it up to now; repeating it is harmless."""
        req = pb.StopSessionRequest(session_id=session_id)
        return cv.session_stopped_out(self._call(self.stub.StopSession, req))

    def report_storage(self, account: str, bytes_stored: int, at_ms: int | None = None) -> None:
        """The account's stored bytes from `at_ms` on (default now): a level, not a delta."""
        req = pb.ReportStorageRequest(
            account_id=account, bytes_stored=bytes_stored, at_ms=at_ms or 0
        )
        self._call(self.stub.ReportStorage, req)

    def watch(self, account: str) -> Watch:
        """The account's events as they happen: an iterator (and context manager) that
        is subscribed when this returns, so no event after it is missed. Iteration
        blocks; `close()` from another thread ends it."""
        return Watch(self, account)
