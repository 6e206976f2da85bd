//! Money is a `rust_decimal::Decimal` behind a newtype so that a quantity, a price and an
//! amount of money cannot be mixed up, and so that every place that rounds says so.
//!
//! One deployment bills in one currency (the catalog's); the currency travels beside the
//! amount only at the API edge.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

/// Decimal places a charge is rounded to when quantity x price is not exact at that scale.
/// Eight places keep per-millisecond GPU charges exact (0.0006 per second x 1 ms =
/// 0.0000006) and make rounding visible only for per-hour prices of a few milliseconds.
pub const CHARGE_DP: u32 = 8;

/// Largest magnitude accepted for any amount of money from a client or a catalog: a
/// trillion units. Anything larger is an input error, not a payment.
/// (10^12 = 0xE8_D4A5_1000, split into the low and middle 32-bit words of a Decimal.)
pub const MONEY_MAX: Decimal = Decimal::from_parts(0xD4A5_1000, 0xE8, 0, false, 0);

/// Most decimal places accepted in an amount given by a client or a catalog.
pub const MONEY_DP_MAX: u32 = CHARGE_DP;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum MoneyError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} is not a decimal number")]
    NotANumber(String),
    #[error("amount {0} has more than {MONEY_DP_MAX} decimal places")]
    TooPrecise(String),
    #[error("amount {0} is larger than the maximum of 1000000000000")]
    TooLarge(String),
    #[error("amount {0} is negative")]
    Negative(String),
    #[error("amount {0} must be greater than zero")]
    NotPositive(String),
}

/// Longest part of a rejected amount that an error repeats (in characters): enough to
/// recognise it, never a client's megabyte back at it.
pub const AMOUNT_SHOWN_MAX: usize = 64;

/// `t` for an error message: whole if short, else its start and "...".
fn excerpt(t: &str) -> String {
    match t.char_indices().nth(AMOUNT_SHOWN_MAX) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t.to_owned(),
    }
}

/// An amount of money in the deployment's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    pub const fn from_decimal(d: Decimal) -> Self {
        Money(d)
    }

    pub const fn as_decimal(self) -> Decimal {
        self.0
    }

    /// Parses an amount given by a client or a file: a plain decimal string of at most
    /// `MONEY_DP_MAX` places and at most `MONEY_MAX` in magnitude. Sign is not checked here:
    /// see `parse_non_negative` and `parse_positive`.
    pub fn parse(s: &str) -> Result<Self, MoneyError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(MoneyError::Empty);
        }
        // Decimal::from_str accepts only plain decimal notation; reject exponents, NaN, etc.
        // Plain notation only: an optional sign, digits, at most one point. No exponents,
        // NaN, separators or spaces inside.
        let unsigned = t.strip_prefix(['-', '+']).unwrap_or(t);
        if !unsigned.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            || unsigned.bytes().filter(|&b| b == b'.').count() > 1
        {
            return Err(MoneyError::NotANumber(excerpt(t)));
        }
        // Check the digits before parsing: Decimal::from_str silently rounds past 28 places.
        let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(MoneyError::NotANumber(excerpt(t)));
        }
        if frac_part.trim_end_matches('0').len() > MONEY_DP_MAX as usize {
            return Err(MoneyError::TooPrecise(excerpt(t)));
        }
        if int_part.trim_start_matches('0').len() > 13 {
            return Err(MoneyError::TooLarge(excerpt(t)));
        }
        // Trailing zeros past the limit carry no value; drop them so parsing is exact.
        let frac_kept = &frac_part[..frac_part.len().min(MONEY_DP_MAX as usize)];
        let exact = format!("{int_part}.{frac_kept}0");
        let d = Decimal::from_str(&exact).map_err(|_| MoneyError::NotANumber(excerpt(t)))?;
        let d = if t.starts_with('-') { -d } else { d };
        if d.abs() > MONEY_MAX {
            return Err(MoneyError::TooLarge(excerpt(t)));
        }
        Ok(Money(d.normalize()))
    }

    pub fn parse_non_negative(s: &str) -> Result<Self, MoneyError> {
        let m = Self::parse(s)?;
        if m.is_negative() {
            return Err(MoneyError::Negative(excerpt(s.trim())));
        }
        Ok(m)
    }

    pub fn parse_positive(s: &str) -> Result<Self, MoneyError> {
        let m = Self::parse_non_negative(s)?;
        if m.is_zero() {
            return Err(MoneyError::NotPositive(excerpt(s.trim())));
        }
        Ok(m)
    }

    /// Rounds a computed charge to `CHARGE_DP` places, half away from zero. Exact products
    /// of at most `CHARGE_DP` places are returned unchanged.
    pub fn round_charge(d: Decimal) -> Self {
        Money(d.round_dp_with_strategy(CHARGE_DP, RoundingStrategy::MidpointAwayFromZero))
    }

    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn is_positive(self) -> bool {
        self.0 > Decimal::ZERO
    }

    /// Zero for a negative amount: a debt never pays for anything.
    pub fn non_negative(self) -> Self {
        if self.is_negative() {
            Money::ZERO
        } else {
            self
        }
    }

    pub fn min(self, other: Self) -> Self {
        if self <= other { self } else { other }
    }
}

impl Money {
    /// The same text as `Display` ("0.0007404", "12", "-3.5"), written without the
    /// formatting machinery into a string of the exact length: every answer on the wire
    /// carries an amount, so this runs once per call.
    pub fn to_plain_string(&self) -> String {
        let n = self.0.normalize();
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n.mantissa().unsigned_abs());
        let sign = if n.is_sign_negative() && !n.is_zero() {
            "-"
        } else {
            ""
        };
        let Ok(scale) = usize::try_from(n.scale()) else {
            return self.to_string();
        };
        if scale == 0 {
            return [sign, digits].concat();
        }
        match digits.len().checked_sub(scale) {
            Some(whole) if whole > 0 => {
                let (int, frac) = digits.split_at(whole);
                [sign, int, ".", frac].concat()
            }
            _ => {
                let zeros = "0".repeat(scale - digits.len());
                [sign, "0.", &zeros, digits].concat()
            }
        }
    }
}

impl fmt::Display for Money {
    /// Normalized decimal string: "0.0007404", "12", "-3.5".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.normalize();
        if n.is_zero() {
            return f.write_str("0");
        }
        fmt::Display::fmt(&n, f)
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        Money(self.0 + rhs.0)
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        Money(self.0 - rhs.0)
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, rhs: Money) {
        self.0 += rhs.0;
    }
}

impl SubAssign for Money {
    fn sub_assign(&mut self, rhs: Money) {
        self.0 -= rhs.0;
    }
}

impl Neg for Money {
    type Output = Money;
    fn neg(self) -> Money {
        Money(-self.0)
    }
}

impl Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimals_and_normalizes() {
        assert_eq!(Money::parse("12.3400").unwrap().to_string(), "12.34");
        assert_eq!(Money::parse("0").unwrap().to_string(), "0");
        assert_eq!(Money::parse("-3.5").unwrap().to_string(), "-3.5");
        assert_eq!(Money::parse(" 7 ").unwrap().to_string(), "7");
    }

    proptest::proptest! {
        #[test]
        fn plain_string_is_the_display_text(lo: u32, mid: u32, hi: u32, negative: bool, scale in 0u32..=28) {
            let m = Money(Decimal::from_parts(lo, mid, hi, negative, scale));
            proptest::prop_assert_eq!(m.to_plain_string(), m.to_string());
        }

        #[test]
        fn plain_string_of_small_amounts(units in -10_000i64..10_000, scale in 0u32..=12) {
            let m = Money(Decimal::new(units, scale));
            proptest::prop_assert_eq!(m.to_plain_string(), m.to_string());
        }
    }

    #[test]
    fn plain_string_examples() {
        for (t, want) in [
            ("0.0007404", "0.0007404"),
            ("12.3400", "12.34"),
            ("-3.5", "-3.5"),
            ("0", "0"),
            ("-0.00", "0"),
            ("100", "100"),
            ("0.5", "0.5"),
        ] {
            assert_eq!(Money::parse(t).unwrap().to_plain_string(), want, "{t}");
        }
    }

    #[test]
    fn rejects_bad_amounts_with_their_value() {
        assert_eq!(Money::parse(""), Err(MoneyError::Empty));
        assert!(matches!(
            Money::parse("abc"),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            Money::parse("1e5"),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            Money::parse("NaN"),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            Money::parse("1.2.3"),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(
            Money::parse("1000000000000.01"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(matches!(
            Money::parse("99999999999999999999999999999999999999999999"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(matches!(
            Money::parse("0.000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        // Past 28 places Decimal::from_str would round; these must not slip through.
        assert!(matches!(
            Money::parse("1.00000000000000000000000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse("0.00000000000000000000000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert_eq!(Money::parse("1.500000000000").unwrap().to_string(), "1.5");
        assert_eq!(Money::parse("-0.25").unwrap().to_string(), "-0.25");
        assert_eq!(Money::parse(".5").unwrap().to_string(), "0.5");
        assert!(matches!(Money::parse("."), Err(MoneyError::NotANumber(_))));
        assert!(matches!(
            Money::parse("--1"),
            Err(MoneyError::NotANumber(_))
        ));
        assert!(matches!(Money::parse("1-"), Err(MoneyError::NotANumber(_))));
        assert!(matches!(
            Money::parse_non_negative("-1"),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(
            Money::parse_positive("0.00"),
            Err(MoneyError::NotPositive(_))
        ));
        assert_eq!(
            Money::parse("1000000000000").unwrap().to_string(),
            "1000000000000"
        );
    }

    #[test]
    fn money_max_is_one_trillion() {
        assert_eq!(MONEY_MAX, Decimal::from(1_000_000_000_000i64));
    }

    #[test]
    fn rounds_half_away_from_zero_at_charge_scale() {
        let d = Decimal::from_str("0.000000015").unwrap();
        assert_eq!(Money::round_charge(d).to_string(), "0.00000002");
        let exact = Decimal::from_str("0.0007404").unwrap();
        assert_eq!(Money::round_charge(exact).to_string(), "0.0007404");
    }
}
