//! Liveness (G7) and truthful denials, checked at every Reserve.
//!
//! Before a Reserve is sent, the model says what the account can pay for it: everything it
//! was given for GPU work, less every acknowledged charge and every sidecar's live holds,
//! and less the money a sidecar cut off from the ledger could still be spending (its lease
//! as the ledger keeps it: the ledger cannot know what such a sidecar did with it). It
//! knows nothing of leases otherwise: another sidecar's unused lease is money the account
//! can pay.
//!
//! - A denial for INSUFFICIENT_FUNDS or NO_ENTITLEMENT must not report an `available` that
//!   covers the request.
//! - A request the account can pay, reaching a sidecar whose ledger link is up (not cut
//!   off, the network failed none of its calls, and the sidecar does not know the ledger
//!   as down), must be admitted at once; or, if other sidecars held the money unused, once
//!   each of them has synced one round (their next sync interval: the ledger asks them for
//!   it in that sync), when the same request is sent again. Anything else fails the seed.
//!
//! Seeds with a fail-open budget are left out: fail-open admits past the leases by design,
//! so the account's money is no longer what the model counts.

use quotad::billing::Resource;
use quotad::billing::status::DenyReason;
use quotad::engine::{ReserveOutcome, ReserveRequest};
use rust_decimal::Decimal;

use super::{A10, Sim};
use crate::net::LedgerEvent;

#[derive(Debug, Default, Clone)]
pub struct LivenessStats {
    /// Reserves the model said the account could pay, sent over a working link.
    pub payable: u64,
    /// ...admitted at once.
    pub admitted_at_once: u64,
    /// ...denied, then admitted when sent again after one sync round of every sidecar.
    pub admitted_after_sync: u64,
    /// ...denied, and sent again after the sync round while the network failed one of its
    /// calls, or after the money went to other work meanwhile (not judged).
    pub retry_excused: u64,
    /// Payable Reserves denied while the network failed one of their calls or the sidecar
    /// knew the ledger as down (not a liveness question).
    pub excused_network: u64,
    /// Denials whose `available` was checked against the request (INSUFFICIENT_FUNDS,
    /// NO_ENTITLEMENT).
    pub truthful_checked: u64,
}

impl LivenessStats {
    pub fn add(&mut self, o: &LivenessStats) {
        self.payable += o.payable;
        self.admitted_at_once += o.admitted_at_once;
        self.admitted_after_sync += o.admitted_after_sync;
        self.retry_excused += o.retry_excused;
        self.excused_network += o.excused_network;
        self.truthful_checked += o.truthful_checked;
    }
}

/// What the model knew when a Reserve left, to judge its answer.
pub(super) struct Sent {
    /// What the account could pay (None: not judged, a fail-open seed).
    payable: Option<Decimal>,
    failures_before: u64,
    ledger_known_up: bool,
}

impl Sim {
    /// What the account can pay for new work on sidecar `receiver` now, by the model.
    async fn payable_now(&self, account: usize, receiver: usize) -> Decimal {
        let now = self.now();
        let a = &self.model.accounts[account];
        let mut payable = a.gpu_credit() - a.committed;
        let mut applied: Option<Vec<String>> = None;
        for (j, s) in self.sidecars.iter().enumerate() {
            let holds: Decimal = self
                .model
                .holds
                .values()
                .filter(|h| h.sidecar == j && h.account == account && now < h.expires_at_ms)
                .map(|h| h.held)
                .sum();
            if j == receiver || !self.net.is_partitioned(&s.id, now) {
                payable -= holds;
                continue;
            }
            // Cut off: it may spend what the ledger set aside for it.
            let applied = match &applied {
                Some(v) => v,
                None => {
                    let h = self.net.history();
                    let ids = h
                        .get(&a.account_id)
                        .map(|events| {
                            events
                                .iter()
                                .filter_map(|e| match e {
                                    LedgerEvent::Usage(id) => Some(id.clone()),
                                    LedgerEvent::Grant(_) => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    applied.insert(ids)
                }
            };
            let unapplied: Decimal = self
                .model
                .commits
                .iter()
                .filter(|(id, c)| c.sidecar == j && c.account == account && !applied.contains(id))
                .map(|(_, c)| c.cost)
                .sum();
            let grace = self.ledger.lease_config().hold_grace_ms;
            let leased = match self.ledger.snapshot(&s.id, &a.account_id).await {
                Ok(snap) if now < snap.lease.expires_at_ms + grace => {
                    snap.lease.remaining.as_decimal()
                }
                _ => Decimal::ZERO,
            };
            payable -= (holds + unapplied).max(leased) - unapplied;
        }
        payable
    }

    /// Called just before a Reserve on sidecar `i` leaves.
    pub(super) async fn before_reserve(&self, i: usize, account: usize) -> Sent {
        let judged = self.engine_cfg.fail_open_default.is_zero();
        Sent {
            payable: if judged {
                Some(self.payable_now(account, i).await)
            } else {
                None
            },
            failures_before: self.net.failures(),
            ledger_known_up: self.engine(i).ledger_reachable(),
        }
    }

    /// Judges a Reserve's answer (see the module doc); sends it again after a sync round
    /// when the rules allow that. Returns the admitted answer to record, if any, and the
    /// reservation id it was admitted under.
    pub(super) async fn judge_reserve(
        &mut self,
        i: usize,
        account: usize,
        req: &ReserveRequest,
        o: ReserveOutcome,
        sent: Sent,
    ) -> Option<(String, ReserveOutcome)> {
        let cost = crate::model::a10_cost(req.quantity);
        let link_up = sent.ledger_known_up
            && self.net.failures() == sent.failures_before
            && !self.net.is_partitioned(&self.sidecars[i].id, self.now());
        let payable = sent.payable.is_some_and(|p| p >= cost);
        if o.admitted {
            if payable && link_up {
                self.stats.liveness.payable += 1;
                self.stats.liveness.admitted_at_once += 1;
            }
            return Some((req.reservation_id.clone(), o));
        }
        if matches!(
            o.reason,
            Some(DenyReason::InsufficientFunds | DenyReason::NoEntitlement)
        ) {
            self.stats.liveness.truthful_checked += 1;
            if o.available.as_decimal() >= cost {
                self.fail(format!(
                    "reserve {} on sidecar-{i} denied {:?} while the `available` it reports, \
                     {}, covers its cost {cost}",
                    req.reservation_id, o.reason, o.available
                ));
            }
        }
        if !payable || matches!(o.reason, Some(DenyReason::Overdue)) {
            return None;
        }
        if !link_up {
            self.stats.liveness.excused_network += 1;
            return None;
        }
        self.stats.liveness.payable += 1;
        self.retry_after_sync_round(i, account, req, o).await
    }

    /// A payable request was denied over a working link: every sidecar's sync loop ticks
    /// once (what happens within one sync interval), then the request goes again and must
    /// be admitted, unless the network failed meanwhile.
    async fn retry_after_sync_round(
        &mut self,
        i: usize,
        account: usize,
        req: &ReserveRequest,
        first: ReserveOutcome,
    ) -> Option<(String, ReserveOutcome)> {
        let failures_before = self.net.failures();
        self.note(format!(
            "  liveness: payable reserve {} denied {:?} (available {}); every sidecar syncs once",
            req.reservation_id, first.reason, first.available
        ));
        for j in 0..self.sidecars.len() {
            let id = self.sidecars[j].id.clone();
            if !self.net.is_partitioned(&id, self.now()) {
                // What the sync loop's next tick does: expire due holds, then sync.
                self.engine(j).sweep(self.now());
                self.sync_loop_round(j, "liveness").await;
            }
        }
        let payable = self.payable_now(account, i).await;
        let cost = crate::model::a10_cost(req.quantity);
        let again = ReserveRequest {
            reservation_id: format!("{}-again", req.reservation_id),
            ..req.clone()
        };
        let ledger_known_up = self.engine(i).ledger_reachable();
        let r = self
            .engine(i)
            .reserve(again.clone())
            .await
            .unwrap_or_else(|e| self.fail(format!("reserve {} again: {e}", again.reservation_id)));
        if r.admitted {
            self.stats.liveness.admitted_after_sync += 1;
            return Some((again.reservation_id, r));
        }
        let net_failed = !ledger_known_up || self.net.failures() != failures_before;
        if net_failed || payable < cost {
            // The network failed the sync round or the retry, or the money went meanwhile.
            self.stats.liveness.retry_excused += 1;
            return None;
        }
        let report = self.lease_report(account).await;
        self.fail(format!(
            "G7: reserve {} of {cost} on sidecar-{i} for {} denied {:?} (available {}), and \
             again {:?} (available {}) after every sidecar synced, while the account can \
             pay {payable}\n{}",
            req.reservation_id,
            self.model.accounts[account].account_id,
            first.reason,
            first.available,
            r.reason,
            r.available,
            report.text
        ));
    }
}

/// The request a simulated worker sends.
pub(super) fn reserve_request(
    account_id: &str,
    reservation_id: &str,
    quantity: u64,
    ttl_ms: i64,
) -> ReserveRequest {
    ReserveRequest {
        account_id: account_id.to_owned(),
        reservation_id: reservation_id.to_owned(),
        resource: Resource::GpuShared,
        sku: A10.into(),
        quantity,
        ttl_ms,
    }
}
