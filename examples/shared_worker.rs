//! A Shared-Edition GPU worker metered by quotad.
//!
//! The flow every worker follows:
//! 1. `Reserve` an estimate of the job's GPU time before starting. A denial is a normal
//!    outcome (the account cannot pay): report it and do not start the job.
//! 2. Open `StreamUsage` with `work_id` = the reservation id; the stream takes over the
//!    reservation's hold. Report the GPU time used since the last report on every tick and
//!    read one decision per report; stop the job as soon as a decision says STOP.
//! 3. Half-close the stream and read until quotad closes it: that settles the job, its
//!    reservation is committed with the total reported.
//! 4. `Commit` the reservation with that total: it confirms the settlement (Commit is
//!    idempotent) and returns what the job was charged.
//!
//! The job is simulated: each tick "uses" `--tick-ms` of GPU time and sleeps `--sleep-ms`
//! of real time. Run it against a local quotad:
//!
//! ```text
//! quotad ctl create-account acme && quotad ctl top-up acme 1
//! quotad ctl create-token owner acme     # prints the token once
//! QUOTAD_TOKEN=qdt_... cargo run --example shared_worker -- --account acme --job job-1 --job-ms 20000
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use quotad::auth::Bearer;
use quotad::pb;
use quotad::pb::quota_client::QuotaClient;

#[derive(Parser, Debug)]
#[command(about = "Shared-Edition GPU worker metered by quotad (simulated job)")]
struct Args {
    /// quotad's gRPC address
    #[arg(long, env = "QUOTAD_ADDR", default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Account paying for the job
    #[arg(long)]
    account: String,
    /// Job id: the reservation id and the stream's work_id (unique per job)
    #[arg(long)]
    job: String,
    /// Shared-Edition sku (GPU type) the job runs on
    #[arg(long, default_value = "gpu.shared.a10")]
    sku: String,
    /// GPU milliseconds to reserve before starting
    #[arg(long, default_value_t = 10_000)]
    estimate_ms: i64,
    /// GPU milliseconds the simulated job needs in total
    #[arg(long, default_value_t = 30_000)]
    job_ms: i64,
    /// GPU milliseconds reported per tick
    #[arg(long, default_value_t = 1_000)]
    tick_ms: i64,
    /// Real milliseconds each simulated tick takes
    #[arg(long, default_value_t = 10)]
    sleep_ms: u64,
    /// Token of the account's owner (or of a sub-user granted `reserve`), sent as
    /// `authorization: Bearer TOKEN`
    #[arg(long, env = "QUOTAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shared_worker: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.job_ms <= 0 || args.tick_ms <= 0 || args.estimate_ms <= 0 {
        return Err("--estimate-ms, --job-ms and --tick-ms must be above zero".into());
    }
    let channel = Endpoint::from_shared(args.addr.clone())
        .map_err(|e| format!("invalid --addr {:?}: {e}", args.addr))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("cannot reach quotad at {}: {}", args.addr, source_of(&e)))?;
    let bearer = Bearer::new(args.token.as_deref()).ok_or("--token is not a valid header value")?;
    let mut quota = QuotaClient::with_interceptor(channel, bearer);

    // 1. Reserve the estimate. A retry with the same reservation id returns the first
    //    outcome, so it is safe to retry this call after a network error.
    let reserved = quota
        .reserve(pb::ReserveRequest {
            account_id: args.account.clone(),
            reservation_id: args.job.clone(),
            resource: pb::Resource::GpuShared as i32,
            sku: args.sku.clone(),
            quantity: args.estimate_ms,
            ttl_ms: 0, // the server's default hold lifetime
        })
        .await
        .map_err(rpc_error("Reserve"))?
        .into_inner();
    if !reserved.admitted {
        // Not an error: the account cannot pay for the job now. Do not start it.
        println!(
            "job {} not admitted: {} (available {})",
            args.job,
            reserved.reason().as_str_name(),
            money(&reserved.available)
        );
        return Ok(());
    }
    println!(
        "job {} admitted: held {} for {} ms",
        args.job,
        money(&reserved.held),
        args.estimate_ms
    );

    // 2. Meter the job. Reports go through a channel whose receiver is the request
    //    stream; decisions come back on the response stream, one per report.
    let (reports, rx) = mpsc::channel::<pb::UsageReport>(1);
    let report = |seq: u64, quantity: i64| pb::UsageReport {
        account_id: args.account.clone(),
        work_id: args.job.clone(),
        resource: pb::Resource::GpuShared as i32,
        sku: args.sku.clone(),
        quantity,
        seq,
    };

    // Run the first tick and queue its report before opening the call: `stream_usage`
    // returns once quotad has answered the call, which it may do only on a first report.
    let mut seq = 1;
    let mut delta = args.tick_ms.min(args.job_ms);
    tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
    reports
        .send(report(seq, delta))
        .await
        .map_err(|_| "the usage stream closed before the first report")?;
    let mut decisions = quota
        .stream_usage(ReceiverStream::new(rx))
        .await
        .map_err(rpc_error("StreamUsage"))?
        .into_inner();

    let mut reported = 0;
    let mut stop_reason = None;
    loop {
        let decision = decisions
            .message()
            .await
            .map_err(rpc_error("StreamUsage"))?
            .ok_or_else(|| format!("quotad closed the usage stream before answering seq {seq}"))?;
        if decision.seq != seq {
            return Err(format!(
                "expected the decision for seq {seq}, got one for seq {}",
                decision.seq
            ));
        }
        // A duplicate or out-of-order report is ignored and charged nothing (it cannot
        // happen here: one report is in flight at a time, with increasing seq).
        if !decision.ignored {
            reported += delta;
        }
        if decision.action() == pb::Action::Stop {
            // Stop the GPU work now; what ran so far has been charged.
            println!(
                "seq {seq}: STOP ({}), remaining {} ms, charged {}",
                decision.reason().as_str_name(),
                decision.remaining_quantity,
                money(&decision.charged)
            );
            stop_reason = Some(decision.reason().as_str_name());
            break;
        }
        if reported >= args.job_ms {
            break; // the job is done
        }

        // Run the next tick of the job, then report it.
        tokio::time::sleep(Duration::from_millis(args.sleep_ms)).await;
        seq += 1;
        delta = args.tick_ms.min(args.job_ms - reported);
        // If quotad has ended the call, this send fails and the read above says why.
        let _ = reports.send(report(seq, delta)).await;
    }

    // 3. Half-close (no more reports) and read until quotad closes its side: the job is
    //    then settled.
    drop(reports);
    while decisions
        .message()
        .await
        .map_err(rpc_error("StreamUsage"))?
        .is_some()
    {}

    // 4. Commit with the total reported: confirms the settlement and returns the charge.
    let committed = quota
        .commit(pb::CommitRequest {
            reservation_id: args.job.clone(),
            quantity: reported,
        })
        .await
        .map_err(rpc_error("Commit"))?
        .into_inner();

    // One line, key=value, for people and for scripts.
    let (outcome, reason) = match stop_reason {
        Some(reason) => ("stopped", reason),
        None => ("finished", "-"),
    };
    let charged = committed.charged.unwrap_or_default();
    println!(
        "summary: job={} outcome={outcome} reported_ms={reported} charged={} currency={} reason={reason}",
        args.job, charged.amount, charged.currency
    );
    Ok(())
}

/// "12.34 CNY", or "-" when absent.
fn money(m: &Option<pb::Money>) -> String {
    m.as_ref()
        .map_or("-".into(), |m| format!("{} {}", m.amount, m.currency))
}

/// Turns a failed call into "Commit failed: NotFound: reservation job-1 does not exist".
fn rpc_error(call: &'static str) -> impl Fn(tonic::Status) -> String {
    move |s| format!("{call} failed: {:?}: {}", s.code(), s.message())
}

/// A transport error's message is "transport error"; its cause says what went wrong.
fn source_of(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
