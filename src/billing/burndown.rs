//! Burn-down (R2, R3): a charge is paid first by the grants that cover it, earliest expiry
//! first and, on equal expiry, lowest grant id first (a deterministic pick among the
//! "random" choices the billing rules allow); whatever they do not cover is taken from the
//! balance, which may go below zero (the usage happened; the account becomes OVERDUE).
//!
//! The same function runs in the sidecar (for its live view) and in the ledger (for the
//! authoritative record), so both agree to the last digit.

use rust_decimal::Decimal;

use super::grant::Grant;
use super::money::Money;
use super::resource::Resource;

/// Where a part of a charge was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Grant(String),
    Balance,
    /// The month's free requests (see `free_tier`): the part of the list cost no one pays.
    FreeTier,
}

/// The label of `Source::FreeTier` in statements; no grant may have it as its id.
pub const FREE_TIER_LABEL: &str = "free_tier";

impl Source {
    /// The label statements show: a grant id, "balance" or "free_tier".
    pub fn label(&self) -> &str {
        match self {
            Source::Grant(id) => id,
            Source::Balance => "balance",
            Source::FreeTier => FREE_TIER_LABEL,
        }
    }

    /// The source a statement label names.
    pub fn from_label(label: &str) -> Source {
        match label {
            "balance" => Source::Balance,
            FREE_TIER_LABEL => Source::FreeTier,
            id => Source::Grant(id.to_owned()),
        }
    }
}

/// One part of a charge and what paid it. The parts of a charge sum to its list cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deduction {
    pub source: Source,
    /// The money this part of the charge stands for.
    pub amount: Money,
    /// For a volume plan (traffic GB): the GB it gave, which is what it lost; `amount` is
    /// then the list price of those GB, paid by the plan and not in money.
    pub gb: Option<Decimal>,
}

impl Deduction {
    pub fn money(source: Source, amount: Money) -> Deduction {
        Deduction {
            source,
            amount,
            gb: None,
        }
    }

    /// Whether this part was paid in money, by a money grant or the balance: what a
    /// Commit answers as charged and what spends a lease (not free requests, not GB).
    pub fn is_money(&self) -> bool {
        self.gb.is_none() && self.source != Source::FreeTier
    }
}

/// Pays `cost` for `resource` at `at_ms` from `grants`, then from `balance`. Mutates both and
/// returns the deductions in the order taken; their amounts sum exactly to `cost`.
/// A zero cost deducts nothing. `cost` must not be negative (callers validate).
pub fn burn_down(
    grants: &mut [Grant],
    balance: &mut Money,
    resource: Resource,
    cost: Money,
    at_ms: i64,
) -> Vec<Deduction> {
    let mut order: Vec<usize> = (0..grants.len())
        .filter(|&i| grants[i].pays_money_for(resource, at_ms))
        .collect();
    order.sort_by(|&a, &b| {
        (grants[a].expires_at_ms, &grants[a].grant_id)
            .cmp(&(grants[b].expires_at_ms, &grants[b].grant_id))
    });

    let mut left = cost.as_decimal();
    let mut out = Vec::new();
    for i in order {
        if left <= Decimal::ZERO {
            break;
        }
        let g = &mut grants[i];
        let take = left.min(g.remaining);
        g.remaining -= take;
        left -= take;
        out.push(Deduction::money(
            Source::Grant(g.grant_id.clone()),
            Money::from_decimal(take),
        ));
    }
    if left > Decimal::ZERO {
        *balance -= Money::from_decimal(left);
        out.push(Deduction::money(Source::Balance, Money::from_decimal(left)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::grant::{GrantState, money_grant};
    use proptest::prelude::*;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    #[test]
    fn earliest_expiry_first_then_lowest_id_then_balance() {
        let mut grants = vec![
            money_grant("b-late", 10, 0, 3_000),
            money_grant("z-early", 3, 0, 1_000),
            money_grant("a-early", 2, 0, 1_000),
        ];
        let mut balance = m("100");
        let d = burn_down(&mut grants, &mut balance, Resource::GpuShared, m("20"), 500);
        let got: Vec<(&str, String)> = d
            .iter()
            .map(|d| (d.source.label(), d.amount.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a-early", "2".to_owned()),
                ("z-early", "3".to_owned()),
                ("b-late", "10".to_owned()),
                ("balance", "5".to_owned()),
            ]
        );
        assert_eq!(balance, m("95"));
        assert!(grants.iter().all(|g| g.remaining.is_zero()));
    }

    #[test]
    fn expired_and_pending_grants_are_never_charged() {
        let mut grants = vec![
            money_grant("expired", 10, 0, 100),
            money_grant("future", 10, 1_000, 2_000),
        ];
        let mut balance = m("1");
        let d = burn_down(&mut grants, &mut balance, Resource::GpuShared, m("3"), 500);
        assert_eq!(d, vec![Deduction::money(Source::Balance, m("3"))]);
        assert_eq!(balance, m("-2"));
        assert_eq!(grants[0].state_at(500), GrantState::Expired);
        assert_eq!(grants[0].remaining, Decimal::from(10));
    }

    #[test]
    fn zero_cost_deducts_nothing() {
        let mut grants = vec![money_grant("g", 1, 0, 10)];
        let mut balance = m("0");
        assert!(
            burn_down(
                &mut grants,
                &mut balance,
                Resource::GpuShared,
                Money::ZERO,
                1
            )
            .is_empty()
        );
    }

    fn arb_grants() -> impl Strategy<Value = Vec<Grant>> {
        prop::collection::vec((0i64..5_000, 0i64..100, 0i64..100, 0u32..4), 0..12).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (cents, start, len, id))| {
                    let mut g = money_grant(&format!("g{id}-{i}"), 0, start, start + len);
                    g.remaining = Decimal::new(cents, 2);
                    g.quota = g.remaining;
                    g
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn deductions_sum_to_the_charge_and_follow_the_rules(
            mut grants in arb_grants(),
            balance_cents in -10_000i64..10_000,
            cost_micros in 0i64..100_000_000,
            at in 0i64..200,
        ) {
            let before = grants.clone();
            let mut balance = Money::from_decimal(Decimal::new(balance_cents, 2));
            let balance_before = balance;
            let cost = Money::from_decimal(Decimal::new(cost_micros, 6));
            let d = burn_down(&mut grants, &mut balance, Resource::GpuShared, cost, at);

            // Deductions sum exactly to the charge.
            let total: Money = d.iter().map(|x| x.amount).sum();
            prop_assert_eq!(total, cost);
            // Every deduction is positive.
            prop_assert!(d.iter().all(|x| x.amount.is_positive()));
            // No grant below zero; what each lost equals what it was charged.
            for (g, b) in grants.iter().zip(&before) {
                prop_assert!(g.remaining >= Decimal::ZERO);
                let charged: Decimal = d.iter()
                    .filter(|x| x.source == Source::Grant(g.grant_id.clone()))
                    .map(|x| x.amount.as_decimal()).sum();
                prop_assert_eq!(b.remaining - g.remaining, charged);
                // Expired or not-yet-valid grants are never used.
                if !b.is_valid_at(at) { prop_assert_eq!(charged, Decimal::ZERO); }
            }
            // Balance pays only what grants did not, and only after all valid grants are empty.
            let from_balance: Money = d.iter().filter(|x| x.source == Source::Balance).map(|x| x.amount).sum();
            prop_assert_eq!(balance_before - balance, from_balance);
            if from_balance.is_positive() {
                prop_assert!(grants.iter().all(|g| !g.is_valid_at(at) || g.remaining.is_zero()));
            }
            // Grants are used in (expiry, id) order: a used grant never follows one that
            // sorts after it.
            let used: Vec<&Grant> = d.iter().filter_map(|x| match &x.source {
                Source::Grant(id) => before.iter().find(|g| &g.grant_id == id),
                Source::Balance | Source::FreeTier => None,
            }).collect();
            for w in used.windows(2) {
                prop_assert!((w[0].expires_at_ms, &w[0].grant_id) <= (w[1].expires_at_ms, &w[1].grant_id));
            }
            // Only the last grant used can be left partly unused.
            for x in d.iter().rev().skip(1) {
                if let Source::Grant(id) = &x.source {
                    let g = grants.iter().find(|g| &g.grant_id == id).unwrap();
                    prop_assert!(g.remaining.is_zero());
                }
            }
        }
    }
}
