//! The `LedgerStore` contract, run with the same test bodies against both stores: SQLite
//! (always) and PostgreSQL (when DATABASE_URL names a server, e.g.
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres`). Each PostgreSQL test
//! creates its own database `quotad_test_<random>` through that URL and drops it at the
//! end, so tests run in parallel and re-run cleanly. Without DATABASE_URL the PostgreSQL
//! half is skipped with one line on stderr, except under CI (env CI set), where it fails.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use quotad::billing::{
    Deduction, Grant, GrantKind, GrantUnit, Money, Resource, ResourceSet, Source,
};
use quotad::ledger::UsageRecord;
use quotad::ledger::postgres::{self as pg, DEFAULT_PG_POOL_MAX, PgStore};
use quotad::ledger::sqlite::SqliteStore;
use quotad::ledger::store::{
    AppliedUsage, ChangeSet, LeaseRow, LedgerStore, PurchaseRecord, StoreError, TopUpRecord,
};
use sqlx::{Connection, PgConnection};

// ---- helpers ---------------------------------------------------------------------------

const SIDECAR: &str = "sc-1";
const T0: i64 = 1_700_000_000_000;

fn m(s: &str) -> Money {
    Money::parse(s).expect("test amount")
}

fn d(s: &str) -> rust_decimal::Decimal {
    m(s).as_decimal()
}

fn grant(id: &str, quota: &str, remaining: &str) -> Grant {
    Grant {
        grant_id: id.into(),
        kind: GrantKind::Coupon,
        covers: ResourceSet::of(Resource::GpuShared).with(Resource::Storage),
        unit: GrantUnit::Money,
        quota: d(quota),
        remaining: d(remaining),
        starts_at_ms: T0,
        expires_at_ms: T0 + 86_400_000,
        created_at_ms: T0,
        source: "coupon".into(),
        stackable: true,
    }
}

/// A usage record paid by `deductions` (grant id or "balance", amount).
fn usage(
    account: &str,
    id: &str,
    seq: u64,
    at_ms: i64,
    cost: &str,
    deductions: &[(&str, &str)],
) -> AppliedUsage {
    AppliedUsage {
        record: UsageRecord {
            seq,
            usage_id: id.into(),
            account_id: account.into(),
            resource: Resource::GpuShared,
            sku: "gpu-a10".into(),
            quantity: 1_000 + seq,
            cost: m(cost),
            at_ms,
        },
        sidecar_id: SIDECAR.into(),
        deductions: deductions
            .iter()
            .map(|(src, amt)| Deduction::money(Source::from_label(src), m(amt)))
            .collect(),
        free_quantity: 0,
    }
}

/// A lease row whose every column is derived from its arguments, so that a row read back
/// equal to it proves each column round-trips.
fn lease(sidecar: &str, remaining: &str, expires_at_ms: i64) -> LeaseRow {
    let remaining = m(remaining);
    LeaseRow {
        sidecar_id: sidecar.into(),
        remaining,
        expires_at_ms,
        request_seq: expires_at_ms.max(0) as u64,
        held: Money::from_decimal(remaining.as_decimal() / rust_decimal::Decimal::from(4)),
        want: remaining + m("1.5"),
        edge: expires_at_ms % 2 == 0,
        give_back: expires_at_ms % 3 == 0,
    }
}

/// Version and balance of `account`, which must exist.
async fn vb(s: &Arc<dyn LedgerStore>, account: &str) -> (i64, Money) {
    let st = s.load(account, SIDECAR).await.unwrap().expect("account");
    (st.version, st.balance)
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn set(v: &[&str]) -> HashSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

// ---- the contract ------------------------------------------------------------------------

async fn create_and_load(s: Arc<dyn LedgerStore>) {
    assert!(
        s.create_account("acme", m("999999999999.99999999"), T0)
            .await
            .unwrap()
    );
    assert!(
        !s.create_account("acme", m("1"), T0).await.unwrap(),
        "second create of the same id"
    );
    assert!(s.create_account("tiny", m("0.00000001"), T0).await.unwrap());
    let st = s.load("acme", SIDECAR).await.unwrap().expect("acme exists");
    assert_eq!(st.account_id, "acme");
    assert_eq!(st.version, 1);
    assert_eq!(st.balance, m("999999999999.99999999"), "money is exact");
    assert_eq!(st.balance.to_string(), "999999999999.99999999");
    assert!(st.grants.is_empty());
    assert!(st.once_skus.is_empty());
    assert_eq!(st.applied_seq, 0);
    assert!(st.leases.is_empty());
    let tiny = s.load("tiny", SIDECAR).await.unwrap().unwrap();
    assert_eq!(tiny.balance.to_string(), "0.00000001");
    assert!(s.load("nobody", SIDECAR).await.unwrap().is_none());
}

async fn commit_if_version(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("10"), T0).await.unwrap();
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("12.5"),
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(vb(&s, "acme").await, (2, m("12.5")));

    // Stale version: Conflict, and none of the changes is written.
    let stale = ChangeSet {
        balance: m("99"),
        grant_remaining: vec![],
        new_grants: vec![(grant("g-stale", "5", "5"), None)],
        usage: vec![usage("acme", "u-stale", 1, T0, "1", &[("balance", "1")])],
        topup: Some(TopUpRecord {
            topup_id: "t-stale".into(),
            account_id: "acme".into(),
            amount: m("86.5"),
            at_ms: T0,
        }),
        purchase: None,
        cursors: vec![(SIDECAR.into(), 7)],
        leases: vec![lease(SIDECAR, "3", T0 + 1000)],
        request_counts: vec![(Resource::RequestGet, 202_611, 5)],
    };
    match s.commit("acme", 1, stale.clone()).await {
        Err(StoreError::Conflict(a)) => assert_eq!(a, "acme"),
        other => panic!("stale version: expected Conflict, got {other:?}"),
    }
    let st = s.load("acme", SIDECAR).await.unwrap().unwrap();
    assert_eq!((st.version, st.balance), (2, m("12.5")));
    assert!(st.grants.is_empty());
    assert_eq!(st.applied_seq, 0);
    assert!(st.leases.is_empty());
    assert!(s.find_topup("t-stale").await.unwrap().is_none());
    assert!(s.find_grant("g-stale").await.unwrap().is_none());
    assert!(s.known_usage(&ids(&["u-stale"])).await.unwrap().is_empty());
    assert!(s.statement("acme", 10).await.unwrap().0.is_empty());

    // A version from the future conflicts too, and so does an unknown account.
    assert!(matches!(
        s.commit("acme", 3, ChangeSet::default()).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.commit("nobody", 1, ChangeSet::default()).await,
        Err(StoreError::Conflict(_))
    ));

    // The same changes at the current version go through, all of them.
    s.commit("acme", 2, stale).await.unwrap();
    let st = s.load("acme", SIDECAR).await.unwrap().unwrap();
    assert_eq!((st.version, st.balance), (3, m("99")));
    assert_eq!(st.grants, vec![grant("g-stale", "5", "5")]);
    assert_eq!(st.applied_seq, 7);
    assert_eq!(st.leases, vec![lease(SIDECAR, "3", T0 + 1000)]);
    let t = s.find_topup("t-stale").await.unwrap().expect("topup");
    assert_eq!(
        (t.account_id.as_str(), t.amount, t.at_ms),
        ("acme", m("86.5"), T0)
    );
    assert_eq!(
        s.known_usage(&ids(&["u-stale"])).await.unwrap(),
        set(&["u-stale"])
    );
}

async fn grants_purchases_and_topups(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("100"), T0).await.unwrap();
    s.create_account("other", m("0"), T0).await.unwrap();
    // An import: bought a day before it was recorded.
    let plan_a = Grant {
        kind: GrantKind::Plan,
        unit: GrantUnit::Gigabytes,
        covers: ResourceSet::of(Resource::Storage),
        source: "storage-1tb".into(),
        stackable: false,
        starts_at_ms: T0 - 86_400_000,
        created_at_ms: T0 + 5,
        ..grant("p1/storage", "1000", "1000")
    };
    let plan_b = Grant {
        kind: GrantKind::Plan,
        source: "storage-1tb".into(),
        ..grant("p1/money", "12.34567891", "12.34567891")
    };
    let coupon = grant("c1", "5", "5");
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("80.01"),
            new_grants: vec![
                (plan_b.clone(), Some("p1".into())),
                (plan_a.clone(), Some("p1".into())),
                (coupon.clone(), None),
            ],
            purchase: Some(PurchaseRecord {
                purchase_id: "p1".into(),
                account_id: "acme".into(),
                sku: "storage-1tb".into(),
                price_paid: m("19.99"),
                effective_at_ms: T0 + 5,
                at_ms: T0 + 1,
                once_per_account: true,
            }),
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let st = s.load("acme", SIDECAR).await.unwrap().unwrap();
    assert_eq!(st.balance, m("80.01"));
    // Grants come ordered by id.
    assert_eq!(
        st.grants,
        vec![coupon.clone(), plan_b.clone(), plan_a.clone()]
    );
    assert_eq!(st.once_skus, vec!["storage-1tb".to_owned()]);

    let (p, pg) = s.find_purchase("p1").await.unwrap().expect("purchase");
    assert_eq!(
        (
            p.purchase_id.as_str(),
            p.account_id.as_str(),
            p.sku.as_str(),
            p.price_paid,
            p.effective_at_ms,
            p.at_ms,
            p.once_per_account
        ),
        (
            "p1",
            "acme",
            "storage-1tb",
            m("19.99"),
            T0 + 5,
            T0 + 1,
            true
        )
    );
    assert_eq!(pg, vec![plan_b.clone(), plan_a.clone()], "only its grants");
    assert!(s.find_purchase("p-none").await.unwrap().is_none());
    assert_eq!(
        s.find_grant("c1").await.unwrap(),
        Some(("acme".into(), coupon.clone()))
    );
    assert!(s.find_grant("nope").await.unwrap().is_none());

    // A purchase that is not once-per-account adds no once sku.
    s.commit(
        "acme",
        2,
        ChangeSet {
            balance: m("70.01"),
            purchase: Some(PurchaseRecord {
                purchase_id: "p2".into(),
                account_id: "acme".into(),
                sku: "gpu-pack".into(),
                price_paid: m("10"),
                effective_at_ms: T0,
                at_ms: T0,
                once_per_account: false,
            }),
            topup: Some(TopUpRecord {
                topup_id: "t1".into(),
                account_id: "acme".into(),
                amount: m("0.00000001"),
                at_ms: T0 + 9,
            }),
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let st = s.load("acme", SIDECAR).await.unwrap().unwrap();
    assert_eq!(st.once_skus, vec!["storage-1tb".to_owned()]);
    assert_eq!(st.version, 3);
    let t = s.find_topup("t1").await.unwrap().unwrap();
    assert_eq!(t.amount.to_string(), "0.00000001");
    assert_eq!(t.topup_id, "t1");
    assert!(s.find_topup("t2").await.unwrap().is_none());

    // grant_remaining changes only the named grants of this account.
    s.commit(
        "acme",
        3,
        ChangeSet {
            balance: m("70.01"),
            grant_remaining: vec![
                ("c1".into(), d("0.5")),
                ("p1/money".into(), d("0.00000001")),
            ],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let st = s.load("acme", SIDECAR).await.unwrap().unwrap();
    let rem: Vec<String> = st.grants.iter().map(|g| g.remaining.to_string()).collect();
    assert_eq!(rem, ["0.5", "0.00000001", "1000"]);
    assert_eq!(st.grants[0].quota, d("5"), "quota unchanged");
    // Another account cannot touch acme's grants.
    s.commit(
        "other",
        1,
        ChangeSet {
            balance: m("0"),
            grant_remaining: vec![("c1".into(), d("0"))],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let (_, c1) = s.find_grant("c1").await.unwrap().unwrap();
    assert_eq!(c1.remaining, d("0.5"));
}

/// Commits `bad` (reusing an id) at the current version and checks that it is rejected as
/// Duplicate { what, id } and that nothing of it was written.
async fn assert_duplicate(
    s: &Arc<dyn LedgerStore>,
    account: &str,
    mut bad: ChangeSet,
    what: &str,
    id: &str,
) {
    let (version, balance) = vb(s, account).await;
    let before = s.load(account, SIDECAR).await.unwrap().unwrap();
    let statement_before = s.statement(account, 100).await.unwrap().0.len();
    bad.balance = balance + m("1000");
    bad.usage.push(usage(
        account,
        "u-innocent",
        99,
        T0,
        "1",
        &[("balance", "1")],
    ));
    bad.cursors = vec![(SIDECAR.into(), 99)];
    bad.leases.push(lease("sc-dup", "1", T0));
    match s.commit(account, version, bad).await {
        Err(StoreError::Duplicate { what: w, id: i }) => {
            assert_eq!((w, i.as_str()), (what, id), "which id is reported")
        }
        other => panic!("reused {what} {id}: expected Duplicate, got {other:?}"),
    }
    let after = s.load(account, SIDECAR).await.unwrap().unwrap();
    assert_eq!((after.version, after.balance), (version, balance));
    assert_eq!(after.grants, before.grants);
    assert_eq!(after.applied_seq, before.applied_seq);
    assert_eq!(after.leases, before.leases);
    assert_eq!(after.once_skus, before.once_skus);
    assert!(
        s.known_usage(&ids(&["u-innocent"]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.statement(account, 100).await.unwrap().0.len(),
        statement_before
    );
}

/// Batches larger than a store writes in one statement (the SQLite store: 32 rows) keep
/// every row and deduction, in order; a large batch that reuses an applied id fails with
/// that id and writes nothing.
async fn large_batches_keep_every_row(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("1000"), T0).await.unwrap();
    let batch = |from: u64, n: u64| -> Vec<AppliedUsage> {
        (from..from + n)
            .map(|i| {
                let id = format!("big-{i}");
                let at = T0 + i64::try_from(i).unwrap();
                if i % 2 == 0 {
                    usage("acme", &id, i, at, "1", &[("balance", "1")])
                } else {
                    usage(
                        "acme",
                        &id,
                        i,
                        at,
                        "1",
                        &[("balance", "0.5"), ("balance", "0.5")],
                    )
                }
            })
            .collect()
    };
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("930"),
            usage: batch(1, 70),
            cursors: vec![(SIDECAR.into(), 70)],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let (entries, more) = s.statement("acme", 1_000).await.unwrap();
    assert!(!more);
    assert_eq!(entries.len(), 70);
    for (i, e) in (1_u64..).zip(&entries) {
        assert_eq!(e.usage_id, format!("big-{i}"), "in time order");
        assert_eq!(e.quantity, 1_000 + i);
        let parts: Vec<String> = e.deductions.iter().map(|d| d.amount.to_string()).collect();
        let want = if i % 2 == 0 {
            vec!["1"]
        } else {
            vec!["0.5", "0.5"]
        };
        assert_eq!(parts, want, "deductions of big-{i}");
    }
    // 40 records, the 5th of which is applied: the first statement of 32 meets it.
    let mut again = batch(71, 40);
    again[4] = usage("acme", "big-7", 75, T0 + 75, "1", &[("balance", "1")]);
    match s
        .commit(
            "acme",
            2,
            ChangeSet {
                balance: m("890"),
                usage: again,
                ..ChangeSet::default()
            },
        )
        .await
    {
        Err(StoreError::Duplicate { what, id }) => {
            assert_eq!((what, id.as_str()), ("usage", "big-7"))
        }
        other => panic!("expected Duplicate of big-7, got {other:?}"),
    }
    assert_eq!(vb(&s, "acme").await, (2, m("930")));
    assert!(
        s.known_usage(&ids(&["big-71", "big-110"]))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.statement("acme", 1_000).await.unwrap().0.len(), 70);
}

async fn duplicate_ids_write_nothing(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("100"), T0).await.unwrap();
    s.create_account("other", m("100"), T0).await.unwrap();
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("100"),
            new_grants: vec![(grant("g1", "1", "1"), Some("p1".into()))],
            purchase: Some(PurchaseRecord {
                purchase_id: "p1".into(),
                account_id: "acme".into(),
                sku: "starter".into(),
                price_paid: m("0"),
                effective_at_ms: T0,
                at_ms: T0,
                once_per_account: false,
            }),
            topup: Some(TopUpRecord {
                topup_id: "t1".into(),
                account_id: "acme".into(),
                amount: m("5"),
                at_ms: T0,
            }),
            usage: vec![
                usage("acme", "u1", 1, T0, "0.25", &[("g1", "0.25")]),
                usage("acme", "u2", 2, T0 + 1, "0.5", &[("balance", "0.5")]),
            ],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();

    let topup = |id: &str| TopUpRecord {
        topup_id: id.into(),
        account_id: "acme".into(),
        amount: m("1"),
        at_ms: T0,
    };
    assert_duplicate(
        &s,
        "acme",
        ChangeSet {
            topup: Some(topup("t1")),
            ..ChangeSet::default()
        },
        "topup",
        "t1",
    )
    .await;
    // The same topup id on another account is still a duplicate.
    assert_duplicate(
        &s,
        "other",
        ChangeSet {
            topup: Some(TopUpRecord {
                account_id: "other".into(),
                ..topup("t1")
            }),
            ..ChangeSet::default()
        },
        "topup",
        "t1",
    )
    .await;
    assert_duplicate(
        &s,
        "acme",
        ChangeSet {
            purchase: Some(PurchaseRecord {
                purchase_id: "p1".into(),
                account_id: "acme".into(),
                sku: "starter".into(),
                price_paid: m("3"),
                effective_at_ms: T0,
                at_ms: T0,
                once_per_account: true,
            }),
            new_grants: vec![(grant("g-new", "1", "1"), Some("p1".into()))],
            ..ChangeSet::default()
        },
        "purchase",
        "p1",
    )
    .await;
    assert_duplicate(
        &s,
        "acme",
        ChangeSet {
            new_grants: vec![
                (grant("g-fresh", "1", "1"), None),
                (grant("g1", "2", "2"), None),
            ],
            ..ChangeSet::default()
        },
        "grant",
        "g1",
    )
    .await;
    assert_duplicate(
        &s,
        "acme",
        ChangeSet {
            usage: vec![
                usage("acme", "u3", 3, T0 + 2, "1", &[("balance", "1")]),
                usage("acme", "u2", 4, T0 + 3, "1", &[("balance", "1")]),
            ],
            ..ChangeSet::default()
        },
        "usage",
        "u2",
    )
    .await;
    // A usage id applied on one account is a duplicate on any other.
    assert_duplicate(
        &s,
        "other",
        ChangeSet {
            usage: vec![usage("other", "u1", 1, T0, "1", &[("balance", "1")])],
            ..ChangeSet::default()
        },
        "usage",
        "u1",
    )
    .await;
    // The same new id twice in one change set.
    assert_duplicate(
        &s,
        "acme",
        ChangeSet {
            usage: vec![
                usage("acme", "u-twice", 5, T0, "1", &[("balance", "1")]),
                usage("acme", "u-twice", 6, T0, "1", &[("balance", "1")]),
            ],
            ..ChangeSet::default()
        },
        "usage",
        "u-twice",
    )
    .await;

    // The account is still usable at its version, and the first writes are intact.
    let (v, _) = vb(&s, "acme").await;
    assert_eq!(v, 2);
    s.commit(
        "acme",
        v,
        ChangeSet {
            balance: m("1"),
            topup: Some(topup("t2")),
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(vb(&s, "acme").await, (3, m("1")));
    assert_eq!(s.find_topup("t1").await.unwrap().unwrap().amount, m("5"));
    assert_eq!(
        s.find_purchase("p1").await.unwrap().unwrap().0.price_paid,
        m("0")
    );
}

async fn leases_upsert_and_load(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("100"), T0).await.unwrap();
    s.create_account("other", m("100"), T0).await.unwrap();
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("100"),
            leases: vec![
                lease("sc-b", "3.25", T0 + 200),
                lease("sc-a", "5", T0 + 100),
            ],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    // Every sidecar's lease, ordered by sidecar, whoever asks.
    for asker in ["sc-a", "sc-z"] {
        let st = s.load("acme", asker).await.unwrap().unwrap();
        assert_eq!(
            st.leases,
            vec![
                lease("sc-a", "5", T0 + 100),
                lease("sc-b", "3.25", T0 + 200)
            ]
        );
    }
    // Replace one, add one; the last of two rows for one sidecar wins.
    s.commit(
        "acme",
        2,
        ChangeSet {
            balance: m("100"),
            leases: vec![
                lease("sc-a", "9", T0 + 999),
                lease("sc-c", "0.00000001", T0 + 300),
                lease("sc-a", "0.5", T0 + 400),
            ],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let st = s.load("acme", "sc-a").await.unwrap().unwrap();
    assert_eq!(
        st.leases,
        vec![
            lease("sc-a", "0.5", T0 + 400),
            lease("sc-b", "3.25", T0 + 200),
            lease("sc-c", "0.00000001", T0 + 300),
        ]
    );
    // A commit without leases leaves them; other accounts have none.
    s.commit(
        "acme",
        3,
        ChangeSet {
            balance: m("1"),
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.load("acme", "x").await.unwrap().unwrap().leases.len(), 3);
    assert!(
        s.load("other", "sc-a")
            .await
            .unwrap()
            .unwrap()
            .leases
            .is_empty()
    );
    // A zero lease is a row like any other.
    s.commit(
        "acme",
        4,
        ChangeSet {
            balance: m("1"),
            leases: vec![lease("sc-b", "0", T0)],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let st = s.load("acme", "sc-a").await.unwrap().unwrap();
    assert_eq!(st.leases[1], lease("sc-b", "0", T0));
}

/// `load_views` is `load_many` with only the caller's lease, and the sum of every lease
/// still set aside (expiring after the given time), negative remainders not counted.
async fn load_views_sum_the_leases_and_keep_the_callers(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("100"), T0).await.unwrap();
    s.create_account("bare", m("1"), T0).await.unwrap();
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("100"),
            leases: vec![
                lease("sc-a", "5", T0 + 100),
                lease("sc-b", "3.25", T0 + 200),
                lease("sc-c", "7", T0 - 50),
                lease("sc-d", "-1", T0 + 300),
            ],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let mut views = s
        .load_views(&ids(&["acme", "bare", "nope"]), "sc-b", T0)
        .await
        .unwrap();
    views.sort_by(|a, b| a.0.account_id.cmp(&b.0.account_id));
    assert_eq!(views.len(), 2);
    assert_eq!(views[0].0.leases, vec![lease("sc-b", "3.25", T0 + 200)]);
    assert_eq!(views[0].1, m("8.25"));
    assert_eq!(views[0].0.balance, m("100"));
    assert!(views[1].0.leases.is_empty());
    assert_eq!(views[1].1, Money::ZERO);
    // Expired longer ago than the cut-off: not set aside any more.
    let views = s
        .load_views(&ids(&["acme"]), "sc-z", T0 + 150)
        .await
        .unwrap();
    assert_eq!(views[0].1, m("3.25"));
    assert!(views[0].0.leases.is_empty());
}

/// `recalls` lists the accounts on which one sidecar's lease is flagged give_back, in
/// account order, bounded, and follows the flag as it is set and cleared.
async fn recalls_follow_the_give_back_flag(s: Arc<dyn LedgerStore>) {
    let flagged = |sidecar: &str, give_back: bool| LeaseRow {
        give_back,
        ..lease(sidecar, "2", T0 + 1)
    };
    for (i, account) in ["c", "a", "b", "d"].iter().enumerate() {
        s.create_account(account, m("10"), T0).await.unwrap();
        s.commit(
            account,
            1,
            ChangeSet {
                balance: m("10"),
                leases: vec![flagged("sc-1", i != 3), flagged("sc-2", i == 3)],
                ..ChangeSet::default()
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(s.recalls("sc-1", 10).await.unwrap(), ids(&["a", "b", "c"]));
    assert_eq!(s.recalls("sc-1", 2).await.unwrap(), ids(&["a", "b"]));
    assert_eq!(s.recalls("sc-2", 10).await.unwrap(), ids(&["d"]));
    assert!(s.recalls("sc-3", 10).await.unwrap().is_empty());
    // Given back: the flag is cleared and the account leaves the list.
    s.commit(
        "b",
        2,
        ChangeSet {
            balance: m("10"),
            leases: vec![flagged("sc-1", false)],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(s.recalls("sc-1", 10).await.unwrap(), ids(&["a", "c"]));
}

async fn cursor_only_moves_forward(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("1"), T0).await.unwrap();
    s.create_account("other", m("1"), T0).await.unwrap();
    let seq_of = |sidecar: &'static str, account: &'static str| {
        let s = s.clone();
        async move { s.load(account, sidecar).await.unwrap().unwrap().applied_seq }
    };
    assert_eq!(seq_of("sc-1", "acme").await, 0);
    for (sidecar, seq, want) in [
        ("sc-1", 10, 10),
        ("sc-1", 5, 10),
        ("sc-2", 3, 3),
        ("sc-1", 10, 10),
        ("sc-1", 11, 11),
        ("sc-1", 0, 11),
    ] {
        let (version, _) = vb(&s, "acme").await;
        s.commit(
            "acme",
            version,
            ChangeSet {
                balance: m("1"),
                cursors: vec![(sidecar.into(), seq)],
                ..ChangeSet::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(seq_of(sidecar, "acme").await, want, "{sidecar} after {seq}");
    }
    assert_eq!(seq_of("sc-1", "acme").await, 11);
    assert_eq!(seq_of("sc-2", "acme").await, 3);
    assert_eq!(seq_of("sc-1", "other").await, 0, "per account");
    // Large sequence numbers survive.
    s.commit(
        "other",
        1,
        ChangeSet {
            balance: m("1"),
            cursors: vec![("sc-1".into(), i64::MAX as u64)],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(seq_of("sc-1", "other").await, i64::MAX as u64);
}

async fn statement_order_limit_and_deductions(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("100"), T0).await.unwrap();
    s.create_account("other", m("100"), T0).await.unwrap();
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("100"),
            new_grants: vec![(grant("g1", "1", "1"), None)],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    // Committed out of time order, over two commits; two share a millisecond.
    let first = vec![
        usage(
            "acme",
            "u-c",
            3,
            T0 + 30,
            "0.0000006",
            &[("g1", "0.0000006")],
        ),
        usage(
            "acme",
            "u-a",
            1,
            T0 + 10,
            "1.5",
            &[("g1", "0.75"), ("balance", "0.75")],
        ),
        usage("acme", "u-e", 5, T0 + 50, "0", &[]),
    ];
    let second = vec![
        usage("acme", "u-d2", 4, T0 + 40, "2", &[("balance", "2")]),
        usage("acme", "u-d1", 6, T0 + 40, "3", &[("balance", "3")]),
        usage("acme", "u-b", 2, T0 + 20, "0.25", &[("balance", "0.25")]),
    ];
    s.commit(
        "acme",
        2,
        ChangeSet {
            balance: m("99"),
            usage: first.clone(),
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    s.commit(
        "acme",
        3,
        ChangeSet {
            balance: m("94"),
            usage: second.clone(),
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    s.commit(
        "other",
        1,
        ChangeSet {
            balance: m("99"),
            usage: vec![usage("other", "o-1", 1, T0 + 60, "1", &[("balance", "1")])],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let all: Vec<&AppliedUsage> = first.iter().chain(&second).collect();
    let want_order = ["u-a", "u-b", "u-c", "u-d1", "u-d2", "u-e"];

    let (entries, truncated) = s.statement("acme", 100).await.unwrap();
    assert!(!truncated);
    let got: Vec<&str> = entries.iter().map(|e| e.usage_id.as_str()).collect();
    assert_eq!(got, want_order, "oldest first, ties by usage id");
    for e in &entries {
        let u = all
            .iter()
            .find(|u| u.record.usage_id == e.usage_id)
            .unwrap();
        assert_eq!(e.resource, u.record.resource);
        assert_eq!(e.sku, u.record.sku);
        assert_eq!(e.quantity, u.record.quantity);
        assert_eq!(e.cost, u.record.cost);
        assert_eq!(e.at_ms, u.record.at_ms);
        assert_eq!(e.deductions, u.deductions, "deductions of {}", e.usage_id);
    }
    assert_eq!(entries[2].cost.to_string(), "0.0000006");

    // The latest `limit`, oldest first, and whether older ones were left out.
    let (entries, truncated) = s.statement("acme", 3).await.unwrap();
    assert!(truncated);
    let got: Vec<&str> = entries.iter().map(|e| e.usage_id.as_str()).collect();
    assert_eq!(got, ["u-d1", "u-d2", "u-e"]);
    assert_eq!(entries[0].deductions.len(), 1);
    let (entries, truncated) = s.statement("acme", 6).await.unwrap();
    assert!(!truncated, "exactly the limit is not truncated");
    assert_eq!(entries.len(), 6);
    let (entries, truncated) = s.statement("acme", 0).await.unwrap();
    assert!(entries.is_empty() && truncated);

    let (entries, truncated) = s.statement("other", 10).await.unwrap();
    assert_eq!(entries.len(), 1);
    assert!(!truncated);
    assert_eq!(entries[0].usage_id, "o-1");
    let (entries, truncated) = s.statement("nobody", 10).await.unwrap();
    assert!(entries.is_empty() && !truncated);
}

/// Tokens: stored by hash, found by hash, revoked once (the first time is kept), unique;
/// access: permissions added and taken away as bit sets, the row gone at zero.
async fn tokens_and_access(s: Arc<dyn LedgerStore>) {
    use quotad::ledger::store::TokenRow;
    let row = |id: &str, hash: &str, kind: &str| TokenRow {
        token_id: id.into(),
        token_sha256: hash.into(),
        kind: kind.into(),
        account_id: String::new(),
        name: "n".into(),
        created_at_ms: 5,
        revoked_at_ms: None,
    };
    assert!(!s.has_operator_token().await.unwrap());
    s.insert_token(row("t1", "h1", "sub_user")).await.unwrap();
    assert!(!s.has_operator_token().await.unwrap());
    s.insert_token(row("t2", "h2", "operator")).await.unwrap();
    assert!(s.has_operator_token().await.unwrap());
    for dup in [row("t1", "h9", "owner"), row("t9", "h1", "owner")] {
        assert!(matches!(
            s.insert_token(dup).await,
            Err(StoreError::Duplicate { .. })
        ));
    }
    assert_eq!(
        s.token_by_hash("h1").await.unwrap(),
        Some(row("t1", "h1", "sub_user"))
    );
    assert_eq!(s.token_by_hash("nope").await.unwrap(), None);
    assert!(s.revoke_token("t2", 10).await.unwrap());
    assert!(s.revoke_token("t2", 20).await.unwrap());
    assert!(!s.revoke_token("t404", 20).await.unwrap());
    assert_eq!(
        s.token_by_hash("h2").await.unwrap().unwrap().revoked_at_ms,
        Some(10)
    );
    assert!(!s.has_operator_token().await.unwrap());

    assert_eq!(s.grant_access("a", "bob", 0b00001).await.unwrap(), 0b00001);
    assert_eq!(s.grant_access("a", "bob", 0b01010).await.unwrap(), 0b01011);
    assert_eq!(s.grant_access("b", "bob", 0b10000).await.unwrap(), 0b10000);
    assert_eq!(s.grant_access("a", "eve", 0b00001).await.unwrap(), 0b00001);
    assert_eq!(
        s.access_of("bob", 10).await.unwrap(),
        vec![("a".to_owned(), 0b01011), ("b".to_owned(), 0b10000)]
    );
    assert_eq!(s.access_of("bob", 1).await.unwrap().len(), 1);
    assert_eq!(s.revoke_access("a", "bob", 0b00011).await.unwrap(), 0b01000);
    assert_eq!(s.revoke_access("b", "bob", 0b11111).await.unwrap(), 0);
    assert_eq!(s.revoke_access("z", "bob", 0b11111).await.unwrap(), 0);
    assert_eq!(
        s.access_of("bob", 10).await.unwrap(),
        vec![("a".to_owned(), 0b01000)]
    );

    // Listings, and whether a sub-user has a token (t1, named "n", is one).
    assert!(s.has_sub_user("n").await.unwrap());
    assert!(!s.has_sub_user("bob").await.unwrap());
    let ids = |rows: Vec<TokenRow>| rows.into_iter().map(|t| t.token_id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_tokens("", 10).await.unwrap()), ["t1", "t2"]);
    assert_eq!(ids(s.list_tokens("t1", 10).await.unwrap()), ["t2"]);
    assert_eq!(ids(s.list_tokens("", 1).await.unwrap()), ["t1"]);
    assert!(s.revoke_token("t1", 30).await.unwrap());
    assert!(!s.has_sub_user("n").await.unwrap());
    let access = s.list_access("", 10).await.unwrap();
    let rows: Vec<_> = access
        .iter()
        .map(|a| (a.account_id.as_str(), a.sub_user.as_str(), a.permissions))
        .collect();
    assert_eq!(rows, [("a", "bob", 0b01000), ("a", "eve", 0b00001)]);
    assert_eq!(s.list_access("a", 1).await.unwrap().len(), 1);
    assert!(s.list_access("b", 10).await.unwrap().is_empty());
    for a in ["zed", "acme", "b"] {
        s.create_account(a, m("1"), T0).await.unwrap();
    }
    assert_eq!(s.list_accounts("", 10).await.unwrap(), ["acme", "b", "zed"]);
    assert_eq!(s.list_accounts("acme", 1).await.unwrap(), ["b"]);
}

async fn known_usage_reports_applied_ids(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("10"), T0).await.unwrap();
    s.create_account("other", m("10"), T0).await.unwrap();
    assert!(s.known_usage(&[]).await.unwrap().is_empty());
    assert!(s.known_usage(&ids(&["u1", "u2"])).await.unwrap().is_empty());
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("8"),
            usage: vec![
                usage("acme", "u1", 1, T0, "1", &[("balance", "1")]),
                usage("acme", "u2", 2, T0, "1", &[("balance", "1")]),
            ],
            cursors: vec![(SIDECAR.into(), 2)],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    s.commit(
        "other",
        1,
        ChangeSet {
            balance: m("9"),
            usage: vec![usage("other", "u3", 1, T0, "1", &[("balance", "1")])],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        s.known_usage(&ids(&["u1", "u3", "u9", "u1"]))
            .await
            .unwrap(),
        set(&["u1", "u3"])
    );
    let many: Vec<String> = (0..5_000).map(|i| format!("x{i}")).collect();
    assert!(s.known_usage(&many).await.unwrap().is_empty());
    let st = s.load("acme", SIDECAR).await.unwrap().unwrap();
    assert_eq!((st.version, st.balance, st.applied_seq), (2, m("8"), 2));
}

async fn load_many_and_commit_many(s: Arc<dyn LedgerStore>) {
    for a in ["a1", "a2", "a3"] {
        s.create_account(a, m("10"), T0).await.unwrap();
    }
    s.commit(
        "a2",
        1,
        ChangeSet {
            balance: m("9"),
            new_grants: vec![(grant("g2", "1", "1"), None)],
            cursors: vec![(SIDECAR.into(), 4)],
            leases: vec![lease(SIDECAR, "2", T0 + 5)],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();

    // load_many: the accounts that exist, each as `load` shows it.
    let mut states = s
        .load_many(&ids(&["a3", "nobody", "a2", "a1"]), SIDECAR)
        .await
        .unwrap();
    states.sort_by(|x, y| x.account_id.cmp(&y.account_id));
    let got: Vec<&str> = states.iter().map(|st| st.account_id.as_str()).collect();
    assert_eq!(got, ["a1", "a2", "a3"]);
    for st in &states {
        let one = s.load(&st.account_id, SIDECAR).await.unwrap().unwrap();
        assert_eq!(
            (
                st.version,
                st.balance,
                &st.grants,
                st.applied_seq,
                &st.leases
            ),
            (
                one.version,
                one.balance,
                &one.grants,
                one.applied_seq,
                &one.leases
            ),
            "{}",
            st.account_id
        );
        assert_eq!(st.once_skus, one.once_skus);
    }
    assert!(s.load_many(&[], SIDECAR).await.unwrap().is_empty());

    // commit_many: one result per entry, in order; a failing entry writes nothing of its
    // own and the others still commit.
    let ok_a1 = ChangeSet {
        balance: m("8"),
        usage: vec![usage("a1", "m-1", 1, T0, "2", &[("balance", "2")])],
        cursors: vec![(SIDECAR.into(), 1)],
        ..ChangeSet::default()
    };
    let stale_a2 = ChangeSet {
        balance: m("0"),
        usage: vec![usage("a2", "m-2", 5, T0, "9", &[("balance", "9")])],
        cursors: vec![(SIDECAR.into(), 5)],
        ..ChangeSet::default()
    };
    let ok_a3 = ChangeSet {
        balance: m("7.5"),
        usage: vec![
            usage("a3", "m-3", 1, T0 + 1, "1", &[("balance", "1")]),
            usage("a3", "m-4", 2, T0 + 2, "1.5", &[("balance", "1.5")]),
        ],
        grant_remaining: vec![],
        leases: vec![lease("sc-x", "1", T0)],
        cursors: vec![(SIDECAR.into(), 2)],
        ..ChangeSet::default()
    };
    let results = s
        .commit_many(vec![
            ("a3".into(), 1, ok_a3),
            ("a2".into(), 1, stale_a2),
            ("a1".into(), 1, ok_a1),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(StoreError::Conflict(a)) if a == "a2"),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert_eq!(vb(&s, "a1").await, (2, m("8")));
    assert_eq!(
        vb(&s, "a2").await,
        (2, m("9")),
        "the stale entry wrote nothing"
    );
    assert_eq!(vb(&s, "a3").await, (2, m("7.5")));
    assert_eq!(
        s.known_usage(&ids(&["m-1", "m-2", "m-3", "m-4"]))
            .await
            .unwrap(),
        set(&["m-1", "m-3", "m-4"])
    );
    assert_eq!(s.load("a2", SIDECAR).await.unwrap().unwrap().applied_seq, 4);
    let a3 = s.load("a3", SIDECAR).await.unwrap().unwrap();
    assert_eq!((a3.applied_seq, a3.leases.len()), (2, 1));
    assert_eq!(s.statement("a3", 10).await.unwrap().0.len(), 2);

    // A reused usage id fails its own entry only, as Duplicate of that id.
    let results = s
        .commit_many(vec![
            (
                "a1".into(),
                2,
                ChangeSet {
                    balance: m("1"),
                    usage: vec![
                        usage("a1", "m-5", 2, T0, "1", &[("balance", "1")]),
                        usage("a1", "m-3", 3, T0, "1", &[("balance", "1")]),
                    ],
                    cursors: vec![(SIDECAR.into(), 3)],
                    ..ChangeSet::default()
                },
            ),
            (
                "a2".into(),
                2,
                ChangeSet {
                    balance: m("8"),
                    usage: vec![usage("a2", "m-6", 5, T0, "1", &[("balance", "1")])],
                    cursors: vec![(SIDECAR.into(), 5)],
                    ..ChangeSet::default()
                },
            ),
        ])
        .await
        .unwrap();
    match &results[0] {
        Err(StoreError::Duplicate { what, id }) => {
            assert_eq!((*what, id.as_str()), ("usage", "m-3"))
        }
        other => panic!("expected Duplicate usage m-3, got {other:?}"),
    }
    assert!(results[1].is_ok(), "{:?}", results[1]);
    assert_eq!(
        vb(&s, "a1").await,
        (2, m("8")),
        "the duplicate entry wrote nothing"
    );
    assert_eq!(s.load("a1", SIDECAR).await.unwrap().unwrap().applied_seq, 1);
    assert_eq!(vb(&s, "a2").await, (3, m("8")));
    assert_eq!(
        s.known_usage(&ids(&["m-5", "m-6"])).await.unwrap(),
        set(&["m-6"])
    );
    assert!(s.commit_many(vec![]).await.unwrap().is_empty());

    // Two entries for one account at the same version: the first wins, the second conflicts.
    let twice = |balance: &str| ChangeSet {
        balance: m(balance),
        ..ChangeSet::default()
    };
    let results = s
        .commit_many(vec![
            ("a3".into(), 2, twice("1")),
            ("a3".into(), 2, twice("2")),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(StoreError::Conflict(_))),
        "{:?}",
        results[1]
    );
    assert_eq!(vb(&s, "a3").await, (3, m("1")));
}

/// The free tier's counts (set, not added, under the version check), a usage's free
/// requests, and deductions of every kind in the order taken: the free tier, a money
/// grant, a volume plan (its GB and the money they stand for), the balance.
async fn request_counts_free_requests_and_volume_deductions(s: Arc<dyn LedgerStore>) {
    s.create_account("acme", m("1"), T0).await.unwrap();
    s.create_account("other", m("1"), T0).await.unwrap();
    let mut get = usage(
        "acme",
        "g1",
        1,
        T0,
        "0.03",
        &[("free_tier", "0.01"), ("balance", "0.02")],
    );
    get.record.resource = Resource::RequestGet;
    get.record.quantity = 30_000;
    get.free_quantity = 10_000;
    // 3.5 GB at 0.5: 0.5 GB from a coupon, 2.5 GB from a plan, 0.5 GB from the balance.
    let mut dl = usage(
        "acme",
        "dl1",
        2,
        T0 + 1,
        "1.75",
        &[("c1", "0.25"), ("t1/1", "1.25"), ("balance", "0.25")],
    );
    dl.record.resource = Resource::Traffic;
    dl.deductions[1].gb = Some(d("2.5"));
    let dl_deductions = dl.deductions.clone();
    s.commit(
        "acme",
        1,
        ChangeSet {
            balance: m("0.48"),
            usage: vec![get, dl],
            request_counts: vec![
                (Resource::RequestGet, 202_611, 30_000),
                (Resource::RequestPut, 202_611, 7),
            ],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let st = s.load("acme", SIDECAR).await.unwrap().unwrap();
    assert_eq!(
        st.request_counts,
        vec![
            (Resource::RequestGet, 202_611, 30_000),
            (Resource::RequestPut, 202_611, 7)
        ]
    );
    assert!(
        s.load("other", SIDECAR)
            .await
            .unwrap()
            .unwrap()
            .request_counts
            .is_empty()
    );
    // A later commit sets the count (the ledger decided it under the version check) and
    // adds a month; the other row is left as it was.
    s.commit(
        "acme",
        2,
        ChangeSet {
            balance: m("0.48"),
            request_counts: vec![
                (Resource::RequestGet, 202_611, 30_500),
                (Resource::RequestGet, 202_612, 1),
            ],
            ..ChangeSet::default()
        },
    )
    .await
    .unwrap();
    let many = s.load_many(&ids(&["acme"]), SIDECAR).await.unwrap();
    assert_eq!(
        many[0].request_counts,
        vec![
            (Resource::RequestGet, 202_611, 30_500),
            (Resource::RequestGet, 202_612, 1),
            (Resource::RequestPut, 202_611, 7)
        ]
    );
    let (entries, _) = s.statement("acme", 10).await.unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].usage_id, "g1");
    assert_eq!(entries[0].free_quantity, 10_000);
    assert_eq!(
        entries[0].deductions,
        vec![
            Deduction::money(Source::FreeTier, m("0.01")),
            Deduction::money(Source::Balance, m("0.02"))
        ]
    );
    assert_eq!(entries[1].usage_id, "dl1");
    assert_eq!(entries[1].free_quantity, 0);
    assert_eq!(entries[1].deductions, dl_deductions);
    for e in &entries {
        let total: Money = e.deductions.iter().map(|d| d.amount).sum();
        assert_eq!(total, e.cost, "{}", e.usage_id);
    }
}

/// One test per store for each contract body: `sqlite::NAME` and `postgres::NAME`.
macro_rules! contract_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::with_sqlite_store(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::with_pg_store(super::$name).await;
                }
            )*
            #[tokio::test]
            async fn concurrent_connects_migrate_once() {
                super::pg_concurrent_connects_migrate_once().await;
            }
            #[tokio::test]
            async fn newer_schema_is_refused() {
                super::pg_newer_schema_is_refused().await;
            }
            #[tokio::test]
            async fn connect_error_names_target_not_password() {
                super::pg_connect_error_names_target_not_password().await;
            }
        }
    };
}

contract_tests!(
    create_and_load,
    commit_if_version,
    grants_purchases_and_topups,
    duplicate_ids_write_nothing,
    large_batches_keep_every_row,
    leases_upsert_and_load,
    recalls_follow_the_give_back_flag,
    load_views_sum_the_leases_and_keep_the_callers,
    cursor_only_moves_forward,
    statement_order_limit_and_deductions,
    known_usage_reports_applied_ids,
    load_many_and_commit_many,
    request_counts_free_requests_and_volume_deductions,
    tokens_and_access,
);

// ---- stores under test --------------------------------------------------------------------

async fn with_sqlite_store<F, Fut>(body: F)
where
    F: FnOnce(Arc<dyn LedgerStore>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("ledger.db")).expect("open sqlite store");
    body(Arc::new(store)).await;
}

/// The server URL from DATABASE_URL, or None (after saying so once) when it is unset.
/// Under CI a missing DATABASE_URL is a failure: the PostgreSQL store must be tested there.
fn pg_url() -> Option<String> {
    static SKIP_NOTE: std::sync::Once = std::sync::Once::new();
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
                panic!(
                    "DATABASE_URL is not set but CI is: the PostgreSQL ledger store tests \
                     must run in CI (set DATABASE_URL=postgres://user@host:5432/postgres)"
                );
            }
            SKIP_NOTE.call_once(|| {
                // Straight to stderr, past the test harness's capture: one line per run.
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping PostgreSQL store tests: set \
                     DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres to run them"
                );
            });
            None
        }
    }
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("DATABASE_URL has a scheme");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}://{authority}/{db}{query}")
}

/// A database of its own for one test, created through DATABASE_URL.
struct TestDb {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDb {
    async fn create(admin_url: &str) -> TestDb {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u64(N.fetch_add(1, Ordering::Relaxed));
        let name = format!("quotad_test_{:016x}", h.finish());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        TestDb {
            url: with_database(admin_url, &name),
            admin_url: admin_url.to_owned(),
            name,
        }
    }

    async fn drop_db(self) {
        let mut admin = PgConnection::connect(&self.admin_url)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::raw_sql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await
        .expect("drop test database");
        let _ = admin.close().await;
    }
}

/// Runs `body` on a PgStore over a fresh database, drops the database whatever happens,
/// then passes on a panic of the body.
async fn with_pg_store<F, Fut>(body: F)
where
    F: FnOnce(Arc<dyn LedgerStore>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    with_pg_store_pool(4, body).await;
}

async fn with_pg_store_pool<F, Fut>(pool_max: u32, body: F)
where
    F: FnOnce(Arc<dyn LedgerStore>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = pg_url() else { return };
    let db = TestDb::create(&url).await;
    let store = PgStore::connect(&db.url, pool_max).await;
    let outcome = match store {
        Ok(store) => {
            let store = Arc::new(store);
            let r = tokio::spawn(body(store.clone())).await;
            store.close().await;
            r.map_err(|e| e.into_panic())
        }
        Err(e) => Err(Box::new(format!("PgStore::connect: {e}")) as Box<dyn std::any::Any + Send>),
    };
    db.drop_db().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

// ---- PostgreSQL only ----------------------------------------------------------------------

async fn pg_concurrent_connects_migrate_once() {
    let Some(url) = pg_url() else { return };
    let db = TestDb::create(&url).await;
    let racers: Vec<_> = (0..6)
        .map(|_| {
            let url = db.url.clone();
            tokio::spawn(async move { PgStore::connect(&url, 2).await })
        })
        .collect();
    let mut stores = Vec::new();
    let mut failures = Vec::new();
    for r in racers {
        match r.await.expect("connect task") {
            Ok(s) => stores.push(s),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let versions = migration_versions(&db.url).await;
    let url = db.url.clone();
    let check = async move {
        assert!(failures.is_empty(), "racing connects failed: {failures:?}");
        let all: Vec<i32> = (1..=i32::try_from(pg::SCHEMA_VERSION).unwrap()).collect();
        assert_eq!(versions, all, "each migration recorded once");
        // Every store works, and a later start finds nothing to do.
        for (i, s) in stores.iter().enumerate() {
            assert!(
                s.create_account(&format!("a{i}"), m("1"), T0)
                    .await
                    .unwrap()
            );
        }
        let again = PgStore::connect(&url, 1).await.expect("reconnect");
        assert!(again.load("a0", SIDECAR).await.unwrap().is_some());
        again.close().await;
        for s in &stores {
            s.close().await;
        }
    };
    let r = tokio::spawn(check).await;
    db.drop_db().await;
    if let Err(e) = r {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn pg_newer_schema_is_refused() {
    let Some(url) = pg_url() else { return };
    let db = TestDb::create(&url).await;
    let first = PgStore::connect(&db.url, 1).await.map(drop);
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let marked =
        sqlx::query("INSERT INTO quotad_migrations (version, applied_at_ms) VALUES (99, 0)")
            .execute(&mut conn)
            .await;
    let _ = conn.close().await;
    let second = PgStore::connect(&db.url, 1).await;
    db.drop_db().await;
    first.expect("first start migrates");
    marked.expect("mark a newer schema");
    match second {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("99"), "{msg}"),
        Err(e) => panic!("expected Corrupt, got {e:?}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

/// The versions recorded in `quotad_migrations` (empty if it cannot be read).
async fn migration_versions(url: &str) -> Vec<i32> {
    let Ok(mut conn) = PgConnection::connect(url).await else {
        return Vec::new();
    };
    let versions = sqlx::query_scalar("SELECT version FROM quotad_migrations ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    let _ = conn.close().await;
    versions
}

async fn pg_connect_error_names_target_not_password() {
    // Nothing listens on port 1: needs no server, so it runs without DATABASE_URL too.
    let err = PgStore::connect(
        "postgres://quotad:s3cret-pw@127.0.0.1:1/ledger_db?password=other-s3cret",
        2,
    )
    .await
    .err()
    .expect("nothing listens on port 1")
    .to_string();
    assert!(err.contains("127.0.0.1"), "names the host: {err}");
    assert!(err.contains("ledger_db"), "names the database: {err}");
    assert!(!err.contains("s3cret"), "leaks the password: {err}");
    let err = PgStore::connect("postgres://quotad:s3cret-pw@[::1", 2)
        .await
        .err()
        .expect("malformed URL")
        .to_string();
    assert!(!err.contains("s3cret"), "leaks the password: {err}");
}

// ---- ingest rate --------------------------------------------------------------------------

const INGEST_ACCOUNTS: usize = 100;
const INGEST_BATCH: usize = 5_000;
const INGEST_BATCHES: usize = 20;

/// Measures how many usage records per second `commit` ingests, in batches of 5,000
/// records across 100 accounts, three ways, and prints them (no assertion on speed):
/// - each batch is one account's commit of 5,000 records, accounts in turn;
/// - each batch is split by account, 100 commits of 50 records, run 16 at a time;
/// - each batch is split by account into one `commit_many` of 100 entries, as the
///   ledger's Sync path does.
///
/// Every record carries one deduction, as most do.
async fn ingest_rate(s: Arc<dyn LedgerStore>, store_name: &'static str) {
    for a in 0..INGEST_ACCOUNTS {
        s.create_account(&format!("acct-{a:03}"), m("1000000"), T0)
            .await
            .unwrap();
    }
    let mut versions = vec![1i64; INGEST_ACCOUNTS];
    let mut next_id = 0u64;
    let batch = |account: usize, n: usize, next_id: &mut u64| -> Vec<AppliedUsage> {
        (0..n)
            .map(|_| {
                *next_id += 1;
                let i = *next_id;
                usage(
                    &format!("acct-{account:03}"),
                    &format!("r-{i:012}"),
                    i,
                    T0 + i as i64,
                    "0.0006",
                    &[("balance", "0.0006")],
                )
            })
            .collect()
    };

    // Whole batches on one account each.
    let batches: Vec<Vec<AppliedUsage>> = (0..INGEST_BATCHES)
        .map(|b| batch(b % INGEST_ACCOUNTS, INGEST_BATCH, &mut next_id))
        .collect();
    let start = Instant::now();
    for (b, usage) in batches.into_iter().enumerate() {
        let a = b % INGEST_ACCOUNTS;
        s.commit(
            &format!("acct-{a:03}"),
            versions[a],
            ChangeSet {
                balance: m("999"),
                cursors: vec![(SIDECAR.into(), next_id)],
                usage,
                ..ChangeSet::default()
            },
        )
        .await
        .unwrap();
        versions[a] += 1;
    }
    let whole = (INGEST_BATCH * INGEST_BATCHES) as f64 / start.elapsed().as_secs_f64();

    // Batches split over the accounts, 16 commits in flight.
    let per_account = INGEST_BATCH / INGEST_ACCOUNTS;
    let batches: Vec<Vec<(usize, Vec<AppliedUsage>)>> = (0..INGEST_BATCHES)
        .map(|_| {
            (0..INGEST_ACCOUNTS)
                .map(|a| (a, batch(a, per_account, &mut next_id)))
                .collect()
        })
        .collect();
    let start = Instant::now();
    for commits in batches {
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::with_capacity(commits.len());
        for (a, usage) in commits {
            let s = s.clone();
            let version = versions[a];
            versions[a] += 1;
            let permit = sem.clone().acquire_owned().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                s.commit(
                    &format!("acct-{a:03}"),
                    version,
                    ChangeSet {
                        balance: m("999"),
                        cursors: vec![(SIDECAR.into(), 1)],
                        usage,
                        ..ChangeSet::default()
                    },
                )
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    let split = (INGEST_BATCH * INGEST_BATCHES) as f64 / start.elapsed().as_secs_f64();

    // Batches split over the accounts, one commit_many per batch (the ledger's Sync path).
    let batches: Vec<Vec<(String, i64, ChangeSet)>> = (0..INGEST_BATCHES)
        .map(|_| {
            (0..INGEST_ACCOUNTS)
                .map(|a| {
                    let version = versions[a];
                    versions[a] += 1;
                    let usage = batch(a, per_account, &mut next_id);
                    let change = ChangeSet {
                        balance: m("999"),
                        cursors: vec![(SIDECAR.into(), next_id)],
                        usage,
                        ..ChangeSet::default()
                    };
                    (format!("acct-{a:03}"), version, change)
                })
                .collect()
        })
        .collect();
    let start = Instant::now();
    for commits in batches {
        let results = s.commit_many(commits).await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }
    let many = (INGEST_BATCH * INGEST_BATCHES) as f64 / start.elapsed().as_secs_f64();

    let (entries, _) = s.statement("acct-000", 10).await.unwrap();
    assert_eq!(entries.len(), 10);
    let _ = writeln!(
        std::io::stderr(),
        "ingest {store_name}, usage records/s in {INGEST_BATCH}-record batches: {whole:.0} \
         as one account's commit; {split:.0} split over {INGEST_ACCOUNTS} accounts \
         ({per_account} per commit, 16 commits in flight); {many:.0} split over \
         {INGEST_ACCOUNTS} accounts in one commit_many"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_rate_sqlite() {
    with_sqlite_store(|s| ingest_rate(s, "sqlite")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_rate_postgres() {
    with_pg_store_pool(DEFAULT_PG_POOL_MAX, |s| ingest_rate(s, "postgres")).await;
}
