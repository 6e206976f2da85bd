//! Usage that is durable here and not yet acknowledged by the ledger, in memory: the writer
//! appends a group's usage once it is written, the sync loop reads batches from the front
//! and drops what the ledger acknowledged. The file holds the same records, so a restart
//! rebuilds this queue from it.
//!
//! A lock poisoned by a thread that panicked while holding it is an error to every caller
//! (`JournalError::Poisoned`), never an empty answer: an empty outbox would tell the sync
//! loop there is nothing to push, and the engine that no usage of an account is pending.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use super::error::JournalError;
use crate::ledger::api::UsageRecord;

pub(super) struct Outbox {
    queue: Mutex<VecDeque<UsageRecord>>,
    /// `queue`'s length, readable without the lock (the request path checks it).
    len: AtomicUsize,
    /// Woken when new usage became durable.
    new_usage: Notify,
}

impl Outbox {
    pub(super) fn new(records: VecDeque<UsageRecord>) -> Outbox {
        Outbox {
            len: AtomicUsize::new(records.len()),
            queue: Mutex::new(records),
            new_usage: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> Result<MutexGuard<'_, VecDeque<UsageRecord>>, JournalError> {
        self.queue
            .lock()
            .map_err(|_| JournalError::Poisoned("outbox"))
    }

    /// Up to `max` records, oldest first.
    pub(super) fn batch(&self, max: usize) -> Result<Vec<UsageRecord>, JournalError> {
        Ok(self.lock()?.iter().take(max).cloned().collect())
    }

    /// Records of one account with a seq above `after_seq`, oldest first, at most `max`.
    pub(super) fn of(
        &self,
        account_id: &str,
        after_seq: u64,
        max: usize,
    ) -> Result<Vec<UsageRecord>, JournalError> {
        Ok(self
            .lock()?
            .iter()
            .filter(|u| u.account_id == account_id && u.seq > after_seq)
            .take(max)
            .cloned()
            .collect())
    }

    /// Drops the records of the seqs `acked` that lead the queue, in order; returns their
    /// seqs.
    pub(super) fn ack(&self, acked: &[u64]) -> Result<Vec<u64>, JournalError> {
        let mut q = self.lock()?;
        let mut seqs = Vec::with_capacity(acked.len());
        for &seq in acked {
            if q.front().map(|f| f.seq) == Some(seq) {
                q.pop_front();
                seqs.push(seq);
            }
        }
        self.len.store(q.len(), Ordering::Relaxed);
        Ok(seqs)
    }

    /// Adds usage that has just become durable and wakes the sync loop.
    pub(super) fn extend(&self, usage: Vec<UsageRecord>) -> Result<(), JournalError> {
        if usage.is_empty() {
            return Ok(());
        }
        {
            let mut q = self.lock()?;
            q.extend(usage);
            self.len.store(q.len(), Ordering::Relaxed);
        }
        self.new_usage.notify_one();
        Ok(())
    }

    /// Runs `f` over the whole queue under its lock (a compaction writes it out).
    pub(super) fn with_all<T>(
        &self,
        f: impl FnOnce(&VecDeque<UsageRecord>) -> T,
    ) -> Result<T, JournalError> {
        let q = self.lock()?;
        Ok(f(&q))
    }

    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub(super) async fn written(&self) {
        self.new_usage.notified().await
    }

    /// Poisons the lock, as a thread that panics while holding it would.
    #[cfg(test)]
    pub(super) fn poison(self: &std::sync::Arc<Self>) {
        let holder = self.clone();
        let died = std::thread::spawn(move || {
            let _q = holder.queue.lock();
            panic!("a thread dies holding the outbox");
        })
        .join();
        assert!(died.is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{Money, Resource};

    fn usage(seq: u64, account_id: &str) -> UsageRecord {
        UsageRecord {
            seq,
            usage_id: format!("u{seq}"),
            account_id: account_id.into(),
            resource: Resource::GpuShared,
            sku: "gpu".into(),
            quantity: 1,
            cost: Money::ZERO,
            at_ms: 0,
        }
    }

    #[test]
    fn acks_only_what_leads_the_queue() {
        let o = Outbox::new(VecDeque::new());
        o.extend(vec![usage(1, "a"), usage(2, "b"), usage(3, "a")])
            .unwrap();
        assert_eq!(o.of("a", 1, 10).unwrap(), vec![usage(3, "a")]);
        // 3 does not lead the queue: only 1 goes.
        assert_eq!(o.ack(&[1, 3]).unwrap(), vec![1]);
        assert_eq!(o.len(), 2);
        assert_eq!(o.batch(1).unwrap(), vec![usage(2, "b")]);
    }

    #[test]
    fn a_poisoned_lock_is_an_error_not_an_empty_outbox() {
        let o = std::sync::Arc::new(Outbox::new(VecDeque::from([usage(1, "a")])));
        o.poison();
        let poisoned = Err(JournalError::Poisoned("outbox"));
        assert_eq!(o.batch(10), poisoned);
        assert_eq!(o.of("a", 0, 10), poisoned);
        assert_eq!(o.ack(&[1]), Err(JournalError::Poisoned("outbox")));
        assert_eq!(
            o.extend(vec![usage(2, "a")]),
            Err(JournalError::Poisoned("outbox"))
        );
    }
}
