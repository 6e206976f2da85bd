//! The sidecar's local journal: what the sidecar acknowledged is durable here before the
//! ack leaves (G2), and stays until the ledger has it. One SQLite file in the data
//! directory, written by one thread that commits whatever has queued up in a single
//! transaction (group commit: one fsync for many requests). SQLite's WAL recovery makes a
//! torn last write a rolled-back transaction, never a corrupt journal.
//!
//! Tables: `reservations` (every open hold, and settled ones for the idempotency
//! retention window), `outbox` (acknowledged usage not yet acknowledged by the ledger),
//! `sessions` (Exclusive sessions: running ones survive a restart, stopped ones answer
//! retries) and `alerts` (which alert crossings have fired, so none fires twice).

use std::collections::VecDeque;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, params};
use rust_decimal::Decimal;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::billing::storage::StorageMeter;
use crate::billing::{Money, Resource};
use crate::ledger::UsageRecord;

/// Journal operations that may wait in the queue for the writer; more is overload and is
/// refused with RESOURCE_EXHAUSTED rather than buffered without bound.
pub const DEFAULT_JOURNAL_QUEUE_MAX: usize = 65_536;

/// Most operations written in one transaction.
pub const DEFAULT_JOURNAL_BATCH_MAX: usize = 4_096;

/// When a journal write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalSync {
    /// fsync at every group commit: an acknowledged write survives a kill -9 of quotad
    /// and a power loss or OS crash.
    #[default]
    Full,
    /// The write is in the OS before the ack, fsync'ed at checkpoints: it survives a
    /// kill -9 of quotad (G2), but a power loss or OS crash may lose the last moments.
    /// Several times the throughput of `Full` on disks with slow fsync.
    Normal,
}

impl JournalSync {
    pub fn from_name(s: &str) -> Option<JournalSync> {
        match s {
            "full" => Some(JournalSync::Full),
            "normal" => Some(JournalSync::Normal),
            _ => None,
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            JournalSync::Full => "FULL",
            JournalSync::Normal => "NORMAL",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("journal queue is full ({0} operations waiting); retry later")]
    QueueFull(usize),
    #[error("journal is closed")]
    Closed,
    #[error("journal write failed: {0}")]
    Write(String),
    #[error("journal cannot be opened: {0}")]
    Open(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Open,
    Committed,
    Released,
    Expired,
}

impl HoldState {
    fn code(self) -> i64 {
        match self {
            HoldState::Open => 0,
            HoldState::Committed => 1,
            HoldState::Released => 2,
            HoldState::Expired => 3,
        }
    }

    fn from_code(c: i64) -> Option<HoldState> {
        Some(match c {
            0 => HoldState::Open,
            1 => HoldState::Committed,
            2 => HoldState::Released,
            3 => HoldState::Expired,
            _ => return None,
        })
    }
}

/// A reservation as journaled: enough to rebuild the holds table after a restart and to
/// answer retries with their first outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationRow {
    pub reservation_id: String,
    pub account_id: String,
    pub resource: Resource,
    pub sku: String,
    pub quantity: u64,
    /// Money held while open.
    pub held: Money,
    pub expires_at_ms: i64,
    pub state: HoldState,
    /// Commit outcome (zero otherwise).
    pub charged: Money,
    pub charged_quantity: u64,
    /// When it left the Open state (0 while open).
    pub settled_at_ms: i64,
    /// Reported on its usage stream so far (already charged, report by report).
    pub streamed_quantity: u64,
    pub streamed_cost: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Running,
    /// Stopped on request.
    Stopped,
    /// Stopped by the idle auto-shutdown.
    IdleShutdown,
    /// Stopped because the next hour could not be pre-authorised.
    InsufficientFunds,
}

impl SessionState {
    fn code(self) -> i64 {
        match self {
            SessionState::Running => 0,
            SessionState::Stopped => 1,
            SessionState::IdleShutdown => 2,
            SessionState::InsufficientFunds => 3,
        }
    }

    fn from_code(c: i64) -> Option<SessionState> {
        Some(match c {
            0 => SessionState::Running,
            1 => SessionState::Stopped,
            2 => SessionState::IdleShutdown,
            3 => SessionState::InsufficientFunds,
            _ => return None,
        })
    }
}

/// An Exclusive session as journaled: its terms and how far it is billed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub session_id: String,
    pub account_id: String,
    pub sku: String,
    pub started_at_ms: i64,
    pub auto_shutdown: bool,
    pub idle_timeout_ms: i64,
    pub last_busy_at_ms: i64,
    /// Charged up to here (the start, or the end of the last settled hour).
    pub billed_until_ms: i64,
    /// Hours settled so far (names the next hour's usage id).
    pub hours_settled: u32,
    /// The current hour's pre-authorisation (zero once stopped).
    pub held: Money,
    /// All charged so far.
    pub charged: Money,
    pub state: SessionState,
    pub stopped_at_ms: i64,
}

#[derive(Debug)]
pub enum Entry {
    /// Insert or replace a reservation.
    Reservation(ReservationRow),
    /// A commit: the settled reservation and its usage, in one transaction.
    Commit(ReservationRow, UsageRecord),
    /// A usage stream's report: its usage, the job's last seq, and the reservation the
    /// stream took over (if any), in one transaction.
    Report {
        usage: UsageRecord,
        work_id: String,
        seq: u64,
        row: Option<ReservationRow>,
    },
    /// Usage with the session row it advances, in one transaction (or the row alone).
    Session(SessionRow, Option<UsageRecord>),
    /// An account's storage meter with the hours it closed and charged, in one
    /// transaction (or the meter alone).
    Storage {
        account_id: String,
        meter: StorageMeter,
        usage: Vec<UsageRecord>,
    },
    /// Every lease request sequence number this process will use is below this (so a
    /// restart, whatever the clock says, starts above them).
    LeaseSeqFloor(u64),
    /// Alert crossings of an account that fired (`set`) or re-armed (`unset`).
    Alerts {
        account_id: String,
        set: Vec<String>,
        unset: Vec<String>,
    },
    /// Usage the ledger acknowledged: drop from the outbox.
    Trim(Vec<u64>),
    /// Forget settled reservations older than this.
    Prune { settled_before_ms: i64 },
}

// Queued inline: boxing the common variant to shrink the rare one would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Op {
    Write(Entry, Option<oneshot::Sender<Result<(), JournalError>>>),
    Shutdown,
}

/// What was in the journal when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    pub reservations: Vec<ReservationRow>,
    /// Unacknowledged usage (also in the outbox queue).
    pub outbox: Vec<UsageRecord>,
    /// The next usage sequence number to use: above every one ever written.
    pub next_seq: u64,
    pub sessions: Vec<SessionRow>,
    /// Fired alert keys by account.
    pub alerts: Vec<(String, String)>,
    /// Last report seq of recent jobs: (work id, seq, when).
    pub works: Vec<(String, u64, i64)>,
    /// Lease request sequence numbers used so far are below this.
    pub lease_seq_floor: u64,
    /// Storage meters by account.
    pub storage: Vec<(String, StorageMeter)>,
}

pub struct Journal {
    tx: mpsc::Sender<Op>,
    queue_max: usize,
    outbox: Arc<Mutex<VecDeque<UsageRecord>>>,
    outbox_len: Arc<AtomicUsize>,
    new_usage: Arc<Notify>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id   TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL,
    resource         TEXT NOT NULL,
    sku              TEXT NOT NULL,
    quantity         INTEGER NOT NULL,
    held             TEXT NOT NULL,
    expires_at_ms    INTEGER NOT NULL,
    state            INTEGER NOT NULL,
    charged          TEXT NOT NULL,
    charged_quantity INTEGER NOT NULL,
    settled_at_ms    INTEGER NOT NULL,
    streamed_quantity INTEGER NOT NULL DEFAULT 0,
    streamed_cost    TEXT NOT NULL DEFAULT '0'
);
CREATE INDEX IF NOT EXISTS reservations_settled ON reservations(state, settled_at_ms);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    usage_id   TEXT NOT NULL,
    account_id TEXT NOT NULL,
    resource   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    quantity   INTEGER NOT NULL,
    cost       TEXT NOT NULL,
    at_ms      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id      TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    sku             TEXT NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    auto_shutdown   INTEGER NOT NULL,
    idle_timeout_ms INTEGER NOT NULL,
    last_busy_at_ms INTEGER NOT NULL,
    billed_until_ms INTEGER NOT NULL,
    hours_settled   INTEGER NOT NULL,
    held            TEXT NOT NULL,
    charged         TEXT NOT NULL,
    state           INTEGER NOT NULL,
    stopped_at_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS works (
    work_id  TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    account_id TEXT NOT NULL,
    key        TEXT NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE TABLE IF NOT EXISTS storage_meters (
    account_id     TEXT PRIMARY KEY,
    bytes_stored   INTEGER NOT NULL,
    level_at_ms    INTEGER NOT NULL,
    hour_start_ms  INTEGER NOT NULL,
    excess_byte_ms TEXT NOT NULL,
    stored_byte_ms TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#;

fn open_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Open(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Write(e.to_string())
}

fn money(s: &str) -> Result<Money, JournalError> {
    Decimal::from_str(s)
        .map(Money::from_decimal)
        .map_err(|_| open_err(format!("corrupt amount {s:?}")))
}

fn resource(s: &str) -> Result<Resource, JournalError> {
    Resource::from_name(s).ok_or_else(|| open_err(format!("corrupt resource {s:?}")))
}

impl Journal {
    /// Opens (creating) the journal at `path`, reads what it holds, and starts the writer;
    /// every write fsync'ed (`JournalSync::Full`).
    pub fn open(
        path: &Path,
        queue_max: usize,
        batch_max: usize,
    ) -> Result<(Journal, Recovered), JournalError> {
        Self::open_with(path, queue_max, batch_max, JournalSync::Full)
    }

    /// `open`, with the durability of writes chosen by `sync`.
    pub fn open_with(
        path: &Path,
        queue_max: usize,
        batch_max: usize,
        sync: JournalSync,
    ) -> Result<(Journal, Recovered), JournalError> {
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", sync.pragma())
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        upgrade(&conn)?;
        let recovered = read_all(&conn)?;
        let outbox = Arc::new(Mutex::new(
            recovered.outbox.iter().cloned().collect::<VecDeque<_>>(),
        ));
        let outbox_len = Arc::new(AtomicUsize::new(recovered.outbox.len()));
        let new_usage = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(queue_max.max(1));
        let writer = Writer {
            conn,
            rx,
            batch_max: batch_max.max(1),
            outbox: outbox.clone(),
            outbox_len: outbox_len.clone(),
            new_usage: new_usage.clone(),
            next_seq: recovered.next_seq,
        };
        let thread = std::thread::Builder::new()
            .name("quotad-journal".into())
            .spawn(move || writer.run())
            .map_err(open_err)?;
        Ok((
            Journal {
                tx,
                queue_max,
                outbox,
                outbox_len,
                new_usage,
                thread: Mutex::new(Some(thread)),
            },
            recovered,
        ))
    }

    /// Queues `entry`; the receiver resolves once it is durable (or failed). Never waits
    /// for queue space: a full queue is an error the caller turns into backpressure.
    pub fn submit(
        &self,
        entry: Entry,
    ) -> Result<oneshot::Receiver<Result<(), JournalError>>, JournalError> {
        let (done, rx) = oneshot::channel();
        self.send(Op::Write(entry, Some(done)))?;
        Ok(rx)
    }

    /// Queues `entry` without waiting for it (housekeeping that a restart can redo).
    pub fn submit_detached(&self, entry: Entry) -> Result<(), JournalError> {
        self.send(Op::Write(entry, None))
    }

    fn send(&self, op: Op) -> Result<(), JournalError> {
        self.tx.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => JournalError::QueueFull(self.queue_max),
            mpsc::error::TrySendError::Closed(_) => JournalError::Closed,
        })
    }

    /// Up to `max` durable, unacknowledged usage records, oldest first.
    pub fn outbox_batch(&self, max: usize) -> Vec<UsageRecord> {
        match self.outbox.lock() {
            Ok(q) => q.iter().take(max).cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Unacknowledged usage of one account with a seq above `after_seq`, oldest first.
    pub fn outbox_of(&self, account_id: &str, after_seq: u64) -> Vec<UsageRecord> {
        match self.outbox.lock() {
            Ok(q) => q
                .iter()
                .filter(|u| u.account_id == account_id && u.seq > after_seq)
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The ledger has the first `n` records of the outbox (those `outbox_batch` returned):
    /// forget them here and in the file.
    pub fn ack(&self, acked: &[UsageRecord]) {
        let mut seqs = Vec::with_capacity(acked.len());
        if let Ok(mut q) = self.outbox.lock() {
            for a in acked {
                if q.front().map(|f| f.seq) == Some(a.seq) {
                    q.pop_front();
                    seqs.push(a.seq);
                }
            }
            self.outbox_len.store(q.len(), Ordering::Relaxed);
        }
        if !seqs.is_empty() {
            // If this cannot be queued the records are pushed again after a restart, and
            // the ledger ignores what it already has.
            if let Err(e) = self.submit_detached(Entry::Trim(seqs)) {
                tracing::warn!(error = %e, "journal trim not queued");
            }
        }
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox_len.load(Ordering::Relaxed)
    }

    /// Resolves when new usage became durable since the last call.
    pub async fn usage_written(&self) {
        self.new_usage.notified().await
    }

    /// Writes everything queued so far, then stops the writer.
    pub async fn close(&self) {
        if self.tx.send(Op::Shutdown).await.is_err() {
            return;
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Brings a journal written by an earlier quotad up to this schema (columns added since).
fn upgrade(conn: &Connection) -> Result<(), JournalError> {
    let has_streamed: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('reservations') WHERE name = 'streamed_quantity'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(open_err)?
        > 0;
    if !has_streamed {
        conn.execute_batch(
            "ALTER TABLE reservations ADD COLUMN streamed_quantity INTEGER NOT NULL DEFAULT 0; \
             ALTER TABLE reservations ADD COLUMN streamed_cost TEXT NOT NULL DEFAULT '0';",
        )
        .map_err(open_err)?;
    }
    Ok(())
}

fn read_all(conn: &Connection) -> Result<Recovered, JournalError> {
    let mut stmt = conn
        .prepare(
            "SELECT reservation_id, account_id, resource, sku, quantity, held, expires_at_ms, \
             state, charged, charged_quantity, settled_at_ms, streamed_quantity, streamed_cost \
             FROM reservations",
        )
        .map_err(open_err)?;
    type Raw = (
        String,
        String,
        String,
        String,
        i64,
        String,
        i64,
        i64,
        String,
        i64,
        i64,
        i64,
        String,
    );
    let rows: Vec<Raw> = stmt
        .query_map([], |r| <_>::try_from(r))
        .map_err(open_err)?
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    let mut reservations = Vec::with_capacity(rows.len());
    for (id, account, res, sku, qty, held, exp, state, charged, cq, settled, sq, sc) in rows {
        reservations.push(ReservationRow {
            resource: resource(&res)?,
            state: HoldState::from_code(state)
                .ok_or_else(|| open_err(format!("corrupt hold state {state}")))?,
            held: money(&held)?,
            charged: money(&charged)?,
            reservation_id: id,
            account_id: account,
            sku,
            quantity: qty.max(0) as u64,
            expires_at_ms: exp,
            charged_quantity: cq.max(0) as u64,
            settled_at_ms: settled,
            streamed_quantity: sq.max(0) as u64,
            streamed_cost: money(&sc)?,
        });
    }
    let mut stmt = conn
        .prepare(
            "SELECT seq, usage_id, account_id, resource, sku, quantity, cost, at_ms FROM outbox \
             ORDER BY seq",
        )
        .map_err(open_err)?;
    type RawU = (i64, String, String, String, String, i64, String, i64);
    let rows: Vec<RawU> = stmt
        .query_map([], |r| <_>::try_from(r))
        .map_err(open_err)?
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    let mut outbox = Vec::with_capacity(rows.len());
    for (seq, usage_id, account_id, res, sku, quantity, cost, at_ms) in rows {
        outbox.push(UsageRecord {
            seq: seq.max(0) as u64,
            usage_id,
            account_id,
            resource: resource(&res)?,
            sku,
            quantity: quantity.max(0) as u64,
            cost: money(&cost)?,
            at_ms,
        });
    }
    let stored_next: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = 'next_seq'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(open_err)?;
    let next_seq = outbox
        .last()
        .map(|u| u.seq + 1)
        .unwrap_or(1)
        .max(stored_next.unwrap_or(1).max(1) as u64);
    let mut stmt = conn
        .prepare(
            "SELECT session_id, account_id, sku, started_at_ms, auto_shutdown, idle_timeout_ms, \
             last_busy_at_ms, billed_until_ms, hours_settled, held, charged, state, \
             stopped_at_ms FROM sessions",
        )
        .map_err(open_err)?;
    type RawS = (
        String,
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        String,
        String,
        i64,
        i64,
    );
    let rows: Vec<RawS> = stmt
        .query_map([], |r| <_>::try_from(r))
        .map_err(open_err)?
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    let mut sessions = Vec::with_capacity(rows.len());
    for (
        id,
        account,
        sku,
        started,
        auto,
        idle,
        busy,
        billed,
        hours,
        held,
        charged,
        state,
        stopped,
    ) in rows
    {
        sessions.push(SessionRow {
            session_id: id,
            account_id: account,
            sku,
            started_at_ms: started,
            auto_shutdown: auto != 0,
            idle_timeout_ms: idle,
            last_busy_at_ms: busy,
            billed_until_ms: billed,
            hours_settled: u32::try_from(hours).unwrap_or(0),
            held: money(&held)?,
            charged: money(&charged)?,
            state: SessionState::from_code(state)
                .ok_or_else(|| open_err(format!("corrupt session state {state}")))?,
            stopped_at_ms: stopped,
        });
    }
    let mut stmt = conn
        .prepare("SELECT account_id, key FROM alerts ORDER BY account_id")
        .map_err(open_err)?;
    let alerts: Vec<(String, String)> = stmt
        .query_map([], |r| <_>::try_from(r))
        .map_err(open_err)?
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    let lease_seq_floor: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'lease_seq_floor'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(open_err)?;
    let mut stmt = conn
        .prepare("SELECT work_id, last_seq, at_ms FROM works")
        .map_err(open_err)?;
    let works: Vec<(String, i64, i64)> = stmt
        .query_map([], |r| <_>::try_from(r))
        .map_err(open_err)?
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    let mut stmt = conn
        .prepare(
            "SELECT account_id, bytes_stored, level_at_ms, hour_start_ms, excess_byte_ms, \
             stored_byte_ms FROM storage_meters",
        )
        .map_err(open_err)?;
    let rows: Vec<(String, i64, i64, i64, String, String)> = stmt
        .query_map([], |r| <_>::try_from(r))
        .map_err(open_err)?
        .collect::<Result<_, _>>()
        .map_err(open_err)?;
    let int = |s: &str| {
        s.parse::<u128>()
            .map_err(|_| open_err(format!("corrupt storage integral {s:?}")))
    };
    let mut storage = Vec::with_capacity(rows.len());
    for (account_id, bytes, level_at_ms, hour_start_ms, excess, stored) in rows {
        storage.push((
            account_id,
            StorageMeter {
                bytes_stored: bytes.max(0) as u64,
                level_at_ms,
                hour_start_ms,
                excess_byte_ms: int(&excess)?,
                stored_byte_ms: int(&stored)?,
            },
        ));
    }
    Ok(Recovered {
        storage,
        reservations,
        outbox,
        next_seq,
        sessions,
        alerts,
        works: works
            .into_iter()
            .map(|(w, s, at)| (w, s.max(0) as u64, at))
            .collect(),
        lease_seq_floor: lease_seq_floor.unwrap_or(0).max(0) as u64,
    })
}

struct Writer {
    conn: Connection,
    rx: mpsc::Receiver<Op>,
    batch_max: usize,
    outbox: Arc<Mutex<VecDeque<UsageRecord>>>,
    outbox_len: Arc<AtomicUsize>,
    new_usage: Arc<Notify>,
    next_seq: u64,
}

type Batch = Vec<(Entry, Option<oneshot::Sender<Result<(), JournalError>>>)>;

impl Writer {
    fn run(mut self) {
        let mut stop = false;
        while !stop {
            let Some(first) = self.rx.blocking_recv() else {
                break;
            };
            let mut batch: Batch = Vec::new();
            match first {
                Op::Write(e, d) => batch.push((e, d)),
                Op::Shutdown => stop = true,
            }
            while !stop && batch.len() < self.batch_max {
                match self.rx.try_recv() {
                    Ok(Op::Write(e, d)) => batch.push((e, d)),
                    Ok(Op::Shutdown) => stop = true,
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let result = self.write(&batch);
            if let Err(e) = &result {
                tracing::error!(error = %e, ops = batch.len(), "journal write failed");
            } else {
                let mut any = false;
                if let Ok(mut q) = self.outbox.lock() {
                    for (e, _) in &batch {
                        if let Entry::Commit(_, u)
                        | Entry::Report { usage: u, .. }
                        | Entry::Session(_, Some(u)) = e
                        {
                            q.push_back(u.clone());
                            any = true;
                        }
                        if let Entry::Storage { usage, .. } = e {
                            q.extend(usage.iter().cloned());
                            any |= !usage.is_empty();
                        }
                    }
                    self.outbox_len.store(q.len(), Ordering::Relaxed);
                }
                if any {
                    self.new_usage.notify_one();
                }
            }
            for (_, done) in batch {
                if let Some(d) = done {
                    let _ = d.send(result.clone());
                }
            }
        }
        tracing::debug!("journal writer stopped");
    }

    fn write(&mut self, batch: &Batch) -> Result<(), JournalError> {
        let tx = self.conn.transaction().map_err(write_err)?;
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO reservations (reservation_id, account_id, resource, \
                     sku, quantity, held, expires_at_ms, state, charged, charged_quantity, \
                     settled_at_ms, streamed_quantity, streamed_cost) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(write_err)?;
            let mut usage = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO outbox (seq, usage_id, account_id, resource, sku, \
                     quantity, cost, at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(write_err)?;
            let mut trim = tx
                .prepare_cached("DELETE FROM outbox WHERE seq = ?1")
                .map_err(write_err)?;
            let mut put_session = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO sessions (session_id, account_id, sku, \
                     started_at_ms, auto_shutdown, idle_timeout_ms, last_busy_at_ms, \
                     billed_until_ms, hours_settled, held, charged, state, stopped_at_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(write_err)?;
            let mut put_work = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO works (work_id, last_seq, at_ms) VALUES (?1, ?2, ?3)",
                )
                .map_err(write_err)?;
            let mut alert_set = tx
                .prepare_cached("INSERT OR IGNORE INTO alerts (account_id, key) VALUES (?1, ?2)")
                .map_err(write_err)?;
            let mut alert_unset = tx
                .prepare_cached("DELETE FROM alerts WHERE account_id = ?1 AND key = ?2")
                .map_err(write_err)?;
            let mut put_row = |r: &ReservationRow| {
                put.execute(params![
                    r.reservation_id,
                    r.account_id,
                    r.resource.name(),
                    r.sku,
                    r.quantity as i64,
                    r.held.to_string(),
                    r.expires_at_ms,
                    r.state.code(),
                    r.charged.to_string(),
                    r.charged_quantity as i64,
                    r.settled_at_ms,
                    r.streamed_quantity as i64,
                    r.streamed_cost.to_string()
                ])
                .map(|_| ())
            };
            let mut put_usage = |u: &UsageRecord| {
                usage
                    .execute(params![
                        u.seq as i64,
                        u.usage_id,
                        u.account_id,
                        u.resource.name(),
                        u.sku,
                        u.quantity as i64,
                        u.cost.to_string(),
                        u.at_ms
                    ])
                    .map(|_| ())
            };
            for (e, _) in batch {
                match e {
                    Entry::Reservation(r) => put_row(r).map_err(write_err)?,
                    Entry::Commit(r, u) => {
                        put_row(r).map_err(write_err)?;
                        put_usage(u).map_err(write_err)?;
                        self.next_seq = self.next_seq.max(u.seq + 1);
                    }
                    Entry::Report {
                        usage: u,
                        work_id,
                        seq,
                        row,
                    } => {
                        if let Some(r) = row {
                            put_row(r).map_err(write_err)?;
                        }
                        put_usage(u).map_err(write_err)?;
                        put_work
                            .execute(params![work_id, *seq as i64, u.at_ms])
                            .map_err(write_err)?;
                        self.next_seq = self.next_seq.max(u.seq + 1);
                    }
                    Entry::Session(r, u) => {
                        put_session
                            .execute(params![
                                r.session_id,
                                r.account_id,
                                r.sku,
                                r.started_at_ms,
                                i64::from(r.auto_shutdown),
                                r.idle_timeout_ms,
                                r.last_busy_at_ms,
                                r.billed_until_ms,
                                i64::from(r.hours_settled),
                                r.held.to_string(),
                                r.charged.to_string(),
                                r.state.code(),
                                r.stopped_at_ms
                            ])
                            .map_err(write_err)?;
                        if let Some(u) = u {
                            put_usage(u).map_err(write_err)?;
                            self.next_seq = self.next_seq.max(u.seq + 1);
                        }
                    }
                    Entry::Storage {
                        account_id,
                        meter: m,
                        usage,
                    } => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO storage_meters (account_id, bytes_stored, \
                             level_at_ms, hour_start_ms, excess_byte_ms, stored_byte_ms) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )
                        .and_then(|mut st| {
                            st.execute(params![
                                account_id,
                                i64::try_from(m.bytes_stored).unwrap_or(i64::MAX),
                                m.level_at_ms,
                                m.hour_start_ms,
                                m.excess_byte_ms.to_string(),
                                m.stored_byte_ms.to_string()
                            ])
                        })
                        .map_err(write_err)?;
                        for u in usage {
                            put_usage(u).map_err(write_err)?;
                            self.next_seq = self.next_seq.max(u.seq + 1);
                        }
                    }
                    Entry::LeaseSeqFloor(floor) => {
                        tx.execute(
                            "INSERT INTO meta (key, value) VALUES ('lease_seq_floor', ?1) \
                             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                            [i64::try_from(*floor).unwrap_or(i64::MAX)],
                        )
                        .map_err(write_err)?;
                    }
                    Entry::Alerts {
                        account_id,
                        set,
                        unset,
                    } => {
                        for k in set {
                            alert_set
                                .execute(params![account_id, k])
                                .map_err(write_err)?;
                        }
                        for k in unset {
                            alert_unset
                                .execute(params![account_id, k])
                                .map_err(write_err)?;
                        }
                    }
                    Entry::Trim(seqs) => {
                        for s in seqs {
                            trim.execute([*s as i64]).map_err(write_err)?;
                        }
                    }
                    Entry::Prune { settled_before_ms } => {
                        tx.execute(
                            "DELETE FROM reservations WHERE state <> 0 AND settled_at_ms < ?1",
                            [settled_before_ms],
                        )
                        .map_err(write_err)?;
                        tx.execute(
                            "DELETE FROM sessions WHERE state <> 0 AND stopped_at_ms < ?1",
                            [settled_before_ms],
                        )
                        .map_err(write_err)?;
                        tx.execute("DELETE FROM works WHERE at_ms < ?1", [settled_before_ms])
                            .map_err(write_err)?;
                    }
                }
            }
        }
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('next_seq', ?1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .and_then(|mut st| st.execute([self.next_seq as i64]))
        .map_err(write_err)?;
        tx.commit().map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, state: HoldState) -> ReservationRow {
        ReservationRow {
            reservation_id: id.into(),
            account_id: "a".into(),
            resource: Resource::GpuShared,
            sku: "gpu.shared.a10".into(),
            quantity: 1000,
            held: Money::parse("0.6").unwrap(),
            expires_at_ms: 10,
            state,
            charged: Money::ZERO,
            charged_quantity: 0,
            settled_at_ms: 0,
            streamed_quantity: 0,
            streamed_cost: Money::ZERO,
        }
    }

    fn usage(seq: u64) -> UsageRecord {
        UsageRecord {
            seq,
            usage_id: format!("u{seq}"),
            account_id: "a".into(),
            resource: Resource::GpuShared,
            sku: "gpu.shared.a10".into(),
            quantity: 1000,
            cost: Money::parse("0.6").unwrap(),
            at_ms: 5,
        }
    }

    #[tokio::test]
    async fn survives_reopen_and_trims_acked_usage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.db");
        {
            let (j, rec) = Journal::open(&path, 16, 4).unwrap();
            assert_eq!(rec.next_seq, 1);
            j.submit(Entry::Reservation(row("r1", HoldState::Open)))
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            let mut c = row("r2", HoldState::Committed);
            c.settled_at_ms = 7;
            j.submit(Entry::Commit(c, usage(1)))
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            j.submit(Entry::Commit(row("r3", HoldState::Committed), usage(2)))
                .unwrap()
                .await
                .unwrap()
                .unwrap();
            assert_eq!(j.outbox_len(), 2);
            let first = j.outbox_batch(1);
            j.ack(&first);
            j.close().await;
        }
        let (j, rec) = Journal::open(&path, 16, 4).unwrap();
        assert_eq!(rec.reservations.len(), 3);
        assert_eq!(rec.outbox, vec![usage(2)]);
        assert_eq!(rec.next_seq, 3);
        assert_eq!(j.outbox_len(), 1);
        j.submit(Entry::Prune {
            settled_before_ms: 8,
        })
        .unwrap()
        .await
        .unwrap()
        .unwrap();
        j.close().await;
        let (_j, rec) = Journal::open(&path, 16, 4).unwrap();
        let ids: Vec<&str> = rec
            .reservations
            .iter()
            .map(|r| r.reservation_id.as_str())
            .collect();
        assert!(ids.contains(&"r1") && !ids.contains(&"r2"), "{ids:?}");
    }

    #[tokio::test]
    async fn full_queue_is_an_error_not_a_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&dir.path().join("j.db"), 1, 1).unwrap();
        // Hold the outbox so the writer blocks after its first commit: the queue of one
        // then fills, whatever the timing.
        let guard = j.outbox.lock().unwrap();
        let mut results = Vec::new();
        for i in 0..3 {
            results.push(j.submit_detached(Entry::Commit(
                row(&format!("r{i}"), HoldState::Committed),
                usage(i + 1),
            )));
        }
        assert!(
            results.contains(&Err(JournalError::QueueFull(1))),
            "{results:?}"
        );
        drop(guard);
        j.close().await;
    }
}
