//! The sidecar engine: admission from a cached entitlement in memory, never waiting on the
//! ledger on the hot path. Per account it keeps the ledger's last snapshot plus the usage
//! acknowledged here since (`pending`), and a live view (`balance`, `grants`) that is the
//! snapshot with that usage burned down in journal order, exactly as the ledger will.
//! Holds live in their own map so Commit and Release find them by reservation id alone.
//!
//! Lock order (deadlock freedom): an `accounts` entry may be held while taking a `holds`
//! entry, never the reverse; so may it while taking an entry of what an account leaves
//! behind or an account's deadlines (`idle`), an open stream's or a Watch's.
//!
//! The rooms depend one way. What the engine is made of does not know the engine: the
//! cached account (`account`), reservations (`reservation`), the lease policy
//! (`leases`), the state of usage streams (`work`), of sessions (`sessions`) and of Watch
//! (`events`), and `error`; each owns its state, its settings and their limits. This file
//! assembles them into `Engine` with its config and accessors. What the engine does is
//! `impl Engine` in rooms of their own, which use this file and the ones below it, never
//! the reverse: `admission` (the one rule), `holds` (Reserve/Commit/Release/Admit),
//! `cache` (accounts, snapshots, expiry), `reports` (usage streams), `hours` (sessions),
//! `watch` (alerts), `idle` (accounts leaving the cache), `storage`, `link` (calls to the ledger), `sync`, `durable` and
//! `recovery` (start).

mod account;
mod admission;
mod cache;
mod deadlines;
mod durable;
mod error;
pub mod events;
mod holds;
mod hours;
mod idle;
mod leases;
mod link;
mod recovery;
mod reports;
mod reservation;
mod rounds;
pub mod sessions;
pub mod storage;
pub mod sync;
mod watch;
pub mod work;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::billing::alerts::AlertConfig;
pub use crate::billing::status::BalanceView;
use crate::billing::{Catalog, Money};
use crate::clock::SharedClock;
use crate::journal::Journal;
use crate::ledger::api::{DEFAULT_LEASE_HOLD_GRACE_MS, LedgerApi};
use account::Account;
pub use error::EngineError;
pub use leases::LeasingConfig;
pub use reservation::{AdmitOutcome, CommitOutcome, ReserveOutcome, ReserveRequest};
use reservation::{Hold, OrphanHold};
pub use rounds::ChargedRound;

/// Hold lifetime when a Reserve gives ttl_ms = 0: long enough for a typical generation job
/// to finish and Commit, short enough that a crashed worker's hold returns within minutes.
pub const DEFAULT_HOLD_TTL_MS: i64 = 5 * 60 * 1000;
/// Longest hold a Reserve may ask for.
pub const DEFAULT_HOLD_TTL_MAX_MS: i64 = 24 * 60 * 60 * 1000;
/// Most reservations kept in memory, open and settled (settled ones answer retries).
pub const DEFAULT_HOLDS_MAX: usize = 1_000_000;
/// Most accounts cached in memory. When reached, the least recently used idle account
/// leaves the cache for a new one; only if none is idle is the new one refused.
pub const DEFAULT_ACCOUNTS_MAX: usize = 1_000_000;
/// An account nothing depends on (see `Account::quiet`) leaves the cache after this long
/// without a request; its next request loads it again.
pub const DEFAULT_ACCOUNT_IDLE_MS: i64 = 15 * 60 * 1000;
/// Shortest time without a request before an account may leave the cache, also to make
/// room (`accounts_max`): a request between its look at the account and its use of it
/// never finds it gone. `account_idle_ms` is at least this.
pub const ACCOUNT_QUIET_MIN_MS: i64 = 60_000;
/// Most cached accounts one new account looks at for a least recently used idle one to
/// replace, before it is refused (those in use are looked at again an idle time later).
pub const EVICT_SCAN_MAX: usize = 256;
/// How often housekeeping forgets settled reservations, ended jobs and stopped sessions
/// past their retention (a walk of what is kept: a minute is precise enough for a day).
pub const PRUNE_INTERVAL_MS: i64 = 60_000;
/// How long a settled reservation is remembered to answer a retry with its first outcome.
pub const DEFAULT_SETTLED_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;
/// Acknowledged usage waiting for the ledger beyond which new Reserves are refused: the
/// journal must not grow without bound while the ledger is away.
pub const DEFAULT_OUTBOX_MAX: usize = 1_000_000;

/// The engine's settings: its own limits, and those of each part (`work`, `sessions`,
/// `watch`, `leasing`), with their `DEFAULT_*` values.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub hold_ttl_default_ms: i64,
    pub hold_ttl_max_ms: i64,
    pub holds_max: usize,
    pub accounts_max: usize,
    /// See `DEFAULT_ACCOUNT_IDLE_MS`.
    pub account_idle_ms: i64,
    pub settled_retention_ms: i64,
    pub outbox_max: usize,
    /// How this sidecar asks for leases (see `leases`).
    pub leasing: leases::LeasingConfig,
    /// Money an account may still be admitted for while the ledger is unreachable and its
    /// lease is spent or expired, by account id; `fail_open_default` for the others.
    /// Zero (the default) is fail-closed.
    pub fail_open_budgets: HashMap<String, Money>,
    pub fail_open_default: Money,
    /// Usage streams (see `work`).
    pub work: work::WorkConfig,
    /// Exclusive sessions (see `sessions`).
    pub sessions: sessions::SessionConfig,
    /// Alert thresholds and Watch limits (see `events`).
    pub alerts: AlertConfig,
    pub watch: events::WatchConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            hold_ttl_default_ms: DEFAULT_HOLD_TTL_MS,
            hold_ttl_max_ms: DEFAULT_HOLD_TTL_MAX_MS,
            holds_max: DEFAULT_HOLDS_MAX,
            accounts_max: DEFAULT_ACCOUNTS_MAX,
            account_idle_ms: DEFAULT_ACCOUNT_IDLE_MS,
            settled_retention_ms: DEFAULT_SETTLED_RETENTION_MS,
            outbox_max: DEFAULT_OUTBOX_MAX,
            leasing: leases::LeasingConfig::default(),
            fail_open_budgets: HashMap::new(),
            fail_open_default: Money::ZERO,
            work: work::WorkConfig::default(),
            sessions: sessions::SessionConfig::default(),
            alerts: AlertConfig::default(),
            watch: events::WatchConfig::default(),
        }
    }
}

/// A point-in-time view of the engine's sizes (see `Engine::stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Reservations in memory: open, and settled ones kept for idempotent retries.
    pub holds: usize,
    /// Accounts cached now, and those that left the cache idle since start.
    pub accounts: usize,
    pub accounts_evicted: u64,
    /// Cached accounts whose lease has not expired.
    pub leases: usize,
    pub streams: usize,
    pub sessions_running: usize,
    pub watchers: usize,
    pub events_sent: u64,
    /// Events not sent because the event queue was full.
    pub events_dropped: u64,
    /// Usage records acknowledged locally and not yet applied by the ledger.
    pub journal_backlog: usize,
    /// Age of the oldest usage record the ledger has not applied (0 when none).
    pub sync_lag_ms: i64,
    pub ledger_up: bool,
}

pub struct Engine {
    /// This engine, for work that must finish after its caller is gone (see `when_durable`).
    me: std::sync::Weak<Engine>,
    sidecar_id: String,
    catalog: Arc<Catalog>,
    clock: SharedClock,
    journal: Arc<Journal>,
    ledger: Arc<dyn LedgerApi>,
    cfg: EngineConfig,
    accounts: DashMap<String, Account>,
    holds: DashMap<String, Hold>,
    holds_len: AtomicUsize,
    next_seq: AtomicU64,
    sync_lock: tokio::sync::Mutex<()>,
    /// Holds expire by their lease's expiry plus this (the ledger says how long).
    hold_grace_ms: AtomicI64,
    /// Whether the last exchange with the ledger succeeded; while it is false, Reserves do
    /// not wait on the ledger for a lease.
    ledger_up: AtomicBool,
    ledger_state: tokio::sync::watch::Sender<bool>,
    /// Last lease request sequence number (see `next_lease_seq`).
    lease_seq: AtomicU64,
    /// Accounts whose unused lease the ledger asked back (`SyncResponse::recalls`), for
    /// the next sync; bounded by `leases::DEFAULT_RECALLED_UNCACHED_MAX`.
    recalled: DashMap<String, ()>,
    /// Highest seq of a give-back sent for an account that was not cached: an account
    /// loaded concurrently does not spend a lease set by an older request.
    uncached_floor_seq: AtomicU64,
    /// Something wants a sync before the next tick (lease to give back).
    sync_wanted: AtomicBool,
    sync_wake: tokio::sync::Notify,
    /// When the ledger last answered (ms), to poll it when there is nothing to send.
    ledger_heard_ms: AtomicI64,
    /// The leases a previous run of this sidecar left are still to be given back (set at
    /// start once the journal's commitments are known; see `leases::reset_keeps`).
    reset_pending: AtomicBool,
    /// Open holds recovered at start for accounts the ledger could not load yet.
    orphan_holds: DashMap<String, Vec<OrphanHold>>,
    /// Running sessions' hour holds recovered at start, by account, until it loads.
    orphan_session_holds: DashMap<String, Money>,
    /// Fired alert keys recovered at start, by account, until it loads.
    recovered_alerts: DashMap<String, Vec<String>>,
    /// Storage meters recovered at start for accounts the ledger could not load yet.
    orphan_storage: DashMap<String, crate::billing::storage::StorageMeter>,
    /// Fail-open budgets partly spent of accounts that left the cache (what is left).
    evicted_fail_open: DashMap<String, idle::FailOpenLeft>,
    /// Accounts by the earliest expiry of their open holds (`sweep`).
    hold_due: deadlines::Deadlines,
    /// Accounts by their next time-driven alert (`check_alerts`).
    alert_due: deadlines::Deadlines,
    /// Metered accounts by the end of their storage hour in progress (`tick_storage`).
    storage_due: deadlines::Deadlines,
    /// Accounts by when they may go idle (`sweep`), and least recently used first.
    idle_due: deadlines::Deadlines,
    accounts_evicted: AtomicU64,
    /// When `sweep` last forgot settled reservations (see `PRUNE_INTERVAL_MS`).
    pruned_at_ms: AtomicI64,
    /// Open usage streams, and the last seq of recently ended ones.
    works: work::Works,
    sessions: sessions::Sessions,
    events: Arc<events::Hub>,
    /// Turns true at shutdown: open streams end (see `close_streams`).
    closing: tokio::sync::watch::Sender<bool>,
}

impl Engine {
    /// An engine with nothing loaded yet (see `start`), its event hub's send loop running.
    fn new(
        cfg: EngineConfig,
        catalog: Arc<Catalog>,
        clock: SharedClock,
        journal: Arc<Journal>,
        ledger: Arc<dyn LedgerApi>,
        sidecar_id: String,
    ) -> Arc<Engine> {
        let (hub, event_queue) = events::Hub::new(cfg.watch);
        let hub = Arc::new(hub);
        tokio::spawn(events::run(Arc::downgrade(&hub), event_queue));
        Arc::new_cyclic(|me| Engine {
            me: me.clone(),
            sidecar_id,
            catalog,
            clock,
            journal,
            ledger,
            accounts: DashMap::new(),
            holds: DashMap::new(),
            holds_len: AtomicUsize::new(0),
            next_seq: AtomicU64::new(1),
            sync_lock: tokio::sync::Mutex::new(()),
            hold_grace_ms: AtomicI64::new(DEFAULT_LEASE_HOLD_GRACE_MS),
            ledger_up: AtomicBool::new(true),
            ledger_state: tokio::sync::watch::Sender::new(true),
            orphan_holds: DashMap::new(),
            lease_seq: AtomicU64::new(0),
            recalled: DashMap::new(),
            uncached_floor_seq: AtomicU64::new(0),
            sync_wanted: AtomicBool::new(false),
            sync_wake: tokio::sync::Notify::new(),
            ledger_heard_ms: AtomicI64::new(i64::MIN / 2),
            reset_pending: AtomicBool::new(false),
            orphan_session_holds: DashMap::new(),
            recovered_alerts: DashMap::new(),
            orphan_storage: DashMap::new(),
            evicted_fail_open: DashMap::new(),
            hold_due: deadlines::Deadlines::default(),
            alert_due: deadlines::Deadlines::default(),
            storage_due: deadlines::Deadlines::default(),
            idle_due: deadlines::Deadlines::default(),
            accounts_evicted: AtomicU64::new(0),
            pruned_at_ms: AtomicI64::new(i64::MIN / 2),
            works: work::Works::new(cfg.work),
            sessions: sessions::Sessions::new(cfg.sessions),
            events: hub,
            closing: tokio::sync::watch::Sender::new(false),
            cfg,
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// Ends every open stream (usage streams settle their job, watchers are let go) and
    /// refuses new ones: a graceful shutdown must not wait on clients that never hang up.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
        self.events.close();
    }

    /// Resolves once `close_streams` was called.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn is_closing(&self) -> bool {
        *self.closing.borrow()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    /// What the engine holds right now, for metrics. Walks the cached accounts and
    /// sessions: meant for a scrape every few seconds, not for the request path.
    pub fn stats(&self) -> EngineStats {
        let now_ms = self.now_ms();
        let leases = self
            .accounts
            .iter()
            .filter(|a| a.base.lease.expires_at_ms > now_ms)
            .count();
        let sessions_running = self.sessions.running();
        let oldest_usage_at_ms = match self.journal.outbox_batch(1) {
            Ok(first) => first.first().map(|u| u.at_ms),
            Err(e) => {
                // Nothing reaches the ledger any more (the sync loop fails with this too):
                // show the whole age of the backlog rather than none.
                tracing::error!(error = %e, "journal outbox unreadable");
                Some(i64::MIN)
            }
        };
        EngineStats {
            holds: self.holds_len.load(Ordering::Relaxed),
            accounts: self.accounts.len(),
            accounts_evicted: self.accounts_evicted.load(Ordering::Relaxed),
            leases,
            streams: self.streams_open(),
            sessions_running,
            watchers: self.watchers(),
            events_sent: self.events_sent(),
            events_dropped: self.events.dropped(),
            journal_backlog: self.journal.outbox_len(),
            sync_lag_ms: oldest_usage_at_ms.map_or(0, |at| now_ms.saturating_sub(at).max(0)),
            ledger_up: self.ledger_reachable(),
        }
    }
}
