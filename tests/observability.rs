//! Observability over the real servers: /metrics is scraped after real RPCs and the named
//! series move by exactly what the calls did; request ids come back to the caller; the
//! Grafana dashboard only uses series quotad exports.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;
use quotad::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` over plain HTTP/1.1: (status line, body).
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

async fn scrape(h: &Harness) -> String {
    let addr = h.running.as_ref().unwrap().metrics_addr.unwrap();
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    body
}

/// The value of the series `series` (name and labels exactly as exported), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn v(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} not exported:\n{text}"))
}

const RESERVE_OK: &str =
    "quotad_rpc_duration_seconds_count{rpc=\"/quotad.v1.Quota/Reserve\",code=\"OK\"}";
const RESERVE_INF: &str =
    "quotad_rpc_duration_seconds_bucket{le=\"+Inf\",rpc=\"/quotad.v1.Quota/Reserve\",code=\"OK\"}";
const COMMIT_NOT_FOUND: &str =
    "quotad_rpc_duration_seconds_count{rpc=\"/quotad.v1.Quota/Commit\",code=\"NOT_FOUND\"}";
const ADMITTED: &str = "quotad_decisions_total{rpc=\"Reserve\",outcome=\"admitted\",reason=\"\"}";
const NO_ENTITLEMENT: &str =
    "quotad_decisions_total{rpc=\"Reserve\",outcome=\"denied\",reason=\"NO_ENTITLEMENT\"}";
const ADMIT_DENIED: &str =
    "quotad_decisions_total{rpc=\"Admit\",outcome=\"denied\",reason=\"INSUFFICIENT_FUNDS\"}";

#[tokio::test]
async fn metrics_move_with_the_calls_made() {
    let mut h =
        Harness::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let before = scrape(&h).await;
    assert_eq!(value(&before, RESERVE_OK), None);
    assert_eq!(v(&before, "quotad_holds"), 0.0);
    assert_eq!(v(&before, "quotad_requests_shed_total"), 0.0);

    h.create_account("acme", "0").await.unwrap();
    let denied = h
        .reserve("acme", "r-0", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(!denied.admitted);
    h.create_account("rich", "1").await.unwrap();
    for i in 0..3 {
        assert!(
            h.reserve("rich", &format!("r-{i}"), GPU_SHARED, A10, 1_000, 0)
                .await
                .unwrap()
                .admitted
        );
    }
    h.commit("r-0", 500).await.unwrap();
    assert!(h.commit("no-such", 1).await.is_err());
    let admit = h.admit("rich", GPU_SHARED, A10, 100_000_000).await.unwrap();
    assert!(!admit.admitted);

    let after = scrape(&h).await;
    assert_eq!(v(&after, RESERVE_OK), 4.0);
    assert_eq!(v(&after, RESERVE_INF), 4.0);
    assert_eq!(v(&after, COMMIT_NOT_FOUND), 1.0);
    assert_eq!(v(&after, ADMITTED), 3.0);
    assert_eq!(v(&after, NO_ENTITLEMENT), 1.0);
    assert_eq!(v(&after, ADMIT_DENIED), 1.0);
    // Three reservations: two open, one committed and kept for retries.
    assert_eq!(v(&after, "quotad_holds"), 3.0);
    assert_eq!(v(&after, "quotad_accounts_cached"), 2.0);
    assert!(v(&after, "quotad_leases") >= 1.0);
    assert_eq!(v(&after, "quotad_ledger_up"), 1.0);
    for gauge in [
        "quotad_usage_streams",
        "quotad_sessions_running",
        "quotad_watchers",
        "quotad_journal_backlog",
        "quotad_sync_lag_seconds",
        "quotad_events_sent_total",
        "quotad_events_dropped_total",
        "quotad_watch_events_lagged_total",
    ] {
        assert!(value(&after, gauge).is_some(), "{gauge} missing:\n{after}");
    }
    // A usage stream and a watcher show while open.
    let mut job = h.stream_usage("rich", "w-1").await.unwrap();
    job.report(1, 100).await.unwrap();
    let mut watch = h.watch("rich").await.unwrap();
    let open = scrape(&h).await;
    assert_eq!(v(&open, "quotad_usage_streams"), 1.0);
    assert_eq!(v(&open, "quotad_watchers"), 1.0);
    assert_eq!(
        v(
            &open,
            "quotad_decisions_total{rpc=\"StreamUsage\",outcome=\"admitted\",reason=\"\"}"
        ),
        1.0
    );
    job.close().await;
    drop(watch.message());
    drop(watch);

    let running = h.running.as_ref().unwrap();
    let (status, _) = http_get(running.metrics_addr.unwrap(), "/other").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");
    h.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let mut req = tonic::Request::new(pb::GetBalanceRequest {
        account_id: "acme".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "trace-42".parse().unwrap());
    let resp = h.quota.get_balance(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "trace-42");
    // Request and response metadata: the raw client, not the harness's helpers.
    let resp = h
        .quota
        .get_balance(pb::GetBalanceRequest {
            account_id: "acme".into(),
        })
        .await
        .unwrap();
    let made = resp
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(!made.is_empty() && made != "trace-42");
    // Errors carry it too.
    let mut req = tonic::Request::new(pb::GetBalanceRequest {
        account_id: "nobody".into(),
    });
    req.metadata_mut()
        .insert("x-request-id", "trace-43".parse().unwrap());
    let err = h.quota.get_balance(req).await.unwrap_err();
    assert_eq!(err.metadata().get("x-request-id").unwrap(), "trace-43");
    h.shutdown().await;
}

/// A ledger serving metrics, with one account and one sidecar "sidecar-a" that leased on it.
async fn ledger_with_a_sidecar() -> (quotad::server::RunningLedger, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quotad::server::LedgerServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        format!("sqlite:{}", dir.path().join("ledger.db").display()),
    );
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.operator_token_file = Some(dir.path().join("operator.token"));
    let running = quotad::server::start_ledger(cfg, quotad::clock::ManualClock::new(T0_MS))
        .await
        .unwrap();
    let mut c = Client::connect(running.addr, &operator_token(dir.path())).await;
    c.create_account("acme", "1").await.unwrap();
    let money = |s: &str| quotad::billing::Money::parse(s).unwrap();
    running
        .ledger
        .sync_as_ledger(quotad::ledger::SyncRequest {
            sidecar_id: "sidecar-a".into(),
            usage: vec![],
            leases: vec![quotad::ledger::api::LeaseRequest {
                account_id: "acme".into(),
                want: money("0.5"),
                need: money("0.1"),
                held: money("0"),
                release: false,
                give_back: false,
                seq: 1,
            }],
            accounts: vec![],
            reset_seq: 0,
        })
        .await
        .unwrap();
    (running, dir)
}

#[tokio::test]
async fn the_ledger_serves_metrics_too() {
    let (running, _dir) = ledger_with_a_sidecar().await;
    let addr = running.metrics_addr.unwrap();
    let (_, body) = http_get(addr, "/metrics").await;
    let series =
        "quotad_rpc_duration_seconds_count{rpc=\"/quotad.v1.Admin/CreateAccount\",code=\"OK\"}";
    assert_eq!(v(&body, series), 1.0);
    assert_eq!(v(&body, "quotad_ledger_db_up"), 1.0);
    assert_eq!(v(&body, "quotad_ledger_pool_connections_max"), 1.0);
    assert_eq!(
        v(
            &body,
            "quotad_ledger_sidecar_sync_age_seconds{sidecar=\"sidecar-a\"}"
        ),
        0.0
    );
    assert_eq!(
        v(
            &body,
            "quotad_ledger_sidecar_sync_lag_seconds{sidecar=\"sidecar-a\"}"
        ),
        0.0
    );
    // Leases are counted by a probe the first Sync of a sidecar wakes.
    let leases = "quotad_ledger_sidecar_leases{sidecar=\"sidecar-a\"}";
    eventually("the sidecar's lease counted", || async {
        value(&http_get(addr, "/metrics").await.1, leases) == Some(1.0)
    })
    .await;
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_readiness_of_a_sidecar() {
    let mut h =
        Harness::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let addr = h.running.as_ref().unwrap().metrics_addr.unwrap();
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ready\n")
    );
    let text = scrape(&h).await;
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "quotad_journal_bytes",
        "quotad_journal_fsync_seconds_count",
    ] {
        assert!(value(&text, series).is_some(), "{series} missing:\n{text}");
    }
    assert!(v(&text, "process_open_fds") >= 1.0);
    assert!(
        text.contains(&format!(
            "quotad_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    h.shutdown().await;
}

/// Every metric name the dashboard queries is one quotad exports (a renamed metric would
/// leave a panel silently empty).
#[tokio::test]
async fn the_grafana_dashboard_uses_exported_metrics() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/quotad.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let used: BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| {
            e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("quotad_") || w.starts_with("process_"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();

    let mut h =
        Harness::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    // A family without series yet (no decision made) is not exported at all.
    h.create_account("acme", "0").await.unwrap();
    h.reserve("acme", "r-0", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    let mut exported: BTreeSet<String> = BTreeSet::new();
    for l in scrape(&h).await.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            exported.insert(name.to_owned());
            // OpenMetrics names a family once; its samples add these.
            for suffix in ["_bucket", "_sum", "_count", "_total", "_info"] {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    // The ledger's own series come from a ledger process.
    let (ledger, _dir) = ledger_with_a_sidecar().await;
    let addr = ledger.metrics_addr.unwrap();
    eventually("the sidecar's lease counted", || async {
        http_get(addr, "/metrics")
            .await
            .1
            .contains("quotad_ledger_sidecar_leases")
    })
    .await;
    for l in http_get(addr, "/metrics").await.1.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap();
            exported.insert(name.to_owned());
        }
    }
    ledger.shutdown().await.unwrap();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "dashboard uses unexported {missing:?}");
    // And every exported family has a panel.
    let families: BTreeSet<String> = exported
        .iter()
        .filter(|n| {
            !["_bucket", "_sum", "_count", "_total", "_info"]
                .iter()
                .any(|s| n.ends_with(s))
        })
        .cloned()
        .collect();
    let shown = |f: &String| used.iter().any(|u| u.starts_with(f.as_str()));
    let unshown: Vec<_> = families.iter().filter(|f| !shown(f)).collect();
    assert!(unshown.is_empty(), "no panel for {unshown:?}");
}
