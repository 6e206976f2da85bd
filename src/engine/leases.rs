//! The sidecar's side of leases: how much to ask for, asking, renewing while an account is
//! active, giving leases back at shutdown, and knowing whether the ledger answers. A
//! Reserve that finds its lease short waits for the ledger at most once, and not at all
//! while the ledger is known to be down.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Account, Engine, EngineError, ledger_err};
use crate::billing::Money;
use crate::billing::money::MONEY_MAX;
use crate::ledger::{AccountSnapshot, LeaseRequest, LedgerError, SyncRequest, SyncResponse};

impl Engine {
    /// The whole lease to ask for on an account, to admit `needed` more: what it holds and
    /// has pending, plus twice what it spent under the current lease (its recent rate),
    /// and at least the configured minimum. In embedded mode, the whole account.
    pub(super) fn lease_want(&self, a: Option<&Account>, needed: Money) -> Money {
        if self.cfg.lease_whole_account {
            return Money::from_decimal(MONEY_MAX);
        }
        let (held, pending, spent) = a
            .map(|a| (a.held, a.pending_cost, a.spent_since_lease))
            .unwrap_or_default();
        held + pending + needed + std::cmp::max(self.cfg.lease_want_min, spent + spent)
    }

    /// The next lease request sequence number: above the last one, and above every number
    /// an earlier run used (see `Engine::start`); the clock (ms x 1000) moves it up too.
    pub(super) fn next_lease_seq(&self) -> u64 {
        let floor = (self.now_ms().max(0) as u64).saturating_mul(1_000);
        let mut last = self.lease_seq.load(Ordering::Relaxed);
        loop {
            let next = floor.max(last + 1);
            match self
                .lease_seq
                .compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// One exchange with the ledger, bounded in time; records whether the ledger answered.
    pub(super) async fn call_ledger(
        &self,
        req: SyncRequest,
        timeout_ms: u64,
    ) -> Result<SyncResponse, EngineError> {
        let r = match tokio::time::timeout(Duration::from_millis(timeout_ms), self.ledger.sync(req))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(LedgerError::Unavailable(format!(
                "no answer within {timeout_ms} ms"
            ))),
        };
        self.note_ledger(!matches!(r, Err(LedgerError::Unavailable(_))));
        let resp = r.map_err(EngineError::Ledger)?;
        self.hold_grace_ms
            .store(resp.hold_grace_ms.max(0), Ordering::Relaxed);
        Ok(resp)
    }

    fn note_ledger(&self, up: bool) {
        if self.ledger_up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("ledger reachable again");
            } else {
                tracing::warn!(
                    backlog = self.journal.outbox_len(),
                    "ledger unreachable: admitting from leases until they are spent or expire"
                );
            }
            self.ledger_state.send_replace(up);
        }
    }

    /// Whether the last exchange with the ledger succeeded.
    pub fn ledger_reachable(&self) -> bool {
        self.ledger_up.load(Ordering::Relaxed)
    }

    /// Follows `ledger_reachable` (for health reporting).
    pub fn ledger_state(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ledger_state.subscribe()
    }

    /// Asks the ledger for a lease of `want` on the account and returns the snapshot.
    /// `held` is what the lease must keep covering: open holds plus usage the ledger has
    /// not applied yet.
    pub(super) async fn fetch_lease(
        &self,
        account_id: &str,
        want: Money,
        held: Money,
    ) -> Result<AccountSnapshot, EngineError> {
        let req = SyncRequest {
            sidecar_id: self.sidecar_id.clone(),
            usage: Vec::new(),
            leases: vec![LeaseRequest {
                account_id: account_id.to_owned(),
                want,
                held,
                release: false,
                seq: self.next_lease_seq(),
            }],
            accounts: Vec::new(),
        };
        let resp = self
            .call_ledger(req, self.cfg.lease_request_timeout_ms)
            .await
            .map_err(|e| match e {
                EngineError::Ledger(l) => ledger_err(account_id, l),
                e => e,
            })?;
        resp.snapshots
            .into_iter()
            .find(|s| s.account_id == account_id)
            .ok_or_else(|| {
                EngineError::Ledger(LedgerError::Unavailable(format!(
                    "the ledger's answer had no snapshot of {account_id}"
                )))
            })
    }

    /// Asks for more lease on a cached account now (a Reserve found it short). Fails fast
    /// with `Unavailable` while the ledger is known to be down; the sync loop probes it.
    pub(super) async fn request_lease(
        &self,
        account_id: &str,
        want: Money,
    ) -> Result<(), EngineError> {
        if !self.ledger_reachable() {
            return Err(EngineError::Ledger(LedgerError::Unavailable(
                "ledger is down".into(),
            )));
        }
        let held = self
            .accounts
            .get(account_id)
            .map(|a| a.held + a.pending_cost)
            .unwrap_or(Money::ZERO);
        let snap = self.fetch_lease(account_id, want, held).await?;
        self.apply_snapshots(vec![snap]);
        Ok(())
    }

    /// Leases to renew in the next sync: accounts used recently whose lease expires soon
    /// or (sized by spend) runs low. Bounded by `sync_leases_max`. `in_batch` is the usage
    /// cost per account the same sync carries: the ledger applies it before the leases,
    /// so it no longer needs covering.
    pub(super) fn renewals(
        &self,
        now_ms: i64,
        in_batch: &HashMap<&str, Money>,
    ) -> Vec<LeaseRequest> {
        let mut out = Vec::new();
        for a in self.accounts.iter() {
            if out.len() >= self.cfg.sync_leases_max {
                break;
            }
            if now_ms - a.last_touch_ms > self.cfg.lease_active_ms {
                // Idle: give the lease back once nothing depends on it, so its money is
                // free for other sidecars instead of waiting out the grace period.
                let has_lease = a.base.lease.remaining.is_positive();
                if has_lease && a.held.is_zero() && a.pending_cost.is_zero() {
                    out.push(LeaseRequest {
                        account_id: a.key().clone(),
                        want: Money::ZERO,
                        held: Money::ZERO,
                        release: true,
                        seq: self.next_lease_seq(),
                    });
                }
                continue;
            }
            let want = self.lease_want(Some(&a), Money::ZERO);
            let expiring = a.base.lease.expires_at_ms - now_ms < self.cfg.lease_renew_before_ms;
            let low = !self.cfg.lease_whole_account
                && a.lease_spendable(now_ms).is_none_or(|s| {
                    let free_wanted = want - a.held - a.pending_cost;
                    s + s < free_wanted
                });
            if expiring || low {
                let applied_now = in_batch.get(a.key().as_str()).copied().unwrap_or_default();
                out.push(LeaseRequest {
                    account_id: a.key().clone(),
                    want,
                    held: a.held + a.pending_cost - applied_now,
                    release: false,
                    seq: self.next_lease_seq(),
                });
            }
        }
        out
    }

    /// Active accounts whose snapshot to refresh in the next sync (besides `renewing`), so
    /// that admin changes reach this sidecar within one sync interval.
    pub(super) fn refreshes(&self, now_ms: i64, renewing: &[LeaseRequest]) -> Vec<String> {
        let room = self.cfg.sync_leases_max.saturating_sub(renewing.len());
        self.accounts
            .iter()
            .filter(|a| now_ms - a.last_touch_ms <= self.cfg.lease_active_ms)
            .filter(|a| !renewing.iter().any(|l| &l.account_id == a.key()))
            .take(room)
            .map(|a| a.key().clone())
            .collect()
    }

    /// Gives every lease back to the ledger, keeping only what open holds need (shutdown).
    pub async fn release_leases(&self) -> Result<(), EngineError> {
        let all: Vec<LeaseRequest> = self
            .accounts
            .iter()
            .map(|a| LeaseRequest {
                account_id: a.key().clone(),
                want: Money::ZERO,
                held: a.held + a.pending_cost,
                release: true,
                seq: self.next_lease_seq(),
            })
            .collect();
        for chunk in all.chunks(self.cfg.sync_leases_max.max(1)) {
            let req = SyncRequest {
                sidecar_id: self.sidecar_id.clone(),
                usage: Vec::new(),
                leases: chunk.to_vec(),
                accounts: Vec::new(),
            };
            let resp = self
                .call_ledger(req, self.cfg.lease_request_timeout_ms)
                .await?;
            self.apply_snapshots(resp.snapshots);
        }
        Ok(())
    }
}
