//! What the engine writes to the journal: reservations, sessions and usage as records,
//! each `Entry` one transaction. The writer applies them to its tables and the codec
//! lays them out in the file; nothing here does I/O.

use crate::billing::storage::StorageMeter;
use crate::billing::{Money, Resource};
use crate::ledger::api::UsageRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    Open,
    Committed,
    Released,
    Expired,
}

impl HoldState {
    pub(super) fn code(self) -> u8 {
        match self {
            HoldState::Open => 0,
            HoldState::Committed => 1,
            HoldState::Released => 2,
            HoldState::Expired => 3,
        }
    }

    pub(super) fn from_code(c: i64) -> Option<HoldState> {
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
    pub(super) fn code(self) -> u8 {
        match self {
            SessionState::Running => 0,
            SessionState::Stopped => 1,
            SessionState::IdleShutdown => 2,
            SessionState::InsufficientFunds => 3,
        }
    }

    pub(super) fn from_code(c: i64) -> Option<SessionState> {
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

/// An account event journaled with what caused it, until the ledger's webhook outbox has
/// it: a crash between the two cannot lose it (it is queued again at the next start; the
/// outbox takes each event id once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaledEvent {
    pub account_id: String,
    /// The event kind's name (`LOW_QUOTA`, ...).
    pub kind: String,
    pub subject_id: String,
    pub threshold: String,
    pub message: String,
    pub at_ms: i64,
}

impl JournaledEvent {
    /// What identifies it in the journal (and what `EventsQueued` names).
    pub fn key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{}\u{1f}{}",
            self.account_id, self.kind, self.subject_id, self.threshold, self.at_ms
        )
    }
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
    /// Alert crossings of an account that fired (`set`) or re-armed (`unset`), and the
    /// events they make, kept until they are queued for webhook delivery (`EventsQueued`).
    Alerts {
        account_id: String,
        set: Vec<String>,
        unset: Vec<String>,
        events: Vec<JournaledEvent>,
    },
    /// Events the ledger's webhook outbox has taken (by `JournaledEvent::key`).
    EventsQueued(Vec<String>),
    /// Usage the ledger acknowledged: drop from the outbox.
    Trim(Vec<u64>),
    /// Forget settled reservations older than this.
    Prune { settled_before_ms: i64 },
}
