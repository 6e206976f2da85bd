//! The metrics endpoint on its own listener (`metrics_listen`), served by hyper (HTTP/1.1,
//! one request per connection): `GET /metrics` (OpenMetrics text), `/healthz` (the
//! process answers) and `/readyz` (every condition of `Metrics::ready_when` holds; 503 with
//! the reasons otherwise); other paths 404, other methods 405. At most
//! `DEFAULT_HTTP_CONNECTIONS_MAX` connections at once, each given
//! `DEFAULT_HTTP_READ_TIMEOUT_MS` for its request head (at most
//! `DEFAULT_HTTP_HEAD_BYTES_MAX`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::SharedMetrics;

/// Largest HTTP request head the metrics endpoint reads (hyper's least buffer).
pub const DEFAULT_HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;
/// How long the metrics endpoint waits for a request head.
pub const DEFAULT_HTTP_READ_TIMEOUT_MS: u64 = 5_000;
/// Longest one metrics connection is served (a scrape that reads its answer slowly).
pub const DEFAULT_HTTP_CONNECTION_MS: u64 = 30_000;
/// Most metrics connections served at once.
pub const DEFAULT_HTTP_CONNECTIONS_MAX: usize = 16;

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the metrics endpoint; serve it with `serve`.
pub async fn bind(
    addr: std::net::SocketAddr,
) -> Result<(TcpListener, std::net::SocketAddr), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| MetricsError::Listen { addr, source })?;
    Ok((listener, local))
}

/// Answers on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, metrics: SharedMetrics, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(DEFAULT_HTTP_CONNECTIONS_MAX));
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.changed() => break,
        };
        if *stop.borrow() {
            break;
        }
        let Ok((stream, _)) = conn else { continue };
        // Over the limit: drop the connection rather than queue scrapes.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let answer = respond(req.method(), req.uri().path(), &metrics);
                std::future::ready(Ok::<_, Infallible>(answer))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_millis(DEFAULT_HTTP_READ_TIMEOUT_MS))
                .max_buf_size(DEFAULT_HTTP_HEAD_BYTES_MAX)
                .serve_connection(TokioIo::new(stream), service);
            let limit = Duration::from_millis(DEFAULT_HTTP_CONNECTION_MS);
            if let Ok(Err(e)) = tokio::time::timeout(limit, conn).await {
                tracing::debug!(error = %e, "metrics connection failed");
            }
        });
    }
}

fn respond(method: &Method, path: &str, metrics: &SharedMetrics) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match path {
        "/metrics" => {
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match metrics.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why.join("\n") + "\n"),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn answers_metrics_health_and_readiness_and_refuses_the_rest() {
        let m = Metrics::new();
        let ok = respond(&Method::GET, "/metrics", &m);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        assert_eq!(
            respond(&Method::GET, "/healthz", &m).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::GET, "/readyz", &m).status(),
            StatusCode::OK
        );
        m.ready_when(|| Err("journal closed".into()));
        let not = respond(&Method::GET, "/readyz", &m);
        assert_eq!(not.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            respond(&Method::GET, "/", &m).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", &m).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
