//! The journal's writer thread: takes whatever queued up, appends it as one group (one
//! write and, in `Full` mode, one fdatasync), answers every caller of the group, adds the
//! usage to the outbox, and compacts the file once it has grown to several times the live
//! state. A failed write is cut back off before anyone is answered.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::codec;
use super::entry::Entry;
use super::error::{JournalError, write_err};
use super::options::{JournalOptions, JournalSync, NORMAL_SYNC_INTERVAL_MS};
use super::outbox::Outbox;
use super::stats::JournalStats;
use super::tables::Tables;

// Queued inline: boxing the common variant to shrink the rare one would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Op {
    Write(Entry, Option<oneshot::Sender<Result<(), JournalError>>>),
    /// Entries written in one group, answered once (`Journal::submit_all`).
    WriteAll(Vec<Entry>, oneshot::Sender<Result<(), JournalError>>),
    /// The writer waits until the other end is dropped (`Journal::pause`).
    Pause(std::sync::mpsc::Receiver<()>),
    Shutdown,
}

pub(super) struct Writer {
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
    outbox: Arc<Outbox>,
    synced_at: Instant,
    /// Written but not yet fdatasync'ed (`Normal` mode).
    unsynced: bool,
    /// Why the file can no longer be appended to, once a failed write could not be cut
    /// back off it: every later write fails with this rather than append after damage.
    broken: Option<String>,
    stats: Arc<JournalStats>,
}

type Batch = Vec<(Entry, Option<oneshot::Sender<Result<(), JournalError>>>)>;

/// Adds entries that are written together to the group; the last one carries the answer
/// (the group is written and answered as a whole).
fn push_all(
    batch: &mut Batch,
    entries: Vec<Entry>,
    done: oneshot::Sender<Result<(), JournalError>>,
) {
    let n = entries.len();
    batch.reserve(n);
    for (i, e) in entries.into_iter().enumerate() {
        batch.push((e, None));
        if i + 1 == n
            && let Some(last) = batch.last_mut()
        {
            last.1 = Some(done);
            return;
        }
    }
}

impl Writer {
    pub(super) fn new(
        path: &Path,
        file: File,
        file_bytes: u64,
        tables: Tables,
        rx: mpsc::Receiver<Op>,
        opts: JournalOptions,
        outbox: Arc<Outbox>,
    ) -> Writer {
        Writer {
            path: path.to_path_buf(),
            file,
            file_bytes,
            allocated_bytes: file_bytes,
            compacted_bytes: file_bytes,
            tables,
            rx,
            opts,
            buf: Vec::new(),
            outbox,
            synced_at: Instant::now(),
            unsynced: false,
            broken: None,
            stats: Arc::default(),
        }
    }

    /// Reports to `stats` (the journal's; a writer alone keeps its own).
    pub(super) fn with_stats(mut self, stats: Arc<JournalStats>) -> Writer {
        self.stats = stats;
        self
    }

    /// fdatasync, timed.
    fn sync_data(&self) -> std::io::Result<()> {
        let started = Instant::now();
        let r = self.file.sync_data();
        self.stats.fsync.observe(started.elapsed());
        r
    }

    /// The writer thread's loop: one group per round until `Op::Shutdown` (or every
    /// sender is gone), then the file is cut back to its records.
    pub(super) fn run(mut self) {
        loop {
            let (batch, stop) = self.next_group();
            if !batch.is_empty() {
                self.commit(batch);
            }
            if stop {
                break;
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
        self.stats.set(self.file_bytes, false);
        tracing::debug!("journal writer stopped");
    }

    /// Waits for the next operation, then takes whatever else queued up behind it (at most
    /// `batch_max`); and whether to stop after this group.
    fn next_group(&mut self) -> (Batch, bool) {
        let batch_max = self.opts.batch_max.max(1);
        let mut batch: Batch = Vec::new();
        let mut stop = match self.rx.blocking_recv() {
            None | Some(Op::Shutdown) => true,
            Some(Op::Write(e, d)) => {
                batch.push((e, d));
                false
            }
            Some(Op::WriteAll(es, d)) => {
                push_all(&mut batch, es, d);
                false
            }
            Some(Op::Pause(held)) => {
                let _ = held.recv();
                false
            }
        };
        while !stop && batch.len() < batch_max {
            match self.rx.try_recv() {
                Ok(Op::Write(e, d)) => batch.push((e, d)),
                Ok(Op::WriteAll(es, d)) => push_all(&mut batch, es, d),
                Ok(Op::Pause(held)) => {
                    let _ = held.recv();
                }
                Ok(Op::Shutdown) => stop = true,
                Err(_) => break,
            }
        }
        (batch, stop)
    }

    /// Writes one group, applies it to the tables and the outbox once it is durable,
    /// answers its callers, and compacts when the file has grown enough.
    fn commit(&mut self, batch: Batch) {
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
            if let Err(e) = self.outbox.extend(usage) {
                // This group is durable (a restart pushes its usage), but usage written
                // from now on could not reach the ledger: refuse it.
                tracing::error!(error = %e, "journal outbox unusable; no more writes");
                self.broken = Some(e.to_string());
            }
        }
        for d in done.into_iter().flatten() {
            let _ = d.send(result.clone());
        }
        if result.is_ok() && self.should_compact() {
            self.compact();
        }
        self.stats.set(self.file_bytes, self.broken.is_none());
    }

    /// Appends the batch as one write; on failure cuts the file back to where it was.
    fn write(&mut self, batch: &Batch) -> Result<(), JournalError> {
        if let Some(why) = &self.broken {
            return Err(JournalError::Write(why.clone()));
        }
        self.buf.clear();
        for (e, _) in batch {
            // Refused before anything reaches the file: a start would take it for damage.
            codec::encode_entry(&mut self.buf, e).map_err(write_err)?;
        }
        let end = self.file_bytes + self.buf.len() as u64;
        self.preallocate(end);
        let written = self
            .file
            .seek(SeekFrom::Start(self.file_bytes))
            .and_then(|_| self.file.write_all(&self.buf))
            .and_then(|()| match self.opts.sync {
                JournalSync::Full => self.sync_data(),
                JournalSync::Normal => {
                    self.unsynced = true;
                    if self.synced_at.elapsed() >= Duration::from_millis(NORMAL_SYNC_INTERVAL_MS) {
                        self.sync_data()?;
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
                let n = usize::try_from(target - at).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
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
        let tables = &self.tables;
        let encoded = self
            .outbox
            .with_all(|q| tables.encode(q, &mut bytes))
            .and_then(|r| r.map_err(write_err));
        if let Err(e) = encoded {
            tracing::error!(error = %e, "journal not compacted");
            return;
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
                    elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
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

/// Makes a rename or creation in `path`'s directory durable.
pub(super) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
