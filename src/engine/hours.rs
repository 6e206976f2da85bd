//! Exclusive sessions as the engine bills them: an instance is billed by the hour from
//! launch to stop (R1), each hour pre-authorised as a hold before it starts and settled
//! when it ends, and stopped after its idle timeout unless auto-shutdown is off (R8). The
//! schedule is `billing::session`; this module applies it to the account and the journal.
//! A session is stepped whenever it is touched (Heartbeat, StopSession, GetBalance) and on
//! every sync tick, and each step is journaled with its charge, so a sidecar that
//! restarts, or looks late, bills exactly what a punctual one would have.

use std::sync::Arc;

use super::events::{Event, EventKind};
use super::sessions::{
    SessionStarted, SessionStatus, SessionView, Shared, StartSession, replayed, running_row,
    status, terms,
};
use super::{Engine, EngineError};
use crate::billing::session::{self, HOUR_MS, SessionStep};
use crate::billing::status::DenyReason;
use crate::billing::{Money, Price, Resource};
use crate::journal::{Entry, JournalError, SessionRow, SessionState};
use crate::ledger::api::LedgerError;

/// One hour of an Exclusive instance as a price quantity (milliseconds).
const HOUR_QUANTITY: u64 = HOUR_MS.unsigned_abs();

impl Engine {
    fn session_price(&self, sku: &str) -> Result<Price, EngineError> {
        Ok(self.catalog.price(sku, Resource::GpuExclusive)?.clone())
    }

    /// The account a session belongs to, if this sidecar knows the session (for
    /// authorising Heartbeat and StopSession against it).
    pub async fn session_account(&self, session_id: &str) -> Option<String> {
        let shared = self.sessions.get(session_id).ok()?;
        let row = shared.lock().await;
        Some(row.account_id.clone())
    }

    /// Admits an Exclusive session if the account is not OVERDUE and one hour of the
    /// spec can be held; the hour is pre-authorised. A retry returns the first outcome.
    pub async fn start_session(&self, req: StartSession) -> Result<SessionStarted, EngineError> {
        let price = self.session_price(&req.sku)?;
        let idle_timeout_ms = self.sessions.idle_timeout(req.idle_timeout_ms)?;
        if let Some(s) = self.sessions.find(&req.session_id) {
            let row = s.lock().await;
            return replayed(&req, &row, idle_timeout_ms, price.cost(HOUR_QUANTITY)?);
        }
        self.sessions.check_room()?;
        match self.ensure_account(&req.account_id).await {
            Err(EngineError::Ledger(LedgerError::Unavailable(_))) => {
                return Ok(SessionStarted::denied(DenyReason::LedgerUnavailable));
            }
            r => r?,
        }
        let hour = price.cost(HOUR_QUANTITY)?;
        if let Err(reason) = self
            .hold_money(&req.account_id, Resource::GpuExclusive, hour)
            .await?
        {
            return Ok(SessionStarted::denied(reason));
        }
        let row = running_row(&req, idle_timeout_ms, hour, self.now_ms());
        self.begin_session(req, row).await
    }

    /// Registers a session whose first hour is held and journals its start; the hour is
    /// given back if that fails. Registered locked, so a concurrent retry waits until the
    /// start is durable (and one that registered first is answered instead).
    async fn begin_session(
        &self,
        req: StartSession,
        row: SessionRow,
    ) -> Result<SessionStarted, EngineError> {
        let (hour, started_at_ms) = (row.held, row.started_at_ms);
        let shared: Shared = Arc::new(tokio::sync::Mutex::new(row.clone()));
        let guard = shared.clone().lock_owned().await;
        if !self.sessions.insert_new(&req.session_id, shared) {
            drop(guard);
            self.unhold(&req.account_id, hour);
            return Box::pin(self.start_session(req)).await;
        }
        let written = match self.journal.submit(Entry::Session(row, None)) {
            Ok(d) => d.await.unwrap_or(Err(JournalError::Closed)),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.sessions.remove(&req.session_id);
            self.unhold(&req.account_id, hour);
            return Err(e.into());
        }
        drop(guard);
        tracing::info!(account_id = %req.account_id, session_id = %req.session_id,
            sku = %req.sku, %hour, "session started");
        Ok(SessionStarted {
            admitted: true,
            reason: None,
            held: hour,
            started_at_ms,
        })
    }

    /// Records a heartbeat (busy ones reset the idle clock) after bringing the session up
    /// to date; a stopped session answers with how it stopped.
    pub async fn heartbeat(
        &self,
        session_id: &str,
        busy: bool,
    ) -> Result<SessionStatus, EngineError> {
        let shared = self.sessions.get(session_id)?;
        let mut row = shared.lock().await;
        let now_ms = self.now_ms();
        self.advance(&mut row, now_ms).await?;
        if row.state == SessionState::Running && busy && row.last_busy_at_ms < now_ms {
            let mut next = row.clone();
            next.last_busy_at_ms = now_ms;
            self.write_session(&mut row, next, None, Vec::new()).await?;
        }
        Ok(status(&row))
    }

    /// Stops the session now (if still running) and bills it up to now.
    pub async fn stop_session(&self, session_id: &str) -> Result<SessionStatus, EngineError> {
        let shared = self.sessions.get(session_id)?;
        let mut row = shared.lock().await;
        let now_ms = self.now_ms();
        self.advance(&mut row, now_ms).await?;
        if row.state == SessionState::Running {
            self.finish_session(&mut row, now_ms, SessionState::Stopped)
                .await?;
        }
        Ok(status(&row))
    }

    /// Brings every running session up to `now_ms` (the sync loop's tick).
    pub async fn tick_sessions(&self, now_ms: i64) {
        let running = self.sessions.all();
        for shared in running {
            // A session being stepped by a call right now is that call's business.
            let Ok(mut row) = shared.try_lock() else {
                continue;
            };
            if row.state != SessionState::Running {
                continue;
            }
            if let Err(e) = self.advance(&mut row, now_ms).await {
                tracing::warn!(session_id = %row.session_id, error = %e,
                    "session not brought up to date; retried next tick");
            }
        }
    }

    /// Applies every step due by `now_ms`: pre-authorise the running hour if it is not,
    /// settle hours that ended, stop on the idle timeout.
    async fn advance(&self, row: &mut SessionRow, now_ms: i64) -> Result<(), EngineError> {
        if row.state != SessionState::Running {
            return Ok(());
        }
        self.ensure_account(&row.account_id).await?;
        if let Some(mut a) = self.accounts.get_mut(&row.account_id) {
            a.last_touch_ms = a.last_touch_ms.max(now_ms);
        }
        let price = self.session_price(&row.sku)?;
        let hour = price.cost(HOUR_QUANTITY)?;
        let t = terms(row);
        while row.state == SessionState::Running {
            let step = t.next_step(row.billed_until_ms, row.last_busy_at_ms, now_ms);
            if row.held.is_zero() && !matches!(step, SessionStep::StopIdle { .. }) {
                // The running hour must be pre-authorised; if it cannot be, the session
                // stops where the last paid hour ended.
                match self
                    .hold_money(&row.account_id, Resource::GpuExclusive, hour)
                    .await?
                {
                    Ok(()) => {
                        let mut next = row.clone();
                        next.held = hour;
                        if let Err(e) = self.persist_session(&next).await {
                            self.unhold(&row.account_id, hour);
                            return Err(e);
                        }
                        *row = next;
                    }
                    Err(reason) => {
                        tracing::info!(session_id = %row.session_id, reason = reason.name(),
                            "next hour not authorised: session stopped");
                        let at = row.billed_until_ms;
                        self.finish_session(row, at, SessionState::InsufficientFunds)
                            .await?;
                        break;
                    }
                }
                continue;
            }
            match step {
                SessionStep::Wait => break,
                SessionStep::StopIdle { at_ms } => {
                    self.finish_session(row, at_ms, SessionState::IdleShutdown)
                        .await?;
                }
                SessionStep::SettleHour { hour_end_ms } => {
                    let mut next = row.clone();
                    next.hours_settled += 1;
                    next.billed_until_ms = hour_end_ms;
                    next.charged += hour;
                    next.held = Money::ZERO;
                    let usage = (
                        format!("{}/h{}", row.session_id, next.hours_settled),
                        HOUR_QUANTITY,
                        hour,
                        hour_end_ms,
                    );
                    self.write_session(row, next, Some(usage), Vec::new())
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Stops the session at `at_ms`, charging the part of the hour used (whole seconds).
    async fn finish_session(
        &self,
        row: &mut SessionRow,
        at_ms: i64,
        state: SessionState,
    ) -> Result<(), EngineError> {
        let price = self.session_price(&row.sku)?;
        let at_ms = at_ms.max(row.billed_until_ms);
        let quantity = session::billable_ms(row.billed_until_ms, at_ms);
        let cost = price.cost(quantity)?;
        let mut next = row.clone();
        next.state = state;
        next.stopped_at_ms = at_ms;
        next.billed_until_ms = at_ms;
        next.held = Money::ZERO;
        next.charged += cost;
        let usage =
            (quantity > 0).then(|| (format!("{}/end", row.session_id), quantity, cost, at_ms));
        let (kind, why) = match state {
            SessionState::IdleShutdown => (
                EventKind::SessionIdleShutdown,
                format!("idle for {} ms with auto-shutdown on", row.idle_timeout_ms),
            ),
            SessionState::InsufficientFunds => (
                EventKind::SessionStopped,
                "its next hour could not be paid (INSUFFICIENT_FUNDS)".to_owned(),
            ),
            SessionState::Stopped | SessionState::Running => {
                (EventKind::SessionStopped, "stopped on request".to_owned())
            }
        };
        let event = Event {
            account_id: row.account_id.clone(),
            kind,
            subject_id: row.session_id.clone(),
            threshold: String::new(),
            message: format!(
                "session {} ({}) stopped: {why}; billed {} for {} ms",
                row.session_id,
                row.sku,
                next.charged,
                at_ms - row.started_at_ms
            ),
            at_ms,
        };
        tracing::info!(account_id = %row.account_id, session_id = %row.session_id,
            charged = %next.charged, stopped_at_ms = at_ms, "session stopped: {why}");
        self.write_session(row, next, usage, vec![event]).await
    }

    async fn persist_session(&self, row: &SessionRow) -> Result<(), EngineError> {
        let d = self.journal.submit(Entry::Session(row.clone(), None))?;
        d.await.unwrap_or(Err(JournalError::Closed))?;
        Ok(())
    }

    /// Moves the session to `next`: its hold changes to `next.held`, the usage (id,
    /// quantity, cost, at) is charged, all journaled together; undone if the journal
    /// fails. `events` go out once it is durable.
    async fn write_session(
        &self,
        row: &mut SessionRow,
        next: SessionRow,
        usage: Option<(String, u64, Money, i64)>,
        events: Vec<Event>,
    ) -> Result<(), EngineError> {
        let account_id = row.account_id.clone();
        let (done, seq, batch) = {
            let mut a = self
                .accounts
                .get_mut(&account_id)
                .ok_or_else(|| EngineError::UnknownAccount(account_id.clone()))?;
            let usage = usage.map(|(id, q, cost, at)| {
                self.charge_locked(
                    &mut a,
                    id,
                    &account_id,
                    Resource::GpuExclusive,
                    &row.sku,
                    q,
                    cost,
                    at,
                )
            });
            let seq = usage.as_ref().map(|u| u.seq);
            let done = match self.journal.submit(Entry::Session(next.clone(), usage)) {
                Ok(d) => d,
                Err(e) => {
                    if let Some(seq) = seq {
                        a.undo_charge(seq);
                    }
                    return Err(e.into());
                }
            };
            a.remove_held(row.held);
            a.add_held(next.held);
            let batch = seq.and_then(|_| self.alerts_locked(&mut a, &account_id, self.now_ms()));
            (done, seq, batch)
        };
        if let Err(e) = done.await.unwrap_or(Err(JournalError::Closed)) {
            if let Some(mut a) = self.accounts.get_mut(&account_id) {
                a.remove_held(next.held);
                a.add_held(row.held);
                if let Some(seq) = seq {
                    a.undo_charge(seq);
                }
            }
            return Err(e.into());
        }
        *row = next;
        self.publish(batch);
        self.publish_events(None, events);
        Ok(())
    }

    /// Running sessions of an account, brought up to date first.
    pub async fn sessions_of(&self, account_id: &str) -> Vec<SessionView> {
        let now_ms = self.now_ms();
        let mine = self.sessions.all();
        let mut out = Vec::new();
        for shared in mine {
            let mut row = shared.lock().await;
            if row.account_id != account_id || row.state != SessionState::Running {
                continue;
            }
            if let Err(e) = self.advance(&mut row, now_ms).await {
                tracing::warn!(session_id = %row.session_id, error = %e, "session not brought up to date");
            }
            if row.state != SessionState::Running {
                continue;
            }
            let Ok(price) = self.session_price(&row.sku) else {
                continue;
            };
            let t = terms(&row);
            out.push(SessionView {
                session_id: row.session_id.clone(),
                sku: row.sku.clone(),
                started_at_ms: row.started_at_ms,
                auto_shutdown: row.auto_shutdown,
                idle_timeout_ms: row.idle_timeout_ms,
                last_busy_at_ms: row.last_busy_at_ms,
                charged: row.charged,
                accrued: price
                    .cost(session::billable_ms(row.billed_until_ms, now_ms))
                    .unwrap_or(Money::ZERO),
                hourly: price.cost(HOUR_QUANTITY).unwrap_or(Money::ZERO),
                accrues_without_activity: session::accrues_without_activity(
                    &t,
                    row.last_busy_at_ms,
                    now_ms,
                ),
            });
        }
        out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        out
    }

    /// Sessions from the journal: running ones keep their hour's hold, counted against
    /// their account when it loads.
    pub(super) fn recover_sessions(&self, rows: Vec<SessionRow>) {
        self.sessions.recover(rows, |account_id, held| {
            *self
                .orphan_session_holds
                .entry(account_id.to_owned())
                .or_insert(Money::ZERO) += held;
        });
    }
}
