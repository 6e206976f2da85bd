"""Conversions between the wire (quotad.v1 messages) and the client's values.

Shared by the blocking client and `quotad.aio`, so both read and write the same way:
money in and out as Decimal (a float is refused, never rounded), enums by name.
"""

from __future__ import annotations

import enum
import uuid
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar, Union

from . import models as m
from .v1 import quotad_pb2 as pb

#: An amount of money as the API accepts it: exact types only, never float.
Amount = Union[Decimal, int, str]
#: A resource as the API accepts it: the enum or its name ("GPU_SHARED", "traffic").
ResourceArg = Union[m.Resource, str]

E = TypeVar("E", bound=enum.Enum)


def new_id() -> str:
    """A fresh client id (reservation, session, top-up, purchase): a random UUID."""
    return str(uuid.uuid4())


def enum_out(cls: type[E], wire: Any, value: int) -> E:
    """The member of `cls` for a wire enum value; UNSPECIFIED for one this client does
    not know (a newer server)."""
    try:
        return cls(wire.Name(value))
    except ValueError:
        return cls["UNSPECIFIED"]


def reason_out(value: int) -> m.DenyReason | None:
    return None if value == 0 else enum_out(m.DenyReason, pb.DenyReason, value)


def stop_out(value: int) -> m.SessionStop | None:
    return None if value == 0 else enum_out(m.SessionStop, pb.SessionStop, value)


def resource_in(
    r: ResourceArg | None, default: m.Resource = m.Resource.GPU_SHARED
) -> pb.Resource.ValueType:
    if r is None:
        r = default
    if isinstance(r, str):
        try:
            r = m.Resource[r.upper()]
        except KeyError:
            names = ", ".join(x.name for x in m.Resource if x is not m.Resource.UNSPECIFIED)
            raise ValueError(f"unknown resource {r!r}: one of {names}") from None
    return pb.Resource.Value(r.value)


def grant_kind_in(k: m.GrantKind | str) -> pb.Grant.Kind.ValueType:
    kind = m.GrantKind[k.upper()] if isinstance(k, str) else k
    return pb.Grant.Kind.Value(kind.value)


def principal_kind_in(k: m.PrincipalKind | str) -> pb.Principal.Kind.ValueType:
    kind = m.PrincipalKind[k.upper()] if isinstance(k, str) else k
    return pb.Principal.Kind.Value(kind.value)


def decimal_in(field: str, x: Amount) -> Decimal:
    """An exact amount; floats (and bools) are refused: 0.1 is not exactly 0.1."""
    if isinstance(x, bool) or not isinstance(x, (Decimal, int, str)):
        raise TypeError(
            f"{field} must be a Decimal, int or decimal string, not {type(x).__name__} "
            "(money is exact: use Decimal('0.1'), not 0.1)"
        )
    try:
        d = Decimal(x)
    except InvalidOperation:
        raise ValueError(f"{field} {x!r} is not a decimal number") from None
    if not d.is_finite():
        raise ValueError(f"{field} {x!r} is not a finite amount")
    return d


def money_in(field: str, x: Amount) -> pb.Money:
    """Money in the deployment's currency (an empty currency means quotad's own)."""
    return pb.Money(amount=str(decimal_in(field, x)))


def decimal_out(s: str) -> Decimal:
    return Decimal(s) if s else Decimal(0)


def money_out(x: pb.Money) -> Decimal:
    return decimal_out(x.amount)


def grant_out(g: pb.Grant) -> m.Grant:
    return m.Grant(
        grant_id=g.grant_id,
        kind=enum_out(m.GrantKind, pb.Grant.Kind, g.kind),
        resource=enum_out(m.Resource, pb.Resource, g.resource),
        quota=decimal_out(g.quota),
        remaining=decimal_out(g.remaining),
        unit=g.unit,
        starts_at_ms=g.starts_at_ms,
        expires_at_ms=g.expires_at_ms,
        source=g.source,
        covers=tuple(enum_out(m.Resource, pb.Resource, r) for r in g.covers),
        state=enum_out(m.GrantState, pb.Grant.State, g.state),
        stackable=g.stackable,
        raw=g,
    )


def balance_out(b: pb.Balance) -> m.Balance:
    return m.Balance(
        account_id=b.account_id,
        status=enum_out(m.AccountStatus, pb.Balance.AccountStatus, b.status),
        balance=money_out(b.balance),
        available=money_out(b.available),
        held=money_out(b.held),
        currency=b.balance.currency or b.available.currency,
        grants=tuple(grant_out(g) for g in b.grants),
        sessions=tuple(
            m.SessionInfo(
                session_id=s.session_id,
                sku=s.sku,
                started_at_ms=s.started_at_ms,
                auto_shutdown=s.auto_shutdown,
                idle_timeout_ms=s.idle_timeout_ms,
                last_busy_at_ms=s.last_busy_at_ms,
                charged=money_out(s.charged),
                accrued=money_out(s.accrued),
                hourly=money_out(s.hourly),
                accrues_without_activity=s.accrues_without_activity,
                raw=s,
            )
            for s in b.sessions
        ),
        streams=tuple(
            m.WorkInfo(
                work_id=w.work_id,
                sku=w.sku,
                charged=money_out(w.charged),
                held=money_out(w.held),
                last_seq=w.last_seq,
                raw=w,
            )
            for w in b.streams
        ),
        raw=b,
    )


def admission_out(r: pb.AdmitResponse) -> m.Admission:
    return m.Admission(
        admitted=r.admitted,
        reason=reason_out(r.reason),
        available=money_out(r.available),
        currency=r.available.currency,
        raw=r,
    )


def committed_out(r: pb.CommitResponse) -> m.Committed:
    return m.Committed(
        charged=money_out(r.charged),
        available=money_out(r.available),
        currency=r.charged.currency or r.available.currency,
        raw=r,
    )


def decision_out(d: pb.UsageDecision) -> m.Decision:
    return m.Decision(
        seq=d.seq,
        stop=d.action == pb.STOP,
        reason=reason_out(d.reason),
        remaining_quantity=d.remaining_quantity,
        ignored=d.ignored,
        charged=money_out(d.charged),
        currency=d.charged.currency,
        raw=d,
    )


def heartbeat_out(r: pb.HeartbeatResponse) -> m.Heartbeat:
    return m.Heartbeat(
        stop=r.action == pb.STOP,
        reason=reason_out(r.reason),
        stop_cause=stop_out(r.stop_cause),
        stopped_at_ms=r.stopped_at_ms,
        raw=r,
    )


def session_stopped_out(r: pb.StopSessionResponse) -> m.SessionStopped:
    return m.SessionStopped(
        charged=money_out(r.charged),
        currency=r.charged.currency,
        stopped_at_ms=r.stopped_at_ms,
        stop_cause=stop_out(r.stop_cause),
        raw=r,
    )


def event_out(e: pb.AccountEvent) -> m.Event:
    return m.Event(
        account_id=e.account_id,
        kind=enum_out(m.EventKind, pb.AccountEvent.Kind, e.kind),
        grant_id=e.grant_id,
        message=e.message,
        at_ms=e.at_ms,
        threshold=e.threshold,
        dropped=e.dropped,
        raw=e,
    )


def sku_out(s: pb.Sku) -> m.Sku:
    return m.Sku(
        id=s.id,
        resource=enum_out(m.Resource, pb.Resource, s.resource),
        kind=enum_out(m.SkuKind, pb.Sku.Kind, s.kind),
        unit_price=money_out(s.unit_price),
        currency=s.unit_price.currency,
        unit=s.unit,
        description=s.description,
        raw=s,
    )


def purchase_out(r: pb.PurchaseResponse) -> m.Purchase:
    return m.Purchase(
        grants=tuple(grant_out(g) for g in r.grants),
        price_paid=money_out(r.price_paid),
        currency=r.price_paid.currency,
        raw=r,
    )


def statement_out(s: pb.Statement) -> m.Statement:
    return m.Statement(
        account_id=s.account_id,
        entries=tuple(
            m.StatementEntry(
                usage_id=e.usage_id,
                resource=enum_out(m.Resource, pb.Resource, e.resource),
                sku=e.sku,
                quantity=e.quantity,
                cost=money_out(e.cost),
                currency=e.cost.currency,
                deductions=tuple(
                    m.Deduction(
                        source=d.source,
                        amount=money_out(d.amount) if d.HasField("amount") else None,
                        gb=Decimal(d.gb) if d.gb else None,
                        raw=d,
                    )
                    for d in e.deductions
                ),
                at_ms=e.at_ms,
                free_quantity=e.free_quantity,
                raw=e,
            )
            for e in s.entries
        ),
        truncated=s.truncated,
        raw=s,
    )


def principal_out(p: pb.Principal) -> m.Principal:
    return m.Principal(
        kind=enum_out(m.PrincipalKind, pb.Principal.Kind, p.kind),
        account_id=p.account_id,
        name=p.name,
        raw=p,
    )


def token_out(r: pb.CreateTokenResponse) -> m.Token:
    return m.Token(token_id=r.token_id, token=r.token, principal=principal_out(r.principal), raw=r)


def access_out(r: pb.AccessResponse) -> m.Access:
    return m.Access(
        account_id=r.account_id,
        sub_user=r.sub_user,
        permissions=tuple(r.permissions),
        raw=r,
    )
