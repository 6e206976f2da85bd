//! The one admission rule behind Reserve, Admit, usage streams and sessions: under the
//! account's lock, whether a cost may be held by the billing rules (R6) and then by this
//! sidecar's lease, or by the fail-open budget while the ledger is unreachable (`gate`,
//! `take`); when the lease is short, one bounded request to the ledger, and a denial by the
//! cached view confirmed once (`gated`); holding money outside a reservation
//! (`hold_money`, `unhold`); and charging usage with its journal seq (`charge_locked`).

use std::sync::atomic::Ordering;

use super::account::Account;
use super::{Engine, EngineError};
use crate::billing::status::{self, DenyReason};
use crate::billing::{Money, Resource};
use crate::ledger::api::{LedgerError, UsageRecord};

/// What `take` decided.
pub(super) enum Take {
    /// Within the lease; the account's availability once it is held.
    Lease(Money),
    /// From the fail-open budget (ledger unreachable); availability once held.
    FailOpen(Money),
    Denied(DenyReason),
    /// The lease is short or expired: ask the ledger.
    NeedLease,
}

impl Engine {
    /// What this sidecar could admit on the account now (see `Account::available`).
    pub(super) fn available(&self, a: &Account, resource: Resource, now_ms: i64) -> Money {
        a.available(resource, now_ms, self.cfg.leasing.lease_whole_account)
    }

    pub(super) fn cost(
        &self,
        resource: Resource,
        sku: &str,
        quantity: u64,
    ) -> Result<Money, EngineError> {
        Ok(self.catalog.price(sku, resource)?.cost(quantity)?)
    }

    /// Whether a denial by the cached view is worth one look at the ledger before it is
    /// answered: with a remote ledger a top-up or a grant reaches the cache only at the next
    /// sync. (Embedded, the cache is refreshed with every admin change.)
    pub(super) fn confirmable(&self, reason: &Option<DenyReason>) -> bool {
        !self.cfg.leasing.lease_whole_account
            && self.ledger_reachable()
            && matches!(
                reason,
                Some(
                    DenyReason::InsufficientFunds | DenyReason::NoEntitlement | DenyReason::Overdue
                )
            )
    }

    /// Under the account's lock: whether `cost` may be held now, by the account's status
    /// and entitlement (R6) and then by its lease, or by its fail-open budget while the
    /// ledger is unreachable. The one admission rule behind Reserve, Admit, usage streams
    /// and sessions.
    /// `unleased`: count the money no sidecar holds a lease on as if it were in this
    /// sidecar's lease (Admit, which holds nothing and so needs no grant).
    pub(super) fn gate(
        &self,
        a: &Account,
        resource: Resource,
        cost: Money,
        now_ms: i64,
        fail_open: bool,
        unleased: bool,
    ) -> Take {
        let billing = match status::admit(a.balance, &a.grants, a.held, resource, cost, now_ms) {
            Ok(av) => av - cost,
            Err(reason) => return Take::Denied(reason),
        };
        let extra = if unleased {
            a.base.unleased
        } else {
            Money::ZERO
        };
        // With one sidecar (embedded) the lease is the whole account, and the rules above
        // bound what it can pay exactly, money grants of every resource included (the
        // ledger's lease counts only those that can pay for GPU work, see
        // `ledger::lease::payable`): a live lease admits whatever they allow.
        let whole = self.cfg.leasing.lease_whole_account;
        match a.lease_spendable(now_ms) {
            Some(spendable) if whole || spendable + extra >= cost => {
                let left = a.available(resource, now_ms, whole) - cost;
                Take::Lease(billing.min(left.non_negative()))
            }
            _ if fail_open && a.fail_open_left >= cost => Take::FailOpen(billing),
            _ if fail_open => Take::Denied(DenyReason::LedgerUnavailable),
            _ => Take::NeedLease,
        }
    }

    /// `gate`, spending the fail-open budget when that is what admits it. The caller adds
    /// the hold.
    pub(super) fn take(
        &self,
        a: &mut Account,
        account_id: &str,
        resource: Resource,
        cost: Money,
        now_ms: i64,
        fail_open: bool,
    ) -> Take {
        let t = self.gate(a, resource, cost, now_ms, fail_open, false);
        if let Take::FailOpen(_) = t {
            a.fail_open_left -= cost;
            a.fail_open_spent += cost;
            tracing::warn!(account_id, %cost, left = %a.fail_open_left,
                "admitted fail-open: ledger unreachable");
        }
        t
    }

    /// Holds `cost` on the account (outside any reservation), asking the ledger for a
    /// larger lease once if the current one is short. Err(reason) if it cannot be held.
    pub(super) async fn hold_money(
        &self,
        account_id: &str,
        resource: Resource,
        cost: Money,
    ) -> Result<Result<(), DenyReason>, EngineError> {
        self.gated(account_id, resource, cost, true, |a, take, _| match take {
            Take::Lease(_) | Take::FailOpen(_) => {
                a.add_held(cost);
                Ok(())
            }
            Take::Denied(reason) => Err(reason),
            Take::NeedLease => Err(DenyReason::InsufficientFunds),
        })
        .await
    }

    /// Under the account's lock, `decide` what to do with the gate's answer for `cost`
    /// (see `take`); a short lease is first topped up by one bounded request to the
    /// ledger (Admit, which holds nothing, only looks at the account again), and an
    /// unreachable ledger turns to the fail-open budget. `consume`: spend that budget (a
    /// hold) or only look (Admit).
    pub(super) async fn gated<T>(
        &self,
        account_id: &str,
        resource: Resource,
        cost: Money,
        consume: bool,
        mut decide: impl FnMut(&mut Account, Take, i64) -> T,
    ) -> Result<T, EngineError> {
        let (mut fail_open, mut asked, mut confirmed) = (false, false, false);
        loop {
            let now_ms = self.now_ms();
            {
                let mut a = self
                    .accounts
                    .get_mut(account_id)
                    .ok_or_else(|| EngineError::UnknownAccount(account_id.to_owned()))?;
                a.last_touch_ms = now_ms;
                self.expire_due(&mut a, now_ms);
                let gate = if consume {
                    self.take(&mut a, account_id, resource, cost, now_ms, fail_open)
                } else {
                    self.gate(&a, resource, cost, now_ms, fail_open, true)
                };
                match gate {
                    Take::NeedLease if !asked => {}
                    Take::Denied(r) if !confirmed && self.confirmable(&Some(r)) => {}
                    other => return Ok(decide(&mut a, other, now_ms)),
                }
            }
            let asking = if consume && !asked {
                asked = true;
                self.ask_lease(account_id, cost).await
            } else {
                // A denial by the cached view (or Admit, which holds nothing): look again.
                confirmed = true;
                asked |= !consume;
                self.refresh_snapshot(account_id).await
            };
            match asking {
                Ok(()) => {}
                Err(EngineError::Ledger(LedgerError::Unavailable(_))) => fail_open = true,
                Err(e) => return Err(e),
            }
        }
    }

    /// Gives back `amount` held with `hold_money` (or what is left of it).
    pub(super) fn unhold(&self, account_id: &str, amount: Money) {
        if amount.is_zero() {
            return;
        }
        if let Some(mut a) = self.accounts.get_mut(account_id) {
            a.remove_held(amount);
            if a.lease_recalled() {
                self.wake_sync();
            }
        }
    }

    /// Under the account's lock: charges usage (burning down grants, then the balance,
    /// exactly as the ledger will) and returns the record to journal. If the journal then
    /// fails, `Account::undo_charge` takes it back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn charge_locked(
        &self,
        a: &mut Account,
        usage_id: String,
        account_id: &str,
        resource: Resource,
        sku: &str,
        quantity: u64,
        cost: Money,
        at_ms: i64,
    ) -> UsageRecord {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        a.charge(seq, resource, quantity, cost, at_ms);
        UsageRecord {
            seq,
            usage_id,
            account_id: account_id.to_owned(),
            resource,
            sku: sku.to_owned(),
            quantity,
            cost,
            at_ms,
        }
    }

    /// The money the pending usage `seqs` of the account took in the live view, in one
    /// look at the account; None if none of them is pending.
    pub(super) fn pending_money(
        &self,
        account_id: &str,
        seqs: impl Iterator<Item = u64>,
    ) -> Option<Money> {
        let a = self.accounts.get(account_id)?;
        let mut sum = None;
        for seq in seqs {
            if let Some(m) = a.pending_money(seq) {
                *sum.get_or_insert(Money::ZERO) += m;
            }
        }
        sum
    }
}
