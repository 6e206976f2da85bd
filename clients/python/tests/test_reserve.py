"""Reserve / Commit / Release through the context manager, admission and denials."""

from __future__ import annotations

from decimal import Decimal

import pytest
from helpers import NewAccount

import quotad

A10 = "gpu.shared.a10"  # 0.0006 per GPU-second in the default catalog


def test_commit_charges_the_actual_quantity(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("1")
    with client.reserve(acct, A10, 60_000) as r:
        assert r.state.value == "open"
        assert r.held == Decimal("0.036")
        assert client.balance(acct).held == Decimal("0.036")
        done = r.commit(45_000)
    assert done is not None
    assert done.charged == Decimal("0.027")
    assert done.currency == "CNY"
    b = client.balance(acct)
    assert b.balance == Decimal("0.973")
    assert b.held == 0
    assert b.status is quotad.AccountStatus.ACTIVE


def test_leaving_without_commit_commits_the_reserved_quantity(
    client: quotad.Client, new_account: NewAccount
) -> None:
    acct = new_account("1")
    with client.reserve(acct, A10, 10_000) as r:
        pass
    assert r.committed is not None
    assert r.committed.charged == Decimal("0.006")
    assert client.balance(acct).balance == Decimal("0.994")


def test_an_exception_releases_the_hold(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("1")
    with pytest.raises(RuntimeError, match="job failed"), client.reserve(acct, A10, 60_000) as r:
        assert client.balance(acct).held == Decimal("0.036")
        raise RuntimeError("job failed")
    assert r.state.value == "released"
    b = client.balance(acct)
    assert (b.balance, b.held) == (Decimal(1), Decimal(0))


def test_explicit_release_and_calls_by_id(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("1")
    with client.reserve(acct, A10, 60_000, reservation_id="job-release") as r:
        assert r.release() == Decimal("0.036")
    assert client.balance(acct).held == 0
    r2 = client.reserve(acct, A10, 1_000, reservation_id="job-by-id").open()
    assert client.commit("job-by-id", 500).charged == Decimal("0.0003")
    assert r2.id == "job-by-id"
    with pytest.raises(quotad.FailedPrecondition):
        client.release("job-by-id")  # committed already
    with pytest.raises(quotad.NotFound):
        client.commit("no-such-reservation", 1)


def test_the_same_reservation_id_holds_once(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("1")
    first = client.reserve(acct, A10, 60_000, reservation_id="same-id").open()
    again = client.reserve(acct, A10, 60_000, reservation_id="same-id").open()
    assert first.held == again.held == Decimal("0.036")
    assert client.balance(acct).held == Decimal("0.036")
    first.commit(60_000)
    assert again.commit(60_000) == first.committed  # the first outcome
    assert client.balance(acct).balance == Decimal("0.964")


@pytest.mark.parametrize(
    ("balance", "reason"),
    [("0", quotad.DenyReason.NO_ENTITLEMENT), ("0.01", quotad.DenyReason.INSUFFICIENT_FUNDS)],
)
def test_denial_reasons(
    client: quotad.Client, new_account: NewAccount, balance: str, reason: quotad.DenyReason
) -> None:
    acct = new_account(balance)
    with pytest.raises(quotad.Denied) as denied, client.reserve(acct, A10, 60_000):
        pytest.fail("a denied reservation must not run its block")
    assert denied.value.reason is reason
    assert denied.value.available == Decimal(balance)
    assert denied.value.currency == "CNY"
    assert isinstance(denied.value, quotad.Error)
    assert client.balance(acct).held == 0


def test_overdue_accounts_are_denied(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("0.01")
    # A commit may exceed the reservation (charged in full): the balance goes below zero.
    with client.reserve(acct, A10, 1_000) as r:
        r.commit(100_000)
    assert client.balance(acct).status is quotad.AccountStatus.OVERDUE
    with pytest.raises(quotad.Denied) as denied:
        client.reserve(acct, A10, 1_000).open()
    assert denied.value.reason is quotad.DenyReason.OVERDUE
    admission = client.admit(acct, A10, 1_000)
    assert not admission
    assert admission.reason is quotad.DenyReason.OVERDUE


def test_admit_holds_nothing(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("0.01")
    yes = client.admit(acct, A10, 10_000)
    assert yes.admitted
    assert yes.reason is None
    assert yes.available == Decimal("0.01")
    no = client.admit(acct, A10, 60_000)
    assert (no.admitted, no.reason) == (False, quotad.DenyReason.INSUFFICIENT_FUNDS)
    assert client.balance(acct).held == 0


def test_other_resources_and_bad_input(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("1")
    # 2 GB of outbound traffic at 0.5 per GB.
    with client.reserve(acct, "traffic.outbound", 2_000_000_000, resource="traffic") as r:
        assert r.held == Decimal("1.0")
        r.commit(1_000_000_000)
    assert r.committed is not None
    assert r.committed.charged == Decimal("0.5")
    with pytest.raises(quotad.InvalidArgument, match="priced for"):
        client.reserve(acct, A10, 1_000, resource=quotad.Resource.TRAFFIC).open()
    with pytest.raises(quotad.InvalidArgument, match="quantity"):
        client.reserve(acct, A10, 0).open()
    with pytest.raises(quotad.NotFound):
        client.reserve(acct, "gpu.shared.nonesuch", 1_000).open()
    with pytest.raises(ValueError, match="unknown resource"):
        client.reserve(acct, A10, 1_000, resource="gpu")


def test_report_storage_shows_in_the_balance(
    client: quotad.Client, new_account: NewAccount
) -> None:
    acct = new_account("1")
    client.report_storage(acct, 150_000_000_000)
    assert client.balance(acct).raw.accruals.bytes_stored == 150_000_000_000
