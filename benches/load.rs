//! Load generator for the loopback targets of DESIGN.md section 5, with every baseline
//! measured in the same run on the same machine:
//!
//! - quotad in-process (`server::start`, embedded ledger and journal in a temporary
//!   directory under the target directory, wall clock, durability defaults; the limits that
//!   would refuse load — holds, streams, report rate, outbox, stream buffer — raised),
//!   with `--accounts` funded accounts plus `--hot-accounts` that get `--hot-share` of
//!   the requests;
//! - a no-op tonic server of the same service (`load/noop.rs`), driven by the same client
//!   code over the same channels;
//! - Redis (EVALSHA of a Lua check-and-debit) and PostgreSQL (one UPDATE debit), each
//!   skipped with its reason when unreachable.
//!
//! Scenarios: `reserve_commit` (closed loop per `--concurrency`), `reserve_commit_open`
//! (open loop at `--rate`; default half the best closed-loop quotad rate of this run),
//! `admit` (closed loop), `stream_usage` (`--streams`, each with `--window` reports in
//! flight), `evalsha` (Redis) and `update` (PostgreSQL). Order: disk probe, Redis,
//! PostgreSQL, then quotad and the no-op server side by side per scenario and client
//! count. Before each quotad or no-op scenario the run waits until quotad's sync loop has
//! pushed the previous scenarios' usage to its ledger, so no scenario pays for another's
//! backlog. Each result carries the CPU use of its window (machine, this process, other
//! processes), which shows when something else on the machine skewed it.
//!
//! Results: `--json` (default TARGET/bench-results/load.json), `--md`
//! (TARGET/bench-results/load.md: ratio table, raw numbers, disk probe) and `--svg`
//! (benches/results/latency.svg, the chart BENCHMARKS.md embeds; under `--quick` it goes
//! to TARGET/bench-results/ unless `--svg` says). TARGET is CARGO_TARGET_DIR, else the
//! directory cargo built this binary in.
//!
//! `cargo bench --bench load -- --quick` is a smoke run (about a minute).

// Benches fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use quotad::pb;
use quotad::pb::admin_client::AdminClient;
use quotad::pb::quota_client::QuotaClient;
use quotad::server::ServeConfig;

#[path = "load/baselines.rs"]
mod baselines;
#[path = "load/drive.rs"]
mod drive;
#[path = "load/noop.rs"]
mod noop;
#[path = "load/out.rs"]
mod out;
#[path = "load/report.rs"]
mod report;
#[path = "load/stats.rs"]
mod stats;

use drive::{Done, Meta, Op, StreamSpec};
use out::target_dir;
use stats::ScenarioResult;

pub const A10: &str = "gpu.shared.a10";
/// GPU-ms a Reserve holds (0.036 CNY at 0.0006/s) and its Commit charges (0.027).
const RESERVE_MS: i64 = 60_000;
const COMMIT_MS: i64 = 45_000;
/// The same debit for the baselines: 0.036 CNY, in micro-units for Redis.
const DEBIT: &str = "0.036";
const DEBIT_MICROS: i64 = 36_000;
/// GPU-ms per usage report.
const REPORT_MS: i64 = 100;
const BALANCE: &str = "1000000000";

#[derive(Parser, Debug, Serialize)]
#[command(about = "quotad loopback load generator with same-run baselines (DESIGN.md §5)")]
struct Args {
    /// Measured seconds per scenario [default: 5, --quick: 1].
    #[arg(long)]
    duration_s: Option<f64>,
    /// Warm-up seconds before each measurement [default: 1, --quick: 0.3].
    #[arg(long)]
    warmup_s: Option<f64>,
    /// Closed-loop client counts for reserve_commit and admit.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 64])]
    concurrency: Vec<usize>,
    /// Open-loop arrival rate (pairs/s) [default: half the best closed-loop quotad
    /// reserve_commit rate of this run, or 1000].
    #[arg(long)]
    rate: Option<f64>,
    /// Open-loop lanes (most requests in flight).
    #[arg(long, default_value_t = 256)]
    open_lanes: usize,
    /// Scenarios to run: reserve_commit, reserve_commit_open, admit, stream_usage,
    /// evalsha, update; or a target (quotad, noop, redis, postgres); or target/scenario.
    /// Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Short smoke run: 1 s per scenario, 100 accounts.
    #[arg(long)]
    quick: bool,
    /// quotad's journal durability: full (fsync per group commit, the default) or normal
    /// (written before the ack, fsync'ed at checkpoints; kill -9 safe).
    #[arg(long, default_value = "full")]
    journal_sync: String,
    /// All results [default: TARGET/bench-results/load.json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Latency chart [default: benches/results/latency.svg; --quick:
    /// TARGET/bench-results/latency.svg].
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Ratio table and raw numbers [default: TARGET/bench-results/load.md].
    #[arg(long)]
    md: Option<PathBuf>,
    /// Funded accounts the requests spread over [default: 1000, --quick: 100].
    #[arg(long)]
    accounts: Option<usize>,
    /// Hot accounts.
    #[arg(long, default_value_t = 4)]
    hot_accounts: usize,
    /// Share of requests that go to the hot accounts.
    #[arg(long, default_value_t = 0.1)]
    hot_share: f64,
    /// gRPC connections the clients of a scenario share (round robin).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Usage-stream counts.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    streams: Vec<usize>,
    /// Reports in flight per stream (sent, decision not read yet).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// quotad's stream_buffer (unread decisions per stream, beyond which it ends the
    /// stream; it also caps how many pipelined reports one journal wait covers)
    /// [default: the larger of quotad's default and --window].
    #[arg(long)]
    stream_buffer: Option<usize>,
    /// Redis for the EVALSHA baseline (skipped if it does not answer).
    #[arg(long, default_value = "redis://127.0.0.1:6379/")]
    redis_url: String,
    /// Redis client counts (one connection each).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 50])]
    redis_clients: Vec<usize>,
    /// PostgreSQL for the UPDATE baseline (skipped if it does not answer).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    #[serde(skip)]
    database_url: String,
    /// PostgreSQL client counts (one connection each).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    pg_clients: Vec<usize>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    #[serde(skip)]
    bench: bool,
    /// Filters `cargo bench` may pass; ignored.
    #[arg(hide = true)]
    #[serde(skip)]
    filter: Vec<String>,
}

/// Picks accounts by index: `hot_share` of the picks go to the `hot` accounts at the end
/// of the list, the rest spread uniformly over the first `n`.
#[derive(Clone)]
pub struct Picker {
    n: usize,
    hot: usize,
    hot_share: f64,
    state: u64,
}

impl Picker {
    fn new(n: usize, hot: usize, hot_share: f64) -> Picker {
        Picker {
            n: n.max(1),
            hot,
            hot_share,
            state: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// All accounts: the spread ones, then the hot ones.
    pub fn count(&self) -> usize {
        self.n + self.hot
    }

    /// An independent stream of picks for client `seed`.
    pub fn fork(&self, seed: u64) -> Picker {
        let mut p = self.clone();
        p.state = splitmix(self.state ^ seed.wrapping_mul(0xd1b5_4a32_d192_ed03));
        p
    }

    fn rand(&mut self) -> u64 {
        self.state = splitmix(self.state);
        self.state
    }

    pub fn next_index(&mut self) -> usize {
        let r = self.rand();
        if self.hot > 0 && ((r >> 11) as f64 / (1u64 << 53) as f64) < self.hot_share {
            self.n + (self.rand() % self.hot as u64) as usize
        } else {
            (self.rand() % self.n as u64) as usize
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn status(what: &str, s: tonic::Status) -> String {
    format!("{what}: {:?} {}", s.code(), s.message())
}

/// Reserve of a fresh id on a picked account, then Commit of it.
struct PairOp {
    client: QuotaClient<Channel>,
    names: Arc<Vec<String>>,
    pick: Picker,
    prefix: String,
}

impl Op for PairOp {
    fn metrics(&self) -> &'static [&'static str] {
        &["reserve", "pair"]
    }

    async fn run(&mut self, i: u64) -> Result<Done, String> {
        let account_id = self.names[self.pick.next_index()].clone();
        let id = format!("{}-{i}", self.prefix);
        let r = self
            .client
            .reserve(pb::ReserveRequest {
                account_id,
                reservation_id: id.clone(),
                resource: pb::Resource::GpuShared as i32,
                sku: A10.into(),
                quantity: RESERVE_MS,
                ttl_ms: 0,
            })
            .await
            .map_err(|s| status("Reserve", s))?
            .into_inner();
        let reserved = Instant::now();
        if !r.admitted {
            return Ok(Done {
                admitted: false,
                marks: [Some(reserved), None],
            });
        }
        self.client
            .commit(pb::CommitRequest {
                reservation_id: id,
                quantity: COMMIT_MS,
            })
            .await
            .map_err(|s| status("Commit", s))?;
        Ok(Done {
            admitted: true,
            marks: [Some(reserved), Some(Instant::now())],
        })
    }
}

struct AdmitOp {
    client: QuotaClient<Channel>,
    names: Arc<Vec<String>>,
    pick: Picker,
}

impl Op for AdmitOp {
    fn metrics(&self) -> &'static [&'static str] {
        &["admit"]
    }

    async fn run(&mut self, _i: u64) -> Result<Done, String> {
        let account_id = self.names[self.pick.next_index()].clone();
        let r = self
            .client
            .admit(pb::AdmitRequest {
                account_id,
                resource: pb::Resource::GpuShared as i32,
                sku: A10.into(),
                quantity: RESERVE_MS,
            })
            .await
            .map_err(|s| status("Admit", s))?
            .into_inner();
        Ok(Done::one(r.admitted))
    }
}

async fn channels(addr: std::net::SocketAddr, n: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        out.push(ch);
    }
    Ok(out)
}

/// One gRPC target (quotad or the no-op server) and its clients' channels.
struct GrpcTarget {
    name: &'static str,
    channels: Vec<Channel>,
}

impl GrpcTarget {
    fn client(&self, i: usize) -> QuotaClient<Channel> {
        QuotaClient::new(self.channels[i % self.channels.len()].clone())
    }
}

/// The ledger sync backlog a scenario left, and how long it took to drain.
#[derive(Serialize)]
struct Settle {
    after: String,
    records: usize,
    seconds: f64,
    left: usize,
}

struct Run {
    args: Args,
    settles: Vec<Settle>,
    engine: Arc<quotad::engine::Engine>,
    duration: Duration,
    warmup: Duration,
    names: Arc<Vec<String>>,
    pick: Picker,
    nonce: String,
    results: Vec<ScenarioResult>,
}

impl Run {
    fn selected(&self, target: &str, scenario: &str) -> bool {
        self.args.only.is_empty()
            || self
                .args
                .only
                .iter()
                .any(|t| t == scenario || t == target || *t == format!("{target}/{scenario}"))
    }

    /// Waits for quotad's sync loop to push the previous scenario's usage to the ledger,
    /// so that no scenario pays for the one before it.
    async fn settle(&mut self) {
        let t = Instant::now();
        let journal = self.engine.journal();
        let backlog = journal.outbox_len();
        while journal.outbox_len() > 0 && t.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if backlog > 0 {
            self.settles.push(Settle {
                after: self.results.last().map(|r| r.key()).unwrap_or_default(),
                records: backlog,
                seconds: (t.elapsed().as_secs_f64() * 100.0).round() / 100.0,
                left: journal.outbox_len(),
            });
            eprintln!(
                "load: settle: {backlog} usage records pushed to the ledger in {:.1}s{}",
                t.elapsed().as_secs_f64(),
                match journal.outbox_len() {
                    0 => String::new(),
                    n => format!(" ({n} still waiting)"),
                }
            );
        }
    }

    fn report(&mut self, mut r: ScenarioResult) {
        let lat = r
            .latency
            .iter()
            .map(|(k, l)| {
                format!(
                    "{k} p50 {} p99 {} p99.9 {} µs",
                    l.p50_us, l.p99_us, l.p999_us
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let (rss, _) = stats::rss_mib();
        eprintln!(
            "load: done {:<34} {:>10.0} {}/s  {lat}  rss {} MiB{}{}",
            r.key(),
            r.ops_per_s,
            r.unit,
            rss.map_or("-".to_string(), |m| format!("{m:.0}")),
            if r.denied > 0 {
                format!("  denied {}", r.denied)
            } else {
                String::new()
            },
            match &r.first_error {
                Some(e) => format!("  errors {} (first: {e})", r.errors),
                None => String::new(),
            }
        );
        r.run_order = self.results.len() + 1;
        (r.rss_mib, r.rss_peak_mib) = stats::rss_mib();
        self.results.push(r);
    }

    fn pair_ops(&self, t: &GrpcTarget, scenario: &str, n: usize) -> Vec<PairOp> {
        (0..n)
            .map(|c| PairOp {
                client: t.client(c),
                names: self.names.clone(),
                pick: self.pick.fork(c as u64 + 1),
                prefix: format!("{}-{scenario}-{n}-{c}-{}", t.name, self.nonce),
            })
            .collect()
    }

    async fn reserve_commit(&mut self, t: &GrpcTarget, c: usize) {
        if !self.selected(t.name, "reserve_commit") {
            return;
        }
        self.settle().await;
        let ops = self.pair_ops(t, "rc", c);
        let meta = Meta {
            target: t.name,
            scenario: "reserve_commit",
            unit: "pair",
        };
        let r = drive::closed_loop(meta, ops, self.warmup, self.duration).await;
        self.report(r);
    }

    async fn open(&mut self, t: &GrpcTarget, rate: f64) {
        if !self.selected(t.name, "reserve_commit_open") {
            return;
        }
        self.settle().await;
        let ops = self.pair_ops(t, "open", self.args.open_lanes.max(1));
        let meta = Meta {
            target: t.name,
            scenario: "reserve_commit_open",
            unit: "pair",
        };
        let r = drive::open_loop(meta, ops, rate, self.warmup, self.duration).await;
        self.report(r);
    }

    async fn admit(&mut self, t: &GrpcTarget, c: usize) {
        if !self.selected(t.name, "admit") {
            return;
        }
        self.settle().await;
        let ops = (0..c)
            .map(|i| AdmitOp {
                client: t.client(i),
                names: self.names.clone(),
                pick: self.pick.fork(1_000 + i as u64),
            })
            .collect();
        let meta = Meta {
            target: t.name,
            scenario: "admit",
            unit: "call",
        };
        let r = drive::closed_loop(meta, ops, self.warmup, self.duration).await;
        self.report(r);
    }

    async fn streams(&mut self, t: &GrpcTarget, n: usize) {
        if !self.selected(t.name, "stream_usage") {
            return;
        }
        self.settle().await;
        let specs = (0..n)
            .map(|s| StreamSpec {
                client: t.client(s),
                account: stream_account(s),
                work_id: format!("{}-job-{n}-{s}-{}", t.name, self.nonce),
            })
            .collect();
        let meta = Meta {
            target: t.name,
            scenario: "stream_usage",
            unit: "record",
        };
        let r = drive::streams(
            meta,
            specs,
            self.args.window,
            REPORT_MS,
            self.warmup,
            self.duration,
        )
        .await;
        self.report(r);
    }
}

fn stream_account(s: usize) -> String {
    format!("stream-{s:03}")
}

#[derive(Serialize)]
struct Skipped {
    target: String,
    reason: String,
}

#[derive(Serialize)]
struct Output<'a> {
    generated_at: String,
    command: Vec<String>,
    machine: Machine,
    args: &'a Args,
    duration_s: f64,
    warmup_s: f64,
    quotad_data_dir: String,
    quotad_stream_buffer: usize,
    /// Durable-write costs on the quotad data directory's disk, measured before the
    /// scenarios: 4 KiB write + fdatasync appending to a file and overwriting one, and a
    /// one-row SQLite commit in WAL mode with synchronous=FULL (what the journal paid per
    /// group when it was a SQLite file).
    disk_probe: std::collections::BTreeMap<String, stats::Summary>,
    servers: std::collections::BTreeMap<String, String>,
    /// Usage backlogs the sync loop drained into the embedded ledger between scenarios.
    ledger_settles: &'a [Settle],
    results: &'a [ScenarioResult],
    skipped: &'a [Skipped],
    ratios: &'a [report::Ratio],
}

#[derive(Serialize)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    /// /proc/loadavg before and after the run: other work on the machine skews every
    /// number here.
    loadavg_before: String,
    loadavg_after: String,
    /// CPU busy with other processes in the second before the run.
    idle_check: Option<stats::CpuUse>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(loadavg_before: String, idle_check: Option<stats::CpuUse>) -> Machine {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    Machine {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        loadavg_before,
        loadavg_after: loadavg(),
        idle_check,
    }
}

async fn create_accounts(
    admin: &AdminClient<Channel>,
    quota: &QuotaClient<Channel>,
    ids: Vec<String>,
) -> Result<(), String> {
    let ids = Arc::new(ids);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..16 {
        let (mut admin, mut quota) = (admin.clone(), quota.clone());
        let (ids, next) = (ids.clone(), next.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                admin
                    .create_account(pb::CreateAccountRequest {
                        account_id: id.clone(),
                        balance: Some(pb::Money {
                            currency: "CNY".into(),
                            amount: BALANCE.into(),
                        }),
                    })
                    .await
                    .map_err(|s| status("CreateAccount", s))?;
                // Loads the account into the engine's cache before any measurement.
                quota
                    .admit(pb::AdmitRequest {
                        account_id: id.clone(),
                        resource: pb::Resource::GpuShared as i32,
                        sku: A10.into(),
                        quantity: RESERVE_MS,
                    })
                    .await
                    .map_err(|s| status("Admit", s))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(j) = set.join_next().await {
        j.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// quotad's real answers to one Reserve, Commit, Admit and usage report: the no-op
/// server sends these, so both put the same bytes on the wire.
async fn sample_answers(
    quota: &mut QuotaClient<Channel>,
    nonce: &str,
) -> Result<noop::Answers, String> {
    let account = "sample".to_owned();
    let id = format!("sample-{nonce}");
    let reserve = quota
        .reserve(pb::ReserveRequest {
            account_id: account.clone(),
            reservation_id: id.clone(),
            resource: pb::Resource::GpuShared as i32,
            sku: A10.into(),
            quantity: RESERVE_MS,
            ttl_ms: 0,
        })
        .await
        .map_err(|s| status("Reserve", s))?
        .into_inner();
    let commit = quota
        .commit(pb::CommitRequest {
            reservation_id: id,
            quantity: COMMIT_MS,
        })
        .await
        .map_err(|s| status("Commit", s))?
        .into_inner();
    let admit = quota
        .admit(pb::AdmitRequest {
            account_id: account.clone(),
            resource: pb::Resource::GpuShared as i32,
            sku: A10.into(),
            quantity: RESERVE_MS,
        })
        .await
        .map_err(|s| status("Admit", s))?
        .into_inner();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut decisions = quota
        .stream_usage(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| status("StreamUsage", s))?
        .into_inner();
    tx.send(pb::UsageReport {
        account_id: account,
        work_id: format!("sample-job-{nonce}"),
        resource: pb::Resource::GpuShared as i32,
        sku: A10.into(),
        quantity: REPORT_MS,
        seq: 1,
    })
    .await
    .map_err(|e| e.to_string())?;
    let decision = decisions
        .message()
        .await
        .map_err(|s| status("StreamUsage", s))?
        .ok_or("StreamUsage ended without a decision")?;
    drop(tx);
    while let Ok(Some(_)) = decisions.message().await {}
    Ok(noop::Answers {
        reserve,
        commit,
        admit,
        decision,
    })
}

/// Durable-write costs on `dir`'s disk: what every journal group commit pays at least.
fn disk_probe(dir: &Path) -> Result<std::collections::BTreeMap<String, stats::Summary>, String> {
    use std::io::{Seek, Write};
    const N: usize = 300;
    let io = |e: std::io::Error| format!("disk probe in {}: {e}", dir.display());
    let mut rec = stats::Recorder::new(&[
        "fdatasync_append_4k",
        "fdatasync_overwrite_4k",
        "sqlite_wal_full_commit",
    ]);
    let block = [0x5au8; 4096];
    let path = dir.join("probe.bin");
    let mut f = std::fs::File::create(&path).map_err(io)?;
    for _ in 0..N {
        let t = Instant::now();
        f.write_all(&block).map_err(io)?;
        f.sync_data().map_err(io)?;
        rec.record(0, t.elapsed());
    }
    for _ in 0..N {
        f.rewind().map_err(io)?;
        let t = Instant::now();
        f.write_all(&block).map_err(io)?;
        f.sync_data().map_err(io)?;
        rec.record(1, t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    let db = dir.join("probe.db");
    {
        let sql = |e: rusqlite::Error| format!("disk probe SQLite: {e}");
        let conn = rusqlite::Connection::open(&db).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.execute(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
            [],
        )
        .map_err(sql)?;
        for i in 0..N {
            let t = Instant::now();
            conn.execute(
                "INSERT INTO t (id, v) VALUES (?1, ?2)",
                rusqlite::params![i as i64, "0.036"],
            )
            .map_err(sql)?;
            rec.record(2, t.elapsed());
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("probe.db{suffix}")));
    }
    Ok(rec.summaries())
}

fn write(path: &Path, content: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(path, content).map_err(|e| format!("{}: {e}", path.display()))
}

async fn run(args: Args) -> Result<(), String> {
    let quick = args.quick;
    let duration =
        Duration::from_secs_f64(args.duration_s.unwrap_or(if quick { 1.0 } else { 5.0 }));
    let warmup = Duration::from_secs_f64(args.warmup_s.unwrap_or(if quick { 0.3 } else { 1.0 }));
    let n_accounts = args.accounts.unwrap_or(if quick { 100 } else { 1_000 });
    let target = target_dir();
    let load_before = loadavg();
    let now = Instant::now();
    let idle_check = stats::cpu_meter(now, now + Duration::from_secs(1))
        .await
        .ok()
        .flatten();
    if let Some(c) = idle_check
        && c.other_cores > 0.2
    {
        eprintln!(
            "load: warning: {:.2} cores busy with other work before the run (load average {load_before}); it skews the numbers",
            c.other_cores
        );
    }
    let results_dir = target.join("bench-results");
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| results_dir.join("load.json"));
    let md_path = args
        .md
        .clone()
        .unwrap_or_else(|| results_dir.join("load.md"));
    let svg_path = args.svg.clone().unwrap_or_else(|| {
        if quick {
            results_dir.join("latency.svg")
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/latency.svg")
        }
    });
    let nonce = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );

    // quotad, in-process, its journal on the target directory's disk.
    std::fs::create_dir_all(&results_dir).map_err(|e| format!("{}: {e}", results_dir.display()))?;
    let data = tempfile::Builder::new()
        .prefix("quotad-load-")
        .tempdir_in(&target)
        .map_err(|e| format!("temporary data directory in {}: {e}", target.display()))?;
    let mut cfg = ServeConfig::new(
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        data.path().to_path_buf(),
    );
    cfg.engine.holds_max = 100_000_000;
    cfg.engine.outbox_max = 100_000_000;
    cfg.engine.work.streams_max = 1_000_000;
    cfg.engine.work.stream_reports_per_sec = u32::MAX;
    cfg.journal_sync = quotad::journal::JournalSync::from_name(&args.journal_sync)
        .ok_or_else(|| format!("--journal-sync {:?}: full or normal", args.journal_sync))?;
    // Room for every decision a stream can have unread (the window), so the stream
    // limit never ends a stream whose client is merely descheduled on a busy machine.
    cfg.engine.work.stream_buffer = args
        .stream_buffer
        .unwrap_or(cfg.engine.work.stream_buffer.max(args.window));
    let stream_buffer = cfg.engine.work.stream_buffer;
    // The baselines (the no-op server, Redis, PostgreSQL) check no caller either, so the
    // comparison is of admission alone: this run measures quotad without authentication
    // (per call it adds a header parse, a SHA-256 and a cache lookup).
    cfg.auth.disabled = true;
    let running = quotad::server::start(cfg, Arc::new(quotad::clock::SystemClock))
        .await
        .map_err(|e| format!("quotad: {e}"))?;
    eprintln!(
        "load: quotad on {}, data in {}",
        running.addr,
        data.path().display()
    );
    let probe_dir = data.path().to_path_buf();
    let disk = tokio::task::spawn_blocking(move || disk_probe(&probe_dir))
        .await
        .map_err(|e| e.to_string())??;
    for (k, v) in &disk {
        eprintln!(
            "load: disk probe {k}: p50 {} p99 {} µs ({} samples)",
            v.p50_us, v.p99_us, v.count
        );
    }
    let quotad = GrpcTarget {
        name: "quotad",
        channels: channels(running.addr, args.connections).await?,
    };
    let mut quota = quotad.client(0);
    let admin = AdminClient::new(quotad.channels[0].clone());

    let mut names: Vec<String> = (0..n_accounts).map(|i| format!("acct-{i:05}")).collect();
    names.extend((0..args.hot_accounts).map(|i| format!("hot-{i}")));
    let max_streams = args.streams.iter().copied().max().unwrap_or(0);
    let mut all = names.clone();
    all.extend((0..max_streams).map(stream_account));
    all.push("sample".into());
    let t = Instant::now();
    create_accounts(&admin, &quota, all).await?;
    eprintln!(
        "load: {} accounts created and cached in {:.1}s",
        names.len() + max_streams + 1,
        t.elapsed().as_secs_f64()
    );
    let answers = sample_answers(&mut quota, &nonce).await?;
    let noop_server = noop::start(answers)
        .await
        .map_err(|e| format!("no-op server: {e}"))?;
    let noop = GrpcTarget {
        name: "noop",
        channels: channels(noop_server.addr, args.connections).await?,
    };

    let mut run = Run {
        settles: Vec::new(),
        engine: running.engine().clone(),
        pick: Picker::new(n_accounts, args.hot_accounts, args.hot_share),
        names: Arc::new(names),
        duration,
        warmup,
        nonce,
        results: Vec::new(),
        args,
    };
    // The external baselines first, while quotad is idle (no ledger sync backlog).
    let mut skipped = Vec::new();
    let mut servers = Vec::new();
    if run.selected("redis", "evalsha") {
        let url = run.args.redis_url.clone();
        let clients = run.args.redis_clients.clone();
        match baselines::redis(&url, &clients, &run.pick, DEBIT_MICROS, warmup, duration).await {
            Ok(o) => {
                servers.extend(o.info);
                for r in o.results {
                    run.report(r);
                }
            }
            Err(reason) => {
                println!("redis baseline: skipped ({reason})");
                skipped.push(Skipped {
                    target: "redis".into(),
                    reason,
                });
            }
        }
    }
    if run.selected("postgres", "update") {
        let url = run.args.database_url.clone();
        let clients = run.args.pg_clients.clone();
        match baselines::postgres(&url, &clients, &run.pick, DEBIT, warmup, duration).await {
            Ok(o) => {
                servers.extend(o.info);
                for r in o.results {
                    run.report(r);
                }
            }
            Err(reason) => {
                println!("postgres baseline: skipped ({reason})");
                skipped.push(Skipped {
                    target: "postgres".into(),
                    reason,
                });
            }
        }
    }

    let concurrency = run.args.concurrency.clone();
    for &c in &concurrency {
        run.reserve_commit(&quotad, c).await;
        run.reserve_commit(&noop, c).await;
    }
    for &c in &concurrency {
        run.admit(&quotad, c).await;
        run.admit(&noop, c).await;
    }
    let rate = run.args.rate.unwrap_or_else(|| {
        let best = run
            .results
            .iter()
            .filter(|r| r.target == "quotad" && r.scenario == "reserve_commit")
            .map(|r| r.ops_per_s)
            .fold(0.0, f64::max);
        if best > 0.0 {
            (best / 2.0).round().max(1.0)
        } else {
            1_000.0
        }
    });
    run.open(&quotad, rate).await;
    run.open(&noop, rate).await;
    // No-op before quotad: quotad's streams leave the largest ledger backlog (settled
    // before each quotad scenario, never paid for by the no-op server).
    for &s in &run.args.streams.clone() {
        run.streams(&noop, s).await;
        run.streams(&quotad, s).await;
    }

    drop(noop);
    drop(noop_server);
    drop(quota);
    drop(admin);
    drop(quotad);
    // A graceful shutdown pushes the whole usage backlog to the ledger first; after the
    // stream scenarios that is minutes of SQLite ingest nobody measures, so it gets 10 s
    // and the temporary data directory goes away with the rest.
    let backlog = run.engine.journal().outbox_len();
    match tokio::time::timeout(Duration::from_secs(10), running.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("load: quotad shutdown: {e}"),
        Err(_) => eprintln!(
            "load: quotad shutdown not waited for ({backlog} usage records were still going to the ledger)"
        ),
    }
    run.results.sort_by_key(|r| {
        let scenario = [
            "reserve_commit",
            "admit",
            "reserve_commit_open",
            "stream_usage",
            "evalsha",
            "update",
        ]
        .iter()
        .position(|s| *s == r.scenario);
        let target = ["quotad", "noop", "redis", "postgres"]
            .iter()
            .position(|t| *t == r.target);
        (scenario, r.clients, target)
    });

    let ratios = report::ratios(&run.results, &run.args.concurrency, &run.args.pg_clients);
    let one = run.args.concurrency.iter().copied().min().unwrap_or(1);
    let series = report::chart_series(&run.results, one);
    let m = machine(load_before, idle_check);
    let subtitle = format!(
        "loopback, same run, {} CPUs ({}); {} s per scenario; quotad journal fsync'ed per group commit",
        m.cpus,
        m.cpu_model,
        duration.as_secs_f64()
    );
    let svg = report::svg(&series, "Single-client latency by percentile", &subtitle);
    let mut md = String::new();
    md.push_str("## Ratios against DESIGN.md §5\n\n");
    md.push_str(&format!(
        "{} CPUs ({}), {} s per scenario after {} s of warm-up; load average {} before, {} after.\n\n",
        m.cpus,
        m.cpu_model,
        duration.as_secs_f64(),
        warmup.as_secs_f64(),
        m.loadavg_before,
        m.loadavg_after
    ));
    md.push_str(&report::ratios_markdown(&ratios));
    md.push_str("\n## Raw numbers\n\n");
    md.push_str(&report::raw_markdown(&run.results));
    md.push_str("\n## Disk probe (quotad's data directory)\n\n| write | p50 µs | p99 µs |\n|---|---:|---:|\n");
    for (k, v) in &disk {
        md.push_str(&format!("| {k} | {} | {} |\n", v.p50_us, v.p99_us));
    }
    for s in &skipped {
        md.push_str(&format!(
            "\n{} baseline: skipped ({})\n",
            s.target, s.reason
        ));
    }
    let out = Output {
        generated_at: chrono::Utc::now().to_rfc3339(),
        command: std::env::args().collect(),
        machine: m,
        args: &run.args,
        duration_s: duration.as_secs_f64(),
        warmup_s: warmup.as_secs_f64(),
        quotad_data_dir: data.path().display().to_string(),
        quotad_stream_buffer: stream_buffer,
        disk_probe: disk,
        servers: servers.into_iter().collect(),
        ledger_settles: &run.settles,
        results: &run.results,
        skipped: &skipped,
        ratios: &ratios,
    };
    let json = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    write(&json_path, &json)?;
    write(&md_path, &md)?;
    if series.is_empty() {
        eprintln!(
            "load: no series for the latency chart; {} not written",
            svg_path.display()
        );
    } else {
        write(&svg_path, &svg)?;
    }

    println!();
    println!("{}", report::raw_markdown(&run.results));
    for r in &ratios {
        println!("{}", report::ratio_line(r));
    }
    for s in &skipped {
        println!("{} baseline: skipped ({})", s.target, s.reason);
    }
    println!(
        "results: {} | {} | {}",
        json_path.display(),
        md_path.display(),
        if series.is_empty() {
            "(no chart)".to_owned()
        } else {
            svg_path.display().to_string()
        }
    );
    Ok(())
}

fn main() {
    let args = Args::parse();
    const KNOWN: [&str; 10] = [
        "reserve_commit",
        "reserve_commit_open",
        "admit",
        "stream_usage",
        "evalsha",
        "update",
        "quotad",
        "noop",
        "redis",
        "postgres",
    ];
    for t in &args.only {
        let known = KNOWN.contains(&t.as_str())
            || t.split_once('/')
                .is_some_and(|(a, b)| KNOWN.contains(&a) && KNOWN.contains(&b));
        if !known {
            eprintln!(
                "load: --only {t}: not a scenario or target ({})",
                KNOWN.join(", ")
            );
            std::process::exit(2);
        }
    }
    if !args.filter.is_empty() {
        eprintln!("load: ignoring filter arguments {:?}", args.filter);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(args)) {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}
