"""quotad.aio: the same API on asyncio, against the same quotad."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import grpc
import grpc.aio
import pytest
from helpers import NewAccount, Server, statement_for, wait_for

import quotad
import quotad.aio

A10 = "gpu.shared.a10"
SPEC = "gpu.exclusive.a10.8c30g"
FAST = quotad.RetryPolicy(initial_backoff_ms=1, max_backoff_ms=10)
T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Runs a coroutine to completion with a generous overall deadline."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), 60)

    return asyncio.run(bounded())


def test_reserve_commit_release_and_denial(server: Server, new_account: NewAccount) -> None:
    acct, broke = new_account("1"), new_account()

    async def main() -> None:
        async with quotad.aio.Client(server.addr, server.token) as client:
            async with client.reserve(acct, A10, 60_000) as r:
                assert r.held == Decimal("0.036")
                done = await r.commit(45_000)
            assert done is not None
            assert done.charged == Decimal("0.027")
            async with client.reserve(acct, A10, 10_000) as r2:
                pass
            assert r2.committed is not None
            assert r2.committed.charged == Decimal("0.006")
            with pytest.raises(KeyError):
                async with client.reserve(acct, A10, 60_000):
                    raise KeyError("job failed")
            b = await client.balance(acct)
            assert (b.balance, b.held) == (Decimal("0.967"), Decimal(0))
            with pytest.raises(quotad.Denied) as denied:
                async with client.reserve(broke, A10, 1_000):
                    pytest.fail("a denied reservation must not run its block")
            assert denied.value.reason is quotad.DenyReason.NO_ENTITLEMENT
            admission = await client.admit(acct, A10, 10_000_000)
            assert admission.reason is quotad.DenyReason.INSUFFICIENT_FUNDS
            with pytest.raises(quotad.NotFound):
                await client.release("no-such-reservation")

    run(main)


def test_meter_stops_at_the_money(
    server: Server, admin: quotad.Admin, new_account: NewAccount
) -> None:
    acct = new_account("0.0035")
    told: list[quotad.Decision] = []

    async def on_stop(d: quotad.Decision) -> None:
        told.append(d)

    async def main() -> tuple[int, Decimal]:
        async with quotad.aio.Client(server.addr, server.token) as client:
            async with client.reserve(acct, A10, 2_000, reservation_id="aio-job") as r:
                async with r.meter(on_stop=on_stop) as m:
                    while not (await m.report(1_000)).stop:
                        pass
                assert m.stop_reason is quotad.DenyReason.INSUFFICIENT_FUNDS
            assert r.committed is not None
            assert r.committed.charged == m.charged
            return m.reported, m.charged

    reported, charged = run(main)
    assert len(told) == 1
    assert 1_000 <= reported <= 6_000

    def in_ledger() -> bool:
        entries = statement_for(admin, acct, "aio-job")
        return (sum(e.quantity for e in entries), sum(e.cost for e in entries)) == (
            reported,
            charged,
        )

    wait_for("the job's charges in the ledger", in_ledger)


def test_background_meter_task(server: Server, new_account: NewAccount) -> None:
    acct = new_account("0.0035")

    async def main() -> None:
        async with quotad.aio.Client(server.addr, server.token) as client:
            async with client.meter(acct, "aio-bg", A10, interval_ms=20, gpus=50) as m:
                await asyncio.wait_for(m.stop_event.wait(), 30)
            assert m.error is None
            assert m.reported > 0
            assert (await client.balance(acct)).balance == Decimal("0.0035") - m.charged

    run(main)


def test_session_idle_stop_and_watch(server: Server, new_account: NewAccount) -> None:
    acct, poor = new_account("20"), new_account("5")

    async def busy() -> bool:
        return False

    async def main() -> None:
        async with quotad.aio.Client(server.addr, server.token) as client:
            session = client.session(acct, "aio-s", SPEC, idle_timeout_ms=300, busy=busy)
            async with client.watch(acct) as events, session as s:
                assert s.held == Decimal("9.9")
                async for e in events:
                    if e.kind is quotad.EventKind.SESSION_IDLE_SHUTDOWN:
                        break
                await asyncio.wait_for(s.stop_event.wait(), 30)
                assert s.stop_cause is quotad.SessionStop.IDLE
            assert s.stopped_info is not None
            assert s.stopped_info.stop_cause is quotad.SessionStop.IDLE
            with pytest.raises(quotad.Denied) as denied:
                async with client.session(poor, "aio-poor", SPEC):
                    pytest.fail("a denied session must not run its block")
            assert denied.value.reason is quotad.DenyReason.INSUFFICIENT_FUNDS

    run(main)


def test_admin_and_watch_events(server: Server) -> None:
    async def main() -> None:
        async with (
            quotad.aio.Admin(server.addr, server.token) as admin,
            quotad.aio.Client(server.addr, server.token) as client,
        ):
            await admin.create_account("aio-acct", Decimal("0.01"))
            assert any(s.id == A10 for s in await admin.catalog())
            async with client.watch("aio-acct") as events:
                async with client.reserve("aio-acct", A10, 1_000) as r:
                    await r.commit(100_000)
                await admin.top_up("aio-acct", 1)
                kinds = []
                async for e in events:
                    kinds.append(e.kind)
                    if e.kind is quotad.EventKind.RECOVERED:
                        break
            assert quotad.EventKind.OVERDUE in kinds
            token = await admin.create_token("owner", account_id="aio-acct")
            async with quotad.aio.Client(server.addr, token.token) as owner:
                assert (await owner.balance("aio-acct")).balance == Decimal("0.95")
                with pytest.raises(quotad.PermissionDenied):
                    await owner.balance("someone-else")

    run(main)


class DropFirstCommit(grpc.aio.UnaryUnaryClientInterceptor):
    """Lets the first Commit reach quotad, then loses its answer."""

    def __init__(self) -> None:
        self.attempts = 0

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        call = await continuation(details, request)
        method = details.method
        if isinstance(method, bytes):
            method = method.decode()
        if not method.endswith("/Commit"):
            return call
        self.attempts += 1
        if self.attempts == 1:
            await call  # quotad applied it
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                details="answer dropped by the test",
            )
        return call


def test_a_lost_commit_answer_charges_once(server: Server, new_account: NewAccount) -> None:
    acct = new_account("1")
    drop = DropFirstCommit()

    async def main() -> None:
        async with quotad.aio.Client(
            server.addr, server.token, retry=FAST, interceptors=[drop]
        ) as client:
            async with client.reserve(acct, A10, 60_000) as r:
                await r.commit(45_000)
            assert (await client.balance(acct)).balance == Decimal("0.973")

    run(main)
    assert drop.attempts == 2
