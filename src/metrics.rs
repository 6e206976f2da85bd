//! Prometheus metrics, hand-rolled: a few atomic counters and fixed-bucket histograms and a
//! text encoder are all quotad needs, and keeping them here keeps the hot path to one
//! relaxed atomic add and the dependency tree as it was. Gauges are not kept up to date by
//! the code they describe: they are read from the engine when scraped, so the hot path pays
//! nothing for them.
//!
//! Every label value comes from a closed set (rpc names, status codes, deny reasons) or is
//! bounded by `DEFAULT_SERIES_MAX`, so no client can grow the registry.
//!
//! The endpoint is a minimal HTTP/1.1 responder on its own listener (`metrics_listen`):
//! `GET /metrics` answers the text format, anything else 404; one request per
//! connection, request head at most `DEFAULT_HTTP_HEAD_BYTES_MAX`, read within
//! `DEFAULT_HTTP_READ_TIMEOUT_MS`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Upper bounds of the RPC latency buckets, in microseconds (exported in seconds: 100 µs
/// to 10 s, roughly ×2.5 per step, covering a cached Reserve to a stuck ledger call).
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// Most distinct (rpc, code) latency series; further ones are counted under rpc="other".
pub const DEFAULT_SERIES_MAX: usize = 1_000;
/// Largest HTTP request head the metrics endpoint reads.
pub const DEFAULT_HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long the metrics endpoint waits for a request head.
pub const DEFAULT_HTTP_READ_TIMEOUT_MS: u64 = 5_000;
/// Most metrics connections served at once.
pub const DEFAULT_HTTP_CONNECTIONS_MAX: usize = 16;

/// A histogram with the fixed `LATENCY_BUCKETS_US`.
#[derive(Default)]
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

    fn encode(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[LATENCY_BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One value read at scrape time.
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// `key="value"` pairs, comma-separated, or empty.
    pub labels: String,
    pub value: f64,
}

impl Sample {
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            name,
            help,
            kind: Kind::Gauge,
            labels: String::new(),
            value,
        }
    }

    pub fn counter(name: &'static str, help: &'static str, value: f64) -> Sample {
        Sample {
            kind: Kind::Counter,
            ..Sample::gauge(name, help, value)
        }
    }

    pub fn with_labels(mut self, labels: String) -> Sample {
        self.labels = labels;
        self
    }
}

type Collector = Box<dyn Fn(&mut Vec<Sample>) + Send + Sync>;

/// One process's metrics. Shared by the gRPC layer (latency, shedding), the services
/// (decisions) and the endpoint; collectors add what is read at scrape time.
#[derive(Default)]
pub struct Metrics {
    decisions: DashMap<(&'static str, &'static str, &'static str), AtomicU64>,
    /// Latency by method, then by status code: keyed by path first so that a finished
    /// call finds its histogram without building a key.
    rpc: DashMap<String, DashMap<&'static str, Histogram>>,
    /// Series in `rpc` (method and code pairs), bounded by `DEFAULT_SERIES_MAX`.
    rpc_series: std::sync::atomic::AtomicUsize,
    shed: AtomicU64,
    watch_lagged: AtomicU64,
    collectors: std::sync::RwLock<Vec<Collector>>,
}

pub type SharedMetrics = Arc<Metrics>;

/// Name and help of the RPC latency histogram (also used by the Grafana dashboard).
pub const RPC_DURATION: &str = "quotad_rpc_duration_seconds";
pub const DECISIONS: &str = "quotad_decisions_total";
pub const SHED: &str = "quotad_requests_shed_total";
pub const WATCH_LAGGED: &str = "quotad_watch_events_lagged_total";

impl Metrics {
    pub fn new() -> SharedMetrics {
        Arc::new(Metrics::default())
    }

    /// An admission decision: `reason` is the deny reason's proto name ("" when admitted).
    pub fn decision(&self, rpc: &'static str, admitted: bool, reason: &'static str) {
        let outcome = if admitted { "admitted" } else { "denied" };
        let key = (rpc, outcome, reason);
        if let Some(c) = self.decisions.get(&key) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.decisions
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A finished RPC (its response headers sent): path and gRPC status code name.
    pub fn rpc_done(&self, path: &str, code: &'static str, elapsed: Duration) {
        if let Some(by_code) = self.rpc.get(path)
            && let Some(h) = by_code.get(code)
        {
            h.observe(elapsed);
            return;
        }
        let path =
            if self.rpc_series.load(Ordering::Relaxed) < DEFAULT_SERIES_MAX && known_path(path) {
                path
            } else {
                "other"
            };
        let by_code = self.rpc.entry(path.to_owned()).or_default();
        let h = by_code.entry(code).or_insert_with(|| {
            self.rpc_series.fetch_add(1, Ordering::Relaxed);
            Histogram::default()
        });
        h.observe(elapsed);
    }

    /// RPCs of `path` finished with `code` so far (tests and the shutdown log).
    pub fn rpc_count(&self, path: &str, code: &'static str) -> u64 {
        self.rpc
            .get(path)
            .and_then(|by_code| by_code.get(code).map(|h| h.count()))
            .unwrap_or(0)
    }

    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn watch_lagged(&self, n: u64) {
        self.watch_lagged.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds values read at every scrape (gauges of the engine, the journal, ...).
    pub fn collect(&self, f: impl Fn(&mut Vec<Sample>) + Send + Sync + 'static) {
        if let Ok(mut c) = self.collectors.write() {
            c.push(Box::new(f));
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP {RPC_DURATION} Time from a request's arrival to its response headers, by \
             method and gRPC status.\n# TYPE {RPC_DURATION} histogram"
        );
        let mut keys: Vec<(String, &'static str)> = self
            .rpc
            .iter()
            .flat_map(|e| {
                let path = e.key().clone();
                e.value()
                    .iter()
                    .map(|c| (path.clone(), *c.key()))
                    .collect::<Vec<_>>()
            })
            .collect();
        keys.sort();
        for (path, code) in keys {
            if let Some(by_code) = self.rpc.get(&path)
                && let Some(h) = by_code.get(code)
            {
                let labels = format!("rpc=\"{path}\",code=\"{code}\"");
                h.encode(&mut out, RPC_DURATION, &labels);
            }
        }
        let _ = writeln!(
            out,
            "# HELP {DECISIONS} Admission decisions by rpc, outcome and deny reason.\n\
             # TYPE {DECISIONS} counter"
        );
        let mut decisions: Vec<_> = self
            .decisions
            .iter()
            .map(|e| (*e.key(), e.value().load(Ordering::Relaxed)))
            .collect();
        decisions.sort();
        for ((rpc, outcome, reason), n) in decisions {
            let _ = writeln!(
                out,
                "{DECISIONS}{{rpc=\"{rpc}\",outcome=\"{outcome}\",reason=\"{reason}\"}} {n}"
            );
        }
        let mut samples = vec![
            Sample::counter(
                SHED,
                "Requests refused with RESOURCE_EXHAUSTED because concurrency_max were in \
                 flight.",
                self.shed.load(Ordering::Relaxed) as f64,
            ),
            Sample::counter(
                WATCH_LAGGED,
                "Events a slow Watch client missed (it was sent EVENTS_DROPPED).",
                self.watch_lagged.load(Ordering::Relaxed) as f64,
            ),
        ];
        if let Ok(collectors) = self.collectors.read() {
            for c in collectors.iter() {
                c(&mut samples);
            }
        }
        let mut described = std::collections::HashSet::new();
        for s in samples {
            if described.insert(s.name) {
                let _ = writeln!(out, "# HELP {} {}", s.name, s.help);
                let _ = writeln!(out, "# TYPE {} {}", s.name, s.kind.name());
            }
            if s.labels.is_empty() {
                let _ = writeln!(out, "{} {}", s.name, s.value);
            } else {
                let _ = writeln!(out, "{}{{{}}} {}", s.name, s.labels, s.value);
            }
        }
        out
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

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the metrics endpoint; serve it with `serve`.
pub async fn bind(
    addr: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsError::Listen { addr, source })?;
    Ok((listener, local))
}

/// Answers scrapes on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, metrics: SharedMetrics, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(DEFAULT_HTTP_CONNECTIONS_MAX));
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => break,
        };
        if *stop.borrow() {
            break;
        }
        let Ok((mut stream, _)) = conn else { continue };
        // Over the limit: drop the connection rather than queue scrapes.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let timeout = Duration::from_millis(DEFAULT_HTTP_READ_TIMEOUT_MS);
            let head = match tokio::time::timeout(timeout, read_head(&mut stream)).await {
                Ok(Some(h)) => h,
                _ => return,
            };
            let response = respond(&head, &metrics);
            let _ = stream.write_all(&response).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// The request head (up to the blank line), or None if it is too long or the peer left.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > DEFAULT_HTTP_HEAD_BYTES_MAX {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn respond(head: &str, metrics: &Metrics) -> Vec<u8> {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.encode(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0001\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{a=\"b\",le=\"0.00025\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 60.000251\n"), "{out}");
    }

    #[test]
    fn client_chosen_paths_cannot_grow_the_registry() {
        let m = Metrics::default();
        for i in 0..DEFAULT_SERIES_MAX + 50 {
            m.rpc_done(&format!("/x.Y/M{i}"), "UNIMPLEMENTED", Duration::ZERO);
        }
        m.rpc_done("/weird path\"", "UNIMPLEMENTED", Duration::ZERO);
        assert_eq!(m.rpc.len(), DEFAULT_SERIES_MAX + 1);
        assert_eq!(m.rpc_count("other", "UNIMPLEMENTED"), 51);
    }

    #[test]
    fn encodes_decisions_and_collected_samples() {
        let m = Metrics::default();
        m.decision("Reserve", true, "");
        m.decision("Reserve", false, "INSUFFICIENT_FUNDS");
        m.decision("Reserve", false, "INSUFFICIENT_FUNDS");
        m.collect(|s| s.push(Sample::gauge("quotad_holds", "Holds.", 7.0)));
        let text = m.encode();
        assert!(text.contains(
            "quotad_decisions_total{rpc=\"Reserve\",outcome=\"denied\",reason=\"INSUFFICIENT_FUNDS\"} 2\n"
        ));
        assert!(text.contains(
            "quotad_decisions_total{rpc=\"Reserve\",outcome=\"admitted\",reason=\"\"} 1\n"
        ));
        assert!(
            text.contains("# TYPE quotad_holds gauge\nquotad_holds 7\n"),
            "{text}"
        );
    }

    #[test]
    fn http_answers_metrics_and_refuses_the_rest() {
        let m = Metrics::default();
        let ok = String::from_utf8(respond("GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n", &m))
            .unwrap_or_default();
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("quotad_requests_shed_total 0"), "{ok}");
        let nf = String::from_utf8(respond("GET / HTTP/1.1\r\n\r\n", &m)).unwrap_or_default();
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        let bad = String::from_utf8(respond("\u{0}garbage", &m)).unwrap_or_default();
        assert!(bad.starts_with("HTTP/1.1 405"), "{bad}");
    }
}
