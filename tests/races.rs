//! Billing under races (R5), black-box over real gRPC: concurrent purchases of a plan that
//! does not stack sell it once.
//!
//! The purchase race runs on a clock that moves with every reading, as a real one does
//! while calls interleave: a frozen manual clock would hide a decision taken at a stale time.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use common::*;
use quotad::clock::Clock;
use quotad::pb;
use quotad::server::{self, Running};
use tonic::Code;

/// A clock one millisecond later at every reading.
struct TickingClock(AtomicI64);

impl Clock for TickingClock {
    fn now_ms(&self) -> i64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

/// A quotad on a ticking clock, and its clients.
struct Ticking {
    running: Option<Running>,
    quota: pb::quota_client::QuotaClient<Ch>,
    admin: pb::admin_client::AdminClient<Ch>,
    _dir: tempfile::TempDir,
}

impl Ticking {
    async fn start() -> Ticking {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(TickingClock(AtomicI64::new(T0_MS)));
        let running = server::start(config(dir.path()), clock).await.unwrap();
        let token = operator_token(dir.path());
        let (quota, admin) = connect(running.addr, &token).await;
        Ticking {
            running: Some(running),
            quota,
            admin,
            _dir: dir,
        }
    }

    async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
    }
}

fn purchase_req(account: &str, sku: &str, id: &str) -> pb::PurchaseRequest {
    pb::PurchaseRequest {
        account_id: account.into(),
        sku: sku.into(),
        purchase_id: id.into(),
        effective_at_ms: 0,
    }
}

/// R5: a storage plan does not stack. Eight Purchases of one at once, with distinct ids,
/// on each of many accounts: exactly one sells per account, the others are refused as not
/// stackable, and the account shows one storage grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_storage_purchases_sell_one_plan() {
    const ACCOUNTS: usize = 40;
    const BUYERS: usize = 8;
    let mut t = Ticking::start().await;
    for a in 0..ACCOUNTS {
        create_account(&mut t.admin, &format!("acct-{a}"), "0").await;
    }
    let mut tasks = Vec::new();
    for a in 0..ACCOUNTS {
        for b in 0..BUYERS {
            let mut admin = t.admin.clone();
            tasks.push(tokio::spawn(async move {
                let account = format!("acct-{a}");
                let req = purchase_req(&account, "plan.storage.100gb", &format!("p-{a}-{b}"));
                (a, admin.purchase(req).await)
            }));
        }
    }
    let mut sold = vec![0usize; ACCOUNTS];
    for task in tasks {
        let (a, r) = task.await.unwrap();
        match r {
            Ok(_) => sold[a] += 1,
            Err(s) => assert_status(
                "a second storage plan",
                Err::<(), _>(s),
                Code::FailedPrecondition,
                &["not stackable"],
            ),
        }
    }
    let twice: Vec<usize> = (0..ACCOUNTS).filter(|&a| sold[a] != 1).collect();
    assert!(
        twice.is_empty(),
        "accounts that did not sell exactly one storage plan: {:?}",
        twice.iter().map(|&a| (a, sold[a])).collect::<Vec<_>>()
    );
    for a in 0..ACCOUNTS {
        let b = balance_of(&mut t.quota, &format!("acct-{a}")).await;
        let storage: Vec<&pb::Grant> = b
            .grants
            .iter()
            .filter(|g| g.source == "plan.storage.100gb")
            .collect();
        assert_eq!(storage.len(), 1, "acct-{a}: {storage:?}");
    }
    t.shutdown().await;
}
