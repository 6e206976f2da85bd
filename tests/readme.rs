//! README.md runs as written: its tour and its ledger section, the `sh` blocks marked
//! `<!-- readme-test: tour -->` or `<!-- readme-test: ledger -->`, taken from the file and
//! run by bash (`set -euo pipefail`, so any line that fails fails the test) in an empty
//! directory, against real processes of the built binary.
//!
//! What differs from a reader's terminal, and nothing else: `cargo run [--release] [-q] --`
//! runs the built binary (a server, `serve` or `ledger`, in the background until the test
//! ends, waited for until it says it listens; `cargo test` is not run from inside a test);
//! the README's ports are replaced by free ones (the tour's sidecar gets its port from
//! QUOTAD_LISTEN and ctl from QUOTAD_ADDR, as they have no --listen / --addr there); the
//! ledger's database is a fresh one on DATABASE_URL's server; grpcurl, if not installed,
//! is skipped with a note.

// Tests fail loudly: unwrapping is how they stop on the unexpected.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Ports the README uses, each replaced by a free one.
const README_PORTS: [&str; 4] = ["50051", "50052", "50061", "50062"];

/// The README's database lines, as written.
const README_CREATEDB: &str = "createdb -h 127.0.0.1 -U postgres quotad ";
const README_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/quotad ";

/// Runs before the README's lines: the `cargo` the README means, servers in the background.
const PRELUDE: &str = r#"
set -euo pipefail
shopt -s expand_aliases
PS4='+ README: '
SERVERS=()
stop_servers() {
    { local -; set +x; } 2>/dev/null
    for p in "${SERVERS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait || true
}
trap stop_servers EXIT
start_server() {
    { local -; set +x; } 2>/dev/null
    local log="server-${#SERVERS[@]}.out"
    "$QUOTAD_BIN" "$@" >"$log" 2>"$log.err" &
    SERVERS+=($!)
    for _ in $(seq 1 200); do
        if grep -q "listening on" "$log"; then return 0; fi
        if ! kill -0 "$!" 2>/dev/null; then cat "$log.err" >&2; return 1; fi
        sleep 0.05
    done
    echo "quotad $* did not say it listens within 10 s" >&2
    return 1
}
cargo() {
    { local -; set +x; } 2>/dev/null
    case "$1" in
        run) ;;
        test) echo "(readme test: not running cargo test from inside a test)"; return 0 ;;
        *) echo "readme test: unexpected cargo $*" >&2; return 1 ;;
    esac
    while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do shift; done
    shift
    case "$1" in
        serve|ledger) start_server "$@" ;;
        *) "$QUOTAD_BIN" "$@" ;;
    esac
}
if ! command -v grpcurl >/dev/null; then
    grpcurl() { { local -; set +x; } 2>/dev/null; echo "(readme test: grpcurl is not installed; skipped)"; }
fi
set -x
"#;

/// The bodies of README's `sh` blocks marked `<!-- readme-test: NAME -->`, in order.
fn marked_blocks(readme: &str, name: &str) -> String {
    let marker = format!("<!-- readme-test: {name} -->");
    let mut out = String::new();
    let mut lines = readme.lines();
    let mut count = 0;
    while let Some(line) = lines.next() {
        if line.trim() != marker {
            continue;
        }
        assert_eq!(
            lines.next(),
            Some("```sh"),
            "{marker} must precede a ```sh block"
        );
        for l in lines.by_ref().take_while(|l| *l != "```") {
            out.push_str(l);
            out.push('\n');
        }
        count += 1;
    }
    assert!(count > 0, "README.md has no block marked {marker}");
    out
}

fn free_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port().to_string()
}

/// `script` with the README's ports replaced by free ones; the tour's port.
fn with_free_ports(script: &str) -> (String, String) {
    let mut script = script.to_owned();
    let mut first = String::new();
    for p in README_PORTS {
        let free = free_port();
        script = script.replace(&format!("127.0.0.1:{p}"), &format!("127.0.0.1:{free}"));
        if first.is_empty() {
            first = free;
        }
    }
    (script, first)
}

/// Runs `lines` after the prelude in `dir` with only the QUOTAD_* variables in `env`.
fn run_bash(dir: &Path, lines: &str, env: &[(&str, &str)]) -> Output {
    let script = dir.join("readme.sh");
    std::fs::write(&script, format!("{PRELUDE}\n{lines}")).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(&script).current_dir(dir).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("QUOTAD_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("QUOTAD_BIN", env!("CARGO_BIN_EXE_quotad"));
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

fn assert_ran(what: &str, out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture: each line run, and what it printed.
    println!("README's {what}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "README's {what} failed as written ({}):\n--- stdout\n{stdout}\n--- stderr (each line run is marked '+ README:')\n{stderr}",
        out.status
    );
}

#[test]
fn the_tour_runs_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let (lines, port) = with_free_ports(&marked_blocks(&readme, "tour"));
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let addr = format!("http://{listen}");
    let env = [
        ("QUOTAD_LISTEN", listen.as_str()),
        ("QUOTAD_ADDR", addr.as_str()),
    ];
    let out = run_bash(dir.path(), &lines, &env);
    assert_ran("tour", &out);
    // The tour did what it says: acme bought a plan, ran a job and was charged for it.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("plan.compute.starter"), "{stdout}");
    assert!(stdout.contains("job-1"), "{stdout}");
}

/// `postgres://USER@HOST:PORT/...` → (user, host, port).
fn server_of(url: &str) -> (String, String, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let (user, hostport) = authority.split_once('@').unwrap_or(("postgres", authority));
    let user = user.split(':').next().unwrap_or("postgres");
    let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "5432"));
    (user.to_owned(), host.to_owned(), port.to_owned())
}

#[test]
fn the_ledger_section_runs_as_written() {
    let Some(url) = common::procs::database_url("README ledger section") else {
        return;
    };
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    // "qctl as in the tour": the tour's alias.
    let tour = marked_blocks(&readme, "tour");
    let alias = tour.lines().find(|l| l.starts_with("alias qctl="));
    let lines = format!(
        "{}\n{}",
        alias.expect("the tour's qctl alias"),
        marked_blocks(&readme, "ledger")
    );
    for line in [README_CREATEDB, README_DATABASE_URL] {
        assert!(
            lines.contains(line),
            "README's ledger section no longer has {line:?}"
        );
    }
    let mut bytes = [0u8; 4];
    getrandom::getrandom(&mut bytes).unwrap();
    let name = format!("readme_{}", u32::from_le_bytes(bytes));
    let (user, host, port) = server_of(&url);
    let lines = lines
        .replace(
            README_CREATEDB,
            &format!("createdb -h {host} -p {port} -U {user} {name} "),
        )
        .replace(
            README_DATABASE_URL,
            &format!("{} ", common::procs::with_database(&url, &name)),
        );
    let (lines, _) = with_free_ports(&lines);
    let dir = tempfile::tempdir().unwrap();
    let out = run_bash(dir.path(), &lines, &[]);
    let dropped = Command::new("dropdb")
        .args([
            "--if-exists",
            "--force",
            "-h",
            &host,
            "-p",
            &port,
            "-U",
            &user,
            &name,
        ])
        .output();
    assert_ran("ledger section", &out);
    assert!(dropped.is_ok_and(|o| o.status.success()), "dropdb {name}");
}
