"""Idempotent retries: an answer lost on the way back is asked for again with the same id,
and quotad charges once. The loss is played by a client interceptor that lets the call
reach quotad (which applies it) and then fails it as the network would."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from helpers import NewAccount, Server, statement_for, wait_for

import quotad

A10 = "gpu.shared.a10"
FAST = quotad.RetryPolicy(initial_backoff_ms=1, max_backoff_ms=10)


class LostAnswer(grpc.RpcError, grpc.Call):
    """A call that reached quotad but whose answer never arrived."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "answer dropped by the test"

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class _Outcome:
    def __init__(self, error: LostAnswer) -> None:
        self._error = error

    def result(self, timeout: float | None = None) -> Any:
        raise self._error


class DropAnswers(grpc.UnaryUnaryClientInterceptor):
    """Drops the answers of the first `drops` calls of `method` (after quotad applied
    them); counts every attempt that reached quotad."""

    def __init__(
        self, method: str, drops: int = 1, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        self.method = method
        self.drops = drops
        self.code = code
        self.attempts = 0

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        outcome = continuation(details, request)
        if not str(details.method).endswith("/" + self.method):
            return outcome
        self.attempts += 1
        if self.attempts > self.drops:
            return outcome
        outcome.result()  # quotad answered (and applied it); raises if it refused
        return _Outcome(LostAnswer(self.code))


def test_a_commit_whose_answer_is_lost_charges_once(
    server: Server, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account("1")
    drop = DropAnswers("Commit")
    with quotad.Client(server.addr, server.token, retry=FAST, interceptors=[drop]) as client:
        with client.reserve(acct, A10, 60_000) as r:
            r.commit(45_000)
        assert drop.attempts == 2  # the lost one and its retry, same reservation id
        assert r.committed is not None
        assert r.committed.charged == Decimal("0.027")
        assert client.balance(acct).balance == Decimal("0.973")
    wait_for("the charge in the ledger", lambda: bool(statement_for(admin, acct, r.id)))
    entries = statement_for(admin, acct, r.id)
    assert [(e.quantity, e.cost) for e in entries] == [(45_000, Decimal("0.027"))]


def test_a_reserve_whose_answer_is_lost_holds_once(server: Server, new_account: NewAccount) -> None:
    acct = new_account("1")
    drop = DropAnswers("Reserve", drops=2, code=grpc.StatusCode.DEADLINE_EXCEEDED)
    with quotad.Client(server.addr, server.token, retry=FAST, interceptors=[drop]) as client:
        r = client.reserve(acct, A10, 60_000).open()
        assert drop.attempts == 3
        assert client.balance(acct).held == Decimal("0.036")
        r.release()
        assert client.balance(acct).held == 0


def test_a_top_up_whose_answer_is_lost_adds_once(
    server: Server, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account()
    drop = DropAnswers("TopUp")
    with quotad.Admin(server.addr, server.token, retry=FAST, interceptors=[drop]) as a:
        assert a.top_up(acct, Decimal("2.5")).balance == Decimal("2.5")
    assert drop.attempts == 2
    assert admin.top_up(acct, 1, topup_id="t-1").balance == Decimal("3.5")
    assert admin.top_up(acct, 1, topup_id="t-1").balance == Decimal("3.5")


def test_without_retries_the_loss_is_raised(server: Server, new_account: NewAccount) -> None:
    acct = new_account("1")
    drop = DropAnswers("Commit")
    with quotad.Client(
        server.addr, server.token, retry=quotad.NO_RETRY, interceptors=[drop]
    ) as client:
        r = client.reserve(acct, A10, 10_000).open()
        with pytest.raises(quotad.Unavailable, match="dropped"):
            r.commit()
        # quotad did commit: asking again with the same id returns that outcome.
        assert client.commit(r.id, 10_000).charged == Decimal("0.006")
        assert client.balance(acct).balance == Decimal("0.994")


def test_creating_an_account_is_not_retried(server: Server) -> None:
    drop = DropAnswers("CreateAccount")
    with quotad.Admin(server.addr, server.token, retry=FAST, interceptors=[drop]) as a:
        with pytest.raises(quotad.Unavailable):
            a.create_account("acct-not-retried")
        assert drop.attempts == 1
        with pytest.raises(quotad.AlreadyExists):
            a.create_account("acct-not-retried")


def test_backoff_stays_within_its_bounds() -> None:
    p = quotad.RetryPolicy(initial_backoff_ms=100, max_backoff_ms=1_000, multiplier=2)
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        for _ in range(20):
            assert ceiling / 2 <= p.backoff_s(attempt) <= ceiling
    assert p.retries(grpc.StatusCode.UNAVAILABLE, 5)
    assert not p.retries(grpc.StatusCode.UNAVAILABLE, 6)
    assert not p.retries(grpc.StatusCode.INVALID_ARGUMENT, 1)
    with pytest.raises(ValueError, match="attempts"):
        quotad.RetryPolicy(attempts=0)
