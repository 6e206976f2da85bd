//! The `quotad` command: `serve` runs the sidecar with its embedded ledger, `ledger` the
//! shared ledger, `ctl` drives a running one, `check-config` checks a configuration file.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use quotad::clock::SystemClock;
use quotad::config::{self, LedgerSettings, LogFormat, ServeSettings};
use quotad::ctl::CtlCommand;
use quotad::server::{self, ServeConfig};

#[derive(Parser, Debug)]
#[command(
    name = "quotad",
    version,
    about = "Quota-enforcement sidecar for GPU platforms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar: with its embedded ledger (SQLite in --data-dir), or against a
    /// `quotad ledger` with --ledger.
    Serve(Box<ServeArgs>),
    /// Run the authoritative ledger (Admin and Ledger services) over PostgreSQL or SQLite.
    Ledger(Box<LedgerArgs>),
    /// Operator commands against a running quotad.
    Ctl(Box<quotad::ctl::CtlArgs>),
    /// Check a configuration file (and the catalog it names) without starting: prints
    /// the effective configuration, or every error and exits non-zero.
    CheckConfig {
        /// The TOML file, as given to --config.
        file: PathBuf,
    },
}

/// `quotad serve`: the settings (see `quotad::config`) and the file they may come from.
#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML file whose [serve] table sets any of these flags (by their names with `_`);
    /// flags and QUOTAD_* variables override it.
    #[arg(long, env = "QUOTAD_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServeSettings,
}

/// `quotad ledger`: the settings and the file they may come from.
#[derive(clap::Args, Debug)]
struct LedgerArgs {
    /// TOML file whose [ledger] table sets any of these flags; flags and variables
    /// override it.
    #[arg(long, env = "QUOTAD_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: LedgerSettings,
}

/// The environment's settings alone, for `check-config`.
#[derive(Parser, Debug)]
struct ServeEnv {
    #[command(flatten)]
    settings: ServeSettings,
}

#[derive(Parser, Debug)]
struct LedgerEnv {
    #[command(flatten)]
    settings: LedgerSettings,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(cfg: ServeConfig) -> Result<(), server::ServeError> {
    let running = server::start(cfg, Arc::new(SystemClock)).await?;
    // One stable line on stdout, for people and for scripts that started us on port 0.
    println!("quotad listening on {}", running.addr);
    if let Some(m) = running.metrics_addr {
        println!("quotad metrics on http://{m}/metrics");
    }
    shutdown_signal().await;
    running.shutdown().await
}

async fn ledger(cfg: server::LedgerServeConfig) -> Result<(), server::ServeError> {
    let running = server::start_ledger(cfg, Arc::new(SystemClock)).await?;
    println!("quotad ledger listening on {}", running.addr);
    if let Some(m) = running.metrics_addr {
        println!("quotad ledger metrics on http://{m}/metrics");
    }
    shutdown_signal().await;
    running.shutdown().await
}

/// Prints the effective configuration, or every error; fails on any error.
fn check_config(file: &std::path::Path) -> ExitCode {
    let serve = ServeEnv::try_parse_from(["quotad"]).map(|e| e.settings);
    let ledger = LedgerEnv::try_parse_from(["quotad"]).map(|e| e.settings);
    let (serve, ledger) = match (serve, ledger) {
        (Ok(s), Ok(l)) => (s, l),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("quotad check-config: environment: {e}");
            return ExitCode::FAILURE;
        }
    };
    match config::check(file, &serve, &ledger) {
        Ok(effective) => {
            use std::io::Write;
            // Written, not printed: a reader that went away (`| head`) is no panic.
            let _ = write!(
                std::io::stdout(),
                "# {}: valid. Effective configuration (flags > QUOTAD_* environment > file > \
                 defaults; flags not included):\n{effective}",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("quotad check-config: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `quotad ctl`: completions of the whole `quotad` command here, every other command in
/// the library. A closed stdout (`| head`) ends it quietly.
async fn ctl(args: quotad::ctl::CtlArgs) -> ExitCode {
    let mut out = std::io::stdout();
    let result = match &args.command {
        CtlCommand::Completions(c) => c.write(&mut Cli::command(), &mut out),
        _ => quotad::ctl::run(args, &mut out).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_closed_output() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quotad ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Settings, logging, then `run`; a bad configuration exits before anything starts.
async fn run_with<S, C, F, Fut>(
    name: &str,
    resolved: Result<S, config::ConfigError>,
    to_config: impl FnOnce(&S) -> Result<C, config::ConfigError>,
    log_format: impl FnOnce(&S) -> LogFormat,
    run: F,
) -> ExitCode
where
    F: FnOnce(C) -> Fut,
    Fut: std::future::Future<Output = Result<(), server::ServeError>>,
{
    let checked = resolved.and_then(|s| Ok((to_config(&s)?, log_format(&s))));
    let (cfg, format) = match checked {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    quotad::logging::init(format);
    match run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, where people look (the log goes to stderr too): not also as a log line.
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let resolved = config::resolve_serve(args.config.as_deref(), &args.settings);
            run_with(
                "quotad",
                resolved,
                ServeSettings::to_config,
                ServeSettings::log_format,
                serve,
            )
            .await
        }
        Command::Ledger(args) => {
            let resolved = config::resolve_ledger(args.config.as_deref(), &args.settings);
            run_with(
                "quotad ledger",
                resolved,
                LedgerSettings::to_config,
                LedgerSettings::log_format,
                ledger,
            )
            .await
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Ctl(args) => ctl(*args).await,
    }
}
