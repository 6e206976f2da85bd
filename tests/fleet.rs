//! The fleet against real processes: one `quotad ledger` on PostgreSQL and four
//! `quotad serve --ledger` sidecars, with accounts that can pay for exactly K jobs. A user
//! who can pay is admitted on whichever sidecar gets the request (G7), and the fleet never
//! admits more than the account has (G1):
//!
//! - round robin: Reserve + Commit sent to the sidecars in turn admits exactly K, and every
//!   denial after that says the money is short with an `available` short of the job;
//! - a burst: twice as many Reserves as the account can pay, from all four sidecars at
//!   once, then each denied one sent once more: exactly K admitted in all, none stranded;
//! - money in another sidecar's unused lease: one sidecar holds most of a richer account as
//!   headroom; another sidecar's job that needs it is admitted in its one call (the ledger
//!   recalls the headroom; the other sidecar gives it back at its next sync);
//! - the statements have each acknowledged Commit once, and the balances are exact.
//!
//! Needs PostgreSQL (DATABASE_URL); without it the test says so and passes, unless CI is
//! set. QUOTAD_CLUSTER_LOG sets the processes' RUST_LOG.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::str::FromStr;
use std::time::Duration;

use common::procs::{self, Proc, TestDatabase};
use common::{A10, Client, GPU_SHARED, amount};
use quotad::pb;
use rust_decimal::Decimal;

const SIDECARS: usize = 4;
/// A job: 10 GPU-seconds of an A10 at 0.0006 per second.
const JOB_MS: i64 = 10_000;
const JOB_COST: &str = "0.006";
/// Jobs the round-robin account can pay for.
const K_ROUND_ROBIN: usize = 8;
/// Jobs the burst account can pay for, and Reserves per sidecar in the burst.
const K_BURST: usize = 6;
const BURST_PER_SIDECAR: usize = 3;
/// Bound on one call (a call waiting for recalled lease takes up to the recall wait).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

struct Fleet {
    db: TestDatabase,
    _ledger: Proc,
    sidecars: Vec<(Proc, tempfile::TempDir)>,
    /// A client of each sidecar (Quota).
    clients: Vec<Client>,
    /// The ledger's Admin service.
    admin: Client,
    _tokens: tempfile::TempDir,
}

impl Fleet {
    async fn start(server_url: &str) -> Fleet {
        let db = TestDatabase::create(server_url, "quotad_fleet").await;
        let tokens = tempfile::tempdir().unwrap();
        let token_file = tokens.path().join("operator.token");
        let ledger =
            procs::spawn_ledger(&db.url, "127.0.0.1:0".parse().unwrap(), 1, &token_file, &[]).await;
        let token = quotad::auth::read_token_file(&token_file).unwrap();
        let mut sidecars = Vec::new();
        let mut clients = Vec::new();
        for i in 0..SIDECARS {
            let dir = tempfile::tempdir().unwrap();
            let name = format!("sidecar {i}");
            let p = procs::spawn_sidecar(ledger.addr, dir.path(), &name, &token_file, &[]).await;
            clients.push(Client::connect(p.addr, &token).await);
            sidecars.push((p, dir));
        }
        let admin = Client::connect(ledger.addr, &token).await;
        Fleet {
            db,
            _ledger: ledger,
            sidecars,
            clients,
            admin,
            _tokens: tokens,
        }
    }

    async fn account(&mut self, account: &str, balance: &str) {
        self.admin.create_account(account, None).await.unwrap();
        let opening = opening_id(account);
        self.admin.top_up(account, balance, &opening).await.unwrap();
    }

    async fn reserve(
        &mut self,
        sidecar: usize,
        account: &str,
        id: &str,
        ms: i64,
    ) -> pb::ReserveResponse {
        let c = &mut self.clients[sidecar];
        let call = c.reserve(account, id, GPU_SHARED, A10, ms, 0);
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .unwrap_or_else(|_| panic!("reserve {id} on sidecar {sidecar}: no answer"))
            .unwrap_or_else(|s| panic!("reserve {id} on sidecar {sidecar}: {s:?}"))
    }

    async fn commit(&mut self, sidecar: usize, id: &str, ms: i64) -> Decimal {
        let c = self.clients[sidecar]
            .commit(id, ms)
            .await
            .unwrap_or_else(|s| panic!("commit {id} on sidecar {sidecar}: {s:?}"));
        dec(&amount(&c.charged))
    }

    /// The ledger's statement of the account, and its balance.
    async fn ledger_view(
        &mut self,
        account: &str,
        opening_amount: &str,
    ) -> (Vec<pb::StatementEntry>, Decimal) {
        let st = self.admin.get_statement(account).await.unwrap();
        // Retrying the opening top-up adds nothing and answers the ledger's current view.
        let opening = opening_id(account);
        let b = self.admin.top_up(account, opening_amount, &opening).await;
        let balance = match b {
            Ok(b) => dec(&amount(&b.balance)),
            Err(s) => panic!("balance of {account}: {s:?}"),
        };
        (st.entries, balance)
    }
}

/// A denial must say the money is short (INSUFFICIENT_FUNDS; NO_ENTITLEMENT once the
/// balance is exactly zero, R6) with an `available` that does not cover the job.
fn assert_truthful_denial(what: &str, r: &pb::ReserveResponse) {
    assert!(
        matches!(
            r.reason(),
            pb::DenyReason::InsufficientFunds | pb::DenyReason::NoEntitlement
        ),
        "{what}: denied {:?}",
        r.reason()
    );
    let available = dec(&amount(&r.available));
    assert!(
        available < dec(JOB_COST),
        "{what}: denied while `available` {available} covers the job ({JOB_COST})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_who_can_pay_is_admitted_on_any_sidecar_and_never_beyond_the_money() {
    let Some(url) = procs::database_url("fleet") else {
        return;
    };
    let mut f = Fleet::start(&url).await;

    // Round robin: exactly K admitted, each committed in full on the sidecar that held it.
    let k_cost = dec(JOB_COST) * Decimal::from(K_ROUND_ROBIN as u64);
    f.account("rr", &k_cost.to_string()).await;
    let mut admitted = Vec::new();
    for n in 0..2 * K_ROUND_ROBIN {
        let s = n % SIDECARS;
        let id = format!("rr-{n}");
        let r = f.reserve(s, "rr", &id, JOB_MS).await;
        if r.admitted {
            assert_eq!(f.commit(s, &id, JOB_MS).await, dec(JOB_COST));
            admitted.push(id);
        } else {
            assert_truthful_denial(&format!("round robin {id} on sidecar {s}"), &r);
        }
    }
    println!(
        "round robin: {} of {} admitted (account for exactly {K_ROUND_ROBIN})",
        admitted.len(),
        2 * K_ROUND_ROBIN
    );
    assert_eq!(
        admitted.len(),
        K_ROUND_ROBIN,
        "round robin admitted {admitted:?}"
    );

    // A burst from all four at once, then each denied one once more, one at a time.
    let k_cost = dec(JOB_COST) * Decimal::from(K_BURST as u64);
    f.account("burst", &k_cost.to_string()).await;
    let mut calls = Vec::new();
    for s in 0..SIDECARS {
        for j in 0..BURST_PER_SIDECAR {
            let mut c = f.clients[s].clone();
            let id = format!("burst-{s}-{j}");
            calls.push(tokio::spawn(async move {
                let call = c.reserve("burst", &id, GPU_SHARED, A10, JOB_MS, 0);
                let r = tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .expect("an answer")
                    .expect("a Reserve answer");
                (s, id, r)
            }));
        }
    }
    let mut held = Vec::new();
    let mut denied = Vec::new();
    for c in calls {
        let (s, id, r) = c.await.unwrap();
        if r.admitted {
            held.push((s, id));
        } else {
            assert_truthful_denial(&format!("burst {id}"), &r);
            denied.push((s, id));
        }
    }
    let at_once = held.len();
    for (s, id) in &denied {
        let again = format!("{id}-again");
        let r = f.reserve(*s, "burst", &again, JOB_MS).await;
        if r.admitted {
            held.push((*s, again));
        } else {
            assert_truthful_denial(&format!("burst retry {again}"), &r);
        }
    }
    println!(
        "burst: {} Reserves at once from {SIDECARS} sidecars, {at_once} admitted; {} admitted \
         when the {} denied were sent once more (account for exactly {K_BURST})",
        SIDECARS * BURST_PER_SIDECAR,
        held.len() - at_once,
        denied.len()
    );
    assert_eq!(held.len(), K_BURST, "burst admitted {held:?}");
    for (s, id) in &held {
        assert_eq!(f.commit(*s, id, JOB_MS).await, dec(JOB_COST));
    }

    // Money in another sidecar's unused lease: sidecar 0 takes a lease with headroom on an
    // account that can pay the fleet's wants; then sidecar 1 needs most of the account.
    f.account("shared", "2").await;
    let r = f.reserve(0, "shared", "shared-a", JOB_MS).await;
    assert!(r.admitted, "shared-a: {r:?}");
    assert_eq!(f.commit(0, "shared-a", JOB_MS).await, dec(JOB_COST));
    // 1.5 of the 1.994 left: more than sidecar 0's lease leaves free.
    let big_ms = 2_500_000;
    let r = f.reserve(1, "shared", "shared-b", big_ms).await;
    println!(
        "shared: a job of 1.5 on sidecar 1 while sidecar 0 held unused lease: admitted {} \
         (available {})",
        r.admitted,
        amount(&r.available)
    );
    assert!(r.admitted, "shared-b: {r:?}");
    assert_eq!(f.commit(1, "shared-b", big_ms).await, dec("1.5"));

    // Every sidecar stops cleanly (pushing what it owes), then the ledger's word.
    for (p, _) in &mut f.sidecars {
        assert_eq!(p.terminate().await, Some(0), "{} exit code", p.name);
    }
    for (account, charges, opening) in [
        (
            "rr",
            K_ROUND_ROBIN,
            dec(JOB_COST) * Decimal::from(K_ROUND_ROBIN as u64),
        ),
        (
            "burst",
            K_BURST,
            dec(JOB_COST) * Decimal::from(K_BURST as u64),
        ),
        ("shared", 2, dec("2")),
    ] {
        let (entries, balance) = f.ledger_view(account, &opening.to_string()).await;
        let mut ids: Vec<&str> = entries.iter().map(|e| e.usage_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            entries.len(),
            "{account}: a usage id twice: {entries:?}"
        );
        assert_eq!(entries.len(), charges, "{account}: statement {entries:?}");
        let spent: Decimal = entries.iter().map(|e| dec(&amount(&e.cost))).sum();
        assert_eq!(balance, opening - spent, "{account}: balance");
        assert!(
            balance >= Decimal::ZERO,
            "{account}: overspent to {balance}"
        );
    }
    f.db.drop_now().await;
}

/// The id of an account's opening top-up.
fn opening_id(account: &str) -> String {
    format!("{account}-opening")
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|e| panic!("{s:?} is not a decimal: {e}"))
}
