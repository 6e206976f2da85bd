//! Real `quotad` processes for the tests that run them (a ledger on PostgreSQL and its
//! sidecars): start, read the address they print, stop with SIGTERM or SIGKILL; and a
//! PostgreSQL database of the test's own, dropped at the end.

// Test harness: a failure here is a failed test, so it may unwrap.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

/// Bound on a process printing its address, or exiting after SIGTERM.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `quotad` child process and the address it printed.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub addr: SocketAddr,
}

impl Proc {
    /// SIGKILL: no drain, no flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (bounded) for the exit; returns the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(st.success(), "kill -TERM {pid} ({})", self.name);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > PROCESS_TIMEOUT {
                self.kill9();
                panic!(
                    "{} did not exit within {PROCESS_TIMEOUT:?} of SIGTERM",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill9();
        }
    }
}

/// Starts `quotad ARGS` and reads the address from its first stdout line, which must be
/// `PREFIX ADDR`. Err if it exits first (e.g. the port is still taken). Its log level is
/// QUOTAD_CLUSTER_LOG (default `warn`); its stderr is the test's.
pub fn spawn_proc(name: &str, args: &[String], prefix: &str) -> Result<Proc, String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quotad"))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("QUOTAD_CLUSTER_LOG").unwrap_or("warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the quotad binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the first line, then drains stdout so the child never blocks on it.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        for _ in lines {}
    });
    let line = match rx.recv_timeout(PROCESS_TIMEOUT) {
        Ok(Some(Ok(line))) => line,
        other => {
            let _ = child.kill();
            let status = child.wait();
            return Err(format!(
                "{name} printed no address ({other:?}); exit {status:?}"
            ));
        }
    };
    let addr = line
        .trim()
        .strip_prefix(prefix)
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name}: unexpected first line {line:?}"));
    Ok(Proc {
        name: name.to_owned(),
        child,
        addr,
    })
}

/// `quotad ledger` on `listen` with `extra` flags; retries up to `attempts` times (a
/// restart on the same port).
pub async fn spawn_ledger(
    database_url: &str,
    listen: SocketAddr,
    attempts: usize,
    token_file: &std::path::Path,
    extra: &[String],
) -> Proc {
    let mut args: Vec<String> = [
        "ledger",
        "--database-url",
        database_url,
        "--listen",
        &listen.to_string(),
        "--operator-token-file",
        &token_file.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    let mut last = String::new();
    for _ in 0..attempts.max(1) {
        let a = args.clone();
        match tokio::task::spawn_blocking(move || {
            spawn_proc("ledger", &a, "quotad ledger listening on ")
        })
        .await
        .unwrap()
        {
            Ok(p) => return p,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("the ledger did not start on {listen}: {last}");
}

/// `quotad serve --ledger` with its data in `data_dir`, on a port of its own, with `extra`
/// flags.
pub async fn spawn_sidecar(
    ledger: SocketAddr,
    data_dir: &std::path::Path,
    name: &str,
    token_file: &std::path::Path,
    extra: &[String],
) -> Proc {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--ledger-token-file".into(),
        token_file.display().to_string(),
        "--ledger".into(),
        format!("http://{ledger}"),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || spawn_proc(&name, &args, "quotad listening on "))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A PostgreSQL database of one test run, dropped at the end (also when the test fails,
/// unless QUOTAD_CLUSTER_KEEP_DB is set).
pub struct TestDatabase {
    server_url: String,
    pub name: String,
    /// The URL of this database.
    pub url: String,
    dropped: bool,
}

impl TestDatabase {
    pub async fn create(server_url: &str, prefix: &str) -> TestDatabase {
        let mut bytes = [0u8; 6];
        getrandom::getrandom(&mut bytes).unwrap();
        let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{prefix}_{suffix}");
        let mut conn = sqlx::PgConnection::connect(server_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL {server_url}: {e}"));
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let _ = conn.close().await;
        TestDatabase {
            server_url: server_url.to_owned(),
            url: with_database(server_url, &name),
            name,
            dropped: false,
        }
    }

    pub async fn drop_now(&mut self) {
        if !self.dropped {
            self.dropped = true;
            drop_database(&self.server_url, &self.name).await;
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if !self.dropped && std::env::var_os("QUOTAD_CLUSTER_KEEP_DB").is_some() {
            eprintln!(
                "database {} kept (QUOTAD_CLUSTER_KEEP_DB is set)",
                self.name
            );
            self.dropped = true;
        }
        if !self.dropped {
            self.dropped = true;
            let (url, db) = (self.server_url.clone(), self.name.clone());
            // Drop runs inside the test's runtime: do the async work on a thread of its own.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(drop_database(&url, &db))
            })
            .join();
        }
    }
}

async fn drop_database(server_url: &str, database: &str) {
    match sqlx::PgConnection::connect(server_url).await {
        Ok(mut conn) => {
            if let Err(e) =
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
            {
                eprintln!("could not drop database {database}: {e}");
            }
            let _ = conn.close().await;
        }
        Err(e) => eprintln!("could not drop database {database}: {e}"),
    }
}

/// DATABASE_URL, or None after saying why `test` is skipped; with CI set, a missing
/// DATABASE_URL fails the test instead.
pub fn database_url(test: &str) -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) => {
            panic!("CI is set but DATABASE_URL is not: the {test} test needs PostgreSQL")
        }
        _ => {
            println!("skipping the {test} test: set DATABASE_URL=postgres://... to run it");
            None
        }
    }
}

/// `url` with its database name replaced by `database` (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let head = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(q) => format!("{head}/{database}?{q}"),
        None => format!("{head}/{database}"),
    }
}
