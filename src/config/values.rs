//! Setting values written as text (a flag, a variable or the file), each parsed with a
//! message that says what is allowed: the `Setting` trait, `Text<T>` that carries one
//! through clap and serde, and the values quotad's settings take (journal sync mode,
//! money, fractions, fail-open budgets, the log format).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::billing::Money;
use crate::journal::JournalSync;

/// A value that is written as text (in a flag, a variable or the file) and parsed with a
/// message that says what is allowed.
pub trait Setting: Sized {
    fn parse_setting(s: &str) -> Result<Self, String>;
    fn show(&self) -> String;
}

/// `T` as a setting: parsed from a string (or a TOML number, taken as written), printed
/// back as a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Text<T>(pub T);

impl<T: Setting> FromStr for Text<T> {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        T::parse_setting(s).map(Text)
    }
}

impl<T: Setting> Serialize for Text<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.show())
    }
}

impl<'de, T: Setting> Deserialize<'de> for Text<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<T: Setting> serde::de::Visitor<'_> for V<T> {
            type Value = Text<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Text<T>, E> {
                T::parse_setting(s).map(Text).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Text<T>, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Text<T>, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Text<T>, E> {
                // Shortest text that reads back as the same float: what the file says.
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

impl Setting for JournalSync {
    fn parse_setting(s: &str) -> Result<Self, String> {
        JournalSync::from_name(s)
            .ok_or_else(|| format!("{s:?} is not a journal sync mode: full or normal"))
    }
    fn show(&self) -> String {
        match self {
            JournalSync::Full => "full",
            JournalSync::Normal => "normal",
        }
        .into()
    }
}

impl Setting for Money {
    fn parse_setting(s: &str) -> Result<Self, String> {
        Money::parse_non_negative(s.trim()).map_err(|e| format!("{e}: a non-negative amount"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Setting for Decimal {
    fn parse_setting(s: &str) -> Result<Self, String> {
        s.trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a decimal fraction such as 0.2"))
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

/// Money an account may be admitted for with the ledger unreachable: `ACCOUNT=AMOUNT`,
/// `*` for every account.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub account: String,
    pub amount: Money,
}

impl Setting for Budget {
    fn parse_setting(s: &str) -> Result<Self, String> {
        let (account, amount) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not ACCOUNT=AMOUNT"))?;
        if account.is_empty() {
            return Err(format!(
                "{s:?} names no account: ACCOUNT=AMOUNT or *=AMOUNT"
            ));
        }
        Ok(Budget {
            account: account.to_owned(),
            amount: Money::parse_setting(amount)?,
        })
    }
    fn show(&self) -> String {
        format!("{}={}", self.account, self.amount)
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (request ids) included.
    Json,
}

impl Setting for LogFormat {
    fn parse_setting(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?} is not a log format: text or json")),
        }
    }
    fn show(&self) -> String {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
        .into()
    }
}
