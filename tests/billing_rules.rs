//! The platform's billing rules over real gRPC: the four deduction scenarios of the
//! billing FAQ (R6), deduction order (R2, R3), plan validity and purchase rules (R4, R5),
//! and exact money (G5).

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use quotad::pb;
use quotad::pb::balance::AccountStatus;
use quotad::pb::grant::State as GrantState;
use tonic::Code;

fn reason(r: &pb::ReserveResponse) -> pb::DenyReason {
    pb::DenyReason::try_from(r.reason).unwrap()
}

fn grant<'a>(b: &'a pb::Balance, id: &str) -> &'a pb::Grant {
    b.grants.iter().find(|g| g.grant_id == id).unwrap()
}

// --- Scenario 1: balance < 0 → overdue, nothing admitted whatever grants remain ---------

#[tokio::test]
async fn scenario_1_overdue_account_is_denied_everything() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0.01").await.unwrap();
    h.purchase("acme", "plan.compute.500", "p1", 0)
        .await
        .unwrap();
    // Spend past the grant and the balance: a commit larger than its hold is charged in full.
    assert!(
        h.reserve("acme", "big", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("big", 835_000_000).await.unwrap(); // 501 CNY: 500 from the plan, 1 from balance
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "-0.99");
    assert_eq!(b.status(), AccountStatus::Overdue);

    // Even with a fresh grant, nothing is admitted while the balance is negative. The
    // coupon comes a second later: a grant pays only for usage from its start on (R2), so
    // it cannot absorb the overdraft whenever the sync loop delivers it to the ledger.
    h.clock.advance_ms(1_000);
    h.grant_credit("acme", "c1", COUPON, ANY, "50", T0_MS + 30 * DAY_MS)
        .await
        .unwrap();
    let r = h
        .reserve("acme", "r2", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(!r.admitted, "{r:?}");
    assert_eq!(reason(&r), pb::DenyReason::Overdue);
    let a = h
        .admit("acme", pb::Resource::GpuShared, A10, 1)
        .await
        .unwrap();
    assert!(!a.admitted);
    assert_eq!(a.reason, pb::DenyReason::Overdue as i32);

    // A top-up back to >= 0 lifts it at once.
    h.top_up("acme", "0.99", "t1").await.unwrap();
    assert_eq!(
        h.get_balance("acme").await.unwrap().status(),
        AccountStatus::Active
    );
    let r = h
        .reserve("acme", "r3", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
}

// --- Scenario 2: no grants, balance 0 → no entitlement ------------------------------------

#[tokio::test]
async fn scenario_2_no_grants_and_zero_balance_is_no_entitlement() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(b.status(), AccountStatus::NoEntitlement);
    let r = h
        .reserve("acme", "r1", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(!r.admitted);
    assert_eq!(reason(&r), pb::DenyReason::NoEntitlement);
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "0");
}

// --- Scenario 3: grants and balance >= 0 → grants charged, balance untouched ------------

#[tokio::test]
async fn scenario_3_grants_are_charged_and_balance_untouched() {
    let mut h = Harness::start().await;
    h.create_account("acme", "5").await.unwrap();
    h.purchase("acme", "plan.compute.starter", "p1", 0)
        .await
        .unwrap();
    assert!(
        h.reserve("acme", "r1", GPU_SHARED, A10, 10_000, 0)
            .await
            .unwrap()
            .admitted
    );
    let c = h.commit("r1", 10_000).await.unwrap();
    assert_eq!(amount(&c.charged), "0.006");
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "5");
    assert_eq!(grant(&b, "p1/1").remaining, "199.994");
    let s = h.get_statement("acme").await.unwrap();
    assert_eq!(
        deductions(&s.entries[0]),
        vec![("p1/1".into(), "0.006".into())]
    );
}

// --- Scenario 4: no grants, balance > 0 → balance charged -------------------------------

#[tokio::test]
async fn scenario_4_balance_pays_without_grants() {
    let mut h = Harness::start().await;
    h.create_account("acme", "2").await.unwrap();
    assert!(
        h.reserve("acme", "r1", GPU_SHARED, A10, 10_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("r1", 10_000).await.unwrap();
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "1.994");
    let s = h.get_statement("acme").await.unwrap();
    assert_eq!(
        deductions(&s.entries[0]),
        vec![("balance".into(), "0.006".into())]
    );
}

// --- Deduction order ------------------------------------------------------------------------

#[tokio::test]
async fn earliest_expiry_first_across_plans_and_coupons_then_balance() {
    let mut h = Harness::start().await;
    h.create_account("acme", "10").await.unwrap();
    h.purchase("acme", "plan.compute.starter", "p1", 0)
        .await
        .unwrap(); // 200, expires in a year
    h.grant_credit("acme", "late", COUPON, ANY, "1", T0_MS + 400 * DAY_MS)
        .await
        .unwrap(); // after the plan
    h.grant_credit("acme", "soon", COUPON, ANY, "1", T0_MS + 30 * DAY_MS)
        .await
        .unwrap(); // before the plan
    // 202.5 CNY of a10 time = 337,500 s.
    assert!(
        h.reserve("acme", "r1", GPU_SHARED, A10, 337_500_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("r1", 337_500_000).await.unwrap();
    let s = h.get_statement("acme").await.unwrap();
    assert_eq!(
        deductions(&s.entries[0]),
        vec![
            ("soon".into(), "1".into()),
            ("p1/1".into(), "200".into()),
            ("late".into(), "1".into()),
            ("balance".into(), "0.5".into()),
        ]
    );
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().balance), "9.5");
}

#[tokio::test]
async fn equal_expiry_uses_the_lowest_grant_id_first() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    let exp = T0_MS + 10 * DAY_MS;
    h.grant_credit("acme", "coupon-b", COUPON, ANY, "1", exp)
        .await
        .unwrap();
    h.grant_credit("acme", "coupon-a", COUPON, ANY, "1", exp)
        .await
        .unwrap();
    assert!(
        h.reserve("acme", "r1", GPU_SHARED, A10, 2_500_000, 0)
            .await
            .unwrap()
            .admitted
    ); // 1.5 CNY
    h.commit("r1", 2_500_000).await.unwrap();
    let s = h.get_statement("acme").await.unwrap();
    assert_eq!(
        deductions(&s.entries[0]),
        vec![
            ("coupon-a".into(), "1".into()),
            ("coupon-b".into(), "0.5".into())
        ]
    );
}

#[tokio::test]
async fn expired_grant_is_never_charged_and_shows_expired() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    h.grant_credit("acme", "c1", COUPON, ANY, "5", T0_MS + DAY_MS)
        .await
        .unwrap();
    h.clock.advance_ms(2 * DAY_MS);
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(grant(&b, "c1").state(), GrantState::Expired);
    assert_eq!(
        amount(&b.available),
        "1",
        "an expired coupon pays for nothing"
    );
    assert!(
        h.reserve("acme", "r1", GPU_SHARED, A10, 1_000_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("r1", 1_000_000).await.unwrap();
    let s = h.get_statement("acme").await.unwrap();
    assert_eq!(
        deductions(&s.entries[0]),
        vec![("balance".into(), "0.6".into())]
    );
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(grant(&b, "c1").remaining, "5");
    assert_eq!(grant(&b, "c1").state(), GrantState::Expired);
}

// --- Plans: validity, import, purchase rules ---------------------------------------------

#[tokio::test]
async fn plan_is_valid_one_year_and_void_after() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    let p = h
        .purchase("acme", "plan.compute.500", "p1", 0)
        .await
        .unwrap();
    assert_eq!(amount(&p.price_paid), "450");
    let g = &p.grants[0];
    assert_eq!(g.starts_at_ms, T0_MS);
    assert_eq!(g.expires_at_ms, T0_MS + 365 * DAY_MS); // 2026-11-01 + 1 year, no Feb 29
    assert_eq!(g.state(), GrantState::Valid);
    h.clock.set_ms(g.expires_at_ms - 1);
    assert!(
        h.reserve("acme", "r1", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.clock.set_ms(g.expires_at_ms);
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(grant(&b, "p1/1").state(), GrantState::Expired);
    let r = h
        .reserve("acme", "r2", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert_eq!(reason(&r), pb::DenyReason::NoEntitlement);
}

#[tokio::test]
async fn plan_imported_more_than_a_year_ago_is_void() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    let p = h
        .purchase("acme", "plan.compute.500", "old", T0_MS - 366 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(p.grants[0].state(), GrantState::Expired);
    let r = h
        .reserve("acme", "r1", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert_eq!(reason(&r), pb::DenyReason::NoEntitlement);
    // One imported 100 days ago is valid for the rest of its year.
    let p = h
        .purchase("acme", "plan.compute.500", "recent", T0_MS - 100 * DAY_MS)
        .await
        .unwrap();
    assert_eq!(p.grants[0].state(), GrantState::Valid);
    assert!(
        h.reserve("acme", "r2", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
}

/// An import pays for usage from when it is recorded, never for usage charged before
/// (issue 12: which it did or did not, depending on when the sync loop pushed the usage).
/// tests/sync_order.rs forces both orders; this is the rule as a client sees it.
#[tokio::test]
async fn an_imported_plan_does_not_pay_for_earlier_usage() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    assert!(
        h.reserve("acme", "r1", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    assert_eq!(
        amount(&h.commit("r1", 5_000_000).await.unwrap().charged),
        "3"
    );
    h.clock.advance_ms(1_000);
    let p = h
        .purchase("acme", "plan.compute.500", "imp", T0_MS - 30 * DAY_MS)
        .await
        .unwrap();
    let g = &p.grants[0];
    assert_eq!(
        (g.starts_at_ms, g.created_at_ms),
        (T0_MS - 30 * DAY_MS, T0_MS + 1_000)
    );
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(b.status(), AccountStatus::Overdue);
    assert_eq!(amount(&b.balance), "-2");
    assert_eq!(grant(&b, "imp/1").remaining, "500");
    let s = h.get_statement("acme").await.unwrap();
    assert_eq!(
        deductions(&s.entries[0]),
        vec![("balance".into(), "3".into())]
    );
    // Once topped up, new usage is the plan's.
    h.top_up("acme", "2", "t1").await.unwrap();
    assert!(
        h.reserve("acme", "r2", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    assert_eq!(
        amount(&h.commit("r2", 1_000).await.unwrap().charged),
        "0.0006"
    );
    assert_eq!(
        grant(&h.get_balance("acme").await.unwrap(), "imp/1").remaining,
        "499.9994"
    );
}

#[tokio::test]
async fn starter_once_storage_not_stackable_traffic_stackable() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    let p = h
        .purchase("acme", "plan.compute.starter", "s1", 0)
        .await
        .unwrap();
    assert_eq!(amount(&p.price_paid), "59");
    assert_eq!(p.grants[0].quota, "200");
    let e = h
        .purchase("acme", "plan.compute.starter", "s2", 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("once"), "{}", e.message());

    h.purchase("acme", "plan.storage.100gb", "st1", 0)
        .await
        .unwrap();
    for (sku, id) in [("plan.storage.100gb", "st2"), ("package.basic", "pk1")] {
        let e = h.purchase("acme", sku, id, 0).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{sku}");
        assert!(e.message().contains("st1/1"), "{}", e.message());
    }
    h.purchase("acme", "plan.traffic.100gb", "t1", 0)
        .await
        .unwrap();
    h.purchase("acme", "plan.traffic.100gb", "t2", 0)
        .await
        .unwrap();
    let b = h.get_balance("acme").await.unwrap();
    let traffic: Vec<_> = b
        .grants
        .iter()
        .filter(|g| g.source == "plan.traffic.100gb")
        .collect();
    assert_eq!(traffic.len(), 2);
    assert!(
        traffic
            .iter()
            .all(|g| g.unit == "GB" && g.resource() == pb::Resource::Traffic)
    );

    // After the storage plan expires, a package with storage can be bought.
    h.clock.advance_ms(366 * DAY_MS);
    let p = h.purchase("acme", "package.basic", "pk2", 0).await.unwrap();
    assert_eq!(p.grants.len(), 3);
}

// --- Exact money ---------------------------------------------------------------------------

#[tokio::test]
async fn charges_are_quantity_times_price_to_the_last_digit() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let r = h
        .reserve("acme", "r1", GPU_SHARED, A10, 1234, 0)
        .await
        .unwrap();
    assert_eq!(amount(&r.held), "0.0007404");
    assert_eq!(amount(&r.available), "0.9992596");
    let c = h.commit("r1", 1234).await.unwrap();
    assert_eq!(amount(&c.charged), "0.0007404");
    // Many tiny charges add up exactly: 100 x 1 ms = 0.00006.
    for i in 0..100 {
        let id = format!("t{i}");
        assert!(
            h.reserve("acme", &id, GPU_SHARED, A10, 1, 0)
                .await
                .unwrap()
                .admitted
        );
        assert_eq!(
            amount(&h.commit(&id, 1).await.unwrap().charged),
            "0.0000006"
        );
    }
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "0.9991996");
    // Per-hour prices: 1 ms of a 9.9/h instance is 0.00000275 exactly.
    let r = h
        .reserve(
            "acme",
            "x1",
            pb::Resource::GpuExclusive,
            "gpu.exclusive.a10.8c30g",
            1,
            0,
        )
        .await
        .unwrap();
    assert_eq!(amount(&r.held), "0.00000275");
}

#[tokio::test]
async fn catalog_lists_prices_plans_and_packages() {
    let mut h = Harness::start().await;
    let c = h.get_catalog().await.unwrap();
    let sku = |id: &str| c.skus.iter().find(|s| s.id == id).unwrap().clone();
    let a10 = sku(A10);
    assert_eq!(a10.kind(), pb::sku::Kind::Price);
    assert_eq!(a10.unit, "second");
    assert_eq!(amount(&a10.unit_price), "0.0006");
    assert_eq!(sku("gpu.exclusive.a10.8c30g").unit, "hour");
    assert_eq!(sku("storage.standard").unit, "GB_month");
    assert_eq!(sku("traffic.outbound").unit, "GB");
    assert_eq!(sku("request.put").unit, "10k");
    assert_eq!(sku("plan.compute.starter").kind(), pb::sku::Kind::Plan);
    assert_eq!(amount(&sku("plan.compute.starter").unit_price), "59");
    for p in ["package.basic", "package.advanced", "package.ultimate"] {
        assert_eq!(sku(p).kind(), pb::sku::Kind::Package);
    }
}
