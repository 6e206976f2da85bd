//! The monthly free tier of storage requests (R1): the first 5,000,000 PUT and 20,000,000
//! GET of each calendar month cost nothing. "Calendar month" is the platform's month, so
//! the boundary is midnight on the 1st in its time zone (Asia/Shanghai by default), not in
//! UTC: a request at 2026-11-30T17:00Z is already in December in Shanghai. The zone is an
//! IANA zone (chrono-tz), not a fixed offset, so a deployment in a zone with daylight
//! saving gets its month boundaries right too.
//!
//! The count that a month's allowance is measured against lives at the ledger (several
//! sidecars may serve one account); this module only says which month a request falls in
//! and how a batch splits into free and billable requests.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{Datelike, NaiveDate, TimeZone};
use chrono_tz::Tz;

use super::resource::Resource;

/// The platform's time zone when the catalog does not name one.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Shanghai";
/// Free PUT requests per account and calendar month.
pub const DEFAULT_FREE_PUT_PER_MONTH: u64 = 5_000_000;
/// Free GET requests per account and calendar month.
pub const DEFAULT_FREE_GET_PER_MONTH: u64 = 20_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FreeTierError {
    #[error("time zone {0:?} is not an IANA time zone name (e.g. \"Asia/Shanghai\")")]
    UnknownZone(String),
    #[error("month {0:?} is not YYYY-MM")]
    BadMonth(String),
    #[error("time {0} ms is outside the supported range")]
    BadTime(i64),
}

/// A calendar month in the platform's zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    /// 1..=12
    pub month: u32,
}

impl Month {
    /// The month as one integer (YYYYMM), how stores key it.
    pub fn key(self) -> i64 {
        i64::from(self.year) * 100 + i64::from(self.month)
    }

    pub fn from_key(key: i64) -> Option<Month> {
        let year = i32::try_from(key / 100).ok()?;
        let month = u32::try_from(key % 100).ok()?;
        (1..=12).contains(&month).then_some(Month { year, month })
    }

    /// Parses "YYYY-MM".
    pub fn parse(s: &str) -> Result<Month, FreeTierError> {
        let bad = || FreeTierError::BadMonth(s.to_owned());
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The platform's calendar: its zone and the free request allowance per month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Calendar {
    pub zone: Tz,
    pub free_put_per_month: u64,
    pub free_get_per_month: u64,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar {
            zone: chrono_tz::Asia::Shanghai,
            free_put_per_month: DEFAULT_FREE_PUT_PER_MONTH,
            free_get_per_month: DEFAULT_FREE_GET_PER_MONTH,
        }
    }
}

impl Calendar {
    pub fn zone_named(name: &str) -> Result<Tz, FreeTierError> {
        name.parse::<Tz>()
            .map_err(|_| FreeTierError::UnknownZone(name.to_owned()))
    }

    /// Free requests of `resource` per month (0 for what has no free tier).
    pub fn allowance(&self, resource: Resource) -> u64 {
        match resource {
            Resource::RequestPut => self.free_put_per_month,
            Resource::RequestGet => self.free_get_per_month,
            _ => 0,
        }
    }

    /// The month `at_ms` falls in, in the platform's zone.
    pub fn month_of(&self, at_ms: i64) -> Result<Month, FreeTierError> {
        let t = self
            .zone
            .timestamp_millis_opt(at_ms)
            .single()
            .ok_or(FreeTierError::BadTime(at_ms))?;
        Ok(Month {
            year: t.year(),
            month: t.month(),
        })
    }

    /// The day (YYYY-MM-DD) `at_ms` falls on, in the platform's zone.
    pub fn day_of(&self, at_ms: i64) -> Result<NaiveDate, FreeTierError> {
        let t = self
            .zone
            .timestamp_millis_opt(at_ms)
            .single()
            .ok_or(FreeTierError::BadTime(at_ms))?;
        Ok(t.date_naive())
    }

    /// When `month` begins: midnight on its 1st in the platform's zone. A zone whose
    /// clocks skip midnight that day (a DST change at 00:00) begins at the first instant
    /// that exists.
    pub fn month_start_ms(&self, month: Month) -> Result<i64, FreeTierError> {
        let bad = || FreeTierError::BadMonth(month.to_string());
        let day = NaiveDate::from_ymd_opt(month.year, month.month, 1).ok_or_else(bad)?;
        let mut local = day.and_hms_opt(0, 0, 0).ok_or_else(bad)?;
        // At most a few hours can be skipped; step by 15 minutes to the first that exists.
        for _ in 0..(24 * 4) {
            if let Some(t) = self.zone.from_local_datetime(&local).earliest() {
                return Ok(t.timestamp_millis());
            }
            local += chrono::Duration::minutes(15);
        }
        Err(bad())
    }
}

/// Requests counted so far, per (resource, month key): what the month's allowance is
/// measured against. The ledger stores them; a sidecar caches the ledger's and adds its
/// own unapplied usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts(pub BTreeMap<(Resource, i64), u64>);

impl RequestCounts {
    pub fn from_rows(rows: impl IntoIterator<Item = (Resource, i64, u64)>) -> Self {
        RequestCounts(rows.into_iter().map(|(r, m, c)| ((r, m), c)).collect())
    }

    pub fn rows(&self) -> Vec<(Resource, i64, u64)> {
        self.0.iter().map(|((r, m), c)| (*r, *m, *c)).collect()
    }

    /// Requests of `resource` counted in the month of `at_ms`.
    pub fn used(&self, cal: &Calendar, resource: Resource, at_ms: i64) -> u64 {
        cal.month_of(at_ms)
            .map(|m| self.0.get(&(resource, m.key())).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// The free part of `quantity` requests at `at_ms` (0 for what has no free tier).
    pub fn free_part(&self, cal: &Calendar, resource: Resource, quantity: u64, at_ms: i64) -> u64 {
        self.free_part_after(cal, resource, 0, quantity, at_ms)
    }

    /// `free_part` of `quantity` requests that come after `earlier` more of this month's
    /// (open reservations, say), which take the free tier first.
    pub fn free_part_after(
        &self,
        cal: &Calendar,
        resource: Resource,
        earlier: u64,
        quantity: u64,
        at_ms: i64,
    ) -> u64 {
        let allowance = cal.allowance(resource);
        if allowance == 0 {
            return 0;
        }
        let used = self.used(cal, resource, at_ms).saturating_add(earlier);
        split(allowance, used, quantity).0
    }

    /// Counts `quantity` requests at `at_ms`; returns the (resource, month key) changed.
    pub fn add(
        &mut self,
        cal: &Calendar,
        resource: Resource,
        quantity: u64,
        at_ms: i64,
    ) -> Option<(Resource, i64)> {
        if !matches!(resource, Resource::RequestPut | Resource::RequestGet) {
            return None;
        }
        let key = (resource, cal.month_of(at_ms).ok()?.key());
        let c = self.0.entry(key).or_insert(0);
        *c = c.saturating_add(quantity);
        Some(key)
    }
}

/// How `quantity` requests split when `used_before` of this month's `allowance` are already
/// counted: (free, billable). Exact and order-independent in sum: splitting n requests in
/// any batches gives the same total billable as one batch.
pub fn split(allowance: u64, used_before: u64, quantity: u64) -> (u64, u64) {
    let left = allowance.saturating_sub(used_before);
    let free = left.min(quantity);
    (free, quantity - free)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn month_boundary_is_midnight_in_shanghai() {
        let c = Calendar::default();
        // 2026-11-30T15:59:59.999Z is 23:59:59.999 in Shanghai: still November.
        assert_eq!(
            c.month_of(ms("2026-11-30T15:59:59.999Z")).unwrap(),
            Month {
                year: 2026,
                month: 11
            }
        );
        // One millisecond later it is December 1st, 00:00 there (and still November in UTC).
        assert_eq!(
            c.month_of(ms("2026-11-30T16:00:00Z")).unwrap(),
            Month {
                year: 2026,
                month: 12
            }
        );
        assert_eq!(
            c.month_start_ms(Month {
                year: 2026,
                month: 12
            })
            .unwrap(),
            ms("2026-11-30T16:00:00Z")
        );
        assert_eq!(
            c.day_of(ms("2026-11-30T16:00:00Z")).unwrap().to_string(),
            "2026-12-01"
        );
    }

    #[test]
    fn a_zone_with_daylight_saving_uses_its_offset_of_the_day() {
        let c = Calendar {
            zone: Calendar::zone_named("Europe/Berlin").unwrap(),
            ..Calendar::default()
        };
        // July: UTC+2; January: UTC+1. A fixed offset would get one of them wrong.
        assert_eq!(
            c.month_start_ms(Month {
                year: 2026,
                month: 7
            })
            .unwrap(),
            ms("2026-06-30T22:00:00Z")
        );
        assert_eq!(
            c.month_start_ms(Month {
                year: 2027,
                month: 1
            })
            .unwrap(),
            ms("2026-12-31T23:00:00Z")
        );
        assert!(matches!(
            Calendar::zone_named("UTC+8"),
            Err(FreeTierError::UnknownZone(_))
        ));
    }

    #[test]
    fn months_parse_and_key() {
        let m = Month::parse("2026-11").unwrap();
        assert_eq!(m.to_string(), "2026-11");
        assert_eq!(m.key(), 202_611);
        assert_eq!(Month::from_key(202_611), Some(m));
        assert_eq!(Month::from_key(202_613), None);
        assert_eq!(
            m.next().next(),
            Month {
                year: 2027,
                month: 1
            }
        );
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", ""] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowance_and_split() {
        let c = Calendar::default();
        assert_eq!(c.allowance(Resource::RequestPut), 5_000_000);
        assert_eq!(c.allowance(Resource::RequestGet), 20_000_000);
        assert_eq!(c.allowance(Resource::Traffic), 0);
        assert_eq!(split(5_000_000, 4_999_990, 25), (10, 15));
        assert_eq!(split(5_000_000, 5_000_000, 25), (0, 25));
        assert_eq!(split(5_000_000, 0, 25), (25, 0));
        assert_eq!(split(0, 0, 7), (0, 7));
    }

    proptest! {
        #[test]
        fn billable_total_does_not_depend_on_batching(
            allowance in 0u64..1_000,
            batches in prop::collection::vec(0u64..300, 0..20),
        ) {
            let total: u64 = batches.iter().sum();
            let mut used = 0;
            let mut billable = 0;
            for q in &batches {
                let (free, bill) = split(allowance, used, *q);
                prop_assert_eq!(free + bill, *q);
                used += q;
                billable += bill;
            }
            prop_assert_eq!(billable, total.saturating_sub(allowance));
        }
    }
}
