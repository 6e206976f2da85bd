//! Deterministic simulation of a quotad fleet: one ledger, several sidecars, a faulty
//! network, crashes, restarts and a clock that only moves when told. Each seed is one
//! reproducible run; a failing seed prints how to replay it alone.
//!
//! Per seed (`sim/world.rs`): one `Ledger` over SQLite, 3-4 sidecars (8-12 on fleet seeds) (`Engine` + own
//! `Journal` + own sidecar id) that reach it only through `SimNet` (`sim/net.rs`), which
//! loses requests and responses, duplicates, delivers stale copies late and partitions
//! sidecars. A few hundred random steps (`sim/actions.rs`: Reserve, Commit, Release and
//! their retries, Admit, clock moves with the sync loops' ticks, extra syncs, sweeps,
//! operator top-ups and coupons, graceful restarts and crashes), each awaited before the
//! next. Then (`sim/audit.rs`) the network heals, every journal is drained, and:
//!
//! 1. every acknowledged Commit is in the ledger's statement exactly once with its
//!    quantity, cost and time, and nothing else is (G2, G4);
//! 2. initial + credits - (balance + grants left) == the acknowledged commits, exactly,
//!    and fail-closed no balance is below zero (G1) (fail-open: by at most the allowance);
//! 3. at every acknowledged Reserve: commits + open holds across all sidecars <= what the
//!    account was given so far (+ fail-open budget × sidecars on fail-open seeds): the
//!    fleet-wide G1 check. G1's documented exception is allowed and counted: a sidecar
//!    silent for hold_grace_ms past its lease's expiry is presumed gone and its lease
//!    reclaimed; the overspend may reach what such sidecars have out, not more;
//! 4. balances, grants and each charge's deductions equal an independent model's
//!    burn-down (`sim/model.rs`) of the same charges in the order the ledger applied them;
//! 5. liveness (G7, `sim/liveness.rs`): a Reserve the model says the account can pay,
//!    reaching a sidecar whose ledger link works, is admitted at once, or after every
//!    sidecar synced one round (the others' unused leases come back in that sync); and no
//!    denial for INSUFFICIENT_FUNDS or NO_ENTITLEMENT reports an `available` covering it.
//!
//! One seed in four is a fleet: 8 to 12 sidecars on four small accounts (0.05 to 1 CNY),
//! with jobs small against them, so that sidecars compete for an account's last money.
//!
//! Along the way every answer is checked on the spot: prices, hold expiries, no Commit
//! or Release acknowledged after its hold expired (G3), retries answer the first outcome
//! (G4), a sidecar admits at most its fail-open budget.
//!
//! Environment: QUOTAD_SIM_SEEDS (default 1000) seeds from QUOTAD_SIM_SEED_START (default
//! 1); QUOTAD_SIM_SEED=N runs only seed N (QUOTAD_SIM_VERBOSE=1 prints its steps,
//! QUOTAD_SIM_TRACE=1 with RUST_LOG=quotad=debug the crate's logs); QUOTAD_SIM_STEPS
//! (default 250) steps per seed; QUOTAD_SIM_THREADS workers (default: twice the cores);
//! QUOTAD_SIM_DISABLE=a,b turns fault classes off (request_loss, response_loss, duplicate,
//! stale, partition, crash, restart) to narrow a failure down; QUOTAD_SIM_FINGERPRINTS=1
//! prints each seed's history fingerprint (two runs must print the same).

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

#[path = "sim/model.rs"]
mod model;
#[path = "sim/net.rs"]
mod net;
#[path = "sim/rng.rs"]
mod rng;
#[path = "sim/world.rs"]
mod world;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use world::{Sim, SimConfig, Stats};

const DEFAULT_SEEDS: u64 = 1000;
const DEFAULT_STEPS: usize = 250;
/// Failing seeds reported in full; the rest by number only.
const FAILURES_SHOWN: usize = 3;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

struct Plan {
    seeds: Vec<u64>,
    steps: usize,
    threads: usize,
    disabled: Vec<String>,
    single: bool,
    verbose: bool,
    /// Print each seed's history fingerprint (QUOTAD_SIM_FINGERPRINTS=1), to find a seed
    /// whose run differs between two runs.
    fingerprints: bool,
}

impl Plan {
    fn from_env() -> Plan {
        let single = env_u64("QUOTAD_SIM_SEED");
        let seeds = match single {
            Some(s) => vec![s],
            None => {
                let start = env_u64("QUOTAD_SIM_SEED_START").unwrap_or(1);
                let n = env_u64("QUOTAD_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
                (start..start + n).collect()
            }
        };
        // Twice the cores: a seed spends much of its time waiting on its journal writers
        // and SQLite's blocking threads.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Plan {
            seeds,
            steps: env_u64("QUOTAD_SIM_STEPS").map_or(DEFAULT_STEPS, |s| s as usize),
            threads: env_u64("QUOTAD_SIM_THREADS").map_or(2 * cores, |t| t.max(1) as usize),
            disabled: std::env::var("QUOTAD_SIM_DISABLE")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            single: single.is_some(),
            verbose: single.is_some() && std::env::var("QUOTAD_SIM_VERBOSE").is_ok(),
            fingerprints: std::env::var("QUOTAD_SIM_FINGERPRINTS").is_ok(),
        }
    }

    /// The exact command that replays `seed` alone, with the knobs that shaped this run.
    fn replay(&self, seed: u64) -> String {
        let mut env = format!("QUOTAD_SIM_SEED={seed}");
        if self.steps != DEFAULT_STEPS {
            env += &format!(" QUOTAD_SIM_STEPS={}", self.steps);
        }
        if !self.disabled.is_empty() {
            env += &format!(" QUOTAD_SIM_DISABLE={}", self.disabled.join(","));
        }
        format!("{env} cargo test --test simulation -- --nocapture")
    }
}

/// Files of one seed: in /dev/shm when there is one (fsync is then nearly free), removed
/// when the seed ends, whatever the outcome.
struct SeedDir(PathBuf);

impl SeedDir {
    fn new(seed: u64) -> SeedDir {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("quotad-sim-{}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("seed directory");
        SeedDir(dir)
    }
}

impl Drop for SeedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    match p.downcast::<String>() {
        Ok(s) => *s,
        Err(p) => match p.downcast::<&str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(non-string panic)".to_owned(),
        },
    }
}

/// Runs one seed on its own single-threaded runtime: Ok(stats) or Err(what failed).
fn run_seed(plan: &Plan, seed: u64) -> Result<Stats, String> {
    let dir = SeedDir::new(seed);
    let cfg = SimConfig {
        seed,
        steps: plan.steps,
        disabled: plan.disabled.clone(),
        verbose: plan.verbose,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let path = dir.0.clone();
    let r = catch_unwind(AssertUnwindSafe(|| {
        rt.block_on(async move { Sim::new(cfg, path).await.run().await })
    }));
    drop(rt);
    r.map_err(panic_text)
}

/// One line over all seeds; the counters are those of the seeds that passed.
fn summary(s: &Stats, failed: usize, secs: f64) -> String {
    let denied: Vec<String> = s.denied.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let n = &s.net;
    [
        format!(
            "simulation: {} seeds, {failed} failed, {} steps in {secs:.1} s",
            s.seeds as usize + failed,
            s.steps
        ),
        format!(
            "passed: {} fail-open seeds, {} fleet seeds (8-12 sidecars on small accounts)",
            s.fail_open_seeds, s.fleet_seeds
        ),
        format!(
            "liveness: {} payable Reserves over a working link, {} admitted at once, {} after \
             one sync round of every sidecar, {} sent again while the network failed or the \
             money went, 0 left denied; {} more excused by the network; {} denials checked \
             for a truthful `available`",
            s.liveness.payable,
            s.liveness.admitted_at_once,
            s.liveness.admitted_after_sync,
            s.liveness.retry_excused,
            s.liveness.excused_network,
            s.liveness.truthful_checked
        ),
        format!(
            "reserves admitted {} ({} fail-open), denied {} [{}], retried {}",
            s.admitted,
            s.admitted_fail_open,
            s.denied.values().sum::<u64>(),
            denied.join(", "),
            s.reserve_retries
        ),
        format!(
            "commits {} (retried {}), releases {}, refused as expired {}, refused with the \
             ledger unavailable {}; admits {}",
            s.commits,
            s.commit_retries,
            s.releases,
            s.expired_refused,
            s.unavailable_refused,
            s.admits
        ),
        format!(
            "crashes {}, graceful restarts {}, partitions {}; top-ups {}, coupons {}",
            s.crashes, s.graceful_restarts, s.partitions, s.topups, s.coupons
        ),
        format!(
            "net: {} calls, {} partition drops, {} requests lost, {} responses lost, {} \
             duplicated, {} stale delivered",
            n.calls,
            n.partition_drops,
            n.request_lost,
            n.response_lost,
            n.duplicated,
            n.stale_delivered
        ),
        format!(
            "max outstanding/payable {} (fail-open seeds may exceed 1), max fail-open by one \
             sidecar on one account {} budgets, overruns allowed for presumed-gone sidecars \
             {} (max {})",
            s.max_ratio, s.max_fail_open_budgets, s.silent_overruns, s.max_silent_overrun
        ),
        format!("fingerprint {:016x}", s.fingerprint),
    ]
    .join("; ")
}

#[test]
fn simulation() {
    let plan = Plan::from_env();
    if std::env::var("QUOTAD_SIM_TRACE").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    // Failures are collected and reported below; the default hook would print every
    // failing seed's panic as it happens.
    if !plan.single {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let total = Mutex::new(Stats::default());
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..plan.threads.min(plan.seeds.len()).max(1) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(&seed) = plan.seeds.get(k) else {
                        break;
                    };
                    match run_seed(&plan, seed) {
                        Ok(s) => {
                            if plan.fingerprints {
                                println!("seed {seed} fingerprint {:016x}", s.fingerprint);
                            }
                            total.lock().unwrap().add(&s)
                        }
                        Err(e) => failures.lock().unwrap().push((seed, e)),
                    }
                }
            });
        }
    });
    if !plan.single {
        let _ = std::panic::take_hook();
    }
    let total = total.into_inner().unwrap();
    let mut failures = failures.into_inner().unwrap();
    println!(
        "{}",
        summary(&total, failures.len(), started.elapsed().as_secs_f64())
    );
    failures.sort_by_key(|(seed, _)| *seed);
    if failures.is_empty() {
        return;
    }
    let mut report = format!(
        "{} of {} seeds failed: {:?}\n",
        failures.len(),
        plan.seeds.len(),
        failures.iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    for (seed, e) in failures.iter().take(FAILURES_SHOWN) {
        report += &format!(
            "\n--- seed {seed} failed; replay exactly with:\n    {}\n{e}\n",
            plan.replay(*seed)
        );
    }
    for (seed, e) in failures.iter().skip(FAILURES_SHOWN) {
        let first = e.lines().next().unwrap_or("");
        report += &format!("seed {seed}: {first}  [replay: {}]\n", plan.replay(*seed));
    }
    panic!("{report}");
}
