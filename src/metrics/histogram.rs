//! A latency histogram of relaxed atomics with fixed buckets, encoded through
//! `prometheus-client` (whose own histogram takes a lock per observation).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;

/// Upper bounds of the latency buckets, in microseconds (exported in seconds: 100 µs
/// to 10 s, roughly ×2.5 per step, covering a cached Reserve or an fsync to a stuck
/// ledger call).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A histogram with the fixed `LATENCY_BUCKETS_US`.
#[derive(Default, Debug)]
pub struct Histogram {
    /// Non-cumulative counts; the last is above the largest bound (+Inf).
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0u64); LATENCY_BUCKETS_US.len() + 1];
        for (i, b) in buckets.iter_mut().enumerate() {
            let bound = LATENCY_BUCKETS_US
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            *b = (bound, self.buckets[i].load(Ordering::Relaxed));
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A histogram its owner keeps (in an `Arc`), registered for encoding.
#[derive(Debug)]
pub(super) struct Shared(pub(super) std::sync::Arc<Histogram>);

impl EncodeMetric for Shared {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn buckets_are_cumulative_and_bounded() {
        let h = std::sync::Arc::new(Histogram::default());
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60));
        let mut r = Registry::default();
        r.register("x", "X", Shared(h.clone()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(out.contains("x_bucket{le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.00025\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10.0\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert!(out.contains("x_sum 60.000251\n"), "{out}");
        assert_eq!(h.count(), 4);
    }
}
