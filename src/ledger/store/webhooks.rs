//! Webhook endpoints and the delivery outbox, as the ledger's store keeps them. The ledger
//! is the one authority every sidecar reaches, so it owns both: endpoints are seen by every
//! sidecar and survive restarts, and each queued event is delivered by whichever ledger
//! process claims it (a claim is a row update under a time limit, no locks held).
//!
//! Tables: `webhooks` (endpoints), `webhook_events` (each event once, by its stable id:
//! a second enqueue of the same id changes nothing), `webhook_deliveries` (one row per
//! event and matching endpoint: pending, delivered or failed, with its attempts).

use async_trait::async_trait;

use super::StoreError;

/// A delivery waiting to be made or retried.
pub const STATE_PENDING: i64 = 0;
/// A delivery the endpoint acknowledged with a 2xx answer.
pub const STATE_DELIVERED: i64 = 1;
/// A delivery given up after its retry time ran out.
pub const STATE_FAILED: i64 = 2;

/// An endpoint as stored. Empty `event_kinds` / `account_ids` mean all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRow {
    pub webhook_id: String,
    pub url: String,
    pub event_kinds: Vec<String>,
    pub account_ids: Vec<String>,
    /// `whsec_` + base64 of the signing key (Standard Webhooks).
    pub secret: String,
    pub created_at_ms: i64,
    /// Last 2xx answer (0: none yet).
    pub last_success_at_ms: i64,
    /// Last failed attempt (0: none yet) and what failed.
    pub last_failure_at_ms: i64,
    pub last_error: String,
}

impl WebhookRow {
    /// Whether an event of `kind` on `account_id` goes to this endpoint.
    pub fn wants(&self, kind: &str, account_id: &str) -> bool {
        (self.event_kinds.is_empty() || self.event_kinds.iter().any(|k| k == kind))
            && (self.account_ids.is_empty() || self.account_ids.iter().any(|a| a == account_id))
    }
}

/// A list column (kinds, accounts) as stored: comma-separated, "" for all.
pub fn join_list(items: &[String]) -> String {
    items.join(",")
}

pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// An event to deliver: its body is fixed when queued, so every retry signs the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// Stable id (`webhook-id`): the same crossing queued twice is one event.
    pub event_id: String,
    pub account_id: String,
    pub kind: String,
    /// The JSON body sent.
    pub payload: String,
    pub at_ms: i64,
    /// Order among events of the same account and time (their order of detection).
    pub ordinal: i64,
}

/// A pending delivery at the head of its (endpoint, account) queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub webhook_id: String,
    pub event_id: String,
    pub account_id: String,
    pub payload: String,
    /// When the event was queued: its retry time runs from here.
    pub at_ms: i64,
    pub attempts: i64,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        at_ms: i64,
    },
    /// Failed; tried again from `next_at_ms`.
    Retry {
        at_ms: i64,
        next_at_ms: i64,
        error: String,
    },
    /// Failed, and its retry time is over: no more attempts.
    Failed {
        at_ms: i64,
        error: String,
    },
}

/// One endpoint's queue: pending deliveries and the oldest one's time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStats {
    pub webhook_id: String,
    pub pending: u64,
    pub oldest_at_ms: i64,
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Records a new endpoint; `Duplicate` if its id is taken.
    async fn insert_webhook(&self, w: WebhookRow) -> Result<(), StoreError>;

    /// Endpoints in id order, at most `limit`.
    async fn webhooks(&self, limit: usize) -> Result<Vec<WebhookRow>, StoreError>;

    /// Removes the endpoint and its deliveries; false if there is none.
    async fn delete_webhook(&self, webhook_id: &str) -> Result<bool, StoreError>;

    /// Records the events not recorded before (by id), each with a pending delivery to
    /// every endpoint that wants it, in one transaction. Returns the deliveries queued.
    async fn enqueue_events(
        &self,
        events: Vec<QueuedEvent>,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Pending deliveries due at `now_ms`, unclaimed, each the oldest pending one of its
    /// endpoint and account (so an account's events go out in order), at most `limit`.
    async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError>;

    /// Claims a delivery for `worker` until `until_ms`; false if another worker holds it
    /// or it is no longer pending.
    async fn claim_delivery(
        &self,
        webhook_id: &str,
        event_id: &str,
        worker: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Records an attempt of a delivery `worker` claimed (and the endpoint's last success
    /// or failure); false, changing nothing, if the claim was lost.
    async fn finish_delivery(
        &self,
        webhook_id: &str,
        event_id: &str,
        worker: &str,
        attempt: Attempt,
    ) -> Result<bool, StoreError>;

    /// Pending deliveries per endpoint (endpoints with none are left out).
    async fn webhook_queues(&self) -> Result<Vec<QueueStats>, StoreError>;

    /// Forgets delivered and failed deliveries finished before `before_ms`, and events
    /// queued before it with no delivery left. Returns the rows removed.
    async fn prune_webhooks(&self, before_ms: i64) -> Result<u64, StoreError>;
}
