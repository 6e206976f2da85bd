//! Rows as both stores keep them, and back: money and quotas as decimal text, times,
//! quantities and counts as BIGINT, resource sets and permissions as small integers. Each
//! store reads columns with its own driver into the `Raw*` rows here and turns them into
//! ledger values with the same code, so SQLite and PostgreSQL cannot disagree on what a
//! row means. A stored number that does not fit its type is `Corrupt`; a number too large
//! for its column is refused (`TooLarge`) before it is written, never wrapped around.

use std::str::FromStr;

use rust_decimal::Decimal;

use super::{LeaseRow, PurchaseRecord, StoreError, TopUpRecord};
use crate::billing::{
    Deduction, Grant, GrantKind, GrantUnit, Money, Resource, ResourceSet, Source,
};
use crate::ledger::StatementEntry;

/// Unit code of a free-tier deduction row (money and volume rows use `GrantUnit::code`).
const FREE_UNIT: &str = "free";

pub fn dec(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|_| StoreError::Corrupt(format!("{s:?} is not a decimal")))
}

pub fn money(s: &str) -> Result<Money, StoreError> {
    dec(s).map(Money::from_decimal)
}

/// `v` for a BIGINT column.
pub fn bigint(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::TooLarge { what, value: v })
}

/// `v` for an INTEGER (INT4) column.
pub fn int4(what: &'static str, v: usize) -> Result<i32, StoreError> {
    i32::try_from(v).map_err(|_| StoreError::TooLarge {
        what,
        value: u64::try_from(v).unwrap_or(u64::MAX),
    })
}

/// A stored count, quantity or sequence number: never negative.
pub fn count(what: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is negative")))
}

/// A stored permission set (see `auth::Perms`).
pub fn permissions(v: i64) -> Result<u8, StoreError> {
    u8::try_from(v).map_err(|_| StoreError::Corrupt(format!("permissions {v} are not a set")))
}

pub fn resource(name: &str) -> Result<Resource, StoreError> {
    Resource::from_name(name).ok_or_else(|| StoreError::Corrupt(format!("resource {name:?}")))
}

/// A request count row: (resource, month key, count).
pub fn request_count(name: &str, month: i64, n: i64) -> Result<(Resource, i64, u64), StoreError> {
    Ok((resource(name)?, month, count("request count", n)?))
}

/// A `grants` row.
pub struct RawGrant {
    pub grant_id: String,
    pub kind: String,
    pub covers: i64,
    pub unit: String,
    pub quota: String,
    pub remaining: String,
    pub starts_at_ms: i64,
    pub expires_at_ms: i64,
    pub source: String,
    pub stackable: bool,
    pub created_at_ms: i64,
}

impl RawGrant {
    pub fn into_grant(self) -> Result<Grant, StoreError> {
        let covers = u8::try_from(self.covers)
            .map_err(|_| StoreError::Corrupt(format!("grant covers {}", self.covers)))?;
        Ok(Grant {
            kind: GrantKind::from_name(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("grant kind {:?}", self.kind)))?,
            covers: ResourceSet::from_bits(covers),
            unit: GrantUnit::from_code(&self.unit)
                .ok_or_else(|| StoreError::Corrupt(format!("grant unit {:?}", self.unit)))?,
            quota: dec(&self.quota)?,
            remaining: dec(&self.remaining)?,
            starts_at_ms: self.starts_at_ms,
            expires_at_ms: self.expires_at_ms,
            created_at_ms: self.created_at_ms,
            source: self.source,
            stackable: self.stackable,
            grant_id: self.grant_id,
        })
    }
}

/// A `leases` row.
pub struct RawLease {
    pub sidecar_id: String,
    pub remaining: String,
    pub expires_at_ms: i64,
    pub request_seq: i64,
    pub held: String,
    pub want: String,
    pub edge: bool,
    pub give_back: bool,
}

impl RawLease {
    pub fn into_lease(self) -> Result<LeaseRow, StoreError> {
        Ok(LeaseRow {
            remaining: money(&self.remaining)?,
            expires_at_ms: self.expires_at_ms,
            request_seq: count("lease request seq", self.request_seq)?,
            held: money(&self.held)?,
            want: money(&self.want)?,
            edge: self.edge,
            give_back: self.give_back,
            sidecar_id: self.sidecar_id,
        })
    }
}

/// A `usage` row as a statement reads it.
pub struct RawUsage {
    pub usage_id: String,
    pub resource: String,
    pub sku: String,
    pub quantity: i64,
    pub cost: String,
    pub at_ms: i64,
    pub free_quantity: i64,
}

impl RawUsage {
    /// The statement entry, with its deduction rows in their order.
    pub fn into_entry(self, deductions: Vec<DeductionRow>) -> Result<StatementEntry, StoreError> {
        let cost = money(&self.cost)?;
        let free_quantity = count("free quantity", self.free_quantity)?;
        Ok(StatementEntry {
            resource: resource(&self.resource)?,
            deductions: read_deductions(deductions, cost, free_quantity)?,
            free_quantity,
            quantity: count("quantity", self.quantity)?,
            usage_id: self.usage_id,
            sku: self.sku,
            cost,
            at_ms: self.at_ms,
        })
    }
}

/// A `topups` row.
pub fn topup(
    topup_id: &str,
    account_id: String,
    amount: &str,
    at_ms: i64,
) -> Result<TopUpRecord, StoreError> {
    Ok(TopUpRecord {
        topup_id: topup_id.to_owned(),
        account_id,
        amount: money(amount)?,
        at_ms,
    })
}

/// A `purchases` row (but its id).
pub struct RawPurchase {
    pub account_id: String,
    pub sku: String,
    pub price_paid: String,
    pub effective_at_ms: i64,
    pub at_ms: i64,
    pub once_per_account: bool,
}

impl RawPurchase {
    pub fn into_record(self, purchase_id: &str) -> Result<PurchaseRecord, StoreError> {
        Ok(PurchaseRecord {
            purchase_id: purchase_id.to_owned(),
            price_paid: money(&self.price_paid)?,
            account_id: self.account_id,
            sku: self.sku,
            effective_at_ms: self.effective_at_ms,
            at_ms: self.at_ms,
            once_per_account: self.once_per_account,
        })
    }
}

/// A deduction as stored: source label, amount (money), unit code, and the GB of a
/// volume plan's row.
pub type DeductionRow = (String, String, String, Option<String>);

/// How `d` is stored (see `DeductionRow`).
pub fn deduction_row(d: &Deduction) -> (&str, String, &'static str, Option<String>) {
    let unit = match (&d.source, d.gb) {
        (Source::FreeTier, _) => FREE_UNIT,
        (_, Some(_)) => GrantUnit::Gigabytes.code(),
        (_, None) => GrantUnit::Money.code(),
    };
    (
        d.source.label(),
        d.amount.to_string(),
        unit,
        d.gb.map(|gb| gb.to_string()),
    )
}

/// Stored deduction rows of an entry back into deductions, in their order. Rows written
/// before every deduction carried its money (a volume row without `gb`, whose amount is
/// the GB; no row for free requests) get it from the entry's list cost: what the other
/// rows leave goes to the volume rows, shared by GB, or else to the free tier.
pub fn read_deductions(
    rows: Vec<DeductionRow>,
    cost: Money,
    free_quantity: u64,
) -> Result<Vec<Deduction>, StoreError> {
    let mut out = Vec::with_capacity(rows.len());
    // Indices of volume rows of the earlier form.
    let mut legacy = Vec::new();
    for (source, amount, unit, gb) in rows {
        let amount = dec(&amount)?;
        let d = match (unit.as_str(), gb) {
            (FREE_UNIT, _) => Deduction::money(Source::FreeTier, Money::from_decimal(amount)),
            ("GB", Some(gb)) => Deduction {
                source: Source::Grant(source),
                amount: Money::from_decimal(amount),
                gb: Some(dec(&gb)?),
            },
            ("GB", None) => {
                legacy.push(out.len());
                Deduction {
                    source: Source::Grant(source),
                    amount: Money::ZERO,
                    gb: Some(amount),
                }
            }
            ("money", _) => {
                Deduction::money(Source::from_label(&source), Money::from_decimal(amount))
            }
            _ => return Err(StoreError::Corrupt(format!("deduction unit {unit:?}"))),
        };
        out.push(d);
    }
    let left = cost - out.iter().map(|d| d.amount).sum::<Money>();
    if let Some((&last, rest)) = legacy.split_last() {
        let total_gb: Decimal = legacy.iter().filter_map(|&i| out[i].gb).sum();
        let mut given = Money::ZERO;
        for &i in rest {
            let share = if total_gb.is_zero() {
                Money::ZERO
            } else {
                let gb = out[i].gb.unwrap_or_default();
                Money::round_charge(left.as_decimal() * gb / total_gb)
            };
            out[i].amount = share;
            given += share;
        }
        out[last].amount = left - given;
    } else if free_quantity > 0
        && left.is_positive()
        && !out.iter().any(|d| d.source == Source::FreeTier)
    {
        out.insert(0, Deduction::money(Source::FreeTier, left));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(source: &str, amount: &str, unit: &str, gb: Option<&str>) -> DeductionRow {
        (
            source.into(),
            amount.into(),
            unit.into(),
            gb.map(Into::into),
        )
    }

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    #[test]
    fn deductions_round_trip_through_their_rows() {
        let ds = vec![
            Deduction::money(Source::FreeTier, m("0.01")),
            Deduction::money(Source::Grant("c1".into()), m("0.25")),
            Deduction {
                source: Source::Grant("t1/1".into()),
                amount: m("1.25"),
                gb: Some(Decimal::new(25, 1)),
            },
            Deduction::money(Source::Balance, m("0.5")),
        ];
        let rows: Vec<DeductionRow> = ds
            .iter()
            .map(|d| {
                let (s, a, u, g) = deduction_row(d);
                (s.to_owned(), a, u.to_owned(), g)
            })
            .collect();
        assert_eq!(read_deductions(rows, m("2.01"), 100).unwrap(), ds);
    }

    /// Rows of the earlier form: GB in `amount` and no money; no row for free requests.
    #[test]
    fn earlier_rows_get_the_money_their_entry_leaves() {
        let rows = vec![
            row("t1/1", "1", "GB", None),
            row("t2/1", "3", "GB", None),
            row("balance", "0.5", "money", None),
        ];
        let got = read_deductions(rows, m("2.5"), 0).unwrap();
        let amounts: Vec<(String, String, Option<Decimal>)> = got
            .iter()
            .map(|d| (d.source.label().to_owned(), d.amount.to_string(), d.gb))
            .collect();
        assert_eq!(
            amounts,
            vec![
                ("t1/1".into(), "0.5".into(), Some(Decimal::from(1))),
                ("t2/1".into(), "1.5".into(), Some(Decimal::from(3))),
                ("balance".into(), "0.5".into(), None),
            ]
        );
        let free =
            read_deductions(vec![row("balance", "0.02", "money", None)], m("0.03"), 10).unwrap();
        assert_eq!(
            free,
            vec![
                Deduction::money(Source::FreeTier, m("0.01")),
                Deduction::money(Source::Balance, m("0.02"))
            ]
        );
        assert!(read_deductions(vec![row("x", "1", "kg", None)], m("1"), 0).is_err());
    }

    #[test]
    fn numbers_that_do_not_fit_are_refused_never_wrapped() {
        assert_eq!(bigint("seq", 7).unwrap(), 7);
        assert!(matches!(
            bigint("seq", u64::MAX),
            Err(StoreError::TooLarge {
                what: "seq",
                value: u64::MAX
            })
        ));
        assert!(matches!(
            int4("ordinal", usize::MAX),
            Err(StoreError::TooLarge { .. })
        ));
        assert_eq!(count("quantity", 5).unwrap(), 5);
        assert!(matches!(count("quantity", -1), Err(StoreError::Corrupt(_))));
        assert!(matches!(permissions(256), Err(StoreError::Corrupt(_))));
        let grant = |covers| RawGrant {
            grant_id: "g".into(),
            kind: "COUPON".into(),
            covers,
            unit: "money".into(),
            quota: "1".into(),
            remaining: "1".into(),
            starts_at_ms: 0,
            expires_at_ms: 1,
            source: "coupon".into(),
            stackable: true,
            created_at_ms: 0,
        };
        assert_eq!(
            grant(3).into_grant().unwrap().covers,
            ResourceSet::from_bits(3)
        );
        assert!(matches!(
            grant(300).into_grant(),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            grant(-1).into_grant(),
            Err(StoreError::Corrupt(_))
        ));
    }
}
