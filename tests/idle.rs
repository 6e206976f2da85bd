//! A sidecar that runs for months (issue 20): accounts nothing depends on leave the cache,
//! `accounts_max` bounds the accounts cached rather than those ever seen, and nothing
//! observable changes when an account leaves and loads again. An embedded sidecar (engine,
//! journal, the ledger on SQLite in the same process, as `quotad serve` runs it) with a
//! manual clock and no sync loop: the test syncs, sweeps and scans when it moves time, so
//! every step is forced rather than waited for. Files go to /dev/shm when there is one
//! (the ledger fsyncs each account's creation).

// Test helpers outside #[test] functions fail loudly too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quotad::billing::alerts::AlertConfig;
use quotad::billing::status::DenyReason;
use quotad::billing::{Catalog, GrantKind, Money, Resource, ResourceSet};
use quotad::clock::{Clock, ManualClock};
use quotad::engine::events::WatchConfig;
use quotad::engine::{
    Engine, EngineConfig, EngineError, LeasingConfig, ReserveOutcome, ReserveRequest,
};
use quotad::journal::{DEFAULT_JOURNAL_BATCH_MAX, DEFAULT_JOURNAL_QUEUE_MAX, Journal, JournalSync};
use quotad::ledger::sqlite::SqliteStore;
use quotad::ledger::{EMBEDDED_SIDECAR_ID, LeaseConfig, Ledger};

const T0_MS: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const A10: &str = "gpu.shared.a10";

/// The waves: `WAVES` of `WAVE_ACCOUNTS` new accounts each, `BATCH` a minute, under an
/// `ACCOUNTS_MAX` far below the accounts seen; `ALWAYS` accounts used in every batch.
const WAVES: usize = 8;
const WAVE_ACCOUNTS: usize = 400;
const BATCH: usize = 40;
const ACCOUNTS_MAX: usize = 100;
const ALWAYS: usize = 4;
/// Every account starts with this balance (CNY); the floor alert fires below it.
const BALANCE: &str = "10";
const FLOOR: &str = "9.99";
/// Enough for one visit's hold, not for a second.
const LOW_BALANCE: &str = "0.05";
/// GPU-milliseconds of A10 each visit holds (0.036 CNY), commits (0.018), and asks for
/// in vain (1,200).
const HOLD_UNITS: u64 = 60_000;
const USE_UNITS: u64 = 30_000;
const TOO_MANY_UNITS: u64 = 2_000_000_000;

fn m(s: &str) -> Money {
    Money::parse(s).unwrap()
}

fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().unwrap()
}

/// An embedded sidecar and its ledger, with a manual clock and no sync loop.
struct Sidecar {
    engine: Arc<Engine>,
    ledger: Arc<Ledger>,
    clock: Arc<ManualClock>,
    catalog: Arc<Catalog>,
    cfg: EngineConfig,
    dir: tempfile::TempDir,
}

impl Sidecar {
    async fn start(cfg: EngineConfig) -> Sidecar {
        let dir = tempdir();
        let clock = ManualClock::new(T0_MS);
        let catalog = Arc::new(Catalog::default_catalog().unwrap());
        let store = Arc::new(SqliteStore::open(&dir.path().join("ledger.db")).unwrap());
        let lease = LeaseConfig {
            ttl_ms: 60 * MINUTE_MS,
            hold_grace_ms: quotad::engine::DEFAULT_HOLD_TTL_MAX_MS,
            fleet: !cfg.leasing.lease_whole_account,
        };
        let ledger = Arc::new(Ledger::new(store, catalog.clone(), clock.clone(), lease));
        let engine = Self::engine(&dir, &cfg, &clock, &catalog, &ledger).await;
        Sidecar {
            engine,
            ledger,
            clock,
            catalog,
            cfg,
            dir,
        }
    }

    async fn engine(
        dir: &tempfile::TempDir,
        cfg: &EngineConfig,
        clock: &Arc<ManualClock>,
        catalog: &Arc<Catalog>,
        ledger: &Arc<Ledger>,
    ) -> Arc<Engine> {
        let (journal, recovered) = Journal::open_with(
            &dir.path().join("journal.log"),
            DEFAULT_JOURNAL_QUEUE_MAX,
            DEFAULT_JOURNAL_BATCH_MAX,
            JournalSync::Normal,
        )
        .unwrap();
        Engine::start(
            cfg.clone(),
            catalog.clone(),
            clock.clone(),
            Arc::new(journal),
            recovered,
            ledger.clone(),
            EMBEDDED_SIDECAR_ID.to_owned(),
        )
        .await
        .unwrap()
    }

    /// A stop without a flush (what a kill leaves: the journal has every acknowledged
    /// change, the ledger not all of them), then a start on the same files.
    async fn restart(&mut self) {
        self.engine.close_streams();
        self.engine.journal().close().await;
        self.engine = Self::engine(
            &self.dir,
            &self.cfg,
            &self.clock,
            &self.catalog,
            &self.ledger,
        )
        .await;
    }

    fn cost(&self, units: u64) -> Money {
        self.catalog
            .price(A10, Resource::GpuShared)
            .unwrap()
            .cost(units)
            .unwrap()
    }

    async fn reserve(
        &self,
        account: &str,
        id: &str,
        units: u64,
    ) -> Result<ReserveOutcome, EngineError> {
        self.engine
            .reserve(ReserveRequest {
                account_id: account.into(),
                reservation_id: id.into(),
                resource: Resource::GpuShared,
                sku: A10.into(),
                quantity: units,
                ttl_ms: 0,
            })
            .await
    }

    /// Moves time on as the sync loop's tick would see it: usage pushed, holds expired,
    /// idle accounts gone, time-driven alerts looked for.
    async fn tick(&self, ms: i64) {
        self.clock.advance_ms(ms);
        self.engine.flush().await.unwrap();
        let now = self.clock.now_ms();
        self.engine.sweep(now);
        self.engine.tick_storage(now).await;
        self.engine.check_alerts(now);
    }
}

fn config(accounts_max: usize, account_idle_ms: i64) -> EngineConfig {
    EngineConfig {
        accounts_max,
        account_idle_ms,
        leasing: LeasingConfig {
            lease_whole_account: true,
            ..LeasingConfig::default()
        },
        alerts: AlertConfig {
            balance_floor: Some(m(FLOOR)),
            ..AlertConfig::default()
        },
        watch: WatchConfig {
            queue_max: 1_000_000,
            ..WatchConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// What the billing rules say of one account: its balance, and the alerts it made
/// besides the floor's (which fires once, the first time it is seen below the floor).
#[derive(Debug, Default)]
struct Model {
    balance: Money,
    alerts: u64,
    visited: bool,
}

impl Model {
    fn new(balance: &str, alerts: u64) -> Model {
        Model {
            balance: m(balance),
            alerts,
            visited: false,
        }
    }

    fn expected_alerts(&self) -> u64 {
        let below = self.visited && self.balance < m(FLOOR);
        self.alerts + u64::from(below)
    }
}

fn expected_alerts(models: &HashMap<String, Model>) -> u64 {
    models.values().map(Model::expected_alerts).sum()
}

/// Waits until the engine sent `n` events (they go out once their memo is durable).
async fn events_reach(s: &Sidecar, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.engine.events_sent() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    s.engine.events_sent()
}

/// One visit: a Reserve the account can pay (admitted iff the model says so) committed
/// for less, a Reserve it cannot pay (denied), and GetBalance showing the model's balance.
async fn visit(s: &Sidecar, models: &mut HashMap<String, Model>, account: &str, n: usize) {
    let model = models.get_mut(account).unwrap();
    model.visited = true;
    let id = format!("{account}/{n}");
    let held = s.cost(HOLD_UNITS);
    let r = s.reserve(account, &id, HOLD_UNITS).await.unwrap();
    let payable = model.balance >= held;
    assert_eq!(
        r.admitted, payable,
        "{account} visit {n}: {r:?} with {model:?}"
    );
    if r.admitted {
        let c = s.engine.commit(&id, USE_UNITS).await.unwrap();
        assert_eq!(c.charged, s.cost(USE_UNITS), "{account}");
        model.balance -= c.charged;
    } else {
        assert_eq!(r.reason, Some(DenyReason::InsufficientFunds), "{account}");
    }
    let too_much = s
        .reserve(account, &format!("{id}/big"), TOO_MANY_UNITS)
        .await
        .unwrap();
    assert!(!too_much.admitted, "{account}: {too_much:?}");
    assert_eq!(too_much.reason, Some(DenyReason::InsufficientFunds));
    let b = s.engine.balance(account).await.unwrap();
    assert_eq!(b.balance, model.balance, "{account} visit {n}");
    assert_eq!(b.held, Money::ZERO, "{account} visit {n}");
}

/// Accounts in waves far past `accounts_max`, a few always active, a restart without a
/// flush midway: every request answered as the billing rules say, the cache flat across
/// the waves, every alert fired exactly once. Sized for the suite (`benches/idle.rs` is
/// the large version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waves_of_accounts_past_accounts_max_lose_nothing() {
    let started = Instant::now();
    let mut s = Sidecar::start(config(ACCOUNTS_MAX, 24 * 60 * MINUTE_MS)).await;
    let mut models: HashMap<String, Model> = HashMap::new();
    let always: Vec<String> = (0..ALWAYS).map(|i| format!("always-{i}")).collect();
    for id in &always {
        s.ledger.create_account(id, m("1000")).await.unwrap();
        // A grant nothing is charged to (storage only) that expires mid-run: its two
        // warnings and its expiry come from the deadlines' scan, once each.
        s.ledger
            .grant_credit(
                id,
                &format!("{id}-g"),
                GrantKind::Coupon,
                ResourceSet::of(Resource::Storage),
                m("1"),
                T0_MS + 3 * DAY_MS,
            )
            .await
            .unwrap();
        models.insert(id.clone(), Model::new("1000", 3));
    }
    let mut cached_per_wave = Vec::new();
    let mut n = 0usize;
    let mut sent_before_restart = 0;
    for wave in 0..WAVES {
        if wave == WAVES / 2 {
            // So far the always-active accounts' grants warned 7 days ahead only.
            let so_far = expected_alerts(&models) - 2 * ALWAYS as u64;
            sent_before_restart = events_reach(&s, so_far).await;
            assert_eq!(sent_before_restart, so_far, "before the restart");
            s.restart().await;
        }
        let ids: Vec<String> = (0..WAVE_ACCOUNTS).map(|i| format!("w{wave}-{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            // Every 7th account can pay for one visit only: its next is denied.
            let balance = if i % 7 == 0 { LOW_BALANCE } else { BALANCE };
            s.ledger.create_account(id, m(balance)).await.unwrap();
            models.insert(id.clone(), Model::new(balance, 0));
        }
        for batch in ids.chunks(BATCH) {
            s.tick(MINUTE_MS + 1).await;
            for id in batch.iter().chain(&always) {
                n += 1;
                visit(&s, &mut models, id, n).await;
            }
            // Accounts of two waves back come again (they left the cache long ago).
            if wave >= 2 {
                let i = n % WAVE_ACCOUNTS;
                let back = format!("w{}-{i}", wave - 2);
                n += 1;
                visit(&s, &mut models, &back, n).await;
            }
            let stats = s.engine.stats();
            assert!(stats.accounts <= ACCOUNTS_MAX, "{stats:?}");
        }
        s.tick(MINUTE_MS).await;
        cached_per_wave.push(s.engine.stats().accounts);
    }
    // The grants' warnings (7 days and 1 day before) and expiry come due.
    for _ in 0..4 {
        s.tick(DAY_MS).await;
        for id in &always {
            n += 1;
            visit(&s, &mut models, id, n).await;
        }
    }
    let expected = expected_alerts(&models);
    // The counter is this run's: the first run's events went out before the restart.
    let sent = events_reach(&s, expected - sent_before_restart).await + sent_before_restart;
    // None more comes (an alert fired twice would).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = s.engine.stats();
    eprintln!(
        "{} accounts, {} visits, cache per wave {cached_per_wave:?}, {} left the cache \
         since the restart, {:?}",
        models.len(),
        n,
        stats.accounts_evicted,
        started.elapsed()
    );
    assert!(
        cached_per_wave.iter().skip(1).all(|c| *c == ACCOUNTS_MAX),
        "flat at accounts_max: {cached_per_wave:?}"
    );
    assert_eq!(stats.events_dropped, 0);
    assert!(stats.accounts_evicted > 0);
    // Every balance as the rules say, seen by the ledger too (usage all pushed).
    s.engine.flush().await.unwrap();
    for (id, model) in &models {
        let v = s.ledger.balance_view(id).await.unwrap();
        assert_eq!(v.balance, model.balance, "{id}");
    }
    assert_eq!(
        s.engine.events_sent() + sent_before_restart,
        expected,
        "each alert once (sent {sent})"
    );
}

/// An account nothing depends on leaves the cache `account_idle_ms` after its last request
/// and comes back the same: balance, alert memo (nothing fires again), storage meter.
/// One with an open hold, a Watch or a stored level stays; a hold's expiry is found by its
/// deadline and lets the account go in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_accounts_leave_after_account_idle_ms_and_come_back_the_same() {
    const IDLE_MS: i64 = 10 * MINUTE_MS;
    let s = Sidecar::start(config(100, IDLE_MS)).await;
    let mut models: HashMap<String, Model> = HashMap::new();
    for id in ["quiet", "held", "watched", "stored", "was-stored"] {
        s.ledger.create_account(id, m(BALANCE)).await.unwrap();
        models.insert(id.to_owned(), Model::new(BALANCE, 0));
    }
    s.ledger
        .grant_credit(
            "quiet",
            "quiet-g",
            GrantKind::Coupon,
            ResourceSet::of(Resource::Storage),
            m("1"),
            T0_MS + 3 * DAY_MS,
        )
        .await
        .unwrap();
    models.get_mut("quiet").unwrap().alerts = 1; // the 7-day warning
    for (n, id) in ["quiet", "held", "watched", "stored", "was-stored"]
        .iter()
        .enumerate()
    {
        visit(&s, &mut models, id, n).await;
    }
    let hold = s
        .engine
        .reserve(ReserveRequest {
            account_id: "held".into(),
            reservation_id: "held/open".into(),
            resource: Resource::GpuShared,
            sku: A10.into(),
            quantity: HOLD_UNITS,
            ttl_ms: 2 * 60 * MINUTE_MS,
        })
        .await
        .unwrap();
    assert!(hold.admitted);
    let watch = s.engine.watch("watched").await.unwrap();
    s.engine.report_storage("stored", 1 << 30, 0).await.unwrap();
    let level_at = s.clock.now_ms();
    s.engine
        .report_storage("was-stored", 1 << 30, level_at)
        .await
        .unwrap();
    s.clock.advance_ms(1);
    s.engine.report_storage("was-stored", 0, 0).await.unwrap();
    s.tick(MINUTE_MS).await;
    let alerts = expected_alerts(&models);
    assert_eq!(events_reach(&s, alerts).await, alerts);

    // Past the idle time, and past the storage hour: only the quiet ones leave.
    s.tick(IDLE_MS).await;
    s.tick(60 * MINUTE_MS).await;
    s.tick(IDLE_MS).await;
    let stats = s.engine.stats();
    assert_eq!(
        stats.accounts, 3,
        "held, watched and stored stay: {stats:?}"
    );
    assert_eq!(stats.accounts_evicted, 2);

    // They come back the same: balances, no alert again, the storage meter (a level
    // older than the last one is refused, as before they left).
    for (n, id) in ["quiet", "was-stored"].iter().enumerate() {
        visit(&s, &mut models, id, 100 + n).await;
    }
    let e = s
        .engine
        .report_storage("was-stored", 5, level_at)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("older"), "{e}");
    s.tick(MINUTE_MS).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.engine.events_sent(), alerts, "nothing fired twice");

    // The hold expires (found by its deadline), the Watch ends: they leave in turn.
    drop(watch);
    s.tick(DAY_MS).await;
    s.tick(IDLE_MS).await;
    let stats = s.engine.stats();
    assert_eq!(stats.accounts, 1, "only the stored level stays: {stats:?}");
    let b = s.engine.balance("held").await.unwrap();
    assert_eq!(b.held, Money::ZERO, "the hold expired");
    assert_eq!(b.balance, models["held"].balance);
}

/// `accounts_max` is a bound on accounts in use: a new account takes the place of the
/// least recently used idle one, and is refused (naming the setting) only while every
/// cached account is in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_account_is_refused_only_while_none_is_idle() {
    let s = Sidecar::start(config(3, 24 * 60 * MINUTE_MS)).await;
    for id in ["a", "b", "c", "d"] {
        s.ledger.create_account(id, m(BALANCE)).await.unwrap();
    }
    for id in ["a", "b", "c"] {
        let r = s.reserve(id, &format!("{id}/1"), HOLD_UNITS).await.unwrap();
        assert!(r.admitted);
    }
    s.tick(MINUTE_MS + 1).await;
    let e = s.reserve("d", "d/1", HOLD_UNITS).await.unwrap_err();
    assert!(matches!(e, EngineError::AccountsFull(3)), "{e:?}");
    assert!(e.to_string().contains("accounts_max"), "{e}");

    // "b" is done; "a" is used again: "b" is the least recently used idle account.
    s.engine.release("b/1").await.unwrap();
    s.engine.commit("a/1", USE_UNITS).await.unwrap();
    s.engine.commit("c/1", USE_UNITS).await.unwrap();
    s.tick(MINUTE_MS + 1).await;
    s.engine.balance("a").await.unwrap();
    s.tick(MINUTE_MS + 1).await;
    s.engine.balance("c").await.unwrap();
    let r = s.reserve("d", "d/1", HOLD_UNITS).await.unwrap();
    assert!(r.admitted, "{r:?}");
    let stats = s.engine.stats();
    assert_eq!(
        (stats.accounts, stats.accounts_evicted),
        (3, 1),
        "{stats:?}"
    );
    // "b" left, not "a" or "c": they are cached still (a look loads nothing).
    s.engine.release("d/1").await.unwrap();
    s.tick(MINUTE_MS + 1).await;
    let r = s.reserve("b", "b/2", HOLD_UNITS).await.unwrap();
    assert!(r.admitted, "{r:?}");
    assert_eq!(s.engine.stats().accounts_evicted, 2);
}

/// With a ledger shared by several sidecars, an idle account leaves the cache only once
/// its lease is given back (so its money is never set aside for a sidecar that forgot
/// it), and its next request leases again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_shared_ledger_an_account_leaves_once_its_lease_is_given_back() {
    let mut cfg = config(100, MINUTE_MS);
    cfg.leasing.lease_whole_account = false;
    let lease_active_ms = cfg.leasing.lease_active_ms;
    let s = Sidecar::start(cfg).await;
    let mut models: HashMap<String, Model> = HashMap::new();
    s.ledger.create_account("a", m(BALANCE)).await.unwrap();
    models.insert("a".to_owned(), Model::new(BALANCE, 0));
    visit(&s, &mut models, "a", 1).await;
    s.tick(MINUTE_MS + 1).await;
    let stats = s.engine.stats();
    assert_eq!((stats.accounts, stats.leases), (1, 1), "leased: {stats:?}");
    // Past `lease_active_ms` the sync releases the lease; then the account may go.
    s.tick(lease_active_ms).await;
    s.tick(MINUTE_MS + 1).await;
    let stats = s.engine.stats();
    assert_eq!(
        (stats.accounts, stats.accounts_evicted),
        (0, 1),
        "{stats:?}"
    );
    visit(&s, &mut models, "a", 2).await;
    assert_eq!(s.engine.stats().leases, 1);
}
