//! The catalog: pay-as-you-go prices per sku and the plans and packages on offer. Read from
//! TOML (a default ships inside the binary; operators replace it with `--catalog FILE`) and
//! validated whole at start, so a bad price is an error at boot, never at billing time.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Deserialize;

use super::free_tier::{Calendar, DEFAULT_FREE_GET_PER_MONTH, DEFAULT_FREE_PUT_PER_MONTH};
use super::grant::GrantUnit;
use super::money::{Money, MoneyError};
use super::resource::{PriceUnit, Resource, ResourceSet};

/// The catalog compiled into the binary (example prices).
pub const DEFAULT_CATALOG_TOML: &str = include_str!("default_catalog.toml");

/// Most skus (prices plus offers) a catalog may hold.
pub const DEFAULT_CATALOG_SKUS_MAX: usize = 10_000;

/// Largest quantity one request may carry (ms, bytes or requests): about 31,700 years of
/// GPU time or a petabyte of traffic. Keeps quantity x price far inside Decimal range.
pub const QUANTITY_MAX: u64 = 1_000_000_000_000_000;

/// Months a plan is valid when the catalog does not say (R4: one year).
pub const DEFAULT_VALIDITY_MONTHS: u32 = 12;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is not valid TOML: {0}")]
    Toml(String),
    #[error("catalog currency {0:?} must be 3 upper-case letters")]
    Currency(String),
    #[error("catalog sku {0:?} is defined twice")]
    DuplicateSku(String),
    #[error("catalog sku {sku:?}: {msg}")]
    Invalid { sku: String, msg: String },
    #[error("catalog has {0} skus, more than the maximum of {DEFAULT_CATALOG_SKUS_MAX}")]
    TooLarge(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PriceError {
    #[error("unknown sku {0:?}")]
    UnknownSku(String),
    #[error("sku {sku:?} is priced for {priced}, not {asked}")]
    WrongResource {
        sku: String,
        priced: Resource,
        asked: Resource,
    },
    #[error("{0} is billed from stored levels, not from a quantity")]
    NotCounted(Resource),
    #[error("quantity {0} is larger than the maximum of {QUANTITY_MAX}")]
    QuantityTooLarge(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub sku: String,
    pub resource: Resource,
    pub unit_price: Money,
    pub description: String,
}

impl Price {
    pub fn unit(&self) -> PriceUnit {
        self.resource.price_unit()
    }

    /// The charge for `quantity` (ms, bytes or requests): quantity in price units times the
    /// unit price, exact, then rounded half away from zero at `CHARGE_DP` places only if
    /// the exact value has more (a few ms at a per-hour price).
    pub fn cost(&self, quantity: u64) -> Result<Money, PriceError> {
        if quantity > QUANTITY_MAX {
            return Err(PriceError::QuantityTooLarge(quantity));
        }
        let per_unit = self
            .unit()
            .quantity_per_unit()
            .ok_or(PriceError::NotCounted(self.resource))?;
        // quantity <= 1e15 and unit_price <= 1e12: the product fits Decimal's 96 bits.
        let exact = Decimal::from(quantity) * self.unit_price.as_decimal() / per_unit;
        Ok(Money::round_charge(exact))
    }

    /// The most quantity whose `cost` is at most `budget` (0 for a budget below zero;
    /// `QUANTITY_MAX` for a free sku): what a running job may still use.
    pub fn quantity_for(&self, budget: Money) -> u64 {
        if !budget.is_positive() {
            return 0;
        }
        let Some(per_unit) = self.unit().quantity_per_unit() else {
            return 0;
        };
        if !self.unit_price.is_positive() {
            return QUANTITY_MAX;
        }
        let exact = budget.as_decimal() * per_unit / self.unit_price.as_decimal();
        let mut q = exact
            .floor()
            .to_u64()
            .unwrap_or(QUANTITY_MAX)
            .min(QUANTITY_MAX);
        // Rounding of the charge may let one more unit fit, or one fewer.
        let fits = |q: u64| self.cost(q).is_ok_and(|c| c <= budget);
        while q < QUANTITY_MAX && fits(q + 1) {
            q += 1;
        }
        while q > 0 && !fits(q) {
            q -= 1;
        }
        q
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferKind {
    Plan,
    Package,
}

/// One grant an offer creates on purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferGrant {
    pub covers: ResourceSet,
    pub amount: Decimal,
    pub unit: GrantUnit,
    pub stackable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub sku: String,
    pub kind: OfferKind,
    pub price: Money,
    pub once_per_account: bool,
    pub validity_months: u32,
    pub grants: Vec<OfferGrant>,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    pub currency: String,
    /// The platform's time zone and monthly free requests (`[calendar]`).
    pub calendar: Calendar,
    pub prices: BTreeMap<String, Price>,
    pub offers: BTreeMap<String, Offer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    currency: String,
    #[serde(default)]
    calendar: Option<RawCalendar>,
    #[serde(default)]
    price: Vec<RawPrice>,
    #[serde(default)]
    offer: Vec<RawOffer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCalendar {
    time_zone: Option<String>,
    free_put_per_month: Option<u64>,
    free_get_per_month: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    sku: String,
    resource: String,
    unit_price: String,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffer {
    sku: String,
    kind: String,
    price: String,
    #[serde(default)]
    once_per_account: bool,
    validity_months: Option<u32>,
    grants: Vec<RawGrant>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    covers: Vec<String>,
    amount: String,
    unit: String,
    #[serde(default = "yes")]
    stackable: bool,
}

fn yes() -> bool {
    true
}

fn invalid(sku: &str, msg: impl Into<String>) -> CatalogError {
    CatalogError::Invalid {
        sku: sku.to_owned(),
        msg: msg.into(),
    }
}

fn money(sku: &str, what: &str, s: &str) -> Result<Money, CatalogError> {
    Money::parse_non_negative(s).map_err(|e: MoneyError| invalid(sku, format!("{what}: {e}")))
}

impl RawPrice {
    fn parse(self) -> Result<Price, CatalogError> {
        check_sku(&self.sku)?;
        let resource = Resource::from_name(&self.resource)
            .ok_or_else(|| invalid(&self.sku, format!("unknown resource {:?}", self.resource)))?;
        let unit_price = money(&self.sku, "unit_price", &self.unit_price)?;
        Ok(Price {
            sku: self.sku,
            resource,
            unit_price,
            description: self.description,
        })
    }
}

impl RawOffer {
    fn parse(self) -> Result<Offer, CatalogError> {
        check_sku(&self.sku)?;
        let kind = match self.kind.as_str() {
            "PLAN" => OfferKind::Plan,
            "PACKAGE" => OfferKind::Package,
            other => {
                return Err(invalid(
                    &self.sku,
                    format!("kind {other:?} is not PLAN or PACKAGE"),
                ));
            }
        };
        let price = money(&self.sku, "price", &self.price)?;
        let validity_months = self.validity_months.unwrap_or(DEFAULT_VALIDITY_MONTHS);
        if validity_months == 0 || validity_months > 120 {
            return Err(invalid(&self.sku, "validity_months must be 1..=120"));
        }
        if self.grants.is_empty() {
            return Err(invalid(
                &self.sku,
                "an offer must create at least one grant",
            ));
        }
        let grants = self
            .grants
            .into_iter()
            .map(|g| g.parse(&self.sku))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Offer {
            sku: self.sku,
            kind,
            price,
            once_per_account: self.once_per_account,
            validity_months,
            grants,
            description: self.description,
        })
    }
}

impl RawGrant {
    fn parse(self, sku: &str) -> Result<OfferGrant, CatalogError> {
        let mut covers = ResourceSet::EMPTY;
        for c in &self.covers {
            let r = Resource::from_name(c)
                .ok_or_else(|| invalid(sku, format!("unknown resource {c:?}")))?;
            covers = covers.with(r);
        }
        if covers.is_empty() {
            return Err(invalid(sku, "a grant must cover at least one resource"));
        }
        let unit = GrantUnit::from_code(&self.unit).ok_or_else(|| {
            invalid(
                sku,
                format!("grant unit {:?} is not \"money\" or \"GB\"", self.unit),
            )
        })?;
        if unit == GrantUnit::Gigabytes
            && covers
                .iter()
                .any(|r| !matches!(r, Resource::Storage | Resource::Traffic))
        {
            return Err(invalid(sku, "GB grants may cover only STORAGE or TRAFFIC"));
        }
        let amount = Money::parse_positive(&self.amount)
            .map_err(|e| invalid(sku, format!("grant amount: {e}")))?
            .as_decimal();
        Ok(OfferGrant {
            covers,
            amount,
            unit,
            stackable: self.stackable,
        })
    }
}

impl RawCalendar {
    fn parse(self) -> Result<Calendar, CatalogError> {
        let mut calendar = Calendar::default();
        if let Some(z) = self.time_zone {
            calendar.zone =
                Calendar::zone_named(&z).map_err(|e| invalid("calendar", e.to_string()))?;
        }
        calendar.free_put_per_month = self
            .free_put_per_month
            .unwrap_or(DEFAULT_FREE_PUT_PER_MONTH);
        calendar.free_get_per_month = self
            .free_get_per_month
            .unwrap_or(DEFAULT_FREE_GET_PER_MONTH);
        Ok(calendar)
    }
}

impl Catalog {
    pub fn default_catalog() -> Result<Catalog, CatalogError> {
        Catalog::from_toml(DEFAULT_CATALOG_TOML)
    }

    pub fn from_toml(text: &str) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog =
            toml::from_str(text).map_err(|e| CatalogError::Toml(e.to_string()))?;
        if raw.currency.len() != 3 || !raw.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(CatalogError::Currency(raw.currency));
        }
        let count = raw.price.len() + raw.offer.len();
        if count > DEFAULT_CATALOG_SKUS_MAX {
            return Err(CatalogError::TooLarge(count));
        }
        let mut prices = BTreeMap::new();
        for p in raw.price {
            let price = p.parse()?;
            if let Some(dup) = prices.insert(price.sku.clone(), price) {
                return Err(CatalogError::DuplicateSku(dup.sku));
            }
        }
        let mut offers = BTreeMap::new();
        for o in raw.offer {
            let offer = o.parse()?;
            if prices.contains_key(&offer.sku) {
                return Err(CatalogError::DuplicateSku(offer.sku));
            }
            if let Some(dup) = offers.insert(offer.sku.clone(), offer) {
                return Err(CatalogError::DuplicateSku(dup.sku));
            }
        }
        let calendar = match raw.calendar {
            Some(c) => c.parse()?,
            None => Calendar::default(),
        };
        Ok(Catalog {
            currency: raw.currency,
            calendar,
            prices,
            offers,
        })
    }

    /// The price of `sku`, which must be priced for `resource`.
    pub fn price(&self, sku: &str, resource: Resource) -> Result<&Price, PriceError> {
        let p = self
            .prices
            .get(sku)
            .ok_or_else(|| PriceError::UnknownSku(sku.to_owned()))?;
        if p.resource != resource {
            return Err(PriceError::WrongResource {
                sku: sku.to_owned(),
                priced: p.resource,
                asked: resource,
            });
        }
        Ok(p)
    }

    pub fn offer(&self, sku: &str) -> Option<&Offer> {
        self.offers.get(sku)
    }
}

fn check_sku(sku: &str) -> Result<(), CatalogError> {
    let ok = !sku.is_empty()
        && sku.len() <= 64
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            sku,
            "sku must be 1-64 characters of [A-Za-z0-9._-]",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    fn price(resource: Resource, unit_price: &str) -> Price {
        Price {
            sku: "s".into(),
            resource,
            unit_price: d(unit_price),
            description: String::new(),
        }
    }

    #[test]
    fn quantity_for_a_budget_is_what_it_pays_for() {
        let a10 = price(Resource::GpuShared, "0.0006");
        assert_eq!(a10.quantity_for(d("0.0006")), 1_000);
        assert_eq!(a10.quantity_for(d("0.006")), 10_000);
        assert_eq!(a10.quantity_for(d("0")), 0);
        assert_eq!(a10.quantity_for(d("-1")), 0);
        assert_eq!(
            price(Resource::GpuShared, "0").quantity_for(d("1")),
            QUANTITY_MAX
        );
        assert_eq!(price(Resource::Storage, "1").quantity_for(d("1")), 0);
    }

    proptest! {
        #[test]
        fn quantity_for_is_the_largest_that_fits(
            cents in 1u64..10_000_000,
            price_micros in 1u64..100_000_000,
            hourly in any::<bool>(),
        ) {
            let resource = if hourly { Resource::GpuExclusive } else { Resource::GpuShared };
            let p = price(resource, &format!("{}", Decimal::new(price_micros as i64, 6)));
            let budget = Money::from_decimal(Decimal::new(cents as i64, 2));
            let q = p.quantity_for(budget);
            prop_assert!(p.cost(q).unwrap() <= budget);
            prop_assert!(p.cost(q + 1).unwrap() > budget);
        }
    }

    #[test]
    fn default_catalog_is_valid_and_complete() {
        let c = Catalog::default_catalog().unwrap();
        assert_eq!(c.currency, "CNY");
        let starter = c.offer("plan.compute.starter").unwrap();
        assert_eq!(starter.price, d("59"));
        assert!(starter.once_per_account);
        assert_eq!(starter.grants[0].amount, Decimal::from(200));
        for p in ["package.basic", "package.advanced", "package.ultimate"] {
            let o = c.offer(p).unwrap();
            assert_eq!(o.kind, OfferKind::Package);
            let covered: ResourceSet = o.grants.iter().flat_map(|g| g.covers.iter()).collect();
            assert!(covered.contains(Resource::GpuShared));
            assert!(covered.contains(Resource::Storage));
            assert!(covered.contains(Resource::Traffic));
        }
        assert!(
            c.prices
                .values()
                .any(|p| p.resource == Resource::GpuExclusive)
        );
        assert!(c.offers.values().all(|o| o.validity_months == 12));
        assert_eq!(c.calendar, Calendar::default());
    }

    #[test]
    fn calendar_section_sets_zone_and_allowances() {
        let c = Catalog::from_toml(
            "currency = \"CNY\"\n[calendar]\ntime_zone = \"Europe/Berlin\"\nfree_get_per_month = 7\n",
        )
        .unwrap();
        assert_eq!(c.calendar.zone, chrono_tz::Europe::Berlin);
        assert_eq!(c.calendar.free_get_per_month, 7);
        assert_eq!(c.calendar.free_put_per_month, DEFAULT_FREE_PUT_PER_MONTH);
        let e = Catalog::from_toml("currency = \"CNY\"\n[calendar]\ntime_zone = \"UTC+8\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("UTC+8"), "{e}");
    }

    #[test]
    fn costs_are_exact() {
        let c = Catalog::default_catalog().unwrap();
        let a10 = c.price("gpu.shared.a10", Resource::GpuShared).unwrap();
        assert_eq!(a10.cost(1234).unwrap(), d("0.0007404"));
        assert_eq!(a10.cost(1).unwrap(), d("0.0000006"));
        assert_eq!(a10.cost(0).unwrap(), Money::ZERO);
        let excl = c
            .price("gpu.exclusive.a10.8c30g", Resource::GpuExclusive)
            .unwrap();
        assert_eq!(excl.cost(3_600_000).unwrap(), d("9.9"));
        // 1 ms at 9.9/h = 0.00000275 exactly.
        assert_eq!(excl.cost(1).unwrap(), d("0.00000275"));
        // 7 ms at 18.5/h = 0.0000359722...: rounded at 8 places.
        let l20 = c
            .price("gpu.exclusive.l20.16c60g", Resource::GpuExclusive)
            .unwrap();
        assert_eq!(l20.cost(7).unwrap(), d("0.00003597"));
        assert_eq!(
            a10.cost(QUANTITY_MAX + 1),
            Err(PriceError::QuantityTooLarge(QUANTITY_MAX + 1))
        );
        let st = c.price("storage.standard", Resource::Storage).unwrap();
        assert_eq!(st.cost(1), Err(PriceError::NotCounted(Resource::Storage)));
    }

    #[test]
    fn price_lookup_checks_resource() {
        let c = Catalog::default_catalog().unwrap();
        assert!(matches!(
            c.price("nope", Resource::GpuShared),
            Err(PriceError::UnknownSku(_))
        ));
        assert!(matches!(
            c.price("gpu.shared.a10", Resource::GpuExclusive),
            Err(PriceError::WrongResource { .. })
        ));
    }

    #[test]
    fn bad_catalogs_are_rejected_with_the_sku() {
        let base = "currency = \"CNY\"\n";
        assert!(matches!(
            Catalog::from_toml("currency = 3"),
            Err(CatalogError::Toml(_))
        ));
        assert!(matches!(
            Catalog::from_toml("currency = \"cny\""),
            Err(CatalogError::Currency(_))
        ));
        let dup = format!(
            "{base}[[price]]\nsku=\"a\"\nresource=\"GPU_SHARED\"\nunit_price=\"1\"\n[[price]]\nsku=\"a\"\nresource=\"GPU_SHARED\"\nunit_price=\"1\"\n"
        );
        assert!(matches!(
            Catalog::from_toml(&dup),
            Err(CatalogError::DuplicateSku(_))
        ));
        let neg =
            format!("{base}[[price]]\nsku=\"a\"\nresource=\"GPU_SHARED\"\nunit_price=\"-1\"\n");
        let e = Catalog::from_toml(&neg).unwrap_err().to_string();
        assert!(e.contains("\"a\"") && e.contains("negative"), "{e}");
        let res = format!("{base}[[price]]\nsku=\"a\"\nresource=\"GPU\"\nunit_price=\"1\"\n");
        assert!(Catalog::from_toml(&res).is_err());
        let gb = format!(
            "{base}[[offer]]\nsku=\"o\"\nkind=\"PLAN\"\nprice=\"1\"\ngrants=[{{covers=[\"GPU_SHARED\"], amount=\"1\", unit=\"GB\"}}]\n"
        );
        assert!(Catalog::from_toml(&gb).is_err());
        let unknown = format!("{base}colour = \"red\"\n");
        assert!(Catalog::from_toml(&unknown).is_err());
    }

    mod fuzz {
        //! The catalog parser under arbitrary and almost-right files: a catalog or a
        //! `CatalogError`, never a panic.
        use super::*;

        fn lines() -> Vec<&'static str> {
            DEFAULT_CATALOG_TOML.lines().collect()
        }

        /// Values a field of the catalog could be given by mistake.
        fn junk_value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                "\\PC{0,20}".prop_map(|v| format!("{v:?}")),
                "[0-9.eE+-]{0,30}".prop_map(|v| format!("{v:?}")),
                Just("\"99999999999999999999999999999999\"".to_owned()),
                Just("\"-1\"".to_owned()),
                Just("[]".to_owned()),
                Just("{}".to_owned()),
                Just("true".to_owned()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_text(text in "\\PC{0,400}") {
                let _ = Catalog::from_toml(&text);
            }

            /// The default catalog with one line dropped, duplicated, or its value replaced.
            #[test]
            fn mutated_default_catalog(
                pick in any::<prop::sample::Index>(),
                how in 0u8..3,
                value in junk_value(),
            ) {
                let mut ls: Vec<String> = lines().into_iter().map(str::to_owned).collect();
                let i = pick.index(ls.len());
                match how {
                    0 => {
                        ls.remove(i);
                    }
                    1 => {
                        let l = ls[i].clone();
                        ls.insert(i, l);
                    }
                    _ => {
                        if let Some((k, _)) = ls[i].split_once('=') {
                            ls[i] = format!("{k}= {value}");
                        }
                    }
                }
                let text = ls.join("\n");
                if let Ok(c) = Catalog::from_toml(&text) {
                    // What loads is usable: every price costs without panicking.
                    for p in c.prices.values() {
                        let _ = p.cost(1);
                        let _ = p.cost(QUANTITY_MAX);
                        let _ = p.quantity_for(Money::from_decimal(Decimal::from(1_000)));
                    }
                }
            }
        }
    }
}
