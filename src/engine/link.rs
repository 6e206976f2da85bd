//! The engine's line to the ledger: every exchange goes through `call_ledger`, bounded in
//! time, which also tracks whether the ledger answers and takes in the accounts it
//! recalls leases on. On it: a lease or a snapshot of one account now (a request found its
//! lease short, or a denial by the cached view is worth confirming), and the give-back of
//! every lease at shutdown. A request that finds its lease short waits for the ledger at
//! most once (plus, when the ledger is recalling other sidecars' unused leases for it, a
//! bounded wait for them), and not at all while the ledger is known to be down.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::error::ledger_err;
use super::leases::DEFAULT_RECALLED_UNCACHED_MAX;
use super::{Engine, EngineError};
use crate::billing::Money;
use crate::ledger::api::{AccountSnapshot, LeaseRequest, LedgerError, SyncRequest, SyncResponse};

/// Takes a request's cost off the account's lease requests in flight when it is answered.
struct Inflight<'a> {
    engine: &'a Engine,
    account_id: &'a str,
    cost: Money,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        if let Some(mut a) = self.engine.accounts.get_mut(self.account_id) {
            a.lease_inflight = (a.lease_inflight - self.cost).non_negative();
        }
    }
}

impl Engine {
    /// Costs of the account's lease requests in flight.
    pub(super) fn inflight(&self, account_id: &str) -> Money {
        self.accounts
            .get(account_id)
            .map(|a| a.lease_inflight)
            .unwrap_or_default()
    }

    /// The next lease request sequence number: above the last one, and above every number
    /// an earlier run used (see `Engine::start`); the clock (ms x 1000) moves it up too.
    pub(super) fn next_lease_seq(&self) -> u64 {
        let now_ms = u64::try_from(self.now_ms()).unwrap_or(0);
        let floor = now_ms.saturating_mul(1_000);
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
        self.ledger_heard_ms.store(self.now_ms(), Ordering::Relaxed);
        self.note_recalls(&resp.recalls);
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

    /// Asks the ledger for a lease of `want` on the account (at least `need`) and returns
    /// the snapshot. `held` is what the lease must keep covering: open holds plus usage the
    /// ledger has not applied yet.
    pub(super) async fn fetch_lease(
        &self,
        account_id: &str,
        want: Money,
        need: Money,
        held: Money,
    ) -> Result<AccountSnapshot, EngineError> {
        let req = SyncRequest {
            sidecar_id: self.sidecar_id.clone(),
            usage: Vec::new(),
            leases: vec![LeaseRequest {
                account_id: account_id.to_owned(),
                want: want.max(need),
                need,
                held,
                release: false,
                give_back: false,
                seq: self.next_lease_seq(),
            }],
            accounts: Vec::new(),
            reset_seq: 0,
        };
        self.one_snapshot(account_id, req).await
    }

    /// The account's snapshot from the ledger now, without changing its lease (Admit, and
    /// a request waiting for recalled lease).
    pub(super) async fn refresh_snapshot(&self, account_id: &str) -> Result<(), EngineError> {
        if !self.ledger_reachable() {
            return Err(EngineError::Ledger(LedgerError::Unavailable(
                "ledger is down".into(),
            )));
        }
        let req = SyncRequest {
            sidecar_id: self.sidecar_id.clone(),
            usage: Vec::new(),
            leases: Vec::new(),
            accounts: vec![account_id.to_owned()],
            reset_seq: 0,
        };
        let snap = self.one_snapshot(account_id, req).await?;
        self.apply_snapshots(vec![snap]);
        Ok(())
    }

    async fn one_snapshot(
        &self,
        account_id: &str,
        req: SyncRequest,
    ) -> Result<AccountSnapshot, EngineError> {
        let resp = self
            .call_ledger(req, self.cfg.leasing.lease_request_timeout_ms)
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

    /// Asks for enough lease on a cached account to hold `cost` more, now (a request found
    /// its lease short). Fails fast with `Unavailable` while the ledger is known to be
    /// down; the sync loop probes it. When the ledger cannot cover it at once but is
    /// recalling other sidecars' unused leases, waits (at most `lease_recall_wait_ms`)
    /// for the money to come back and asks again.
    pub(super) async fn ask_lease(&self, account_id: &str, cost: Money) -> Result<(), EngineError> {
        if !self.ledger_reachable() {
            return Err(EngineError::Ledger(LedgerError::Unavailable(
                "ledger is down".into(),
            )));
        }
        let _inflight = self.begin_inflight(account_id, cost);
        let recalling = self.ask_once(account_id).await?;
        if recalling.is_zero() || self.cfg.leasing.lease_recall_wait_ms == 0 {
            return Ok(());
        }
        tracing::debug!(account_id, %cost, %recalling, "waiting for recalled lease");
        let poll = Duration::from_millis(self.cfg.leasing.lease_recall_poll_ms.max(1));
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.cfg.leasing.lease_recall_wait_ms);
        while tokio::time::Instant::now() + poll <= deadline {
            tokio::time::sleep(poll).await;
            // The lease asked for above stands; failing to look again only ends the wait.
            if let Err(e) = self.refresh_snapshot(account_id).await {
                tracing::debug!(account_id, error = %e, "stopped waiting for recalled lease");
                return Ok(());
            }
            let now_ms = self.now_ms();
            let fits = self.accounts.get(account_id).is_some_and(|a| {
                let spendable = a.lease_spendable(now_ms).unwrap_or_default();
                spendable.non_negative() + a.base.unleased >= cost
            });
            if fits {
                if let Err(e) = self.ask_once(account_id).await {
                    tracing::debug!(account_id, error = %e, "recalled lease not taken");
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// One lease request for what the account's work in flight needs; returns what the
    /// ledger is recalling from other sidecars for it.
    async fn ask_once(&self, account_id: &str) -> Result<Money, EngineError> {
        let (want, need, held) = match self.accounts.get(account_id) {
            Some(a) => (
                self.cfg.leasing.want(Some(&a), Money::ZERO),
                a.committed() + a.lease_inflight,
                a.committed(),
            ),
            None => return Err(EngineError::UnknownAccount(account_id.to_owned())),
        };
        let snap = self.fetch_lease(account_id, want, need, held).await?;
        let recalling = snap.recalling;
        self.apply_snapshots(vec![snap]);
        Ok(recalling)
    }

    fn begin_inflight<'a>(&'a self, account_id: &'a str, cost: Money) -> Inflight<'a> {
        if let Some(mut a) = self.accounts.get_mut(account_id) {
            a.lease_inflight += cost;
        }
        Inflight {
            engine: self,
            account_id,
            cost,
        }
    }

    /// Remembers the accounts whose unused lease the ledger asks back, and wakes the sync
    /// loop to give it back.
    fn note_recalls(&self, recalls: &[String]) {
        if recalls.is_empty() {
            return;
        }
        for id in recalls {
            if self.recalled.len() >= DEFAULT_RECALLED_UNCACHED_MAX {
                break;
            }
            self.recalled.insert(id.clone(), ());
        }
        self.wake_sync();
    }

    /// Asks the sync loop to run now (lease to give back).
    pub(super) fn wake_sync(&self) {
        self.sync_wanted.store(true, Ordering::Relaxed);
        self.sync_wake.notify_one();
    }

    /// Whether something asked for a sync since the last one (the sync loop runs again at
    /// once), clearing the request.
    pub fn take_sync_wanted(&self) -> bool {
        self.sync_wanted.swap(false, Ordering::Relaxed)
    }

    /// Resolves when something asks for a sync before the next tick.
    pub async fn sync_wanted(&self) {
        self.sync_wake.notified().await;
    }

    /// Gives every lease back to the ledger, keeping only what open holds need (shutdown).
    pub async fn release_leases(&self) -> Result<(), EngineError> {
        let all: Vec<LeaseRequest> = self
            .accounts
            .iter()
            .map(|a| LeaseRequest {
                account_id: a.key().clone(),
                want: Money::ZERO,
                need: a.committed(),
                held: a.committed(),
                release: true,
                give_back: false,
                seq: self.next_lease_seq(),
            })
            .collect();
        for chunk in all.chunks(self.cfg.leasing.sync_leases_max.max(1)) {
            let req = SyncRequest {
                sidecar_id: self.sidecar_id.clone(),
                usage: Vec::new(),
                leases: chunk.to_vec(),
                accounts: Vec::new(),
                reset_seq: 0,
            };
            let resp = self
                .call_ledger(req, self.cfg.leasing.lease_request_timeout_ms)
                .await?;
            self.apply_snapshots(resp.snapshots);
        }
        Ok(())
    }
}
