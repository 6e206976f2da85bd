//! Accounts leave the cache: housekeeping that costs what is due. An account nothing
//! depends on (`Account::quiet`: no open hold, no usage the ledger has not applied, no
//! storage accruing, its lease given back) with no open usage stream and no Watch leaves
//! the cache `account_idle_ms` after its last request, and sooner, least recently used
//! first, when a new account needs room under `accounts_max`. What the ledger does not
//! keep stays behind for its next load: its alert memo (so an alert never fires twice),
//! its storage meter and what is left of a spent fail-open budget; the rest (balance,
//! grants, request counts of the free tier) comes back with its next snapshot.
//!
//! Time-driven alerts have their own deadlines: each cached account is indexed at its
//! next expiry warning, expiry or grant start (`billing::alerts::next_due_ms`), and the
//! minute scan looks only at accounts found there.

use std::sync::atomic::Ordering;

use super::account::Account;
use super::{ACCOUNT_QUIET_MIN_MS, EVICT_SCAN_MAX, Engine};
use crate::billing::Money;
use crate::billing::alerts;

/// What became of an account looked at for leaving the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Evict {
    Left,
    /// Not cached (an entry of an account that left already).
    Gone,
    /// Used too recently, last at this time.
    UsedAt(i64),
    /// Something depends on it.
    Busy,
}

impl Engine {
    /// How long an account goes without a request before it leaves the cache.
    fn idle_ms(&self) -> i64 {
        self.cfg.account_idle_ms.max(ACCOUNT_QUIET_MIN_MS)
    }

    /// A newly cached account's deadlines: when it may go idle, and a first look for
    /// time-driven alerts at the next scan.
    pub(super) fn index_loaded(&self, a: &mut Account, account_id: &str, now_ms: i64) {
        self.idle_due
            .push(a.used_at_ms().saturating_add(self.idle_ms()), account_id);
        if now_ms < a.alert_due_ms {
            a.alert_due_ms = now_ms;
            self.alert_due.push(now_ms, account_id);
        }
    }

    /// After a look for alerts at `now_ms`: indexes the account's next time-driven
    /// crossing, if it is earlier than the one indexed.
    pub(super) fn index_alerts(&self, a: &mut Account, account_id: &str, now_ms: i64) {
        if let Some(at) = alerts::next_due_ms(&self.cfg.alerts, &a.grants, now_ms)
            && at < a.alert_due_ms
        {
            a.alert_due_ms = at;
            self.alert_due.push(at, account_id);
        }
    }

    /// Time-driven crossings (expiry warnings, expiries) of the accounts with one due.
    pub fn check_alerts(&self, now_ms: i64) {
        for (_, id) in self.alert_due.due(now_ms) {
            let batch = match self.accounts.get_mut(&id) {
                // Else a stale entry: the account's live one is later.
                Some(mut a) if a.alert_due_ms <= now_ms => {
                    a.alert_due_ms = i64::MAX;
                    let batch = self.alerts_locked(&mut a, &id, now_ms);
                    self.index_alerts(&mut a, &id, now_ms);
                    batch
                }
                _ => None,
            };
            self.publish(batch);
        }
    }

    /// Accounts idle for `account_idle_ms` by `now_ms` leave the cache; those still in use
    /// are looked at again when they may be idle.
    pub(super) fn sweep_idle(&self, now_ms: i64) {
        let idle_ms = self.idle_ms();
        for (_, id) in self.idle_due.due(now_ms) {
            match self.evict(&id, now_ms.saturating_sub(idle_ms)) {
                Evict::Left | Evict::Gone => {}
                Evict::UsedAt(at) => self.idle_due.push(at.saturating_add(idle_ms), &id),
                Evict::Busy => self.idle_due.push(now_ms.saturating_add(idle_ms), &id),
            }
        }
    }

    /// Room for one more account under `accounts_max`: the least recently used account
    /// nothing depends on and unused for `ACCOUNT_QUIET_MIN_MS` leaves the cache. False if
    /// none was found among the `EVICT_SCAN_MAX` least recently used.
    pub(super) fn make_room(&self, now_ms: i64) -> bool {
        let idle_ms = self.idle_ms();
        for _ in 0..EVICT_SCAN_MAX {
            let Some((at, id)) = self.idle_due.pop_first() else {
                return false;
            };
            // Not if it was used since the entry was made (its place is later), nor
            // within the quiet time.
            let unused_since = now_ms
                .saturating_sub(ACCOUNT_QUIET_MIN_MS)
                .min(at.saturating_sub(idle_ms));
            match self.evict(&id, unused_since) {
                Evict::Left => return true,
                Evict::Gone => {}
                Evict::UsedAt(used) => {
                    let real = used.saturating_add(idle_ms);
                    self.idle_due.push(real, &id);
                    if real <= at {
                        // In its place, and used within the quiet time: so were the rest.
                        return false;
                    }
                }
                Evict::Busy => self.idle_due.push(now_ms.saturating_add(idle_ms), &id),
            }
        }
        false
    }

    /// The account leaves the cache if nothing depends on it and no request used it after
    /// `unused_since_ms`. Decided and done under its entry's lock, so a request that found
    /// it cached finds it still (it was used just now), and one that did not loads it
    /// with what it left behind.
    fn evict(&self, account_id: &str, unused_since_ms: i64) -> Evict {
        let whole_account = self.cfg.leasing.lease_whole_account;
        let mut verdict = Evict::Gone;
        let left = self.accounts.remove_if(account_id, |id, a| {
            if a.used_at_ms() > unused_since_ms {
                verdict = Evict::UsedAt(a.used_at_ms());
                return false;
            }
            if !a.quiet(whole_account)
                || self.works.streaming(id)
                || self.events.watched(id)
                || self.recalled.contains_key(id)
            {
                verdict = Evict::Busy;
                return false;
            }
            self.leave_behind(id, a);
            true
        });
        if left.is_some() {
            self.accounts_evicted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(account_id, "idle account left the cache");
            return Evict::Left;
        }
        verdict
    }

    /// What a leaving account keeps for its next load (see `ensure_account_for`), as a
    /// restart keeps it from the journal.
    fn leave_behind(&self, account_id: &str, a: &Account) {
        let keys: Vec<String> = a.alert_memo.keys().map(str::to_owned).collect();
        if !keys.is_empty() {
            self.recovered_alerts.insert(account_id.to_owned(), keys);
        }
        if let Ok(m) = a.storage.try_lock()
            && let Some(m) = m.as_ref()
        {
            self.orphan_storage.insert(account_id.to_owned(), m.clone());
        }
        if !a.fail_open_spent.is_zero() {
            self.evicted_fail_open
                .insert(account_id.to_owned(), (a.fail_open_left, a.fail_open_spent));
        }
    }

    /// Gives a loading account what it left behind when it last left the cache.
    pub(super) fn take_left_behind(&self, a: &mut Account, account_id: &str) {
        if let Some((_, (left, spent))) = self.evicted_fail_open.remove(account_id) {
            a.fail_open_left = left;
            a.fail_open_spent = spent;
        }
    }

    /// Accounts that left the cache idle since start.
    pub fn accounts_evicted(&self) -> u64 {
        self.accounts_evicted.load(Ordering::Relaxed)
    }
}

/// Money left and spent of a fail-open budget.
pub(super) type FailOpenLeft = (Money, Money);
