//! Metrics on the `prometheus-client` crate: one registry per process, encoded in the
//! OpenMetrics text format, and the HTTP endpoint (`http`) that serves it with `/healthz`
//! and `/readyz`.
//!
//! The hot path pays one relaxed atomic add per event: counters are the crate's atomics
//! and the RPC latency histogram is a fixed-bucket one of atomics (`Histogram`), encoded
//! through the crate. Gauges are not kept up to date by the code they describe: they are
//! read when scraped (`collect`, `process`), so the hot path pays nothing for them.
//!
//! Every label value comes from a closed set (rpc names, status codes, deny reasons) or is
//! bounded (`DEFAULT_SERIES_MAX` RPC series; sidecars by the ledger's own cap), so no
//! client can grow the registry.

mod histogram;
pub mod http;
mod process;
mod samples;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use histogram::{Histogram, LATENCY_BUCKETS_US};
pub use http::{MetricsError, bind, serve};
pub use prometheus_client::metrics::counter::Counter;
pub use samples::{Kind, Sample};

/// Most distinct methods (`rpc` label values) with latency series; further ones are
/// counted under rpc="other".
pub const DEFAULT_SERIES_MAX: usize = 1_000;

/// gRPC status code names, by code number.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Name of the RPC latency histogram (also used by the Grafana dashboard).
pub const RPC_DURATION: &str = "quotad_rpc_duration_seconds";
/// Counters as exported (OpenMetrics adds `_total` to the family name).
pub const DECISIONS: &str = "quotad_decisions_total";
pub const SHED: &str = "quotad_requests_shed_total";
pub const WATCH_LAGGED: &str = "quotad_watch_events_lagged_total";

/// The labels of a decision: rpc, outcome, deny reason.
type DecisionLabels = [(&'static str, &'static str); 3];

/// Whether the process can serve: Err says why not (see `/readyz`).
type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// One process's metrics. Shared by the gRPC layer (latency, shedding), the services
/// (decisions) and the endpoint; collectors add what is read at scrape time.
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    rpc: Arc<RpcLatency>,
    shed: Counter,
    watch_lagged: Counter,
    registry: RwLock<Registry>,
    readiness: RwLock<Vec<Readiness>>,
}

pub type SharedMetrics = Arc<Metrics>;

impl Default for Metrics {
    fn default() -> Self {
        let decisions = Family::<DecisionLabels, Counter>::default();
        let rpc = Arc::new(RpcLatency::default());
        let shed = Counter::default();
        let watch_lagged = Counter::default();
        let mut registry = Registry::default();
        // The crate appends the full stop to every help text.
        registry.register(
            family_name(DECISIONS),
            "Admission decisions by rpc, outcome and deny reason",
            decisions.clone(),
        );
        registry.register(
            family_name(SHED),
            "Requests refused with RESOURCE_EXHAUSTED because concurrency_max were in flight",
            shed.clone(),
        );
        registry.register(
            family_name(WATCH_LAGGED),
            "Events a slow Watch client missed (it was sent EVENTS_DROPPED)",
            watch_lagged.clone(),
        );
        registry.register(
            "quotad_build",
            "The quotad build serving (value 1)",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(rpc.clone()));
        registry.register_collector(Box::new(Collected(Box::new(process::samples))));
        Metrics {
            decisions,
            rpc,
            shed,
            watch_lagged,
            registry: RwLock::new(registry),
            readiness: RwLock::default(),
        }
    }
}

/// A counter's family name: its exported name without the `_total` OpenMetrics adds.
fn family_name(exported: &'static str) -> &'static str {
    exported.strip_suffix("_total").unwrap_or(exported)
}

impl Metrics {
    pub fn new() -> SharedMetrics {
        Arc::new(Metrics::default())
    }

    /// An admission decision: `reason` is the deny reason's proto name ("" when admitted).
    pub fn decision(&self, rpc: &'static str, admitted: bool, reason: &'static str) {
        let outcome = if admitted { "admitted" } else { "denied" };
        let labels = [("rpc", rpc), ("outcome", outcome), ("reason", reason)];
        self.decisions.get_or_create(&labels).inc();
    }

    /// The latency series of the method `path`, to record its calls in without a lookup
    /// (methods beyond `DEFAULT_SERIES_MAX` or not like ours share rpc="other").
    pub fn rpc(&self, path: &str) -> Arc<RpcSeries> {
        self.rpc.series(path)
    }

    /// The counter of one decision's labels, to count into without a lookup.
    pub fn decision_counter(
        &self,
        rpc: &'static str,
        admitted: bool,
        reason: &'static str,
    ) -> Counter {
        let outcome = if admitted { "admitted" } else { "denied" };
        let labels = [("rpc", rpc), ("outcome", outcome), ("reason", reason)];
        self.decisions.get_or_create(&labels).clone()
    }

    /// A finished RPC (its response headers sent): path and gRPC status code name.
    pub fn rpc_done(&self, path: &str, code: &str, elapsed: Duration) {
        self.rpc.series(path).done(code_number(code), elapsed);
    }

    /// RPCs of `path` finished with `code` so far (tests and the shutdown log).
    pub fn rpc_count(&self, path: &str, code: &str) -> u64 {
        self.rpc
            .by_path
            .get(path)
            .and_then(|s| s.by_code.get(code_number(code)).map(Histogram::count))
            .unwrap_or(0)
    }

    pub fn shed(&self) {
        self.shed.inc();
    }

    pub fn watch_lagged(&self, n: u64) {
        self.watch_lagged.inc_by(n);
    }

    /// Adds values read at every scrape (gauges of the engine, the journal, ...).
    pub fn collect(&self, f: impl Fn(&mut Vec<Sample>) + Send + Sync + 'static) {
        if let Ok(mut r) = self.registry.write() {
            r.register_collector(Box::new(Collected(Box::new(f))));
        }
    }

    /// Exports a histogram kept elsewhere (the journal's fsync latency). `name` as
    /// exported, `help` without its final full stop.
    pub fn histogram(&self, name: &'static str, help: &'static str, h: Arc<Histogram>) {
        if let Ok(mut r) = self.registry.write() {
            r.register(name, help, histogram::Shared(h));
        }
    }

    /// Adds a condition of readiness (`/readyz`): Err says what is not ready.
    pub fn ready_when(&self, f: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        if let Ok(mut r) = self.readiness.write() {
            r.push(Box::new(f));
        }
    }

    /// Ok when every condition of readiness holds, else what does not.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let Ok(checks) = self.readiness.read() else {
            return Err(vec!["readiness checks unreadable".into()]);
        };
        let failed: Vec<String> = checks.iter().filter_map(|c| c().err()).collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.read()
            && let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r)
        {
            tracing::warn!(error = %e, "metrics not encoded");
        }
        out
    }
}

/// The number of the gRPC status code named `name` (UNKNOWN for a name that is none).
fn code_number(name: &str) -> usize {
    CODE_NAMES.iter().position(|n| *n == name).unwrap_or(2)
}

/// One method's latency, by gRPC status code number.
#[derive(Default, Debug)]
pub struct RpcSeries {
    by_code: [Histogram; CODE_NAMES.len()],
}

impl RpcSeries {
    /// A call that ended with the status code numbered `code` (out of range: UNKNOWN).
    pub fn done(&self, code: usize, elapsed: Duration) {
        self.by_code
            .get(code)
            .unwrap_or(&self.by_code[2])
            .observe(elapsed);
    }
}

/// RPC latency by method, each method's series resolved once (see `Metrics::rpc`).
#[derive(Default)]
struct RpcLatency {
    by_path: DashMap<String, Arc<RpcSeries>>,
    /// Methods in `by_path`, bounded by `DEFAULT_SERIES_MAX`.
    series: AtomicUsize,
}

impl std::fmt::Debug for RpcLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcLatency").finish_non_exhaustive()
    }
}

impl RpcLatency {
    fn series(&self, path: &str) -> Arc<RpcSeries> {
        if let Some(s) = self.by_path.get(path) {
            return s.clone();
        }
        let path = if self.series.load(Ordering::Relaxed) < DEFAULT_SERIES_MAX && known_path(path) {
            path
        } else {
            "other"
        };
        self.by_path
            .entry(path.to_owned())
            .or_insert_with(|| {
                self.series.fetch_add(1, Ordering::Relaxed);
                Arc::default()
            })
            .clone()
    }
}

impl Collector for RpcLatency {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut series: Vec<(String, Arc<RpcSeries>)> = self
            .by_path
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        let mut family = encoder.encode_descriptor(
            RPC_DURATION,
            "Time from a request's arrival to its response headers, by method and gRPC status.",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (path, s) in &series {
            // A (method, code) series appears with its first call.
            for (h, code) in s.by_code.iter().zip(CODE_NAMES) {
                if h.count() > 0 {
                    let labels = [("rpc", path.as_str()), ("code", code)];
                    h.encode(family.encode_family(&labels)?)?;
                }
            }
        }
        Ok(())
    }
}

/// A function filling samples at scrape time.
type Fill = Box<dyn Fn(&mut Vec<Sample>) + Send + Sync>;

/// A collector given as a function filling samples.
struct Collected(Fill);

impl std::fmt::Debug for Collected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Collected")
    }
}

impl Collector for Collected {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut out = Vec::new();
        (self.0)(&mut out);
        samples::encode(out, encoder)
    }
}

/// A path a route of ours could have: "/package.Service/Method" in plain characters.
fn known_path(path: &str) -> bool {
    path.len() <= 128
        && path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'/' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_chosen_paths_cannot_grow_the_registry() {
        let m = Metrics::default();
        for i in 0..DEFAULT_SERIES_MAX + 50 {
            m.rpc_done(&format!("/x.Y/M{i}"), "UNIMPLEMENTED", Duration::ZERO);
        }
        m.rpc_done("/weird path\"", "UNIMPLEMENTED", Duration::ZERO);
        assert_eq!(m.rpc.by_path.len(), DEFAULT_SERIES_MAX + 1);
        assert_eq!(m.rpc_count("other", "UNIMPLEMENTED"), 51);
        // A resolved series records without a lookup; codes by number.
        let s = m.rpc("/x.Y/M0");
        s.done(12, Duration::ZERO);
        s.done(99, Duration::ZERO);
        assert_eq!(m.rpc_count("/x.Y/M0", "UNIMPLEMENTED"), 2);
        assert_eq!(m.rpc_count("/x.Y/M0", "UNKNOWN"), 1);
    }

    #[test]
    fn encodes_decisions_latency_and_collected_samples() {
        let m = Metrics::default();
        m.decision("Reserve", true, "");
        m.decision("Reserve", false, "INSUFFICIENT_FUNDS");
        m.decision("Reserve", false, "INSUFFICIENT_FUNDS");
        m.rpc_done("/quotad.v1.Quota/Reserve", "OK", Duration::from_micros(120));
        m.collect(|s| s.push(Sample::gauge("quotad_holds", "Holds.", 7.0)));
        let text = m.encode();
        assert!(text.contains(
            "quotad_decisions_total{rpc=\"Reserve\",outcome=\"denied\",reason=\"INSUFFICIENT_FUNDS\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "quotad_decisions_total{rpc=\"Reserve\",outcome=\"admitted\",reason=\"\"} 1\n"
        ));
        assert!(
            text.contains("# TYPE quotad_holds gauge\nquotad_holds 7.0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "quotad_rpc_duration_seconds_bucket{le=\"0.00025\",rpc=\"/quotad.v1.Quota/Reserve\",code=\"OK\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("quotad_requests_shed_total 0\n"), "{text}");
        assert!(text.contains("quotad_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn ready_only_when_every_condition_holds() {
        let m = Metrics::default();
        assert_eq!(m.ready(), Ok(()));
        m.ready_when(|| Ok(()));
        m.ready_when(|| Err("journal closed".into()));
        assert_eq!(m.ready(), Err(vec!["journal closed".to_owned()]));
    }
}
