"""Exclusive sessions: start (or denial), heartbeats from the thread, stop, and the idle
auto-shutdown.

quotad has no wire hook to move its clock, so the idle stop runs in real time: the
session gets a 300 ms idle timeout, its heartbeats say "not busy", and the test waits
(with a generous deadline, never a timing assertion) for quotad's SESSION_IDLE_SHUTDOWN
event on Watch and for the heartbeat thread to learn of the stop.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from helpers import NewAccount, wait_for

import quotad

SPEC = "gpu.exclusive.a10.8c30g"  # 9.9 an hour in the default catalog


def test_a_session_starts_beats_and_stops(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("20")
    beats: list[bool] = []

    def busy() -> bool:
        beats.append(True)
        return True

    with client.session(acct, "s-run", SPEC, busy=busy, heartbeat_interval_ms=20) as s:
        assert s.held == Decimal("9.9")  # the first hour, pre-authorised
        assert s.started_at_ms > 0
        wait_for("two heartbeats", lambda: len(beats) >= 2)
        (info,) = client.balance(acct).sessions
        assert (info.session_id, info.sku, info.auto_shutdown) == ("s-run", SPEC, True)
        assert not s.stopped
        assert not s.heartbeat().stop
    assert s.stopped
    assert s.stop_cause is quotad.SessionStop.REQUESTED
    assert s.stopped_info is not None
    assert Decimal(0) <= s.stopped_info.charged < Decimal("9.9")
    assert s.error is None
    assert client.balance(acct).sessions == ()
    # Stopping again answers the same.
    assert client.stop_session("s-run").stop_cause is quotad.SessionStop.REQUESTED


@pytest.mark.parametrize(
    ("balance", "reason"),
    [("0", quotad.DenyReason.NO_ENTITLEMENT), ("5", quotad.DenyReason.INSUFFICIENT_FUNDS)],
)
def test_a_session_the_account_cannot_pay_is_denied(
    client: quotad.Client, new_account: NewAccount, balance: str, reason: quotad.DenyReason
) -> None:
    acct = new_account(balance)
    with pytest.raises(quotad.Denied) as denied, client.session(acct, f"s-{balance}", SPEC):
        pytest.fail("a denied session must not run its block")
    assert denied.value.reason is reason
    assert denied.value.available is None


def test_an_idle_session_is_stopped(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("20")
    told = threading.Event()
    stops: list[quotad.Heartbeat] = []

    def on_stop(hb: quotad.Heartbeat) -> None:
        stops.append(hb)
        told.set()

    with client.watch(acct) as events:
        session = client.session(
            acct, "s-idle", SPEC, idle_timeout_ms=300, busy=lambda: False, on_stop=on_stop
        )
        with session as s:
            assert s.heartbeat_interval_ms == 75
            timer = threading.Timer(30, events.close)
            timer.start()
            kinds = []
            for e in events:
                kinds.append(e.kind)
                if e.kind is quotad.EventKind.SESSION_IDLE_SHUTDOWN:
                    assert e.grant_id == "s-idle"
                    break
            timer.cancel()
            assert quotad.EventKind.SESSION_IDLE_SHUTDOWN in kinds
            assert told.wait(30), "the heartbeat thread did not learn of the stop"
            assert s.stopped
            assert stops[0].stop_cause is quotad.SessionStop.IDLE
    assert s.stop_cause is quotad.SessionStop.IDLE
    assert len(stops) == 1
