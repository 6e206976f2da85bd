//! The Ledger service (sidecar ↔ ledger) on both ends: the server adapter in front of a
//! `Ledger`, and `RemoteLedger`, the `LedgerApi` a sidecar uses to reach it. The wire
//! format is one `Sync` call; conversions live here so both ends agree.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::convert::{self, money_out};
use super::error::Invalid;
use crate::auth::{AuthError, Caller, Perms, TokenSource};
use crate::billing::Money;
use crate::ledger::{
    AccountSnapshot, Lease, LeaseRequest, Ledger, LedgerApi, LedgerError, SyncRequest,
    SyncResponse, UsageRecord,
};
use crate::pb;

/// How long a sidecar waits to connect to the ledger before treating it as unreachable.
pub const DEFAULT_LEDGER_CONNECT_TIMEOUT_MS: u64 = 2_000;

fn money_in(field: &str, m: Option<&pb::Money>) -> Result<Money, Invalid> {
    let m = m.ok_or_else(|| Invalid(format!("{field} is required")))?;
    Money::parse(&m.amount).map_err(|e| Invalid(format!("{field}: {e}")))
}

/// An optional amount (fields added after the first version): unset is zero.
fn money_or_zero(field: &str, m: Option<&pb::Money>) -> Result<Money, Invalid> {
    m.map_or(Ok(Money::ZERO), |m| money_in(field, Some(m)))
}

fn usage_out(currency: &str, u: &UsageRecord) -> pb::UsageRecord {
    pb::UsageRecord {
        seq: u.seq,
        usage_id: u.usage_id.clone(),
        account_id: u.account_id.clone(),
        resource: convert::to_pb_resource(u.resource) as i32,
        sku: u.sku.clone(),
        quantity: u.quantity,
        cost: money_out(currency, u.cost),
        at_ms: u.at_ms,
    }
}

fn usage_in(u: &pb::UsageRecord) -> Result<UsageRecord, Invalid> {
    let cost = money_in("cost", u.cost.as_ref())?;
    if cost.is_negative() {
        return Err(Invalid(format!("usage {} has a negative cost", u.usage_id)));
    }
    Ok(UsageRecord {
        seq: u.seq,
        usage_id: convert::usage_id(&u.usage_id)?.to_owned(),
        account_id: convert::id("account_id", &u.account_id)?.to_owned(),
        resource: convert::resource("resource", u.resource)?,
        sku: convert::sku(&u.sku)?.to_owned(),
        quantity: u.quantity,
        cost,
        at_ms: u.at_ms,
    })
}

fn snapshot_out(currency: &str, s: &AccountSnapshot, now_ms: i64) -> pb::AccountSnapshot {
    pb::AccountSnapshot {
        account_id: s.account_id.clone(),
        version: s.version,
        balance: money_out(currency, s.balance),
        grants: s
            .grants
            .iter()
            .map(|g| convert::grant_out(currency, g, now_ms))
            .collect(),
        applied_seq: s.applied_seq,
        lease: Some(pb::Lease {
            remaining: money_out(currency, s.lease.remaining),
            expires_at_ms: s.lease.expires_at_ms,
            seq: s.lease.seq,
            edge: s.lease.edge,
            give_back: s.lease.give_back,
        }),
        unleased: money_out(currency, s.unleased),
        recalling: money_out(currency, s.recalling),
        request_counts: s
            .request_counts
            .rows()
            .into_iter()
            .map(|(r, month, count)| pb::RequestCount {
                resource: convert::to_pb_resource(r) as i32,
                month,
                count,
            })
            .collect(),
    }
}

fn snapshot_in(s: &pb::AccountSnapshot) -> Result<AccountSnapshot, Invalid> {
    let lease = match &s.lease {
        Some(l) => Lease {
            remaining: money_in("lease.remaining", l.remaining.as_ref())?,
            expires_at_ms: l.expires_at_ms,
            seq: l.seq,
            edge: l.edge,
            give_back: l.give_back,
        },
        None => Lease::default(),
    };
    Ok(AccountSnapshot {
        account_id: s.account_id.clone(),
        version: s.version,
        balance: money_in("balance", s.balance.as_ref())?,
        grants: s
            .grants
            .iter()
            .map(convert::grant_in)
            .collect::<Result<_, _>>()?,
        applied_seq: s.applied_seq,
        lease,
        unleased: money_or_zero("unleased", s.unleased.as_ref())?,
        recalling: money_or_zero("recalling", s.recalling.as_ref())?,
        request_counts: crate::billing::free_tier::RequestCounts::from_rows(
            s.request_counts
                .iter()
                .map(|c| Ok((convert::resource("resource", c.resource)?, c.month, c.count)))
                .collect::<Result<Vec<_>, Invalid>>()?,
        ),
    })
}

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
        let r = request.into_inner();
        let req = SyncRequest {
            sidecar_id: convert::id("sidecar_id", &r.sidecar_id)?.to_owned(),
            usage: r.usage.iter().map(usage_in).collect::<Result<_, _>>()?,
            leases: r
                .leases
                .iter()
                .map(|l| {
                    let held = money_in("held", l.held.as_ref())?;
                    Ok(LeaseRequest {
                        account_id: convert::id("account_id", &l.account_id)?.to_owned(),
                        want: money_in("want", l.want.as_ref())?,
                        need: match &l.need {
                            Some(n) => money_in("need", Some(n))?,
                            None => held,
                        },
                        held,
                        release: l.release,
                        give_back: l.give_back,
                        seq: l.seq,
                    })
                })
                .collect::<Result<_, Invalid>>()?,
            accounts: r
                .accounts
                .iter()
                .map(|a| convert::id("accounts", a).map(str::to_owned))
                .collect::<Result<_, _>>()?,
            reset_seq: r.reset_seq,
        };
        let resp = self.ledger.sync_as_ledger(req).await?;
        Ok(Response::new(pb::SyncResponse {
            snapshots: resp
                .snapshots
                .iter()
                .map(|s| snapshot_out(&self.currency, s, resp.now_ms))
                .collect(),
            now_ms: resp.now_ms,
            hold_grace_ms: resp.hold_grace_ms,
            recalls: resp.recalls,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let r = request.into_inner();
        let hash = r.token_sha256.as_str();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Invalid("token_sha256 must be 64 hex digits".into()).into());
        }
        let hash = hash.to_ascii_lowercase();
        let store = self.ledger.store();
        let Some(row) = store.token_by_hash(&hash).await.map_err(AuthError::from)? else {
            return Ok(Response::new(pb::AuthenticateResponse::default()));
        };
        let access = if row.kind == crate::auth::Kind::SubUser.name() {
            store
                .access_of(&row.name, crate::auth::DEFAULT_ACCESS_ACCOUNTS_MAX)
                .await
                .map_err(AuthError::from)?
        } else {
            Vec::new()
        };
        let Some(caller) = Caller::from_row(&row, access) else {
            return Ok(Response::new(pb::AuthenticateResponse::default()));
        };
        Ok(Response::new(caller_out(row.token_id, &caller)))
    }
}

fn caller_out(token_id: String, caller: &Caller) -> pb::AuthenticateResponse {
    use pb::principal::Kind as K;
    let (kind, account_id, name, access) = match caller {
        Caller::Unchecked | Caller::Operator { .. } => {
            let name = match caller {
                Caller::Operator { name } => name.clone(),
                _ => String::new(),
            };
            (K::Operator, String::new(), name, Vec::new())
        }
        Caller::Owner { account_id } => (K::Owner, account_id.clone(), String::new(), Vec::new()),
        Caller::SubUser { name, access } => (
            K::SubUser,
            String::new(),
            name.clone(),
            access
                .iter()
                .map(|(a, p)| pb::AccessEntry {
                    account_id: a.clone(),
                    permissions: p.names(),
                })
                .collect(),
        ),
        Caller::Sidecar { name } => (K::Sidecar, String::new(), name.clone(), Vec::new()),
        Caller::Proxy { name } => (K::Proxy, String::new(), name.clone(), Vec::new()),
    };
    pb::AuthenticateResponse {
        known: true,
        principal: Some(pb::Principal {
            kind: kind as i32,
            account_id,
            name,
        }),
        token_id,
        access,
    }
}

fn caller_in(r: pb::AuthenticateResponse) -> Result<Option<Caller>, AuthError> {
    if !r.known {
        return Ok(None);
    }
    let bad = |what: &str| AuthError::Unavailable(format!("bad answer from the ledger: {what}"));
    let p = r.principal.ok_or_else(|| bad("no principal"))?;
    use pb::principal::Kind as K;
    Ok(Some(match K::try_from(p.kind) {
        Ok(K::Operator) => Caller::Operator { name: p.name },
        Ok(K::Owner) => Caller::Owner {
            account_id: p.account_id,
        },
        Ok(K::SubUser) => Caller::SubUser {
            name: p.name,
            access: r
                .access
                .into_iter()
                .map(|a| Ok((a.account_id, Perms::parse(&a.permissions)?)))
                .collect::<Result<_, AuthError>>()?,
        },
        Ok(K::Sidecar) => Caller::Sidecar { name: p.name },
        Ok(K::Proxy) => Caller::Proxy { name: p.name },
        _ => return Err(bad("unknown principal kind")),
    }))
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
            .map_err(|s| {
                AuthError::Unavailable(format!("the ledger did not answer: {}", s.message()))
            })?
            .into_inner();
        caller_in(resp)
    }
}

fn status_to_ledger(s: Status) -> LedgerError {
    match s.code() {
        tonic::Code::NotFound => {
            // "account X does not exist": keep the ledger's own words.
            let msg = s.message();
            let id = msg
                .strip_prefix("account ")
                .and_then(|m| m.strip_suffix(" does not exist"))
                .unwrap_or(msg);
            LedgerError::UnknownAccount(id.to_owned())
        }
        tonic::Code::Aborted => LedgerError::Contended(s.message().to_owned()),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            LedgerError::Unavailable(format!(
                "the ledger refused this sidecar ({}): give it a sidecar or operator token \
                 (ledger_token_file or QUOTAD_LEDGER_TOKEN)",
                s.message()
            ))
        }
        _ => LedgerError::Unavailable(format!("{:?}: {}", s.code(), s.message())),
    }
}

#[async_trait]
impl LedgerApi for RemoteLedger {
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        let c = &self.currency;
        let wire = pb::SyncRequest {
            sidecar_id: req.sidecar_id,
            usage: req.usage.iter().map(|u| usage_out(c, u)).collect(),
            leases: req
                .leases
                .iter()
                .map(|l| pb::LeaseRequest {
                    account_id: l.account_id.clone(),
                    want: money_out(c, l.want),
                    need: money_out(c, l.need),
                    held: money_out(c, l.held),
                    release: l.release,
                    give_back: l.give_back,
                    seq: l.seq,
                })
                .collect(),
            accounts: req.accounts,
            reset_seq: req.reset_seq,
        };
        let resp = self
            .client
            .clone()
            .sync(self.request(wire))
            .await
            .map_err(status_to_ledger)?
            .into_inner();
        Ok(SyncResponse {
            snapshots: resp
                .snapshots
                .iter()
                .map(snapshot_in)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    LedgerError::Unavailable(format!("bad answer from the ledger: {e}"))
                })?,
            now_ms: resp.now_ms,
            hold_grace_ms: resp.hold_grace_ms,
            recalls: resp.recalls,
        })
    }
}
