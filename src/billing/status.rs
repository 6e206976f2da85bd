//! Account status (R6), evaluated per resource at every admission, and the admission
//! decision built on it. The four deduction scenarios of the billing FAQ:
//! 1. balance < 0: OVERDUE, nothing is admitted whatever grants remain;
//! 2. no usable grant and balance == 0: NO_ENTITLEMENT;
//! 3. grants and balance >= 0: charged to grants first;
//! 4. no grants and balance > 0: charged to the balance.

use super::grant::{Grant, grant_money_for};
use super::money::Money;
use super::resource::Resource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    Overdue,
    NoEntitlement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    Overdue,
    NoEntitlement,
    InsufficientFunds,
    LedgerUnavailable,
}

impl DenyReason {
    pub fn name(self) -> &'static str {
        match self {
            DenyReason::Overdue => "OVERDUE",
            DenyReason::NoEntitlement => "NO_ENTITLEMENT",
            DenyReason::InsufficientFunds => "INSUFFICIENT_FUNDS",
            DenyReason::LedgerUnavailable => "LEDGER_UNAVAILABLE",
        }
    }
}

/// An account as GetBalance shows it.
#[derive(Debug, Clone)]
pub struct BalanceView {
    pub account_id: String,
    pub status: AccountStatus,
    pub balance: Money,
    /// What it can still pay for GPU work now, less what is held (or leased out).
    pub available: Money,
    /// Open holds (in a sidecar) or leases set aside for sidecars (at the ledger).
    pub held: Money,
    pub grants: Vec<Grant>,
    pub now_ms: i64,
}

/// Status of the account for `resource` (None: for any resource, as GetBalance shows it).
pub fn account_status(
    balance: Money,
    grants: &[Grant],
    resource: Option<Resource>,
    at_ms: i64,
) -> AccountStatus {
    if balance.is_negative() {
        return AccountStatus::Overdue;
    }
    let has_grant = match resource {
        Some(r) => {
            grant_money_for(grants, r, at_ms) > rust_decimal::Decimal::ZERO
                || grants
                    .iter()
                    .any(|g| super::usage::covers_volume(g, r, at_ms))
        }
        None => grants
            .iter()
            .any(|g| g.is_valid_at(at_ms) && !g.remaining.is_zero()),
    };
    if !has_grant && balance.is_zero() {
        return AccountStatus::NoEntitlement;
    }
    AccountStatus::Active
}

/// What the account can still pay for `resource` at `at_ms`: money grants covering it plus a
/// non-negative balance, less `held` (open holds).
pub fn available_for(
    balance: Money,
    grants: &[Grant],
    held: Money,
    resource: Resource,
    at_ms: i64,
) -> Money {
    Money::from_decimal(grant_money_for(grants, resource, at_ms)) + balance.non_negative() - held
}

/// Decides whether `cost` of `resource` may be admitted now. Ok carries what is available
/// before admitting; Err the reason to deny.
pub fn admit(
    balance: Money,
    grants: &[Grant],
    held: Money,
    resource: Resource,
    cost: Money,
    at_ms: i64,
) -> Result<Money, DenyReason> {
    match account_status(balance, grants, Some(resource), at_ms) {
        AccountStatus::Overdue => return Err(DenyReason::Overdue),
        // Requests inside the month's free tier cost nothing: they need no plan or balance
        // (an overdue account is still refused them, above).
        AccountStatus::NoEntitlement
            if cost.is_zero()
                && matches!(resource, Resource::RequestPut | Resource::RequestGet) => {}
        AccountStatus::NoEntitlement => return Err(DenyReason::NoEntitlement),
        AccountStatus::Active => {}
    }
    let available = available_for(balance, grants, held, resource, at_ms);
    if cost > available {
        return Err(DenyReason::InsufficientFunds);
    }
    Ok(available)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::grant::money_grant;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    #[test]
    fn scenario_1_overdue_denies_whatever_grants_remain() {
        let grants = vec![money_grant("g", 100, 0, 1_000)];
        assert_eq!(
            admit(
                m("-0.01"),
                &grants,
                Money::ZERO,
                Resource::GpuShared,
                m("1"),
                10
            ),
            Err(DenyReason::Overdue)
        );
    }

    #[test]
    fn scenario_2_no_grants_zero_balance_is_no_entitlement() {
        assert_eq!(
            admit(
                Money::ZERO,
                &[],
                Money::ZERO,
                Resource::GpuShared,
                m("1"),
                10
            ),
            Err(DenyReason::NoEntitlement)
        );
        // A grant that does not cover the resource does not count.
        let mut g = money_grant("s", 100, 0, 1_000);
        g.covers = crate::billing::ResourceSet::of(Resource::Storage);
        assert_eq!(
            account_status(Money::ZERO, &[g], Some(Resource::GpuShared), 10),
            AccountStatus::NoEntitlement
        );
    }

    #[test]
    fn scenarios_3_and_4_are_active() {
        let grants = vec![money_grant("g", 5, 0, 1_000)];
        assert_eq!(
            admit(
                Money::ZERO,
                &grants,
                Money::ZERO,
                Resource::GpuShared,
                m("5"),
                10
            ),
            Ok(m("5"))
        );
        assert_eq!(
            admit(m("2"), &[], Money::ZERO, Resource::GpuShared, m("2"), 10),
            Ok(m("2"))
        );
        assert_eq!(
            admit(m("2"), &[], m("1"), Resource::GpuShared, m("2"), 10),
            Err(DenyReason::InsufficientFunds)
        );
    }
}
