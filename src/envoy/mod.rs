//! quotad behind Envoy, for tool runtimes (ComfyUI, WebUI, Kohya) that cannot be changed
//! to call Reserve / Commit themselves: the proxy in front of them asks quotad.
//!
//! - `authz`: Envoy's ext_authz v3 `Authorization/Check` is a Reserve of the route's
//!   estimate for the end user's account (or, on a shadow route, an Admit that holds
//!   nothing); the reservation id comes from Envoy's x-request-id.
//! - `accesslog`: Envoy's gRPC access log service (`envoy.service.accesslog.v3`) sees every
//!   finished request with its response code, flags and the upstream's usage header, and
//!   settles the hold: Commit of the reported usage (or the estimate), or Release when the
//!   upstream failed before reporting. It is the one Envoy stream that sees *every* end of a
//!   request (client disconnects and upstream failures included) after the response, so the
//!   charge never delays the response (unlike ext_proc) and it needs no rate-limit
//!   descriptor tricks (unlike RLS `apply_on_stream_done`).
//! - `mapping`: the decisions of both as plain functions: route settings, ids, HTTP
//!   answers, the charging rule.
//! - `bootstrap`: the Envoy bootstrap `quotad ctl envoy-config` prints.
//!
//! Both services are for `proxy` tokens (and the operator) only (`auth::layer`); the money
//! rules stay in the engine.

pub mod accesslog;
pub mod authz;
pub mod bootstrap;
pub mod mapping;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{Sample, SharedMetrics};

/// Largest ext_authz CheckRequest accepted: the request's headers (Envoy allows 60 KiB of
/// them by default) and attributes, without the body (quotad does not ask for it).
pub const DEFAULT_CHECK_MESSAGE_BYTES_MAX: usize = 256 * 1024;
/// Largest access log message accepted: one batch of entries (the generated bootstrap
/// flushes at 16 KiB; one entry may exceed that with large headers).
pub const DEFAULT_ACCESS_LOG_MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// Settlements (Commit / Release from access log entries) in flight at once, over all
/// streams; a stream waits for a slot before reading on, so Envoy is slowed by HTTP/2 flow
/// control rather than quotad's memory growing.
pub const DEFAULT_SETTLE_CONCURRENCY_MAX: usize = 1_024;
/// How long shutdown waits for settlements in flight before closing the journal.
pub const DEFAULT_SETTLE_DRAIN_MS: u64 = 5_000;

/// Keys of the dynamic metadata Check hands Envoy for an admitted request, which Envoy
/// passes back in the request's access log entry (under the ext_authz filter's name).
pub mod meta {
    pub const RESERVATION: &str = "quotad.reservation_id";
    pub const ACCOUNT: &str = "quotad.account_id";
    pub const ESTIMATE: &str = "quotad.estimate";
    pub const MODE: &str = "quotad.mode";
    pub const USAGE_HEADER: &str = "quotad.usage_header";
    pub const DECISION: &str = "quotad.decision";
}

/// Limits of the Envoy services.
#[derive(Debug, Clone, Copy)]
pub struct EnvoyLimits {
    pub check_message_bytes_max: usize,
    pub access_log_message_bytes_max: usize,
    pub settle_concurrency_max: usize,
    pub settle_drain_ms: u64,
}

impl Default for EnvoyLimits {
    fn default() -> Self {
        EnvoyLimits {
            check_message_bytes_max: DEFAULT_CHECK_MESSAGE_BYTES_MAX,
            access_log_message_bytes_max: DEFAULT_ACCESS_LOG_MESSAGE_BYTES_MAX,
            settle_concurrency_max: DEFAULT_SETTLE_CONCURRENCY_MAX,
            settle_drain_ms: DEFAULT_SETTLE_DRAIN_MS,
        }
    }
}

/// What happened to finished requests, exported as `quotad_envoy_settlements_total`.
#[derive(Debug, Default)]
pub struct SettleStats {
    /// Charged: the reported usage or the estimate.
    pub committed: AtomicU64,
    /// Hold given back: the upstream failed before reporting, or never got the request.
    pub released: AtomicU64,
    /// A shadow route's request: nothing to settle.
    pub shadow: AtomicU64,
    /// No quotad reservation in the entry (denied at Check, or not a quotad route).
    pub skipped: AtomicU64,
    /// The engine refused the settlement (expired hold, journal failure...): logged.
    pub failed: AtomicU64,
}

impl SettleStats {
    pub fn new() -> Arc<SettleStats> {
        Arc::new(SettleStats::default())
    }

    /// Exports the counters at every scrape.
    pub fn export(self: &Arc<Self>, metrics: &SharedMetrics) {
        let stats = Arc::downgrade(self);
        metrics.collect(move |out| {
            let Some(s) = stats.upgrade() else { return };
            for (outcome, c) in [
                ("committed", &s.committed),
                ("released", &s.released),
                ("shadow", &s.shadow),
                ("skipped", &s.skipped),
                ("failed", &s.failed),
            ] {
                out.push(
                    Sample::counter(
                        "quotad_envoy_settlements_total",
                        "Requests finished behind Envoy, by what their hold became.",
                        c.load(Ordering::Relaxed),
                    )
                    .with_label("outcome", outcome),
                );
            }
        });
    }
}
