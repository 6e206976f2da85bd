//! Bytes no generated client would send, straight over HTTP/2 to the real server:
//! malformed protobuf, broken gRPC framing, oversize and lying length prefixes, unknown
//! methods. Each gets its gRPC status (HTTP 200 with `grpc-status`: what tonic gives for
//! each, pinned here so a change is noticed) and a short message saying what was wrong;
//! nothing is changed, and the server goes on serving.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use quotad::pb;
use tokio::net::TcpStream;

/// What came back for one raw call.
#[derive(Debug)]
struct Answer {
    http_status: u16,
    /// `grpc-status` from the headers (trailers-only) or the trailers.
    grpc_status: Option<i32>,
    message: String,
}

/// A gRPC frame: flag byte, 4-byte big-endian length, then `body`.
fn frame(compressed: bool, declared_len: u32, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(u8::from(compressed));
    b.put_u32(declared_len);
    b.put_slice(body);
    b.freeze()
}

fn msg(body: &[u8]) -> Bytes {
    frame(false, body.len() as u32, body)
}

async fn call(
    addr: std::net::SocketAddr,
    token: &str,
    path: &str,
    content_type: &str,
    body: Bytes,
) -> Answer {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut h2 = h2.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (resp, mut send) = h2.send_request(req, false).unwrap();
    // The server may answer (and reset the stream) before taking it all.
    let _ = send.send_data(body, true);
    let resp = match resp.await {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                http_status: 0,
                grpc_status: None,
                message: format!("stream refused: {e}"),
            };
        }
    };
    let http_status = resp.status().as_u16();
    let status_of = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let message_of = |h: &http::HeaderMap| {
        h.get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    if let Some(s) = status_of(resp.headers()) {
        return Answer {
            http_status,
            grpc_status: Some(s),
            message: message_of(resp.headers()),
        };
    }
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        if chunk.is_err() {
            break;
        }
    }
    let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
    Answer {
        http_status,
        grpc_status: status_of(&trailers),
        message: message_of(&trailers),
    }
}

const GRPC: &str = "application/grpc";
const RESERVE: &str = "/quotad.v1.Quota/Reserve";

/// grpc-message is percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encoded<M: prost::Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

#[tokio::test]
async fn malformed_bytes_get_clean_statuses_and_the_server_stays_up() {
    let mut h = Harness::start().await;
    h.create_account("acme", "10").await.unwrap();
    let addr = h.running.as_ref().unwrap().addr;
    let before = (
        h.get_balance("acme").await.unwrap(),
        h.get_statement("acme").await.unwrap(),
    );

    // A valid Reserve, then the same bytes cut short, and one whose string field holds
    // invalid UTF-8 (field 1, wire type 2, length 2, bytes ff fe).
    let valid = encoded(&reserve_req("acme", "raw-1", GPU_SHARED, A10, 1_000, 0));
    let bad_utf8 = [0x0a, 0x02, 0xff, 0xfe];
    let huge = vec![b'a'; 1024 * 1024];
    let huge_msg = encoded(&pb::GetBalanceRequest {
        account_id: "x".repeat(200 * 1024),
    });
    use tonic::Code::{Internal, ResourceExhausted, Unimplemented};
    let cases: Vec<(&str, &str, &str, Bytes, tonic::Code, &str)> = vec![
        (
            "garbage",
            RESERVE,
            GRPC,
            msg(&[0xff; 32]),
            Internal,
            "decode",
        ),
        (
            "truncated message",
            RESERVE,
            GRPC,
            msg(&valid[..valid.len() / 2]),
            Internal,
            "decode",
        ),
        (
            "invalid utf-8",
            RESERVE,
            GRPC,
            msg(&bad_utf8),
            Internal,
            "UTF-8",
        ),
        (
            "varint where a string goes",
            RESERVE,
            GRPC,
            msg(&[
                0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            ]),
            Internal,
            "decode",
        ),
        (
            "wrong wire type",
            RESERVE,
            GRPC,
            msg(&[0x0d, 1, 2, 3, 4]),
            Internal,
            "wire type",
        ),
        (
            "compressed flag, no compression",
            RESERVE,
            GRPC,
            frame(true, valid.len() as u32, &valid),
            Internal,
            "compressed",
        ),
        (
            "frame shorter than its prefix",
            RESERVE,
            GRPC,
            frame(false, 1_000, &valid),
            Internal,
            "EOF",
        ),
        (
            "prefix claims 4 GiB",
            RESERVE,
            GRPC,
            frame(false, u32::MAX, &valid),
            ResourceExhausted,
            "too large",
        ),
        (
            "half a frame header",
            RESERVE,
            GRPC,
            Bytes::from_static(&[0, 0, 0]),
            Internal,
            "EOF",
        ),
        (
            "oversize junk",
            RESERVE,
            GRPC,
            msg(&huge),
            ResourceExhausted,
            "65536",
        ),
        (
            "oversize valid message",
            "/quotad.v1.Quota/GetBalance",
            GRPC,
            msg(&huge_msg),
            ResourceExhausted,
            "65536",
        ),
        (
            "unknown method",
            "/quotad.v1.Quota/Explode",
            GRPC,
            msg(&valid),
            Unimplemented,
            "",
        ),
        (
            "unknown service",
            "/nope.v1.Nope/Call",
            GRPC,
            msg(&valid),
            Unimplemented,
            "",
        ),
        (
            "not grpc",
            RESERVE,
            "text/plain",
            Bytes::from_static(b"hello"),
            Internal,
            "compression flag",
        ),
    ];
    for (what, path, ct, body, want, needle) in cases {
        let a = call(addr, &h.token, path, ct, body).await;
        assert_eq!(a.http_status, 200, "{what}: {a:?}");
        let code = a.grpc_status.map(tonic::Code::from_i32);
        assert_eq!(code, Some(want), "{what}: {a:?}");
        let message = percent_decode(&a.message);
        assert!(
            message.contains(needle),
            "{what}: {message:?} lacks {needle:?}"
        );
        assert!(
            message.len() < 1_000,
            "{what}: message of {} bytes",
            message.len()
        );
    }
    // Nothing changed and the server serves.
    assert_eq!(
        (
            h.get_balance("acme").await.unwrap(),
            h.get_statement("acme").await.unwrap()
        ),
        before
    );
    assert!(
        h.reserve("acme", "raw-1", GPU_SHARED, A10, 1_000, 0)
            .await
            .unwrap()
            .admitted
    );
    h.shutdown().await;
}
