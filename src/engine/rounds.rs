//! A usage stream's rounds: the reports a client pipelined are charged together, with one
//! wait for the journal per round instead of one per report. A stream keeps several
//! rounds in flight (`stream_rounds_max`): the next round is read and charged while the
//! previous one's group commit is on its way, so a stream is not held to one fsync per
//! round trip. Decisions still leave in order, and a round's only once all its writes
//! are durable (G2): the stream answers its rounds oldest first.
//!
//! A round whose write fails is taken back with every later round of the stream that
//! failed too; a later round that did become durable keeps its charges (the journal and
//! the ledger have them), and the job goes back to where it was before the failed round,
//! so reports the client sends again are charged under the same usage ids, which the
//! ledger applies once.

use super::events::Batch;
use super::work::{Decision, Work};
use super::{Engine, EngineError};
use crate::billing::Money;
use crate::billing::status::DenyReason;
use crate::journal::{Durable, Entry, JournalError, ReservationRow};

/// What one round of reports did under the account's lock (see `Engine::charge_round`).
pub(super) struct Round {
    /// The job's last seq, last delta, charged total and STOP before the round.
    pub(super) before: (u64, u64, Money, Option<DenyReason>),
    pub(super) held_before: Money,
    /// The taken-over reservation's row before the round.
    pub(super) row_before: Option<ReservationRow>,
    /// The reports charged, queued for the journal together at the round's end; then
    /// that write; and their usage seqs.
    pub(super) entries: Vec<Entry>,
    pub(super) durables: Vec<Durable>,
    pub(super) seqs: Vec<u64>,
    pub(super) decisions: Vec<Decision>,
    /// Reports taken: answered as duplicates, or charged.
    pub(super) taken: usize,
    /// The last report's next interval needs more lease.
    pub(super) need_lease: bool,
    /// The job was told to STOP in this round, with what it had been charged then.
    pub(super) stopped_now: Option<(DenyReason, Money)>,
    /// Why the round stopped short of its reports, if it did.
    pub(super) failed: Option<EngineError>,
    pub(super) batch: Option<Batch>,
}

impl Round {
    pub(super) fn new(work: &Work, reports: usize) -> Round {
        Round {
            before: (work.last_seq, work.last_delta, work.charged, work.stopped),
            held_before: work.held,
            row_before: None,
            entries: Vec::with_capacity(reports),
            durables: Vec::with_capacity(1),
            seqs: Vec::with_capacity(reports),
            decisions: Vec::with_capacity(reports),
            taken: 0,
            need_lease: false,
            stopped_now: None,
            failed: None,
            batch: None,
        }
    }
}

/// A round charged and queued for the journal, not answered yet.
pub struct ChargedRound {
    round: Round,
    /// Of the reports given, how many the rate limit let through.
    allowed: usize,
    /// Journal writes of the round known durable (a prefix of `round.durables`).
    resolved: usize,
}

impl ChargedRound {
    /// Reports the round took, from the start of those given.
    pub fn taken(&self) -> usize {
        self.round.taken
    }

    /// Of the reports given, how many the rate limit let through: those after `taken`
    /// and before this wait for the round's answer (`Engine::charge_allowed`).
    pub fn allowed(&self) -> usize {
        self.allowed
    }

    /// Nothing more of the stream may be charged before this round is answered: its
    /// last report waits for the ledger, or a report could not be taken.
    pub fn is_last(&self) -> bool {
        self.round.need_lease || self.round.failed.is_some()
    }

    /// Decisions the round will answer (bounds the stream's unread decisions).
    pub fn decisions(&self) -> usize {
        self.round.decisions.len() + usize::from(self.round.need_lease)
    }

    /// Waits until every write of the round is durable; the first failure otherwise.
    /// Safe to cancel and call again.
    pub async fn durable(&mut self) -> Result<(), JournalError> {
        while let Some(d) = self.round.durables.get_mut(self.resolved) {
            d.await.unwrap_or(Err(JournalError::Closed))?;
            self.resolved += 1;
        }
        Ok(())
    }
}

impl Engine {
    /// Charges reports (seq, quantity) a client pipelined, in order, as far as the rate
    /// limit allows and one round goes, each queued for the journal; does not wait for
    /// it. Answer the round with `answer_round` once `durable` succeeded, or take it back
    /// with `undo_rounds`.
    pub fn charge_reports(
        &self,
        work: &mut Work,
        reports: &[(u64, u64)],
    ) -> Result<ChargedRound, EngineError> {
        let rate = self.works.config().stream_reports_per_sec;
        let allowed = work.allow(reports.len(), rate, self.now_ms());
        let reports = reports.get(..allowed).unwrap_or(reports);
        let mut charged = self.charge_allowed(work, reports)?;
        charged.allowed = allowed;
        Ok(charged)
    }

    /// `charge_reports` for reports the rate limit let through already (those a round
    /// that waited for the ledger left).
    pub fn charge_allowed(
        &self,
        work: &mut Work,
        reports: &[(u64, u64)],
    ) -> Result<ChargedRound, EngineError> {
        let round = self.charge_round(work, reports, self.now_ms())?;
        self.works.update(work);
        Ok(ChargedRound {
            round,
            allowed: reports.len(),
            resolved: 0,
        })
    }

    /// Answers a round whose writes are durable: its events go out, and a last report
    /// that waited for more lease is answered after asking the ledger. Returns the
    /// decisions and why the stream cannot go on, if it cannot.
    pub async fn answer_round(
        &self,
        work: &mut Work,
        charged: ChargedRound,
    ) -> (Vec<Decision>, Option<EngineError>) {
        let mut round = charged.round;
        self.publish(round.batch.take());
        if let Some((reason, at_charged)) = round.stopped_now {
            self.work_stopped_event(work, reason, at_charged);
        }
        let mut decisions = round.decisions;
        if round.need_lease {
            // The last report's next interval needs more lease: ask, then answer it.
            let asked = self.hold_next(work).await;
            self.works.update(work);
            if let Err(e) = asked {
                return (decisions, Some(e));
            }
            let seq = work.last_seq;
            decisions.push(self.decision(work, seq, false, self.now_ms()));
        }
        (decisions, round.failed)
    }

    /// Takes back `failed`, a round whose write failed, with the stream's later rounds
    /// (each with whether its writes are durable, which all of them must be known to be):
    /// the charges that are not durable, the job's hold, the reservation row and the
    /// job's progress go back to where they were before `failed`.
    pub fn undo_rounds(
        &self,
        work: &mut Work,
        failed: ChargedRound,
        later: Vec<(ChargedRound, bool)>,
    ) {
        let mut undo = vec![failed.round];
        for (r, durable) in later {
            if durable {
                // Its charges stand; so do the alerts they crossed.
                let mut round = r.round;
                self.publish(round.batch.take());
            } else {
                undo.push(r.round);
            }
        }
        if let Some(mut a) = self.accounts.get_mut(&work.key.account_id) {
            for r in undo.iter().skip(1) {
                for seq in &r.seqs {
                    a.undo_charge(*seq);
                }
            }
            if let Some(first) = undo.first() {
                self.undo_round(&mut a, work, first);
            }
        }
        self.works.update(work);
    }

    /// Charges reports that a client pipelined, in order, one round at a time; a
    /// decision per report, as `report` would give it. Reports past the rate limit or an
    /// error are not charged: the decisions returned are for the reports taken, and the
    /// error says why the rest were not.
    pub async fn report_batch(
        &self,
        work: &mut Work,
        reports: &[(u64, u64)],
    ) -> (Vec<Decision>, Option<EngineError>) {
        let mut out = Vec::with_capacity(reports.len());
        let mut charged = self.charge_reports(work, reports);
        let rate = self.works.config().stream_reports_per_sec;
        let mut rate_err = None;
        let mut rest = reports;
        loop {
            let mut r = match charged {
                Ok(r) => r,
                Err(e) => return (out, Some(e)),
            };
            if r.allowed() < rest.len() {
                rate_err = Some(EngineError::ReportRate(rate));
            }
            let (taken, allowed) = (r.taken(), r.allowed());
            if let Err(e) = r.durable().await {
                self.undo_rounds(work, r, Vec::new());
                return (out, Some(e.into()));
            }
            let (decisions, err) = self.answer_round(work, r).await;
            out.extend(decisions);
            if err.is_some() {
                return (out, err);
            }
            rest = rest.get(taken..allowed).unwrap_or_default();
            if rest.is_empty() {
                return (out, rate_err);
            }
            charged = self.charge_allowed(work, rest);
        }
    }
}
