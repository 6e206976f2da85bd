//! Storage (R1, R5, R10): stored bytes are reported as levels, integrated over time into
//! byte-hours, and charged once per hour at the GB-month price. A storage plan is a
//! capacity, not a quota that is used up: while it is valid, stored bytes up to its GB are
//! covered, and only the excess is charged (to money grants that cover STORAGE, then the
//! balance, like any charge). Between reports the level is taken to be constant.
//!
//! Hours are UTC hours ([h, h + 1 h) with h a multiple of 3,600,000 ms): an hour's charge
//! needs no calendar, and zones with half- or quarter-hour offsets would make local hours
//! ambiguous. A month is `HOURS_PER_MONTH` (720 h, 30 days) for pricing, so every hour
//! costs the same whatever the month's length: one GB stored for 30 days costs the
//! GB-month price (each hour's charge is rounded at 8 places on its own, so up to half
//! of 10^-8 per hour away from it).
//!
//! The meter is pure state: the engine keeps one per account, journals it with each
//! hour's charge, and steps it on reports and on its tick, so an hour is charged once and
//! exactly as a punctual sidecar would have charged it, also after a restart.

use rust_decimal::Decimal;

use super::grant::{Grant, GrantUnit};
use super::money::Money;
use super::resource::Resource;
use super::session::HOUR_MS;

/// Hours in a billing month (30 days): the GB-month price is spread over this many hours.
pub const HOURS_PER_MONTH: i64 = 720;
/// Bytes in a GB (10^9, as the catalog's units say).
pub const BYTES_PER_GB: u64 = 1_000_000_000;
/// Largest level one report may carry: a petabyte (keeps integrals far inside Decimal).
pub const BYTES_STORED_MAX: u64 = 1_000_000_000_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorageError {
    #[error(
        "a storage level at {at_ms} ms is older than the last one, at {last_at_ms} ms; levels must be reported in time order"
    )]
    OutOfOrder { at_ms: i64, last_at_ms: i64 },
    #[error("bytes_stored {0} is larger than the maximum of {BYTES_STORED_MAX}")]
    TooLarge(u64),
}

/// The start of the UTC hour containing `at_ms`.
pub fn hour_start_ms(at_ms: i64) -> i64 {
    at_ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// Bytes of storage the valid storage plans cover at `at_ms` (their capacity in GB). Plans
/// are not stackable, so this is one plan's capacity; an overlap (an imported plan) adds.
pub fn capacity_bytes(grants: &[Grant], at_ms: i64) -> u64 {
    let gb: Decimal = grants
        .iter()
        .filter(|g| {
            g.unit == GrantUnit::Gigabytes
                && g.covers.contains(Resource::Storage)
                && g.pays_usage_at(at_ms)
        })
        .map(|g| g.quota)
        .sum();
    use rust_decimal::prelude::ToPrimitive;
    (gb * Decimal::from(BYTES_PER_GB))
        .floor()
        .to_u64()
        .unwrap_or(u64::MAX)
}

/// One UTC hour of storage, closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageHour {
    pub hour_start_ms: i64,
    /// Byte-hours stored beyond the plan's capacity (rounded down to whole byte-hours):
    /// what is charged.
    pub excess_byte_hours: u64,
    /// Byte-hours stored in all, covered or not.
    pub stored_byte_hours: u64,
}

impl StorageHour {
    /// The usage id of this hour's charge: one per account and hour, so a retry or a
    /// restart cannot charge it twice. '/' never occurs in client ids.
    pub fn usage_id(&self, account_id: &str) -> String {
        format!("storage/{account_id}/{}", self.hour_start_ms)
    }
}

/// The charge for `excess_byte_hours` at `unit_price` per GB-month: byte-hours / 10^9 / 720
/// x price, rounded once, half away from zero at 8 places (`Money::round_charge`).
pub fn hour_cost(unit_price: Money, excess_byte_hours: u64) -> Money {
    let denom = Decimal::from(BYTES_PER_GB) * Decimal::from(HOURS_PER_MONTH);
    Money::round_charge(Decimal::from(excess_byte_hours) * unit_price.as_decimal() / denom)
}

/// What storing `bytes` costs per hour now, with `capacity` covered.
pub fn hourly_cost(unit_price: Money, bytes: u64, capacity: u64) -> Money {
    hour_cost(unit_price, bytes.saturating_sub(capacity))
}

/// An account's storage meter: the last level and the integral of the hour in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageMeter {
    /// The last level reported, and when it took effect.
    pub bytes_stored: u64,
    pub level_at_ms: i64,
    /// Start of the hour in progress; every hour before it is closed (charged).
    pub hour_start_ms: i64,
    /// Integrals over [hour_start_ms, level_at_ms), in byte-milliseconds.
    pub excess_byte_ms: u128,
    pub stored_byte_ms: u128,
}

impl StorageMeter {
    /// A meter whose first level is `bytes` from `at_ms` (nothing was stored before).
    pub fn new(bytes: u64, at_ms: i64) -> Result<StorageMeter, StorageError> {
        if bytes > BYTES_STORED_MAX {
            return Err(StorageError::TooLarge(bytes));
        }
        Ok(StorageMeter {
            bytes_stored: bytes,
            level_at_ms: at_ms,
            hour_start_ms: hour_start_ms(at_ms),
            excess_byte_ms: 0,
            stored_byte_ms: 0,
        })
    }

    /// Integrates the current level up to `to_ms`, closing every hour that ends by then.
    /// Capacity is looked up wherever a plan starts or expires within the span. Returns
    /// the closed hours in order (hours with nothing stored included; callers skip those
    /// that cost nothing).
    pub fn advance(&mut self, grants: &[Grant], to_ms: i64) -> Vec<StorageHour> {
        let mut closed = Vec::new();
        while self.level_at_ms < to_ms {
            let hour_end = self.hour_start_ms.saturating_add(HOUR_MS);
            let seg_end = to_ms.min(hour_end);
            self.integrate(grants, seg_end);
            if seg_end == hour_end {
                closed.push(StorageHour {
                    hour_start_ms: self.hour_start_ms,
                    excess_byte_hours: byte_hours(self.excess_byte_ms),
                    stored_byte_hours: byte_hours(self.stored_byte_ms),
                });
                self.hour_start_ms = hour_end;
                self.excess_byte_ms = 0;
                self.stored_byte_ms = 0;
            }
        }
        closed
    }

    /// Adds [level_at_ms, to_ms) (within one hour) to the integrals.
    fn integrate(&mut self, grants: &[Grant], to_ms: i64) {
        // Capacity changes only where a plan starts or expires.
        let mut cuts: Vec<i64> = grants
            .iter()
            .flat_map(|g| [g.starts_at_ms, g.expires_at_ms])
            .filter(|t| *t > self.level_at_ms && *t < to_ms)
            .collect();
        cuts.push(to_ms);
        cuts.sort_unstable();
        cuts.dedup();
        let mut from = self.level_at_ms;
        for cut in cuts {
            let span = (cut - from) as u128;
            let cap = capacity_bytes(grants, from);
            self.stored_byte_ms += u128::from(self.bytes_stored) * span;
            self.excess_byte_ms += u128::from(self.bytes_stored.saturating_sub(cap)) * span;
            from = cut;
        }
        self.level_at_ms = to_ms;
    }

    /// A new level from `at_ms`: integrates the old one up to then (closing hours) and
    /// switches. A report at the time of the last one replaces it (a retry or a
    /// correction); an older one is refused, as its hour may already be charged.
    pub fn report(
        &mut self,
        grants: &[Grant],
        bytes: u64,
        at_ms: i64,
    ) -> Result<Vec<StorageHour>, StorageError> {
        if bytes > BYTES_STORED_MAX {
            return Err(StorageError::TooLarge(bytes));
        }
        if at_ms < self.level_at_ms {
            return Err(StorageError::OutOfOrder {
                at_ms,
                last_at_ms: self.level_at_ms,
            });
        }
        let closed = self.advance(grants, at_ms);
        self.bytes_stored = bytes;
        Ok(closed)
    }
}

/// Byte-milliseconds of one hour as byte-hours. A level is at most `u64::MAX` bytes, so an
/// hour's integral over `HOUR_MS` fits in a `u64`.
fn byte_hours(byte_ms: u128) -> u64 {
    let h = byte_ms / u128::from(HOUR_MS.unsigned_abs());
    debug_assert!(u64::try_from(h).is_ok(), "an hour's byte-hours fit a u64");
    u64::try_from(h).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::grant::GrantKind;
    use crate::billing::resource::ResourceSet;
    use proptest::prelude::*;

    const GB: u64 = BYTES_PER_GB;
    const H: i64 = HOUR_MS;

    fn plan(gb: i64, starts: i64, expires: i64) -> Grant {
        Grant {
            grant_id: "s/1".into(),
            kind: GrantKind::Plan,
            covers: ResourceSet::of(Resource::Storage),
            unit: GrantUnit::Gigabytes,
            quota: Decimal::from(gb),
            remaining: Decimal::from(gb),
            starts_at_ms: starts,
            expires_at_ms: expires,
            created_at_ms: starts,
            source: "plan.storage.100gb".into(),
            stackable: false,
        }
    }

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    #[test]
    fn one_gb_for_a_30_day_month_costs_the_gb_month_price_rounded_hourly() {
        // 1 GB x 720 h = 720 GB-hours = 1 GB-month: 0.12 exactly, but each hour is its own
        // charge, rounded at 8 places: 720 x 0.00016667 = 0.1200024.
        let mut meter = StorageMeter::new(GB, 0).unwrap();
        let hours = meter.advance(&[], 720 * H);
        assert_eq!(hours.len(), 720);
        let total: Money = hours
            .iter()
            .map(|h| hour_cost(m("0.12"), h.excess_byte_hours))
            .sum();
        assert_eq!(total, m("0.1200024"));
        // With a price that divides evenly (0.072 / 720 = 0.0001 per GB-hour) it is exact.
        assert_eq!(hour_cost(m("0.072"), GB), m("0.0001"));
        // Each hour: 1e9 byte-hours x 0.12 / (1e9 x 720) = 0.00016666666... -> 0.00016667.
        assert_eq!(hour_cost(m("0.12"), GB), m("0.00016667"));
    }

    #[test]
    fn capacity_covers_up_to_its_gb_and_the_excess_is_charged() {
        let grants = vec![plan(100, 0, 1_000 * H)];
        // 150 GB stored for the whole hour under a 100 GB plan: 50 GB-hours charged.
        let mut meter = StorageMeter::new(150 * GB, 10 * H).unwrap();
        let hours = meter.advance(&grants, 11 * H);
        assert_eq!(
            hours,
            vec![StorageHour {
                hour_start_ms: 10 * H,
                excess_byte_hours: 50 * GB,
                stored_byte_hours: 150 * GB,
            }]
        );
        // 50 GB-hours x 0.12 / 720 = 0.00833333... -> 0.00833333.
        assert_eq!(hour_cost(m("0.12"), 50 * GB), m("0.00833333"));
        // Under the capacity nothing is charged.
        let mut under = StorageMeter::new(80 * GB, 10 * H).unwrap();
        assert_eq!(under.advance(&grants, 11 * H)[0].excess_byte_hours, 0);
        assert_eq!(hourly_cost(m("0.12"), 80 * GB, 100 * GB), Money::ZERO);
        assert_eq!(hourly_cost(m("0.12"), 150 * GB, 100 * GB), m("0.00833333"));
    }

    #[test]
    fn levels_are_integrated_piecewise_within_the_hour() {
        // 0 GB until :15, then 40 GB until :45, then 10 GB; no plan.
        let mut meter = StorageMeter::new(0, 0).unwrap();
        assert!(meter.report(&[], 40 * GB, 15 * 60_000).unwrap().is_empty());
        assert!(meter.report(&[], 10 * GB, 45 * 60_000).unwrap().is_empty());
        let hours = meter.advance(&[], H);
        // 40 GB x 0.5 h + 10 GB x 0.25 h = 22.5 GB-hours.
        assert_eq!(hours[0].excess_byte_hours, 22_500_000_000);
        assert_eq!(meter.hour_start_ms, H);
        assert_eq!(meter.bytes_stored, 10 * GB);
    }

    #[test]
    fn a_plan_expiring_mid_hour_covers_only_until_it_expires() {
        // 100 GB plan expires at :30; 120 GB stored: 20 GB excess for half an hour, then
        // 120 GB for the other half: 10 + 60 = 70 GB-hours.
        let grants = vec![plan(100, -H, H / 2)];
        let mut meter = StorageMeter::new(120 * GB, 0).unwrap();
        let hours = meter.advance(&grants, H);
        assert_eq!(hours[0].excess_byte_hours, 70 * GB);
        assert_eq!(hours[0].stored_byte_hours, 120 * GB);
    }

    #[test]
    fn reports_must_come_in_time_order_and_a_late_look_closes_every_hour() {
        let mut meter = StorageMeter::new(GB, 30 * 60_000).unwrap();
        // First hour: half of it stored (from :30).
        let hours = meter.report(&[], 2 * GB, 3 * H + 1).unwrap();
        assert_eq!(
            hours
                .iter()
                .map(|h| h.excess_byte_hours)
                .collect::<Vec<_>>(),
            vec![GB / 2, GB, GB]
        );
        assert_eq!(
            meter.report(&[], GB, 3 * H),
            Err(StorageError::OutOfOrder {
                at_ms: 3 * H,
                last_at_ms: 3 * H + 1
            })
        );
        // The same instant again replaces the level.
        assert!(meter.report(&[], 5 * GB, 3 * H + 1).unwrap().is_empty());
        assert_eq!(meter.bytes_stored, 5 * GB);
        assert_eq!(
            StorageMeter::new(BYTES_STORED_MAX + 1, 0),
            Err(StorageError::TooLarge(BYTES_STORED_MAX + 1))
        );
        assert_eq!(
            StorageHour {
                hour_start_ms: 7,
                excess_byte_hours: 0,
                stored_byte_hours: 0
            }
            .usage_id("acme"),
            "storage/acme/7"
        );
    }

    proptest! {
        /// However often the meter is looked at, the hours it closes are the same.
        #[test]
        fn closing_does_not_depend_on_when_it_is_looked_at(
            levels in prop::collection::vec((0u64..500, 1i64..5_000_000), 1..12),
            looks in prop::collection::vec(0i64..20_000_000, 0..12),
            cap_gb in 0i64..300,
        ) {
            let grants = vec![plan(cap_gb, 2_000_000, 9_000_000)];
            let mut punctual = StorageMeter::new(0, 0).unwrap();
            let mut late = StorageMeter::new(0, 0).unwrap();
            let mut a = Vec::new();
            let mut b = Vec::new();
            let mut t = 0;
            let mut looks = looks;
            looks.sort_unstable();
            for (gb, dt) in levels {
                t += dt;
                // The punctual one also looks at every hour end and at random times.
                let mut h = hour_start_ms(punctual.level_at_ms) + H;
                while h <= t {
                    a.extend(punctual.advance(&grants, h));
                    h += H;
                }
                for l in looks.iter().filter(|l| **l <= t) {
                    a.extend(punctual.advance(&grants, *l));
                }
                a.extend(punctual.report(&grants, gb * GB / 10, t).unwrap());
                b.extend(late.report(&grants, gb * GB / 10, t).unwrap());
            }
            a.extend(punctual.advance(&grants, t + 3 * H));
            b.extend(late.advance(&grants, t + 3 * H));
            prop_assert_eq!(a, b);
        }
    }
}
