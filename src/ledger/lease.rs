//! Leases (Doorman-style, in money): the ledger sets aside, per account, an amount each
//! sidecar may admit until an expiry, and never sets aside more than the account can pay.
//! That bound is what keeps a fleet of sidecars from overspending an account (G1) while
//! each admits from memory, also through a ledger outage.
//!
//! An expired lease keeps its money set aside until its sidecar gives it back (a renewal,
//! or a release once it has no open holds and has pushed all its usage): a sidecar cut
//! off from the ledger may still hold usage it admitted under the lease, and that money
//! must not be leased again before the usage arrives. Only a sidecar silent for
//! `hold_grace_ms` past its lease's expiry is presumed gone and its lease reclaimed; it
//! clamps every hold to expire by then, so after that it can admit nothing more under it.

use rust_decimal::Decimal;

use super::store::LeaseRow;
use crate::billing::{Grant, GrantUnit, Money, ResourceSet};

/// How long a lease lets a sidecar admit without hearing from the ledger.
pub const DEFAULT_LEASE_TTL_MS: i64 = 30_000;
/// How long after its expiry a lease nobody gave back is still set aside: the time after
/// which a silent sidecar is presumed gone (see the module doc).
pub const DEFAULT_LEASE_HOLD_GRACE_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub ttl_ms: i64,
    pub hold_grace_ms: i64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl_ms: DEFAULT_LEASE_TTL_MS,
            hold_grace_ms: DEFAULT_LEASE_HOLD_GRACE_MS,
        }
    }
}

/// A sidecar's lease on one account as the sidecar sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    /// What it may still admit, as of the snapshot it came with.
    pub remaining: Money,
    pub expires_at_ms: i64,
}

/// A sidecar asking to (re)size its lease on an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub account_id: String,
    /// The lease it would like to have in total.
    pub want: Money,
    /// What the lease must keep covering: the sidecar's open holds plus its usage the
    /// ledger has not applied yet (not counting usage in the same sync). Never leased away.
    pub held: Money,
    /// Giving the lease back (graceful shutdown): keep only `held`, expire now.
    pub release: bool,
    /// Increases with every lease request of the sidecar, also across its restarts. The
    /// ledger applies a request only if it is newer than the one that set the lease.
    pub seq: u64,
}

/// What the account can pay for GPU work now: valid money grants covering GPU time plus a
/// non-negative balance.
pub fn payable(balance: Money, grants: &[Grant], now_ms: i64) -> Money {
    let from_grants: Decimal = grants
        .iter()
        .filter(|g| {
            g.unit == GrantUnit::Money
                && g.covers.bits() & ResourceSet::COMPUTE.bits() != 0
                && g.is_valid_at(now_ms)
        })
        .map(|g| g.remaining.max(Decimal::ZERO))
        .sum();
    Money::from_decimal(from_grants) + balance.non_negative()
}

/// Money other sidecars' leases keep set aside at `now_ms`.
pub fn occupied_by_others(
    leases: &[LeaseRow],
    sidecar_id: &str,
    now_ms: i64,
    grace_ms: i64,
) -> Money {
    leases
        .iter()
        .filter(|l| l.sidecar_id != sidecar_id && now_ms < l.expires_at_ms.saturating_add(grace_ms))
        .map(|l| l.remaining.non_negative())
        .sum()
}

/// The lease to grant: what is wanted, within what others leave free, and never less than
/// what the sidecar already holds. A renewal never shrinks a lease that has not expired:
/// the sidecar may have admitted against it while the request was on its way.
pub fn grant(
    req: &LeaseRequest,
    current: Option<&Lease>,
    payable: Money,
    occupied_by_others: Money,
    now_ms: i64,
    cfg: LeaseConfig,
) -> Lease {
    let free = (payable - occupied_by_others).non_negative();
    let want = if req.release { Money::ZERO } else { req.want };
    let mut remaining = want.min(free).max(req.held.non_negative());
    if let Some(cur) = current
        && !req.release
        && now_ms < cur.expires_at_ms
    {
        remaining = remaining.max(cur.remaining);
    }
    Lease {
        remaining,
        expires_at_ms: if req.release {
            now_ms
        } else {
            now_ms.saturating_add(cfg.ttl_ms)
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::grant::money_grant;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    fn req(want: &str, held: &str) -> LeaseRequest {
        LeaseRequest {
            account_id: "a".into(),
            want: m(want),
            held: m(held),
            release: false,
            seq: 1,
        }
    }

    const CFG: LeaseConfig = LeaseConfig {
        ttl_ms: 100,
        hold_grace_ms: 50,
    };

    #[test]
    fn payable_counts_valid_compute_money_and_non_negative_balance() {
        let grants = vec![money_grant("g", 10, 0, 1_000), money_grant("old", 10, 0, 5)];
        assert_eq!(payable(m("3"), &grants, 10), m("13"));
        assert_eq!(payable(m("-3"), &grants, 10), m("10"));
    }

    #[test]
    fn others_keep_their_lease_until_expiry_plus_grace() {
        let leases = vec![
            LeaseRow {
                sidecar_id: "me".into(),
                remaining: m("5"),
                expires_at_ms: 100,
                request_seq: 0,
            },
            LeaseRow {
                sidecar_id: "b".into(),
                remaining: m("2"),
                expires_at_ms: 100,
                request_seq: 0,
            },
            LeaseRow {
                sidecar_id: "c".into(),
                remaining: m("1"),
                expires_at_ms: 10,
                request_seq: 0,
            },
        ];
        assert_eq!(occupied_by_others(&leases, "me", 20, 50), m("3"));
        assert_eq!(occupied_by_others(&leases, "me", 59, 50), m("3"));
        assert_eq!(occupied_by_others(&leases, "me", 60, 50), m("2"));
        assert_eq!(occupied_by_others(&leases, "me", 150, 50), Money::ZERO);
    }

    #[test]
    fn grants_what_is_wanted_within_what_is_free_never_below_held() {
        let g = |r: &LeaseRequest, cur: Option<&Lease>, payable, others, now| {
            grant(r, cur, m(payable), m(others), now, CFG)
        };
        assert_eq!(g(&req("4", "0"), None, "10", "3", 0).remaining, m("4"));
        assert_eq!(g(&req("40", "0"), None, "10", "3", 0).remaining, m("7"));
        assert_eq!(g(&req("40", "9"), None, "10", "3", 0).remaining, m("9"));
        assert_eq!(g(&req("40", "0"), None, "1", "3", 0).remaining, Money::ZERO);
        assert_eq!(g(&req("4", "0"), None, "10", "3", 7).expires_at_ms, 107);
        // A live lease is extended, never shrunk; an expired one no longer counts.
        let cur = Lease {
            remaining: m("6"),
            expires_at_ms: 50,
        };
        assert_eq!(
            g(&req("1", "0"), Some(&cur), "10", "0", 7).remaining,
            m("6")
        );
        assert_eq!(
            g(&req("1", "0"), Some(&cur), "10", "0", 50).remaining,
            m("1")
        );
        let mut r = req("4", "2");
        r.release = true;
        assert_eq!(
            g(&r, Some(&cur), "10", "0", 7),
            Lease {
                remaining: m("2"),
                expires_at_ms: 7
            }
        );
    }
}
