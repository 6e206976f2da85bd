"""The Admin service, tokens and access, and the error tree over real statuses."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from helpers import NewAccount, Server, statement_for, wait_for

import quotad

A10 = "gpu.shared.a10"


def test_catalog(admin: quotad.Admin) -> None:
    skus = {s.id: s for s in admin.catalog()}
    a10 = skus[A10]
    assert (a10.kind, a10.resource, a10.unit) == (
        quotad.SkuKind.PRICE,
        quotad.Resource.GPU_SHARED,
        "second",
    )
    assert (a10.unit_price, a10.currency) == (Decimal("0.0006"), "CNY")
    assert skus["plan.compute.starter"].kind is quotad.SkuKind.PLAN


def test_purchase_pays_first_and_shows_in_the_statement(
    client: quotad.Client, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account()
    bought = admin.purchase(acct, "plan.compute.starter", purchase_id="p-1")
    assert bought.price_paid == Decimal(59)
    (grant,) = bought.grants
    assert (grant.kind, grant.quota, grant.unit) == (quotad.GrantKind.PLAN, Decimal(200), "CNY")
    assert quotad.Resource.GPU_SHARED in grant.covers
    assert grant.state is quotad.GrantState.VALID
    # The same purchase id again is the same purchase.
    assert admin.purchase(acct, "plan.compute.starter", purchase_id="p-1").grants == bought.grants
    with client.reserve(acct, A10, 60_000) as r:
        r.commit(45_000)
    b = client.balance(acct)
    assert (b.status, b.balance, b.grants[0].remaining) == (
        quotad.AccountStatus.ACTIVE,
        Decimal(0),
        Decimal("199.973"),
    )
    wait_for("the charge in the ledger", lambda: bool(statement_for(admin, acct, r.id)))
    (entry,) = statement_for(admin, acct, r.id)
    assert (entry.resource, entry.sku, entry.quantity, entry.cost) == (
        quotad.Resource.GPU_SHARED,
        A10,
        45_000,
        Decimal("0.027"),
    )
    assert [(d.source, d.amount) for d in entry.deductions] == [(grant.grant_id, Decimal("0.027"))]


def test_credit_and_top_up_are_idempotent(admin: quotad.Admin, new_account: NewAccount) -> None:
    acct = new_account()
    expires_at_ms = int(time.time() * 1000) + 86_400_000
    coupon = admin.grant_credit(acct, "coupon-1", Decimal("5"), expires_at_ms)
    assert (coupon.kind, coupon.remaining, coupon.expires_at_ms) == (
        quotad.GrantKind.COUPON,
        Decimal(5),
        expires_at_ms,
    )
    assert admin.grant_credit(acct, "coupon-1", Decimal("5"), expires_at_ms) == coupon
    assert admin.top_up(acct, "1.25", topup_id="t").balance == Decimal("1.25")
    assert admin.top_up(acct, "1.25", topup_id="t").balance == Decimal("1.25")


def test_money_is_never_a_float(admin: quotad.Admin, new_account: NewAccount) -> None:
    acct = new_account()
    with pytest.raises(TypeError, match="exact"):
        admin.top_up(acct, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a decimal"):
        admin.top_up(acct, "ten")


def test_tokens_and_access(server: Server, admin: quotad.Admin, new_account: NewAccount) -> None:
    acct, other = new_account("1"), new_account("1")
    owner = admin.create_token("owner", account_id=acct)
    assert owner.principal.kind is quotad.PrincipalKind.OWNER
    assert owner.token not in repr(owner)
    with quotad.Client(server.addr, owner.token) as c:
        assert c.balance(acct).balance == Decimal(1)
        with pytest.raises(quotad.PermissionDenied):
            c.balance(other)
    sub = admin.create_token(quotad.PrincipalKind.SUB_USER, name="bob")
    with quotad.Client(server.addr, sub.token) as bob:
        with pytest.raises(quotad.PermissionDenied, match="owner"):
            bob.balance(acct)
        assert admin.grant_access(acct, "bob", ["balance"]).permissions == ("balance",)
        assert bob.balance(acct).account_id == acct
        assert admin.revoke_access(acct, "bob").permissions == ()
        with pytest.raises(quotad.PermissionDenied):
            bob.balance(acct)
    assert admin.revoke_token(owner.token_id)

    def refused() -> bool:
        with quotad.Client(server.addr, owner.token) as c:
            try:
                c.balance(acct)
            except quotad.Unauthenticated:
                return True
        return False

    wait_for("the revocation", refused)


def test_errors_by_status(server: Server, admin: quotad.Admin) -> None:
    stranger = quotad.Client(server.addr, "qdt_not_a_token")
    with stranger, pytest.raises(quotad.Unauthenticated) as e:
        stranger.balance("acme")
    assert e.value.request_id  # quotad's id for its logs
    with pytest.raises(quotad.NotFound):
        admin.statement("no-such-account")
    with pytest.raises(quotad.InvalidArgument, match="account_id"):
        admin.create_account("spaces are not allowed")
    admin.create_account("dup")
    with pytest.raises(quotad.AlreadyExists):
        admin.create_account("dup")
    admin.purchase("dup", "plan.storage.100gb")
    with pytest.raises(quotad.FailedPrecondition):
        admin.purchase("dup", "plan.storage.100gb")  # a storage plan does not stack
    nowhere = quotad.Client("127.0.0.1:1", "x", retry=quotad.NO_RETRY)
    with nowhere, pytest.raises(quotad.Unavailable):
        nowhere.balance("acme")
