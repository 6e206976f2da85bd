//! The sidecar's local journal: what the sidecar acknowledged is durable here before the
//! ack leaves (G2), and stays until the ledger has it.
//!
//! One append-only file in the data directory (`journal.log`), written by one thread that
//! appends whatever has queued up as one write and, in `Full` mode, one fdatasync (group
//! commit). Each record carries its length and a CRC-32C, so a write cut short by a crash
//! is recognised on the next start and cut off, and damage anywhere else stops the start
//! rather than silently losing acknowledged usage. A failed append is cut back off the
//! file before anyone is told, so a full disk leaves the file as it was.
//!
//! The writer keeps the live state the records add up to (open and recently settled
//! reservations, unacknowledged usage, sessions, jobs' last report seqs, fired alerts) and,
//! once the file has grown to several times that state, writes the state alone to a new
//! file and renames it over the old one: the file stays proportional to what is live, and a
//! start reads it in one pass.
//!
//! Zeros are written ahead of the records, so that a group's fdatasync flushes data and
//! not also a growing file size, which costs about twice as much (BENCHMARKS.md).
//!
//! An append-only file replaced a SQLite database here: the same group commit without
//! row updates, with a checksum per record and the sync above. A journal left by a version
//! that used it (`journal.db`) is read once at start and carried over.

mod codec;
mod legacy;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::billing::storage::StorageMeter;
use crate::billing::{Money, Resource};
use crate::ledger::api::UsageRecord;
use codec::Record;

/// Journal operations that may wait in the queue for the writer; more is overload and is
/// refused with RESOURCE_EXHAUSTED rather than buffered without bound.
pub const DEFAULT_JOURNAL_QUEUE_MAX: usize = 65_536;

/// Most operations written in one group (one write, one fdatasync).
pub const DEFAULT_JOURNAL_BATCH_MAX: usize = 4_096;

/// The file is compacted (rewritten as its live state) once it has grown by this much
/// since the last compaction, and by at least twice that state's size: compaction then
/// costs a bounded fraction of the writes, and the file stays a few times the live state.
pub const DEFAULT_JOURNAL_COMPACT_MIN_BYTES: u64 = 64 << 20;

/// Space written ahead of the records, as zeros, so that a group's fdatasync flushes its
/// data only: appending past the end of a file also commits its new size (a file system
/// journal transaction), which on ext4 costs about twice as much. Cleanly closed journals
/// are cut back to their records; zeros after the last record read as its end.
pub const DEFAULT_JOURNAL_PREALLOCATE_BYTES: u64 = 8 << 20;

/// In `Normal` mode, the longest a written group may wait for an fdatasync while writes
/// keep coming (the OS writes it back on its own schedule otherwise).
pub const NORMAL_SYNC_INTERVAL_MS: u64 = 1_000;

/// When a journal write counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JournalSync {
    /// fdatasync at every group commit: an acknowledged write survives a kill -9 of quotad
    /// and a power loss or OS crash.
    #[default]
    Full,
    /// The write is in the OS before the ack, fdatasync'ed at most `NORMAL_SYNC_INTERVAL_MS`
    /// later while writes continue, at compaction and at close: it survives a kill -9 of
    /// quotad (G2), but a power loss or OS crash may lose the last moments. Several times
    /// the throughput of `Full` on disks with slow fsync.
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
}

/// How a journal is opened; `Default` is the documented defaults.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    pub queue_max: usize,
    pub batch_max: usize,
    pub sync: JournalSync,
    pub compact_min_bytes: u64,
    pub preallocate_bytes: u64,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            queue_max: DEFAULT_JOURNAL_QUEUE_MAX,
            batch_max: DEFAULT_JOURNAL_BATCH_MAX,
            sync: JournalSync::Full,
            compact_min_bytes: DEFAULT_JOURNAL_COMPACT_MIN_BYTES,
            preallocate_bytes: DEFAULT_JOURNAL_PREALLOCATE_BYTES,
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
    #[error(
        "journal {path} is damaged at byte {offset} ({reason}) with intact records after it; \
         it holds acknowledged usage, so quotad will not start over it: keep a copy for \
         inspection and restore it, or move it aside to start with an empty journal"
    )]
    Corrupt {
        path: String,
        offset: u64,
        reason: String,
    },
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

fn open_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Open(e.to_string())
}

fn write_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Write(e.to_string())
}

impl Journal {
    /// Opens (creating) the journal at `path`, reads what it holds, and starts the writer;
    /// every write fdatasync'ed (`JournalSync::Full`).
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
        Self::open_opts(
            path,
            JournalOptions {
                queue_max,
                batch_max,
                sync,
                ..JournalOptions::default()
            },
        )
    }

    /// Opens the journal at `path` with every setting given. A SQLite journal left by an
    /// earlier quotad beside it (`path` with the extension `db`) is carried over first.
    pub fn open_opts(
        path: &Path,
        opts: JournalOptions,
    ) -> Result<(Journal, Recovered), JournalError> {
        let legacy = path.with_extension("db");
        if !path.exists() && legacy.exists() && legacy != path {
            carry_over(&legacy, path)?;
        }
        let (file, mut tables, file_bytes) = load(path)?;
        let recovered = tables.recovered();
        let outbox = Arc::new(Mutex::new(
            recovered.outbox.iter().cloned().collect::<VecDeque<_>>(),
        ));
        let outbox_len = Arc::new(AtomicUsize::new(recovered.outbox.len()));
        let new_usage = Arc::new(Notify::new());
        let queue_max = opts.queue_max.max(1);
        let (tx, rx) = mpsc::channel(queue_max);
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            file_bytes,
            allocated_bytes: file_bytes,
            compacted_bytes: file_bytes,
            tables,
            rx,
            opts,
            buf: Vec::new(),
            outbox: outbox.clone(),
            outbox_len: outbox_len.clone(),
            new_usage: new_usage.clone(),
            synced_at: Instant::now(),
            unsynced: false,
            broken: None,
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

    /// Unacknowledged usage of one account with a seq above `after_seq`, oldest first, at
    /// most `max` records.
    pub fn outbox_of(&self, account_id: &str, after_seq: u64, max: usize) -> Vec<UsageRecord> {
        match self.outbox.lock() {
            Ok(q) => q
                .iter()
                .filter(|u| u.account_id == account_id && u.seq > after_seq)
                .take(max)
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

/// The state the journal's records add up to: what a start recovers and what a compacted
/// file holds.
#[derive(Default)]
struct Tables {
    reservations: HashMap<String, ReservationRow>,
    sessions: HashMap<String, SessionRow>,
    works: HashMap<String, (u64, i64)>,
    alerts: BTreeSet<(String, String)>,
    storage: HashMap<String, StorageMeter>,
    next_seq: u64,
    lease_seq_floor: u64,
    /// Unacknowledged usage by seq, kept only while the file is read at start; after that
    /// the journal's shared outbox queue is the one copy.
    outbox: BTreeMap<u64, UsageRecord>,
}

impl Tables {
    fn new() -> Tables {
        Tables {
            next_seq: 1,
            ..Tables::default()
        }
    }

    fn from_recovered(r: Recovered) -> Tables {
        let mut t = Tables::new();
        t.next_seq = r.next_seq.max(1);
        t.lease_seq_floor = r.lease_seq_floor;
        for row in r.reservations {
            t.reservations.insert(row.reservation_id.clone(), row);
        }
        for s in r.sessions {
            t.sessions.insert(s.session_id.clone(), s);
        }
        for (w, seq, at) in r.works {
            t.works.insert(w, (seq, at));
        }
        t.alerts.extend(r.alerts);
        t.storage.extend(r.storage);
        for u in r.outbox {
            t.next_seq = t.next_seq.max(u.seq + 1);
            t.outbox.insert(u.seq, u);
        }
        t
    }

    fn note_usage(&mut self, u: &UsageRecord) {
        self.next_seq = self.next_seq.max(u.seq + 1);
    }

    /// Applies a record read back at start (usage goes to the outbox).
    fn replay(&mut self, record: Record) {
        match record {
            Record::Entry(e) => {
                let mut usage = Vec::new();
                self.apply(e, &mut usage);
                for u in usage {
                    self.outbox.insert(u.seq, u);
                }
            }
            Record::NextSeq(n) => self.next_seq = self.next_seq.max(n),
            Record::Work {
                work_id,
                seq,
                at_ms,
            } => {
                self.works.insert(work_id, (seq, at_ms));
            }
            Record::Usage(u) => {
                self.note_usage(&u);
                self.outbox.insert(u.seq, u);
            }
        }
    }

    /// Applies a written entry; the usage it carries goes to `usage` (for the outbox).
    fn apply(&mut self, e: Entry, usage_out: &mut Vec<UsageRecord>) {
        match e {
            Entry::Reservation(r) => {
                self.reservations.insert(r.reservation_id.clone(), r);
            }
            Entry::Commit(r, u) => {
                self.reservations.insert(r.reservation_id.clone(), r);
                self.note_usage(&u);
                usage_out.push(u);
            }
            Entry::Report {
                usage,
                work_id,
                seq,
                row,
            } => {
                if let Some(r) = row {
                    self.reservations.insert(r.reservation_id.clone(), r);
                }
                self.works.insert(work_id, (seq, usage.at_ms));
                self.note_usage(&usage);
                usage_out.push(usage);
            }
            Entry::Session(r, u) => {
                self.sessions.insert(r.session_id.clone(), r);
                if let Some(u) = u {
                    self.note_usage(&u);
                    usage_out.push(u);
                }
            }
            Entry::Storage {
                account_id,
                meter,
                usage,
            } => {
                self.storage.insert(account_id, meter);
                for u in usage {
                    self.note_usage(&u);
                    usage_out.push(u);
                }
            }
            Entry::LeaseSeqFloor(f) => {
                self.lease_seq_floor = f;
            }
            Entry::Alerts {
                account_id,
                set,
                unset,
            } => {
                for k in unset {
                    self.alerts.remove(&(account_id.clone(), k));
                }
                for k in set {
                    self.alerts.insert((account_id.clone(), k));
                }
            }
            Entry::Trim(seqs) => {
                for s in seqs {
                    self.outbox.remove(&s);
                }
            }
            Entry::Prune { settled_before_ms } => {
                self.reservations.retain(|_, r| {
                    r.state == HoldState::Open || r.settled_at_ms >= settled_before_ms
                });
                self.sessions.retain(|_, s| {
                    s.state == SessionState::Running || s.stopped_at_ms >= settled_before_ms
                });
                self.works.retain(|_, (_, at)| *at >= settled_before_ms);
            }
        }
    }

    /// What a start hands the engine; the outbox moves out (the shared queue takes over).
    fn recovered(&mut self) -> Recovered {
        let outbox: Vec<UsageRecord> = std::mem::take(&mut self.outbox).into_values().collect();
        Recovered {
            reservations: self.reservations.values().cloned().collect(),
            outbox,
            next_seq: self.next_seq,
            sessions: self.sessions.values().cloned().collect(),
            alerts: self.alerts.iter().cloned().collect(),
            works: self
                .works
                .iter()
                .map(|(w, (s, at))| (w.clone(), *s, *at))
                .collect(),
            lease_seq_floor: self.lease_seq_floor,
            storage: self
                .storage
                .iter()
                .map(|(a, m)| (a.clone(), m.clone()))
                .collect(),
        }
    }

    /// The whole state as records, after the file header: a compacted journal.
    fn encode(&self, outbox: &VecDeque<UsageRecord>, out: &mut Vec<u8>) {
        out.extend_from_slice(codec::MAGIC);
        codec::encode_next_seq(out, self.next_seq);
        codec::encode_entry(out, &Entry::LeaseSeqFloor(self.lease_seq_floor));
        for r in self.reservations.values() {
            codec::encode_reservation(out, r);
        }
        for s in self.sessions.values() {
            codec::encode_session(out, s);
        }
        for (w, (seq, at)) in &self.works {
            codec::encode_work(out, w, *seq, *at);
        }
        let mut by_account: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (a, k) in &self.alerts {
            by_account.entry(a).or_default().push(k.clone());
        }
        for (a, keys) in by_account {
            codec::encode_entry(
                out,
                &Entry::Alerts {
                    account_id: a.to_owned(),
                    set: keys,
                    unset: Vec::new(),
                },
            );
        }
        for (a, m) in &self.storage {
            codec::encode_storage(out, a, m);
        }
        for u in outbox {
            codec::encode_usage(out, u);
        }
    }
}

/// Reads the journal at `path` (creating it if missing): its state, the file open for
/// appending, and the file's length. A torn last record is cut off; damage before intact
/// records is an error.
fn load(path: &Path) -> Result<(File, Tables, u64), JournalError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| open_err(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| open_err(format!("{}: {e}", path.display())))?;
    let mut tables = Tables::new();
    let header = codec::MAGIC.len();
    let good_len = if bytes.len() < header && codec::MAGIC.starts_with(&bytes) {
        // New, or its creation was cut short before the header was whole.
        let mut fresh = Vec::with_capacity(header);
        fresh.extend_from_slice(codec::MAGIC);
        file.set_len(0).map_err(open_err)?;
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        file.write_all(&fresh).map_err(open_err)?;
        file.sync_all().map_err(open_err)?;
        sync_dir(path).map_err(open_err)?;
        header as u64
    } else if !bytes.starts_with(codec::MAGIC) {
        return Err(open_err(format!(
            "{} is not a quotad journal (it does not start with {:?})",
            path.display(),
            String::from_utf8_lossy(codec::MAGIC)
        )));
    } else {
        let end = replay(path, &bytes, &mut tables)?;
        if end < bytes.len() {
            if bytes[end..].iter().all(|b| *b == 0) {
                // Space written ahead and not used before a kill: the records end here.
                tracing::debug!(offset = end, "journal ends before its preallocated space");
            } else {
                tracing::warn!(
                    path = %path.display(),
                    offset = end,
                    dropped_bytes = bytes.len() - end,
                    "journal ends in a torn record (a write cut short by a crash, never \
                     acknowledged); cutting it off"
                );
            }
            file.set_len(end as u64).map_err(open_err)?;
            file.sync_all().map_err(open_err)?;
        }
        end as u64
    };
    drop(bytes);
    file.seek(SeekFrom::Start(good_len)).map_err(open_err)?;
    Ok((file, tables, good_len))
}

/// Applies every intact record of `bytes` (a whole file) to `tables`; returns where the
/// intact records end.
fn replay(path: &Path, bytes: &[u8], tables: &mut Tables) -> Result<usize, JournalError> {
    let mut pos = codec::MAGIC.len();
    while pos < bytes.len() {
        let bad = match next_record(&bytes[pos..]) {
            Ok((payload, len)) => match codec::decode(payload) {
                Ok(record) => {
                    tables.replay(record);
                    pos += len;
                    continue;
                }
                Err(e) => (e.to_string(), pos + len),
            },
            Err(Damage { reason, end }) => (reason, end.map_or(bytes.len(), |e| pos + e)),
        };
        let (reason, record_end) = bad;
        // A crash can only cut the last write short, and a power loss may leave zeros
        // after it: either way nothing follows the damage but zeros.
        let rest = bytes.get(record_end..).unwrap_or(&[]);
        if rest.iter().all(|b| *b == 0) {
            return Ok(pos);
        }
        return Err(JournalError::Corrupt {
            path: path.display().to_string(),
            offset: pos as u64,
            reason,
        });
    }
    Ok(pos)
}

struct Damage {
    reason: String,
    /// Where the damaged record ends, relative to its start, if its length is believable.
    end: Option<usize>,
}

/// The payload of the record at the start of `b` and the record's whole length.
fn next_record(b: &[u8]) -> Result<(&[u8], usize), Damage> {
    if b.len() < codec::FRAME_BYTES {
        return Err(Damage {
            reason: format!("{} bytes, too few for a record frame", b.len()),
            end: None,
        });
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len == 0 || len > codec::RECORD_MAX_BYTES {
        return Err(Damage {
            reason: format!("impossible record length {len}"),
            end: None,
        });
    }
    let end = codec::FRAME_BYTES + len;
    if b.len() < end {
        return Err(Damage {
            reason: format!("record of {len} bytes cut short at {}", b.len()),
            end: None,
        });
    }
    let payload = &b[codec::FRAME_BYTES..end];
    if !codec::checksum_ok(payload, crc) {
        return Err(Damage {
            reason: "checksum mismatch".into(),
            end: Some(end),
        });
    }
    Ok((payload, end))
}

/// Makes a rename or creation in `path`'s directory durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Writes the state of the SQLite journal `legacy` as a new journal at `path`, then renames
/// the old file so it is not read again (and is kept for inspection).
fn carry_over(legacy: &Path, path: &Path) -> Result<(), JournalError> {
    let recovered = legacy::read(legacy)?;
    let tables = Tables::from_recovered(recovered);
    let outbox: VecDeque<UsageRecord> = tables.outbox.values().cloned().collect();
    let mut bytes = Vec::new();
    tables.encode(&outbox, &mut bytes);
    write_atomically(path, &bytes).map_err(open_err)?;
    let kept = legacy.with_extension("db.carried-over");
    std::fs::rename(legacy, &kept).map_err(open_err)?;
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(legacy.with_extension(ext));
    }
    tracing::info!(
        from = %legacy.display(),
        to = %path.display(),
        kept = %kept.display(),
        reservations = tables.reservations.len(),
        unacknowledged_usage = outbox.len(),
        "carried the SQLite journal of an earlier quotad over to the append-only journal"
    );
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("log.tmp");
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

struct Writer {
    path: PathBuf,
    file: File,
    /// End of the records: where the next group goes.
    file_bytes: u64,
    /// Length of the file: the records and the zeros written ahead of them.
    allocated_bytes: u64,
    /// Length of the file right after the last compaction (or the start).
    compacted_bytes: u64,
    tables: Tables,
    rx: mpsc::Receiver<Op>,
    opts: JournalOptions,
    /// The group being written (reused).
    buf: Vec<u8>,
    outbox: Arc<Mutex<VecDeque<UsageRecord>>>,
    outbox_len: Arc<AtomicUsize>,
    new_usage: Arc<Notify>,
    synced_at: Instant,
    /// Written but not yet fdatasync'ed (`Normal` mode).
    unsynced: bool,
    /// Why the file can no longer be appended to, once a failed write could not be cut
    /// back off it: every later write fails with this rather than append after damage.
    broken: Option<String>,
}

type Batch = Vec<(Entry, Option<oneshot::Sender<Result<(), JournalError>>>)>;

impl Writer {
    fn run(mut self) {
        let mut stop = false;
        let batch_max = self.opts.batch_max.max(1);
        while !stop {
            let Some(first) = self.rx.blocking_recv() else {
                break;
            };
            let mut batch: Batch = Vec::new();
            match first {
                Op::Write(e, d) => batch.push((e, d)),
                Op::Shutdown => stop = true,
            }
            while !stop && batch.len() < batch_max {
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
            let mut done = Vec::with_capacity(batch.len());
            if let Err(e) = &result {
                tracing::error!(error = %e, ops = batch.len(), "journal write failed");
                done.extend(batch.into_iter().map(|(_, d)| d));
            } else {
                let mut usage = Vec::new();
                for (e, d) in batch {
                    self.tables.apply(e, &mut usage);
                    done.push(d);
                }
                if !usage.is_empty() {
                    if let Ok(mut q) = self.outbox.lock() {
                        q.extend(usage);
                        self.outbox_len.store(q.len(), Ordering::Relaxed);
                    }
                    self.new_usage.notify_one();
                }
            }
            for d in done.into_iter().flatten() {
                let _ = d.send(result.clone());
            }
            if result.is_ok() && self.should_compact() {
                self.compact();
            }
        }
        // A cleanly closed journal is its records alone.
        let closed = self.file.set_len(self.file_bytes).and_then(|()| {
            if self.unsynced || self.allocated_bytes != self.file_bytes {
                self.file.sync_all()
            } else {
                Ok(())
            }
        });
        if let Err(e) = closed {
            tracing::error!(error = %e, "journal sync at close failed");
        }
        tracing::debug!("journal writer stopped");
    }

    /// Appends the batch as one write; on failure cuts the file back to where it was.
    fn write(&mut self, batch: &Batch) -> Result<(), JournalError> {
        if let Some(why) = &self.broken {
            return Err(JournalError::Write(why.clone()));
        }
        self.buf.clear();
        for (e, _) in batch {
            codec::encode_entry(&mut self.buf, e);
        }
        let end = self.file_bytes + self.buf.len() as u64;
        self.preallocate(end);
        let written = self
            .file
            .seek(SeekFrom::Start(self.file_bytes))
            .and_then(|_| self.file.write_all(&self.buf))
            .and_then(|()| match self.opts.sync {
                JournalSync::Full => self.file.sync_data(),
                JournalSync::Normal => {
                    self.unsynced = true;
                    if self.synced_at.elapsed() >= Duration::from_millis(NORMAL_SYNC_INTERVAL_MS) {
                        self.file.sync_data()?;
                        self.synced_at = Instant::now();
                        self.unsynced = false;
                    }
                    Ok(())
                }
            });
        let group_bytes = self.buf.len() as u64;
        if self.buf.capacity() > 4 << 20 {
            // One huge group must not pin its buffer for the life of the process.
            self.buf = Vec::new();
        }
        match written {
            Ok(()) => {
                self.file_bytes += group_bytes;
                self.allocated_bytes = self.allocated_bytes.max(self.file_bytes);
                Ok(())
            }
            Err(e) => {
                let error = format!("{}: {e}", self.path.display());
                // Cut off whatever part of the group reached the file, so that the next
                // group does not land after a partial record.
                self.allocated_bytes = self.file_bytes;
                let restored = self
                    .file
                    .set_len(self.file_bytes)
                    .and_then(|()| self.file.seek(SeekFrom::Start(self.file_bytes)).map(|_| ()));
                if let Err(e2) = restored {
                    let why = format!(
                        "{error}; and the partial write could not be cut off ({e2}): the \
                         journal accepts no more writes until quotad restarts"
                    );
                    tracing::error!(error = %why, "journal is no longer writable");
                    self.broken = Some(why);
                }
                Err(write_err(error))
            }
        }
    }

    /// Writes zeros ahead of `end` in steps of `preallocate_bytes`, syncing the new length
    /// once per step. Space written ahead only saves time: where it cannot be had (a disk
    /// nearly full), the file is cut back and the group is appended as it is.
    fn preallocate(&mut self, end: u64) {
        if end <= self.allocated_bytes || self.opts.preallocate_bytes == 0 {
            return;
        }
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let target = end.max(self.allocated_bytes + self.opts.preallocate_bytes);
        let from = self.allocated_bytes;
        let written = (|| {
            self.file.seek(SeekFrom::Start(from))?;
            let mut at = from;
            while at < target {
                let n = (target - at).min(ZEROS.len() as u64) as usize;
                self.file.write_all(&ZEROS[..n])?;
                at += n as u64;
            }
            self.file.sync_all()
        })();
        match written {
            Ok(()) => self.allocated_bytes = target,
            Err(e) => {
                tracing::debug!(error = %e, "journal space not written ahead");
                let _ = self.file.set_len(from);
            }
        }
    }

    fn should_compact(&self) -> bool {
        let grown = self.file_bytes.saturating_sub(self.compacted_bytes);
        grown >= self.opts.compact_min_bytes && grown >= self.compacted_bytes.saturating_mul(2)
    }

    /// Rewrites the file as the live state alone. A failure leaves the old file in use.
    fn compact(&mut self) {
        let started = Instant::now();
        let mut bytes = Vec::new();
        match self.outbox.lock() {
            Ok(q) => self.tables.encode(&q, &mut bytes),
            Err(_) => return,
        }
        let before = self.file_bytes;
        if let Err(e) = write_atomically(&self.path, &bytes) {
            // The old file is still in place and whole: go on appending to it, and try
            // again only after as much again has been written.
            self.compacted_bytes = self.file_bytes;
            tracing::warn!(
                error = %e,
                path = %self.path.display(),
                "journal compaction failed; appending to the old file"
            );
            return;
        }
        let reopened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)).map(|_| f));
        match reopened {
            Ok(f) => {
                self.file = f;
                self.file_bytes = bytes.len() as u64;
                self.allocated_bytes = self.file_bytes;
                self.compacted_bytes = self.file_bytes;
                self.unsynced = false;
                self.synced_at = Instant::now();
                tracing::info!(
                    before_bytes = before,
                    after_bytes = self.file_bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "journal compacted"
                );
            }
            Err(e) => {
                // The handle in use is the replaced file's: appending to it would lose
                // the writes.
                let why = format!(
                    "{}: compacted but could not be reopened ({e}): the journal accepts no \
                     more writes until quotad restarts",
                    self.path.display()
                );
                tracing::error!(error = %why, "journal is no longer writable");
                self.broken = Some(why);
            }
        }
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

    fn session(id: &str) -> SessionRow {
        SessionRow {
            session_id: id.into(),
            account_id: "a".into(),
            sku: "gpu.exclusive.a10".into(),
            started_at_ms: 1_000,
            auto_shutdown: true,
            idle_timeout_ms: 1_200_000,
            last_busy_at_ms: 2_000,
            billed_until_ms: 1_000,
            hours_settled: 0,
            held: Money::parse("9.9").unwrap(),
            charged: Money::ZERO,
            state: SessionState::Running,
            stopped_at_ms: 0,
        }
    }

    fn meter() -> StorageMeter {
        StorageMeter {
            bytes_stored: 5_000_000_000,
            level_at_ms: 3_600_500,
            hour_start_ms: 3_600_000,
            excess_byte_ms: u128::from(u64::MAX) * 3,
            stored_byte_ms: 2_500_000_000_000,
        }
    }

    async fn put(j: &Journal, e: Entry) {
        j.submit(e).unwrap().await.unwrap().unwrap();
    }

    fn ids(rec: &Recovered) -> Vec<String> {
        let mut v: Vec<String> = rec
            .reservations
            .iter()
            .map(|r| r.reservation_id.clone())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn survives_reopen_and_trims_acked_usage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        {
            let (j, rec) = Journal::open(&path, 16, 4).unwrap();
            assert_eq!(rec.next_seq, 1);
            put(&j, Entry::Reservation(row("r1", HoldState::Open))).await;
            let mut c = row("r2", HoldState::Committed);
            c.settled_at_ms = 7;
            put(&j, Entry::Commit(c, usage(1))).await;
            put(&j, Entry::Commit(row("r3", HoldState::Committed), usage(2))).await;
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
        put(
            &j,
            Entry::Prune {
                settled_before_ms: 8,
            },
        )
        .await;
        j.close().await;
        let (_j, rec) = Journal::open(&path, 16, 4).unwrap();
        // r2 and r3 were settled before 8; r1 is open.
        assert_eq!(ids(&rec), vec!["r1"]);
    }

    #[tokio::test]
    async fn every_kind_of_entry_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let mut stopped = session("s-old");
        stopped.state = SessionState::IdleShutdown;
        stopped.stopped_at_ms = 3;
        {
            let (j, _) = Journal::open(&path, 16, 4).unwrap();
            let mut streamed = row("job-1", HoldState::Open);
            streamed.streamed_quantity = 2_000;
            streamed.streamed_cost = Money::parse("0.0012").unwrap();
            put(
                &j,
                Entry::Report {
                    usage: usage(1),
                    work_id: "job-1".into(),
                    seq: 4,
                    row: Some(streamed.clone()),
                },
            )
            .await;
            put(&j, Entry::Session(session("s1"), Some(usage(2)))).await;
            put(&j, Entry::Session(stopped.clone(), None)).await;
            put(&j, Entry::LeaseSeqFloor(77)).await;
            let mut hour = usage(3);
            hour.usage_id = "storage/a/0".into();
            put(
                &j,
                Entry::Storage {
                    account_id: "a".into(),
                    meter: meter(),
                    usage: vec![hour.clone()],
                },
            )
            .await;
            put(
                &j,
                Entry::Alerts {
                    account_id: "a".into(),
                    set: vec!["low:g1:0.2".into(), "low:g1:0.1".into()],
                    unset: vec![],
                },
            )
            .await;
            put(
                &j,
                Entry::Alerts {
                    account_id: "a".into(),
                    set: vec![],
                    unset: vec!["low:g1:0.1".into()],
                },
            )
            .await;
            j.close().await;
        }
        let (_j, rec) = Journal::open(&path, 16, 4).unwrap();
        let mut hour = usage(3);
        hour.usage_id = "storage/a/0".into();
        assert_eq!(rec.outbox, vec![usage(1), usage(2), hour]);
        assert_eq!(rec.next_seq, 4);
        assert_eq!(rec.storage, vec![("a".to_string(), meter())]);
        assert_eq!(rec.reservations.len(), 1);
        assert_eq!(rec.reservations[0].streamed_quantity, 2_000);
        assert_eq!(rec.reservations[0].streamed_cost.to_string(), "0.0012");
        assert_eq!(rec.works, vec![("job-1".to_string(), 4, 5)]);
        let mut sessions = rec.sessions.clone();
        sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        assert_eq!(sessions, vec![stopped, session("s1")]);
        assert_eq!(rec.lease_seq_floor, 77);
        assert_eq!(
            rec.alerts,
            vec![("a".to_string(), "low:g1:0.2".to_string())]
        );
    }

    #[tokio::test]
    async fn full_queue_is_an_error_not_a_wait() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&dir.path().join("j.log"), 1, 1).unwrap();
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

    async fn three_commits(path: &Path) -> u64 {
        let (j, _) = Journal::open(path, 16, 4).unwrap();
        for i in 1..=3 {
            put(
                &j,
                Entry::Commit(row(&format!("r{i}"), HoldState::Committed), usage(i)),
            )
            .await;
        }
        j.close().await;
        std::fs::metadata(path).unwrap().len()
    }

    #[tokio::test]
    async fn a_torn_last_record_is_cut_off_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let whole = three_commits(&path).await;
        // Half of a fourth record, as a crash in the middle of its write leaves it.
        let mut tail = Vec::new();
        codec::encode_entry(
            &mut tail,
            &Entry::Commit(row("r4", HoldState::Committed), usage(4)),
        );
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&tail[..tail.len() / 2]).unwrap();
        drop(f);
        {
            let (j, rec) = Journal::open(&path, 16, 4).unwrap();
            assert_eq!(rec.outbox, vec![usage(1), usage(2), usage(3)]);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
            put(&j, Entry::Commit(row("r5", HoldState::Committed), usage(4))).await;
            j.close().await;
        }
        let (_j, rec) = Journal::open(&path, 16, 4).unwrap();
        assert_eq!(rec.outbox.len(), 4);
        assert_eq!(ids(&rec), vec!["r1", "r2", "r3", "r5"]);
    }

    #[tokio::test]
    async fn space_is_written_ahead_and_cut_back_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let (j, _) = Journal::open(&path, 16, 4).unwrap();
        put(&j, Entry::Commit(row("r1", HoldState::Committed), usage(1))).await;
        let open_len = std::fs::metadata(&path).unwrap().len();
        assert!(open_len >= DEFAULT_JOURNAL_PREALLOCATE_BYTES, "{open_len}");
        // What a kill -9 leaves: records, then zeros. They read as the end, not damage.
        std::fs::copy(&path, dir.path().join("killed.log")).unwrap();
        j.close().await;
        let closed_len = std::fs::metadata(&path).unwrap().len();
        assert!(closed_len < 1_000, "{closed_len}");
        let (_j, rec) = Journal::open(&dir.path().join("killed.log"), 16, 4).unwrap();
        assert_eq!(rec.outbox, vec![usage(1)]);
        assert_eq!(
            std::fs::metadata(dir.path().join("killed.log"))
                .unwrap()
                .len(),
            closed_len
        );
    }

    #[tokio::test]
    async fn zeros_after_the_last_record_are_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let whole = three_commits(&path).await;
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 4096]).unwrap();
        drop(f);
        let (_j, rec) = Journal::open(&path, 16, 4).unwrap();
        assert_eq!(rec.outbox.len(), 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
    }

    #[tokio::test]
    async fn damage_before_intact_records_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let whole = three_commits(&path).await;
        let mut bytes = std::fs::read(&path).unwrap();
        // A byte inside the first record's payload.
        let at = codec::MAGIC.len() + codec::FRAME_BYTES + 3;
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        match Journal::open(&path, 16, 4) {
            Err(JournalError::Corrupt { offset, reason, .. }) => {
                assert_eq!(offset, codec::MAGIC.len() as u64);
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
        }
        // Nothing was cut off or rewritten.
        assert_eq!(std::fs::read(&path).unwrap().len() as u64, whole);
    }

    #[test]
    fn a_file_that_is_not_a_journal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        std::fs::write(&path, b"SQLite format 3\0 and more").unwrap();
        let err = Journal::open(&path, 16, 4).err().unwrap();
        assert!(err.to_string().contains("is not a quotad journal"), "{err}");
    }

    #[tokio::test]
    async fn compaction_keeps_exactly_the_live_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.log");
        let opts = JournalOptions {
            queue_max: 64,
            batch_max: 4,
            compact_min_bytes: 4_096,
            // Compaction does not depend on the sync mode; skipping 2,000 fsyncs keeps the
            // test fast.
            sync: JournalSync::Normal,
            // Small, so that space written ahead and compactions interleave.
            preallocate_bytes: 16_384,
        };
        let mut written = 0u64;
        {
            let (j, _) = Journal::open_opts(&path, opts.clone()).unwrap();
            // Written first: only a compaction carries it to the end.
            put(
                &j,
                Entry::Storage {
                    account_id: "a".into(),
                    meter: meter(),
                    usage: Vec::new(),
                },
            )
            .await;
            for i in 1..=2_000u64 {
                // Ten ids rewritten over and over, each commit's usage acked at once
                // except the last ten.
                let mut r = row(&format!("r{}", i % 10), HoldState::Committed);
                r.settled_at_ms = i as i64;
                let e = Entry::Commit(r, usage(i));
                let mut b = Vec::new();
                codec::encode_entry(&mut b, &e);
                written += b.len() as u64;
                put(&j, e).await;
                if i <= 1_990 {
                    let batch = j.outbox_batch(1);
                    j.ack(&batch);
                }
            }
            put(&j, Entry::LeaseSeqFloor(5)).await;
            j.close().await;
        }
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size * 10 < written,
            "file of {size} bytes after {written} bytes of records: not compacted"
        );
        let (_j, rec) = Journal::open_opts(&path, opts).unwrap();
        assert_eq!(rec.reservations.len(), 10);
        let seqs: Vec<u64> = rec.outbox.iter().map(|u| u.seq).collect();
        assert_eq!(seqs, (1_991..=2_000).collect::<Vec<_>>());
        assert_eq!(rec.next_seq, 2_001);
        assert_eq!(rec.storage, vec![("a".to_string(), meter())]);
        assert_eq!(rec.lease_seq_floor, 5);
        let r7 = rec
            .reservations
            .iter()
            .find(|r| r.reservation_id == "r7")
            .unwrap();
        assert_eq!(r7.settled_at_ms, 1_997);
    }

    #[tokio::test]
    async fn a_sqlite_journal_of_an_earlier_version_is_carried_over() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("journal.db");
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch(legacy::SCHEMA).unwrap();
            conn.execute_batch(
                "INSERT INTO reservations (reservation_id, account_id, resource, sku, quantity, \
                 held, expires_at_ms, state, charged, charged_quantity, settled_at_ms) \
                 VALUES ('r1', 'a', 'GPU_SHARED', 'gpu.shared.a10', 1000, '0.6', 10, 0, '0', 0, 0); \
                 INSERT INTO outbox (seq, usage_id, account_id, resource, sku, quantity, cost, at_ms) \
                 VALUES (7, 'u7', 'a', 'GPU_SHARED', 'gpu.shared.a10', 1000, '0.6', 5); \
                 INSERT INTO meta (key, value) VALUES ('next_seq', 9), ('lease_seq_floor', 3);",
            )
            .unwrap();
        }
        let path = dir.path().join("journal.log");
        {
            let (j, rec) = Journal::open(&path, 16, 4).unwrap();
            assert_eq!(rec.reservations, vec![row("r1", HoldState::Open)]);
            let mut u = usage(7);
            u.usage_id = "u7".into();
            assert_eq!(rec.outbox, vec![u]);
            assert_eq!(rec.next_seq, 9);
            assert_eq!(rec.lease_seq_floor, 3);
            j.close().await;
        }
        assert!(!db.exists());
        assert!(dir.path().join("journal.db.carried-over").exists());
        // Read from the new journal from now on.
        let (_j, rec) = Journal::open(&path, 16, 4).unwrap();
        assert_eq!(rec.next_seq, 9);
        assert_eq!(rec.outbox.len(), 1);
    }
}
