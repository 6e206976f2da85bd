//! `quotad ctl`: the operator's command line for a running quotad.
//!
//! Operators set up accounts, top them up, sell plans and look into why a job was refused,
//! usually on a host where grpcurl, the proto file and reflection know-how are not at hand.
//! This speaks the public gRPC API with the binary they already have, checks input before
//! anything reaches the server, and prints answers for people rather than for parsers, so a
//! newcomer can also tour the API one call at a time.

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio_stream::{Stream, StreamExt};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::auth::{Bearer, BearerChannel};
use crate::tls::ClientTls;
use std::path::{Path, PathBuf};

use crate::billing::burndown::FREE_TIER_LABEL;
use crate::billing::free_tier::{Calendar, DEFAULT_TIME_ZONE, Month};
use crate::billing::{Money, MoneyError};
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::quota_client::QuotaClient;

const RESOURCES: &str = "GPU_SHARED, GPU_EXCLUSIVE, STORAGE, TRAFFIC, REQUEST_PUT, REQUEST_GET";
const GRANT_RESOURCES: &str =
    "GPU_SHARED, GPU_EXCLUSIVE, STORAGE, TRAFFIC, REQUEST_PUT, REQUEST_GET, any";

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// gRPC address of quotad
    #[arg(
        long,
        env = "QUOTAD_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub addr: String,
    /// Currency of the amounts given on the command line
    #[arg(long, default_value = "CNY", global = true)]
    pub currency: String,
    /// Token to send (`authorization: Bearer TOKEN`); prefer --token-file or QUOTAD_TOKEN
    /// (a flag shows in the process list)
    #[arg(long, env = "QUOTAD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// File holding the token [default: quotad-data/operator.token, where `quotad serve`
    /// writes the operator token on first start, if it exists]
    #[arg(long, env = "QUOTAD_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// CA (PEM) the server's TLS certificate must chain to; implies https
    #[arg(long, env = "QUOTAD_CTL_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mTLS
    #[arg(long, env = "QUOTAD_CTL_TLS_CERT_FILE", global = true)]
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM)
    #[arg(long, env = "QUOTAD_CTL_TLS_KEY_FILE", global = true)]
    pub tls_key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlCommand {
    /// Create an account, optionally with an opening balance
    CreateAccount {
        account: String,
        /// Opening balance (default zero)
        #[arg(long, value_name = "AMOUNT", allow_negative_numbers = true)]
        #[arg(value_parser = parse_non_negative)]
        balance: Option<Money>,
    },
    /// Add money to an account's balance
    TopUp {
        account: String,
        /// Amount in --currency, such as 12.50
        #[arg(value_parser = parse_positive, allow_negative_numbers = true)]
        amount: Money,
        /// Top-up id; re-running with the same id adds nothing (default: a fresh one)
        #[arg(long, value_name = "TOPUP_ID")]
        id: Option<String>,
    },
    /// Record the purchase of a plan or package sku and show the grants it created
    Purchase {
        account: String,
        sku: String,
        /// Purchase id; re-running with the same id buys nothing (default: a fresh one)
        #[arg(long, value_name = "PURCHASE_ID")]
        id: Option<String>,
        /// When it was bought, for plans bought elsewhere (RFC 3339; default now)
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        effective_at: Option<DateTime<Utc>>,
    },
    /// Give an account coupon or trial credit
    GrantCredit {
        account: String,
        grant_id: String,
        /// Amount in --currency, such as 12.50
        #[arg(value_parser = parse_positive, allow_negative_numbers = true)]
        amount: Money,
        /// When the credit expires (RFC 3339)
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        expires_at: DateTime<Utc>,
        #[arg(long, value_enum, default_value_t = CreditKind::Coupon)]
        kind: CreditKind,
        /// The resource the credit pays for, or "any"
        #[arg(long, default_value = "any", value_parser = parse_grant_resource)]
        resource: pb::Resource,
    },
    /// Show an account's balance, holds and grants, and the Exclusive sessions and usage
    /// streams running on this quotad
    Balance { account: String },
    /// List an account's charges and what paid for them, one line each or summed by day
    /// or resource, all of them or one month's
    Statement {
        account: String,
        /// Only the charges of this calendar month (YYYY-MM, in --time-zone)
        #[arg(long, value_name = "YYYY-MM", value_parser = parse_month)]
        month: Option<Month>,
        /// One line per charge, or sums per day (and resource) or per resource
        #[arg(long, value_enum, default_value_t = StatementBy::Entry)]
        by: StatementBy,
        /// The platform's time zone for days and months: the catalog's [calendar] zone
        #[arg(long, value_name = "ZONE", default_value = DEFAULT_TIME_ZONE, value_parser = parse_zone)]
        time_zone: Tz,
    },
    /// Show what costs an account money every hour while nothing runs (stored data beyond
    /// its plan, running Exclusive sessions) and when its plans and balance run out
    Accruals { account: String },
    /// Record an account's stored bytes (a level, from now or --at)
    ReportStorage {
        account: String,
        #[arg(value_parser = clap::value_parser!(u64))]
        bytes_stored: u64,
        /// When the level took effect (RFC 3339; default now)
        #[arg(long, value_name = "RFC3339", value_parser = parse_time)]
        at: Option<DateTime<Utc>>,
    },
    /// List the skus quotad sells and their prices
    Catalog,
    /// Hold the cost of work before it starts
    Reserve {
        account: String,
        reservation_id: String,
        sku: String,
        /// Milliseconds of GPU time, bytes of traffic or a count of requests
        #[arg(value_parser = parse_positive_count, allow_negative_numbers = true)]
        quantity: i64,
        /// Resource of the work (default: the sku's, from the catalog)
        #[arg(long, value_parser = parse_resource)]
        resource: Option<pb::Resource>,
        /// Hold lifetime in milliseconds (default: the server's)
        #[arg(long, value_name = "MS", value_parser = parse_count)]
        ttl_ms: Option<i64>,
    },
    /// Charge the quantity actually used by a reservation and release the rest
    Commit {
        reservation_id: String,
        #[arg(value_parser = parse_count, allow_negative_numbers = true)]
        quantity: i64,
    },
    /// Release a reservation without charging
    Release { reservation_id: String },
    /// Ask whether work of this size could start now, holding nothing
    Admit {
        account: String,
        sku: String,
        #[arg(value_parser = parse_positive_count, allow_negative_numbers = true)]
        quantity: i64,
        /// Resource of the work (default: the sku's, from the catalog)
        #[arg(long, value_parser = parse_resource)]
        resource: Option<pb::Resource>,
    },
    /// Print an account's events as they happen, one line each, until Ctrl-C
    Watch {
        account: String,
        /// Exit after this many events (default: until the server ends the stream)
        #[arg(long, value_name = "N", value_parser = parse_event_count)]
        #[arg(allow_negative_numbers = true)]
        count: Option<u64>,
    },
    /// Start billing an Exclusive instance; admitted when one hour of its price can be held
    StartSession {
        account: String,
        /// A GPU_EXCLUSIVE machine-spec sku
        sku: String,
        /// Session id; re-running with the same id starts nothing new (default: a fresh one)
        #[arg(long, value_name = "SESSION_ID")]
        id: Option<String>,
        /// Keep billing while the instance is idle instead of stopping it
        #[arg(long)]
        no_auto_shutdown: bool,
        /// Milliseconds without a busy heartbeat before auto-shutdown (default: the
        /// server's, 20 minutes)
        #[arg(long, value_name = "DURATION_MS", value_parser = parse_idle_timeout)]
        #[arg(conflicts_with = "no_auto_shutdown", allow_negative_numbers = true)]
        idle_timeout: Option<i64>,
    },
    /// Tell quotad an Exclusive instance is busy (or idle) and show whether it must stop
    Heartbeat {
        session_id: String,
        /// Report the instance idle; idle time counts towards auto-shutdown (default: busy)
        #[arg(long)]
        idle: bool,
    },
    /// Stop an Exclusive session and bill it up to now
    StopSession { session_id: String },
    /// Make a token (operator only); it is printed once and stored only as a hash
    CreateToken {
        #[arg(value_enum)]
        kind: TokenKind,
        /// The owner's account, or the name of a sub-user, sidecar or operator
        subject: String,
    },
    /// Revoke a token by its id (operator only)
    RevokeToken { token_id: String },
    /// Print an Envoy bootstrap (YAML) that puts quotad in front of a tool runtime: makes a
    /// proxy token for it (operator only) and points it at the quotad of --addr
    EnvoyConfig(crate::envoy::bootstrap::EnvoyConfigArgs),
    /// Let a sub-user do these on an account (operator or the account's owner):
    /// reserve, admit, sessions, balance, watch
    GrantAccess {
        account: String,
        sub_user: String,
        #[arg(required = true)]
        permissions: Vec<String>,
    },
    /// Take permissions away from a sub-user on an account (none named: all)
    RevokeAccess {
        account: String,
        sub_user: String,
        permissions: Vec<String>,
    },
}

/// Whom a token is for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Operator,
    Owner,
    SubUser,
    Sidecar,
    Proxy,
}

/// Kinds of credit an operator can grant (plans come from `purchase`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditKind {
    Coupon,
    Trial,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("invalid address {addr:?}: {reason}")]
    BadAddr { addr: String, reason: String },
    #[error("cannot reach quotad at {addr}: {reason} (is `quotad serve` running?)")]
    Unreachable { addr: String, reason: String },
    #[error("{}: {message}", code_name(*.code))]
    Rpc { code: Code, message: String },
    #[error("{0}")]
    BadAmount(#[from] MoneyError),
    #[error("invalid time {input:?}: expected RFC 3339 such as 2026-11-22T10:00:00Z ({reason})")]
    BadTime { input: String, reason: String },
    #[error("invalid {what} {input:?}: expected a whole number of at least {min}")]
    BadNumber {
        what: &'static str,
        input: String,
        min: i64,
    },
    #[error("unknown resource {input:?}: expected one of {expected}")]
    BadResource {
        input: String,
        expected: &'static str,
    },
    #[error("invalid currency {0:?}: expected a three-letter code such as CNY")]
    BadCurrency(String),
    #[error("sku {0:?} is not in quotad's catalog (see `quotad ctl catalog`)")]
    UnknownSku(String),
    #[error(
        "this quotad serves no catalog (a sidecar with --ledger) to find the resource of sku {0:?}: pass --resource"
    )]
    NoCatalog(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
    #[error("token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("the token is not a valid header value")]
    BadToken,
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    EnvoyConfig(#[from] crate::envoy::bootstrap::BootstrapError),
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> Self {
        let mut message = match s.message() {
            "" => s.code().description().to_owned(),
            m => m.to_owned(),
        };
        // A call that fails in transport says only "transport error"; the cause is below.
        if let Some(cause) = std::error::Error::source(&s).and_then(|e| e.source()) {
            message = format!("{message}: {}", error_chain(cause));
        }
        CtlError::Rpc {
            code: s.code(),
            message,
        }
    }
}

/// Runs one `quotad ctl` command against the quotad at `args.addr`, printing to `out`.
pub async fn run(args: CtlArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let currency = parse_currency(&args.currency)?;
    let tls = ClientTls {
        ca_file: args.tls_ca_file.clone(),
        cert_file: args.tls_cert_file.clone(),
        key_file: args.tls_key_file.clone(),
        domain: None,
    };
    let channel = connect(&args.addr, &tls).await?;
    let bearer = Bearer::new(token(&args)?.as_deref()).ok_or(CtlError::BadToken)?;
    let channel = InterceptedService::new(channel, bearer.clone());
    let mut quota = QuotaClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    let money = |m: Money| pb::Money {
        currency: currency.clone(),
        amount: m.to_string(),
    };

    match args.command {
        CtlCommand::CreateAccount { account, balance } => {
            let req = pb::CreateAccountRequest {
                account_id: account,
                balance: balance.map(money),
            };
            write_balance(out, &admin.create_account(req).await?.into_inner())?;
        }
        CtlCommand::TopUp {
            account,
            amount,
            id,
        } => {
            let topup_id = id_or_fresh(out, id, "topup", "top-up")?;
            let req = pb::TopUpRequest {
                account_id: account,
                amount: Some(money(amount)),
                topup_id,
            };
            write_balance(out, &admin.top_up(req).await?.into_inner())?;
        }
        CtlCommand::Purchase {
            account,
            sku,
            id,
            effective_at,
        } => {
            let purchase_id = id_or_fresh(out, id, "purchase", "purchase")?;
            let req = pb::PurchaseRequest {
                account_id: account,
                sku,
                purchase_id,
                effective_at_ms: effective_at.map_or(0, |t| t.timestamp_millis()),
            };
            let resp = admin.purchase(req).await?.into_inner();
            write_kv(out, &[("price paid", fmt_money(&resp.price_paid))])?;
            writeln!(out)?;
            write_grants(out, &resp.grants)?;
        }
        CtlCommand::GrantCredit {
            account,
            grant_id,
            amount,
            expires_at,
            kind,
            resource,
        } => {
            let kind = match kind {
                CreditKind::Coupon => pb::grant::Kind::Coupon,
                CreditKind::Trial => pb::grant::Kind::Trial,
            };
            let req = pb::GrantCreditRequest {
                account_id: account,
                grant_id,
                kind: kind as i32,
                resource: resource as i32,
                amount: Some(money(amount)),
                expires_at_ms: expires_at.timestamp_millis(),
            };
            write_grants(out, &[admin.grant_credit(req).await?.into_inner()])?;
        }
        CtlCommand::Balance { account } => {
            let req = pb::GetBalanceRequest {
                account_id: account,
            };
            write_balance(out, &quota.get_balance(req).await?.into_inner())?;
        }
        CtlCommand::Statement {
            account,
            month,
            by,
            time_zone,
        } => {
            let req = pb::GetStatementRequest {
                account_id: account,
            };
            let mut st = admin.get_statement(req).await?.into_inner();
            let cal = Calendar {
                zone: time_zone,
                ..Calendar::default()
            };
            if let Some(m) = month {
                keep_month(&mut st, m, &cal);
            }
            match by {
                StatementBy::Entry => write_statement(out, &st, &currency)?,
                by => write_statement_sums(out, &st, by, &cal, &currency)?,
            }
        }
        CtlCommand::Accruals { account } => {
            let req = pb::GetBalanceRequest {
                account_id: account,
            };
            write_accruals(out, &quota.get_balance(req).await?.into_inner())?;
        }
        CtlCommand::ReportStorage {
            account,
            bytes_stored,
            at,
        } => {
            let req = pb::ReportStorageRequest {
                account_id: account.clone(),
                bytes_stored: i64::try_from(bytes_stored).unwrap_or(i64::MAX),
                at_ms: at.map_or(0, |t| t.timestamp_millis()),
            };
            quota.report_storage(req).await?;
            writeln!(out, "storage level of {account}: {bytes_stored} bytes")?;
        }
        CtlCommand::Catalog => {
            let catalog = admin
                .get_catalog(pb::GetCatalogRequest {})
                .await?
                .into_inner();
            write_catalog(out, &catalog)?;
        }
        CtlCommand::Reserve {
            account,
            reservation_id,
            sku,
            quantity,
            resource,
            ttl_ms,
        } => {
            let resource = resolve_resource(&mut admin, resource, &sku).await?;
            let req = pb::ReserveRequest {
                account_id: account,
                reservation_id,
                resource: resource as i32,
                sku,
                quantity,
                ttl_ms: ttl_ms.unwrap_or(0),
            };
            let r = quota.reserve(req).await?.into_inner();
            let mut rows = admitted_rows(r.admitted, r.reason);
            rows.push(("held", fmt_money(&r.held)));
            rows.push(("available", fmt_money(&r.available)));
            if r.admitted {
                rows.push(("expires at", fmt_time_utc(r.expires_at_ms)));
            }
            write_kv(out, &rows)?;
        }
        CtlCommand::Commit {
            reservation_id,
            quantity,
        } => {
            let req = pb::CommitRequest {
                reservation_id,
                quantity,
            };
            let r = quota.commit(req).await?.into_inner();
            write_kv(
                out,
                &[
                    ("charged", fmt_money(&r.charged)),
                    ("available", fmt_money(&r.available)),
                ],
            )?;
        }
        CtlCommand::Release { reservation_id } => {
            let r = quota
                .release(pb::ReleaseRequest { reservation_id })
                .await?
                .into_inner();
            write_kv(out, &[("released", fmt_money(&r.released))])?;
        }
        CtlCommand::Admit {
            account,
            sku,
            quantity,
            resource,
        } => {
            let resource = resolve_resource(&mut admin, resource, &sku).await?;
            let req = pb::AdmitRequest {
                account_id: account,
                resource: resource as i32,
                sku,
                quantity,
            };
            let r = quota.admit(req).await?.into_inner();
            let mut rows = admitted_rows(r.admitted, r.reason);
            rows.push(("available", fmt_money(&r.available)));
            write_kv(out, &rows)?;
        }
        CtlCommand::Watch { account, count } => {
            // Ctrl-C ends the watch (and the call) cleanly. Without a handler (it could not
            // be installed) the watch runs until the stream ends or the process is killed.
            let stop = async {
                if tokio::signal::ctrl_c().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::pin!(stop);
            let req = pb::WatchRequest {
                account_id: account,
            };
            let events = tokio::select! {
                r = quota.watch(req) => r?.into_inner(),
                () = &mut stop => return Ok(()),
            };
            watch_events(out, events, count, stop).await?;
        }
        CtlCommand::StartSession {
            account,
            sku,
            id,
            no_auto_shutdown,
            idle_timeout,
        } => {
            let session_id = id_or_fresh(out, id, "session", "session")?;
            let req = pb::StartSessionRequest {
                account_id: account,
                session_id,
                sku,
                auto_shutdown: Some(!no_auto_shutdown),
                idle_timeout_ms: idle_timeout.unwrap_or(0),
            };
            let r = quota.start_session(req).await?.into_inner();
            let mut rows = admitted_rows(r.admitted, r.reason);
            rows.push(("held", fmt_money(&r.held)));
            if r.admitted {
                rows.push(("started at", fmt_time_utc(r.started_at_ms)));
            }
            write_kv(out, &rows)?;
        }
        CtlCommand::Heartbeat { session_id, idle } => {
            let req = pb::HeartbeatRequest {
                session_id,
                busy: !idle,
            };
            let r = quota.heartbeat(req).await?.into_inner();
            let mut rows = vec![("action", enum_name(r.action, pb::Action::as_str_name))];
            if r.reason != 0 {
                rows.push(("reason", deny_reason(r.reason)));
            }
            if r.stop_cause != 0 {
                rows.push(("stop cause", stop_cause(r.stop_cause)));
            }
            if r.stopped_at_ms != 0 {
                rows.push(("stopped at", fmt_time_utc(r.stopped_at_ms)));
            }
            write_kv(out, &rows)?;
        }
        CtlCommand::StopSession { session_id } => {
            let r = quota
                .stop_session(pb::StopSessionRequest { session_id })
                .await?
                .into_inner();
            write_kv(
                out,
                &[
                    ("charged", fmt_money(&r.charged)),
                    ("stopped at", fmt_time_utc(r.stopped_at_ms)),
                    ("stop cause", stop_cause(r.stop_cause)),
                ],
            )?;
        }
        CtlCommand::CreateToken { kind, subject } => {
            use pb::principal::Kind as K;
            let (kind, account_id, name) = match kind {
                TokenKind::Owner => (K::Owner, subject, String::new()),
                TokenKind::SubUser => (K::SubUser, String::new(), subject),
                TokenKind::Sidecar => (K::Sidecar, String::new(), subject),
                TokenKind::Proxy => (K::Proxy, String::new(), subject),
                TokenKind::Operator => (K::Operator, String::new(), subject),
            };
            let r = admin
                .create_token(pb::CreateTokenRequest {
                    principal: Some(pb::Principal {
                        kind: kind as i32,
                        account_id,
                        name,
                    }),
                })
                .await?
                .into_inner();
            write_kv(
                out,
                &[
                    ("token id", r.token_id),
                    ("token", r.token),
                    ("note", "shown once; quotad keeps only its hash".into()),
                ],
            )?;
        }
        CtlCommand::EnvoyConfig(e) => {
            let admin = match &e.admin_addr {
                Some(a) => {
                    AdminClient::new(InterceptedService::new(connect(a, &tls).await?, bearer))
                }
                None => admin,
            };
            envoy_config(out, admin, &e, &args.addr, &tls).await?;
        }
        CtlCommand::RevokeToken { token_id } => {
            let r = admin
                .revoke_token(pb::RevokeTokenRequest { token_id })
                .await?
                .into_inner();
            write_kv(out, &[("revoked", r.token_id)])?;
        }
        CtlCommand::GrantAccess {
            account,
            sub_user,
            permissions,
        } => {
            let r = admin
                .grant_access(pb::GrantAccessRequest {
                    account_id: account,
                    sub_user,
                    permissions,
                })
                .await?
                .into_inner();
            write_access(out, &r)?;
        }
        CtlCommand::RevokeAccess {
            account,
            sub_user,
            permissions,
        } => {
            let r = admin
                .revoke_access(pb::RevokeAccessRequest {
                    account_id: account,
                    sub_user,
                    permissions,
                })
                .await?
                .into_inner();
            write_access(out, &r)?;
        }
    }
    Ok(())
}

/// Makes the proxy token and prints the bootstrap that uses it.
async fn envoy_config(
    out: &mut dyn Write,
    mut admin: AdminClient<BearerChannel>,
    e: &crate::envoy::bootstrap::EnvoyConfigArgs,
    addr: &str,
    tls: &ClientTls,
) -> Result<(), CtlError> {
    use crate::envoy::bootstrap::{QuotadTls, render};
    let tls = QuotadTls {
        ca_file: tls.ca_file.clone(),
        cert_file: tls.cert_file.clone(),
        key_file: tls.key_file.clone(),
    };
    // Checked before a token is made for nothing.
    e.bootstrap(addr, tls.clone(), String::new())?;
    let r = admin
        .create_token(pb::CreateTokenRequest {
            principal: Some(pb::Principal {
                kind: pb::principal::Kind::Proxy as i32,
                account_id: String::new(),
                name: e.name.clone(),
            }),
        })
        .await?
        .into_inner();
    out.write_all(render(&e.bootstrap(addr, tls, r.token)?).as_bytes())?;
    writeln!(
        out,
        "# proxy token id: {} (quotad ctl revoke-token {})",
        r.token_id, r.token_id
    )?;
    Ok(())
}

/// Prints each event of `events` as one line, flushed at once, until `count` events were
/// printed, the stream ends or `stop` completes; returns how many were printed. A stream
/// that breaks is an error with its status.
async fn watch_events<S>(
    out: &mut dyn Write,
    mut events: S,
    count: Option<u64>,
    stop: impl Future<Output = ()>,
) -> Result<u64, CtlError>
where
    S: Stream<Item = Result<pb::AccountEvent, tonic::Status>> + Unpin,
{
    tokio::pin!(stop);
    let mut printed = 0;
    while count.is_none_or(|n| printed < n) {
        let next = tokio::select! {
            next = events.next() => next,
            () = &mut stop => break,
        };
        match next {
            None => break,
            Some(Err(status)) => return Err(status.into()),
            Some(Ok(e)) => {
                writeln!(out, "{}", event_line(&e))?;
                out.flush()?;
                printed += 1;
            }
        }
    }
    Ok(printed)
}

// --- Connection -----------------------------------------------------------------------

/// Adds `http://` to a bare `host:port`; an address with a scheme is kept as it is.
/// The token to send: --token / QUOTAD_TOKEN, else --token-file / QUOTAD_TOKEN_FILE, else
/// the operator token `quotad serve` wrote in ./quotad-data, if it is there.
fn token(args: &CtlArgs) -> Result<Option<String>, CtlError> {
    if let Some(t) = &args.token {
        return Ok(Some(t.trim().to_owned()));
    }
    let (path, required) = match &args.token_file {
        Some(p) => (p.clone(), true),
        None => (
            Path::new(crate::server::DEFAULT_DATA_DIR).join(crate::auth::OPERATOR_TOKEN_FILE),
            false,
        ),
    };
    match crate::auth::read_token_file(&path) {
        Ok(t) if !t.is_empty() => Ok(Some(t)),
        Ok(_) => Err(CtlError::TokenFile {
            path,
            reason: "empty".into(),
        }),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CtlError::TokenFile {
            path,
            reason: e.to_string(),
        }),
    }
}

fn normalize_addr(addr: &str) -> Result<String, CtlError> {
    let a = addr.trim();
    if a.is_empty() {
        return Err(CtlError::BadAddr {
            addr: addr.to_owned(),
            reason: "address is empty".into(),
        });
    }
    match a.split_once("://") {
        None => Ok(format!("http://{a}")),
        Some(("http" | "https", _)) => Ok(a.to_owned()),
        Some(_) => Err(CtlError::BadAddr {
            addr: addr.to_owned(),
            reason: "use http://, https:// (TLS) or no scheme".into(),
        }),
    }
}

async fn connect(addr: &str, tls: &ClientTls) -> Result<Channel, CtlError> {
    let mut uri = normalize_addr(addr)?;
    if tls.is_set() && !addr.contains("://") {
        uri = uri.replacen("http://", "https://", 1);
    }
    let mut endpoint = Endpoint::from_shared(uri.clone()).map_err(|e| CtlError::BadAddr {
        addr: addr.to_owned(),
        reason: error_chain(&e),
    })?;
    if tls.is_set() || uri.starts_with("https://") {
        endpoint = endpoint
            .tls_config(tls.config()?)
            .map_err(|e| CtlError::BadAddr {
                addr: addr.to_owned(),
                reason: error_chain(&e),
            })?;
    }
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .map_err(|e| CtlError::Unreachable {
            addr: uri,
            // Skip tonic's own "transport error": the cause says what went wrong.
            reason: error_chain(std::error::Error::source(&e).unwrap_or(&e)),
        })
}

/// "transport error: tcp connect error: Connection refused": the useful part of a
/// transport error is in its sources, not its own message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if parts.last() != Some(&msg) {
            parts.push(msg);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The resource given on the command line, else the one the catalog lists for `sku`.
async fn resolve_resource(
    admin: &mut AdminClient<BearerChannel>,
    given: Option<pb::Resource>,
    sku: &str,
) -> Result<pb::Resource, CtlError> {
    if let Some(r) = given {
        return Ok(r);
    }
    let catalog = match admin.get_catalog(pb::GetCatalogRequest {}).await {
        Ok(c) => c.into_inner(),
        // A sidecar running against a separate ledger serves no Admin service.
        Err(s) if s.code() == Code::Unimplemented => {
            return Err(CtlError::NoCatalog(sku.to_owned()));
        }
        Err(s) => return Err(s.into()),
    };
    catalog
        .skus
        .iter()
        .find(|s| s.id == sku)
        .map(|s| s.resource())
        .ok_or_else(|| CtlError::UnknownSku(sku.to_owned()))
}

/// The operator's id, or a fresh one printed first so a failed call can be retried with it.
fn id_or_fresh(
    out: &mut dyn Write,
    id: Option<String>,
    prefix: &str,
    label: &str,
) -> Result<String, CtlError> {
    if let Some(id) = id {
        return Ok(id);
    }
    let id = fresh_id(prefix);
    writeln!(
        out,
        "{label} id: {id} (retry with --id {id}; it will not be applied twice)"
    )?;
    Ok(id)
}

fn fresh_id(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ms = Utc::now().timestamp_millis();
    format!("{prefix}-{ms}-{}-{n}", std::process::id())
}

// --- Argument parsing -----------------------------------------------------------------

fn parse_positive(s: &str) -> Result<Money, CtlError> {
    Ok(Money::parse_positive(s)?)
}

fn parse_non_negative(s: &str) -> Result<Money, CtlError> {
    Ok(Money::parse_non_negative(s)?)
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, CtlError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| CtlError::BadTime {
            input: s.to_owned(),
            reason: e.to_string(),
        })
}

fn parse_int(s: &str, what: &'static str, min: i64) -> Result<i64, CtlError> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(CtlError::BadNumber {
            what,
            input: s.to_owned(),
            min,
        }),
    }
}

fn parse_count(s: &str) -> Result<i64, CtlError> {
    parse_int(s, "number", 0)
}

fn parse_positive_count(s: &str) -> Result<i64, CtlError> {
    parse_int(s, "quantity", 1)
}

fn parse_event_count(s: &str) -> Result<u64, CtlError> {
    parse_int(s, "count", 1).map(i64::unsigned_abs)
}

fn parse_idle_timeout(s: &str) -> Result<i64, CtlError> {
    parse_int(s, "idle timeout (ms)", 1)
}

/// A concrete resource by its API name, in any case, with `-` or `_`.
fn parse_resource(s: &str) -> Result<pb::Resource, CtlError> {
    let name = s.trim().to_ascii_uppercase().replace('-', "_");
    match pb::Resource::from_str_name(&name) {
        Some(pb::Resource::Unspecified) | None => Err(CtlError::BadResource {
            input: s.to_owned(),
            expected: RESOURCES,
        }),
        Some(r) => Ok(r),
    }
}

/// As `parse_resource`, plus "any" for a grant that pays for every resource.
fn parse_grant_resource(s: &str) -> Result<pb::Resource, CtlError> {
    if s.trim().eq_ignore_ascii_case("any") {
        return Ok(pb::Resource::Unspecified);
    }
    parse_resource(s).map_err(|_| CtlError::BadResource {
        input: s.to_owned(),
        expected: GRANT_RESOURCES,
    })
}

fn parse_currency(s: &str) -> Result<String, CtlError> {
    let c = s.trim();
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(c.to_ascii_uppercase())
    } else {
        Err(CtlError::BadCurrency(s.to_owned()))
    }
}

// --- Output ---------------------------------------------------------------------------

/// Rows of cells printed in columns as wide as their widest cell, two spaces apart.
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn headless() -> Self {
        Table { rows: Vec::new() }
    }

    /// Adds a row; control characters from the server are blanked so rows stay one line.
    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| one_line(c)).collect());
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                match widths.get_mut(i) {
                    Some(cur) => *cur = (*cur).max(w),
                    None => widths.push(w),
                }
            }
        }
        let mut s = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                let pad = width - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
            s.push_str(line.trim_end());
            s.push('\n');
        }
        s
    }
}

/// `s` with control characters (newlines included) blanked, so it prints on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|ch| if ch.is_control() { ' ' } else { ch })
        .collect()
}

fn write_access(out: &mut dyn Write, r: &pb::AccessResponse) -> Result<(), CtlError> {
    let perms = if r.permissions.is_empty() {
        "(none)".to_owned()
    } else {
        r.permissions.join(", ")
    };
    write_kv(
        out,
        &[
            ("account", r.account_id.clone()),
            ("sub-user", r.sub_user.clone()),
            ("permissions", perms),
        ],
    )
}

fn write_kv(out: &mut dyn Write, rows: &[(&str, String)]) -> Result<(), CtlError> {
    let mut t = Table::headless();
    for (k, v) in rows {
        t.row(vec![k.to_string(), v.clone()]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

fn write_balance(out: &mut dyn Write, b: &pb::Balance) -> Result<(), CtlError> {
    write_kv(
        out,
        &[
            ("account", b.account_id.clone()),
            (
                "status",
                enum_name(b.status, pb::balance::AccountStatus::as_str_name),
            ),
            ("balance", fmt_money(&b.balance)),
            ("available", fmt_money(&b.available)),
            ("held", fmt_money(&b.held)),
        ],
    )?;
    writeln!(out)?;
    write_grants(out, &b.grants)?;
    if !b.sessions.is_empty() {
        writeln!(out)?;
        writeln!(out, "Exclusive sessions running on this quotad:")?;
        write_sessions(out, &b.sessions)?;
    }
    if !b.streams.is_empty() {
        writeln!(out)?;
        writeln!(out, "usage streams open on this quotad:")?;
        write_streams(out, &b.streams)?;
    }
    Ok(())
}

fn write_sessions(out: &mut dyn Write, sessions: &[pb::SessionInfo]) -> Result<(), CtlError> {
    let mut t = Table::new(&[
        "SESSION",
        "SKU",
        "STARTED (UTC)",
        "AUTO-SHUTDOWN",
        "LAST BUSY (UTC)",
        "CHARGED",
        "ACCRUED",
        "HOURLY",
        "ACCRUES IDLE",
    ]);
    for s in sessions {
        let auto_shutdown = match (s.auto_shutdown, s.idle_timeout_ms) {
            (false, _) => "off".to_owned(),
            (true, ms) if ms <= 0 => "on".to_owned(),
            (true, ms) => format!("on, idle {}", fmt_duration_ms(ms)),
        };
        t.row(vec![
            s.session_id.clone(),
            s.sku.clone(),
            fmt_time(s.started_at_ms),
            auto_shutdown,
            fmt_time(s.last_busy_at_ms),
            fmt_money(&s.charged),
            fmt_money(&s.accrued),
            fmt_money(&s.hourly),
            yes_no(s.accrues_without_activity),
        ]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

fn write_streams(out: &mut dyn Write, streams: &[pb::WorkInfo]) -> Result<(), CtlError> {
    let mut t = Table::new(&["WORK", "SKU", "CHARGED", "HELD", "LAST SEQ"]);
    for w in streams {
        t.row(vec![
            w.work_id.clone(),
            w.sku.clone(),
            fmt_money(&w.charged),
            fmt_money(&w.held),
            w.last_seq.to_string(),
        ]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

/// One watched event on one line: time (UTC), kind, the grant, work or session it concerns,
/// the threshold crossed, the dropped count, then the server's message.
fn event_line(e: &pb::AccountEvent) -> String {
    use pb::account_event::Kind;
    let kind = Kind::try_from(e.kind).ok();
    let mut parts = vec![fmt_time(e.at_ms), enum_name(e.kind, Kind::as_str_name)];
    if !e.grant_id.is_empty() {
        let what = match kind {
            Some(Kind::WorkStopped) => "work",
            Some(Kind::SessionIdleShutdown | Kind::SessionStopped) => "session",
            Some(Kind::LowQuota | Kind::GrantExpiring | Kind::GrantExpired) => "grant",
            _ => "id",
        };
        parts.push(format!("{what} {}", e.grant_id));
    }
    if !e.threshold.is_empty() {
        match kind {
            // A lead time in milliseconds.
            Some(Kind::GrantExpiring) => match e.threshold.parse::<i64>() {
                Ok(ms) => parts.push(format!("within {}", fmt_duration_ms(ms))),
                Err(_) => parts.push(format!("threshold {}", e.threshold)),
            },
            _ => parts.push(format!("threshold {}", e.threshold)),
        }
    }
    if e.dropped != 0 || kind == Some(Kind::EventsDropped) {
        parts.push(format!("dropped {}", e.dropped));
    }
    if !e.message.is_empty() {
        parts.push(e.message.clone());
    }
    one_line(&parts.join("  "))
}

fn write_grants(out: &mut dyn Write, grants: &[pb::Grant]) -> Result<(), CtlError> {
    if grants.is_empty() {
        writeln!(out, "no grants")?;
        return Ok(());
    }
    let mut t = Table::new(&[
        "GRANT",
        "KIND",
        "COVERS",
        "QUOTA",
        "REMAINING",
        "UNIT",
        "STATE",
        "STARTS (UTC)",
        "EXPIRES (UTC)",
        "SOURCE",
    ]);
    for g in grants {
        let covers = if g.covers.is_empty() {
            "any".to_owned()
        } else {
            let names: Vec<String> = g.covers.iter().map(|&r| resource_name(r)).collect();
            names.join(",")
        };
        t.row(vec![
            g.grant_id.clone(),
            enum_name(g.kind, pb::grant::Kind::as_str_name),
            covers,
            g.quota.clone(),
            g.remaining.clone(),
            g.unit.clone(),
            enum_name(g.state, pb::grant::State::as_str_name),
            fmt_time(g.starts_at_ms),
            fmt_time(g.expires_at_ms),
            g.source.clone(),
        ]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

fn write_statement(
    out: &mut dyn Write,
    st: &pb::Statement,
    currency: &str,
) -> Result<(), CtlError> {
    if st.entries.is_empty() {
        writeln!(out, "no charges for account {}", st.account_id)?;
        return Ok(());
    }
    let mut t = Table::new(&[
        "AT (UTC)",
        "USAGE",
        "RESOURCE",
        "SKU",
        "QUANTITY",
        "COST",
        "PAID FROM",
    ]);
    for e in &st.entries {
        let deductions: Vec<String> = e
            .deductions
            .iter()
            .map(|d| {
                let amount = d.amount.as_ref().map_or("?", |m| m.amount.as_str());
                if !d.gb.is_empty() {
                    return format!("{}:{} GB ({amount})", d.source, d.gb);
                }
                format!("{}:{amount}", d.source)
            })
            .collect();
        t.row(vec![
            fmt_time(e.at_ms),
            e.usage_id.clone(),
            resource_name(e.resource),
            e.sku.clone(),
            if e.free_quantity > 0 {
                format!("{} ({} free)", e.quantity, e.free_quantity)
            } else {
                e.quantity.to_string()
            },
            fmt_money(&e.cost),
            deductions.join(", "),
        ]);
    }
    out.write_all(t.render().as_bytes())?;
    // One deployment bills in one currency, so the costs can be summed as they are.
    let total = st.entries.iter().try_fold(Money::ZERO, |acc, e| {
        let cost = e.cost.as_ref()?;
        Money::parse(&cost.amount).ok().map(|m| acc + m)
    });
    let cur = st
        .entries
        .iter()
        .find_map(|e| e.cost.as_ref().map(|c| c.currency.as_str()))
        .unwrap_or(currency);
    let n = st.entries.len();
    match total {
        Some(total) => writeln!(out, "total: {n} entries, {total} {cur}")?,
        None => writeln!(
            out,
            "total: {n} entries, cost not summed (a cost was unreadable)"
        )?,
    }
    if st.truncated {
        writeln!(
            out,
            "(older entries left out: the statement shows the latest {n})"
        )?;
    }
    Ok(())
}

/// How `ctl statement` groups charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatementBy {
    /// One line per charge
    Entry,
    /// Sums per day (in the time zone) and resource
    Day,
    /// Sums per resource
    Resource,
}

/// Keeps the entries of calendar month `m` in the calendar's zone.
fn keep_month(st: &mut pb::Statement, m: Month, cal: &Calendar) {
    st.entries
        .retain(|e| cal.month_of(e.at_ms).is_ok_and(|em| em == m));
}

fn parse_month(s: &str) -> Result<Month, String> {
    Month::parse(s).map_err(|e| e.to_string())
}

fn parse_zone(s: &str) -> Result<Tz, String> {
    Calendar::zone_named(s).map_err(|e| e.to_string())
}

/// Sums of a group of statement entries.
#[derive(Default)]
struct Sums {
    entries: usize,
    quantity: u128,
    free_quantity: u128,
    cost: Money,
    from_balance: Money,
    from_grants: Money,
    gb_from_plans: rust_decimal::Decimal,
}

fn parse_amount(m: &Option<pb::Money>) -> Option<Money> {
    m.as_ref().and_then(|m| Money::parse(&m.amount).ok())
}

/// Statement entries summed per day and resource, or per resource: what each cost, what
/// the balance and the grants paid, GB taken from volume plans and free requests.
fn write_statement_sums(
    out: &mut dyn Write,
    st: &pb::Statement,
    by: StatementBy,
    cal: &Calendar,
    currency: &str,
) -> Result<(), CtlError> {
    if st.entries.is_empty() {
        writeln!(out, "no charges for account {}", st.account_id)?;
        return Ok(());
    }
    let mut groups: std::collections::BTreeMap<(String, String), Sums> = Default::default();
    let mut unreadable = false;
    for e in &st.entries {
        let day = match by {
            StatementBy::Day => cal
                .day_of(e.at_ms)
                .map(|d| d.to_string())
                .unwrap_or_else(|_| "?".to_owned()),
            _ => String::new(),
        };
        let g = groups.entry((day, resource_name(e.resource))).or_default();
        g.entries += 1;
        g.quantity += u128::from(e.quantity.max(0) as u64);
        g.free_quantity += u128::from(e.free_quantity.max(0) as u64);
        match parse_amount(&e.cost) {
            Some(c) => g.cost += c,
            None => unreadable = true,
        }
        for d in &e.deductions {
            if !d.gb.is_empty() {
                match d.gb.parse::<rust_decimal::Decimal>() {
                    Ok(gb) => g.gb_from_plans += gb,
                    Err(_) => unreadable = true,
                }
                continue;
            }
            if d.source == FREE_TIER_LABEL {
                // Counted as FREE quantity; no one paid it.
                continue;
            }
            match parse_amount(&d.amount) {
                Some(a) if d.source == "balance" => g.from_balance += a,
                Some(a) => g.from_grants += a,
                None => unreadable = true,
            }
        }
    }
    let mut header = vec![
        "RESOURCE",
        "ENTRIES",
        "QUANTITY",
        "FREE",
        "LIST COST",
        "FROM GRANTS",
        "GB FROM PLANS",
        "FROM BALANCE",
    ];
    if by == StatementBy::Day {
        header.insert(0, "DAY");
    }
    let mut t = Table::new(&header);
    let mut total = Sums::default();
    for ((day, resource), g) in &groups {
        let mut row = vec![
            resource.clone(),
            g.entries.to_string(),
            g.quantity.to_string(),
            g.free_quantity.to_string(),
            format!("{} {currency}", g.cost),
            format!("{} {currency}", g.from_grants),
            g.gb_from_plans.normalize().to_string(),
            format!("{} {currency}", g.from_balance),
        ];
        if by == StatementBy::Day {
            row.insert(0, day.clone());
        }
        t.row(row);
        total.entries += g.entries;
        total.cost += g.cost;
        total.from_grants += g.from_grants;
        total.from_balance += g.from_balance;
    }
    out.write_all(t.render().as_bytes())?;
    writeln!(
        out,
        "total: {} entries listing {} {currency}; paid {} {currency} from grants and {} {currency} from the balance",
        total.entries, total.cost, total.from_grants, total.from_balance
    )?;
    if unreadable {
        writeln!(out, "(some amounts were unreadable and are left out)")?;
    }
    if st.truncated {
        writeln!(
            out,
            "(older entries left out: the statement holds only the latest ones)"
        )?;
    }
    Ok(())
}

/// What accrues on an account while nothing runs (R10), with the projection.
fn write_accruals(out: &mut dyn Write, b: &pb::Balance) -> Result<(), CtlError> {
    let Some(a) = &b.accruals else {
        writeln!(out, "this quotad does not report accruals")?;
        return Ok(());
    };
    let gb = |bytes: i64| {
        (rust_decimal::Decimal::from(bytes) / rust_decimal::Decimal::from(1_000_000_000))
            .normalize()
            .to_string()
    };
    let mut rows = vec![("account", b.account_id.clone())];
    if a.storage_reported_at_ms != 0 {
        rows.push((
            "stored",
            format!(
                "{} GB (reported {})",
                gb(a.bytes_stored),
                fmt_time_utc(a.storage_reported_at_ms)
            ),
        ));
        rows.push((
            "covered by plan",
            format!("{} GB", gb(a.storage_covered_bytes)),
        ));
        rows.push((
            "charged",
            format!(
                "{} GB, {} per hour",
                gb(a.bytes_stored - a.storage_covered_bytes),
                fmt_money(&a.storage_hourly)
            ),
        ));
    } else {
        rows.push(("stored", "nothing reported".to_owned()));
    }
    rows.push((
        "sessions running",
        format!(
            "{} ({} with auto-shutdown disabled), {} per hour",
            a.sessions_running,
            a.sessions_without_auto_shutdown,
            fmt_money(&a.sessions_hourly)
        ),
    ));
    rows.push(("accrues per hour", fmt_money(&a.hourly)));
    let when = |ms: i64| {
        if ms == 0 {
            "not within a year".to_owned()
        } else {
            fmt_time_utc(ms)
        }
    };
    rows.push(("grants run short", when(a.grants_exhausted_at_ms)));
    rows.push(("balance runs out", when(a.balance_exhausted_at_ms)));
    write_kv(out, &rows)?;
    let idle: Vec<&pb::SessionInfo> = b
        .sessions
        .iter()
        .filter(|s| s.accrues_without_activity)
        .collect();
    if !idle.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "sessions billing while nothing runs (auto-shutdown off, or idle):"
        )?;
        let idle: Vec<pb::SessionInfo> = idle.into_iter().cloned().collect();
        write_sessions(out, &idle)?;
    }
    Ok(())
}

fn write_catalog(out: &mut dyn Write, c: &pb::Catalog) -> Result<(), CtlError> {
    let mut t = Table::new(&["SKU", "KIND", "RESOURCE", "PRICE", "UNIT", "DESCRIPTION"]);
    for s in &c.skus {
        t.row(vec![
            s.id.clone(),
            enum_name(s.kind, pb::sku::Kind::as_str_name),
            resource_name(s.resource),
            fmt_money(&s.unit_price),
            s.unit.clone(),
            s.description.clone(),
        ]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

fn admitted_rows(admitted: bool, reason: i32) -> Vec<(&'static str, String)> {
    if admitted {
        return vec![("admitted", "yes".into())];
    }
    vec![("admitted", "no".into()), ("reason", deny_reason(reason))]
}

/// A deny reason's name with what it means.
fn deny_reason(reason: i32) -> String {
    let why = match pb::DenyReason::try_from(reason) {
        Ok(pb::DenyReason::Overdue) => "the balance is below zero; top up first",
        Ok(pb::DenyReason::NoEntitlement) => "no valid grant covers it and the balance is zero",
        Ok(pb::DenyReason::InsufficientFunds) => "grants and balance cannot pay for it",
        Ok(pb::DenyReason::LedgerUnavailable) => "ledger unreachable and local lease spent",
        _ => "",
    };
    explained(enum_name(reason, pb::DenyReason::as_str_name), why)
}

/// Why a session stopped: the cause's name with what it means.
fn stop_cause(cause: i32) -> String {
    let why = match pb::SessionStop::try_from(cause) {
        Ok(pb::SessionStop::Requested) => "stop-session was called",
        Ok(pb::SessionStop::Idle) => "no busy heartbeat within the idle timeout",
        Ok(pb::SessionStop::InsufficientFunds) => "the next hour could not be paid for",
        _ => "",
    };
    explained(enum_name(cause, pb::SessionStop::as_str_name), why)
}

fn explained(name: String, why: &str) -> String {
    if why.is_empty() {
        name
    } else {
        format!("{name} ({why})")
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// The wire name of an enum value; "-" when unset, "?N" for a value newer than this build.
fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(&E) -> &'static str) -> String {
    match E::try_from(v) {
        Ok(_) if v == 0 => "-".to_owned(),
        Ok(e) => name(&e).to_owned(),
        Err(_) => format!("?{v}"),
    }
}

fn resource_name(v: i32) -> String {
    enum_name(v, pb::Resource::as_str_name)
}

fn fmt_money(m: &Option<pb::Money>) -> String {
    match m {
        None => "-".to_owned(),
        Some(m) if m.currency.is_empty() => m.amount.clone(),
        Some(m) => format!("{} {}", m.amount, m.currency),
    }
}

/// Milliseconds since the epoch as "2026-11-22 10:00:00" UTC; 0 (unset) as "-".
fn fmt_time(ms: i64) -> String {
    if ms == 0 {
        return "-".to_owned();
    }
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        None => format!("{ms} ms"),
    }
}

/// Milliseconds as "20m", "1h30m" or "1m2s500ms"; "0s" when zero or less.
fn fmt_duration_ms(ms: i64) -> String {
    if ms <= 0 {
        return "0s".to_owned();
    }
    let mut rest = ms;
    let mut s = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if rest >= size {
            s.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if rest > 0 {
        s.push_str(&format!("{rest}ms"));
    }
    s
}

fn fmt_time_utc(ms: i64) -> String {
    match fmt_time(ms) {
        t if ms == 0 => t,
        t => format!("{t} UTC"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    enum Cli {
        Ctl(CtlArgs),
    }

    /// Parses `quotad ctl LINE`, LINE split on whitespace.
    fn parse(line: &str) -> Result<CtlArgs, clap::Error> {
        let argv = ["quotad", "ctl"].into_iter().chain(line.split_whitespace());
        let Cli::Ctl(a) = Cli::try_parse_from(argv)?;
        Ok(a)
    }

    fn cny(a: &str) -> Option<pb::Money> {
        Some(pb::Money {
            currency: "CNY".into(),
            amount: a.into(),
        })
    }

    #[test]
    fn table_aligns_columns_and_keeps_rows_on_one_line() {
        let mut t = Table::new(&["SKU", "PRICE", "UNIT"]);
        t.row(vec![
            "gpu.shared.t4".into(),
            "0.0003 CNY".into(),
            "second".into(),
        ]);
        t.row(vec!["x\ny".into(), "9.9 CNY".into(), "".into()]);
        let want = "SKU            PRICE       UNIT\n\
                    gpu.shared.t4  0.0003 CNY  second\n\
                    x y            9.9 CNY\n";
        assert_eq!(t.render(), want);
    }

    #[test]
    fn times_parse_from_rfc3339_and_print_in_utc() {
        let t = parse_time("2026-11-22T18:00:00+08:00").unwrap();
        assert_eq!(fmt_time(t.timestamp_millis()), "2026-11-22 10:00:00");
        assert_eq!(fmt_time(0), "-");
        assert_eq!(fmt_time(i64::MAX), format!("{} ms", i64::MAX));
        for bad in ["2026-11-22", "tomorrow", "2026-11-22T10:00:00"] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.to_string().contains("expected RFC 3339"), "{e}");
        }
    }

    #[test]
    fn addresses_get_a_scheme_when_missing() {
        let ok = |a: &str| normalize_addr(a).unwrap();
        assert_eq!(ok("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(ok(" [::1]:7 "), "http://[::1]:7");
        assert_eq!(ok("http://q:1"), "http://q:1");
        for bad in ["ftp://q:1", "  "] {
            assert!(matches!(normalize_addr(bad), Err(CtlError::BadAddr { .. })));
        }
    }

    #[test]
    fn rpc_errors_read_code_then_message() {
        let e = CtlError::from(tonic::Status::not_found("account acme does not exist"));
        assert_eq!(e.to_string(), "NOT_FOUND: account acme does not exist");
        let e = CtlError::from(tonic::Status::new(Code::Internal, ""));
        assert_eq!(e.to_string(), "INTERNAL: Internal error");
    }

    #[tokio::test]
    async fn refused_connection_names_the_address() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let args = parse(&format!("--addr 127.0.0.1:{port} catalog")).unwrap();
        let e = run(args, &mut Vec::new()).await.unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CtlError::Unreachable { .. }), "{msg}");
        assert!(msg.starts_with(&format!("cannot reach quotad at http://127.0.0.1:{port}: ")));
        assert!(msg.ends_with("(is `quotad serve` running?)"), "{msg}");
    }

    #[tokio::test]
    async fn bad_currency_fails_before_connecting() {
        let args = parse("--addr 127.0.0.1:1 --currency yuan balance a");
        let e = run(args.unwrap(), &mut Vec::new()).await.unwrap_err();
        assert!(matches!(e, CtlError::BadCurrency(_)), "{e}");
    }

    #[test]
    fn args_parse_with_defaults_and_global_options() {
        let a = parse("top-up acme 12.50 --addr q:1").unwrap();
        assert_eq!((a.addr.as_str(), a.currency.as_str()), ("q:1", "CNY"));
        let CtlCommand::TopUp { amount, id, .. } = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!((amount.to_string(), id), ("12.5".into(), None));

        let a = parse("grant-credit a g1 5 --expires-at 2026-12-01T00:00:00Z").unwrap();
        let CtlCommand::GrantCredit { kind, resource, .. } = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!(kind, CreditKind::Coupon);
        assert_eq!(resource, pb::Resource::Unspecified);

        let a = parse("reserve a r1 gpu.shared.t4 60000 --resource gpu-shared").unwrap();
        let CtlCommand::Reserve {
            resource, ttl_ms, ..
        } = a.command
        else {
            panic!("{:?}", a.command)
        };
        assert_eq!((resource, ttl_ms), (Some(pb::Resource::GpuShared), None));
    }

    #[test]
    fn bad_values_are_rejected_with_clear_messages() {
        let credit = "grant-credit a g 1 --expires-at 2026-01-01T00:00:00Z";
        let cases = [
            ("top-up acme ten", "amount \"ten\" is not a decimal number"),
            ("top-up acme 0", "amount 0 must be greater than zero"),
            ("create-account a --balance -1", "amount -1 is negative"),
            (
                "commit r1 -5",
                "invalid number \"-5\": expected a whole number of at least 0",
            ),
            ("admit a sku 0", "expected a whole number of at least 1"),
            ("admit a sku 1 --resource any", "unknown resource \"any\""),
            ("grant-credit a g 1 --expires-at soon", "expected RFC 3339"),
            ("grant-credit a g 1", "--expires-at"),
            (&format!("{credit} --kind plan"), "coupon, trial"),
            (&format!("{credit} --resource gpu"), "REQUEST_GET, any"),
        ];
        for (line, want) in cases {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn balance_view_lists_account_then_grants() {
        let b = pb::Balance {
            account_id: "acme".into(),
            status: pb::balance::AccountStatus::Active as i32,
            balance: cny("10"),
            available: cny("25.5"),
            held: cny("0"),
            grants: vec![pb::Grant {
                grant_id: "c1".into(),
                kind: pb::grant::Kind::Coupon as i32,
                covers: vec![
                    pb::Resource::GpuShared as i32,
                    pb::Resource::GpuExclusive as i32,
                ],
                quota: "20".into(),
                remaining: "15.5".into(),
                unit: "CNY".into(),
                starts_at_ms: 1_795_341_600_000,
                source: "coupon".into(),
                state: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        write_balance(&mut out, &b).unwrap();
        let want = "\
account    acme
status     ACTIVE
balance    10 CNY
available  25.5 CNY
held       0 CNY

GRANT  KIND    COVERS                    QUOTA  REMAINING  UNIT  STATE  STARTS (UTC)         EXPIRES (UTC)  SOURCE
c1     COUPON  GPU_SHARED,GPU_EXCLUSIVE  20     15.5       CNY   ?42    2026-11-22 10:00:00  -              coupon
";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn statement_lists_deductions_and_totals_costs() {
        let entry = |id: &str, cost: &str, from: &[(&str, &str)]| pb::StatementEntry {
            usage_id: id.into(),
            resource: pb::Resource::GpuShared as i32,
            sku: "gpu.shared.t4".into(),
            quantity: 1000,
            cost: cny(cost),
            deductions: from
                .iter()
                .map(|(s, a)| pb::Deduction {
                    source: s.to_string(),
                    amount: cny(a),
                    gb: String::new(),
                })
                .collect(),
            at_ms: 1_795_341_600_000,
            free_quantity: 0,
        };
        let st = pb::Statement {
            account_id: "acme".into(),
            truncated: false,
            entries: vec![
                entry("r1", "0.3", &[("c1", "0.1"), ("balance", "0.2")]),
                entry("r2", "0.0003", &[("balance", "0.0003")]),
            ],
        };
        let mut out = Vec::new();
        write_statement(&mut out, &st, "CNY").unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].ends_with("0.3 CNY     c1:0.1, balance:0.2"),
            "{text}"
        );
        assert_eq!(lines[3], "total: 2 entries, 0.3003 CNY");
    }

    fn entry_at(
        id: &str,
        resource: pb::Resource,
        at_ms: i64,
        cost: &str,
        from: &[(&str, &str, &str)],
    ) -> pb::StatementEntry {
        pb::StatementEntry {
            usage_id: id.into(),
            resource: resource as i32,
            sku: "s".into(),
            quantity: 1000,
            cost: cny(cost),
            deductions: from
                .iter()
                .map(|(s, a, gb)| pb::Deduction {
                    source: s.to_string(),
                    amount: (!a.is_empty()).then(|| pb::Money {
                        currency: "CNY".into(),
                        amount: a.to_string(),
                    }),
                    gb: gb.to_string(),
                })
                .collect(),
            at_ms,
            free_quantity: if resource == pb::Resource::RequestGet {
                400
            } else {
                0
            },
        }
    }

    /// 2026-11-30T15:59:59Z is 23:59:59 on November 30th in Shanghai; a second later it
    /// is December 1st there (and still November 30th in UTC).
    const NOV_LAST: i64 = 1_796_054_399_000;
    const DEC_FIRST: i64 = NOV_LAST + 1_000;

    fn month_statement() -> pb::Statement {
        pb::Statement {
            account_id: "acme".into(),
            truncated: false,
            entries: vec![
                entry_at(
                    "a",
                    pb::Resource::Traffic,
                    NOV_LAST - 3_600_000,
                    "1.5",
                    &[("t1/1", "1", "2"), ("balance", "0.5", "")],
                ),
                entry_at(
                    "b",
                    pb::Resource::Traffic,
                    NOV_LAST,
                    "0.5",
                    &[("balance", "0.5", "")],
                ),
                entry_at(
                    "c",
                    pb::Resource::RequestGet,
                    NOV_LAST,
                    "0.01",
                    &[("free_tier", "0.004", ""), ("c1", "0.006", "")],
                ),
                entry_at(
                    "d",
                    pb::Resource::Storage,
                    DEC_FIRST,
                    "0.2",
                    &[("balance", "0.2", "")],
                ),
            ],
        }
    }

    #[test]
    fn statement_sums_by_day_use_the_platforms_zone() {
        let cal = Calendar::default();
        let mut out = Vec::new();
        write_statement_sums(&mut out, &month_statement(), StatementBy::Day, &cal, "CNY").unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Traffic on Nov 30 (Shanghai): cost 1.5 + 0.5, 2 GB from the plan, 1.0 from the
        // balance; GET: 0.006 from a coupon, 400 free; storage falls on Dec 1.
        assert!(lines[1].starts_with("2026-11-30  REQUEST_GET  1"), "{text}");
        assert!(lines[1].contains("400"), "{text}");
        assert!(lines[2].starts_with("2026-11-30  TRAFFIC      2"), "{text}");
        assert!(lines[2].contains(" 2 CNY"), "{text}");
        assert!(lines[2].contains(" 2  "), "{text}");
        assert!(lines[2].ends_with(" 1 CNY"), "{text}");
        assert!(lines[3].starts_with("2026-12-01  STORAGE"), "{text}");
        assert_eq!(
            lines[4],
            "total: 4 entries listing 2.21 CNY; paid 0.006 CNY from grants and 1.2 CNY from the balance"
        );
    }

    #[test]
    fn statement_of_a_month_by_resource_keeps_that_months_entries() {
        let cal = Calendar::default();
        let mut st = month_statement();
        keep_month(&mut st, Month::parse("2026-11").unwrap(), &cal);
        assert_eq!(st.entries.len(), 3);
        let mut out = Vec::new();
        write_statement_sums(&mut out, &st, StatementBy::Resource, &cal, "CNY").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("STORAGE"), "{text}");
        assert!(
            text.lines().nth(2).unwrap().starts_with("TRAFFIC      2"),
            "{text}"
        );
        let mut dec = month_statement();
        keep_month(&mut dec, Month::parse("2026-12").unwrap(), &cal);
        assert_eq!(dec.entries.len(), 1);
        // In UTC all four are November's.
        let utc = Calendar {
            zone: chrono_tz::UTC,
            ..Calendar::default()
        };
        let mut st = month_statement();
        keep_month(&mut st, Month::parse("2026-11").unwrap(), &utc);
        assert_eq!(st.entries.len(), 4);
        let a = parse("statement acme --month 2026-11 --by resource --time-zone UTC").unwrap();
        assert!(format!("{a:?}").contains("Resource"));
        assert!(parse("statement acme --month 2026-13").is_err());
        assert!(matches!(
            parse("accruals acme").unwrap().command,
            CtlCommand::Accruals { ref account } if account == "acme"
        ));
        match parse("report-storage acme 150000000000 --at 2026-11-01T00:00:00Z")
            .unwrap()
            .command
        {
            CtlCommand::ReportStorage {
                bytes_stored, at, ..
            } => {
                assert_eq!(bytes_stored, 150_000_000_000);
                assert_eq!(at.map(|t| t.timestamp_millis()), Some(1_793_491_200_000));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse("report-storage acme -5").is_err());
        assert!(parse("statement acme --time-zone UTC+8").is_err());
    }

    #[test]
    fn statement_entries_show_gb_from_plans_and_free_requests() {
        let mut out = Vec::new();
        write_statement(&mut out, &month_statement(), "CNY").unwrap();
        let text = String::from_utf8(out).unwrap();
        // A volume plan's GB with the money they stand for; what free requests stand for.
        assert!(text.contains("t1/1:2 GB (1), balance:0.5"), "{text}");
        assert!(text.contains("1000 (400 free)"), "{text}");
        assert!(text.contains("free_tier:0.004, c1:0.006"), "{text}");
    }

    #[test]
    fn accruals_show_storage_sessions_and_when_money_runs_out() {
        let b = pb::Balance {
            account_id: "acme".into(),
            sessions: vec![pb::SessionInfo {
                session_id: "s1".into(),
                sku: "gpu.exclusive.a10.8c30g".into(),
                started_at_ms: 1_795_341_600_000,
                auto_shutdown: false,
                idle_timeout_ms: 1_200_000,
                last_busy_at_ms: 1_795_341_600_000,
                charged: cny("0"),
                accrued: cny("0"),
                hourly: cny("9.9"),
                accrues_without_activity: true,
            }],
            accruals: Some(pb::Accruals {
                bytes_stored: 150_000_000_000,
                storage_reported_at_ms: 1_795_341_600_000,
                storage_covered_bytes: 100_000_000_000,
                storage_hourly: cny("0.00833333"),
                sessions_hourly: cny("9.9"),
                sessions_running: 1,
                sessions_without_auto_shutdown: 1,
                hourly: cny("9.90833333"),
                grants_exhausted_at_ms: 1_795_341_600_000,
                balance_exhausted_at_ms: 0,
            }),
            ..pb::Balance::default()
        };
        let mut out = Vec::new();
        write_accruals(&mut out, &b).unwrap();
        let text = String::from_utf8(out).unwrap();
        for want in [
            "stored            150 GB (reported 2026-11-22 10:00:00 UTC)",
            "covered by plan   100 GB",
            "charged           50 GB, 0.00833333 CNY per hour",
            "sessions running  1 (1 with auto-shutdown disabled), 9.9 CNY per hour",
            "accrues per hour  9.90833333 CNY",
            "grants run short  2026-11-22 10:00:00 UTC",
            "balance runs out  not within a year",
            "s1",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    #[test]
    fn denial_names_and_explains_the_reason() {
        let rows = admitted_rows(false, pb::DenyReason::Overdue as i32);
        assert_eq!(rows[0], ("admitted", "no".to_owned()));
        assert!(
            rows[1].1.starts_with("OVERDUE (the balance is below zero"),
            "{rows:?}"
        );
        assert_eq!(admitted_rows(true, 0), [("admitted", "yes".to_owned())]);
    }

    #[test]
    fn session_and_watch_args_parse_with_defaults() {
        let a = parse("watch acme").unwrap();
        let CtlCommand::Watch { account, count } = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!((account.as_str(), count), ("acme", None));
        let a = parse("watch acme --count 3").unwrap();
        assert!(matches!(
            a.command,
            CtlCommand::Watch { count: Some(3), .. }
        ));

        let a = parse("start-session acme gpu.excl.a100").unwrap();
        let CtlCommand::StartSession {
            account,
            sku,
            id,
            no_auto_shutdown,
            idle_timeout,
        } = a.command
        else {
            panic!("{:?}", a.command)
        };
        assert_eq!(
            (
                account.as_str(),
                sku.as_str(),
                id,
                no_auto_shutdown,
                idle_timeout
            ),
            ("acme", "gpu.excl.a100", None, false, None)
        );
        let a = parse("start-session a s --id s1 --idle-timeout 600000").unwrap();
        let CtlCommand::StartSession {
            id, idle_timeout, ..
        } = a.command
        else {
            panic!("{:?}", a.command)
        };
        assert_eq!((id.as_deref(), idle_timeout), (Some("s1"), Some(600_000)));
        let a = parse("start-session a s --no-auto-shutdown").unwrap();
        assert!(matches!(
            a.command,
            CtlCommand::StartSession {
                no_auto_shutdown: true,
                idle_timeout: None,
                ..
            }
        ));

        let a = parse("heartbeat s1").unwrap();
        let CtlCommand::Heartbeat { session_id, idle } = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!((session_id.as_str(), idle), ("s1", false));
        let a = parse("heartbeat s1 --idle").unwrap();
        assert!(matches!(
            a.command,
            CtlCommand::Heartbeat { idle: true, .. }
        ));

        let a = parse("stop-session s1").unwrap();
        let CtlCommand::StopSession { session_id } = a.command else {
            panic!("{:?}", a.command)
        };
        assert_eq!(session_id, "s1");
    }

    #[test]
    fn bad_session_and_watch_values_are_rejected_with_clear_messages() {
        let cases = [
            (
                "watch a --count 0",
                "invalid count \"0\": expected a whole number of at least 1",
            ),
            ("watch a --count -2", "invalid count \"-2\""),
            ("watch a --count many", "invalid count \"many\""),
            ("watch", "<ACCOUNT>"),
            (
                "start-session a s --idle-timeout 20m",
                "invalid idle timeout (ms) \"20m\": expected a whole number of at least 1",
            ),
            (
                "start-session a s --idle-timeout 0",
                "invalid idle timeout (ms) \"0\"",
            ),
            (
                "start-session a s --idle-timeout -5",
                "invalid idle timeout (ms) \"-5\"",
            ),
            (
                "start-session a s --no-auto-shutdown --idle-timeout 1000",
                "'--no-auto-shutdown' cannot be used with '--idle-timeout",
            ),
            ("start-session a", "<SKU>"),
            ("heartbeat s1 --busy", "--busy"),
            ("stop-session", "<SESSION_ID>"),
        ];
        for (line, want) in cases {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    fn event(kind: pb::account_event::Kind) -> pb::AccountEvent {
        pb::AccountEvent {
            account_id: "acme".into(),
            kind: kind as i32,
            at_ms: 1_795_341_600_000,
            ..Default::default()
        }
    }

    #[test]
    fn event_lines_show_time_kind_subject_threshold_and_message() {
        use pb::account_event::Kind;
        let e = pb::AccountEvent {
            grant_id: "c1".into(),
            threshold: "0.2".into(),
            message: "coupon c1 has 15% of its quota left".into(),
            ..event(Kind::LowQuota)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  LOW_QUOTA  grant c1  threshold 0.2  \
             coupon c1 has 15% of its quota left"
        );
        let e = pb::AccountEvent {
            grant_id: "plan-1".into(),
            threshold: "86400000".into(),
            message: "expires tomorrow\nwith 3 CNY left".into(),
            ..event(Kind::GrantExpiring)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  GRANT_EXPIRING  grant plan-1  within 1d  \
             expires tomorrow with 3 CNY left"
        );
        let e = pb::AccountEvent {
            grant_id: "job-7".into(),
            message: "INSUFFICIENT_FUNDS".into(),
            ..event(Kind::WorkStopped)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  WORK_STOPPED  work job-7  INSUFFICIENT_FUNDS"
        );
        let e = pb::AccountEvent {
            grant_id: "s1".into(),
            ..event(Kind::SessionIdleShutdown)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  SESSION_IDLE_SHUTDOWN  session s1"
        );
        let e = pb::AccountEvent {
            dropped: 17,
            message: "watcher fell behind".into(),
            ..event(Kind::EventsDropped)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  EVENTS_DROPPED  dropped 17  watcher fell behind"
        );
        let e = pb::AccountEvent {
            kind: 99,
            at_ms: 0,
            grant_id: "x".into(),
            ..Default::default()
        };
        assert_eq!(event_line(&e), "-  ?99  id x");
    }

    #[tokio::test]
    async fn watch_prints_events_until_count_end_of_stream_or_stop() {
        use pb::account_event::Kind;
        let evs = || {
            vec![
                Ok(event(Kind::Overdue)),
                Ok(event(Kind::Recovered)),
                Ok(event(Kind::LowQuota)),
            ]
        };
        let lines = |out: Vec<u8>| String::from_utf8(out).unwrap().lines().count();

        let mut out = Vec::new();
        let stream = tokio_stream::iter(evs());
        let n = watch_events(&mut out, stream, Some(2), std::future::pending())
            .await
            .unwrap();
        assert_eq!((n, lines(out)), (2, 2));

        let mut out = Vec::new();
        let stream = tokio_stream::iter(evs());
        let n = watch_events(&mut out, stream, None, std::future::pending())
            .await
            .unwrap();
        assert_eq!(n, 3);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("2026-11-22 10:00:00  OVERDUE\n"), "{text}");

        // Ctrl-C while waiting for an event ends the watch without an error.
        let mut out = Vec::new();
        let stream = tokio_stream::pending::<Result<pb::AccountEvent, tonic::Status>>();
        let n = watch_events(&mut out, stream, None, async {})
            .await
            .unwrap();
        assert_eq!((n, out.len()), (0, 0));

        // A broken stream is an error with its status, after the events before it.
        let mut out = Vec::new();
        let mut items = evs();
        items.insert(
            1,
            Err(tonic::Status::unavailable("quotad is shutting down")),
        );
        let stream = tokio_stream::iter(items);
        let e = watch_events(&mut out, stream, Some(5), std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "UNAVAILABLE: quotad is shutting down");
        assert_eq!(lines(out), 1);
    }

    #[test]
    fn balance_view_adds_sessions_and_streams_when_there_are_any() {
        let b = pb::Balance {
            account_id: "acme".into(),
            status: pb::balance::AccountStatus::Active as i32,
            balance: cny("10"),
            available: cny("7"),
            held: cny("3"),
            sessions: vec![
                pb::SessionInfo {
                    session_id: "s1".into(),
                    sku: "gpu.excl.a100".into(),
                    started_at_ms: 1_795_341_600_000,
                    auto_shutdown: true,
                    idle_timeout_ms: 1_200_000,
                    last_busy_at_ms: 1_795_342_500_000,
                    charged: cny("0"),
                    accrued: cny("1.5"),
                    hourly: cny("6"),
                    accrues_without_activity: false,
                },
                pb::SessionInfo {
                    session_id: "s2".into(),
                    sku: "gpu.excl.h100".into(),
                    started_at_ms: 1_795_341_600_000,
                    auto_shutdown: false,
                    charged: cny("12"),
                    accrued: cny("0.2"),
                    hourly: cny("12"),
                    accrues_without_activity: true,
                    ..Default::default()
                },
            ],
            streams: vec![pb::WorkInfo {
                work_id: "job-7".into(),
                sku: "gpu.shared.t4".into(),
                charged: cny("0.018"),
                held: cny("0.0036"),
                last_seq: 42,
            }],
            ..Default::default()
        };
        let mut out = Vec::new();
        write_balance(&mut out, &b).unwrap();
        let want = "\
account    acme
status     ACTIVE
balance    10 CNY
available  7 CNY
held       3 CNY

no grants

Exclusive sessions running on this quotad:
SESSION  SKU            STARTED (UTC)        AUTO-SHUTDOWN  LAST BUSY (UTC)      CHARGED  ACCRUED  HOURLY  ACCRUES IDLE
s1       gpu.excl.a100  2026-11-22 10:00:00  on, idle 20m   2026-11-22 10:15:00  0 CNY    1.5 CNY  6 CNY   no
s2       gpu.excl.h100  2026-11-22 10:00:00  off            -                    12 CNY   0.2 CNY  12 CNY  yes

usage streams open on this quotad:
WORK   SKU            CHARGED    HELD        LAST SEQ
job-7  gpu.shared.t4  0.018 CNY  0.0036 CNY  42
";
        assert_eq!(String::from_utf8(out).unwrap(), want);

        // Neither section (nor its heading) without sessions or streams.
        let b = pb::Balance {
            sessions: vec![],
            streams: vec![],
            ..b
        };
        let mut out = Vec::new();
        write_balance(&mut out, &b).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("held       3 CNY\n\nno grants\n"), "{text}");
    }

    #[test]
    fn session_outcomes_name_and_explain_causes() {
        assert_eq!(
            stop_cause(pb::SessionStop::Idle as i32),
            "SESSION_STOP_IDLE (no busy heartbeat within the idle timeout)"
        );
        assert_eq!(stop_cause(0), "-");
        assert_eq!(stop_cause(9), "?9");
        assert_eq!(
            deny_reason(pb::DenyReason::InsufficientFunds as i32),
            "INSUFFICIENT_FUNDS (grants and balance cannot pay for it)"
        );
    }

    #[test]
    fn durations_print_in_the_largest_units() {
        let cases = [
            (1_200_000, "20m"),
            (5_400_000, "1h30m"),
            (62_500, "1m2s500ms"),
            (86_400_000, "1d"),
            (250, "250ms"),
            (0, "0s"),
            (-3, "0s"),
        ];
        for (ms, want) in cases {
            assert_eq!(fmt_duration_ms(ms), want, "{ms}");
        }
    }

    #[test]
    fn fresh_ids_are_unique_within_a_process() {
        assert_ne!(fresh_id("topup"), fresh_id("topup"));
    }
}
