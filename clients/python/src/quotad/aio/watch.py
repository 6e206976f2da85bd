"""An account's live events on asyncio: an async iterator, subscribed once entered (or
at the first event awaited); see the blocking `quotad.watch`."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

import grpc
import grpc.aio

from .. import _convert as cv
from .. import models as m
from ..errors import from_rpc_error
from ..v1 import quotad_pb2 as pb

if TYPE_CHECKING:
    from .client import Client


class Watch:
    """`async with client.watch(account) as events: async for e in events: ...`"""

    def __init__(self, client: Client, account: str) -> None:
        self._client = client
        self.account = account
        self._call: grpc.aio.UnaryStreamCall[pb.WatchRequest, pb.AccountEvent] | None = None
        self._closed = False

    async def open(self) -> Watch:
        """Subscribes: returns once quotad delivers every later event to this watcher."""
        if self._call is not None:
            return self
        s = self._client.settings
        req = pb.WatchRequest(account_id=self.account)
        attempt = 0
        while True:
            attempt += 1
            call = self._client.stub.Watch(req, metadata=s.metadata)
            try:
                await call.initial_metadata()
                if call.done():
                    code = await call.code()
                    if code != grpc.StatusCode.OK:
                        await call.read()  # raises the call's error
                break
            except grpc.aio.AioRpcError as e:
                if not s.retry.retries(e.code(), attempt):
                    raise from_rpc_error(e) from e
                await asyncio.sleep(s.retry.backoff_s(attempt))
        self._call = call
        return self

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> m.Event:
        if self._call is None:
            await self.open()
        assert self._call is not None
        try:
            raw = await self._call.read()
        except asyncio.CancelledError:
            if self._closed:
                raise StopAsyncIteration from None
            raise
        except grpc.aio.AioRpcError as e:
            if self._closed and e.code() == grpc.StatusCode.CANCELLED:
                raise StopAsyncIteration from None
            raise from_rpc_error(e) from e
        if raw is grpc.aio.EOF or not isinstance(raw, pb.AccountEvent):
            raise StopAsyncIteration
        return cv.event_out(raw)

    def close(self) -> None:
        """Ends the subscription; a waiting iteration ends."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()

    async def __aenter__(self) -> Watch:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
