//! Metering beyond GPU time over real gRPC, with time moved by hand: outbound traffic
//! against stackable volume plans (earliest expiry first, then the balance), storage plans
//! that do not stack (a package's storage included), and an overdue account refused new
//! traffic like any other work (R1, R2, R3, R5, R6).

mod common;

use common::*;
use quotad::pb;
use tonic::Code;

const GB: i64 = 1_000_000_000;
const TRAFFIC: &str = "traffic.outbound";

fn traffic_req(account: &str, id: &str, bytes: i64) -> pb::ReserveRequest {
    pb::ReserveRequest {
        account_id: account.into(),
        reservation_id: id.into(),
        resource: pb::Resource::Traffic as i32,
        sku: TRAFFIC.into(),
        quantity: bytes,
        ttl_ms: 0,
    }
}

async fn reserve_traffic(
    h: &mut Harness,
    account: &str,
    id: &str,
    bytes: i64,
) -> pb::ReserveResponse {
    h.quota
        .reserve(traffic_req(account, id, bytes))
        .await
        .unwrap()
        .into_inner()
}

/// Deductions as (source, GB from a volume plan, money).
fn gb_and_money(e: &pb::StatementEntry) -> Vec<(String, String, String)> {
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
    h.create("acme", "0").await;
    // Two 100 GB traffic plans a day apart: both accepted (traffic plans stack); t1
    // expires a day before t2.
    h.buy("acme", "plan.traffic.100gb", "t1").await;
    h.clock.advance_ms(DAY_MS);
    h.buy("acme", "plan.traffic.100gb", "t2").await;

    // 150 GB with a zero balance: the plans cover it all (list cost 150 x 0.5 = 75), so
    // nothing is held in money and the account, with plans, is entitled (scenario 3).
    let r = reserve_traffic(&mut h, "acme", "dl-1", 150 * GB).await;
    assert!(r.admitted, "{r:?}");
    assert_eq!(amount(&r.held), "0");
    let c = h.commit("dl-1", 150 * GB).await.unwrap();
    assert_eq!(amount(&c.charged), "75");
    // t1 (earlier expiry) gives its 100 GB first, then t2 50 GB.
    let b = h.balance("acme").await;
    assert_eq!(remaining(&b, "t1/1"), "0");
    assert_eq!(remaining(&b, "t2/1"), "50");
    assert_eq!(amount(&b.balance), "0");

    // 60 GB: 50 GB from t2, 10 GB = 5.00 in money, which a zero balance cannot pay.
    let r = reserve_traffic(&mut h, "acme", "dl-2", 60 * GB).await;
    assert!(!r.admitted);
    assert_eq!(r.reason, pb::DenyReason::InsufficientFunds as i32);

    // With 1.00 on the balance, 51 GB fit: 50 GB from t2 and 1 GB x 0.5 = 0.5 held.
    h.admin
        .top_up(pb::TopUpRequest {
            account_id: "acme".into(),
            amount: Some(money("1")),
            topup_id: "tu-1".into(),
        })
        .await
        .unwrap();
    let r = reserve_traffic(&mut h, "acme", "dl-3", 51 * GB).await;
    assert!(r.admitted, "{r:?}");
    assert_eq!(amount(&r.held), "0.5");
    h.commit("dl-3", 51 * GB).await.unwrap();
    let b = h.balance("acme").await;
    assert_eq!(remaining(&b, "t2/1"), "0");
    assert_eq!(amount(&b.balance), "0.5");

    // The ledger agrees: the statement lists the GB each plan gave and the money the
    // balance paid, and the plans' remaining GB are the same as the sidecar's.
    h.engine().flush().await.unwrap();
    let s = h.statement("acme").await;
    let e = s.entries.iter().find(|e| e.usage_id == "dl-3").unwrap();
    assert_eq!(e.resource, pb::Resource::Traffic as i32);
    assert_eq!(e.quantity, 51 * GB);
    // 50 GB from t2, then 0.5 of money from the balance.
    assert_eq!(
        gb_and_money(e),
        vec![
            ("t2/1".to_owned(), "50".to_owned(), String::new()),
            ("balance".to_owned(), String::new(), "0.5".to_owned())
        ]
    );
    // dl-1 was paid by the plans alone, t1 first: no money at all.
    let e1 = s.entries.iter().find(|e| e.usage_id == "dl-1").unwrap();
    assert_eq!(
        gb_and_money(e1),
        vec![
            ("t1/1".to_owned(), "100".to_owned(), String::new()),
            ("t2/1".to_owned(), "50".to_owned(), String::new())
        ]
    );
    h.engine().refresh_account("acme").await.unwrap();
    let b = h.balance("acme").await;
    assert_eq!(remaining(&b, "t1/1"), "0");
    assert_eq!(remaining(&b, "t2/1"), "0");
    assert_eq!(amount(&b.balance), "0.5");
    h.shutdown().await;
}

#[tokio::test]
async fn storage_plans_do_not_stack_and_neither_do_package_storage_grants() {
    let mut h = Harness::start().await;
    h.create("acme", "0").await;
    h.buy("acme", "plan.storage.100gb", "s1").await;
    let second = h
        .admin
        .purchase(pb::PurchaseRequest {
            account_id: "acme".into(),
            sku: "plan.storage.100gb".into(),
            purchase_id: "s2".into(),
            effective_at_ms: 0,
        })
        .await;
    assert_status(
        "second storage plan",
        second,
        Code::FailedPrecondition,
        &["not stackable", "s1/1"],
    );
    // A package carries a storage grant: refused for the same reason, and nothing of it
    // (compute, traffic) is granted.
    let package = h
        .admin
        .purchase(pb::PurchaseRequest {
            account_id: "acme".into(),
            sku: "package.basic".into(),
            purchase_id: "b1".into(),
            effective_at_ms: 0,
        })
        .await;
    assert_status("package", package, Code::FailedPrecondition, &["s1/1"]);
    assert_eq!(h.balance("acme").await.grants.len(), 1);

    // A year later the first has expired: a new one is accepted.
    h.clock.advance_ms(366 * DAY_MS);
    h.buy("acme", "plan.storage.100gb", "s3").await;
    h.shutdown().await;
}

#[tokio::test]
async fn an_overdue_account_is_refused_new_traffic_whatever_plans_remain() {
    let mut h = Harness::start().await;
    h.create("acme", "0.01").await;
    h.buy("acme", "plan.traffic.100gb", "t1").await;
    // 2 GB with a 100 GB plan: covered. Then GPU time past the balance: overdue.
    assert!(
        reserve_traffic(&mut h, "acme", "dl-1", 2 * GB)
            .await
            .admitted
    );
    h.commit("dl-1", 2 * GB).await.unwrap();
    assert!(h.reserve("acme", "gpu", 1_000).await.unwrap().admitted);
    h.commit("gpu", 60_000).await.unwrap(); // 60 s x 0.0006 = 0.036 > 0.01
    let b = h.balance("acme").await;
    assert_eq!(amount(&b.balance), "-0.026");
    assert_eq!(remaining(&b, "t1/1"), "98");

    let r = reserve_traffic(&mut h, "acme", "dl-2", GB).await;
    assert!(!r.admitted);
    assert_eq!(r.reason, pb::DenyReason::Overdue as i32);
    let a = h
        .quota
        .admit(pb::AdmitRequest {
            account_id: "acme".into(),
            resource: pb::Resource::Traffic as i32,
            sku: TRAFFIC.into(),
            quantity: GB,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!a.admitted);
    assert_eq!(a.reason, pb::DenyReason::Overdue as i32);
    h.shutdown().await;
}
