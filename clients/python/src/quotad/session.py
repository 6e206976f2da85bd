"""An Exclusive-Edition session kept alive by heartbeats from a thread, blocking API.

quotad bills an Exclusive instance by the hour from StartSession to StopSession and
stops it itself when the next hour cannot be paid, or, with auto-shutdown on, when no
heartbeat said it was busy for its idle timeout. The heartbeat thread carries `busy()`
to quotad and learns of such a stop on its next beat.
"""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Callable

from . import _convert as cv
from . import models as m
from .errors import Denied, Error, NotFound
from .v1 import quotad_pb2 as pb

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("quotad")

#: Heartbeat interval when neither the caller nor a short idle timeout asks for another.
DEFAULT_HEARTBEAT_INTERVAL_MS = 60_000
#: Heartbeats per idle timeout, so that one lost beat does not count as idleness.
HEARTBEATS_PER_IDLE_TIMEOUT = 4


def pick_heartbeat_interval_ms(idle_timeout_ms: int, given: int | None) -> int:
    """The interval asked for, else a quarter of a short idle timeout, else a minute."""
    if given is not None:
        if given <= 0:
            raise ValueError(f"heartbeat_interval_ms {given} must be above zero")
        return given
    if idle_timeout_ms > 0:
        return max(
            1, min(DEFAULT_HEARTBEAT_INTERVAL_MS, idle_timeout_ms // HEARTBEATS_PER_IDLE_TIMEOUT)
        )
    return DEFAULT_HEARTBEAT_INTERVAL_MS


class Session:
    """One Exclusive instance's billing (see `Client.session`)."""

    def __init__(
        self,
        client: Client,
        *,
        account: str,
        session_id: str,
        sku: str,
        auto_shutdown: bool,
        idle_timeout_ms: int,
        busy: Callable[[], bool] | None,
        heartbeat_interval_ms: int | None,
        on_stop: Callable[[m.Heartbeat], None] | None,
    ) -> None:
        self._client = client
        self.id = session_id
        self.account = account
        self.sku = sku
        self.auto_shutdown = auto_shutdown
        self.idle_timeout_ms = idle_timeout_ms
        self.heartbeat_interval_ms = pick_heartbeat_interval_ms(
            idle_timeout_ms, heartbeat_interval_ms
        )
        self._busy = busy
        self._on_stop = on_stop
        #: Set by `open()`: the first hour held, when billing started.
        self.held = Decimal(0)
        self.currency = ""
        self.started_at_ms = 0
        #: The heartbeat that said STOP (quotad stopped the session), if one did.
        self.stop_heartbeat: m.Heartbeat | None = None
        #: Set when the session has stopped, by quotad or by `stop()`.
        self.stop_event = threading.Event()
        #: StopSession's answer once `stop()` ran.
        self.stopped_info: m.SessionStopped | None = None
        #: The last heartbeat failure, if any (the thread keeps beating through them).
        self.error: Error | None = None
        self._opened = False
        self._stop_lock = threading.Lock()  # one on_stop call, whichever thread sees STOP
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._request = pb.StartSessionRequest(
            account_id=account,
            session_id=session_id,
            sku=sku,
            auto_shutdown=auto_shutdown,
            idle_timeout_ms=idle_timeout_ms,
        )

    @property
    def stopped(self) -> bool:
        return self.stop_event.is_set()

    @property
    def stop_cause(self) -> m.SessionStop | None:
        if self.stopped_info is not None:
            return self.stopped_info.stop_cause
        return self.stop_heartbeat.stop_cause if self.stop_heartbeat else None

    def open(self, heartbeats: bool = True) -> Session:
        """Starts the session (what entering the block does; raises `quotad.Denied`)
        and, unless `heartbeats` is False, the heartbeat thread."""
        if self._opened:
            raise Error(f"session {self.id} is started already")
        r = self._client._call(self._client.stub.StartSession, self._request)
        self.currency = r.held.currency
        if not r.admitted:
            reason = cv.reason_out(r.reason) or m.DenyReason.UNSPECIFIED
            raise Denied(f"session {self.id}", reason, None, self.currency)
        self._opened = True
        self.held = cv.money_out(r.held)
        self.started_at_ms = r.started_at_ms
        if heartbeats:
            self._thread = threading.Thread(
                target=self._run, name=f"quotad-session-{self.id}", daemon=True
            )
            self._thread.start()
        return self

    def heartbeat(self, busy: bool | None = None) -> m.Heartbeat:
        """Sends one heartbeat (`busy` default: `busy()`, else True) and returns the
        answer; a STOP marks the session stopped and calls `on_stop` once."""
        if busy is None:
            busy = self._busy() if self._busy is not None else True
        hb = self._client.heartbeat(self.id, busy)
        if not hb.stop:
            return hb
        with self._stop_lock:
            first_stop = not self.stop_event.is_set()
            if first_stop:
                self.stop_heartbeat = hb
                self.stop_event.set()
        if first_stop and self._on_stop is not None:
            self._on_stop(hb)
        return hb

    def _run(self) -> None:
        interval_s = self.heartbeat_interval_ms / 1000
        while not self._closing.wait(interval_s) and not self.stopped:
            try:
                self.heartbeat()
            except NotFound as e:
                # quotad no longer knows it (another process stopped it and it was
                # forgotten): nothing left to keep alive.
                self.error = e
                self.stop_event.set()
            except Error as e:
                # Retried already; the next beat tries again, and idleness is quotad's
                # call to make, not a network blip's.
                self.error = e
                log.warning("quotad heartbeat of session %s failed: %s", self.id, e)
            except Exception as e:  # a busy() callback that failed
                self.error = Error(f"busy() failed: {e!r}")
                log.warning("session %s: busy() failed: %r", self.id, e)

    def stop(self) -> m.SessionStopped:
        """Stops the heartbeats and the session, billing it up to now (or to when quotad
        stopped it); returns everything it was billed."""
        self._closing.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.stopped_info = self._client.stop_session(self.id)
        self.stop_event.set()
        return self.stopped_info

    def __enter__(self) -> Session:
        return self.open() if not self._opened else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop()
            return
        try:
            self.stop()
        except Error as e:
            log.warning("session %s not stopped after %s: %s", self.id, exc_type.__name__, e)
