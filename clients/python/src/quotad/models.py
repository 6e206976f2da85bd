"""What the client hands back: enums named as in proto/quotad/v1 and frozen dataclasses.

Money is `decimal.Decimal` with the currency beside it, never float: quotad's amounts are
exact decimal strings on the wire and stay exact here. Each value converted from a message
keeps it as `raw`, so a field the proto gains is readable before this module names it.
Enum values the client does not know yet (a newer server) read as `UNSPECIFIED`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal

from .v1 import quotad_pb2 as pb


class Resource(enum.Enum):
    """A billable resource. Quantity units: GPU_*: milliseconds; TRAFFIC: bytes;
    REQUEST_*: count (STORAGE is reported as levels, `Client.report_storage`)."""

    UNSPECIFIED = "RESOURCE_UNSPECIFIED"
    GPU_SHARED = "GPU_SHARED"
    GPU_EXCLUSIVE = "GPU_EXCLUSIVE"
    STORAGE = "STORAGE"
    TRAFFIC = "TRAFFIC"
    REQUEST_PUT = "REQUEST_PUT"
    REQUEST_GET = "REQUEST_GET"


class DenyReason(enum.Enum):
    """Why work was not admitted, or was told to stop."""

    UNSPECIFIED = "DENY_REASON_UNSPECIFIED"
    #: The balance is below zero: nothing new is admitted until a top-up.
    OVERDUE = "OVERDUE"
    #: No valid grant covers the resource and the balance is zero.
    NO_ENTITLEMENT = "NO_ENTITLEMENT"
    #: Grants and balance together cannot pay for the request.
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    #: The ledger is unreachable and the sidecar's lease is spent or expired.
    LEDGER_UNAVAILABLE = "LEDGER_UNAVAILABLE"


class AccountStatus(enum.Enum):
    UNSPECIFIED = "ACCOUNT_STATUS_UNSPECIFIED"
    ACTIVE = "ACTIVE"
    OVERDUE = "OVERDUE"
    NO_ENTITLEMENT = "NO_ENTITLEMENT"


class GrantKind(enum.Enum):
    UNSPECIFIED = "KIND_UNSPECIFIED"
    PLAN = "PLAN"
    COUPON = "COUPON"
    TRIAL = "TRIAL"


class GrantState(enum.Enum):
    UNSPECIFIED = "STATE_UNSPECIFIED"
    VALID = "VALID"
    PENDING = "PENDING"
    EXPIRED = "EXPIRED"
    EXHAUSTED = "EXHAUSTED"


class EventKind(enum.Enum):
    UNSPECIFIED = "KIND_UNSPECIFIED"
    LOW_QUOTA = "LOW_QUOTA"
    GRANT_EXPIRING = "GRANT_EXPIRING"
    GRANT_EXPIRED = "GRANT_EXPIRED"
    OVERDUE = "OVERDUE"
    RECOVERED = "RECOVERED"
    WORK_STOPPED = "WORK_STOPPED"
    SESSION_IDLE_SHUTDOWN = "SESSION_IDLE_SHUTDOWN"
    SESSION_STOPPED = "SESSION_STOPPED"
    #: This watcher fell behind; `Event.dropped` events were not delivered to it.
    EVENTS_DROPPED = "EVENTS_DROPPED"


class SessionStop(enum.Enum):
    """Why an Exclusive session ended."""

    UNSPECIFIED = "SESSION_STOP_UNSPECIFIED"
    REQUESTED = "SESSION_STOP_REQUESTED"
    IDLE = "SESSION_STOP_IDLE"
    INSUFFICIENT_FUNDS = "SESSION_STOP_INSUFFICIENT_FUNDS"


class SkuKind(enum.Enum):
    UNSPECIFIED = "KIND_UNSPECIFIED"
    PRICE = "PRICE"
    PLAN = "PLAN"
    PACKAGE = "PACKAGE"


class PrincipalKind(enum.Enum):
    UNSPECIFIED = "KIND_UNSPECIFIED"
    OPERATOR = "OPERATOR"
    OWNER = "OWNER"
    SUB_USER = "SUB_USER"
    SIDECAR = "SIDECAR"
    PROXY = "PROXY"


@dataclass(frozen=True)
class Admission:
    """Admit's answer: could work of this size start now (nothing is held)."""

    admitted: bool
    reason: DenyReason | None
    available: Decimal
    currency: str
    raw: pb.AdmitResponse = field(repr=False, compare=False)

    def __bool__(self) -> bool:
        return self.admitted


@dataclass(frozen=True)
class Committed:
    """What a Commit charged (money from grants and balance) and what is left."""

    charged: Decimal
    available: Decimal
    currency: str
    raw: pb.CommitResponse = field(repr=False, compare=False)


@dataclass(frozen=True)
class Decision:
    """quotad's answer to one usage report of a metered job."""

    seq: int
    #: True: stop the job now (`reason` says why); what ran so far is charged.
    stop: bool
    reason: DenyReason | None
    #: How many more milliseconds the account can pay for now, at the job's price.
    remaining_quantity: int
    #: The report was a duplicate (seq already seen) and charged nothing.
    ignored: bool
    #: Charged for the job so far on this sidecar.
    charged: Decimal
    currency: str
    raw: pb.UsageDecision = field(repr=False, compare=False)


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat's answer: go on, or the session has stopped (and why)."""

    stop: bool
    reason: DenyReason | None
    stop_cause: SessionStop | None
    stopped_at_ms: int
    raw: pb.HeartbeatResponse = field(repr=False, compare=False)


@dataclass(frozen=True)
class SessionStopped:
    """A stopped session: everything it was billed, from start to stop."""

    charged: Decimal
    currency: str
    stopped_at_ms: int
    stop_cause: SessionStop | None
    raw: pb.StopSessionResponse = field(repr=False, compare=False)


@dataclass(frozen=True)
class Grant:
    """A prepaid source of payment: a plan (or package component), coupon or trial."""

    grant_id: str
    kind: GrantKind
    #: The one resource covered, or UNSPECIFIED when several or any (see `covers`).
    resource: Resource
    #: Quota and remaining, in `unit` ("CNY" for money, "GB" for volume).
    quota: Decimal
    remaining: Decimal
    unit: str
    starts_at_ms: int
    expires_at_ms: int
    source: str
    #: Every resource the grant pays for; empty means any.
    covers: tuple[Resource, ...]
    state: GrantState
    stackable: bool
    raw: pb.Grant = field(repr=False, compare=False)


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    sku: str
    started_at_ms: int
    auto_shutdown: bool
    idle_timeout_ms: int
    last_busy_at_ms: int
    charged: Decimal
    accrued: Decimal
    hourly: Decimal
    accrues_without_activity: bool
    raw: pb.SessionInfo = field(repr=False, compare=False)


@dataclass(frozen=True)
class WorkInfo:
    work_id: str
    sku: str
    charged: Decimal
    held: Decimal
    last_seq: int
    raw: pb.WorkInfo = field(repr=False, compare=False)


@dataclass(frozen=True)
class Balance:
    """An account as GetBalance (and the Admin account calls) show it."""

    account_id: str
    status: AccountStatus
    balance: Decimal
    #: What the account can still pay for GPU work now, less open holds.
    available: Decimal
    #: Sum of open holds.
    held: Decimal
    currency: str
    grants: tuple[Grant, ...]
    sessions: tuple[SessionInfo, ...]
    streams: tuple[WorkInfo, ...]
    raw: pb.Balance = field(repr=False, compare=False)


@dataclass(frozen=True)
class Event:
    """An account event from `watch`."""

    account_id: str
    kind: EventKind
    #: The grant, work or session concerned, if any.
    grant_id: str
    message: str
    at_ms: int
    #: The threshold crossed, as a decimal string ("0.2" of quota, an amount, a lead time).
    threshold: str
    #: EVENTS_DROPPED: how many events this watcher missed.
    dropped: int
    raw: pb.AccountEvent = field(repr=False, compare=False)


@dataclass(frozen=True)
class Sku:
    id: str
    resource: Resource
    kind: SkuKind
    #: PRICE: the price per `unit`; PLAN / PACKAGE: the purchase price.
    unit_price: Decimal
    currency: str
    unit: str
    description: str
    raw: pb.Sku = field(repr=False, compare=False)


@dataclass(frozen=True)
class Purchase:
    grants: tuple[Grant, ...]
    price_paid: Decimal
    currency: str
    raw: pb.PurchaseResponse = field(repr=False, compare=False)


@dataclass(frozen=True)
class Deduction:
    """What paid (part of) a charge: a grant id or "balance"."""

    source: str
    #: Money taken; None for a volume plan (see `gb`).
    amount: Decimal | None
    #: GB taken from a volume plan (traffic); None for money.
    gb: Decimal | None
    raw: pb.Deduction = field(repr=False, compare=False)


@dataclass(frozen=True)
class StatementEntry:
    usage_id: str
    resource: Resource
    sku: str
    quantity: int
    cost: Decimal
    currency: str
    deductions: tuple[Deduction, ...]
    at_ms: int
    free_quantity: int
    raw: pb.StatementEntry = field(repr=False, compare=False)


@dataclass(frozen=True)
class Statement:
    account_id: str
    #: The latest entries, oldest first.
    entries: tuple[StatementEntry, ...]
    #: Older entries exist beyond the statement's size limit.
    truncated: bool
    raw: pb.Statement = field(repr=False, compare=False)


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    account_id: str
    name: str
    raw: pb.Principal = field(repr=False, compare=False)


@dataclass(frozen=True)
class Token:
    """A new token: `token` is shown this once and stored by quotad only as a hash."""

    token_id: str
    token: str = field(repr=False)
    principal: Principal
    raw: pb.CreateTokenResponse = field(repr=False, compare=False)


@dataclass(frozen=True)
class Access:
    """What a sub-user may do on an account now."""

    account_id: str
    sub_user: str
    permissions: tuple[str, ...]
    raw: pb.AccessResponse = field(repr=False, compare=False)
