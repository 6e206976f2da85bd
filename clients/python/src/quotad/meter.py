"""A usage stream (StreamUsage) for a running Shared-Edition job, blocking API.

One report is in flight at a time and each waits for its decision, so a job that stops
when told overruns by at most the one report it sends after STOP (quotad's G1). Each
report carries an increasing seq; if the stream breaks (UNAVAILABLE), the unanswered
report is sent again with the same seq on a new stream, and quotad ignores it if it had
charged it already, so nothing is charged twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Callable

import grpc

from . import _convert as cv
from . import models as m
from .errors import Error, from_rpc_error
from .v1 import quotad_pb2 as pb

if TYPE_CHECKING:
    from .client import Client
    from .reservation import Reservation

log = logging.getLogger("quotad")


class Meter:
    """Meters one job (see `Client.meter`). `report()` may be called from any thread;
    reports are sent one at a time."""

    def __init__(
        self,
        client: Client,
        *,
        account: str,
        work_id: str,
        sku: str,
        resource: pb.Resource.ValueType,
        on_stop: Callable[[m.Decision], None] | None,
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
        #: The last seq sent, and the quantity charged (or accepted) in all.
        self.seq = 0
        self.reported = 0
        #: The last decision, and the STOP decision once one came.
        self.decision: m.Decision | None = None
        self.stop_decision: m.Decision | None = None
        #: Set when quotad said STOP; wait on it or poll `stopped`.
        self.stop_event = threading.Event()
        #: Times the stream broke and was opened again.
        self.reconnects = 0
        #: What ended the background thread, if it failed.
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._requests: queue.Queue[pb.UsageReport | None] = queue.Queue()
        self._responses: Iterator[pb.UsageDecision] | None = None
        self._closed = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopped(self) -> bool:
        """quotad said STOP: the account cannot pay for more; stop the job now."""
        return self.stop_event.is_set()

    @property
    def stop_reason(self) -> m.DenyReason | None:
        return self.stop_decision.reason if self.stop_decision else None

    @property
    def charged(self) -> Decimal:
        """Charged for the job so far, as the last decision said."""
        return self.decision.charged if self.decision else Decimal(0)

    def open(self) -> Meter:
        """Opens the stream (what entering the block does)."""
        with self._lock:
            if self._responses is None and not self._closed:
                self._connect()
        return self

    def _connect(self) -> None:
        # grpcio pulls requests from this iterator on its own thread; None ends it.
        self._requests = queue.Queue()
        requests = iter(self._requests.get, None)
        s = self._client.settings
        self._responses = self._client.stub.StreamUsage(requests, metadata=s.metadata)

    def _abandon(self) -> None:
        """Drops the current stream (broken): ends its request iterator and the call."""
        self._requests.put(None)
        call = self._responses
        self._responses = None
        if isinstance(call, grpc.Future):
            call.cancel()

    def report(self, quantity: int) -> m.Decision:
        """Reports `quantity` GPU ms used since the last report (0: still running) and
        returns quotad's decision. After STOP, report what the job used until it
        actually stopped: that usage is real and is charged too."""
        with self._lock:
            if self._closed:
                raise Error(f"the meter of work {self.work_id} is closed")
            if self._responses is None:
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
            d, resent = self._send(report)
            if not d.ignored or resent:
                # A resent report that quotad ignores was charged the first time.
                self.reported += quantity
            self.decision = d
            first_stop = d.stop and not self.stop_event.is_set()
            if first_stop:
                self.stop_decision = d
                self.stop_event.set()
        if first_stop and self._on_stop is not None:
            self._on_stop(d)
        return d

    def _send(self, report: pb.UsageReport) -> tuple[m.Decision, bool]:
        retry = self._client.settings.retry
        attempt, resent = 0, False
        while True:
            attempt += 1
            assert self._responses is not None
            try:
                self._requests.put(report)
                raw = next(self._responses)
            except StopIteration:
                self._abandon()
                raise Error(
                    f"quotad closed the usage stream of work {self.work_id} "
                    f"before answering report {report.seq}"
                ) from None
            except grpc.RpcError as e:
                code = e.code() if isinstance(e, grpc.Call) else None
                self._abandon()
                if not retry.retries(code, attempt):
                    raise from_rpc_error(e) from e
                time.sleep(retry.backoff_s(attempt))
                self.reconnects += 1
                resent = True
                self._connect()
                continue
            if raw.seq != report.seq:
                self._abandon()
                raise Error(f"expected the decision for seq {report.seq}, got seq {raw.seq}")
            return cv.decision_out(raw), resent

    def start(self, interval_ms: int = 1000, gpus: int = 1) -> Meter:
        """Background mode: a thread reports the elapsed time times `gpus` every
        `interval_ms` (quotad takes at most 50 reports a second per stream by default),
        and once more on close for the time since. After STOP it reports nothing until
        close. A failure ends the thread and is kept in `error` (and raised by close)."""
        if interval_ms <= 0 or gpus <= 0:
            raise ValueError("interval_ms and gpus must be above zero")
        if self._thread is not None:
            raise Error(f"the meter of work {self.work_id} is running in the background already")
        self.open()
        self._thread = threading.Thread(
            target=self._run,
            args=(interval_ms / 1000, gpus),
            name=f"quotad-meter-{self.work_id}",
            daemon=True,
        )
        self._thread.start()
        return self

    def _run(self, interval_s: float, gpus: int) -> None:
        last = time.monotonic()

        def elapsed_ms() -> int:
            nonlocal last
            ms = int((time.monotonic() - last) * 1000)
            last += ms / 1000  # keep the fraction for the next report
            return ms * gpus

        try:
            while not self._closing.wait(interval_s):
                if not self.stopped:
                    self.report(elapsed_ms())
            if not self._closed:
                self.report(elapsed_ms())
        except BaseException as e:
            self.error = e
            log.warning("quotad meter of work %s stopped reporting: %s", self.work_id, e)

    def close(self) -> None:
        """Stops the background thread (after its last report), half-closes the stream
        and waits for quotad to close it: the job is then settled. Raises what ended the
        background thread, if anything did."""
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            responses = self._responses
            self._requests.put(None)
            if responses is not None:
                try:
                    for _ in responses:
                        pass
                except grpc.RpcError as e:
                    raise from_rpc_error(e) from e
        if self._reservation is not None:
            self._reservation._meter_closed(self.reported, self.reconnects > 0)
        if self.error is not None:
            raise self.error

    def __enter__(self) -> Meter:
        interval_ms, gpus = self._background
        if interval_ms is not None and self._thread is None:
            return self.start(interval_ms, gpus)
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except BaseException as e:
            log.warning("quotad meter of work %s not closed cleanly: %s", self.work_id, e)
