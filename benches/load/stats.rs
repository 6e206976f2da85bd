//! Latency recording (HdrHistogram, nanoseconds) and the per-scenario result that ends up
//! in the JSON, the markdown table and the SVG.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest latency told apart (ns) and highest recorded (ns; longer ones saturate).
const LOW_NS: u64 = 100;
const HIGH_NS: u64 = 120_000_000_000;

/// Percentiles the curves are sampled at: 0, then 1 - 10^-x for x in 0.1 steps up to 5
/// (99.999%), which is the log-x axis of the latency chart.
pub const CURVE_STEPS: u32 = 50;

/// One histogram per named metric of a scenario (e.g. "reserve" and "pair").
pub struct Recorder {
    names: &'static [&'static str],
    hists: Vec<Histogram<u64>>,
}

impl Recorder {
    pub fn new(names: &'static [&'static str]) -> Recorder {
        let hists = names
            .iter()
            .map(|_| Histogram::new_with_bounds(LOW_NS, HIGH_NS, 3).expect("histogram bounds"))
            .collect();
        Recorder { names, hists }
    }

    pub fn record(&mut self, metric: usize, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.hists[metric].saturating_record(ns.max(LOW_NS));
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (a, b) in self.hists.iter_mut().zip(&other.hists) {
            a.add(b).expect("histograms of the same bounds");
        }
    }

    pub fn summaries(&self) -> BTreeMap<String, Summary> {
        self.names
            .iter()
            .zip(&self.hists)
            .filter(|(_, h)| !h.is_empty())
            .map(|(n, h)| ((*n).to_owned(), Summary::of(h)))
            .collect()
    }
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 1_000.0 * 10.0).round() / 10.0
}

/// Latency of one metric, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// [percentile, µs] pairs along the log-x percentile axis, up to where the sample
    /// count still resolves the percentile.
    pub curve: Vec<[f64; 2]>,
}

impl Summary {
    fn of(h: &Histogram<u64>) -> Summary {
        let q = |p: f64| us(h.value_at_quantile(p));
        let mut curve = vec![[0.0, us(h.min())]];
        for step in 1..=CURVE_STEPS {
            let x = f64::from(step) / 10.0;
            let tail = 10f64.powf(-x);
            if tail * (h.len() as f64) < 1.0 {
                break;
            }
            let p = 1.0 - tail;
            curve.push([(p * 100.0 * 1e6).round() / 1e6, q(p)]);
        }
        Summary {
            count: h.len(),
            mean_us: (h.mean() / 100.0).round() / 10.0,
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: us(h.max()),
            curve,
        }
    }
}

/// One scenario run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    /// quotad, noop, redis, postgres.
    pub target: String,
    /// reserve_commit, reserve_commit_open, admit, stream_usage, evalsha, update.
    pub scenario: String,
    /// closed (each client waits for its answer), open (fixed arrival rate) or pipelined
    /// (streams with a window of unanswered reports).
    pub mode: String,
    /// Concurrent clients (closed), lanes (open) or streams (pipelined).
    pub clients: usize,
    /// Open loop: the arrival rate (operations per second).
    pub rate: Option<f64>,
    pub duration_s: f64,
    /// What one op is: "pair" (Reserve then Commit), "call", "record" (a usage report
    /// answered by its decision).
    pub unit: String,
    /// Operations answered in the measured window (admitted or denied; errors apart).
    pub ops: u64,
    pub ops_per_s: f64,
    pub denied: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: BTreeMap<String, Summary>,
    /// CPU use over the measured window, in cores.
    pub cpu: Option<CpuUse>,
    /// Position in the run (1 = first measured).
    pub run_order: usize,
    /// Resident memory of the bench process (client and in-process quotad or no-op server)
    /// right after the scenario, and its peak so far, in MiB (Linux `/proc/self/status`).
    pub rss_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
}

/// `VmRSS` and `VmHWM` of this process in MiB, where the OS tells.
pub fn rss_mib() -> (Option<f64>, Option<f64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| (kib / 1024.0 * 10.0).round() / 10.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

impl ScenarioResult {
    pub fn key(&self) -> String {
        format!("{}/{} x{}", self.target, self.scenario, self.clients)
    }

    pub fn lat(&self, metric: &str) -> Option<&Summary> {
        self.latency.get(metric)
    }
}

/// Counts of a driver's run, merged over its clients.
#[derive(Default)]
pub struct Counts {
    pub ok: u64,
    pub denied: u64,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Counts {
    pub fn add(&mut self, r: &Result<bool, String>) {
        match r {
            Ok(true) => self.ok += 1,
            Ok(false) => self.denied += 1,
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.clone());
                }
            }
        }
    }

    pub fn merge(&mut self, o: Counts) {
        self.ok += o.ok;
        self.denied += o.denied;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// The timeline of one run: warm-up from `t0` to `start`, measurement to `end`.
#[derive(Clone, Copy)]
pub struct Window {
    pub t0: Instant,
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        let t0 = Instant::now();
        Window {
            t0,
            start: t0 + warmup,
            end: t0 + warmup + duration,
        }
    }

    pub fn measured_s(&self) -> f64 {
        (self.end - self.start).as_secs_f64()
    }
}

/// Prints a progress line to stderr every second until dropped.
pub struct Progress {
    pub ops: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub fn start(label: String, w: Window) -> Progress {
        let ops = Arc::new(AtomicU64::new(0));
        let seen = ops.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let mut last = 0u64;
            let mut last_at = Instant::now();
            loop {
                tick.tick().await;
                let now = Instant::now();
                let n = seen.load(Ordering::Relaxed);
                let rate = (n - last) as f64 / (now - last_at).as_secs_f64();
                let phase = if now < w.start {
                    "warm-up"
                } else if now < w.end {
                    "measuring"
                } else {
                    "draining"
                };
                eprintln!(
                    "load: {label:<34} {:>5.1}s {phase:<9} ops {n:>9}  {rate:>10.0}/s",
                    (now - w.t0).as_secs_f64()
                );
                last = n;
                last_at = now;
            }
        });
        Progress { ops, task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// CPU use over a window, in cores (a 2-core machine has 2): all of the machine, this
/// process (load generator and in-process servers), and everything else (Redis or
/// PostgreSQL during their baselines; otherwise other work that skews the numbers).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    pub busy_cores: f64,
    pub this_process_cores: f64,
    pub other_cores: f64,
}

/// (jiffies of all CPUs: total, idle) from /proc/stat and this process's jiffies.
fn cpu_snapshot() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3)? + cpu.get(4).copied().unwrap_or(0);
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &me[me.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let own = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((total, idle, own))
}

/// CPU use between `from` and `to` (waits for both).
pub fn cpu_meter(from: Instant, to: Instant) -> tokio::task::JoinHandle<Option<CpuUse>> {
    tokio::spawn(async move {
        tokio::time::sleep_until(from.into()).await;
        let a = cpu_snapshot()?;
        tokio::time::sleep_until(to.into()).await;
        let b = cpu_snapshot()?;
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let total = b.0.saturating_sub(a.0).max(1) as f64;
        let busy = (total - b.1.saturating_sub(a.1) as f64) / total * cpus;
        let own = b.2.saturating_sub(a.2) as f64 / total * cpus;
        let r = |x: f64| (x * 100.0).round() / 100.0;
        Some(CpuUse {
            busy_cores: r(busy),
            this_process_cores: r(own.min(busy)),
            other_cores: r((busy - own).max(0.0)),
        })
    })
}
