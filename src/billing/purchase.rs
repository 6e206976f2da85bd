//! Purchase rules (R4, R5): a plan takes effect on purchase (or at the given past time, for
//! an import), is valid for its catalog validity (one year), never renews, and its unused
//! quota is void at expiry; once-per-account offers (the starter) sell once; a grant that
//! is not stackable (storage capacity) is refused while one of its kind is still valid.

use chrono::{DateTime, Months};

use super::catalog::Offer;
use super::grant::{Grant, GrantKind};
use super::money::Money;

/// The account facts a purchase decision needs.
pub struct PurchaseContext<'a> {
    pub grants: &'a [Grant],
    /// Skus of once-per-account offers this account has already bought.
    pub once_skus_bought: &'a [String],
    pub now_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PurchaseError {
    #[error("{sku} can be bought only once per account, and this account already bought it")]
    OncePerAccount { sku: String },
    #[error(
        "{sku} is not stackable: grant {existing} of the same kind is valid until {expires_at_ms} ms; buy again after it expires"
    )]
    NotStackable {
        sku: String,
        existing: String,
        expires_at_ms: i64,
    },
    #[error(
        "effective_at_ms {effective_at_ms} is in the future (now is {now_ms}); purchases take effect now or import a past one"
    )]
    EffectiveInFuture { effective_at_ms: i64, now_ms: i64 },
    #[error("effective_at_ms {0} is not a valid time")]
    BadTime(i64),
}

/// The outcome of an accepted purchase: the grants to create and the price recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchasePlan {
    pub grants: Vec<Grant>,
    pub price_paid: Money,
    pub effective_at_ms: i64,
}

/// Grant id of the n-th grant (from 1) of a purchase. Client-chosen grant ids cannot contain
/// '/', so these never collide with coupon or trial ids.
pub fn purchase_grant_id(purchase_id: &str, n: usize) -> String {
    format!("{purchase_id}/{n}")
}

/// `at_ms` plus `months` calendar months in UTC (a year from Feb 29 ends on Feb 28).
pub fn add_months_ms(at_ms: i64, months: u32) -> Option<i64> {
    let t = DateTime::from_timestamp_millis(at_ms)?;
    Some(
        t.checked_add_months(Months::new(months))?
            .timestamp_millis(),
    )
}

/// Decides a purchase of `offer`; `effective_at_ms` 0 means now.
pub fn plan_purchase(
    offer: &Offer,
    ctx: &PurchaseContext<'_>,
    purchase_id: &str,
    effective_at_ms: i64,
) -> Result<PurchasePlan, PurchaseError> {
    let effective = if effective_at_ms == 0 {
        ctx.now_ms
    } else {
        effective_at_ms
    };
    if effective > ctx.now_ms {
        return Err(PurchaseError::EffectiveInFuture {
            effective_at_ms: effective,
            now_ms: ctx.now_ms,
        });
    }
    let expires =
        add_months_ms(effective, offer.validity_months).ok_or(PurchaseError::BadTime(effective))?;
    if effective < 0 {
        return Err(PurchaseError::BadTime(effective));
    }
    if offer.once_per_account && ctx.once_skus_bought.iter().any(|s| s == &offer.sku) {
        return Err(PurchaseError::OncePerAccount {
            sku: offer.sku.clone(),
        });
    }
    // An import that is already void cannot conflict with anything valid. A grant that
    // has not expired conflicts even if it has not started by `now_ms`: it will be valid
    // (a ledger process whose clock is behind the one that sold it must not sell another).
    let will_be_valid = ctx.now_ms < expires;
    if will_be_valid {
        for og in offer.grants.iter().filter(|g| !g.stackable) {
            if let Some(existing) = ctx.grants.iter().find(|g| {
                !g.stackable
                    && g.covers.bits() & og.covers.bits() != 0
                    && ctx.now_ms < g.expires_at_ms
            }) {
                return Err(PurchaseError::NotStackable {
                    sku: offer.sku.clone(),
                    existing: existing.grant_id.clone(),
                    expires_at_ms: existing.expires_at_ms,
                });
            }
        }
    }
    let grants = offer
        .grants
        .iter()
        .enumerate()
        .map(|(i, og)| Grant {
            grant_id: purchase_grant_id(purchase_id, i + 1),
            kind: GrantKind::Plan,
            covers: og.covers,
            unit: og.unit,
            quota: og.amount,
            remaining: og.amount,
            starts_at_ms: effective,
            expires_at_ms: expires,
            created_at_ms: ctx.now_ms,
            source: offer.sku.clone(),
            stackable: og.stackable,
        })
        .collect();
    Ok(PurchasePlan {
        grants,
        price_paid: offer.price,
        effective_at_ms: effective,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::catalog::Catalog;
    use crate::billing::grant::GrantState;

    const NOW: i64 = 1_795_000_000_000; // 2026-11-18

    fn ctx<'a>(grants: &'a [Grant], once: &'a [String]) -> PurchaseContext<'a> {
        PurchaseContext {
            grants,
            once_skus_bought: once,
            now_ms: NOW,
        }
    }

    #[test]
    fn plan_is_valid_one_calendar_year_from_purchase() {
        let c = Catalog::default_catalog().unwrap();
        let p = plan_purchase(
            c.offer("plan.compute.500").unwrap(),
            &ctx(&[], &[]),
            "p1",
            0,
        )
        .unwrap();
        assert_eq!(p.grants.len(), 1);
        let g = &p.grants[0];
        assert_eq!(g.grant_id, "p1/1");
        assert_eq!(g.starts_at_ms, NOW);
        assert_eq!(g.expires_at_ms, add_months_ms(NOW, 12).unwrap());
        // 2026-11-18 + 1 year spans no Feb 29: exactly 365 days.
        assert_eq!(g.expires_at_ms - NOW, 365 * 86_400_000);
        assert_eq!(p.price_paid, Money::parse("450").unwrap());
    }

    #[test]
    fn leap_day_plus_a_year_is_feb_28() {
        let feb29 = DateTime::parse_from_rfc3339("2028-02-29T12:00:00Z")
            .unwrap()
            .timestamp_millis();
        let end = DateTime::parse_from_rfc3339("2029-02-28T12:00:00Z")
            .unwrap()
            .timestamp_millis();
        assert_eq!(add_months_ms(feb29, 12), Some(end));
    }

    #[test]
    fn starter_sells_once() {
        let c = Catalog::default_catalog().unwrap();
        let starter = c.offer("plan.compute.starter").unwrap();
        assert!(plan_purchase(starter, &ctx(&[], &[]), "p1", 0).is_ok());
        let bought = vec!["plan.compute.starter".to_owned()];
        assert!(matches!(
            plan_purchase(starter, &ctx(&[], &bought), "p2", 0),
            Err(PurchaseError::OncePerAccount { .. })
        ));
    }

    #[test]
    fn storage_does_not_stack_traffic_does() {
        let c = Catalog::default_catalog().unwrap();
        let storage = c.offer("plan.storage.100gb").unwrap();
        let first = plan_purchase(storage, &ctx(&[], &[]), "s1", 0)
            .unwrap()
            .grants;
        let e = plan_purchase(storage, &ctx(&first, &[]), "s2", 0).unwrap_err();
        assert!(
            matches!(e, PurchaseError::NotStackable { ref existing, .. } if existing == "s1/1")
        );
        // A package's storage component follows the same rule.
        let basic = c.offer("package.basic").unwrap();
        assert!(plan_purchase(basic, &ctx(&first, &[]), "b1", 0).is_err());
        // A plan that starts a moment after this ledger's "now" (sold by a ledger process
        // whose clock is ahead) is as good as valid.
        let ahead = PurchaseContext {
            grants: &first,
            once_skus_bought: &[],
            now_ms: NOW - 5,
        };
        assert!(plan_purchase(storage, &ahead, "s4", 0).is_err());
        // Once the first expired, a new one is accepted.
        let later = PurchaseContext {
            grants: &first,
            once_skus_bought: &[],
            now_ms: first[0].expires_at_ms,
        };
        assert!(plan_purchase(storage, &later, "s3", 0).is_ok());

        let traffic = c.offer("plan.traffic.100gb").unwrap();
        let t1 = plan_purchase(traffic, &ctx(&[], &[]), "t1", 0)
            .unwrap()
            .grants;
        assert!(plan_purchase(traffic, &ctx(&t1, &[]), "t2", 0).is_ok());
    }

    #[test]
    fn imports_and_future_dates() {
        let c = Catalog::default_catalog().unwrap();
        let offer = c.offer("plan.compute.500").unwrap();
        let old = NOW - 366 * 86_400_000;
        let void = plan_purchase(offer, &ctx(&[], &[]), "old", old).unwrap();
        assert_eq!(void.grants[0].state_at(NOW), GrantState::Expired);
        let recent = NOW - 30 * 86_400_000;
        let ok = plan_purchase(offer, &ctx(&[], &[]), "recent", recent).unwrap();
        assert_eq!(ok.grants[0].state_at(NOW), GrantState::Valid);
        // Valid from its purchase, paying from its import on.
        assert_eq!(ok.grants[0].starts_at_ms, recent);
        assert_eq!(ok.grants[0].created_at_ms, NOW);
        assert!(matches!(
            plan_purchase(offer, &ctx(&[], &[]), "f", NOW + 1),
            Err(PurchaseError::EffectiveInFuture { .. })
        ));
        assert!(matches!(
            plan_purchase(offer, &ctx(&[], &[]), "n", -5),
            Err(PurchaseError::BadTime(-5))
        ));
    }
}
