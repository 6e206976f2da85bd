"""Watch: events as they happen, the subscription in place when watch() returns."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from helpers import NewAccount, Server

import quotad

A10 = "gpu.shared.a10"


def take(
    events: quotad.Watch, *kinds: quotad.EventKind, timeout_s: float = 30
) -> list[quotad.Event]:
    """Reads events until each of `kinds` came (in order), or fails after timeout_s."""
    timer = threading.Timer(timeout_s, events.close)
    timer.start()
    got: list[quotad.Event] = []
    try:
        want = list(kinds)
        for e in events:
            got.append(e)
            if want and e.kind is want[0]:
                want.pop(0)
            if not want:
                return got
    finally:
        timer.cancel()
    raise AssertionError(f"no {kinds} within {timeout_s} s; got {[e.kind for e in got]}")


def test_overdue_and_recovered(
    client: quotad.Client, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account("0.01")
    with client.watch(acct) as events:
        with client.reserve(acct, A10, 1_000) as r:
            r.commit(100_000)  # 0.06: the balance goes to -0.05
        admin.top_up(acct, Decimal(1))
        got = take(events, quotad.EventKind.OVERDUE, quotad.EventKind.RECOVERED)
    overdue = next(e for e in got if e.kind is quotad.EventKind.OVERDUE)
    assert overdue.account_id == acct
    assert overdue.at_ms > 0
    assert overdue.message


def test_work_stopped(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("0.0035")
    with client.watch(acct) as events:
        with client.meter(acct, "job-watched", A10) as m:
            while not m.report(1_000).stop:
                pass
        e = take(events, quotad.EventKind.WORK_STOPPED)[-1]
    assert e.grant_id == "job-watched"


def test_close_ends_the_iteration(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("1")
    events = client.watch(acct)
    threading.Timer(0.1, events.close).start()
    assert list(events) == []


def test_watch_needs_permission(
    server: Server, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account("1")
    token = admin.create_token(quotad.PrincipalKind.SUB_USER, name="watcher-bob")
    with quotad.Client(server.addr, token.token) as bob:
        with pytest.raises(quotad.PermissionDenied, match="owner"):
            bob.watch(acct)
        admin.grant_access(acct, "watcher-bob", ["watch"])
        with bob.watch(acct):
            pass
