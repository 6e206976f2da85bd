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
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

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
    /// Show an account's balance, holds and grants
    Balance { account: String },
    /// List an account's charges and what paid for them
    Statement { account: String },
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
    let channel = connect(&args.addr).await?;
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
        CtlCommand::Statement { account } => {
            let req = pb::GetStatementRequest {
                account_id: account,
            };
            write_statement(
                out,
                &admin.get_statement(req).await?.into_inner(),
                &currency,
            )?;
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
    }
    Ok(())
}

// --- Connection -----------------------------------------------------------------------

/// Adds `http://` to a bare `host:port`; an address with a scheme is kept as it is.
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
        Some(("http", _)) => Ok(a.to_owned()),
        Some(_) => Err(CtlError::BadAddr {
            addr: addr.to_owned(),
            reason: "quotad serves plaintext gRPC; use http:// or no scheme".into(),
        }),
    }
}

async fn connect(addr: &str) -> Result<Channel, CtlError> {
    let uri = normalize_addr(addr)?;
    let endpoint = Endpoint::from_shared(uri.clone()).map_err(|e| CtlError::BadAddr {
        addr: addr.to_owned(),
        reason: error_chain(&e),
    })?;
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
    admin: &mut AdminClient<Channel>,
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
        let clean = |c: String| -> String {
            c.chars()
                .map(|ch| if ch.is_control() { ' ' } else { ch })
                .collect()
        };
        self.rows.push(cells.into_iter().map(clean).collect());
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
    write_grants(out, &b.grants)
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
                format!("{}:{amount}", d.source)
            })
            .collect();
        t.row(vec![
            fmt_time(e.at_ms),
            e.usage_id.clone(),
            resource_name(e.resource),
            e.sku.clone(),
            e.quantity.to_string(),
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
    let why = match pb::DenyReason::try_from(reason) {
        Ok(pb::DenyReason::Overdue) => "the balance is below zero; top up first",
        Ok(pb::DenyReason::NoEntitlement) => "no valid grant covers it and the balance is zero",
        Ok(pb::DenyReason::InsufficientFunds) => "grants and balance cannot pay for it",
        Ok(pb::DenyReason::LedgerUnavailable) => "ledger unreachable and local lease spent",
        _ => "",
    };
    let name = enum_name(reason, pb::DenyReason::as_str_name);
    let reason = if why.is_empty() {
        name
    } else {
        format!("{name} ({why})")
    };
    vec![("admitted", "no".into()), ("reason", reason)]
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
        for bad in ["https://q:1", "  "] {
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
                })
                .collect(),
            at_ms: 1_795_341_600_000,
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
    fn fresh_ids_are_unique_within_a_process() {
        assert_ne!(fresh_id("topup"), fresh_id("topup"));
    }
}
