//! The sidecar's lease policy: how much lease to ask for on an account, and when to renew
//! it, give its unused part back (near the edge, or when the ledger asks) or release it
//! (the account went idle), decided from the cached account alone; with the settings and
//! their defaults. Asking is `link` (on a request's path) and `sync` (every interval);
//! the ledger's side is `ledger::lease`.

use std::cmp::max;

use super::account::Account;
use crate::billing::Money;
use crate::billing::money::MONEY_MAX;

/// Smallest lease a sidecar asks for on an active account, so that a quiet account does
/// not go to the ledger for every job.
pub const DEFAULT_LEASE_WANT_MIN: &str = "1";
/// Renew a lease this long before it expires (if the account was active).
pub const DEFAULT_LEASE_RENEW_BEFORE_MS: i64 = 10_000;
/// An account is active, and its lease kept renewed, for this long after its last call.
pub const DEFAULT_LEASE_ACTIVE_MS: i64 = 5 * 60 * 1000;
/// Longest a Reserve waits for a lease from the ledger before answering without it.
pub const DEFAULT_LEASE_REQUEST_TIMEOUT_MS: u64 = 2_000;
/// Longest a request waits for other sidecars to give back unused lease the ledger asked
/// them for (they do at their next sync, `sync_interval_ms` apart) before it is denied.
pub const DEFAULT_LEASE_RECALL_WAIT_MS: u64 = 2_500;
/// How often a request waiting for recalled lease looks at the ledger again.
pub const DEFAULT_LEASE_RECALL_POLL_MS: u64 = 50;
/// Lease request sequence numbers one run may use (far more than it ever will).
pub(super) const LEASE_SEQ_BLOCK: u64 = 1_000_000_000_000;
/// Most lease requests in one sync.
pub const DEFAULT_SYNC_LEASES_MAX: usize = 1_000;
/// Most lease requests one Reserve makes: one, and up to this many while concurrent
/// requests on the same sidecar take the money granted for it first.
pub(super) const LEASE_ASKS_MAX: usize = 3;

/// Most accounts whose lease the ledger recalled while they were not cached, remembered
/// until the next sync gives them back (more arrive again with the following answers).
pub const DEFAULT_RECALLED_UNCACHED_MAX: usize = 10_000;
/// A sidecar with nothing to send still asks the ledger this often, to hear of recalls
/// (of leases a previous run left, say) and whether the ledger answers.
pub const DEFAULT_LEDGER_POLL_MS: i64 = 10_000;

/// How this sidecar asks for leases.
#[derive(Debug, Clone)]
pub struct LeasingConfig {
    /// Ask for the whole account as lease (one sidecar per ledger: embedded mode).
    pub lease_whole_account: bool,
    pub lease_want_min: Money,
    pub lease_renew_before_ms: i64,
    pub lease_active_ms: i64,
    pub lease_request_timeout_ms: u64,
    pub lease_recall_wait_ms: u64,
    pub lease_recall_poll_ms: u64,
    pub sync_leases_max: usize,
}

impl Default for LeasingConfig {
    fn default() -> Self {
        LeasingConfig {
            lease_whole_account: false,
            lease_want_min: Money::parse(DEFAULT_LEASE_WANT_MIN).unwrap_or(Money::ZERO),
            lease_renew_before_ms: DEFAULT_LEASE_RENEW_BEFORE_MS,
            lease_active_ms: DEFAULT_LEASE_ACTIVE_MS,
            lease_request_timeout_ms: DEFAULT_LEASE_REQUEST_TIMEOUT_MS,
            lease_recall_wait_ms: DEFAULT_LEASE_RECALL_WAIT_MS,
            lease_recall_poll_ms: DEFAULT_LEASE_RECALL_POLL_MS,
            sync_leases_max: DEFAULT_SYNC_LEASES_MAX,
        }
    }
}

/// What the next sync should ask of one account's lease (see `LeasingConfig::renewal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Renewal {
    /// The whole lease wanted (never less than what is committed).
    pub(super) want: Money,
    pub(super) give_back: bool,
    pub(super) release: bool,
}

impl LeasingConfig {
    /// The whole lease to ask for on an account, to admit `needed` more: what it holds and
    /// has pending or in flight, plus twice what it spent under the current lease (its
    /// recent rate), and at least the configured minimum. This is the sidecar's demand,
    /// also near the edge: the ledger decides whether headroom is given. In embedded mode,
    /// the whole account.
    pub(super) fn want(&self, a: Option<&Account>, needed: Money) -> Money {
        if self.lease_whole_account {
            return Money::from_decimal(MONEY_MAX);
        }
        let Some(a) = a else {
            return needed + self.lease_want_min;
        };
        let need = a.committed() + a.lease_inflight + needed;
        let spent = a.spent_since_lease;
        need + max(self.lease_want_min, spent + spent)
    }

    /// Whether the account is active: used within `lease_active_ms`.
    pub(super) fn active(&self, a: &Account, now_ms: i64) -> bool {
        now_ms - a.last_touch_ms <= self.lease_active_ms
    }

    /// What one cached account's lease needs in the next sync, if anything. `committed`:
    /// what the lease must keep covering after the usage the same sync carries; `asked`:
    /// the ledger listed the account in `recalls`.
    pub(super) fn renewal(
        &self,
        a: &Account,
        now_ms: i64,
        committed: Money,
        asked: bool,
    ) -> Option<Renewal> {
        let lease = &a.base.lease;
        let demand = self.want(Some(a), Money::ZERO);
        let ask = |want: Money, give_back: bool, release: bool| Renewal {
            want: want.max(committed),
            give_back,
            release,
        };
        if !a.lease_inflight.is_zero() {
            // Requests are waiting on the ledger for this account: their answers carry the
            // lease; a give-back now could race them.
            return None;
        }
        if !self.active(a, now_ms) {
            // Idle: give the lease back once nothing depends on it, so its money is free
            // for other sidecars instead of waiting out the grace period.
            let has_lease = lease.remaining.is_positive();
            return (has_lease && a.committed().is_zero()).then(|| ask(Money::ZERO, false, true));
        }
        let expiring = lease.expires_at_ms - now_ms < self.lease_renew_before_ms;
        if a.lease_recalled() || asked {
            // Near the edge: keep no headroom. Give back what is not committed (and
            // answer a give-back request even with nothing to give, which clears it).
            let unused = lease.remaining - a.committed() > Money::ZERO;
            let unconfirmed = lease.seq < a.lease_floor_seq;
            if lease.give_back || asked || unused || unconfirmed {
                return Some(ask(demand, true, false));
            }
            return (expiring && !committed.is_zero()).then(|| ask(demand, false, false));
        }
        let low = !self.lease_whole_account
            && a.lease_spendable(now_ms).is_none_or(|s| {
                let free_wanted = demand - a.committed();
                s + s < free_wanted
            });
        (expiring || low).then(|| ask(demand, false, false))
    }
}
