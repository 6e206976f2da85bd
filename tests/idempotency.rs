//! Retries (G4), hold expiry (G3), no overspend under concurrency (G1) and overdue (R6),
//! black-box over real gRPC. Time moves only through the harness's manual clock.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use quotad::clock::Clock;
use quotad::pb;
use tonic::Code;

const ACME: &str = "acme";
const FAR_MS: i64 = T0_MS + 30 * DAY_MS;
/// Default hold lifetime when Reserve gives ttl_ms = 0 (5 minutes).
const DEFAULT_TTL_MS: i64 = 5 * 60 * 1000;
/// 100 GPU-seconds of a10 at 0.0006 per second.
const MS_100S: i64 = 100_000;
const COST_100S: &str = "0.06";

// ---- helpers ---------------------------------------------------------------------------

/// (balance, held, available) of the account as GetBalance shows them.
async fn money_view(h: &mut Harness, account: &str) -> (String, String, String) {
    let b = h.get_balance(account).await.unwrap();
    (amount(&b.balance), amount(&b.held), amount(&b.available))
}

fn view(balance: &str, held: &str, available: &str) -> (String, String, String) {
    (balance.into(), held.into(), available.into())
}

fn grant_ids(grants: &[pb::Grant]) -> Vec<String> {
    grants.iter().map(|g| g.grant_id.clone()).collect()
}

/// Statement entries of `usage_id`.
async fn entries_of(h: &mut Harness, account: &str, usage_id: &str) -> Vec<pb::StatementEntry> {
    let s = h.get_statement(account).await.unwrap();
    s.entries
        .into_iter()
        .filter(|e| e.usage_id == usage_id)
        .collect()
}

fn assert_admitted(r: &pb::ReserveResponse, held: &str) {
    assert!(r.admitted, "{r:?}");
    assert_eq!(r.reason, pb::DenyReason::Unspecified as i32, "{r:?}");
    assert_eq!(amount(&r.held), held, "{r:?}");
}

fn assert_denied(r: &pb::ReserveResponse, reason: pb::DenyReason) {
    assert!(!r.admitted, "{r:?}");
    assert_eq!(r.reason, reason as i32, "{r:?}");
    assert_eq!(amount(&r.held), "0", "{r:?}");
}

// ---- Reserve / Commit / Release retries ----------------------------------------------------

#[tokio::test]
async fn reserve_retry_returns_first_outcome_and_holds_once() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    let first = h
        .reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    assert_admitted(&first, COST_100S);
    assert_eq!(first.expires_at_ms, T0_MS + DEFAULT_TTL_MS);
    assert_eq!(amount(&first.available), "9.94");

    // Later, and over another connection: the first outcome, not a second hold.
    h.clock.advance_ms(1_000);
    let mut other = Client::connect(h.addr(), &h.token).await;
    let again = other
        .reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    assert_admitted(&again, COST_100S);
    assert_eq!(again.expires_at_ms, first.expires_at_ms);
    assert_eq!(amount(&again.available), "9.94");
    let again = h
        .reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    assert_eq!(again.expires_at_ms, first.expires_at_ms);

    assert_eq!(
        money_view(&mut h, ACME).await,
        view("10", COST_100S, "9.94")
    );
    h.shutdown().await;
}

#[tokio::test]
async fn reserve_retry_with_a_different_request_is_failed_precondition() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    h.create_account("other", "10").await.unwrap();
    assert_admitted(
        &h.reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 0)
            .await
            .unwrap(),
        COST_100S,
    );

    let fp = Code::FailedPrecondition;
    let r = h.reserve(ACME, "r1", GPU_SHARED, A10, MS_100S + 1, 0).await;
    assert_status("other quantity", r, fp, &["r1"]);
    let r = h.reserve("other", "r1", GPU_SHARED, A10, MS_100S, 0).await;
    assert_status("other account", r, fp, &["r1"]);
    let r = h
        .reserve(ACME, "r1", GPU_SHARED, "gpu.shared.t4", MS_100S, 0)
        .await;
    assert_status("other sku", r, fp, &["r1"]);

    assert_eq!(
        money_view(&mut h, ACME).await,
        view("10", COST_100S, "9.94")
    );
    assert_eq!(money_view(&mut h, "other").await, view("10", "0", "10"));
    // The reservation itself is intact.
    assert_eq!(
        amount(&h.commit("r1", MS_100S).await.unwrap().charged),
        COST_100S
    );
    h.shutdown().await;
}

#[tokio::test]
async fn commit_retry_returns_same_charge_and_charges_once() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    h.reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    let first = h.commit("r1", 80_000).await.unwrap();
    assert_eq!(amount(&first.charged), "0.048");
    assert_eq!(amount(&first.available), "9.952");

    let again = h.commit("r1", 80_000).await.unwrap();
    assert_eq!(amount(&again.charged), "0.048");
    assert_eq!(amount(&again.available), "9.952");
    let e = entries_of(&mut h, ACME, "r1").await;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (e[0].quantity, amount(&e[0].cost)),
        (80_000, "0.048".to_string())
    );
    assert_eq!(
        deductions(&e[0]),
        vec![("balance".to_string(), "0.048".to_string())]
    );

    // Also once the ledger has the usage (the statement flushed it).
    let again = h.commit("r1", 80_000).await.unwrap();
    assert_eq!(amount(&again.charged), "0.048");
    // A "retry" with another quantity is a different request: refused, nothing charged.
    assert_status(
        "Commit retried with another quantity",
        h.commit("r1", 90_000).await,
        Code::FailedPrecondition,
        &["80000"],
    );
    assert_eq!(h.get_statement(ACME).await.unwrap().entries.len(), 1);
    assert_eq!(money_view(&mut h, ACME).await, view("9.952", "0", "9.952"));
    h.shutdown().await;
}

#[tokio::test]
async fn release_retry_returns_same_amount() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    h.reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    assert_eq!(amount(&h.release("r1").await.unwrap().released), COST_100S);
    assert_eq!(amount(&h.release("r1").await.unwrap().released), COST_100S);
    assert_eq!(money_view(&mut h, ACME).await, view("10", "0", "10"));
    assert!(h.get_statement(ACME).await.unwrap().entries.is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn commit_after_release_and_release_after_commit_are_failed_precondition() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    h.reserve(ACME, "released", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    h.release("released").await.unwrap();
    let r = h.commit("released", MS_100S).await;
    assert_status(
        "Commit after Release",
        r,
        Code::FailedPrecondition,
        &["released"],
    );

    h.reserve(ACME, "committed", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    h.commit("committed", MS_100S).await.unwrap();
    let r = h.release("committed").await;
    assert_status(
        "Release after Commit",
        r,
        Code::FailedPrecondition,
        &["committed"],
    );

    assert_eq!(money_view(&mut h, ACME).await, view("9.94", "0", "9.94"));
    let s = h.get_statement(ACME).await.unwrap();
    let ids: Vec<&str> = s.entries.iter().map(|e| e.usage_id.as_str()).collect();
    assert_eq!(ids, ["committed"]);
    h.shutdown().await;
}

#[tokio::test]
async fn retries_after_a_restart_return_the_first_outcome() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    let first = h
        .reserve(ACME, "open", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    h.reserve(ACME, "done", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    h.commit("done", MS_100S).await.unwrap();
    h.top_up(ACME, "1", "t1").await.unwrap();
    h.restart().await;

    let again = h
        .reserve(ACME, "open", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    assert_admitted(&again, COST_100S);
    assert_eq!(again.expires_at_ms, first.expires_at_ms);
    assert_eq!(
        amount(&h.commit("done", MS_100S).await.unwrap().charged),
        COST_100S
    );
    h.top_up(ACME, "1", "t1").await.unwrap();
    assert_eq!(
        money_view(&mut h, ACME).await,
        view("10.94", COST_100S, "10.88")
    );
    assert_eq!(h.get_statement(ACME).await.unwrap().entries.len(), 1);
    h.shutdown().await;
}

// ---- Admin retries -------------------------------------------------------------------------

#[tokio::test]
async fn top_up_retry_adds_once() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    h.create_account("other", "0").await.unwrap();
    assert_eq!(
        amount(&h.top_up(ACME, "5", "t1").await.unwrap().balance),
        "15"
    );
    assert_eq!(
        amount(&h.top_up(ACME, "5", "t1").await.unwrap().balance),
        "15"
    );
    // The same amount written differently is the same top-up.
    assert_eq!(
        amount(&h.top_up(ACME, "5.00", "t1").await.unwrap().balance),
        "15"
    );

    let fp = Code::FailedPrecondition;
    assert_status("other amount", h.top_up(ACME, "6", "t1").await, fp, &["t1"]);
    assert_status(
        "other account",
        h.top_up("other", "5", "t1").await,
        fp,
        &["t1"],
    );
    assert_eq!(money_view(&mut h, ACME).await, view("15", "0", "15"));
    assert_eq!(money_view(&mut h, "other").await, view("0", "0", "0"));
    h.shutdown().await;
}

#[tokio::test]
async fn purchase_retry_returns_the_same_grants_and_creates_none() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "0").await.unwrap();
    let first = h
        .purchase(ACME, "plan.compute.starter", "p1", 0)
        .await
        .unwrap();
    assert_eq!(grant_ids(&first.grants), ["p1/1"]);
    assert_eq!(amount(&first.price_paid), "59");
    // A once-per-account plan: the retry is the first purchase, not a second one.
    let again = h
        .purchase(ACME, "plan.compute.starter", "p1", 0)
        .await
        .unwrap();
    assert_eq!(again, first);

    let pkg = h.purchase(ACME, "package.basic", "pk", 0).await.unwrap();
    assert_eq!(grant_ids(&pkg.grants), ["pk/1", "pk/2", "pk/3"]);
    // Use some of the grants, then retry: same grants, none created.
    h.reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    h.commit("r1", MS_100S).await.unwrap();
    let again = h.purchase(ACME, "package.basic", "pk", 0).await.unwrap();
    assert_eq!(grant_ids(&again.grants), ["pk/1", "pk/2", "pk/3"]);
    assert_eq!(amount(&again.price_paid), "199");

    let fp = Code::FailedPrecondition;
    let r = h.purchase(ACME, "plan.compute.500", "p1", 0).await;
    assert_status("same id, other sku", r, fp, &["p1"]);
    let r = h.purchase(ACME, "plan.compute.starter", "p2", 0).await;
    assert_status("starter twice", r, fp, &["plan.compute.starter"]);
    let b = h.get_balance(ACME).await.unwrap();
    assert_eq!(grant_ids(&b.grants), ["p1/1", "pk/1", "pk/2", "pk/3"]);
    assert_eq!(amount(&b.available), "399.94");
    h.shutdown().await;
}

#[tokio::test]
async fn grant_credit_retry_returns_the_same_grant_once() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    let first = h
        .grant_credit(ACME, "c1", COUPON, ANY, "5", FAR_MS)
        .await
        .unwrap();
    assert_eq!((first.grant_id.as_str(), first.quota.as_str()), ("c1", "5"));
    let again = h
        .grant_credit(ACME, "c1", COUPON, ANY, "5", FAR_MS)
        .await
        .unwrap();
    assert_eq!(again, first);
    let b = h.get_balance(ACME).await.unwrap();
    assert_eq!(grant_ids(&b.grants), ["c1"]);
    assert_eq!(amount(&b.available), "15");

    let fp = Code::FailedPrecondition;
    let r = h.grant_credit(ACME, "c1", COUPON, ANY, "6", FAR_MS).await;
    assert_status("other amount", r, fp, &["c1"]);
    let r = h
        .grant_credit(ACME, "c1", COUPON, ANY, "5", FAR_MS + 1)
        .await;
    assert_status("other expiry", r, fp, &["c1"]);
    assert_eq!(amount(&h.get_balance(ACME).await.unwrap().available), "15");
    h.shutdown().await;
}

// ---- hold expiry (G3) ----------------------------------------------------------------------

#[tokio::test]
async fn hold_is_released_at_its_ttl() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "1").await.unwrap();
    let r = h
        .reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 60_000)
        .await
        .unwrap();
    assert_admitted(&r, COST_100S);
    assert_eq!(r.expires_at_ms, T0_MS + 60_000);

    h.clock.advance_ms(59_999);
    assert_eq!(money_view(&mut h, ACME).await, view("1", COST_100S, "0.94"));
    h.clock.advance_ms(2);
    assert_eq!(money_view(&mut h, ACME).await, view("1", "0", "1"));

    let fp = Code::FailedPrecondition;
    assert_status(
        "Commit expired",
        h.commit("r1", MS_100S).await,
        fp,
        &["r1", "expired"],
    );
    assert_status(
        "Release expired",
        h.release("r1").await,
        fp,
        &["r1", "expired"],
    );
    assert!(h.get_statement(ACME).await.unwrap().entries.is_empty());
    // All of the balance is available again: 1_666_666 ms cost 0.9999996.
    assert_admitted(
        &h.reserve(ACME, "r2", GPU_SHARED, A10, 1_666_666, 0)
            .await
            .unwrap(),
        "0.9999996",
    );
    h.shutdown().await;
}

/// A Reserve retried after its hold expired answers the first outcome (G4), but the
/// `available` it reports is the current one: the expired hold no longer counts.
#[tokio::test]
async fn reserve_retry_after_expiry_reports_current_available() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "1").await.unwrap();
    let first = h
        .reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 60_000)
        .await
        .unwrap();
    h.clock.advance_ms(60_001);
    let again = h
        .reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 60_000)
        .await
        .unwrap();
    assert_eq!(again.expires_at_ms, first.expires_at_ms);
    assert_eq!(amount(&again.available), "1", "{again:?}");
    assert_eq!(money_view(&mut h, ACME).await, view("1", "0", "1"));
    h.shutdown().await;
}

/// The sweep expires due holds on every account, keeps live ones, and forgets settled
/// reservations once the retention window (24 h) has passed.
#[tokio::test]
async fn sweep_releases_expired_holds_and_keeps_live_ones() {
    // The background loop sweeps once an hour of real time: only our sweeps run here.
    let mut h = Harness::start_with(|c| c.sync_interval_ms = 3_600_000).await;
    h.create_account(ACME, "1").await.unwrap();
    h.reserve(ACME, "short", GPU_SHARED, A10, MS_100S, 60_000)
        .await
        .unwrap();
    h.reserve(ACME, "long", GPU_SHARED, A10, MS_100S, 120_000)
        .await
        .unwrap();

    h.clock.advance_ms(60_001);
    h.engine().sweep(h.clock.now_ms());
    assert_eq!(money_view(&mut h, ACME).await, view("1", COST_100S, "0.94"));
    let fp = Code::FailedPrecondition;
    assert_status(
        "Commit swept",
        h.commit("short", MS_100S).await,
        fp,
        &["expired"],
    );
    assert_status("Release swept", h.release("short").await, fp, &["expired"]);
    assert_eq!(
        amount(&h.commit("long", MS_100S).await.unwrap().charged),
        COST_100S
    );
    assert_eq!(money_view(&mut h, ACME).await, view("0.94", "0", "0.94"));

    h.clock.advance_ms(DAY_MS + 1);
    h.engine().sweep(h.clock.now_ms());
    assert_status(
        "Commit forgotten",
        h.commit("short", MS_100S).await,
        Code::NotFound,
        &["short"],
    );
    assert_status(
        "Commit forgotten",
        h.commit("long", MS_100S).await,
        Code::NotFound,
        &["long"],
    );
    assert_eq!(money_view(&mut h, ACME).await, view("0.94", "0", "0.94"));
    assert_eq!(h.get_statement(ACME).await.unwrap().entries.len(), 1);
    h.shutdown().await;
}

// ---- concurrency (G1) ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_reserves_never_overspend() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "1").await.unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let mut c = h.client.clone();
            tokio::spawn(async move {
                let id = format!("c{i}");
                let r = c.reserve(ACME, &id, GPU_SHARED, A10, MS_100S, 0).await;
                (id, r)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for t in tasks {
        let (id, r) = t.await.unwrap();
        let r = r.unwrap_or_else(|s| panic!("Reserve {id}: {s:?}"));
        if r.admitted {
            assert_admitted(&r, COST_100S);
            admitted.push(id);
        } else {
            assert_denied(&r, pb::DenyReason::InsufficientFunds);
        }
    }
    // floor(1 / 0.06) = 16
    assert_eq!(admitted.len(), 16, "{admitted:?}");
    assert_eq!(money_view(&mut h, ACME).await, view("1", "0.96", "0.04"));

    let commits: Vec<_> = admitted
        .iter()
        .map(|id| {
            let mut c = h.client.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let r = c.commit(&id, MS_100S).await;
                (id, r)
            })
        })
        .collect();
    for t in commits {
        let (id, r) = t.await.unwrap();
        let c = r.unwrap_or_else(|s| panic!("Commit {id}: {s:?}"));
        assert_eq!(amount(&c.charged), COST_100S);
    }
    assert_eq!(money_view(&mut h, ACME).await, view("0.04", "0", "0.04"));
    let s = h.get_statement(ACME).await.unwrap();
    assert_eq!(s.entries.len(), 16);
    assert!(
        s.entries.iter().all(|e| amount(&e.cost) == COST_100S),
        "{s:?}"
    );
    // What is left pays for 66_666 ms (0.0399996) and not 100 s.
    assert_denied(
        &h.reserve(ACME, "late", GPU_SHARED, A10, MS_100S, 0)
            .await
            .unwrap(),
        pb::DenyReason::InsufficientFunds,
    );
    assert_admitted(
        &h.reserve(ACME, "last", GPU_SHARED, A10, 66_666, 0)
            .await
            .unwrap(),
        "0.0399996",
    );
    h.shutdown().await;
}

/// Concurrent retries of one Reserve and of its Commit: each waits for the first call to be
/// recorded and answers its outcome (never ABORTED), and the hold and charge happen once.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_retries_hold_and_charge_once() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "1").await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut c = h.client.clone();
            tokio::spawn(async move { c.reserve(ACME, "same", GPU_SHARED, A10, MS_100S, 0).await })
        })
        .collect();
    let mut expires = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_admitted(&r, COST_100S);
        expires.push(r.expires_at_ms);
    }
    assert_eq!(expires.len(), 32);
    assert!(
        expires.iter().all(|&e| e == T0_MS + DEFAULT_TTL_MS),
        "{expires:?}"
    );
    assert_eq!(money_view(&mut h, ACME).await, view("1", COST_100S, "0.94"));

    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let mut c = h.client.clone();
            tokio::spawn(async move { c.commit("same", MS_100S).await })
        })
        .collect();
    for t in tasks {
        let c = t.await.unwrap().unwrap();
        assert_eq!(amount(&c.charged), COST_100S);
    }
    assert_eq!(money_view(&mut h, ACME).await, view("0.94", "0", "0.94"));
    assert_eq!(h.get_statement(ACME).await.unwrap().entries.len(), 1);
    h.shutdown().await;
}

// ---- overdue (R6) --------------------------------------------------------------------------

#[tokio::test]
async fn commit_beyond_the_hold_can_go_overdue_until_a_top_up() {
    use pb::balance::AccountStatus;
    let mut h = Harness::start().await;
    h.create_account(ACME, "1").await.unwrap();
    h.reserve(ACME, "r1", GPU_SHARED, A10, MS_100S, 0)
        .await
        .unwrap();
    // 2000 s used against a 100 s hold: charged in full.
    let c = h.commit("r1", 2_000_000).await.unwrap();
    assert_eq!(amount(&c.charged), "1.2");
    assert_eq!(amount(&c.available), "0");
    let b = h.get_balance(ACME).await.unwrap();
    assert_eq!(b.status, AccountStatus::Overdue as i32, "{b:?}");
    assert_eq!(
        (amount(&b.balance), amount(&b.held), amount(&b.available)),
        view("-0.2", "0", "0")
    );
    let e = entries_of(&mut h, ACME, "r1").await;
    assert_eq!(
        deductions(&e[0]),
        vec![("balance".to_string(), "1.2".to_string())]
    );

    // Nothing new is admitted, whatever grants remain.
    h.grant_credit(ACME, "c1", COUPON, ANY, "5", FAR_MS)
        .await
        .unwrap();
    assert_denied(
        &h.reserve(ACME, "r2", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap(),
        pb::DenyReason::Overdue,
    );
    let a = h.admit(ACME, GPU_SHARED, A10, 1_000).await.unwrap();
    assert_eq!(
        (a.admitted, a.reason),
        (false, pb::DenyReason::Overdue as i32)
    );

    // Still below zero: still overdue.
    let b = h.top_up(ACME, "0.1", "t1").await.unwrap();
    assert_eq!(
        (amount(&b.balance), b.status),
        ("-0.1".to_string(), AccountStatus::Overdue as i32)
    );
    assert_denied(
        &h.reserve(ACME, "r2", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap(),
        pb::DenyReason::Overdue,
    );

    // Back to zero: lifted at once, the coupon pays again.
    let b = h.top_up(ACME, "0.1", "t2").await.unwrap();
    assert_eq!(
        (amount(&b.balance), b.status),
        ("0".to_string(), AccountStatus::Active as i32)
    );
    assert_admitted(
        &h.reserve(ACME, "r2", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap(),
        "0.0006",
    );
    let a = h.admit(ACME, GPU_SHARED, A10, 1_000).await.unwrap();
    assert!(a.admitted, "{a:?}");
    h.shutdown().await;
}

/// Concurrent retries of one TopUp, one Purchase and one GrantCredit apply each once; many
/// distinct concurrent top-ups all apply.
#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_admin_retries_apply_once() {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..48 {
        let mut c = h.client.clone();
        tasks.push(tokio::spawn(async move {
            let r = match i % 4 {
                0 => c.top_up(ACME, "5", "t-same").await.map(drop),
                1 => c.top_up(ACME, "1", &format!("t-{i}")).await.map(drop),
                2 => c
                    .purchase(ACME, "plan.compute.500", "p-same", 0)
                    .await
                    .map(drop),
                _ => c
                    .grant_credit(ACME, "c-same", COUPON, ANY, "5", FAR_MS)
                    .await
                    .map(drop),
            };
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        r.unwrap_or_else(|s| panic!("call {i}: {s:?}"));
    }
    let b = h.get_balance(ACME).await.unwrap();
    // 10 + 5 once + 12 distinct top-ups of 1.
    assert_eq!(amount(&b.balance), "27");
    assert_eq!(grant_ids(&b.grants), ["c-same", "p-same/1"]);
    assert_eq!(amount(&b.available), "532");
    h.shutdown().await;
}
