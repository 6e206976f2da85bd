//! Reserve, Commit, Release and Admit: a hold is decided under the account's lock by the
//! admission rule, recorded in memory and queued for the journal in the same step, and
//! answered once durable; a settlement is applied the same way and rolled back if the
//! journal fails. A retry is answered with the first outcome, and a concurrent copy of a
//! call being journaled waits for it (G4, G6).

use std::sync::atomic::Ordering;

use dashmap::mapref::entry::{Entry as MapEntry, VacantEntry};

use super::account::Account;
use super::admission::Take;
use super::events::Batch;
use super::leases::LEASE_ASKS_MAX;
use super::reservation::{
    AdmitOutcome, CommitOutcome, Hold, ReserveOutcome, ReserveRequest, denied, open_row,
};
use super::{Engine, EngineError};
use crate::billing::status::DenyReason;
use crate::billing::{Money, Resource};
use crate::journal::{Durable, Entry, HoldState, ReservationRow};
use crate::ledger::api::LedgerError;

impl Engine {
    fn with_available(
        &self,
        mut o: ReserveOutcome,
        account_id: &str,
        resource: Resource,
    ) -> ReserveOutcome {
        let now_ms = self.now_ms();
        if let Some(mut a) = self.accounts.get_mut(account_id) {
            self.expire_due(&mut a, now_ms);
            o.available = self.available(&a, resource, now_ms);
        }
        o
    }

    /// Holds the cost of a job. A concurrent copy of a Reserve being journaled waits for it
    /// and answers with its outcome (G4, G6).
    pub async fn reserve(&self, req: ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        loop {
            match self.reserve_once(&req).await {
                Err(EngineError::InProgress(id)) => self.wait_idle(&id).await,
                r => return r,
            }
        }
    }

    async fn reserve_once(&self, req: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let now_ms = self.now_ms();
        let cost = self.cost(req.resource, &req.sku, req.quantity)?;
        let ttl_ms = self.hold_ttl(req.ttl_ms)?;
        if let Some(h) = self.holds.get(&req.reservation_id) {
            let o = h.replay(req)?;
            drop(h);
            return Ok(self.with_available(o, &req.account_id, req.resource));
        }
        if self.holds_len.load(Ordering::Relaxed) >= self.cfg.holds_max {
            return Err(EngineError::HoldsFull(self.cfg.holds_max));
        }
        if self.journal.outbox_len() >= self.cfg.outbox_max {
            return Err(EngineError::Backlog(self.cfg.outbox_max));
        }
        match self.ensure_account_for(&req.account_id, cost).await {
            Err(EngineError::Ledger(LedgerError::Unavailable(e))) => {
                tracing::warn!(account_id = %req.account_id, error = %e, "account not cached and ledger unreachable");
                return Ok(denied(DenyReason::LedgerUnavailable, Money::ZERO));
            }
            r => r?,
        }
        self.hold_asking(req, cost, ttl_ms, now_ms).await
    }

    /// A Reserve's TTL: the default for 0, at most the configured maximum.
    fn hold_ttl(&self, ttl_ms: i64) -> Result<i64, EngineError> {
        let ttl_ms = if ttl_ms == 0 {
            self.cfg.hold_ttl_default_ms
        } else {
            ttl_ms
        };
        if ttl_ms > self.cfg.hold_ttl_max_ms {
            return Err(EngineError::TtlTooLong {
                ttl_ms,
                max_ms: self.cfg.hold_ttl_max_ms,
            });
        }
        Ok(ttl_ms)
    }

    /// Holds `cost` from the lease; if it is short, once more after asking the ledger for
    /// more (or, with the ledger unreachable, from the fail-open budget). A denial by the
    /// cached view is first checked with the ledger (a top-up or a grant may not have
    /// reached this sidecar yet).
    async fn hold_asking(
        &self,
        req: &ReserveRequest,
        cost: Money,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<ReserveOutcome, EngineError> {
        let (mut fail_open, mut asks, mut confirmed) = (false, 0usize, false);
        loop {
            match self.try_hold(req, cost, ttl_ms, now_ms, fail_open)? {
                Step::Answer(o) if !confirmed && self.confirmable(&o.reason) => {
                    confirmed = true;
                    match self.refresh_snapshot(&req.account_id).await {
                        Ok(()) => {}
                        Err(EngineError::Ledger(LedgerError::Unavailable(_))) => return Ok(o),
                        Err(e) => return Err(e),
                    }
                }
                Step::Answer(o) => return Ok(o),
                Step::Held(held) => return self.finish_hold(req, held).await,
                // Asked once; again only while what this sidecar could get covers it (a
                // concurrent request took the money granted for this one).
                Step::NeedLease(money, available)
                    if asks == 0 || !fail_open && available >= money && asks < LEASE_ASKS_MAX =>
                {
                    asks += 1;
                    match self.ask_lease(&req.account_id, money).await {
                        Ok(()) => {}
                        Err(EngineError::Ledger(LedgerError::Unavailable(_))) => fail_open = true,
                        Err(e) => return Err(e),
                    }
                }
                Step::NeedLease(_, available) => {
                    let reason = if fail_open {
                        DenyReason::LedgerUnavailable
                    } else {
                        DenyReason::InsufficientFunds
                    };
                    // What this sidecar could get when it decided: short of the request.
                    return Ok(denied(reason, available));
                }
            }
        }
    }

    /// Under the account's lock: decides a Reserve and, if admitted, records the hold and
    /// queues it for the journal.
    fn try_hold(
        &self,
        req: &ReserveRequest,
        cost: Money,
        ttl_ms: i64,
        now_ms: i64,
        fail_open: bool,
    ) -> Result<Step, EngineError> {
        let mut a = self
            .accounts
            .get_mut(&req.account_id)
            .ok_or_else(|| EngineError::UnknownAccount(req.account_id.clone()))?;
        a.last_touch_ms = now_ms;
        self.expire_due(&mut a, now_ms);
        // What volume plans (traffic GB) or the month's free requests would take costs no
        // money: hold only the rest.
        let cost = a.money_due(req.resource, req.quantity, cost, now_ms);
        let slot = match self.holds.entry(req.reservation_id.clone()) {
            MapEntry::Occupied(o) => {
                let out = o.get().replay(req)?;
                let available = self.available(&a, req.resource, now_ms);
                return Ok(Step::Answer(ReserveOutcome { available, ..out }));
            }
            MapEntry::Vacant(v) => v,
        };
        let mut expires_at_ms = now_ms.saturating_add(ttl_ms);
        let take = self.take(
            &mut a,
            &req.account_id,
            req.resource,
            cost,
            now_ms,
            fail_open,
        );
        let (available, from_budget) = match take {
            Take::Lease(available) => {
                tracing::trace!(account_id = %req.account_id, %cost, lease = %a.base.lease.remaining,
                    lease_seq = a.base.lease.seq, floor = a.lease_floor_seq, held = %a.held,
                    pending = %a.pending_cost, version = a.base.version, "held from lease");
                // The ledger keeps the lease set aside until expiry plus grace: no hold may
                // outlive that.
                let grace = self.hold_grace_ms.load(Ordering::Relaxed);
                expires_at_ms = expires_at_ms.min(a.base.lease.expires_at_ms.saturating_add(grace));
                (available, false)
            }
            Take::FailOpen(available) => (available, true),
            Take::Denied(reason) => {
                let available = self.available(&a, req.resource, now_ms);
                return Ok(Step::Answer(denied(reason, available)));
            }
            Take::NeedLease => {
                let available = self.available(&a, req.resource, now_ms);
                return Ok(Step::NeedLease(cost, available));
            }
        };
        let done = self.record_hold(&mut a, slot, req, cost, expires_at_ms)?;
        // Held from the lease: within what the lease leaves after pending usage.
        debug_assert!(
            from_budget
                || self.cfg.leasing.lease_whole_account
                || a.base.lease.remaining >= a.pending_cost + a.held,
            "hold of {cost} beyond the lease ({} for {} pending and {} held)",
            a.base.lease.remaining,
            a.pending_cost,
            a.held
        );
        Ok(Step::Held(Held {
            done,
            available,
            expires_at_ms,
            held: cost,
            fail_open: from_budget,
        }))
    }

    /// Records an admitted hold under the account's lock: its row queued for the journal,
    /// the account's holds, and the reservation in memory, busy until durable.
    fn record_hold(
        &self,
        a: &mut Account,
        slot: VacantEntry<'_, String, Hold>,
        req: &ReserveRequest,
        cost: Money,
        expires_at_ms: i64,
    ) -> Result<Durable, EngineError> {
        let row = open_row(req, cost, expires_at_ms);
        let done = self.journal.submit(Entry::Reservation(row.clone()))?;
        a.add_held(cost);
        a.count_units(req.resource, req.quantity, true);
        self.index_expiry(
            a,
            &req.account_id,
            expires_at_ms,
            req.reservation_id.clone(),
        );
        slot.insert(Hold::new(row, true));
        self.holds_len.fetch_add(1, Ordering::Relaxed);
        Ok(done)
    }

    /// Waits for the hold to be durable; undoes it if the journal failed.
    async fn finish_hold(
        &self,
        req: &ReserveRequest,
        held: Held,
    ) -> Result<ReserveOutcome, EngineError> {
        let Held {
            done,
            available,
            expires_at_ms,
            held: cost,
            fail_open,
        } = held;
        let (account_id, id) = (req.account_id.clone(), req.reservation_id.clone());
        let (resource, quantity) = (req.resource, req.quantity);
        self.when_durable(done, move |e, written| {
            if let Err(err) = written {
                if let Some(mut a) = e.accounts.get_mut(&account_id) {
                    a.remove_held(cost);
                    a.count_units(resource, quantity, false);
                    if fail_open {
                        a.fail_open_left += cost;
                        a.fail_open_spent -= cost;
                    }
                }
                // Its waiters find no reservation and make their own attempt.
                if let Some((_, mut h)) = e.holds.remove(&id) {
                    e.holds_len.fetch_sub(1, Ordering::Relaxed);
                    h.idle();
                }
                return Err(err.into());
            }
            if let Some(mut h) = e.holds.get_mut(&id) {
                h.idle();
            }
            Ok(())
        })
        .await?;
        Ok(ReserveOutcome {
            admitted: true,
            reason: None,
            held: cost,
            available,
            expires_at_ms,
            fail_open,
        })
    }

    pub async fn commit(
        &self,
        reservation_id: &str,
        quantity: u64,
    ) -> Result<CommitOutcome, EngineError> {
        let (charged, available) = self.settle(reservation_id, Some(quantity)).await?;
        Ok(CommitOutcome { charged, available })
    }

    /// The account a reservation (open or settled and remembered) belongs to, for
    /// authorising Commit and Release against it.
    pub fn reservation_account(&self, reservation_id: &str) -> Option<String> {
        self.holds
            .get(reservation_id)
            .map(|h| h.row.account_id.clone())
    }

    /// Releases an open hold; returns the amount it held.
    pub async fn release(&self, reservation_id: &str) -> Result<Money, EngineError> {
        Ok(self.settle(reservation_id, None).await?.0)
    }

    /// Takes an open hold to Committed (`quantity` given: charges it, burning down grants
    /// and balance) or Released. Answers a retry with the first outcome; a concurrent copy
    /// waits for the first to be journaled (G4, G6). The change is applied under the
    /// account's lock, journaled, and rolled back if the journal fails.
    /// Returns (charged or released, available afterwards).
    async fn settle(
        &self,
        reservation_id: &str,
        quantity: Option<u64>,
    ) -> Result<(Money, Money), EngineError> {
        loop {
            match self.settle_once(reservation_id, quantity).await {
                Err(EngineError::InProgress(_)) => self.wait_idle(reservation_id).await,
                r => return r,
            }
        }
    }

    async fn settle_once(
        &self,
        reservation_id: &str,
        quantity: Option<u64>,
    ) -> Result<(Money, Money), EngineError> {
        let now_ms = self.now_ms();
        let terms = {
            let h = self
                .holds
                .get(reservation_id)
                .ok_or_else(|| EngineError::UnknownReservation(reservation_id.to_owned()))?;
            Terms {
                account_id: h.row.account_id.clone(),
                resource: h.row.resource,
                sku: h.row.sku.clone(),
            }
        };
        let cost = match quantity {
            Some(q) => self.cost(terms.resource, &terms.sku, q)?,
            None => Money::ZERO,
        };
        self.ensure_account(&terms.account_id).await?;
        let s = match self.settle_locked(reservation_id, &terms, quantity, cost, now_ms)? {
            Settling::Answered(out) => return Ok(out),
            Settling::Applied(s) => s,
        };
        let out = s.out;
        self.finish_settle(reservation_id, terms.account_id, s)
            .await?;
        Ok(out)
    }

    /// Under the account's lock: answers a retry of a settled reservation, or settles an
    /// open one (its row, the charge of a Commit, the account's holds) and queues the
    /// change for the journal.
    fn settle_locked(
        &self,
        id: &str,
        terms: &Terms,
        quantity: Option<u64>,
        cost: Money,
        now_ms: i64,
    ) -> Result<Settling, EngineError> {
        let account_id = &terms.account_id;
        let mut a = self
            .accounts
            .get_mut(account_id)
            .ok_or_else(|| EngineError::UnknownAccount(account_id.clone()))?;
        self.expire_due(&mut a, now_ms);
        let mut h = self
            .holds
            .get_mut(id)
            .ok_or_else(|| EngineError::UnknownReservation(id.to_owned()))?;
        if let Some(settled) = h.settled_answer(id, quantity, now_ms)? {
            return Ok(Settling::Answered((
                settled,
                self.available(&a, terms.resource, now_ms),
            )));
        }
        if h.streaming {
            return Err(EngineError::WorkStreaming(id.to_owned()));
        }
        let old_row = h.row.clone();
        debug_assert_eq!(old_row.state, HoldState::Open, "settling a settled hold");
        let (row, entry, seq) = self.settled_row(&mut a, &old_row, terms, quantity, cost, now_ms);
        let done = match self.journal.submit(entry) {
            Ok(d) => d,
            Err(e) => {
                if let Some(seq) = seq {
                    a.undo_charge(seq);
                }
                return Err(e.into());
            }
        };
        a.remove_held(old_row.held);
        a.unsettled += old_row.held;
        a.count_units(old_row.resource, old_row.quantity, false);
        a.last_touch_ms = now_ms;
        let settled = if quantity.is_some() {
            row.charged
        } else {
            old_row.held
        };
        h.row = row;
        let batch = seq.and_then(|_| self.alerts_locked(&mut a, account_id, now_ms));
        h.busy = true;
        let out = (settled, self.available(&a, terms.resource, now_ms));
        Ok(Settling::Applied(Settlement {
            done,
            seq,
            old_row,
            out,
            batch,
        }))
    }

    /// The row an open reservation settles to and its journal entry, with the seq of the
    /// usage a Commit charges (under the account's lock). Usage already reported on the
    /// reservation's stream is charged; a Commit charges only what it adds.
    fn settled_row(
        &self,
        a: &mut Account,
        old: &ReservationRow,
        terms: &Terms,
        quantity: Option<u64>,
        cost: Money,
        now_ms: i64,
    ) -> (ReservationRow, Entry, Option<u64>) {
        let mut row = old.clone();
        row.settled_at_ms = now_ms;
        let extra = (cost - old.streamed_cost).non_negative();
        match quantity {
            Some(q) if !extra.is_zero() || old.streamed_quantity == 0 => {
                row.state = HoldState::Committed;
                row.charged_quantity = q;
                let usage = self.charge_locked(
                    a,
                    old.reservation_id.clone(),
                    &terms.account_id,
                    terms.resource,
                    &terms.sku,
                    q,
                    extra,
                    now_ms,
                );
                // Charged is money: what free requests and volume plans (GB) paid is
                // not in it (the statement lists those).
                let money = a.pending.back().map_or(extra, |p| p.money);
                row.charged = old.streamed_cost + money;
                let seq = usage.seq;
                (row.clone(), Entry::Commit(row, usage), Some(seq))
            }
            Some(q) => {
                row.state = HoldState::Committed;
                row.charged = old.streamed_cost;
                row.charged_quantity = q;
                (row.clone(), Entry::Reservation(row), None)
            }
            None => {
                row.state = HoldState::Released;
                (row.clone(), Entry::Reservation(row), None)
            }
        }
    }

    /// Waits for a settlement to be durable (the reservation goes idle, its alerts out);
    /// if the journal failed, the reservation is open again as it was.
    async fn finish_settle(
        &self,
        id: &str,
        account_id: String,
        s: Settlement,
    ) -> Result<(), EngineError> {
        let id = id.to_owned();
        let Settlement {
            done,
            seq,
            old_row,
            batch,
            ..
        } = s;
        self.when_durable(done, move |e, written| {
            if let Some(mut a) = e.accounts.get_mut(&account_id) {
                a.unsettled = (a.unsettled - old_row.held).non_negative();
                if written.is_ok() && a.lease_recalled() {
                    // Near the edge what this freed goes back to the ledger at once.
                    e.wake_sync();
                }
            }
            if let Err(err) = written {
                e.unsettle(&id, &account_id, old_row, seq);
                return Err(err.into());
            }
            if let Some(mut h) = e.holds.get_mut(&id) {
                h.idle();
            }
            e.publish(batch);
            Ok(())
        })
        .await
    }

    /// Takes back a settlement whose journal write failed: the hold is open again.
    fn unsettle(&self, id: &str, account_id: &str, old_row: ReservationRow, seq: Option<u64>) {
        if let Some(mut a) = self.accounts.get_mut(account_id) {
            a.add_held(old_row.held);
            a.count_units(old_row.resource, old_row.quantity, true);
            if let Some(seq) = seq {
                a.undo_charge(seq);
            }
            self.index_expiry(&mut a, account_id, old_row.expires_at_ms, id.to_owned());
        }
        if let Some(mut h) = self.holds.get_mut(id) {
            h.row = old_row;
            h.idle();
        }
    }

    /// Whether work of this cost could start now, by the same rules as Reserve (the lease
    /// included), without holding anything.
    pub async fn admit(
        &self,
        account_id: &str,
        resource: Resource,
        sku: &str,
        quantity: u64,
    ) -> Result<AdmitOutcome, EngineError> {
        let cost = self.cost(resource, sku, quantity)?;
        if let Some(o) = self.admit_cached(account_id, resource, quantity, cost) {
            return Ok(o);
        }
        match self.ensure_account(account_id).await {
            Err(EngineError::Ledger(LedgerError::Unavailable(_))) => {
                return Ok(AdmitOutcome {
                    admitted: false,
                    reason: Some(DenyReason::LedgerUnavailable),
                    available: Money::ZERO,
                });
            }
            r => r?,
        }
        let cost = match self.accounts.get(account_id) {
            Some(a) => a.money_due(resource, quantity, cost, self.now_ms()),
            None => cost,
        };
        self.gated(account_id, resource, cost, false, |a, take, now_ms| {
            self.admit_outcome(a, resource, take, now_ms)
        })
        .await
    }

    /// Admit's common case in one look under the account's lock: the account is cached
    /// and its cached view decides (no lease to look for, no denial to confirm). None:
    /// the full path (`admit` above) decides, which looks again from the start.
    fn admit_cached(
        &self,
        account_id: &str,
        resource: Resource,
        quantity: u64,
        cost: Money,
    ) -> Option<AdmitOutcome> {
        let now_ms = self.now_ms();
        let mut a = self.accounts.get_mut(account_id)?;
        // Seen and touched now, as `ensure_account` and `gated` would have marked it.
        a.seen_ms = a.seen_ms.max(now_ms);
        a.last_touch_ms = now_ms;
        self.expire_due(&mut a, now_ms);
        let cost = a.money_due(resource, quantity, cost, now_ms);
        match self.gate(&a, resource, cost, now_ms, false, true) {
            Take::NeedLease => None,
            Take::Denied(r) if self.confirmable(&Some(r)) => None,
            take => Some(self.admit_outcome(&a, resource, take, now_ms)),
        }
    }

    fn admit_outcome(
        &self,
        a: &Account,
        resource: Resource,
        take: Take,
        now_ms: i64,
    ) -> AdmitOutcome {
        let reason = match take {
            Take::Lease(_) | Take::FailOpen(_) => None,
            Take::Denied(reason) => Some(reason),
            Take::NeedLease => Some(DenyReason::InsufficientFunds),
        };
        AdmitOutcome {
            admitted: reason.is_none(),
            reason,
            available: self.available(a, resource, now_ms),
        }
    }
}

/// What `try_hold` decided.
enum Step {
    Answer(ReserveOutcome),
    Held(Held),
    /// The lease is short or expired: ask the ledger for enough to hold this much; and
    /// what this sidecar could get as it decided.
    NeedLease(Money, Money),
}

/// A hold recorded and queued for the journal.
struct Held {
    /// Resolves once the hold is durable.
    done: Durable,
    /// What the account can pay after it.
    available: Money,
    expires_at_ms: i64,
    held: Money,
    /// It came from the fail-open budget.
    fail_open: bool,
}

/// What settling a reservation needs to know of it before it takes any lock.
struct Terms {
    account_id: String,
    resource: Resource,
    sku: String,
}

/// What `settle_locked` did. Returned once per call and never stored: boxing the large
/// variant would cost an allocation per Commit.
#[allow(clippy::large_enum_variant)]
enum Settling {
    /// The reservation was settled already: the first outcome, and availability now.
    Answered((Money, Money)),
    Applied(Settlement),
}

/// A settlement applied under the account's lock, waiting for its journal write.
struct Settlement {
    done: Durable,
    /// The pending usage a Commit charged (undone if the write fails).
    seq: Option<u64>,
    /// The hold as it was (restored if the write fails).
    old_row: ReservationRow,
    /// Charged (Commit) or released (Release), and availability afterwards.
    out: (Money, Money),
    batch: Option<Batch>,
}
