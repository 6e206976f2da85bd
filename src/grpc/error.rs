//! The one place where errors become gRPC statuses (G6). Every status says what was wrong
//! with the value that was wrong; internal failures are logged here once.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::billing::storage::StorageError;
use crate::billing::{PriceError, PurchaseError};
use crate::engine::EngineError;
use crate::journal::JournalError;
use crate::ledger::LedgerError;
use crate::ledger::store::StoreError;
use crate::webhooks::WebhookError;

/// A request that failed validation before reaching the engine or the ledger.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<Invalid> for Status {
    fn from(e: Invalid) -> Status {
        Status::invalid_argument(e.0)
    }
}

/// A call to a server kind that does not serve it (an Admin write on a sidecar of a
/// remote ledger, a Quota call on the ledger): UNIMPLEMENTED, saying which server does.
#[derive(Debug, thiserror::Error)]
#[error("{rpc} is not served here: {served_by}")]
pub struct ServedElsewhere {
    pub rpc: &'static str,
    pub served_by: String,
}

impl From<ServedElsewhere> for Status {
    fn from(e: ServedElsewhere) -> Status {
        Status::unimplemented(e.to_string())
    }
}

/// A bound reached while serving: the request or the stream is refused, never queued.
#[derive(Debug, thiserror::Error)]
pub enum Overload {
    /// `concurrency_max` requests are in flight (the guard sheds this one).
    #[error("server busy: {0} requests in flight (concurrency_max); retry with backoff")]
    Busy(usize),
    /// A usage stream's client left this many decisions unread (`stream_buffer`).
    #[error("{0} decisions are waiting unread (stream_buffer); read decisions as you send reports")]
    DecisionsUnread(usize),
}

impl From<Overload> for Status {
    fn from(e: Overload) -> Status {
        Status::resource_exhausted(e.to_string())
    }
}

/// A call to a method a hand-written service (the Envoy access log's) does not have.
#[derive(Debug, thiserror::Error)]
#[error("{service} has no method {method}")]
pub struct NoMethod {
    pub service: &'static str,
    pub method: String,
}

impl From<NoMethod> for Status {
    fn from(e: NoMethod) -> Status {
        Status::unimplemented(e.to_string())
    }
}

fn internal(code: Code, e: &dyn std::fmt::Display) -> Status {
    tracing::error!(error = %e, "request failed inside quotad");
    Status::new(code, e.to_string())
}

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Status {
        let msg = e.to_string();
        match e {
            EngineError::UnknownAccount(_)
            | EngineError::UnknownReservation(_)
            | EngineError::UnknownSession(_) => Status::not_found(msg),
            EngineError::WorkOpen(_) => Status::already_exists(msg),
            EngineError::ShuttingDown => Status::unavailable(msg),
            EngineError::SessionMismatch { .. } => Status::failed_precondition(msg),
            EngineError::NotStreamable(_) | EngineError::IdleTimeout { .. } => {
                Status::invalid_argument(msg)
            }
            EngineError::StreamsFull(_)
            | EngineError::ReportRate(_)
            | EngineError::SessionsFull(_)
            | EngineError::WatchersFull { .. } => Status::resource_exhausted(msg),
            EngineError::ReservationExpired { .. }
            | EngineError::ReservationSettled { .. }
            | EngineError::ReservationMismatch { .. }
            | EngineError::WorkStreaming(_) => Status::failed_precondition(msg),
            // Waited on inside the engine (G6); reaching here would be a bug.
            EngineError::InProgress(_) => internal(Code::Internal, &msg),
            EngineError::TtlTooLong { .. }
            | EngineError::StorageInFuture { .. }
            | EngineError::Storage(StorageError::TooLarge(_)) => Status::invalid_argument(msg),
            EngineError::Storage(StorageError::OutOfOrder { .. }) | EngineError::NoStoragePrice => {
                Status::failed_precondition(msg)
            }
            EngineError::HoldsFull(_) | EngineError::AccountsFull(_) | EngineError::Backlog(_) => {
                Status::resource_exhausted(msg)
            }
            EngineError::Price(p) => p.into(),
            EngineError::Journal(j) => j.into(),
            EngineError::Ledger(l) => l.into(),
        }
    }
}

impl From<PriceError> for Status {
    fn from(e: PriceError) -> Status {
        match e {
            PriceError::UnknownSku(_) => Status::not_found(e.to_string()),
            PriceError::WrongResource { .. }
            | PriceError::NotCounted(_)
            | PriceError::QuantityTooLarge(_) => Status::invalid_argument(e.to_string()),
        }
    }
}

impl From<JournalError> for Status {
    fn from(e: JournalError) -> Status {
        match e {
            JournalError::QueueFull(_) => Status::resource_exhausted(e.to_string()),
            JournalError::Closed => Status::unavailable("quotad is shutting down"),
            JournalError::Write(_)
            | JournalError::Open(_)
            | JournalError::Poisoned(_)
            | JournalError::Corrupt { .. } => internal(Code::Unavailable, &e),
        }
    }
}

impl From<LedgerError> for Status {
    fn from(e: LedgerError) -> Status {
        let msg = e.to_string();
        match e {
            LedgerError::UnknownAccount(_) | LedgerError::UnknownOffer(_) => Status::not_found(msg),
            LedgerError::AccountExists(_) => Status::already_exists(msg),
            LedgerError::IdReused { .. } => Status::failed_precondition(msg),
            LedgerError::Purchase(PurchaseError::EffectiveInFuture { .. })
            | LedgerError::Purchase(PurchaseError::BadTime(_))
            | LedgerError::ExpiryInPast { .. } => Status::invalid_argument(msg),
            LedgerError::Purchase(_) => Status::failed_precondition(msg),
            LedgerError::Contended(_) => Status::aborted(msg),
            LedgerError::Unavailable(_) => Status::unavailable(msg),
            LedgerError::Store(StoreError::Conflict(_) | StoreError::Duplicate { .. }) => {
                Status::aborted(msg)
            }
            LedgerError::Store(StoreError::Database(_)) => internal(Code::Unavailable, &msg),
            LedgerError::Store(StoreError::Corrupt(_)) => internal(Code::Internal, &msg),
            LedgerError::Store(StoreError::TooLarge { .. }) => Status::invalid_argument(msg),
        }
    }
}

impl From<WebhookError> for Status {
    fn from(e: WebhookError) -> Status {
        let msg = e.to_string();
        match e {
            WebhookError::BadUrl(_)
            | WebhookError::UnknownKind(_)
            | WebhookError::BadAccount(_)
            | WebhookError::TooManyAccounts(_) => Status::invalid_argument(msg),
            WebhookError::TooManyWebhooks(_) => Status::resource_exhausted(msg),
            WebhookError::Unknown(_) => Status::not_found(msg),
            WebhookError::Secret(_) => internal(Code::Internal, &msg),
            WebhookError::Store(s) => LedgerError::Store(s).into(),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        let msg = e.to_string();
        match e {
            AuthError::Missing | AuthError::Malformed | AuthError::Unknown => {
                Status::unauthenticated(msg)
            }
            AuthError::NotGranted { .. }
            | AuthError::OtherAccount { .. }
            | AuthError::OperatorOnly { .. }
            | AuthError::SidecarOnly { .. }
            | AuthError::SidecarElsewhere { .. }
            | AuthError::ProxyOnly { .. }
            | AuthError::ProxyElsewhere { .. } => Status::permission_denied(msg),
            AuthError::UnknownPermission(_) => Status::invalid_argument(msg),
            AuthError::UnknownTokenId(_) => Status::not_found(msg),
            AuthError::UnknownSubUser(_) => Status::failed_precondition(msg),
            AuthError::Unavailable(_) => Status::unavailable(msg),
            AuthError::Store(s) => LedgerError::Store(s).into(),
        }
    }
}

/// The other way, on a sidecar: the error of a call to the ledger that ended in `s`. Only
/// an unknown account is the caller's; everything else means the ledger cannot serve this
/// sidecar now (so it keeps serving from its leases).
pub fn ledger_error(s: &Status) -> LedgerError {
    match s.code() {
        Code::NotFound => {
            // "account X does not exist": keep the ledger's own words.
            let msg = s.message();
            let id = msg
                .strip_prefix("account ")
                .and_then(|m| m.strip_suffix(" does not exist"))
                .unwrap_or(msg);
            LedgerError::UnknownAccount(id.to_owned())
        }
        Code::Aborted => LedgerError::Contended(s.message().to_owned()),
        Code::Unauthenticated | Code::PermissionDenied => LedgerError::Unavailable(format!(
            "the ledger refused this sidecar ({}): give it a sidecar or operator token \
             (ledger_token_file or QUOTAD_LEDGER_TOKEN)",
            s.message()
        )),
        _ => LedgerError::Unavailable(format!("{:?}: {}", s.code(), s.message())),
    }
}

/// A token lookup at the ledger that ended in `s`: the token cannot be checked now,
/// because the ledger refused this sidecar's own token or did not answer.
pub fn ledger_auth_error(s: &Status) -> AuthError {
    match ledger_refused(s) {
        true => AuthError::Unavailable(format!(
            "the ledger refused this sidecar's own token ({}): give the sidecar a sidecar \
             or operator token of its ledger (ledger_token_file or QUOTAD_LEDGER_TOKEN)",
            s.message()
        )),
        false => AuthError::Unavailable(format!("the ledger did not answer: {}", s.message())),
    }
}

/// Whether the ledger answered `s` because it does not accept this sidecar's token (as
/// opposed to not answering at all).
pub fn ledger_refused(s: &Status) -> bool {
    matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied)
}

/// How tonic's decoder starts its refusal of a message over `max_decoding_message_size`,
/// as it sends it (percent-encoded) and as a peer may spell it.
const OVERSIZE_MESSAGES: [&str; 2] = [
    "Error,%20decoded%20message%20length%20too%20large",
    "Error, decoded message length too large",
];

/// tonic refuses a request message over `message_bytes_max` with OUT_OF_RANGE; the gRPC
/// status code spec says RESOURCE_EXHAUSTED for a message larger than the server accepts.
/// Rewrites that refusal in a trailers-only response's headers (the guard calls this on
/// every response); any other status is left as it is.
pub fn oversize_is_resource_exhausted(headers: &mut tonic::codegen::http::HeaderMap) {
    let oversize = headers.get("grpc-status").map(|v| v.as_bytes()) == Some(b"11")
        && headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            OVERSIZE_MESSAGES
                .iter()
                .any(|o| m.starts_with(o.as_bytes()))
        });
    if oversize {
        let code = i32::from(Code::ResourceExhausted).to_string();
        if let Ok(v) = tonic::codegen::http::HeaderValue::from_str(&code) {
            headers.insert("grpc-status", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::{HeaderMap, HeaderValue};

    fn headers(status: &'static str, message: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static(status));
        h.insert("grpc-message", HeaderValue::from_static(message));
        h
    }

    #[test]
    fn an_oversize_message_is_resource_exhausted_and_nothing_else_changes() {
        let mut h = headers(
            "11",
            "Error, decoded message length too large: found 70000 bytes, the limit is: 65536 bytes",
        );
        oversize_is_resource_exhausted(&mut h);
        assert_eq!(h["grpc-status"], "8");
        let mut encoded = headers(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20x",
        );
        oversize_is_resource_exhausted(&mut encoded);
        assert_eq!(encoded["grpc-status"], "8");
        let mut other = headers("11", "month out of range");
        oversize_is_resource_exhausted(&mut other);
        assert_eq!(other["grpc-status"], "11");
        let mut ok = HeaderMap::new();
        oversize_is_resource_exhausted(&mut ok);
        assert!(ok.is_empty());
    }
}
