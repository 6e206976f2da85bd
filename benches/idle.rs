//! A sidecar that runs for months (issue 20), the large version of `tests/idle.rs`:
//! `QUOTAD_BENCH_IDLE_ACCOUNTS` distinct accounts (default 3,000,000) in waves of
//! `QUOTAD_BENCH_IDLE_WAVE` (default 300,000), each account reserving and committing once,
//! with `ALWAYS` accounts active in every wave, under `accounts_max` = 1,000,000 and an
//! `account_idle_ms` of a minute. Between waves the (manual) clock moves past the idle
//! time; per wave it prints the accounts cached and active, the time of the sweep that lets
//! the wave's accounts go, of the minute's scan for time-driven alerts (which first looks
//! at each account loaded), of a sweep with nothing due, and the process's resident
//! memory (VmRSS) after them. `cargo bench --bench idle`.
//!
//! The ledger is a stand-in that knows every account (balance 1,000, no grants), applies
//! all usage it is sent and grants whole-account leases, keeping nothing per account: what
//! is measured is the sidecar's memory and housekeeping, not a ledger's. The journal
//! (`normal` sync) is in a temporary directory (`TMPDIR`). Settled reservations are kept
//! a minute (`settled_retention_ms`) instead of a day, so that the reservations of earlier
//! waves are forgotten too and what stays is what the accounts keep. Usage is pushed
//! every 5,000 pairs, as the sync loop would: loading an account reads the journal's
//! outbox, which must not grow with the wave.

// Benches fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use quotad::billing::{Catalog, Money, Resource};
use quotad::clock::{Clock, ManualClock};
use quotad::engine::{Engine, EngineConfig, LeasingConfig, ReserveRequest};
use quotad::journal::{DEFAULT_JOURNAL_BATCH_MAX, DEFAULT_JOURNAL_QUEUE_MAX, Journal, JournalSync};
use quotad::ledger::{
    AccountSnapshot, EMBEDDED_SIDECAR_ID, Lease, LedgerApi, LedgerError, SyncRequest, SyncResponse,
};
use tokio::task::JoinSet;

const T0_MS: i64 = 1_767_225_600_000;
const A10: &str = "gpu.shared.a10";
const ALWAYS: usize = 100;
const ACCOUNTS_MAX: usize = 1_000_000;
const IDLE_MS: i64 = 60_000;
/// Reserve+commit pairs in flight at once.
const CONCURRENCY: usize = 256;
/// Pairs between pushes of the usage to the ledger.
const SYNC_EVERY: u64 = 5_000;

/// A ledger that knows every account and keeps nothing per account.
struct StandIn {
    clock: Arc<ManualClock>,
    version: AtomicI64,
    applied: AtomicU64,
}

impl StandIn {
    fn snapshot(&self, account_id: &str, seq: u64, release: bool, now_ms: i64) -> AccountSnapshot {
        let balance = Money::parse("1000").unwrap();
        AccountSnapshot {
            account_id: account_id.to_owned(),
            version: self.version.fetch_add(1, Ordering::Relaxed),
            balance,
            grants: Vec::new(),
            applied_seq: self.applied.load(Ordering::Relaxed),
            lease: Lease {
                remaining: if release { Money::ZERO } else { balance },
                expires_at_ms: now_ms + 60 * 60 * 1000,
                seq,
                edge: false,
                give_back: false,
            },
            request_counts: Default::default(),
            unleased: Money::ZERO,
            recalling: Money::ZERO,
        }
    }
}

#[async_trait]
impl LedgerApi for StandIn {
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        let now_ms = self.clock.now_ms();
        if let Some(max) = req.usage.iter().map(|u| u.seq).max() {
            self.applied.fetch_max(max, Ordering::Relaxed);
        }
        let mut snapshots: Vec<AccountSnapshot> = req
            .leases
            .iter()
            .map(|l| self.snapshot(&l.account_id, l.seq, l.release, now_ms))
            .collect();
        let named = req
            .accounts
            .iter()
            .chain(req.usage.iter().map(|u| &u.account_id));
        for id in named {
            if !snapshots.iter().any(|s| &s.account_id == id) {
                snapshots.push(self.snapshot(id, 0, false, now_ms));
            }
        }
        Ok(SyncResponse {
            snapshots,
            now_ms,
            hold_grace_ms: 24 * 60 * 60 * 1000,
            recalls: Vec::new(),
        })
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

async fn pair(engine: Arc<Engine>, account_id: String, id: String) {
    let r = engine
        .reserve(ReserveRequest {
            account_id,
            reservation_id: id.clone(),
            resource: Resource::GpuShared,
            sku: A10.into(),
            quantity: 60_000,
            ttl_ms: 0,
        })
        .await
        .unwrap();
    assert!(r.admitted, "{r:?}");
    engine.commit(&id, 30_000).await.unwrap();
}

async fn run() {
    let accounts = env("QUOTAD_BENCH_IDLE_ACCOUNTS", 3_000_000);
    let wave = env("QUOTAD_BENCH_IDLE_WAVE", 300_000).max(1);
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let ledger = Arc::new(StandIn {
        clock: clock.clone(),
        version: AtomicI64::new(1),
        applied: AtomicU64::new(0),
    });
    let (journal, recovered) = Journal::open_with(
        &dir.path().join("journal.log"),
        DEFAULT_JOURNAL_QUEUE_MAX,
        DEFAULT_JOURNAL_BATCH_MAX,
        JournalSync::Normal,
    )
    .unwrap();
    let cfg = EngineConfig {
        accounts_max: ACCOUNTS_MAX,
        account_idle_ms: IDLE_MS,
        settled_retention_ms: IDLE_MS,
        outbox_max: usize::MAX,
        leasing: LeasingConfig {
            lease_whole_account: true,
            ..LeasingConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = Engine::start(
        cfg,
        Arc::new(Catalog::default_catalog().unwrap()),
        clock.clone(),
        Arc::new(journal),
        recovered,
        ledger,
        EMBEDDED_SIDECAR_ID.to_owned(),
    )
    .await
    .unwrap();
    println!(
        "{accounts} accounts in waves of {wave}, {ALWAYS} always active; accounts_max \
         {ACCOUNTS_MAX}, account_idle_ms {IDLE_MS}"
    );
    println!(
        "wave | seen | cached before sweep | cached after | active | sweep ms (evicts) | alert scan ms | idle sweep us | RSS MiB | wave s"
    );
    let mut n = 0u64;
    for (w, start) in (0..accounts).step_by(wave).enumerate() {
        let began = Instant::now();
        let ids = (start..(start + wave).min(accounts))
            .map(|i| format!("acct-{i}"))
            .chain((0..ALWAYS).map(|i| format!("always-{i}")));
        let mut tasks = JoinSet::new();
        for id in ids {
            if tasks.len() >= CONCURRENCY {
                tasks.join_next().await.unwrap().unwrap();
            }
            n += 1;
            if n.is_multiple_of(SYNC_EVERY) {
                // What the sync loop does every second: loading an account reads the
                // journal's outbox, which must not grow with the wave.
                engine.flush().await.unwrap();
            }
            tasks.spawn(pair(engine.clone(), id, format!("r{n}")));
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        engine.flush().await.unwrap();
        let cached_before = engine.stats().accounts;
        // Past the idle time: the sweep lets this wave's accounts go but the active ones.
        clock.advance_ms(IDLE_MS + 1);
        for id in (0..ALWAYS).map(|i| format!("always-{i}")) {
            engine.balance(&id).await.unwrap();
        }
        engine.flush().await.unwrap();
        let t = Instant::now();
        engine.sweep(clock.now_ms());
        let sweep = t.elapsed();
        // The sync tick's minute scan: first looks at the wave's accounts for alerts.
        let t = Instant::now();
        engine.check_alerts(clock.now_ms());
        let scan = t.elapsed();
        let t = Instant::now();
        engine.sweep(clock.now_ms());
        let idle_sweep = t.elapsed();
        let stats = engine.stats();
        println!(
            "{w:>4} | {:>9} | {cached_before:>7} | {:>7} | {ALWAYS} | {:>8.1} | {:>8.1} | {:>6.1} | {:>7.0} | {:>5.1}",
            (start + wave).min(accounts),
            stats.accounts,
            sweep.as_secs_f64() * 1e3,
            scan.as_secs_f64() * 1e3,
            idle_sweep.as_secs_f64() * 1e6,
            rss_mib(),
            began.elapsed().as_secs_f64(),
        );
    }
    engine.journal().close().await;
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}
