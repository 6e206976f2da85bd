"""One exception tree for everything the client raises.

`Error` is the root: catch it to handle any failure of a quotad call. A gRPC status maps
to the subclass named after it (the codes quotad uses are in its README, "Errors");
`Denied` is not a gRPC error but quotad's answer that an account cannot pay.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import grpc

from .models import DenyReason

#: Metadata key under which quotad returns the id of a request (for its logs).
REQUEST_ID_KEY = "x-request-id"


class Error(Exception):
    """A quotad call failed. `code` is the gRPC status code (None for errors raised by
    the client itself), `details` quotad's message, `request_id` the id quotad logged
    the request under, when it said."""

    def __init__(
        self,
        details: str,
        code: grpc.StatusCode | None = None,
        request_id: str | None = None,
    ) -> None:
        self.details = details
        self.code = code
        self.request_id = request_id
        super().__init__(details)

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        if self.code is None:
            return f"{self.details}{where}"
        return f"{self.code.name}: {self.details}{where}"


class Denied(Error):
    """The account cannot pay for the work now: `reason` says why, `available` what it
    could still pay for (in `currency`; None where quotad does not say, StartSession)."""

    def __init__(
        self, what: str, reason: DenyReason, available: Decimal | None, currency: str
    ) -> None:
        self.reason = reason
        self.available = available
        self.currency = currency
        amount = f"{available} {currency}".strip()
        left = "" if available is None else f" (available {amount})"
        super().__init__(f"{what} denied: {reason.value}{left}")


class Unauthenticated(Error):
    """No token, or a token quotad does not know or has revoked."""


class PermissionDenied(Error):
    """The token may not do this (a sub-user needs the account owner to grant it)."""


class NotFound(Error):
    """An unknown account, reservation, session or sku."""


class Unavailable(Error):
    """quotad could not be reached or is shutting down (retried before raising)."""


class DeadlineExceeded(Error):
    """No answer within the call's timeout (retried before raising)."""


class InvalidArgument(Error):
    """A request quotad refused as malformed; the message names the field and value."""


class FailedPrecondition(Error):
    """The request is well formed but the state refuses it: an expired or settled
    reservation, an id reused for something else, a purchase rule."""


class AlreadyExists(Error):
    """The account (or usage stream) exists already."""


class ResourceExhausted(Error):
    """A limit was hit: quotad is busy, a table is full, a stream reports too fast."""


_BY_CODE: dict[grpc.StatusCode, type[Error]] = {
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
}


def _request_id(e: Any) -> str | None:
    """quotad's x-request-id from a failed call's metadata, if it has one."""
    for attr in ("trailing_metadata", "initial_metadata"):
        get = getattr(e, attr, None)
        if get is None:
            continue
        try:
            md = get()
        except Exception:  # noqa: S112 - metadata is a nicety; never mask the error
            continue
        for key, value in md or ():
            if key == REQUEST_ID_KEY:
                return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def from_rpc_error(e: grpc.RpcError) -> Error:
    """The `Error` subclass for a failed call (grpc or grpc.aio)."""
    code_of = getattr(e, "code", None)
    details_of = getattr(e, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else None) or str(e)
    cls = _BY_CODE.get(code, Error)
    return cls(details, code, _request_id(e))
