//! An operator's first hour, against the real `quotad` binary: one server per data
//! directory (a second `serve` or SQLite `ledger` is refused, naming the directory and the
//! PID), the port checked before anything is written, each error said once.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::procs::{PROCESS_TIMEOUT, Proc, spawn_proc};

/// `quotad ARGS` run to its end (bounded), with `envs` set; stdout and stderr captured.
fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quotad"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("QUOTAD_DATA_DIR")
        .env_remove("QUOTAD_TOKEN")
        .env_remove("QUOTAD_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("the quotad binary starts");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PROCESS_TIMEOUT) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("quotad {args:?} did not finish within {PROCESS_TIMEOUT:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `quotad serve` on a port of its own with its data in `dir`, embedded ledger.
fn serve(dir: &Path) -> Proc {
    let args = s(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &dir.display().to_string(),
    ]);
    spawn_proc("serve", &args, "quotad listening on ").unwrap()
}

#[tokio::test]
async fn a_second_serve_on_a_data_dir_is_refused_naming_the_dir_and_the_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut first = serve(&dir);
    let journal = std::fs::read(dir.join("journal.log")).unwrap();

    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir.display().to_string(),
        ],
        &[],
    );
    assert!(!out.status.success(), "the second serve must fail");
    let err = text(&out.stderr);
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(err.contains(&format!("PID {}", first.child.id())), "{err}");
    assert_eq!(err.matches("in use by another quotad").count(), 1, "{err}");
    assert_eq!(
        std::fs::read(dir.join("journal.log")).unwrap(),
        journal,
        "the refused serve wrote nothing to the journal"
    );

    // Once the first has stopped, the directory is free again.
    assert_eq!(first.terminate().await, Some(0));
    let mut again = serve(&dir);
    assert_eq!(again.terminate().await, Some(0));
}

#[tokio::test]
async fn a_port_in_use_is_found_before_the_data_dir_is_made_and_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let out = run(
        &[
            "serve",
            "--listen",
            &port,
            "--data-dir",
            &dir.display().to_string(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.matches("cannot listen on").count(), 1, "{err}");
    assert!(err.contains(&port), "{err}");
    assert!(!dir.exists(), "nothing is created when the port is taken");

    let token = tmp.path().join("ledger").join("operator.token");
    let out = run(
        &[
            "ledger",
            "--listen",
            &port,
            "--database-url",
            &format!("sqlite:{}", tmp.path().join("ledger.db").display()),
            "--operator-token-file",
            &token.display().to_string(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.matches("cannot listen on").count(), 1, "{err}");
    assert!(!token.exists() && !tmp.path().join("ledger.db").exists());
}

#[tokio::test]
async fn a_second_sqlite_ledger_on_one_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("ledger.db");
    let url = format!("sqlite:{}", db.display());
    let token = tmp.path().join("operator.token").display().to_string();
    let args = |listen: &str| {
        s(&[
            "ledger",
            "--listen",
            listen,
            "--database-url",
            &url,
            "--operator-token-file",
            &token,
        ])
    };
    let mut first = spawn_proc(
        "ledger",
        &args("127.0.0.1:0"),
        "quotad ledger listening on ",
    )
    .unwrap();
    let second: Vec<String> = args("127.0.0.1:0");
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let out = run(&second, &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&db.display().to_string()), "{err}");
    assert!(err.contains(&format!("PID {}", first.child.id())), "{err}");
    assert_eq!(first.terminate().await, Some(0));
}
