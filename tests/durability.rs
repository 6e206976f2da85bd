//! Crash and restart tests against the real `quotad` binary: a kill -9 after acknowledged
//! Commits loses none of them and applies none twice (G2); SIGTERM drains and exits 0.

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
}

fn spawn(data_dir: &std::path::Path) -> Proc {
    spawn_with(data_dir, &[])
}

fn spawn_with(data_dir: &std::path::Path, extra: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quotad"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
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
        .strip_prefix("quotad listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    Proc { child, addr }
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
    let (_, mut admin) = connect(p.addr).await;
    admin
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            balance: Some(money("1000")),
        })
        .await
        .unwrap();

    // Eight workers reserve and commit as fast as they can; each remembers what it was
    // acknowledged. The process is killed while they run.
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (mut quota, _) = connect(p.addr).await;
        let acked = acked.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                i += 1;
                let id = format!("w{w}-{i}");
                let ms = 1_000 + (i % 7) as i64;
                if quota.reserve(reserve_req("acme", &id, ms)).await.is_err() {
                    break;
                }
                match quota
                    .commit(pb::CommitRequest {
                        reservation_id: id.clone(),
                        quantity: ms,
                    })
                    .await
                {
                    Ok(_) => acked.lock().await.push((id, ms)),
                    Err(_) => break,
                }
            }
        }));
    }
    // Let a few hundred commits through, then kill.
    loop {
        if acked.lock().await.len() >= 300 {
            break;
        }
        tokio::task::yield_now().await;
    }
    kill9(&mut p);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let acked = acked.lock().await.clone();
    assert!(acked.len() >= 300);

    let mut p = spawn_with(dir.path(), extra);
    let (mut quota, mut admin) = connect(p.addr).await;
    let st = admin
        .get_statement(pb::GetStatementRequest {
            account_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = std::collections::HashMap::new();
    for e in &st.entries {
        *seen.entry(e.usage_id.clone()).or_insert(0) += 1;
    }
    for (id, ms) in &acked {
        assert_eq!(
            seen.get(id),
            Some(&1),
            "acknowledged commit {id} must be present once"
        );
        let e = st.entries.iter().find(|e| &e.usage_id == id).unwrap();
        assert_eq!(e.quantity, *ms);
    }
    // At most one unacknowledged commit per worker was in flight at the kill.
    assert!(
        st.entries.len() <= acked.len() + 8,
        "{} entries for {} acks",
        st.entries.len(),
        acked.len()
    );
    // The balance is the opening balance less exactly what the statement shows.
    let total: rust_decimal::Decimal = st
        .entries
        .iter()
        .map(|e| amount(&e.cost).parse::<rust_decimal::Decimal>().unwrap())
        .sum();
    let b = balance_of(&mut quota, "acme").await;
    assert_eq!(
        amount(&b.balance).parse::<rust_decimal::Decimal>().unwrap(),
        rust_decimal::Decimal::from(1000) - total
    );
    kill9(&mut p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_holds_survive_kill_9_and_sigterm_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = spawn(dir.path());
    let (mut quota, mut admin) = connect(p.addr).await;
    admin
        .create_account(pb::CreateAccountRequest {
            account_id: "acme".into(),
            balance: Some(money("1")),
        })
        .await
        .unwrap();
    let r = quota
        .reserve(reserve_req("acme", "open-1", 600_000))
        .await
        .unwrap()
        .into_inner();
    assert!(r.admitted);
    kill9(&mut p);

    let mut p = spawn(dir.path());
    let (mut quota, _) = connect(p.addr).await;
    let b = balance_of(&mut quota, "acme").await;
    assert_eq!(amount(&b.held), "0.36", "the hold survived the crash");
    let c = quota
        .commit(pb::CommitRequest {
            reservation_id: "open-1".into(),
            quantity: 500_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(amount(&c.charged), "0.3");

    // SIGTERM: drain and exit 0.
    let pid = p.child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let code = p.child.wait().unwrap();
    assert_eq!(code.code(), Some(0), "graceful shutdown exits 0");

    let mut p = spawn(dir.path());
    let (mut quota, _) = connect(p.addr).await;
    let b = balance_of(&mut quota, "acme").await;
    assert_eq!(amount(&b.balance), "0.7");
    assert_eq!(amount(&b.held), "0");
    kill9(&mut p);
}
