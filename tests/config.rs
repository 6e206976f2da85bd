//! The real binary's configuration handling: `quotad check-config` on the example file
//! (which must stay valid), on broken files, with environment overrides; and `serve`
//! refusing a broken file before it starts anything.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::path::Path;
use std::process::{Command, Output};

fn quotad(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quotad"));
    cmd.args(args);
    // Only what the test sets: the caller's QUOTAD_* or DATABASE_URL must not leak in.
    for (k, _) in std::env::vars() {
        if k.starts_with("QUOTAD_") || k == "DATABASE_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn example() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("quotad.example.toml")
        .display()
        .to_string()
}

#[test]
fn the_example_file_is_valid_and_prints_its_effective_configuration() {
    let out = quotad(&["check-config", &example()], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    for line in [
        "[serve]",
        "holds_max = 1000000",
        "accounts_max = 1000000",
        "account_idle_ms = 900000",
        "journal_sync = \"full\"",
        "metrics_listen = \"127.0.0.1:9464\"",
        "concurrency_max = 4096",
        "[ledger]",
        "database_url = \"sqlite:quotad-ledger.db\"",
        "lease_ttl_ms = 30000",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line:?} missing in\n{stdout}"
        );
    }
}

#[test]
fn environment_overrides_the_file() {
    let out = quotad(
        &["check-config", &example()],
        &[
            ("QUOTAD_HOLDS_MAX", "7"),
            ("QUOTAD_JOURNAL_SYNC", "normal"),
            ("DATABASE_URL", "sqlite:other.db"),
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("\nholds_max = 7\n"), "{stdout}");
    assert!(stdout.contains("\njournal_sync = \"normal\"\n"), "{stdout}");
    assert!(
        stdout.contains("database_url = \"sqlite:other.db\""),
        "{stdout}"
    );
    // A bad value in the environment is an error too, naming the setting.
    let out = quotad(
        &["check-config", &example()],
        &[("QUOTAD_HOLDS_MAX", "lots")],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("holds-max") && stderr.contains("lots"),
        "{stderr}"
    );
}

#[test]
fn broken_files_are_refused_with_the_key_the_value_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            write("typo.toml", "[serve]\nhold_max = 10\n"),
            vec![
                "typo.toml".into(),
                "hold_max".into(),
                "unknown field".into(),
            ],
        ),
        (
            write("mode.toml", "[serve]\njournal_sync = \"sometimes\"\n"),
            vec!["sometimes".into(), "full or normal".into()],
        ),
        (
            write("zero.toml", "[serve]\nstream_buffer = 0\n"),
            vec!["stream_buffer = 0".into(), "positive".into()],
        ),
        (
            write("notoml.toml", "[serve\nlisten = 1\n"),
            vec!["notoml.toml".into()],
        ),
        (
            write(
                "nocat.toml",
                "[serve]\ncatalog = \"/nonexistent/cat.toml\"\n",
            ),
            vec!["/nonexistent/cat.toml".into()],
        ),
        (
            write("nodb.toml", "[ledger]\nlease_ttl_ms = 10\n"),
            vec!["database_url".into(), "required".into()],
        ),
    ];
    let bad_catalog = write("bad-catalog.toml", "currency = \"cny\"\n");
    let cases = cases.into_iter().chain([(
        write(
            "badcat.toml",
            &format!("[serve]\ncatalog = {bad_catalog:?}\n"),
        ),
        vec!["catalog".into(), "cny".into()],
    )]);
    for (file, needles) in cases {
        let out = quotad(&["check-config", &file], &[]);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{file} passed: {}",
            text(&out.stdout)
        );
        assert!(out.stdout.is_empty(), "{file}: {}", text(&out.stdout));
        for n in &needles {
            assert!(stderr.contains(n.as_str()), "{file}: {n:?} not in {stderr}");
        }
    }
    // Every error of a file, not only the first.
    let many = write(
        "many.toml",
        "[serve]\nhold_max = 10\nstream_buffer = 0\njournal_sync = \"sometimes\"\n",
    );
    let out = quotad(&["check-config", &many], &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    for n in ["hold_max", "stream_buffer = 0", "sometimes"] {
        assert!(stderr.contains(n), "{n:?} not in {stderr}");
    }
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
    // `serve` refuses it before starting anything: no data directory appears.
    let data = dir.path().join("data");
    let out = quotad(
        &[
            "serve",
            "--config",
            &dir.path().join("typo.toml").display().to_string(),
            "--data-dir",
            &data.display().to_string(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("hold_max"),
        "{}",
        text(&out.stderr)
    );
    assert!(!data.exists());
}
