//! What a journal operation can fail with.

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
    #[error("journal {0} is unusable: a thread panicked while holding its lock; restart quotad")]
    Poisoned(&'static str),
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

pub(super) fn open_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Open(e.to_string())
}

pub(super) fn write_err(e: impl std::fmt::Display) -> JournalError {
    JournalError::Write(e.to_string())
}
