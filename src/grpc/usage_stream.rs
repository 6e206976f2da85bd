//! StreamUsage as the Quota service drives it. A client pipelines reports; they are
//! charged in rounds, and up to `stream_rounds_max` rounds wait for the journal at once,
//! so the stream reads and charges the next round while the previous one's group commit
//! is in flight instead of one round per fsync. Decisions leave in report order, each
//! round's only once all its usage is durable (G2); the rounds and the decisions not yet
//! read together stay within `stream_buffer`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::convert;
use super::error::{Invalid, Overload};
use crate::auth::{Caller, Permission};
use crate::engine::work::{Decision, Work};
use crate::engine::{self, ChargedRound, Engine, EngineError};
use crate::journal::JournalError;
use crate::metrics::{Counter, SharedMetrics};
use crate::pb;

type Decisions = mpsc::Sender<Result<pb::UsageDecision, Status>>;

/// Longest a failing stream waits for its client to take the error status.
const STREAM_ERROR_SEND_MS: u64 = 5_000;

/// Drives one StreamUsage call: a decision per report; on the stream's end, break or
/// error, the job is settled. Public for tests that play a client the network cannot
/// (one that stops reading decisions); it has no caller to check (in-process only).
pub async fn meter<S>(engine: Arc<Engine>, currency: String, inbound: S, tx: Decisions)
where
    S: Stream<Item = Result<pb::UsageReport, Status>> + Unpin,
{
    meter_with(engine, currency, inbound, tx, None, Caller::Unchecked).await
}

/// What the stream does next.
enum Step {
    /// The oldest round's writes are durable (or one failed).
    Durable(Result<(), JournalError>),
    Report(Option<Result<pb::UsageReport, Status>>),
    Closing,
    Done,
}

/// `meter`, counting each decision into `metrics`.
pub(super) async fn meter_with<S>(
    engine: Arc<Engine>,
    currency: String,
    mut inbound: S,
    tx: Decisions,
    metrics: Option<SharedMetrics>,
    caller: Caller,
) where
    S: Stream<Item = Result<pb::UsageReport, Status>> + Unpin,
{
    let mut closing = engine.closing();
    let mut m = Meter::new(engine, currency, tx, metrics, caller);
    loop {
        let can_read = m.can_read();
        let step = tokio::select! {
            biased;
            r = oldest_durable(&mut m.rounds), if !m.rounds.is_empty() => Step::Durable(r),
            _ = closing.wait_for(|c| *c), if m.reading => Step::Closing,
            r = inbound.next(), if can_read => Step::Report(r),
            else => Step::Done,
        };
        match step {
            Step::Durable(Ok(())) => m.answer_oldest().await,
            Step::Durable(Err(e)) => m.undo_from_oldest(e).await,
            Step::Closing => {
                m.closing = true;
                m.stop_reading(EngineError::ShuttingDown.into());
            }
            Step::Report(Some(Ok(first))) => {
                let limit = engine::work::DEFAULT_STREAM_BATCH_MAX.min(m.room()).max(1);
                let (batch, ended) = ready_reports(&mut inbound, first, limit).await;
                m.charge_batch(&batch).await;
                if ended {
                    m.reading = false;
                }
            }
            Step::Report(Some(Err(status))) => {
                tracing::debug!(error = %status, "usage stream broke");
                m.reading = false;
            }
            Step::Report(None) => m.reading = false,
            Step::Done => break,
        }
    }
    m.finish().await;
}

/// Waits for the oldest round's writes.
async fn oldest_durable(rounds: &mut VecDeque<ChargedRound>) -> Result<(), JournalError> {
    match rounds.front_mut() {
        Some(r) => r.durable().await,
        None => std::future::pending().await,
    }
}

/// `first` and the reports the client pipelined behind it that arrived already, at most
/// `limit`; and whether the stream ended (or broke) behind them.
async fn ready_reports<S>(
    inbound: &mut S,
    first: pb::UsageReport,
    limit: usize,
) -> (Vec<pb::UsageReport>, bool)
where
    S: Stream<Item = Result<pb::UsageReport, Status>> + Unpin,
{
    let mut batch = Vec::with_capacity(limit);
    batch.push(first);
    while batch.len() < limit {
        let ready = tokio::select! {
            biased;
            m = inbound.next() => Some(m),
            _ = std::future::ready(()) => None,
        };
        match ready {
            Some(Some(Ok(r))) => batch.push(r),
            Some(Some(Err(_)) | None) => return (batch, true),
            None => break,
        }
    }
    (batch, false)
}

/// One stream between its reports and its decisions.
struct Meter {
    engine: Arc<Engine>,
    currency: String,
    tx: Decisions,
    metrics: Option<SharedMetrics>,
    /// The counter of CONTINUE decisions (its label) once one was counted.
    continued: Option<(&'static str, Counter)>,
    caller: Caller,
    work: Option<Work>,
    /// Rounds charged and waiting for their journal writes, oldest first.
    rounds: VecDeque<ChargedRound>,
    /// Reports the rate limit let through that wait for the last round's answer (its last
    /// report waited for the ledger); charged right after it.
    held_back: Vec<(u64, u64)>,
    /// Reports are still read (the stream did not end, break or fail).
    reading: bool,
    /// Decisions are still sent (the client reads them).
    sending: bool,
    /// Why a round could not be answered: the status the stream ends with.
    failed: Option<Status>,
    /// Why reading stopped (a later report's fault): the status if no round failed.
    refused: Option<Status>,
    /// quotad is closing: the status is sent without waiting.
    closing: bool,
}

impl Meter {
    fn new(
        engine: Arc<Engine>,
        currency: String,
        tx: Decisions,
        metrics: Option<SharedMetrics>,
        caller: Caller,
    ) -> Meter {
        Meter {
            engine,
            currency,
            tx,
            metrics,
            continued: None,
            caller,
            work: None,
            rounds: VecDeque::new(),
            held_back: Vec::new(),
            reading: true,
            sending: true,
            failed: None,
            refused: None,
            closing: false,
        }
    }

    /// Another round may be read: within `stream_rounds_max`, none waiting for the
    /// ledger, and room for its decisions (a client that reads none is still read from,
    /// one round at a time, so that it learns it must read).
    fn can_read(&self) -> bool {
        let rounds_max = self.engine.config().work.stream_rounds_max.max(1);
        self.reading
            && self.held_back.is_empty()
            && self.rounds.len() < rounds_max
            && !self.rounds.back().is_some_and(ChargedRound::is_last)
            && (self.room() > 0 || self.rounds.is_empty())
    }

    /// Decisions that still fit the client's buffer beyond those of the rounds in flight.
    fn room(&self) -> usize {
        let pending: usize = self.rounds.iter().map(ChargedRound::decisions).sum();
        self.tx.capacity().saturating_sub(pending)
    }

    fn stop_reading(&mut self, why: Status) {
        self.reading = false;
        self.refused.get_or_insert(why);
    }

    fn fail(&mut self, why: Status) {
        self.reading = false;
        self.held_back.clear();
        self.failed.get_or_insert(why);
    }

    /// Validates a batch of pipelined reports and charges the valid ones before the first
    /// invalid one as a round.
    async fn charge_batch(&mut self, batch: &[pb::UsageReport]) {
        let mut pairs = Vec::with_capacity(batch.len());
        for r in batch {
            match admit_report(&self.engine, &mut self.work, r, &self.caller).await {
                Ok(p) => pairs.push(p),
                Err(s) => {
                    self.stop_reading(s);
                    break;
                }
            }
        }
        if !pairs.is_empty() {
            self.charge(&pairs, true);
        }
    }

    /// Charges reports as the next round (`rate`: they still pass the rate limit).
    fn charge(&mut self, pairs: &[(u64, u64)], rate: bool) {
        let Some(w) = self.work.as_mut() else {
            return;
        };
        let charged = if rate {
            self.engine.charge_reports(w, pairs)
        } else {
            self.engine.charge_allowed(w, pairs)
        };
        match charged {
            Err(e) => self.fail(e.into()),
            Ok(r) => {
                if r.allowed() < pairs.len() {
                    // These reports come before any invalid one: theirs is the status.
                    let rate = self.engine.config().work.stream_reports_per_sec;
                    self.refused = Some(EngineError::ReportRate(rate).into());
                    self.reading = false;
                }
                if r.is_last()
                    && let Some(rest) = pairs.get(r.taken()..r.allowed())
                {
                    self.held_back = rest.to_vec();
                }
                self.rounds.push_back(r);
            }
        }
    }

    /// The oldest round is durable: its decisions go out; reports held back behind it are
    /// charged.
    async fn answer_oldest(&mut self) {
        let (Some(r), Some(w)) = (self.rounds.pop_front(), self.work.as_mut()) else {
            return;
        };
        let (decisions, err) = self.engine.answer_round(w, r).await;
        self.send(decisions);
        if let Some(e) = err {
            self.fail(e.into());
        }
        if self.rounds.is_empty() && !self.held_back.is_empty() {
            let rest = std::mem::take(&mut self.held_back);
            self.charge(&rest, false);
        }
    }

    /// The oldest round's write failed: it is taken back with the later rounds once
    /// their writes are known (see `Engine::undo_rounds`), and the stream ends.
    async fn undo_from_oldest(&mut self, e: JournalError) {
        let Some(failed) = self.rounds.pop_front() else {
            return;
        };
        let mut later = Vec::with_capacity(self.rounds.len());
        while let Some(mut r) = self.rounds.pop_front() {
            let durable = r.durable().await.is_ok();
            later.push((r, durable));
        }
        if let Some(w) = self.work.as_mut() {
            self.engine.undo_rounds(w, failed, later);
        }
        self.fail(EngineError::from(e).into());
    }

    fn send(&mut self, decisions: Vec<Decision>) {
        for d in decisions {
            if !self.sending {
                return;
            }
            let d = convert::decision_out(&self.currency, d);
            if let Some(m) = &self.metrics {
                let go_on = d.action == pb::Action::Continue as i32;
                let label = convert::decision_label(go_on, d.reason);
                if go_on {
                    // CONTINUE is nearly every decision: its counter is kept, not looked up.
                    match &self.continued {
                        Some((l, c)) if *l == label => {
                            c.inc();
                        }
                        _ => {
                            let c = m.decision_counter("StreamUsage", go_on, label);
                            c.inc();
                            self.continued = Some((label, c));
                        }
                    }
                } else {
                    m.decision("StreamUsage", go_on, label);
                }
            }
            match self.tx.try_send(Ok(d)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.sending = false;
                    let buffer = self.engine.config().work.stream_buffer;
                    self.fail(Overload::DecisionsUnread(buffer).into());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.sending = false;
                    self.reading = false;
                }
            }
        }
    }

    /// Every round is answered: the stream's status, if it ends on one, then the job is
    /// settled.
    async fn finish(mut self) {
        if let Some(status) = self.failed.take().or(self.refused.take()) {
            if self.closing {
                let _ = self.tx.try_send(Err(status));
            } else {
                let _ = tokio::time::timeout(
                    Duration::from_millis(STREAM_ERROR_SEND_MS),
                    self.tx.send(Err(status)),
                )
                .await;
            }
        }
        if let Some(w) = self.work.take() {
            self.engine.end_work(w).await;
        }
    }
}

/// A report's job and delta, validated; the first report of a stream opens its job,
/// later ones must name the same job.
async fn admit_report(
    engine: &Engine,
    work: &mut Option<Work>,
    r: &pb::UsageReport,
    caller: &Caller,
) -> Result<(u64, u64), Status> {
    if let Some(w) = work
        && convert::names_work(r, w.key())
    {
        caller.allow(&w.key().account_id, Permission::Reserve)?;
        return report_numbers(r);
    }
    let key = convert::work_key(r)?;
    caller.allow(&key.account_id, Permission::Reserve)?;
    let numbers = report_numbers(r)?;
    match work {
        Some(w) if *w.key() != key => Err(Invalid(format!(
            "one stream meters one job: this stream is work {} of account {} ({}), not work {} of account {} ({})",
            w.key().work_id, w.key().account_id, w.key().sku, key.work_id, key.account_id, key.sku
        ))
        .into()),
        Some(_) => Ok(numbers),
        None => {
            // A work id that is another account's reservation: refused without naming it.
            if let Some(other) = engine.reservation_account(&key.work_id)
                && !caller.sees(&other)
            {
                return Err(EngineError::ReservationMismatch {
                    id: key.work_id,
                    detail: "the id is taken".into(),
                }
                .into());
            }
            *work = Some(engine.start_work(key).await?);
            Ok(numbers)
        }
    }
}

/// A report's seq and quantity, validated.
fn report_numbers(r: &pb::UsageReport) -> Result<(u64, u64), Status> {
    let quantity = convert::quantity(r.quantity, true)?;
    if r.seq == 0 {
        return Err(Invalid("seq must be 1 or more, increasing per report".into()).into());
    }
    Ok((r.seq, quantity))
}
