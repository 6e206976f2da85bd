//! Benchmarks of the sidecar's hot path, for the engine targets of DESIGN.md section 5.
//!
//! - `billing/*`: the pure rules every charge runs. `burn_down/{N}_grants` pays a small cost
//!   from N valid money grants with distinct expiries (filter, sort by expiry, take: what
//!   every Commit does), on grants cloned outside the timed part so each iteration starts
//!   fresh. `price_cost` prices varying GPU-ms quantities of `gpu.shared.a10`.
//! - `engine/*`: a real `Engine` (ledger on `SqliteStore` and journal, both in a temporary
//!   directory; default catalog; wall clock) over 1,000 accounts, all cached before
//!   measuring. `reserve_commit_pair` is one client's latency: Reserve then Commit of a fresh
//!   reservation on a rotating account, each waiting for its fsync'ed group commit.
//!   `reserve_commit_pair_x64_concurrent` runs 64 pairs at once on 64 accounts, so one fsync
//!   covers many operations (throughput counted in pairs). `admit` is the read-only check on
//!   a cached account, with no journal write.
//! - `baseline/dashmap_get_update`: a bare `DashMap<String, Decimal>` `get_mut` and debit on
//!   the same 1,000 rotating keys. The design states the engine target relative to it ("a
//!   reserve+commit pair costs at most 3x a bare dashmap get+update"), so it runs in the same
//!   process on the same machine, as the floor the engine numbers are read against.
//!
//! No sync loop runs: usage stays in the outbox and settled holds stay in memory, so
//! `holds_max` and `outbox_max` are raised to never refuse work. Timing: 1 s warm-up, 3 s
//! measurement, 20 samples (flags override; `--quick` inflates the nanosecond benches).
//! The temporary directory honours `TMPDIR`: fsync on that disk dominates the engine pairs.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dashmap::DashMap;
use rust_decimal::Decimal;
use tokio::task::JoinSet;

use quotad::billing::{
    Catalog, Grant, GrantKind, GrantUnit, Money, Resource, ResourceSet, burn_down,
};
use quotad::clock::{Clock, SharedClock, SystemClock};
use quotad::engine::{Engine, EngineConfig, ReserveRequest};
use quotad::journal::{DEFAULT_JOURNAL_BATCH_MAX, DEFAULT_JOURNAL_QUEUE_MAX, Journal};
use quotad::ledger::sqlite::SqliteStore;
use quotad::ledger::{EMBEDDED_SIDECAR_ID, LeaseConfig, Ledger};

const A10: &str = "gpu.shared.a10";
const ACCOUNTS: usize = 1_000;
const CONCURRENT: u64 = 64;
const DAY_MS: i64 = 86_400_000;
/// GPU-milliseconds a Reserve holds and the following Commit charges.
const RESERVE_MS: u64 = 1_000;
const COMMIT_MS: u64 = 900;

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
            source: "bench".to_owned(),
            stackable: true,
        })
        .collect()
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
    /// Next reservation number; also picks the account.
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
            LeaseConfig::default(),
        ));
        let accounts = account_ids();
        let balance = Money::from_decimal(Decimal::from(1_000_000));
        for id in &accounts {
            ledger.create_account(id, balance).await.expect("account");
        }
        let (journal, recovered) = Journal::open(
            &dir.path().join("journal.db"),
            DEFAULT_JOURNAL_QUEUE_MAX,
            DEFAULT_JOURNAL_BATCH_MAX,
        )
        .expect("journal");
        // One sidecar on its own ledger, as `quotad serve` runs embedded.
        let cfg = EngineConfig {
            holds_max: usize::MAX,
            outbox_max: usize::MAX,
            lease_whole_account: true,
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
        b.to_async(&rt).iter(|| {
            let n = fx.next.fetch_add(1, Ordering::Relaxed);
            Fixture::pair(&fx.engine, fx.account(n).to_owned(), n)
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
        b.to_async(&rt).iter(|| async {
            let first = fx.next.fetch_add(CONCURRENT, Ordering::Relaxed);
            let mut set = JoinSet::new();
            for n in first..first + CONCURRENT {
                let engine = fx.engine.clone();
                let account_id = fx.account(n).to_owned();
                set.spawn(async move { Fixture::pair(&engine, account_id, n).await });
            }
            set.join_all().await
        })
    });
    g.finish();
    if let Some(fx) = fixture.get() {
        rt.block_on(fx.engine.journal().close());
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
        .sample_size(20);
    targets = billing_benches, engine_benches, baseline_benches
}
criterion_main!(benches);
