//! Does the embedded ledger keep up? quotad `serve` in-process with its embedded SQLite
//! ledger and the durability defaults (`outbox_max` too: a Reserve is refused once that
//! many usage records wait for the ledger), driven for `--duration-s` by usage streams
//! (`--streams`, each with `--window` reports in flight) and Reserve/Commit clients
//! (`--clients`, closed loop) together. Every second it samples the outbox (records
//! journaled, not yet applied by the ledger), the records the ledger has applied (its
//! `usage` table, read from the side) and the Reserves refused for backlog.
//!
//! It prints the sidecar's production rate against the ledger's ingest rate, writes the
//! samples as JSON (TARGET/bench-results/sustained.json) and the outbox over time as a chart
//! (`--svg`, default benches/results/outbox.svg). After the load it waits (at most
//! `--drain-s`) for the ledger to apply what is left.
//!
//! `cargo bench --bench sustained -- --duration-s 600` (the default length).

// Benches fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

use quotad::pb;
use quotad::pb::admin_client::AdminClient;
use quotad::pb::quota_client::QuotaClient;
use quotad::server::ServeConfig;

#[allow(dead_code)]
#[path = "load/drive.rs"]
mod drive;
#[path = "load/out.rs"]
mod out;
#[path = "sustained/plot.rs"]
mod plot;
#[allow(dead_code)]
#[path = "load/stats.rs"]
mod stats;

use out::target_dir;
use plot::Sample;

/// The SKU every request uses (`load/drive.rs` reads it as `crate::A10`).
pub const A10: &str = "gpu.shared.a10";
/// GPU-ms a Reserve holds and its Commit charges, as in the load bench.
const RESERVE_MS: i64 = 60_000;
const COMMIT_MS: i64 = 45_000;
/// GPU-ms per usage report.
const REPORT_MS: i64 = 100;
const BALANCE: &str = "1000000000";

#[derive(Parser, Debug, serde::Serialize)]
#[command(about = "quotad sustained load: embedded ledger ingest against sidecar production")]
struct Args {
    /// Seconds of load.
    #[arg(long, default_value_t = 600.0)]
    duration_s: f64,
    /// Most seconds to wait after the load for the ledger to apply the outbox.
    #[arg(long, default_value_t = 120.0)]
    drain_s: f64,
    /// Usage streams.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Reports in flight per stream.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Reserve/Commit clients (closed loop).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Funded accounts the Reserve/Commit clients spread over.
    #[arg(long, default_value_t = 1_000)]
    accounts: usize,
    /// quotad's outbox_max [default: quotad's default].
    #[arg(long)]
    outbox_max: Option<usize>,
    /// quotad's sync_batch_max (usage records per Sync) [default: quotad's default].
    #[arg(long)]
    sync_batch_max: Option<usize>,
    /// quotad's journal durability: full (the default) or normal.
    #[arg(long, default_value = "full")]
    journal_sync: String,
    /// gRPC connections the clients share (round robin).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// The outbox chart [default: benches/results/outbox.svg].
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Samples and summary [default: TARGET/bench-results/sustained.json].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    #[serde(skip)]
    bench: bool,
    /// Filters `cargo bench` may pass; ignored.
    #[arg(hide = true)]
    #[serde(skip)]
    filter: Vec<String>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn channels(addr: std::net::SocketAddr, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) {
        let ch = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        out.push(ch);
    }
    out
}

/// Creates the accounts and loads each into the engine's cache.
async fn create_accounts(channels: &[Channel], ids: Vec<String>) {
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for k in 0..16 {
        let ch = channels[k % channels.len()].clone();
        let (mut admin, mut quota) = (AdminClient::new(ch.clone()), QuotaClient::new(ch));
        let (ids, next) = (ids.clone(), next.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
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
                    .unwrap();
                quota
                    .admit(pb::AdmitRequest {
                        account_id: id.clone(),
                        resource: pb::Resource::GpuShared as i32,
                        sku: A10.into(),
                        quantity: RESERVE_MS,
                    })
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(j) = set.join_next().await {
        j.unwrap();
    }
}

/// What the Reserve/Commit clients did.
#[derive(Default)]
struct PairCounts {
    pairs: AtomicU64,
    denied: AtomicU64,
    refused_backlog: AtomicU64,
    errors: AtomicU64,
}

/// One closed-loop client: Reserve a fresh id on an account, Commit it, until `stop`.
async fn pair_client(
    mut client: QuotaClient<Channel>,
    names: Arc<Vec<String>>,
    k: usize,
    stop: Arc<AtomicBool>,
    counts: Arc<PairCounts>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let account_id = names[(i as usize * 7919 + k * 104_729) % names.len()].clone();
        let id = format!("c{k}-{i}");
        let r = client
            .reserve(pb::ReserveRequest {
                account_id,
                reservation_id: id.clone(),
                resource: pb::Resource::GpuShared as i32,
                sku: A10.into(),
                quantity: RESERVE_MS,
                ttl_ms: 0,
            })
            .await;
        match r {
            Ok(r) if r.get_ref().admitted => {}
            Ok(_) => {
                counts.denied.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(s) if s.message().contains("outbox_max") => {
                counts.refused_backlog.fetch_add(1, Ordering::Relaxed);
                // What a client refused for backlog does: back off a little.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let c = client
            .commit(pb::CommitRequest {
                reservation_id: id,
                quantity: COMMIT_MS,
            })
            .await;
        match c {
            Ok(_) => counts.pairs.fetch_add(1, Ordering::Relaxed),
            Err(_) => counts.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Usage records the embedded ledger has applied: its `usage` table only grows and its
/// rowids count up, so the largest is the count (read on a connection of its own).
struct Applied(rusqlite::Connection);

impl Applied {
    fn open(path: &Path) -> Applied {
        let c = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        Applied(c)
    }

    fn count(&self) -> u64 {
        self.0
            .query_row("SELECT COALESCE(MAX(rowid), 0) FROM usage", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_or(0, |n| u64::try_from(n).unwrap_or(0))
    }
}

/// The summary the run ends with.
#[derive(serde::Serialize)]
struct Summary {
    duration_s: f64,
    loadavg_before: String,
    loadavg_after: String,
    outbox_max: usize,
    sync_batch_max: usize,
    produced: u64,
    applied_during_load: u64,
    produced_per_s: f64,
    applied_per_s: f64,
    /// Ledger ingest over the second half of the load (the steady state).
    produced_per_s_second_half: f64,
    applied_per_s_second_half: f64,
    outbox_peak: usize,
    outbox_at_end: usize,
    drain_s: f64,
    outbox_after_drain: usize,
    pairs_per_s: f64,
    stream_records_per_s: f64,
    stream_errors: u64,
    refused_for_backlog: u64,
    reserve_denied: u64,
    errors: u64,
}

/// Rates between two samples: (produced/s, applied/s).
fn rate_between(a: &Sample, b: &Sample) -> (f64, f64) {
    let dt = (b.t_s - a.t_s).max(1e-9);
    (
        b.produced.saturating_sub(a.produced) as f64 / dt,
        b.applied.saturating_sub(a.applied) as f64 / dt,
    )
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let target = target_dir();
    let results_dir = target.join("bench-results");
    std::fs::create_dir_all(&results_dir).unwrap();
    let data = tempfile::Builder::new()
        .prefix("quotad-sustained-")
        .tempdir_in(&target)
        .unwrap();
    let mut cfg = ServeConfig::new("127.0.0.1:0".parse().unwrap(), data.path().to_path_buf());
    cfg.engine.holds_max = 100_000_000;
    cfg.engine.work.streams_max = 1_000_000;
    cfg.engine.work.stream_reports_per_sec = u32::MAX;
    cfg.engine.work.stream_buffer = cfg.engine.work.stream_buffer.max(args.window);
    if let Some(m) = args.outbox_max {
        cfg.engine.outbox_max = m;
    }
    if let Some(b) = args.sync_batch_max {
        cfg.sync_batch_max = b;
    }
    let outbox_max = cfg.engine.outbox_max;
    let sync_batch_max = cfg.sync_batch_max;
    cfg.journal_sync = quotad::journal::JournalSync::from_name(&args.journal_sync)
        .expect("--journal-sync: full or normal");
    // The load bench's reasoning: admission alone, no caller checks.
    cfg.auth.disabled = true;
    let running = quotad::server::start(cfg, Arc::new(quotad::clock::SystemClock))
        .await
        .unwrap();
    let engine = running.engine().clone();
    let chans = channels(running.addr, args.connections).await;
    let names: Vec<String> = (0..args.accounts).map(|i| format!("acct-{i:05}")).collect();
    let stream_names: Vec<String> = (0..args.streams).map(|i| format!("stream-{i}")).collect();
    let mut all = names.clone();
    all.extend(stream_names.iter().cloned());
    create_accounts(&chans, all).await;
    let applied_db = Applied::open(&data.path().join("ledger.db"));
    // Wait for the setup's own usage (the Admits charge nothing, but be sure).
    let applied0 = applied_db.count();
    eprintln!(
        "sustained: quotad on {}, {} accounts, {} streams, {} Reserve/Commit clients, \
         outbox_max {outbox_max}, sync_batch_max {sync_batch_max}, {:.0} s; load average {}",
        running.addr,
        names.len(),
        args.streams,
        args.clients,
        args.duration_s,
        loadavg()
    );
    let loadavg_before = loadavg();

    let duration = Duration::from_secs_f64(args.duration_s);
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(PairCounts::default());
    let names = Arc::new(names);
    let mut clients = JoinSet::new();
    for k in 0..args.clients {
        let client = QuotaClient::new(chans[k % chans.len()].clone());
        clients.spawn(pair_client(
            client,
            names.clone(),
            k,
            stop.clone(),
            counts.clone(),
        ));
    }
    let specs: Vec<drive::StreamSpec> = stream_names
        .iter()
        .enumerate()
        .map(|(s, account)| drive::StreamSpec {
            client: QuotaClient::new(chans[s % chans.len()].clone()),
            account: account.clone(),
            work_id: format!("sustained-{s}"),
        })
        .collect();
    let streams = (!specs.is_empty()).then(|| {
        let meta = drive::Meta {
            target: "quotad",
            scenario: "stream_usage",
            unit: "records",
        };
        tokio::spawn(drive::streams(
            meta,
            specs,
            args.window,
            REPORT_MS,
            Duration::ZERO,
            duration,
        ))
    });

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let t_s = started.elapsed().as_secs_f64();
        let outbox = engine.journal().outbox_len();
        let applied = applied_db.count().saturating_sub(applied0);
        let s = Sample {
            t_s,
            outbox,
            applied,
            produced: applied + outbox as u64,
            refused: counts.refused_backlog.load(Ordering::Relaxed),
        };
        if samples.len() % 10 == 0 {
            println!(
                "sustained: {t_s:>6.1}s outbox {outbox:>9} applied {applied:>10} refused {}",
                s.refused
            );
        }
        samples.push(s);
        if started.elapsed() >= duration {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let load_s = started.elapsed().as_secs_f64();
    let stream_result = match streams {
        Some(h) => Some(h.await.unwrap()),
        None => None,
    };
    while clients.join_next().await.is_some() {}
    let end = *samples.last().unwrap();

    // Drain: how long the ledger takes to apply what the load left.
    let drain_started = Instant::now();
    let drain = Duration::from_secs_f64(args.drain_s);
    while engine.journal().outbox_len() > 0 && drain_started.elapsed() < drain {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    let outbox_after_drain = engine.journal().outbox_len();

    let first = samples[0];
    let mid = samples[samples.len() / 2];
    let (produced_per_s, applied_per_s) = rate_between(&first, &end);
    let (p2, a2) = rate_between(&mid, &end);
    let pairs = counts.pairs.load(Ordering::Relaxed);
    let summary = Summary {
        duration_s: load_s,
        loadavg_before,
        loadavg_after: loadavg(),
        outbox_max,
        sync_batch_max,
        produced: end.produced,
        applied_during_load: end.applied,
        produced_per_s,
        applied_per_s,
        produced_per_s_second_half: p2,
        applied_per_s_second_half: a2,
        outbox_peak: samples.iter().map(|s| s.outbox).max().unwrap_or(0),
        outbox_at_end: end.outbox,
        drain_s,
        outbox_after_drain,
        pairs_per_s: pairs as f64 / load_s,
        stream_records_per_s: stream_result.as_ref().map_or(0.0, |r| r.ops_per_s),
        stream_errors: stream_result.as_ref().map_or(0, |r| r.errors),
        refused_for_backlog: counts.refused_backlog.load(Ordering::Relaxed),
        reserve_denied: counts.denied.load(Ordering::Relaxed),
        errors: counts.errors.load(Ordering::Relaxed),
    };
    report(&args, &summary, &samples, &results_dir);
    drop(running);
}

fn report(args: &Args, s: &Summary, samples: &[Sample], results_dir: &Path) {
    println!(
        "sustained: {:.0} s, {} streams + {} Reserve/Commit clients (load average {} -> {})",
        s.duration_s, args.streams, args.clients, s.loadavg_before, s.loadavg_after
    );
    println!(
        "  produced {:>9.0} records/s ({:.0} pairs/s, {:.0} stream records/s); ledger applied {:>9.0} records/s ({:.2}x)",
        s.produced_per_s,
        s.pairs_per_s,
        s.stream_records_per_s,
        s.applied_per_s,
        s.applied_per_s / s.produced_per_s.max(1e-9)
    );
    println!(
        "  second half: produced {:.0}/s, applied {:.0}/s ({:.2}x)",
        s.produced_per_s_second_half,
        s.applied_per_s_second_half,
        s.applied_per_s_second_half / s.produced_per_s_second_half.max(1e-9)
    );
    println!(
        "  outbox peak {} (outbox_max {}), at end {}, {} after {:.1} s of drain; refused for backlog {}; denied {}; errors {} (+{} stream)",
        s.outbox_peak,
        s.outbox_max,
        s.outbox_at_end,
        s.outbox_after_drain,
        s.drain_s,
        s.refused_for_backlog,
        s.reserve_denied,
        s.errors,
        s.stream_errors
    );
    let kept_up = s.refused_for_backlog == 0 && s.outbox_peak < s.outbox_max;
    println!(
        "  embedded ledger kept up: {}",
        if kept_up { "yes" } else { "no" }
    );
    let json = serde_json::json!({
        "bench": "sustained",
        "args": args,
        "summary": s,
        "samples": samples,
    });
    let json_path = args
        .json
        .clone()
        .unwrap_or_else(|| results_dir.join("sustained.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("wrote {}", json_path.display());
    let svg_path = args.svg.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results/outbox.svg")
    });
    let title = "quotad serve, embedded SQLite ledger: outbox under sustained load";
    let subtitle = format!(
        "{} stream(s) x {} in flight + {} Reserve/Commit clients, {:.0} s; produced {:.0}/s, applied {:.0}/s; refused for backlog {}",
        args.streams,
        args.window,
        args.clients,
        s.duration_s,
        s.produced_per_s,
        s.applied_per_s,
        s.refused_for_backlog
    );
    std::fs::write(
        &svg_path,
        plot::svg(samples, s.outbox_max, title, &subtitle),
    )
    .unwrap();
    println!("wrote {}", svg_path.display());
}
