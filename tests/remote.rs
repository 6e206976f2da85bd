//! Sidecars against a separate ledger, in process over real gRPC (the ledger on SQLite
//! here; tests/cluster.rs runs the real processes on PostgreSQL): leases bound what the
//! fleet admits, an unreachable ledger is fail-closed past the lease unless a fail-open
//! budget is configured, and admin changes reach every sidecar within one sync.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::sync::Arc;

use common::*;
use quotad::billing::Money;
use quotad::clock::ManualClock;
use quotad::ledger::lease::LeaseConfig;
use quotad::pb;
use quotad::server::{self, LedgerServeConfig, Running, RunningLedger, ServeConfig};
use rust_decimal::Decimal;
use tonic::Code;

const LEASE_TTL_MS: i64 = 2_000;

struct Fleet {
    clock: Arc<ManualClock>,
    dir: tempfile::TempDir,
    ledger: Option<RunningLedger>,
    ledger_addr: std::net::SocketAddr,
    /// The ledger's Admin service.
    admin: Client,
    sidecars: Vec<(Running, Client)>,
}

fn ledger_config(dir: &std::path::Path, listen: std::net::SocketAddr) -> LedgerServeConfig {
    let mut cfg = LedgerServeConfig::new(
        listen,
        format!("sqlite:{}", dir.join("ledger.db").display()),
    );
    cfg.lease = LeaseConfig {
        ttl_ms: LEASE_TTL_MS,
        hold_grace_ms: 10_000,
        fleet: true,
    };
    cfg.operator_token_file = Some(dir.join("ledger-operator.token"));
    cfg
}

impl Fleet {
    async fn start(n: usize, tweak: impl Fn(&mut ServeConfig)) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0_MS);
        let ledger = server::start_ledger(
            ledger_config(dir.path(), "127.0.0.1:0".parse().unwrap()),
            clock.clone(),
        )
        .await
        .unwrap();
        let ledger_addr = ledger.addr;
        // The ledger's operator token serves for everything: Admin at the ledger, the
        // sidecars' Sync, and the Quota calls the sidecars check with the ledger.
        let token =
            quotad::auth::read_token_file(&dir.path().join("ledger-operator.token")).unwrap();
        let admin = Client::connect(ledger_addr, &token).await;
        let mut sidecars = Vec::new();
        for i in 0..n {
            let mut cfg = config(&dir.path().join(format!("sidecar-{i}")));
            cfg.ledger_url = Some(format!("http://{ledger_addr}"));
            cfg.engine.leasing.lease_want_min = Money::parse("0.1").unwrap();
            // The tests drive syncs themselves.
            cfg.sync_interval_ms = 3_600_000;
            cfg.ledger_token = Some(token.clone());
            tweak(&mut cfg);
            let running = server::start(cfg, clock.clone()).await.unwrap();
            let client = Client::connect(running.addr, &token).await;
            sidecars.push((running, client));
        }
        Fleet {
            clock,
            dir,
            ledger: Some(ledger),
            ledger_addr,
            admin,
            sidecars,
        }
    }

    async fn sync_all(&self) {
        for (r, _) in &self.sidecars {
            let _ = r.engine().flush().await;
            let _ = r.engine().sync_once(1_000).await;
        }
    }
}

fn dec(m: &Option<pb::Money>) -> Decimal {
    amount(m).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_bound_what_the_fleet_admits() {
    let mut f = Fleet::start(3, |_| {}).await;
    f.admin.create_account("acme", "1").await.unwrap();
    // 0.06 a reserve (100 s of a10); the account pays for 16 of them.
    let mut admitted = Decimal::ZERO;
    let mut denials = Vec::new();
    for round in 0..12 {
        for i in 0..3 {
            let id = format!("r{round}-{i}");
            let sidecar = &mut f.sidecars[i].1;
            let r = sidecar
                .reserve("acme", &id, GPU_SHARED, A10, 100_000, 0)
                .await
                .unwrap();
            if r.admitted {
                admitted += dec(&r.held);
            } else {
                denials.push(r.reason());
            }
        }
    }
    assert!(
        admitted <= Decimal::ONE,
        "the fleet admitted {admitted} on an account of 1"
    );
    assert!(
        admitted >= Decimal::new(6, 1),
        "leases must not starve the fleet: {admitted}"
    );
    assert!(
        denials
            .iter()
            .all(|r| *r == pb::DenyReason::InsufficientFunds),
        "{denials:?}"
    );
    // Nothing committed yet, so the ledger still has the whole balance.
    let st = f.admin.get_statement("acme").await.unwrap();
    assert!(st.entries.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reaches_the_ledger_once_and_admin_changes_reach_sidecars() {
    let mut f = Fleet::start(2, |_| {}).await;
    f.admin.create_account("acme", "1").await.unwrap();
    assert!(
        f.sidecars[0]
            .1
            .reserve("acme", "a", GPU_SHARED, A10, 100_000, 0)
            .await
            .unwrap()
            .admitted
    );
    assert!(
        f.sidecars[1]
            .1
            .reserve("acme", "b", GPU_SHARED, A10, 100_000, 0)
            .await
            .unwrap()
            .admitted
    );
    for (i, id) in [(0, "a"), (1, "b")] {
        let c = f.sidecars[i].1.commit(id, 50_000).await.unwrap();
        assert_eq!(amount(&c.charged), "0.03");
    }
    f.sync_all().await;
    f.sync_all().await;
    let st = f.admin.get_statement("acme").await.unwrap();
    let ids: Vec<&str> = st.entries.iter().map(|e| e.usage_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    // A top-up at the ledger reaches both sidecars with the next sync.
    f.admin.top_up("acme", "5", "t1").await.unwrap();
    f.sync_all().await;
    for i in 0..2 {
        let b = f.sidecars[i].1.get_balance("acme").await.unwrap();
        assert_eq!(amount(&b.balance), "5.94", "sidecar {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_down_is_fail_closed_past_the_lease_and_recovers() {
    let mut f = Fleet::start(1, |_| {}).await;
    f.admin.create_account("acme", "10").await.unwrap();
    assert!(
        f.sidecars[0]
            .1
            .reserve("acme", "r1", GPU_SHARED, A10, 100_000, 0)
            .await
            .unwrap()
            .admitted
    );
    f.sidecars[0].1.commit("r1", 100_000).await.unwrap();
    // The ledger goes away. The lease still admits until it expires.
    f.ledger.take().unwrap().shutdown().await.unwrap();
    let r = f.sidecars[0]
        .1
        .reserve("acme", "r2", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(r.admitted, "within the lease: {r:?}");
    f.clock.advance_ms(LEASE_TTL_MS + 1);
    let r = f.sidecars[0]
        .1
        .reserve("acme", "r3", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(!r.admitted);
    assert_eq!(r.reason(), pb::DenyReason::LedgerUnavailable);
    // Acknowledged usage waits in the journal meanwhile.
    assert!(f.sidecars[0].0.engine().sync_once(1_000).await.is_err());
    assert!(!f.sidecars[0].0.engine().ledger_reachable());

    // The ledger comes back on the same address and database: usage is reconciled and
    // leases renewed without anyone doing anything but the sync loop.
    let ledger = server::start_ledger(ledger_config(f.dir.path(), f.ledger_addr), f.clock.clone())
        .await
        .unwrap();
    f.ledger = Some(ledger);
    f.sidecars[0].0.engine().sync_once(1_000).await.unwrap();
    assert!(f.sidecars[0].0.engine().ledger_reachable());
    let r = f.sidecars[0]
        .1
        .reserve("acme", "r4", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
    let st = f.admin.get_statement("acme").await.unwrap();
    assert_eq!(st.entries.len(), 1);
    assert_eq!(amount(&st.entries[0].cost), "0.06");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_budget_is_spent_and_reported() {
    let mut f = Fleet::start(1, |c| {
        c.engine
            .fail_open_budgets
            .insert("acme".into(), Money::parse("0.1").unwrap());
    })
    .await;
    f.admin.create_account("acme", "10").await.unwrap();
    assert!(
        f.sidecars[0]
            .1
            .reserve("acme", "warm", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    f.ledger.take().unwrap().shutdown().await.unwrap();
    f.clock.advance_ms(LEASE_TTL_MS + 1);
    // 0.06 each: one fits the 0.1 budget, the second does not.
    let r = f.sidecars[0]
        .1
        .reserve("acme", "fo1", GPU_SHARED, A10, 100_000, 0)
        .await
        .unwrap();
    assert!(r.admitted && r.fail_open, "{r:?}");
    let r = f.sidecars[0]
        .1
        .reserve("acme", "fo2", GPU_SHARED, A10, 100_000, 0)
        .await
        .unwrap();
    assert!(!r.admitted);
    assert_eq!(r.reason(), pb::DenyReason::LedgerUnavailable);
}

/// The month's free requests are counted at the ledger: two sidecars that each let 15,000,000
/// GET through as free (neither had seen the other's) are reconciled there, where the
/// second batch finds only 5,000,000 left and the rest is charged. Storage hours reach the
/// ledger over the Ledger service with their derived ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_counts_free_requests_across_sidecars_and_takes_storage_hours() {
    let mut f = Fleet::start(2, |_| {}).await;
    f.admin.create_account("acme", "1").await.unwrap();
    // Both hold their batch before either commits (a commit is pushed to the ledger at
    // once), so each sidecar counts the other's as not there.
    for (i, id) in [(0, "g-a"), (1, "g-b")] {
        let get = pb::Resource::RequestGet;
        let r = f.sidecars[i]
            .1
            .reserve("acme", id, get, "request.get", 15_000_000, 0)
            .await
            .unwrap();
        assert!(r.admitted, "{r:?}");
        assert_eq!(amount(&r.held), "0");
    }
    for (i, id) in [(0, "g-a"), (1, "g-b")] {
        f.sidecars[i].1.commit(id, 15_000_000).await.unwrap();
    }
    f.sidecars[0]
        .1
        .report_storage("acme", 720_000_000_000, 0)
        .await
        .unwrap();
    f.clock.advance_ms(3_600_000);
    // 720 GB for an hour: 720 GB-hours x 0.12 / 720 = 0.12.
    f.sidecars[0].1.get_balance("acme").await.unwrap();
    f.sync_all().await;
    let st = f.admin.get_statement("acme").await.unwrap();
    let got: Vec<(String, i64, String)> = st
        .entries
        .iter()
        .map(|e| (e.usage_id.clone(), e.free_quantity, amount(&e.cost)))
        .collect();
    // 20,000,000 free a month: g-a takes 15,000,000, g-b the other 5,000,000 and pays for
    // 10,000,000 (10,000,000 x 0.01 / 10,000 = 10), whatever the sidecars assumed.
    assert_eq!(
        got,
        vec![
            ("g-a".to_owned(), 15_000_000, "15".to_owned()),
            ("g-b".to_owned(), 5_000_000, "15".to_owned()),
            (format!("storage/acme/{T0_MS}"), 0, "0.12".to_owned()),
        ]
    );
    // The free requests are a deduction of their own, so each entry sums to its cost.
    let paid: Vec<Vec<(String, String)>> = st.entries.iter().map(deductions).collect();
    assert_eq!(paid[0], vec![("free_tier".to_owned(), "15".to_owned())]);
    assert_eq!(
        paid[1],
        vec![
            ("free_tier".to_owned(), "5".to_owned()),
            ("balance".to_owned(), "10".to_owned())
        ]
    );
    assert_eq!(paid[2], vec![("balance".to_owned(), "0.12".to_owned())]);
    // The sidecars take the ledger's word: 1 - 10 - 0.12 = -9.12, overdue.
    f.sidecars[1]
        .0
        .engine()
        .refresh_account("acme")
        .await
        .unwrap();
    let b = f.sidecars[1].1.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "-9.12");
    assert_eq!(b.status(), pb::balance::AccountStatus::Overdue);
}

/// Each server kind says where a call it does not serve goes (UNIMPLEMENTED); the catalog
/// is on both for any caller; the ledger answers GetBalance and GetStatement to the
/// operator and the account's owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_the_wrong_server_kind_says_which_serves_it() {
    let mut f = Fleet::start(1, |_| {}).await;
    f.admin.create_account("acme", "5").await.unwrap();
    let owner = f
        .admin
        .create_token(pb::principal::Kind::Owner, "acme", "")
        .await
        .unwrap()
        .token;
    let sidecar_addr = f.sidecars[0].0.addr;
    let ledger_url = format!("http://{}", f.ledger_addr);

    // Admin writes on the sidecar: the ledger serves them.
    let sidecar = &mut f.sidecars[0].1;
    assert_status(
        "TopUp on a sidecar",
        sidecar.top_up("acme", "1", "t1").await,
        Code::Unimplemented,
        &["Admin/TopUp", "ledger", &ledger_url],
    );
    assert_status(
        "GetStatement on a sidecar",
        sidecar.get_statement("acme").await,
        Code::Unimplemented,
        &["Admin/GetStatement", &ledger_url],
    );
    // The catalog, on the sidecar and the ledger, for the owner too.
    let mut owner_at_sidecar = Client::connect(sidecar_addr, &owner).await;
    let mut owner_at_ledger = Client::connect(f.ledger_addr, &owner).await;
    for c in [&mut owner_at_sidecar, &mut owner_at_ledger] {
        let cat = c.get_catalog().await.unwrap();
        assert!(cat.skus.iter().any(|s| s.id == A10), "{cat:?}");
    }
    // Quota work on the ledger: the sidecars serve it.
    assert_status(
        "Reserve on the ledger",
        f.admin
            .reserve("acme", "r1", GPU_SHARED, A10, 1_000, 0)
            .await,
        Code::Unimplemented,
        &["Quota/Reserve", "sidecars"],
    );
    // The ledger's balance and statement, to the operator and the owner.
    let b = f.admin.get_balance("acme").await.unwrap();
    assert_eq!(dec(&b.balance), Decimal::from(5));
    let b = owner_at_ledger.get_balance("acme").await.unwrap();
    assert_eq!(dec(&b.balance), Decimal::from(5));
    owner_at_ledger.get_statement("acme").await.unwrap();
    f.admin.create_account("globex", "1").await.unwrap();
    assert_status(
        "owner reads another account at the ledger",
        owner_at_ledger.get_balance("globex").await,
        Code::PermissionDenied,
        &["globex"],
    );
    assert_status(
        "owner reads another account's statement",
        owner_at_ledger.get_statement("globex").await,
        Code::PermissionDenied,
        &["globex"],
    );
    // And the owner works through the sidecar with the same token.
    assert!(
        owner_at_sidecar
            .reserve("acme", "r1", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
}
