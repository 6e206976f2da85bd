//! Webhook delivery over real HTTP receivers on 127.0.0.1: each event once with a valid
//! Standard Webhooks signature (checked here with an HMAC written from its definition,
//! not the crate quotad signs with), a receiver down then back gets everything in order,
//! an always-failing receiver ends in the failed count while Reserve goes on, events
//! queued before a crash go out after the restart, and two sidecars on one ledger deliver
//! each event once. Time is the harness's manual clock: retries fall due when the test
//! moves it.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use common::procs;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use quotad::pb;
use quotad::server::{self, LedgerServeConfig, ServeConfig};
use quotad::webhooks::DeliveryConfig;
use sha2::{Digest, Sha256};

/// One message as a receiver got it.
#[derive(Debug, Clone)]
struct Got {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Got {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn kind(&self) -> String {
        self.json()["data"]["kind"].as_str().unwrap().to_owned()
    }
}

/// An HTTP receiver that answers `status` (0: hangs without answering) and keeps what it
/// acknowledged with a 2xx.
#[derive(Clone)]
struct Receiver {
    url: String,
    status: Arc<AtomicU16>,
    got: Arc<Mutex<Vec<Got>>>,
    attempts: Arc<AtomicU64>,
}

fn header(req: &hyper::Request<hyper::body::Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

impl Receiver {
    async fn start(status: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            url: format!("http://{}/hooks/quotad", listener.local_addr().unwrap()),
            status: Arc::new(AtomicU16::new(status)),
            got: Arc::default(),
            attempts: Arc::default(),
        };
        let me = r.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| me.clone().answer(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        r
    }

    async fn answer(
        self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let (id, timestamp, signature) = (
            header(&req, "webhook-id"),
            header(&req, "webhook-timestamp"),
            header(&req, "webhook-signature"),
        );
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let status = self.status.load(Ordering::Relaxed);
        if status == 0 {
            std::future::pending::<()>().await;
        }
        if (200..300).contains(&status) {
            self.got.lock().unwrap().push(Got {
                id,
                timestamp,
                signature,
                body: String::from_utf8(body.to_vec()).unwrap(),
            });
        }
        Ok(hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::new()))
            .unwrap())
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Got> {
        let me = self.clone();
        eventually(&format!("{n} messages received"), || {
            let me = me.clone();
            async move { me.got().len() >= n }
        })
        .await;
        self.got()
    }
}

/// HMAC-SHA256 from its definition (RFC 2104), independent of the `hmac` crate.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new()
        .chain_update(&ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Whether `g` carries a valid Standard Webhooks signature by `secret`.
fn verifies(secret: &str, g: &Got) -> bool {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let signed = format!("{}.{}.{}", g.id, g.timestamp, g.body);
    let expected = format!(
        "v1,{}",
        STANDARD.encode(hmac_sha256(&key, signed.as_bytes()))
    );
    g.signature.split(' ').any(|s| s == expected)
}

/// Delivery that looks at the outbox often and retries after 100-200 ms of the clock.
fn fast(cfg: &mut DeliveryConfig) {
    cfg.poll_ms = 20;
    cfg.backoff_min_ms = 200;
    cfg.backoff_max_ms = 400;
    cfg.timeout_ms = 2_000;
}

async fn create_hook(c: &mut Client, url: &str, kinds: &[&str]) -> (String, String) {
    let r = c
        .admin
        .create_webhook(pb::CreateWebhookRequest {
            url: url.to_owned(),
            event_kinds: kinds.iter().map(|k| k.to_string()).collect(),
            account_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    (r.webhook.unwrap().webhook_id, r.secret)
}

/// Charges `cost_ms` of A10 time (0.0006 a second) through a reservation of 1 s.
async fn spend(c: &mut Client, account: &str, id: &str, cost_ms: i64) {
    let r = c
        .reserve(account, id, GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{id}: {r:?}");
    c.commit(id, cost_ms).await.unwrap();
}

/// A plan of 500 crossing 20% and 10%, then overdue, then recovered: four events.
async fn four_events(c: &mut Client) {
    c.create_account("acme", "0").await.unwrap();
    c.purchase("acme", "plan.compute.500", "p1", 0)
        .await
        .unwrap();
    spend(c, "acme", "r1", 670_000_000).await; // 402: 98 of 500 left
    spend(c, "acme", "r2", 80_000_000).await; // 48: 50 left
    spend(c, "acme", "r3", 100_000_000).await; // 60: balance -10
    c.top_up("acme", "10", "t1").await.unwrap();
}

const FOUR: [&str; 4] = ["LOW_QUOTA", "LOW_QUOTA", "OVERDUE", "RECOVERED"];

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn each_event_is_delivered_once_with_a_valid_signature() {
    let rx = Receiver::start(200).await;
    let mut h = Harness::start_with(|c| fast(&mut c.webhooks)).await;
    let (_, secret) = create_hook(&mut h.client, &rx.url, &[]).await;
    four_events(&mut h.client).await;
    let got = rx.wait_for(4).await;
    // Nothing more comes: give the worker a few more rounds.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let got_after = rx.got();
    assert_eq!(got_after.len(), 4, "{got_after:?}");
    let kinds: Vec<String> = got.iter().map(Got::kind).collect();
    assert_eq!(kinds, FOUR);
    for g in &got {
        assert!(verifies(&secret, g), "bad signature: {g:?}");
        assert_eq!(g.json()["data"]["event_id"], g.id.as_str());
        assert_eq!(g.json()["data"]["account_id"], "acme");
        assert!(!verifies("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAA", g));
    }
    let mut ids: Vec<&str> = got.iter().map(|g| g.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    let text = h.running.as_ref().unwrap().metrics().encode();
    assert_eq!(metric(&text, "quotad_webhook_deliveries_total"), 4.0);
    println!("delivered once each: {} of 4 events", got.len());
}

#[tokio::test]
async fn a_receiver_down_then_back_gets_everything_in_order() {
    let rx = Receiver::start(503).await;
    let mut h = Harness::start_with(|c| fast(&mut c.webhooks)).await;
    let (id, secret) = create_hook(&mut h.client, &rx.url, &[]).await;
    four_events(&mut h.client).await;
    let (r, clock) = (rx.clone(), h.clock.clone());
    eventually("attempts while down", || {
        clock.advance_ms(500);
        let r = r.clone();
        async move { r.attempts.load(Ordering::Relaxed) >= 3 }
    })
    .await;
    // While it is down, only the head of the account's queue is tried.
    let list = h
        .admin
        .list_webhooks(pb::ListWebhooksRequest {})
        .await
        .unwrap()
        .into_inner();
    let w = list.webhooks.iter().find(|w| w.webhook_id == id).unwrap();
    assert_eq!(w.pending, 4);
    assert!(
        w.last_failure_at_ms > 0 && w.last_error.contains("503"),
        "{w:?}"
    );
    rx.status.store(200, Ordering::Relaxed);
    let clock = h.clock.clone();
    let r = rx.clone();
    eventually("all delivered after the receiver is back", || {
        clock.advance_ms(500);
        let r = r.clone();
        async move { r.got().len() >= 4 }
    })
    .await;
    let got = rx.got();
    let kinds: Vec<String> = got.iter().map(Got::kind).collect();
    assert_eq!(kinds, FOUR, "in order, each once");
    assert!(got.iter().all(|g| verifies(&secret, g)));
    let text = h.running.as_ref().unwrap().metrics().encode();
    let retried = metric(&text, "quotad_webhook_retries_total");
    assert!(retried >= 3.0, "{text}");
    println!(
        "receiver down then back: {} delivered in order after {} attempts ({retried} retries)",
        got.len(),
        rx.attempts.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn an_always_failing_receiver_ends_in_failed_and_reserve_goes_on() {
    // Hangs without answering: each attempt costs its timeout, off the admission path.
    let rx = Receiver::start(0).await;
    let mut h = Harness::start_with(|c| {
        fast(&mut c.webhooks);
        c.webhooks.timeout_ms = 100;
        c.webhooks.retry_ms = 1_000;
    })
    .await;
    create_hook(&mut h.client, &rx.url, &["LOW_QUOTA"]).await;
    four_events(&mut h.client).await;
    h.top_up("acme", "100", "t2").await.unwrap();
    for i in 0..50 {
        let r = h
            .reserve("acme", &format!("more{i}"), GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap();
        assert!(r.admitted, "{r:?}");
    }
    let clock = h.clock.clone();
    let running = h.running.as_ref().unwrap();
    eventually("both LOW_QUOTA messages failed", || {
        clock.advance_ms(300);
        let text = running.metrics().encode();
        async move {
            metric(&text, "quotad_webhook_failures_total") >= 2.0
                && metric(&text, "quotad_webhook_queue_depth") == 0.0
        }
    })
    .await;
    let text = running.metrics().encode();
    assert_eq!(metric(&text, "quotad_webhook_failures_total"), 2.0);
    assert_eq!(metric(&text, "quotad_webhook_deliveries_total"), 0.0);
    assert_eq!(metric(&text, "quotad_webhook_queue_depth"), 0.0);
    println!(
        "always failing: {} attempts, 2 failed, 0 delivered",
        rx.attempts.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn events_queued_before_a_crash_are_delivered_after_the_restart() {
    let rx = Receiver::start(503).await;
    let mut h = Harness::start_with(|c| fast(&mut c.webhooks)).await;
    let (_, secret) = create_hook(&mut h.client, &rx.url, &[]).await;
    four_events(&mut h.client).await;
    let r = rx.clone();
    eventually("tried while down", || {
        let r = r.clone();
        async move { r.attempts.load(Ordering::Relaxed) >= 1 }
    })
    .await;
    // A crash: no shutdown, nothing flushed or closed.
    drop(h.running.take());
    rx.status.store(200, Ordering::Relaxed);
    let mut cfg = config(h.dir.path());
    fast(&mut cfg.webhooks);
    // Past any claim the crashed process held mid-attempt: it lapses on the clock, after
    // twice `timeout_ms` (4 s here), and until then the message stays its own.
    h.clock.advance_ms(5_000);
    let running = server::start(cfg, h.clock.clone()).await.unwrap();
    // Time goes on while the restarted sidecar delivers (an attempt that fails under load
    // is retried after a backoff on this clock).
    let clock = h.clock.clone();
    let ticking = tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            clock.advance_ms(100);
        }
    });
    let got = rx.wait_for(4).await;
    ticking.abort();
    let kinds: Vec<String> = got.iter().map(Got::kind).collect();
    assert_eq!(kinds, FOUR);
    assert!(got.iter().all(|g| verifies(&secret, g)));
    println!("after a crash and restart: {} delivered", got.len());
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_on_one_ledger_deliver_each_event_once() {
    let rx = Receiver::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = quotad::clock::ManualClock::new(T0_MS);
    let mut lcfg = LedgerServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        format!("sqlite:{}", dir.path().join("ledger.db").display()),
    );
    lcfg.operator_token_file = Some(dir.path().join("op.token"));
    fast(&mut lcfg.webhooks);
    let ledger = server::start_ledger(lcfg, clock.clone()).await.unwrap();
    let token = quotad::auth::read_token_file(&dir.path().join("op.token")).unwrap();
    let mut admin = Client::connect(ledger.addr, &token).await;
    let (_, secret) = create_hook(&mut admin, &rx.url, &[]).await;
    admin.create_account("acme", "0").await.unwrap();
    admin
        .purchase("acme", "plan.compute.500", "p1", 0)
        .await
        .unwrap();
    let mut sidecars = Vec::new();
    for i in 0..2 {
        let mut cfg: ServeConfig = config(&dir.path().join(format!("sidecar-{i}")));
        cfg.ledger_url = Some(format!("http://{}", ledger.addr));
        cfg.ledger_token = Some(token.clone());
        cfg.sync_interval_ms = 3_600_000;
        let running = server::start(cfg, clock.clone()).await.unwrap();
        let client = Client::connect(running.addr, &token).await;
        sidecars.push((running, client));
    }
    // Both sidecars spend on the account; after each sync both see every crossing.
    for round in 0..5 {
        for (i, (running, client)) in sidecars.iter_mut().enumerate() {
            spend(client, "acme", &format!("r{round}-{i}"), 85_000_000).await; // 51
            running.engine().flush().await.unwrap();
            running.engine().sync_once(1_000).await.unwrap();
        }
    }
    for (running, client) in sidecars.iter_mut() {
        running.engine().sync_once(1_000).await.unwrap();
        client.get_balance("acme").await.unwrap();
    }
    let got = rx.wait_for(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let got_after = rx.got();
    let low: Vec<&Got> = got_after
        .iter()
        .filter(|g| g.kind() == "LOW_QUOTA")
        .collect();
    assert_eq!(low.len(), 2, "each crossing once: {got_after:?}");
    assert!(got.iter().all(|g| verifies(&secret, g)));
    println!(
        "two sidecars, one ledger: {} LOW_QUOTA messages for 2 crossings",
        low.len()
    );
    for (running, _) in sidecars {
        running.shutdown().await.unwrap();
    }
    ledger.shutdown().await.unwrap();
}

/// `quotad ctl` with the harness's operator token.
fn ctl(h: &Harness, args: &[&str]) -> String {
    let token_file = h.dir.path().join(quotad::auth::OPERATOR_TOKEN_FILE);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quotad"))
        .args(["ctl", "--addr", &h.addr().to_string(), "--token-file"])
        .arg(&token_file)
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "ctl {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_creates_lists_tests_and_deletes_webhooks() {
    let rx = Receiver::start(200).await;
    let h = Harness::start().await;
    let created = ctl(
        &h,
        &[
            "webhook",
            "create",
            &rx.url,
            "--events",
            "low_quota,OVERDUE",
            "--accounts",
            "acme",
        ],
    );
    assert!(created.contains("whsec_"), "{created}");
    let id = created
        .lines()
        .find_map(|l| l.strip_prefix("webhook id"))
        .unwrap()
        .trim()
        .to_owned();
    let secret = created
        .lines()
        .find_map(|l| l.strip_prefix("secret"))
        .unwrap()
        .trim()
        .to_owned();
    let tested = ctl(&h, &["webhook", "test", &id]);
    assert!(tested.contains("http status  200"), "{tested}");
    let got = rx.wait_for(1).await;
    assert!(verifies(&secret, &got[0]));
    assert_eq!(got[0].kind(), "WEBHOOK_TEST");
    let list = ctl(&h, &["webhook", "list"]);
    assert!(
        list.contains(&id) && list.contains("LOW_QUOTA,OVERDUE") && list.contains("acme"),
        "{list}"
    );
    let deleted = ctl(&h, &["webhook", "delete", &id]);
    assert!(deleted.contains("deleted"), "{deleted}");
    let list = ctl(&h, &["webhook", "list"]);
    assert!(!list.contains(&id), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_events_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    let rx = Receiver::start(503).await;
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_quotad"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args([
                "--webhook-backoff-min-ms",
                "100",
                "--webhook-backoff-max-ms",
                "200",
            ])
            .args(["--webhook-timeout-ms", "1000"])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr: std::net::SocketAddr = line
            .trim()
            .strip_prefix("quotad listening on ")
            .unwrap()
            .parse()
            .unwrap();
        (child, addr)
    };
    let (mut child, addr) = spawn();
    let token = quotad::auth::read_token_file(&dir.path().join("operator.token")).unwrap();
    let mut c = Client::connect(addr, &token).await;
    let (_, secret) = create_hook(&mut c, &rx.url, &[]).await;
    four_events(&mut c).await;
    let r = rx.clone();
    eventually("tried while down", || {
        let r = r.clone();
        async move { r.attempts.load(Ordering::Relaxed) >= 2 }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(rx.got().is_empty());
    rx.status.store(200, Ordering::Relaxed);
    let (mut child, _) = spawn();
    let got = rx.wait_for(4).await;
    let kinds: Vec<String> = got.iter().map(Got::kind).collect();
    assert_eq!(kinds, FOUR);
    assert!(got.iter().all(|g| verifies(&secret, g)));
    println!(
        "kill -9 with 4 undelivered: {} delivered after the restart",
        got.len()
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

mod outbox {
    //! The outbox as both stores keep it: the same calls, the same answers.
    use std::sync::Arc;

    use quotad::ledger::postgres::PgStore;
    use quotad::ledger::sqlite::SqliteStore;
    use quotad::ledger::store::webhooks::{Attempt, QueuedEvent, WebhookRow, WebhookStore};
    use quotad::ledger::store::{LedgerStore, StoreError};

    use super::common::procs::{TestDatabase, database_url};

    fn hook(id: &str, kinds: &[&str], accounts: &[&str]) -> WebhookRow {
        WebhookRow {
            webhook_id: id.into(),
            url: "http://127.0.0.1:9/".into(),
            event_kinds: kinds.iter().map(|s| s.to_string()).collect(),
            account_ids: accounts.iter().map(|s| s.to_string()).collect(),
            secret: "whsec_AAAA".into(),
            created_at_ms: 1,
            last_success_at_ms: 0,
            last_failure_at_ms: 0,
            last_error: String::new(),
        }
    }

    fn ev(id: &str, account: &str, kind: &str, at_ms: i64, ordinal: i64) -> QueuedEvent {
        QueuedEvent {
            event_id: id.into(),
            account_id: account.into(),
            kind: kind.into(),
            payload: format!("{{\"id\":\"{id}\"}}"),
            at_ms,
            ordinal,
        }
    }

    async fn heads(s: &dyn WebhookStore, now_ms: i64) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = s
            .due_deliveries(now_ms, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|d| (d.webhook_id, d.event_id))
            .collect();
        v.sort();
        v
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    async fn the_outbox(store: Arc<dyn LedgerStore>) {
        let s: &dyn WebhookStore = &*store;
        s.insert_webhook(hook("A", &[], &[])).await.unwrap();
        s.insert_webhook(hook("B", &["LOW_QUOTA"], &["acme"]))
            .await
            .unwrap();
        assert!(matches!(
            s.insert_webhook(hook("A", &[], &[])).await,
            Err(StoreError::Duplicate { .. })
        ));
        let events = vec![
            ev("e1", "acme", "OVERDUE", 10, 1),
            ev("e2", "acme", "LOW_QUOTA", 10, 2),
            ev("e3", "beta", "LOW_QUOTA", 5, 3),
        ];
        assert_eq!(s.enqueue_events(events, 7).await.unwrap(), 4);
        assert_eq!(
            s.enqueue_events(vec![ev("e1", "acme", "OVERDUE", 10, 1)], 7)
                .await
                .unwrap(),
            0
        );
        // Heads only: A's acme queue starts with e1, so e2 waits behind it.
        assert_eq!(
            heads(s, 100).await,
            pairs(&[("A", "e1"), ("A", "e3"), ("B", "e2")])
        );
        assert!(s.claim_delivery("A", "e1", "w1", 100, 200).await.unwrap());
        assert!(!s.claim_delivery("A", "e1", "w2", 100, 200).await.unwrap());
        assert_eq!(heads(s, 100).await, pairs(&[("A", "e3"), ("B", "e2")]));
        // Only the claim's holder records the outcome.
        let done = Attempt::Delivered { at_ms: 150 };
        assert!(
            !s.finish_delivery("A", "e1", "w2", done.clone())
                .await
                .unwrap()
        );
        assert!(s.finish_delivery("A", "e1", "w1", done).await.unwrap());
        assert_eq!(
            heads(s, 100).await,
            pairs(&[("A", "e2"), ("A", "e3"), ("B", "e2")])
        );
        assert!(s.claim_delivery("A", "e2", "w1", 160, 300).await.unwrap());
        let retry = Attempt::Retry {
            at_ms: 170,
            next_at_ms: 500,
            error: "HTTP 503".into(),
        };
        assert!(s.finish_delivery("A", "e2", "w1", retry).await.unwrap());
        assert_eq!(heads(s, 499).await, pairs(&[("A", "e3"), ("B", "e2")]));
        assert_eq!(
            heads(s, 500).await,
            pairs(&[("A", "e2"), ("A", "e3"), ("B", "e2")])
        );
        let q = s.webhook_queues().await.unwrap();
        let q: Vec<(String, u64, i64)> = q
            .into_iter()
            .map(|q| (q.webhook_id, q.pending, q.oldest_at_ms))
            .collect();
        assert_eq!(q, vec![("A".into(), 2, 5), ("B".into(), 1, 10)]);
        let hooks = s.webhooks(10).await.unwrap();
        assert_eq!(hooks[0].last_success_at_ms, 150);
        assert_eq!(
            (hooks[0].last_failure_at_ms, hooks[0].last_error.as_str()),
            (170, "HTTP 503")
        );
        assert_eq!(hooks[1].event_kinds, vec!["LOW_QUOTA".to_string()]);
        assert_eq!(hooks[1].account_ids, vec!["acme".to_string()]);
        assert!(s.claim_delivery("B", "e2", "w1", 600, 700).await.unwrap());
        let failed = Attempt::Failed {
            at_ms: 600,
            error: "gone".into(),
        };
        assert!(s.finish_delivery("B", "e2", "w1", failed).await.unwrap());
        assert!(s.delete_webhook("B").await.unwrap());
        assert!(!s.delete_webhook("B").await.unwrap());
        assert_eq!(s.webhooks(10).await.unwrap().len(), 1);
        // e1 (delivered) goes, with its event; pending ones stay.
        assert_eq!(s.prune_webhooks(1_000).await.unwrap(), 2);
        assert_eq!(heads(s, 500).await, pairs(&[("A", "e2"), ("A", "e3")]));
        assert_eq!(
            s.enqueue_events(vec![ev("e1", "acme", "OVERDUE", 10, 1)], 7)
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("ledger.db")).unwrap());
        the_outbox(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_postgresql() {
        let Some(url) = database_url("webhook outbox on PostgreSQL") else {
            return;
        };
        let mut db = TestDatabase::create(&url, "quotad_webhooks").await;
        let store = Arc::new(PgStore::connect(&db.url, 2).await.unwrap());
        the_outbox(store.clone()).await;
        store.close().await;
        db.drop_now().await;
    }
}

/// Reserve latency with a dead webhook endpoint against none, in one run (for the
/// README's note): the same workload in alternating blocks, events crossing all along,
/// with and without an endpoint that accepts connections and never answers.
/// `cargo test --test webhooks admission_latency -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn admission_latency_with_a_dead_endpoint_against_none() {
    let dead = Receiver::start(0).await;
    let mut h = Harness::start().await;
    h.create_account("bench", "1000000").await.unwrap();
    let mut none = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    let mut with_dead = hdrhistogram::Histogram::<u64>::new(3).unwrap();
    for block in 0..6 {
        let endpoint = block % 2 == 1;
        let hook = if endpoint {
            Some(create_hook(&mut h.client, &dead.url, &[]).await.0)
        } else {
            None
        };
        for i in 0..500 {
            if i % 20 == 0 {
                // A fresh account crossing LOW_QUOTA twice: events keep coming.
                let a = format!("b{block}-{i}");
                h.create_account(&a, "0").await.unwrap();
                h.purchase(&a, "plan.compute.500", &format!("{a}-p"), 0)
                    .await
                    .unwrap();
                spend(&mut h.client, &a, &format!("{a}-r"), 760_000_000).await;
            }
            let id = format!("b{block}-{i}-lat");
            let t = std::time::Instant::now();
            let r = h
                .reserve("bench", &id, GPU_SHARED, A10, 1_000, 0)
                .await
                .unwrap();
            let us = t.elapsed().as_micros() as u64;
            if endpoint { &mut with_dead } else { &mut none }
                .record(us)
                .unwrap();
            assert!(r.admitted);
            h.release(&id).await.unwrap();
        }
        if let Some(id) = hook {
            let text = h.running.as_ref().unwrap().metrics().encode();
            println!(
                "block {block}: dead endpoint queue depth {}",
                metric(&text, "quotad_webhook_queue_depth")
            );
            h.admin
                .delete_webhook(pb::DeleteWebhookRequest { webhook_id: id })
                .await
                .unwrap();
        }
    }
    for (name, hist) in [("none", &none), ("dead endpoint", &with_dead)] {
        println!(
            "{name}: Reserve p50 {} us, p99 {} us, max {} us over {}",
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.max(),
            hist.len()
        );
    }
    println!(
        "dead endpoint: {} connections attempted",
        dead.attempts.load(Ordering::Relaxed)
    );
}

/// The crossing is journaled with its events: a sidecar killed while its ledger is away
/// (so nothing reached the outbox) queues them at its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_journaled_while_the_ledger_is_away_survive_kill_9_of_the_sidecar() {
    let rx = Receiver::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("op.token");
    let ledger_cfg = |listen: std::net::SocketAddr| {
        let mut c = LedgerServeConfig::new(
            listen,
            format!("sqlite:{}", dir.path().join("ledger.db").display()),
        );
        c.operator_token_file = Some(token_file.clone());
        fast(&mut c.webhooks);
        c
    };
    let clock: quotad::clock::SharedClock = Arc::new(quotad::clock::SystemClock);
    let ledger = server::start_ledger(ledger_cfg("127.0.0.1:0".parse().unwrap()), clock.clone())
        .await
        .unwrap();
    let addr = ledger.addr;
    let token = quotad::auth::read_token_file(&token_file).unwrap();
    let mut admin = Client::connect(addr, &token).await;
    let (_, secret) = create_hook(&mut admin, &rx.url, &[]).await;
    admin.create_account("acme", "0").await.unwrap();
    admin
        .purchase("acme", "plan.compute.500", "p1", 0)
        .await
        .unwrap();
    let data = dir.path().join("sidecar");
    let mut sidecar = procs::spawn_sidecar(addr, &data, "sidecar", &token_file, &[]).await;
    let mut c = Client::connect(sidecar.addr, &token).await;
    spend(&mut c, "acme", "r0", 1_000).await; // a lease
    ledger.shutdown().await.unwrap();
    spend(&mut c, "acme", "r1", 670_000_000).await; // 402: LOW_QUOTA at 20%
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    sidecar.kill9();
    assert!(rx.got().is_empty());
    let ledger = server::start_ledger(ledger_cfg(addr), clock).await.unwrap();
    let mut sidecar = procs::spawn_sidecar(addr, &data, "sidecar", &token_file, &[]).await;
    let got = rx.wait_for(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rx.got().len(), 1, "{:?}", rx.got());
    assert_eq!(got[0].kind(), "LOW_QUOTA");
    assert_eq!(got[0].json()["data"]["threshold"], "0.2");
    assert!(verifies(&secret, &got[0]));
    println!(
        "journaled while the ledger was away, sidecar killed: 1 of 1 delivered after restarts"
    );
    sidecar.kill9();
    ledger.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_the_operator_manages_webhooks_and_bad_ones_are_refused() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    let owner = h.create_token(OWNER, "acme", "").await.unwrap().token;
    let mut o = Client::connect(h.addr(), &owner).await;
    let r = o
        .admin
        .create_webhook(pb::CreateWebhookRequest {
            url: "http://127.0.0.1:9/".into(),
            ..Default::default()
        })
        .await;
    assert_status("owner", r, tonic::Code::PermissionDenied, &["operator"]);
    let r = o.admin.list_webhooks(pb::ListWebhooksRequest {}).await;
    assert_status("owner", r, tonic::Code::PermissionDenied, &["operator"]);
    for (url, kinds, want) in [
        ("https://x/", vec![], "http://HOST"),
        (
            "http://x/",
            vec!["LOW".to_string()],
            "unknown event kind \"LOW\"",
        ),
    ] {
        let r = h
            .admin
            .create_webhook(pb::CreateWebhookRequest {
                url: url.into(),
                event_kinds: kinds,
                account_ids: vec![],
            })
            .await;
        assert_status(url, r, tonic::Code::InvalidArgument, &[want]);
    }
    let r = h
        .admin
        .test_webhook(pb::TestWebhookRequest {
            webhook_id: "wh_nope".into(),
        })
        .await;
    assert_status("unknown", r, tonic::Code::NotFound, &["wh_nope"]);
}
