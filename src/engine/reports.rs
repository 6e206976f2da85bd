//! Metered jobs (StreamUsage) as the engine runs them: a running Shared-Edition job
//! reports GPU time as it uses it, and the sidecar charges each report and holds the next
//! report interval for it, so that the account can be stopped before it overruns (G1: the
//! overrun is at most what is reported after STOP, one report of one job). A stream may
//! take over a reservation of the same id: its hold becomes the job's, reports are charged
//! against it, and the end of the stream settles the reservation with what was reported.
//!
//! Each report is charged as usage `work_id/seq`, durable before its decision is sent
//! (G2); the ledger applies each usage id once, so a report resent on a new stream after
//! a break is never charged twice.

use super::account::Account;
use super::admission::Take;
use super::events::{Event, EventKind};
use super::rounds::Round;
use super::work::{Decision, Work, WorkKey, WorkView};
use super::{Engine, EngineError};
use crate::billing::Money;
use crate::billing::Resource;
use crate::billing::status::DenyReason;
use crate::journal::{Entry, HoldState, JournalError, ReservationRow};

/// A report's usage id, `work_id/seq`, made in one allocation (`format!` grows it).
fn report_usage_id(work_id: &str, seq: u64) -> String {
    use std::fmt::Write;
    let mut id = String::with_capacity(work_id.len() + 21);
    id.push_str(work_id);
    id.push('/');
    // Writing to a String cannot fail.
    let _ = write!(id, "{seq}");
    id
}

impl Engine {
    /// Opens metering for a job: within the stream limits, one stream per job. Takes over
    /// the reservation of the same id if one is open here.
    pub async fn start_work(&self, key: WorkKey) -> Result<Work, EngineError> {
        if self.is_closing() {
            return Err(EngineError::ShuttingDown);
        }
        let price = self.catalog.price(&key.sku, key.resource)?.clone();
        if key.resource != Resource::GpuShared {
            return Err(EngineError::NotStreamable(key.resource));
        }
        self.ensure_account(&key.account_id).await?;
        let now_ms = self.now_ms();
        let last_seq = self.works.open(&key)?;
        let rate = self.works.config().stream_reports_per_sec;
        let mut work = Work::new(key, price, last_seq, rate, now_ms);
        // Take over an open reservation of the same id (same account, resource and sku).
        if let Some(mut h) = self.holds.get_mut(&work.key.work_id) {
            let r = &h.row;
            let expired = r.expires_at_ms <= now_ms;
            if r.state == HoldState::Open && !h.busy && !h.streaming && !expired {
                if r.account_id != work.key.account_id
                    || r.resource != work.key.resource
                    || r.sku != work.key.sku
                {
                    let detail = format!(
                        "it reserved {} of {} for account {}",
                        r.resource, r.sku, r.account_id
                    );
                    drop(h);
                    self.works.unopen(&work.key.work_id);
                    return Err(EngineError::ReservationMismatch {
                        id: work.key.work_id.clone(),
                        detail,
                    });
                }
                h.streaming = true;
                work.attached = true;
                work.held = h.row.held;
                work.charged = h.row.streamed_cost;
            }
        }
        tracing::debug!(work_id = %work.key.work_id, attached = work.attached, "usage stream opened");
        Ok(work)
    }

    /// Charges one report and decides whether the job may go on: CONTINUE while the next
    /// report interval can be held, else STOP (sticky). The charge is durable before this
    /// returns.
    pub async fn report(
        &self,
        work: &mut Work,
        seq: u64,
        quantity: u64,
    ) -> Result<Decision, EngineError> {
        let (mut out, err) = self.report_batch(work, &[(seq, quantity)]).await;
        match (out.pop(), err) {
            (_, Some(e)) => Err(e),
            (Some(d), None) => Ok(d),
            (None, None) => Err(EngineError::ReportRate(
                self.works.config().stream_reports_per_sec,
            )),
        }
    }

    /// Under the account's lock: charges the round's reports, each queued for the
    /// journal, and holds the job's next interval after each: until one needs a larger
    /// lease (that one is answered after asking the ledger) or cannot be priced (the
    /// reports before it stand). A round the journal cannot queue is taken back whole.
    pub(super) fn charge_round(
        &self,
        work: &mut Work,
        reports: &[(u64, u64)],
        now_ms: i64,
    ) -> Result<Round, EngineError> {
        let mut round = Round::new(work, reports.len());
        let mut a = self
            .accounts
            .get_mut(&work.key.account_id)
            .ok_or_else(|| EngineError::UnknownAccount(work.key.account_id.clone()))?;
        a.last_touch_ms = now_ms;
        self.expire_due(&mut a, now_ms);
        for &(seq, quantity) in reports {
            round.taken += 1;
            if seq <= work.last_seq {
                let ignored = self.decision_locked(&a, work, seq, true, now_ms);
                round.decisions.push(ignored);
                continue;
            }
            if let Err(e) = self.charge_report(&mut a, work, &mut round, seq, quantity, now_ms) {
                round.taken -= 1;
                round.failed = Some(e);
                break;
            }
            if !self.after_report(&mut a, work, &mut round, seq, now_ms) {
                break;
            }
        }
        // The round's reports go to the journal as one group: one queue slot and one
        // answer for all of them, written all or none.
        if !round.entries.is_empty() {
            match self.journal.submit_all(std::mem::take(&mut round.entries)) {
                Ok(d) => round.durables.push(d),
                Err(e) => {
                    self.undo_round(&mut a, work, &round);
                    return Err(e.into());
                }
            }
        }
        round.batch = self.alerts_locked(&mut a, &work.key.account_id, now_ms);
        Ok(round)
    }

    /// Charges one report under the account's lock; its journal entry joins the round's.
    /// Paid from the job's hold first; the rest is an overrun that the balance
    /// absorbs (bounded by what is reported after STOP).
    fn charge_report(
        &self,
        a: &mut Account,
        work: &mut Work,
        round: &mut Round,
        seq: u64,
        quantity: u64,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let cost = work.cost(quantity)?;
        let from_hold = cost.min(work.held);
        a.remove_held(from_hold);
        work.held -= from_hold;
        let key = &work.key;
        let usage_id = report_usage_id(&key.work_id, seq);
        let usage = self.charge_locked(
            a,
            usage_id,
            &key.account_id,
            key.resource,
            &key.sku,
            quantity,
            cost,
            now_ms,
        );
        let usage_seq = usage.seq;
        let row = self.stream_row(work, &mut round.row_before, from_hold, quantity, cost);
        round.entries.push(Entry::Report {
            usage,
            work_id: work.key.work_id.clone(),
            seq,
            row,
        });
        round.seqs.push(usage_seq);
        work.last_seq = seq;
        work.charged += cost;
        if quantity > 0 {
            work.last_delta = quantity;
        }
        Ok(())
    }

    /// A reservation the job took over follows its reports: what it holds, what was
    /// reported and charged on it. Returns its new row (journaled with the report);
    /// `row_before` keeps the row before the round.
    fn stream_row(
        &self,
        work: &Work,
        row_before: &mut Option<ReservationRow>,
        from_hold: Money,
        quantity: u64,
        cost: Money,
    ) -> Option<ReservationRow> {
        if !work.attached {
            return None;
        }
        let mut h = self.holds.get_mut(&work.key.work_id)?;
        if row_before.is_none() {
            *row_before = Some(h.row.clone());
        }
        h.row.held -= from_hold;
        h.row.streamed_quantity += quantity;
        h.row.streamed_cost += cost;
        Some(h.row.clone())
    }

    /// After a charged report, under the account's lock: holds the job's next interval
    /// (or STOPs it) and answers the report, unless the answer waits for more lease.
    /// False: the round ends here.
    fn after_report(
        &self,
        a: &mut Account,
        work: &mut Work,
        round: &mut Round,
        seq: u64,
        now_ms: i64,
    ) -> bool {
        if work.stopped.is_none() {
            match self.hold_next_locked(a, work, now_ms) {
                Ok(Some(Take::NeedLease)) => {
                    round.need_lease = true;
                    return false;
                }
                Ok(Some(Take::Denied(reason))) => {
                    round.stopped_now = Some((reason, work.charged));
                    self.stop_locked(a, work, reason);
                }
                Ok(_) => {}
                Err(e) => {
                    // Charged and journaled; only its next interval is not held.
                    round
                        .decisions
                        .push(self.decision_locked(a, work, seq, false, now_ms));
                    round.failed = Some(e);
                    return false;
                }
            }
        }
        round
            .decisions
            .push(self.decision_locked(a, work, seq, false, now_ms));
        true
    }

    /// Takes back a round whose journal write failed: its charges, its use of the job's
    /// hold, the reservation row and the job's progress.
    pub(super) fn undo_round(&self, a: &mut Account, work: &mut Work, round: &Round) {
        for seq in &round.seqs {
            a.undo_charge(*seq);
        }
        // The job's hold goes back to what it was (whatever the round used or added).
        a.remove_held(work.held);
        a.add_held(round.held_before);
        work.held = round.held_before;
        self.restore_row(&work.key.work_id, round.row_before.clone());
        (work.last_seq, work.last_delta, work.charged, work.stopped) = round.before;
    }

    /// Under the account's lock: grows the job's hold to cover the next report interval,
    /// if the lease allows. Returns the gate's answer when it did not (None: covered).
    fn hold_next_locked(
        &self,
        a: &mut Account,
        work: &mut Work,
        now_ms: i64,
    ) -> Result<Option<Take>, EngineError> {
        let next = work.cost(work.next_interval(self.works.config().stream_interval_ms))?;
        if work.held >= next {
            return Ok(None);
        }
        let extra = next - work.held;
        match self.take(
            a,
            &work.key.account_id,
            work.key.resource,
            extra,
            now_ms,
            false,
        ) {
            Take::Lease(_) | Take::FailOpen(_) => {
                a.add_held(extra);
                work.held += extra;
                if work.attached
                    && let Some(mut h) = self.holds.get_mut(&work.key.work_id)
                {
                    h.row.held += extra;
                }
                Ok(None)
            }
            t => Ok(Some(t)),
        }
    }

    /// Holds the next report interval for the job (growing its hold), or stops it.
    pub(super) async fn hold_next(&self, work: &mut Work) -> Result<(), EngineError> {
        let next = work.cost(work.next_interval(self.works.config().stream_interval_ms))?;
        if work.held >= next {
            return Ok(());
        }
        let extra = next - work.held;
        match self
            .hold_money(&work.key.account_id, work.key.resource, extra)
            .await?
        {
            Ok(()) => {
                work.held += extra;
                if work.attached
                    && let Some(mut h) = self.holds.get_mut(&work.key.work_id)
                {
                    h.row.held += extra;
                }
            }
            Err(reason) => {
                if let Some(mut a) = self.accounts.get_mut(&work.key.account_id) {
                    self.stop_locked(&mut a, work, reason);
                }
                self.work_stopped_event(work, reason, work.charged);
            }
        }
        Ok(())
    }

    /// STOP under the account's lock (sticky): the job's hold goes back.
    fn stop_locked(&self, a: &mut Account, work: &mut Work, reason: DenyReason) {
        work.stopped = Some(reason);
        a.remove_held(work.held);
        if work.attached
            && let Some(mut h) = self.holds.get_mut(&work.key.work_id)
        {
            h.row.held -= work.held;
        }
        work.held = Money::ZERO;
    }

    /// Tells the account's watchers that the job was told to STOP after `charged`.
    pub(super) fn work_stopped_event(&self, work: &Work, reason: DenyReason, charged: Money) {
        tracing::info!(account_id = %work.key.account_id, work_id = %work.key.work_id,
            reason = reason.name(), charged = %charged, "usage stream told to stop");
        self.publish_events(
            None,
            vec![Event {
                account_id: work.key.account_id.clone(),
                kind: EventKind::WorkStopped,
                subject_id: work.key.work_id.clone(),
                threshold: String::new(),
                message: format!(
                    "job {} was told to stop ({}) after {} charged",
                    work.key.work_id,
                    reason.name(),
                    charged
                ),
                at_ms: self.now_ms(),
            }],
        );
    }

    pub(super) fn decision(&self, work: &Work, seq: u64, ignored: bool, now_ms: i64) -> Decision {
        match self.accounts.get(&work.key.account_id) {
            Some(a) => self.decision_locked(&a, work, seq, ignored, now_ms),
            None => Decision {
                seq,
                stop: work.stopped,
                remaining_quantity: 0,
                ignored,
                charged: work.charged,
            },
        }
    }

    /// The answer to a report: STOP (sticky) or how much more the account can pay for at
    /// the job's price, counting the job's own hold.
    fn decision_locked(
        &self,
        a: &Account,
        work: &Work,
        seq: u64,
        ignored: bool,
        now_ms: i64,
    ) -> Decision {
        let remaining_quantity = match work.stopped {
            Some(_) => 0,
            None => {
                let available = self.available(a, work.key.resource, now_ms);
                work.price.quantity_for(available + work.held)
            }
        };
        Decision {
            seq,
            stop: work.stopped,
            remaining_quantity,
            ignored,
            charged: work.charged,
        }
    }

    fn restore_row(&self, work_id: &str, row: Option<ReservationRow>) {
        if let Some(row) = row
            && let Some(mut h) = self.holds.get_mut(work_id)
        {
            h.row = row;
        }
    }

    /// Settles a job whose stream ended (closed, broken or cut off): its reported usage
    /// is charged already; the rest of its hold is released, and a reservation it took
    /// over is committed with the reported total.
    pub async fn end_work(&self, mut work: Work) {
        if work.ended {
            return;
        }
        work.ended = true;
        let now_ms = self.now_ms();
        let key = work.key.clone();
        self.unhold(&key.account_id, work.held);
        let mut settle = None;
        if work.attached
            && let Some(mut h) = self.holds.get_mut(&key.work_id)
        {
            h.streaming = false;
            if h.row.state == HoldState::Open {
                let before = h.row.clone();
                h.row.held = Money::ZERO;
                h.row.state = HoldState::Committed;
                h.row.charged = h.row.streamed_cost;
                h.row.charged_quantity = h.row.streamed_quantity;
                h.row.settled_at_ms = now_ms;
                match self.journal.submit(Entry::Reservation(h.row.clone())) {
                    Ok(d) => settle = Some((d, before)),
                    Err(e) => {
                        // Left open: its TTL releases the hold; its usage is charged.
                        tracing::warn!(reservation_id = %key.work_id, error = %e,
                            "stream's reservation not settled; its TTL will release it");
                        h.row = before;
                    }
                }
            }
        }
        if let Some((d, before)) = settle
            && let Err(e) = d.await.unwrap_or(Err(JournalError::Closed))
        {
            tracing::warn!(reservation_id = %key.work_id, error = %e,
                "stream's reservation not settled; its TTL will release it");
            if let Some(mut h) = self.holds.get_mut(&key.work_id) {
                h.row = before;
            }
        }
        self.works.close(&work, now_ms);
        tracing::debug!(work_id = %key.work_id, charged = %work.charged,
            last_seq = work.last_seq, "usage stream ended");
    }

    /// Open streams of an account.
    pub fn works_of(&self, account_id: &str) -> Vec<WorkView> {
        self.works.of(account_id)
    }

    pub fn streams_open(&self) -> usize {
        self.works.len()
    }
}
