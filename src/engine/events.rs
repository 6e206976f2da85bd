//! Account events and their delivery to Watch streams: alert crossings (R7, found in
//! `watch`) and the stops of jobs and sessions. An event leaves only once what caused it is
//! durable (the alert memo, the session row): the hub's queue holds each batch with the
//! journal write it waits for, so a crash can neither lose a crossing nor send it twice.
//! Fan-out is a bounded broadcast per watched account: a watcher that falls behind loses
//! the oldest events and is told how many, and publishing never waits on a watcher, so
//! Watch cannot slow admission.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio::sync::{broadcast, mpsc};

use super::error::EngineError;
use crate::billing::alerts::AlertKind;
use crate::journal::{Durable, JournalError, JournaledEvent};

/// Most Watch streams open on one sidecar.
pub const DEFAULT_WATCHERS_MAX: usize = 10_000;
/// Most Watch streams open on one account.
pub const DEFAULT_WATCHERS_PER_ACCOUNT_MAX: usize = 64;
/// Events buffered per watched account for its slowest watcher.
pub const DEFAULT_WATCH_BUFFER: usize = 256;
/// Events waiting for their cause to become durable before they are sent.
pub const DEFAULT_EVENT_QUEUE_MAX: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Alert(AlertKind),
    WorkStopped,
    SessionIdleShutdown,
    SessionStopped,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Alert(k) => k.name(),
            EventKind::WorkStopped => "WORK_STOPPED",
            EventKind::SessionIdleShutdown => "SESSION_IDLE_SHUTDOWN",
            EventKind::SessionStopped => "SESSION_STOPPED",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub account_id: String,
    pub kind: EventKind,
    /// The grant, work or session concerned ("" if none).
    pub subject_id: String,
    pub threshold: String,
    pub message: String,
    pub at_ms: i64,
}

impl Event {
    /// As the journal keeps it until the webhook outbox has it.
    pub fn journaled(&self) -> JournaledEvent {
        JournaledEvent {
            account_id: self.account_id.clone(),
            kind: self.kind.name().to_owned(),
            subject_id: self.subject_id.clone(),
            threshold: self.threshold.clone(),
            message: self.message.clone(),
            at_ms: self.at_ms,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    pub watchers_max: usize,
    pub watchers_per_account_max: usize,
    pub buffer: usize,
    pub queue_max: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            watchers_max: DEFAULT_WATCHERS_MAX,
            watchers_per_account_max: DEFAULT_WATCHERS_PER_ACCOUNT_MAX,
            buffer: DEFAULT_WATCH_BUFFER,
            queue_max: DEFAULT_EVENT_QUEUE_MAX,
        }
    }
}

/// Events of one change, to send once `durable` resolves.
pub(super) struct Batch {
    pub(super) durable: Option<Durable>,
    pub(super) events: Vec<Event>,
}

/// A consumer of durable events besides Watch (webhook delivery).
pub type Sink = Box<dyn Fn(Vec<Event>) + Send + Sync>;

pub(super) struct Hub {
    cfg: WatchConfig,
    senders: DashMap<String, broadcast::Sender<Event>>,
    watchers: Arc<AtomicUsize>,
    queue: mpsc::Sender<Batch>,
    /// Events not sent because the queue was full (logged; watchers see a gap).
    dropped: AtomicU64,
    closed: std::sync::atomic::AtomicBool,
    /// Events handed to watchers' buffers so far.
    sent: AtomicU64,
    /// Where durable events also go (webhook delivery); must not wait.
    forward: std::sync::OnceLock<Sink>,
}

/// Keeps a Watch registered; drop it after its receiver.
pub struct WatchGuard {
    hub: Arc<Hub>,
    account_id: String,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let hub = &self.hub;
        hub.watchers.fetch_sub(1, Ordering::Relaxed);
        hub.senders
            .remove_if(&self.account_id, |_, tx| tx.receiver_count() == 0);
    }
}

impl Hub {
    /// The hub and the receiving end of its queue, for `run` to drain.
    pub(super) fn new(cfg: WatchConfig) -> (Hub, mpsc::Receiver<Batch>) {
        let (queue, rx) = mpsc::channel(cfg.queue_max.max(1));
        (
            Hub {
                cfg,
                senders: DashMap::new(),
                watchers: Arc::new(AtomicUsize::new(0)),
                queue,
                dropped: AtomicU64::new(0),
                closed: std::sync::atomic::AtomicBool::new(false),
                sent: AtomicU64::new(0),
                forward: std::sync::OnceLock::new(),
            },
            rx,
        )
    }

    /// Queues events to send once `durable` resolves (None: at once, in order).
    pub(super) fn publish(&self, durable: Option<Durable>, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        for e in &events {
            tracing::info!(account_id = %e.account_id, kind = e.kind.name(),
                subject = %e.subject_id, message = %e.message, "account event");
        }
        if let Err(e) = self.queue.try_send(Batch { durable, events }) {
            let n = match e {
                mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => {
                    b.events.len()
                }
            };
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
            tracing::warn!(events = n, "event queue full: events not sent to watchers");
        }
    }

    /// Registers a watcher of the account, within both limits.
    pub(super) fn subscribe(
        self: &Arc<Hub>,
        account_id: &str,
    ) -> Result<(broadcast::Receiver<Event>, WatchGuard), EngineError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(EngineError::ShuttingDown);
        }
        let total = self.watchers.fetch_add(1, Ordering::Relaxed);
        if total >= self.cfg.watchers_max {
            self.watchers.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::WatchersFull {
                limit: self.cfg.watchers_max,
                per_account: false,
            });
        }
        let tx = self
            .senders
            .entry(account_id.to_owned())
            .or_insert_with(|| broadcast::channel(self.cfg.buffer.max(1)).0);
        if tx.receiver_count() >= self.cfg.watchers_per_account_max {
            drop(tx);
            self.watchers.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::WatchersFull {
                limit: self.cfg.watchers_per_account_max,
                per_account: true,
            });
        }
        let rx = tx.subscribe();
        drop(tx);
        let guard = WatchGuard {
            hub: self.clone(),
            account_id: account_id.to_owned(),
        };
        Ok((rx, guard))
    }

    /// Whether the account has a Watch open.
    pub(super) fn watched(&self, account_id: &str) -> bool {
        self.senders
            .get(account_id)
            .is_some_and(|tx| tx.receiver_count() > 0)
    }

    /// Watch streams open now.
    pub(super) fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Events handed to watchers so far (those of accounts nobody watched included).
    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Events not sent because the queue was full.
    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ends every Watch (their senders go) and refuses new ones.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.senders.clear();
    }

    /// Also hands every durable batch of events to `f` (set once; `f` must not wait).
    pub(super) fn forward_to(&self, f: Sink) {
        let _ = self.forward.set(f);
    }

    fn send(&self, events: Vec<Event>) {
        if let Some(f) = self.forward.get() {
            f(events.clone());
        }
        self.sent.fetch_add(events.len() as u64, Ordering::Relaxed);
        for e in events {
            if let Some(tx) = self.senders.get(&e.account_id) {
                // No receiver left is fine: the watcher just went away.
                let _ = tx.send(e);
            }
        }
    }
}

/// Sends queued events in order, each batch once its cause is durable; a batch whose
/// cause failed to persist is dropped with it (the change was undone).
pub(super) async fn run(hub: std::sync::Weak<Hub>, mut rx: mpsc::Receiver<Batch>) {
    while let Some(b) = rx.recv().await {
        if let Some(d) = b.durable {
            match d.await.unwrap_or(Err(JournalError::Closed)) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "events dropped: their change was not journaled");
                    continue;
                }
            }
        }
        let Some(hub) = hub.upgrade() else {
            return;
        };
        hub.send(b.events);
    }
}
