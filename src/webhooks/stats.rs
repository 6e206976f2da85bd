//! Webhook delivery counters and queue gauges, per endpoint (labels bounded by the number
//! of endpoints a ledger keeps), read at scrape time as `metrics::Sample`s.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::endpoints::DEFAULT_WEBHOOKS_MAX;
use crate::ledger::store::webhooks::QueueStats;
use crate::metrics::Sample;

pub const DELIVERED: &str = "quotad_webhook_deliveries_total";
pub const RETRIED: &str = "quotad_webhook_retries_total";
pub const FAILED: &str = "quotad_webhook_failures_total";
pub const QUEUE_DEPTH: &str = "quotad_webhook_queue_depth";
pub const OLDEST_AGE: &str = "quotad_webhook_queue_oldest_age_seconds";

/// Endpoints counted by id; the rest (deleted ones beyond this) under `other`.
const SERIES_MAX: usize = 2 * DEFAULT_WEBHOOKS_MAX;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub delivered: u64,
    pub retried: u64,
    pub failed: u64,
}

#[derive(Default)]
pub struct WebhookStats {
    counts: Mutex<BTreeMap<String, Counts>>,
    queues: Mutex<Vec<QueueStats>>,
}

impl WebhookStats {
    fn bump(&self, webhook_id: &str, f: impl FnOnce(&mut Counts)) {
        if let Ok(mut m) = self.counts.lock() {
            let key = if m.contains_key(webhook_id) || m.len() < SERIES_MAX {
                webhook_id
            } else {
                "other"
            };
            f(m.entry(key.to_owned()).or_default());
        }
    }

    pub fn delivered(&self, webhook_id: &str) {
        self.bump(webhook_id, |c| c.delivered += 1);
    }

    pub fn retried(&self, webhook_id: &str) {
        self.bump(webhook_id, |c| c.retried += 1);
    }

    pub fn failed(&self, webhook_id: &str) {
        self.bump(webhook_id, |c| c.failed += 1);
    }

    /// Replaces the queue gauges with what the outbox holds now.
    pub fn set_queues(&self, q: Vec<QueueStats>) {
        if let Ok(mut g) = self.queues.lock() {
            *g = q;
        }
    }

    /// All endpoints' counts summed (tests, the closing log line).
    pub fn totals(&self) -> Counts {
        let mut t = Counts::default();
        if let Ok(m) = self.counts.lock() {
            for c in m.values() {
                t.delivered += c.delivered;
                t.retried += c.retried;
                t.failed += c.failed;
            }
        }
        t
    }

    /// One endpoint's counts.
    pub fn of(&self, webhook_id: &str) -> Counts {
        self.counts
            .lock()
            .ok()
            .and_then(|m| m.get(webhook_id).copied())
            .unwrap_or_default()
    }

    /// The series, for the /metrics endpoint.
    pub fn samples(&self, now_ms: i64, out: &mut Vec<Sample>) {
        if let Ok(m) = self.counts.lock() {
            for (id, c) in m.iter() {
                let s = [
                    (
                        DELIVERED,
                        "Webhook messages the endpoint acknowledged (2xx).",
                        c.delivered,
                    ),
                    (
                        RETRIED,
                        "Webhook attempts that failed and were scheduled again.",
                        c.retried,
                    ),
                    (
                        FAILED,
                        "Webhook messages given up after their retry time.",
                        c.failed,
                    ),
                ];
                for (name, help, v) in s {
                    out.push(Sample::counter(name, help, v).with_label("webhook_id", id.as_str()));
                }
            }
        }
        if let Ok(q) = self.queues.lock() {
            for s in q.iter() {
                out.push(
                    Sample::gauge(
                        QUEUE_DEPTH,
                        "Webhook messages waiting for delivery.",
                        s.pending as f64,
                    )
                    .with_label("webhook_id", s.webhook_id.as_str()),
                );
                let age_s = (now_ms - s.oldest_at_ms).max(0) as f64 / 1000.0;
                out.push(
                    Sample::gauge(
                        OLDEST_AGE,
                        "Age of the oldest webhook message waiting.",
                        age_s,
                    )
                    .with_label("webhook_id", s.webhook_id.as_str()),
                );
            }
        }
    }
}
