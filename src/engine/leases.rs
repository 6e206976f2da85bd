//! The sidecar's side of leases: how much to ask for, asking, renewing while an account is
//! active, giving unused lease back when the ledger asks (near the edge, or when another
//! sidecar needs it), giving leases back at shutdown, and knowing whether the ledger
//! answers. A request that finds its lease short waits for the ledger at most once (plus,
//! when the ledger is recalling other sidecars' unused leases for it, a bounded wait for
//! them), and not at all while the ledger is known to be down.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::error::ledger_err;
use super::{Account, Engine, EngineError};
use crate::billing::Money;
use crate::billing::money::MONEY_MAX;
use crate::ledger::api::{AccountSnapshot, LeaseRequest, LedgerError, SyncRequest, SyncResponse};

/// Most accounts whose lease the ledger recalled while they were not cached, remembered
/// until the next sync gives them back (more arrive again with the following answers).
pub const DEFAULT_RECALLED_UNCACHED_MAX: usize = 10_000;
/// A sidecar with nothing to send still asks the ledger this often, to hear of recalls
/// (of leases a previous run left, say) and whether the ledger answers.
pub const DEFAULT_LEDGER_POLL_MS: i64 = 10_000;

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
    /// The whole lease to ask for on an account, to admit `needed` more: what it holds and
    /// has pending or in flight, plus twice what it spent under the current lease (its
    /// recent rate), and at least the configured minimum. This is the sidecar's demand,
    /// also near the edge: the ledger decides whether headroom is given. In embedded mode,
    /// the whole account.
    pub(super) fn lease_want(&self, a: Option<&Account>, needed: Money) -> Money {
        if self.cfg.lease_whole_account {
            return Money::from_decimal(MONEY_MAX);
        }
        let Some(a) = a else {
            return needed + self.cfg.lease_want_min;
        };
        let need = a.committed() + a.lease_inflight + needed;
        let spent = a.spent_since_lease;
        need + std::cmp::max(self.cfg.lease_want_min, spent + spent)
    }

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
        if recalling.is_zero() || self.cfg.lease_recall_wait_ms == 0 {
            return Ok(());
        }
        tracing::debug!(account_id, %cost, %recalling, "waiting for recalled lease");
        let poll = Duration::from_millis(self.cfg.lease_recall_poll_ms.max(1));
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.lease_recall_wait_ms);
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
                self.lease_want(Some(&a), Money::ZERO),
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

    /// Lease requests for the next sync: renewals of accounts used recently whose lease
    /// expires soon or (sized by spend) runs low; give-backs of unused lease near the edge
    /// or where the ledger asked; releases of idle accounts. Bounded by `sync_leases_max`.
    /// `in_batch` is the usage cost per account the same sync carries: the ledger applies
    /// it before the leases, so it no longer needs covering.
    pub(super) fn renewals(
        &self,
        now_ms: i64,
        in_batch: &HashMap<&str, Money>,
    ) -> Result<Vec<LeaseRequest>, EngineError> {
        let mut out = Vec::new();
        let mut recalled: std::collections::BTreeSet<String> =
            self.recalled.iter().map(|e| e.key().clone()).collect();
        for id in &recalled {
            self.recalled.remove(id);
        }
        for mut a in self.accounts.iter_mut() {
            if out.len() >= self.cfg.sync_leases_max {
                break;
            }
            let asked = recalled.remove(a.key().as_str());
            let applied_now = in_batch.get(a.key().as_str()).copied().unwrap_or_default();
            if let Some(r) = self.renewal(a.key(), &a, now_ms, applied_now, asked) {
                if r.give_back {
                    a.lease_floor_seq = r.seq;
                }
                out.push(r);
            }
        }
        // Recalled leases of accounts this run has not cached (a previous run's): give
        // back all but what the journal still owes the ledger on them.
        for account_id in recalled {
            if out.len() >= self.cfg.sync_leases_max {
                break;
            }
            if self.accounts.contains_key(&account_id) {
                continue;
            }
            let owed: Money = self
                .journal
                .outbox_of(&account_id, 0, self.cfg.outbox_max)?
                .iter()
                .map(|u| u.cost)
                .sum::<Money>()
                + self
                    .orphan_holds
                    .get(&account_id)
                    .map(|h| h.iter().map(|o| o.held).sum())
                    .unwrap_or_default()
                - in_batch
                    .get(account_id.as_str())
                    .copied()
                    .unwrap_or_default();
            let owed = owed.non_negative();
            let seq = self.next_lease_seq();
            // An account loaded while this is on its way must not spend a lease set by
            // an older request (see `ensure_account_for`).
            self.uncached_floor_seq.fetch_max(seq, Ordering::Relaxed);
            out.push(LeaseRequest {
                account_id,
                want: owed,
                need: owed,
                held: owed,
                release: false,
                give_back: true,
                seq,
            });
        }
        Ok(out)
    }

    /// What a restarted sidecar keeps when it gives back the leases a previous run left
    /// (`SyncRequest::reset_seq`): a give-back of every account it owes anything on, cached
    /// or not (open holds, running sessions' hours, usage the ledger has not applied), so
    /// that each lease shrinks to what is owed and every other lease is released.
    pub(super) fn reset_keeps(
        &self,
        seq: u64,
        in_batch: &HashMap<&str, Money>,
    ) -> Result<Vec<LeaseRequest>, EngineError> {
        let mut owed: std::collections::BTreeMap<String, Money> = Default::default();
        for mut a in self.accounts.iter_mut() {
            let applied_now = in_batch.get(a.key().as_str()).copied().unwrap_or_default();
            a.lease_floor_seq = seq;
            owed.insert(
                a.key().clone(),
                (a.committed() - applied_now).non_negative(),
            );
        }
        let uncached = |id: &str| !self.accounts.contains_key(id);
        for e in self.orphan_holds.iter().filter(|e| uncached(e.key())) {
            *owed.entry(e.key().clone()).or_default() += e.value().iter().map(|o| o.held).sum();
        }
        for e in self
            .orphan_session_holds
            .iter()
            .filter(|e| uncached(e.key()))
        {
            *owed.entry(e.key().clone()).or_default() += *e.value();
        }
        for u in self.journal.outbox_batch(self.cfg.outbox_max)? {
            if uncached(&u.account_id) {
                *owed.entry(u.account_id.clone()).or_default() += u.cost;
            }
        }
        self.uncached_floor_seq.fetch_max(seq, Ordering::Relaxed);
        Ok(owed
            .into_iter()
            .map(|(account_id, held)| LeaseRequest {
                account_id,
                want: held,
                need: held,
                held,
                release: false,
                give_back: true,
                seq,
            })
            .collect())
    }

    /// The lease request one cached account needs in the next sync, if any. `asked`: the
    /// ledger listed it in `recalls`.
    fn renewal(
        &self,
        account_id: &str,
        a: &Account,
        now_ms: i64,
        applied_now: Money,
        asked: bool,
    ) -> Option<LeaseRequest> {
        let committed = (a.committed() - applied_now).non_negative();
        let lease = &a.base.lease;
        let demand = self.lease_want(Some(a), Money::ZERO);
        let request = |want: Money, give_back: bool, release: bool| LeaseRequest {
            account_id: account_id.to_owned(),
            want: want.max(committed),
            need: committed,
            held: committed,
            release,
            give_back,
            seq: self.next_lease_seq(),
        };
        if !a.lease_inflight.is_zero() {
            // Requests are waiting on the ledger for this account: their answers carry the
            // lease; a give-back now could race them.
            return None;
        }
        if now_ms - a.last_touch_ms > self.cfg.lease_active_ms {
            // Idle: give the lease back once nothing depends on it, so its money is free
            // for other sidecars instead of waiting out the grace period.
            let has_lease = lease.remaining.is_positive();
            return (has_lease && a.committed().is_zero())
                .then(|| request(Money::ZERO, false, true));
        }
        let expiring = lease.expires_at_ms - now_ms < self.cfg.lease_renew_before_ms;
        if a.lease_recalled() || asked {
            // Near the edge: keep no headroom. Give back what is not committed (and
            // answer a give-back request even with nothing to give, which clears it).
            let unused = lease.remaining - a.committed() > Money::ZERO;
            let unconfirmed = lease.seq < a.lease_floor_seq;
            if lease.give_back || asked || unused || unconfirmed {
                return Some(request(demand, true, false));
            }
            return (expiring && !committed.is_zero()).then(|| request(demand, false, false));
        }
        let want = demand;
        let low = !self.cfg.lease_whole_account
            && a.lease_spendable(now_ms).is_none_or(|s| {
                let free_wanted = want - a.committed();
                s + s < free_wanted
            });
        (expiring || low).then(|| request(want, false, false))
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

    /// Whether a sync with nothing else to carry should still ask the ledger: to hear of
    /// recalls and whether it answers, every `DEFAULT_LEDGER_POLL_MS`.
    pub(super) fn poll_due(&self, now_ms: i64) -> bool {
        now_ms - self.ledger_heard_ms.load(Ordering::Relaxed) >= DEFAULT_LEDGER_POLL_MS
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
        for chunk in all.chunks(self.cfg.sync_leases_max.max(1)) {
            let req = SyncRequest {
                sidecar_id: self.sidecar_id.clone(),
                usage: Vec::new(),
                leases: chunk.to_vec(),
                accounts: Vec::new(),
                reset_seq: 0,
            };
            let resp = self
                .call_ledger(req, self.cfg.lease_request_timeout_ms)
                .await?;
            self.apply_snapshots(resp.snapshots);
        }
        Ok(())
    }
}
