//! The delivery worker: runs where the ledger runs (`quotad ledger`, or `quotad serve`
//! with its embedded ledger), never on the admission path. Each round it takes the due
//! heads of the outbox's (endpoint, account) queues, at most `concurrency_max` in flight
//! (half of them for one endpoint at most), claims each (a row update with a time limit,
//! so several ledger processes share the outbox and each message is attempted by one of
//! them at a time), POSTs it signed, and
//! records the outcome: delivered, retried after an exponential backoff with jitter, or
//! failed once `retry_ms` has passed since it was queued. A process that dies
//! mid-attempt leaves a claim that lapses; the message is attempted again (at least
//! once). Memory is bounded by `concurrency_max` messages, whatever the outbox holds.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::http::{self, Signed};
use super::signature;
use super::stats::WebhookStats;
use crate::clock::SharedClock;
use crate::ledger::store::webhooks::{Attempt, DeliveryRow, WebhookStore};

/// How long a message is retried before it is marked failed.
pub const DEFAULT_WEBHOOK_RETRY_MS: i64 = 24 * 60 * 60 * 1000;
/// First retry delay; doubled with every failed attempt up to the maximum.
pub const DEFAULT_WEBHOOK_BACKOFF_MIN_MS: i64 = 1_000;
pub const DEFAULT_WEBHOOK_BACKOFF_MAX_MS: i64 = 10 * 60 * 1000;
/// Longest wait for an endpoint's answer.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: i64 = 10_000;
/// Most messages in flight at once (and in memory).
pub const DEFAULT_WEBHOOK_CONCURRENCY_MAX: usize = 16;
/// How often the outbox is looked at when nothing wakes the worker.
pub const DEFAULT_WEBHOOK_POLL_MS: i64 = 500;
/// How long delivered and failed messages are kept (and an event id is recognised).
pub const DEFAULT_WEBHOOK_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Least margin of a claim beyond the attempt's timeout (the margin is at least the
/// timeout again): time to record the outcome before another worker may try.
const CLAIM_MARGIN_MIN_MS: i64 = 1_000;
/// How often delivered and failed messages past retention are pruned.
const PRUNE_EVERY_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryConfig {
    pub retry_ms: i64,
    pub backoff_min_ms: i64,
    pub backoff_max_ms: i64,
    pub timeout_ms: i64,
    pub concurrency_max: usize,
    pub poll_ms: i64,
    pub retention_ms: i64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            retry_ms: DEFAULT_WEBHOOK_RETRY_MS,
            backoff_min_ms: DEFAULT_WEBHOOK_BACKOFF_MIN_MS,
            backoff_max_ms: DEFAULT_WEBHOOK_BACKOFF_MAX_MS,
            timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
            concurrency_max: DEFAULT_WEBHOOK_CONCURRENCY_MAX,
            poll_ms: DEFAULT_WEBHOOK_POLL_MS,
            retention_ms: DEFAULT_WEBHOOK_RETENTION_MS,
        }
    }
}

impl DeliveryConfig {
    /// The delay before attempt `attempts + 1`: exponential, capped, with the upper half
    /// jittered so endpoints coming back are not hit by every message at once.
    pub fn backoff_ms(&self, attempts: i64, random: u64) -> i64 {
        let shift = u32::try_from(attempts.clamp(0, 30)).unwrap_or(30);
        let full = self
            .backoff_min_ms
            .max(1)
            .saturating_mul(1_i64 << shift)
            .min(self.backoff_max_ms.max(1));
        let half = full / 2;
        let spread = u64::try_from(full - half + 1).unwrap_or(1);
        half + i64::try_from(random % spread).unwrap_or(0)
    }
}

/// A delivery: (endpoint, event).
type Key = (String, String);

/// An endpoint as the worker needs it.
#[derive(Clone)]
struct Target {
    url: String,
    key: Arc<Vec<u8>>,
}

pub struct Deliverer {
    store: Arc<dyn WebhookStore>,
    clock: SharedClock,
    cfg: DeliveryConfig,
    /// This process's claims are made under this id.
    worker: String,
    stats: Arc<WebhookStats>,
    wake: Arc<Notify>,
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn WebhookStore>,
        clock: SharedClock,
        cfg: DeliveryConfig,
        stats: Arc<WebhookStats>,
    ) -> Deliverer {
        Deliverer {
            store,
            clock,
            cfg,
            worker: format!("w{:016x}", random_u64()),
            stats,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Notified when events are queued, so they go out without waiting for the poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    async fn targets(&self) -> HashMap<String, Target> {
        let rows = match self.store.webhooks(usize::MAX).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "webhook endpoints not read");
                return HashMap::new();
            }
        };
        rows.into_iter()
            .filter_map(|w| {
                let key = signature::key_of(&w.secret).ok()?;
                Some((
                    w.webhook_id,
                    Target {
                        url: w.url,
                        key: Arc::new(key),
                    },
                ))
            })
            .collect()
    }

    /// Claims and starts what is due, within the free slots.
    async fn start_due(&self, tasks: &mut JoinSet<Key>, in_flight: &mut HashSet<Key>) {
        let free = self.cfg.concurrency_max.max(1).saturating_sub(tasks.len());
        if free == 0 {
            return;
        }
        let now = self.clock.now_ms();
        let due = match self.store.due_deliveries(now, free).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "webhook outbox not read");
                return;
            }
        };
        if due.is_empty() {
            return;
        }
        let targets = self.targets().await;
        let until = now + 2 * self.cfg.timeout_ms.max(CLAIM_MARGIN_MIN_MS);
        for d in due {
            let key = (d.webhook_id.clone(), d.event_id.clone());
            if in_flight.contains(&key) {
                // Its claim lapsed on the clock while it is still being attempted here.
                continue;
            }
            // One endpoint takes at most half the slots: a dead one (each attempt waiting
            // out its timeout) cannot hold up the others.
            let busy = in_flight.iter().filter(|(w, _)| *w == d.webhook_id).count();
            if busy >= (self.cfg.concurrency_max / 2).max(1) {
                continue;
            }
            let Some(t) = targets.get(&d.webhook_id).cloned() else {
                continue;
            };
            match self
                .store
                .claim_delivery(&d.webhook_id, &d.event_id, &self.worker, now, until)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook message not claimed");
                    continue;
                }
            }
            let job = Job {
                store: self.store.clone(),
                clock: self.clock.clone(),
                cfg: self.cfg,
                worker: self.worker.clone(),
                stats: self.stats.clone(),
            };
            in_flight.insert(key.clone());
            tasks.spawn(async move {
                job.attempt(d, t).await;
                key
            });
        }
    }

    async fn housekeeping(&self, last_prune_ms: &mut i64) {
        if let Ok(q) = self.store.webhook_queues().await {
            self.stats.set_queues(q);
        }
        let now = self.clock.now_ms();
        if now - *last_prune_ms >= PRUNE_EVERY_MS {
            *last_prune_ms = now;
            if let Err(e) = self.store.prune_webhooks(now - self.cfg.retention_ms).await {
                tracing::warn!(error = %e, "webhook outbox not pruned");
            }
        }
    }

    /// Delivers until `stop` resolves; attempts in flight then are left to their claims.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tasks = JoinSet::new();
        let mut in_flight = HashSet::new();
        let mut last_prune_ms = i64::MIN / 2;
        let poll = Duration::from_millis(u64::try_from(self.cfg.poll_ms.max(1)).unwrap_or(500));
        loop {
            self.housekeeping(&mut last_prune_ms).await;
            self.start_due(&mut tasks, &mut in_flight).await;
            tokio::select! {
                () = &mut stop => break,
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(key) = done {
                        in_flight.remove(&key);
                    }
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
        }
        tasks.abort_all();
    }
}

/// One attempt's context.
struct Job {
    store: Arc<dyn WebhookStore>,
    clock: SharedClock,
    cfg: DeliveryConfig,
    worker: String,
    stats: Arc<WebhookStats>,
}

impl Job {
    async fn attempt(self, d: DeliveryRow, t: Target) {
        let now = self.clock.now_ms();
        let timestamp_s = now.div_euclid(1000);
        let signed = Signed {
            signature: signature::sign(&t.key, &d.event_id, timestamp_s, d.payload.as_bytes()),
            webhook_id: d.event_id.clone(),
            timestamp_s,
        };
        let timeout = Duration::from_millis(u64::try_from(self.cfg.timeout_ms.max(1)).unwrap_or(1));
        let result = http::post(&t.url, &signed, d.payload.clone(), timeout).await;
        let at_ms = self.clock.now_ms();
        let attempt = match result {
            Ok(status) if (200..300).contains(&status) => Attempt::Delivered { at_ms },
            other => {
                let error = match other {
                    Ok(status) => format!("HTTP {status}"),
                    Err(e) => e,
                };
                if at_ms - d.at_ms >= self.cfg.retry_ms {
                    tracing::warn!(webhook_id = %d.webhook_id, event_id = %d.event_id,
                        error = %error, "webhook message failed for good");
                    Attempt::Failed { at_ms, error }
                } else {
                    let delay = self.cfg.backoff_ms(d.attempts, random_u64());
                    Attempt::Retry {
                        at_ms,
                        next_at_ms: (at_ms + delay).min(d.at_ms + self.cfg.retry_ms),
                        error,
                    }
                }
            }
        };
        let count: fn(&WebhookStats, &str) = match &attempt {
            Attempt::Delivered { .. } => WebhookStats::delivered,
            Attempt::Retry { .. } => WebhookStats::retried,
            Attempt::Failed { .. } => WebhookStats::failed,
        };
        match self
            .store
            .finish_delivery(&d.webhook_id, &d.event_id, &self.worker, attempt)
            .await
        {
            Ok(true) => count(&self.stats, &d.webhook_id),
            // Another worker took it over (our claim lapsed): its outcome counts.
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "webhook attempt not recorded; it will be made again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let c = DeliveryConfig {
            backoff_min_ms: 100,
            backoff_max_ms: 1_000,
            ..DeliveryConfig::default()
        };
        assert_eq!(c.backoff_ms(0, 0), 50);
        assert_eq!(c.backoff_ms(0, 50), 100);
        assert_eq!(c.backoff_ms(1, 0), 100);
        assert_eq!(c.backoff_ms(3, 0), 400);
        assert_eq!(c.backoff_ms(10, 0), 500);
        assert!((500..=1_000).contains(&c.backoff_ms(40, u64::MAX)));
    }
}
