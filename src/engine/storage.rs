//! Storage metering on the sidecar (R1, R10): ReportStorage levels feed each account's
//! `billing::storage::StorageMeter`, and every hour that closes is charged as usage with
//! the id `storage/ACCOUNT/HOUR_START_MS`. The meter lives with the account (bounded by
//! `accounts_max`); it is journaled with the charges of the hours it closed in one
//! transaction, so after a restart it resumes where the journal left it, and the ledger
//! applies each hour's id once, so a retry or a replay cannot charge an hour twice. Hours
//! close on reports and on the sync tick; the hours a late or restarted sidecar closes are
//! those a punctual one would have (`StorageMeter::advance` does not depend on when it is
//! called). Storage is charged after the fact, like an Exclusive hour: it is not admitted,
//! and an account whose plans and balance cannot pay it goes OVERDUE.

use super::account::Account;
use super::{Engine, EngineError};
use crate::billing::accrual::{self, Accrual, Projection};
use crate::billing::session::HOUR_MS;
use crate::billing::storage::{self, StorageHour, StorageMeter};
use crate::billing::{Money, Price, Resource};
use crate::journal::{Entry, JournalError};
use crate::ledger::api::UsageRecord;

/// How far ahead of the sidecar's clock a level's at_ms may be (clock skew between the
/// storage service and the sidecar); further is refused.
pub const DEFAULT_STORAGE_AHEAD_MS: i64 = 5 * 60 * 1000;

/// What accrues on an account while nothing runs, as GetBalance and `ctl accruals` show it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccrualsView {
    pub bytes_stored: u64,
    pub storage_reported_at_ms: i64,
    pub storage_covered_bytes: u64,
    pub storage_hourly: Money,
    pub sessions_hourly: Money,
    pub sessions_running: u32,
    pub sessions_without_auto_shutdown: u32,
    pub projection: Projection,
}

impl Engine {
    /// The catalog's STORAGE price: the first in sku order (ReportStorage carries no sku).
    pub fn storage_price(&self) -> Result<&Price, EngineError> {
        self.catalog
            .prices
            .values()
            .find(|p| p.resource == Resource::Storage)
            .ok_or(EngineError::NoStoragePrice)
    }

    /// Records the account's stored bytes from `at_ms` (0 = now), charging every hour it
    /// closes. Answers once the level and those charges are durable.
    pub async fn report_storage(
        &self,
        account_id: &str,
        bytes_stored: u64,
        at_ms: i64,
    ) -> Result<(), EngineError> {
        let now_ms = self.now_ms();
        let at_ms = if at_ms == 0 { now_ms } else { at_ms };
        if at_ms > now_ms.saturating_add(DEFAULT_STORAGE_AHEAD_MS) {
            return Err(EngineError::StorageInFuture {
                at_ms,
                now_ms,
                ahead_max_ms: DEFAULT_STORAGE_AHEAD_MS,
            });
        }
        if bytes_stored > storage::BYTES_STORED_MAX {
            return Err(storage::StorageError::TooLarge(bytes_stored).into());
        }
        let price = self.storage_price()?.unit_price;
        self.ensure_account(account_id).await?;
        self.step_storage(account_id, price, |meter, grants| match meter {
            Some(m) => {
                let closed = m.report(grants, bytes_stored, at_ms)?;
                Ok(closed)
            }
            None => {
                *meter = Some(StorageMeter::new(bytes_stored, at_ms)?);
                Ok(Vec::new())
            }
        })
        .await
    }

    /// Closes the hours of the account's storage that ended by `now_ms` (a look at the
    /// account: GetBalance brings it up to date, as it does sessions). Waits for a step
    /// in flight, so what it shows is durable.
    pub(super) async fn storage_up_to_date(&self, account_id: &str, now_ms: i64) {
        let Ok(price) = self.storage_price().map(|p| p.unit_price) else {
            return;
        };
        if let Err(e) = self.close_hours(account_id, price, now_ms).await {
            tracing::warn!(account_id, error = %e, "storage hours not charged yet");
        }
    }

    async fn close_hours(
        &self,
        account_id: &str,
        unit_price: Money,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        self.step_storage(account_id, unit_price, |meter, grants| {
            Ok(match meter {
                Some(m) if m.hour_start_ms.saturating_add(HOUR_MS) <= now_ms => {
                    m.advance(grants, now_ms)
                }
                _ => Vec::new(),
            })
        })
        .await
    }

    /// Closes the hours that ended by `now_ms` on the metered accounts with one ended (the
    /// sync tick, once a minute), found by their deadlines.
    pub async fn tick_storage(&self, now_ms: i64) {
        let Ok(price) = self.storage_price().map(|p| p.unit_price) else {
            return;
        };
        for (_, account_id) in self.storage_due.due(now_ms) {
            let Some(cell) = self.accounts.get(&account_id).map(|a| a.storage.clone()) else {
                continue;
            };
            let Ok(due) = cell.try_lock().map(|m| {
                m.as_ref()
                    .is_some_and(|m| m.hour_start_ms.saturating_add(HOUR_MS) <= now_ms)
            }) else {
                // A meter being stepped by a call right now is that call's business; look
                // again at the next tick all the same.
                self.storage_due.push(now_ms.saturating_add(1), &account_id);
                continue;
            };
            if !due {
                continue;
            }
            if let Err(e) = self.close_hours(&account_id, price, now_ms).await {
                tracing::warn!(account_id, error = %e, "storage hours not charged; retried next tick");
                self.storage_due.push(now_ms.saturating_add(1), &account_id);
            }
        }
    }

    /// The account's meter closes its hour in progress at its end: index it then.
    pub(super) fn index_storage(&self, account_id: &str, meter: &StorageMeter) {
        self.storage_due
            .push(meter.hour_start_ms.saturating_add(HOUR_MS), account_id);
    }

    /// Holding the account's meter for the whole step: lets `step` move a copy, charges
    /// the hours it closed under the account's lock, journals meter and charges in one
    /// transaction, and keeps the moved meter once that is durable (the charges are undone
    /// if it fails). A step that changes nothing writes nothing.
    async fn step_storage(
        &self,
        account_id: &str,
        unit_price: Money,
        step: impl FnOnce(
            &mut Option<StorageMeter>,
            &[crate::billing::Grant],
        ) -> Result<Vec<StorageHour>, EngineError>,
    ) -> Result<(), EngineError> {
        let cell = self
            .accounts
            .get(account_id)
            .map(|a| a.storage.clone())
            .ok_or_else(|| EngineError::UnknownAccount(account_id.to_owned()))?;
        let mut meter = cell.lock().await;
        let mut next = meter.clone();
        let (done, seqs, batch) = {
            let mut a = self
                .accounts
                .get_mut(account_id)
                .ok_or_else(|| EngineError::UnknownAccount(account_id.to_owned()))?;
            let closed = step(&mut next, &a.grants)?;
            let Some(new) = next.clone() else {
                return Ok(());
            };
            if closed.is_empty() && *meter == next {
                return Ok(());
            }
            let sku = self.storage_price()?.sku.clone();
            let usage = self.charge_hours(&mut a, account_id, &sku, unit_price, &closed);
            let seqs: Vec<u64> = usage.iter().map(|u| u.seq).collect();
            let entry = Entry::Storage {
                account_id: account_id.to_owned(),
                meter: new,
                usage,
            };
            let done = match self.journal.submit(entry) {
                Ok(d) => d,
                Err(e) => {
                    for seq in &seqs {
                        a.undo_charge(*seq);
                    }
                    return Err(e.into());
                }
            };
            let now_ms = self.now_ms();
            let batch = (!seqs.is_empty())
                .then(|| self.alerts_locked(&mut a, account_id, now_ms))
                .flatten();
            (done, seqs, batch)
        };
        if let Err(e) = done.await.unwrap_or(Err(JournalError::Closed)) {
            if let Some(mut a) = self.accounts.get_mut(account_id) {
                for seq in &seqs {
                    a.undo_charge(*seq);
                }
            }
            return Err(e.into());
        }
        let hour_before = meter.as_ref().map(|m| m.hour_start_ms);
        *meter = next;
        if let Some(m) = meter.as_ref()
            && hour_before != Some(m.hour_start_ms)
        {
            self.index_storage(account_id, m);
        }
        drop(meter);
        self.publish(batch);
        Ok(())
    }

    /// Under the account's lock: charges the closed hours with storage beyond the plans,
    /// each as usage `storage/ACCOUNT/HOUR_START_MS`.
    fn charge_hours(
        &self,
        a: &mut Account,
        account_id: &str,
        sku: &str,
        unit_price: Money,
        closed: &[StorageHour],
    ) -> Vec<UsageRecord> {
        closed
            .iter()
            .filter(|h| h.excess_byte_hours > 0)
            .map(|h| {
                self.charge_locked(
                    a,
                    h.usage_id(account_id),
                    account_id,
                    Resource::Storage,
                    sku,
                    h.excess_byte_hours,
                    storage::hour_cost(unit_price, h.excess_byte_hours),
                    // Inside the hour it pays for: grants valid then pay it.
                    h.hour_start_ms + HOUR_MS - 1,
                )
            })
            .collect()
    }

    /// Meters from the journal, given back to their accounts as they load (at start).
    pub(super) async fn recover_storage(&self, meters: Vec<(String, StorageMeter)>) {
        for (account_id, meter) in meters {
            match self.ensure_account(&account_id).await {
                Ok(()) => {
                    let cell = self.accounts.get(&account_id).map(|a| a.storage.clone());
                    if let Some(cell) = cell {
                        self.index_storage(&account_id, &meter);
                        *cell.lock().await = Some(meter);
                    }
                }
                Err(e) => {
                    // Kept for when the account loads (the ledger may be down now).
                    tracing::warn!(account_id, error = %e, "storage meter waits for its account");
                    self.orphan_storage.insert(account_id, meter);
                }
            }
        }
    }

    /// What accrues on the account while nothing runs, and when it exhausts grants and
    /// balance if left as it is (`billing::accrual`).
    pub async fn accruals(&self, account_id: &str) -> Result<AccrualsView, EngineError> {
        let sessions = self.sessions_of(account_id).await;
        let now_ms = self.now_ms();
        self.ensure_account(account_id).await?;
        let price = self.storage_price().ok().map(|p| p.unit_price);
        let cell = self
            .accounts
            .get(account_id)
            .map(|a| a.storage.clone())
            .ok_or_else(|| EngineError::UnknownAccount(account_id.to_owned()))?;
        let meter = cell.lock().await.clone();
        let a = self
            .accounts
            .get(account_id)
            .ok_or_else(|| EngineError::UnknownAccount(account_id.to_owned()))?;
        let mut view = AccrualsView::default();
        let mut accruals = Vec::new();
        if let (Some(m), Some(unit_price)) = (&meter, price) {
            view.bytes_stored = m.bytes_stored;
            view.storage_reported_at_ms = m.level_at_ms;
            view.storage_covered_bytes =
                storage::capacity_bytes(&a.grants, now_ms).min(m.bytes_stored);
            let acc = Accrual::Storage {
                bytes_stored: m.bytes_stored,
                unit_price,
            };
            view.storage_hourly = acc.hourly_at(&a.grants, now_ms);
            accruals.push(acc);
        }
        for s in &sessions {
            view.sessions_running += 1;
            if !s.auto_shutdown {
                view.sessions_without_auto_shutdown += 1;
            }
            view.sessions_hourly += s.hourly;
            accruals.push(Accrual::Session { hourly: s.hourly });
        }
        view.projection = accrual::project(
            a.balance,
            &a.grants,
            &accruals,
            now_ms,
            accrual::DEFAULT_PROJECTION_HOURS_MAX,
        );
        Ok(view)
    }
}
