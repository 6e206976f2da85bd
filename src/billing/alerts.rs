//! Alerts (R7): which crossings an account has just made (a grant running low or about to
//! expire, the balance below a floor, overdue and back). The seeds' platform warned from a
//! day-old balance; here every change of an account is checked at once. Each crossing
//! fires exactly once: what fired is kept in an `AlertMemo`, which the sidecar persists,
//! so a restart does not fire it again. Pure: the caller decides when to look and where
//! the alerts go.

use std::collections::BTreeSet;

use rust_decimal::Decimal;

use super::grant::{Grant, GrantState};
use super::money::Money;

/// Fractions of a grant's quota at or below which LOW_QUOTA fires: 20% and 10% left.
pub const DEFAULT_LOW_QUOTA_FRACTIONS: [&str; 2] = ["0.2", "0.1"];
/// Lead times before a grant's expiry at which GRANT_EXPIRING fires: 7 days and 1 day.
pub const DEFAULT_EXPIRING_LEADS_MS: [i64; 2] = [7 * 86_400_000, 86_400_000];
/// Most thresholds of each kind an operator may configure.
pub const THRESHOLDS_MAX: usize = 16;

const OVERDUE_KEY: &str = "state:overdue";
const FLOOR_KEY: &str = "state:below_floor";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// Fractions of quota left, each in (0, 1).
    pub low_quota_fractions: Vec<Decimal>,
    /// LOW_QUOTA also fires when the balance falls below this (None: no floor).
    pub balance_floor: Option<Money>,
    pub expiring_leads_ms: Vec<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AlertConfigError {
    #[error("low-quota threshold {0} must be a fraction between 0 and 1 (e.g. 0.2)")]
    BadFraction(Decimal),
    #[error("expiry warning lead {0} ms must be positive")]
    BadLead(i64),
    #[error("{0} thresholds configured; at most {THRESHOLDS_MAX}")]
    TooMany(usize),
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            low_quota_fractions: DEFAULT_LOW_QUOTA_FRACTIONS
                .iter()
                .filter_map(|f| f.parse().ok())
                .collect(),
            balance_floor: None,
            expiring_leads_ms: DEFAULT_EXPIRING_LEADS_MS.to_vec(),
        }
    }
}

impl AlertConfig {
    pub fn validate(&self) -> Result<(), AlertConfigError> {
        let n = self
            .low_quota_fractions
            .len()
            .max(self.expiring_leads_ms.len());
        if n > THRESHOLDS_MAX {
            return Err(AlertConfigError::TooMany(n));
        }
        if let Some(f) = self
            .low_quota_fractions
            .iter()
            .find(|f| **f <= Decimal::ZERO || **f >= Decimal::ONE)
        {
            return Err(AlertConfigError::BadFraction(*f));
        }
        if let Some(l) = self.expiring_leads_ms.iter().find(|l| **l <= 0) {
            return Err(AlertConfigError::BadLead(*l));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    LowQuota,
    GrantExpiring,
    GrantExpired,
    Overdue,
    Recovered,
}

impl AlertKind {
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::LowQuota => "LOW_QUOTA",
            AlertKind::GrantExpiring => "GRANT_EXPIRING",
            AlertKind::GrantExpired => "GRANT_EXPIRED",
            AlertKind::Overdue => "OVERDUE",
            AlertKind::Recovered => "RECOVERED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    /// The grant concerned ("" for balance alerts).
    pub grant_id: String,
    /// The threshold crossed: a fraction, an amount or a lead time in ms ("" if none).
    pub threshold: String,
    pub message: String,
}

/// What has fired for one account: keys of once-only crossings and the two states that
/// fire on each change (overdue, below the floor).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertMemo {
    keys: BTreeSet<String>,
}

/// How a memo changed: what to persist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoChange {
    pub set: Vec<String>,
    pub unset: Vec<String>,
}

impl MemoChange {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.unset.is_empty()
    }
}

impl AlertMemo {
    pub fn from_keys(keys: impl IntoIterator<Item = String>) -> AlertMemo {
        AlertMemo {
            keys: keys.into_iter().collect(),
        }
    }

    /// Undoes `change` (its write failed: the crossings must be found again).
    pub fn revert(&mut self, change: &MemoChange) {
        for k in &change.set {
            self.keys.remove(k);
        }
        self.keys.extend(change.unset.iter().cloned());
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(String::as_str)
    }

    fn set(&mut self, key: String, change: &mut MemoChange) -> bool {
        let new = self.keys.insert(key.clone());
        if new {
            change.set.push(key);
        }
        new
    }

    fn unset(&mut self, key: &str, change: &mut MemoChange) -> bool {
        let had = self.keys.remove(key);
        if had {
            change.unset.push(key.to_owned());
        }
        had
    }
}

fn fraction_key(grant_id: &str, f: Decimal) -> String {
    format!("low:{grant_id}:{}", f.normalize())
}

fn percent(f: Decimal) -> String {
    format!("{}%", (f * Decimal::ONE_HUNDRED).normalize())
}

fn days(ms: i64) -> String {
    if ms % 86_400_000 == 0 {
        format!("{} day(s)", ms / 86_400_000)
    } else {
        format!("{} h", Decimal::new(ms, 0) / Decimal::from(3_600_000))
    }
}

/// The crossings the account made since `memo` was last updated, in a stable order
/// (grants by id, then the balance). `memo` is updated; `change` says how.
pub fn detect(
    cfg: &AlertConfig,
    memo: &mut AlertMemo,
    balance: Money,
    grants: &[Grant],
    unit_label: impl Fn(&Grant) -> String,
    now_ms: i64,
) -> (Vec<Alert>, MemoChange) {
    let mut out = Vec::new();
    let mut change = MemoChange::default();
    // Highest threshold first, so a jump past several reads in order; sorted once per
    // look, not per grant.
    let mut fractions = cfg.low_quota_fractions.clone();
    fractions.sort_by(|a, b| b.cmp(a));
    let mut leads = cfg.expiring_leads_ms.clone();
    leads.sort_by(|a, b| b.cmp(a));
    let mut sorted: Vec<&Grant> = grants.iter().collect();
    sorted.sort_by(|a, b| a.grant_id.cmp(&b.grant_id));
    let mut look = Look {
        memo,
        change: &mut change,
        out: &mut out,
    };
    for g in sorted {
        let label = unit_label(g);
        match g.state_at(now_ms) {
            GrantState::Pending => {}
            GrantState::Expired => look.expired(g, &label),
            GrantState::Valid | GrantState::Exhausted => {
                look.low_quota(g, &label, &fractions);
                look.expiring(g, &label, &leads, now_ms);
            }
        }
    }
    look.balance(cfg, balance);
    look.forget_gone(grants);
    (out, change)
}

/// The first moment after `after_ms` at which time alone may make a crossing on these
/// grants (one starts, nears its expiry by a lead, or expires), if any: when a look at
/// an account nobody changes is next worth making.
pub fn next_due_ms(cfg: &AlertConfig, grants: &[Grant], after_ms: i64) -> Option<i64> {
    grants
        .iter()
        .flat_map(|g| {
            let warnings = cfg
                .expiring_leads_ms
                .iter()
                .filter(|_| g.remaining > Decimal::ZERO)
                .map(|lead| g.expires_at_ms.saturating_sub(*lead));
            [g.starts_at_ms, g.expires_at_ms]
                .into_iter()
                .chain(warnings)
        })
        .filter(|t| *t > after_ms)
        .min()
}

/// One look at an account: the memo, how it changed, and the crossings found.
struct Look<'a> {
    memo: &'a mut AlertMemo,
    change: &'a mut MemoChange,
    out: &'a mut Vec<Alert>,
}

impl Look<'_> {
    fn fire(
        &mut self,
        key: String,
        kind: AlertKind,
        grant_id: &str,
        threshold: String,
        message: String,
    ) {
        if self.memo.set(key, self.change) {
            self.out.push(Alert {
                kind,
                grant_id: grant_id.to_owned(),
                threshold,
                message,
            });
        }
    }

    fn expired(&mut self, g: &Grant, label: &str) {
        let id = &g.grant_id;
        let left = if g.remaining > Decimal::ZERO {
            format!("; {} {label} unused is void", g.remaining)
        } else {
            String::new()
        };
        let message = format!("grant {id} ({}) has expired{left}", g.source);
        self.fire(
            format!("expired:{id}"),
            AlertKind::GrantExpired,
            id,
            String::new(),
            message,
        );
    }

    fn low_quota(&mut self, g: &Grant, label: &str, fractions: &[Decimal]) {
        if g.quota <= Decimal::ZERO {
            return;
        }
        let id = &g.grant_id;
        let left = g.remaining.max(Decimal::ZERO) / g.quota;
        for &f in fractions.iter().filter(|&&f| left <= f) {
            let message = format!(
                "grant {id} ({}) is down to {} {label} of {} (at or below {})",
                g.source,
                g.remaining.max(Decimal::ZERO).normalize(),
                g.quota.normalize(),
                percent(f)
            );
            let threshold = f.normalize().to_string();
            self.fire(
                fraction_key(id, f),
                AlertKind::LowQuota,
                id,
                threshold,
                message,
            );
        }
    }

    fn expiring(&mut self, g: &Grant, label: &str, leads: &[i64], now_ms: i64) {
        if g.remaining <= Decimal::ZERO {
            return;
        }
        let id = &g.grant_id;
        for &lead in leads
            .iter()
            .filter(|&&lead| now_ms >= g.expires_at_ms.saturating_sub(lead))
        {
            let message = format!(
                "grant {id} ({}) expires within {} with {} {label} left; usage after expiry \
                 is charged to other grants or the balance",
                g.source,
                days(lead),
                g.remaining.normalize(),
            );
            let key = format!("expiring:{id}:{lead}");
            self.fire(key, AlertKind::GrantExpiring, id, lead.to_string(), message);
        }
    }

    /// Overdue and back, and the balance floor (when configured).
    fn balance(&mut self, cfg: &AlertConfig, balance: Money) {
        if balance.is_negative() {
            let message = format!(
                "balance is {balance}: the account is overdue and nothing new is admitted \
                 until a top-up brings it back to zero"
            );
            self.fire(
                OVERDUE_KEY.to_owned(),
                AlertKind::Overdue,
                "",
                "0".to_owned(),
                message,
            );
        } else if self.memo.unset(OVERDUE_KEY, self.change) {
            self.out.push(Alert {
                kind: AlertKind::Recovered,
                grant_id: String::new(),
                threshold: "0".to_owned(),
                message: format!("balance is {balance}: the account is no longer overdue"),
            });
        }
        if let Some(floor) = cfg.balance_floor {
            if balance < floor {
                let message = format!("balance {balance} is below the floor of {floor}");
                self.fire(
                    FLOOR_KEY.to_owned(),
                    AlertKind::LowQuota,
                    "",
                    floor.to_string(),
                    message,
                );
            } else {
                // Back above the floor: the next fall fires again.
                self.memo.unset(FLOOR_KEY, self.change);
            }
        }
    }

    /// Forgets grants that are gone, so the memo stays the size of the account.
    fn forget_gone(&mut self, grants: &[Grant]) {
        let gone: Vec<String> = self
            .memo
            .keys
            .iter()
            .filter(|k| grant_of_key(k).is_some_and(|id| !grants.iter().any(|g| g.grant_id == id)))
            .cloned()
            .collect();
        for k in gone {
            self.memo.unset(&k, self.change);
        }
    }
}

/// The grant id a memo key is about (None for the account states).
fn grant_of_key(key: &str) -> Option<&str> {
    let rest = key
        .strip_prefix("low:")
        .or_else(|| key.strip_prefix("expiring:"))
        .map(|r| r.rsplit_once(':').map_or(r, |(id, _)| id))
        .or_else(|| key.strip_prefix("expired:"))?;
    Some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::grant::money_grant;
    use proptest::prelude::*;

    const DAY: i64 = 86_400_000;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    fn run(
        cfg: &AlertConfig,
        memo: &mut AlertMemo,
        balance: &str,
        grants: &[Grant],
        now: i64,
    ) -> Vec<(AlertKind, String, String)> {
        detect(cfg, memo, m(balance), grants, |_| "CNY".into(), now)
            .0
            .into_iter()
            .map(|a| (a.kind, a.grant_id, a.threshold))
            .collect()
    }

    #[test]
    fn next_due_is_each_lead_then_the_expiry() {
        let cfg = AlertConfig::default();
        let g = money_grant("p1", 100, DAY, 10 * DAY);
        let grants = [g.clone()];
        assert_eq!(next_due_ms(&cfg, &grants, 0), Some(DAY), "it starts");
        assert_eq!(
            next_due_ms(&cfg, &grants, DAY),
            Some(3 * DAY),
            "7 days before"
        );
        assert_eq!(
            next_due_ms(&cfg, &grants, 3 * DAY),
            Some(9 * DAY),
            "1 day before"
        );
        assert_eq!(
            next_due_ms(&cfg, &grants, 9 * DAY),
            Some(10 * DAY),
            "expiry"
        );
        assert_eq!(next_due_ms(&cfg, &grants, 10 * DAY), None);
        let mut spent = g;
        spent.remaining = Decimal::ZERO;
        assert_eq!(
            next_due_ms(&cfg, &[spent], DAY),
            Some(10 * DAY),
            "no warning without quota left"
        );
    }

    proptest! {
        /// Between a look and the next due time, time alone makes no crossing: a look
        /// anywhere in between finds nothing new.
        #[test]
        fn nothing_fires_before_next_due(
            spans in prop::collection::vec((0i64..20, 1i64..20, 0i64..3), 1..4),
            after in 0i64..40,
            step in 1i64..40,
        ) {
            let cfg = AlertConfig::default();
            let grants: Vec<Grant> = spans
                .iter()
                .enumerate()
                .map(|(i, (s, len, left))| {
                    let mut g = money_grant(&format!("g{i}"), 100, s * DAY, (s + len) * DAY);
                    g.remaining = Decimal::from(*left * 50);
                    g
                })
                .collect();
            let mut memo = AlertMemo::default();
            let after = after * DAY / 2;
            run(&cfg, &mut memo, "0", &grants, after);
            let next = next_due_ms(&cfg, &grants, after).unwrap_or(i64::MAX);
            let t = after.saturating_add(step * DAY / 4);
            if t < next {
                prop_assert!(run(&cfg, &mut memo, "0", &grants, t).is_empty());
            }
        }
    }

    #[test]
    fn each_low_quota_threshold_fires_once() {
        let cfg = AlertConfig::default();
        let mut memo = AlertMemo::default();
        let mut g = money_grant("p1", 100, 0, 365 * DAY);
        assert!(run(&cfg, &mut memo, "0", &[g.clone()], 1).is_empty());
        g.remaining = Decimal::from(21);
        assert!(run(&cfg, &mut memo, "0", &[g.clone()], 2).is_empty());
        g.remaining = Decimal::from(20);
        let low = |t: &str| (AlertKind::LowQuota, "p1".to_owned(), t.to_owned());
        assert_eq!(run(&cfg, &mut memo, "0", &[g.clone()], 3), vec![low("0.2")]);
        g.remaining = Decimal::from(15);
        assert!(run(&cfg, &mut memo, "0", &[g.clone()], 4).is_empty());
        g.remaining = Decimal::ZERO;
        assert_eq!(run(&cfg, &mut memo, "0", &[g.clone()], 5), vec![low("0.1")]);
        assert!(run(&cfg, &mut memo, "0", &[g], 6).is_empty());
    }

    #[test]
    fn a_jump_past_both_fires_both_in_order() {
        let cfg = AlertConfig::default();
        let mut memo = AlertMemo::default();
        let mut g = money_grant("p1", 100, 0, 365 * DAY);
        g.remaining = Decimal::from(5);
        let got = run(&cfg, &mut memo, "0", &[g], 1);
        let thresholds: Vec<&str> = got.iter().map(|a| a.2.as_str()).collect();
        assert_eq!(thresholds, ["0.2", "0.1"]);
    }

    #[test]
    fn expiry_warnings_fire_at_their_lead_times_then_expired() {
        let cfg = AlertConfig::default();
        let mut memo = AlertMemo::default();
        let g = money_grant("c1", 50, 0, 30 * DAY);
        assert!(run(&cfg, &mut memo, "0", std::slice::from_ref(&g), 23 * DAY - 1).is_empty());
        let expiring = |lead: i64| (AlertKind::GrantExpiring, "c1".to_owned(), lead.to_string());
        assert_eq!(
            run(&cfg, &mut memo, "0", std::slice::from_ref(&g), 23 * DAY),
            vec![expiring(7 * DAY)]
        );
        assert!(run(&cfg, &mut memo, "0", std::slice::from_ref(&g), 28 * DAY).is_empty());
        assert_eq!(
            run(&cfg, &mut memo, "0", std::slice::from_ref(&g), 29 * DAY),
            vec![expiring(DAY)]
        );
        assert_eq!(
            run(&cfg, &mut memo, "0", std::slice::from_ref(&g), 30 * DAY),
            vec![(AlertKind::GrantExpired, "c1".to_owned(), String::new())]
        );
        assert!(run(&cfg, &mut memo, "0", &[g], 31 * DAY).is_empty());
    }

    #[test]
    fn overdue_and_recovered_alternate_and_floor_rearms() {
        let cfg = AlertConfig {
            balance_floor: Some(m("5")),
            ..AlertConfig::default()
        };
        let mut memo = AlertMemo::default();
        assert!(run(&cfg, &mut memo, "10", &[], 1).is_empty());
        let kinds = |v: Vec<(AlertKind, String, String)>| -> Vec<AlertKind> {
            v.into_iter().map(|a| a.0).collect()
        };
        assert_eq!(
            kinds(run(&cfg, &mut memo, "4", &[], 2)),
            [AlertKind::LowQuota]
        );
        assert_eq!(
            kinds(run(&cfg, &mut memo, "-1", &[], 3)),
            [AlertKind::Overdue]
        );
        assert!(run(&cfg, &mut memo, "-2", &[], 4).is_empty());
        assert_eq!(
            kinds(run(&cfg, &mut memo, "0", &[], 5)),
            [AlertKind::Recovered]
        );
        assert!(run(&cfg, &mut memo, "6", &[], 6).is_empty());
        assert_eq!(
            kinds(run(&cfg, &mut memo, "-1", &[], 7)),
            [AlertKind::Overdue, AlertKind::LowQuota]
        );
    }

    #[test]
    fn a_persisted_memo_does_not_fire_again_and_forgets_gone_grants() {
        let cfg = AlertConfig::default();
        let mut memo = AlertMemo::default();
        let mut g = money_grant("p1", 100, 0, 365 * DAY);
        g.remaining = Decimal::from(10);
        let (_, change) = detect(&cfg, &mut memo, m("-1"), &[g.clone()], |_| "CNY".into(), 1);
        let mut restored = AlertMemo::from_keys(change.set.clone());
        assert_eq!(restored, memo);
        assert!(run(&cfg, &mut restored, "-1", &[g], 2).is_empty());
        let (_, change) = detect(&cfg, &mut restored, m("-1"), &[], |_| "CNY".into(), 3);
        assert_eq!(change.unset.len(), 2);
        assert_eq!(restored.keys().collect::<Vec<_>>(), ["state:overdue"]);
    }

    #[test]
    fn bad_thresholds_are_refused() {
        let mut cfg = AlertConfig {
            low_quota_fractions: vec![Decimal::ONE],
            ..AlertConfig::default()
        };
        assert!(matches!(
            cfg.validate(),
            Err(AlertConfigError::BadFraction(_))
        ));
        cfg.low_quota_fractions = vec![];
        cfg.expiring_leads_ms = vec![0];
        assert_eq!(cfg.validate(), Err(AlertConfigError::BadLead(0)));
        assert!(AlertConfig::default().validate().is_ok());
    }

    proptest! {
        /// However a grant is drawn down, each threshold fires exactly once.
        #[test]
        fn thresholds_fire_exactly_once_whatever_the_path(
            steps in proptest::collection::vec(0u32..40, 1..30)
        ) {
            let cfg = AlertConfig::default();
            let mut memo = AlertMemo::default();
            let mut g = money_grant("p1", 100, 0, 365 * DAY);
            let mut fired = Vec::new();
            for (i, s) in steps.iter().enumerate() {
                g.remaining = (g.remaining - Decimal::from(*s)).max(Decimal::ZERO);
                fired.extend(run(&cfg, &mut memo, "0", &[g.clone()], i as i64 + 1));
            }
            let left = g.remaining;
            let expect = usize::from(left <= Decimal::from(20)) + usize::from(left <= Decimal::from(10));
            prop_assert_eq!(fired.len(), expect);
        }
    }
}
