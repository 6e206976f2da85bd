//! Overload: past `concurrency_max` requests in flight, a request is refused at once with
//! RESOURCE_EXHAUSTED while the ones in flight finish normally and health still answers;
//! deadlines (the client's `grpc-timeout`, the server's `request_timeout_ms`) end a stuck
//! request instead of letting it hold its slot.
//!
//! Requests are parked deterministically: the sidecar's ledger is a stub the test holds
//! shut, and a Reserve on an account the sidecar has not cached waits for it.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use quotad::pb;
use quotad::server::{self, Running};
use tokio::sync::{Notify, mpsc};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

const PARKED: &str = "parked";

/// A ledger that holds every Sync asking about `PARKED` until `open` is notified, and
/// tells the sidecar of each one it holds.
struct GateLedger {
    arrived: mpsc::UnboundedSender<()>,
    open: Arc<Notify>,
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for GateLedger {
    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let r = request.into_inner();
        let parked = r.accounts.iter().any(|a| a == PARKED)
            || r.leases.iter().any(|l| l.account_id == PARKED);
        if parked {
            let _ = self.arrived.send(());
            self.open.notified().await;
        }
        Err(Status::not_found("account parked does not exist"))
    }

    /// The stub vouches for every token as the operator's.
    async fn authenticate(
        &self,
        _request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        Ok(Response::new(pb::AuthenticateResponse {
            known: true,
            principal: Some(pb::Principal {
                kind: pb::principal::Kind::Operator as i32,
                account_id: String::new(),
                name: "stub".into(),
            }),
            token_id: "tok_stub".into(),
            access: Vec::new(),
        }))
    }

    async fn queue_events(
        &self,
        _request: Request<pb::QueueEventsRequest>,
    ) -> Result<Response<pb::QueueEventsResponse>, Status> {
        Ok(Response::new(pb::QueueEventsResponse { queued: 0 }))
    }
}

struct Setup {
    running: Option<Running>,
    client: Client,
    health: HealthClient<tonic::transport::Channel>,
    arrived: mpsc::UnboundedReceiver<()>,
    open: Arc<Notify>,
    _dir: tempfile::TempDir,
}

async fn setup(tweak: impl FnOnce(&mut server::ServeConfig)) -> Setup {
    let (tx, arrived) = mpsc::unbounded_channel();
    let open = Arc::new(Notify::new());
    let ledger = GateLedger {
        arrived: tx,
        open: open.clone(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ledger_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::ledger_server::LedgerServer::new(ledger))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ledger_url = Some(format!("http://{ledger_addr}"));
    // The parked call waits for the test, not for the sidecar's own patience.
    cfg.engine.leasing.lease_request_timeout_ms = 600_000;
    tweak(&mut cfg);
    let running = server::start(cfg, quotad::clock::ManualClock::new(T0_MS))
        .await
        .unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Setup {
        running: Some(running),
        client: Client::over(with_token(ch.clone(), "qdt_any")),
        health: HealthClient::new(ch),
        arrived,
        open,
        _dir: dir,
    }
}

/// A Reserve on the parked account, waiting at the ledger once this returns.
async fn park(
    s: &mut Setup,
    deadline: Option<Duration>,
) -> tokio::task::JoinHandle<Result<pb::ReserveResponse, Status>> {
    let mut q = s.client.quota.clone();
    // A request of its own, to carry a deadline.
    let mut req = Request::new(reserve_req(PARKED, "p-1", GPU_SHARED, A10, 1_000, 0));
    if let Some(d) = deadline {
        req.set_timeout(d);
    }
    let call = tokio::spawn(async move { q.reserve(req).await.map(|r| r.into_inner()) });
    s.arrived.recv().await.unwrap();
    call
}

#[tokio::test]
async fn beyond_the_limit_requests_are_shed_and_the_rest_carry_on() {
    let mut s = setup(|c| c.limits.concurrency_max = 1).await;
    let parked = park(&mut s, None).await;

    // The one slot is taken: another call is refused at once, saying why.
    let shed = s.client.commit("nope", 1).await.unwrap_err();
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    assert!(shed.message().contains("concurrency_max"), "{shed:?}");
    // Health is never shed.
    let h = s
        .health
        .check(HealthCheckRequest {
            service: "quotad.v1.Quota".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, ServingStatus::Serving as i32);

    // The parked call finishes normally (the stub ledger says the account is unknown).
    s.open.notify_one();
    let done = parked.await.unwrap().unwrap_err();
    assert_eq!(done.code(), Code::NotFound, "{done:?}");
    // Its slot is free again: the same call is served.
    let served = s.client.commit("nope", 1).await.unwrap_err();
    assert_eq!(served.code(), Code::NotFound, "{served:?}");

    let metrics = s.running.as_ref().unwrap().metrics().clone();
    assert_eq!(
        metrics.rpc_count("/quotad.v1.Quota/Commit", "RESOURCE_EXHAUSTED"),
        1
    );
    assert!(metrics.encode().contains("quotad_requests_shed_total 1\n"));
    s.running.take().unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_deadline_ends_a_stuck_request_and_frees_its_slot() {
    let mut s = setup(|c| c.limits.concurrency_max = 1).await;
    let parked = park(&mut s, Some(Duration::from_millis(200))).await;
    let e = parked.await.unwrap().unwrap_err();
    assert!(
        matches!(e.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{e:?}"
    );
    // The server dropped the call: its slot serves the next one.
    let served = s.client.commit("nope", 1).await.unwrap_err();
    assert_eq!(served.code(), Code::NotFound, "{served:?}");
    s.open.notify_waiters();
    s.running.take().unwrap().shutdown().await.unwrap();
}

#[tokio::test]
async fn the_server_timeout_bounds_requests_without_a_deadline() {
    let mut s = setup(|c| c.limits.request_timeout_ms = 200).await;
    let parked = park(&mut s, None).await;
    let e = parked.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Code::Cancelled, "{e:?}");
    let metrics = s.running.as_ref().unwrap().metrics().clone();
    assert_eq!(
        metrics.rpc_count("/quotad.v1.Quota/Reserve", "CANCELLED"),
        1
    );
    s.open.notify_waiters();
    s.running.take().unwrap().shutdown().await.unwrap();
}
