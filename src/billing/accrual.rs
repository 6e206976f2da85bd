//! What accrues while nothing runs (R10): stored data beyond the storage plan and running
//! Exclusive instances cost money every hour whether or not anyone works. The FAQ's most
//! common complaint is a plan shrinking while "nothing runs"; this module turns the
//! accruals into hourly costs and projects, hour by hour with the same burn-down as real
//! charges, when the grants that pay them and then the balance run out.

use super::burndown::burn_down;
use super::grant::Grant;
use super::money::Money;
use super::resource::Resource;
use super::session::HOUR_MS;
use super::storage;

/// How far ahead a projection looks (a year and a day): past it, "not within a year".
pub const DEFAULT_PROJECTION_HOURS_MAX: i64 = 366 * 24;

/// One thing that costs money every hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accrual {
    /// Stored bytes, charged beyond the storage plan's capacity (which may expire).
    Storage {
        bytes_stored: u64,
        unit_price: Money,
    },
    /// A running Exclusive instance at its hourly price.
    Session { hourly: Money },
}

impl Accrual {
    pub fn resource(&self) -> Resource {
        match self {
            Accrual::Storage { .. } => Resource::Storage,
            Accrual::Session { .. } => Resource::GpuExclusive,
        }
    }

    /// What it costs for the hour starting at `at_ms`, with `grants` as they are then.
    pub fn hourly_at(&self, grants: &[Grant], at_ms: i64) -> Money {
        match self {
            Accrual::Storage {
                bytes_stored,
                unit_price,
            } => storage::hourly_cost(
                *unit_price,
                *bytes_stored,
                storage::capacity_bytes(grants, at_ms),
            ),
            Accrual::Session { hourly } => *hourly,
        }
    }
}

/// When the accruals, left as they are, exhaust what pays for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Projection {
    /// Money per hour now, all accruals together.
    pub hourly: Money,
    /// Start of the first hour some accrual is no longer paid in full by grants (None:
    /// not within the horizon, or nothing accrues).
    pub grants_exhausted_at_ms: Option<i64>,
    /// Start of the first hour after which the balance is below zero (OVERDUE).
    pub balance_exhausted_at_ms: Option<i64>,
}

/// Projects `accruals` from `now_ms`, one hourly charge each per hour (as the meters
/// charge them), over at most `hours_max` hours. Grants expire on their dates and storage
/// capacity with its plan; nothing else changes (no usage, top-ups or purchases).
pub fn project(
    balance: Money,
    grants: &[Grant],
    accruals: &[Accrual],
    now_ms: i64,
    hours_max: i64,
) -> Projection {
    let mut out = Projection {
        hourly: accruals.iter().map(|a| a.hourly_at(grants, now_ms)).sum(),
        ..Projection::default()
    };
    if !out.hourly.is_positive()
        && accruals
            .iter()
            .all(|a| matches!(a, Accrual::Session { .. }))
    {
        return out;
    }
    let mut grants = grants.to_vec();
    let mut balance = balance;
    for h in 0..hours_max {
        let at_ms = now_ms.saturating_add(h.saturating_mul(HOUR_MS));
        for a in accruals {
            let cost = a.hourly_at(&grants, at_ms);
            let before = balance;
            burn_down(&mut grants, &mut balance, a.resource(), cost, at_ms);
            if balance != before && out.grants_exhausted_at_ms.is_none() {
                out.grants_exhausted_at_ms = Some(at_ms);
            }
        }
        if balance.is_negative() {
            out.balance_exhausted_at_ms = Some(at_ms);
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::grant::{GrantKind, GrantUnit, money_grant};
    use crate::billing::resource::ResourceSet;
    use rust_decimal::Decimal;

    const H: i64 = HOUR_MS;
    const GB: u64 = storage::BYTES_PER_GB;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    #[test]
    fn an_idle_exclusive_instance_eats_the_plan_then_the_balance() {
        // 9.9/h; a compute plan of 20 and a balance of 5: the plan pays hours 0 and 1 in
        // full (19.8), hour 2 only in part (0.2 of 9.9), so grants run short at hour 2;
        // the balance pays 9.7 of hour 2 and is -4.7 after it: overdue from hour 2.
        let grants = vec![money_grant("plan", 20, 0, 1_000 * H)];
        let p = project(
            m("5"),
            &grants,
            &[Accrual::Session { hourly: m("9.9") }],
            0,
            DEFAULT_PROJECTION_HOURS_MAX,
        );
        assert_eq!(p.hourly, m("9.9"));
        assert_eq!(p.grants_exhausted_at_ms, Some(2 * H));
        assert_eq!(p.balance_exhausted_at_ms, Some(2 * H));
    }

    #[test]
    fn storage_beyond_the_plan_runs_the_balance_down_and_grows_when_the_plan_expires() {
        let plan = Grant {
            grant_id: "s/1".into(),
            kind: GrantKind::Plan,
            covers: ResourceSet::of(Resource::Storage),
            unit: GrantUnit::Gigabytes,
            quota: Decimal::from(100),
            remaining: Decimal::from(100),
            starts_at_ms: 0,
            expires_at_ms: 10 * H,
            created_at_ms: 0,
            source: "plan.storage.100gb".into(),
            stackable: false,
        };
        // 820 GB stored under a 100 GB plan at 0.12/GB-month: 720 GB excess = 0.12/h.
        // Balance 1.2 pays 10 hours (0 to 9); at hour 10 the plan expires and the full
        // 820 GB cost 0.13666667/h: after hour 10 the balance is -0.13666667.
        let acc = [Accrual::Storage {
            bytes_stored: 820 * GB,
            unit_price: m("0.12"),
        }];
        let p = project(m("1.2"), &[plan], &acc, 0, DEFAULT_PROJECTION_HOURS_MAX);
        assert_eq!(p.hourly, m("0.12"));
        assert_eq!(p.grants_exhausted_at_ms, Some(0));
        assert_eq!(p.balance_exhausted_at_ms, Some(10 * H));
    }

    #[test]
    fn nothing_accruing_never_runs_out() {
        let p = project(m("1"), &[], &[], 0, 10);
        assert_eq!(p, Projection::default());
        // Storage under its capacity: nothing within the horizon.
        let acc = [Accrual::Storage {
            bytes_stored: 0,
            unit_price: m("0.12"),
        }];
        let p = project(m("0"), &[], &acc, 0, 48);
        assert_eq!(p.balance_exhausted_at_ms, None);
    }
}
