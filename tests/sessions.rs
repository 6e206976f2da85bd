//! Exclusive sessions over real gRPC (R1, R8, R10): hourly pre-authorisation and
//! settlement, the idle auto-shutdown, sessions without it, restarts, and bad input.
//! gpu.exclusive.a10.8c30g costs 9.9 an hour. Time is the harness's manual clock.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use common::*;
use quotad::pb;
use tonic::Code;

const SPEC: &str = "gpu.exclusive.a10.8c30g";
const MIN_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Busy heartbeats every 10 minutes for `minutes`.
async fn run_busy(h: &mut Harness, id: &str, minutes: i64) {
    for _ in 0..minutes / 10 {
        h.clock.advance_ms(10 * MIN_MS);
        let r = h.heartbeat(id, true).await.unwrap();
        assert_eq!(r.action, pb::Action::Continue as i32, "{r:?}");
    }
}

fn entries(st: &pb::Statement) -> Vec<(String, i64, String)> {
    st.entries
        .iter()
        .map(|e| (e.usage_id.clone(), e.quantity, amount(&e.cost)))
        .collect()
}

#[tokio::test]
async fn three_hours_ten_minutes_bills_three_settled_hours_and_ten_minutes() {
    let mut h = Harness::start().await;
    h.create_account("acme", "100").await.unwrap();
    let s = h.start_session("acme", "s1", SPEC, None, 0).await.unwrap();
    assert!(s.admitted);
    assert_eq!(amount(&s.held), "9.9");
    assert_eq!(s.started_at_ms, T0_MS);
    // The first hour is pre-authorised.
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "9.9");
    run_busy(&mut h, "s1", 190).await;
    // Three hours were settled as they ended, each pre-authorising the next.
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.held), "9.9");
    assert_eq!(b.sessions.len(), 1);
    assert_eq!(amount(&b.sessions[0].charged), "29.7");
    assert_eq!(amount(&b.sessions[0].accrued), "1.65");
    let stopped = h.stop_session("s1").await.unwrap();
    assert_eq!(amount(&stopped.charged), "31.35");
    assert_eq!(stopped.stopped_at_ms, T0_MS + 190 * MIN_MS);
    assert_eq!(stopped.stop_cause, pb::SessionStop::Requested as i32);
    let st = h.get_statement("acme").await.unwrap();
    let h1 = |n: i64| (format!("s1/h{n}"), HOUR_MS, "9.9".to_owned());
    assert_eq!(
        entries(&st),
        vec![
            h1(1),
            h1(2),
            h1(3),
            ("s1/end".into(), 10 * MIN_MS, "1.65".into())
        ]
    );
    // Each hour was charged when it ended.
    let at: Vec<i64> = st.entries.iter().map(|e| e.at_ms).collect();
    assert_eq!(
        at,
        [1, 2, 3]
            .map(|n| T0_MS + n * HOUR_MS)
            .into_iter()
            .chain([T0_MS + 190 * MIN_MS])
            .collect::<Vec<_>>()
    );
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "68.65");
    assert_eq!(amount(&b.held), "0");
    assert!(b.sessions.is_empty());
    // StopSession again answers with the first outcome.
    let again = h.stop_session("s1").await.unwrap();
    assert_eq!(again, stopped);
}

#[tokio::test]
async fn a_session_whose_next_hour_cannot_be_paid_stops_at_the_hour() {
    let mut h = Harness::start().await;
    h.create_account("acme", "15").await.unwrap(); // 1.5 hours
    assert!(
        h.start_session("acme", "s1", SPEC, None, 0)
            .await
            .unwrap()
            .admitted
    );
    run_busy(&mut h, "s1", 50).await;
    h.clock.advance_ms(15 * MIN_MS);
    let r = h.heartbeat("s1", true).await.unwrap();
    assert_eq!(r.action, pb::Action::Stop as i32);
    assert_eq!(r.reason, pb::DenyReason::InsufficientFunds as i32);
    assert_eq!(r.stop_cause, pb::SessionStop::InsufficientFunds as i32);
    assert_eq!(r.stopped_at_ms, T0_MS + HOUR_MS);
    let st = h.get_statement("acme").await.unwrap();
    assert_eq!(entries(&st), vec![("s1/h1".into(), HOUR_MS, "9.9".into())]);
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "5.1");
    assert_eq!(amount(&b.held), "0");
    // Stopping a stopped session changes nothing.
    let s = h.stop_session("s1").await.unwrap();
    assert_eq!(amount(&s.charged), "9.9");
    assert_eq!(s.stop_cause, pb::SessionStop::InsufficientFunds as i32);
}

#[tokio::test]
async fn start_needs_an_hour_available_and_no_overdue() {
    let mut h = Harness::start().await;
    h.create_account("poor", "9.89").await.unwrap();
    let s = h.start_session("poor", "s1", SPEC, None, 0).await.unwrap();
    assert!(!s.admitted);
    assert_eq!(s.reason, pb::DenyReason::InsufficientFunds as i32);
    assert_eq!(amount(&h.get_balance("poor").await.unwrap().held), "0");

    h.create_account("late", "0.0006").await.unwrap();
    h.grant_credit("late", "c1", COUPON, ANY, "50", T0_MS + 30 * DAY_MS)
        .await
        .unwrap();
    h.reserve("late", "r1", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    h.commit("r1", 100_000_000).await.unwrap(); // 60 of 50.0006: balance -9.9994
    let s = h.start_session("late", "s1", SPEC, None, 0).await.unwrap();
    assert!(!s.admitted);
    assert_eq!(s.reason, pb::DenyReason::Overdue as i32);
    // A denied start is not a session.
    assert_status(
        "heartbeat of a denied session",
        h.heartbeat("s1", true).await,
        Code::NotFound,
        &["s1"],
    );
}

#[tokio::test]
async fn idle_twenty_minutes_with_auto_shutdown_stops_and_bills_to_the_shutdown() {
    let mut h = Harness::start().await;
    h.create_account("acme", "100").await.unwrap();
    assert!(
        h.start_session("acme", "s1", SPEC, Some(true), 0)
            .await
            .unwrap()
            .admitted
    );
    h.clock.advance_ms(5 * MIN_MS);
    assert_eq!(
        h.heartbeat("s1", true).await.unwrap().action,
        pb::Action::Continue as i32
    );
    // Idle heartbeats do not keep it alive, and missing ones count as idle.
    h.clock.advance_ms(10 * MIN_MS);
    assert_eq!(
        h.heartbeat("s1", false).await.unwrap().action,
        pb::Action::Continue as i32
    );
    h.clock.advance_ms(45 * MIN_MS);
    let r = h.heartbeat("s1", true).await.unwrap();
    assert_eq!(r.action, pb::Action::Stop as i32);
    assert_eq!(r.stop_cause, pb::SessionStop::Idle as i32);
    assert_eq!(r.stopped_at_ms, T0_MS + 25 * MIN_MS);
    let st = h.get_statement("acme").await.unwrap();
    // 25 minutes of 9.9 an hour.
    assert_eq!(
        entries(&st),
        vec![("s1/end".into(), 25 * MIN_MS, "4.125".into())]
    );
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "95.875"
    );
}

#[tokio::test]
async fn without_auto_shutdown_it_keeps_billing_and_shows_as_accruing() {
    let mut h = Harness::start().await;
    h.create_account("acme", "100").await.unwrap();
    assert!(
        h.start_session("acme", "s1", SPEC, Some(false), 0)
            .await
            .unwrap()
            .admitted
    );
    h.clock.advance_ms(2 * HOUR_MS + 5 * MIN_MS);
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(b.sessions.len(), 1, "{b:?}");
    let s = &b.sessions[0];
    assert!(s.accrues_without_activity);
    assert!(!s.auto_shutdown);
    assert_eq!(amount(&s.charged), "19.8");
    assert_eq!(amount(&s.accrued), "0.825");
    assert_eq!(amount(&s.hourly), "9.9");
    assert_eq!(
        h.heartbeat("s1", false).await.unwrap().action,
        pb::Action::Continue as i32
    );
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "80.2"
    );
}

#[tokio::test]
async fn sessions_survive_a_restart() {
    let mut h = Harness::start().await;
    h.create_account("acme", "100").await.unwrap();
    assert!(
        h.start_session("acme", "s1", SPEC, None, 0)
            .await
            .unwrap()
            .admitted
    );
    run_busy(&mut h, "s1", 30).await;
    h.restart().await;
    // The running hour's hold is back, and the session goes on.
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.held), "9.9");
    assert_eq!(b.sessions.len(), 1);
    run_busy(&mut h, "s1", 40).await;
    let s = h.stop_session("s1").await.unwrap();
    assert_eq!(amount(&s.charged), "11.55"); // 1 h + 10 min
    let st = h.get_statement("acme").await.unwrap();
    assert_eq!(
        entries(&st),
        vec![
            ("s1/h1".into(), HOUR_MS, "9.9".into()),
            ("s1/end".into(), 10 * MIN_MS, "1.65".into())
        ]
    );
    // And a stopped session stays stopped across a restart.
    h.restart().await;
    let r = h.heartbeat("s1", true).await.unwrap();
    assert_eq!(r.action, pb::Action::Stop as i32);
    assert_eq!(r.stop_cause, pb::SessionStop::Requested as i32);
}

#[tokio::test]
async fn session_calls_are_idempotent_and_bad_input_is_refused() {
    let mut h = Harness::start().await;
    h.create_account("acme", "100").await.unwrap();
    let first = h.start_session("acme", "s1", SPEC, None, 0).await.unwrap();
    h.clock.advance_ms(MIN_MS);
    let again = h
        .start_session("acme", "s1", SPEC, Some(true), 0)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "9.9");
    let off = Some(false);
    assert_status(
        "same id, other terms",
        h.start_session("acme", "s1", SPEC, off, 0).await,
        Code::FailedPrecondition,
        &["s1"],
    );
    assert_status(
        "shared sku",
        h.start_session("acme", "s2", A10, off, 0).await,
        Code::InvalidArgument,
        &[A10],
    );
    assert_status(
        "negative idle timeout",
        h.start_session("acme", "s2", SPEC, off, -1).await,
        Code::InvalidArgument,
        &["idle_timeout_ms"],
    );
    assert_status(
        "idle timeout too long",
        h.start_session("acme", "s2", SPEC, off, 30 * DAY_MS).await,
        Code::InvalidArgument,
        &["idle_timeout_ms"],
    );
    assert_status(
        "unknown account",
        h.start_session("nobody", "s2", SPEC, off, 0).await,
        Code::NotFound,
        &["nobody"],
    );
    assert_status(
        "unknown session",
        h.stop_session("nope").await,
        Code::NotFound,
        &["nope"],
    );
    assert_status(
        "empty id",
        h.stop_session("").await,
        Code::InvalidArgument,
        &["session_id"],
    );
    // Nothing above held or charged anything more.
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "9.9");
    assert!(h.get_statement("acme").await.unwrap().entries.is_empty());
}
