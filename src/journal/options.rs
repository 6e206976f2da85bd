//! How a journal is opened: the durability of its writes (`JournalSync`), its bounds and
//! its compaction and preallocation sizes, with their defaults.

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
