//! What the journal shows to metrics and readiness: its file's size, how long each
//! fdatasync of a group took, and whether it still takes writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::metrics::Histogram;

#[derive(Debug, Default)]
pub struct JournalStats {
    /// Every fdatasync of a group commit (and of `Normal` mode's periodic sync).
    pub fsync: Arc<Histogram>,
    file_bytes: AtomicU64,
    writable: AtomicBool,
}

impl JournalStats {
    /// Bytes of records in the journal file (what a start reads).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes.load(Ordering::Relaxed)
    }

    /// False once the journal is closed, or a failed write left it refusing writes.
    pub fn writable(&self) -> bool {
        self.writable.load(Ordering::Relaxed)
    }

    pub(super) fn set(&self, file_bytes: u64, writable: bool) {
        self.file_bytes.store(file_bytes, Ordering::Relaxed);
        self.writable.store(writable, Ordering::Relaxed);
    }
}
