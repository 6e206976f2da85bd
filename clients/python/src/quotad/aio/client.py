"""`quotad.aio.Client`: the Quota service on asyncio, the same API as `quotad.Client`
with coroutines, async context managers and async iterators."""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property

from .. import _convert as cv
from .. import models as m
from ..v1 import quotad_pb2 as pb
from ..v1 import quotad_pb2_grpc as pb_grpc
from ._connection import Connection
from .meter import Meter
from .meter import OnStop as MeterOnStop
from .reservation import Reservation
from .session import Busy, Session
from .session import OnStop as SessionOnStop
from .watch import Watch


class Client(Connection):
    """A connection to quotad's Quota service for asyncio servers::

        async with quotad.aio.Client() as client:
            async with client.reserve("acme", "gpu.shared.a10", 60_000) as r:
                await run_job()
                await r.commit(45_000)

    Callbacks (`on_stop`, `busy`) may be plain functions or coroutine functions.
    """

    @cached_property
    def stub(self) -> pb_grpc.QuotaAsyncStub:
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
        """A hold made when the block is entered (or by `await r.open()`); see
        `quotad.Client.reserve`."""
        return Reservation(
            self,
            account=account,
            sku=sku,
            quantity=quantity,
            resource=cv.resource_in(resource),
            ttl_ms=ttl_ms or 0,
            reservation_id=reservation_id or cv.new_id(),
        )

    async def commit(self, reservation_id: str, quantity: int) -> m.Committed:
        req = pb.CommitRequest(reservation_id=reservation_id, quantity=quantity)
        return cv.committed_out(await self._call(self.stub.Commit, req))

    async def release(self, reservation_id: str) -> Decimal:
        req = pb.ReleaseRequest(reservation_id=reservation_id)
        return cv.money_out((await self._call(self.stub.Release, req)).released)

    async def admit(
        self,
        account: str,
        sku: str,
        quantity: int,
        resource: cv.ResourceArg | None = None,
    ) -> m.Admission:
        req = pb.AdmitRequest(
            account_id=account, resource=cv.resource_in(resource), sku=sku, quantity=quantity
        )
        return cv.admission_out(await self._call(self.stub.Admit, req))

    async def balance(self, account: str) -> m.Balance:
        req = pb.GetBalanceRequest(account_id=account)
        return cv.balance_out(await self._call(self.stub.GetBalance, req))

    def meter(
        self,
        account: str,
        work_id: str,
        sku: str,
        resource: cv.ResourceArg | None = None,
        *,
        on_stop: MeterOnStop | None = None,
        interval_ms: int | None = None,
        gpus: int = 1,
    ) -> Meter:
        """A usage stream (an async context manager); see `quotad.Client.meter`."""
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
        busy: Busy | None = None,
        heartbeat_interval_ms: int | None = None,
        on_stop: SessionOnStop | None = None,
    ) -> Session:
        """An Exclusive session (an async context manager); see `quotad.Client.session`."""
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

    async def heartbeat(self, session_id: str, busy: bool) -> m.Heartbeat:
        req = pb.HeartbeatRequest(session_id=session_id, busy=busy)
        return cv.heartbeat_out(await self._call(self.stub.Heartbeat, req))

    async def stop_session(self, session_id: str) -> m.SessionStopped:
        req = pb.StopSessionRequest(session_id=session_id)
        return cv.session_stopped_out(await self._call(self.stub.StopSession, req))

    async def report_storage(
        self, account: str, bytes_stored: int, at_ms: int | None = None
    ) -> None:
        req = pb.ReportStorageRequest(
            account_id=account, bytes_stored=bytes_stored, at_ms=at_ms or 0
        )
        await self._call(self.stub.ReportStorage, req)

    def watch(self, account: str) -> Watch:
        """The account's events: `async with client.watch(a) as events` subscribes before
        the block runs; `async for` alone subscribes at the first event awaited."""
        return Watch(self, account)
