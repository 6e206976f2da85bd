//! Bad input (G6): every malformed or impossible request gets its exact gRPC status and a
//! message that names what was wrong, and changes nothing: account "acme"'s balance view
//! and statement are identical before and after, and ids of rejected calls stay unused.

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
        balance: h.balance(ACME).await,
        statement: h.statement(ACME).await,
    }
}

/// A server with "acme": balance 10, a coupon, a compute plan, an open hold ("open-1") and
/// one committed usage ("done-1").
async fn setup() -> Harness {
    let mut h = Harness::start().await;
    h.create(ACME, "10").await;
    h.coupon(ACME, "c1", "5", FAR_MS).await;
    h.buy(ACME, "plan.compute.500", "p1").await;
    assert!(h.reserve(ACME, "open-1", 10_000).await.unwrap().admitted);
    assert!(h.reserve(ACME, "done-1", 1_234).await.unwrap().admitted);
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
    let r = h.quota.get_balance(balance_req(account)).await;
    assert_status(&format!("{account} must not exist"), r, Code::NotFound, &[]);
}

/// The server still serves: a normal Reserve on acme is admitted.
async fn assert_serves(h: &mut Harness, reservation_id: &str) {
    let r = h.reserve(ACME, reservation_id, 1_000).await.unwrap();
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

fn create_req(account: &str, balance: Option<pb::Money>) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        account_id: account.into(),
        balance,
    }
}

fn top_up_req(account: &str, amount: Option<pb::Money>, id: &str) -> pb::TopUpRequest {
    pb::TopUpRequest {
        account_id: account.into(),
        amount,
        topup_id: id.into(),
    }
}

fn purchase_req(account: &str, sku: &str, id: &str, effective_at_ms: i64) -> pb::PurchaseRequest {
    pb::PurchaseRequest {
        account_id: account.into(),
        sku: sku.into(),
        purchase_id: id.into(),
        effective_at_ms,
    }
}

/// A coupon covering anything, expiring at FAR_MS.
fn credit_req(account: &str, grant_id: &str, amount: Option<pb::Money>) -> pb::GrantCreditRequest {
    pb::GrantCreditRequest {
        account_id: account.into(),
        grant_id: grant_id.into(),
        kind: pb::grant::Kind::Coupon as i32,
        resource: pb::Resource::Unspecified as i32,
        amount,
        expires_at_ms: FAR_MS,
    }
}

fn statement_req(account: &str) -> pb::GetStatementRequest {
    pb::GetStatementRequest {
        account_id: account.into(),
    }
}

fn balance_req(account: &str) -> pb::GetBalanceRequest {
    pb::GetBalanceRequest {
        account_id: account.into(),
    }
}

fn admit_req(account: &str, resource: i32, sku: &str, quantity: i64) -> pb::AdmitRequest {
    pb::AdmitRequest {
        account_id: account.into(),
        resource,
        sku: sku.into(),
        quantity,
    }
}

/// A Reserve on acme of 1 s of `sku` as `resource`.
fn reserve_as(id: &str, resource: i32, sku: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        resource,
        sku: sku.into(),
        ..reserve_req(ACME, id, 1_000)
    }
}

fn reserve_ttl(id: &str, ttl_ms: i64) -> pb::ReserveRequest {
    pb::ReserveRequest {
        ttl_ms,
        ..reserve_req(ACME, id, 1_000)
    }
}

fn commit_req(id: &str, quantity: i64) -> pb::CommitRequest {
    pb::CommitRequest {
        reservation_id: id.into(),
        quantity,
    }
}

fn release_req(id: &str) -> pb::ReleaseRequest {
    pb::ReleaseRequest {
        reservation_id: id.into(),
    }
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
    let (a, q) = (&mut h.admin, &mut h.quota);
    let mut out: Vec<Outcome> = Vec::new();
    let mut push = |rpc: &str, r: Result<(), Status>| out.push((format!("{rpc}({id:.40?})"), r));
    match field {
        IdField::Account => {
            push(
                "CreateAccount",
                a.create_account(create_req(id, cny("1"))).await.map(drop),
            );
            push(
                "TopUp",
                a.top_up(top_up_req(id, cny("1"), "t-new")).await.map(drop),
            );
            let p = purchase_req(id, "plan.compute.500", "p-new", 0);
            push("Purchase", a.purchase(p).await.map(drop));
            push(
                "GrantCredit",
                a.grant_credit(credit_req(id, "g-new", cny("1")))
                    .await
                    .map(drop),
            );
            push(
                "GetStatement",
                a.get_statement(statement_req(id)).await.map(drop),
            );
            push(
                "Reserve",
                q.reserve(reserve_req(id, "r-new", 1_000)).await.map(drop),
            );
            push(
                "Admit",
                q.admit(admit_req(id, SHARED, A10, 1_000)).await.map(drop),
            );
            push("GetBalance", q.get_balance(balance_req(id)).await.map(drop));
        }
        IdField::Reservation => {
            push(
                "Reserve",
                q.reserve(reserve_req(ACME, id, 1_000)).await.map(drop),
            );
            push("Commit", q.commit(commit_req(id, 1_000)).await.map(drop));
            push("Release", q.release(release_req(id)).await.map(drop));
        }
        IdField::TopUp => {
            push(
                "TopUp",
                a.top_up(top_up_req(ACME, cny("1"), id)).await.map(drop),
            );
        }
        IdField::Purchase => {
            let p = purchase_req(ACME, "plan.compute.500", id, 0);
            push("Purchase", a.purchase(p).await.map(drop));
        }
        IdField::Grant => {
            let g = credit_req(ACME, id, cny("1"));
            push("GrantCredit", a.grant_credit(g).await.map(drop));
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
    let before = Money::parse(&amount(&h.balance(account).await.balance)).unwrap();
    let r = h
        .admin
        .top_up(top_up_req(account, cny("1"), topup_id))
        .await;
    let after = amount(&r.unwrap().into_inner().balance);
    assert_eq!(after, (before + Money::parse("1").unwrap()).to_string());
}

/// The ids of the Account batch in `calls_with_id` are still unused.
async fn batch_ids_unused(h: &mut Harness) {
    top_up_one(h, ACME, "t-new").await;
    h.buy(ACME, "plan.compute.500", "p-new").await;
    h.coupon(ACME, "g-new", "1", FAR_MS).await;
    assert!(h.reserve(ACME, "r-new", 1_000).await.unwrap().admitted);
}

// ---- cases: each takes its own "before" and may leave valid changes behind ------------

async fn top_up_bad_amounts(h: &mut Harness) {
    let before = snapshot(h).await;
    for (bad, needle) in BAD_AMOUNTS
        .iter()
        .copied()
        .chain([("0", "0"), ("-0", "0"), ("0.00", "0")])
    {
        let r = h.admin.top_up(top_up_req(ACME, cny(bad), "t-bad")).await;
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
        h.admin
            .top_up(top_up_req(ACME, in_currency("USD", "1"), "t-bad")),
        Code::InvalidArgument,
        ["amount", "USD"]
    );
    check!(
        h,
        before,
        h.admin.top_up(top_up_req(ACME, None, "t-bad")),
        Code::InvalidArgument,
        ["amount", "required"]
    );
    // None of the rejected calls used up the top-up id.
    top_up_one(h, ACME, "t-bad").await;
}

async fn create_account_bad_balances(h: &mut Harness) {
    let before = snapshot(h).await;
    for (bad, needle) in BAD_AMOUNTS.iter().copied() {
        let r = h.admin.create_account(create_req("newbie", cny(bad))).await;
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
        h.admin
            .create_account(create_req("newbie", in_currency("USD", "1"))),
        Code::InvalidArgument,
        ["balance", "USD"]
    );
    assert_absent(h, "newbie").await;
    // Absent balance means zero.
    let b = h
        .admin
        .create_account(create_req("newbie", None))
        .await
        .unwrap();
    assert_eq!(amount(&b.into_inner().balance), "0");
}

async fn grant_credit_bad_amounts(h: &mut Harness) {
    let before = snapshot(h).await;
    for (bad, needle) in BAD_AMOUNTS.iter().copied().chain([("0", "0")]) {
        let r = h
            .admin
            .grant_credit(credit_req(ACME, "g-amt", cny(bad)))
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
        h.admin
            .grant_credit(credit_req(ACME, "g-amt", in_currency("USD", "1"))),
        Code::InvalidArgument,
        ["amount", "USD"]
    );
    check!(
        h,
        before,
        h.admin.grant_credit(credit_req(ACME, "g-amt", None)),
        Code::InvalidArgument,
        ["amount", "required"]
    );
    let g = h.coupon(ACME, "g-amt", "1", FAR_MS).await;
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
                    .admin
                    .top_up(top_up_req(ACME, cny(bad), &format!("t-29-{i}")))
                    .await
                    .map(drop),
                "CreateAccount" => {
                    let r = h.admin.create_account(create_req(&newbie, cny(bad))).await;
                    r.map(drop)
                }
                _ => {
                    let r = h
                        .admin
                        .grant_credit(credit_req(ACME, &format!("g-29-{i}"), cny(bad)))
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
            if rpc == "CreateAccount" && h.quota.get_balance(balance_req(&newbie)).await.is_ok() {
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
    let b = h
        .admin
        .create_account(create_req(&acct, cny("2")))
        .await
        .unwrap();
    assert_eq!(b.into_inner().account_id, acct);
    let b = h
        .admin
        .top_up(top_up_req(&acct, cny("1"), &id('t')))
        .await
        .unwrap();
    assert_eq!(amount(&b.into_inner().balance), "3");
    let p = h.buy(&acct, "plan.compute.500", &id('p')).await;
    assert_eq!(p.grants.len(), 1);
    let g = h.coupon(&acct, &id('g'), "1", FAR_MS).await;
    assert_eq!(g.grant_id, id('g'));
    let r = h.reserve(&acct, &id('r'), 1_000).await.unwrap();
    assert!(r.admitted, "{r:?}");
    assert_eq!(
        amount(&h.commit(&id('r'), 1_000).await.unwrap().charged),
        "0.0006"
    );
    let s = h.statement(&acct).await;
    assert_eq!(s.account_id, acct);
    assert_eq!(s.entries.len(), 1);
    assert_eq!(s.entries[0].usage_id, id('r'));
}

async fn megabyte_ids(h: &mut Harness) {
    let before = snapshot(h).await;
    let huge = "x".repeat(1 << 20);
    let over_limit = [
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::OutOfRange,
    ];
    let r = h.quota.reserve(reserve_req(&huge, "r-huge", 1_000)).await;
    let s = r.expect_err("a 1 MB account_id must be rejected");
    assert!(
        over_limit.contains(&s.code()),
        "Reserve with a 1 MB id: {s:?}"
    );
    assert_eq!(snapshot(h).await, before);
    let r = h.admin.top_up(top_up_req(ACME, cny("1"), &huge)).await;
    let s = r.expect_err("a 1 MB topup_id must be rejected");
    assert!(
        over_limit.contains(&s.code()),
        "TopUp with a 1 MB id: {s:?}"
    );
    assert_eq!(snapshot(h).await, before);
    // Under the message size limit the id is judged on its own, and not echoed back.
    let big = "y".repeat(60_000);
    let r = h.quota.reserve(reserve_req(ACME, &big, 1_000)).await;
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
        h.quota.reserve(reserve_req("ghost", "r-ghost", 1_000)),
        nf,
        ["ghost"]
    );
    check!(
        h,
        before,
        h.quota.admit(admit_req("ghost", SHARED, A10, 1_000)),
        nf,
        ["ghost"]
    );
    check!(
        h,
        before,
        h.quota.get_balance(balance_req("ghost")),
        nf,
        ["ghost"]
    );
    check!(
        h,
        before,
        h.admin.top_up(top_up_req("ghost", cny("1"), "t-ghost")),
        nf,
        ["ghost"]
    );
    check!(
        h,
        before,
        h.admin
            .purchase(purchase_req("ghost", "plan.compute.500", "p-ghost", 0)),
        nf,
        ["ghost"]
    );
    check!(
        h,
        before,
        h.admin.get_statement(statement_req("ghost")),
        nf,
        ["ghost"]
    );
    check!(
        h,
        before,
        h.admin
            .grant_credit(credit_req("ghost", "g-ghost", cny("1"))),
        nf,
        ["ghost"]
    );
    assert_absent(h, "ghost").await;
    // Nothing was recorded under the ids the rejected calls carried.
    h.create("ghost", "1").await;
    let b = h
        .admin
        .top_up(top_up_req("ghost", cny("1"), "t-ghost"))
        .await
        .unwrap();
    assert_eq!(amount(&b.into_inner().balance), "2");
    assert_eq!(
        h.buy("ghost", "plan.compute.500", "p-ghost")
            .await
            .grants
            .len(),
        1
    );
    assert_eq!(
        h.coupon("ghost", "g-ghost", "1", FAR_MS).await.grant_id,
        "g-ghost"
    );
    assert!(h.reserve("ghost", "r-ghost", 1_000).await.unwrap().admitted);
}

async fn unknown_and_malformed_skus(h: &mut Harness) {
    let before = snapshot(h).await;
    let (nf, inv) = (Code::NotFound, Code::InvalidArgument);
    let h100 = "gpu.shared.h100";
    check!(
        h,
        before,
        h.quota.reserve(reserve_as("r-sku", SHARED, h100)),
        nf,
        [h100]
    );
    check!(
        h,
        before,
        h.quota.admit(admit_req(ACME, SHARED, h100, 1_000)),
        nf,
        [h100]
    );
    check!(
        h,
        before,
        h.quota
            .reserve(reserve_as("r-sku", SHARED, "plan.compute.500")),
        nf,
        ["plan.compute.500"]
    );
    check!(
        h,
        before,
        h.admin
            .purchase(purchase_req(ACME, "plan.nope", "p-sku", 0)),
        nf,
        ["plan.nope"]
    );
    // A price is not something one buys.
    check!(
        h,
        before,
        h.admin.purchase(purchase_req(ACME, A10, "p-sku", 0)),
        nf,
        [A10]
    );
    check!(
        h,
        before,
        h.quota.reserve(reserve_as("r-sku", SHARED, "")),
        inv,
        ["sku"]
    );
    check!(
        h,
        before,
        h.quota.admit(admit_req(ACME, SHARED, "", 1_000)),
        inv,
        ["sku"]
    );
    check!(
        h,
        before,
        h.admin.purchase(purchase_req(ACME, "", "p-sku", 0)),
        inv,
        ["sku"]
    );
    let long = "s".repeat(65);
    check!(
        h,
        before,
        h.quota.reserve(reserve_as("r-sku", SHARED, &long)),
        inv,
        ["sku"]
    );
    assert!(h.reserve(ACME, "r-sku", 1_000).await.unwrap().admitted);
    h.buy(ACME, "plan.compute.500", "p-sku").await;
}

async fn bad_resources(h: &mut Harness) {
    use pb::Resource as R;
    let before = snapshot(h).await;
    let inv = Code::InvalidArgument;
    let ex = R::GpuExclusive as i32;
    check!(
        h,
        before,
        h.quota.reserve(reserve_as("r-res", SHARED, EXCLUSIVE_SKU)),
        inv,
        [EXCLUSIVE_SKU]
    );
    check!(
        h,
        before,
        h.quota.admit(admit_req(ACME, SHARED, EXCLUSIVE_SKU, 1_000)),
        inv,
        [EXCLUSIVE_SKU]
    );
    check!(
        h,
        before,
        h.quota.reserve(reserve_as("r-res", ex, A10)),
        inv,
        [A10]
    );
    for (v, needle) in [(R::Unspecified as i32, "resource"), (99, "99"), (-1, "-1")] {
        let r = h.quota.reserve(reserve_as("r-res", v, A10)).await;
        rejected(
            h,
            &before,
            &format!("Reserve resource {v}"),
            r,
            inv,
            &[needle],
        )
        .await;
        let r = h.quota.admit(admit_req(ACME, v, A10, 1_000)).await;
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
        h.quota
            .reserve(reserve_as("r-res", storage, "storage.standard")),
        inv,
        ["STORAGE"]
    );
    check!(
        h,
        before,
        h.quota
            .admit(admit_req(ACME, storage, "storage.standard", 1)),
        inv,
        ["STORAGE"]
    );
    let mut g = credit_req(ACME, "g-res", cny("1"));
    g.resource = 99;
    check!(h, before, h.admin.grant_credit(g), inv, ["resource", "99"]);
    assert!(h.reserve(ACME, "r-res", 1_000).await.unwrap().admitted);
}

async fn bad_quantities(h: &mut Harness) {
    let before = snapshot(h).await;
    let inv = Code::InvalidArgument;
    for q in [0, -1, i64::MIN, QUANTITY_MAX + 1, i64::MAX] {
        let r = h.quota.reserve(reserve_req(ACME, "r-qty", q)).await;
        let what = format!("Reserve quantity {q}");
        rejected(h, &before, &what, r, inv, &["quantity", &q.to_string()]).await;
        let r = h.quota.admit(admit_req(ACME, SHARED, A10, q)).await;
        let what = format!("Admit quantity {q}");
        rejected(h, &before, &what, r, inv, &["quantity", &q.to_string()]).await;
    }
    for q in [-1, i64::MIN, QUANTITY_MAX + 1, i64::MAX] {
        let r = h.quota.commit(commit_req("open-1", q)).await;
        let what = format!("Commit quantity {q}");
        rejected(h, &before, &what, r, inv, &["quantity", &q.to_string()]).await;
    }
    // The largest quantity is valid input, just far more than acme can pay.
    let r = h.reserve(ACME, "r-qty", QUANTITY_MAX).await.unwrap();
    assert!(!r.admitted);
    assert_eq!(r.reason, pb::DenyReason::InsufficientFunds as i32);
    assert_eq!(snapshot(h).await, before);
    assert!(h.reserve(ACME, "r-qty", 1_000).await.unwrap().admitted);
}

async fn bad_ttls(h: &mut Harness) {
    let before = snapshot(h).await;
    for ttl in [-1, -HOUR_MS, i64::MIN, 24 * HOUR_MS + 1, i64::MAX] {
        let r = h.quota.reserve(reserve_ttl("r-ttl", ttl)).await;
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
        .quota
        .reserve(reserve_ttl("r-ttl", 24 * HOUR_MS))
        .await
        .unwrap()
        .into_inner();
    assert!(r.admitted, "{r:?}");
    assert_eq!(r.expires_at_ms, T0_MS + 24 * HOUR_MS);
}

async fn unknown_reservations(h: &mut Harness) {
    let before = snapshot(h).await;
    check!(
        h,
        before,
        h.quota.commit(commit_req("nope", 1_000)),
        Code::NotFound,
        ["nope"]
    );
    check!(
        h,
        before,
        h.quota.release(release_req("nope")),
        Code::NotFound,
        ["nope"]
    );
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
        let mut g = credit_req(ACME, "g-bad", cny("1"));
        g.kind = kind;
        let r = h.admin.grant_credit(g).await;
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
        let mut g = credit_req(ACME, "g-bad", cny("1"));
        g.expires_at_ms = at;
        let r = h.admin.grant_credit(g).await;
        let what = format!("GrantCredit expires_at_ms {at}");
        rejected(h, &before, &what, r, inv, &["expires_at_ms"]).await;
    }
    check!(
        h,
        before,
        h.admin.grant_credit(credit_req(ACME, "balance", cny("1"))),
        inv,
        ["grant_id", "balance"]
    );
    check!(
        h,
        before,
        h.admin
            .grant_credit(credit_req(ACME, "free_tier", cny("1"))),
        inv,
        ["grant_id", "free_tier", "reserved"]
    );
    let g = h.coupon(ACME, "g-bad", "1", T0_MS + 1).await;
    assert_eq!(g.expires_at_ms, T0_MS + 1);
}

async fn bad_purchases(h: &mut Harness) {
    let before = snapshot(h).await;
    let inv = Code::InvalidArgument;
    for at in [T0_MS + 1, T0_MS + DAY_MS, i64::MAX, -1, i64::MIN] {
        let r = h
            .admin
            .purchase(purchase_req(ACME, "plan.compute.500", "p-bad", at))
            .await;
        let what = format!("Purchase effective_at_ms {at}");
        rejected(h, &before, &what, r, inv, &["effective_at_ms"]).await;
    }
    let p = h
        .admin
        .purchase(purchase_req(ACME, "plan.compute.500", "p-bad", T0_MS))
        .await;
    assert_eq!(p.unwrap().into_inner().grants[0].starts_at_ms, T0_MS);
}

async fn create_account_twice(h: &mut Harness) {
    let before = snapshot(h).await;
    let ae = Code::AlreadyExists;
    check!(
        h,
        before,
        h.admin.create_account(create_req(ACME, cny("999"))),
        ae,
        [ACME]
    );
    check!(
        h,
        before,
        h.admin.create_account(create_req(ACME, None)),
        ae,
        [ACME]
    );
    check!(
        h,
        before,
        h.admin.create_account(create_req(ACME, cny("0"))),
        ae,
        [ACME]
    );
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
