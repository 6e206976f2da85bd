"""A usage stream for a running job, on asyncio: the protocol of the blocking
`quotad.meter` (one report in flight, resent with the same seq on a new stream after a
break), with the background mode as a task."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Union

import grpc
import grpc.aio

from .. import _convert as cv
from .. import models as m
from ..errors import Error, from_rpc_error
from ..v1 import quotad_pb2 as pb
from ._connection import maybe_await

if TYPE_CHECKING:
    from .client import Client
    from .reservation import Reservation

log = logging.getLogger("quotad")

OnStop = Callable[[m.Decision], Union[Awaitable[None], None]]


class Meter:
    """Meters one job (see `quotad.aio.Client.meter`)."""

    def __init__(
        self,
        client: Client,
        *,
        account: str,
        work_id: str,
        sku: str,
        resource: pb.Resource.ValueType,
        on_stop: OnStop | None,
        reservation: Reservation | None = None,
        background: tuple[int | None, int] = (None, 1),
    ) -> None:
        self._client = client
        self.account = account
        self.work_id = work_id
        self.sku = sku
        self._resource = resource
        self._on_stop = on_stop
        self._reservation = reservation
        #: (interval_ms, gpus) of the background mode entering the block starts, if any.
        self._background = background
        self.seq = 0
        self.reported = 0
        self.decision: m.Decision | None = None
        self.stop_decision: m.Decision | None = None
        self.stop_event = asyncio.Event()
        self.reconnects = 0
        self.error: BaseException | None = None
        self._lock = asyncio.Lock()
        self._call: grpc.aio.StreamStreamCall[pb.UsageReport, pb.UsageDecision] | None = None
        self._closed = False
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()

    @property
    def stop_reason(self) -> m.DenyReason | None:
        return self.stop_decision.reason if self.stop_decision else None

    @property
    def charged(self) -> Decimal:
        return self.decision.charged if self.decision else Decimal(0)

    async def open(self) -> Meter:
        if self._call is None and not self._closed:
            self._connect()
        return self

    def _connect(self) -> None:
        s = self._client.settings
        self._call = self._client.stub.StreamUsage(metadata=s.metadata)

    def _abandon(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None

    async def report(self, quantity: int) -> m.Decision:
        """Reports GPU ms used since the last report; returns quotad's decision."""
        async with self._lock:
            if self._closed:
                raise Error(f"the meter of work {self.work_id} is closed")
            if self._call is None:
                self._connect()
            self.seq += 1
            report = pb.UsageReport(
                account_id=self.account,
                work_id=self.work_id,
                resource=self._resource,
                sku=self.sku,
                quantity=quantity,
                seq=self.seq,
            )
            d, resent = await self._send(report)
            if not d.ignored or resent:
                self.reported += quantity
            self.decision = d
            first_stop = d.stop and not self.stop_event.is_set()
            if first_stop:
                self.stop_decision = d
                self.stop_event.set()
        if first_stop and self._on_stop is not None:
            await maybe_await(self._on_stop(d))
        return d

    async def _send(self, report: pb.UsageReport) -> tuple[m.Decision, bool]:
        retry = self._client.settings.retry
        attempt, resent = 0, False
        while True:
            attempt += 1
            call = self._call
            assert call is not None
            try:
                await call.write(report)
                raw = await call.read()
            except grpc.aio.AioRpcError as e:
                self._abandon()
                if not retry.retries(e.code(), attempt):
                    raise from_rpc_error(e) from e
                await asyncio.sleep(retry.backoff_s(attempt))
                self.reconnects += 1
                resent = True
                self._connect()
                continue
            if raw is grpc.aio.EOF or not isinstance(raw, pb.UsageDecision):
                self._abandon()
                raise Error(
                    f"quotad closed the usage stream of work {self.work_id} "
                    f"before answering report {report.seq}"
                )
            if raw.seq != report.seq:
                self._abandon()
                raise Error(f"expected the decision for seq {report.seq}, got seq {raw.seq}")
            return cv.decision_out(raw), resent

    def start(self, interval_ms: int = 1000, gpus: int = 1) -> Meter:
        """Background mode as a task (see the blocking `Meter.start`)."""
        if interval_ms <= 0 or gpus <= 0:
            raise ValueError("interval_ms and gpus must be above zero")
        if self._task is not None:
            raise Error(f"the meter of work {self.work_id} is running in the background already")
        self._task = asyncio.get_running_loop().create_task(self._run(interval_ms / 1000, gpus))
        return self

    async def _run(self, interval_s: float, gpus: int) -> None:
        last = time.monotonic()

        def elapsed_ms() -> int:
            nonlocal last
            ms = int((time.monotonic() - last) * 1000)
            last += ms / 1000
            return ms * gpus

        try:
            while True:
                try:
                    await asyncio.wait_for(self._closing.wait(), interval_s)
                    break
                except asyncio.TimeoutError:
                    pass
                if not self.stopped:
                    await self.report(elapsed_ms())
            if not self._closed:
                await self.report(elapsed_ms())
        except Exception as e:
            self.error = e
            log.warning("quotad meter of work %s stopped reporting: %s", self.work_id, e)

    async def close(self) -> None:
        """Stops the background task (after its last report), half-closes the stream and
        waits for quotad to settle the job; raises what ended the task, if anything."""
        self._closing.set()
        if self._task is not None and self._task is not asyncio.current_task():
            await self._task
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            call = self._call
            if call is not None:
                try:
                    await call.done_writing()
                    while await call.read() is not grpc.aio.EOF:
                        pass
                except grpc.aio.AioRpcError as e:
                    raise from_rpc_error(e) from e
        if self._reservation is not None:
            self._reservation._meter_closed(self.reported, self.reconnects > 0)
        if self.error is not None:
            raise self.error

    async def __aenter__(self) -> Meter:
        await self.open()
        interval_ms, gpus = self._background
        if interval_ms is not None and self._task is None:
            self.start(interval_ms, gpus)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.close()
            return
        try:
            await self.close()
        except Exception as e:
            log.warning("quotad meter of work %s not closed cleanly: %s", self.work_id, e)
