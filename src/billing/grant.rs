//! Grants: prepaid sources of payment (plans, package components, coupons, trial credit).
//! A grant is valid in [starts_at_ms, expires_at_ms); outside it, it is never charged.
//! It pays only for usage from when the ledger recorded it (`created_at_ms`) on: an
//! import of a plan bought earlier (`starts_at_ms` in the past) does not reach back to
//! usage that was acknowledged, and so charged elsewhere, before the import. Without this
//! the payer of such usage would depend on whether the import or the usage reached the
//! ledger first, and what a Commit's answer said would not stand (G8).

use rust_decimal::Decimal;

use super::resource::{Resource, ResourceSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantKind {
    Plan,
    Coupon,
    Trial,
}

impl GrantKind {
    pub fn name(self) -> &'static str {
        match self {
            GrantKind::Plan => "PLAN",
            GrantKind::Coupon => "COUPON",
            GrantKind::Trial => "TRIAL",
        }
    }

    pub fn from_name(s: &str) -> Option<GrantKind> {
        [GrantKind::Plan, GrantKind::Coupon, GrantKind::Trial]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// What a grant's quota is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GrantUnit {
    /// Money in the deployment's currency: pays any charge of a covered resource.
    Money,
    /// Gigabytes (10^9 bytes): storage capacity or traffic volume.
    Gigabytes,
}

impl GrantUnit {
    /// The unit as shown to users; money grants show the currency instead.
    pub fn label(self, currency: &str) -> String {
        match self {
            GrantUnit::Money => currency.to_owned(),
            GrantUnit::Gigabytes => "GB".to_owned(),
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            GrantUnit::Money => "money",
            GrantUnit::Gigabytes => "GB",
        }
    }

    pub fn from_code(s: &str) -> Option<GrantUnit> {
        match s {
            "money" => Some(GrantUnit::Money),
            "GB" => Some(GrantUnit::Gigabytes),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    Pending,
    Valid,
    Exhausted,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub grant_id: String,
    pub kind: GrantKind,
    pub covers: ResourceSet,
    pub unit: GrantUnit,
    pub quota: Decimal,
    pub remaining: Decimal,
    pub starts_at_ms: i64,
    pub expires_at_ms: i64,
    /// When the ledger recorded the grant (the purchase or credit was made). Equal to
    /// `starts_at_ms` except for imports; 0 for grants recorded before it was kept.
    pub created_at_ms: i64,
    /// Catalog sku of the plan or package, or "coupon" / "trial".
    pub source: String,
    /// False for grants of which an account may hold only one valid at a time (storage).
    pub stackable: bool,
}

impl Grant {
    /// Valid at `at_ms`: started and not yet expired. Says nothing of the quota left.
    pub fn is_valid_at(&self, at_ms: i64) -> bool {
        self.starts_at_ms <= at_ms && at_ms < self.expires_at_ms
    }

    /// Can pay for usage at `at_ms` (whatever its resource): valid then, and recorded by
    /// then.
    pub fn pays_usage_at(&self, at_ms: i64) -> bool {
        self.is_valid_at(at_ms) && self.created_at_ms <= at_ms
    }

    /// Can pay for `resource` at `at_ms` with money (what a GPU charge draws on).
    pub fn pays_money_for(&self, resource: Resource, at_ms: i64) -> bool {
        self.unit == GrantUnit::Money
            && self.covers.contains(resource)
            && self.pays_usage_at(at_ms)
            && self.remaining > Decimal::ZERO
    }

    pub fn state_at(&self, at_ms: i64) -> GrantState {
        if at_ms >= self.expires_at_ms {
            GrantState::Expired
        } else if at_ms < self.starts_at_ms {
            GrantState::Pending
        } else if self.remaining <= Decimal::ZERO {
            GrantState::Exhausted
        } else {
            GrantState::Valid
        }
    }
}

/// Money the valid grants covering `resource` can still pay at `at_ms`.
pub fn grant_money_for(grants: &[Grant], resource: Resource, at_ms: i64) -> Decimal {
    grants
        .iter()
        .filter(|g| g.pays_money_for(resource, at_ms))
        .map(|g| g.remaining)
        .sum()
}

#[cfg(test)]
pub(crate) fn money_grant(id: &str, remaining: i64, starts: i64, expires: i64) -> Grant {
    Grant {
        grant_id: id.to_owned(),
        kind: GrantKind::Plan,
        covers: ResourceSet::COMPUTE,
        unit: GrantUnit::Money,
        quota: Decimal::from(remaining),
        remaining: Decimal::from(remaining),
        starts_at_ms: starts,
        expires_at_ms: expires,
        created_at_ms: starts,
        source: "test".to_owned(),
        stackable: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_window_is_half_open() {
        let g = money_grant("g", 5, 100, 200);
        assert!(!g.is_valid_at(99));
        assert!(g.is_valid_at(100));
        assert!(g.is_valid_at(199));
        assert!(!g.is_valid_at(200));
        assert_eq!(g.state_at(50), GrantState::Pending);
        assert_eq!(g.state_at(150), GrantState::Valid);
        assert_eq!(g.state_at(200), GrantState::Expired);
    }

    #[test]
    fn an_import_pays_from_its_recording_on() {
        // Bought at 100 (imported), recorded at 150.
        let mut g = money_grant("g", 5, 100, 200);
        g.created_at_ms = 150;
        assert!(g.is_valid_at(120));
        assert!(!g.pays_usage_at(120));
        assert!(!g.pays_money_for(Resource::GpuShared, 149));
        assert!(g.pays_money_for(Resource::GpuShared, 150));
        assert!(!g.pays_usage_at(200));
    }

    #[test]
    fn exhausted_and_non_covering_grants_pay_nothing() {
        let mut g = money_grant("g", 5, 0, 200);
        assert!(!g.pays_money_for(Resource::Storage, 10));
        g.remaining = Decimal::ZERO;
        assert!(!g.pays_money_for(Resource::GpuShared, 10));
        assert_eq!(g.state_at(10), GrantState::Exhausted);
        assert_eq!(
            grant_money_for(&[g], Resource::GpuShared, 10),
            Decimal::ZERO
        );
    }
}
