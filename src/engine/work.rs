//! Metered jobs (StreamUsage), as state: what a stream's first report fixes, the job its
//! task owns (hold, charged total, last seq, STOP, its report rate), the decisions it is
//! answered, and the table of open streams and of jobs whose last seq is remembered
//! after their stream ended, within `WorkConfig`'s limits. How reports are charged is
//! `reports`.

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as MapEntry;

use super::error::EngineError;
use crate::billing::status::DenyReason;
use crate::billing::{Money, Price, PriceError, Resource};

/// Most usage streams open on one sidecar.
pub const DEFAULT_STREAMS_MAX: usize = 10_000;
/// Most reports one stream may send per second (a burst of as many is allowed).
pub const DEFAULT_STREAM_REPORTS_PER_SEC: u32 = 50;
/// Decisions buffered for a client that does not read them; beyond, the stream ends.
pub const DEFAULT_STREAM_BUFFER: usize = 64;
/// Most pipelined reports of one stream charged in one round (one journal wait); also
/// bounded by the room left in the stream's decision buffer.
pub const DEFAULT_STREAM_BATCH_MAX: usize = 256;
/// Rounds of one stream charged and waiting for their journal write at once: the next
/// round is read and charged while the previous one's group commit is in flight.
pub const DEFAULT_STREAM_ROUNDS_MAX: usize = 4;
/// GPU time held for the next report when the job has not reported a delta yet.
pub const DEFAULT_STREAM_INTERVAL_MS: u64 = 1_000;
/// Jobs whose last report seq is remembered after their stream ended (duplicates of
/// their reports on a new stream are ignored).
pub const DEFAULT_WORKS_REMEMBERED_MAX: usize = 1_000_000;

/// What the first report of a stream fixes for the whole stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkKey {
    pub account_id: String,
    pub work_id: String,
    pub resource: Resource,
    pub sku: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub seq: u64,
    pub stop: Option<DenyReason>,
    pub remaining_quantity: u64,
    pub ignored: bool,
    pub charged: Money,
}

/// An open stream's job, as GetBalance lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkView {
    pub account_id: String,
    pub work_id: String,
    pub sku: String,
    pub charged: Money,
    pub held: Money,
    pub last_seq: u64,
}

/// Limits of usage streams (see the `DEFAULT_*` constants).
#[derive(Debug, Clone, Copy)]
pub struct WorkConfig {
    pub streams_max: usize,
    pub stream_reports_per_sec: u32,
    pub stream_buffer: usize,
    pub stream_rounds_max: usize,
    pub stream_interval_ms: u64,
    pub works_remembered_max: usize,
}

impl Default for WorkConfig {
    fn default() -> Self {
        WorkConfig {
            streams_max: DEFAULT_STREAMS_MAX,
            stream_reports_per_sec: DEFAULT_STREAM_REPORTS_PER_SEC,
            stream_buffer: DEFAULT_STREAM_BUFFER,
            stream_rounds_max: DEFAULT_STREAM_ROUNDS_MAX,
            stream_interval_ms: DEFAULT_STREAM_INTERVAL_MS,
            works_remembered_max: DEFAULT_WORKS_REMEMBERED_MAX,
        }
    }
}

/// A job being metered; owned by its stream's task. `Engine::end_work` must be called
/// when the stream ends (it settles the job).
pub struct Work {
    pub(super) key: WorkKey,
    pub(super) price: Price,
    /// The reservation whose hold this job took over.
    pub(super) attached: bool,
    pub(super) held: Money,
    pub(super) charged: Money,
    pub(super) last_seq: u64,
    pub(super) last_delta: u64,
    pub(super) stopped: Option<DenyReason>,
    /// Reports it may still send now, in thousandths (see `allow`).
    tokens_milli: u64,
    tokens_at_ms: i64,
    pub(super) ended: bool,
    /// The last quantity priced and its cost (see `cost`).
    cost_memo: Option<(u64, Money)>,
}

impl Work {
    /// A job whose reports so far end at `last_seq`, allowed `rate` reports a second.
    pub(super) fn new(key: WorkKey, price: Price, last_seq: u64, rate: u32, now_ms: i64) -> Work {
        Work {
            price,
            attached: false,
            held: Money::ZERO,
            charged: Money::ZERO,
            last_seq,
            last_delta: 0,
            stopped: None,
            tokens_milli: u64::from(rate).saturating_mul(1_000),
            tokens_at_ms: now_ms,
            ended: false,
            cost_memo: None,
            key,
        }
    }

    pub fn key(&self) -> &WorkKey {
        &self.key
    }

    /// Token bucket on the injected clock, `rate` reports a second (a burst of as many):
    /// how many of `n` reports may be taken now. Counted in thousandths of a report, so a
    /// millisecond earns exactly `rate` of them.
    pub(super) fn allow(&mut self, n: usize, rate: u32, now_ms: i64) -> usize {
        let rate = u64::from(rate);
        let elapsed_ms = u64::try_from(now_ms.saturating_sub(self.tokens_at_ms)).unwrap_or(0);
        self.tokens_milli = self
            .tokens_milli
            .saturating_add(elapsed_ms.saturating_mul(rate))
            .min(rate.saturating_mul(1_000));
        self.tokens_at_ms = now_ms;
        let whole = usize::try_from(self.tokens_milli / 1_000).unwrap_or(usize::MAX);
        let allowed = whole.min(n);
        // `allowed` is at most `whole`, which came from `tokens_milli`.
        self.tokens_milli -= u64::try_from(allowed).unwrap_or(0) * 1_000;
        allowed
    }

    /// The quantity the next report is expected to carry: the last delta reported, or
    /// `default` before the first.
    /// The job's price of `quantity`. The last quantity priced is remembered: a job
    /// reports the same delta report after report, and its next interval is that delta,
    /// so most reports are priced without the decimal arithmetic.
    pub(super) fn cost(&mut self, quantity: u64) -> Result<Money, PriceError> {
        if let Some((q, c)) = self.cost_memo
            && q == quantity
        {
            return Ok(c);
        }
        let c = self.price.cost(quantity)?;
        self.cost_memo = Some((quantity, c));
        Ok(c)
    }

    pub(super) fn next_interval(&self, default: u64) -> u64 {
        if self.last_delta > 0 {
            self.last_delta
        } else {
            default
        }
    }
}

/// Open streams by work id, and the last seq of jobs whose stream ended (a report resent
/// on a new stream is then ignored), within `WorkConfig`'s limits.
pub(super) struct Works {
    cfg: WorkConfig,
    open: DashMap<String, WorkView>,
    /// Open streams by account (an account with one stays cached).
    by_account: DashMap<String, usize>,
    /// (last seq, when its stream ended) by work id.
    ended: DashMap<String, (u64, i64)>,
}

impl Works {
    pub(super) fn new(cfg: WorkConfig) -> Works {
        Works {
            cfg,
            open: DashMap::new(),
            by_account: DashMap::new(),
            ended: DashMap::new(),
        }
    }

    pub(super) fn config(&self) -> &WorkConfig {
        &self.cfg
    }

    /// Registers the job's stream: one per job, within `streams_max`, and a job not seen
    /// before only while `works_remembered_max` allows. Returns the job's last seq.
    pub(super) fn open(&self, key: &WorkKey) -> Result<u64, EngineError> {
        if self.open.len() >= self.cfg.streams_max {
            return Err(EngineError::StreamsFull(self.cfg.streams_max));
        }
        let last_seq = self.ended.get(&key.work_id).map(|e| e.0).unwrap_or(0);
        if last_seq == 0 && self.ended.len() >= self.cfg.works_remembered_max {
            return Err(EngineError::StreamsFull(self.cfg.works_remembered_max));
        }
        match self.open.entry(key.work_id.clone()) {
            MapEntry::Occupied(_) => Err(EngineError::WorkOpen(key.work_id.clone())),
            MapEntry::Vacant(v) => {
                *self.by_account.entry(key.account_id.clone()).or_default() += 1;
                v.insert(WorkView {
                    account_id: key.account_id.clone(),
                    work_id: key.work_id.clone(),
                    sku: key.sku.clone(),
                    charged: Money::ZERO,
                    held: Money::ZERO,
                    last_seq,
                });
                Ok(last_seq)
            }
        }
    }

    /// Forgets an open stream that was refused after `open`.
    pub(super) fn unopen(&self, work_id: &str) {
        self.remove_open(work_id);
    }

    fn remove_open(&self, work_id: &str) {
        if let Some((_, v)) = self.open.remove(work_id) {
            self.by_account.remove_if_mut(&v.account_id, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
    }

    /// Whether the account has an open stream.
    pub(super) fn streaming(&self, account_id: &str) -> bool {
        self.by_account.contains_key(account_id)
    }

    /// The job's view as GetBalance lists it, brought up to date.
    pub(super) fn update(&self, work: &Work) {
        if let Some(mut v) = self.open.get_mut(&work.key.work_id) {
            v.charged = work.charged;
            v.held = work.held;
            v.last_seq = work.last_seq;
        }
    }

    /// The job's stream ended at `now_ms`: remember its last seq.
    pub(super) fn close(&self, work: &Work, now_ms: i64) {
        self.remove_open(&work.key.work_id);
        if work.last_seq > 0 {
            self.ended
                .insert(work.key.work_id.clone(), (work.last_seq, now_ms));
        }
    }

    /// Open streams of an account, by work id.
    pub(super) fn of(&self, account_id: &str) -> Vec<WorkView> {
        let mut v: Vec<WorkView> = self
            .open
            .iter()
            .filter(|w| w.account_id == account_id)
            .map(|w| w.value().clone())
            .collect();
        v.sort_by(|a, b| a.work_id.cmp(&b.work_id));
        v
    }

    pub(super) fn len(&self) -> usize {
        self.open.len()
    }

    /// Last seqs of jobs from the journal, so a report resent after a restart is ignored.
    pub(super) fn recover(&self, works: Vec<(String, u64, i64)>) {
        for (work_id, seq, at_ms) in works {
            self.ended.insert(work_id, (seq, at_ms));
        }
    }

    /// Forgets the last seqs of jobs whose stream ended before `cutoff_ms`.
    pub(super) fn prune(&self, cutoff_ms: i64) {
        self.ended.retain(|_, (_, at)| *at >= cutoff_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(rate: u32) -> Work {
        let price = Price {
            sku: "gpu.shared.a10".into(),
            resource: Resource::GpuShared,
            unit_price: Money::ZERO,
            description: String::new(),
        };
        let key = WorkKey {
            account_id: "a".into(),
            work_id: "w".into(),
            resource: Resource::GpuShared,
            sku: price.sku.clone(),
        };
        Work::new(key, price, 0, rate, 0)
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_refills_with_time() {
        let mut w = work(5);
        assert_eq!(w.allow(8, 5, 0), 5, "a burst of one second's worth");
        assert_eq!(w.allow(1, 5, 0), 0);
        assert_eq!(w.allow(3, 5, 199), 0, "0.995 of a report is not one");
        assert_eq!(w.allow(3, 5, 200), 1);
        assert_eq!(w.allow(9, 5, 10_000), 5, "never more than the burst");
        assert_eq!(
            w.allow(1, 5, 5_000),
            0,
            "the clock going back earns nothing"
        );
    }

    #[test]
    fn an_unlimited_rate_does_not_overflow() {
        let mut w = work(u32::MAX);
        assert_eq!(w.allow(usize::MAX, u32::MAX, i64::MAX), u32::MAX as usize);
    }
}
