//! What an engine call can fail with. Each variant carries the values a client needs to
//! act on it; `grpc/error.rs` turns them into statuses.

use crate::billing::{PriceError, Resource};
use crate::journal::JournalError;
use crate::ledger::api::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("account {0} does not exist")]
    UnknownAccount(String),
    #[error("reservation {0} does not exist")]
    UnknownReservation(String),
    #[error("reservation {id} expired at {expired_at_ms} ms and its hold was released")]
    ReservationExpired { id: String, expired_at_ms: i64 },
    #[error("reservation {id} is already {state}")]
    ReservationSettled { id: String, state: &'static str },
    #[error("reservation_id {id} was already used for a different request: {detail}")]
    ReservationMismatch { id: String, detail: String },
    /// Internal: a concurrent call is journaling this reservation. `reserve` and `settle`
    /// wait for it and try again, so this never reaches a client.
    #[error("reservation {0} is being recorded by a concurrent call")]
    InProgress(String),
    #[error(
        "reservation {0} has an open usage stream; close the stream (it settles the reported usage) before Commit or Release"
    )]
    WorkStreaming(String),
    #[error("ttl_ms {ttl_ms} is longer than the maximum of {max_ms}")]
    TtlTooLong { ttl_ms: i64, max_ms: i64 },
    #[error("{0} reservations are held, the configured maximum (holds_max)")]
    HoldsFull(usize),
    #[error("{0} accounts are cached, the configured maximum (accounts_max)")]
    AccountsFull(usize),
    #[error(
        "{0} usage records are waiting for the ledger (outbox_max); new work is refused until it catches up"
    )]
    Backlog(usize),
    #[error(
        "{0} is not metered by a usage stream (StreamUsage meters GPU_SHARED; Exclusive instances use StartSession)"
    )]
    NotStreamable(Resource),
    #[error("{0} usage streams are open or remembered, the configured maximum (streams_max)")]
    StreamsFull(usize),
    #[error("work {0} already has an open usage stream")]
    WorkOpen(String),
    #[error("more than {0} usage reports per second on one stream (stream_reports_per_sec)")]
    ReportRate(u32),
    #[error("session {0} does not exist")]
    UnknownSession(String),
    #[error("session_id {id} was already used for a different session: {detail}")]
    SessionMismatch { id: String, detail: String },
    #[error("{0} sessions are kept, the configured maximum (sessions_max)")]
    SessionsFull(usize),
    #[error("idle_timeout_ms {idle_timeout_ms} must be between 1 and {max_ms} (0 = default)")]
    IdleTimeout { idle_timeout_ms: i64, max_ms: i64 },
    #[error("{limit} watchers are open{}, the configured maximum", if *per_account { " on this account" } else { "" })]
    WatchersFull { limit: usize, per_account: bool },
    #[error(
        "at_ms {at_ms} is more than {ahead_max_ms} ms ahead of this sidecar's clock ({now_ms})"
    )]
    StorageInFuture {
        at_ms: i64,
        now_ms: i64,
        ahead_max_ms: i64,
    },
    #[error("the catalog has no STORAGE price; storage cannot be metered")]
    NoStoragePrice,
    #[error(transparent)]
    Storage(#[from] crate::billing::storage::StorageError),
    #[error("quotad is shutting down; reconnect (to another instance, or after the restart)")]
    ShuttingDown,
    #[error(transparent)]
    Price(#[from] PriceError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Ledger(LedgerError),
}

/// The ledger's answer about one account: an unknown account is this engine's
/// `UnknownAccount`; anything else is the ledger's error.
pub(super) fn ledger_err(account_id: &str, e: LedgerError) -> EngineError {
    match e {
        LedgerError::UnknownAccount(_) => EngineError::UnknownAccount(account_id.to_owned()),
        e => EngineError::Ledger(e),
    }
}
