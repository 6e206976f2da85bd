//! Starting the engine from what the journal recovered: holds, sessions, jobs' last
//! seqs, alert memos and storage meters are restored; usage the journal still holds is
//! pushed to the ledger if it answers; the leases a previous run of this sidecar left are
//! given back, keeping what the journal still owes; and the accounts with open holds are
//! loaded. Whatever cannot be loaded yet (the ledger is down) waits, counted against its
//! account when it loads.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::leases::LEASE_SEQ_BLOCK;
use super::reservation::{Hold, OrphanHold};
use super::sync::DEFAULT_SYNC_BATCH_MAX;
use super::{Engine, EngineConfig, EngineError};
use crate::billing::Catalog;
use crate::clock::SharedClock;
use crate::journal::{Entry, HoldState, Journal, JournalError, Recovered, ReservationRow};
use crate::ledger::api::LedgerApi;

impl Engine {
    /// Builds the engine from what the journal recovered: holds are restored, the outbox is
    /// pushed to the ledger if it can be reached, accounts with open holds are loaded.
    pub async fn start(
        cfg: EngineConfig,
        catalog: Arc<Catalog>,
        clock: SharedClock,
        journal: Arc<Journal>,
        recovered: Recovered,
        ledger: Arc<dyn LedgerApi>,
        sidecar_id: String,
    ) -> Result<Arc<Engine>, EngineError> {
        let engine = Engine::new(cfg, catalog, clock, journal, ledger, sidecar_id);
        engine.next_seq.store(recovered.next_seq, Ordering::Relaxed);
        for (account_id, key) in recovered.alerts {
            engine
                .recovered_alerts
                .entry(account_id)
                .or_default()
                .push(key);
        }
        engine.reserve_lease_seqs(recovered.lease_seq_floor).await?;
        engine.recover_sessions(recovered.sessions);
        engine.works.recover(recovered.works);
        if let Err(e) = engine.flush().await {
            tracing::warn!(error = %e, "could not push recovered usage to the ledger yet");
        }
        let now_ms = engine.clock.now_ms();
        let open = engine.recover_holds(recovered.reservations);
        let owed = engine.accounts_owed();
        // Everything this sidecar owes is known now: give back what a previous run leased
        // and did not use, before asking for anything new.
        engine.reset_pending.store(true, Ordering::Relaxed);
        if let Err(e) = engine.sync_once(DEFAULT_SYNC_BATCH_MAX).await {
            tracing::warn!(error = %e, "leases of the previous run not given back yet");
        }
        engine.load_owed(owed).await;
        engine.recover_storage(recovered.storage).await;
        engine.sweep(now_ms);
        tracing::info!(
            holds = engine.holds_len.load(Ordering::Relaxed),
            open,
            outbox = engine.journal.outbox_len(),
            "engine recovered"
        );
        Ok(engine)
    }

    /// Lease requests of this run get sequence numbers above every earlier run's, even if
    /// the clock went back (the ledger ignores a request older than one it applied): the
    /// block this run may use is journaled before any is used.
    async fn reserve_lease_seqs(&self, floor: u64) -> Result<(), EngineError> {
        let now_ms = u64::try_from(self.clock.now_ms()).unwrap_or(0);
        let base = floor.max(now_ms.saturating_mul(1_000));
        self.journal
            .submit(Entry::LeaseSeqFloor(base.saturating_add(LEASE_SEQ_BLOCK)))?
            .await
            .unwrap_or(Err(JournalError::Closed))?;
        self.lease_seq.store(base, Ordering::Relaxed);
        Ok(())
    }

    /// Restores the reservations the journal holds; open ones are counted against their
    /// account when it loads (now, or once the ledger is back). Returns how many are open.
    fn recover_holds(&self, rows: Vec<ReservationRow>) -> usize {
        let mut open = 0usize;
        for row in rows {
            if row.state == HoldState::Open {
                self.orphan_holds
                    .entry(row.account_id.clone())
                    .or_default()
                    .push(OrphanHold {
                        expires_at_ms: row.expires_at_ms,
                        reservation_id: row.reservation_id.clone(),
                        held: row.held,
                        resource: row.resource,
                        quantity: row.quantity,
                    });
                open += 1;
            }
            self.holds
                .insert(row.reservation_id.clone(), Hold::new(row, false));
            self.holds_len.fetch_add(1, Ordering::Relaxed);
        }
        open
    }

    /// Accounts with open holds or running sessions' hours recovered from the journal.
    fn accounts_owed(&self) -> Vec<String> {
        let mut accounts: Vec<String> = self.orphan_holds.iter().map(|e| e.key().clone()).collect();
        accounts.extend(
            self.orphan_session_holds
                .iter()
                .map(|e| e.key().clone())
                .filter(|k| !self.orphan_holds.contains_key(k)),
        );
        accounts
    }

    /// Loads the accounts the journal owes on; those the ledger cannot load yet wait.
    async fn load_owed(&self, accounts: Vec<String>) {
        for account_id in accounts {
            match self.ensure_account(&account_id).await {
                Ok(()) => {}
                Err(EngineError::UnknownAccount(_)) => {
                    tracing::error!(
                        account_id,
                        "journal holds reservations of an account the ledger does not know"
                    );
                }
                Err(e) => {
                    tracing::warn!(account_id, error = %e, "account not loaded yet; its holds wait")
                }
            }
        }
    }
}
