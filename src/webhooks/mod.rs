//! Account events delivered as signed webhooks (Standard Webhooks). Operators register
//! endpoints (`endpoints`); every event that reaches Watch is also queued, once durable,
//! in the ledger's outbox (`forward`), and the process that owns the ledger delivers it
//! (`delivery`): at least once, in order per account and endpoint, retried with backoff
//! and jitter for a bounded time, signed (`signature`), counted (`stats`).

pub mod delivery;
pub mod endpoints;
pub mod event;
pub mod forward;
pub mod http;
pub mod signature;
pub mod start;
pub mod stats;

pub use delivery::{Deliverer, DeliveryConfig};
pub use endpoints::WebhookError;
pub use stats::WebhookStats;
