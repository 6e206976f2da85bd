//! Billing under races (G4, G6, G8, R5), black-box over real gRPC: concurrent purchases of
//! a plan that does not stack sell it once; concurrent duplicates of one call wait for the
//! first and get its outcome, never ABORTED.
//!
//! The purchase race runs on a clock that moves with every reading, as a real one does
//! while calls interleave: a frozen manual clock would hide a decision taken at a stale time.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

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
    client: Client,
    _dir: tempfile::TempDir,
}

impl Ticking {
    async fn start() -> Ticking {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(TickingClock(AtomicI64::new(T0_MS)));
        let running = server::start(config(dir.path()), clock).await.unwrap();
        let token = operator_token(dir.path());
        let client = Client::connect(running.addr, &token).await;
        Ticking {
            running: Some(running),
            client,
            _dir: dir,
        }
    }

    async fn shutdown(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await.unwrap();
        }
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
        let account = format!("acct-{a}");
        t.client.create_account(&account, "0").await.unwrap();
    }
    let mut tasks = Vec::new();
    for a in 0..ACCOUNTS {
        for b in 0..BUYERS {
            let mut c = t.client.clone();
            tasks.push(tokio::spawn(async move {
                let (account, id) = (format!("acct-{a}"), format!("p-{a}-{b}"));
                (a, c.purchase(&account, "plan.storage.100gb", &id, 0).await)
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
        let b = t.client.get_balance(&format!("acct-{a}")).await.unwrap();
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
    h.create_account("acme", "100").await.unwrap();
    for i in 0..IDS {
        h.create_account(&format!("buyer{i}"), "0").await.unwrap();
    }
    let mut errors = Vec::new();

    // Reserves: 2 x IDS reservations of 100 GPU-seconds (0.06 each), COPIES times each.
    let mut tasks = Vec::new();
    for i in 0..2 * IDS {
        for _ in 0..COPIES {
            let mut c = h.client.clone();
            tasks.push(tokio::spawn(async move {
                let id = format!("r{i}");
                let r = c.reserve("acme", &id, GPU_SHARED, A10, 100_000, 0).await;
                (format!("Reserve {id}"), r)
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
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "1.92");

    // Commits of the first half, Releases of the second, COPIES at once each.
    let mut tasks = Vec::new();
    for i in 0..2 * IDS {
        for _ in 0..COPIES {
            let mut c = h.client.clone();
            let id = format!("r{i}");
            tasks.push(tokio::spawn(async move {
                if i < IDS {
                    let r = c.commit(&id, 50_000).await;
                    (format!("Commit {id}"), r.map(|r| amount(&r.charged)))
                } else {
                    let r = c.release(&id).await;
                    (format!("Release {id}"), r.map(|r| amount(&r.released)))
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
            let mut c = h.client.clone();
            tasks.push(tokio::spawn(async move {
                let r = c.top_up("acme", "1", &format!("t{i}")).await;
                (format!("TopUp t{i}"), r.map(|_| ()))
            }));
            let mut c = h.client.clone();
            tasks.push(tokio::spawn(async move {
                let (buyer, id) = (format!("buyer{i}"), format!("p{i}"));
                let r = c.purchase(&buyer, "plan.storage.100gb", &id, 0).await;
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
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "115.52");
    assert_eq!(amount(&b.held), "0");
    assert_eq!(h.get_statement("acme").await.unwrap().entries.len(), IDS);
    for i in 0..IDS {
        let grants: Vec<String> = h
            .get_balance(&format!("buyer{i}"))
            .await
            .unwrap()
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
    h.create_account("acme", "1").await.unwrap();
    assert!(
        h.reserve("acme", "r1", GPU_SHARED, A10, 100_000, 0)
            .await
            .unwrap()
            .admitted
    );
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
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "0.97"
    );
    assert_eq!(h.get_statement("acme").await.unwrap().entries.len(), 1);
    h.shutdown().await;
}
