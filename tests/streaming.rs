//! StreamUsage over real gRPC: live cut-off within one report (G1), burn-down order of
//! streamed usage, duplicate reports, a reservation taken over by its stream, broken
//! streams, restarts and the stream limits. Time is the harness's manual clock.

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

fn stop(d: &pb::UsageDecision) -> bool {
    d.action == pb::Action::Stop as i32
}

/// An A10 second costs 0.0006: an account with a 0.0024 coupon and a 0.0036 balance can
/// pay for exactly 10 s.
async fn ten_second_account(h: &mut Harness) {
    h.create_account("acme", "0.0036").await.unwrap();
    h.grant_credit("acme", "c1", COUPON, ANY, "0.0024", T0_MS + 30 * DAY_MS)
        .await
        .unwrap();
}

#[tokio::test]
async fn stream_stops_within_one_report_of_what_the_account_can_pay() {
    let mut h = Harness::start().await;
    ten_second_account(&mut h).await;
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    let mut stopped_at = None;
    for seq in 1..=12u64 {
        h.clock.advance_ms(1_000);
        let d = job.report(seq, 1_000).await.unwrap();
        assert_eq!(d.seq, seq);
        if stop(&d) {
            // Coupon used up and balance exactly 0: R6 calls that NO_ENTITLEMENT.
            assert_eq!(d.reason, pb::DenyReason::NoEntitlement as i32, "{d:?}");
            assert_eq!(d.remaining_quantity, 0);
            stopped_at = Some(seq);
            break;
        }
        // What it may still run is what is left, to the millisecond.
        assert_eq!(d.remaining_quantity, (10 - seq as i64) * 1_000, "{d:?}");
    }
    // N = 10 seconds payable: STOP comes with the 10th report, not later.
    assert_eq!(stopped_at, Some(10));
    job.close().await;

    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "0");
    assert_eq!(amount(&b.held), "0");
    let st = h.get_statement("acme").await.unwrap();
    let ids: Vec<&str> = st.entries.iter().map(|e| e.usage_id.as_str()).collect();
    let want: Vec<String> = (1..=10).map(|s| format!("job-1/{s}")).collect();
    assert_eq!(ids, want.iter().map(String::as_str).collect::<Vec<_>>());
    // Burn-down order: the coupon pays the first 4 s, the balance the other 6.
    for (i, e) in st.entries.iter().enumerate() {
        let source = if i < 4 { "c1" } else { "balance" };
        assert_eq!(
            deductions(e),
            vec![(source.to_owned(), "0.0006".to_owned())]
        );
    }
}

#[tokio::test]
async fn overrun_after_stop_is_at_most_the_late_report() {
    let mut h = Harness::start().await;
    ten_second_account(&mut h).await;
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    for seq in 1..=10u64 {
        h.clock.advance_ms(1_000);
        job.report(seq, 1_000).await.unwrap();
    }
    // A job that ignores STOP: its next report is still charged (usage happened), and
    // told STOP again. The overrun is exactly that one report.
    h.clock.advance_ms(1_000);
    let d = job.report(11, 1_000).await.unwrap();
    assert!(stop(&d));
    job.close().await;
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "-0.0006");
    assert_eq!(b.status(), pb::balance::AccountStatus::Overdue);
}

#[tokio::test]
async fn a_concurrent_reserve_cannot_take_the_jobs_next_interval() {
    let mut h = Harness::start().await;
    h.create_account("acme", "0.0012").await.unwrap(); // 2 s
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    let d = job.report(1, 1_000).await.unwrap();
    assert!(!stop(&d));
    // 1 s is charged, the next second is held for the job: nothing is left to reserve.
    let r = h
        .reserve("acme", "other", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(!r.admitted, "{r:?}");
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.held), "0.0006");
    assert_eq!(b.streams.len(), 1);
    assert_eq!(b.streams[0].work_id, "job-1");
    assert_eq!(b.streams[0].last_seq, 1);
    job.close().await;
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "0");
    assert!(
        h.reserve("acme", "other", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
}

#[tokio::test]
async fn duplicate_and_old_seqs_are_ignored() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    assert!(!job.report(1, 1_000).await.unwrap().ignored);
    assert!(!job.report(3, 1_000).await.unwrap().ignored);
    let d = job.report(3, 1_000).await.unwrap();
    assert!(d.ignored && !stop(&d));
    assert_eq!(amount(&d.charged), "0.0012");
    assert!(job.report(2, 5_000).await.unwrap().ignored);
    job.close().await;
    // A new stream for the same job: its old seqs are remembered too.
    let mut again = h.stream_usage("acme", "job-1").await.unwrap();
    assert!(again.report(3, 1_000).await.unwrap().ignored);
    assert!(!again.report(4, 1_000).await.unwrap().ignored);
    again.close().await;
    let st = h.get_statement("acme").await.unwrap();
    let ids: Vec<&str> = st.entries.iter().map(|e| e.usage_id.as_str()).collect();
    assert_eq!(ids, ["job-1/1", "job-1/3", "job-1/4"]);
}

#[tokio::test]
async fn a_stream_takes_over_its_reservation_and_commit_confirms_it() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let r = h
        .reserve("acme", "job-1", GPU_SHARED, A10, 5_000, 0)
        .await
        .unwrap();
    assert!(r.admitted);
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "0.003");
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    for seq in 1..=3 {
        let d = job.report(seq, 1_000).await.unwrap();
        assert!(!stop(&d));
    }
    // The reservation is the job's while its stream is open.
    assert_status(
        "commit during stream",
        h.commit("job-1", 3_000).await,
        Code::FailedPrecondition,
        &["job-1", "usage stream"],
    );
    // Reported 3 s of the 5 s reserved: 2 s of hold are left, enough for the next 1 s.
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "0.0012");
    job.close().await;
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "0");
    // Closing the stream settled the reservation with the reported total; Commit of
    // that total confirms it, anything else is refused.
    let c = h.commit("job-1", 3_000).await.unwrap();
    assert_eq!(amount(&c.charged), "0.0018");
    assert_status(
        "commit of another total",
        h.commit("job-1", 4_000).await,
        Code::FailedPrecondition,
        &["3000"],
    );
    let st = h.get_statement("acme").await.unwrap();
    let ids: Vec<&str> = st.entries.iter().map(|e| e.usage_id.as_str()).collect();
    assert_eq!(ids, ["job-1/1", "job-1/2", "job-1/3"]);
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "0.9982"
    );
}

#[tokio::test]
async fn a_broken_stream_settles_the_job_and_releases_its_hold() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    job.report(1, 2_000).await.unwrap();
    job.report(2, 2_000).await.unwrap();
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "0.0012");
    // The client vanishes: no half-close, the call is simply dropped.
    drop(job);
    let client = h.client.clone();
    eventually("hold released after the client vanished", || {
        let mut c = client.clone();
        async move {
            let b = c.get_balance("acme").await.unwrap();
            amount(&b.held) == "0" && b.streams.is_empty()
        }
    })
    .await;
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "0.9976");
    assert_eq!(h.get_statement("acme").await.unwrap().entries.len(), 2);
}

#[tokio::test]
async fn a_restart_mid_stream_loses_no_acknowledged_usage() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    for seq in 1..=3 {
        job.report(seq, 1_000).await.unwrap();
    }
    h.restart().await;
    // The client reconnects and, unsure whether its last report landed, resends it.
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    assert!(job.report(3, 1_000).await.unwrap().ignored);
    let d = job.report(4, 1_000).await.unwrap();
    assert!(!d.ignored && !stop(&d));
    job.close().await;
    let st = h.get_statement("acme").await.unwrap();
    let ids: Vec<&str> = st.entries.iter().map(|e| e.usage_id.as_str()).collect();
    assert_eq!(ids, ["job-1/1", "job-1/2", "job-1/3", "job-1/4"]);
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "0.9976");
    assert_eq!(amount(&b.held), "0");
}

#[tokio::test]
async fn overdue_and_empty_accounts_are_stopped_at_the_first_report() {
    let mut h = Harness::start().await;
    h.create_account("poor", "0").await.unwrap();
    let mut job = h.stream_usage("poor", "job-1").await.unwrap();
    let d = job.report(1, 0).await.unwrap();
    assert!(stop(&d));
    assert_eq!(d.reason, pb::DenyReason::NoEntitlement as i32);
    job.close().await;
}

#[tokio::test]
async fn stream_limits_are_enforced_with_resource_exhausted() {
    let mut h = Harness::start_with(|c| {
        c.engine.work.streams_max = 1;
        c.engine.work.stream_reports_per_sec = 5;
    })
    .await;
    h.create_account("acme", "10").await.unwrap();
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    job.report(1, 100).await.unwrap();
    // A second stream while one is open.
    let mut other = h.stream_usage("acme", "job-2").await;
    let second = match &mut other {
        Ok(j) => j.report(1, 100).await.map(|_| ()),
        Err(s) => Err(s.clone()),
    };
    assert_status(
        "second stream",
        second,
        Code::ResourceExhausted,
        &["streams_max"],
    );
    // Reports per second: a burst of 5 is allowed, the 6th within the second is not.
    for seq in 2..=5 {
        job.report(seq, 100).await.unwrap();
    }
    assert_status(
        "sixth report in a second",
        job.report(6, 100).await,
        Code::ResourceExhausted,
        &["stream_reports_per_sec"],
    );
    // The usage acknowledged before the cut-off stands; the stream's hold is released.
    let client = h.client.clone();
    eventually("stream settled", || {
        let mut c = client.clone();
        async move { c.get_balance("acme").await.unwrap().streams.is_empty() }
    })
    .await;
    assert_eq!(h.get_statement("acme").await.unwrap().entries.len(), 5);
    assert_eq!(amount(&h.get_balance("acme").await.unwrap().held), "0");
}

#[tokio::test]
async fn bad_reports_get_invalid_argument() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    type Tweak = Box<dyn Fn(&mut pb::UsageReport)>;
    let cases: Vec<(&str, Tweak, &[&str])> = vec![
        ("negative", Box::new(|r| r.quantity = -1), &["quantity"]),
        ("seq zero", Box::new(|r| r.seq = 0), &["seq"]),
        (
            "exclusive",
            Box::new(|r| {
                r.resource = pb::Resource::GpuExclusive as i32;
                r.sku = "gpu.exclusive.a10.8c30g".into();
            }),
            &["StartSession"],
        ),
        ("no work id", Box::new(|r| r.work_id.clear()), &["work_id"]),
    ];
    for (what, tweak, needles) in cases {
        let mut job = h.stream_usage("acme", "job-x").await.unwrap();
        let mut msg = job.report_msg(1, 1_000);
        tweak(&mut msg);
        assert_status(what, job.send(msg).await, Code::InvalidArgument, needles);
    }
    // A stream meters one job.
    let mut job = h.stream_usage("acme", "job-y").await.unwrap();
    job.report(1, 1_000).await.unwrap();
    let mut msg = job.report_msg(2, 1_000);
    msg.work_id = "job-z".into();
    assert_status(
        "other job",
        job.send(msg).await,
        Code::InvalidArgument,
        &["one job"],
    );
    // Unknown accounts and skus.
    let mut job = h.stream_usage("nobody", "job-n").await.unwrap();
    assert_status(
        "unknown account",
        job.report(1, 1).await,
        Code::NotFound,
        &["nobody"],
    );
    assert_eq!(h.get_statement("acme").await.unwrap().entries.len(), 1);
}

#[tokio::test]
async fn a_client_that_does_not_read_decisions_is_cut_off() {
    // Over the network hyper's send buffer absorbs hundreds of kilobytes before the
    // stream's own buffer fills, so this drives the stream handler directly.
    let mut h = Harness::start_with(|c| c.engine.work.stream_buffer = 1).await;
    h.create_account("acme", "100").await.unwrap();
    let (report_tx, report_rx) = tokio::sync::mpsc::channel(8);
    let (decision_tx, mut decision_rx) = tokio::sync::mpsc::channel(1);
    let meter = tokio::spawn(quotad::grpc::quota::meter(
        h.engine().clone(),
        "CNY".into(),
        tokio_stream::wrappers::ReceiverStream::new(report_rx),
        decision_tx,
    ));
    for seq in 1..=3u64 {
        report_tx
            .send(Ok(usage_report("acme", "job-1", seq, 1_000)))
            .await
            .unwrap();
    }
    // Nobody reads: the first decision fills the buffer of one, the second cannot be
    // queued, and the stream ends with RESOURCE_EXHAUSTED once the client reads again.
    let engine = h.engine().clone();
    eventually("report 2 charged", || {
        let e = engine.clone();
        async move { e.works_of("acme").first().is_some_and(|w| w.last_seq == 2) }
    })
    .await;
    // Report 2's round is queued in the journal once it is charged; a write queued after
    // it is answered after it. One thread runs the test and the server, so once that
    // write is answered the stream has already been woken for report 2's round and met
    // the full buffer with its decision (without this, reading decision 1 first could
    // make room for decision 2 when the journal is slow).
    let barrier = engine
        .journal()
        .submit(quotad::journal::Entry::Trim(Vec::new()));
    barrier.unwrap().await.unwrap().unwrap();
    let first = decision_rx.recv().await.unwrap().unwrap();
    assert_eq!(first.seq, 1);
    let end = decision_rx.recv().await.unwrap();
    let s = end.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("stream_buffer"), "{s:?}");
    assert!(decision_rx.recv().await.is_none());
    meter.await.unwrap();
    // The second report was charged (durable) before its decision could not be queued;
    // the third was never read. The job's hold is released.
    let b = h.get_balance("acme").await.unwrap();
    assert!(b.streams.is_empty());
    assert_eq!(amount(&b.held), "0");
    assert_eq!(amount(&b.balance), "99.9988");
}

#[tokio::test]
async fn pipelined_reports_get_the_same_decisions_as_one_by_one() {
    let mut h = Harness::start().await;
    ten_second_account(&mut h).await;
    let mut job = h.stream_usage("acme", "job-1").await.unwrap();
    // The client does not wait for decisions: 14 reports go out at once, and are charged
    // in rounds that share a journal write.
    let tx = job.tx.take().unwrap();
    for seq in 1..=14u64 {
        tx.send(job.report_msg(seq, 1_000)).await.unwrap();
    }
    drop(tx);
    let mut got = Vec::new();
    while let Some(d) = job.rx.message().await.unwrap() {
        got.push((d.seq, stop(&d), d.remaining_quantity));
    }
    let want: Vec<(u64, bool, i64)> = (1..=14u64)
        .map(|s| {
            (
                s,
                s >= 10,
                if s >= 10 { 0 } else { (10 - s as i64) * 1_000 },
            )
        })
        .collect();
    assert_eq!(got, want);
    // Reports pipelined past STOP are usage the job did: charged, as overrun.
    let st = h.get_statement("acme").await.unwrap();
    assert_eq!(st.entries.len(), 14);
    assert_eq!(
        amount(&h.get_balance("acme").await.unwrap().balance),
        "-0.0024"
    );
}

#[tokio::test]
async fn rounds_are_charged_while_the_journal_writes_but_answered_only_once_durable() {
    // A journal that is slow to write (held here) must hold back every decision; the
    // stream still reads and charges the next rounds meanwhile, up to stream_rounds_max.
    let mut h = Harness::start_with(|c| {
        c.engine.work.stream_buffer = 64;
        c.engine.work.stream_rounds_max = 4;
    })
    .await;
    h.create_account("acme", "100").await.unwrap();
    let (report_tx, report_rx) = tokio::sync::mpsc::channel(64);
    let (decision_tx, mut decision_rx) = tokio::sync::mpsc::channel(64);
    let meter = tokio::spawn(quotad::grpc::quota::meter(
        h.engine().clone(),
        "CNY".into(),
        tokio_stream::wrappers::ReceiverStream::new(report_rx),
        decision_tx,
    ));
    let report = |seq: u64| Ok(usage_report("acme", "job-1", seq, 1_000));
    report_tx.send(report(1)).await.unwrap();
    assert_eq!(decision_rx.recv().await.unwrap().unwrap().seq, 1);
    let engine = h.engine().clone();
    let last_seq = move || {
        let e = engine.clone();
        async move { e.works_of("acme").first().map_or(0, |w| w.last_seq) }
    };
    let paused = h.engine().journal().pause().unwrap();
    // Four rounds of two reports, each sent once the previous one is charged.
    for seq in (2..=9u64).step_by(2) {
        report_tx.send(report(seq)).await.unwrap();
        report_tx.send(report(seq + 1)).await.unwrap();
        let l = last_seq.clone();
        eventually("the round charged while the journal is held", move || {
            let l = l.clone();
            async move { l().await == seq + 1 }
        })
        .await;
    }
    // A fifth round is not read while four wait for the journal.
    report_tx.send(report(10)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        last_seq().await,
        9,
        "at most stream_rounds_max rounds in flight"
    );
    assert!(
        decision_rx.try_recv().is_err(),
        "no decision leaves before its usage is durable"
    );
    drop(paused);
    let mut seqs = Vec::new();
    for _ in 2..=10u64 {
        seqs.push(decision_rx.recv().await.unwrap().unwrap().seq);
    }
    assert_eq!(
        seqs,
        (2..=10u64).collect::<Vec<_>>(),
        "decisions in report order"
    );
    drop(report_tx);
    assert!(decision_rx.recv().await.is_none());
    meter.await.unwrap();
    let b = h.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "99.994", "ten reports of 1 s at 0.0006");
}
