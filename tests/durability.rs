//! Crash and restart tests against the real `quotad` binary: a kill -9 after acknowledged
//! Commits loses none of them and applies none twice (G2); SIGTERM drains and exits 0.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use quotad::pb;
use tokio::sync::Mutex;

struct Proc {
    child: Child,
    addr: std::net::SocketAddr,
    /// The operator token clients send (read from the file the process wrote).
    token: String,
}

/// A test that fails half-way leaves no quotad running behind it.
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(data_dir: &std::path::Path) -> Proc {
    spawn_with(data_dir, &[])
}

fn spawn_with(data_dir: &std::path::Path, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quotad"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra);
    spawn_cmd(
        cmd,
        "quotad listening on ",
        &data_dir.join("operator.token"),
    )
}

/// Starts `cmd` and reads the address from its first stdout line, `PREFIX ADDR`.
fn spawn_cmd(mut cmd: Command, prefix: &str, token_file: &std::path::Path) -> Proc {
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("quotad binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("quotad prints its address");
    let addr = line
        .trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    // A sidecar of a remote ledger writes no token: the test gives it the ledger's.
    let token = quotad::auth::read_token_file(token_file).unwrap_or_default();
    Proc { child, addr, token }
}

fn kill9(p: &mut Proc) {
    // SIGKILL: no drain, no flush, no journal close.
    p.child.kill().expect("kill");
    p.child.wait().expect("reaped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_commit() {
    kill_9_under_load(&[]).await;
}

/// `--journal-sync normal` skips the fsync per group commit, not the write: what was
/// acknowledged is in the OS, which a kill -9 of quotad does not lose.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_acknowledged_commit_without_fsync() {
    kill_9_under_load(&["--journal-sync", "normal"]).await;
}

async fn kill_9_under_load(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn_with(dir.path(), extra);
    let mut admin = Client::connect(p.addr, &p.token).await;
    admin.create_account("acme", "1000").await.unwrap();
    // Let a few hundred commits through, then kill while the workers run.
    let load = Load::start(p.addr, &p.token, "acme").await;
    load.wait_acked(300).await;
    kill9(&mut p);
    let (acked, _) = load.finish().await;
    assert!(acked.len() >= 300);

    let mut p = spawn_with(dir.path(), extra);
    let mut c = Client::connect(p.addr, &p.token).await;
    let st = c.get_statement("acme").await.unwrap();
    assert_exactly_once(&st, &acked, WORKERS);
    assert_balance_matches(&mut c, "acme", "1000", &st).await;
    kill9(&mut p);
}

/// Workers of a load: each reserves and commits in a loop.
const WORKERS: usize = 8;

/// Eight workers reserving and committing as fast as they can; each remembers what it was
/// acknowledged, and why it stopped.
struct Load {
    acked: Arc<Mutex<Vec<(String, i64)>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Option<String>>>,
}

impl Load {
    async fn start(addr: std::net::SocketAddr, token: &str, account: &str) -> Load {
        let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let mut quota = Client::connect(addr, token).await;
            let (acked, stop, account) = (acked.clone(), stop.clone(), account.to_owned());
            workers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 100_000 {
                    i += 1;
                    let id = format!("w{w}-{i}");
                    let ms = 1_000 + (i % 7) as i64;
                    match quota.reserve(&account, &id, GPU_SHARED, A10, ms, 0).await {
                        Ok(r) if r.admitted => {}
                        Ok(r) => return Some(format!("denied: {:?}", r.reason)),
                        Err(e) => return Some(format!("{:?}: {}", e.code(), e.message())),
                    }
                    let c = quota.commit(&id, ms).await;
                    match c {
                        Ok(_) => acked.lock().await.push((id, ms)),
                        Err(e) => return Some(format!("{:?}: {}", e.code(), e.message())),
                    }
                }
                None
            }));
        }
        Load {
            acked,
            stop,
            workers,
        }
    }

    async fn wait_acked(&self, n: usize) {
        loop {
            if self.acked.lock().await.len() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Stops the workers; what was acknowledged, and why each worker stopped on its own.
    async fn finish(self) -> (Vec<(String, i64)>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut stopped = Vec::new();
        for w in self.workers {
            if let Ok(Some(why)) = w.await {
                stopped.push(why);
            }
        }
        let acked = self.acked.lock().await.clone();
        (acked, stopped)
    }
}

/// Every acknowledged commit is in the statement exactly once with its quantity, and at
/// most `in_flight_max` unacknowledged ones (in flight when the process died) besides.
fn assert_exactly_once(st: &pb::Statement, acked: &[(String, i64)], in_flight_max: usize) {
    let mut seen = std::collections::HashMap::new();
    for e in &st.entries {
        *seen.entry(e.usage_id.clone()).or_insert(0) += 1;
    }
    for (id, ms) in acked {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "acknowledged commit {id} must be present once"
        );
        let e = st.entries.iter().find(|e| &e.usage_id == id).unwrap();
        assert_eq!(e.quantity, *ms);
    }
    assert!(
        st.entries.len() <= acked.len() + in_flight_max,
        "{} entries for {} acks",
        st.entries.len(),
        acked.len()
    );
}

/// The balance is the opening balance less exactly what the statement shows.
async fn assert_balance_matches(
    quota: &mut Client,
    account: &str,
    opening: &str,
    st: &pb::Statement,
) {
    let total: rust_decimal::Decimal = st
        .entries
        .iter()
        .map(|e| amount(&e.cost).parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    let b = quota.get_balance(account).await.unwrap();
    assert_eq!(
        amount(&b.balance).parse::<rust_decimal::Decimal>().unwrap(),
        opening.parse::<rust_decimal::Decimal>().unwrap() - total
    );
}

/// Ledger mode: a sidecar (`quotad serve --ledger`) killed with SIGKILL under load, then
/// started again on its data directory, delivers every acknowledged commit to the ledger
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_sidecar_in_ledger_mode_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quotad"));
    let token_file = dir.path().join("ledger-operator.token");
    cmd.args(["ledger", "--listen", "127.0.0.1:0", "--database-url"])
        .arg(format!("sqlite:{}", dir.path().join("ledger.db").display()))
        .arg("--operator-token-file")
        .arg(&token_file);
    let mut ledger = spawn_cmd(cmd, "quotad ledger listening on ", &token_file);
    let mut admin = Client::connect(ledger.addr, &ledger.token).await;
    admin.create_account("acme", "1000").await.unwrap();
    let sidecar_dir = dir.path().join("sidecar");
    let ledger_url = format!("http://{}", ledger.addr);
    let token_arg = token_file.display().to_string();
    let sidecar_args = [
        "--ledger",
        ledger_url.as_str(),
        "--sync-interval-ms",
        "50",
        "--ledger-token-file",
        token_arg.as_str(),
    ];
    let mut sidecar = spawn_with(&sidecar_dir, &sidecar_args);
    sidecar.token = ledger.token.clone();

    let load = Load::start(sidecar.addr, &sidecar.token, "acme").await;
    load.wait_acked(300).await;
    kill9(&mut sidecar);
    let (acked, _) = load.finish().await;
    assert!(acked.len() >= 300);

    // Started again, the sidecar pushes what its journal holds; the ledger has it all once.
    let mut sidecar = spawn_with(&sidecar_dir, &sidecar_args);
    sidecar.token = ledger.token.clone();
    let mut st = admin.get_statement("acme").await.unwrap();
    for _ in 0..600 {
        let ids: std::collections::HashSet<&str> =
            st.entries.iter().map(|e| e.usage_id.as_str()).collect();
        if acked.iter().all(|(id, _)| ids.contains(id.as_str())) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        st = admin.get_statement("acme").await.unwrap();
    }
    assert_exactly_once(&st, &acked, WORKERS);
    let mut quota = Client::connect(sidecar.addr, &sidecar.token).await;
    assert_balance_matches(&mut quota, "acme", "1000", &st).await;
    kill9(&mut sidecar);
    kill9(&mut ledger);
}

/// A full disk, played by a file size limit (`prlimit --fsize`): writes past it fail with
/// EFBIG like ENOSPC. Calls then fail with a clear status (or are denied) instead of the
/// process dying; started again without the limit, the journal opens intact and every
/// acknowledged commit is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_fails_calls_cleanly_and_corrupts_nothing() {
    let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("prlimit (util-linux) is needed to play a full disk");
    let dir = tempfile::tempdir().unwrap();
    // Create the account and the files unlimited first.
    let mut p = spawn(dir.path());
    let mut admin = Client::connect(p.addr, &p.token).await;
    admin.create_account("acme", "1000").await.unwrap();
    // Stopped cleanly, the journal is its records alone (no space written ahead).
    let pid = p.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(p.child.wait().unwrap().code(), Some(0));
    let journal_bytes = std::fs::metadata(dir.path().join("journal.log"))
        .unwrap()
        .len();
    // Room for a few hundred more pairs in the journal, and less than the space it writes
    // ahead: that fails first, and the records then go on being appended until the limit.
    // (Few enough pairs that the statement, at most 10,000 entries, shows them all.)
    let limit_bytes = journal_bytes + 200_000;
    const { assert!(200_000 < quotad::journal::DEFAULT_JOURNAL_PREALLOCATE_BYTES) };
    let mut cmd = Command::new(prlimit);
    cmd.arg(format!("--fsize={limit_bytes}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_quotad"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path());
    let mut p = spawn_cmd(
        cmd,
        "quotad listening on ",
        &dir.path().join("operator.token"),
    );
    let load = Load::start(p.addr, &p.token, "acme").await;
    // Every worker stops by itself once the disk is "full".
    let mut stopped = Vec::new();
    let mut acked = Vec::new();
    for _ in 0..2_400 {
        if load.workers.iter().all(|w| w.is_finished()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        load.workers.iter().all(|w| w.is_finished()),
        "the workers did not run into the file size limit within 2 min"
    );
    let (a, s) = load.finish().await;
    acked.extend(a);
    stopped.extend(s);
    assert_eq!(stopped.len(), WORKERS, "{stopped:?}");
    assert!(
        acked.len() < 10_000,
        "{} pairs: more than a statement shows",
        acked.len()
    );
    for why in &stopped {
        assert!(
            why.contains("File too large") || why.contains("LEDGER_UNAVAILABLE"),
            "a worker stopped for an unclear reason: {why}"
        );
    }
    assert!(
        stopped.iter().any(|w| w.contains("journal")),
        "no call was failed by the journal: {stopped:?}"
    );
    // Still serving: reads answer.
    let mut quota = Client::connect(p.addr, &p.token).await;
    let _ = quota.get_balance("acme").await.unwrap();
    assert!(p.child.try_wait().unwrap().is_none(), "quotad died");
    kill9(&mut p);

    let mut p = spawn(dir.path());
    let mut c = Client::connect(p.addr, &p.token).await;
    let st = c.get_statement("acme").await.unwrap();
    assert_exactly_once(&st, &acked, WORKERS);
    assert_balance_matches(&mut c, "acme", "1000", &st).await;
    // And it takes new work.
    let r = c
        .reserve("acme", "after", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    assert!(r.admitted);
    kill9(&mut p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_holds_survive_kill_9_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path());
    let mut c = Client::connect(p.addr, &p.token).await;
    c.create_account("acme", "1").await.unwrap();
    let r = c
        .reserve("acme", "open-1", GPU_SHARED, A10, 600_000, 0)
        .await
        .unwrap();
    assert!(r.admitted);
    kill9(&mut p);

    let mut p = spawn(dir.path());
    let mut c = Client::connect(p.addr, &p.token).await;
    let b = c.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.held), "0.36", "the hold survived the crash");
    let c = c.commit("open-1", 500_000).await.unwrap();
    assert_eq!(amount(&c.charged), "0.3");

    // SIGTERM: drain and exit 0.
    let pid = p.child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let code = p.child.wait().unwrap();
    assert_eq!(code.code(), Some(0), "graceful shutdown exits 0");

    let mut p = spawn(dir.path());
    let mut c = Client::connect(p.addr, &p.token).await;
    let b = c.get_balance("acme").await.unwrap();
    assert_eq!(amount(&b.balance), "0.7");
    assert_eq!(amount(&b.held), "0");
    kill9(&mut p);
}

/// Makes `dir` and the files in it unwritable: `chattr +i` as root (whom permissions do not
/// stop), `chmod a-w` otherwise. Returns the undo.
fn make_read_only(dir: &std::path::Path) -> impl FnOnce() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let mut paths: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.push(dir.to_path_buf());
    let (tool, on, off) = if root {
        ("chattr", "+i", "-i")
    } else {
        ("chmod", "a-w", "u+w")
    };
    let st = Command::new(tool).arg(on).args(&paths).status();
    assert!(
        matches!(st, Ok(s) if s.success()),
        "`{tool} {on}` failed: cannot make a directory read-only here"
    );
    // The protection must really hold, or the test would prove nothing.
    let probe = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("journal.log"));
    assert!(
        probe.is_err(),
        "journal.log is still writable after {tool} {on}"
    );
    move || {
        let _ = Command::new(tool).arg(off).args(&paths).status();
    }
}

/// Every file of `dir` with its bytes, by path.
fn dir_contents(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

/// A read-only data directory: quotad refuses to start, says which file and why, and
/// changes nothing; made writable again, it starts with everything there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_is_refused_at_start_and_left_intact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = spawn(&data);
    let mut c = Client::connect(p.addr, &p.token).await;
    c.create_account("acme", "1").await.unwrap();
    c.reserve("acme", "r1", GPU_SHARED, A10, 1_000, 0)
        .await
        .unwrap();
    c.commit("r1", 1_000).await.unwrap();
    kill9(&mut p);
    let before = dir_contents(&data);

    let undo = make_read_only(&data);
    let out = Command::new(env!("CARGO_BIN_EXE_quotad"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let after = dir_contents(&data);
    undo();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "quotad started on a read-only data dir"
    );
    assert!(
        stderr.contains(&data.display().to_string()),
        "the error names no file of the data dir: {stderr}"
    );
    assert!(
        stderr.contains("not permitted")
            || stderr.contains("ermission denied")
            || stderr.contains("ead-only"),
        "the error does not say why: {stderr}"
    );
    assert!(before == after, "a refused start changed the data dir");

    let mut p = spawn(&data);
    let mut c = Client::connect(p.addr, &p.token).await;
    let st = c.get_statement("acme").await.unwrap();
    assert_eq!(st.entries.len(), 1);
    assert_eq!(st.entries[0].usage_id, "r1");
    kill9(&mut p);
}
