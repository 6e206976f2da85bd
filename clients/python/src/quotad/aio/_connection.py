"""The asyncio channel under `quotad.aio.Client` and `quotad.aio.Admin`: the same
settings, token, retries and errors as the blocking `quotad._connection`, on grpc.aio."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from .. import _settings
from ..errors import from_rpc_error

log = logging.getLogger("quotad")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
C = TypeVar("C", bound="Connection")
T = TypeVar("T")

#: A grpc.aio client interceptor of any of the four kinds.
Interceptor = Any


async def maybe_await(x: T | Awaitable[T]) -> T:
    """A callback's result: awaited if the callback was a coroutine function."""
    if inspect.isawaitable(x):
        return await x
    return x


class Connection:
    """One grpc.aio channel to quotad. Create it inside the event loop that uses it."""

    def __init__(
        self,
        addr: str | None = None,
        token: str | None = None,
        *,
        token_file: _settings.PathArg | None = None,
        tls: bool | None = None,
        tls_ca_file: _settings.PathArg | None = None,
        tls_cert_file: _settings.PathArg | None = None,
        tls_key_file: _settings.PathArg | None = None,
        tls_server_name: str | None = None,
        timeout_ms: int | None = _settings.DEFAULT_TIMEOUT_MS,
        retry: _settings.RetryPolicy | None = None,
        interceptors: Sequence[Interceptor] = (),
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Arguments as for the blocking `quotad.Client` (interceptors: grpc.aio ones)."""
        self.settings = _settings.resolve(
            addr,
            token,
            token_file=token_file,
            tls=tls,
            tls_ca_file=tls_ca_file,
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_server_name=tls_server_name,
            timeout_ms=timeout_ms,
            retry=retry,
            options=options,
        )
        s = self.settings
        chain = list(interceptors) or None
        if s.credentials is not None:
            self.channel = grpc.aio.secure_channel(
                s.target, s.credentials, options=s.options, interceptors=chain
            )
        else:
            self.channel = grpc.aio.insecure_channel(
                s.target, options=s.options, interceptors=chain
            )

    @property
    def target(self) -> str:
        return self.settings.target

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        await self.channel.close()

    async def __aenter__(self: C) -> C:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        repeatable: bool = True,
    ) -> Resp:
        """One unary call, retried per the policy when `repeatable` (see the blocking
        `Connection._call`)."""
        s = self.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                return await method(request, timeout=s.timeout_s, metadata=s.metadata)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                if not (repeatable and s.retry.retries(code, attempt)):
                    raise from_rpc_error(e) from e
                delay_s = s.retry.backoff_s(attempt)
                log.debug(
                    "quotad call failed (%s), attempt %d; retrying in %.3f s",
                    code,
                    attempt,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
