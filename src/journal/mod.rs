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
mod entry;
mod error;
mod legacy;
mod options;
mod outbox;
mod recovery;
mod stats;
mod tables;
mod writer;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::ledger::api::UsageRecord;
pub use entry::{Entry, HoldState, JournaledEvent, ReservationRow, SessionRow, SessionState};
pub use error::JournalError;
use error::open_err;
pub use options::{
    DEFAULT_JOURNAL_BATCH_MAX, DEFAULT_JOURNAL_COMPACT_MIN_BYTES,
    DEFAULT_JOURNAL_PREALLOCATE_BYTES, DEFAULT_JOURNAL_QUEUE_MAX, JournalOptions, JournalSync,
    NORMAL_SYNC_INTERVAL_MS,
};
use outbox::Outbox;
pub use stats::JournalStats;
pub use tables::Recovered;
use writer::{Op, Writer};

/// Resolves once a queued write is durable (or failed): what `Journal::submit` returns.
pub type Durable = oneshot::Receiver<Result<(), JournalError>>;

pub struct Journal {
    tx: mpsc::Sender<Op>,
    queue_max: usize,
    outbox: Arc<Outbox>,
    stats: Arc<JournalStats>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
            recovery::carry_over(&legacy, path)?;
        }
        let (file, mut tables, file_bytes) = recovery::load(path)?;
        let recovered = tables.recovered();
        let outbox = Arc::new(Outbox::new(recovered.outbox.iter().cloned().collect()));
        let queue_max = opts.queue_max.max(1);
        let (tx, rx) = mpsc::channel(queue_max);
        let stats = Arc::new(JournalStats::default());
        stats.set(file_bytes, true);
        let writer = Writer::new(path, file, file_bytes, tables, rx, opts, outbox.clone())
            .with_stats(stats.clone());
        let thread = std::thread::Builder::new()
            .name("quotad-journal".into())
            .spawn(move || writer.run())
            .map_err(open_err)?;
        let journal = Journal {
            tx,
            queue_max,
            outbox,
            stats,
            thread: Mutex::new(Some(thread)),
        };
        Ok((journal, recovered))
    }

    /// Queues `entry`; the receiver resolves once it is durable (or failed). Never waits
    /// for queue space: a full queue is an error the caller turns into backpressure.
    pub fn submit(&self, entry: Entry) -> Result<Durable, JournalError> {
        let (done, rx) = oneshot::channel();
        self.send(Op::Write(entry, Some(done)))?;
        Ok(rx)
    }

    /// Queues `entries` to be written in one group, all or none: one queue slot and one
    /// answer for all of them (a usage stream's round). The receiver resolves once all
    /// are durable (or failed). The group may exceed `batch_max`.
    pub fn submit_all(&self, entries: Vec<Entry>) -> Result<Durable, JournalError> {
        let (done, rx) = oneshot::channel();
        if entries.is_empty() {
            let _ = done.send(Ok(()));
        } else {
            self.send(Op::WriteAll(entries, done))?;
        }
        Ok(rx)
    }

    /// Holds the writer until the returned guard is dropped: writes queue up behind it
    /// (and any not yet written before it) and their callers wait. For tests of what
    /// must wait for durability.
    #[doc(hidden)]
    pub fn pause(&self) -> Result<std::sync::mpsc::Sender<()>, JournalError> {
        let (held, wait) = std::sync::mpsc::channel();
        self.send(Op::Pause(wait))?;
        Ok(held)
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
    pub fn outbox_batch(&self, max: usize) -> Result<Vec<UsageRecord>, JournalError> {
        self.outbox.batch(max)
    }

    /// Unacknowledged usage of one account with a seq above `after_seq`, oldest first, at
    /// most `max` records.
    pub fn outbox_of(
        &self,
        account_id: &str,
        after_seq: u64,
        max: usize,
    ) -> Result<Vec<UsageRecord>, JournalError> {
        self.outbox.of(account_id, after_seq, max)
    }

    /// The ledger has the records of these seqs (those `outbox_batch` returned, in order):
    /// forget them here and in the file.
    pub fn ack(&self, acked: &[u64]) -> Result<(), JournalError> {
        let seqs = self.outbox.ack(acked)?;
        if !seqs.is_empty() {
            // If this cannot be queued the records are pushed again after a restart, and
            // the ledger ignores what it already has.
            if let Err(e) = self.submit_detached(Entry::Trim(seqs)) {
                tracing::warn!(error = %e, "journal trim not queued");
            }
        }
        Ok(())
    }

    /// The file's size, fsync latency and whether it takes writes (metrics, readiness).
    pub fn stats(&self) -> &Arc<JournalStats> {
        &self.stats
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Resolves when new usage became durable since the last call.
    pub async fn usage_written(&self) {
        self.outbox.written().await
    }

    /// Writes everything queued so far, then stops the writer.
    pub async fn close(&self) {
        if self.tx.send(Op::Shutdown).await.is_err() {
            return;
        }
        let handle = match self.thread.lock() {
            Ok(mut t) => t.take(),
            Err(poisoned) => {
                // The handle itself is whole: join the writer all the same.
                tracing::error!("journal writer's handle lock poisoned; joining it anyway");
                poisoned.into_inner().take()
            }
        };
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;
    use crate::billing::storage::StorageMeter;
    use crate::billing::{Money, Resource};

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

    fn event(grant: &str, at_ms: i64) -> JournaledEvent {
        JournaledEvent {
            account_id: "a".into(),
            kind: "LOW_QUOTA".into(),
            subject_id: grant.into(),
            threshold: "0.2".into(),
            message: "low".into(),
            at_ms,
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
            let first = j.outbox_batch(1).unwrap();
            j.ack(&[first[0].seq]).unwrap();
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
                    events: vec![event("g1", 1), event("g1", 2)],
                },
            )
            .await;
            put(
                &j,
                Entry::Alerts {
                    account_id: "a".into(),
                    set: vec![],
                    unset: vec!["low:g1:0.1".into()],
                    events: vec![],
                },
            )
            .await;
            put(&j, Entry::EventsQueued(vec![event("g1", 1).key()])).await;
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
        assert_eq!(rec.events, vec![event("g1", 2)], "queued ones are gone");
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

    #[tokio::test]
    async fn a_poisoned_outbox_stops_the_journal_and_errs_to_readers() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(&dir.path().join("j.log"), 16, 4).unwrap();
        j.outbox.poison();
        assert_eq!(j.outbox_batch(10), Err(JournalError::Poisoned("outbox")));
        assert_eq!(
            j.outbox_of("a", 0, 10),
            Err(JournalError::Poisoned("outbox"))
        );
        // Durable, so answered Ok (a restart pushes its usage)...
        put(&j, Entry::Commit(row("r1", HoldState::Committed), usage(1))).await;
        // ...but nothing more is accepted: its usage could not reach the ledger.
        let later = j
            .submit(Entry::Commit(row("r2", HoldState::Committed), usage(2)))
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(later, Err(JournalError::Write(_))), "{later:?}");
        j.close().await;
        let (_, rec) = Journal::open(&dir.path().join("j.log"), 16, 4).unwrap();
        assert_eq!(rec.outbox, vec![usage(1)]);
    }

    #[tokio::test]
    async fn an_entry_too_large_to_read_back_fails_its_write_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.log");
        let (j, _) = Journal::open(&path, 16, 4).unwrap();
        put(&j, Entry::Commit(row("r1", HoldState::Committed), usage(1))).await;
        let huge = Entry::Trim((0..).take(codec::RECORD_MAX_BYTES / 8 + 1).collect());
        let refused = j.submit(huge).unwrap().await.unwrap();
        assert!(
            matches!(refused, Err(JournalError::Write(_))),
            "{refused:?}"
        );
        put(&j, Entry::Commit(row("r2", HoldState::Committed), usage(2))).await;
        j.close().await;
        let (_, rec) = Journal::open(&path, 16, 4).unwrap();
        assert_eq!(rec.outbox, vec![usage(1), usage(2)]);
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
        )
        .unwrap();
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
            // Written first: only a compaction carries them to the end.
            put(
                &j,
                Entry::Storage {
                    account_id: "a".into(),
                    meter: meter(),
                    usage: Vec::new(),
                },
            )
            .await;
            put(
                &j,
                Entry::Alerts {
                    account_id: "a".into(),
                    set: vec!["low:g1:0.2".into()],
                    unset: vec![],
                    events: vec![event("g1", 1), event("g2", 2)],
                },
            )
            .await;
            put(&j, Entry::EventsQueued(vec![event("g2", 2).key()])).await;
            for i in 1..=2_000u64 {
                // Ten ids rewritten over and over, each commit's usage acked at once
                // except the last ten.
                let mut r = row(&format!("r{}", i % 10), HoldState::Committed);
                r.settled_at_ms = i as i64;
                let e = Entry::Commit(r, usage(i));
                let mut b = Vec::new();
                codec::encode_entry(&mut b, &e).unwrap();
                written += b.len() as u64;
                put(&j, e).await;
                if i <= 1_990 {
                    let batch = j.outbox_batch(1).unwrap();
                    j.ack(&[batch[0].seq]).unwrap();
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
        assert_eq!(rec.events, vec![event("g1", 1)]);
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
