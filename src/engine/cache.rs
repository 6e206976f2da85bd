//! The account cache: an account is loaded from the ledger on first use, with a first
//! lease that covers the request loading it and with what the journal still owes on it
//! (pending usage, recovered holds, session hours, alert memo, storage meter); the
//! ledger's snapshots replace its base as they come (sync, admin changes, a denial being
//! confirmed); its holds expire as time passes, on every look and in the sync tick's
//! sweep, which also forgets settled reservations past their retention. GetBalance reads
//! it.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::account::{Account, Pending};
use super::{Engine, EngineError, PRUNE_INTERVAL_MS};
use crate::billing::alerts::AlertMemo;
use crate::billing::status::{self, BalanceView};
use crate::billing::{Money, Resource};
use crate::journal::{Entry, HoldState};
use crate::ledger::api::AccountSnapshot;

impl Engine {
    /// Loads the account from the ledger, with a first lease, if it is not cached.
    pub(super) async fn ensure_account(&self, account_id: &str) -> Result<(), EngineError> {
        self.ensure_account_for(account_id, Money::ZERO).await
    }

    /// `ensure_account`, asking for a first lease that covers `first` (the request that
    /// loads it), so that it needs no second round trip.
    pub(super) async fn ensure_account_for(
        &self,
        account_id: &str,
        first: Money,
    ) -> Result<(), EngineError> {
        let now_ms = self.now_ms();
        if let Some(mut a) = self.accounts.get_mut(account_id) {
            // Seen now: it stays cached for the request at hand (see `idle`).
            a.seen_ms = a.seen_ms.max(now_ms);
            return Ok(());
        }
        if self.accounts.len() >= self.cfg.accounts_max && !self.make_room(now_ms) {
            return Err(EngineError::AccountsFull(self.cfg.accounts_max));
        }
        let held = self
            .orphan_holds
            .get(account_id)
            .map(|h| h.iter().map(|o| o.held).sum())
            .unwrap_or(Money::ZERO);
        let want = self.cfg.leasing.want(None, first) + held;
        let snap = self
            .fetch_lease(account_id, want, held + first, held)
            .await?;
        let pending: VecDeque<Pending> = self
            .journal
            .outbox_of(account_id, snap.applied_seq, usize::MAX)?
            .into_iter()
            .map(|u| Pending {
                seq: u.seq,
                resource: u.resource,
                quantity: u.quantity,
                cost: u.cost,
                money: u.cost,
                at_ms: u.at_ms,
            })
            .collect();
        let budget = self
            .cfg
            .fail_open_budgets
            .get(account_id)
            .copied()
            .unwrap_or(self.cfg.fail_open_default);
        let now_ms = self.now_ms();
        let orphans = self.orphan_holds.remove(account_id).map(|(_, v)| v);
        let mut a = self
            .accounts
            .entry(account_id.to_owned())
            .or_insert_with(|| Account::new(snap, pending, budget, now_ms, self.catalog.calendar));
        a.seen_ms = a.seen_ms.max(now_ms);
        self.index_loaded(&mut a, account_id, now_ms);
        self.take_left_behind(&mut a, account_id);
        a.lease_floor_seq = a
            .lease_floor_seq
            .max(self.uncached_floor_seq.load(Ordering::Relaxed));
        for o in orphans.into_iter().flatten() {
            a.add_held(o.held);
            a.count_units(o.resource, o.quantity, true);
            self.index_expiry(&mut a, account_id, o.expires_at_ms, o.reservation_id);
        }
        if let Some((_, held)) = self.orphan_session_holds.remove(account_id) {
            a.add_held(held);
        }
        if let Some((_, keys)) = self.recovered_alerts.remove(account_id) {
            a.alert_memo = AlertMemo::from_keys(keys);
        }
        if let Some((_, meter)) = self.orphan_storage.remove(account_id)
            && let Ok(mut m) = a.storage.try_lock()
        {
            self.index_storage(account_id, &meter);
            m.get_or_insert(meter);
        }
        drop(a);
        // Loads that overlapped may each have passed the check above on the same place:
        // what they took beyond `accounts_max` is given back as soon as they are in. (Two
        // that give back at the same moment may both do so: the cache then holds one less
        // than it could, never more.)
        while self.accounts.len() > self.cfg.accounts_max && self.make_room(now_ms) {}
        Ok(())
    }

    /// Replaces cached snapshots with newer ones from the ledger.
    pub fn apply_snapshots(&self, snaps: Vec<AccountSnapshot>) {
        let now_ms = self.now_ms();
        for snap in snaps {
            let batch = if let Some(mut a) = self.accounts.get_mut(&snap.account_id) {
                tracing::trace!(account_id = %snap.account_id, version = snap.version,
                    lease = %snap.lease.remaining, lease_seq = snap.lease.seq,
                    applied_seq = snap.applied_seq, balance = %snap.balance, "snapshot");
                let account_id = snap.account_id.clone();
                if !a.apply_snapshot(snap) {
                    continue;
                }
                if a.owes_give_back() {
                    self.wake_sync();
                }
                // Top-ups, purchases and grants arrive here: they may cross back.
                let batch = self.alerts_locked(&mut a, &account_id, now_ms);
                self.index_alerts(&mut a, &account_id, now_ms);
                batch
            } else {
                None
            };
            self.publish(batch);
        }
    }

    /// Fetches the account's snapshot and a fresh lease now (after an admin change).
    pub async fn refresh_account(&self, account_id: &str) -> Result<(), EngineError> {
        if !self.accounts.contains_key(account_id) {
            return self.ensure_account(account_id).await;
        }
        let (want, held) = match self.accounts.get(account_id) {
            Some(a) => (self.cfg.leasing.want(Some(&a), Money::ZERO), a.committed()),
            None => return Ok(()),
        };
        let snap = self
            .fetch_lease(account_id, want, held + self.inflight(account_id), held)
            .await?;
        self.apply_snapshots(vec![snap]);
        Ok(())
    }

    /// Indexes a hold's expiry. The account's own heap keeps every hold; the engine's
    /// deadlines only the account's earliest, so a Reserve whose hold expires after the one
    /// indexed (the usual TTL) takes no engine-wide lock and allocates nothing there.
    pub(super) fn index_expiry(
        &self,
        a: &mut Account,
        account_id: &str,
        expires_at_ms: i64,
        reservation_id: String,
    ) {
        a.expiries.push(Reverse((expires_at_ms, reservation_id)));
        self.index_hold_due(a, account_id, expires_at_ms);
        debug_assert!(
            a.expiries
                .peek()
                .is_none_or(|Reverse((at, _))| *at >= a.hold_due_ms)
        );
    }

    /// Gives the account an entry in the hold deadlines at `at_ms` if that comes before
    /// the one it has.
    fn index_hold_due(&self, a: &mut Account, account_id: &str, at_ms: i64) {
        if at_ms < a.hold_due_ms {
            a.hold_due_ms = at_ms;
            self.hold_due.push(at_ms, account_id);
        }
    }

    /// Releases the account's holds whose TTL has passed (G3).
    pub(super) fn expire_due(&self, a: &mut Account, now_ms: i64) {
        let journal = &self.journal;
        let any = a.expire_due(&self.holds, now_ms, |row| {
            let id = &row.reservation_id;
            tracing::debug!(reservation_id = %id, held = %row.held, "hold expired");
            // A restart re-derives expiry from the time, so losing this write is harmless.
            if let Err(e) = journal.submit_detached(Entry::Reservation(row.clone())) {
                tracing::warn!(reservation_id = %id, error = %e, "expiry not journaled");
            }
        });
        if any && a.lease_recalled() {
            self.wake_sync();
        }
    }

    /// Housekeeping, at the cost of what is due: expires the holds due by `now_ms` (found
    /// by their deadlines, not by a walk of the accounts), lets idle accounts leave the
    /// cache, and every `PRUNE_INTERVAL_MS` forgets settled reservations past the
    /// retention window.
    pub fn sweep(&self, now_ms: i64) {
        for (_, id) in self.hold_due.due(now_ms) {
            if let Some(mut a) = self.accounts.get_mut(&id) {
                self.expire_due(&mut a, now_ms);
                // Its entry was taken: index the next expiry, if any.
                a.hold_due_ms = i64::MAX;
                if let Some(at) = a.expiries.peek().map(|Reverse((at, _))| *at) {
                    self.index_hold_due(&mut a, &id, at);
                }
            }
        }
        self.sweep_idle(now_ms);
        let pruned_at_ms = self.pruned_at_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(pruned_at_ms) < PRUNE_INTERVAL_MS {
            return;
        }
        self.pruned_at_ms.store(now_ms, Ordering::Relaxed);
        let cutoff = now_ms - self.cfg.settled_retention_ms;
        self.works.prune(cutoff);
        self.sessions.prune(cutoff);
        let mut removed = 0usize;
        self.holds.retain(|_, h| {
            let keep = h.row.state == HoldState::Open || h.busy || h.row.settled_at_ms >= cutoff;
            if !keep {
                removed += 1;
            }
            keep
        });
        if removed > 0 {
            self.holds_len.fetch_sub(removed, Ordering::Relaxed);
            if let Err(e) = self.journal.submit_detached(Entry::Prune {
                settled_before_ms: cutoff,
            }) {
                tracing::warn!(error = %e, "prune not journaled");
            }
        }
    }

    pub async fn balance(&self, account_id: &str) -> Result<BalanceView, EngineError> {
        let now_ms = self.now_ms();
        self.ensure_account(account_id).await?;
        self.storage_up_to_date(account_id, now_ms).await;
        let mut a = self
            .accounts
            .get_mut(account_id)
            .ok_or_else(|| EngineError::UnknownAccount(account_id.to_owned()))?;
        self.expire_due(&mut a, now_ms);
        let batch = self.alerts_locked(&mut a, account_id, now_ms);
        let view = BalanceView {
            account_id: account_id.to_owned(),
            status: status::account_status(a.balance, &a.grants, None, now_ms),
            balance: a.balance,
            available: a.billing_available(Resource::GpuShared, now_ms),
            held: a.held,
            grants: a.grants.clone(),
            now_ms,
        };
        drop(a);
        self.publish(batch);
        Ok(view)
    }
}
