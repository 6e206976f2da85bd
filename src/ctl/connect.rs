//! Reaching quotad: the address (a bare `host:port` is plain HTTP/2), the token (flag,
//! variable, file, or the operator token `quotad serve` wrote), TLS, and `Ctx`, what every
//! command calls through. Connection problems are said with their cause, since "transport
//! error" alone tells an operator nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::Utc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use super::error::error_chain;
use super::parse::parse_currency;
use super::{CtlArgs, CtlError, Render};
use crate::auth::{Bearer, BearerChannel};
use crate::billing::Money;
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::quota_client::QuotaClient;
use crate::tls::ClientTls;

/// Longest wait for the connection to quotad.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for one call's answer (a watch is a stream, not bounded by this).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a command works with: clients of the quotad at --addr sending the token, the
/// currency of amounts on the command line, and where to say things before the answer.
pub struct Ctx<'a> {
    pub quota: QuotaClient<BearerChannel>,
    pub admin: AdminClient<BearerChannel>,
    pub currency: String,
    /// --addr as given (envoy-config points Envoy at it).
    pub addr: String,
    pub tls: ClientTls,
    pub bearer: Bearer,
    pub out: &'a mut dyn Write,
    pub render: &'a dyn Render,
    /// The token files looked for when no token was given and none was found (said if
    /// the server then wants one).
    pub tried: Vec<PathBuf>,
}

impl<'a> Ctx<'a> {
    /// Checks the global options, then connects. The currency is checked first, so a typo
    /// fails before anything is sent.
    pub async fn connect(
        args: &CtlArgs,
        out: &'a mut dyn Write,
        render: &'a dyn Render,
    ) -> Result<Ctx<'a>, CtlError> {
        let currency = parse_currency(&args.currency)?;
        let tls = ClientTls {
            ca_file: args.tls_ca_file.clone(),
            cert_file: args.tls_cert_file.clone(),
            key_file: args.tls_key_file.clone(),
            domain: None,
        };
        let channel = connect(&args.addr, &tls).await?;
        let (token, tried) = token(args)?;
        let bearer = Bearer::new(token.as_deref()).ok_or(CtlError::BadToken)?;
        let channel = InterceptedService::new(channel, bearer.clone());
        Ok(Ctx {
            quota: QuotaClient::new(channel.clone()),
            admin: AdminClient::new(channel),
            currency,
            addr: args.addr.clone(),
            tls,
            bearer,
            out,
            render,
            tried,
        })
    }

    /// A call refused for want of a token, when ctl found none, says where it looked.
    pub fn explain(&self, e: CtlError) -> CtlError {
        match e {
            CtlError::Rpc {
                code: tonic::Code::Unauthenticated,
                message,
            } if !self.tried.is_empty() => CtlError::NoToken {
                tried: self
                    .tried
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                message,
            },
            e => e,
        }
    }

    /// An amount given on the command line, in --currency.
    pub fn money(&self, m: Money) -> pb::Money {
        pb::Money {
            currency: self.currency.clone(),
            amount: m.to_string(),
        }
    }

    /// The operator's id, or a fresh one said first so a failed call can be retried with it.
    pub fn id_or_fresh(
        &mut self,
        id: Option<String>,
        prefix: &str,
        label: &str,
    ) -> Result<String, CtlError> {
        if let Some(id) = id {
            return Ok(id);
        }
        let id = fresh_id(prefix);
        self.render.fresh_id(self.out, label, &id)?;
        Ok(id)
    }

    /// An Admin client of another quotad (`--admin-addr`), with the same token and TLS.
    pub async fn admin_at(&self, addr: &str) -> Result<AdminClient<BearerChannel>, CtlError> {
        let channel = connect(addr, &self.tls).await?;
        Ok(AdminClient::new(InterceptedService::new(
            channel,
            self.bearer.clone(),
        )))
    }
}

/// A new id no other run of this command has made: time, process and a counter.
pub(super) fn fresh_id(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ms = Utc::now().timestamp_millis();
    format!("{prefix}-{ms}-{}-{n}", std::process::id())
}

/// The token to send: --token / QUOTAD_TOKEN, else --token-file / QUOTAD_TOKEN_FILE, else
/// the operator token in --data-dir / QUOTAD_DATA_DIR, else in ./quotad-data (what
/// `quotad serve` writes) or ./quotad-ledger/operator.token (what `quotad ledger` writes),
/// the first that exists. With none found: no token, and the files looked for.
fn token(args: &CtlArgs) -> Result<(Option<String>, Vec<PathBuf>), CtlError> {
    if let Some(t) = &args.token {
        return Ok((Some(t.trim().to_owned()), Vec::new()));
    }
    if let Some(path) = &args.token_file {
        return read(path).map(|t| (Some(t), Vec::new()));
    }
    let candidates = default_token_files(args.data_dir.as_deref());
    for path in &candidates {
        match read(path) {
            Ok(t) => return Ok((Some(t), Vec::new())),
            Err(CtlError::TokenFile { .. }) if !path.exists() => {}
            Err(e) => return Err(e),
        }
    }
    Ok((None, candidates))
}

/// Where an operator token is looked for when none is given.
pub fn default_token_files(data_dir: Option<&Path>) -> Vec<PathBuf> {
    match data_dir {
        Some(d) => vec![d.join(crate::auth::OPERATOR_TOKEN_FILE)],
        None => vec![
            Path::new(crate::server::DEFAULT_DATA_DIR).join(crate::auth::OPERATOR_TOKEN_FILE),
            PathBuf::from(crate::auth::DEFAULT_LEDGER_OPERATOR_TOKEN_FILE),
        ],
    }
}

/// A token file's token; empty is an error.
fn read(path: &Path) -> Result<String, CtlError> {
    match crate::auth::read_token_file(path) {
        Ok(t) if !t.is_empty() => Ok(t),
        Ok(_) => Err(CtlError::TokenFile {
            path: path.to_path_buf(),
            reason: "empty".into(),
        }),
        Err(e) => Err(CtlError::TokenFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

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
        Some(("http" | "https", _)) => Ok(a.to_owned()),
        Some(_) => Err(CtlError::BadAddr {
            addr: addr.to_owned(),
            reason: "use http://, https:// (TLS) or no scheme".into(),
        }),
    }
}

/// A channel to `addr`: https when TLS files are given to a bare address.
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
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect()
        .await
        .map_err(|e| CtlError::Unreachable {
            addr: uri,
            // Skip tonic's own "transport error": the cause says what went wrong.
            reason: error_chain(std::error::Error::source(&e).unwrap_or(&e)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn fresh_ids_are_unique_within_a_process() {
        assert_ne!(fresh_id("topup"), fresh_id("topup"));
    }
}
