//! Baseline (a): a tonic server implementing the same `quotad.v1.Quota` service that does
//! no work. Every unary call is answered at once with a fixed message (the ones quotad
//! actually returned in this run, so the bytes on the wire are the same size);
//! StreamUsage answers each report with one decision. It is served by the same tonic
//! server settings as quotad (per-connection concurrency and stream limits, TCP_NODELAY
//! per connection, the same decoding limit), so the difference to quotad is quotad's work.

use std::net::SocketAddr;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use quotad::pb;
use quotad::server::{
    DEFAULT_CONCURRENCY_PER_CONNECTION, DEFAULT_MESSAGE_BYTES_MAX,
    DEFAULT_STREAMS_PER_CONNECTION_MAX,
};

/// The fixed answers.
#[derive(Clone, Default)]
pub struct Answers {
    pub reserve: pb::ReserveResponse,
    pub commit: pb::CommitResponse,
    pub admit: pb::AdmitResponse,
    pub decision: pb::UsageDecision,
}

struct Noop(Answers);

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::quota_server::Quota for Noop {
    async fn reserve(
        &self,
        _r: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        Ok(Response::new(self.0.reserve.clone()))
    }

    async fn commit(
        &self,
        _r: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        Ok(Response::new(self.0.commit.clone()))
    }

    async fn release(
        &self,
        _r: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        Ok(Response::new(pb::ReleaseResponse {
            released: self.0.reserve.held.clone(),
        }))
    }

    async fn admit(
        &self,
        _r: Request<pb::AdmitRequest>,
    ) -> Result<Response<pb::AdmitResponse>, Status> {
        Ok(Response::new(self.0.admit.clone()))
    }

    async fn get_balance(
        &self,
        _r: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        Ok(Response::new(pb::Balance::default()))
    }

    type StreamUsageStream = Boxed<pb::UsageDecision>;

    async fn stream_usage(
        &self,
        r: Request<Streaming<pb::UsageReport>>,
    ) -> Result<Response<Self::StreamUsageStream>, Status> {
        let answer = self.0.decision.clone();
        let decisions = r.into_inner().map(move |report| {
            report.map(|rep| pb::UsageDecision {
                seq: rep.seq,
                ..answer.clone()
            })
        });
        Ok(Response::new(Box::pin(decisions)))
    }

    async fn start_session(
        &self,
        _r: Request<pb::StartSessionRequest>,
    ) -> Result<Response<pb::StartSessionResponse>, Status> {
        Ok(Response::new(pb::StartSessionResponse::default()))
    }

    async fn heartbeat(
        &self,
        _r: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(pb::HeartbeatResponse::default()))
    }

    async fn stop_session(
        &self,
        _r: Request<pb::StopSessionRequest>,
    ) -> Result<Response<pb::StopSessionResponse>, Status> {
        Ok(Response::new(pb::StopSessionResponse::default()))
    }

    async fn report_storage(
        &self,
        _r: Request<pb::ReportStorageRequest>,
    ) -> Result<Response<pb::ReportStorageResponse>, Status> {
        Ok(Response::new(pb::ReportStorageResponse::default()))
    }

    type WatchStream = Boxed<pb::AccountEvent>;

    async fn watch(
        &self,
        _r: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(Box::pin(tokio_stream::empty())))
    }
}

/// A running no-op server; stops when dropped.
pub struct NoopServer {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

pub async fn start(answers: Answers) -> std::io::Result<NoopServer> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        if let Ok(c) = &conn {
            let _ = c.set_nodelay(true);
        }
        conn
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = pb::quota_server::QuotaServer::new(Noop(answers))
        .max_decoding_message_size(DEFAULT_MESSAGE_BYTES_MAX);
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(DEFAULT_CONCURRENCY_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(64))
        .max_concurrent_streams(Some(DEFAULT_STREAMS_PER_CONNECTION_MAX))
        .add_service(svc);
    tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped.await;
    }));
    Ok(NoopServer { addr, _stop: stop })
}
