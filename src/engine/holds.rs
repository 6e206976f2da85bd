//! Reserve, Commit, Release and Admit: a hold is decided under the account's lock by the
//! admission rule, recorded in memory and queued for the journal in the same step, and
//! answered once durable; a settlement is applied the same way and rolled back if the
//! journal fails. A retry is answered with the first outcome, and a concurrent copy of a
//! call being journaled waits for it (G4, G6).

use std::cmp::Reverse;
use std::sync::atomic::Ordering;

use dashmap::mapref::entry::Entry as MapEntry;

use super::admission::Take;
use super::leases::LEASE_ASKS_MAX;
use super::reservation::{
    AdmitOutcome, CommitOutcome, Hold, ReserveOutcome, ReserveRequest, Settled, denied,
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
        let ttl_ms = if req.ttl_ms == 0 {
            self.cfg.hold_ttl_default_ms
        } else {
            req.ttl_ms
        };
        if ttl_ms > self.cfg.hold_ttl_max_ms {
            return Err(EngineError::TtlTooLong {
                ttl_ms,
                max_ms: self.cfg.hold_ttl_max_ms,
            });
        }
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
        // First from the lease; if it is short, once more after asking the ledger for more
        // (or, with the ledger unreachable, from the fail-open budget). A denial by the
        // cached view is first checked with the ledger (a top-up or a grant may not have
        // reached this sidecar yet).
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
                Step::Held(done, available, expires_at_ms, held, from_budget) => {
                    return self
                        .finish_hold(req, held, done, available, expires_at_ms, from_budget)
                        .await;
                }
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
        let (available, from_budget) = match self.take(
            &mut a,
            &req.account_id,
            req.resource,
            cost,
            now_ms,
            fail_open,
        ) {
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
                return Ok(Step::Answer(denied(
                    reason,
                    self.available(&a, req.resource, now_ms),
                )));
            }
            Take::NeedLease => {
                let available = self.available(&a, req.resource, now_ms);
                return Ok(Step::NeedLease(cost, available));
            }
        };
        let row = ReservationRow {
            reservation_id: req.reservation_id.clone(),
            account_id: req.account_id.clone(),
            resource: req.resource,
            sku: req.sku.clone(),
            quantity: req.quantity,
            held: cost,
            expires_at_ms,
            state: HoldState::Open,
            charged: Money::ZERO,
            charged_quantity: 0,
            settled_at_ms: 0,
            streamed_quantity: 0,
            streamed_cost: Money::ZERO,
        };
        let done = self.journal.submit(Entry::Reservation(row.clone()))?;
        a.held += cost;
        a.count_units(req.resource, req.quantity, true);
        a.expiries
            .push(Reverse((expires_at_ms, req.reservation_id.clone())));
        slot.insert(Hold::new(row, true));
        self.holds_len.fetch_add(1, Ordering::Relaxed);
        Ok(Step::Held(
            done,
            available,
            expires_at_ms,
            cost,
            from_budget,
        ))
    }

    /// Waits for the hold to be durable; undoes it if the journal failed.
    async fn finish_hold(
        &self,
        req: &ReserveRequest,
        cost: Money,
        done: Durable,
        available: Money,
        expires_at_ms: i64,
        fail_open: bool,
    ) -> Result<ReserveOutcome, EngineError> {
        let (account_id, id) = (req.account_id.clone(), req.reservation_id.clone());
        let (resource, quantity) = (req.resource, req.quantity);
        self.when_durable(done, move |e, written| {
            if let Err(err) = written {
                if let Some(mut a) = e.accounts.get_mut(&account_id) {
                    a.held -= cost;
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
        let (account_id, resource, sku) = {
            let h = self
                .holds
                .get(reservation_id)
                .ok_or_else(|| EngineError::UnknownReservation(reservation_id.to_owned()))?;
            (h.row.account_id.clone(), h.row.resource, h.row.sku.clone())
        };
        let cost = match quantity {
            Some(q) => self.cost(resource, &sku, q)?,
            None => Money::ZERO,
        };
        self.ensure_account(&account_id).await?;
        let (done, seq, old_row, out, batch) = {
            let mut a = self
                .accounts
                .get_mut(&account_id)
                .ok_or_else(|| EngineError::UnknownAccount(account_id.clone()))?;
            self.expire_due(&mut a, now_ms);
            let mut h = self
                .holds
                .get_mut(reservation_id)
                .ok_or_else(|| EngineError::UnknownReservation(reservation_id.to_owned()))?;
            let settled = |state| EngineError::ReservationSettled {
                id: reservation_id.to_owned(),
                state,
            };
            match (h.settled(reservation_id, now_ms)?, quantity) {
                (None, _) => {}
                (Some(Settled::Committed(charged)), Some(q)) if h.row.charged_quantity == q => {
                    return Ok((charged, self.available(&a, resource, now_ms)));
                }
                (Some(Settled::Committed(_)), Some(q)) => {
                    return Err(EngineError::ReservationMismatch {
                        id: reservation_id.to_owned(),
                        detail: format!(
                            "it was committed with quantity {}, not {q}",
                            h.row.charged_quantity
                        ),
                    });
                }
                (Some(Settled::Released(held)), None) => {
                    return Ok((held, self.available(&a, resource, now_ms)));
                }
                (Some(Settled::Released(_)), Some(_)) => return Err(settled("released")),
                (Some(Settled::Committed(_)), None) => return Err(settled("committed")),
            }
            let old_row = h.row.clone();
            let mut row = h.row.clone();
            row.settled_at_ms = now_ms;
            if h.streaming {
                return Err(EngineError::WorkStreaming(reservation_id.to_owned()));
            }
            // Usage already reported on the reservation's stream is charged; a Commit
            // charges only what it adds.
            let extra = (cost - old_row.streamed_cost).non_negative();
            let (entry, seq) = match quantity {
                Some(q) if !extra.is_zero() || old_row.streamed_quantity == 0 => {
                    row.state = HoldState::Committed;
                    row.charged_quantity = q;
                    let usage = self.charge_locked(
                        &mut a,
                        reservation_id.to_owned(),
                        &account_id,
                        resource,
                        &sku,
                        q,
                        extra,
                        now_ms,
                    );
                    // Charged is money: what free requests and volume plans (GB) paid is
                    // not in it (the statement lists those).
                    let money = a.pending.back().map_or(extra, |p| p.money);
                    row.charged = old_row.streamed_cost + money;
                    let seq = usage.seq;
                    (Entry::Commit(row.clone(), usage), Some(seq))
                }
                Some(q) => {
                    row.state = HoldState::Committed;
                    row.charged = old_row.streamed_cost;
                    row.charged_quantity = q;
                    (Entry::Reservation(row.clone()), None)
                }
                None => {
                    row.state = HoldState::Released;
                    (Entry::Reservation(row.clone()), None)
                }
            };
            let done = match self.journal.submit(entry) {
                Ok(d) => d,
                Err(e) => {
                    if let Some(seq) = seq {
                        a.undo_charge(seq);
                    }
                    return Err(e.into());
                }
            };
            a.held -= old_row.held;
            a.unsettled += old_row.held;
            a.count_units(old_row.resource, old_row.quantity, false);
            a.last_touch_ms = now_ms;
            h.row = row.clone();
            let batch = seq.and_then(|_| self.alerts_locked(&mut a, &account_id, now_ms));
            h.busy = true;
            let out = if quantity.is_some() {
                row.charged
            } else {
                old_row.held
            };
            (
                done,
                seq,
                old_row,
                (out, self.available(&a, resource, now_ms)),
                batch,
            )
        };
        let id = reservation_id.to_owned();
        let old_held = old_row.held;
        self.when_durable(done, move |e, written| {
            if let Some(mut a) = e.accounts.get_mut(&account_id) {
                a.unsettled = (a.unsettled - old_held).non_negative();
                if written.is_ok() && a.lease_recalled() {
                    // Near the edge what this freed goes back to the ledger at once.
                    e.wake_sync();
                }
            }
            if let Err(err) = written {
                if let Some(mut a) = e.accounts.get_mut(&account_id) {
                    a.held += old_row.held;
                    a.count_units(old_row.resource, old_row.quantity, true);
                    if let Some(seq) = seq {
                        a.undo_charge(seq);
                    }
                    a.expiries
                        .push(Reverse((old_row.expires_at_ms, id.clone())));
                }
                if let Some(mut h) = e.holds.get_mut(&id) {
                    h.row = old_row;
                    h.idle();
                }
                return Err(err.into());
            }
            if let Some(mut h) = e.holds.get_mut(&id) {
                h.idle();
            }
            e.publish(batch);
            Ok(())
        })
        .await?;
        Ok(out)
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
        })
        .await
    }
}

/// What `try_hold` decided.
enum Step {
    Answer(ReserveOutcome),
    /// Held: durable when `Durable` resolves; availability, expiry, amount held, and
    /// whether it came from the fail-open budget.
    Held(Durable, Money, i64, Money, bool),
    /// The lease is short or expired: ask the ledger for enough to hold this much; and
    /// what this sidecar could get as it decided.
    NeedLease(Money, Money),
}
