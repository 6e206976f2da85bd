"""Usage streams: reports charged as they come, STOP when the money runs out, background
reporting, the reservation's settlement, and a stream that survives a quotad restart."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pytest
from helpers import NewAccount, free_port, start_server, statement_for, wait_for

import quotad

A10 = "gpu.shared.a10"  # 0.0006 per GPU-second: 1,000 ms cost 0.0006


def charged_in_ledger(admin: quotad.Admin, account: str, work_id: str) -> tuple[int, Decimal]:
    entries = statement_for(admin, account, work_id)
    return sum(e.quantity for e in entries), sum((e.cost for e in entries), Decimal(0))


def test_the_meter_stops_at_the_money(
    client: quotad.Client, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account("0.0035")  # 5.8 GPU-seconds of an A10
    stops: list[quotad.Decision] = []
    with client.meter(acct, "job-stop", A10, on_stop=stops.append) as m:
        for _ in range(20):
            d = m.report(1_000)
            if m.stopped:
                break
            assert not d.stop
            assert d.reason is None
    assert m.stopped
    assert m.stop_reason is quotad.DenyReason.INSUFFICIENT_FUNDS
    assert stops == [m.stop_decision]
    assert m.reported == 1_000 * m.seq
    assert 1_000 <= m.reported <= 6_000
    # What ran was charged and no more than one report past the money (G1).
    b = client.balance(acct)
    assert b.balance >= Decimal("-0.0006")
    assert b.balance == Decimal("0.0035") - m.charged
    wait_for(
        "the job's charges in the ledger",
        lambda: charged_in_ledger(admin, acct, "job-stop") == (m.reported, m.charged),
    )


def test_a_reservation_metered_commits_the_reported_total(
    client: quotad.Client, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account("1")
    with client.reserve(acct, A10, 10_000) as r:
        with r.meter() as m:
            for _ in range(3):
                assert not m.report(1_500).stop
            assert client.balance(acct).streams[0].work_id == r.id
        assert m.reported == 4_500
    assert r.committed is not None
    assert r.committed.charged == Decimal("0.0027") == m.charged
    b = client.balance(acct)
    assert (b.balance, b.held) == (Decimal("0.9973"), Decimal(0))
    wait_for(
        "the job's charges in the ledger",
        lambda: charged_in_ledger(admin, acct, r.id) == (4_500, Decimal("0.0027")),
    )


def test_background_mode_reports_elapsed_time_until_stopped(
    client: quotad.Client, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account("0.003")
    told = threading.Event()
    # 50 GPUs: each 20 ms of wall time is a GPU-second, so the money lasts ~100 ms.
    with client.meter(acct, "job-bg", A10, on_stop=lambda d: told.set()) as m:
        m.start(interval_ms=20, gpus=50)
        assert told.wait(30), "no STOP from quotad"
    assert m.error is None
    assert m.stopped
    assert m.reported > 0
    assert m.reported % 50 == 0
    wait_for(
        "the job's charges in the ledger",
        lambda: charged_in_ledger(admin, acct, "job-bg") == (m.reported, m.charged),
    )


def test_a_duplicate_report_is_ignored(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("1")
    with client.meter(acct, "job-dup", A10) as m:
        m.report(1_000)
    # A second stream for the same job starts again at seq 1: quotad saw it already.
    with client.meter(acct, "job-dup", A10) as again:
        d = again.report(1_000)
    assert d.ignored
    assert again.reported == 0
    assert client.balance(acct).balance == Decimal("0.9994")


def test_the_stream_survives_a_restart(
    quotad_bin: Path, tmp_path: Path, admin: quotad.Admin
) -> None:
    # Its own quotad, restarted on the same port and data dir between two reports.
    listen = f"127.0.0.1:{free_port()}"
    server = start_server(quotad_bin, tmp_path, listen=listen)
    try:
        patient = quotad.RetryPolicy(attempts=50, initial_backoff_ms=50, max_backoff_ms=500)
        with quotad.Admin(server.addr, server.token) as a:
            a.create_account("acme", Decimal(1))
        with quotad.Client(server.addr, server.token, retry=patient) as client:
            with client.reserve("acme", A10, 10_000, reservation_id="job-restart") as r:
                with r.meter() as m:
                    m.report(1_000)
                    m.report(1_000)
                    server.stop()  # drains: the stream ends, the job is settled
                    server = start_server(quotad_bin, tmp_path, listen=listen)
                    d = m.report(1_000)  # on a new stream, same job, seq 3
                    assert (d.seq, d.ignored) == (3, False)
                assert m.reconnects == 1
                assert m.reported == 3_000
            assert r.state.value == "committed"
            assert client.balance("acme").balance == Decimal("0.9982")
        with quotad.Admin(server.addr, server.token) as a:
            wait_for(
                "the job's charges in the ledger",
                lambda: charged_in_ledger(a, "acme", "job-restart") == (3_000, Decimal("0.0018")),
            )
    finally:
        server.stop()


def test_a_meter_with_a_wrong_sku_raises(client: quotad.Client, new_account: NewAccount) -> None:
    acct = new_account("1")
    m = client.meter(acct, "job-bad", "gpu.exclusive.a10.8c30g")
    with m, pytest.raises(quotad.InvalidArgument, match="priced for"):
        m.report(1_000)
