//! The tower layer every gRPC request passes first: it gives the request an id (the
//! client's `x-request-id`, or a fresh one) named for the log lines written while it runs
//! (`logging::RequestLog`: nothing formatted unless a line is), refuses it at
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
use std::task::{Context, Poll, ready};
use std::time::Instant;

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::futures::TaskLocalFuture;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::grpc::error::{Overload, oversize_is_resource_exhausted};
use crate::logging::RequestLog;
use crate::metrics::{RpcSeries, SharedMetrics};

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
    S: Service<http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Per call: one lookup of the method's series (no key built), the client's id
        // reused or one made (the only allocation here), a relaxed add when it ends. The
        // request is named for log lines in a task-local, read only by a line written.
        let series = self.layer.metrics.rpc(req.uri().path());
        let id = client_request_id(req.headers()).unwrap_or_else(new_request_id);
        // Handlers and logs downstream see the same id.
        req.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
        let path = req.uri().path();
        let exempt = path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.");
        let permit = if exempt {
            None
        } else {
            match self.layer.slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return self.shed(path, &series, id),
            }
        };
        let log = RequestLog {
            rpc: req.uri().path_and_query().cloned(),
            request_id: id,
        };
        let done = Done {
            series,
            started: Instant::now(),
            code: CANCELLED,
        };
        GuardFuture::Call {
            inner: log.scope(self.inner.call(req)),
            permit,
            done: Some(done),
        }
    }
}

impl<S> Guard<S> {
    /// Refuses a call at once: `concurrency_max` are in flight.
    fn shed<F>(&self, path: &str, series: &RpcSeries, id: http::HeaderValue) -> GuardFuture<F> {
        let metrics = &self.layer.metrics;
        metrics.shed();
        series.done(RESOURCE_EXHAUSTED, std::time::Duration::ZERO);
        tracing::debug!(rpc = %path, request_id = %Id(&id), "shed: concurrency limit reached");
        let status = tonic::Status::from(Overload::Busy(self.layer.limit));
        let mut resp: Response = status.into_http();
        resp.headers_mut().insert(REQUEST_ID_HEADER, id);
        GuardFuture::Ready { resp: Some(resp) }
    }
}

pin_project! {
    /// A call under the guard (not boxed): the inner service's future with the request
    /// named for log lines, its concurrency slot, and its latency and status recorded
    /// when it ends; or a shed call's answer.
    #[project = GuardProj]
    pub enum GuardFuture<F> {
        Call {
            #[pin]
            inner: TaskLocalFuture<RequestLog, F>,
            permit: Option<OwnedSemaphorePermit>,
            done: Option<Done>,
        },
        Ready {
            resp: Option<Response>,
        },
    }
}

impl<F, E> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardProj::Ready { resp } => Poll::Ready(Ok(resp.take().unwrap_or_else(|| {
                tonic::Status::internal("guard: polled after it answered").into_http()
            }))),
            GuardProj::Call {
                mut inner,
                permit,
                done,
            } => {
                let mut r = ready!(inner.as_mut().poll(cx));
                drop(permit.take());
                if let Ok(resp) = &mut r {
                    oversize_is_resource_exhausted(resp.headers_mut());
                }
                if let Some(mut done) = done.take() {
                    done.code = match &r {
                        Ok(resp) => code_of(resp.headers()),
                        Err(_) => UNKNOWN,
                    };
                }
                if let (Ok(resp), Some(log)) = (&mut r, inner.take_value()) {
                    resp.headers_mut().insert(REQUEST_ID_HEADER, log.request_id);
                }
                Poll::Ready(r)
            }
        }
    }
}

/// gRPC status code numbers the guard records.
const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;
const RESOURCE_EXHAUSTED: usize = 8;

/// A request id as text, formatted only if a span or log line is.
struct Id<'a>(&'a http::HeaderValue);

impl std::fmt::Display for Id<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids are checked or made printable ASCII.
        f.write_str(self.0.to_str().unwrap_or("?"))
    }
}

/// Records the RPC when its future ends, also when it is dropped (a deadline, a client
/// that went away): those count as CANCELLED.
pub struct Done {
    series: Arc<RpcSeries>,
    started: Instant,
    /// gRPC status code number.
    code: usize,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.series.done(self.code, self.started.elapsed());
    }
}

/// The client's `x-request-id` if it is one we keep (printable, not too long), shared
/// with the request rather than copied.
fn client_request_id(headers: &http::HeaderMap) -> Option<http::HeaderValue> {
    let v = headers.get(REQUEST_ID_HEADER)?;
    let b = v.as_bytes();
    (!b.is_empty() && b.len() <= REQUEST_ID_BYTES_MAX && b.iter().all(u8::is_ascii_graphic))
        .then(|| v.clone())
}

/// A process-unique id: a random prefix per process, then a counter, in hex.
fn new_request_id() -> http::HeaderValue {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        // Without entropy the ids are still unique within the process.
        let _ = getrandom::getrandom(&mut b);
        u32::from_le_bytes(b)
    });
    // "{prefix:08x}-{n:x}" without the formatting machinery.
    let mut buf = [0u8; 8 + 1 + 16];
    hex(u64::from(*prefix), 8, &mut buf[..8]);
    buf[8] = b'-';
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    hex(n, digits, &mut buf[9..9 + digits]);
    http::HeaderValue::from_bytes(&buf[..9 + digits])
        .unwrap_or_else(|_| http::HeaderValue::from_static("0"))
}

/// `v`'s lowest `digits` hex digits into `out`, most significant first.
fn hex(v: u64, digits: usize, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().take(digits).enumerate() {
        let shift = 4 * (digits - 1 - i);
        *o = HEX[usize::from(u8::try_from((v >> shift) & 0xf).unwrap_or(0))];
    }
}

/// The gRPC status code number of a response as far as its headers tell: a trailers-only
/// error has `grpc-status` there; otherwise the status follows in trailers and the call
/// got as far as answering, which is counted as OK.
fn code_of(headers: &http::HeaderMap) -> usize {
    headers
        .get("grpc-status")
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0)
}

pub fn code_name(code: tonic::Code) -> &'static str {
    let n = usize::try_from(i32::from(code)).unwrap_or(2);
    crate::metrics::CODE_NAMES
        .get(n)
        .copied()
        .unwrap_or("UNKNOWN")
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
        crate::metrics::CODE_NAMES[code_of(r.headers())]
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

    #[test]
    fn made_ids_are_a_process_prefix_and_a_hex_counter() {
        let a = new_request_id();
        let b = new_request_id();
        let (pa, na) = a.to_str().unwrap().split_once('-').unwrap();
        let (pb, nb) = b.to_str().unwrap().split_once('-').unwrap();
        assert_eq!((pa.len(), pa), (8, pb));
        let (na, nb) = (
            u64::from_str_radix(na, 16).unwrap(),
            u64::from_str_radix(nb, 16).unwrap(),
        );
        assert!(nb > na, "{a:?} {b:?}");
        let mut out = [0u8; 3];
        hex(0xabc, 3, &mut out);
        assert_eq!(&out, b"abc");
    }

    #[tokio::test]
    async fn keeps_a_clean_client_request_id_and_makes_one_otherwise() {
        let metrics = Metrics::new();
        let svc = GuardLayer::new(4, metrics).layer(tower::service_fn(
            |r: http::Request<()>| async move {
                // The handler sees the id the response carries, and its log lines name it.
                let id = r.headers().get(REQUEST_ID_HEADER).cloned();
                let mut resp = http::Response::new(tonic::body::Body::default());
                if let Some(id) = id {
                    resp.headers_mut().insert("seen", id);
                }
                tokio::task::yield_now().await;
                let logged = RequestLog::with_current(|l| (l.rpc.clone(), l.request_id.clone()));
                if let Some((rpc, id)) = logged {
                    resp.headers_mut().insert("logged", id);
                    let rpc = rpc.map(|p| p.path().to_owned()).unwrap_or_default();
                    resp.headers_mut()
                        .insert("logged-rpc", rpc.parse().unwrap());
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
        assert_eq!(resp.headers()["logged"], "abc-1");
        assert_eq!(resp.headers()["logged-rpc"], "/quotad.v1.Quota/Admit");
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
        assert_eq!(resp.headers()["logged"], made.as_str());
        // Outside a request, nothing is named.
        assert!(RequestLog::with_current(|_| ()).is_none());
    }
}
