//! One configuration for `quotad serve` and `quotad ledger`, from four sources with a fixed
//! precedence: flags > environment (`QUOTAD_*`) > the TOML file (`--config FILE`) >
//! built-in defaults. Flags and file keys are the same struct, so a setting cannot exist in
//! one and be forgotten in the other; adding one is a field here (its flag, variable and
//! key at once), a line in `apply` and a line in `effective`.
//!
//! Everything is checked before anything starts: unknown keys name the key and the file,
//! bad values name the key, the value and what is allowed, so a typo never falls back to a
//! default silently. `quotad check-config FILE` runs the same checks (and loads the catalog
//! the file names) without starting.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::billing::Money;
use crate::journal::JournalSync;
use crate::server::{self, LedgerServeConfig, ServeConfig};
use crate::tls::{ClientTls, ServerTls};

/// Where the metrics endpoint listens when asked for without an address (`metrics_listen`
/// has no default: the endpoint is off unless configured).
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("{0}")]
    Serve(#[from] server::ServeError),
    #[error("internal: cannot merge settings: {0}")]
    Merge(String),
}

/// A value that is written as text (in a flag, a variable or the file) and parsed with a
/// message that says what is allowed.
pub trait Setting: Sized {
    fn parse_setting(s: &str) -> Result<Self, String>;
    fn show(&self) -> String;
}

/// `T` as a setting: parsed from a string (or a TOML number, taken as written), printed
/// back as a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Text<T>(pub T);

impl<T: Setting> FromStr for Text<T> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        T::parse_setting(s).map(Text)
    }
}

impl<T: Setting> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.show())
    }
}

impl<'de, T: Setting> Deserialize<'de> for Text<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: Setting> serde::de::Visitor<'_> for V<T> {
            type Value = Text<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text<T>, E> {
                T::parse_setting(s).map(Text).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text<T>, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text<T>, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text<T>, E> {
                // Shortest text that reads back as the same float: what the file says.
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Setting for JournalSync {
    fn parse_setting(s: &str) -> Result<Self, String> {
        JournalSync::from_name(s)
            .ok_or_else(|| format!("{s:?} is not a journal sync mode: full or normal"))
    }
    fn show(&self) -> String {
        match self {
            JournalSync::Full => "full",
            JournalSync::Normal => "normal",
        }
        .into()
    }
}

impl Setting for Money {
    fn parse_setting(s: &str) -> Result<Self, String> {
        Money::parse_non_negative(s.trim()).map_err(|e| format!("{e}: a non-negative amount"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Setting for Decimal {
    fn parse_setting(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a decimal fraction such as 0.2"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Money an account may be admitted for with the ledger unreachable: `ACCOUNT=AMOUNT`,
/// `*` for every account.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub account: String,
    pub amount: Money,
}

impl Setting for Budget {
    fn parse_setting(s: &str) -> Result<Self, String> {
        let (account, amount) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not ACCOUNT=AMOUNT"))?;
        if account.is_empty() {
            return Err(format!(
                "{s:?} names no account: ACCOUNT=AMOUNT or *=AMOUNT"
            ));
        }
        Ok(Budget {
            account: account.to_owned(),
            amount: Money::parse_setting(amount)?,
        })
    }
    fn show(&self) -> String {
        format!("{}={}", self.account, self.amount)
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (request ids) included.
    Json,
}

impl Setting for LogFormat {
    fn parse_setting(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format: text or json")),
        }
    }
    fn show(&self) -> String {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
        .into()
    }
}

/// `quotad serve`: each field is a flag `--KEY`, a variable `QUOTAD_KEY` and a key in the
/// file's `[serve]` table; unset everywhere, the default applies.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeSettings {
    /// Address to serve gRPC on. [default: 127.0.0.1:50051]
    #[arg(long, env = "QUOTAD_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory for the ledger and journal files. [default: quotad-data]
    #[arg(long, env = "QUOTAD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Catalog TOML replacing the one compiled in.
    #[arg(long, env = "QUOTAD_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// A `quotad ledger` to sync with (http://HOST:PORT) instead of the embedded ledger.
    #[arg(long, env = "QUOTAD_LEDGER")]
    pub ledger: Option<String>,
    /// Money an account may be admitted for while the ledger is unreachable and its lease
    /// is spent, as ACCOUNT=AMOUNT (repeatable or comma-separated; `*=AMOUNT` for every
    /// account). Default: none (fail-closed).
    #[arg(long, env = "QUOTAD_FAIL_OPEN_BUDGET", value_delimiter = ',')]
    pub fail_open_budget: Option<Vec<Text<Budget>>>,
    /// Milliseconds between syncs with the ledger when no usage wakes the loop earlier.
    #[arg(long, env = "QUOTAD_SYNC_INTERVAL_MS")]
    pub sync_interval_ms: Option<u64>,
    /// Hold lifetime when a Reserve gives ttl_ms = 0.
    #[arg(long, env = "QUOTAD_HOLD_TTL_DEFAULT_MS")]
    pub hold_ttl_default_ms: Option<i64>,
    /// With a remote ledger: the least headroom a sidecar asks for above what it has
    /// committed on an active account (its demand is twice its recent spend, at least
    /// this). [default: 1]
    #[arg(long, env = "QUOTAD_LEASE_WANT_MIN")]
    pub lease_want_min: Option<Text<Money>>,
    /// With a remote ledger: an account's lease is renewed and its snapshot refreshed every
    /// sync for this long after its last request; then the lease is given back (once
    /// nothing depends on it). [default: 300000]
    #[arg(long, env = "QUOTAD_LEASE_ACTIVE_MS")]
    pub lease_active_ms: Option<i64>,
    /// With a remote ledger: renew an active account's lease this long before it expires.
    /// [default: 10000]
    #[arg(long, env = "QUOTAD_LEASE_RENEW_BEFORE_MS")]
    pub lease_renew_before_ms: Option<i64>,
    /// With a remote ledger: longest a request waits for the ledger to answer a lease
    /// request before it is answered without it. [default: 2000]
    #[arg(long, env = "QUOTAD_LEASE_REQUEST_TIMEOUT_MS")]
    pub lease_request_timeout_ms: Option<u64>,
    /// With a remote ledger: longest a request the account can pay waits for other
    /// sidecars to give back unused lease the ledger asked them for (they do at their next
    /// sync); 0: deny at once. [default: 2500]
    #[arg(long, env = "QUOTAD_LEASE_RECALL_WAIT_MS")]
    pub lease_recall_wait_ms: Option<u64>,
    /// Most reservations kept in memory.
    #[arg(long, env = "QUOTAD_HOLDS_MAX")]
    pub holds_max: Option<usize>,
    /// Journal durability: `full` fsyncs every group commit (an acknowledged call
    /// survives a power loss); `normal` hands writes to the OS before the ack and
    /// fsyncs at checkpoints (survives a kill -9 of quotad, not a power loss).
    #[arg(long, env = "QUOTAD_JOURNAL_SYNC")]
    pub journal_sync: Option<Text<JournalSync>>,
    /// Most usage streams (StreamUsage) open at once.
    #[arg(long, env = "QUOTAD_STREAMS_MAX")]
    pub streams_max: Option<usize>,
    /// Most usage reports per second on one stream (a burst of as many is allowed).
    #[arg(long, env = "QUOTAD_STREAM_REPORTS_PER_SEC")]
    pub stream_reports_per_sec: Option<u32>,
    /// Decisions a usage stream buffers for a client that does not read them; beyond,
    /// the stream ends with RESOURCE_EXHAUSTED.
    #[arg(long, env = "QUOTAD_STREAM_BUFFER")]
    pub stream_buffer: Option<usize>,
    /// Most Exclusive sessions kept (running and recently stopped).
    #[arg(long, env = "QUOTAD_SESSIONS_MAX")]
    pub sessions_max: Option<usize>,
    /// Most Watch streams open at once.
    #[arg(long, env = "QUOTAD_WATCHERS_MAX")]
    pub watchers_max: Option<usize>,
    /// Largest ext_authz CheckRequest from Envoy, in bytes.
    #[arg(long, env = "QUOTAD_ENVOY_CHECK_MESSAGE_BYTES_MAX")]
    pub envoy_check_message_bytes_max: Option<usize>,
    /// Largest access log message from Envoy (one batch of entries), in bytes.
    #[arg(long, env = "QUOTAD_ENVOY_ACCESS_LOG_MESSAGE_BYTES_MAX")]
    pub envoy_access_log_message_bytes_max: Option<usize>,
    /// Requests finished behind Envoy settled (committed or released) at once.
    #[arg(long, env = "QUOTAD_ENVOY_SETTLE_CONCURRENCY_MAX")]
    pub envoy_settle_concurrency_max: Option<usize>,
    /// LOW_QUOTA fires when a grant's remaining quota falls to these fractions of it
    /// (comma-separated). Default: 0.2,0.1.
    #[arg(long, env = "QUOTAD_ALERT_LOW_QUOTA", value_delimiter = ',')]
    pub alert_low_quota: Option<Vec<Text<Decimal>>>,
    /// GRANT_EXPIRING fires this long before a grant with quota left expires
    /// (milliseconds, comma-separated). Default: 7 days and 1 day.
    #[arg(long, env = "QUOTAD_ALERT_EXPIRING_MS", value_delimiter = ',')]
    pub alert_expiring_ms: Option<Vec<i64>>,
    /// LOW_QUOTA also fires when the balance falls below this amount. Default: off.
    #[arg(long, env = "QUOTAD_ALERT_BALANCE_FLOOR")]
    pub alert_balance_floor: Option<Text<Money>>,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    /// Default: off.
    #[arg(long, env = "QUOTAD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines on stderr: `text` or `json`. [default: text]
    #[arg(long, env = "QUOTAD_LOG_FORMAT")]
    pub log_format: Option<Text<LogFormat>>,
    /// Most requests served at once over all connections; beyond, requests are refused at
    /// once with RESOURCE_EXHAUSTED. [default: 4096]
    #[arg(long, env = "QUOTAD_CONCURRENCY_MAX")]
    pub concurrency_max: Option<usize>,
    /// Most requests served at once on one connection; more wait in HTTP/2 flow control.
    /// [default: 1024]
    #[arg(long, env = "QUOTAD_CONCURRENCY_PER_CONNECTION")]
    pub concurrency_per_connection: Option<usize>,
    /// Longest any request may take before it ends with CANCELLED (a client's
    /// `grpc-timeout` shortens it). [default: 30000]
    #[arg(long, env = "QUOTAD_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Largest request message accepted, in bytes (the Ledger service's Sync has its own,
    /// larger limit). [default: 65536]
    #[arg(long, env = "QUOTAD_MESSAGE_BYTES_MAX")]
    pub message_bytes_max: Option<usize>,
    /// Turn authentication off: every caller may do anything. Local development only.
    #[arg(long, env = "QUOTAD_AUTH_DISABLED", num_args = 0..=1, default_missing_value = "true")]
    pub auth_disabled: Option<bool>,
    /// How long a token lookup is trusted (ms): how long a revoked token or permission may
    /// still work on a sidecar of a remote ledger. 0: look up every call. [default: 5000]
    #[arg(long, env = "QUOTAD_AUTH_CACHE_TTL_MS")]
    pub auth_cache_ttl_ms: Option<u64>,
    /// Serve over TLS with this certificate (PEM); needs tls_key_file. Default: plaintext.
    #[arg(long, env = "QUOTAD_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "QUOTAD_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "QUOTAD_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// The token to present to a remote ledger (a sidecar or operator token), in a file.
    /// Without it, QUOTAD_LEDGER_TOKEN holds the token itself.
    #[arg(long, env = "QUOTAD_LEDGER_TOKEN_FILE")]
    pub ledger_token_file: Option<PathBuf>,
    /// CA (PEM) the remote ledger's TLS certificate must chain to.
    #[arg(long, env = "QUOTAD_LEDGER_TLS_CA_FILE")]
    pub ledger_tls_ca_file: Option<PathBuf>,
    /// This sidecar's client certificate (PEM) for a ledger that requires mTLS.
    #[arg(long, env = "QUOTAD_LEDGER_TLS_CERT_FILE")]
    pub ledger_tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "QUOTAD_LEDGER_TLS_KEY_FILE")]
    pub ledger_tls_key_file: Option<PathBuf>,
}

/// The settings both processes have, gathered to be applied and printed in one place.
struct CommonSettings {
    metrics_listen: Option<SocketAddr>,
    log_format: Option<Text<LogFormat>>,
    concurrency_max: Option<usize>,
    concurrency_per_connection: Option<usize>,
    request_timeout_ms: Option<u64>,
    message_bytes_max: Option<usize>,
}

/// `quotad ledger`: flags `--KEY`, variables `QUOTAD_KEY` (but `QUOTAD_LEDGER_LISTEN` for
/// the address, `DATABASE_URL` for the database), keys in the file's `[ledger]` table.
#[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// Address to serve the Admin and Ledger services on. [default: 127.0.0.1:50052]
    #[arg(long, env = "QUOTAD_LEDGER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// postgres://USER@HOST:PORT/DB, or a SQLite file (sqlite:PATH). Required.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Catalog TOML replacing the one compiled in.
    #[arg(long, env = "QUOTAD_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// How long a lease lets a sidecar admit without hearing from the ledger.
    #[arg(long, env = "QUOTAD_LEASE_TTL_MS")]
    pub lease_ttl_ms: Option<i64>,
    /// How long an expired lease's money stays set aside for holds admitted under it.
    #[arg(long, env = "QUOTAD_LEASE_HOLD_GRACE_MS")]
    pub lease_hold_grace_ms: Option<i64>,
    /// Most connections to PostgreSQL.
    #[arg(long, env = "QUOTAD_PG_POOL_MAX")]
    pub pg_pool_max: Option<u32>,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    /// Default: off.
    #[arg(long, env = "QUOTAD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines on stderr: `text` or `json`. [default: text]
    #[arg(long, env = "QUOTAD_LOG_FORMAT")]
    pub log_format: Option<Text<LogFormat>>,
    /// Most requests served at once over all connections; beyond, requests are refused at
    /// once with RESOURCE_EXHAUSTED. [default: 4096]
    #[arg(long, env = "QUOTAD_CONCURRENCY_MAX")]
    pub concurrency_max: Option<usize>,
    /// Most requests served at once on one connection; more wait in HTTP/2 flow control.
    /// [default: 1024]
    #[arg(long, env = "QUOTAD_CONCURRENCY_PER_CONNECTION")]
    pub concurrency_per_connection: Option<usize>,
    /// Longest any request may take before it ends with CANCELLED (a client's
    /// `grpc-timeout` shortens it). [default: 30000]
    #[arg(long, env = "QUOTAD_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Largest request message accepted, in bytes (the Ledger service's Sync has its own,
    /// larger limit). [default: 65536]
    #[arg(long, env = "QUOTAD_MESSAGE_BYTES_MAX")]
    pub message_bytes_max: Option<usize>,
    /// Turn authentication off: every caller may do anything. Local development only.
    #[arg(long, env = "QUOTAD_AUTH_DISABLED", num_args = 0..=1, default_missing_value = "true")]
    pub auth_disabled: Option<bool>,
    /// How long a token lookup is trusted (ms): how long a revoked token or permission may
    /// still work on a sidecar of a remote ledger. 0: look up every call. [default: 5000]
    #[arg(long, env = "QUOTAD_AUTH_CACHE_TTL_MS")]
    pub auth_cache_ttl_ms: Option<u64>,
    /// Serve over TLS with this certificate (PEM); needs tls_key_file. Default: plaintext.
    #[arg(long, env = "QUOTAD_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// The TLS certificate's private key (PEM).
    #[arg(long, env = "QUOTAD_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "QUOTAD_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Where the first operator token is written if the database has none.
    /// [default: quotad-ledger/operator.token]
    #[arg(long, env = "QUOTAD_OPERATOR_TOKEN_FILE")]
    pub operator_token_file: Option<PathBuf>,
}

/// The whole file: a `[serve]` table and a `[ledger]` table, both optional.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub serve: Option<ServeSettings>,
    pub ledger: Option<LedgerSettings>,
}

impl FileConfig {
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(path, &text)
    }
}

/// `over` where it sets a value, `base` elsewhere: the precedence rule, for any settings
/// struct (unset fields are absent from the serialised table).
pub fn overlay<T: Serialize + DeserializeOwned>(base: &T, over: &T) -> Result<T, ConfigError> {
    let table = |v: &T| toml::Table::try_from(v).map_err(|e| ConfigError::Merge(e.to_string()));
    let mut merged = table(base)?;
    for (k, v) in table(over)? {
        merged.insert(k, v);
    }
    merged
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Merge(e.to_string()))
}

fn positive<T: PartialOrd + Default + fmt::Display>(
    key: &'static str,
    v: T,
) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(ConfigError::Invalid {
            key,
            value: v.to_string(),
            allowed: "must be positive".into(),
        })
    }
}

/// The common settings of a `ServeSettings` or `LedgerSettings`.
macro_rules! common {
    ($s:expr) => {
        CommonSettings {
            metrics_listen: $s.metrics_listen,
            log_format: $s.log_format.clone(),
            concurrency_max: $s.concurrency_max,
            concurrency_per_connection: $s.concurrency_per_connection,
            request_timeout_ms: $s.request_timeout_ms,
            message_bytes_max: $s.message_bytes_max,
        }
    };
}

/// A settings struct with only the common settings set, to fill the rest of one by `..`.
macro_rules! with_common {
    ($c:expr, $t:ident) => {
        $t {
            metrics_listen: $c.metrics_listen,
            log_format: $c.log_format,
            concurrency_max: $c.concurrency_max,
            concurrency_per_connection: $c.concurrency_per_connection,
            request_timeout_ms: $c.request_timeout_ms,
            message_bytes_max: $c.message_bytes_max,
            ..$t::default()
        }
    };
}

impl CommonSettings {
    fn serve(self) -> ServeSettings {
        with_common!(self, ServeSettings)
    }

    fn ledger(self) -> LedgerSettings {
        with_common!(self, LedgerSettings)
    }

    fn apply(&self, limits: &mut server::Limits) -> Result<(), ConfigError> {
        let c = self;
        if let Some(v) = c.concurrency_max {
            limits.concurrency_max = positive("concurrency_max", v)?;
        }
        if let Some(v) = c.concurrency_per_connection {
            limits.concurrency_per_connection = positive("concurrency_per_connection", v)?;
        }
        if let Some(v) = c.request_timeout_ms {
            limits.request_timeout_ms = positive("request_timeout_ms", v)?;
        }
        if let Some(v) = c.message_bytes_max {
            limits.message_bytes_max = positive("message_bytes_max", v)?;
        }
        Ok(())
    }

    fn effective(limits: &server::Limits, metrics: Option<SocketAddr>, log: LogFormat) -> Self {
        CommonSettings {
            metrics_listen: metrics,
            log_format: Some(Text(log)),
            concurrency_max: Some(limits.concurrency_max),
            concurrency_per_connection: Some(limits.concurrency_per_connection),
            request_timeout_ms: Some(limits.request_timeout_ms),
            message_bytes_max: Some(limits.message_bytes_max),
        }
    }
}

impl ServeSettings {
    /// The sidecar's configuration: these settings over the defaults, checked.
    pub fn to_config(&self) -> Result<ServeConfig, ConfigError> {
        let s = self;
        let default_listen = server::DEFAULT_LISTEN
            .parse()
            .map_err(|_| ConfigError::Invalid {
                key: "listen",
                value: server::DEFAULT_LISTEN.into(),
                allowed: "an address such as 127.0.0.1:50051".into(),
            })?;
        let mut cfg = ServeConfig::new(
            s.listen.unwrap_or(default_listen),
            s.data_dir
                .clone()
                .unwrap_or_else(|| server::DEFAULT_DATA_DIR.into()),
        );
        cfg.catalog_path = s.catalog.clone();
        cfg.ledger_url = s.ledger.clone();
        for Text(b) in s.fail_open_budget.iter().flatten() {
            if b.account == "*" {
                cfg.engine.fail_open_default = b.amount;
            } else {
                cfg.engine
                    .fail_open_budgets
                    .insert(b.account.clone(), b.amount);
            }
        }
        if let Some(v) = s.sync_interval_ms {
            cfg.sync_interval_ms = positive("sync_interval_ms", v)?;
        }
        if let Some(v) = s.hold_ttl_default_ms {
            let max = cfg.engine.hold_ttl_max_ms;
            if v <= 0 || v > max {
                return Err(ConfigError::Invalid {
                    key: "hold_ttl_default_ms",
                    value: v.to_string(),
                    allowed: format!("must be between 1 and {max}"),
                });
            }
            cfg.engine.hold_ttl_default_ms = v;
        }
        if let Some(v) = s.holds_max {
            cfg.engine.holds_max = positive("holds_max", v)?;
        }
        apply_lease_settings(s, &mut cfg.engine)?;
        if let Some(Text(v)) = s.journal_sync {
            cfg.journal_sync = v;
        }
        if let Some(v) = s.streams_max {
            cfg.engine.work.streams_max = positive("streams_max", v)?;
        }
        if let Some(v) = s.stream_reports_per_sec {
            cfg.engine.work.stream_reports_per_sec = positive("stream_reports_per_sec", v)?;
        }
        if let Some(v) = s.stream_buffer {
            cfg.engine.work.stream_buffer = positive("stream_buffer", v)?;
        }
        if let Some(v) = s.sessions_max {
            cfg.engine.sessions.sessions_max = positive("sessions_max", v)?;
        }
        if let Some(v) = s.watchers_max {
            cfg.engine.watch.watchers_max = positive("watchers_max", v)?;
        }
        if let Some(v) = s.envoy_check_message_bytes_max {
            cfg.envoy.check_message_bytes_max = positive("envoy_check_message_bytes_max", v)?;
        }
        if let Some(v) = s.envoy_access_log_message_bytes_max {
            cfg.envoy.access_log_message_bytes_max =
                positive("envoy_access_log_message_bytes_max", v)?;
        }
        if let Some(v) = s.envoy_settle_concurrency_max {
            cfg.envoy.settle_concurrency_max = positive("envoy_settle_concurrency_max", v)?;
        }
        if let Some(v) = &s.alert_low_quota {
            cfg.engine.alerts.low_quota_fractions = v.iter().map(|Text(f)| *f).collect();
        }
        if let Some(v) = &s.alert_expiring_ms {
            cfg.engine.alerts.expiring_leads_ms = v.clone();
        }
        cfg.engine.alerts.balance_floor = s.alert_balance_floor.as_ref().map(|Text(m)| *m);
        cfg.engine
            .alerts
            .validate()
            .map_err(|e| ConfigError::Invalid {
                key: "alert_low_quota / alert_expiring_ms",
                value: format!(
                    "{:?} / {:?}",
                    cfg.engine.alerts.low_quota_fractions, cfg.engine.alerts.expiring_leads_ms
                ),
                allowed: e.to_string(),
            })?;
        cfg.metrics_listen = s.metrics_listen;
        common!(s).apply(&mut cfg.limits)?;
        cfg.auth = auth_config(s.auth_disabled, s.auth_cache_ttl_ms);
        cfg.tls = server_tls(
            s.tls_cert_file.as_ref(),
            s.tls_key_file.as_ref(),
            s.tls_client_ca_file.as_ref(),
        )?;
        cfg.ledger_tls = ClientTls {
            ca_file: s.ledger_tls_ca_file.clone(),
            cert_file: s.ledger_tls_cert_file.clone(),
            key_file: s.ledger_tls_key_file.clone(),
            domain: None,
        };
        if s.ledger_tls_cert_file.is_some() != s.ledger_tls_key_file.is_some() {
            return Err(ConfigError::Invalid {
                key: "ledger_tls_cert_file / ledger_tls_key_file",
                value: "only one set".into(),
                allowed: "a client certificate and its key go together".into(),
            });
        }
        cfg.ledger_token = match &s.ledger_token_file {
            Some(path) => {
                Some(
                    crate::auth::read_token_file(path).map_err(|e| ConfigError::Invalid {
                        key: "ledger_token_file",
                        value: path.display().to_string(),
                        allowed: format!("a readable file holding a token: {e}"),
                    })?,
                )
            }
            None => std::env::var("QUOTAD_LEDGER_TOKEN")
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty()),
        };
        Ok(cfg)
    }

    /// Every setting as `cfg` has it: what `check-config` prints.
    pub fn effective(cfg: &ServeConfig, log: LogFormat) -> ServeSettings {
        let mut budgets: Vec<Text<Budget>> = cfg
            .engine
            .fail_open_budgets
            .iter()
            .map(|(account, amount)| {
                Text(Budget {
                    account: account.clone(),
                    amount: *amount,
                })
            })
            .collect();
        budgets.sort_by(|a, b| a.0.account.cmp(&b.0.account));
        if !cfg.engine.fail_open_default.is_zero() {
            budgets.insert(
                0,
                Text(Budget {
                    account: "*".into(),
                    amount: cfg.engine.fail_open_default,
                }),
            );
        }
        ServeSettings {
            listen: Some(cfg.listen),
            data_dir: Some(cfg.data_dir.clone()),
            catalog: cfg.catalog_path.clone(),
            ledger: cfg.ledger_url.clone(),
            fail_open_budget: Some(budgets),
            sync_interval_ms: Some(cfg.sync_interval_ms),
            hold_ttl_default_ms: Some(cfg.engine.hold_ttl_default_ms),
            lease_want_min: Some(Text(cfg.engine.leasing.lease_want_min)),
            lease_active_ms: Some(cfg.engine.leasing.lease_active_ms),
            lease_renew_before_ms: Some(cfg.engine.leasing.lease_renew_before_ms),
            lease_request_timeout_ms: Some(cfg.engine.leasing.lease_request_timeout_ms),
            lease_recall_wait_ms: Some(cfg.engine.leasing.lease_recall_wait_ms),
            holds_max: Some(cfg.engine.holds_max),
            journal_sync: Some(Text(cfg.journal_sync)),
            streams_max: Some(cfg.engine.work.streams_max),
            stream_reports_per_sec: Some(cfg.engine.work.stream_reports_per_sec),
            stream_buffer: Some(cfg.engine.work.stream_buffer),
            sessions_max: Some(cfg.engine.sessions.sessions_max),
            watchers_max: Some(cfg.engine.watch.watchers_max),
            envoy_check_message_bytes_max: Some(cfg.envoy.check_message_bytes_max),
            envoy_access_log_message_bytes_max: Some(cfg.envoy.access_log_message_bytes_max),
            envoy_settle_concurrency_max: Some(cfg.envoy.settle_concurrency_max),
            alert_low_quota: Some(
                cfg.engine
                    .alerts
                    .low_quota_fractions
                    .iter()
                    .map(|f| Text(*f))
                    .collect(),
            ),
            alert_expiring_ms: Some(cfg.engine.alerts.expiring_leads_ms.clone()),
            alert_balance_floor: cfg.engine.alerts.balance_floor.map(Text),
            auth_disabled: Some(cfg.auth.disabled),
            auth_cache_ttl_ms: Some(cfg.auth.cache_ttl_ms),
            tls_cert_file: cfg.tls.as_ref().map(|t| t.cert_file.clone()),
            tls_key_file: cfg.tls.as_ref().map(|t| t.key_file.clone()),
            tls_client_ca_file: cfg.tls.as_ref().and_then(|t| t.client_ca_file.clone()),
            // The configuration holds the token, not its file, and never prints it.
            ledger_token_file: None,
            ledger_tls_ca_file: cfg.ledger_tls.ca_file.clone(),
            ledger_tls_cert_file: cfg.ledger_tls.cert_file.clone(),
            ledger_tls_key_file: cfg.ledger_tls.key_file.clone(),
            ..CommonSettings::effective(&cfg.limits, cfg.metrics_listen, log).serve()
        }
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.clone().map(|t| t.0).unwrap_or_default()
    }
}

/// The sidecar's lease settings (used with a remote ledger), checked.
fn apply_lease_settings(
    s: &ServeSettings,
    e: &mut crate::engine::EngineConfig,
) -> Result<(), ConfigError> {
    if let Some(Text(v)) = s.lease_want_min {
        if v.is_negative() {
            return Err(ConfigError::Invalid {
                key: "lease_want_min",
                value: v.to_string(),
                allowed: "must not be negative".into(),
            });
        }
        e.leasing.lease_want_min = v;
    }
    if let Some(v) = s.lease_active_ms {
        e.leasing.lease_active_ms = positive("lease_active_ms", v)?;
    }
    if let Some(v) = s.lease_renew_before_ms {
        e.leasing.lease_renew_before_ms = positive("lease_renew_before_ms", v)?;
    }
    if let Some(v) = s.lease_request_timeout_ms {
        e.leasing.lease_request_timeout_ms = positive("lease_request_timeout_ms", v)?;
    }
    if let Some(v) = s.lease_recall_wait_ms {
        e.leasing.lease_recall_wait_ms = v;
    }
    Ok(())
}

impl LedgerSettings {
    /// The ledger's configuration: these settings over the defaults, checked.
    pub fn to_config(&self) -> Result<LedgerServeConfig, ConfigError> {
        let s = self;
        let default_listen =
            server::DEFAULT_LEDGER_LISTEN
                .parse()
                .map_err(|_| ConfigError::Invalid {
                    key: "listen",
                    value: server::DEFAULT_LEDGER_LISTEN.into(),
                    allowed: "an address such as 127.0.0.1:50052".into(),
                })?;
        let database_url = s.database_url.clone().ok_or(ConfigError::Invalid {
            key: "database_url",
            value: "(unset)".into(),
            allowed: "required: --database-url, DATABASE_URL or database_url in [ledger]".into(),
        })?;
        let mut cfg = LedgerServeConfig::new(s.listen.unwrap_or(default_listen), database_url);
        cfg.catalog_path = s.catalog.clone();
        if let Some(v) = s.lease_ttl_ms {
            cfg.lease.ttl_ms = positive("lease_ttl_ms", v)?;
        }
        if let Some(v) = s.lease_hold_grace_ms {
            cfg.lease.hold_grace_ms = positive("lease_hold_grace_ms", v)?;
        }
        if let Some(v) = s.pg_pool_max {
            cfg.pg_pool_max = positive("pg_pool_max", v)?;
        }
        cfg.metrics_listen = s.metrics_listen;
        common!(s).apply(&mut cfg.limits)?;
        cfg.auth = auth_config(s.auth_disabled, s.auth_cache_ttl_ms);
        cfg.tls = server_tls(
            s.tls_cert_file.as_ref(),
            s.tls_key_file.as_ref(),
            s.tls_client_ca_file.as_ref(),
        )?;
        cfg.operator_token_file = Some(
            s.operator_token_file
                .clone()
                .unwrap_or_else(|| crate::auth::DEFAULT_LEDGER_OPERATOR_TOKEN_FILE.into()),
        );
        Ok(cfg)
    }

    pub fn effective(cfg: &LedgerServeConfig, log: LogFormat) -> LedgerSettings {
        LedgerSettings {
            listen: Some(cfg.listen),
            database_url: Some(cfg.database_url.clone()),
            catalog: cfg.catalog_path.clone(),
            lease_ttl_ms: Some(cfg.lease.ttl_ms),
            lease_hold_grace_ms: Some(cfg.lease.hold_grace_ms),
            pg_pool_max: Some(cfg.pg_pool_max),
            auth_disabled: Some(cfg.auth.disabled),
            auth_cache_ttl_ms: Some(cfg.auth.cache_ttl_ms),
            tls_cert_file: cfg.tls.as_ref().map(|t| t.cert_file.clone()),
            tls_key_file: cfg.tls.as_ref().map(|t| t.key_file.clone()),
            tls_client_ca_file: cfg.tls.as_ref().and_then(|t| t.client_ca_file.clone()),
            operator_token_file: cfg.operator_token_file.clone(),
            ..CommonSettings::effective(&cfg.limits, cfg.metrics_listen, log).ledger()
        }
    }

    pub fn log_format(&self) -> LogFormat {
        self.log_format.clone().map(|t| t.0).unwrap_or_default()
    }
}

fn auth_config(disabled: Option<bool>, cache_ttl_ms: Option<u64>) -> AuthConfig {
    let mut a = AuthConfig::default();
    if let Some(d) = disabled {
        a.disabled = d;
    }
    if let Some(t) = cache_ttl_ms {
        a.cache_ttl_ms = t;
    }
    a
}

fn server_tls(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<&PathBuf>,
) -> Result<Option<ServerTls>, ConfigError> {
    ServerTls::from_files(cert, key, client_ca).map_err(|allowed| ConfigError::Invalid {
        key: "tls_cert_file / tls_key_file / tls_client_ca_file",
        value: format!("{cert:?} / {key:?} / {client_ca:?}"),
        allowed,
    })
}

/// Flags and environment over the file's table (if any).
fn resolve<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    table: impl FnOnce(FileConfig) -> Option<T>,
    flags_and_env: &T,
) -> Result<T, ConfigError> {
    let from_file = match file {
        Some(path) => table(FileConfig::load(path)?).unwrap_or_default(),
        None => T::default(),
    };
    overlay(&from_file, flags_and_env)
}

/// `quotad serve`'s settings: flags and environment (`args`) over the file.
pub fn resolve_serve(
    file: Option<&Path>,
    args: &ServeSettings,
) -> Result<ServeSettings, ConfigError> {
    resolve(file, |f| f.serve, args)
}

/// `quotad ledger`'s settings: flags and environment (`args`) over the file.
pub fn resolve_ledger(
    file: Option<&Path>,
    args: &LedgerSettings,
) -> Result<LedgerSettings, ConfigError> {
    resolve(file, |f| f.ledger, args)
}

/// What `quotad check-config FILE` found: the effective configuration as TOML, or every
/// error (one per line).
pub fn check(
    path: &Path,
    serve_env: &ServeSettings,
    ledger_env: &LedgerSettings,
) -> Result<String, Vec<ConfigError>> {
    let file = FileConfig::load(path).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut out = FileConfig::default();
    let serve = overlay(&file.serve.clone().unwrap_or_default(), serve_env).and_then(|s| {
        let cfg = s.to_config()?;
        server::load_catalog(cfg.catalog_path.as_ref())?;
        Ok(ServeSettings::effective(&cfg, s.log_format()))
    });
    match serve {
        Ok(s) => out.serve = Some(s),
        Err(e) => errors.push(e),
    }
    if let Some(ledger) = &file.ledger {
        let l = overlay(ledger, ledger_env).and_then(|s| {
            let cfg = s.to_config()?;
            server::load_catalog(cfg.catalog_path.as_ref())?;
            Ok(LedgerSettings::effective(&cfg, s.log_format()))
        });
        match l {
            Ok(s) => out.ledger = Some(s),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    toml::to_string(&out).map_err(|e| vec![ConfigError::Merge(e.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use proptest::prelude::*;

    #[derive(Parser, Debug)]
    struct Flags {
        #[command(flatten)]
        s: ServeSettings,
    }

    fn flags(args: &[&str]) -> ServeSettings {
        let mut argv = vec!["quotad"];
        argv.extend_from_slice(args);
        Flags::try_parse_from(argv).unwrap().s
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(Path::new("test.toml"), text).unwrap()
    }

    fn parse_err(text: &str) -> String {
        FileConfig::parse(Path::new("dir/q.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let f = file(
            "[serve]\nholds_max = 10\nstreams_max = 20\nlisten = \"127.0.0.1:7000\"\n\
             journal_sync = \"normal\"\n",
        )
        .serve
        .unwrap();
        let a = flags(&["--holds-max", "99", "--sessions-max", "5"]);
        let merged = overlay(&f, &a).unwrap();
        let cfg = merged.to_config().unwrap();
        assert_eq!(cfg.engine.holds_max, 99, "flag over file");
        assert_eq!(cfg.engine.work.streams_max, 20, "file over default");
        assert_eq!(cfg.engine.sessions.sessions_max, 5, "flag over default");
        assert_eq!(cfg.journal_sync, JournalSync::Normal);
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(
            cfg.engine.watch.watchers_max,
            crate::engine::events::DEFAULT_WATCHERS_MAX,
            "default"
        );
        assert_eq!(cfg.data_dir, PathBuf::from(server::DEFAULT_DATA_DIR));
        assert_eq!(cfg.metrics_listen, None, "metrics are off unless asked for");
    }

    #[test]
    fn nothing_set_is_the_built_in_configuration() {
        let cfg = ServeSettings::default().to_config().unwrap();
        let builtin = ServeConfig::new(
            server::DEFAULT_LISTEN.parse().unwrap(),
            server::DEFAULT_DATA_DIR.into(),
        );
        assert_eq!(format!("{cfg:?}"), format!("{builtin:?}"));
    }

    #[test]
    fn the_effective_configuration_reads_back_as_itself() {
        let s = flags(&[
            "--fail-open-budget",
            "*=5,acme=1.5",
            "--alert-low-quota",
            "0.3,0.05",
            "--alert-balance-floor",
            "2",
            "--metrics-listen",
            "127.0.0.1:9464",
            "--concurrency-max",
            "7",
        ]);
        let cfg = s.to_config().unwrap();
        assert_eq!(cfg.engine.fail_open_default.to_string(), "5");
        assert_eq!(cfg.engine.fail_open_budgets["acme"].to_string(), "1.5");
        assert_eq!(cfg.limits.concurrency_max, 7);
        let eff = ServeSettings::effective(&cfg, LogFormat::Json);
        let text = toml::to_string(&FileConfig {
            serve: Some(eff.clone()),
            ledger: None,
        })
        .unwrap();
        let again = file(&text).serve.unwrap();
        assert_eq!(again, eff, "{text}");
        assert_eq!(
            format!("{:?}", again.to_config().unwrap()),
            format!("{cfg:?}")
        );
        assert_eq!(again.log_format(), LogFormat::Json);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let e = parse_err("[serve]\nhold_max = 1\n");
        assert!(e.contains("dir/q.toml") && e.contains("hold_max"), "{e}");
        let e = parse_err("[sevre]\nholds_max = 1\n");
        assert!(e.contains("dir/q.toml") && e.contains("sevre"), "{e}");
        let e = parse_err("[ledger]\nlease_ttl = 1\n");
        assert!(e.contains("lease_ttl"), "{e}");
    }

    #[test]
    fn bad_values_name_key_value_and_what_is_allowed() {
        let e = parse_err("[serve]\njournal_sync = \"fast\"\n");
        assert!(
            e.contains("journal_sync") && e.contains("fast") && e.contains("full or normal"),
            "{e}"
        );
        let e = parse_err("[serve]\nlog_format = \"xml\"\n");
        assert!(e.contains("xml") && e.contains("text or json"), "{e}");
        let e = parse_err("[serve]\nholds_max = -3\n");
        assert!(e.contains("holds_max") && e.contains("-3"), "{e}");
        let e = parse_err("[serve]\nlisten = \"localhost\"\n");
        assert!(e.contains("listen") && e.contains("localhost"), "{e}");
        let e = parse_err("[serve]\nfail_open_budget = [\"acme\"]\n");
        assert!(e.contains("ACCOUNT=AMOUNT"), "{e}");
        let e = parse_err("[serve]\nalert_balance_floor = \"-1\"\n");
        assert!(
            e.contains("alert_balance_floor") && e.contains("non-negative"),
            "{e}"
        );

        let invalid = |text: &str| {
            file(text)
                .serve
                .unwrap()
                .to_config()
                .unwrap_err()
                .to_string()
        };
        let e = invalid("[serve]\nholds_max = 0\n");
        assert_eq!(e, "holds_max = 0: must be positive");
        let e = invalid("[serve]\nhold_ttl_default_ms = 999999999999\n");
        assert!(e.contains("hold_ttl_default_ms = 999999999999: must be between 1 and"));
        let e = invalid("[serve]\nalert_low_quota = [1.5]\n");
        assert!(e.contains("alert_low_quota") && e.contains("1.5"), "{e}");
        let e = LedgerSettings::default()
            .to_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_url") && e.contains("required"), "{e}");
    }

    #[test]
    fn the_ledger_table_configures_the_ledger() {
        let l = file(
            "[ledger]\ndatabase_url = \"sqlite:x.db\"\nlease_ttl_ms = 5000\n\
             concurrency_max = 3\nrequest_timeout_ms = 100\n",
        )
        .ledger
        .unwrap();
        let cfg = l.to_config().unwrap();
        assert_eq!(cfg.database_url, "sqlite:x.db");
        assert_eq!(cfg.lease.ttl_ms, 5000);
        assert_eq!(cfg.limits.concurrency_max, 3);
        assert_eq!(cfg.limits.request_timeout_ms, 100);
        let eff = LedgerSettings::effective(&cfg, LogFormat::Text);
        assert_eq!(eff.to_config().unwrap().lease.ttl_ms, 5000);
    }

    #[test]
    fn auth_and_tls_keys() {
        let s = file(
            "[serve]\nauth_disabled = true\nauth_cache_ttl_ms = 0\n\
             tls_cert_file = \"c.pem\"\ntls_key_file = \"k.pem\"\n",
        )
        .serve
        .unwrap();
        let cfg = s.to_config().unwrap();
        assert!(cfg.auth.disabled);
        assert_eq!(cfg.auth.cache_ttl_ms, 0);
        assert_eq!(cfg.tls.as_ref().unwrap().key_file, PathBuf::from("k.pem"));
        let eff = ServeSettings::effective(&cfg, LogFormat::Text);
        assert!(eff.to_config().unwrap().auth.disabled);
        // Auth is on unless turned off.
        assert!(!ServeSettings::default().to_config().unwrap().auth.disabled);
        let e = file("[serve]\ntls_cert_file = \"c.pem\"\n")
            .serve
            .unwrap()
            .to_config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_key_file"), "{e}");
        let l = file("[ledger]\ndatabase_url = \"sqlite:x.db\"\n")
            .ledger
            .unwrap()
            .to_config()
            .unwrap();
        assert_eq!(
            l.operator_token_file.as_deref(),
            Some(Path::new(crate::auth::DEFAULT_LEDGER_OPERATOR_TOKEN_FILE))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the file holds, parsing it ends in a config or a clean error.
        #[test]
        fn arbitrary_files_never_panic(text in "\\PC{0,200}") {
            if let Ok(f) = FileConfig::parse(Path::new("f.toml"), &text) {
                if let Some(s) = f.serve {
                    let _ = s.to_config();
                }
                if let Some(l) = f.ledger {
                    let _ = l.to_config();
                }
            }
        }

        /// Keys we know with values of any TOML shape: a config or a clean error.
        #[test]
        fn known_keys_with_arbitrary_values_never_panic(
            key in prop::sample::select(vec![
                "listen", "data_dir", "holds_max", "journal_sync", "fail_open_budget",
                "alert_low_quota", "alert_expiring_ms", "alert_balance_floor",
                "hold_ttl_default_ms", "stream_buffer", "metrics_listen", "log_format",
                "concurrency_max", "request_timeout_ms", "sync_interval_ms",
            ]),
            value in prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                "[a-z0-9.:=*-]{0,12}".prop_map(|v| format!("{v:?}")),
                prop::collection::vec("[a-z0-9.=*-]{0,8}", 0..4)
                    .prop_map(|v| format!("{v:?}")),
                Just("true".to_owned()),
                Just("{ a = 1 }".to_owned()),
            ],
        ) {
            let text = format!("[serve]\n{key} = {value}\n");
            match FileConfig::parse(Path::new("f.toml"), &text) {
                Ok(f) => {
                    if let Err(e) = f.serve.unwrap_or_default().to_config() {
                        prop_assert!(e.to_string().contains(key), "{e}");
                    }
                }
                Err(e) => prop_assert!(e.to_string().contains("f.toml"), "{e}"),
            }
        }
    }
}
