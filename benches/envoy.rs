//! What quotad costs in front of a tool runtime: HTTP requests through the real Envoy to
//! an upstream, with and without quotad in the path, in the same run on the same machine.
//!
//! - "envoy only": Envoy proxies to the upstream; no ext_authz, no access log.
//! - "envoy + quotad": the bootstrap `quotad ctl envoy-config` prints: every request is a
//!   Check (a durable Reserve) and, once finished, an access log entry quotad commits (a
//!   durable Commit of the reported usage).
//! - "envoy + quotad (shadow)": the same with `--shadow`: Check is an Admit (nothing held,
//!   nothing written), the access log entry is only counted; what quotad costs without
//!   its durable writes.
//!
//! quotad runs in-process (`server::start`, embedded ledger, wall clock, default durability:
//! every Reserve and Commit is fsync'ed in a group commit before it is answered), the
//! upstream is the tests' (`tests/common/envoy.rs`; it answers at once and reports 1 ms of
//! usage), Envoy runs with `--concurrency 1`, and h2load (Debian's nghttp2-client) drives
//! HTTP/1.1 with `--clients` connections, one request in flight each, after a warm-up. The
//! two setups alternate `--rounds` times; the medians are reported: throughput, its ratio,
//! and the latency (p50 / p99 from h2load's per-request log) with what quotad adds.
//!
//! `cargo bench --bench envoy` (about 1 minute); `-- --help` for the flags. Writes
//! TARGET/bench-results/envoy.md.

// Benches fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use clap::Parser;
use quotad::envoy::bootstrap::{EnvoyConfigArgs, QuotadTls, render};
use quotad::pb;
use quotad::server::{self, ServeConfig};

#[path = "../tests/common/envoy.rs"]
mod envoy;

use envoy::{Envoy, Upstream, envoy_bin, free_port};

#[derive(Parser, Debug)]
#[command(about = "HTTP through Envoy with and without quotad in the path")]
struct Args {
    /// Requests measured per round and setup.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Requests sent before each measurement.
    #[arg(long, default_value_t = 2_000)]
    warmup: u64,
    /// HTTP/1.1 connections (one request in flight on each).
    #[arg(long, default_value_t = 16)]
    clients: u64,
    /// Alternating rounds of the two setups.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    ok: u64,
    failed: u64,
}

/// The same listener and route as the generated bootstrap, without quotad.
fn plain_bootstrap(listen: SocketAddr, up: SocketAddr) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: plain
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {lp} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: plain
          generate_request_id: true
          route_config:
            virtual_hosts:
            - name: tool
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                request_headers_to_remove: [authorization]
                route:
                  cluster: upstream
                  timeout: 300s
                  retry_policy:
                    retry_on: connect-failure,refused-stream,retriable-status-codes
                    retriable_status_codes: [503]
                    num_retries: 2
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {up} }} }} }}
"#,
        lp = listen.port(),
        up = up.port(),
    )
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One h2load run against `addr`; latency percentiles from its per-request log.
fn h2load(addr: SocketAddr, n: u64, clients: u64, token: &str, log: &Path) -> Run {
    // h2load appends to its log: each run starts from an empty one.
    let _ = std::fs::remove_file(log);
    let out = Command::new("h2load")
        .args([
            "--h1",
            "-n",
            &n.to_string(),
            "-c",
            &clients.to_string(),
            "-m",
            "1",
        ])
        .args(["-H", &format!("authorization: Bearer {token}")])
        .arg(format!("--log-file={}", log.display()))
        .arg(format!("http://{addr}/work?usage=1"))
        .output()
        .expect("h2load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|s| s.trim_end_matches(" req/s").parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no throughput in h2load's output:\n{text}"));
    let mut lat = Vec::new();
    let (mut ok, mut failed) = (0, 0);
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            continue;
        }
        if cols[1] == "200" {
            ok += 1;
            if let Ok(us) = cols[2].parse::<u64>() {
                lat.push(us);
            }
        } else {
            failed += 1;
        }
    }
    lat.sort_unstable();
    Run {
        rps,
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        ok,
        failed,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let Some(bin) = envoy_bin("envoy bench") else {
        return;
    };
    if Command::new("h2load").arg("--version").output().is_err() {
        println!("skipped: envoy bench: no h2load (apt-get install nghttp2-client)");
        return;
    }
    let base = target_dir();
    std::fs::create_dir_all(base.join("bench-results")).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let running = server::start(
        ServeConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("data")),
        Arc::new(quotad::clock::SystemClock),
    )
    .await
    .unwrap();
    let operator = quotad::auth::read_token_file(&dir.path().join("data/operator.token")).unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut admin =
        pb::admin_client::AdminClient::new(tonic::service::interceptor::InterceptedService::new(
            ch,
            quotad::auth::Bearer::new(Some(&operator)).unwrap(),
        ));
    let token = |kind: pb::principal::Kind, account: &str, name: &str| pb::CreateTokenRequest {
        principal: Some(pb::Principal {
            kind: kind as i32,
            account_id: account.into(),
            name: name.into(),
        }),
    };
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
        .create_token(token(pb::principal::Kind::Owner, "bench", ""))
        .await
        .unwrap()
        .into_inner()
        .token;
    let proxy = admin
        .create_token(token(pb::principal::Kind::Proxy, "", "bench"))
        .await
        .unwrap()
        .into_inner()
        .token;

    let up = Upstream::start().await;
    let plain_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let quotad_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = EnvoyConfigArgs {
        listen: quotad_at.to_string(),
        upstream: up.addr.to_string(),
        sku: "gpu.shared.a10".into(),
        quantity: 60_000,
        usage_header: "x-quotad-usage".into(),
        shadow: false,
        failure_mode_allow: false,
        route_timeout_ms: 300_000,
        name: "bench".into(),
        admin_addr: None,
    };
    let quotad_url = format!("http://{}", running.addr);
    let yaml = render(
        &cfg.bootstrap(&quotad_url, QuotadTls::default(), proxy.clone())
            .unwrap(),
    );
    let shadow_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let shadow_cfg = EnvoyConfigArgs {
        listen: shadow_at.to_string(),
        shadow: true,
        ..cfg.clone()
    };
    let shadow_yaml = render(
        &shadow_cfg
            .bootstrap(&quotad_url, QuotadTls::default(), proxy)
            .unwrap(),
    );
    let _plain = Envoy::start(
        &bin,
        dir.path(),
        "plain",
        &plain_bootstrap(plain_at, up.addr),
        plain_at,
    )
    .await;
    let _with = Envoy::start(&bin, dir.path(), "quotad", &yaml, quotad_at).await;
    let _shadow = Envoy::start(&bin, dir.path(), "shadow", &shadow_yaml, shadow_at).await;

    let setups = [
        ("envoy only", plain_at),
        ("envoy + quotad", quotad_at),
        ("envoy + quotad (shadow)", shadow_at),
    ];
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); setups.len()];
    let log = dir.path().join("h2load.log");
    for round in 0..args.rounds {
        for (i, (name, at)) in setups.iter().enumerate() {
            let _ = h2load(*at, args.warmup, args.clients, &owner, &log);
            let r = h2load(*at, args.requests, args.clients, &owner, &log);
            println!(
                "round {round} {name:>24}: {:>8.0} req/s  p50 {:>5} µs  p99 {:>6} µs  ({} ok, {} failed)",
                r.rps, r.p50_us, r.p99_us, r.ok, r.failed
            );
            results[i].push(r);
        }
    }
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let plain = &results[0];
    let (rps0, p50_0, p99_0) = (
        med(plain, |r| r.rps),
        med(plain, |r| r.p50_us as f64),
        med(plain, |r| r.p99_us as f64),
    );
    let mut md = String::from(
        "| setup | req/s | throughput vs envoy only | p50 µs | added p50 µs | p99 µs | added p99 µs | non-200 |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (i, (name, _)) in setups.iter().enumerate() {
        let runs = &results[i];
        let (rps, p50, p99) = (
            med(runs, |r| r.rps),
            med(runs, |r| r.p50_us as f64),
            med(runs, |r| r.p99_us as f64),
        );
        let failed: u64 = runs.iter().map(|r| r.failed).sum();
        md.push_str(&format!(
            "| {name} | {rps:.0} | {:.2}x | {p50:.0} | {:+.0} | {p99:.0} | {:+.0} | {failed} |\n",
            rps / rps0,
            p50 - p50_0,
            p99 - p99_0,
        ));
    }
    md.push_str(&format!(
        "\n{} requests per round and setup after {} of warm-up, {} HTTP/1.1 connections with one \
         request in flight each, {} alternating rounds; medians of the rounds.\n",
        args.requests, args.warmup, args.clients, args.rounds
    ));
    println!("\n{md}");
    let out = base.join("bench-results/envoy.md");
    std::fs::write(&out, &md).unwrap();
    println!("written to {}", out.display());
    drop((_plain, _with, _shadow));
    running.shutdown().await.unwrap();
}
