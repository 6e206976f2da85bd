//! Statements as an operator reads them: one month's charges, and sums per day (in the
//! platform's zone) or per resource of what they listed, what the grants and the balance
//! paid, the GB volume plans gave and the requests that were free. Plain data, so every
//! output format shows the same numbers.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::format::resource_name;
use crate::billing::Money;
use crate::billing::burndown::FREE_TIER_LABEL;
use crate::billing::free_tier::{Calendar, Month};
use crate::pb;

/// How `ctl statement` groups charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatementBy {
    /// One line per charge
    Entry,
    /// Sums per day (in the time zone) and resource
    Day,
    /// Sums per resource
    Resource,
}

/// Keeps the entries of calendar month `m` in the calendar's zone.
pub fn keep_month(st: &mut pb::Statement, m: Month, cal: &Calendar) {
    st.entries
        .retain(|e| cal.month_of(e.at_ms).is_ok_and(|em| em == m));
}

/// Sums of a group of statement entries.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sums {
    pub entries: usize,
    pub quantity: u128,
    pub free_quantity: u128,
    pub cost: Money,
    pub from_balance: Money,
    pub from_grants: Money,
    pub gb_from_plans: Decimal,
}

/// A statement summed per (day, resource) or per resource (the day is then empty).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StatementSums {
    /// Keyed by (day as YYYY-MM-DD, or "" unless summed by day; resource name).
    pub groups: BTreeMap<(String, String), Sums>,
    /// Entries, cost and what grants and balance paid, over all groups.
    pub total: Sums,
    /// Some amount could not be read and is left out of the sums.
    pub unreadable: bool,
}

/// Sums `st`'s entries per day and resource (`by` Day) or per resource (otherwise).
pub fn sums(st: &pb::Statement, by: StatementBy, cal: &Calendar) -> StatementSums {
    let mut out = StatementSums::default();
    for e in &st.entries {
        let day = match by {
            StatementBy::Day => cal
                .day_of(e.at_ms)
                .map(|d| d.to_string())
                .unwrap_or_else(|_| "?".to_owned()),
            _ => String::new(),
        };
        let g = out
            .groups
            .entry((day, resource_name(e.resource)))
            .or_default();
        out.unreadable |= !add_entry(g, e);
    }
    for g in out.groups.values() {
        out.total.entries += g.entries;
        out.total.cost += g.cost;
        out.total.from_grants += g.from_grants;
        out.total.from_balance += g.from_balance;
    }
    out
}

/// Adds one entry to `g`; false if an amount of it was unreadable (and left out).
fn add_entry(g: &mut Sums, e: &pb::StatementEntry) -> bool {
    let mut readable = true;
    g.entries += 1;
    g.quantity += u128::from(e.quantity.max(0).unsigned_abs());
    g.free_quantity += u128::from(e.free_quantity.max(0).unsigned_abs());
    match parse_amount(&e.cost) {
        Some(c) => g.cost += c,
        None => readable = false,
    }
    for d in &e.deductions {
        if !d.gb.is_empty() {
            match d.gb.parse::<Decimal>() {
                Ok(gb) => g.gb_from_plans += gb,
                Err(_) => readable = false,
            }
            continue;
        }
        if d.source == FREE_TIER_LABEL {
            // Counted as FREE quantity; no one paid it.
            continue;
        }
        match parse_amount(&d.amount) {
            Some(a) if d.source == "balance" => g.from_balance += a,
            Some(a) => g.from_grants += a,
            None => readable = false,
        }
    }
    readable
}

/// The sum of the entries' costs; None if one is missing or unreadable. One deployment
/// bills in one currency, so the costs can be summed as they are.
pub fn total_cost(st: &pb::Statement) -> Option<Money> {
    st.entries
        .iter()
        .try_fold(Money::ZERO, |acc, e| parse_amount(&e.cost).map(|m| acc + m))
}

fn parse_amount(m: &Option<pb::Money>) -> Option<Money> {
    m.as_ref().and_then(|m| Money::parse(&m.amount).ok())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub fn cny(a: &str) -> Option<pb::Money> {
        Some(pb::Money {
            currency: "CNY".into(),
            amount: a.into(),
        })
    }

    fn entry_at(
        id: &str,
        resource: pb::Resource,
        at_ms: i64,
        cost: &str,
        from: &[(&str, &str, &str)],
    ) -> pb::StatementEntry {
        pb::StatementEntry {
            usage_id: id.into(),
            resource: resource as i32,
            sku: "s".into(),
            quantity: 1000,
            cost: cny(cost),
            deductions: from
                .iter()
                .map(|(s, a, gb)| pb::Deduction {
                    source: s.to_string(),
                    amount: (!a.is_empty()).then(|| pb::Money {
                        currency: "CNY".into(),
                        amount: a.to_string(),
                    }),
                    gb: gb.to_string(),
                })
                .collect(),
            at_ms,
            free_quantity: if resource == pb::Resource::RequestGet {
                400
            } else {
                0
            },
        }
    }

    /// 2026-11-30T15:59:59Z is 23:59:59 on November 30th in Shanghai; a second later it
    /// is December 1st there (and still November 30th in UTC).
    const NOV_LAST: i64 = 1_796_054_399_000;
    const DEC_FIRST: i64 = NOV_LAST + 1_000;

    pub fn month_statement() -> pb::Statement {
        pb::Statement {
            account_id: "acme".into(),
            truncated: false,
            entries: vec![
                entry_at(
                    "a",
                    pb::Resource::Traffic,
                    NOV_LAST - 3_600_000,
                    "1.5",
                    &[("t1/1", "1", "2"), ("balance", "0.5", "")],
                ),
                entry_at(
                    "b",
                    pb::Resource::Traffic,
                    NOV_LAST,
                    "0.5",
                    &[("balance", "0.5", "")],
                ),
                entry_at(
                    "c",
                    pb::Resource::RequestGet,
                    NOV_LAST,
                    "0.01",
                    &[("free_tier", "0.004", ""), ("c1", "0.006", "")],
                ),
                entry_at(
                    "d",
                    pb::Resource::Storage,
                    DEC_FIRST,
                    "0.2",
                    &[("balance", "0.2", "")],
                ),
            ],
        }
    }

    #[test]
    fn a_months_entries_are_those_of_that_month_in_the_platforms_zone() {
        let cal = Calendar::default();
        let mut st = month_statement();
        keep_month(&mut st, Month::parse("2026-11").unwrap(), &cal);
        assert_eq!(st.entries.len(), 3);
        let mut dec = month_statement();
        keep_month(&mut dec, Month::parse("2026-12").unwrap(), &cal);
        assert_eq!(dec.entries.len(), 1);
        // In UTC all four are November's.
        let utc = Calendar {
            zone: chrono_tz::UTC,
            ..Calendar::default()
        };
        let mut st = month_statement();
        keep_month(&mut st, Month::parse("2026-11").unwrap(), &utc);
        assert_eq!(st.entries.len(), 4);
    }

    #[test]
    fn sums_split_what_grants_plans_balance_and_the_free_tier_paid() {
        let s = sums(&month_statement(), StatementBy::Day, &Calendar::default());
        let traffic = &s.groups[&("2026-11-30".to_owned(), "TRAFFIC".to_owned())];
        assert_eq!(traffic.entries, 2);
        assert_eq!(traffic.cost.to_string(), "2");
        assert_eq!(traffic.gb_from_plans, Decimal::from(2));
        assert_eq!(traffic.from_balance.to_string(), "1");
        let get = &s.groups[&("2026-11-30".to_owned(), "REQUEST_GET".to_owned())];
        assert_eq!(
            (get.free_quantity, get.from_grants.to_string()),
            (400, "0.006".into())
        );
        assert!(
            s.groups
                .contains_key(&("2026-12-01".to_owned(), "STORAGE".to_owned()))
        );
        assert_eq!(s.total.entries, 4);
        assert!(!s.unreadable);
        assert_eq!(
            total_cost(&month_statement()).map(|m| m.to_string()),
            Some("2.21".into())
        );
    }
}
