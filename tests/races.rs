//! Billing under races (G4, G6, G8, R5), black-box over real gRPC: concurrent purchases of
//! a plan that does not stack sell it once; concurrent duplicates of one call wait for the
//! first and get its outcome, never ABORTED.
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

/// G4, G6: identical calls at once (Reserve, Commit, Release, TopUp, Purchase) each get
/// the first call's outcome: no ABORTED, nothing recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_wait_for_the_first() {
    const IDS: usize = 16;
    const COPIES: usize = 8;
    let mut h = Harness::start().await;
    h.create("acme", "100").await;
    for i in 0..IDS {
        h.create(&format!("buyer{i}"), "0").await;
    }
    let mut errors = Vec::new();

    // Reserves: 2 x IDS reservations of 100 GPU-seconds (0.06 each), COPIES times each.
    let mut tasks = Vec::new();
    for i in 0..2 * IDS {
        for _ in 0..COPIES {
            let mut quota = h.quota.clone();
            tasks.push(tokio::spawn(async move {
                let r = quota.reserve(reserve_req("acme", &format!("r{i}"), 100_000));
                (format!("Reserve r{i}"), r.await.map(|r| r.into_inner()))
            }));
        }
    }
    for task in tasks {
        let (what, r) = task.await.unwrap();
        match r {
            Ok(r) => {
                assert!(r.admitted, "{what}: {r:?}");
                assert_eq!(amount(&r.held), "0.06", "{what}");
                assert_eq!(r.expires_at_ms, T0_MS + 5 * 60 * 1000, "{what}");
            }
            Err(s) => errors.push(format!("{what}: {:?} {}", s.code(), s.message())),
        }
    }
    assert_eq!(amount(&h.balance("acme").await.held), "1.92");

    // Commits of the first half, Releases of the second, COPIES at once each.
    let mut tasks = Vec::new();
    for i in 0..2 * IDS {
        for _ in 0..COPIES {
            let mut quota = h.quota.clone();
            let id = format!("r{i}");
            tasks.push(tokio::spawn(async move {
                if i < IDS {
                    let req = pb::CommitRequest {
                        reservation_id: id.clone(),
                        quantity: 50_000,
                    };
                    let r = quota.commit(req).await;
                    (
                        format!("Commit {id}"),
                        r.map(|r| amount(&r.into_inner().charged)),
                    )
                } else {
                    let req = pb::ReleaseRequest {
                        reservation_id: id.clone(),
                    };
                    let r = quota.release(req).await;
                    (
                        format!("Release {id}"),
                        r.map(|r| amount(&r.into_inner().released)),
                    )
                }
            }));
        }
    }
    for task in tasks {
        let (what, r) = task.await.unwrap();
        match r {
            Ok(got) if what.starts_with("Commit") => assert_eq!(got, "0.03", "{what}"),
            Ok(got) => assert_eq!(got, "0.06", "{what}"),
            Err(s) => errors.push(format!("{what}: {:?} {}", s.code(), s.message())),
        }
    }

    // TopUps and Purchases at the ledger, COPIES at once each. The plan does not stack: a
    // copy must not take the first one's grant for a second plan.
    let mut tasks = Vec::new();
    for i in 0..IDS {
        for _ in 0..COPIES {
            let mut admin = h.admin.clone();
            tasks.push(tokio::spawn(async move {
                let req = pb::TopUpRequest {
                    account_id: "acme".into(),
                    amount: Some(money("1")),
                    topup_id: format!("t{i}"),
                };
                let r = admin.top_up(req).await;
                (format!("TopUp t{i}"), r.map(|_| ()))
            }));
            let mut admin = h.admin.clone();
            tasks.push(tokio::spawn(async move {
                let buyer = format!("buyer{i}");
                let req = purchase_req(&buyer, "plan.storage.100gb", &format!("p{i}"));
                let r = admin.purchase(req).await;
                (format!("Purchase p{i}"), r.map(|_| ()))
            }));
        }
    }
    for task in tasks {
        let (what, r) = task.await.unwrap();
        if let Err(s) = r {
            errors.push(format!("{what}: {:?} {}", s.code(), s.message()));
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {} calls failed: {errors:#?}",
        errors.len(),
        IDS * COPIES * 6
    );

    // Each happened once: 16 commits of 0.03 and 16 top-ups of 1 on a balance of 100.
    let b = h.balance("acme").await;
    assert_eq!(amount(&b.balance), "115.52");
    assert_eq!(amount(&b.held), "0");
    assert_eq!(h.statement("acme").await.entries.len(), IDS);
    for i in 0..IDS {
        let grants: Vec<String> = h
            .balance(&format!("buyer{i}"))
            .await
            .grants
            .into_iter()
            .map(|g| g.grant_id)
            .collect();
        assert_eq!(grants, vec![format!("p{i}/1")]);
    }
    h.shutdown().await;
}

/// A Commit whose caller goes away while it is being journaled (a cancelled request, a
/// deadline) still settles the reservation: a retry gets its outcome, neither ABORTED nor
/// a wait that never ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_commit_still_settles() {
    let mut h = Harness::start().await;
    h.create("acme", "1").await;
    assert!(h.reserve("acme", "r1", 100_000).await.unwrap().admitted);
    let engine = h.engine().clone();
    {
        let commit = engine.commit("r1", 50_000);
        tokio::pin!(commit);
        // One poll: the charge is applied and queued for the journal; then the caller is
        // gone.
        tokio::select! {
            biased;
            r = &mut commit => assert_eq!(r.unwrap().charged.to_string(), "0.03"),
            _ = std::future::ready(()) => {}
        }
    }
    let retry = tokio::time::timeout(std::time::Duration::from_secs(10), h.commit("r1", 50_000));
    let c = retry.await.expect("the retry is answered").unwrap();
    assert_eq!(amount(&c.charged), "0.03");
    assert_eq!(amount(&h.balance("acme").await.balance), "0.97");
    assert_eq!(h.statement("acme").await.entries.len(), 1);
    h.shutdown().await;
}
