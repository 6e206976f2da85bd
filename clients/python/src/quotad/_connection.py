"""The blocking channel under `Client` and `Admin`: settings, the token on every call,
retries of repeatable calls, and gRPC errors turned into `quotad.Error`s."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc

from . import _settings
from .errors import from_rpc_error

log = logging.getLogger("quotad")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
C = TypeVar("C", bound="Connection")

#: A client-side gRPC interceptor of any of the four kinds.
Interceptor = Any


class Connection:
    """One gRPC channel to quotad. Thread-safe; share one per process."""

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
        """Connects (lazily: the first call dials) to quotad at `addr`.

        addr: host:port, http://host:port or https://host:port; default QUOTAD_ADDR,
            else 127.0.0.1:50051.
        token: sent as `authorization: Bearer TOKEN`; default QUOTAD_TOKEN, else the file
            `token_file` or QUOTAD_TOKEN_FILE names, else ./quotad-data/operator.token if
            it exists. An explicit empty token sends none.
        tls, tls_ca_file, tls_cert_file, tls_key_file, tls_server_name: TLS (on for
            https:// or any TLS file): the CA the server's certificate must chain to
            (default: the system's roots), a client certificate and key for mTLS, and
            the name to check the certificate against if not the address's host.
        timeout_ms: deadline of each attempt of a unary call (None: none).
        retry: how repeatable calls are retried (`RetryPolicy()`; `NO_RETRY` for none).
        interceptors: grpc client interceptors, outermost first.
        options: extra grpc channel options.
        """
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
        if s.credentials is not None:
            channel = grpc.secure_channel(s.target, s.credentials, options=s.options)
        else:
            channel = grpc.insecure_channel(s.target, options=s.options)
        self._raw_channel = channel
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        self.channel: grpc.Channel = channel

    @property
    def target(self) -> str:
        """The address dialled (host:port)."""
        return self.settings.target

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self._raw_channel.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        *,
        repeatable: bool = True,
    ) -> Resp:
        """One unary call; retried per the policy when `repeatable` (it carries a client
        id or only reads), so a lost answer is asked for again, never charged twice."""
        s = self.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=s.timeout_s, metadata=s.metadata)
            except grpc.RpcError as e:
                code = e.code() if isinstance(e, grpc.Call) else None
                if not (repeatable and s.retry.retries(code, attempt)):
                    raise from_rpc_error(e) from e
                delay_s = s.retry.backoff_s(attempt)
                log.debug(
                    "quotad call failed (%s), attempt %d; retrying in %.3f s",
                    code,
                    attempt,
                    delay_s,
                )
                time.sleep(delay_s)
