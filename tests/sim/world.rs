//! The simulated world: one ledger (SQLite), a few sidecars (each an `Engine` with its own
//! journal and id) reaching it through the `SimNet`, one `ManualClock` for all, and the
//! model of what was acknowledged. `Sim::run` draws one action at a time from the seed's
//! RNG and awaits it, checking what the answer may be against the model as it goes;
//! `Sim::finish` heals the network, drains every journal and audits the ledger.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use quotad::billing::{Catalog, GrantKind, Money, Resource, ResourceSet};
use quotad::clock::{Clock, ManualClock, SharedClock};
use quotad::engine::sync::{DEFAULT_SYNC_BATCH_MAX, DEFAULT_SYNC_INTERVAL_MS};
use quotad::engine::{Engine, EngineConfig, EngineError, LeasingConfig};
use quotad::journal::{DEFAULT_JOURNAL_BATCH_MAX, DEFAULT_JOURNAL_QUEUE_MAX, Journal};
use quotad::ledger::sqlite::SqliteStore;
use quotad::ledger::{LeaseConfig, Ledger, LedgerApi, LedgerError};
use rust_decimal::Decimal;

use crate::model::{Model, ModelAccount, ModelGrant};
use crate::net::{Faults, NetStats, SimNet};
use crate::rng::Rng;

#[path = "actions.rs"]
mod actions;
#[path = "audit.rs"]
mod audit;
#[path = "liveness.rs"]
mod liveness;

/// 2026-11-01T00:00:00Z, as in the black-box tests.
pub const T0_MS: i64 = 1_793_491_200_000;
const DAY_MS: i64 = 86_400_000;
const A10: &str = "gpu.shared.a10";
/// Settled reservations are forgotten after this (short, so that pruning happens).
const SETTLED_RETENTION_MS: i64 = 60_000;
/// The sync loop's tick (engine::sync::DEFAULT_SYNC_INTERVAL_MS).
const SYNC_INTERVAL_MS: i64 = DEFAULT_SYNC_INTERVAL_MS as i64;
/// Steps of history kept for a failure report.
const LOG_KEPT: usize = 60;

/// Everything a seed decides before the first step, plus the knobs from the environment.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub steps: usize,
    /// Fault classes switched off (QUOTAD_SIM_DISABLE): request_loss, response_loss,
    /// duplicate, stale, partition, crash, restart.
    pub disabled: Vec<String>,
    /// Print every step (single-seed runs with QUOTAD_SIM_VERBOSE=1).
    pub verbose: bool,
}

impl SimConfig {
    fn off(&self, what: &str) -> bool {
        self.disabled.iter().any(|d| d == what)
    }
}

/// Counters of one seed, summed over all seeds for the summary line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub seeds: u64,
    pub fail_open_seeds: u64,
    pub steps: u64,
    pub admitted: u64,
    pub admitted_fail_open: u64,
    pub denied: BTreeMap<&'static str, u64>,
    pub commits: u64,
    pub commit_retries: u64,
    pub reserve_retries: u64,
    pub releases: u64,
    pub expired_refused: u64,
    pub unavailable_refused: u64,
    pub admits: u64,
    pub crashes: u64,
    pub graceful_restarts: u64,
    pub partitions: u64,
    pub topups: u64,
    pub coupons: u64,
    pub net: NetStats,
    pub max_ratio: Decimal,
    /// Largest fail-open amount one sidecar admitted on one account over the run, across
    /// its restarts, in fail-open budgets.
    pub max_fail_open_budgets: Decimal,
    /// Overspends within G1's documented exception (sidecars silent past hold_grace_ms).
    pub silent_overruns: u64,
    pub max_silent_overrun: Decimal,
    /// Sum of the seeds' history fingerprints: equal across runs of the same seeds, or the
    /// simulation is not deterministic.
    pub fingerprint: u64,
    /// Seeds with many sidecars sharing small accounts.
    pub fleet_seeds: u64,
    /// Liveness (G7): denials of work the model says the account could pay, and what came
    /// of each (see `sim/liveness.rs`).
    pub liveness: liveness::LivenessStats,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.fail_open_seeds += o.fail_open_seeds;
        self.steps += o.steps;
        self.admitted += o.admitted;
        self.admitted_fail_open += o.admitted_fail_open;
        for (k, v) in &o.denied {
            *self.denied.entry(k).or_default() += v;
        }
        self.commits += o.commits;
        self.commit_retries += o.commit_retries;
        self.reserve_retries += o.reserve_retries;
        self.releases += o.releases;
        self.expired_refused += o.expired_refused;
        self.unavailable_refused += o.unavailable_refused;
        self.admits += o.admits;
        self.crashes += o.crashes;
        self.graceful_restarts += o.graceful_restarts;
        self.partitions += o.partitions;
        self.topups += o.topups;
        self.coupons += o.coupons;
        self.net.calls += o.net.calls;
        self.net.partition_drops += o.net.partition_drops;
        self.net.request_lost += o.net.request_lost;
        self.net.response_lost += o.net.response_lost;
        self.net.duplicated += o.net.duplicated;
        self.net.stale_delivered += o.net.stale_delivered;
        self.max_ratio = self.max_ratio.max(o.max_ratio);
        self.max_fail_open_budgets = self.max_fail_open_budgets.max(o.max_fail_open_budgets);
        self.silent_overruns += o.silent_overruns;
        self.max_silent_overrun = self.max_silent_overrun.max(o.max_silent_overrun);
        self.fingerprint = self.fingerprint.wrapping_add(o.fingerprint);
        self.fleet_seeds += o.fleet_seeds;
        self.liveness.add(&o.liveness);
    }
}

struct Sidecar {
    id: String,
    journal_path: PathBuf,
    engine: Option<Arc<Engine>>,
    /// Our own handle on the engine's journal, to join its writer thread after a crash.
    journal: Option<Arc<Journal>>,
    /// The background sync loop (`engine::sync::run`), played by the simulation: its next
    /// tick, and whether its last sync failed (it then waits for the tick instead of
    /// waking on new usage).
    next_tick_ms: i64,
    failing: bool,
    /// Starts so far: the engine's fail-open budget is per process.
    incarnation: u32,
}

pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    clock: Arc<ManualClock>,
    catalog: Arc<Catalog>,
    ledger: Arc<Ledger>,
    net: Arc<SimNet>,
    engine_cfg: EngineConfig,
    sidecars: Vec<Sidecar>,
    model: Model,
    stats: Stats,
    next_id: u64,
    step: usize,
    log: VecDeque<String>,
    /// One line describing the seed's configuration, for failure reports.
    setup: String,
    /// Fail-open amounts admitted, by (sidecar, incarnation, account).
    fail_open: BTreeMap<(usize, u32, usize), Decimal>,
    /// Many sidecars (8 to 12) share small accounts, and jobs are small against them.
    fleet: bool,
}

/// FNV-1a, to fingerprint a run's history: the same seed must give the same history.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

fn money(d: Decimal) -> Money {
    Money::from_decimal(d)
}

/// An amount in cents between `lo` and `hi`.
fn cents(rng: &mut Rng, lo: i64, hi: i64) -> Decimal {
    Decimal::new(rng.range(lo, hi), 2)
}
impl Sim {
    /// Builds the world for `cfg.seed` under `dir`: ledger, accounts, sidecars.
    pub async fn new(cfg: SimConfig, dir: PathBuf) -> Sim {
        let mut rng = Rng::new(cfg.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x51_4D);
        let clock = ManualClock::new(T0_MS);
        let catalog = Arc::new(Catalog::default_catalog().expect("default catalog"));
        let lease = LeaseConfig {
            ttl_ms: rng.range(1_000, 4_000),
            hold_grace_ms: rng.range(5_000, 15_000),
            fleet: true,
        };
        let store = SqliteStore::open(&dir.join("ledger.db")).expect("ledger store");
        let ledger = Arc::new(Ledger::new(
            Arc::new(store),
            catalog.clone(),
            clock.clone(),
            lease,
        ));
        let faults = Faults::draw(&mut rng, &cfg.disabled);
        let net = Arc::new(SimNet::new(
            ledger.clone(),
            clock.clone(),
            rng.fork(),
            faults,
        ));
        // One seed in four is a fleet: many sidecars on a few small accounts.
        let fleet = cfg.seed % 4 == 2;
        let n_sidecars = if fleet {
            rng.range(8, 12) as usize
        } else {
            rng.range(3, 4) as usize
        };
        // One seed in five runs fail-open: a budget per account on every sidecar.
        let fail_open = if cfg.seed.is_multiple_of(5) {
            [Decimal::new(5, 2), Decimal::new(3, 1), Decimal::ONE][rng.index(3)]
        } else {
            Decimal::ZERO
        };
        let engine_cfg = EngineConfig {
            leasing: LeasingConfig {
                lease_whole_account: false,
                lease_want_min: money(Decimal::new(5, 1)),
                lease_renew_before_ms: lease.ttl_ms / 2,
                lease_active_ms: 60_000,
                // Real time: the SimNet answers at once; this must never fire.
                lease_request_timeout_ms: 60_000,
                // Nothing runs beside a step: the other sidecars' syncs are steps of their
                // own (see `sim/liveness.rs`), so a request must not wait for them.
                lease_recall_wait_ms: 0,
                ..LeasingConfig::default()
            },
            hold_ttl_default_ms: 10_000,
            settled_retention_ms: SETTLED_RETENTION_MS,
            fail_open_default: money(fail_open),
            ..EngineConfig::default()
        };
        let setup = format!(
            "sidecars {n_sidecars}{}, lease {lease:?}, fail-open budget {fail_open}, faults {faults:?}",
            if fleet { " (fleet)" } else { "" }
        );
        let mut sim = Sim {
            cfg,
            rng,
            clock,
            catalog,
            ledger,
            net,
            engine_cfg,
            sidecars: Vec::new(),
            model: Model {
                overspend_allowed: fail_open * Decimal::from(n_sidecars as u64),
                ..Model::default()
            },
            stats: Stats {
                seeds: 1,
                fingerprint: 0xCBF2_9CE4_8422_2325,
                fail_open_seeds: u64::from(!fail_open.is_zero()),
                fleet_seeds: u64::from(fleet),
                ..Stats::default()
            },
            next_id: 0,
            step: 0,
            log: VecDeque::new(),
            setup,
            fail_open: BTreeMap::new(),
            fleet,
        };
        for i in 0..4 {
            sim.create_account(i).await;
        }
        for i in 0..n_sidecars {
            sim.sidecars.push(Sidecar {
                id: format!("sidecar-{i}"),
                journal_path: dir.join(format!("journal-{i}.log")),
                engine: None,
                journal: None,
                next_tick_ms: T0_MS,
                failing: false,
                incarnation: 0,
            });
            sim.start_sidecar(i).await;
        }
        sim
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn new_id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:05}", self.next_id)
    }

    fn engine(&self, i: usize) -> Arc<Engine> {
        self.sidecars[i].engine.clone().expect("sidecar is running")
    }

    fn note(&mut self, line: String) {
        if self.cfg.verbose {
            println!("[t+{:>7}] {:>4}: {line}", self.now() - T0_MS, self.step);
        }
        self.stats.fingerprint = fnv(self.stats.fingerprint, line.as_bytes());
        if self.log.len() >= LOG_KEPT {
            self.log.pop_front();
        }
        self.log.push_back(format!(
            "#{:<4} t+{:<7} {line}",
            self.step,
            self.now() - T0_MS
        ));
    }

    /// Fails the seed with what was violated and the recent history.
    fn fail(&self, what: String) -> ! {
        let history: Vec<&str> = self.log.iter().map(String::as_str).collect();
        panic!(
            "{what}\n  at step {} of {}, t+{} ms\n  setup: {}\n  last steps:\n    {}",
            self.step,
            self.cfg.steps,
            self.now() - T0_MS,
            self.setup,
            history.join("\n    ")
        )
    }

    async fn create_account(&mut self, i: usize) {
        let account_id = format!("acct-{i}");
        let balance = if self.rng.chance(200) {
            Decimal::ZERO
        } else if self.fleet {
            cents(&mut self.rng, 5, 100)
        } else {
            cents(&mut self.rng, 50, 600)
        };
        self.ledger
            .create_account(&account_id, money(balance))
            .await
            .expect("create account");
        self.model.accounts.push(ModelAccount {
            account_id,
            initial_balance: balance,
            topups: Decimal::ZERO,
            grants: Vec::new(),
            committed: Decimal::ZERO,
        });
        if self.rng.chance(600) {
            self.coupon_on(i, true).await;
        }
    }

    /// Gives account `i` a coupon that outlives the run: an expiring grant would
    /// legitimately move later charges onto the balance and blur the checks.
    async fn coupon_on(&mut self, i: usize, covers_gpu: bool) {
        let amount = cents(&mut self.rng, 50, 400);
        let grant_id = self.new_id("coupon");
        let now = self.now();
        let expires_at_ms = now + 30 * DAY_MS + self.rng.range(0, 3) * DAY_MS;
        let covers = if covers_gpu {
            ResourceSet::ANY
        } else {
            ResourceSet::of(Resource::Storage)
        };
        let account_id = self.model.accounts[i].account_id.clone();
        self.ledger
            .grant_credit(
                &account_id,
                &grant_id,
                GrantKind::Coupon,
                covers,
                money(amount),
                expires_at_ms,
            )
            .await
            .expect("grant credit");
        self.net.note_grant(&account_id, &grant_id);
        self.model.accounts[i].grants.push(ModelGrant {
            grant_id: grant_id.clone(),
            amount,
            starts_at_ms: now,
            expires_at_ms,
            covers_gpu,
        });
        self.note(format!(
            "coupon {grant_id} of {amount} on {account_id} (gpu: {covers_gpu})"
        ));
    }

    async fn start_sidecar(&mut self, i: usize) {
        let (journal, recovered) = Journal::open(
            &self.sidecars[i].journal_path,
            DEFAULT_JOURNAL_QUEUE_MAX,
            DEFAULT_JOURNAL_BATCH_MAX,
        )
        .expect("journal opens");
        let journal = Arc::new(journal);
        let clock: SharedClock = self.clock.clone();
        let ledger: Arc<dyn LedgerApi> = self.net.clone();
        self.net.begin_start();
        let engine = Engine::start(
            self.engine_cfg.clone(),
            self.catalog.clone(),
            clock,
            journal.clone(),
            recovered,
            ledger,
            self.sidecars[i].id.clone(),
        )
        .await
        .unwrap_or_else(|e| self.fail(format!("sidecar-{i} does not start: {e}")));
        self.net.end_start();
        // Sorted: the calls came in hash-map order.
        let mut notes = self.net.take_notes();
        notes.sort();
        for line in notes {
            self.note(line);
        }
        self.sidecars[i].engine = Some(engine);
        self.sidecars[i].journal = Some(journal);
        self.sidecars[i].next_tick_ms = self.now() + SYNC_INTERVAL_MS;
        self.sidecars[i].failing = false;
        self.sidecars[i].incarnation += 1;
    }

    /// One round of sidecar `i`'s sync loop, as `engine::sync::run` does it when it wakes:
    /// sync until a batch comes back short or a sync fails.
    async fn sync_loop_round(&mut self, i: usize, why: &str) {
        let engine = self.engine(i);
        let mut rounds = 0;
        loop {
            rounds += 1;
            match engine.sync_once(DEFAULT_SYNC_BATCH_MAX).await {
                // The answer asked for another round (lease to give back): the loop runs
                // again at once, as `engine::sync::run` does.
                Ok(n) if n < DEFAULT_SYNC_BATCH_MAX && rounds < 8 && engine.take_sync_wanted() => {
                    if n > 0 {
                        self.note(format!(
                            "  sync loop sidecar-{i} ({why}): {n} usage acknowledged"
                        ));
                    }
                }
                Ok(n) if n < DEFAULT_SYNC_BATCH_MAX => {
                    if n > 0 {
                        self.note(format!(
                            "  sync loop sidecar-{i} ({why}): {n} usage acknowledged"
                        ));
                    }
                    self.sidecars[i].failing = false;
                    return;
                }
                Ok(_) => {}
                Err(EngineError::Ledger(LedgerError::Unavailable(e))) => {
                    self.note(format!("  sync loop sidecar-{i} ({why}): {e}"));
                    self.sidecars[i].failing = true;
                    return;
                }
                Err(e) => self.fail(format!("sync loop of sidecar-{i}: {e}")),
            }
        }
    }

    /// The sync loops that something woke before their tick (lease to give back): they run
    /// at once, as `engine::sync::run` does on `Engine::sync_wanted`.
    async fn woken_sync_loops(&mut self) {
        for i in 0..self.sidecars.len() {
            if !self.sidecars[i].failing && self.engine(i).take_sync_wanted() {
                self.sync_loop_round(i, "woken").await;
            }
        }
    }

    /// The sync loops of every sidecar whose tick came while the clock moved: sweep, then
    /// sync. A loop that missed several ticks runs once (MissedTickBehavior::Delay).
    async fn tick_sync_loops(&mut self) {
        let now = self.now();
        for i in 0..self.sidecars.len() {
            if self.sidecars[i].next_tick_ms > now {
                continue;
            }
            self.sidecars[i].next_tick_ms = now + SYNC_INTERVAL_MS;
            self.engine(i).sweep(now);
            self.sync_loop_round(i, "tick").await;
        }
    }

    /// Stops sidecar `i`: gracefully (flush, give leases back, close the journal) or as a
    /// crash (drop everything; only what was durable survives).
    async fn stop_sidecar(&mut self, i: usize, graceful: bool) {
        let engine = self.sidecars[i].engine.take().expect("running");
        let journal = self.sidecars[i].journal.take().expect("running");
        if graceful {
            let flushed = engine.flush().await;
            let released = engine.release_leases().await;
            self.note(format!(
                "graceful stop sidecar-{i}: flush {:?}, release_leases {:?}",
                flushed.err().map(|e| e.to_string()),
                released.err().map(|e| e.to_string())
            ));
        } else {
            self.note(format!(
                "crash sidecar-{i} (outbox {})",
                journal.outbox_len()
            ));
        }
        if Arc::strong_count(&engine) != 1 {
            self.fail(format!(
                "sidecar-{i}: something else still holds the engine"
            ));
        }
        drop(engine);
        // Steps are sequential, so every acknowledged operation is already durable; what
        // may still be queued is housekeeping (trims, expiries, prunes). Dropping the
        // journal lets its writer drain that queue on its own; closing it does the same and
        // also waits for the writer thread, so the next open reads a settled file and the
        // run stays deterministic.
        journal.close().await;
    }

    /// Runs the seed's steps, then the final audit.
    pub async fn run(mut self) -> Stats {
        for step in 0..self.cfg.steps {
            self.step = step;
            self.play_step().await;
            self.woken_sync_loops().await;
            for line in self.net.take_notes() {
                self.note(line);
            }
            self.stats.steps += 1;
        }
        self.step = self.cfg.steps;
        self.finish().await;
        self.stats.net = self.net.stats();
        self.stats.max_ratio = self.model.max_ratio;
        self.shutdown().await;
        self.stats.clone()
    }

    /// Stops every sidecar for good and waits for the journal writers.
    async fn shutdown(&mut self) {
        for s in &mut self.sidecars {
            drop(s.engine.take());
            if let Some(j) = s.journal.take() {
                j.close().await;
            }
        }
    }
}
