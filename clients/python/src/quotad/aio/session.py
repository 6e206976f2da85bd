"""An Exclusive-Edition session with heartbeats from a task, on asyncio (see the blocking
`quotad.session` for what quotad does with them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Callable, Union

from .. import _convert as cv
from .. import models as m
from ..errors import Denied, Error, NotFound
from ..session import pick_heartbeat_interval_ms
from ..v1 import quotad_pb2 as pb
from ._connection import maybe_await

if TYPE_CHECKING:
    from .client import Client

log = logging.getLogger("quotad")

Busy = Callable[[], Union[bool, Awaitable[bool]]]
OnStop = Callable[[m.Heartbeat], Union[Awaitable[None], None]]


class Session:
    """One Exclusive instance's billing (see `quotad.aio.Client.session`)."""

    def __init__(
        self,
        client: Client,
        *,
        account: str,
        session_id: str,
        sku: str,
        auto_shutdown: bool,
        idle_timeout_ms: int,
        busy: Busy | None,
        heartbeat_interval_ms: int | None,
        on_stop: OnStop | None,
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
        self.held = Decimal(0)
        self.currency = ""
        self.started_at_ms = 0
        self.stop_heartbeat: m.Heartbeat | None = None
        self.stop_event = asyncio.Event()
        self.stopped_info: m.SessionStopped | None = None
        self.error: Error | None = None
        self._opened = False
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
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

    async def open(self, heartbeats: bool = True) -> Session:
        """Starts the session (raises `quotad.Denied`) and the heartbeat task."""
        if self._opened:
            raise Error(f"session {self.id} is started already")
        r = await self._client._call(self._client.stub.StartSession, self._request)
        self.currency = r.held.currency
        if not r.admitted:
            reason = cv.reason_out(r.reason) or m.DenyReason.UNSPECIFIED
            raise Denied(f"session {self.id}", reason, None, self.currency)
        self._opened = True
        self.held = cv.money_out(r.held)
        self.started_at_ms = r.started_at_ms
        if heartbeats:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def heartbeat(self, busy: bool | None = None) -> m.Heartbeat:
        """Sends one heartbeat (`busy` default: `busy()`, else True)."""
        if busy is None:
            busy = bool(await maybe_await(self._busy())) if self._busy is not None else True
        hb = await self._client.heartbeat(self.id, busy)
        if hb.stop and not self.stop_event.is_set():
            self.stop_heartbeat = hb
            self.stop_event.set()
            if self._on_stop is not None:
                await maybe_await(self._on_stop(hb))
        return hb

    async def _run(self) -> None:
        interval_s = self.heartbeat_interval_ms / 1000
        while not self.stopped:
            try:
                await asyncio.wait_for(self._closing.wait(), interval_s)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self.heartbeat()
            except NotFound as e:
                self.error = e
                self.stop_event.set()
            except Error as e:
                self.error = e
                log.warning("quotad heartbeat of session %s failed: %s", self.id, e)
            except Exception as e:  # a busy() callback that failed
                self.error = Error(f"busy() failed: {e!r}")
                log.warning("session %s: busy() failed: %r", self.id, e)

    async def stop(self) -> m.SessionStopped:
        """Stops the heartbeats and the session; returns everything it was billed."""
        self._closing.set()
        if self._task is not None and self._task is not asyncio.current_task():
            await self._task
        self.stopped_info = await self._client.stop_session(self.id)
        self.stop_event.set()
        return self.stopped_info

    async def __aenter__(self) -> Session:
        return await self.open() if not self._opened else self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.stop()
            return
        try:
            await self.stop()
        except Error as e:
            log.warning("session %s not stopped after %s: %s", self.id, exc_type.__name__, e)
