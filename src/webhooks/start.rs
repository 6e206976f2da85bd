//! Starting webhook delivery where a ledger runs: the worker over the ledger's outbox,
//! its series on the metrics endpoint, and the queue events are forwarded into.

use std::sync::Arc;

use tokio::sync::watch;

use super::delivery::{Deliverer, DeliveryConfig};
use super::forward::{
    DEFAULT_WEBHOOK_FORWARD_MAX, EventQueue, Forwarder, LocalQueue, first_ordinal,
};
use super::stats::WebhookStats;
use crate::clock::SharedClock;
use crate::engine::Engine;
use crate::engine::events::Event;
use crate::journal::JournaledEvent;
use crate::ledger::Ledger;
use crate::metrics::SharedMetrics;

/// Delivery running beside a ledger.
pub struct Webhooks {
    pub stats: Arc<WebhookStats>,
    /// Queues events at this ledger's outbox (and wakes the worker).
    pub queue: Arc<dyn EventQueue>,
}

/// Starts the worker until `stop` turns true (or its sender goes).
pub fn start(
    ledger: &Ledger,
    cfg: DeliveryConfig,
    metrics: &SharedMetrics,
    clock: SharedClock,
    mut stop: watch::Receiver<bool>,
) -> Webhooks {
    let stats = Arc::new(WebhookStats::default());
    let store = ledger.webhook_store();
    let deliverer = Deliverer::new(store.clone(), clock.clone(), cfg, stats.clone());
    let queue = Arc::new(LocalQueue {
        store,
        clock: clock.clone(),
        wake: deliverer.waker(),
    });
    tokio::spawn(deliverer.run(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    let s = stats.clone();
    metrics.collect(move |out| s.samples(clock.now_ms(), out));
    Webhooks { stats, queue }
}

/// Queues what the journal held at start (`recovered`), then hands the engine's durable
/// events to `queue` from now on.
pub fn forward_from(
    engine: &Engine,
    queue: Arc<dyn EventQueue>,
    recovered: Vec<JournaledEvent>,
) -> Forwarder {
    let f = Forwarder::spawn(
        queue,
        engine.journal().clone(),
        recovered,
        DEFAULT_WEBHOOK_FORWARD_MAX,
        first_ordinal(engine.now_ms()),
    );
    let tx = f.clone();
    engine.forward_events(move |events| tx.send(events.iter().map(Event::journaled).collect()));
    f
}
