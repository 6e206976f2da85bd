"""Where to connect, with what token and TLS, and how to retry: resolved once per client.

Defaults follow `quotad ctl`, so a worker configured for one is configured for the other:
the address from QUOTAD_ADDR (else 127.0.0.1:50051), the token from QUOTAD_TOKEN, else
the file QUOTAD_TOKEN_FILE names, else ./quotad-data/operator.token where a local
`quotad serve` wrote it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import grpc

from ._version import __version__
from .errors import Error

#: Where `quotad serve` listens by default.
DEFAULT_ADDR = "127.0.0.1:50051"
#: The operator token `quotad serve` writes on first start, relative to its directory.
DEFAULT_TOKEN_FILE = os.path.join("quotad-data", "operator.token")
#: Deadline of one attempt of a unary call; quotad answers in well under a millisecond
#: when healthy, and bounds requests itself at 30 s.
DEFAULT_TIMEOUT_MS = 10_000
#: Largest token file read (a token is 68 characters; anything larger is not one).
TOKEN_FILE_BYTES_MAX = 4096

#: A file path as the API accepts it.
PathArg = Union[str, "os.PathLike[str]"]

ENV_ADDR = "QUOTAD_ADDR"
ENV_TOKEN = "QUOTAD_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_TOKEN_FILE = "QUOTAD_TOKEN_FILE"  # noqa: S105 - a variable name

_RETRIED_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        # quotad answers ABORTED when a ledger transaction lost a race; a retry with the
        # same id is what the gRPC status spec says to do.
        grpc.StatusCode.ABORTED,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of calls that are safe to repeat (every call that carries a client id,
    and reads). Attempt n waits between half and all of
    min(max_backoff_ms, initial_backoff_ms * multiplier ** (n - 1)) before it."""

    #: Attempts in all, the first included (1 = no retry).
    attempts: int = 6
    initial_backoff_ms: int = 100
    max_backoff_ms: int = 5_000
    multiplier: float = 2.0
    codes: frozenset[grpc.StatusCode] = _RETRIED_CODES

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts {self.attempts} must be 1 or more")
        if self.initial_backoff_ms < 0 or self.max_backoff_ms < self.initial_backoff_ms:
            raise ValueError(
                f"backoff must satisfy 0 <= initial_backoff_ms ({self.initial_backoff_ms}) "
                f"<= max_backoff_ms ({self.max_backoff_ms})"
            )
        if self.multiplier < 1:
            raise ValueError(f"multiplier {self.multiplier} must be 1 or more")

    def retries(self, code: grpc.StatusCode | None, attempt: int) -> bool:
        """Whether a call that failed with `code` on attempt `attempt` (1-based) is tried
        again."""
        return code in self.codes and attempt < self.attempts

    def backoff_s(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based), jittered so that
        many clients cut off together do not come back together."""
        ceiling_ms = min(
            float(self.max_backoff_ms),
            self.initial_backoff_ms * self.multiplier ** (attempt - 1),
        )
        return random.uniform(ceiling_ms / 2, ceiling_ms) / 1000  # noqa: S311 - jitter, not a secret


#: No retries at all: every failure is raised at once.
NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Settings:
    """A client's connection, resolved from its arguments and the environment."""

    #: host:port (or a grpc target such as unix:PATH) without a scheme.
    target: str
    credentials: grpc.ChannelCredentials | None
    token: str | None
    timeout_ms: int | None
    retry: RetryPolicy
    options: tuple[tuple[str, Any], ...]

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if not self.token:
            return ()
        return (("authorization", f"Bearer {self.token}"),)

    @property
    def timeout_s(self) -> float | None:
        return None if self.timeout_ms is None else self.timeout_ms / 1000


def _split_addr(addr: str) -> tuple[str, bool | None]:
    """(target, TLS wanted by the scheme: True for https, False for http, None for none)."""
    a = addr.strip().rstrip("/")
    if not a:
        raise ValueError("the quotad address is empty")
    scheme, sep, rest = a.partition("://")
    if not sep:
        return a, None
    if scheme == "http":
        return rest, False
    if scheme == "https":
        return rest, True
    raise ValueError(f"address {addr!r}: use host:port, http://host:port or https://host:port")


def _read_file(what: str, path_arg: PathArg, limit: int) -> bytes:
    path = os.fspath(path_arg)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise Error(f"{what} {path}: {e.strerror or e}") from e
    if len(data) > limit:
        raise Error(f"{what} {path} is larger than {limit} bytes")
    return data


def _token_from_file(path: PathArg) -> str:
    token = _read_file("token file", path, TOKEN_FILE_BYTES_MAX).decode("utf-8", "replace")
    token = token.strip()
    if not token:
        raise Error(f"token file {path} is empty")
    return token


def resolve_token(token: str | None, token_file: PathArg | None) -> str | None:
    """The token to send: `token`, else `token_file`, else QUOTAD_TOKEN, else the file
    QUOTAD_TOKEN_FILE names, else ./quotad-data/operator.token if it exists, else none.
    A file named explicitly must be readable; the default one may be absent."""
    if token is not None:
        return token.strip()
    if token_file is not None:
        return _token_from_file(token_file)
    env = os.environ.get(ENV_TOKEN, "").strip()
    if env:
        return env
    env_file = os.environ.get(ENV_TOKEN_FILE, "").strip()
    if env_file:
        return _token_from_file(env_file)
    if os.path.exists(DEFAULT_TOKEN_FILE):
        return _token_from_file(DEFAULT_TOKEN_FILE)
    return None


def _credentials(
    ca_file: PathArg | None, cert_file: PathArg | None, key_file: PathArg | None
) -> grpc.ChannelCredentials:
    if (cert_file is None) != (key_file is None):
        raise ValueError("tls_cert_file and tls_key_file go together (mTLS)")
    limit = 1 << 20
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file("TLS CA file", ca_file, limit) if ca_file else None,
        private_key=_read_file("TLS key file", key_file, limit) if key_file else None,
        certificate_chain=_read_file("TLS certificate file", cert_file, limit)
        if cert_file
        else None,
    )


def resolve(
    addr: str | None,
    token: str | None,
    *,
    token_file: PathArg | None,
    tls: bool | None,
    tls_ca_file: PathArg | None,
    tls_cert_file: PathArg | None,
    tls_key_file: PathArg | None,
    tls_server_name: str | None,
    timeout_ms: int | None,
    retry: RetryPolicy | None,
    options: Sequence[tuple[str, Any]],
) -> Settings:
    """Settings from a client's arguments, the environment and the defaults. TLS is on
    for an https:// address, with `tls=True`, or when any TLS file is given (then the
    system's roots are replaced by `tls_ca_file`, if given)."""
    if addr is None:
        addr = os.environ.get(ENV_ADDR, "").strip() or DEFAULT_ADDR
    target, scheme_tls = _split_addr(addr)
    files_given = any(f is not None for f in (tls_ca_file, tls_cert_file, tls_key_file))
    if tls is False and (scheme_tls or files_given):
        raise ValueError("tls=False contradicts an https:// address or TLS files")
    if scheme_tls is False and (tls or files_given):
        raise ValueError(f"address {addr!r} says http://; use https:// for TLS")
    secure = bool(tls or scheme_tls or files_given)
    if timeout_ms is not None and timeout_ms <= 0:
        raise ValueError(f"timeout_ms {timeout_ms} must be above zero (or None: no deadline)")
    opts = [("grpc.primary_user_agent", f"quotad-python/{__version__}"), *options]
    if tls_server_name is not None:
        opts.append(("grpc.ssl_target_name_override", tls_server_name))
    return Settings(
        target=target,
        credentials=_credentials(tls_ca_file, tls_cert_file, tls_key_file) if secure else None,
        token=resolve_token(token, token_file),
        timeout_ms=timeout_ms,
        retry=retry if retry is not None else RetryPolicy(),
        options=tuple(opts),
    )
