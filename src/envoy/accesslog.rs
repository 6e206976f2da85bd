//! Envoy's gRPC access log service (`envoy.service.accesslog.v3.AccessLogService`): every
//! request Envoy finished arrives here with its response code, flags and the upstream's
//! usage header; one whose Check reserved money (the reservation id is in the entry's
//! dynamic metadata) is settled by `mapping::settle`: Commit of the reported usage or the
//! estimate, or Release. Commit and Release are idempotent in the engine, so an entry seen
//! twice charges once.
//!
//! Served by hand rather than through the generated server: the RPC is client-streaming
//! (its one response comes when Envoy ends the stream, which it never does), and the
//! server's request timeout would cut such a call every `request_timeout_ms`, dropping log
//! entries in flight. Answered as a bidirectional stream, the response headers leave at
//! once and the timeout no longer applies, as for StreamUsage; on the wire it is the same.
//!
//! Each settlement runs in a task of its own, so an RPC that is cancelled cannot stop a
//! Commit half way; a stream waits for one of `settle_concurrency_max` slots before it
//! reads on, and shutdown waits for them before the journal closes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogType, HttpAccessLogEntry, ResponseFlags,
};
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse, stream_access_logs_message::LogEntries,
};
use envoy_types::pb::google::protobuf::{Struct, value::Kind as ValueKind};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Body, StdError, http};
use tonic::{Status, Streaming};

use super::mapping::{self, Finished, Settlement};
use super::{EnvoyLimits, SettleStats, meta};
use crate::engine::Engine;
use crate::grpc::error::NoMethod;

const SERVICE: &str = "envoy.service.accesslog.v3.AccessLogService";
const METHOD_PATH: &str = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs";

/// Settles finished requests; shared by every access log stream.
pub struct Settler {
    engine: Arc<Engine>,
    stats: Arc<SettleStats>,
    slots: Arc<Semaphore>,
    /// The semaphore's permits: `settle_concurrency_max`, at least 1, at most u32::MAX.
    slots_max: u32,
    limits: EnvoyLimits,
}

impl Settler {
    pub fn new(engine: Arc<Engine>, stats: Arc<SettleStats>, limits: EnvoyLimits) -> Arc<Self> {
        debug_assert!(limits.settle_concurrency_max > 0);
        let slots_max = u32::try_from(limits.settle_concurrency_max.max(1)).unwrap_or(u32::MAX);
        let permits = usize::try_from(slots_max).unwrap_or(Semaphore::MAX_PERMITS);
        Arc::new(Settler {
            engine,
            stats,
            slots: Arc::new(Semaphore::new(permits.min(Semaphore::MAX_PERMITS))),
            slots_max,
            limits,
        })
    }

    /// Waits (up to `settle_drain_ms`) until no settlement is in flight: at shutdown,
    /// before the journal closes. Returns whether it drained.
    pub async fn drain(&self) -> bool {
        let wait = self.slots.acquire_many(self.slots_max);
        matches!(
            tokio::time::timeout(Duration::from_millis(self.limits.settle_drain_ms), wait).await,
            Ok(Ok(_))
        )
    }

    /// Starts settling each HTTP entry of one message, each once a slot is free.
    async fn message(&self, m: StreamAccessLogsMessage) {
        let Some(LogEntries::HttpLogs(logs)) = m.log_entries else {
            return;
        };
        for entry in logs.log_entry {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let engine = self.engine.clone();
            let stats = self.stats.clone();
            tokio::spawn(async move {
                settle_entry(&engine, &stats, &entry).await;
                drop(permit);
            });
        }
    }
}

/// quotad's fields in the entry's dynamic metadata: under whichever filter name ext_authz
/// runs as (`envoy.filters.http.ext_authz` in our bootstrap; Istio names it otherwise).
fn quotad_metadata(entry: &HttpAccessLogEntry) -> Option<&Struct> {
    let md = entry.common_properties.as_ref()?.metadata.as_ref()?;
    md.filter_metadata
        .values()
        .find(|s| s.fields.contains_key(meta::MODE))
}

fn field<'a>(s: &'a Struct, key: &str) -> Option<&'a str> {
    match s.fields.get(key)?.kind.as_ref()? {
        ValueKind::StringValue(v) => Some(v),
        _ => None,
    }
}

/// Envoy gave up on the upstream (or found none) for this request.
fn upstream_failed(f: &ResponseFlags) -> bool {
    f.failed_local_healthcheck
        || f.no_healthy_upstream
        || f.upstream_request_timeout
        || f.upstream_remote_reset
        || f.upstream_connection_failure
        || f.upstream_connection_termination
        || f.upstream_overflow
        || f.no_route_found
        || f.upstream_retry_limit_exceeded
        || f.upstream_protocol_error
        || f.upstream_max_stream_duration_reached
        || f.no_cluster_found
        || f.dns_resolution_failure
}

async fn settle_entry(engine: &Engine, stats: &SettleStats, entry: &HttpAccessLogEntry) {
    let Some(md) = quotad_metadata(entry) else {
        stats.skipped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let kind = entry
        .common_properties
        .as_ref()
        .map_or(0, |c| c.access_log_type);
    if kind != AccessLogType::NotSet as i32 && kind != AccessLogType::DownstreamEnd as i32 {
        // A start, periodic or per-attempt (upstream) entry: the request's final entry
        // (DownstreamEnd) settles it, once.
        return;
    }
    if field(md, meta::MODE) == Some(mapping::Mode::Shadow.name()) {
        stats.shadow.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let (Some(id), Some(estimate)) = (field(md, meta::RESERVATION), field(md, meta::ESTIMATE))
    else {
        stats.skipped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(estimate) = estimate
        .parse::<u64>()
        .ok()
        .filter(|_| id.starts_with(mapping::RESERVATION_PREFIX))
    else {
        tracing::warn!(reservation_id = %id.chars().take(64).collect::<String>(),
            "access log entry with a reservation quotad did not make for Envoy; ignored");
        stats.skipped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let finished = finished_of(entry, md, estimate);
    let (settlement, bad) = mapping::settle(&finished);
    if let Some(bad) = bad {
        tracing::warn!(reservation_id = %id, error = %bad, "upstream usage report unreadable");
    }
    let result = match settlement {
        Settlement::Commit(q) => engine.commit(id, q).await.map(|o| o.charged),
        Settlement::Release => engine.release(id).await,
    };
    match result {
        Ok(money) => {
            let counter = match settlement {
                Settlement::Commit(_) => &stats.committed,
                Settlement::Release => &stats.released,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(reservation_id = %id, ?settlement, %money,
                code = finished.response_code, "request settled");
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(reservation_id = %id, ?settlement, error = %e,
                code = finished.response_code, "cannot settle a request finished behind Envoy");
        }
    }
}

/// How the request behind an entry finished: what the upstream reported and whether it
/// was reached at all.
fn finished_of<'a>(entry: &'a HttpAccessLogEntry, md: &'a Struct, estimate: u64) -> Finished<'a> {
    let common = entry.common_properties.as_ref();
    let response = entry.response.as_ref();
    let usage = field(md, meta::USAGE_HEADER)
        .and_then(|h| response?.response_headers.get(h))
        .map(String::as_str);
    Finished {
        estimate,
        usage,
        response_code: response
            .and_then(|r| r.response_code)
            .map_or(0, |c| c.value),
        reached_upstream: common.is_some_and(|c| {
            c.time_to_first_upstream_tx_byte.is_some() || c.upstream_remote_address.is_some()
        }),
        upstream_failed: common
            .and_then(|c| c.response_flags.as_ref())
            .is_some_and(upstream_failed),
    }
}

/// Reads one access log stream until Envoy ends it, it breaks, or quotad shuts down; then
/// answers with the one empty response the API has.
async fn run_stream(
    settler: Arc<Settler>,
    mut stream: Streaming<StreamAccessLogsMessage>,
    tx: mpsc::Sender<Result<StreamAccessLogsResponse, Status>>,
) {
    let mut closing = settler.engine.closing();
    loop {
        if *closing.borrow() {
            break;
        }
        let next = tokio::select! {
            next = stream.message() => next,
            _ = closing.changed() => break,
        };
        match next {
            Ok(Some(m)) => settler.message(m).await,
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%status, "access log stream ended");
                return;
            }
        }
    }
    let _ = tx.send(Ok(StreamAccessLogsResponse {})).await;
}

/// The service, as the router sees it.
#[derive(Clone)]
pub struct AccessLogServer {
    settler: Arc<Settler>,
}

impl AccessLogServer {
    pub fn new(settler: Arc<Settler>) -> Self {
        AccessLogServer { settler }
    }
}

impl tonic::server::NamedService for AccessLogServer {
    const NAME: &'static str = SERVICE;
}

/// One call: its stream is read by a task of its own, the response stream is returned at
/// once.
struct Call(Arc<Settler>);

type Reply = tonic::Response<ReceiverStream<Result<StreamAccessLogsResponse, Status>>>;

impl tower::Service<tonic::Request<Streaming<StreamAccessLogsMessage>>> for Call {
    type Response = Reply;
    type Error = Status;
    type Future = std::future::Ready<Result<Reply, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::Request<Streaming<StreamAccessLogsMessage>>) -> Self::Future {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run_stream(self.0.clone(), req.into_inner(), tx));
        std::future::ready(Ok(tonic::Response::new(ReceiverStream::new(rx))))
    }
}

impl<B> tower::Service<http::Request<B>> for AccessLogServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let settler = self.settler.clone();
        Box::pin(async move {
            if req.uri().path() != METHOD_PATH {
                let missing = NoMethod {
                    service: SERVICE,
                    method: req.uri().path().chars().take(128).collect(),
                };
                return Ok(Status::from(missing).into_http());
            }
            let max = settler.limits.access_log_message_bytes_max;
            let codec = tonic_prost::ProstCodec::<StreamAccessLogsResponse, StreamAccessLogsMessage>::default();
            let mut grpc =
                tonic::server::Grpc::new(codec).apply_max_message_size_config(Some(max), None);
            Ok(grpc.streaming(Call(settler), req).await)
        })
    }
}
