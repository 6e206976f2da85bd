"""Python client for quotad, the quota-enforcement sidecar for GPU platforms.

    import quotad

    with quotad.Client() as client:              # QUOTAD_ADDR, QUOTAD_TOKEN(_FILE)
        with client.reserve("acme", "gpu.shared.a10", 60_000) as r:
            run_job()
            r.commit(45_000)                      # charge what was used

Layout:
- `client`: `Client` (Quota service: reserve, admit, balance, meter, session, watch);
- `reservation`, `meter`, `session`, `watch`: what those calls return;
- `admin`: `Admin` (operators: accounts, top-ups, purchases, catalog, statements, tokens);
- `models`: enums and result values (money as Decimal); `errors`: the exception tree;
- `aio`: the same API on grpc.aio for asyncio;
- `v1`: the generated protobuf / gRPC code (tools/stubs.sh), for calls not wrapped.
"""

from __future__ import annotations

import logging

from ._settings import DEFAULT_ADDR, DEFAULT_TIMEOUT_MS, NO_RETRY, RetryPolicy
from ._version import __version__
from .admin import Admin
from .client import Client
from .errors import (
    AlreadyExists,
    DeadlineExceeded,
    Denied,
    Error,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from .meter import Meter
from .models import (
    Access,
    AccountStatus,
    Admission,
    Balance,
    Committed,
    Decision,
    Deduction,
    DenyReason,
    Event,
    EventKind,
    Grant,
    GrantKind,
    GrantState,
    Heartbeat,
    Principal,
    PrincipalKind,
    Purchase,
    Resource,
    SessionInfo,
    SessionStop,
    SessionStopped,
    Sku,
    SkuKind,
    Statement,
    StatementEntry,
    Token,
    WorkInfo,
)
from .reservation import Reservation
from .session import Session
from .watch import Watch

logging.getLogger("quotad").addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_ADDR",
    "DEFAULT_TIMEOUT_MS",
    "NO_RETRY",
    "Access",
    "AccountStatus",
    "Admin",
    "Admission",
    "AlreadyExists",
    "Balance",
    "Client",
    "Committed",
    "DeadlineExceeded",
    "Decision",
    "Deduction",
    "Denied",
    "DenyReason",
    "Error",
    "Event",
    "EventKind",
    "FailedPrecondition",
    "Grant",
    "GrantKind",
    "GrantState",
    "Heartbeat",
    "InvalidArgument",
    "Meter",
    "NotFound",
    "PermissionDenied",
    "Principal",
    "PrincipalKind",
    "Purchase",
    "Reservation",
    "Resource",
    "ResourceExhausted",
    "RetryPolicy",
    "Session",
    "SessionInfo",
    "SessionStop",
    "SessionStopped",
    "Sku",
    "SkuKind",
    "Statement",
    "StatementEntry",
    "Token",
    "Unauthenticated",
    "Unavailable",
    "Watch",
    "WorkInfo",
    "__version__",
]
