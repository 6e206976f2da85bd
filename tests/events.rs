//! Watch over real gRPC (R7): each threshold crossing once, expiry warnings at their
//! times, OVERDUE then RECOVERED, stops of jobs and sessions, exactly once across a
//! restart, many watchers, a slow watcher that cannot block admission, and `quotad ctl
//! watch`. An A10 GPU-second costs 0.0006, so 10,000,000 ms cost 6.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::time::Duration;

use common::*;
use quotad::pb;
use quotad::pb::account_event::Kind;
use tokio::sync::broadcast::error::RecvError;
use tonic::Code;

const WEEK_MS: i64 = 7 * DAY_MS;

/// The next event, or a panic if none comes within a generous bound.
async fn next(s: &mut tonic::Streaming<pb::AccountEvent>) -> pb::AccountEvent {
    match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
        Ok(Ok(Some(e))) => e,
        other => panic!("no event: {other:?}"),
    }
}

fn kind(e: &pb::AccountEvent) -> Kind {
    Kind::try_from(e.kind).unwrap()
}

/// Charges `cost_ms` of A10 time through a reservation of 1 s.
async fn spend(h: &mut Harness, account: &str, id: &str, cost_ms: i64) {
    let r = h
        .reserve(account, id, GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(r.admitted, "{id}: {r:?}");
    h.commit(id, cost_ms).await.unwrap();
}

#[tokio::test]
async fn each_threshold_fires_once_then_overdue_and_recovered() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    h.purchase("acme", "plan.compute.500", "p1", 0)
        .await
        .unwrap();
    let mut w1 = h.watch("acme").await.unwrap();
    let mut w2 = h.watch("acme").await.unwrap();
    spend(&mut h, "acme", "r1", 670_000_000).await; // 402: 98 of 500 left
    spend(&mut h, "acme", "r2", 10_000_000).await; // 6: 92 left
    spend(&mut h, "acme", "r3", 70_000_000).await; // 42: 50 left
    spend(&mut h, "acme", "r4", 1_000_000).await; // 0.6: 49.4 left
    spend(&mut h, "acme", "r5", 100_000_000).await; // 60: plan used up, balance -10.6
    h.top_up("acme", "10.6", "t1").await.unwrap();
    for w in [&mut w1, &mut w2] {
        let got: Vec<(Kind, String, String)> = {
            let mut v = Vec::new();
            for _ in 0..4 {
                let e = next(w).await;
                assert_eq!(e.account_id, "acme");
                v.push((kind(&e), e.grant_id.clone(), e.threshold.clone()));
            }
            v
        };
        assert_eq!(
            got,
            vec![
                (Kind::LowQuota, "p1/1".into(), "0.2".into()),
                (Kind::LowQuota, "p1/1".into(), "0.1".into()),
                (Kind::Overdue, String::new(), "0".into()),
                (Kind::Recovered, String::new(), "0".into()),
            ]
        );
    }
}

#[tokio::test]
async fn expiry_warnings_come_at_their_times_then_the_expiry() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    h.grant_credit("acme", "c1", COUPON, ANY, "50", T0_MS + 30 * DAY_MS)
        .await
        .unwrap();
    let mut w = h.watch("acme").await.unwrap();
    // Looking at the account is what checks it now (the sync tick does it otherwise).
    h.clock.set_ms(T0_MS + 30 * DAY_MS - WEEK_MS - 1);
    h.get_balance("acme").await.unwrap();
    h.clock.set_ms(T0_MS + 30 * DAY_MS - WEEK_MS);
    h.get_balance("acme").await.unwrap();
    let e = next(&mut w).await;
    assert_eq!((kind(&e), e.grant_id.as_str()), (Kind::GrantExpiring, "c1"));
    assert_eq!(e.threshold, WEEK_MS.to_string());
    // Nothing fired a millisecond earlier: this is the first event.
    assert_eq!(e.at_ms, T0_MS + 30 * DAY_MS - WEEK_MS);
    h.clock.set_ms(T0_MS + 29 * DAY_MS);
    h.get_balance("acme").await.unwrap();
    let e = next(&mut w).await;
    assert_eq!(kind(&e), Kind::GrantExpiring);
    assert_eq!(e.threshold, DAY_MS.to_string());
    assert_eq!(e.at_ms, T0_MS + 29 * DAY_MS);
    h.clock.set_ms(T0_MS + 30 * DAY_MS);
    h.get_balance("acme").await.unwrap();
    let e = next(&mut w).await;
    assert_eq!((kind(&e), e.grant_id.as_str()), (Kind::GrantExpired, "c1"));
    assert!(e.message.contains("50"), "{e:?}");
}

#[tokio::test]
async fn crossings_fire_exactly_once_across_a_restart() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0").await.unwrap();
    h.purchase("acme", "plan.compute.500", "p1", 0)
        .await
        .unwrap();
    let mut w = h.watch("acme").await.unwrap();
    spend(&mut h, "acme", "r1", 670_000_000).await; // 98 left
    assert_eq!(next(&mut w).await.threshold, "0.2");
    h.restart().await;
    let mut w = h.watch("acme").await.unwrap();
    spend(&mut h, "acme", "r2", 1_000_000).await; // still below 20%: nothing new
    spend(&mut h, "acme", "r3", 1_000_000_000).await; // overdue
    // The first event after the restart is the new crossing, not the old one again.
    let e = next(&mut w).await;
    assert_eq!(kind(&e), Kind::LowQuota);
    assert_eq!(e.threshold, "0.1");
    assert_eq!(kind(&next(&mut w).await), Kind::Overdue);
}

#[tokio::test]
async fn stops_of_jobs_and_sessions_are_events() {
    let mut h = Harness::start().await;
    h.create_account("acme", "10").await.unwrap();
    let mut w = h.watch("acme").await.unwrap();
    // A session idles out, another is stopped, and a job runs out of money.
    const SKU: &str = "gpu.exclusive.a10.8c30g";
    let s1 = h.start_session("acme", "s1", SKU, None, 0).await.unwrap();
    assert!(s1.admitted);
    h.clock.advance_ms(21 * 60_000);
    let beat = h.heartbeat("s1", true).await.unwrap();
    assert_eq!(beat.action, pb::Action::Stop as i32);
    let e = next(&mut w).await;
    assert_eq!(
        (kind(&e), e.grant_id.as_str()),
        (Kind::SessionIdleShutdown, "s1")
    );
    // 20 minutes of 9.9 an hour: 3.3 charged, 6.7 left; 16.7 after a top-up.
    h.top_up("acme", "10", "t1").await.unwrap();
    let s2 = h.start_session("acme", "s2", SKU, None, 0).await.unwrap();
    assert!(s2.admitted);
    let e = h.stop_session("s2").await.unwrap();
    assert_eq!(amount(&e.charged), "0");
    let e = next(&mut w).await;
    assert_eq!(
        (kind(&e), e.grant_id.as_str()),
        (Kind::SessionStopped, "s2")
    );
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    let d = job.report(1, 27_000_000).await.unwrap(); // 16.2 of 16.7: no next interval
    assert_eq!(d.action, pb::Action::Stop as i32);
    job.close().await;
    let e = next(&mut w).await;
    assert_eq!(
        (kind(&e), e.grant_id.as_str()),
        (Kind::WorkStopped, "job-1")
    );
}

#[tokio::test]
async fn a_slow_watcher_never_blocks_reserve_and_is_told_what_it_missed() {
    let mut h = Harness::start_with(|c| c.engine.watch.buffer = 4).await;
    h.create_account("acme", "1").await.unwrap();
    // A watcher that never reads.
    let (mut rx, _guard) = h.engine().watch("acme").await.unwrap();
    for i in 0..10 {
        spend(&mut h, "acme", &format!("r{i}"), 2_000_000).await; // 1.2: overdue
        h.top_up("acme", "1.2", &format!("t{i}")).await.unwrap(); // recovered
    }
    // Twenty events went by and admission never waited for the watcher.
    assert!(
        h.reserve("acme", "last", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    // Events leave once durable, in order: wait until the last one was sent.
    let engine = h.engine().clone();
    eventually("all events sent", || {
        let e = engine.clone();
        async move { e.events_sent() >= 20 }
    })
    .await;
    match rx.recv().await {
        Err(RecvError::Lagged(n)) => assert_eq!(n, 16),
        other => panic!("expected a lag notice, got {other:?}"),
    }
    let mut kept = Vec::new();
    while let Ok(e) = rx.try_recv() {
        kept.push(e.kind.name());
    }
    assert_eq!(kept, ["OVERDUE", "RECOVERED", "OVERDUE", "RECOVERED"]);
}

#[tokio::test]
async fn watch_limits_and_unknown_accounts() {
    let mut h = Harness::start_with(|c| c.engine.watch.watchers_per_account_max = 1).await;
    h.create_account("acme", "1").await.unwrap();
    let _w = h.watch("acme").await.unwrap();
    assert_status(
        "second watcher",
        h.watch("acme").await,
        Code::ResourceExhausted,
        &["watchers"],
    );
    assert_status(
        "unknown account",
        h.watch("nobody").await,
        Code::NotFound,
        &["nobody"],
    );
}

#[tokio::test]
async fn ctl_watch_prints_events_live() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let addr = h.running.as_ref().unwrap().addr;
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_quotad"))
        .args([
            "ctl",
            "--addr",
            &addr.to_string(),
            "--token-file",
            &h.dir
                .path()
                .join(quotad::auth::OPERATOR_TOKEN_FILE)
                .display()
                .to_string(),
            "watch",
            "acme",
            "--count",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let engine = h.engine().clone();
    eventually("ctl is watching", || {
        let e = engine.clone();
        async move { e.watchers() == 1 }
    })
    .await;
    spend(&mut h, "acme", "r1", 2_000_000).await;
    h.top_up("acme", "1", "t1").await.unwrap();
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let Ok(out) = waited else {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
        panic!("ctl watch did not exit after 2 events");
    };
    let out = out.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].contains("OVERDUE") && lines[1].contains("RECOVERED"),
        "{stdout}"
    );
}

#[tokio::test]
async fn shutdown_ends_open_watches_and_streams() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let mut w = h.watch("acme").await.unwrap();
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    job.report(1, 1_000).await.unwrap();
    // A graceful shutdown does not wait for clients that never hang up.
    h.shutdown().await;
    // Bounded, so a watch that stays open fails here instead of hanging the suite.
    let bound = Duration::from_secs(10);
    let watch_end = tokio::time::timeout(bound, w.message())
        .await
        .expect("watch ended");
    assert!(matches!(watch_end, Ok(None) | Err(_)));
    let end = tokio::time::timeout(bound, job.rx.message())
        .await
        .expect("stream ended");
    assert!(
        matches!(&end, Err(s) if s.code() == Code::Unavailable) || matches!(end, Ok(None)),
        "{end:?}"
    );
}
