//! An operator's first hour, against the real `quotad` binary: one server per data
//! directory (a second `serve` or SQLite `ledger` is refused, naming the directory and the
//! PID), the port checked before anything is written, each error said once; access only
//! for sub-users that exist; the operator's listings of accounts, tokens and access.

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
use common::*;
use quotad::pb;
use tonic::Code;

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
    // The metrics port too.
    let out = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            &port,
            "--data-dir",
            &dir.display().to_string(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains(&port), "{err}");
    assert!(
        !dir.exists(),
        "nothing is created when the metrics port is taken"
    );

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

#[tokio::test]
async fn access_is_granted_only_to_a_sub_user_that_has_a_token() {
    let mut h = Harness::start().await;
    h.create_account("acme", "10").await.unwrap();
    assert_status(
        "grant to nobody",
        h.grant_access("acme", "bobb", &["balance"]).await,
        Code::FailedPrecondition,
        &["\"bobb\"", "create-token sub-user bobb"],
    );
    let bob = h.create_token(SUB_USER, "", "bob").await.unwrap();
    h.grant_access("acme", "bob", &["balance"]).await.unwrap();
    // Revoked, it is nobody again: what it held can be taken away, nothing granted.
    h.revoke_token(&bob.token_id).await.unwrap();
    assert_status(
        "grant to a revoked sub-user",
        h.grant_access("acme", "bob", &["reserve"]).await,
        Code::FailedPrecondition,
        &["bob"],
    );
    h.revoke_access("acme", "bob", &[]).await.unwrap();
}

#[tokio::test]
async fn the_operator_lists_accounts_tokens_and_access_never_a_secret() {
    let mut h = Harness::start().await;
    for a in ["acme", "globex", "initech"] {
        h.create_account(a, "1").await.unwrap();
    }
    let owner = h.create_token(OWNER, "acme", "").await.unwrap();
    let bob = h.create_token(SUB_USER, "", "bob").await.unwrap();
    h.grant_access("acme", "bob", &["balance", "reserve"])
        .await
        .unwrap();
    h.grant_access("globex", "bob", &["watch"]).await.unwrap();
    h.revoke_token(&owner.token_id).await.unwrap();

    let page = |after: &str, limit| pb::ListAccountsRequest {
        after: after.into(),
        limit,
    };
    let r = h
        .admin
        .list_accounts(page("", 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.account_ids.as_slice(), r.more),
        (
            &["acme".to_owned(), "globex".into(), "initech".into()][..],
            false
        )
    );
    let r = h
        .admin
        .list_accounts(page("", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.account_ids.len(), r.more), (2, true));
    let r = h
        .admin
        .list_accounts(page("globex", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.account_ids, r.more), (vec!["initech".to_owned()], false));

    let r = h
        .admin
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner();
    // The operator's own, the owner's (revoked), bob's.
    assert_eq!(r.tokens.len(), 3, "{r:?}");
    let listed = format!("{r:?}");
    for secret in [&h.token, &owner.token, &bob.token] {
        assert!(!listed.contains(secret.as_str()), "a token is listed");
        let hash = quotad::auth::token_sha256(secret);
        assert!(!listed.contains(&hash), "a token's hash is listed");
    }
    let o = r
        .tokens
        .iter()
        .find(|t| t.token_id == owner.token_id)
        .unwrap();
    assert!(o.revoked_at_ms > 0);
    assert_eq!(o.principal.as_ref().unwrap().account_id, "acme");
    let b = r
        .tokens
        .iter()
        .find(|t| t.token_id == bob.token_id)
        .unwrap();
    assert_eq!(b.revoked_at_ms, 0);
    assert_eq!(b.principal.as_ref().unwrap().kind, i32::from(SUB_USER));

    let r = h
        .admin
        .list_access(pb::ListAccessRequest::default())
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<_> = r
        .access
        .iter()
        .map(|a| {
            (
                a.account_id.as_str(),
                a.sub_user.as_str(),
                a.permissions.len(),
            )
        })
        .collect();
    assert_eq!(rows, vec![("acme", "bob", 2), ("globex", "bob", 1)]);
    let r = h
        .admin
        .list_access(pb::ListAccessRequest {
            account_id: "globex".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.access.len(), 1);

    // Only the operator lists.
    let acme = h.create_token(OWNER, "acme", "").await.unwrap();
    let mut o = Client::connect(h.addr(), &acme.token).await;
    assert_status(
        "owner lists tokens",
        o.admin
            .list_tokens(pb::ListTokensRequest::default())
            .await
            .map(|r| r.into_inner()),
        Code::PermissionDenied,
        &["ListTokens"],
    );
}

/// The ctl commands over the same: a table, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_accounts_tokens_and_access() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    h.create_token(SUB_USER, "", "bob").await.unwrap();
    h.grant_access("acme", "bob", &["balance"]).await.unwrap();
    let addr = h.addr().to_string();
    let dir = h.dir.path().display().to_string();
    let ctl = |cmd: &[&str]| {
        let mut args = vec!["ctl", "--addr", &addr, "--data-dir", &dir];
        args.extend_from_slice(cmd);
        tokio::task::block_in_place(|| run(&args, &[]))
    };
    let out = ctl(&["list-accounts"]);
    assert_eq!(
        text(&out.stdout),
        "account\nacme\n",
        "{}",
        text(&out.stderr)
    );
    let out = ctl(&["list-access", "acme"]);
    assert_eq!(
        text(&out.stdout),
        "account  sub_user  permissions\nacme     bob       balance\n"
    );
    let out = ctl(&["list-tokens"]);
    let listed = text(&out.stdout);
    assert!(listed.starts_with("token_id"), "{listed}");
    assert!(
        listed.contains("sub-user") && listed.contains("operator"),
        "{listed}"
    );
    assert!(!listed.contains(&h.token), "{listed}");
}

/// An owner uses `ctl reserve` and `ctl admit` without --resource: the catalog is theirs
/// to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_reserves_with_ctl_without_naming_the_resource() {
    let mut h = Harness::start().await;
    h.create_account("acme", "5").await.unwrap();
    let owner = h.create_token(OWNER, "acme", "").await.unwrap().token;
    let addr = h.addr().to_string();
    for cmd in [
        &["reserve", "acme", "r1", A10, "1000"][..],
        &["admit", "acme", A10, "1000"][..],
    ] {
        let mut args = vec!["ctl", "--addr", &addr];
        args.extend_from_slice(cmd);
        let out = tokio::task::block_in_place(|| run(&args, &[("QUOTAD_TOKEN", &owner)]));
        assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    }
}

/// `quotad serve --ledger` with a token the ledger refuses exits non-zero at once, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_a_refused_ledger_token_exits_saying_so() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lcfg = quotad::server::LedgerServeConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        format!("sqlite:{}", tmp.path().join("ledger.db").display()),
    );
    lcfg.operator_token_file = Some(tmp.path().join("operator.token"));
    let ledger = quotad::server::start_ledger(lcfg, quotad::clock::ManualClock::new(T0_MS))
        .await
        .unwrap();
    let token_file = tmp.path().join("wrong.token");
    std::fs::write(&token_file, "qdt_wrong\n").unwrap();
    let url = format!("http://{}", ledger.addr);
    let data = tmp.path().join("sidecar").display().to_string();
    let tf = token_file.display().to_string();
    let args = [
        "serve",
        "--ledger",
        &url,
        "--ledger-token-file",
        &tf,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
    ];
    let out = tokio::task::block_in_place(|| run(&args, &[]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("refused this sidecar's token") && err.contains(&url),
        "{err}"
    );
    assert_eq!(err.matches("refused").count(), 1, "{err}");
    ledger.shutdown().await.unwrap();
}
