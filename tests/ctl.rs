//! `quotad ctl` as scripts use it, the real binary against a real quotad: JSON output,
//! exit codes and messages of a refusal and of a watch the server ends, a closed pipe,
//! shell completions.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// `quotad ctl ARGS` against `h` with its operator token, in an empty directory.
fn ctl_command(h: &Harness, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_quotad"));
    c.arg("ctl")
        .args(["--addr", &h.addr().to_string()])
        .args(args)
        .current_dir(h.dir.path())
        .stdin(Stdio::null());
    // Only what the test sets: the caller's QUOTAD_* must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("QUOTAD_") {
            c.env_remove(k);
        }
    }
    c.env("QUOTAD_TOKEN", &h.token);
    c
}

async fn ctl(h: &Harness, args: &[&str]) -> Output {
    let mut c = ctl_command(h, args);
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{o:?}");
    let text = stdout(o);
    assert_eq!(text.lines().count(), 1, "one object per line: {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn every_answer_is_one_json_object_with_the_protos_field_names() {
    let h = Harness::start().await;
    let j = |args: &'static [&'static str]| {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        all
    };
    let v = json(&ctl(&h, &j(&["create-account", "acme", "--balance", "5"])).await);
    assert_eq!(v["account_id"], "acme");
    assert_eq!(v["balance"]["amount"], "5");
    assert_eq!(v["status"], "ACTIVE");

    // A top-up with a fresh id prints only the answer: no id line before it.
    let v = json(&ctl(&h, &j(&["top-up", "acme", "1"])).await);
    assert_eq!(v["balance"]["amount"], "6");

    let v = json(&ctl(&h, &j(&["reserve", "acme", "job-1", A10, "60000"])).await);
    assert_eq!(
        (v["admitted"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("DENY_REASON_UNSPECIFIED"))
    );
    assert_eq!(v["held"]["amount"].as_str().map(str::is_empty), Some(false));
    let v = json(&ctl(&h, &j(&["commit", "job-1", "45000"])).await);
    assert_eq!(v["charged"]["amount"], "0.027");

    let v = json(&ctl(&h, &j(&["statement", "acme"])).await);
    assert_eq!(v["entries"][0]["quantity"], "45000");
    let v = json(&ctl(&h, &j(&["statement", "acme", "--by", "resource"])).await);
    assert_eq!(v["groups"][0]["resource"], "GPU_SHARED");
    assert_eq!(v["total"]["cost"], "0.027");

    let v = json(&ctl(&h, &j(&["catalog"])).await);
    assert!(v["skus"].as_array().is_some_and(|s| !s.is_empty()), "{v}");
}

#[tokio::test]
async fn a_refused_top_up_says_why_and_no_retry() {
    let h = Harness::start().await;
    let o = ctl(&h, &["top-up", "nobody", "1"]).await;
    assert!(!o.status.success(), "{o:?}");
    let err = stderr(&o);
    assert!(err.contains("NOT_FOUND"), "{err}");
    assert!(!err.contains("retry"), "a refusal is not retried: {err}");
    let o = ctl(&h, &["purchase", "nobody", "plan.compute.starter"]).await;
    assert!(
        !o.status.success() && !stderr(&o).contains("retry"),
        "{o:?}"
    );
}

#[tokio::test]
async fn a_watch_the_server_ends_exits_non_zero_with_a_message() {
    let mut h = Harness::start().await;
    h.create_account("acme", "1").await.unwrap();
    let child = ctl_command(&h, &["watch", "acme"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let engine = h.engine().clone();
    eventually("ctl is watching", || {
        let e = engine.clone();
        async move { e.watchers() == 1 }
    })
    .await;
    h.shutdown().await;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("ctl watch exits when the server ends the stream")
    .unwrap()
    .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(err.contains("ended the watch"), "{err}");
}

#[tokio::test]
async fn a_closed_pipe_ends_quietly() {
    let h = Harness::start().await;
    let mut c = ctl_command(&h, &["catalog"]);
    let out = tokio::task::spawn_blocking(move || {
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written (`quotad ctl catalog | true`).
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stderr(&out), "", "no Broken pipe message");
}

#[tokio::test]
async fn completions_cover_the_whole_command() {
    let h = Harness::start().await;
    for shell in ["bash", "zsh", "fish"] {
        let o = ctl(&h, &["completions", shell]).await;
        assert!(o.status.success(), "{o:?}");
        let script = stdout(&o);
        for word in ["check-config", "top-up", "json", "GPU_SHARED"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
}
