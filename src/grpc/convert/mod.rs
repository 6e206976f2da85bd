//! Every conversion between wire messages and quotad's values, for all three services:
//! request validation (ids, amounts, resources, quantities) and the values every service
//! shares (money, resources, grants) here; each service's own messages in `quota`, `admin`
//! and `ledger`. Adapters call these and nothing else touches a `pb` field, so the wire
//! format is read and written in this one module. Nothing here decides anything about
//! billing.

mod admin;
mod ledger;
mod quota;
mod webhooks;

pub use admin::{
    access_out, catalog_out, list_limit, principal_in, statement_entry_out, token_info_out,
};
pub use ledger::{
    caller_in, caller_out, sync_request_in, sync_request_out, sync_response_in, sync_response_out,
    token_hash_in,
};
pub use quota::{
    accruals_out, balance_out, decision_label, decision_out, event_out, events_dropped, names_work,
    reserve_in, session_out, session_outcome, start_session_in, storage_level_in, work_key,
    work_out,
};
pub use webhooks::{queued_events_in, queued_events_out, webhook_out};

use crate::billing::{
    Deduction, Grant, GrantKind, GrantState, GrantUnit, Money, Resource, ResourceSet,
};
use crate::pb;

use super::error::Invalid;

/// Longest id (account, reservation, top-up, purchase, grant) accepted.
pub const ID_LEN_MAX: usize = 128;

/// Characters ids may use. '/' is left out: purchase grant ids use it (`purchase/1`).
fn id_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@')
}

/// The start of a value for an error message, so a megabyte of junk is not echoed back.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    format!("{out:?}")
}

pub fn id<'a>(field: &str, s: &'a str) -> Result<&'a str, Invalid> {
    if s.is_empty() {
        return Err(Invalid(format!("{field} is required")));
    }
    if s.len() > ID_LEN_MAX {
        return Err(Invalid(format!(
            "{field} is {} bytes long; the maximum is {ID_LEN_MAX}",
            s.len()
        )));
    }
    if !s.bytes().all(id_char_ok) {
        return Err(Invalid(format!(
            "{field} {} may only contain letters, digits and . _ - : @",
            shown(s)
        )));
    }
    Ok(s)
}

/// A usage id from a sidecar: a client id, or one quotad derives with '/' (storage hours:
/// `storage/ACCOUNT/HOUR_START_MS`), which no client id can contain.
pub fn usage_id(s: &str) -> Result<&str, Invalid> {
    for part in s.split('/') {
        id("usage_id", part)?;
    }
    if s.len() > 3 * ID_LEN_MAX {
        return Err(Invalid(format!("usage_id is {} bytes long", s.len())));
    }
    Ok(s)
}

pub fn sku(s: &str) -> Result<&str, Invalid> {
    if s.is_empty() {
        return Err(Invalid("sku is required (see GetCatalog)".into()));
    }
    if s.len() > 64 {
        return Err(Invalid(format!("sku {} is longer than 64 bytes", shown(s))));
    }
    Ok(s)
}

pub fn resource(field: &str, v: i32) -> Result<Resource, Invalid> {
    match pb::Resource::try_from(v) {
        Ok(pb::Resource::Unspecified) => Err(Invalid(format!("{field} is required"))),
        Ok(r) => {
            Ok(from_pb_resource(r).ok_or_else(|| Invalid(format!("{field} {v} is not valid")))?)
        }
        Err(_) => Err(Invalid(format!("{field} {v} is not a known Resource"))),
    }
}

/// A resource that Reserve and Admit meter by quantity in this version.
pub fn metered_resource(v: i32) -> Result<Resource, Invalid> {
    let r = resource("resource", v)?;
    match r {
        Resource::GpuShared
        | Resource::GpuExclusive
        | Resource::Traffic
        | Resource::RequestPut
        | Resource::RequestGet => Ok(r),
        Resource::Storage => Err(Invalid(
            "STORAGE is billed from stored levels (ReportStorage), not reserved".into(),
        )),
    }
}

pub fn quantity(v: i64, zero_ok: bool) -> Result<u64, Invalid> {
    match u64::try_from(v) {
        Ok(q) if q > 0 || zero_ok => Ok(q),
        _ => {
            let want = if zero_ok {
                "zero or more"
            } else {
                "greater than zero"
            };
            Err(Invalid(format!("quantity {v} must be {want}")))
        }
    }
}

pub fn from_pb_resource(r: pb::Resource) -> Option<Resource> {
    Some(match r {
        pb::Resource::Unspecified => return None,
        pb::Resource::GpuShared => Resource::GpuShared,
        pb::Resource::GpuExclusive => Resource::GpuExclusive,
        pb::Resource::Storage => Resource::Storage,
        pb::Resource::Traffic => Resource::Traffic,
        pb::Resource::RequestPut => Resource::RequestPut,
        pb::Resource::RequestGet => Resource::RequestGet,
    })
}

pub fn to_pb_resource(r: Resource) -> pb::Resource {
    match r {
        Resource::GpuShared => pb::Resource::GpuShared,
        Resource::GpuExclusive => pb::Resource::GpuExclusive,
        Resource::Storage => pb::Resource::Storage,
        Resource::Traffic => pb::Resource::Traffic,
        Resource::RequestPut => pb::Resource::RequestPut,
        Resource::RequestGet => pb::Resource::RequestGet,
    }
}

/// Converts money to the wire in the deployment's currency.
pub fn money_out(currency: &str, m: Money) -> Option<pb::Money> {
    Some(pb::Money {
        currency: currency.to_owned(),
        amount: m.to_plain_string(),
    })
}

/// Reads an amount of money; an empty currency means the deployment's.
pub fn money_in(field: &str, currency: &str, m: Option<&pb::Money>) -> Result<Money, Invalid> {
    let m = m.ok_or_else(|| Invalid(format!("{field} is required")))?;
    if !m.currency.is_empty() && m.currency != currency {
        return Err(Invalid(format!(
            "{field} currency {} is not this deployment's currency {currency}",
            shown(&m.currency)
        )));
    }
    Money::parse(&m.amount).map_err(|e| Invalid(format!("{field}: {e}")))
}

pub fn deny_reason(r: Option<crate::billing::DenyReason>) -> i32 {
    use crate::billing::DenyReason as D;
    i32::from(match r {
        None => pb::DenyReason::Unspecified,
        Some(D::Overdue) => pb::DenyReason::Overdue,
        Some(D::NoEntitlement) => pb::DenyReason::NoEntitlement,
        Some(D::InsufficientFunds) => pb::DenyReason::InsufficientFunds,
        Some(D::LedgerUnavailable) => pb::DenyReason::LedgerUnavailable,
    })
}

pub fn grant_kind_out(k: GrantKind) -> pb::grant::Kind {
    match k {
        GrantKind::Plan => pb::grant::Kind::Plan,
        GrantKind::Coupon => pb::grant::Kind::Coupon,
        GrantKind::Trial => pb::grant::Kind::Trial,
    }
}

pub fn grant_out(currency: &str, g: &Grant, now_ms: i64) -> pb::Grant {
    let state = match g.state_at(now_ms) {
        GrantState::Valid => pb::grant::State::Valid,
        GrantState::Pending => pb::grant::State::Pending,
        GrantState::Expired => pb::grant::State::Expired,
        GrantState::Exhausted => pb::grant::State::Exhausted,
    };
    let covers: Vec<i32> = if g.covers.is_any() {
        Vec::new()
    } else {
        g.covers.iter().map(|r| to_pb_resource(r).into()).collect()
    };
    let resource = match g.covers.single() {
        Some(r) if !g.covers.is_any() => to_pb_resource(r),
        _ => pb::Resource::Unspecified,
    };
    pb::Grant {
        grant_id: g.grant_id.clone(),
        kind: grant_kind_out(g.kind).into(),
        resource: resource.into(),
        quota: g.quota.normalize().to_string(),
        remaining: g.remaining.normalize().to_string(),
        unit: g.unit.label(currency),
        starts_at_ms: g.starts_at_ms,
        expires_at_ms: g.expires_at_ms,
        source: g.source.clone(),
        covers,
        state: state.into(),
        stackable: g.stackable,
        created_at_ms: g.created_at_ms,
    }
}

/// A statement's deduction: its money, and for a volume plan the GB it gave.
pub fn deduction_out(currency: &str, d: &Deduction) -> pb::Deduction {
    pb::Deduction {
        source: d.source.label().to_owned(),
        amount: money_out(currency, d.amount),
        gb: d
            .gb
            .map(|gb| gb.normalize().to_string())
            .unwrap_or_default(),
    }
}

/// A grant back from the wire (ledger to sidecar). `unit` is "GB" or the currency.
pub fn grant_in(g: &pb::Grant) -> Result<Grant, Invalid> {
    let kind = match pb::grant::Kind::try_from(g.kind) {
        Ok(pb::grant::Kind::Plan) => GrantKind::Plan,
        Ok(pb::grant::Kind::Coupon) => GrantKind::Coupon,
        Ok(pb::grant::Kind::Trial) => GrantKind::Trial,
        _ => {
            return Err(Invalid(format!(
                "grant {} has no valid kind",
                shown(&g.grant_id)
            )));
        }
    };
    let covers = if g.covers.is_empty() {
        ResourceSet::ANY
    } else {
        g.covers
            .iter()
            .map(|r| resource("covers", *r))
            .collect::<Result<ResourceSet, _>>()?
    };
    let dec = |field: &str, v: &str| {
        v.parse::<rust_decimal::Decimal>().map_err(|_| {
            Invalid(format!(
                "grant {} {field} {} is not a decimal",
                shown(&g.grant_id),
                shown(v)
            ))
        })
    };
    Ok(Grant {
        grant_id: g.grant_id.clone(),
        kind,
        covers,
        unit: if g.unit == "GB" {
            GrantUnit::Gigabytes
        } else {
            GrantUnit::Money
        },
        quota: dec("quota", &g.quota)?,
        remaining: dec("remaining", &g.remaining)?,
        starts_at_ms: g.starts_at_ms,
        expires_at_ms: g.expires_at_ms,
        created_at_ms: g.created_at_ms,
        source: g.source.clone(),
        stackable: g.stackable,
    })
}

/// What a GrantCredit's `resource` covers: one resource, or any.
pub fn covers_in(v: i32) -> Result<ResourceSet, Invalid> {
    match pb::Resource::try_from(v) {
        Ok(pb::Resource::Unspecified) => Ok(ResourceSet::ANY),
        Ok(r) => {
            Ok(ResourceSet::of(from_pb_resource(r).ok_or_else(|| {
                Invalid(format!("resource {v} is not valid"))
            })?))
        }
        Err(_) => Err(Invalid(format!("resource {v} is not a known Resource"))),
    }
}

/// A grant kind GrantCredit may create: COUPON or TRIAL (plans come from Purchase).
pub fn credit_kind_in(v: i32) -> Result<GrantKind, Invalid> {
    match pb::grant::Kind::try_from(v) {
        Ok(pb::grant::Kind::Coupon) => Ok(GrantKind::Coupon),
        Ok(pb::grant::Kind::Trial) => Ok(GrantKind::Trial),
        Ok(pb::grant::Kind::Plan) => Err(Invalid(
            "kind PLAN is created by Purchase; GrantCredit takes COUPON or TRIAL".into(),
        )),
        _ => Err(Invalid(format!("kind {v} must be COUPON or TRIAL"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_with_their_value() {
        assert!(id("account_id", "acme-1").is_ok());
        assert!(id("account_id", "").unwrap_err().0.contains("required"));
        assert!(
            id("account_id", &"x".repeat(129))
                .unwrap_err()
                .0
                .contains("129 bytes")
        );
        let e = id("account_id", "a b").unwrap_err().0;
        assert!(e.contains("\"a b\""), "{e}");
        assert!(id("grant_id", "p1/1").is_err());
    }

    #[test]
    fn money_needs_the_deployment_currency() {
        let m = pb::Money {
            currency: "USD".into(),
            amount: "1".into(),
        };
        assert!(money_in("amount", "CNY", Some(&m)).is_err());
        let m = pb::Money {
            currency: "".into(),
            amount: "1.5".into(),
        };
        assert_eq!(
            money_in("amount", "CNY", Some(&m)).unwrap().to_string(),
            "1.5"
        );
        assert!(money_in("amount", "CNY", None).is_err());
    }

    #[test]
    fn resources_and_quantities() {
        assert!(resource("resource", 0).is_err());
        assert!(resource("resource", 99).is_err());
        assert_eq!(resource("resource", 1).unwrap(), Resource::GpuShared);
        for (v, r) in [
            (4, Resource::Traffic),
            (5, Resource::RequestPut),
            (6, Resource::RequestGet),
        ] {
            assert_eq!(metered_resource(v).unwrap(), r);
        }
        assert_eq!(
            usage_id("storage/acme/3600000").unwrap(),
            "storage/acme/3600000"
        );
        assert!(usage_id("storage//1").is_err());
        assert!(usage_id("a b").is_err());
        assert!(metered_resource(3).unwrap_err().0.contains("ReportStorage"));
        assert!(quantity(-1, true).is_err());
        assert!(quantity(0, false).is_err());
        assert_eq!(quantity(0, true).unwrap(), 0);
    }

    mod fuzz {
        //! Request validation under arbitrary input: never a panic, always a verdict that
        //! names the field and never echoes more than a short prefix of the value.
        use super::*;
        use proptest::prelude::*;

        /// Longest error message: the field, a 40-character excerpt and the rule.
        const MESSAGE_MAX: usize = 400;

        fn any_text() -> impl Strategy<Value = String> {
            prop_oneof![
                "\\PC{0,300}",
                "[a-zA-Z0-9._:@-]{0,140}",
                "[0-9.eE+-]{0,40}",
                Just("x".repeat(100_000)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn ids(s in any_text()) {
                match id("account_id", &s) {
                    Ok(v) => {
                        prop_assert_eq!(v, s.as_str());
                        prop_assert!(!s.is_empty() && s.len() <= ID_LEN_MAX);
                        prop_assert!(s.bytes().all(id_char_ok));
                    }
                    Err(Invalid(m)) => {
                        prop_assert!(m.contains("account_id"), "{}", m);
                        prop_assert!(m.len() <= MESSAGE_MAX, "{}", m.len());
                    }
                }
                if let Err(Invalid(m)) = sku(&s) {
                    prop_assert!(m.contains("sku") && m.len() <= MESSAGE_MAX, "{}", m);
                }
            }

            #[test]
            fn amounts(amount in any_text(), currency in "[A-Z]{0,4}|\\PC{0,8}") {
                let m = pb::Money { currency, amount };
                match money_in("amount", "CNY", Some(&m)) {
                    Ok(v) => {
                        // What was accepted reads back as itself.
                        prop_assert_eq!(Money::parse(&v.to_string()), Ok(v));
                    }
                    Err(Invalid(e)) => {
                        prop_assert!(e.contains("amount"), "{}", e);
                        prop_assert!(e.len() <= MESSAGE_MAX, "{}", e.len());
                    }
                }
            }

            #[test]
            fn enums_and_quantities(v in any::<i32>(), q in any::<i64>(), zero_ok in any::<bool>()) {
                let _ = resource("resource", v);
                let _ = covers_in(v);
                if let Err(Invalid(m)) = metered_resource(v) {
                    prop_assert!(m.contains("resource") || m.contains("STORAGE"), "{}", m);
                }
                match quantity(q, zero_ok) {
                    Ok(n) => prop_assert!(q > 0 || (zero_ok && q == 0) && n == 0),
                    Err(Invalid(m)) => prop_assert!(m.contains("quantity")),
                }
            }

            #[test]
            fn grants_from_the_wire(
                grant_id in any_text(),
                kind in any::<i32>(),
                covers in proptest::collection::vec(any::<i32>(), 0..4),
                quota in any_text(),
                remaining in any_text(),
                unit in "GB|CNY|\\PC{0,4}",
            ) {
                let g = pb::Grant {
                    grant_id,
                    kind,
                    covers,
                    quota,
                    remaining,
                    unit,
                    ..Default::default()
                };
                if let Err(Invalid(m)) = grant_in(&g) {
                    prop_assert!(m.len() <= MESSAGE_MAX, "{}", m.len());
                }
            }
        }
    }
}
