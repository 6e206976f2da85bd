//! What a server sets up or checks before it serves, apart from the wiring in `server`:
//! the first operator token and how `quotad ctl` finds it (the log says so, truly), a
//! sidecar's id at its ledger, and a sidecar's own token checked with its ledger.

use std::path::Path;
use std::time::Duration;

use crate::auth::{self, AuthConfig};
use crate::grpc::ledger::{RemoteLedger, TokenCheck};
use crate::ledger::Ledger;
use crate::server::{DEFAULT_DATA_DIR, ServeConfig, ServeError};

/// This sidecar's id at its ledger: made once, kept in the data directory, so that after
/// a restart the ledger recognises its leases and usage cursor.
pub(crate) fn sidecar_id(data_dir: &Path) -> Result<String, ServeError> {
    let path = data_dir.join("sidecar_id");
    let io = |source| ServeError::DataDir {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "sidecar".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let id = format!("{host}-{:016x}", u64::from_le_bytes(bytes));
    let tmp = data_dir.join("sidecar_id.tmp");
    std::fs::write(&tmp, &id).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(id)
}

/// Makes the first operator token (if there is none) and says where it is and how
/// `quotad ctl` finds it (`ctl_hint`), or warns that authentication is off.
pub(crate) async fn bootstrap_auth(
    cfg: &AuthConfig,
    ledger: &Ledger,
    token_file: Option<&Path>,
    ctl_hint: &str,
) -> Result<(), ServeError> {
    if cfg.disabled {
        tracing::warn!(
            "authentication is OFF (auth_disabled): anyone who reaches this port can do \
             anything; for local development only"
        );
        return Ok(());
    }
    match token_file {
        Some(path) => {
            if !auth::ensure_operator_token(ledger, path).await? {
                tracing::info!(path = %path.display(), "the operator token exists");
            }
            tracing::info!("{ctl_hint}");
        }
        None => tracing::info!("no operator token file configured; tokens come from CreateToken"),
    }
    Ok(())
}

/// How `quotad ctl` finds the operator token of a sidecar with its data in `data_dir`
/// (`ctl::connect::default_token_files`).
pub(crate) fn serve_ctl_hint(data_dir: &Path) -> String {
    if data_dir == Path::new(DEFAULT_DATA_DIR) {
        return format!(
            "`quotad ctl` run in this directory reads the operator token from \
             {DEFAULT_DATA_DIR}/{}",
            auth::OPERATOR_TOKEN_FILE
        );
    }
    let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    format!(
        "`quotad ctl --data-dir {0}` (or QUOTAD_DATA_DIR={0}) reads the operator token from \
         there",
        dir.display()
    )
}

/// How `quotad ctl` finds the operator token `quotad ledger` wrote at `path`.
pub(crate) fn ledger_ctl_hint(path: &Path) -> String {
    let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let fallback = match path == Path::new(auth::DEFAULT_LEDGER_OPERATOR_TOKEN_FILE) {
        true => format!(
            "; run in this directory, without them it reads {} unless {}/{} exists",
            auth::DEFAULT_LEDGER_OPERATOR_TOKEN_FILE,
            DEFAULT_DATA_DIR,
            auth::OPERATOR_TOKEN_FILE
        ),
        false => String::new(),
    };
    format!(
        "`quotad ctl --token-file {0}` (or QUOTAD_TOKEN_FILE={0}) sends the operator \
         token{fallback}",
        file.display()
    )
}

/// A sidecar whose ledger refuses its token would fail every call: it does not start.
/// A ledger that does not answer is no reason to stop (the sidecar serves from its
/// journal and leases); the token is then checked at the first exchange.
pub(crate) async fn check_ledger_token(
    remote: &RemoteLedger,
    url: &str,
    cfg: &ServeConfig,
) -> Result<(), ServeError> {
    let timeout = Duration::from_millis(cfg.engine.leasing.lease_request_timeout_ms);
    match remote.check_token(timeout).await {
        TokenCheck::Accepted => Ok(()),
        TokenCheck::Refused(message) => Err(ServeError::LedgerRefused {
            url: url.to_owned(),
            message,
        }),
        TokenCheck::NoAnswer(why) => {
            tracing::warn!(ledger = url, %why,
                "the ledger did not answer at start; its token is checked when it does");
            Ok(())
        }
    }
}
