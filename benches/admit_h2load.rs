//! Admit's fixed cost, seen from outside by h2load (Debian's nghttp2-client), beside the
//! project's own load client (`benches/load.rs`): the same h2load settings against
//!
//! - `admit`: quotad's `Quota/Admit` (in-process `server::start`, every layer on,
//!   authentication on: an owner token);
//! - `noop`: a no-op tonic server of the same service answering quotad's own Admit
//!   answer (`load/noop.rs`: no layers, no work), with the same request bytes;
//! - `health`: the same quotad's `grpc.health.v1.Health/Check` (its layers, no auth).
//!
//! Logging is set up as `quotad serve` does (info to stderr unless RUST_LOG says).
//! Runs alternate (admit, noop, health, admit, ...) `--rounds` times; the report is each
//! target's median req/s and the ratios of Admit to the others. Every call is checked to
//! have succeeded (quotad's own RPC counts). `--only admit` with a large `-n` is the run
//! to profile (perf record -p PID).
//!
//! `cargo bench --bench admit_h2load` (skipped with a message without h2load).

// Benches fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use clap::Parser;
use prost::Message;

use quotad::pb;
use quotad::server::{self, ServeConfig};

#[path = "load/noop.rs"]
mod noop;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Requests per run.
    #[arg(short = 'n', long, default_value_t = 60_000)]
    requests: u64,
    /// h2load clients (connections).
    #[arg(short = 'c', long, default_value_t = 4)]
    clients: u64,
    /// Streams in flight per connection.
    #[arg(short = 'm', long, default_value_t = 16)]
    streams: u64,
    /// h2load threads.
    #[arg(short = 't', long, default_value_t = 1)]
    threads: u64,
    /// Runs per target, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Run only this target (admit, noop or health).
    #[arg(long)]
    only: Option<String>,
    /// cargo bench passes --bench.
    #[arg(long, hide = true)]
    bench: bool,
}

const ADMIT: &str = "/quotad.v1.Quota/Admit";
const CHECK: &str = "/grpc.health.v1.Health/Check";

/// `msg` as one gRPC frame: uncompressed, its length, its bytes.
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// One h2load run: requests per second.
fn h2load(args: &Args, url: &str, body: &Path, token: Option<&str>) -> f64 {
    let mut cmd = Command::new("h2load");
    cmd.args(["-n", &args.requests.to_string()])
        .args(["-c", &args.clients.to_string()])
        .args(["-m", &args.streams.to_string()])
        .args(["-t", &args.threads.to_string()])
        .args(["-d", &body.display().to_string()])
        .args(["-H", "content-type: application/grpc"])
        .args(["-H", "te: trailers"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let done = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_default();
    assert!(
        done.contains(&format!("{} succeeded", args.requests)),
        "h2load: not every request succeeded:\n{text}"
    );
    text.lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.trim_end_matches(" req/s").parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no throughput in h2load's output:\n{text}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// quotad with one funded account "bench" and its owner's token.
async fn quotad(dir: &Path) -> (server::Running, String, pb::AdmitRequest, pb::AdmitResponse) {
    let running = server::start(
        ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("data")),
        Arc::new(quotad::clock::SystemClock),
    )
    .await
    .unwrap();
    let operator = quotad::auth::read_token_file(&dir.join("data/operator.token")).unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = |t: &str| quotad::auth::Bearer::new(Some(t)).unwrap();
    let mut admin = pb::admin_client::AdminClient::with_interceptor(ch.clone(), bearer(&operator));
    admin
        .create_account(pb::CreateAccountRequest {
            account_id: "bench".into(),
            balance: Some(pb::Money {
                currency: "CNY".into(),
                amount: "1000000000".into(),
            }),
        })
        .await
        .unwrap();
    let owner = admin
        .create_token(pb::CreateTokenRequest {
            principal: Some(pb::Principal {
                kind: pb::principal::Kind::Owner as i32,
                account_id: "bench".into(),
                name: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let req = pb::AdmitRequest {
        account_id: "bench".into(),
        resource: pb::Resource::GpuShared as i32,
        sku: "gpu.shared.a10".into(),
        quantity: 1_000,
    };
    let mut quota = pb::quota_client::QuotaClient::with_interceptor(ch, bearer(&owner));
    let answer = quota.admit(req.clone()).await.unwrap().into_inner();
    assert!(
        answer.admitted,
        "the bench's Admit must be admitted: {answer:?}"
    );
    (running, owner, req, answer)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // Logging as `quotad serve` sets it up (RUST_LOG, else info, to stderr), so that
    // naming the request for log lines costs here what it costs there.
    quotad::logging::init(quotad::config::LogFormat::Text);
    if Command::new("h2load").arg("--version").output().is_err() {
        println!("skipped: admit_h2load: no h2load (apt-get install nghttp2-client)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (running, owner, req, answer) = quotad(dir.path()).await;
    let noop = noop::start(noop::Answers {
        admit: answer,
        ..Default::default()
    })
    .await
    .unwrap();
    let admit_body = dir.path().join("admit.bin");
    std::fs::write(&admit_body, frame(&req.encode_to_vec())).unwrap();
    let check_body = dir.path().join("check.bin");
    let check = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    std::fs::write(&check_body, frame(&check.encode_to_vec())).unwrap();

    let url = |addr: SocketAddr, path: &str| format!("http://{addr}{path}");
    let targets: Vec<(&str, String, &Path, Option<&str>)> = vec![
        ("admit", url(running.addr, ADMIT), &admit_body, Some(&owner)),
        ("noop", url(noop.addr, ADMIT), &admit_body, None),
        ("health", url(running.addr, CHECK), &check_body, None),
    ];
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|t| args.only.as_deref().is_none_or(|o| o == t.0))
        .collect();
    println!(
        "admit_h2load: pid {}, h2load -n {} -c {} -m {} -t {}, {} rounds",
        std::process::id(),
        args.requests,
        args.clients,
        args.streams,
        args.threads,
        args.rounds
    );
    let metrics = running.metrics().clone();
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        for (i, (name, url, body, token)) in targets.iter().enumerate() {
            let before = (
                metrics.rpc_count(ADMIT, "OK"),
                metrics.rpc_count(CHECK, "OK"),
            );
            let (a, u, b, t) = (
                args.clone(),
                url.clone(),
                body.to_path_buf(),
                token.map(str::to_owned),
            );
            let r = tokio::task::spawn_blocking(move || h2load(&a, &u, &b, t.as_deref()))
                .await
                .unwrap();
            let after = (
                metrics.rpc_count(ADMIT, "OK"),
                metrics.rpc_count(CHECK, "OK"),
            );
            let served = match *name {
                "admit" => after.0 - before.0,
                "health" => after.1 - before.1,
                _ => args.requests,
            };
            assert_eq!(served, args.requests, "{name}: calls answered OK");
            println!("round {round} {name:>6}: {r:>9.0} req/s");
            rps[i].push(r);
        }
    }
    println!("\n| target | median req/s |\n|---|---:|");
    let medians: Vec<(&str, f64)> = targets
        .iter()
        .zip(rps)
        .map(|(t, v)| (t.0, median(v)))
        .collect();
    for (name, m) in &medians {
        println!("| {name} | {m:.0} |");
    }
    let of = |n: &str| medians.iter().find(|(m, _)| *m == n).map(|(_, v)| *v);
    if let (Some(a), Some(n)) = (of("admit"), of("noop")) {
        println!("\nAdmit / no-op handler: {:.2}", a / n);
    }
    if let (Some(a), Some(h)) = (of("admit"), of("health")) {
        println!("Admit / health Check: {:.2}", a / h);
    }
    running.shutdown().await.unwrap();
}
