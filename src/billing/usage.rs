//! How a counted charge (bytes of traffic, requests, GPU time) is paid: the part that is
//! free this month (requests, see `free_tier`) costs nothing; volume plans in GB that cover
//! the resource (traffic plans, stackable) take the bytes next, earliest expiry first;
//! what remains is priced and paid by money grants, then the balance (`burn_down`).
//! Volume plans go before money grants because they are the resource's own plans and
//! cannot pay for anything else, while a coupon can.
//!
//! The record a sidecar sends carries the list cost of the whole quantity; the money due
//! for the part left after free requests and volume plans is that cost in proportion,
//! rounded once (`Money::round_charge`). The sidecar and the ledger both call `charge`, so
//! they agree to the last digit on the same state; where they disagree (another sidecar
//! used the plan first), the ledger's result is the account's record.

use rust_decimal::Decimal;

use super::burndown::{Deduction, Source, burn_down};
use super::free_tier::{Calendar, RequestCounts};
use super::grant::{Grant, GrantUnit};
use super::money::Money;
use super::resource::Resource;
use super::storage::BYTES_PER_GB;

/// GB taken from a volume plan by one charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDeduction {
    pub grant_id: String,
    /// In GB (10^9 bytes), exact.
    pub gb: Decimal,
}

/// The outcome of one counted charge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Charge {
    /// Quantity inside this month's free tier.
    pub free_quantity: u64,
    /// GB taken from volume plans, in the order taken.
    pub volume: Vec<VolumeDeduction>,
    /// Money due for the rest: what money grants and the balance paid.
    pub money: Money,
    pub deductions: Vec<Deduction>,
}

impl Charge {
    /// Deductions as a statement lists them: volume (in GB) then money.
    pub fn all_deductions(&self) -> Vec<(Source, Decimal, GrantUnit)> {
        self.volume
            .iter()
            .map(|v| {
                (
                    Source::Grant(v.grant_id.clone()),
                    v.gb,
                    GrantUnit::Gigabytes,
                )
            })
            .chain(
                self.deductions
                    .iter()
                    .map(|d| (d.source.clone(), d.amount.as_decimal(), GrantUnit::Money)),
            )
            .collect()
    }
}

/// Whether `g` is a volume plan that can take `resource` bytes at `at_ms`.
pub fn covers_volume(g: &Grant, resource: Resource, at_ms: i64) -> bool {
    g.unit == GrantUnit::Gigabytes
        && resource == Resource::Traffic
        && g.covers.contains(resource)
        && g.pays_usage_at(at_ms)
        && g.remaining > Decimal::ZERO
}

/// Bytes the volume plans can still take for `resource` at `at_ms`.
pub fn volume_bytes(grants: &[Grant], resource: Resource, at_ms: i64) -> u64 {
    use rust_decimal::prelude::ToPrimitive;
    let gb: Decimal = grants
        .iter()
        .filter(|g| covers_volume(g, resource, at_ms))
        .map(|g| g.remaining)
        .sum();
    (gb * Decimal::from(BYTES_PER_GB))
        .floor()
        .to_u64()
        .unwrap_or(u64::MAX)
}

/// The money due for `part` of `quantity` whose whole costs `list_cost`.
pub fn part_cost(list_cost: Money, part: u64, quantity: u64) -> Money {
    if part == quantity {
        return list_cost;
    }
    if part == 0 || quantity == 0 {
        return Money::ZERO;
    }
    Money::round_charge(list_cost.as_decimal() * Decimal::from(part) / Decimal::from(quantity))
}

/// What charging `quantity` (costing `list_cost` in full) would cost in money now, without
/// changing anything: what a Reserve must hold. `volume_held`: bytes of open holds that
/// will take volume plans first, so they are not counted on twice.
pub fn money_due(
    grants: &[Grant],
    resource: Resource,
    quantity: u64,
    list_cost: Money,
    free_quantity: u64,
    volume_held: u64,
    at_ms: i64,
) -> Money {
    let counted = quantity.saturating_sub(free_quantity);
    let volume = volume_bytes(grants, resource, at_ms).saturating_sub(volume_held);
    let left = counted.saturating_sub(volume);
    part_cost(list_cost, left, quantity)
}

/// Charges `quantity` of `resource` (list cost `list_cost`), of which `free_quantity` is in
/// the free tier: volume plans first, then money grants and the balance. Mutates grants and
/// balance; the money deductions sum exactly to `money`.
pub fn charge(
    grants: &mut [Grant],
    balance: &mut Money,
    resource: Resource,
    quantity: u64,
    list_cost: Money,
    free_quantity: u64,
    at_ms: i64,
) -> Charge {
    let free_quantity = free_quantity.min(quantity);
    let mut left = quantity - free_quantity;
    let mut volume = Vec::new();
    if left > 0 {
        let mut order: Vec<usize> = (0..grants.len())
            .filter(|&i| covers_volume(&grants[i], resource, at_ms))
            .collect();
        order.sort_by(|&a, &b| {
            (grants[a].expires_at_ms, &grants[a].grant_id)
                .cmp(&(grants[b].expires_at_ms, &grants[b].grant_id))
        });
        let per_gb = Decimal::from(BYTES_PER_GB);
        for i in order {
            if left == 0 {
                break;
            }
            let g = &mut grants[i];
            let want_gb = Decimal::from(left) / per_gb;
            let take_gb = want_gb.min(g.remaining);
            g.remaining -= take_gb;
            use rust_decimal::prelude::ToPrimitive;
            let took = (take_gb * per_gb)
                .floor()
                .to_u64()
                .unwrap_or(left)
                .min(left);
            left -= took;
            volume.push(VolumeDeduction {
                grant_id: g.grant_id.clone(),
                gb: take_gb,
            });
        }
    }
    let money = part_cost(list_cost, left, quantity);
    let deductions = burn_down(grants, balance, resource, money, at_ms);
    Charge {
        free_quantity,
        volume,
        money,
        deductions,
    }
}

/// `charge` with the free part taken from this month's request counts, which it then
/// advances: the one call the sidecar's live view and the ledger's record both make.
#[allow(clippy::too_many_arguments)]
pub fn charge_counted(
    grants: &mut [Grant],
    balance: &mut Money,
    counts: &mut RequestCounts,
    cal: &Calendar,
    resource: Resource,
    quantity: u64,
    list_cost: Money,
    at_ms: i64,
) -> Charge {
    let free = counts.free_part(cal, resource, quantity, at_ms);
    counts.add(cal, resource, quantity, at_ms);
    charge(grants, balance, resource, quantity, list_cost, free, at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::grant::GrantKind;
    use crate::billing::resource::ResourceSet;
    use proptest::prelude::*;

    const GB: u64 = BYTES_PER_GB;

    fn traffic_plan(id: &str, gb: i64, expires: i64) -> Grant {
        Grant {
            grant_id: id.into(),
            kind: GrantKind::Plan,
            covers: ResourceSet::of(Resource::Traffic),
            unit: GrantUnit::Gigabytes,
            quota: Decimal::from(gb),
            remaining: Decimal::from(gb),
            starts_at_ms: 0,
            expires_at_ms: expires,
            created_at_ms: 0,
            source: "plan.traffic.100gb".into(),
            stackable: true,
        }
    }

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    #[test]
    fn traffic_plans_stack_earliest_expiry_first_then_balance() {
        let mut grants = vec![
            traffic_plan("late", 10, 2_000),
            traffic_plan("early", 3, 1_000),
        ];
        let mut balance = m("10");
        // 15 GB at 0.5/GB lists at 7.5; 3 GB from "early", 10 from "late", 2 GB = 1.0 paid.
        let c = charge(
            &mut grants,
            &mut balance,
            Resource::Traffic,
            15 * GB,
            m("7.5"),
            0,
            500,
        );
        assert_eq!(
            c.volume,
            vec![
                VolumeDeduction {
                    grant_id: "early".into(),
                    gb: Decimal::from(3)
                },
                VolumeDeduction {
                    grant_id: "late".into(),
                    gb: Decimal::from(10)
                },
            ]
        );
        assert_eq!(c.money, m("1"));
        assert_eq!(balance, m("9"));
        assert!(grants.iter().all(|g| g.remaining.is_zero()));
        assert_eq!(c.all_deductions().len(), 3);
    }

    #[test]
    fn a_partial_gb_is_taken_exactly() {
        let mut grants = vec![traffic_plan("t", 100, 1_000)];
        let mut balance = Money::ZERO;
        let c = charge(
            &mut grants,
            &mut balance,
            Resource::Traffic,
            1_500_000_000,
            m("0.75"),
            0,
            1,
        );
        assert_eq!(c.volume[0].gb, Decimal::new(15, 1));
        assert_eq!(c.money, Money::ZERO);
        assert_eq!(grants[0].remaining, Decimal::new(985, 1));
        assert!(c.deductions.is_empty());
    }

    #[test]
    fn expired_plans_and_other_resources_are_not_used() {
        let mut grants = vec![traffic_plan("t", 100, 1_000)];
        let mut balance = m("1");
        let c = charge(
            &mut grants,
            &mut balance,
            Resource::Traffic,
            GB,
            m("0.5"),
            0,
            1_000,
        );
        assert!(c.volume.is_empty());
        assert_eq!(balance, m("0.5"));
        assert_eq!(
            money_due(&grants, Resource::RequestGet, 10, m("1"), 0, 0, 1),
            m("1")
        );
    }

    #[test]
    fn free_requests_cost_nothing_and_the_rest_is_priced_in_proportion() {
        let mut grants = vec![];
        let mut balance = m("1");
        // 30,000 GET lists at 0.03; 10,000 of them free: 20,000 x 0.01 / 10,000 = 0.02.
        let c = charge(
            &mut grants,
            &mut balance,
            Resource::RequestGet,
            30_000,
            m("0.03"),
            10_000,
            1,
        );
        assert_eq!(c.free_quantity, 10_000);
        assert_eq!(c.money, m("0.02"));
        assert_eq!(balance, m("0.98"));
        assert_eq!(
            money_due(
                &grants,
                Resource::RequestGet,
                30_000,
                m("0.03"),
                30_000,
                0,
                1
            ),
            Money::ZERO
        );
        assert_eq!(part_cost(m("0.03"), 0, 30_000), Money::ZERO);
    }

    #[test]
    fn the_free_tier_resets_with_the_month_in_the_platforms_zone() {
        let cal = Calendar {
            free_get_per_month: 100,
            ..Calendar::default()
        };
        // 2026-11-30T15:59:59Z is the last second of November in Shanghai; 16:00Z is
        // December 1st there.
        let nov = 1_796_054_399_000;
        let dec = nov + 1_000;
        let mut counts = RequestCounts::default();
        let mut grants = vec![];
        let mut balance = m("1");
        // 150 GET in November: 100 free, 50 at 0.01 / 10,000 = 0.00005.
        let c = charge_counted(
            &mut grants,
            &mut balance,
            &mut counts,
            &cal,
            Resource::RequestGet,
            150,
            m("0.00015"),
            nov,
        );
        assert_eq!((c.free_quantity, c.money), (100, m("0.00005")));
        // 150 more a second later, in December: the allowance is fresh.
        let c = charge_counted(
            &mut grants,
            &mut balance,
            &mut counts,
            &cal,
            Resource::RequestGet,
            150,
            m("0.00015"),
            dec,
        );
        assert_eq!((c.free_quantity, c.money), (100, m("0.00005")));
        assert_eq!(balance, m("0.9999"));
        assert_eq!(
            counts.rows(),
            vec![
                (Resource::RequestGet, 202_611, 150),
                (Resource::RequestGet, 202_612, 150)
            ]
        );
        // Traffic has no free tier and is not counted.
        let c = charge_counted(
            &mut grants,
            &mut balance,
            &mut counts,
            &cal,
            Resource::Traffic,
            10,
            m("0.1"),
            dec,
        );
        assert_eq!(c.free_quantity, 0);
        assert_eq!(counts.rows().len(), 2);
    }

    proptest! {
        #[test]
        fn what_is_reserved_is_what_is_charged(
            plans in prop::collection::vec((0i64..5, 1i64..3_000), 0..4),
            quantity in 0u64..10 * GB,
            free in 0u64..GB,
            balance_cents in 0i64..1_000,
        ) {
            let mut grants: Vec<Grant> = plans.iter().enumerate()
                .map(|(i, (gb, exp))| traffic_plan(&format!("t{i}"), *gb, *exp)).collect();
            let list = Money::round_charge(Decimal::from(quantity) * Decimal::new(5, 1) / Decimal::from(GB));
            let due = money_due(&grants, Resource::Traffic, quantity, list, free, 0, 500);
            let mut balance = Money::from_decimal(Decimal::new(balance_cents, 2));
            let before = balance;
            let c = charge(&mut grants, &mut balance, Resource::Traffic, quantity, list, free, 500);
            prop_assert_eq!(c.money, due);
            prop_assert_eq!(before - balance, c.money);
            prop_assert!(c.money <= list);
            prop_assert!(grants.iter().all(|g| g.remaining >= Decimal::ZERO));
        }
    }
}
