//! quotad's HTTP mapping behind Envoy, as plain functions: what a route costs (its
//! `context_extensions`), the reservation id of a request, the HTTP answer for every way a
//! request can be refused, and what a finished request is charged. The two adapters
//! (`authz`, `accesslog`) only move Envoy's messages in and out of these; keeping the
//! decisions here lets them be read, and tested, in one place.
//!
//! HTTP answers are the one thing the Envoy side maps itself: Envoy wants an HTTP status and
//! body inside a successful `CheckResponse`, not a gRPC status (gRPC statuses of the Envoy
//! services still come from `grpc::error`).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::auth::AuthError;
use crate::billing::{DenyReason, Money};
use crate::engine::EngineError;

/// Route key: the catalog sku a request on the route is charged under.
pub const SKU_KEY: &str = "quotad.sku";
/// Route key: the estimate held at Check, in the sku's unit (GPU time: milliseconds).
pub const QUANTITY_KEY: &str = "quotad.quantity";
/// Route key: `enforce` (the default) or `shadow`.
pub const MODE_KEY: &str = "quotad.mode";
/// Route key: how long the hold lives, in milliseconds (default: the engine's hold TTL). It
/// must outlast the route's timeout, or a slow request's charge finds its hold expired.
pub const TTL_KEY: &str = "quotad.ttl_ms";
/// Route key: the response header in which the upstream reports what a request used.
pub const USAGE_HEADER_KEY: &str = "quotad.usage_header";
/// The usage header unless the route names another.
pub const DEFAULT_USAGE_HEADER: &str = "x-quotad-usage";
/// Request header: the account a sub-user (or the operator) acts on; to the upstream: the
/// account a request was admitted for.
pub const ACCOUNT_HEADER: &str = "x-quotad-account";
/// To the upstream: the reservation that holds the request's estimate.
pub const RESERVATION_HEADER: &str = "x-quotad-reservation";
/// Every reservation made for Envoy starts with this; the access log service settles no
/// other reservation, so a proxy cannot commit or release a worker's.
pub const RESERVATION_PREFIX: &str = "envoy:";
/// Longest usage header value read (a u64 has at most 20 digits).
pub const USAGE_VALUE_BYTES_MAX: usize = 32;
/// Longest header name a route may name as its usage header.
pub const HEADER_NAME_BYTES_MAX: usize = 64;

/// Whether a route's decisions are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Denials stop the request; admitted requests hold their estimate and are charged.
    Enforce,
    /// Decisions are computed, counted and logged; every request passes, nothing is held
    /// or charged. For rolling quotad out on live traffic.
    Shadow,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

/// What a route's requests cost and how they are treated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub sku: String,
    /// The estimate held at Check and charged when the upstream reports nothing.
    pub quantity: u64,
    pub mode: Mode,
    /// 0: the engine's default hold TTL.
    pub ttl_ms: i64,
    pub usage_header: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the route has no {SKU_KEY} in its ext_authz context_extensions")]
    MissingSku,
    #[error("the route's {SKU_KEY} {0:?} is not in quotad's catalog")]
    UnknownSku(String),
    #[error("the route has no {QUANTITY_KEY} (the estimate, in the sku's unit)")]
    MissingQuantity,
    #[error("the route's {QUANTITY_KEY} {0:?} is not a whole number of at least 1")]
    BadQuantity(String),
    #[error("the route's {MODE_KEY} {0:?} is neither enforce nor shadow")]
    BadMode(String),
    #[error("the route's {TTL_KEY} {0:?} is not a whole number of at least 1")]
    BadTtl(String),
    #[error("the route's {USAGE_HEADER_KEY} {0:?} is not a lower-case header name")]
    BadUsageHeader(String),
    #[error("the request has no x-request-id; keep Envoy's generate_request_id on")]
    NoRequestId,
}

fn shown(s: &str) -> String {
    s.chars().take(40).collect()
}

/// The route's settings from its ext_authz `context_extensions`.
pub fn route(ext: &HashMap<String, String>) -> Result<Route, RouteError> {
    let sku = ext
        .get(SKU_KEY)
        .filter(|s| !s.is_empty())
        .ok_or(RouteError::MissingSku)?;
    let quantity = ext.get(QUANTITY_KEY).ok_or(RouteError::MissingQuantity)?;
    let quantity = quantity
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|q| *q >= 1 && i64::try_from(*q).is_ok())
        .ok_or_else(|| RouteError::BadQuantity(shown(quantity)))?;
    let mode = match ext.get(MODE_KEY).map(|m| m.trim()) {
        None | Some("") | Some("enforce") => Mode::Enforce,
        Some("shadow") => Mode::Shadow,
        Some(other) => return Err(RouteError::BadMode(shown(other))),
    };
    let ttl_ms = match ext.get(TTL_KEY) {
        None => 0,
        Some(t) => t
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|t| *t >= 1)
            .ok_or_else(|| RouteError::BadTtl(shown(t)))?,
    };
    let usage_header = match ext.get(USAGE_HEADER_KEY) {
        None => DEFAULT_USAGE_HEADER.to_owned(),
        Some(h) if header_name_ok(h) => h.clone(),
        Some(h) => return Err(RouteError::BadUsageHeader(shown(h))),
    };
    Ok(Route {
        sku: sku.chars().take(64).collect(),
        quantity,
        mode,
        ttl_ms,
        usage_header,
    })
}

/// Whether the route says it is shadowed, even if the rest of it cannot be read.
pub fn is_shadow(ext: &HashMap<String, String>) -> bool {
    ext.get(MODE_KEY).map(|m| m.trim()) == Some(Mode::Shadow.name())
}

/// A lower-case HTTP header name (as Envoy hands headers over), of bounded length.
pub fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= HEADER_NAME_BYTES_MAX
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
}

/// The reservation of one HTTP request: derived from the account and Envoy's x-request-id,
/// so a repeated Check of the same request (Envoy's or the client's retry with the same id)
/// finds the same reservation, while two accounts sending the same x-request-id cannot
/// collide. Hashed, so any x-request-id makes a valid id of fixed length.
pub fn reservation_id(account_id: &str, request_id: &str) -> String {
    let mut h = Sha256::new();
    h.update(account_id.as_bytes());
    h.update([0u8]);
    h.update(request_id.as_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(RESERVATION_PREFIX.len() + 32);
    id.push_str(RESERVATION_PREFIX);
    for b in &digest[..16] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// An HTTP answer that stops a request at the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub status: u16,
    /// Machine-readable: a deny reason (OVERDUE, ...) or what else went wrong.
    pub reason: &'static str,
    /// What the account could still spend on the route's resource, where known.
    pub available: Option<Money>,
    pub message: String,
}

impl Denial {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Denial {
        Denial {
            status,
            reason,
            available: None,
            message: message.into(),
        }
    }

    /// The JSON body: `{"reason", "available", "currency", "message"}` (`available` is a
    /// decimal string, null where unknown).
    pub fn body(&self, currency: &str) -> String {
        serde_json::json!({
            "reason": self.reason,
            "available": self.available.map(|m| m.to_string()),
            "currency": currency,
            "message": self.message,
        })
        .to_string()
    }
}

/// A request the billing rules refused: 402 Payment Required, or 503 while the ledger
/// cannot be reached (a retry may pass; the account did not run out).
pub fn denied(reason: DenyReason, available: Money) -> Denial {
    let (status, message) = match reason {
        DenyReason::Overdue => (
            402,
            "the account is overdue: top up the balance to zero or above to continue",
        ),
        DenyReason::NoEntitlement => (
            402,
            "the account has no plan or credit covering this resource and no balance",
        ),
        DenyReason::InsufficientFunds => (
            402,
            "the account cannot pay for this request's estimate: top up or buy a plan",
        ),
        DenyReason::LedgerUnavailable => (
            503,
            "quotad cannot reach its ledger and this account has no lease left; retry later",
        ),
    };
    Denial {
        status,
        reason: reason.name(),
        available: Some(available),
        message: message.into(),
    }
}

/// The end user could not be identified (401) or may not act on the account (403).
pub fn auth_denied(e: &AuthError) -> Denial {
    match e {
        AuthError::Missing | AuthError::Malformed | AuthError::Unknown => {
            Denial::new(401, "UNAUTHENTICATED", e.to_string())
        }
        AuthError::Unavailable(_) | AuthError::Store(_) => Denial::new(
            503,
            "UNAVAILABLE",
            format!("cannot check the token now: {e}"),
        ),
        _ => Denial::new(403, "PERMISSION_DENIED", e.to_string()),
    }
}

/// A sub-user or the operator did not say which account the request is for.
pub fn account_required() -> Denial {
    Denial::new(
        400,
        "ACCOUNT_REQUIRED",
        format!("name the account in the {ACCOUNT_HEADER} header"),
    )
}

/// The x-request-id names a request that was already admitted.
pub fn request_id_used() -> Denial {
    Denial::new(
        409,
        "REQUEST_ID_USED",
        "this x-request-id was already admitted once; send the request with a new id (or none)",
    )
}

/// The account header is not an account id.
pub fn bad_account(message: String) -> Denial {
    Denial::new(400, "INVALID_ACCOUNT", message)
}

/// The route (or Envoy) is configured in a way quotad cannot work with: the operator's
/// problem, so 500, and logged.
pub fn misconfigured(e: &RouteError) -> Denial {
    Denial::new(500, "MISCONFIGURED", e.to_string())
}

/// The engine could not decide: the request is refused with what an HTTP client can act on.
pub fn engine_denied(e: &EngineError) -> Denial {
    let message = e.to_string();
    match e {
        EngineError::UnknownAccount(_) => Denial::new(403, "UNKNOWN_ACCOUNT", message),
        EngineError::ReservationMismatch { .. }
        | EngineError::ReservationSettled { .. }
        | EngineError::ReservationExpired { .. }
        | EngineError::WorkStreaming(_)
        | EngineError::InProgress(_) => Denial::new(409, "CONFLICT", message),
        EngineError::Price(_) | EngineError::TtlTooLong { .. } => {
            Denial::new(500, "MISCONFIGURED", message)
        }
        EngineError::HoldsFull(_)
        | EngineError::AccountsFull(_)
        | EngineError::Backlog(_)
        | EngineError::ShuttingDown
        | EngineError::Journal(_)
        | EngineError::Ledger(_) => Denial::new(503, "UNAVAILABLE", message),
        _ => Denial::new(500, "INTERNAL", message),
    }
}

/// What is known of a request once Envoy has finished it (its access log entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished<'a> {
    /// The route's estimate, held at Check.
    pub estimate: u64,
    /// The usage header's value, if the upstream's response carried it.
    pub usage: Option<&'a str>,
    /// The HTTP status sent downstream (0: none, e.g. the client went away first).
    pub response_code: u32,
    /// Envoy started sending the request to the upstream.
    pub reached_upstream: bool,
    /// Envoy flagged an upstream failure: connection failure or reset, timeout, no healthy
    /// host, overflow, retries exhausted, protocol error.
    pub upstream_failed: bool,
}

/// What a finished request's hold becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Charge this quantity (in the sku's unit).
    Commit(u64),
    /// Give the hold back: the upstream never got the request, or failed without reporting.
    Release,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("usage header value {0:?} is not a whole number (the estimate is charged instead)")]
pub struct BadUsage(pub String);

/// The usage an upstream reported: a whole number in the sku's unit.
pub fn parse_usage(v: &str) -> Result<u64, BadUsage> {
    let t = v.trim();
    if t.len() > USAGE_VALUE_BYTES_MAX || t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadUsage(shown(v)));
    }
    t.parse::<u64>()
        .ok()
        .filter(|q| i64::try_from(*q).is_ok())
        .ok_or_else(|| BadUsage(shown(v)))
}

/// The charging rule: the reported usage if the upstream reported one (whatever its
/// status); else nothing if the request never reached the upstream or the upstream failed
/// (a 5xx or an upstream failure flag); else the estimate (the upstream answered, or the
/// client went away while it worked, without a report). The second value is a usage
/// header that could not be read, for the log.
pub fn settle(f: &Finished<'_>) -> (Settlement, Option<BadUsage>) {
    let mut bad = None;
    if let Some(v) = f.usage {
        match parse_usage(v) {
            Ok(q) => return (Settlement::Commit(q), None),
            Err(e) => bad = Some(e),
        }
    }
    let s = if !f.reached_upstream || f.upstream_failed || f.response_code >= 500 {
        Settlement::Release
    } else {
        Settlement::Commit(f.estimate)
    };
    (s, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn routes_parse_with_defaults_and_refuse_bad_values() {
        let r = route(&ext(&[
            (SKU_KEY, "gpu.shared.a10"),
            (QUANTITY_KEY, "60000"),
        ]))
        .unwrap();
        assert_eq!(r.sku, "gpu.shared.a10");
        assert_eq!(r.quantity, 60_000);
        assert_eq!(r.mode, Mode::Enforce);
        assert_eq!(r.ttl_ms, 0);
        assert_eq!(r.usage_header, DEFAULT_USAGE_HEADER);
        let r = route(&ext(&[
            (SKU_KEY, "s"),
            (QUANTITY_KEY, "1"),
            (MODE_KEY, "shadow"),
            (TTL_KEY, "900000"),
            (USAGE_HEADER_KEY, "x-gpu-ms"),
        ]))
        .unwrap();
        assert_eq!(
            (r.mode, r.ttl_ms, r.usage_header.as_str()),
            (Mode::Shadow, 900_000, "x-gpu-ms")
        );
        assert_eq!(route(&ext(&[])), Err(RouteError::MissingSku));
        assert!(is_shadow(&ext(&[(MODE_KEY, "shadow")])));
        assert!(!is_shadow(&ext(&[(MODE_KEY, "enforce")])) && !is_shadow(&ext(&[])));
        assert_eq!(
            route(&ext(&[(SKU_KEY, "s")])),
            Err(RouteError::MissingQuantity)
        );
        for q in ["0", "-1", "1.5", "x", "18446744073709551615"] {
            assert!(
                matches!(
                    route(&ext(&[(SKU_KEY, "s"), (QUANTITY_KEY, q)])),
                    Err(RouteError::BadQuantity(_))
                ),
                "{q}"
            );
        }
        let base = [(SKU_KEY, "s"), (QUANTITY_KEY, "1")];
        let with = |k, v| {
            let mut e = ext(&base);
            e.insert(String::from(k), String::from(v));
            route(&e)
        };
        assert!(matches!(with(MODE_KEY, "dry"), Err(RouteError::BadMode(_))));
        assert!(matches!(with(TTL_KEY, "0"), Err(RouteError::BadTtl(_))));
        assert!(matches!(
            with(USAGE_HEADER_KEY, "X-Usage"),
            Err(RouteError::BadUsageHeader(_))
        ));
    }

    #[test]
    fn reservation_ids_are_stable_valid_and_per_account() {
        let a = reservation_id("acme", "7f1c-1");
        assert_eq!(a, reservation_id("acme", "7f1c-1"));
        assert_ne!(a, reservation_id("acme", "7f1c-2"));
        assert_ne!(a, reservation_id("other", "7f1c-1"));
        // No ambiguity from where the account ends.
        assert_ne!(reservation_id("ab", "c"), reservation_id("a", "bc"));
        assert!(a.starts_with(RESERVATION_PREFIX));
        assert_eq!(a.len(), RESERVATION_PREFIX.len() + 32);
        let junk = "é/\u{0}".repeat(500);
        crate::grpc::convert::id("reservation_id", &reservation_id("acme", &junk)).unwrap();
    }

    #[test]
    fn denials_map_to_statuses_and_a_json_body() {
        let d = denied(DenyReason::InsufficientFunds, Money::parse("0.5").unwrap());
        assert_eq!(d.status, 402);
        let body: serde_json::Value = serde_json::from_str(&d.body("CNY")).unwrap();
        assert_eq!(body["reason"], "INSUFFICIENT_FUNDS");
        assert_eq!(body["available"], "0.5");
        assert_eq!(body["currency"], "CNY");
        assert!(body["message"].as_str().unwrap().contains("top up"));
        assert_eq!(denied(DenyReason::Overdue, Money::ZERO).status, 402);
        assert_eq!(denied(DenyReason::NoEntitlement, Money::ZERO).status, 402);
        assert_eq!(
            denied(DenyReason::LedgerUnavailable, Money::ZERO).status,
            503
        );
        assert_eq!(auth_denied(&AuthError::Missing).status, 401);
        assert_eq!(auth_denied(&AuthError::Unknown).status, 401);
        let not_granted = AuthError::NotGranted {
            name: "bob".into(),
            permission: crate::auth::Permission::Admit,
            account: "acme".into(),
        };
        assert_eq!(auth_denied(&not_granted).status, 403);
        assert_eq!(
            auth_denied(&AuthError::Unavailable("down".into())).status,
            503
        );
        let body: serde_json::Value =
            serde_json::from_str(&auth_denied(&AuthError::Missing).body("CNY")).unwrap();
        assert!(body["available"].is_null());
        assert_eq!(
            engine_denied(&EngineError::UnknownAccount("x".into())).status,
            403
        );
        assert_eq!(engine_denied(&EngineError::Backlog(1)).status, 503);
    }

    fn fin(usage: Option<&str>, code: u32, reached: bool, failed: bool) -> Settlement {
        settle(&Finished {
            estimate: 100,
            usage,
            response_code: code,
            reached_upstream: reached,
            upstream_failed: failed,
        })
        .0
    }

    #[test]
    fn the_charging_rule() {
        // Reported usage wins, whatever the status, even above the estimate.
        assert_eq!(fin(Some("42"), 200, true, false), Settlement::Commit(42));
        assert_eq!(
            fin(Some(" 250 "), 500, true, false),
            Settlement::Commit(250)
        );
        assert_eq!(fin(Some("0"), 404, true, false), Settlement::Commit(0));
        // No report: the estimate when the upstream answered or the client left mid-work.
        assert_eq!(fin(None, 200, true, false), Settlement::Commit(100));
        assert_eq!(fin(None, 404, true, false), Settlement::Commit(100));
        assert_eq!(fin(None, 0, true, false), Settlement::Commit(100));
        // Released when the upstream failed before reporting or never got the request.
        assert_eq!(fin(None, 503, true, true), Settlement::Release);
        assert_eq!(fin(None, 500, true, false), Settlement::Release);
        assert_eq!(fin(None, 0, false, false), Settlement::Release);
        // A report that cannot be read counts as none, and is said.
        let (s, bad) = settle(&Finished {
            estimate: 7,
            usage: Some("12.5"),
            response_code: 200,
            reached_upstream: true,
            upstream_failed: false,
        });
        assert_eq!(s, Settlement::Commit(7));
        assert!(bad.is_some());
        for v in [
            "-1",
            "",
            "1e3",
            "99999999999999999999999",
            "9223372036854775808",
        ] {
            assert!(parse_usage(v).is_err(), "{v}");
        }
        assert_eq!(
            parse_usage("9223372036854775807"),
            Ok(9_223_372_036_854_775_807)
        );
    }
}
