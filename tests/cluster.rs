//! The cluster test against real processes: one `quotad ledger` on PostgreSQL and three
//! `quotad serve --ledger` sidecars under concurrent load on shared accounts. The ledger is
//! killed with SIGKILL while the load runs, stays down for several lease TTLs (every lease
//! lapses; their money stays set aside until the sidecars come back and give it back) and
//! comes back on the same port and database; the load goes on
//! until one account, whose money the sidecars were spending through the outage, has run
//! dry. Then the sidecars are stopped with SIGTERM (each must exit 0) and the ledger's
//! Admin service is asked what happened:
//!
//! - every acknowledged Commit is in the statement exactly once, with its cost (G2);
//! - no balance is below zero: commits never exceed their holds here, so a negative
//!   balance would be an overspend across sidecars (G1);
//! - what the balance lost plus what the grants paid is exactly the acknowledged costs
//!   (G5): opening balance − final balance + grants used == sum of costs;
//! - the outage was fail-closed (Reserves denied with LEDGER_UNAVAILABLE) and admission
//!   resumed once the ledger was back.
//!
//! Needs PostgreSQL: set DATABASE_URL (postgres://USER@HOST:PORT/DB). Without it the test
//! says so and passes, unless CI is set, where it fails. It creates a database of its own
//! and drops it at the end. Real time passes (an outage of several lease TTLs); no
//! assertion depends on exact timings, and every wait is bounded. To look into a failure:
//! QUOTAD_CLUSTER_LOG sets the processes' RUST_LOG (default `warn`), and
//! QUOTAD_CLUSTER_KEEP_DB=1 keeps the database of a failed run.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::procs::{self, PROCESS_TIMEOUT, Proc, TestDatabase};
use common::{A10, ANY, COUPON, Client, GPU_SHARED, amount};
use quotad::pb;
use rust_decimal::Decimal;

/// Lease lifetime given to the ledger: short, so that an outage of a few seconds outlives
/// every lease several times over.
const LEASE_TTL_MS: u64 = 1_000;
/// How long after expiry a lease nobody gave back stays set aside (a silent sidecar is
/// presumed gone after that). Longer than the outage: the sidecars are only cut off.
const LEASE_HOLD_GRACE_MS: u64 = 60_000;
/// How long the ledger stays down at least: 5 lease TTLs, so that when the ledger is back
/// every lease has lapsed while the sidecars still hold usage they acknowledged and could
/// not push.
const OUTAGE_MIN_MS: u64 = 5 * LEASE_TTL_MS;
const OUTAGE_MIN: Duration = Duration::from_millis(OUTAGE_MIN_MS);
const _: () = assert!(OUTAGE_MIN_MS >= 4 * LEASE_TTL_MS);
const _: () = assert!(OUTAGE_MIN_MS < LEASE_HOLD_GRACE_MS);
/// Longest the outage is stretched while waiting to see a LEDGER_UNAVAILABLE denial.
const OUTAGE_MAX: Duration = Duration::from_secs(30);
const SIDECARS: usize = 3;
const TASKS_PER_SIDECAR: usize = 6;
/// Each task's pause between jobs, so the load spans the whole test at a modest rate.
const PACE: Duration = Duration::from_millis(20);
/// Upper bound on jobs per task. Tasks cycle through the accounts, so an account sees at
/// most SIDECARS * TASKS_PER_SIDECAR * this / 3 = 9,000 commits: below the statement's
/// 10,000 entries, so the statement is complete.
const JOBS_PER_TASK_MAX: usize = 1_500;
/// Acknowledged commits to see before the ledger is killed...
const WARMUP_COMMITS: u64 = 200;
/// ...and load for at least this long, so that leases have been renewed a few times.
const WARMUP_MIN: Duration = Duration::from_millis(3 * LEASE_TTL_MS);
/// Reserves to see admitted after the ledger is back before the load stops.
const ADMITTED_AFTER_RESTART: u64 = 100;
/// Bound on each wait for progress (warm-up, recovery).
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one gRPC call of the load.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// (account, opening balance, coupon): SMALL, a large one, and a large one with a coupon
/// that pays first. The load reserves GPU time of `common::A10` (0.0006 CNY per GPU-second
/// in the default catalog): 0.0006 to 0.003 per job, five times that on SMALL, so that a
/// sidecar with a lease on SMALL spends it within a fraction of a second.
const ACCOUNTS: [(&str, &str, Option<&str>); 3] = [
    (SMALL, "0.1", None),
    ("large", "500", None),
    ("coupon", "500", Some("1")),
];

/// An account that gets its money only just before the ledger is killed, less than a
/// sidecar's smallest lease, so that one sidecar leases all of it and spends it through the
/// outage: when the ledger is back, that money is spent but not yet reported, and the
/// other sidecars, which were refused it until then, ask again. Until its top-up it has
/// nothing (NO_ENTITLEMENT).
const SMALL: &str = "small";
/// Reserves admitted on SMALL after its top-up before the ledger is killed.
const SMALL_ADMITTED_BEFORE_KILL: u64 = 3;
/// SMALL has run dry below this balance (its smallest job costs 0.003)...
const SMALL_DRY: Decimal = Decimal::from_parts(3, 0, 0, false, 3);
/// ...which the load waits for at most this many polls, 100 ms apart, after the restart.
const SMALL_DRY_POLLS_MAX: usize = 200;

const BEFORE: u8 = 0;
const OUTAGE: u8 = 1;
const AFTER: u8 = 2;
/// The call started in one phase and ended in another.
const STRADDLING: u8 = 3;
const PHASES: [&str; 4] = [
    "before the kill",
    "ledger down",
    "ledger back",
    "straddling",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_survive_a_ledger_outage_without_overspend_or_lost_usage() {
    let Some(url) = database_url() else {
        return;
    };
    let started = Instant::now();
    let mut cluster = Cluster::new(&url).await;

    // The ledger, its accounts, and three sidecars.
    let token_file = cluster.tokens.path().join("operator.token");
    let ledger = spawn_ledger(
        &cluster.ledger_url,
        "127.0.0.1:0".parse().unwrap(),
        1,
        &token_file,
    )
    .await;
    let ledger_addr = ledger.addr;
    cluster.ledger = Some(ledger);
    // The ledger's operator token: Admin, the sidecars' Sync, and the workers' calls.
    let token = quotad::auth::read_token_file(&token_file).unwrap();
    let mut admin = admin_client(ledger_addr, &token).await;
    let far_ms = now_ms() + 30 * common::DAY_MS;
    let mut opening: HashMap<&str, Decimal> = HashMap::new();
    for (account, balance, coupon) in ACCOUNTS {
        admin.create_account(account, None).await.unwrap();
        if account != SMALL {
            let opening = opening_id(account);
            admin.top_up(account, balance, &opening).await.unwrap();
        }
        if let Some(c) = coupon {
            let id = format!("{account}-coupon");
            admin
                .grant_credit(account, &id, COUPON, ANY, c, far_ms)
                .await
                .unwrap();
        }
        opening.insert(account, dec(balance));
    }
    for i in 0..SIDECARS {
        let dir = tempfile::tempdir().unwrap();
        let p = spawn_sidecar(ledger_addr, dir.path(), i, &token_file).await;
        cluster.sidecars.push((p, dir));
    }

    // Load on every sidecar at once.
    let shared = Arc::new(Shared::default());
    shared.phase.store(BEFORE, Ordering::SeqCst);
    let mut workers = Vec::new();
    for (s, (p, _)) in cluster.sidecars.iter().enumerate() {
        for t in 0..TASKS_PER_SIDECAR {
            let client = Client::connect(p.addr, &token).await;
            workers.push(tokio::spawn(worker(s, t, client, shared.clone())));
        }
    }
    let load_started = Instant::now();
    wait_for("commits before the kill", || {
        shared.acked.load(Ordering::Relaxed) >= WARMUP_COMMITS
    })
    .await;
    tokio::time::sleep(WARMUP_MIN.saturating_sub(load_started.elapsed())).await;
    let small_opening = opening_id(SMALL);
    admin
        .top_up(SMALL, ACCOUNTS[0].1, &small_opening)
        .await
        .unwrap();
    wait_for(&format!("Reserves admitted on {SMALL}"), || {
        shared.small_admitted.load(Ordering::Relaxed) >= SMALL_ADMITTED_BEFORE_KILL
    })
    .await;

    // Outage: SIGKILL, several lease TTLs down (longer if no denial was seen yet, bounded),
    // then a new ledger process on the same port and database.
    let killed_at = Instant::now();
    shared.phase.store(OUTAGE, Ordering::SeqCst);
    cluster.ledger.as_mut().unwrap().kill9();
    tokio::time::sleep(OUTAGE_MIN).await;
    while shared.unavailable_in_outage.load(Ordering::Relaxed) == 0
        && killed_at.elapsed() < OUTAGE_MAX
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ledger = spawn_ledger(&cluster.ledger_url, ledger_addr, 50, &token_file).await;
    shared.phase.store(AFTER, Ordering::SeqCst);
    let outage = killed_at.elapsed();
    cluster.ledger = Some(ledger);
    wait_for("Reserves admitted after the ledger came back", || {
        shared.admitted_after.load(Ordering::Relaxed) >= ADMITTED_AFTER_RESTART
    })
    .await;
    // Keep the load on until SMALL has run dry (bounded): the sidecars compete for its last
    // money, which is where leases lapsed during the outage could let it be spent twice.
    let mut admin = admin_client(ledger_addr, &token).await;
    let mut small_left = String::new();
    for _ in 0..SMALL_DRY_POLLS_MAX {
        // Retrying the opening top-up adds nothing and answers the ledger's current view.
        let b = admin
            .top_up(SMALL, ACCOUNTS[0].1, &small_opening)
            .await
            .unwrap();
        small_left = amount(&b.balance);
        if dec(&small_left) < SMALL_DRY {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop the load, then the sidecars: SIGTERM drains, pushes the journal, exits 0.
    shared.stop.store(true, Ordering::SeqCst);
    let mut tally = Tally::default();
    for w in workers {
        let t = tokio::time::timeout(PROCESS_TIMEOUT, w)
            .await
            .expect("a load task stops within its call timeouts")
            .expect("a load task does not panic");
        tally.merge(t);
    }

    // Every check from here on runs; the failures are reported together at the end.
    let mut failures: Vec<String> = Vec::new();
    for (p, _) in &mut cluster.sidecars {
        let code = p.terminate().await;
        check(
            &mut failures,
            code == Some(0),
            format!("{} exited with {code:?} after SIGTERM, not 0", p.name),
        );
    }

    // What the ledger says.
    let mut acked_by_account: HashMap<&str, Vec<&Ack>> = HashMap::new();
    for a in &tally.acked {
        acked_by_account.entry(a.account).or_default().push(a);
    }
    let mut report = Vec::new();
    for (account, _, _) in ACCOUNTS {
        let st = admin.get_statement(account).await.unwrap();
        assert!(
            !st.truncated,
            "{account}: statement truncated; the test must stay below its limit"
        );
        let mut entries: HashMap<&str, Vec<&pb::StatementEntry>> = HashMap::new();
        for e in &st.entries {
            entries.entry(e.usage_id.as_str()).or_default().push(e);
            let paid: Decimal = e.deductions.iter().map(|d| dec(&amount(&d.amount))).sum();
            let cost = dec(&amount(&e.cost));
            check(
                &mut failures,
                paid == cost,
                format!(
                    "{account}: deductions of {} add up to {paid}, not its cost {cost}",
                    e.usage_id
                ),
            );
        }
        let acked = acked_by_account.remove(account).unwrap_or_default();
        let mut acked_cost = Decimal::ZERO;
        let (mut missing, mut doubled, mut wrong_cost) = (Vec::new(), Vec::new(), Vec::new());
        for a in &acked {
            acked_cost += a.cost;
            match entries.get(a.id.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                [] => missing.push(a.id.as_str()),
                [e] if dec(&amount(&e.cost)) != a.cost => wrong_cost.push(a.id.as_str()),
                [_] => {}
                _ => doubled.push(a.id.as_str()),
            }
        }
        check(
            &mut failures,
            missing.is_empty(),
            format!(
                "{account}: {} acknowledged commits missing from the statement: {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ),
        );
        check(
            &mut failures,
            doubled.is_empty(),
            format!(
                "{account}: {} acknowledged commits in the statement more than once: {:?}",
                doubled.len(),
                &doubled[..doubled.len().min(5)]
            ),
        );
        check(
            &mut failures,
            wrong_cost.is_empty(),
            format!(
                "{account}: {} commits in the statement with another cost than acknowledged: {:?}",
                wrong_cost.len(),
                &wrong_cost[..wrong_cost.len().min(5)]
            ),
        );
        check(
            &mut failures,
            st.entries.len() == acked.len(),
            format!(
                "{account}: the statement has {} entries for {} acknowledged commits",
                st.entries.len(),
                acked.len()
            ),
        );

        // The current view, read by retrying the opening top-up: same id, nothing added.
        let (amount_opened, id) = (opening[account].to_string(), opening_id(account));
        let b = admin.top_up(account, &amount_opened, &id).await.unwrap();
        let balance = dec(&amount(&b.balance));
        let grants_used: Decimal = b
            .grants
            .iter()
            .filter(|g| g.unit == "CNY")
            .map(|g| dec(&g.quota) - dec(&g.remaining))
            .sum();
        check(
            &mut failures,
            balance >= Decimal::ZERO,
            format!(
                "{account}: balance {balance} is below zero: overspend (opening {}, \
                 acknowledged costs {acked_cost})",
                opening[account]
            ),
        );
        check(
            &mut failures,
            opening[account] - balance + grants_used == acked_cost,
            format!(
                "{account}: opening {} - balance {balance} + grants used {grants_used} is not \
                 the acknowledged costs {acked_cost}",
                opening[account]
            ),
        );
        let reserves: Vec<String> = tally
            .by_account
            .iter()
            .filter(|((a, _), _)| *a == account)
            .map(|((_, o), n)| format!("{o} {n}"))
            .collect();
        report.push(format!(
            "{account}: balance {} -> {balance}, grants used {grants_used}, {} commits costing \
             {acked_cost}; Reserves: {}",
            opening[account],
            acked.len(),
            reserves.join(", ")
        ));
    }

    // The outage was fail-closed and visible; admission resumed after it.
    check(
        &mut failures,
        tally.commit_errors.is_empty(),
        format!(
            "{} Commits of admitted Reserves failed, first: {:?}",
            tally.commit_errors.len(),
            tally.commit_errors.first()
        ),
    );
    check(
        &mut failures,
        tally.count(OUTAGE, "LEDGER_UNAVAILABLE") > 0,
        format!("no Reserve was denied LEDGER_UNAVAILABLE while the ledger was down ({outage:?})"),
    );
    check(
        &mut failures,
        tally.count(AFTER, "ADMITTED") > 0,
        "no Reserve was admitted after the ledger came back".to_owned(),
    );

    // The ledger itself stops cleanly too.
    let code = cluster.ledger.as_mut().unwrap().terminate().await;
    check(
        &mut failures,
        code == Some(0),
        format!("the ledger exited with {code:?} after SIGTERM, not 0"),
    );
    cluster.drop_database().await;

    println!(
        "cluster: {SIDECARS} sidecars x {TASKS_PER_SIDECAR} tasks, {} commits acknowledged, \
         ledger down for {:.1} s (lease TTL {LEASE_TTL_MS} ms, grace {LEASE_HOLD_GRACE_MS} \
         ms), {SMALL} left with {small_left} when the load stopped, {:.1} s in all",
        tally.acked.len(),
        outage.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for (phase, name) in PHASES.iter().enumerate() {
        let line: Vec<String> = tally
            .outcomes
            .iter()
            .filter(|((p, _), _)| *p as usize == phase)
            .map(|((_, o), n)| format!("{o} {n}"))
            .collect();
        if !line.is_empty() {
            println!("  Reserves {name}: {}", line.join(", "));
        }
    }
    for line in report {
        println!("  {line}");
    }
    assert!(
        failures.is_empty(),
        "{} checks failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---- load ----------------------------------------------------------------------------

#[derive(Default)]
struct Shared {
    phase: AtomicU8,
    stop: AtomicBool,
    acked: AtomicU64,
    unavailable_in_outage: AtomicU64,
    admitted_after: AtomicU64,
    small_admitted: AtomicU64,
}

struct Ack {
    account: &'static str,
    id: String,
    cost: Decimal,
}

#[derive(Default)]
struct Tally {
    acked: Vec<Ack>,
    /// Reserve outcomes by (phase, ADMITTED / deny reason / error:CODE).
    outcomes: BTreeMap<(u8, String), u64>,
    /// The same by account.
    by_account: BTreeMap<(&'static str, String), u64>,
    commit_errors: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.acked.extend(other.acked);
        for (k, n) in other.outcomes {
            *self.outcomes.entry(k).or_default() += n;
        }
        for (k, n) in other.by_account {
            *self.by_account.entry(k).or_default() += n;
        }
        self.commit_errors.extend(other.commit_errors);
    }

    fn count(&self, phase: u8, outcome: &str) -> u64 {
        self.outcomes
            .get(&(phase, outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

/// Reserves and commits (quantity <= reserved) in a loop until told to stop or out of jobs,
/// cycling through the accounts; remembers every acknowledged Commit and every outcome.
async fn worker(sidecar: usize, task: usize, mut client: Client, shared: Arc<Shared>) -> Tally {
    let mut t = Tally::default();
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ ((sidecar * 64 + task + 1) as u64);
    for job in 0..JOBS_PER_TASK_MAX {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        // xorshift64: varied, reproducible quantities.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let account = ACCOUNTS[(task + job) % ACCOUNTS.len()].0;
        let id = format!("s{sidecar}-t{task}-j{job}");
        let reserved = (1_000 + (x % 4_000) as i64) * if account == SMALL { 5 } else { 1 };
        let used = reserved - ((x >> 32) % (reserved as u64 / 2)) as i64;
        let call = client.reserve(account, &id, GPU_SHARED, A10, reserved, 0);
        let before = shared.phase.load(Ordering::SeqCst);
        let r = tokio::time::timeout(CALL_TIMEOUT, call).await;
        let after = shared.phase.load(Ordering::SeqCst);
        let phase = if before == after { before } else { STRADDLING };
        let outcome = match r {
            Err(_) => "error:timeout".to_owned(),
            Ok(Err(s)) => format!("error:{:?}", s.code()),
            Ok(Ok(r)) if !r.admitted => r.reason().as_str_name().to_owned(),
            Ok(Ok(_)) => "ADMITTED".to_owned(),
        };
        if phase == OUTAGE && outcome == "LEDGER_UNAVAILABLE" {
            shared.unavailable_in_outage.fetch_add(1, Ordering::Relaxed);
        }
        if outcome == "ADMITTED" {
            if account == SMALL {
                shared.small_admitted.fetch_add(1, Ordering::Relaxed);
            }
            if before == AFTER {
                shared.admitted_after.fetch_add(1, Ordering::Relaxed);
            }
            let c = tokio::time::timeout(CALL_TIMEOUT, client.commit(&id, used)).await;
            match c {
                Ok(Ok(c)) => {
                    t.acked.push(Ack {
                        account,
                        id,
                        cost: dec(&amount(&c.charged)),
                    });
                    shared.acked.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(s)) => t.commit_errors.push(format!("{id}: {s:?}")),
                Err(_) => t
                    .commit_errors
                    .push(format!("{id}: no answer within {CALL_TIMEOUT:?}")),
            }
        }
        *t.by_account.entry((account, outcome.clone())).or_default() += 1;
        *t.outcomes.entry((phase, outcome)).or_default() += 1;
        tokio::time::sleep(PACE).await;
    }
    t
}

/// Records a failed check.
fn check(failures: &mut Vec<String>, ok: bool, what: String) {
    if !ok {
        failures.push(what);
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < PROGRESS_TIMEOUT,
            "no {what} within {PROGRESS_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- processes and the database --------------------------------------------------------

async fn spawn_ledger(
    database_url: &str,
    listen: SocketAddr,
    attempts: usize,
    token_file: &std::path::Path,
) -> Proc {
    let extra = [
        "--lease-ttl-ms".to_owned(),
        LEASE_TTL_MS.to_string(),
        "--lease-hold-grace-ms".to_owned(),
        LEASE_HOLD_GRACE_MS.to_string(),
    ];
    procs::spawn_ledger(database_url, listen, attempts, token_file, &extra).await
}

async fn spawn_sidecar(
    ledger: SocketAddr,
    data_dir: &std::path::Path,
    i: usize,
    token_file: &std::path::Path,
) -> Proc {
    procs::spawn_sidecar(ledger, data_dir, &format!("sidecar {i}"), token_file, &[]).await
}

/// The ledger's Admin service.
async fn admin_client(addr: SocketAddr, token: &str) -> Client {
    Client::connect(addr, token).await
}

/// The processes and the database of one run. Dropping it (also on a failed assertion)
/// kills what is still running and drops the database.
struct Cluster {
    db: TestDatabase,
    ledger_url: String,
    ledger: Option<Proc>,
    sidecars: Vec<(Proc, tempfile::TempDir)>,
    /// Where the ledger writes its operator token.
    tokens: tempfile::TempDir,
}

impl Cluster {
    async fn new(server_url: &str) -> Cluster {
        let db = TestDatabase::create(server_url, "quotad_cluster").await;
        Cluster {
            ledger_url: db.url.clone(),
            db,
            ledger: None,
            sidecars: Vec::new(),
            tokens: tempfile::tempdir().unwrap(),
        }
    }

    async fn drop_database(&mut self) {
        self.db.drop_now().await;
    }
}

fn database_url() -> Option<String> {
    procs::database_url("cluster")
}

#[test]
fn with_database_replaces_only_the_database_name() {
    use procs::with_database;
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(with_database("postgresql://h:1", "x"), "postgresql://h:1/x");
}

/// The id of an account's opening top-up.
fn opening_id(account: &str) -> String {
    format!("{account}-opening")
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|e| panic!("{s:?} is not a decimal: {e}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
