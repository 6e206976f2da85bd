//! The Admin service's messages: statement entries, the catalog, token principals and
//! sub-users' access.

use super::{deduction_out, id, money_out, to_pb_resource};
use crate::auth::{Kind, Perms};
use crate::billing::catalog::Catalog;
use crate::billing::{OfferKind, ResourceSet};
use crate::grpc::error::Invalid;
use crate::ledger::StatementEntry;
use crate::ledger::store::TokenRow;
use crate::pb;

pub fn statement_entry_out(currency: &str, e: StatementEntry) -> pb::StatementEntry {
    pb::StatementEntry {
        usage_id: e.usage_id,
        resource: to_pb_resource(e.resource).into(),
        sku: e.sku,
        quantity: i64::try_from(e.quantity).unwrap_or(i64::MAX),
        cost: money_out(currency, e.cost),
        deductions: e
            .deductions
            .iter()
            .map(|d| deduction_out(currency, d))
            .collect(),
        at_ms: e.at_ms,
        free_quantity: i64::try_from(e.free_quantity).unwrap_or(i64::MAX),
    }
}

/// Every sku of the catalog: prices, then plans and packages.
pub fn catalog_out(c: &Catalog) -> pb::Catalog {
    let prices = c.prices.values().map(|p| pb::Sku {
        id: p.sku.clone(),
        resource: to_pb_resource(p.resource).into(),
        kind: pb::sku::Kind::Price.into(),
        unit_price: money_out(&c.currency, p.unit_price),
        unit: p.unit().name().to_owned(),
        description: p.description.clone(),
    });
    let offers = c.offers.values().map(|o| {
        let covers: ResourceSet = o.grants.iter().flat_map(|g| g.covers.iter()).collect();
        let kind = match o.kind {
            OfferKind::Plan => pb::sku::Kind::Plan,
            OfferKind::Package => pb::sku::Kind::Package,
        };
        pb::Sku {
            id: o.sku.clone(),
            resource: covers
                .single()
                .map_or(pb::Resource::Unspecified, to_pb_resource)
                .into(),
            kind: kind.into(),
            unit_price: money_out(&c.currency, o.price),
            unit: "purchase".to_owned(),
            description: o.description.clone(),
        }
    });
    pb::Catalog {
        skus: prices.chain(offers).collect(),
    }
}

/// Whom CreateToken makes a token for: (kind, account id, name). An owner's name is its
/// account; the other kinds have a name and no account.
pub fn principal_in(p: &pb::Principal) -> Result<(Kind, String, String), Invalid> {
    let named = |kind| {
        Ok((
            kind,
            String::new(),
            id("principal.name", &p.name)?.to_owned(),
        ))
    };
    match pb::principal::Kind::try_from(p.kind) {
        Ok(pb::principal::Kind::Owner) => {
            let account_id = id("principal.account_id", &p.account_id)?;
            Ok((Kind::Owner, account_id.to_owned(), account_id.to_owned()))
        }
        Ok(pb::principal::Kind::SubUser) => named(Kind::SubUser),
        Ok(pb::principal::Kind::Sidecar) => named(Kind::Sidecar),
        Ok(pb::principal::Kind::Proxy) => named(Kind::Proxy),
        Ok(pb::principal::Kind::Operator) => named(Kind::Operator),
        _ => Err(Invalid(format!(
            "principal.kind {} must be OPERATOR, OWNER, SUB_USER, SIDECAR or PROXY",
            p.kind
        ))),
    }
}

/// A listed token: its id and principal, never its hash.
pub fn token_info_out(t: &TokenRow) -> pb::TokenInfo {
    use pb::principal::Kind as K;
    let kind = match Kind::from_name(&t.kind) {
        Some(Kind::Operator) => K::Operator,
        Some(Kind::Owner) => K::Owner,
        Some(Kind::SubUser) => K::SubUser,
        Some(Kind::Sidecar) => K::Sidecar,
        Some(Kind::Proxy) => K::Proxy,
        None => K::Unspecified,
    };
    pb::TokenInfo {
        token_id: t.token_id.clone(),
        principal: Some(pb::Principal {
            kind: kind.into(),
            account_id: t.account_id.clone(),
            name: t.name.clone(),
        }),
        created_at_ms: t.created_at_ms,
        revoked_at_ms: t.revoked_at_ms.unwrap_or(0),
    }
}

/// A listing's `limit`: 0 or past `max` is `max`; one more row is read to tell `more`.
pub fn list_limit(limit: u32, max: usize) -> usize {
    match usize::try_from(limit) {
        Ok(0) | Err(_) => max,
        Ok(n) => n.min(max),
    }
}

pub fn access_out(account_id: &str, sub_user: &str, bits: u8) -> pb::AccessResponse {
    pb::AccessResponse {
        account_id: account_id.to_owned(),
        sub_user: sub_user.to_owned(),
        permissions: Perms(bits).names(),
    }
}
