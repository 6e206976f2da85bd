//! Benchmarks of the sidecar's hot path, for the engine targets of DESIGN.md section 5
//! ("a reserve+commit pair in-process costs at most 3x a bare dashmap get+update on the same
//! keys; >= 1M pairs/s on one core"). `cargo bench --bench engine`.
//!
//! - `billing/*`: the pure rules every charge runs. `burn_down/{N}_grants` (N = 1, 10, 100)
//!   pays a small cost from N valid money grants with distinct expiries (filter, sort by
//!   expiry, take: what every Commit does), on grants cloned outside the timed part so each
//!   iteration starts fresh. `price_cost` prices varying GPU-ms quantities of
//!   `gpu.shared.a10`.
//! - `engine/*`: a real `Engine` (ledger on `SqliteStore` and journal, both in a temporary
//!   directory; default catalog; wall clock) over 1,000 accounts, all cached before
//!   measuring. `reserve_commit_pair` is one client's latency: Reserve then Commit of a fresh
//!   reservation on a rotating account, each waiting for its fsync'ed group commit.
//!   `reserve_commit_pair_x64_concurrent` runs 64 pairs at once on 64 accounts, so one fsync
//!   covers many operations (throughput counted in pairs). `admit` is the read-only check on
//!   a cached account, with no journal write: the in-memory decision alone.
//!   `stream_report_1_job` is one usage stream (`start_work`, then `report` with seq 1, 2,
//!   ... on the same job): each report is charged, awaits its own journal group commit, and
//!   holds the next interval. `stream_report_x8_concurrent` runs 8 such jobs at once on 8
//!   accounts (throughput counted in reports). The stream limits are raised so that they
//!   never refuse, and every report must be answered CONTINUE.
//! - `journal/*`: the journal alone, in its own file on the same disk. `submit_awaited` is
//!   one reservation row submitted and awaited: one append to the journal file and its
//!   fdatasync (`full` mode), the fsync floor under every acknowledged operation.
//!   `pair_entries_awaited` is what a pair journals, without the engine: the open row,
//!   awaited, then the committed row with its usage record, awaited.
//!   `submit_awaited_x64_concurrent` submits 64 rows at once, so they share group commits.
//! - `baseline/dashmap_get_update`: a bare `DashMap<String, Decimal>` `get_mut` and debit on
//!   the same 1,000 rotating keys. The design states the engine target relative to it, so it
//!   runs in the same process on the same machine, as the floor the engine numbers are read
//!   against.
//!
//! There is no configuration that takes the journal's fsync out of the engine, so none is
//! faked: the journal benches measure the disk part alone, and the engine and journal
//! benches count the process's CPU time per operation (Linux: `/proc/self/task/*/schedstat`),
//! split between the journal writer thread (encoding, the live state, and the kernel's write
//! and fsync paths)
//! and every other thread (the engine's code, the tokio runtime, the bench loop).
//!
//! No sync loop runs: usage stays in the outbox and settled holds stay in memory, so
//! `holds_max` and `outbox_max` are raised to never refuse work. The sync loop is also what
//! renews leases off the hot path in `quotad serve`; here the ledger grants leases for an
//! hour instead, so that no measured call asks the ledger for one.
//!
//! Timing: 1 s warm-up, 3 s measurement, 20 samples, no plots (flags override; `--quick`
//! inflates the nanosecond benches; `--plotting-backend plotters` draws the HTML report).
//! The temporary directories honour `TMPDIR`: fsync on that disk dominates the pairs and
//! the stream reports, and a disk shared with other work makes those numbers noisy.
//!
//! After criterion, a summary reads the estimates criterion wrote in this run (its point
//! estimate: the slope, else the mean), prints the ratio engine pair / dashmap floor,
//! pairs/s, the fsync floor and the CPU split, and writes them as JSON to
//! `$CARGO_TARGET_DIR/bench-results/engine.json` (default `target/`). A bench left out by a
//! filter is `null` there, never a number from an earlier run.

// Benches fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use dashmap::DashMap;
use rust_decimal::Decimal;
use tokio::task::JoinSet;

use quotad::billing::{
    Catalog, Grant, GrantKind, GrantUnit, Money, Resource, ResourceSet, burn_down,
};
use quotad::clock::{Clock, SharedClock, SystemClock};
use quotad::engine::work::{Work, WorkConfig, WorkKey};
use quotad::engine::{Engine, EngineConfig, LeasingConfig, ReserveRequest};
use quotad::journal::{
    DEFAULT_JOURNAL_BATCH_MAX, DEFAULT_JOURNAL_QUEUE_MAX, Entry, HoldState, Journal, JournalSync,
    ReservationRow,
};
use quotad::ledger::sqlite::SqliteStore;
use quotad::ledger::{EMBEDDED_SIDECAR_ID, LeaseConfig, Ledger, UsageRecord};

/// The journal's durability for the engine and journal benches: `full` (the default, as
/// `quotad serve` runs) or, with `QUOTAD_BENCH_JOURNAL_SYNC=normal`, `normal` (no fsync
/// per group; what is left is the CPU of the write path).
fn journal_sync() -> JournalSync {
    match std::env::var("QUOTAD_BENCH_JOURNAL_SYNC").as_deref() {
        Ok("normal") => JournalSync::Normal,
        _ => JournalSync::Full,
    }
}

const A10: &str = "gpu.shared.a10";
const ACCOUNTS: usize = 1_000;
const CONCURRENT: u64 = 64;
/// Usage streams run at once in `stream_report_x8_concurrent`.
const STREAM_JOBS: u64 = 8;
const DAY_MS: i64 = 86_400_000;
/// GPU-milliseconds a Reserve holds and the following Commit charges.
const RESERVE_MS: u64 = 1_000;
const COMMIT_MS: u64 = 900;
/// GPU-milliseconds each stream report charges (and so the next interval held).
const REPORT_MS: u64 = 1_000;
/// Leases long enough that none expires during a run (no sync loop renews them).
const BENCH_LEASE_TTL_MS: i64 = 3_600_000;

/// The design targets (DESIGN.md section 5).
const TARGET_PAIR_OVER_DASHMAP: f64 = 3.0;
const TARGET_PAIRS_PER_S: f64 = 1_000_000.0;

fn account_ids() -> Vec<String> {
    (0..ACCOUNTS).map(|i| format!("acct-{i:04}")).collect()
}

/// `n` valid money grants covering GPU time, with distinct expiries in scrambled order
/// (37 is coprime to every `n` used), so the earliest-expiry-first sort has work to do.
fn money_grants(n: usize, now_ms: i64) -> Vec<Grant> {
    (0..n)
        .map(|i| Grant {
            grant_id: format!("g{i:03}"),
            kind: GrantKind::Plan,
            covers: ResourceSet::COMPUTE,
            unit: GrantUnit::Money,
            quota: Decimal::from(100),
            remaining: Decimal::from(100),
            starts_at_ms: now_ms - DAY_MS,
            expires_at_ms: now_ms + ((i * 37) % n + 1) as i64 * DAY_MS,
            created_at_ms: now_ms - DAY_MS,
            source: "bench".to_owned(),
            stackable: true,
        })
        .collect()
}

/// CPU time of this process so far, in nanoseconds: (the journal writer threads, every
/// other thread). Linux: the first field of each `/proc/self/task/*/schedstat`, the
/// thread's name from `comm`; None where that is not available. Threads that exited are
/// not counted, so it is read around work that starts and ends no thread.
fn process_cpu_ns() -> Option<(u64, u64)> {
    let (mut journal, mut rest) = (0u64, 0u64);
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let task = task.ok()?.path();
        // A thread may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(task.join("schedstat")) else {
            continue;
        };
        let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if name.trim_end() == "quotad-journal" {
            journal += ns;
        } else {
            rest += ns;
        }
    }
    Some((journal, rest))
}

/// CPU time counted per bench over all its calls (warm-up included: the same work, so the
/// ratios are the same).
#[derive(Clone, Copy)]
struct CpuCount {
    name: &'static str,
    /// The journal writer thread: SQLite, and the kernel's write and fsync paths.
    journal_ns: u64,
    /// Every other thread: the engine's code, the tokio runtime, the bench's own loop.
    rest_ns: u64,
    ops: u64,
}

impl CpuCount {
    fn per_op(&self, ns: u64) -> Option<f64> {
        (self.ops > 0).then(|| ns as f64 / self.ops as f64)
    }
}

static CPU: Mutex<Vec<CpuCount>> = Mutex::new(Vec::new());

/// Runs `work` (which returns its own timed duration and operation count), adding the
/// process CPU time it took to bench `name`'s total.
async fn cpu_counted<F>(name: &'static str, work: F) -> Duration
where
    F: Future<Output = (Duration, u64)>,
{
    let before = process_cpu_ns();
    let (elapsed, ops) = work.await;
    if let (Some(b), Some(a)) = (before, process_cpu_ns())
        && let Ok(mut cpu) = CPU.lock()
    {
        let journal_ns = a.0.saturating_sub(b.0);
        let rest_ns = a.1.saturating_sub(b.1);
        match cpu.iter_mut().find(|c| c.name == name) {
            Some(c) => {
                c.journal_ns += journal_ns;
                c.rest_ns += rest_ns;
                c.ops += ops;
            }
            None => cpu.push(CpuCount {
                name,
                journal_ns,
                rest_ns,
                ops,
            }),
        }
    }
    elapsed
}

fn billing_benches(c: &mut Criterion) {
    let now_ms = SystemClock.now_ms();
    let cost = Money::from_decimal(Decimal::new(6, 4));
    let balance = Money::from_decimal(Decimal::from(1_000));
    let mut g = c.benchmark_group("billing");
    g.throughput(Throughput::Elements(1));
    for n in [1, 10, 100] {
        let grants = money_grants(n, now_ms);
        g.bench_function(format!("burn_down/{n}_grants"), |b| {
            b.iter_batched(
                || (grants.clone(), balance),
                |(mut grants, mut balance)| {
                    let d = burn_down(
                        &mut grants,
                        &mut balance,
                        Resource::GpuShared,
                        black_box(cost),
                        now_ms,
                    );
                    // Returned so that dropping them is not timed.
                    (grants, balance, d)
                },
                BatchSize::SmallInput,
            )
        });
    }

    let catalog = Catalog::default_catalog().expect("default catalog");
    let price = catalog.price(A10, Resource::GpuShared).expect("a10 price");
    // From 1 ms to over a day of GPU time.
    let quantities = [1, 7, 999, 1_000, 60_000, 3_600_000, 86_400_000, 123_456_789];
    let mut i = 0;
    g.bench_function("price_cost", |b| {
        b.iter(|| {
            i = (i + 1) % quantities.len();
            price.cost(black_box(quantities[i])).expect("cost")
        })
    });
    g.finish();
}

struct Fixture {
    engine: Arc<Engine>,
    accounts: Vec<String>,
    /// Next reservation or job number; also picks the account.
    next: AtomicU64,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Arc::new(Catalog::default_catalog().expect("default catalog"));
        let clock: SharedClock = Arc::new(SystemClock);
        let store = SqliteStore::open(&dir.path().join("ledger.db")).expect("ledger store");
        let ledger = Arc::new(Ledger::new(
            Arc::new(store),
            catalog.clone(),
            clock.clone(),
            LeaseConfig {
                ttl_ms: BENCH_LEASE_TTL_MS,
                ..LeaseConfig::default()
            },
        ));
        let accounts = account_ids();
        let balance = Money::from_decimal(Decimal::from(1_000_000));
        for id in &accounts {
            ledger.create_account(id, balance).await.expect("account");
        }
        let (journal, recovered) = Journal::open_with(
            &dir.path().join("journal.log"),
            DEFAULT_JOURNAL_QUEUE_MAX,
            DEFAULT_JOURNAL_BATCH_MAX,
            journal_sync(),
        )
        .expect("journal");
        // One sidecar on its own ledger, as `quotad serve` runs embedded.
        let cfg = EngineConfig {
            holds_max: usize::MAX,
            outbox_max: usize::MAX,
            leasing: LeasingConfig {
                lease_whole_account: true,
                ..LeasingConfig::default()
            },
            work: WorkConfig {
                streams_max: usize::MAX,
                stream_reports_per_sec: u32::MAX,
                works_remembered_max: usize::MAX,
                ..WorkConfig::default()
            },
            ..EngineConfig::default()
        };
        let engine = Engine::start(
            cfg,
            catalog,
            clock,
            Arc::new(journal),
            recovered,
            ledger,
            EMBEDDED_SIDECAR_ID.to_owned(),
        )
        .await
        .expect("engine");
        // Cache every account, so that no measured call reaches the ledger.
        for id in &accounts {
            let o = engine.admit(id, Resource::GpuShared, A10, RESERVE_MS).await;
            assert!(o.expect("admit").admitted);
        }
        Fixture {
            engine,
            accounts,
            next: AtomicU64::new(0),
            _dir: dir,
        }
    }

    fn account(&self, n: u64) -> &str {
        &self.accounts[(n % ACCOUNTS as u64) as usize]
    }

    /// Reserve, then Commit, reservation `r{n}` on `account_id`.
    async fn pair(engine: &Engine, account_id: String, n: u64) {
        let reservation_id = format!("r{n}");
        let reserved = engine
            .reserve(ReserveRequest {
                account_id,
                reservation_id: reservation_id.clone(),
                resource: Resource::GpuShared,
                sku: A10.to_owned(),
                quantity: RESERVE_MS,
                ttl_ms: 0,
            })
            .await
            .expect("reserve");
        assert!(reserved.admitted, "{reserved:?}");
        engine
            .commit(&reservation_id, COMMIT_MS)
            .await
            .expect("commit");
    }

    /// Opens a usage stream for a fresh job on the `slot`-th account.
    async fn start_work(&self, slot: u64) -> Work {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.engine
            .start_work(WorkKey {
                account_id: self.account(slot).to_owned(),
                work_id: format!("job{n}"),
                resource: Resource::GpuShared,
                sku: A10.to_owned(),
            })
            .await
            .expect("start_work")
    }

    /// Reports `REPORT_MS` with seq 1..=`reports` on `work`; each must be charged and
    /// answered CONTINUE (a stopped job skips holding the next interval: cheaper, and not
    /// what is measured).
    async fn reports(engine: &Engine, work: &mut Work, reports: u64) {
        for seq in 1..=reports {
            let d = engine.report(work, seq, REPORT_MS).await.expect("report");
            assert!(d.stop.is_none() && !d.ignored, "{d:?}");
        }
    }
}

fn engine_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Set up only if an engine bench is selected.
    let fixture = OnceLock::new();
    let fx = || fixture.get_or_init(|| rt.block_on(Fixture::start()));

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.bench_function("reserve_commit_pair", |b| {
        let fx = fx();
        b.to_async(&rt).iter_custom(|iters| {
            cpu_counted("engine/reserve_commit_pair", async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let n = fx.next.fetch_add(1, Ordering::Relaxed);
                    Fixture::pair(&fx.engine, fx.account(n).to_owned(), n).await;
                }
                (started.elapsed(), iters)
            })
        })
    });
    g.bench_function("admit", |b| {
        let fx = fx();
        let mut n = 0;
        b.to_async(&rt).iter(|| {
            n += 1;
            fx.engine
                .admit(fx.account(n), Resource::GpuShared, A10, RESERVE_MS)
        })
    });
    g.throughput(Throughput::Elements(CONCURRENT));
    g.bench_function("reserve_commit_pair_x64_concurrent", |b| {
        let fx = fx();
        b.to_async(&rt).iter_custom(|iters| {
            cpu_counted("engine/reserve_commit_pair_x64_concurrent", async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let first = fx.next.fetch_add(CONCURRENT, Ordering::Relaxed);
                    let mut set = JoinSet::new();
                    for n in first..first + CONCURRENT {
                        let engine = fx.engine.clone();
                        let account_id = fx.account(n).to_owned();
                        set.spawn(async move { Fixture::pair(&engine, account_id, n).await });
                    }
                    set.join_all().await;
                }
                (started.elapsed(), iters * CONCURRENT)
            })
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("stream_report_1_job", |b| {
        let fx = fx();
        b.to_async(&rt).iter_custom(|iters| async move {
            // A fresh job per call, opened and settled outside the timed part.
            let mut work = fx.start_work(0).await;
            let elapsed = cpu_counted("engine/stream_report_1_job", async {
                let started = Instant::now();
                Fixture::reports(&fx.engine, &mut work, iters).await;
                (started.elapsed(), iters)
            })
            .await;
            fx.engine.end_work(work).await;
            elapsed
        })
    });
    g.throughput(Throughput::Elements(STREAM_JOBS));
    g.bench_function("stream_report_x8_concurrent", |b| {
        let fx = fx();
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut works = Vec::new();
            for slot in 0..STREAM_JOBS {
                works.push(fx.start_work(slot).await);
            }
            let mut ended = Vec::new();
            let elapsed = cpu_counted("engine/stream_report_x8_concurrent", async {
                let started = Instant::now();
                let mut set = JoinSet::new();
                for mut work in works {
                    let engine = fx.engine.clone();
                    set.spawn(async move {
                        Fixture::reports(&engine, &mut work, iters).await;
                        work
                    });
                }
                ended = set.join_all().await;
                (started.elapsed(), iters * STREAM_JOBS)
            })
            .await;
            for work in ended {
                fx.engine.end_work(work).await;
            }
            elapsed
        })
    });
    g.finish();
    if let Some(fx) = fixture.get() {
        rt.block_on(fx.engine.journal().close());
    }
}

/// Reservation `j{n}` as Reserve journals it (open), or as Commit does (committed).
fn journal_row(n: u64, committed: bool) -> ReservationRow {
    let now_ms = SystemClock.now_ms();
    let held = Money::from_decimal(Decimal::new(6, 4));
    ReservationRow {
        reservation_id: format!("j{n}"),
        account_id: format!("acct-{:04}", n % ACCOUNTS as u64),
        resource: Resource::GpuShared,
        sku: A10.to_owned(),
        quantity: RESERVE_MS,
        held: if committed { Money::ZERO } else { held },
        expires_at_ms: now_ms + 60_000,
        state: if committed {
            HoldState::Committed
        } else {
            HoldState::Open
        },
        charged: if committed { held } else { Money::ZERO },
        charged_quantity: if committed { COMMIT_MS } else { 0 },
        settled_at_ms: if committed { now_ms } else { 0 },
        streamed_quantity: 0,
        streamed_cost: Money::ZERO,
    }
}

/// Submits `entry` and waits until it is durable.
async fn journaled(journal: &Journal, entry: Entry) {
    let done = journal.submit(entry).expect("submit");
    done.await.expect("writer").expect("durable");
}

fn journal_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Its own file in its own temporary directory, on the same disk as the engine's.
    let fixture = OnceLock::new();
    let journal = || {
        fixture.get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let (journal, _) = Journal::open_with(
                &dir.path().join("journal.log"),
                DEFAULT_JOURNAL_QUEUE_MAX,
                DEFAULT_JOURNAL_BATCH_MAX,
                journal_sync(),
            )
            .expect("journal");
            (journal, dir)
        })
    };
    let next = AtomicU64::new(1);
    let next = &next;

    let mut g = c.benchmark_group("journal");
    g.throughput(Throughput::Elements(1));
    g.bench_function("submit_awaited", |b| {
        let (journal, _) = journal();
        b.to_async(&rt).iter_custom(|iters| {
            cpu_counted("journal/submit_awaited", async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    journaled(journal, Entry::Reservation(journal_row(n, false))).await;
                }
                (started.elapsed(), iters)
            })
        })
    });
    // What a reserve+commit pair journals, without the engine: the open row, awaited,
    // then the committed row with its usage record in one transaction, awaited.
    g.bench_function("pair_entries_awaited", |b| {
        let (journal, _) = journal();
        b.to_async(&rt).iter_custom(|iters| {
            cpu_counted("journal/pair_entries_awaited", async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    journaled(journal, Entry::Reservation(journal_row(n, false))).await;
                    let row = journal_row(n, true);
                    let usage = UsageRecord {
                        seq: n,
                        usage_id: row.reservation_id.clone(),
                        account_id: row.account_id.clone(),
                        resource: row.resource,
                        sku: row.sku.clone(),
                        quantity: row.charged_quantity,
                        cost: row.charged,
                        at_ms: row.settled_at_ms,
                    };
                    journaled(journal, Entry::Commit(row, usage)).await;
                }
                (started.elapsed(), iters)
            })
        })
    });
    g.throughput(Throughput::Elements(CONCURRENT));
    g.bench_function("submit_awaited_x64_concurrent", |b| {
        let (journal, _) = journal();
        b.to_async(&rt).iter_custom(|iters| {
            cpu_counted("journal/submit_awaited_x64_concurrent", async move {
                let started = Instant::now();
                for _ in 0..iters {
                    let first = next.fetch_add(CONCURRENT, Ordering::Relaxed);
                    let waits: Vec<_> = (first..first + CONCURRENT)
                        .map(|n| {
                            journal
                                .submit(Entry::Reservation(journal_row(n, false)))
                                .expect("submit")
                        })
                        .collect();
                    for done in waits {
                        done.await.expect("writer").expect("durable");
                    }
                }
                (started.elapsed(), iters * CONCURRENT)
            })
        })
    });
    g.finish();
    if let Some((journal, _)) = fixture.get() {
        rt.block_on(journal.close());
    }
}

fn baseline_benches(c: &mut Criterion) {
    let keys = account_ids();
    let map: DashMap<String, Decimal> = keys
        .iter()
        .map(|k| (k.clone(), Decimal::from(1_000_000)))
        .collect();
    let cost = Decimal::new(6, 4);
    let mut n = 0;
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("dashmap_get_update", |b| {
        b.iter(|| {
            n = (n + 1) % ACCOUNTS;
            let mut v = map.get_mut(keys[n].as_str()).expect("key");
            *v -= black_box(cost);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        // Plotting takes about 3 s per bench; `-- --plotting-backend plotters` draws them.
        .without_plots();
    targets = billing_benches, engine_benches, journal_benches, baseline_benches
}

fn main() {
    let started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary(started);
}

// ---- Summary: ratios and JSON, from the estimates criterion wrote in this run ----

/// Criterion's point estimate of one bench, in nanoseconds per iteration.
struct Estimate {
    ns: f64,
    lower_ns: f64,
    upper_ns: f64,
    /// Operations per iteration (the bench's throughput elements).
    elements: u64,
}

impl Estimate {
    fn per_op_ns(&self) -> f64 {
        self.ns / self.elements as f64
    }

    fn ops_per_s(&self) -> f64 {
        1e9 * self.elements as f64 / self.ns
    }
}

/// The benches the summary reads, with their operations per iteration.
const SUMMARISED: &[(&str, u64)] = &[
    ("billing/burn_down/1_grants", 1),
    ("billing/burn_down/10_grants", 1),
    ("billing/burn_down/100_grants", 1),
    ("billing/price_cost", 1),
    ("engine/reserve_commit_pair", 1),
    ("engine/admit", 1),
    ("engine/reserve_commit_pair_x64_concurrent", CONCURRENT),
    ("engine/stream_report_1_job", 1),
    ("engine/stream_report_x8_concurrent", STREAM_JOBS),
    ("journal/submit_awaited", 1),
    ("journal/pair_entries_awaited", 1),
    ("journal/submit_awaited_x64_concurrent", CONCURRENT),
    ("baseline/dashmap_get_update", 1),
];

/// Whether criterion measured and saved estimates in this invocation (not `--list`,
/// `--test`, `--profile-time`, or a plain `cargo test` run without `--bench`).
fn benchmark_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench")
        && !args.iter().any(|a| {
            a == "--list"
                || a == "--test"
                || a == "--profile-time"
                || a.starts_with("--profile-time=")
        })
}

/// The Cargo target directory: `CARGO_TARGET_DIR`, else the one this bench binary was
/// built in (`<target>/<profile>/deps/engine-<hash>`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Where criterion keeps its results (as criterion finds it).
fn criterion_dir() -> PathBuf {
    std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("criterion"))
}

/// The number after `"point_estimate":` in the first `"<stat>":{...}` object of
/// criterion's `estimates.json`, with its confidence bounds. Criterion writes this file
/// itself (no whitespace, fixed field names); parsed by hand to need no JSON dependency.
fn parse_stat(json: &str, stat: &str) -> Option<(f64, f64, f64)> {
    let start = json.find(&format!("\"{stat}\":{{"))?;
    let rest = &json[start..];
    let number = |key: &str| -> Option<f64> {
        let i = rest.find(&format!("\"{key}\":"))? + key.len() + 3;
        let s = &rest[i..];
        let end = s.find([',', '}']).unwrap_or(s.len());
        s[..end].trim().parse().ok()
    };
    Some((
        number("point_estimate")?,
        number("lower_bound")?,
        number("upper_bound")?,
    ))
}

/// This run's estimate of bench `id` (`group/function`), if criterion wrote one after
/// `since`.
fn read_estimate(dir: &Path, id: &str, elements: u64, since: SystemTime) -> Option<Estimate> {
    let (group, function) = id.split_once('/')?;
    // Criterion's file-name rule for the function part.
    let function: String = function
        .chars()
        .map(|c| match c {
            '?' | '"' | '/' | '\\' | '*' | '<' | '>' | ':' | '|' | '^' => '_',
            c => c,
        })
        .collect();
    let path = dir
        .join(group)
        .join(function)
        .join("new")
        .join("estimates.json");
    let fresh = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t >= since);
    if !fresh {
        return None;
    }
    let json = std::fs::read_to_string(&path).ok()?;
    // Criterion's typical value: the regression slope when it has one, else the mean.
    let (ns, lower_ns, upper_ns) =
        parse_stat(&json, "slope").or_else(|| parse_stat(&json, "mean"))?;
    Some(Estimate {
        ns,
        lower_ns,
        upper_ns,
        elements,
    })
}

/// A JSON number, or `null` for a value this run did not measure.
fn num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".to_owned(),
    }
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{ns:.2} ns")
    }
}

fn opt_fmt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "not measured in this run".to_owned(), f)
}

fn summary(since: SystemTime) {
    if !benchmark_mode() {
        return;
    }
    let dir = criterion_dir();
    let est: Vec<(&str, Option<Estimate>)> = SUMMARISED
        .iter()
        .map(|(id, el)| (*id, read_estimate(&dir, id, *el, since)))
        .collect();
    let get = |id: &str| {
        est.iter()
            .find(|(i, _)| *i == id)
            .and_then(|(_, e)| e.as_ref())
    };
    let cpu: Vec<CpuCount> = CPU.lock().map(|c| c.clone()).unwrap_or_default();
    let cpu_of = |id: &str| cpu.iter().find(|c| c.name == id && c.ops > 0).copied();
    // (all threads, journal writer, the rest) per operation.
    let cpu_split = |id: &str| {
        cpu_of(id).and_then(|c| {
            Some((
                c.per_op(c.journal_ns + c.rest_ns)?,
                c.per_op(c.journal_ns)?,
                c.per_op(c.rest_ns)?,
            ))
        })
    };

    let pair = get("engine/reserve_commit_pair");
    let pair64 = get("engine/reserve_commit_pair_x64_concurrent");
    let floor = get("baseline/dashmap_get_update");
    let fsync = get("journal/submit_awaited");
    let pair_entries = get("journal/pair_entries_awaited");
    let fsync64 = get("journal/submit_awaited_x64_concurrent");
    let admit = get("engine/admit");
    let report = get("engine/stream_report_1_job");
    let report8 = get("engine/stream_report_x8_concurrent");

    let ratio = pair.zip(floor).map(|(p, f)| p.per_op_ns() / f.per_op_ns());
    let ratio64 = pair64
        .zip(floor)
        .map(|(p, f)| p.per_op_ns() / f.per_op_ns());
    let pairs_per_s = pair.map(Estimate::ops_per_s);
    let pairs_per_s64 = pair64.map(Estimate::ops_per_s);
    let pair_cpu = cpu_split("engine/reserve_commit_pair");
    let pair64_cpu = cpu_split("engine/reserve_commit_pair_x64_concurrent");
    let report_cpu = cpu_split("engine/stream_report_1_job");
    let report8_cpu = cpu_split("engine/stream_report_x8_concurrent");
    let fsync_cpu = cpu_split("journal/submit_awaited");
    let pair_entries_cpu = cpu_split("journal/pair_entries_awaited");
    let pairs_per_cpu_s64 = pair64_cpu.map(|c| 1e9 / c.0);
    // Wall time of a pair beyond what its two journal writes take without the engine.
    let pair_beyond_journal = pair.zip(pair_entries).map(|(p, j)| p.ns - j.ns);
    // A report is charged in one journal transaction.
    let report_beyond_fsync = report.zip(fsync).map(|(r, f)| r.ns - f.ns);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());

    let count = |v: f64| format!("{v:.0}");
    let split = |c: (f64, f64, f64)| {
        format!(
            "{} (journal thread {}, other threads {})",
            fmt_ns(c.0),
            fmt_ns(c.1),
            fmt_ns(c.2)
        )
    };
    println!();
    println!("== engine summary (criterion point estimates of this run; CPU: all calls) ==");
    println!(
        "dashmap floor, get_mut + debit:       {}",
        opt_fmt(floor.map(Estimate::per_op_ns), fmt_ns)
    );
    println!(
        "reserve+commit pair, one client:      {} = {} pairs/s",
        opt_fmt(pair.map(Estimate::per_op_ns), fmt_ns),
        opt_fmt(pairs_per_s, count)
    );
    println!(
        "reserve+commit pair, 64 at once:      {} per pair = {} pairs/s",
        opt_fmt(pair64.map(Estimate::per_op_ns), fmt_ns),
        opt_fmt(pairs_per_s64, count)
    );
    println!(
        "pair / dashmap floor:                 {} one client, {} 64 at once (target <= {TARGET_PAIR_OVER_DASHMAP}x)",
        opt_fmt(ratio, |v| format!("{v:.0}x")),
        opt_fmt(ratio64, |v| format!("{v:.0}x"))
    );
    println!(
        "CPU per pair, one client:             {}",
        opt_fmt(pair_cpu, split)
    );
    println!(
        "CPU per pair, 64 at once:             {} = {} pairs per CPU-second (target >= {TARGET_PAIRS_PER_S:.0} on one core)",
        opt_fmt(pair64_cpu, split),
        opt_fmt(pairs_per_cpu_s64, count)
    );
    println!(
        "journal fsync floor, 1 entry:         {}; CPU {}",
        opt_fmt(fsync.map(Estimate::per_op_ns), fmt_ns),
        opt_fmt(fsync_cpu, split)
    );
    println!(
        "journal, a pair's 2 entries in turn:  {}; CPU {}",
        opt_fmt(pair_entries.map(Estimate::per_op_ns), fmt_ns),
        opt_fmt(pair_entries_cpu, split)
    );
    println!(
        "journal, 64 entries at once:          {} per entry; CPU {}",
        opt_fmt(fsync64.map(Estimate::per_op_ns), fmt_ns),
        opt_fmt(cpu_split("journal/submit_awaited_x64_concurrent"), split)
    );
    println!(
        "pair beyond its journal writes:       {} (derived: pair - pair's entries, measured apart: disk noise shows here)",
        opt_fmt(pair_beyond_journal, fmt_ns)
    );
    println!(
        "admit, in-memory decision only:       {}",
        opt_fmt(admit.map(Estimate::per_op_ns), fmt_ns)
    );
    println!(
        "stream report, one job:               {} = {} reports/s; beyond the fsync floor: {} (derived, measured apart)",
        opt_fmt(report.map(Estimate::per_op_ns), fmt_ns),
        opt_fmt(report.map(Estimate::ops_per_s), count),
        opt_fmt(report_beyond_fsync, fmt_ns)
    );
    println!(
        "stream reports, 8 jobs at once:       {} per report = {} reports/s",
        opt_fmt(report8.map(Estimate::per_op_ns), fmt_ns),
        opt_fmt(report8.map(Estimate::ops_per_s), count)
    );
    println!(
        "CPU per report:                       {} one job; {} 8 jobs",
        opt_fmt(report_cpu, split),
        opt_fmt(report8_cpu, split)
    );
    println!("available parallelism: {cpus}");
    let sync = match journal_sync() {
        JournalSync::Full => "full",
        JournalSync::Normal => "normal",
    };
    println!("journal sync: {sync} (QUOTAD_BENCH_JOURNAL_SYNC)");

    let mut json = String::from("{\n  \"bench\": \"engine\",\n");
    let unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let _ = writeln!(json, "  \"unix_time_s\": {unix_s},");
    let _ = writeln!(json, "  \"available_parallelism\": {cpus},");
    let _ = writeln!(json, "  \"journal_sync\": {},", json_str(sync));
    let tmp = std::env::temp_dir();
    let _ = writeln!(
        json,
        "  \"tmpdir\": {},",
        json_str(&tmp.display().to_string())
    );
    json.push_str("  \"results\": {\n");
    let rows: Vec<String> = est
        .iter()
        .map(|(id, e)| match e {
            Some(e) => {
                let c = cpu_split(id);
                format!(
                    "    {}: {{\"ns_per_iter\": {}, \"lower_ns\": {}, \"upper_ns\": {}, \"ops_per_iter\": {}, \"ns_per_op\": {}, \"ops_per_s\": {}, \"cpu_ns_per_op\": {}, \"journal_thread_cpu_ns_per_op\": {}, \"other_threads_cpu_ns_per_op\": {}}}",
                    json_str(id),
                    num(Some(e.ns)),
                    num(Some(e.lower_ns)),
                    num(Some(e.upper_ns)),
                    e.elements,
                    num(Some(e.per_op_ns())),
                    num(Some(e.ops_per_s())),
                    num(c.map(|c| c.0)),
                    num(c.map(|c| c.1)),
                    num(c.map(|c| c.2))
                )
            }
            None => format!("    {}: null", json_str(id)),
        })
        .collect();
    json.push_str(&rows.join(",\n"));
    json.push_str("\n  },\n");
    let met = |v: Option<bool>| v.map_or("null".to_owned(), |b| b.to_string());
    let fields: Vec<(&str, String)> = vec![
        ("pair_over_dashmap", num(ratio)),
        ("pair_x64_over_dashmap", num(ratio64)),
        ("pairs_per_s", num(pairs_per_s)),
        ("pairs_per_s_x64", num(pairs_per_s64)),
        ("cpu_ns_per_pair", num(pair_cpu.map(|c| c.0))),
        ("cpu_ns_per_pair_x64", num(pair64_cpu.map(|c| c.0))),
        (
            "journal_thread_cpu_ns_per_pair_x64",
            num(pair64_cpu.map(|c| c.1)),
        ),
        (
            "other_threads_cpu_ns_per_pair_x64",
            num(pair64_cpu.map(|c| c.2)),
        ),
        ("pairs_per_cpu_s_x64", num(pairs_per_cpu_s64)),
        (
            "journal_fsync_floor_ns",
            num(fsync.map(Estimate::per_op_ns)),
        ),
        (
            "journal_pair_entries_ns",
            num(pair_entries.map(Estimate::per_op_ns)),
        ),
        (
            "journal_x64_ns_per_entry",
            num(fsync64.map(Estimate::per_op_ns)),
        ),
        ("pair_beyond_journal_ns", num(pair_beyond_journal)),
        ("admit_ns", num(admit.map(Estimate::per_op_ns))),
        ("stream_report_ns", num(report.map(Estimate::per_op_ns))),
        ("stream_report_beyond_fsync_ns", num(report_beyond_fsync)),
        ("stream_reports_per_s", num(report.map(Estimate::ops_per_s))),
        (
            "stream_reports_per_s_x8",
            num(report8.map(Estimate::ops_per_s)),
        ),
        (
            "target_max_pair_over_dashmap",
            num(Some(TARGET_PAIR_OVER_DASHMAP)),
        ),
        ("target_min_pairs_per_s", num(Some(TARGET_PAIRS_PER_S))),
        (
            "pair_ratio_target_met",
            met(ratio.map(|r| r <= TARGET_PAIR_OVER_DASHMAP)),
        ),
        // The rate target is per core: pairs per CPU-second of the whole process (every
        // thread, the journal writer's included), from the 64-at-once run.
        (
            "pairs_per_cpu_s_target_met",
            met(pairs_per_cpu_s64.map(|r| r >= TARGET_PAIRS_PER_S)),
        ),
    ];
    let fields: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("  {}: {v}", json_str(k)))
        .collect();
    json.push_str(&fields.join(",\n"));
    json.push_str("\n}\n");

    let out_dir = target_dir().join("bench-results");
    let out = out_dir.join("engine.json");
    match std::fs::create_dir_all(&out_dir).and_then(|()| std::fs::write(&out, json)) {
        Ok(()) => println!("wrote {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
}
