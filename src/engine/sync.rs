//! The sync loop: pushes journaled usage to the ledger in batches and takes fresh
//! snapshots and renewed leases back, at its own pace, off the hot path. Each sync also
//! carries the lease requests the policy in `leases` finds due (renewals, give-backs,
//! releases of idle accounts; after a restart, the reset of what a previous run leased)
//! and the active accounts whose snapshots to refresh. The ledger applies each record once
//! however often it is sent, so a batch whose answer was lost is simply sent again; the
//! journal forgets a record only after the ledger acknowledged it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::account::Account;
use super::leases::DEFAULT_LEDGER_POLL_MS;
use super::{Engine, EngineError};
use crate::billing::Money;
use crate::ledger::api::{LeaseRequest, SyncRequest};

/// How often the loop syncs when no new usage wakes it earlier.
pub const DEFAULT_SYNC_INTERVAL_MS: u64 = 1_000;
/// Most usage records in one sync request.
pub const DEFAULT_SYNC_BATCH_MAX: usize = 5_000;
/// Longest the loop waits for the ledger to answer one sync.
pub const DEFAULT_SYNC_TIMEOUT_MS: u64 = 10_000;
/// How often the tick looks for time-driven alerts (expiry warnings and expiries) on the
/// accounts with one due (`check_alerts`): a minute is precise enough for a lead time of
/// days. Changes of an account are checked at once.
pub const DEFAULT_ALERT_SCAN_INTERVAL_MS: i64 = 60_000;
/// Most batches one flush sends before giving up (bounds a flush under steady load).
pub const FLUSH_BATCHES_MAX: usize = 10_000;

impl Engine {
    /// Pushes one batch of usage with the leases due for renewal and the active accounts
    /// to refresh (or, while the ledger is down, an empty probe). Returns how many usage
    /// records the ledger acknowledged.
    pub async fn sync_once(&self, batch_max: usize) -> Result<usize, EngineError> {
        let _one_at_a_time = self.sync_lock.lock().await;
        self.take_sync_wanted();
        let batch = self.journal.outbox_batch(batch_max)?;
        let mut in_batch: HashMap<&str, Money> = HashMap::new();
        // An account's records come in runs (a stream's rounds): one look per run.
        for run in batch.chunk_by(|a, b| a.account_id == b.account_id) {
            let Some(account_id) = run.first().map(|u| u.account_id.as_str()) else {
                continue;
            };
            // What the records spend of the lease: their money after free requests and
            // volume plans. Only records still pending count: one the ledger already
            // applied (sent again after a lost answer) is no longer in what this sidecar
            // reports as committed, so taking it off again would under-report (and a
            // give-back would then hand its money to another sidecar).
            if let Some(money) = self.pending_money(account_id, run.iter().map(|u| u.seq)) {
                *in_batch.entry(account_id).or_default() += money;
            }
        }
        let now_ms = self.now_ms();
        let reset_seq = if self.reset_pending.load(Ordering::Relaxed) {
            self.next_lease_seq()
        } else {
            0
        };
        let mut leases = self.renewals(now_ms, &in_batch)?;
        if reset_seq != 0 {
            leases = self.reset_keeps(reset_seq, &in_batch)?;
        }
        let accounts = self.refreshes(now_ms, &leases);
        if batch.is_empty()
            && leases.is_empty()
            && accounts.is_empty()
            && reset_seq == 0
            && self.ledger_reachable()
            && !self.poll_due(now_ms)
        {
            return Ok(0);
        }
        let seqs: Vec<u64> = batch.iter().map(|u| u.seq).collect();
        let req = SyncRequest {
            sidecar_id: self.sidecar_id.clone(),
            usage: batch,
            leases,
            accounts,
            reset_seq,
        };
        for l in &req.leases {
            tracing::trace!(account_id = %l.account_id, seq = l.seq, held = %l.held,
                give_back = l.give_back, release = l.release, "lease in sync");
        }
        let resp = self.call_ledger(req, DEFAULT_SYNC_TIMEOUT_MS).await?;
        if reset_seq != 0 {
            self.reset_pending.store(false, Ordering::Relaxed);
        }
        let acked = self.journal.ack(&seqs);
        self.apply_snapshots(resp.snapshots);
        acked?;
        Ok(seqs.len())
    }

    /// Pushes one account's usage the ledger has not acknowledged yet, oldest first, e.g.
    /// before its statement: everything acknowledged on the account before the call, in
    /// batches, and nothing of the other accounts' backlog, which the sync loop pushes at
    /// its own pace. It does not wait for the sync loop either: the ledger applies each
    /// record once and per account in seq order, and both push each account's records
    /// from its oldest one, so whichever arrives first applies them and the other finds
    /// them applied.
    pub async fn flush_account(&self, account_id: &str) -> Result<(), EngineError> {
        let mut after_seq = 0;
        for _ in 0..FLUSH_BATCHES_MAX {
            let usage = self
                .journal
                .outbox_of(account_id, after_seq, DEFAULT_SYNC_BATCH_MAX)?;
            let Some(last) = usage.last() else {
                return Ok(());
            };
            after_seq = last.seq;
            let full = usage.len() == DEFAULT_SYNC_BATCH_MAX;
            let seqs: Vec<u64> = usage.iter().map(|u| u.seq).collect();
            let req = SyncRequest {
                sidecar_id: self.sidecar_id.clone(),
                usage,
                leases: Vec::new(),
                accounts: Vec::new(),
                reset_seq: 0,
            };
            let resp = self.call_ledger(req, DEFAULT_SYNC_TIMEOUT_MS).await?;
            // Trims them from the journal if they lead its outbox; else the sync loop
            // sends them again and the ledger answers that it has them.
            let acked = self.journal.ack(&seqs);
            self.apply_snapshots(resp.snapshots);
            acked?;
            if !full {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Pushes everything durable so far (bounded), e.g. at shutdown.
    pub async fn flush(&self) -> Result<(), EngineError> {
        for _ in 0..FLUSH_BATCHES_MAX {
            if self.sync_once(super::sync::DEFAULT_SYNC_BATCH_MAX).await? == 0
                && self.journal.outbox_len() == 0
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Lease requests for the next sync: renewals of accounts used recently whose lease
    /// expires soon or (sized by spend) runs low; give-backs of unused lease near the edge
    /// or where the ledger asked; releases of idle accounts. Bounded by `sync_leases_max`.
    /// `in_batch` is the usage cost per account the same sync carries: the ledger applies
    /// it before the leases, so it no longer needs covering.
    fn renewals(
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
            if out.len() >= self.cfg.leasing.sync_leases_max {
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
            if out.len() >= self.cfg.leasing.sync_leases_max {
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
    fn reset_keeps(
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

    /// The lease request one cached account needs in the next sync, if any (see
    /// `LeasingConfig::renewal`). `asked`: the ledger listed it in `recalls`.
    fn renewal(
        &self,
        account_id: &str,
        a: &Account,
        now_ms: i64,
        applied_now: Money,
        asked: bool,
    ) -> Option<LeaseRequest> {
        let committed = (a.committed() - applied_now).non_negative();
        let r = self.cfg.leasing.renewal(a, now_ms, committed, asked)?;
        Some(LeaseRequest {
            account_id: account_id.to_owned(),
            want: r.want,
            need: committed,
            held: committed,
            release: r.release,
            give_back: r.give_back,
            seq: self.next_lease_seq(),
        })
    }

    /// Active accounts whose snapshot to refresh in the next sync (besides `renewing`), so
    /// that admin changes reach this sidecar within one sync interval.
    fn refreshes(&self, now_ms: i64, renewing: &[LeaseRequest]) -> Vec<String> {
        let room = self
            .cfg
            .leasing
            .sync_leases_max
            .saturating_sub(renewing.len());
        self.accounts
            .iter()
            .filter(|a| self.cfg.leasing.active(a, now_ms))
            .filter(|a| !renewing.iter().any(|l| &l.account_id == a.key()))
            .take(room)
            .map(|a| a.key().clone())
            .collect()
    }

    /// Whether a sync with nothing else to carry should still ask the ledger: to hear of
    /// recalls and whether it answers, every `DEFAULT_LEDGER_POLL_MS`.
    fn poll_due(&self, now_ms: i64) -> bool {
        now_ms - self.ledger_heard_ms.load(Ordering::Relaxed) >= DEFAULT_LEDGER_POLL_MS
    }
}

/// Runs until `shutdown` turns true: syncs when usage is written or every `interval_ms`,
/// and on each tick sweeps expired holds, steps Exclusive sessions and looks for
/// time-driven alerts.
pub async fn run(
    engine: Arc<Engine>,
    interval_ms: u64,
    batch_max: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut scanned_at_ms = i64::MIN;
    loop {
        let mut ticked = false;
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = engine.journal.usage_written(), if !failing => {}
            _ = engine.sync_wanted(), if !failing => {}
            _ = tick.tick() => {
                engine.sweep(engine.now_ms());
                failing = false;
                ticked = true;
            }
        }
        if *shutdown.borrow() {
            break;
        }
        if ticked {
            // Time-driven work: session hours and idle stops, expiry alerts.
            let now_ms = engine.now_ms();
            engine.tick_sessions(now_ms).await;
            if now_ms.saturating_sub(scanned_at_ms) >= DEFAULT_ALERT_SCAN_INTERVAL_MS {
                // Storage hours close on reports and looks too; the scan of every account
                // for hours nobody looked at runs with the alert scan, once a minute.
                engine.tick_storage(now_ms).await;
                engine.check_alerts(now_ms);
                scanned_at_ms = now_ms;
            }
        }
        // Until a batch comes back short and nothing asked for another round (lease to give
        // back that the last answer revealed); bounded all the same.
        for _ in 0..FLUSH_BATCHES_MAX {
            match engine.sync_once(batch_max).await {
                Ok(n) if n < batch_max && !engine.take_sync_wanted() => break,
                Ok(_) => continue,
                Err(e) => {
                    // Back off to the tick; the outbox keeps everything meanwhile.
                    tracing::warn!(error = %e, backlog = engine.journal.outbox_len(), "sync failed");
                    failing = true;
                    break;
                }
            }
        }
    }
}
