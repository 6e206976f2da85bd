//! The load drivers, shared by every target: a closed loop (each client sends its next
//! request when the previous one is answered), an open loop (requests at a fixed arrival
//! rate whatever the answers; latency from the scheduled send time, so a stall counts
//! against every request it delayed) and pipelined usage streams.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use quotad::pb;
use quotad::pb::quota_client::QuotaClient;

use crate::stats::{Counts, Progress, Recorder, ScenarioResult, Window, cpu_meter};

/// What one operation reports: whether it was admitted, and when each of its stages was
/// answered (indexes into the op's metric names; latency is measured from the op's origin).
pub struct Done {
    pub admitted: bool,
    pub marks: [Option<Instant>; 2],
}

impl Done {
    pub fn one(admitted: bool) -> Done {
        Done {
            admitted,
            marks: [Some(Instant::now()), None],
        }
    }
}

/// One client's operation against a target.
pub trait Op: Send + 'static {
    /// Names of the latencies `Done::marks` carries, in order.
    fn metrics(&self) -> &'static [&'static str];
    /// The `i`-th operation of this client (ids derived from `i` are fresh).
    fn run(&mut self, i: u64) -> impl Future<Output = Result<Done, String>> + Send;
}

/// Everything but the measurements of a result.
pub struct Meta {
    pub target: &'static str,
    pub scenario: &'static str,
    pub unit: &'static str,
}

fn result(
    meta: &Meta,
    mode: &str,
    clients: usize,
    rate: Option<f64>,
    w: &Window,
    counts: Counts,
    rec: &Recorder,
) -> ScenarioResult {
    let ops = counts.ok + counts.denied;
    ScenarioResult {
        target: meta.target.into(),
        scenario: meta.scenario.into(),
        mode: mode.into(),
        clients,
        rate,
        duration_s: w.measured_s(),
        unit: meta.unit.into(),
        ops,
        ops_per_s: (ops as f64 / w.measured_s() * 10.0).round() / 10.0,
        denied: counts.denied,
        errors: counts.errors,
        first_error: counts.first_error,
        latency: rec.summaries(),
        cpu: None,
        run_order: 0,
        rss_mib: None,
        rss_peak_mib: None,
    }
}

fn record_done(rec: &mut Recorder, origin: Instant, r: &Result<Done, String>) {
    if let Ok(d) = r {
        for (k, m) in d.marks.iter().enumerate() {
            if let Some(at) = m {
                rec.record(k, *at - origin);
            }
        }
    }
}

fn admitted(r: &Result<Done, String>) -> Result<bool, String> {
    r.as_ref().map(|d| d.admitted).map_err(Clone::clone)
}

/// Closed loop: every op of `ops` is one client; operations started inside the measured
/// window are counted and their latencies recorded.
pub async fn closed_loop<O: Op>(
    meta: Meta,
    ops: Vec<O>,
    warmup: Duration,
    duration: Duration,
) -> ScenarioResult {
    let clients = ops.len();
    let names = ops.first().map(|o| o.metrics()).unwrap_or(&[]);
    let w = Window::new(warmup, duration);
    let cpu = cpu_meter(w.start, w.end);
    let progress = Progress::start(format!("{} {} c={clients}", meta.target, meta.scenario), w);
    let mut set = JoinSet::new();
    for mut op in ops {
        let counter = progress.ops.clone();
        set.spawn(async move {
            let mut rec = Recorder::new(op.metrics());
            let mut counts = Counts::default();
            let mut i = 0u64;
            loop {
                let origin = Instant::now();
                if origin >= w.end {
                    break;
                }
                let r = op.run(i).await;
                i += 1;
                counter.fetch_add(1, Ordering::Relaxed);
                if origin >= w.start {
                    record_done(&mut rec, origin, &r);
                    counts.add(&admitted(&r));
                }
                if r.is_err() {
                    // A failing target answers at once; do not spin the CPU the server needs.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (rec, counts)
        });
    }
    let mut rec = Recorder::new(names);
    let mut counts = Counts::default();
    while let Some(j) = set.join_next().await {
        let (r, c) = j.expect("load client task");
        rec.merge(&r);
        counts.merge(c);
    }
    drop(progress);
    let mut r = result(&meta, "closed", clients, None, &w, counts, &rec);
    r.cpu = cpu.await.ok().flatten();
    r
}

/// Open loop at `rate` operations per second: operation `i` is due at `t0 + i / rate`.
/// A pacer thread (OS sleeps, far finer than tokio's 1 ms timer) hands each due operation
/// to the first free of `ops.len()` lanes; latency runs from the due time, so time spent
/// waiting for a free lane or behind a stalled server counts (coordinated-omission-
/// correct), and "service" from the actual send. Lanes only bound the requests in flight.
pub async fn open_loop<O: Op>(
    meta: Meta,
    ops: Vec<O>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> ScenarioResult {
    let lanes = ops.len();
    let names = ops.first().map(|o| o.metrics()).unwrap_or(&[]);
    let service_names: &'static [&'static str] = &["service"];
    let w = Window::new(warmup, duration);
    let cpu = cpu_meter(w.start, w.end);
    let progress = Progress::start(format!("{} {} {rate:.0}/s", meta.target, meta.scenario), w);
    let (due_tx, due_rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let pacer = std::thread::spawn(move || {
        let mut i = 0u64;
        loop {
            let due = w.t0 + Duration::from_secs_f64(i as f64 / rate);
            if due >= w.end {
                break;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if due_tx.send((i, due)).is_err() {
                break;
            }
            i += 1;
        }
        // Dropping the sender ends the lanes once they have drained what is due.
    });
    let due_rx = Arc::new(tokio::sync::Mutex::new(due_rx));
    let shared = Arc::new(Mutex::new((
        Recorder::new(names),
        Recorder::new(service_names),
        Counts::default(),
        w.end,
    )));
    let mut set = JoinSet::new();
    for mut op in ops {
        let counter = progress.ops.clone();
        let shared = shared.clone();
        let due_rx = due_rx.clone();
        set.spawn(async move {
            loop {
                let next = due_rx.lock().await.recv().await;
                let Some((i, due)) = next else { break };
                let sent = Instant::now();
                let r = op.run(i).await;
                let done = Instant::now();
                counter.fetch_add(1, Ordering::Relaxed);
                if due >= w.start {
                    let mut g = shared.lock().expect("recorder lock");
                    let (rec, service, counts, last_done) = &mut *g;
                    record_done(rec, due, &r);
                    if r.is_ok() {
                        service.record(0, done - sent);
                    }
                    counts.add(&admitted(&r));
                    *last_done = (*last_done).max(done);
                }
            }
        });
    }
    while let Some(j) = set.join_next().await {
        j.expect("load lane task");
    }
    let _ = pacer.join();
    drop(progress);
    let (rec, service, counts, last_done) = Arc::try_unwrap(shared)
        .ok()
        .expect("lanes finished")
        .into_inner()
        .expect("recorder lock");
    let mut r = result(&meta, "open", lanes, Some(rate), &w, counts, &rec);
    // Throughput achieved: what was due in the window over the time it took to answer
    // it all (the window itself when the target kept up).
    let took = (last_done - w.start).as_secs_f64().max(w.measured_s());
    r.ops_per_s = (r.ops as f64 / took * 10.0).round() / 10.0;
    if let Some((k, v)) = service.summaries().into_iter().next() {
        r.latency.insert(k, v);
    }
    r.cpu = cpu.await.ok().flatten();
    r
}

/// One usage stream to drive: the client (its channel), the account and the job id.
pub struct StreamSpec {
    pub client: QuotaClient<Channel>,
    pub account: String,
    pub work_id: String,
}

/// Usage streams, each keeping up to `window` reports in flight (sent, decision not yet
/// read): reports are encoded and sent by the real client as fast as the window allows,
/// decisions read as they come. One op = one decision read in the measured window;
/// "record" latency is report sent to its decision read.
pub async fn streams(
    meta: Meta,
    specs: Vec<StreamSpec>,
    window: usize,
    report_ms: i64,
    warmup: Duration,
    duration: Duration,
) -> ScenarioResult {
    let n = specs.len();
    let names: &'static [&'static str] = &["record"];
    let w = Window::new(warmup, duration);
    let cpu = cpu_meter(w.start, w.end);
    let progress = Progress::start(format!("{} {} streams={n}", meta.target, meta.scenario), w);
    let mut set = JoinSet::new();
    for spec in specs {
        let counter = progress.ops.clone();
        set.spawn(one_stream(spec, window, report_ms, w, counter));
    }
    let mut rec = Recorder::new(names);
    let mut counts = Counts::default();
    while let Some(j) = set.join_next().await {
        let (r, c) = j.expect("stream task");
        rec.merge(&r);
        counts.merge(c);
    }
    drop(progress);
    let mut r = result(&meta, "pipelined", n, None, &w, counts, &rec);
    r.cpu = cpu.await.ok().flatten();
    r
}

async fn one_stream(
    spec: StreamSpec,
    window: usize,
    report_ms: i64,
    w: Window,
    counter: Arc<std::sync::atomic::AtomicU64>,
) -> (Recorder, Counts) {
    let mut rec = Recorder::new(&["record"]);
    let mut counts = Counts::default();
    let StreamSpec {
        mut client,
        account,
        work_id,
    } = spec;
    let (tx, rx) = mpsc::channel::<pb::UsageReport>(window.max(1));
    let mut decisions = match client
        .stream_usage(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            counts.add(&Err(format!("StreamUsage: {s}")));
            return (rec, counts);
        }
    };
    let credit = Arc::new(Semaphore::new(window.max(1)));
    let sent: Arc<Mutex<VecDeque<Instant>>> = Arc::new(Mutex::new(VecDeque::new()));
    let sender = {
        let credit = credit.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            loop {
                match credit.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => break,
                }
                let now = Instant::now();
                if now >= w.end {
                    break;
                }
                seq += 1;
                // What a real worker does per report: build the message, the client
                // encodes it.
                let report = pb::UsageReport {
                    account_id: account.clone(),
                    work_id: work_id.clone(),
                    resource: pb::Resource::GpuShared as i32,
                    sku: crate::A10.to_owned(),
                    quantity: report_ms,
                    seq,
                };
                sent.lock().expect("sent lock").push_back(now);
                if tx.send(report).await.is_err() {
                    break;
                }
            }
            // Dropping `tx` half-closes the stream: the server settles the job and ends it.
        })
    };
    let drain_deadline = w.end + Duration::from_secs(30);
    loop {
        let next = tokio::time::timeout_at(drain_deadline.into(), decisions.message()).await;
        let d = match next {
            Err(_) => {
                counts.add(&Err("stream did not end within 30 s of the window".into()));
                break;
            }
            Ok(Ok(Some(d))) => d,
            Ok(Ok(None)) => break,
            Ok(Err(s)) => {
                counts.add(&Err(format!("StreamUsage: {s}")));
                break;
            }
        };
        let now = Instant::now();
        let sent_at = sent.lock().expect("sent lock").pop_front();
        credit.add_permits(1);
        counter.fetch_add(1, Ordering::Relaxed);
        if now >= w.start && now < w.end {
            counts.add(&Ok(d.action != pb::Action::Stop as i32));
        }
        if let Some(at) = sent_at
            && at >= w.start
            && at < w.end
        {
            rec.record(0, now - at);
        }
    }
    credit.close();
    let _ = sender.await;
    (rec, counts)
}
