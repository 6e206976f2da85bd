//! Bad input (G6): every malformed or impossible request gets its exact gRPC status and a
//! message that names what was wrong, and changes nothing: account "acme"'s balance view
//! and statement are identical before and after, and ids of rejected calls stay unused.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::fmt::Debug;

use common::*;
use quotad::billing::Money;
use quotad::pb;
use tonic::{Code, Status};

const ACME: &str = "acme";
/// Expiry of the coupons these tests grant.
const FAR_MS: i64 = T0_MS + 30 * DAY_MS;
const HOUR_MS: i64 = 3_600_000;
/// Largest quantity the catalog prices (10^15).
const QUANTITY_MAX: i64 = 1_000_000_000_000_000;

/// Amounts no money field accepts: (amount, text the message must contain).
const BAD_AMOUNTS: &[(&str, &str)] = &[
    ("-1", "-1"),
    ("-0.5", "-0.5"),
    ("abc", "abc"),
    ("1e5", "1e5"),
    ("NaN", "NaN"),
    ("inf", "inf"),
    ("", "empty"),
    ("   ", "empty"),
    (".", "."),
    ("--1", "--1"),
    ("1.2.3", "1.2.3"),
    ("1,5", "1,5"),
    ("0x10", "0x10"),
    ("1000000000000.01", "1000000000000.01"),
    ("1000000000001", "1000000000001"),
    (FIFTY_DIGITS, FIFTY_DIGITS),
    ("0.000000001", "0.000000001"),
    ("1.000000001", "1.000000001"),
];
const FIFTY_DIGITS: &str = "12345678901234567890123456789012345678901234567890";
/// More decimal places than a Decimal holds (28): must be rejected like any amount with
/// more than 8, never rounded into an acceptable one.
const BEYOND_DECIMAL: &[&str] = &[
    "1.00000000000000000000000000001",
    "0.00000000000000000000000000001",
    "5.000000000000000000000000000009",
];

// ---- state and assertions ----------------------------------------------------------

/// What a rejected call must leave exactly as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    balance: pb::Balance,
    statement: pb::Statement,
}

async fn snapshot(h: &mut Harness) -> Snapshot {
    Snapshot {
        balance: h.get_balance(ACME).await.unwrap(),
        statement: h.get_statement(ACME).await.unwrap(),
    }
}

/// A server with "acme": balance 10, a coupon, a compute plan, an open hold ("open-1") and
/// one committed usage ("done-1").
async fn setup() -> Harness {
    let mut h = Harness::start().await;
    h.create_account(ACME, "10").await.unwrap();
    h.grant_credit(ACME, "c1", COUPON, ANY, "5", FAR_MS)
        .await
        .unwrap();
    h.purchase(ACME, "plan.compute.500", "p1", 0).await.unwrap();
    assert!(
        h.reserve(ACME, "open-1", GPU_SHARED, A10, 10_000, 0)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        h.reserve(ACME, "done-1", GPU_SHARED, A10, 1_234, 0)
            .await
            .unwrap()
            .admitted
    );
    h.commit("done-1", 1_234).await.unwrap();
    let s = snapshot(&mut h).await;
    assert_eq!(amount(&s.balance.held), "0.006");
    assert_eq!(s.balance.grants.len(), 2);
    assert_eq!(s.statement.entries.len(), 1);
    h
}

/// Asserts the status of `r` and that acme is as it was in `before`.
async fn rejected<T: Debug>(
    h: &mut Harness,
    before: &Snapshot,
    what: &str,
    r: Result<T, Status>,
    code: Code,
    needles: &[&str],
) {
    assert_status(what, r, code, needles);
    assert_eq!(&snapshot(h).await, before, "{what} changed state");
}

/// `check!(h, before, call, Code, [needles])`: runs `call`, labels it with its own source.
macro_rules! check {
    ($h:ident, $before:ident, $call:expr, $code:expr, [$($n:expr),* $(,)?]) => {{
        let r = $call.await;
        rejected(&mut *$h, &$before, stringify!($call), r, $code, &[$($n),*]).await;
    }};
}

async fn assert_absent(h: &mut Harness, account: &str) {
    let r = h.get_balance(account).await;
    assert_status(&format!("{account} must not exist"), r, Code::NotFound, &[]);
}

/// The server still serves: a normal Reserve on acme is admitted.
async fn assert_serves(h: &mut Harness, reservation_id: &str) {
    let r = h
        .reserve(ACME, reservation_id, GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
    assert_eq!(amount(&r.held), "0.0006");
}

// ---- requests ----------------------------------------------------------------------

fn cny(amount: &str) -> Option<pb::Money> {
    Some(money(amount))
}

fn in_currency(currency: &str, amount: &str) -> Option<pb::Money> {
    Some(pb::Money {
        currency: currency.into(),
        amount: amount.into(),
    })
}

const SHARED: i32 = pb::Resource::GpuShared as i32;
const EXCLUSIVE_SKU: &str = "gpu.exclusive.a10.8c30g";

// ---- ids -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdField {
    Account,
    Reservation,
    TopUp,
    Purchase,
    Grant,
}

impl IdField {
    const ALL: [IdField; 5] = [
        IdField::Account,
        IdField::Reservation,
        IdField::TopUp,
        IdField::Purchase,
        IdField::Grant,
    ];

    fn name(self) -> &'static str {
        match self {
            IdField::Account => "account_id",
            IdField::Reservation => "reservation_id",
            IdField::TopUp => "topup_id",
            IdField::Purchase => "purchase_id",
            IdField::Grant => "grant_id",
        }
    }
}

type Outcome = (String, Result<(), Status>);

/// Every RPC that takes the id `field`, called with `id` there and valid values elsewhere.
async fn calls_with_id(h: &mut Harness, field: IdField, id: &str) -> Vec<Outcome> {
    let c = &mut h.client;
    let mut out: Vec<Outcome> = Vec::new();
    let mut push = |rpc: &str, r: Result<(), Status>| out.push((format!("{rpc}({id:.40?})"), r));
    match field {
        IdField::Account => {
            push(
                "CreateAccount",
                c.create_account(id, cny("1")).await.map(drop),
            );
            push("TopUp", c.top_up(id, cny("1"), "t-new").await.map(drop));
            let p = c.purchase(id, "plan.compute.500", "p-new", 0).await;
            push("Purchase", p.map(drop));
            push(
                "GrantCredit",
                c.grant_credit(id, "g-new", COUPON, ANY, cny("1"), FAR_MS)
                    .await
                    .map(drop),
            );
            push("GetStatement", c.get_statement(id).await.map(drop));
            push(
                "Reserve",
                c.reserve(id, "r-new", GPU_SHARED, A10, 1_000, 0)
                    .await
                    .map(drop),
            );
            push("Admit", c.admit(id, SHARED, A10, 1_000).await.map(drop));
            push("GetBalance", c.get_balance(id).await.map(drop));
        }
        IdField::Reservation => {
            push(
                "Reserve",
                c.reserve(ACME, id, GPU_SHARED, A10, 1_000, 0)
                    .await
                    .map(drop),
            );
            push("Commit", c.commit(id, 1_000).await.map(drop));
            push("Release", c.release(id).await.map(drop));
        }
        IdField::TopUp => {
            push("TopUp", c.top_up(ACME, cny("1"), id).await.map(drop));
        }
        IdField::Purchase => {
            let p = c.purchase(ACME, "plan.compute.500", id, 0).await;
            push("Purchase", p.map(drop));
        }
        IdField::Grant => {
            let g = c.grant_credit(ACME, id, COUPON, ANY, "1", FAR_MS).await;
            push("GrantCredit", g.map(drop));
        }
    }
    out
}

/// Asserts every call with `bad` in `field` is INVALID_ARGUMENT naming the field and
/// `needle`, and that nothing changed.
async fn ids_rejected(h: &mut Harness, field: IdField, bad: &str, needle: &str) {
    let before = snapshot(h).await;
    for (what, r) in calls_with_id(h, field, bad).await {
        let needles = [field.name(), needle];
        rejected(h, &before, &what, r, Code::InvalidArgument, &needles).await;
    }
}

/// A TopUp of 1 with `topup_id` is applied: the id was not used before.
async fn top_up_one(h: &mut Harness, account: &str, topup_id: &str) {
    let before = Money::parse(&amount(&h.get_balance(account).await.unwrap().balance)).unwrap();
    let r = h.top_up(account, cny("1"), topup_id).await;
    let after = amount(&r.unwrap().balance);
    assert_eq!(after, (before + Money::parse("1").unwrap()).to_string());
}

/// The ids of the Account batch in `calls_with_id` are still unused.
async fn batch_ids_unused(h: &mut Harness) {
    top_up_one(h, ACME, "t-new").await;
    h.purchase(ACME, "plan.compute.500", "p-new", 0)
        .await
        .unwrap();
    h.grant_credit(ACME, "g-new", COUPON, ANY, "1", FAR_MS)
        .await
        .unwrap();
    assert!(
        h.reserve(ACME, "r-new", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
}

// ---- cases: each takes its own "before" and may leave valid changes behind ------------

async fn top_up_bad_amounts(h: &mut Harness) {
    let before = snapshot(h).await;
    for (bad, needle) in BAD_AMOUNTS
        .iter()
        .copied()
        .chain([("0", "0"), ("-0", "0"), ("0.00", "0")])
    {
        let r = h.top_up(ACME, cny(bad), "t-bad").await;
        let what = format!("TopUp amount {bad:?}");
        rejected(
            h,
            &before,
            &what,
            r,
            Code::InvalidArgument,
            &["amount", needle],
        )
        .await;
    }
    check!(
        h,
        before,
        h.top_up(ACME, in_currency("USD", "1"), "t-bad"),
        Code::InvalidArgument,
        ["amount", "USD"]
    );
    check!(
        h,
        before,
        h.top_up(ACME, None, "t-bad"),
        Code::InvalidArgument,
        ["amount", "required"]
    );
    // None of the rejected calls used up the top-up id.
    top_up_one(h, ACME, "t-bad").await;
}

async fn create_account_bad_balances(h: &mut Harness) {
    let before = snapshot(h).await;
    for (bad, needle) in BAD_AMOUNTS.iter().copied() {
        let r = h.create_account("newbie", cny(bad)).await;
        let what = format!("CreateAccount balance {bad:?}");
        rejected(
            h,
            &before,
            &what,
            r,
            Code::InvalidArgument,
            &["balance", needle],
        )
        .await;
        assert_absent(h, "newbie").await;
    }
    check!(
        h,
        before,
        h.create_account("newbie", in_currency("USD", "1")),
        Code::InvalidArgument,
        ["balance", "USD"]
    );
    assert_absent(h, "newbie").await;
    // Absent balance means zero.
    let b = h.create_account("newbie", None).await.unwrap();
    assert_eq!(amount(&b.balance), "0");
}

async fn grant_credit_bad_amounts(h: &mut Harness) {
    let before = snapshot(h).await;
    for (bad, needle) in BAD_AMOUNTS.iter().copied().chain([("0", "0")]) {
        let r = h
            .grant_credit(ACME, "g-amt", COUPON, ANY, cny(bad), FAR_MS)
            .await;
        let what = format!("GrantCredit amount {bad:?}");
        rejected(
            h,
            &before,
            &what,
            r,
            Code::InvalidArgument,
            &["amount", needle],
        )
        .await;
    }
    check!(
        h,
        before,
        h.grant_credit(ACME, "g-amt", COUPON, ANY, in_currency("USD", "1"), FAR_MS),
        Code::InvalidArgument,
        ["amount", "USD"]
    );
    check!(
        h,
        before,
        h.grant_credit(ACME, "g-amt", COUPON, ANY, None, FAR_MS),
        Code::InvalidArgument,
        ["amount", "required"]
    );
    let g = h
        .grant_credit(ACME, "g-amt", COUPON, ANY, "1", FAR_MS)
        .await
        .unwrap();
    assert_eq!((g.grant_id.as_str(), g.quota.as_str()), ("g-amt", "1"));
}

/// Each money field with each of BEYOND_DECIMAL; reports every call that was not rejected
/// with the amount named, or that changed something.
async fn amounts_beyond_decimal_precision(h: &mut Harness) {
    let mut wrong = Vec::new();
    for (i, bad) in BEYOND_DECIMAL.iter().enumerate() {
        let newbie = format!("n29-{i}");
        for rpc in ["TopUp", "CreateAccount", "GrantCredit"] {
            let before = snapshot(h).await;
            let r = match rpc {
                "TopUp" => h
                    .top_up(ACME, cny(bad), &format!("t-29-{i}"))
                    .await
                    .map(drop),
                "CreateAccount" => {
                    let r = h.create_account(&newbie, cny(bad)).await;
                    r.map(drop)
                }
                _ => {
                    let r = h
                        .grant_credit(ACME, &format!("g-29-{i}"), COUPON, ANY, cny(bad), FAR_MS)
                        .await;
                    r.map(drop)
                }
            };
            match r {
                Ok(()) => wrong.push(format!("{rpc} {bad:?}: accepted")),
                Err(s) if s.code() != Code::InvalidArgument || !s.message().contains(bad) => {
                    wrong.push(format!("{rpc} {bad:?}: {:?} {:?}", s.code(), s.message()))
                }
                Err(_) => {}
            }
            if snapshot(h).await != before {
                wrong.push(format!("{rpc} {bad:?}: changed acme"));
            }
            if rpc == "CreateAccount" && h.get_balance(&newbie).await.is_ok() {
                wrong.push(format!("{rpc} {bad:?}: created account {newbie}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

async fn malformed_ids(h: &mut Harness) {
    let long = "a".repeat(129);
    let bad: [(&str, &str); 9] = [
        ("", "required"),
        (&long, "129"),
        ("a b", "\"a b\""),
        ("a/b", "\"a/b\""),
        (" acme", "\" acme\""),
        ("acme\n", "acme"),
        ("../etc", "../etc"),
        ("é", "é"),
        ("a*b", "a*b"),
    ];
    for field in IdField::ALL {
        for (id, needle) in bad {
            ids_rejected(h, field, id, needle).await;
        }
    }
    batch_ids_unused(h).await;
}

async fn ids_of_128_bytes_accepted(h: &mut Harness) {
    let id = |c: char| c.to_string().repeat(128);
    let acct = id('A');
    let b = h.create_account(&acct, cny("2")).await.unwrap();
    assert_eq!(b.account_id, acct);
    let b = h.top_up(&acct, cny("1"), &id('t')).await.unwrap();
    assert_eq!(amount(&b.balance), "3");
    let p = h
        .purchase(&acct, "plan.compute.500", &id('p'), 0)
        .await
        .unwrap();
    assert_eq!(p.grants.len(), 1);
    let g = h
        .grant_credit(&acct, &id('g'), COUPON, ANY, "1", FAR_MS)
        .await
        .unwrap();
    assert_eq!(g.grant_id, id('g'));
    let r = h
        .reserve(&acct, &id('r'), GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
    assert_eq!(
        amount(&h.commit(&id('r'), 1_000).await.unwrap().charged),
        "0.0006"
    );
    let s = h.get_statement(&acct).await.unwrap();
    assert_eq!(s.account_id, acct);
    assert_eq!(s.entries.len(), 1);
    assert_eq!(s.entries[0].usage_id, id('r'));
}

async fn megabyte_ids(h: &mut Harness) {
    let before = snapshot(h).await;
    let huge = "x".repeat(1 << 20);
    let over_limit = [Code::InvalidArgument, Code::ResourceExhausted];
    let r = h.reserve(&huge, "r-huge", GPU_SHARED, A10, 1_000, 0).await;
    let s = r.expect_err("a 1 MB account_id must be rejected");
    assert!(
        over_limit.contains(&s.code()),
        "Reserve with a 1 MB id: {s:?}"
    );
    assert_eq!(snapshot(h).await, before);
    let r = h.top_up(ACME, cny("1"), &huge).await;
    let s = r.expect_err("a 1 MB topup_id must be rejected");
    assert!(
        over_limit.contains(&s.code()),
        "TopUp with a 1 MB id: {s:?}"
    );
    assert_eq!(snapshot(h).await, before);
    // Under the message size limit the id is judged on its own, and not echoed back.
    let big = "y".repeat(60_000);
    let r = h.reserve(ACME, &big, GPU_SHARED, A10, 1_000, 0).await;
    let s = r.expect_err("a 60 kB reservation_id must be rejected");
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("reservation_id"), "{s:?}");
    assert!(
        s.message().len() < 200,
        "message echoes the id: {} bytes",
        s.message().len()
    );
    assert_eq!(snapshot(h).await, before);
    assert_serves(h, "r-after-huge").await;
}

async fn unknown_accounts(h: &mut Harness) {
    let before = snapshot(h).await;
    let nf = Code::NotFound;
    check!(
        h,
        before,
        h.reserve("ghost", "r-ghost", GPU_SHARED, A10, 1_000, 0),
        nf,
        ["ghost"]
    );
    check!(
        h,
        before,
        h.admit("ghost", SHARED, A10, 1_000),
        nf,
        ["ghost"]
    );
    check!(h, before, h.get_balance("ghost"), nf, ["ghost"]);
    check!(
        h,
        before,
        h.top_up("ghost", cny("1"), "t-ghost"),
        nf,
        ["ghost"]
    );
    check!(
        h,
        before,
        h.purchase("ghost", "plan.compute.500", "p-ghost", 0),
        nf,
        ["ghost"]
    );
    check!(h, before, h.get_statement("ghost"), nf, ["ghost"]);
    check!(
        h,
        before,
        h.grant_credit("ghost", "g-ghost", COUPON, ANY, cny("1"), FAR_MS),
        nf,
        ["ghost"]
    );
    assert_absent(h, "ghost").await;
    // Nothing was recorded under the ids the rejected calls carried.
    h.create_account("ghost", "1").await.unwrap();
    let b = h.top_up("ghost", cny("1"), "t-ghost").await.unwrap();
    assert_eq!(amount(&b.balance), "2");
    assert_eq!(
        h.purchase("ghost", "plan.compute.500", "p-ghost", 0)
            .await
            .unwrap()
            .grants
            .len(),
        1
    );
    assert_eq!(
        h.grant_credit("ghost", "g-ghost", COUPON, ANY, "1", FAR_MS)
            .await
            .unwrap()
            .grant_id,
        "g-ghost"
    );
    assert!(
        h.reserve("ghost", "r-ghost", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
}

async fn unknown_and_malformed_skus(h: &mut Harness) {
    let before = snapshot(h).await;
    let (nf, inv) = (Code::NotFound, Code::InvalidArgument);
    let h100 = "gpu.shared.h100";
    check!(
        h,
        before,
        h.reserve(ACME, "r-sku", SHARED, h100, 1_000, 0),
        nf,
        [h100]
    );
    check!(h, before, h.admit(ACME, SHARED, h100, 1_000), nf, [h100]);
    check!(
        h,
        before,
        h.reserve(ACME, "r-sku", SHARED, "plan.compute.500", 1_000, 0),
        nf,
        ["plan.compute.500"]
    );
    check!(
        h,
        before,
        h.purchase(ACME, "plan.nope", "p-sku", 0),
        nf,
        ["plan.nope"]
    );
    // A price is not something one buys.
    check!(h, before, h.purchase(ACME, A10, "p-sku", 0), nf, [A10]);
    check!(
        h,
        before,
        h.reserve(ACME, "r-sku", SHARED, "", 1_000, 0),
        inv,
        ["sku"]
    );
    check!(h, before, h.admit(ACME, SHARED, "", 1_000), inv, ["sku"]);
    check!(h, before, h.purchase(ACME, "", "p-sku", 0), inv, ["sku"]);
    let long = "s".repeat(65);
    check!(
        h,
        before,
        h.reserve(ACME, "r-sku", SHARED, &long, 1_000, 0),
        inv,
        ["sku"]
    );
    assert!(
        h.reserve(ACME, "r-sku", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.purchase(ACME, "plan.compute.500", "p-sku", 0)
        .await
        .unwrap();
}

async fn bad_resources(h: &mut Harness) {
    use pb::Resource as R;
    let before = snapshot(h).await;
    let inv = Code::InvalidArgument;
    let ex = R::GpuExclusive as i32;
    check!(
        h,
        before,
        h.reserve(ACME, "r-res", SHARED, EXCLUSIVE_SKU, 1_000, 0),
        inv,
        [EXCLUSIVE_SKU]
    );
    check!(
        h,
        before,
        h.admit(ACME, SHARED, EXCLUSIVE_SKU, 1_000),
        inv,
        [EXCLUSIVE_SKU]
    );
    check!(
        h,
        before,
        h.reserve(ACME, "r-res", ex, A10, 1_000, 0),
        inv,
        [A10]
    );
    for (v, needle) in [(R::Unspecified as i32, "resource"), (99, "99"), (-1, "-1")] {
        let r = h.reserve(ACME, "r-res", v, A10, 1_000, 0).await;
        rejected(
            h,
            &before,
            &format!("Reserve resource {v}"),
            r,
            inv,
            &[needle],
        )
        .await;
        let r = h.admit(ACME, v, A10, 1_000).await;
        rejected(
            h,
            &before,
            &format!("Admit resource {v}"),
            r,
            inv,
            &[needle],
        )
        .await;
    }
    let storage = R::Storage as i32;
    check!(
        h,
        before,
        h.reserve(ACME, "r-res", storage, "storage.standard", 1_000, 0),
        inv,
        ["STORAGE"]
    );
    check!(
        h,
        before,
        h.admit(ACME, storage, "storage.standard", 1),
        inv,
        ["STORAGE"]
    );
    check!(
        h,
        before,
        h.grant_credit(ACME, "g-res", COUPON, 99, cny("1"), FAR_MS),
        inv,
        ["resource", "99"]
    );
    assert!(
        h.reserve(ACME, "r-res", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
}

async fn bad_quantities(h: &mut Harness) {
    let before = snapshot(h).await;
    let inv = Code::InvalidArgument;
    for q in [0, -1, i64::MIN, QUANTITY_MAX + 1, i64::MAX] {
        let r = h.reserve(ACME, "r-qty", GPU_SHARED, A10, q, 0).await;
        let what = format!("Reserve quantity {q}");
        rejected(h, &before, &what, r, inv, &["quantity", &q.to_string()]).await;
        let r = h.admit(ACME, SHARED, A10, q).await;
        let what = format!("Admit quantity {q}");
        rejected(h, &before, &what, r, inv, &["quantity", &q.to_string()]).await;
    }
    for q in [-1, i64::MIN, QUANTITY_MAX + 1, i64::MAX] {
        let r = h.commit("open-1", q).await;
        let what = format!("Commit quantity {q}");
        rejected(h, &before, &what, r, inv, &["quantity", &q.to_string()]).await;
    }
    // The largest quantity is valid input, just far more than acme can pay.
    let r = h
        .reserve(ACME, "r-qty", GPU_SHARED, A10, QUANTITY_MAX, 0)
        .await
        .unwrap();
    assert!(!r.admitted);
    assert_eq!(r.reason, pb::DenyReason::InsufficientFunds as i32);
    assert_eq!(snapshot(h).await, before);
    assert!(
        h.reserve(ACME, "r-qty", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
}

async fn bad_ttls(h: &mut Harness) {
    let before = snapshot(h).await;
    for ttl in [-1, -HOUR_MS, i64::MIN, 24 * HOUR_MS + 1, i64::MAX] {
        let r = h.reserve(ACME, "r-ttl", GPU_SHARED, A10, 1_000, ttl).await;
        let what = format!("Reserve ttl_ms {ttl}");
        rejected(
            h,
            &before,
            &what,
            r,
            Code::InvalidArgument,
            &["ttl_ms", &ttl.to_string()],
        )
        .await;
    }
    let r = h
        .reserve(ACME, "r-ttl", GPU_SHARED, A10, 1_000, 24 * HOUR_MS)
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
    assert_eq!(r.expires_at_ms, T0_MS + 24 * HOUR_MS);
}

async fn unknown_reservations(h: &mut Harness) {
    let before = snapshot(h).await;
    check!(h, before, h.commit("nope", 1_000), Code::NotFound, ["nope"]);
    check!(h, before, h.release("nope"), Code::NotFound, ["nope"]);
}

async fn bad_grant_credits(h: &mut Harness) {
    use pb::grant::Kind;
    let before = snapshot(h).await;
    let inv = Code::InvalidArgument;
    for (kind, needle) in [
        (Kind::Plan as i32, "PLAN"),
        (Kind::Unspecified as i32, "kind"),
        (99, "99"),
    ] {
        let r = h.grant_credit(ACME, "g-bad", kind, ANY, "1", FAR_MS).await;
        rejected(
            h,
            &before,
            &format!("GrantCredit kind {kind}"),
            r,
            inv,
            &[needle],
        )
        .await;
    }
    for at in [T0_MS - 1, T0_MS, 0, -5, i64::MIN] {
        let r = h.grant_credit(ACME, "g-bad", COUPON, ANY, "1", at).await;
        let what = format!("GrantCredit expires_at_ms {at}");
        rejected(h, &before, &what, r, inv, &["expires_at_ms"]).await;
    }
    check!(
        h,
        before,
        h.grant_credit(ACME, "balance", COUPON, ANY, cny("1"), FAR_MS),
        inv,
        ["grant_id", "balance"]
    );
    check!(
        h,
        before,
        h.grant_credit(ACME, "free_tier", COUPON, ANY, cny("1"), FAR_MS),
        inv,
        ["grant_id", "free_tier", "reserved"]
    );
    let g = h
        .grant_credit(ACME, "g-bad", COUPON, ANY, "1", T0_MS + 1)
        .await
        .unwrap();
    assert_eq!(g.expires_at_ms, T0_MS + 1);
}

async fn bad_purchases(h: &mut Harness) {
    let before = snapshot(h).await;
    let inv = Code::InvalidArgument;
    for at in [T0_MS + 1, T0_MS + DAY_MS, i64::MAX, -1, i64::MIN] {
        let r = h.purchase(ACME, "plan.compute.500", "p-bad", at).await;
        let what = format!("Purchase effective_at_ms {at}");
        rejected(h, &before, &what, r, inv, &["effective_at_ms"]).await;
    }
    let p = h.purchase(ACME, "plan.compute.500", "p-bad", T0_MS).await;
    assert_eq!(p.unwrap().grants[0].starts_at_ms, T0_MS);
}

async fn create_account_twice(h: &mut Harness) {
    let before = snapshot(h).await;
    let ae = Code::AlreadyExists;
    check!(h, before, h.create_account(ACME, cny("999")), ae, [ACME]);
    check!(h, before, h.create_account(ACME, None), ae, [ACME]);
    check!(h, before, h.create_account(ACME, cny("0")), ae, [ACME]);
}

// ---- tests ---------------------------------------------------------------------------

/// Runs one case on a fresh server and checks it still serves afterwards.
macro_rules! case_test {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $name() {
            let mut h = setup().await;
            super::$name(&mut h).await;
            assert_serves(&mut h, "after").await;
            h.shutdown().await;
        }
    )*};
}

mod each {
    use super::*;

    case_test!(
        top_up_bad_amounts,
        create_account_bad_balances,
        grant_credit_bad_amounts,
        amounts_beyond_decimal_precision,
        malformed_ids,
        ids_of_128_bytes_accepted,
        megabyte_ids,
        unknown_accounts,
        unknown_and_malformed_skus,
        bad_resources,
        bad_quantities,
        bad_ttls,
        unknown_reservations,
        bad_grant_credits,
        bad_purchases,
        create_account_twice,
    );
}

/// All of it against one server, which still serves a normal Reserve at the end.
#[tokio::test]
async fn server_serves_after_all_bad_input() {
    let mut h = setup().await;
    unknown_reservations(&mut h).await;
    bad_quantities(&mut h).await;
    bad_ttls(&mut h).await;
    bad_resources(&mut h).await;
    unknown_and_malformed_skus(&mut h).await;
    unknown_accounts(&mut h).await;
    megabyte_ids(&mut h).await;
    bad_grant_credits(&mut h).await;
    bad_purchases(&mut h).await;
    create_account_twice(&mut h).await;
    top_up_bad_amounts(&mut h).await;
    grant_credit_bad_amounts(&mut h).await;
    malformed_ids(&mut h).await;
    ids_of_128_bytes_accepted(&mut h).await;
    create_account_bad_balances(&mut h).await;
    assert_serves(&mut h, "at-the-end").await;
    h.shutdown().await;
}
