//! One webhook POST over HTTP/1.1 (hyper), bounded in time: a fresh connection per attempt,
//! so a dead or slow endpoint holds nothing between attempts.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Most bytes of an endpoint's answer read (the rest is dropped with the connection).
const ANSWER_MAX_BYTES: usize = 4096;

/// The headers of one signed message.
#[derive(Debug, Clone)]
pub struct Signed {
    pub webhook_id: String,
    pub timestamp_s: i64,
    pub signature: String,
}

/// POSTs `body` to `url`: Ok(status) for any HTTP answer, Err(reason) if none came in time.
pub async fn post(
    url: &str,
    signed: &Signed,
    body: String,
    timeout: Duration,
) -> Result<u16, String> {
    match tokio::time::timeout(timeout, exchange(url, signed, body)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer in {} ms", timeout.as_millis())),
    }
}

async fn exchange(url: &str, signed: &Signed, body: String) -> Result<u16, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    let host = uri.host().ok_or("url has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "quotad-webhooks")
        .header("webhook-id", &signed.webhook_id)
        .header("webhook-timestamp", signed.timestamp_s.to_string())
        .header("webhook-signature", &signed.signature)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("request: {e}"))?;
    let answer = sender.send_request(req).await;
    let out = match answer {
        Ok(resp) => {
            let status = resp.status().as_u16();
            // Read a little of the answer so the endpoint is not cut off mid-write.
            let mut body = resp.into_body();
            let mut read = 0;
            while read < ANSWER_MAX_BYTES {
                match body.frame().await {
                    Some(Ok(f)) => read += f.data_ref().map_or(0, Bytes::len),
                    _ => break,
                }
            }
            Ok(status)
        }
        Err(e) => Err(format!("request failed: {e}")),
    };
    driver.abort();
    out
}
