//! The Ledger service's messages, both ways (the ledger reads what a sidecar writes and
//! the other way round): usage, lease requests, snapshots, and Authenticate's callers.

use super::{grant_in, grant_out, id, money_out, resource, sku, to_pb_resource, usage_id};
use crate::auth::{AuthError, Caller, Perms};
use crate::billing::Money;
use crate::grpc::error::Invalid;
use crate::ledger::{AccountSnapshot, Lease, LeaseRequest, SyncRequest, SyncResponse, UsageRecord};
use crate::pb;

/// An amount between sidecar and ledger: both ends bill in the catalog's currency, so the
/// currency is not checked (unlike `money_in`, for clients).
fn amount_in(field: &str, m: Option<&pb::Money>) -> Result<Money, Invalid> {
    let m = m.ok_or_else(|| Invalid(format!("{field} is required")))?;
    Money::parse(&m.amount).map_err(|e| Invalid(format!("{field}: {e}")))
}

/// An optional amount (fields added after the first version): unset is zero.
fn amount_or_zero(field: &str, m: Option<&pb::Money>) -> Result<Money, Invalid> {
    m.map_or(Ok(Money::ZERO), |m| amount_in(field, Some(m)))
}

fn usage_out(currency: &str, u: &UsageRecord) -> pb::UsageRecord {
    pb::UsageRecord {
        seq: u.seq,
        usage_id: u.usage_id.clone(),
        account_id: u.account_id.clone(),
        resource: to_pb_resource(u.resource).into(),
        sku: u.sku.clone(),
        quantity: u.quantity,
        cost: money_out(currency, u.cost),
        at_ms: u.at_ms,
    }
}

fn usage_in(u: &pb::UsageRecord) -> Result<UsageRecord, Invalid> {
    let cost = amount_in("cost", u.cost.as_ref())?;
    if cost.is_negative() {
        return Err(Invalid(format!("usage {} has a negative cost", u.usage_id)));
    }
    Ok(UsageRecord {
        seq: u.seq,
        usage_id: usage_id(&u.usage_id)?.to_owned(),
        account_id: id("account_id", &u.account_id)?.to_owned(),
        resource: resource("resource", u.resource)?,
        sku: sku(&u.sku)?.to_owned(),
        quantity: u.quantity,
        cost,
        at_ms: u.at_ms,
    })
}

fn lease_request_in(l: &pb::LeaseRequest) -> Result<LeaseRequest, Invalid> {
    let held = amount_in("held", l.held.as_ref())?;
    Ok(LeaseRequest {
        account_id: id("account_id", &l.account_id)?.to_owned(),
        want: amount_in("want", l.want.as_ref())?,
        need: match &l.need {
            Some(n) => amount_in("need", Some(n))?,
            None => held,
        },
        held,
        release: l.release,
        give_back: l.give_back,
        seq: l.seq,
    })
}

fn lease_request_out(c: &str, l: &LeaseRequest) -> pb::LeaseRequest {
    pb::LeaseRequest {
        account_id: l.account_id.clone(),
        want: money_out(c, l.want),
        need: money_out(c, l.need),
        held: money_out(c, l.held),
        release: l.release,
        give_back: l.give_back,
        seq: l.seq,
    }
}

/// A Sync request as the ledger takes it, every id and amount checked.
pub fn sync_request_in(r: &pb::SyncRequest) -> Result<SyncRequest, Invalid> {
    Ok(SyncRequest {
        sidecar_id: id("sidecar_id", &r.sidecar_id)?.to_owned(),
        usage: r.usage.iter().map(usage_in).collect::<Result<_, _>>()?,
        leases: r
            .leases
            .iter()
            .map(lease_request_in)
            .collect::<Result<_, _>>()?,
        accounts: r
            .accounts
            .iter()
            .map(|a| id("accounts", a).map(str::to_owned))
            .collect::<Result<_, _>>()?,
        reset_seq: r.reset_seq,
    })
}

/// A Sync request as a sidecar sends it.
pub fn sync_request_out(c: &str, req: SyncRequest) -> pb::SyncRequest {
    pb::SyncRequest {
        usage: req.usage.iter().map(|u| usage_out(c, u)).collect(),
        leases: req.leases.iter().map(|l| lease_request_out(c, l)).collect(),
        sidecar_id: req.sidecar_id,
        accounts: req.accounts,
        reset_seq: req.reset_seq,
    }
}

pub fn sync_response_out(currency: &str, resp: SyncResponse) -> pb::SyncResponse {
    pb::SyncResponse {
        snapshots: resp
            .snapshots
            .iter()
            .map(|s| snapshot_out(currency, s, resp.now_ms))
            .collect(),
        now_ms: resp.now_ms,
        hold_grace_ms: resp.hold_grace_ms,
        recalls: resp.recalls,
    }
}

/// The ledger's answer as a sidecar takes it; a snapshot that does not read is refused.
pub fn sync_response_in(resp: pb::SyncResponse) -> Result<SyncResponse, Invalid> {
    Ok(SyncResponse {
        snapshots: resp
            .snapshots
            .iter()
            .map(snapshot_in)
            .collect::<Result<_, _>>()?,
        now_ms: resp.now_ms,
        hold_grace_ms: resp.hold_grace_ms,
        recalls: resp.recalls,
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
            .map(|g| grant_out(currency, g, now_ms))
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
                resource: to_pb_resource(r).into(),
                month,
                count,
            })
            .collect(),
    }
}

fn snapshot_in(s: &pb::AccountSnapshot) -> Result<AccountSnapshot, Invalid> {
    let lease = match &s.lease {
        Some(l) => Lease {
            remaining: amount_in("lease.remaining", l.remaining.as_ref())?,
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
        balance: amount_in("balance", s.balance.as_ref())?,
        grants: s.grants.iter().map(grant_in).collect::<Result<_, _>>()?,
        applied_seq: s.applied_seq,
        lease,
        unleased: amount_or_zero("unleased", s.unleased.as_ref())?,
        recalling: amount_or_zero("recalling", s.recalling.as_ref())?,
        request_counts: crate::billing::free_tier::RequestCounts::from_rows(
            s.request_counts
                .iter()
                .map(|c| Ok((resource("resource", c.resource)?, c.month, c.count)))
                .collect::<Result<Vec<_>, Invalid>>()?,
        ),
    })
}

/// A token hash a sidecar asks the ledger about: 64 hex digits, compared in lower case.
pub fn token_hash_in(hash: &str) -> Result<String, Invalid> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid("token_sha256 must be 64 hex digits".into()));
    }
    Ok(hash.to_ascii_lowercase())
}

/// The ledger's Authenticate answer for a known token.
pub fn caller_out(token_id: String, caller: &Caller) -> pb::AuthenticateResponse {
    use pb::principal::Kind as K;
    let (kind, account_id, name, access) = match caller {
        Caller::Unchecked => (K::Operator, String::new(), String::new(), Vec::new()),
        Caller::Operator { name } => (K::Operator, String::new(), name.clone(), Vec::new()),
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
            kind: kind.into(),
            account_id,
            name,
        }),
        token_id,
        access,
    }
}

/// The caller an Authenticate answer names; None for an unknown token. An answer that does
/// not read is `Unavailable`: the ledger cannot be trusted with it.
pub fn caller_in(r: pb::AuthenticateResponse) -> Result<Option<Caller>, AuthError> {
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
