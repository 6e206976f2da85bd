//! Metering beyond GPU time over real gRPC, with time moved by hand: outbound traffic
//! against stackable volume plans (earliest expiry first, then the balance), storage plans
//! that do not stack (a package's storage included), stored levels charged hourly beyond
//! the plan's capacity (also across a restart), the monthly free requests resetting at
//! midnight in Asia/Shanghai, an overdue account refused uploads and traffic, and what
//! accrues while nothing runs with its projection (R1, R2, R3, R5, R6, R10).

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

const GB: i64 = 1_000_000_000;
const TRAFFIC: &str = "traffic.outbound";
const TRAFFIC_RESOURCE: pb::Resource = pb::Resource::Traffic;
const HOUR_MS: i64 = 3_600_000;

/// The sku of requests of `resource` (REQUEST_GET or REQUEST_PUT).
fn request_sku(resource: pb::Resource) -> &'static str {
    if resource == pb::Resource::RequestGet {
        "request.get"
    } else {
        "request.put"
    }
}

async fn requests(
    h: &mut Harness,
    id: &str,
    resource: pb::Resource,
    n: i64,
) -> pb::ReserveResponse {
    let r = h
        .reserve("acme", id, resource, request_sku(resource), n, 0)
        .await
        .unwrap();
    if r.admitted {
        h.commit(id, n).await.unwrap();
    }
    r
}

/// A deduction as (source, GB from a volume plan, money it stands for).
type Part = (String, String, String);

/// Deductions as (source, GB from a volume plan, money it stands for).
fn gb_and_money(e: &pb::StatementEntry) -> Vec<Part> {
    e.deductions
        .iter()
        .map(|d| (d.source.clone(), d.gb.clone(), amount(&d.amount)))
        .collect()
}

fn remaining(b: &pb::Balance, id: &str) -> String {
    b.grants
        .iter()
        .find(|g| g.grant_id == id)
        .map(|g| g.remaining.clone())
        .unwrap_or_else(|| panic!("no grant {id} in {b:?}"))
}

#[tokio::test]
async fn traffic_plans_stack_and_pay_earliest_expiry_first_then_the_balance() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    // Two 100 GB traffic plans a day apart: both accepted (traffic plans stack); t1
    // expires a day before t2.
    h.purchase("acme", "plan.traffic.100gb", "t1", 0)
        .await
        .unwrap();
    h.clock.advance_ms(DAY_MS);
    h.purchase("acme", "plan.traffic.100gb", "t2", 0)
        .await
        .unwrap();

    // 150 GB with a zero balance: the plans cover it all (list cost 150 x 0.5 = 75), so
    // nothing is held in money and the account, with plans, is entitled (scenario 3).
    let r = h
        .reserve("acme", "dl-1", TRAFFIC_RESOURCE, TRAFFIC, 150 * GB, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
    assert_eq!(amount(&r.held), "0");
    // Charged is money: the plans paid it all in GB.
    let c = h.commit("dl-1", 150 * GB).await.unwrap();
    assert_eq!(amount(&c.charged), "0");
    // t1 (earlier expiry) gives its 100 GB first, then t2 50 GB.
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(remaining(&b, "t1/1"), "0");
    assert_eq!(remaining(&b, "t2/1"), "50");
    assert_eq!(amount(&b.balance), "0");

    // 60 GB: 50 GB from t2, 10 GB = 5.00 in money, which a zero balance cannot pay.
    let r = h
        .reserve("acme", "dl-2", TRAFFIC_RESOURCE, TRAFFIC, 60 * GB, 0)
        .await
        .unwrap();
    assert!(!r.admitted);
    assert_eq!(r.reason, pb::DenyReason::InsufficientFunds as i32);

    // With 1.00 on the balance, 51 GB fit: 50 GB from t2 and 1 GB x 0.5 = 0.5 held.
    h.top_up("acme", "1", "tu-1").await.unwrap();
    let r = h
        .reserve("acme", "dl-3", TRAFFIC_RESOURCE, TRAFFIC, 51 * GB, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
    assert_eq!(amount(&r.held), "0.5");
    let c = h.commit("dl-3", 51 * GB).await.unwrap();
    assert_eq!(amount(&c.charged), "0.5");
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(remaining(&b, "t2/1"), "0");
    assert_eq!(amount(&b.balance), "0.5");

    // The ledger agrees: the statement lists the GB each plan gave and the money the
    // balance paid, and the plans' remaining GB are the same as the sidecar's.
    h.engine().flush().await.unwrap();
    let s = h.get_statement("acme").await.unwrap();
    let e = s.entries.iter().find(|e| e.usage_id == "dl-3").unwrap();
    assert_eq!(e.resource, pb::Resource::Traffic as i32);
    assert_eq!(e.quantity, 51 * GB);
    // 50 GB from t2 (standing for 25 of the 25.5 listed), then 0.5 of money from the
    // balance: the deductions sum to the cost.
    assert_eq!(amount(&e.cost), "25.5");
    assert_eq!(
        gb_and_money(e),
        vec![
            ("t2/1".to_owned(), "50".to_owned(), "25".to_owned()),
            ("balance".to_owned(), String::new(), "0.5".to_owned())
        ]
    );
    // dl-1 was paid by the plans alone, t1 first: no money at all.
    let e1 = s.entries.iter().find(|e| e.usage_id == "dl-1").unwrap();
    assert_eq!(
        gb_and_money(e1),
        vec![
            ("t1/1".to_owned(), "100".to_owned(), "50".to_owned()),
            ("t2/1".to_owned(), "50".to_owned(), "25".to_owned())
        ]
    );
    h.engine().refresh_account("acme").await.unwrap();
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(remaining(&b, "t1/1"), "0");
    assert_eq!(remaining(&b, "t2/1"), "0");
    assert_eq!(amount(&b.balance), "0.5");
    h.shutdown().await;
}

/// Issue 12, item 4: a 100 GB traffic plan expiring in a year and a 1 CNY traffic coupon
/// expiring in 30 days. R3 (earliest expiry first) orders grants of both kinds: the coupon
/// pays first, in money, then the plan in GB. Every entry's deductions sum to its cost (a
/// GB deduction carries the money it stands for), and each Commit's `charged` is the money
/// its entry's money grants and balance paid.
#[tokio::test]
async fn an_earlier_expiring_coupon_pays_before_a_traffic_plan() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    h.purchase("acme", "plan.traffic.100gb", "t1", 0)
        .await
        .unwrap();
    let month = T0_MS + 30 * DAY_MS;
    h.grant_credit("acme", "c1", COUPON, TRAFFIC_RESOURCE, "1", month)
        .await
        .unwrap();

    // 1 GB (0.5): the coupon's, so 0.5 is held and charged in money.
    let r = h
        .reserve("acme", "dl-1", TRAFFIC_RESOURCE, TRAFFIC, GB, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
    assert_eq!(amount(&r.held), "0.5");
    let mut charged = vec![amount(&h.commit("dl-1", GB).await.unwrap().charged)];
    // 3 GB (1.5): the coupon's last 0.5 pays for 1 GB, the plan gives 2 GB.
    let r = h
        .reserve("acme", "dl-2", TRAFFIC_RESOURCE, TRAFFIC, 3 * GB, 0)
        .await
        .unwrap();
    assert_eq!(amount(&r.held), "0.5");
    charged.push(amount(&h.commit("dl-2", 3 * GB).await.unwrap().charged));
    // 1 GB more: the plan alone, nothing in money.
    let r = h
        .reserve("acme", "dl-3", TRAFFIC_RESOURCE, TRAFFIC, GB, 0)
        .await
        .unwrap();
    assert_eq!(amount(&r.held), "0");
    charged.push(amount(&h.commit("dl-3", GB).await.unwrap().charged));
    assert_eq!(charged, vec!["0.5", "0.5", "0"]);
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(remaining(&b, "c1"), "0");
    assert_eq!(remaining(&b, "t1/1"), "97");
    assert_eq!(amount(&b.balance), "0");

    let s = h.get_statement("acme").await.unwrap();
    let got: Vec<(String, String, Vec<Part>)> = s
        .entries
        .iter()
        .map(|e| (e.usage_id.clone(), amount(&e.cost), gb_and_money(e)))
        .collect();
    let d = |s: &str, gb: &str, a: &str| (s.to_owned(), gb.to_owned(), a.to_owned());
    assert_eq!(
        got,
        vec![
            ("dl-1".into(), "0.5".into(), vec![d("c1", "", "0.5")]),
            (
                "dl-2".into(),
                "1.5".into(),
                vec![d("c1", "", "0.5"), d("t1/1", "2", "1")]
            ),
            ("dl-3".into(), "0.5".into(), vec![d("t1/1", "1", "0.5")]),
        ]
    );
    for (e, charged) in s.entries.iter().zip(&charged) {
        let sum = |pick: &dyn Fn(&pb::Deduction) -> bool| -> rust_decimal::Decimal {
            e.deductions
                .iter()
                .filter(|d| pick(d))
                .map(|d| amount(&d.amount).parse::<rust_decimal::Decimal>().unwrap())
                .sum()
        };
        let cost: rust_decimal::Decimal = amount(&e.cost).parse().unwrap();
        assert_eq!(
            sum(&|_| true),
            cost,
            "{}: deductions sum to the cost",
            e.usage_id
        );
        let money = sum(&|d| d.gb.is_empty() && d.source != "free_tier");
        assert_eq!(money, charged.parse().unwrap(), "{}: charged", e.usage_id);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn storage_plans_do_not_stack_and_neither_do_package_storage_grants() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    h.purchase("acme", "plan.storage.100gb", "s1", 0)
        .await
        .unwrap();
    let second = h.purchase("acme", "plan.storage.100gb", "s2", 0).await;
    assert_status(
        "second storage plan",
        second,
        Code::FailedPrecondition,
        &["not stackable", "s1/1"],
    );
    // A package carries a storage grant: refused for the same reason, and nothing of it
    // (compute, traffic) is granted.
    let package = h.purchase("acme", "package.basic", "b1", 0).await;
    assert_status("package", package, Code::FailedPrecondition, &["s1/1"]);
    assert_eq!(h.get_balance("acme").await.unwrap().grants.len(), 1);

    // A year later the first has expired: a new one is accepted.
    h.clock.advance_ms(366 * DAY_MS);
    h.purchase("acme", "plan.storage.100gb", "s3", 0)
        .await
        .unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn an_overdue_account_is_refused_new_traffic_whatever_plans_remain() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0.01").await.unwrap();
    h.purchase("acme", "plan.traffic.100gb", "t1", 0)
        .await
        .unwrap();
    // 2 GB with a 100 GB plan: covered. Then GPU time past the balance: overdue.
    assert!(
        h.reserve("acme", "dl-1", TRAFFIC_RESOURCE, TRAFFIC, 2 * GB, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("dl-1", 2 * GB).await.unwrap();
    assert!(
        h.reserve("acme", "gpu", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("gpu", 60_000).await.unwrap(); // 60 s x 0.0006 = 0.036 > 0.01
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "-0.026");
    assert_eq!(remaining(&b, "t1/1"), "98");

    let r = h
        .reserve("acme", "dl-2", TRAFFIC_RESOURCE, TRAFFIC, GB, 0)
        .await
        .unwrap();
    assert!(!r.admitted);
    assert_eq!(r.reason, pb::DenyReason::Overdue as i32);
    let a = h
        .admit("acme", pb::Resource::Traffic, TRAFFIC, GB)
        .await
        .unwrap();
    assert!(!a.admitted);
    assert_eq!(a.reason, pb::DenyReason::Overdue as i32);
    h.shutdown().await;
}

#[tokio::test]
async fn stored_data_beyond_the_plan_is_charged_every_hour_once_also_across_a_restart() {
    let mut h = Harness::start().await;
    h.create_account("acme", "10").await.unwrap();
    h.purchase("acme", "plan.storage.100gb", "s1", 0)
        .await
        .unwrap();
    // 150 GB from T0 (an hour boundary) under a 100 GB plan: 50 GB beyond it.
    h.report_storage("acme", 150 * GB, 0).await.unwrap();
    h.clock.advance_ms(2 * HOUR_MS + 60_000);
    // Each hour: 50 GB-hours x 0.12 / 720 = 0.0083333... -> 0.00833333 (8 places, half up).
    // Two hours: 0.01666666; balance 10 - 0.01666666 = 9.98333334.
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "9.98333334");
    // The plan's capacity is not used up: it stays 100 GB.
    assert_eq!(remaining(&b, "s1/1"), "100");
    let a = b.accruals.clone().unwrap();
    assert_eq!(a.bytes_stored, 150 * GB);
    assert_eq!(a.storage_covered_bytes, 100 * GB);
    assert_eq!(amount(&a.storage_hourly), "0.00833333");
    assert_eq!(amount(&a.hourly), "0.00833333");
    // No money grant pays storage: the balance pays from this hour on. It pays 1198 hours
    // (1198 x 0.00833333 = 9.98332934 <= 9.98333334) and is below zero after the 1199th,
    // the hour starting 1198 h from now.
    let now = T0_MS + 2 * HOUR_MS + 60_000;
    assert_eq!(a.grants_exhausted_at_ms, now);
    assert_eq!(a.balance_exhausted_at_ms, now + 1198 * HOUR_MS);

    // A restart resumes the meter from the journal: the third hour is charged once, the
    // first two are not charged again.
    h.restart().await;
    h.clock.advance_ms(HOUR_MS);
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "9.97500001"
    );
    let now = h.clock.now_ms();
    h.engine().tick_storage(now).await;
    let st = h.get_statement("acme").await.unwrap();
    let storage: Vec<(String, i64, String)> = st
        .entries
        .iter()
        .filter(|e| e.resource == pb::Resource::Storage as i32)
        .map(|e| (e.usage_id.clone(), e.quantity, amount(&e.cost)))
        .collect();
    let hour = |k: i64| format!("storage/acme/{}", T0_MS + k * HOUR_MS);
    assert_eq!(
        storage,
        (0..3)
            .map(|k| (hour(k), 50 * GB, "0.00833333".to_owned()))
            .collect::<Vec<_>>()
    );
    h.shutdown().await;
}

#[tokio::test]
async fn storage_levels_are_integrated_between_reports_and_bad_reports_are_refused() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    // No plan: 0 GB until :15, 40 GB until :45, then 10 GB: 40 x 0.5 + 10 x 0.25 = 22.5
    // GB-hours in the first hour; 22.5 x 0.12 / 720 = 0.00375.
    h.report_storage("acme", 0, 0).await.unwrap();
    h.clock.advance_ms(15 * 60_000);
    h.report_storage("acme", 40 * GB, T0_MS + 15 * 60_000)
        .await
        .unwrap();
    // A retry of the same report is harmless.
    h.report_storage("acme", 40 * GB, T0_MS + 15 * 60_000)
        .await
        .unwrap();
    h.clock.advance_ms(30 * 60_000);
    h.report_storage("acme", 10 * GB, 0).await.unwrap();
    h.clock.advance_ms(15 * 60_000);
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "0.99625"
    );

    let r = h.report_storage("acme", GB, T0_MS).await;
    assert_status(
        "older than the last",
        r,
        Code::FailedPrecondition,
        &["older"],
    );
    let r = h.report_storage("acme", -1, 0).await;
    assert_status(
        "negative",
        r,
        Code::InvalidArgument,
        &["bytes_stored", "-1"],
    );
    let later = h.clock.now_ms() + 3_600_000;
    let r = h.report_storage("acme", GB, later).await;
    assert_status("future", r, Code::InvalidArgument, &["at_ms"]);
    let r = h.report_storage("nobody", GB, 0).await;
    assert_status("unknown account", r, Code::NotFound, &["nobody"]);
    let r = h.report_storage("acme", 2_000_000_000_000_000, 0).await;
    assert_status("too large", r, Code::InvalidArgument, &["bytes_stored"]);
    // Nothing of that changed the balance.
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "0.99625"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn free_requests_reset_at_midnight_in_shanghai_and_survive_a_restart() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    // 2026-11-30T15:00:00Z: 23:00 on November 30th in Shanghai.
    h.clock.set_ms(T0_MS + 29 * DAY_MS + 15 * HOUR_MS);
    // The month's 20,000,000 free GET in one go: nothing held or charged in money.
    let r = requests(&mut h, "g1", pb::Resource::RequestGet, 20_000_000).await;
    assert!(r.admitted);
    assert_eq!(amount(&r.held), "0");
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().balance), "1");
    // After a restart the count comes back from the ledger: 30,000 more are billable,
    // 30,000 x 0.01 / 10,000 = 0.03.
    h.restart().await;
    let r = requests(&mut h, "g2", pb::Resource::RequestGet, 30_000).await;
    assert_eq!(amount(&r.held), "0.03");
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "0.97"
    );
    // One hour later, 16:00Z, it is December 1st 00:00 in Shanghai (still November 30th in
    // UTC): a fresh allowance.
    h.clock.advance_ms(HOUR_MS);
    let r = requests(&mut h, "g3", pb::Resource::RequestGet, 30_000).await;
    assert_eq!(amount(&r.held), "0");
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "0.97"
    );
    // PUT has its own 5,000,000.
    let r = requests(&mut h, "p1", pb::Resource::RequestPut, 5_000_001).await;
    assert_eq!(amount(&r.held), "0.000001");

    // The free requests are a deduction of their own (what they would have cost), so
    // each entry's deductions sum to its list cost.
    let st = h.get_statement("acme").await.unwrap();
    type Paid = Vec<(String, String)>;
    let free: Vec<(String, i64, Paid)> = st
        .entries
        .iter()
        .map(|e| (e.usage_id.clone(), e.free_quantity, deductions(e)))
        .collect();
    let d = |s: &str, a: &str| (s.to_owned(), a.to_owned());
    assert_eq!(
        free,
        vec![
            ("g1".to_owned(), 20_000_000, vec![d("free_tier", "20")]),
            ("g2".to_owned(), 0, vec![d("balance", "0.03")]),
            ("g3".to_owned(), 30_000, vec![d("free_tier", "0.03")]),
            (
                "p1".to_owned(),
                5_000_000,
                vec![d("free_tier", "5"), d("balance", "0.000001")]
            ),
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn free_requests_need_no_plan_but_an_overdue_account_is_refused_uploads() {
    let mut h = Harness::start().await;
    // Nothing at all: free requests are still admitted, billable ones are not.
    h.create_account("acme", "0").await.unwrap();
    assert!(
        requests(&mut h, "p1", pb::Resource::RequestPut, 100)
            .await
            .admitted
    );
    let put = pb::Resource::RequestPut;
    let r = h
        .reserve("acme", "p2", put, "request.put", 5_000_000, 0)
        .await
        .unwrap();
    assert!(!r.admitted);
    assert_eq!(r.reason, pb::DenyReason::NoEntitlement as i32);

    // Overdue: even free uploads are refused (R6).
    h.create_account("late", "0.01").await.unwrap();
    assert!(
        h.reserve("late", "gpu", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("gpu", 60_000).await.unwrap();
    let r = h
        .reserve("late", "up", put, "request.put", 1, 0)
        .await
        .unwrap();
    assert!(!r.admitted);
    assert_eq!(r.reason, pb::DenyReason::Overdue as i32);
    h.shutdown().await;
}

#[tokio::test]
async fn accruals_list_sessions_without_auto_shutdown_and_storage_with_the_day_money_runs_out() {
    let mut h = Harness::start().await;
    h.create_account("acme", "100").await.unwrap();
    h.purchase("acme", "plan.storage.100gb", "s1", 0)
        .await
        .unwrap();
    h.report_storage("acme", 150 * GB, 0).await.unwrap();
    let s = h
        .start_session("acme", "s1", "gpu.exclusive.a10.8c30g", Some(false), 0)
        .await
        .unwrap();
    assert!(s.admitted);
    let b = h.get_balance("acme").await.unwrap();
    let a = b.accruals.clone().unwrap();
    assert_eq!(a.sessions_running, 1);
    assert_eq!(a.sessions_without_auto_shutdown, 1);
    assert_eq!(amount(&a.sessions_hourly), "9.9");
    // 9.9 + 0.00833333 per hour, paid by the balance of 100: ten hours take 99.0833333,
    // the eleventh (starting 10 h from now) takes it below zero.
    assert_eq!(amount(&a.hourly), "9.90833333");
    assert_eq!(a.grants_exhausted_at_ms, T0_MS);
    assert_eq!(a.balance_exhausted_at_ms, T0_MS + 10 * HOUR_MS);
    assert!(b.sessions[0].accrues_without_activity);
    h.shutdown().await;
}

/// Open reservations come first: a concurrent Reserve cannot count on plan GB or free
/// requests that an open hold will take (G1). With a 100 GB plan and no money, one open
/// 100 GB download leaves nothing for another; released, it does.
#[tokio::test]
async fn open_holds_keep_their_plan_gb_and_free_requests_from_concurrent_reserves() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    h.purchase("acme", "plan.traffic.100gb", "t1", 0)
        .await
        .unwrap();
    let first = h
        .reserve("acme", "dl-1", TRAFFIC_RESOURCE, TRAFFIC, 100 * GB, 0)
        .await
        .unwrap();
    assert!(first.admitted, "{first:?}");
    assert_eq!(amount(&first.held), "0");
    // The plan's 100 GB are spoken for: 1 GB more needs money the account does not have.
    let second = h
        .reserve("acme", "dl-2", TRAFFIC_RESOURCE, TRAFFIC, GB, 0)
        .await
        .unwrap();
    assert!(!second.admitted, "{second:?}");
    h.release("dl-1").await.unwrap();
    let third = h
        .reserve("acme", "dl-3", TRAFFIC_RESOURCE, TRAFFIC, GB, 0)
        .await
        .unwrap();
    assert!(third.admitted, "{third:?}");
    assert_eq!(amount(&third.held), "0");

    // The same for the month's 5,000,000 free PUT requests.
    let put = pb::Resource::RequestPut;
    let all_free = h
        .reserve("acme", "put-1", put, "request.put", 5_000_000, 0)
        .await
        .unwrap();
    assert!(all_free.admitted, "{all_free:?}");
    assert_eq!(amount(&all_free.held), "0");
    let beyond = h
        .reserve("acme", "put-2", put, "request.put", 10_000, 0)
        .await
        .unwrap();
    assert!(!beyond.admitted, "{beyond:?}");
    // Committed with 10,000 fewer: those are free again.
    h.commit("put-1", 4_990_000).await.unwrap();
    let back = h
        .reserve("acme", "put-3", put, "request.put", 10_000, 0)
        .await
        .unwrap();
    assert!(back.admitted, "{back:?}");
    assert_eq!(amount(&back.held), "0");
    h.shutdown().await;
}
