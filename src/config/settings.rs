//! The settings of `quotad serve` and `quotad ledger` as flags, `QUOTAD_*` variables and
//! file keys: one struct per command, with the settings both have declared once.

use std::net::SocketAddr;
use std::path::PathBuf;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::values::{Budget, LogFormat, Text};
use super::{ConfigError, positive};
use crate::auth::AuthConfig;
use crate::billing::Money;
use crate::journal::JournalSync;
use crate::server;
use crate::tls::ServerTls;

/// Declares `ServeSettings` and `LedgerSettings` with the settings both processes have
/// written once (`shared`): their flags, variables, file keys and help are the same in both
/// by construction. Each struct lists its own settings in three groups, `first`, `middle`
/// and `last`, around the shared `catalog` (after `first`) and `common` ones (after
/// `middle`): that order is the one of `--help` and of what `check-config` prints.
/// Also declares `SharedSettings`, the shared settings alone, and per struct `shared()`
/// (its shared settings) and `with_shared()` (a struct with only those set).
macro_rules! settings {
    (
        shared $shared:tt
        $(
            $(#[$attr:meta])*
            pub struct $name:ident { first $first:tt middle $middle:tt last $last:tt }
        )*
    ) => {
        settings!(@shared_struct $shared);
        $( settings!(@one $shared [$(#[$attr])*] $name $first $middle $last); )*
    };
    (@shared_struct {
        catalog { $( $(#[$ca:meta])* $cf:ident : $ct:ty, )* }
        common { $( $(#[$sa:meta])* $sf:ident : $st:ty, )* }
    }) => {
        /// The settings both processes have, gathered to be checked, applied and printed
        /// in one place.
        #[derive(Debug, Clone, Default)]
        pub(super) struct SharedSettings {
            $( pub(super) $cf: $ct, )*
            $( pub(super) $sf: $st, )*
        }
    };
    (@one {
        catalog { $( $(#[$ca:meta])* $cf:ident : $ct:ty, )* }
        common { $( $(#[$sa:meta])* $sf:ident : $st:ty, )* }
    } [$($attr:tt)*] $name:ident { $($first:tt)* } { $($middle:tt)* } { $($last:tt)* }) => {
        $($attr)*
        pub struct $name {
            $($first)*
            $( $(#[$ca])* pub $cf: $ct, )*
            $($middle)*
            $( $(#[$sa])* pub $sf: $st, )*
            $($last)*
        }

        impl $name {
            /// The shared settings as this struct has them.
            pub(super) fn shared(&self) -> SharedSettings {
                SharedSettings {
                    $( $cf: self.$cf.clone(), )*
                    $( $sf: self.$sf.clone(), )*
                }
            }

            /// A struct with only the shared settings set, to fill the rest of one by `..`.
            pub(super) fn with_shared(s: SharedSettings) -> Self {
                $name {
                    $( $cf: s.$cf, )*
                    $( $sf: s.$sf, )*
                    ..Self::default()
                }
            }
        }
    };
}

settings! {
    shared {
        catalog {
            /// Catalog TOML replacing the one compiled in.
            #[arg(long, env = "QUOTAD_CATALOG")]
            catalog: Option<PathBuf>,
        }
        common {
            /// Serve Prometheus metrics over HTTP at http://ADDR/metrics (e.g. 127.0.0.1:9464).
            /// Default: off.
            #[arg(long, env = "QUOTAD_METRICS_LISTEN")]
            metrics_listen: Option<SocketAddr>,
            /// Log lines on stderr: `text` or `json`. [default: text]
            #[arg(long, env = "QUOTAD_LOG_FORMAT")]
            log_format: Option<Text<LogFormat>>,
            /// Most requests served at once over all connections; beyond, requests are refused at
            /// once with RESOURCE_EXHAUSTED. [default: 4096]
            #[arg(long, env = "QUOTAD_CONCURRENCY_MAX")]
            concurrency_max: Option<usize>,
            /// Most requests served at once on one connection; more wait in HTTP/2 flow control.
            /// [default: 1024]
            #[arg(long, env = "QUOTAD_CONCURRENCY_PER_CONNECTION")]
            concurrency_per_connection: Option<usize>,
            /// Longest any request may take before it ends with CANCELLED (a client's
            /// `grpc-timeout` shortens it). [default: 30000]
            #[arg(long, env = "QUOTAD_REQUEST_TIMEOUT_MS")]
            request_timeout_ms: Option<u64>,
            /// Largest request message accepted, in bytes (the Ledger service's Sync has its own,
            /// larger limit). [default: 65536]
            #[arg(long, env = "QUOTAD_MESSAGE_BYTES_MAX")]
            message_bytes_max: Option<usize>,
            /// Turn authentication off: every caller may do anything. Local development only.
            #[arg(long, env = "QUOTAD_AUTH_DISABLED")]
            #[arg(num_args = 0..=1, default_missing_value = "true")]
            auth_disabled: Option<bool>,
            /// How long a token lookup is trusted (ms): how long a revoked token or permission may
            /// still work on a sidecar of a remote ledger. 0: look up every call. [default: 5000]
            #[arg(long, env = "QUOTAD_AUTH_CACHE_TTL_MS")]
            auth_cache_ttl_ms: Option<u64>,
            /// Serve over TLS with this certificate (PEM); needs tls_key_file. Default: plaintext.
            #[arg(long, env = "QUOTAD_TLS_CERT_FILE")]
            tls_cert_file: Option<PathBuf>,
            /// The TLS certificate's private key (PEM).
            #[arg(long, env = "QUOTAD_TLS_KEY_FILE")]
            tls_key_file: Option<PathBuf>,
            /// Require client certificates signed by this CA (PEM): mutual TLS.
            #[arg(long, env = "QUOTAD_TLS_CLIENT_CA_FILE")]
            tls_client_ca_file: Option<PathBuf>,
            /// Webhooks (where the ledger runs): how long a message is retried before it is
            /// marked failed (ms). [default: 86400000]
            #[arg(long, env = "QUOTAD_WEBHOOK_RETRY_MS")]
            webhook_retry_ms: Option<i64>,
            /// Webhooks: first retry delay (ms), doubled per failed attempt, jittered.
            /// [default: 1000]
            #[arg(long, env = "QUOTAD_WEBHOOK_BACKOFF_MIN_MS")]
            webhook_backoff_min_ms: Option<i64>,
            /// Webhooks: longest retry delay (ms). [default: 600000]
            #[arg(long, env = "QUOTAD_WEBHOOK_BACKOFF_MAX_MS")]
            webhook_backoff_max_ms: Option<i64>,
            /// Webhooks: longest wait for an endpoint's answer (ms). [default: 10000]
            #[arg(long, env = "QUOTAD_WEBHOOK_TIMEOUT_MS")]
            webhook_timeout_ms: Option<i64>,
            /// Webhooks: most messages in flight (and in memory) at once. [default: 16]
            #[arg(long, env = "QUOTAD_WEBHOOK_CONCURRENCY_MAX")]
            webhook_concurrency_max: Option<usize>,
            /// Webhooks: how often the outbox is looked at when nothing wakes the worker (ms).
            /// [default: 500]
            #[arg(long, env = "QUOTAD_WEBHOOK_POLL_MS")]
            webhook_poll_ms: Option<i64>,
            /// Webhooks: how long delivered and failed messages (and their ids, against
            /// duplicates) are kept (ms). [default: 604800000]
            #[arg(long, env = "QUOTAD_WEBHOOK_RETENTION_MS")]
            webhook_retention_ms: Option<i64>,
        }
    }

    /// `quotad serve`: each field is a flag `--KEY`, a variable `QUOTAD_KEY` and a key in the
    /// file's `[serve]` table; unset everywhere, the default applies.
    #[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    pub struct ServeSettings {
        first {
            /// Address to serve gRPC on. [default: 127.0.0.1:50051]
            #[arg(long, env = "QUOTAD_LISTEN")]
            pub listen: Option<SocketAddr>,
            /// Directory for the ledger and journal files. [default: quotad-data]
            #[arg(long, env = "QUOTAD_DATA_DIR")]
            pub data_dir: Option<PathBuf>,
        }
        middle {
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
            /// Most accounts cached; when reached, the least recently used idle account leaves
            /// the cache for a new one, and only if none is idle is the new one refused.
            /// [default: 1000000]
            #[arg(long, env = "QUOTAD_ACCOUNTS_MAX")]
            pub accounts_max: Option<usize>,
            /// An account with no open hold, usage, stream, session or Watch (and its lease
            /// given back) leaves the cache this long after its last request; its next request
            /// loads it again. At least 60000. [default: 900000]
            #[arg(long, env = "QUOTAD_ACCOUNT_IDLE_MS")]
            pub account_idle_ms: Option<i64>,
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
            /// Rounds of pipelined reports one usage stream has waiting for their journal
            /// write at once (the next is charged while the previous one is written).
            #[arg(long, env = "QUOTAD_STREAM_ROUNDS_MAX")]
            pub stream_rounds_max: Option<usize>,
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
        }
        last {
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
    }

    /// `quotad ledger`: flags `--KEY`, variables `QUOTAD_KEY` (but `QUOTAD_LEDGER_LISTEN` for
    /// the address, `DATABASE_URL` for the database), keys in the file's `[ledger]` table.
    #[derive(clap::Args, Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    pub struct LedgerSettings {
        first {
            /// Address to serve the Admin and Ledger services on. [default: 127.0.0.1:50052]
            #[arg(long, env = "QUOTAD_LEDGER_LISTEN")]
            pub listen: Option<SocketAddr>,
            /// postgres://USER@HOST:PORT/DB, or a SQLite file (sqlite:PATH). Required.
            #[arg(long, env = "DATABASE_URL")]
            pub database_url: Option<String>,
        }
        middle {
            /// How long a lease lets a sidecar admit without hearing from the ledger.
            #[arg(long, env = "QUOTAD_LEASE_TTL_MS")]
            pub lease_ttl_ms: Option<i64>,
            /// How long an expired lease's money stays set aside for holds admitted under it.
            #[arg(long, env = "QUOTAD_LEASE_HOLD_GRACE_MS")]
            pub lease_hold_grace_ms: Option<i64>,
            /// Most connections to PostgreSQL.
            #[arg(long, env = "QUOTAD_PG_POOL_MAX")]
            pub pg_pool_max: Option<u32>,
            /// Most sidecars shown by name in the metrics (the rest as "other"). [default: 64]
            #[arg(long, env = "QUOTAD_METRICS_SIDECARS_MAX")]
            pub metrics_sidecars_max: Option<usize>,
        }
        last {
            /// Where the first operator token is written if the database has none.
            /// [default: quotad-ledger/operator.token]
            #[arg(long, env = "QUOTAD_OPERATOR_TOKEN_FILE")]
            pub operator_token_file: Option<PathBuf>,
        }
    }
}

impl SharedSettings {
    /// Checks the limits and applies them to `limits`.
    pub(super) fn apply(&self, limits: &mut server::Limits) -> Result<(), ConfigError> {
        if let Some(v) = self.concurrency_max {
            limits.concurrency_max = positive("concurrency_max", v)?;
        }
        if let Some(v) = self.concurrency_per_connection {
            limits.concurrency_per_connection = positive("concurrency_per_connection", v)?;
        }
        if let Some(v) = self.request_timeout_ms {
            limits.request_timeout_ms = positive("request_timeout_ms", v)?;
        }
        if let Some(v) = self.message_bytes_max {
            limits.message_bytes_max = positive("message_bytes_max", v)?;
        }
        Ok(())
    }

    pub(super) fn auth(&self) -> AuthConfig {
        let mut a = AuthConfig::default();
        if let Some(d) = self.auth_disabled {
            a.disabled = d;
        }
        if let Some(t) = self.auth_cache_ttl_ms {
            a.cache_ttl_ms = t;
        }
        a
    }

    /// The server's TLS, checked: a certificate goes with its key.
    pub(super) fn tls(&self) -> Result<Option<ServerTls>, ConfigError> {
        let (cert, key, client_ca) = (
            self.tls_cert_file.as_ref(),
            self.tls_key_file.as_ref(),
            self.tls_client_ca_file.as_ref(),
        );
        ServerTls::from_files(cert, key, client_ca).map_err(|allowed| ConfigError::Invalid {
            key: "tls_cert_file / tls_key_file / tls_client_ca_file",
            value: format!("{cert:?} / {key:?} / {client_ca:?}"),
            allowed,
        })
    }

    /// The shared settings as a process's configuration has them.
    pub(super) fn effective(shared: Effective<'_>, log: LogFormat) -> Self {
        let tls = shared.tls;
        SharedSettings {
            catalog: shared.catalog_path.clone(),
            metrics_listen: shared.metrics_listen,
            log_format: Some(Text(log)),
            concurrency_max: Some(shared.limits.concurrency_max),
            concurrency_per_connection: Some(shared.limits.concurrency_per_connection),
            request_timeout_ms: Some(shared.limits.request_timeout_ms),
            message_bytes_max: Some(shared.limits.message_bytes_max),
            auth_disabled: Some(shared.auth.disabled),
            auth_cache_ttl_ms: Some(shared.auth.cache_ttl_ms),
            tls_cert_file: tls.map(|t| t.cert_file.clone()),
            tls_key_file: tls.map(|t| t.key_file.clone()),
            tls_client_ca_file: tls.and_then(|t| t.client_ca_file.clone()),
            webhook_retry_ms: Some(shared.webhooks.retry_ms),
            webhook_backoff_min_ms: Some(shared.webhooks.backoff_min_ms),
            webhook_backoff_max_ms: Some(shared.webhooks.backoff_max_ms),
            webhook_timeout_ms: Some(shared.webhooks.timeout_ms),
            webhook_concurrency_max: Some(shared.webhooks.concurrency_max),
            webhook_poll_ms: Some(shared.webhooks.poll_ms),
            webhook_retention_ms: Some(shared.webhooks.retention_ms),
        }
    }

    /// Webhook delivery, checked.
    pub(super) fn webhooks(&self) -> Result<crate::webhooks::DeliveryConfig, ConfigError> {
        let mut w = crate::webhooks::DeliveryConfig::default();
        if let Some(v) = self.webhook_retry_ms {
            w.retry_ms = positive("webhook_retry_ms", v)?;
        }
        if let Some(v) = self.webhook_backoff_min_ms {
            w.backoff_min_ms = positive("webhook_backoff_min_ms", v)?;
        }
        if let Some(v) = self.webhook_backoff_max_ms {
            w.backoff_max_ms = positive("webhook_backoff_max_ms", v)?;
        }
        if let Some(v) = self.webhook_timeout_ms {
            w.timeout_ms = positive("webhook_timeout_ms", v)?;
        }
        if let Some(v) = self.webhook_concurrency_max {
            w.concurrency_max = positive("webhook_concurrency_max", v)?;
        }
        if let Some(v) = self.webhook_poll_ms {
            w.poll_ms = positive("webhook_poll_ms", v)?;
        }
        if let Some(v) = self.webhook_retention_ms {
            w.retention_ms = positive("webhook_retention_ms", v)?;
        }
        Ok(w)
    }
}

/// What the shared settings set in either process's configuration.
pub(super) struct Effective<'a> {
    pub(super) catalog_path: &'a Option<PathBuf>,
    pub(super) metrics_listen: Option<SocketAddr>,
    pub(super) limits: &'a server::Limits,
    pub(super) auth: &'a AuthConfig,
    pub(super) tls: Option<&'a ServerTls>,
    pub(super) webhooks: &'a crate::webhooks::DeliveryConfig,
}
