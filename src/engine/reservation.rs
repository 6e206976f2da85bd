//! A reservation as the engine keeps it in memory: the Reserve, Commit and Admit requests
//! and outcomes, and the hold itself (its journaled row, whether a change of it is being
//! journaled and who waits for that, whether a usage stream took it over). What a retry
//! is answered with is decided here, from the hold alone.

use std::sync::Arc;

use super::error::EngineError;
use crate::billing::status::DenyReason;
use crate::billing::{Money, Resource};
use crate::journal::{HoldState, ReservationRow};

/// Reserve: hold the cost of `quantity` of `sku` on the account until Commit, Release or
/// the TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    pub account_id: String,
    pub reservation_id: String,
    pub resource: Resource,
    pub sku: String,
    pub quantity: u64,
    /// 0 = the configured default.
    pub ttl_ms: i64,
}

/// What a Reserve was answered; `available` is what the account could still pay after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveOutcome {
    pub admitted: bool,
    pub reason: Option<DenyReason>,
    pub held: Money,
    pub available: Money,
    pub expires_at_ms: i64,
    /// Admitted from the fail-open budget while the ledger was unreachable.
    pub fail_open: bool,
}

/// What a Commit charged in money (free requests and plan GB are not money), and what the
/// account can still pay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    pub charged: Money,
    pub available: Money,
}

/// Whether work could start now, by the rules of Reserve, with nothing held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitOutcome {
    pub admitted: bool,
    pub reason: Option<DenyReason>,
    pub available: Money,
}

/// An open reservation recovered from the journal, counted against its account once the
/// account is loaded.
pub(super) struct OrphanHold {
    pub(super) expires_at_ms: i64,
    pub(super) reservation_id: String,
    pub(super) held: Money,
    pub(super) resource: Resource,
    pub(super) quantity: u64,
}

/// A reservation in memory, open or settled and remembered to answer retries.
pub(super) struct Hold {
    pub(super) row: ReservationRow,
    /// A transition of this hold is being journaled; a concurrent copy of the call waits
    /// for it (`wait_idle`) and answers with its outcome.
    pub(super) busy: bool,
    /// Calls waiting for `busy` to clear, woken by `Hold::idle`.
    pub(super) waiters: Option<Arc<tokio::sync::Notify>>,
    /// A usage stream has taken over the hold (see `work`); Commit waits for its end.
    pub(super) streaming: bool,
}

impl Hold {
    pub(super) fn new(row: ReservationRow, busy: bool) -> Hold {
        Hold {
            row,
            busy,
            waiters: None,
            streaming: false,
        }
    }

    /// The transition being journaled is over (done, or undone): wake its waiters.
    pub(super) fn idle(&mut self) {
        self.busy = false;
        if let Some(w) = self.waiters.take() {
            w.notify_waiters();
        }
    }

    /// The answer to a Reserve whose reservation id is known here: its first outcome, if
    /// it asked for the same; `InProgress` while that is being journaled.
    pub(super) fn replay(&self, req: &ReserveRequest) -> Result<ReserveOutcome, EngineError> {
        let r = &self.row;
        if r.account_id != req.account_id
            || r.resource != req.resource
            || r.sku != req.sku
            || r.quantity != req.quantity
        {
            return Err(EngineError::ReservationMismatch {
                id: req.reservation_id.clone(),
                detail: format!(
                    "it reserved {} {} of {} for account {}",
                    r.quantity, r.resource, r.sku, r.account_id
                ),
            });
        }
        if self.busy {
            return Err(EngineError::InProgress(req.reservation_id.clone()));
        }
        Ok(ReserveOutcome {
            admitted: true,
            reason: None,
            held: r.held,
            available: Money::ZERO,
            expires_at_ms: r.expires_at_ms,
            fail_open: false,
        })
    }

    /// A retry's answer if the reservation is settled already: what its Commit charged
    /// (again with the same quantity) or its Release gave back. None while it is open;
    /// an error if it cannot be settled this way (expired, settled the other way or with
    /// another quantity, being journaled).
    pub(super) fn settled_answer(
        &self,
        id: &str,
        quantity: Option<u64>,
        now_ms: i64,
    ) -> Result<Option<Money>, EngineError> {
        let settled = |state| EngineError::ReservationSettled {
            id: id.to_owned(),
            state,
        };
        match (self.settled(id, now_ms)?, quantity) {
            (None, _) => Ok(None),
            (Some(Settled::Committed(charged)), Some(q)) if self.row.charged_quantity == q => {
                Ok(Some(charged))
            }
            (Some(Settled::Committed(_)), Some(q)) => Err(EngineError::ReservationMismatch {
                id: id.to_owned(),
                detail: format!(
                    "it was committed with quantity {}, not {q}",
                    self.row.charged_quantity
                ),
            }),
            (Some(Settled::Released(held)), None) => Ok(Some(held)),
            (Some(Settled::Released(_)), Some(_)) => Err(settled("released")),
            (Some(Settled::Committed(_)), None) => Err(settled("committed")),
        }
    }

    /// The settled outcome of a reservation, or why it cannot be committed/released.
    fn settled(&self, id: &str, now_ms: i64) -> Result<Option<Settled>, EngineError> {
        if self.busy {
            return Err(EngineError::InProgress(id.to_owned()));
        }
        match self.row.state {
            HoldState::Open if self.row.expires_at_ms <= now_ms => {
                Err(EngineError::ReservationExpired {
                    id: id.to_owned(),
                    expired_at_ms: self.row.expires_at_ms,
                })
            }
            HoldState::Open => Ok(None),
            HoldState::Expired => Err(EngineError::ReservationExpired {
                id: id.to_owned(),
                expired_at_ms: self.row.expires_at_ms,
            }),
            HoldState::Committed => Ok(Some(Settled::Committed(self.row.charged))),
            HoldState::Released => Ok(Some(Settled::Released(self.row.held))),
        }
    }
}

/// The row of a reservation a Reserve opens, holding `held` until `expires_at_ms`.
pub(super) fn open_row(req: &ReserveRequest, held: Money, expires_at_ms: i64) -> ReservationRow {
    ReservationRow {
        reservation_id: req.reservation_id.clone(),
        account_id: req.account_id.clone(),
        resource: req.resource,
        sku: req.sku.clone(),
        quantity: req.quantity,
        held,
        expires_at_ms,
        state: HoldState::Open,
        charged: Money::ZERO,
        charged_quantity: 0,
        settled_at_ms: 0,
        streamed_quantity: 0,
        streamed_cost: Money::ZERO,
    }
}

/// A Reserve not admitted, and what this sidecar could have held as it decided.
pub(super) fn denied(reason: DenyReason, available: Money) -> ReserveOutcome {
    ReserveOutcome {
        admitted: false,
        reason: Some(reason),
        held: Money::ZERO,
        available,
        expires_at_ms: 0,
        fail_open: false,
    }
}

/// How a settled reservation ended: what it charged, or what it had held.
enum Settled {
    Committed(Money),
    Released(Money),
}
