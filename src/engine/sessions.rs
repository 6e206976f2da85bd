//! Exclusive sessions, as state: the StartSession request and what the calls answer, the
//! limits (`SessionConfig`), and the table of sessions, running and recently stopped, each
//! behind its own async lock (a call steps its session with the lock held, journal wait
//! included). How sessions are billed is `hours`.

use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use super::error::EngineError;
use crate::billing::Money;
use crate::billing::session::{HOUR_MS, SessionTerms};
use crate::billing::status::DenyReason;
use crate::journal::{SessionRow, SessionState};

/// Most sessions kept on one sidecar, running and recently stopped.
pub const DEFAULT_SESSIONS_MAX: usize = 100_000;
/// Longest idle timeout a session may ask for.
pub const DEFAULT_IDLE_TIMEOUT_MAX_MS: i64 = 7 * 24 * HOUR_MS;

/// Limits of Exclusive sessions (see the `DEFAULT_*` constants).
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub sessions_max: usize,
    /// Idle timeout of a session that asks for none.
    pub session_idle_timeout_ms: i64,
    pub session_idle_timeout_max_ms: i64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            sessions_max: DEFAULT_SESSIONS_MAX,
            session_idle_timeout_ms: crate::billing::session::DEFAULT_IDLE_TIMEOUT_MS,
            session_idle_timeout_max_ms: DEFAULT_IDLE_TIMEOUT_MAX_MS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartSession {
    pub account_id: String,
    pub session_id: String,
    pub sku: String,
    pub auto_shutdown: bool,
    /// 0 = the default (20 minutes).
    pub idle_timeout_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStarted {
    pub admitted: bool,
    pub reason: Option<DenyReason>,
    pub held: Money,
    pub started_at_ms: i64,
}

impl SessionStarted {
    /// Not admitted, for `reason`.
    pub(super) fn denied(reason: DenyReason) -> SessionStarted {
        SessionStarted {
            admitted: false,
            reason: Some(reason),
            held: Money::ZERO,
            started_at_ms: 0,
        }
    }
}

/// Where a session stands after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    pub state: SessionState,
    pub stopped_at_ms: i64,
    pub charged: Money,
}

/// A running session as GetBalance lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub session_id: String,
    pub sku: String,
    pub started_at_ms: i64,
    pub auto_shutdown: bool,
    pub idle_timeout_ms: i64,
    pub last_busy_at_ms: i64,
    pub charged: Money,
    pub accrued: Money,
    pub hourly: Money,
    pub accrues_without_activity: bool,
}

/// A session's row behind the lock a call holds while it steps the session.
pub(super) type Shared = Arc<tokio::sync::Mutex<SessionRow>>;

pub(super) fn terms(row: &SessionRow) -> SessionTerms {
    SessionTerms {
        started_at_ms: row.started_at_ms,
        auto_shutdown: row.auto_shutdown,
        idle_timeout_ms: row.idle_timeout_ms,
    }
}

/// The row of a session that starts running at `now_ms` with its first hour held.
pub(super) fn running_row(
    req: &StartSession,
    idle_timeout_ms: i64,
    hour: Money,
    now_ms: i64,
) -> SessionRow {
    SessionRow {
        session_id: req.session_id.clone(),
        account_id: req.account_id.clone(),
        sku: req.sku.clone(),
        started_at_ms: now_ms,
        auto_shutdown: req.auto_shutdown,
        idle_timeout_ms,
        last_busy_at_ms: now_ms,
        billed_until_ms: now_ms,
        hours_settled: 0,
        held: hour,
        charged: Money::ZERO,
        state: SessionState::Running,
        stopped_at_ms: 0,
    }
}

/// A retried StartSession's answer, from the session it started: the first outcome if it
/// asks for the same session, else a mismatch.
pub(super) fn replayed(
    req: &StartSession,
    row: &SessionRow,
    idle_timeout_ms: i64,
    hour: Money,
) -> Result<SessionStarted, EngineError> {
    if row.account_id != req.account_id
        || row.sku != req.sku
        || row.auto_shutdown != req.auto_shutdown
        || row.idle_timeout_ms != idle_timeout_ms
    {
        return Err(EngineError::SessionMismatch {
            id: req.session_id.clone(),
            detail: format!(
                "it started {} for account {} (auto_shutdown {}, idle_timeout_ms {})",
                row.sku, row.account_id, row.auto_shutdown, row.idle_timeout_ms
            ),
        });
    }
    Ok(SessionStarted {
        admitted: true,
        reason: None,
        held: hour,
        started_at_ms: row.started_at_ms,
    })
}

pub(super) fn status(row: &SessionRow) -> SessionStatus {
    SessionStatus {
        state: row.state,
        stopped_at_ms: row.stopped_at_ms,
        charged: row.charged,
    }
}

/// Sessions by id, running and recently stopped (they answer retries), within
/// `SessionConfig`'s limits.
pub(super) struct Sessions {
    cfg: SessionConfig,
    rows: DashMap<String, Shared>,
}

impl Sessions {
    pub(super) fn new(cfg: SessionConfig) -> Sessions {
        Sessions {
            cfg,
            rows: DashMap::new(),
        }
    }

    /// The idle timeout a StartSession asks for (0: the default), within the limits.
    pub(super) fn idle_timeout(&self, requested_ms: i64) -> Result<i64, EngineError> {
        match requested_ms {
            0 => Ok(self.cfg.session_idle_timeout_ms),
            t if t < 0 || t > self.cfg.session_idle_timeout_max_ms => {
                Err(EngineError::IdleTimeout {
                    idle_timeout_ms: t,
                    max_ms: self.cfg.session_idle_timeout_max_ms,
                })
            }
            t => Ok(t),
        }
    }

    pub(super) fn find(&self, session_id: &str) -> Option<Shared> {
        self.rows.get(session_id).map(|s| s.value().clone())
    }

    pub(super) fn get(&self, session_id: &str) -> Result<Shared, EngineError> {
        self.find(session_id)
            .ok_or_else(|| EngineError::UnknownSession(session_id.to_owned()))
    }

    /// Refuses a new session once `sessions_max` are kept.
    pub(super) fn check_room(&self) -> Result<(), EngineError> {
        if self.rows.len() >= self.cfg.sessions_max {
            return Err(EngineError::SessionsFull(self.cfg.sessions_max));
        }
        Ok(())
    }

    /// Registers a new session; false if one of that id was registered meanwhile.
    pub(super) fn insert_new(&self, session_id: &str, shared: Shared) -> bool {
        match self.rows.entry(session_id.to_owned()) {
            MapEntry::Occupied(_) => false,
            MapEntry::Vacant(v) => {
                v.insert(shared);
                true
            }
        }
    }

    pub(super) fn remove(&self, session_id: &str) {
        self.rows.remove(session_id);
    }

    /// Every session kept, running or not.
    pub(super) fn all(&self) -> Vec<Shared> {
        self.rows.iter().map(|s| s.value().clone()).collect()
    }

    /// Sessions running now.
    pub(super) fn running(&self) -> usize {
        self.rows
            .iter()
            .filter(|s| {
                // One being stepped right now is running (stopped ones are not stepped).
                s.value()
                    .try_lock()
                    .map(|r| r.state == SessionState::Running)
                    .unwrap_or(true)
            })
            .count()
    }

    /// Forgets sessions stopped before `cutoff_ms` (they answered retries until then).
    pub(super) fn prune(&self, cutoff_ms: i64) {
        self.rows.retain(|_, s| match s.try_lock() {
            Ok(r) => r.state == SessionState::Running || r.stopped_at_ms >= cutoff_ms,
            Err(_) => true,
        });
    }

    /// Sessions from the journal; `held` is told each running session's hour hold, to be
    /// counted against its account when it loads.
    pub(super) fn recover(&self, rows: Vec<SessionRow>, mut held: impl FnMut(&str, Money)) {
        for row in rows {
            if row.state == SessionState::Running && !row.held.is_zero() {
                held(&row.account_id, row.held);
            }
            self.rows.insert(
                row.session_id.clone(),
                Arc::new(tokio::sync::Mutex::new(row)),
            );
        }
    }
}
