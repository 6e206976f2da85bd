//! What can go wrong in `quotad ctl`, each said the way an operator can act on it: the
//! value that was wrong, or the server's status code by name with its message.

use std::path::PathBuf;

use tonic::Code;

use crate::billing::MoneyError;

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
    #[error(
        "UNAUTHENTICATED: {message}: no token was given and none was found in {tried} \
         (give --token-file, QUOTAD_TOKEN_FILE, or the server's --data-dir / QUOTAD_DATA_DIR)"
    )]
    NoToken { tried: String, message: String },
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("{0}")]
    EnvoyConfig(#[from] crate::envoy::bootstrap::BootstrapError),
    #[error("{error} (retry with --id {id}: it will not be applied twice)")]
    Retry { error: Box<CtlError>, id: String },
    #[error(
        "the server ended the watch after {events} event(s) (it may be shutting down); \
         watch again to go on"
    )]
    WatchEnded { events: u64 },
}

impl CtlError {
    /// A failure after which the same call may succeed, with its outcome possibly unknown
    /// (so a retry must reuse the id): the server was unavailable, busy, timed out or
    /// failed inside. A refusal (bad input, unknown account, not enough money, no
    /// permission) is not: the same call is refused again.
    pub fn is_retryable(&self) -> bool {
        match self {
            CtlError::Rpc { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::ResourceExhausted
                    | Code::Unknown
                    | Code::Internal
            ),
            CtlError::Unreachable { .. } => true,
            _ => false,
        }
    }

    /// stdout was closed by its reader (`quotad ctl … | head`).
    pub fn is_closed_output(&self) -> bool {
        matches!(self, CtlError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
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

/// "transport error: tcp connect error: Connection refused": the useful part of a
/// transport error is in its sources, not its own message.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_errors_read_code_then_message() {
        let e = CtlError::from(tonic::Status::not_found("account acme does not exist"));
        assert_eq!(e.to_string(), "NOT_FOUND: account acme does not exist");
        let e = CtlError::from(tonic::Status::new(Code::Internal, ""));
        assert_eq!(e.to_string(), "INTERNAL: Internal error");
    }

    #[test]
    fn only_failures_that_may_pass_on_a_retry_are_retryable() {
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::Aborted] {
            assert!(CtlError::from(tonic::Status::new(code, "x")).is_retryable());
        }
        for code in [
            Code::FailedPrecondition,
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert!(!CtlError::from(tonic::Status::new(code, "x")).is_retryable());
        }
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(CtlError::Output(pipe).is_closed_output());
    }
}
