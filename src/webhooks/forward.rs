//! From a sidecar's events to the ledger's outbox. Alert events are journaled with the
//! alert memo, in the record that fires them; the engine hands over each batch of events
//! once what caused it is durable (the same moment Watch streams get them); a task turns
//! them into outbox entries (stable id, fixed body), queues them at the ledger, in process
//! (`quotad serve`) or over the Ledger service (`--ledger`), retrying while the ledger
//! does not answer, then tells the journal they are queued (`Entry::EventsQueued`). What
//! the journal still holds at a start is queued again first (the outbox takes an id once).
//! What waits in memory is bounded (`DEFAULT_WEBHOOK_FORWARD_MAX` batches); beyond it
//! batches are dropped here and counted, and stay in the journal for the next start.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};

use super::event;
use crate::clock::SharedClock;
use crate::journal::{Entry, Journal, JournaledEvent};
use crate::ledger::store::webhooks::{QueuedEvent, WebhookStore};

/// Most event batches waiting to reach the ledger's outbox.
pub const DEFAULT_WEBHOOK_FORWARD_MAX: usize = 4096;
/// Pause between attempts to queue a batch the ledger did not take.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Ordinals a forwarding process has per millisecond of the clock at its start (see
/// `first_ordinal`): a process would have to queue a million events for every
/// millisecond it ran to reach the ordinals of the next start.
pub const ORDINALS_PER_START_MS: i64 = 1_000_000;

/// The first ordinal of a forwarder started at `now_ms`. The outbox delivers one
/// account's events in (time, ordinal) order, so ordinals keep growing across restarts:
/// had they started again at 1, an event queued before a crash and one queued again from
/// the journal after it could tie on both (two events in the same millisecond) and be
/// delivered in the order of their ids instead.
pub fn first_ordinal(now_ms: i64) -> i64 {
    now_ms.max(0).saturating_mul(ORDINALS_PER_START_MS)
}

/// Where events are queued for delivery.
#[async_trait]
pub trait EventQueue: Send + Sync + 'static {
    async fn queue(&self, events: Vec<QueuedEvent>) -> Result<(), String>;
}

/// The outbox of an in-process ledger.
pub struct LocalQueue {
    pub store: Arc<dyn WebhookStore>,
    pub clock: SharedClock,
    /// The delivery worker's wake-up.
    pub wake: Arc<Notify>,
}

#[async_trait]
impl EventQueue for LocalQueue {
    async fn queue(&self, events: Vec<QueuedEvent>) -> Result<(), String> {
        let n = self
            .store
            .enqueue_events(events, self.clock.now_ms())
            .await
            .map_err(|e| e.to_string())?;
        if n > 0 {
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// The sending end the engine publishes into, and the count of batches dropped.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Vec<JournaledEvent>>,
    dropped: Arc<AtomicU64>,
}

impl Forwarder {
    /// Starts the task that queues `recovered` (what the journal held at start), then the
    /// batches sent, in order, at `queue`, telling `journal` what is queued; the events'
    /// ordinals count on from `first_ordinal`.
    pub fn spawn(
        queue: Arc<dyn EventQueue>,
        journal: Arc<Journal>,
        recovered: Vec<JournaledEvent>,
        max: usize,
        first_ordinal: i64,
    ) -> Forwarder {
        let (tx, rx) = mpsc::channel(max.max(1));
        tokio::spawn(run(queue, journal, recovered, rx, first_ordinal));
        Forwarder {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Hands over a durable batch; never waits.
    pub fn send(&self, events: Vec<JournaledEvent>) {
        if let Err(e) = self.tx.try_send(events) {
            let n = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => {
                    b.len()
                }
            };
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(events = n, "webhook forward queue full: events not queued");
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn run(
    queue: Arc<dyn EventQueue>,
    journal: Arc<Journal>,
    recovered: Vec<JournaledEvent>,
    mut rx: mpsc::Receiver<Vec<JournaledEvent>>,
    first_ordinal: i64,
) {
    let mut ordinal = first_ordinal;
    let mut first = Some(recovered).filter(|r| !r.is_empty());
    loop {
        let batch = match first.take() {
            Some(b) => b,
            None => match rx.recv().await {
                Some(b) => b,
                None => return,
            },
        };
        let queued: Vec<QueuedEvent> = batch
            .iter()
            .map(|e| {
                ordinal = ordinal.saturating_add(1);
                event::queued(e, ordinal)
            })
            .collect();
        loop {
            match queue.queue(queued.clone()).await {
                Ok(()) => {
                    let keys = batch.iter().map(JournaledEvent::key).collect();
                    if let Err(e) = journal.submit_detached(Entry::EventsQueued(keys)) {
                        tracing::debug!(error = %e, "queued events not noted; queued again at start");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook events not queued at the ledger; retrying");
                    if rx.is_closed() {
                        // Shutting down: the journal keeps them for the next start.
                        return;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_start_orders_after_every_event_of_an_earlier_one() {
        let start_ms = 1_764_000_000_000;
        let earlier_last = first_ordinal(start_ms) + ORDINALS_PER_START_MS - 1;
        assert!(first_ordinal(start_ms + 1) > earlier_last);
        assert_eq!(first_ordinal(-5), 0);
        assert_eq!(first_ordinal(i64::MAX), i64::MAX);
    }
}
