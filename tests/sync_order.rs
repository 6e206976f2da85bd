//! Answers that must not depend on when a sidecar's usage reaches the ledger (G8), with
//! that moment chosen by the test: a sidecar engine over the real ledger (SQLite) through
//! a gate that holds back the usage of the accounts it is told to, so each order of
//! "usage applied" and "admin change" is forced instead of hoped for. No sync loop runs;
//! usage moves only when a test pushes it.

// Test helpers outside #[test] functions fail loudly too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::*;
use quotad::billing::{AccountStatus, Catalog, Resource};
use quotad::clock::ManualClock;
use quotad::engine::{Engine, EngineConfig, LeasingConfig, ReserveRequest};
use quotad::grpc::admin::AdminService;
use quotad::journal::{DEFAULT_JOURNAL_BATCH_MAX, DEFAULT_JOURNAL_QUEUE_MAX, Journal};
use quotad::ledger::sqlite::SqliteStore;
use quotad::ledger::{
    EMBEDDED_SIDECAR_ID, LeaseConfig, Ledger, LedgerApi, LedgerError, SyncRequest, SyncResponse,
};
use quotad::pb;
use tonic::Code;

/// The sidecar's way to the ledger, with a gate on usage.
struct Gate {
    ledger: Arc<Ledger>,
    /// Accounts whose usage is held back: a sync carrying any of it fails as unreachable.
    held: Mutex<HashSet<String>>,
    /// The accounts whose usage each sync that got through carried.
    pushed: Mutex<Vec<BTreeSet<String>>>,
}

impl Gate {
    fn hold(&self, account: &str, held: bool) {
        let mut h = self.held.lock().unwrap();
        if held {
            h.insert(account.to_owned());
        } else {
            h.remove(account);
        }
    }
}

#[async_trait]
impl LedgerApi for Gate {
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        let accounts: BTreeSet<String> = req.usage.iter().map(|u| u.account_id.clone()).collect();
        if accounts
            .iter()
            .any(|a| self.held.lock().unwrap().contains(a))
        {
            return Err(LedgerError::Unavailable(
                "usage held back by the test".into(),
            ));
        }
        if !accounts.is_empty() {
            self.pushed.lock().unwrap().push(accounts);
        }
        self.ledger.sync_as_ledger(req).await
    }
}

/// An embedded sidecar (engine, journal) and its ledger, without a sync loop.
struct Sidecar {
    engine: Arc<Engine>,
    ledger: Arc<Ledger>,
    gate: Arc<Gate>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    async fn start() -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0_MS);
        let catalog = Arc::new(Catalog::default_catalog().unwrap());
        let store = Arc::new(SqliteStore::open(&dir.path().join("ledger.db")).unwrap());
        let lease = LeaseConfig {
            ttl_ms: 60 * 60 * 1000,
            hold_grace_ms: quotad::engine::DEFAULT_HOLD_TTL_MAX_MS,
            fleet: false,
        };
        let ledger = Arc::new(Ledger::new(store, catalog.clone(), clock.clone(), lease));
        let gate = Arc::new(Gate {
            ledger: ledger.clone(),
            held: Mutex::new(HashSet::new()),
            pushed: Mutex::new(Vec::new()),
        });
        let (journal, recovered) = Journal::open(
            &dir.path().join("journal.log"),
            DEFAULT_JOURNAL_QUEUE_MAX,
            DEFAULT_JOURNAL_BATCH_MAX,
        )
        .unwrap();
        let cfg = EngineConfig {
            leasing: LeasingConfig {
                lease_whole_account: true,
                ..LeasingConfig::default()
            },
            ..EngineConfig::default()
        };
        let engine = Engine::start(
            cfg,
            catalog,
            clock.clone(),
            Arc::new(journal),
            recovered,
            gate.clone(),
            EMBEDDED_SIDECAR_ID.to_owned(),
        )
        .await
        .unwrap();
        Sidecar {
            engine,
            ledger,
            gate,
            clock,
            _dir: dir,
        }
    }

    /// Reserves and commits `ms` of A10 time on `account` (the usage stays in the journal).
    async fn charge(&self, account: &str, id: &str, ms: u64) -> String {
        let r = self
            .engine
            .reserve(ReserveRequest {
                account_id: account.into(),
                reservation_id: id.into(),
                resource: Resource::GpuShared,
                sku: A10.into(),
                quantity: 1_000,
                ttl_ms: 0,
            })
            .await
            .unwrap();
        assert!(r.admitted, "{r:?}");
        self.engine
            .commit(id, ms)
            .await
            .unwrap()
            .charged
            .to_string()
    }

    /// The Admin service over this sidecar, on real gRPC.
    async fn admin(&self) -> Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // No auth layer here: every call is the operator's, as with auth_disabled.
        let svc = pb::admin_server::AdminServer::with_interceptor(
            AdminService::new(self.ledger.clone(), Some(self.engine.clone())),
            |mut req: tonic::Request<()>| {
                req.extensions_mut()
                    .insert(std::sync::Arc::new(quotad::auth::Caller::Unchecked));
                Ok(req)
            },
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Client::connect(addr, "").await
    }
}

/// GetStatement pushes the account's own usage and no other's: a quiet account's statement
/// is complete and answered while another account's usage cannot reach the ledger (issue 12,
/// item 3: it waited for every account's backlog).
#[tokio::test]
async fn a_statement_pushes_only_its_accounts_usage() {
    let s = Sidecar::start().await;
    for a in ["busy", "quiet"] {
        s.ledger.create_account(a, money_of("10")).await.unwrap();
    }
    assert_eq!(s.charge("busy", "b1", 10_000).await, "0.006");
    assert_eq!(s.charge("quiet", "q1", 20_000).await, "0.012");
    assert_eq!(s.charge("busy", "b2", 10_000).await, "0.006");
    s.gate.hold("busy", true);
    let mut admin = s.admin().await;

    let st = admin.get_statement("quiet").await.unwrap();
    let got: Vec<(String, String)> = st
        .entries
        .iter()
        .map(|e| (e.usage_id.clone(), amount(&e.cost)))
        .collect();
    assert_eq!(got, vec![("q1".to_owned(), "0.012".to_owned())]);
    assert_eq!(
        *s.gate.pushed.lock().unwrap(),
        vec![BTreeSet::from(["quiet".to_owned()])]
    );
    // The busy account's own statement cannot be complete: it says so.
    let r = admin.get_statement("busy").await;
    assert_status("busy's statement", r, Code::Unavailable, &["held back"]);
    s.gate.hold("busy", false);
    assert_eq!(admin.get_statement("busy").await.unwrap().entries.len(), 2);
    // Everything reached the ledger once; the journal still holds nothing twice.
    s.engine.flush().await.unwrap();
    assert_eq!(s.engine.journal().outbox_len(), 0);
    assert_eq!(admin.get_statement("quiet").await.unwrap().entries.len(), 1);
    assert_eq!(admin.get_statement("busy").await.unwrap().entries.len(), 2);
}

fn money_of(s: &str) -> quotad::billing::Money {
    quotad::billing::Money::parse(s).unwrap()
}

/// What an account looks like: in the sidecar's live view (status, balance, the plan's
/// remaining) and at the ledger (the same, and who paid each charge).
#[derive(Debug, PartialEq, Eq)]
struct Bill {
    live: (AccountStatus, String, String),
    ledger: (String, String),
    paid_by: Vec<(String, String)>,
}

async fn bill(s: &Sidecar, account: &str, plan: &str) -> Bill {
    let remaining = |grants: &[quotad::billing::Grant]| {
        grants
            .iter()
            .find(|g| g.grant_id == plan)
            .map(|g| g.remaining.normalize().to_string())
            .unwrap_or_default()
    };
    let v = s.engine.balance(account).await.unwrap();
    let l = s.ledger.balance_view(account).await.unwrap();
    let (entries, _) = s.ledger.statement(account).await.unwrap();
    Bill {
        live: (v.status, v.balance.to_string(), remaining(&v.grants)),
        ledger: (l.balance.to_string(), remaining(&l.grants)),
        paid_by: entries
            .iter()
            .flat_map(|e| {
                e.deductions
                    .iter()
                    .map(|d| (d.source.label().to_owned(), d.amount.to_string()))
            })
            .collect(),
    }
}

/// Issue 12, item 1: balance 1, a Commit charged 3 (from the balance: OVERDUE at -2), then
/// a plan bought 30 days ago is imported. The import pays for usage from its recording on
/// only, so the charge stays the balance's whether the usage reached the ledger before
/// the import (`usage_first`) or after it, in the live view as at the ledger. Returns the
/// bill before the usage was pushed (the second time) and after.
async fn import_after_a_charge(usage_first: bool) -> (Bill, Bill) {
    let s = Sidecar::start().await;
    s.ledger
        .create_account("acme", money_of("1"))
        .await
        .unwrap();
    // 5,000 s of A10 at 0.0006/s.
    assert_eq!(s.charge("acme", "r1", 5_000_000).await, "3");
    s.clock.advance_ms(1_000);
    if usage_first {
        s.engine.flush_account("acme").await.unwrap();
    } else {
        s.gate.hold("acme", true);
    }
    let imported_at_ms = T0_MS - 30 * DAY_MS;
    let (grants, _) = s
        .ledger
        .purchase("acme", "plan.compute.500", "imp", imported_at_ms)
        .await
        .unwrap();
    assert_eq!(grants[0].starts_at_ms, imported_at_ms);
    // What the Admin service does after a purchase: the sidecar takes the new snapshot.
    s.engine.refresh_account("acme").await.unwrap();
    let before_sync = bill(&s, "acme", "imp/1").await;
    s.gate.hold("acme", false);
    s.engine.flush_account("acme").await.unwrap();
    assert_eq!(s.engine.journal().outbox_len(), 0);
    (before_sync, bill(&s, "acme", "imp/1").await)
}

#[tokio::test]
async fn an_import_does_not_reach_back_whatever_the_sync_order() {
    let (usage_first, usage_first_after) = import_after_a_charge(true).await;
    let (import_first, import_first_after) = import_after_a_charge(false).await;
    let want = Bill {
        live: (AccountStatus::Overdue, "-2".into(), "500".into()),
        ledger: ("-2".into(), "500".into()),
        paid_by: vec![("balance".into(), "3".into())],
    };
    assert_eq!(usage_first, want, "usage applied before the import");
    assert_eq!(usage_first_after, want, "usage applied before the import");
    assert_eq!(import_first_after, want, "import recorded before the usage");
    // Before its usage reached the ledger, the live view already said the same.
    assert_eq!(
        import_first.live, want.live,
        "import recorded before the usage"
    );
}

/// The rule is about when the grant was recorded, not about the import as such: usage
/// acknowledged after the import is paid by it, in either order of sync.
#[tokio::test]
async fn an_import_pays_for_usage_after_it() {
    for usage_first in [true, false] {
        let s = Sidecar::start().await;
        s.ledger
            .create_account("acme", money_of("1"))
            .await
            .unwrap();
        s.ledger
            .purchase("acme", "plan.compute.500", "imp", T0_MS - 30 * DAY_MS)
            .await
            .unwrap();
        s.clock.advance_ms(1_000);
        s.gate.hold("acme", !usage_first);
        assert_eq!(s.charge("acme", "r1", 5_000_000).await, "3");
        if usage_first {
            s.engine.flush_account("acme").await.unwrap();
        }
        s.gate.hold("acme", false);
        s.engine.flush_account("acme").await.unwrap();
        let b = bill(&s, "acme", "imp/1").await;
        assert_eq!(
            b,
            Bill {
                live: (AccountStatus::Active, "1".into(), "497".into()),
                ledger: ("1".into(), "497".into()),
                paid_by: vec![("imp/1".into(), "3".into())],
            },
            "usage first: {usage_first}"
        );
    }
}
