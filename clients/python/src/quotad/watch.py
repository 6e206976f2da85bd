"""An account's live events (Watch), blocking API.

quotad subscribes a watcher before it answers with response headers, so waiting for them
makes "every event after watch() returned" a guarantee a caller can build on. A watcher
that falls behind is told how many events it missed (EventKind.EVENTS_DROPPED). The
iteration ends when quotad ends the stream (at its shutdown) or `close()` is called, and
raises `quotad.Unavailable` if the connection breaks; events in between are not replayed
(watch anew, then read the balance).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING

import grpc

from . import _convert as cv
from . import models as m
from .errors import from_rpc_error
from .v1 import quotad_pb2 as pb

if TYPE_CHECKING:
    from .client import Client


class Watch(Iterator[m.Event]):
    """Iterates over an account's events until `close()` (see `Client.watch`)."""

    def __init__(self, client: Client, account: str) -> None:
        self.account = account
        s = client.settings
        req = pb.WatchRequest(account_id=account)
        attempt = 0
        while True:
            attempt += 1
            call = client.stub.Watch(req, metadata=s.metadata)
            try:
                # Headers come once quotad has subscribed; an error ends the call early.
                call.initial_metadata()
                ended = isinstance(call, grpc.Future) and call.done()
                if ended and call.code() != grpc.StatusCode.OK:
                    raise call  # type: ignore[misc]
                break
            except grpc.RpcError as e:
                code = e.code() if isinstance(e, grpc.Call) else None
                if not s.retry.retries(code, attempt):
                    raise from_rpc_error(e) from e
                time.sleep(s.retry.backoff_s(attempt))
        self._call = call
        self._closed = False

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> m.Event:
        try:
            return cv.event_out(next(self._call))
        except grpc.RpcError as e:
            if self._closed and isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.CANCELLED:
                raise StopIteration from None
            raise from_rpc_error(e) from e

    def close(self) -> None:
        """Ends the subscription; a blocked iteration ends with StopIteration."""
        self._closed = True
        self._call.cancel()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
