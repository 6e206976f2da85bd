//! The `quotad` command: `serve` runs the sidecar with its embedded ledger, `ctl` drives a
//! running one.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use quotad::clock::SystemClock;
use quotad::server::{self, DEFAULT_DATA_DIR, DEFAULT_LISTEN, ServeConfig};

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
    Serve(ServeArgs),
    /// Run the authoritative ledger (Admin and Ledger services) over PostgreSQL or SQLite.
    Ledger(LedgerArgs),
    /// Operator commands against a running quotad.
    Ctl(quotad::ctl::CtlArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "QUOTAD_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory for the ledger and journal files.
    #[arg(long, env = "QUOTAD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Catalog TOML replacing the one compiled in.
    #[arg(long, env = "QUOTAD_CATALOG")]
    catalog: Option<PathBuf>,
    /// A `quotad ledger` to sync with (http://HOST:PORT) instead of the embedded ledger.
    #[arg(long, env = "QUOTAD_LEDGER")]
    ledger: Option<String>,
    /// Money an account may be admitted for while the ledger is unreachable and its lease
    /// is spent, as ACCOUNT=AMOUNT (repeatable; `*=AMOUNT` for every account). Default:
    /// none (fail-closed).
    #[arg(long = "fail-open-budget", value_parser = parse_budget)]
    fail_open_budgets: Vec<(String, quotad::billing::Money)>,
    /// Milliseconds between syncs with the ledger when no usage wakes the loop earlier.
    #[arg(long, default_value_t = quotad::engine::sync::DEFAULT_SYNC_INTERVAL_MS)]
    sync_interval_ms: u64,
    /// Hold lifetime when a Reserve gives ttl_ms = 0.
    #[arg(long, default_value_t = quotad::engine::DEFAULT_HOLD_TTL_MS)]
    hold_ttl_default_ms: i64,
    /// Most reservations kept in memory.
    #[arg(long, default_value_t = quotad::engine::DEFAULT_HOLDS_MAX)]
    holds_max: usize,
    /// Journal durability: `full` fsyncs every group commit (an acknowledged call
    /// survives a power loss); `normal` hands writes to the OS before the ack and
    /// fsyncs at checkpoints (survives a kill -9 of quotad, not a power loss).
    #[arg(long, default_value = "full", value_parser = parse_journal_sync)]
    journal_sync: quotad::journal::JournalSync,
    /// Most usage streams (StreamUsage) open at once.
    #[arg(long, default_value_t = quotad::engine::work::DEFAULT_STREAMS_MAX)]
    streams_max: usize,
    /// Most usage reports per second on one stream (a burst of as many is allowed).
    #[arg(long, default_value_t = quotad::engine::work::DEFAULT_STREAM_REPORTS_PER_SEC)]
    stream_reports_per_sec: u32,
    /// Decisions a usage stream buffers for a client that does not read them; beyond,
    /// the stream ends with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = quotad::engine::work::DEFAULT_STREAM_BUFFER)]
    stream_buffer: usize,
    /// Most Exclusive sessions kept (running and recently stopped).
    #[arg(long, default_value_t = quotad::engine::sessions::DEFAULT_SESSIONS_MAX)]
    sessions_max: usize,
    /// Most Watch streams open at once.
    #[arg(long, default_value_t = quotad::engine::events::DEFAULT_WATCHERS_MAX)]
    watchers_max: usize,
    /// LOW_QUOTA fires when a grant's remaining quota falls to these fractions of it
    /// (comma-separated). Default: 0.2,0.1.
    #[arg(long, value_delimiter = ',', value_parser = parse_fraction)]
    alert_low_quota: Option<Vec<rust_decimal::Decimal>>,
    /// GRANT_EXPIRING fires this long before a grant with quota left expires
    /// (milliseconds, comma-separated). Default: 7 days and 1 day.
    #[arg(long, value_delimiter = ',')]
    alert_expiring_ms: Option<Vec<i64>>,
    /// LOW_QUOTA also fires when the balance falls below this amount. Default: off.
    #[arg(long, value_parser = parse_amount)]
    alert_balance_floor: Option<quotad::billing::Money>,
}

#[derive(clap::Args, Debug)]
struct LedgerArgs {
    /// Address to serve the Admin and Ledger services on.
    #[arg(long, env = "QUOTAD_LEDGER_LISTEN", default_value = server::DEFAULT_LEDGER_LISTEN)]
    listen: SocketAddr,
    /// postgres://USER@HOST:PORT/DB, or a SQLite file (sqlite:PATH).
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Catalog TOML replacing the one compiled in.
    #[arg(long, env = "QUOTAD_CATALOG")]
    catalog: Option<PathBuf>,
    /// How long a lease lets a sidecar admit without hearing from the ledger.
    #[arg(long, default_value_t = quotad::ledger::lease::DEFAULT_LEASE_TTL_MS)]
    lease_ttl_ms: i64,
    /// How long an expired lease's money stays set aside for holds admitted under it.
    #[arg(long, default_value_t = quotad::ledger::lease::DEFAULT_LEASE_HOLD_GRACE_MS)]
    lease_hold_grace_ms: i64,
    /// Most connections to PostgreSQL.
    #[arg(long, default_value_t = quotad::ledger::postgres::DEFAULT_PG_POOL_MAX)]
    pg_pool_max: u32,
}

fn parse_journal_sync(s: &str) -> Result<quotad::journal::JournalSync, String> {
    quotad::journal::JournalSync::from_name(s)
        .ok_or_else(|| format!("{s:?} is not a journal sync mode: full or normal"))
}

fn parse_fraction(s: &str) -> Result<rust_decimal::Decimal, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a fraction such as 0.2"))
}

fn parse_amount(s: &str) -> Result<quotad::billing::Money, String> {
    quotad::billing::Money::parse_non_negative(s).map_err(|e| e.to_string())
}

fn parse_budget(s: &str) -> Result<(String, quotad::billing::Money), String> {
    let (account, amount) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ACCOUNT=AMOUNT"))?;
    let amount = quotad::billing::Money::parse_non_negative(amount).map_err(|e| e.to_string())?;
    if account.is_empty() {
        return Err(format!("{s:?} names no account"));
    }
    Ok((account.to_owned(), amount))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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

async fn serve(args: ServeArgs) -> Result<(), server::ServeError> {
    let mut cfg = ServeConfig::new(args.listen, args.data_dir);
    cfg.catalog_path = args.catalog;
    cfg.ledger_url = args.ledger;
    for (account, amount) in args.fail_open_budgets {
        if account == "*" {
            cfg.engine.fail_open_default = amount;
        } else {
            cfg.engine.fail_open_budgets.insert(account, amount);
        }
    }
    cfg.sync_interval_ms = args.sync_interval_ms;
    cfg.engine.hold_ttl_default_ms = args.hold_ttl_default_ms;
    cfg.engine.holds_max = args.holds_max;
    cfg.journal_sync = args.journal_sync;
    cfg.engine.streams_max = args.streams_max;
    cfg.engine.stream_reports_per_sec = args.stream_reports_per_sec;
    cfg.engine.stream_buffer = args.stream_buffer.max(1);
    cfg.engine.sessions_max = args.sessions_max;
    cfg.engine.watch.watchers_max = args.watchers_max;
    if let Some(f) = args.alert_low_quota {
        cfg.engine.alerts.low_quota_fractions = f;
    }
    if let Some(l) = args.alert_expiring_ms {
        cfg.engine.alerts.expiring_leads_ms = l;
    }
    cfg.engine.alerts.balance_floor = args.alert_balance_floor;
    let running = server::start(cfg, Arc::new(SystemClock)).await?;
    // One stable line on stdout, for people and for scripts that started us on port 0.
    println!("quotad listening on {}", running.addr);
    shutdown_signal().await;
    running.shutdown().await
}

async fn ledger(args: LedgerArgs) -> Result<(), server::ServeError> {
    let mut cfg = server::LedgerServeConfig::new(args.listen, args.database_url);
    cfg.catalog_path = args.catalog;
    cfg.lease.ttl_ms = args.lease_ttl_ms;
    cfg.lease.hold_grace_ms = args.lease_hold_grace_ms;
    cfg.pg_pool_max = args.pg_pool_max;
    let running = server::start_ledger(cfg, Arc::new(SystemClock)).await?;
    println!("quotad ledger listening on {}", running.addr);
    shutdown_signal().await;
    running.shutdown().await
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging();
            match serve(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("quotad: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ledger(args) => {
            init_logging();
            match ledger(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("quotad ledger: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ctl(args) => {
            let mut out = std::io::stdout();
            match quotad::ctl::run(args, &mut out).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("quotad ctl: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
