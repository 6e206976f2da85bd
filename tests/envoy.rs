//! quotad behind the real Envoy (issue 15): an Envoy started from the bootstrap that
//! `quotad ctl envoy-config` prints, in front of a small HTTP upstream that reports usage
//! in `x-quotad-usage`. Covers the mapping end to end: charges of reported usage, each
//! once (Envoy's retries, a repeated x-request-id, a client that goes away), releases when
//! the upstream fails, 401 / 402 / 403 with the JSON body, shadow mode, Envoy's failure
//! mode with quotad stopped, and that the end user's token never reaches the upstream.
//!
//! Skipped (with a line saying so) where no Envoy binary is installed; CI installs it.

// Test helpers outside #[test] functions fail loudly too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;
#[path = "common/envoy.rs"]
mod envoy;

use std::net::SocketAddr;
use std::process::Command;

use common::*;
use envoy::{Envoy, Upstream, envoy_bin, free_port, get, send_raw};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use quotad::pb;
use tonic::transport::Channel;

const ESTIMATE_MS: u64 = 60_000;

/// The bootstrap `quotad ctl envoy-config` prints for the quotad at `quotad`, run as the
/// binary an operator runs.
fn envoy_config(
    quotad: SocketAddr,
    operator: &str,
    listen: SocketAddr,
    up: SocketAddr,
    extra: &[&str],
) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_quotad"))
        .args(["ctl", "--addr", &format!("http://{quotad}"), "envoy-config"])
        .args([
            "--listen",
            &listen.to_string(),
            "--upstream",
            &up.to_string(),
        ])
        .args(["--sku", A10, "--quantity", &ESTIMATE_MS.to_string()])
        .args(extra)
        .env("QUOTAD_TOKEN", operator)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A quotad, an upstream and one Envoy per entry of `flags` (the extra envoy-config flags).
struct Rig {
    h: Harness,
    up: Upstream,
    envoys: Vec<Envoy>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(what: &str, flags: &[&[&str]]) -> Option<Rig> {
        let bin = envoy_bin(what)?;
        let h = Harness::start().await;
        let up = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let quotad = h.running.as_ref().unwrap().addr;
        let mut envoys = Vec::new();
        for (i, extra) in flags.iter().enumerate() {
            let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let yaml = envoy_config(quotad, &h.token, listen, up.addr, extra);
            envoys.push(Envoy::start(&bin, dir.path(), &format!("envoy{i}"), &yaml, listen).await);
        }
        Some(Rig {
            h,
            up,
            envoys,
            _dir: dir,
        })
    }

    fn at(&self, i: usize) -> SocketAddr {
        self.envoys[i].addr
    }

    async fn owner(&mut self, account: &str, balance: &str) -> String {
        self.h.create_account(account, balance).await.unwrap();
        let made = self.h.create_token(OWNER, account, "").await.unwrap();
        made.token
    }

    /// Waits until nothing is held on `account` any more (every request settled) and
    /// returns its statement at the ledger.
    async fn settled(&mut self, account: &str) -> pb::Statement {
        let client = self.h.client.clone();
        eventually(&format!("{account}'s holds settled"), || {
            let mut c = client.clone();
            let account = account.to_owned();
            async move { amount(&c.get_balance(&account).await.unwrap().held) == "0" }
        })
        .await;
        // The statement is the ledger's: push what the sidecar charged first.
        self.h.engine().flush().await.unwrap();
        self.h.get_statement(account).await.unwrap()
    }

    /// The end user's token reached the upstream on no request.
    fn assert_no_token_upstream(&self) {
        let seen = self.up.seen();
        assert!(!seen.is_empty());
        for s in seen {
            assert!(
                !s.headers.contains_key("authorization"),
                "the token reached the upstream on {}: {:?}",
                s.path,
                s.headers
            );
        }
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// (usage id, quantity, cost) of each statement entry.
fn charges(st: &pb::Statement) -> Vec<(String, i64, String)> {
    st.entries
        .iter()
        .map(|e| (e.usage_id.clone(), e.quantity, amount(&e.cost)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funded_requests_pass_and_each_is_charged_once() {
    let Some(mut rig) = Rig::start("funded_requests_pass_and_each_is_charged_once", &[&[]]).await
    else {
        return;
    };
    let tok = rig.owner("acme", "100").await;
    let auth = bearer(&tok);
    let at = rig.at(0);

    // Reported usage is charged, per request, under its own reservation.
    let mut reservations = Vec::new();
    for (i, usage) in ["1500", "2500", "70000"].iter().enumerate() {
        let id = format!("req-{i}");
        let a = get(
            at,
            &format!("/work?usage={usage}"),
            &[("authorization", &auth), ("x-request-id", &id)],
        )
        .await;
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(
            a.headers.get("x-quotad-usage").map(String::as_str),
            Some(*usage)
        );
        let upstream: serde_json::Value = a.json();
        assert_eq!(upstream["x-quotad-account"], "acme");
        let r = upstream["x-quotad-reservation"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(r.starts_with("envoy:"), "{r}");
        reservations.push(r);
    }
    // The same x-request-id again: refused, never served on the first one's hold.
    let again = get(
        at,
        "/work?usage=1500",
        &[("authorization", &auth), ("x-request-id", "req-0")],
    )
    .await;
    assert_eq!(again.status, 409, "{again:?}");
    assert_eq!(again.json()["reason"], "REQUEST_ID_USED");
    // No report: the estimate. Upstream failure or reset: released.
    assert_eq!(
        get(at, "/plain", &[("authorization", &auth)]).await.status,
        200
    );
    assert_eq!(
        get(at, "/fail", &[("authorization", &auth)]).await.status,
        500
    );
    assert_eq!(
        get(at, "/reset", &[("authorization", &auth)]).await.status,
        503
    );
    // Envoy retries the 503: one request, one charge of what the last attempt reported.
    let flaky = get(
        at,
        "/flaky?usage=3000",
        &[("authorization", &auth), ("x-request-id", "flaky-1")],
    )
    .await;
    assert_eq!(flaky.status, 200, "{flaky:?}");
    let attempts = rig.up.seen().iter().filter(|s| s.path == "/flaky").count();
    assert_eq!(attempts, 2, "Envoy retried once");
    // A client that goes away while the upstream works: the estimate.
    let conn = send_raw(
        at,
        "/slow",
        &[("authorization", &auth), ("x-request-id", "gone-1")],
    )
    .await;
    assert_eq!(rig.up.slow_started.recv().await.as_deref(), Some("gone-1"));
    drop(conn);

    let st = rig.settled("acme").await;
    let mut got: Vec<(i64, String)> = charges(&st).into_iter().map(|(_, q, c)| (q, c)).collect();
    got.sort();
    let mut want: Vec<(i64, String)> = [
        (1_500, "0.0009"),
        (2_500, "0.0015"),
        (3_000, "0.0018"),
        (60_000, "0.036"),
        (60_000, "0.036"),
        (70_000, "0.042"),
    ]
    .iter()
    .map(|(q, c)| (*q, (*c).to_owned()))
    .collect();
    want.sort();
    assert_eq!(got, want, "{st:?}");
    let ids: std::collections::BTreeSet<_> =
        st.entries.iter().map(|e| e.usage_id.clone()).collect();
    assert_eq!(ids.len(), st.entries.len(), "one charge per request");
    for r in &reservations {
        assert!(ids.contains(r), "{r} charged");
    }
    let b = rig.h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "99.8818", "100 - 0.1182");
    rig.assert_no_token_upstream();
    // Counted once the settling task has its answer (just after the hold is gone).
    let metrics = rig.h.running.as_ref().unwrap().metrics().clone();
    eventually("settlements counted", || {
        let text = metrics.encode();
        async move {
            text.contains("quotad_envoy_settlements_total{outcome=\"committed\"} 6")
                && text.contains("quotad_envoy_settlements_total{outcome=\"released\"} 2")
                && text.contains("quotad_envoy_settlements_total{outcome=\"failed\"} 0")
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_401_402_403_with_a_json_body() {
    let Some(mut rig) = Rig::start("refusals_are_401_402_403_with_a_json_body", &[&[]]).await
    else {
        return;
    };
    let at = rig.at(0);
    // No token, or one quotad does not know: 401.
    for headers in [vec![], vec![("authorization", "Bearer qdt_nobody")]] {
        let a = get(at, "/work?usage=1", &headers).await;
        assert_eq!(a.status, 401, "{a:?}");
        assert_eq!(
            a.headers.get("content-type").map(String::as_str),
            Some("application/json")
        );
        let body = a.json();
        assert_eq!(body["reason"], "UNAUTHENTICATED");
        assert!(body["message"].as_str().unwrap().contains("token"));
    }
    // A sub-user needs `admit` on the account it names.
    let owner = bearer(&rig.owner("team", "10").await);
    let bob = rig.h.create_token(SUB_USER, "", "bob").await.unwrap().token;
    let bob = bearer(&bob);
    rig.h
        .grant_access("team", "bob", &["balance"])
        .await
        .unwrap();
    let a = get(
        at,
        "/work?usage=1",
        &[("authorization", &bob), ("x-quotad-account", "team")],
    )
    .await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.json()["reason"], "PERMISSION_DENIED");
    assert!(
        a.json()["message"]
            .as_str()
            .unwrap()
            .contains("owner must grant")
    );
    rig.h.grant_access("team", "bob", &["admit"]).await.unwrap();
    let a = get(
        at,
        "/work?usage=1000",
        &[("authorization", &bob), ("x-quotad-account", "team")],
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        get(at, "/work?usage=1", &[("authorization", &bob)])
            .await
            .status,
        400
    );
    // An owner cannot name another account.
    let a = get(
        at,
        "/work?usage=1",
        &[("authorization", &owner), ("x-quotad-account", "other")],
    )
    .await;
    assert_eq!(a.status, 403, "{a:?}");

    // An account that runs out: 402 INSUFFICIENT_FUNDS with what is left.
    let poor = bearer(&rig.owner("poor", "0.05").await);
    assert_eq!(
        get(at, "/work?usage=60000", &[("authorization", &poor)])
            .await
            .status,
        200
    );
    rig.settled("poor").await;
    let a = get(at, "/work?usage=1", &[("authorization", &poor)]).await;
    assert_eq!(a.status, 402, "{a:?}");
    let body = a.json();
    assert_eq!(body["reason"], "INSUFFICIENT_FUNDS");
    assert_eq!(body["available"], "0.014");
    assert_eq!(body["currency"], "CNY");
    // Nothing at all: NO_ENTITLEMENT. Overdue after an overrun: OVERDUE.
    let none = bearer(&rig.owner("none", "0").await);
    let a = get(at, "/work?usage=1", &[("authorization", &none)]).await;
    assert_eq!(
        (a.status, a.json()["reason"].clone()),
        (402, "NO_ENTITLEMENT".into())
    );
    let late = bearer(&rig.owner("late", "0.04").await);
    assert_eq!(
        get(at, "/work?usage=100000", &[("authorization", &late)])
            .await
            .status,
        200
    );
    rig.settled("late").await;
    assert_eq!(
        amount(&rig.h.get_balance("late").await.unwrap().balance),
        "-0.02"
    );
    let a = get(at, "/work?usage=1", &[("authorization", &late)]).await;
    assert_eq!(
        (a.status, a.json()["reason"].clone()),
        (402, "OVERDUE".into())
    );
    rig.assert_no_token_upstream();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_routes_never_deny_and_charge_nothing() {
    let Some(mut rig) = Rig::start(
        "shadow_routes_never_deny_and_charge_nothing",
        &[&["--shadow"]],
    )
    .await
    else {
        return;
    };
    let at = rig.at(0);
    let rich = bearer(&rig.owner("rich", "100").await);
    let broke = bearer(&rig.owner("broke", "0").await);
    for headers in [
        vec![],
        vec![("authorization", broke.as_str())],
        vec![("authorization", rich.as_str())],
    ] {
        let a = get(at, "/work?usage=5000", &headers).await;
        assert_eq!(a.status, 200, "shadow never denies: {a:?}");
        let upstream = a.json();
        assert!(upstream.get("x-quotad-reservation").is_none(), "{upstream}");
    }
    let running = rig.h.running.as_ref().unwrap();
    let metrics = running.metrics().clone();
    eventually("shadow requests reach the access log", || {
        let text = metrics.encode();
        async move { text.contains("quotad_envoy_settlements_total{outcome=\"shadow\"} 3") }
    })
    .await;
    let text = metrics.encode();
    for want in [
        "rpc=\"envoy.Check.shadow\",outcome=\"denied\",reason=\"UNAUTHENTICATED\"} 1",
        "rpc=\"envoy.Check.shadow\",outcome=\"denied\",reason=\"NO_ENTITLEMENT\"} 1",
        "rpc=\"envoy.Check.shadow\",outcome=\"admitted\",reason=\"\"} 1",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    for account in ["rich", "broke"] {
        assert!(
            rig.h
                .get_statement(account)
                .await
                .unwrap()
                .entries
                .is_empty()
        );
        assert_eq!(amount(&rig.h.get_balance(account).await.unwrap().held), "0");
    }
    assert_eq!(
        amount(&rig.h.get_balance("rich").await.unwrap().balance),
        "100"
    );
    rig.assert_no_token_upstream();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotad_stopped_means_envoys_failure_mode() {
    let Some(mut rig) = Rig::start(
        "quotad_stopped_means_envoys_failure_mode",
        &[&[], &["--failure-mode-allow"]],
    )
    .await
    else {
        return;
    };
    let tok = bearer(&rig.owner("acme", "10").await);
    for i in 0..2 {
        assert_eq!(
            get(rig.at(i), "/work?usage=1", &[("authorization", &tok)])
                .await
                .status,
            200
        );
    }
    rig.settled("acme").await;
    rig.h.shutdown().await;
    // Fail closed (the default): 503, nothing reaches the upstream.
    let before = rig.up.seen().len();
    let a = get(rig.at(0), "/work?usage=1", &[("authorization", &tok)]).await;
    assert_eq!(a.status, 503, "{a:?}");
    assert_eq!(rig.up.seen().len(), before);
    // failure_mode_allow: through, marked, uncharged, and still without the token.
    let a = get(rig.at(1), "/work?usage=1", &[("authorization", &tok)]).await;
    assert_eq!(a.status, 200, "{a:?}");
    let upstream = a.json();
    assert_eq!(
        upstream["x-envoy-auth-failure-mode-allowed"], "true",
        "{upstream}"
    );
    rig.assert_no_token_upstream();
}

/// Only a proxy token (or the operator) may call Check; a proxy token may call nothing else.
#[tokio::test]
async fn check_is_for_proxies_only() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let addr = h.running.as_ref().unwrap().addr;
    let owner = h.create_token(OWNER, "acme", "").await.unwrap().token;
    let proxy = h.create_token(PROXY, "", "edge").await.unwrap().token;
    let ch = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let check = |t: &str| {
        let mut c = AuthorizationClient::new(with_token(ch.clone(), t));
        async move {
            c.check(CheckRequest::default())
                .await
                .map(|r| r.into_inner())
        }
    };
    assert_status(
        "no token",
        check("").await,
        tonic::Code::Unauthenticated,
        &[],
    );
    assert_status(
        "owner",
        check(&owner).await,
        tonic::Code::PermissionDenied,
        &["proxies"],
    );
    // A proxy gets through to Check (which wants HTTP attributes).
    assert_status(
        "proxy",
        check(&proxy).await,
        tonic::Code::InvalidArgument,
        &["HTTP"],
    );
    let mut as_proxy = Client::connect(addr, &proxy).await;
    assert_status(
        "proxy on Quota",
        as_proxy.get_balance("acme").await,
        tonic::Code::PermissionDenied,
        &["proxy token"],
    );
    assert_status(
        "proxy on Admin",
        as_proxy.get_catalog().await,
        tonic::Code::PermissionDenied,
        &["proxy token"],
    );
}

/// A proxy token made at a `quotad ledger` is checked by its sidecars like any other: it
/// reaches Check there, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_token_made_at_the_ledger_works_at_its_sidecars() {
    use quotad::clock::ManualClock;
    use quotad::server::{self, LedgerServeConfig};
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let mut lcfg = LedgerServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        format!("sqlite:{}", dir.path().join("ledger.db").display()),
    );
    lcfg.operator_token_file = Some(dir.path().join("operator.token"));
    let ledger = server::start_ledger(lcfg, clock.clone()).await.unwrap();
    let operator = quotad::auth::read_token_file(&dir.path().join("operator.token")).unwrap();
    let mut admin = Client::connect(ledger.addr, &operator).await;
    admin.create_account("acme", "10").await.unwrap();
    let sidecar_token = admin.create_token(SIDECAR, "", "s1").await.unwrap().token;
    let proxy = admin.create_token(PROXY, "", "edge").await.unwrap().token;
    let mut cfg = config(&dir.path().join("sidecar"));
    cfg.ledger_url = Some(format!("http://{}", ledger.addr));
    cfg.ledger_token = Some(sidecar_token);
    let sidecar = server::start(cfg, clock.clone()).await.unwrap();
    let ch = Channel::from_shared(format!("http://{}", sidecar.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut check = AuthorizationClient::new(with_token(ch, &proxy));
    assert_status(
        "proxy at the sidecar",
        check.check(CheckRequest::default()).await,
        tonic::Code::InvalidArgument,
        &["HTTP"],
    );
    let mut as_proxy = Client::connect(sidecar.addr, &proxy).await;
    assert_status(
        "proxy on the sidecar's Quota",
        as_proxy.get_balance("acme").await,
        tonic::Code::PermissionDenied,
        &["proxy token"],
    );
    sidecar.shutdown().await.unwrap();
    ledger.shutdown().await.unwrap();
}
