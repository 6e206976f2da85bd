//! The tower layer every gRPC request passes first: it gives the request an id (the
//! client's `x-request-id`, or a fresh one) and a tracing span carrying it, refuses it at
//! once with RESOURCE_EXHAUSTED when `concurrency_max` requests are already in flight, and
//! records its latency and status. A request message over `message_bytes_max` is answered
//! RESOURCE_EXHAUSTED too (tonic says OUT_OF_RANGE; the gRPC status code spec says
//! RESOURCE_EXHAUSTED).
//!
//! Shedding instead of queueing is what keeps memory and latency bounded under overload:
//! a request beyond the limit costs one failed semaphore poll and a trailers-only
//! response, and the client learns at once to back off or go elsewhere, rather than
//! after waiting in an unbounded queue. Health and reflection are never shed, so an
//! orchestrator does not restart a sidecar for being busy.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::Semaphore;
use tonic::codegen::http;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::grpc::error::{Overload, oversize_is_resource_exhausted};
use crate::metrics::SharedMetrics;

/// Longest client-given request id kept; a longer or non-printable one is replaced.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
pub const REQUEST_ID_HEADER: &str = "x-request-id";

#[derive(Clone)]
pub struct GuardLayer {
    slots: Arc<Semaphore>,
    limit: usize,
    metrics: SharedMetrics,
}

impl GuardLayer {
    pub fn new(concurrency_max: usize, metrics: SharedMetrics) -> GuardLayer {
        let limit = concurrency_max.clamp(1, Semaphore::MAX_PERMITS);
        GuardLayer {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
            metrics,
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    layer: GuardLayer,
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> Service<http::Request<B>> for Guard<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let metrics = self.layer.metrics.clone();
        let path = req.uri().path().to_owned();
        let request_id = client_request_id(req.headers()).unwrap_or_else(new_request_id);
        let id_value = http::HeaderValue::from_str(&request_id).ok();
        if let Some(v) = &id_value {
            // Handlers and logs downstream see the same id.
            req.headers_mut().insert(REQUEST_ID_HEADER, v.clone());
        }
        let exempt = path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let permit = if exempt {
            None
        } else {
            match self.layer.slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    metrics.shed();
                    metrics.rpc_done(&path, "RESOURCE_EXHAUSTED", std::time::Duration::ZERO);
                    tracing::debug!(rpc = %path, %request_id, "shed: concurrency limit reached");
                    let status = tonic::Status::from(Overload::Busy(self.layer.limit));
                    let mut resp: Response = status.into_http();
                    if let Some(v) = id_value {
                        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
                    }
                    return Box::pin(std::future::ready(Ok(resp)));
                }
            }
        };
        // The clone is ready only if polled; swap so the one we polled serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = tracing::info_span!("rpc", rpc = %path, request_id = %request_id);
        let done = Done {
            metrics,
            path,
            started: Instant::now(),
            code: "CANCELLED",
        };
        Box::pin(
            async move {
                // Moves all of `done` in (not just the field set below), so it drops here.
                let mut done = done;
                let r = inner.call(req).await;
                drop(permit);
                let mut r = r;
                if let Ok(resp) = &mut r {
                    oversize_is_resource_exhausted(resp.headers_mut());
                }
                done.code = match &r {
                    Ok(resp) => code_of(resp.headers()),
                    Err(_) => "UNKNOWN",
                };
                r.map(|mut resp| {
                    if let Some(v) = id_value {
                        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
                    }
                    resp
                })
            }
            .instrument(span),
        )
    }
}

/// Records the RPC when its future ends, also when it is dropped (a deadline, a client
/// that went away): those count as CANCELLED.
struct Done {
    metrics: SharedMetrics,
    path: String,
    started: Instant,
    code: &'static str,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.metrics
            .rpc_done(&self.path, self.code, self.started.elapsed());
    }
}

fn client_request_id(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(REQUEST_ID_HEADER)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= REQUEST_ID_BYTES_MAX && v.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| v.to_owned())
}

/// A process-unique id: a random prefix per process, then a counter.
fn new_request_id() -> String {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        // Without entropy the ids are still unique within the process.
        let _ = getrandom::getrandom(&mut b);
        u32::from_le_bytes(b)
    });
    format!("{prefix:08x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The gRPC status of a response as far as its headers tell: a trailers-only error has
/// `grpc-status` there; otherwise the status follows in trailers and the call got as far
/// as answering, which is counted as OK.
fn code_of(headers: &http::HeaderMap) -> &'static str {
    let Some(n) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
    else {
        return "OK";
    };
    code_name(tonic::Code::from_i32(n))
}

pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use tokio::sync::oneshot;

    /// A service that answers each call when the test says so.
    #[derive(Clone)]
    struct Parked(Arc<std::sync::Mutex<Vec<oneshot::Sender<()>>>>);

    impl Service<http::Request<()>> for Parked {
        type Response = Response;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let (tx, rx) = oneshot::channel();
            if let Ok(mut v) = self.0.lock() {
                v.push(tx);
            }
            Box::pin(async move {
                let _ = rx.await;
                Ok(http::Response::new(tonic::body::Body::default()))
            })
        }
    }

    fn req(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    fn status_of(r: &Response) -> &'static str {
        code_of(r.headers())
    }

    #[tokio::test]
    async fn sheds_beyond_the_limit_and_recovers() {
        let metrics = Metrics::new();
        let parked = Parked(Default::default());
        let mut svc = GuardLayer::new(1, metrics.clone()).layer(parked.clone());
        let first = tokio::spawn(svc.call(req("/quotad.v1.Quota/Reserve")));
        // The first call holds the only slot until it is answered.
        while parked.0.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let shed = svc.call(req("/quotad.v1.Quota/Admit")).await.unwrap();
        assert_eq!(status_of(&shed), "RESOURCE_EXHAUSTED");
        // Health is never shed.
        let health = tokio::spawn(svc.call(req("/grpc.health.v1.Health/Check")));
        while parked.0.lock().unwrap().len() < 2 {
            tokio::task::yield_now().await;
        }
        for tx in parked.0.lock().unwrap().drain(..) {
            let _ = tx.send(());
        }
        assert_eq!(status_of(&first.await.unwrap().unwrap()), "OK");
        assert_eq!(status_of(&health.await.unwrap().unwrap()), "OK");
        // The slot is free again.
        let again = tokio::spawn(svc.call(req("/quotad.v1.Quota/Admit")));
        while parked.0.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        for tx in parked.0.lock().unwrap().drain(..) {
            let _ = tx.send(());
        }
        assert_eq!(status_of(&again.await.unwrap().unwrap()), "OK");
        assert_eq!(metrics.rpc_count("/quotad.v1.Quota/Admit", "OK"), 1);
        assert_eq!(
            metrics.rpc_count("/quotad.v1.Quota/Admit", "RESOURCE_EXHAUSTED"),
            1
        );
        assert!(metrics.encode().contains("quotad_requests_shed_total 1\n"));
    }

    #[tokio::test]
    async fn keeps_a_clean_client_request_id_and_makes_one_otherwise() {
        let metrics = Metrics::new();
        let svc = GuardLayer::new(4, metrics).layer(tower::service_fn(
            |r: http::Request<()>| async move {
                // The handler sees the id the response carries.
                let id = r.headers().get(REQUEST_ID_HEADER).cloned();
                let mut resp = http::Response::new(tonic::body::Body::default());
                if let Some(id) = id {
                    resp.headers_mut().insert("seen", id);
                }
                Ok::<_, std::convert::Infallible>(resp)
            },
        ));
        let mut r = req("/quotad.v1.Quota/Admit");
        r.headers_mut()
            .insert(REQUEST_ID_HEADER, http::HeaderValue::from_static("abc-1"));
        let resp = svc.clone().call(r).await.unwrap();
        assert_eq!(resp.headers()[REQUEST_ID_HEADER], "abc-1");
        assert_eq!(resp.headers()["seen"], "abc-1");
        let mut r = req("/quotad.v1.Quota/Admit");
        r.headers_mut().insert(
            REQUEST_ID_HEADER,
            http::HeaderValue::from_static("has space"),
        );
        let resp = svc.clone().call(r).await.unwrap();
        let made = resp.headers()[REQUEST_ID_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        assert_ne!(made, "has space");
        assert_eq!(resp.headers()["seen"], made.as_str());
    }
}
