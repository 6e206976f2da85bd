//! How a counted charge (bytes of traffic, requests, GPU time) is paid. The part that is
//! free this month (requests, see `free_tier`) comes first and costs nothing. Then the
//! grants that can pay for the resource, of both kinds, in one order (R3: earliest expiry
//! first, lowest grant id on equal expiry): volume plans in GB (traffic plans) take units
//! of the quantity, money grants (plans in money, coupons, trial credit) take money. What
//! they leave is paid by the balance. A traffic plan that expires in a year therefore
//! waits for a coupon that expires in a month, as R3 says of any two grants.
//!
//! Every part of a charge is a `Deduction` carrying the money it stands for, so the parts
//! sum to the list cost exactly: the units a part covers are priced as the difference of
//! the cumulative cost `part_cost(list, up_to, quantity)` at its two ends (rounded once
//! each, `Money::round_charge`), which telescopes to the list cost. A GB deduction also
//! says the GB it gave. `Charge::money` is what money grants and the balance paid: what a
//! Commit answers as charged and what spends a lease.
//!
//! The record a sidecar sends carries the list cost of the whole quantity. The sidecar and
//! the ledger both call `charge_counted`, so they agree to the last digit on the same
//! state; where they disagree (another sidecar used the plan first), the ledger's result
//! is the account's record.

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use super::burndown::{Deduction, Source, burn_down};
use super::free_tier::{Calendar, RequestCounts};
use super::grant::{Grant, GrantUnit};
use super::money::Money;
use super::resource::Resource;
use super::storage::BYTES_PER_GB;

/// The outcome of one counted charge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Charge {
    /// Quantity inside this month's free tier.
    pub free_quantity: u64,
    /// Money taken from money grants and the balance (the `is_money` deductions).
    pub money: Money,
    /// Every part, in the order taken; the amounts sum to the list cost.
    pub deductions: Vec<Deduction>,
}

/// Whether `g` is a volume plan that can take `resource` bytes at `at_ms`.
pub fn covers_volume(g: &Grant, resource: Resource, at_ms: i64) -> bool {
    g.unit == GrantUnit::Gigabytes
        && resource == Resource::Traffic
        && g.covers.contains(resource)
        && g.pays_usage_at(at_ms)
        && g.remaining > Decimal::ZERO
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
/// changing anything: what a Reserve must hold. `volume_held`: bytes of open holds, taken
/// off the volume plans (earliest expiry first) so that two holds do not count on the
/// same GB; what those holds will take of money grants is held by them already.
pub fn money_due(
    grants: &[Grant],
    resource: Resource,
    quantity: u64,
    list_cost: Money,
    free_quantity: u64,
    volume_held: u64,
    at_ms: i64,
) -> Money {
    let free = free_quantity.min(quantity);
    if !grants.iter().any(|g| covers_volume(g, resource, at_ms)) {
        return list_cost - part_cost(list_cost, free, quantity);
    }
    let mut grants = grants.to_vec();
    let mut held_gb = Decimal::from(volume_held) / Decimal::from(BYTES_PER_GB);
    for i in order_of(&grants, |g| covers_volume(g, resource, at_ms)) {
        let g = &mut grants[i];
        let take = held_gb.min(g.remaining);
        g.remaining -= take;
        held_gb -= take;
    }
    let mut balance = Money::ZERO;
    charge(
        &mut grants,
        &mut balance,
        resource,
        quantity,
        list_cost,
        free,
        at_ms,
    )
    .money
}

/// Indices of the grants `pick` selects, in R3 order: earliest expiry, then lowest id.
fn order_of(grants: &[Grant], pick: impl Fn(&Grant) -> bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..grants.len()).filter(|&i| pick(&grants[i])).collect();
    order.sort_by(|&a, &b| {
        (grants[a].expires_at_ms, &grants[a].grant_id)
            .cmp(&(grants[b].expires_at_ms, &grants[b].grant_id))
    });
    order
}

/// The largest `to` in [`from`, `up_to`] whose units from `from` cost at most `budget`
/// (`cost(to) - cost(from)`, `cost` non-decreasing).
fn reach(cost: impl Fn(u64) -> Money, from: u64, up_to: u64, budget: Decimal) -> u64 {
    let base = cost(from);
    let fits = |to: u64| (cost(to) - base).as_decimal() <= budget;
    if fits(up_to) {
        return up_to;
    }
    // fits(lo) and not fits(hi).
    let (mut lo, mut hi) = (from, up_to);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Charges `quantity` of `resource` (list cost `list_cost`), of which `free_quantity` is in
/// the free tier: the free part, then the grants of both kinds in R3 order, then the
/// balance. Mutates grants and balance; the deductions sum exactly to `list_cost` and
/// their money parts to `Charge::money`.
pub fn charge(
    grants: &mut [Grant],
    balance: &mut Money,
    resource: Resource,
    quantity: u64,
    list_cost: Money,
    free_quantity: u64,
    at_ms: i64,
) -> Charge {
    let cost = |to: u64| part_cost(list_cost, to, quantity);
    let free = free_quantity.min(quantity);
    let mut deductions = Vec::new();
    if free > 0 {
        deductions.push(Deduction::money(Source::FreeTier, cost(free)));
    }
    // Units paid so far, from the start of the quantity.
    let mut paid = free;
    let order = order_of(grants, |g| {
        covers_volume(g, resource, at_ms) || g.pays_money_for(resource, at_ms)
    });
    // Up to the last volume plan in the order, each grant takes units. After it only
    // money grants are left: they pay the rest in money (`burn_down`, exactly).
    let walk = order
        .iter()
        .rposition(|&i| grants[i].unit == GrantUnit::Gigabytes)
        .map_or(0, |last| last + 1);
    for &i in &order[..walk] {
        if paid == quantity {
            break;
        }
        deductions.extend(take_units(&mut grants[i], &cost, &mut paid, quantity));
    }
    let rest = list_cost - cost(paid);
    let money = burn_down(grants, balance, resource, rest, at_ms);
    if deductions.is_empty() {
        // The usual charge: no free part, no volume plan; no second vector.
        deductions = money;
    } else {
        deductions.extend(money);
    }
    debug_assert_eq!(
        deductions.iter().map(|d| d.amount).sum::<Money>(),
        list_cost,
        "the parts of a charge sum to its list cost"
    );
    Charge {
        free_quantity: free,
        money: deductions
            .iter()
            .filter(|d| d.is_money())
            .map(|d| d.amount)
            .sum(),
        deductions,
    }
}

/// One grant's turn among the units of a charge, from `paid` on (`cost(to)`: the list
/// cost of the first `to` units): a volume plan gives the GB for as many units as it has,
/// a money grant pays for as many units as its money covers. Advances `paid`; the
/// deduction, if the grant paid anything.
fn take_units(
    g: &mut Grant,
    cost: &impl Fn(u64) -> Money,
    paid: &mut u64,
    quantity: u64,
) -> Option<Deduction> {
    let from = *paid;
    let source = Source::Grant(g.grant_id.clone());
    if g.unit == GrantUnit::Gigabytes {
        let per_gb = Decimal::from(BYTES_PER_GB);
        let take_gb = (Decimal::from(quantity - from) / per_gb).min(g.remaining);
        g.remaining -= take_gb;
        let took = (take_gb * per_gb).floor().to_u64().unwrap_or(u64::MAX);
        *paid += took.min(quantity - from);
        return Some(Deduction {
            source,
            amount: cost(*paid) - cost(from),
            gb: Some(take_gb),
        });
    }
    // The units its money pays for at the list price, found exactly where the arithmetic
    // allows (rounding must not let it stretch past them), then the most of those it can
    // pay for once rounded.
    let list_cost = cost(quantity).as_decimal();
    let exact = (cost(from).as_decimal() + g.remaining)
        .checked_mul(Decimal::from(quantity))
        .and_then(|d| d.checked_div(list_cost))
        .and_then(|d| d.floor().to_u64());
    let up_to = exact.map_or(quantity, |u| u.clamp(from, quantity));
    *paid = reach(cost, from, up_to, g.remaining);
    let amount = cost(*paid) - cost(from);
    if !amount.is_positive() {
        return None;
    }
    g.remaining -= amount.as_decimal();
    Some(Deduction::money(source, amount))
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

    fn coupon(id: &str, amount: Money, expires: i64) -> Grant {
        Grant {
            grant_id: id.into(),
            kind: GrantKind::Coupon,
            covers: ResourceSet::of(Resource::Traffic),
            unit: GrantUnit::Money,
            quota: amount.as_decimal(),
            remaining: amount.as_decimal(),
            starts_at_ms: 0,
            expires_at_ms: expires,
            created_at_ms: 0,
            source: "coupon".into(),
            stackable: true,
        }
    }

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    /// (source, amount, GB) of each deduction, as text.
    fn parts(c: &Charge) -> Vec<(String, String, Option<String>)> {
        c.deductions
            .iter()
            .map(|d| {
                (
                    d.source.label().to_owned(),
                    d.amount.to_string(),
                    d.gb.map(|g| g.normalize().to_string()),
                )
            })
            .collect()
    }

    fn part(source: &str, amount: &str, gb: Option<&str>) -> (String, String, Option<String>) {
        (source.into(), amount.into(), gb.map(Into::into))
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
            parts(&c),
            vec![
                part("early", "1.5", Some("3")),
                part("late", "5", Some("10")),
                part("balance", "1", None),
            ]
        );
        assert_eq!(c.money, m("1"));
        assert_eq!(balance, m("9"));
        assert!(grants.iter().all(|g| g.remaining.is_zero()));
    }

    /// Issue 12, item 4: a 100 GB plan expiring in a year and a 1 CNY coupon expiring in
    /// 30 days; 1 GB at 0.5. R3 puts the coupon first: it pays 0.5 in money, the plan
    /// keeps its GB, and the deductions add up to the cost.
    #[test]
    fn an_earlier_expiring_coupon_pays_before_a_traffic_plan() {
        let mut grants = vec![
            traffic_plan("plan", 100, 365_000),
            coupon("c", m("1"), 30_000),
        ];
        let mut balance = Money::ZERO;
        let c = charge(
            &mut grants,
            &mut balance,
            Resource::Traffic,
            GB,
            m("0.5"),
            0,
            1,
        );
        assert_eq!(parts(&c), vec![part("c", "0.5", None)]);
        assert_eq!(c.money, m("0.5"));
        assert_eq!(grants[0].remaining, Decimal::from(100));
        assert_eq!(grants[1].remaining, Decimal::new(5, 1));
        // 3 GB more: the coupon's 0.5 pays for 1 GB, the plan gives the other 2.
        let c = charge(
            &mut grants,
            &mut balance,
            Resource::Traffic,
            3 * GB,
            m("1.5"),
            0,
            2,
        );
        assert_eq!(
            parts(&c),
            vec![part("c", "0.5", None), part("plan", "1", Some("2"))]
        );
        assert_eq!(c.money, m("0.5"));
        assert_eq!(grants[0].remaining, Decimal::from(98));
        assert!(grants[1].remaining.is_zero());
        assert_eq!(balance, Money::ZERO);
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
        assert_eq!(parts(&c), vec![part("t", "0.75", Some("1.5"))]);
        assert_eq!(c.money, Money::ZERO);
        assert_eq!(grants[0].remaining, Decimal::new(985, 1));
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
        assert_eq!(parts(&c), vec![part("balance", "0.5", None)]);
        assert_eq!(balance, m("0.5"));
        assert_eq!(
            money_due(&grants, Resource::RequestGet, 10, m("1"), 0, 0, 1),
            m("1")
        );
    }

    #[test]
    fn free_requests_are_a_part_of_their_own_and_the_rest_is_priced_in_proportion() {
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
        assert_eq!(
            parts(&c),
            vec![
                part("free_tier", "0.01", None),
                part("balance", "0.02", None)
            ]
        );
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
    fn open_holds_take_plan_gb_before_a_reserve_counts_on_them() {
        let grants = vec![traffic_plan("t", 2, 1_000)];
        // 1 GB is due in money once holds will take 1 of the plan's 2 GB.
        assert_eq!(
            money_due(&grants, Resource::Traffic, 2 * GB, m("1"), 0, GB, 1),
            m("0.5")
        );
        assert_eq!(
            money_due(&grants, Resource::Traffic, 2 * GB, m("1"), 0, 0, 1),
            Money::ZERO
        );
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

    /// Grants of both kinds with random amounts, expiries and ids (some expired, some
    /// equal), the same list price per byte as the catalog (0.5 per GB) or a random one.
    fn arb_grants() -> impl Strategy<Value = Vec<Grant>> {
        let one = (any::<bool>(), 0i64..600, 0i64..3_000, 0u8..6);
        prop::collection::vec(one, 0..7).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (volume, size, expires, id))| {
                    let id = format!("g{id}-{i}");
                    if volume {
                        // Up to 6 GB, in hundredths.
                        let mut g = traffic_plan(&id, 0, expires);
                        g.quota = Decimal::new(size, 2);
                        g.remaining = g.quota;
                        g
                    } else {
                        // Up to 6 CNY, in hundredths.
                        coupon(&id, Money::from_decimal(Decimal::new(size, 2)), expires)
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// Every charge's parts sum to its list cost; grants are taken in R3 order across
        /// both kinds; each grant loses exactly what its parts say; money is the money
        /// parts, the balance pays only when no grant can; and a Reserve holds what the
        /// charge then takes in money.
        #[test]
        fn deductions_sum_to_the_cost_and_follow_r3_across_kinds(
            mut grants in arb_grants(),
            quantity in 0u64..20 * GB,
            cents_per_gb in prop::sample::select(vec![50i64, 1, 7, 333, 1_000]),
            balance_cents in -1_000i64..1_000,
            at in 0i64..2_000,
        ) {
            let before = grants.clone();
            let list = Money::round_charge(
                Decimal::from(quantity) * Decimal::new(cents_per_gb, 2) / Decimal::from(GB),
            );
            let due = money_due(&grants, Resource::Traffic, quantity, list, 0, 0, at);
            let mut balance = Money::from_decimal(Decimal::new(balance_cents, 2));
            let balance_before = balance;
            let c = charge(&mut grants, &mut balance, Resource::Traffic, quantity, list, 0, at);

            let total: Money = c.deductions.iter().map(|d| d.amount).sum();
            prop_assert_eq!(total, list);
            prop_assert!(c.deductions.iter().all(|d| !d.amount.is_negative()));
            let money: Money = c.deductions.iter().filter(|d| d.is_money()).map(|d| d.amount).sum();
            prop_assert_eq!(c.money, money);
            prop_assert_eq!(c.money, due);
            prop_assert_eq!(balance_before - balance, c.deductions.iter()
                .filter(|d| d.source == Source::Balance).map(|d| d.amount).sum::<Money>());
            for (g, b) in grants.iter().zip(&before) {
                prop_assert!(g.remaining >= Decimal::ZERO);
                let mine = c.deductions.iter().filter(|d| d.source == Source::Grant(g.grant_id.clone()));
                let lost: Decimal = match g.unit {
                    GrantUnit::Gigabytes => mine.filter_map(|d| d.gb).sum(),
                    GrantUnit::Money => mine.map(|d| d.amount.as_decimal()).sum(),
                };
                prop_assert_eq!(b.remaining - g.remaining, lost);
                if !b.is_valid_at(at) {
                    prop_assert_eq!(lost, Decimal::ZERO);
                }
            }
            // R3 across kinds: the grants used come in (expiry, id) order.
            let used: Vec<&Grant> = c.deductions.iter().filter_map(|d| match &d.source {
                Source::Grant(id) => before.iter().find(|g| &g.grant_id == id),
                _ => None,
            }).collect();
            for w in used.windows(2) {
                prop_assert!((w[0].expires_at_ms, &w[0].grant_id) <= (w[1].expires_at_ms, &w[1].grant_id));
            }
            // The balance pays only what no valid grant could: each is empty, or a money
            // grant with less left than one unit of the quantity costs.
            if c.deductions.iter().any(|d| d.source == Source::Balance) {
                let step = part_cost(list, 1, quantity.max(1)).as_decimal() + Decimal::new(1, 8);
                for g in grants.iter().filter(|g| g.is_valid_at(at)) {
                    prop_assert!(g.remaining.is_zero()
                        || (g.unit == GrantUnit::Money && g.remaining < step), "{:?}", g);
                }
            }
        }
    }
}
