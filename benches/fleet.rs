//! Fleet bench: how many sidecars one `quotad ledger` and one PostgreSQL carry.
//!
//! One real `quotad ledger` process (the release binary cargo built for this bench) on a
//! PostgreSQL database of its own, and N simulated sidecars in this process, each a task
//! with a connection of its own speaking the real Ledger protocol (`Ledger/Sync` over gRPC,
//! with the operator's token). Every `--sync-interval-ms` each sidecar sends what a busy
//! `quotad serve` sends: the usage acknowledged since its last sync
//! (`--records-per-account` records on each of its `--accounts-per-sidecar` accounts and on
//! one hot account every sidecar shares), lease renewals (each account's lease renewed every
//! `--renew-every` syncs, staggered) and a refresh of every account it serves. Accounts
//! are funded far past what the run spends, so leases are ordinary (not near the edge).
//!
//! For each N in `--sidecars` (after a warm-up): Sync latency p50/p99, syncs/s and usage
//! records/s applied against what was offered, the CPU of the ledger and of PostgreSQL
//! (from /proc: all `postgres` processes), PostgreSQL's transactions/s (pg_stat_database),
//! and the cost per sidecar and per record. A step is saturated when it applies less than
//! 95% of the offered syncs or its p99 exceeds the sync interval. Then, at
//! `--scale-out-sidecars` (default: the largest N), the same with 2 and 4 ledger processes
//! on the same database, sidecars spread over them: do ledger processes scale out?
//!
//! The load generator shares the machine (its CPU is reported too). Results: a markdown
//! table on stdout and in TARGET/bench-results/fleet.md, JSON in
//! TARGET/bench-results/fleet.json, and the plot `benches/results/fleet.svg` (`--svg`).
//! Needs DATABASE_URL; without it the bench says so and stops.

// Benches fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

#[path = "../tests/common/procs.rs"]
#[allow(dead_code)]
mod procs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;
use sqlx::Connection;
use tokio::sync::Mutex;
use tonic::transport::Endpoint;

use quotad::auth::{Bearer, BearerChannel};
use quotad::pb;
use quotad::pb::admin_client::AdminClient;
use quotad::pb::ledger_client::LedgerClient;

const A10: &str = "gpu.shared.a10";
/// GPU-ms per usage record (0.0006 CNY).
const RECORD_MS: u64 = 1_000;
const RECORD_COST: &str = "0.0006";
/// Every account's opening balance: far more than a run spends.
const BALANCE: &str = "1000000000";
/// What a renewal asks for beyond what is committed (the sidecars' default minimum).
const LEASE_WANT: &str = "1";
const HOT: &str = "fleet-hot";
/// Accounts created at once.
const SETUP_CONCURRENCY: usize = 64;

#[derive(Parser, Debug, Serialize, Clone)]
#[command(about = "How many sidecars one quotad ledger and one PostgreSQL carry")]
struct Args {
    /// Sidecar counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,2000")]
    sidecars: Vec<usize>,
    /// Ledger process counts for the scale-out step.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    ledgers: Vec<usize>,
    /// Sidecars in the scale-out step [default: the largest of --sidecars].
    #[arg(long)]
    scale_out_sidecars: Option<usize>,
    /// Accounts each sidecar serves (besides the hot account all share).
    #[arg(long, default_value_t = 10)]
    accounts_per_sidecar: usize,
    /// Usage records per account per sync.
    #[arg(long, default_value_t = 1)]
    records_per_account: usize,
    /// Usage records per sidecar per sync on the hot account every sidecar shares (0: no
    /// hot account).
    #[arg(long, default_value_t = 1)]
    hot_records: usize,
    /// Syncs between renewals of one account's lease (the default lease lives 30 s and is
    /// renewed 10 s before it ends: every 20 syncs at 1 s).
    #[arg(long, default_value_t = 20)]
    renew_every: u64,
    /// A sidecar's sync interval (quotad serve's default).
    #[arg(long, default_value_t = 1_000)]
    sync_interval_ms: u64,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Seconds of load before each measurement.
    #[arg(long, default_value_t = 3.0)]
    warmup_s: f64,
    /// PostgreSQL connections per ledger process.
    #[arg(long, default_value_t = 16)]
    pg_pool_max: u32,
    /// Where the plot goes.
    #[arg(long, default_value = "benches/results/fleet.svg")]
    svg: PathBuf,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

/// What one step measured.
#[derive(Debug, Clone, Serialize)]
struct Step {
    sidecars: usize,
    ledgers: usize,
    offered_syncs_per_s: f64,
    syncs_per_s: f64,
    offered_records_per_s: f64,
    records_per_s: f64,
    sync_p50_ms: f64,
    sync_p99_ms: f64,
    sync_max_ms: f64,
    errors: u64,
    /// CPU cores used on average over the step.
    ledger_cpu: f64,
    postgres_cpu: f64,
    bench_cpu: f64,
    pg_xacts_per_s: f64,
    /// (ledger + PostgreSQL) CPU-ms per second per sidecar, and CPU-µs per record.
    cpu_ms_per_sidecar_s: f64,
    /// None when the step applied no record.
    cpu_us_per_record: Option<f64>,
    saturated: bool,
}

/// Counters the sidecar tasks add to.
#[derive(Default)]
struct Tally {
    syncs: AtomicU64,
    records: AtomicU64,
    errors: AtomicU64,
    hist: Mutex<Option<Histogram<u64>>>,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = Args::parse();
    if !args.bench {
        println!("fleet: not run outside `cargo bench`");
        return;
    }
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("fleet: skipped: DATABASE_URL is not set (postgres://USER@HOST:PORT/DB)");
        return;
    };
    let n_max = args.sidecars.iter().copied().max().unwrap_or(0);
    let scale_n = args.scale_out_sidecars.unwrap_or(n_max);
    let accounts_needed = n_max.max(scale_n) * args.accounts_per_sidecar;
    let mut db = procs::TestDatabase::create(&url, "quotad_fleet_bench").await;
    let tokens = tempfile::tempdir().expect("temp dir");
    let token_file = tokens.path().join("operator.token");
    let mut ledgers = start_ledgers(&db.url, &token_file, 1, args.pg_pool_max).await;
    let token = quotad::auth::read_token_file(&token_file).expect("operator token");
    println!("fleet: creating {} accounts", accounts_needed + 1);
    create_accounts(ledgers[0].addr, &token, accounts_needed).await;

    let mut steps = Vec::new();
    for &n in &args.sidecars {
        let step = run_step(&args, &db, &ledgers, &token, n).await;
        println!("{}", line(&step));
        steps.push(step);
    }
    for &k in &args.ledgers {
        for l in &mut ledgers {
            l.terminate().await;
        }
        ledgers = start_ledgers(&db.url, &token_file, k, args.pg_pool_max).await;
        let step = run_step(&args, &db, &ledgers, &token, scale_n).await;
        println!("{}", line(&step));
        steps.push(step);
    }
    for l in &mut ledgers {
        l.terminate().await;
    }
    db.drop_now().await;
    report(&args, &steps);
}

/// `k` ledger processes on the database, each on a port of its own.
async fn start_ledgers(
    database_url: &str,
    token_file: &Path,
    k: usize,
    pg_pool_max: u32,
) -> Vec<procs::Proc> {
    let mut out = Vec::new();
    for _ in 0..k.max(1) {
        let extra = ["--pg-pool-max".to_owned(), pg_pool_max.to_string()];
        let p = procs::spawn_ledger(
            database_url,
            "127.0.0.1:0".parse().expect("address"),
            1,
            token_file,
            &extra,
        )
        .await;
        out.push(p);
    }
    out
}

fn bearer(ch: tonic::transport::Channel, token: &str) -> BearerChannel {
    tonic::service::interceptor::InterceptedService::new(
        ch,
        Bearer::new(Some(token)).expect("a token is a header value"),
    )
}

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the ledger")
}

fn account_id(sidecar: usize, k: usize, per: usize) -> String {
    format!("fleet-{}", sidecar * per + k)
}

async fn create_accounts(addr: std::net::SocketAddr, token: &str, n: usize) {
    let admin = AdminClient::new(bearer(channel(addr).await, token));
    let ids: Vec<String> = (0..n)
        .map(|i| format!("fleet-{i}"))
        .chain([HOT.to_owned()])
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for chunk in ids.chunks(n.div_ceil(SETUP_CONCURRENCY).max(1)) {
        let mut admin = admin.clone();
        let chunk = chunk.to_vec();
        set.spawn(async move {
            for id in chunk {
                admin
                    .create_account(pb::CreateAccountRequest {
                        account_id: id.clone(),
                        balance: money(BALANCE),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("create {id}: {s:?}"));
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("account setup task");
    }
}

fn money(amount: &str) -> Option<pb::Money> {
    Some(pb::Money {
        currency: "CNY".into(),
        amount: amount.into(),
    })
}

/// One simulated sidecar: a sync every interval until `stop`.
struct Sim {
    id: String,
    index: usize,
    accounts: Vec<String>,
    seq: u64,
    lease_seq: u64,
    syncs: u64,
    run: String,
}

impl Sim {
    fn next_request(&mut self, args: &Args) -> (pb::SyncRequest, u64) {
        self.syncs += 1;
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
        )
        .unwrap_or(0);
        let mut usage = Vec::new();
        let hot = HOT.to_owned();
        let shares: Vec<(&String, usize)> = self
            .accounts
            .iter()
            .map(|a| (a, args.records_per_account))
            .chain((args.hot_records > 0).then_some((&hot, args.hot_records)))
            .collect();
        for (account, records) in shares {
            for _ in 0..records {
                self.seq += 1;
                usage.push(pb::UsageRecord {
                    seq: self.seq,
                    usage_id: format!("{}-{}-{}", self.run, self.id, self.seq),
                    account_id: account.clone(),
                    resource: pb::Resource::GpuShared as i32,
                    sku: A10.into(),
                    quantity: RECORD_MS,
                    cost: money(RECORD_COST),
                    at_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
                });
            }
        }
        let all: Vec<String> = self
            .accounts
            .iter()
            .cloned()
            .chain((args.hot_records > 0).then(|| HOT.into()))
            .collect();
        let mut leases = Vec::new();
        for (k, account) in all.iter().enumerate() {
            let stagger = u64::try_from(k + self.index).unwrap_or(0);
            if self.syncs == 1 || (self.syncs + stagger).is_multiple_of(args.renew_every.max(1)) {
                self.lease_seq = self.lease_seq.max(now_ms.saturating_mul(1_000)) + 1;
                leases.push(pb::LeaseRequest {
                    account_id: account.clone(),
                    want: money(LEASE_WANT),
                    held: money("0"),
                    release: false,
                    seq: self.lease_seq,
                    need: money("0"),
                    give_back: false,
                });
            }
        }
        let records = u64::try_from(usage.len()).unwrap_or(0);
        let req = pb::SyncRequest {
            sidecar_id: self.id.clone(),
            usage,
            accounts: all
                .into_iter()
                .filter(|a| !leases.iter().any(|l| &l.account_id == a))
                .collect(),
            leases,
            reset_seq: 0,
        };
        (req, records)
    }
}

async fn sidecar_loop(
    mut sim: Sim,
    mut client: LedgerClient<BearerChannel>,
    args: Args,
    tally: Arc<Tally>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(args.sync_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut local = Histogram::<u64>::new_with_bounds(10, 120_000_000, 3).expect("histogram");
    // Sidecars do not start in step: spread the first syncs over one interval.
    let offset = (sim.index as u64 * 7919) % args.sync_interval_ms.max(1);
    tokio::time::sleep(Duration::from_millis(offset)).await;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (req, records) = sim.next_request(&args);
        let started = Instant::now();
        let r = client.sync(req).await;
        let took = started.elapsed();
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        match r {
            Ok(_) => {
                tally.syncs.fetch_add(1, Ordering::Relaxed);
                tally.records.fetch_add(records, Ordering::Relaxed);
                let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                local.saturating_record(us.max(10));
            }
            Err(_) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let mut h = tally.hist.lock().await;
    match h.as_mut() {
        Some(h) => {
            let _ = h.add(&local);
        }
        None => *h = Some(local),
    }
}

async fn run_step(
    args: &Args,
    db: &procs::TestDatabase,
    ledgers: &[procs::Proc],
    token: &str,
    n: usize,
) -> Step {
    let tally = Arc::new(Tally::default());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let run = format!("r{}-{}", ledgers.len(), n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let addr = ledgers[i % ledgers.len()].addr;
        let client = LedgerClient::new(bearer(channel(addr).await, token))
            .max_decoding_message_size(64 * 1024 * 1024);
        let sim = Sim {
            id: format!("{run}-sc-{i}"),
            index: i,
            accounts: (0..args.accounts_per_sidecar)
                .map(|k| account_id(i, k, args.accounts_per_sidecar))
                .collect(),
            seq: 0,
            lease_seq: 0,
            syncs: 0,
            run: run.clone(),
        };
        tasks.spawn(sidecar_loop(
            sim,
            client,
            args.clone(),
            tally.clone(),
            measuring.clone(),
            stop.clone(),
        ));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup_s)).await;
    let pids: Vec<u32> = ledgers.iter().map(|l| l.child.id()).collect();
    let before = Snapshot::take(&pids, db).await;
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs_f64(args.duration_s)).await;
    measuring.store(false, Ordering::Relaxed);
    let after = Snapshot::take(&pids, db).await;
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    summarize(args, n, ledgers.len(), &tally, &before, &after).await
}

/// CPU and transaction counters at one instant.
struct Snapshot {
    at: Instant,
    ledger_ticks: u64,
    postgres_ticks: u64,
    bench_ticks: u64,
    xacts: i64,
}

impl Snapshot {
    async fn take(ledger_pids: &[u32], db: &procs::TestDatabase) -> Snapshot {
        let xacts = match sqlx::PgConnection::connect(&db.url).await {
            Ok(mut c) => {
                let v: Result<(i64,), _> = sqlx::query_as(
                    "SELECT (xact_commit + xact_rollback)::int8 FROM pg_stat_database \
                     WHERE datname = current_database()",
                )
                .fetch_one(&mut c)
                .await;
                let _ = c.close().await;
                v.map(|r| r.0).unwrap_or(0)
            }
            Err(_) => 0,
        };
        Snapshot {
            at: Instant::now(),
            ledger_ticks: ledger_pids.iter().map(|p| proc_ticks(*p)).sum(),
            postgres_ticks: processes_named("postgres")
                .iter()
                .map(|p| proc_ticks(*p))
                .sum(),
            bench_ticks: proc_ticks(std::process::id()),
            xacts,
        }
    }
}

/// utime + stime of a process, in clock ticks (0 if it is gone).
fn proc_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

fn processes_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect()
}

/// Clock ticks per second (USER_HZ), 100 on Linux.
const TICKS_PER_S: f64 = 100.0;

async fn summarize(
    args: &Args,
    n: usize,
    ledgers: usize,
    tally: &Tally,
    before: &Snapshot,
    after: &Snapshot,
) -> Step {
    let secs = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let cores = |a: u64, b: u64| a.saturating_sub(b) as f64 / TICKS_PER_S / secs;
    let (p50, p99, max) = match tally.hist.lock().await.as_ref() {
        Some(h) if !h.is_empty() => (
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0,
        ),
        _ => (0.0, 0.0, 0.0),
    };
    let syncs = tally.syncs.load(Ordering::Relaxed) as f64 / secs;
    let records = tally.records.load(Ordering::Relaxed) as f64 / secs;
    let per_sync = (args.accounts_per_sidecar * args.records_per_account + args.hot_records) as f64;
    let offered_syncs = n as f64 * 1000.0 / args.sync_interval_ms.max(1) as f64;
    let ledger_cpu = cores(after.ledger_ticks, before.ledger_ticks);
    let postgres_cpu = cores(after.postgres_ticks, before.postgres_ticks);
    let cpu = ledger_cpu + postgres_cpu;
    Step {
        sidecars: n,
        ledgers,
        offered_syncs_per_s: round(offered_syncs, 1),
        syncs_per_s: round(syncs, 1),
        offered_records_per_s: round(offered_syncs * per_sync, 0),
        records_per_s: round(records, 0),
        sync_p50_ms: round(p50, 2),
        sync_p99_ms: round(p99, 2),
        sync_max_ms: round(max, 2),
        errors: tally.errors.load(Ordering::Relaxed),
        ledger_cpu: round(ledger_cpu, 2),
        postgres_cpu: round(postgres_cpu, 2),
        bench_cpu: round(cores(after.bench_ticks, before.bench_ticks), 2),
        pg_xacts_per_s: round((after.xacts - before.xacts) as f64 / secs, 0),
        cpu_ms_per_sidecar_s: round(cpu * 1000.0 / n.max(1) as f64, 3),
        cpu_us_per_record: (records > 0.0).then(|| round(cpu * 1e6 / records, 1)),
        saturated: syncs < 0.95 * offered_syncs || p99 > args.sync_interval_ms as f64,
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn line(s: &Step) -> String {
    format!(
        "fleet: {} sidecars, {} ledger(s): {:.0}/{:.0} syncs/s, {:.0}/{:.0} records/s, sync \
         p50 {:.1} ms p99 {:.1} ms, ledger {:.2} cores, postgres {:.2} cores, {:.0} xacts/s{}",
        s.sidecars,
        s.ledgers,
        s.syncs_per_s,
        s.offered_syncs_per_s,
        s.records_per_s,
        s.offered_records_per_s,
        s.sync_p50_ms,
        s.sync_p99_ms,
        s.ledger_cpu,
        s.postgres_cpu,
        s.pg_xacts_per_s,
        if s.saturated { " SATURATED" } else { "" }
    )
}

fn markdown(args: &Args, steps: &[Step]) -> String {
    let mut out = format!(
        "Each sidecar: {} accounts with {} record(s) each per sync, and {} record(s) per sync \
         on one hot account all sidecars share; a sync every {} ms, each lease renewed every \
         {} syncs; {} s measured after {} s of load; PostgreSQL pool {} per ledger.\n\n",
        args.accounts_per_sidecar,
        args.records_per_account,
        args.hot_records,
        args.sync_interval_ms,
        args.renew_every,
        args.duration_s,
        args.warmup_s,
        args.pg_pool_max
    );
    out.push_str(
        "| sidecars | ledgers | syncs/s (offered) | records/s (offered) | sync p50 | sync p99 | \
         ledger CPU | PostgreSQL CPU | PG xacts/s | CPU per sidecar | CPU per record | \
         bench CPU | saturated |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for s in steps {
        out.push_str(&format!(
            "| {} | {} | {:.0} ({:.0}) | {:.0} ({:.0}) | {:.1} ms | {:.1} ms | {:.2} cores | \
             {:.2} cores | {:.0} | {:.3} ms/s | {} | {:.2} cores | {} |\n",
            s.sidecars,
            s.ledgers,
            s.syncs_per_s,
            s.offered_syncs_per_s,
            s.records_per_s,
            s.offered_records_per_s,
            s.sync_p50_ms,
            s.sync_p99_ms,
            s.ledger_cpu,
            s.postgres_cpu,
            s.pg_xacts_per_s,
            s.cpu_ms_per_sidecar_s,
            s.cpu_us_per_record
                .map_or_else(|| "–".to_string(), |us| format!("{us:.1} µs")),
            s.bench_cpu,
            if s.saturated { "yes" } else { "no" }
        ));
    }
    out
}

fn report(args: &Args, steps: &[Step]) {
    let md = markdown(args, steps);
    println!("\n{md}");
    let dir = target_dir().join("bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let json = serde_json::json!({ "args": args, "steps": steps });
    let written = std::fs::write(dir.join("fleet.json"), json.to_string())
        .and_then(|()| std::fs::write(dir.join("fleet.md"), &md));
    if let Err(e) = written {
        eprintln!("fleet: results not written to {}: {e}", dir.display());
    }
    match plot(&args.svg, steps) {
        Ok(()) => println!("fleet: plot in {}", args.svg.display()),
        Err(e) => eprintln!("fleet: no plot: {e}"),
    }
}

/// CARGO_TARGET_DIR, else the directory this binary was built in (TARGET/release/deps).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// Two panels against the sidecar count (one ledger): Sync latency p50/p99 and records/s
/// applied against offered; the scale-out steps as points.
fn plot(path: &Path, steps: &[Step]) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let one: Vec<&Step> = steps.iter().filter(|s| s.ledgers == 1).collect();
    let more: Vec<&Step> = steps.iter().filter(|s| s.ledgers > 1).collect();
    let root = SVGBackend::new(path, (960, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(480);
    let n_max = steps.iter().map(|s| s.sidecars).max().unwrap_or(10).max(10) as f64 * 1.5;
    let lat_max = steps.iter().map(|s| s.sync_p99_ms).fold(1.0, f64::max) * 2.0;
    let mut lat = ChartBuilder::on(&left)
        .caption("Sync latency (one ledger)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d((5f64..n_max).log_scale(), (0.1f64..lat_max).log_scale())?;
    lat.configure_mesh()
        .x_desc("sidecars")
        .y_desc("ms")
        .draw()?;
    for (name, color, f) in [
        ("p50", BLUE, (|s: &Step| s.sync_p50_ms) as fn(&Step) -> f64),
        ("p99", RED, |s: &Step| s.sync_p99_ms),
    ] {
        lat.draw_series(LineSeries::new(
            one.iter().map(|s| (s.sidecars as f64, f(s).max(0.1))),
            color.stroke_width(2),
        ))?
        .label(name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    lat.draw_series(more.iter().map(|s| {
        Circle::new(
            (s.sidecars as f64, s.sync_p99_ms.max(0.1)),
            4,
            BLACK.filled(),
        )
    }))?
    .label("p99, 2 and 4 ledgers")
    .legend(|(x, y)| Circle::new((x + 8, y), 4, BLACK.filled()));
    lat.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    let rec_max = steps
        .iter()
        .map(|s| s.offered_records_per_s)
        .fold(10.0, f64::max)
        * 1.5;
    let mut rec = ChartBuilder::on(&right)
        .caption("Usage records/s (one ledger)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d((5f64..n_max).log_scale(), (10f64..rec_max).log_scale())?;
    rec.configure_mesh()
        .x_desc("sidecars")
        .y_desc("records/s")
        .draw()?;
    rec.draw_series(LineSeries::new(
        one.iter()
            .map(|s| (s.sidecars as f64, s.offered_records_per_s.max(10.0))),
        BLACK.stroke_width(1),
    ))?
    .label("offered")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLACK));
    rec.draw_series(LineSeries::new(
        one.iter()
            .map(|s| (s.sidecars as f64, s.records_per_s.max(10.0))),
        GREEN.stroke_width(2),
    ))?
    .label("applied")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREEN));
    rec.draw_series(more.iter().map(|s| {
        Circle::new(
            (s.sidecars as f64, s.records_per_s.max(10.0)),
            4,
            BLACK.filled(),
        )
    }))?
    .label("applied, 2 and 4 ledgers")
    .legend(|(x, y)| Circle::new((x + 8, y), 4, BLACK.filled()));
    rec.configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
