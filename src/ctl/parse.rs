//! Argument values as clap parses them: amounts, times, counts, resources, months, zones,
//! and the small enumerations of the command line. A bad value is refused with what was
//! expected before anything is sent.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::CtlError;
use crate::billing::Money;
use crate::billing::free_tier::{Calendar, Month};
use crate::pb;

const RESOURCES: &str = "GPU_SHARED, GPU_EXCLUSIVE, STORAGE, TRAFFIC, REQUEST_PUT, REQUEST_GET";
const GRANT_RESOURCES: &str =
    "GPU_SHARED, GPU_EXCLUSIVE, STORAGE, TRAFFIC, REQUEST_PUT, REQUEST_GET, any";

/// Whom a token is for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Operator,
    Owner,
    SubUser,
    Sidecar,
    Proxy,
}

/// Kinds of credit an operator can grant (plans come from `purchase`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditKind {
    Coupon,
    Trial,
}

pub(super) fn parse_positive(s: &str) -> Result<Money, CtlError> {
    Ok(Money::parse_positive(s)?)
}

pub(super) fn parse_non_negative(s: &str) -> Result<Money, CtlError> {
    Ok(Money::parse_non_negative(s)?)
}

pub(super) fn parse_time(s: &str) -> Result<DateTime<Utc>, CtlError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| CtlError::BadTime {
            input: s.to_owned(),
            reason: e.to_string(),
        })
}

fn parse_int(s: &str, what: &'static str, min: i64) -> Result<i64, CtlError> {
    match s.trim().parse::<i64>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(CtlError::BadNumber {
            what,
            input: s.to_owned(),
            min,
        }),
    }
}

pub(super) fn parse_count(s: &str) -> Result<i64, CtlError> {
    parse_int(s, "number", 0)
}

pub(super) fn parse_positive_count(s: &str) -> Result<i64, CtlError> {
    parse_int(s, "quantity", 1)
}

pub(super) fn parse_event_count(s: &str) -> Result<u64, CtlError> {
    parse_int(s, "count", 1).map(i64::unsigned_abs)
}

pub(super) fn parse_idle_timeout(s: &str) -> Result<i64, CtlError> {
    parse_int(s, "idle timeout (ms)", 1)
}

/// A concrete resource by its API name, in any case, with `-` or `_`.
pub(super) fn parse_resource(s: &str) -> Result<pb::Resource, CtlError> {
    let name = s.trim().to_ascii_uppercase().replace('-', "_");
    match pb::Resource::from_str_name(&name) {
        Some(pb::Resource::Unspecified) | None => Err(CtlError::BadResource {
            input: s.to_owned(),
            expected: RESOURCES,
        }),
        Some(r) => Ok(r),
    }
}

/// `--resource`: `parse_resource` with the values listed in help and completions.
pub(super) const RESOURCE: ResourceParser = ResourceParser { any: false };
/// `grant-credit --resource`: also "any".
pub(super) const GRANT_RESOURCE: ResourceParser = ResourceParser { any: true };

/// Parses a resource as `parse_resource` (or `parse_grant_resource`) does, and tells clap
/// the values it takes.
#[derive(Clone, Copy, Debug)]
pub(super) struct ResourceParser {
    any: bool,
}

impl clap::builder::TypedValueParser for ResourceParser {
    type Value = pb::Resource;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<pb::Resource, clap::Error> {
        if self.any {
            parse_grant_resource.parse_ref(cmd, arg, value)
        } else {
            parse_resource.parse_ref(cmd, arg, value)
        }
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        let names = RESOURCES.split(", ").chain(self.any.then_some("any"));
        Some(Box::new(names.map(clap::builder::PossibleValue::new)))
    }
}

/// As `parse_resource`, plus "any" for a grant that pays for every resource.
pub(super) fn parse_grant_resource(s: &str) -> Result<pb::Resource, CtlError> {
    if s.trim().eq_ignore_ascii_case("any") {
        return Ok(pb::Resource::Unspecified);
    }
    parse_resource(s).map_err(|_| CtlError::BadResource {
        input: s.to_owned(),
        expected: GRANT_RESOURCES,
    })
}

pub(super) fn parse_currency(s: &str) -> Result<String, CtlError> {
    let c = s.trim();
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(c.to_ascii_uppercase())
    } else {
        Err(CtlError::BadCurrency(s.to_owned()))
    }
}

pub(super) fn parse_month(s: &str) -> Result<Month, String> {
    Month::parse(s).map_err(|e| e.to_string())
}

pub(super) fn parse_zone(s: &str) -> Result<Tz, String> {
    Calendar::zone_named(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_from_rfc3339() {
        let t = parse_time("2026-11-22T18:00:00+08:00").unwrap();
        assert_eq!(t.timestamp_millis(), 1_795_341_600_000);
        for bad in ["2026-11-22", "tomorrow", "2026-11-22T10:00:00"] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.to_string().contains("expected RFC 3339"), "{e}");
        }
    }
}
