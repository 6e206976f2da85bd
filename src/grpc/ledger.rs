//! The Ledger service (sidecar ↔ ledger) on both ends: the server adapter in front of a
//! `Ledger`, and `RemoteLedger`, the `LedgerApi` a sidecar uses to reach it. The wire
//! format is one `Sync` call; conversions live here so both ends agree.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{ledger_auth_error, ledger_error, ledger_refused};
use crate::auth::{self, AuthError, Caller, TokenSource};
use crate::ledger::{Ledger, LedgerApi, LedgerError, SyncRequest, SyncResponse};
use crate::pb;

/// How long a sidecar waits to connect to the ledger before treating it as unreachable.
pub const DEFAULT_LEDGER_CONNECT_TIMEOUT_MS: u64 = 2_000;

/// The Ledger service in front of the authoritative ledger.
pub struct LedgerService {
    ledger: Arc<Ledger>,
    currency: String,
}

impl LedgerService {
    pub fn new(ledger: Arc<Ledger>) -> LedgerService {
        let currency = ledger.catalog().currency.clone();
        LedgerService { ledger, currency }
    }
}

#[tonic::async_trait]
impl pb::ledger_server::Ledger for LedgerService {
    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        let req = convert::sync_request_in(request.get_ref())?;
        let resp = self.ledger.sync_as_ledger(req).await?;
        Ok(Response::new(convert::sync_response_out(
            &self.currency,
            resp,
        )))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let hash = convert::token_hash_in(&request.get_ref().token_sha256)?;
        let found = auth::lookup(&self.ledger, &hash).await?;
        Ok(Response::new(match found {
            Some((token_id, caller)) => convert::caller_out(token_id, &caller),
            None => pb::AuthenticateResponse::default(),
        }))
    }

    async fn queue_events(
        &self,
        request: Request<pb::QueueEventsRequest>,
    ) -> Result<Response<pb::QueueEventsResponse>, Status> {
        super::webhooks::queue_events(&self.ledger, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// A ledger reached over gRPC. The channel connects lazily and reconnects by itself, so a
/// sidecar starts and serves from its journal and leases while the ledger is down.
pub struct RemoteLedger {
    client: pb::ledger_client::LedgerClient<Channel>,
    currency: String,
    /// `Bearer TOKEN` of this sidecar's token at the ledger, if it has one.
    authorization: Option<MetadataValue<Ascii>>,
}

impl RemoteLedger {
    pub fn new(url: &str, currency: &str) -> Result<RemoteLedger, LedgerError> {
        Self::with_token(url, currency, None)
    }

    /// A ledger reached with `token` (the sidecar's, or an operator's) on every call.
    pub fn with_token(
        url: &str,
        currency: &str,
        token: Option<&str>,
    ) -> Result<RemoteLedger, LedgerError> {
        Self::connect(url, currency, token, None)
    }

    /// `with_token` over TLS when `tls` is given.
    pub fn connect(
        url: &str,
        currency: &str,
        token: Option<&str>,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<RemoteLedger, LedgerError> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| LedgerError::Unavailable(format!("ledger address {url:?}: {e}")))?
            .connect_timeout(Duration::from_millis(DEFAULT_LEDGER_CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true);
        if let Some(tls) = tls {
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| LedgerError::Unavailable(format!("ledger TLS: {e}")))?;
        }
        let authorization = match token {
            None => None,
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {}", t.trim())).map_err(|_| {
                    LedgerError::Unavailable("the ledger token is not a valid header value".into())
                })?,
            ),
        };
        Ok(RemoteLedger {
            client: pb::ledger_client::LedgerClient::new(endpoint.connect_lazy()),
            currency: currency.to_owned(),
            authorization,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        if let Some(v) = &self.authorization {
            req.metadata_mut().insert("authorization", v.clone());
        }
        req
    }
}

/// What the ledger said of this sidecar's token at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    Accepted,
    /// The ledger answered and refused it (its message).
    Refused(String),
    /// The ledger did not answer (why); the token is checked at the first exchange.
    NoAnswer(String),
}

impl RemoteLedger {
    /// Asks the ledger, within `timeout`, whether it takes this sidecar's token: a token
    /// lookup (of a hash no token has) that only a sidecar or operator may make.
    pub async fn check_token(&self, timeout: Duration) -> TokenCheck {
        let mut client = self.client.clone();
        let call = client.authenticate(self.request(pb::AuthenticateRequest {
            token_sha256: "0".repeat(64),
        }));
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(_)) => TokenCheck::Accepted,
            Ok(Err(s)) if ledger_refused(&s) => TokenCheck::Refused(s.message().to_owned()),
            Ok(Err(s)) => TokenCheck::NoAnswer(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => TokenCheck::NoAnswer(format!("no answer within {timeout:?}")),
        }
    }
}

#[async_trait]
impl TokenSource for RemoteLedger {
    async fn identify(&self, token_sha256: &str) -> Result<Option<Caller>, AuthError> {
        let resp = self
            .client
            .clone()
            .authenticate(self.request(pb::AuthenticateRequest {
                token_sha256: token_sha256.to_owned(),
            }))
            .await
            .map_err(|s| ledger_auth_error(&s))?
            .into_inner();
        convert::caller_in(resp)
    }
}

#[async_trait]
impl LedgerApi for RemoteLedger {
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        let wire = convert::sync_request_out(&self.currency, req);
        let resp = self
            .client
            .clone()
            .sync(self.request(wire))
            .await
            .map_err(|s| ledger_error(&s))?
            .into_inner();
        convert::sync_response_in(resp)
            .map_err(|e| LedgerError::Unavailable(format!("bad answer from the ledger: {e}")))
    }
}

/// A sidecar's durable events go to its ledger's webhook outbox.
#[async_trait]
impl crate::webhooks::forward::EventQueue for RemoteLedger {
    async fn queue(
        &self,
        events: Vec<crate::ledger::store::webhooks::QueuedEvent>,
    ) -> Result<(), String> {
        self.client
            .clone()
            .queue_events(self.request(convert::queued_events_out(events)))
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
    }
}
