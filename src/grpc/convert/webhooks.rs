//! Webhook endpoints and queued events on the wire.

use super::super::error::Invalid;
use crate::ledger::store::webhooks::{QueueStats, QueuedEvent, WebhookRow};
use crate::pb;

/// Most events one QueueEvents call may carry.
pub const QUEUED_EVENTS_MAX: usize = 10_000;

/// An endpoint without its secret, with its queue.
pub fn webhook_out(w: WebhookRow, queue: Option<&QueueStats>) -> pb::Webhook {
    pb::Webhook {
        webhook_id: w.webhook_id,
        url: w.url,
        event_kinds: w.event_kinds,
        account_ids: w.account_ids,
        created_at_ms: w.created_at_ms,
        last_success_at_ms: w.last_success_at_ms,
        last_failure_at_ms: w.last_failure_at_ms,
        last_error: w.last_error,
        pending: queue.map_or(0, |q| q.pending),
        oldest_pending_at_ms: queue.map_or(0, |q| q.oldest_at_ms),
    }
}

pub fn queued_events_out(events: Vec<QueuedEvent>) -> pb::QueueEventsRequest {
    pb::QueueEventsRequest {
        events: events
            .into_iter()
            .map(|e| pb::QueuedEvent {
                event_id: e.event_id,
                account_id: e.account_id,
                kind: e.kind,
                payload: e.payload,
                at_ms: e.at_ms,
                ordinal: e.ordinal,
            })
            .collect(),
    }
}

pub fn queued_events_in(r: pb::QueueEventsRequest) -> Result<Vec<QueuedEvent>, Invalid> {
    if r.events.len() > QUEUED_EVENTS_MAX {
        return Err(Invalid(format!(
            "{} events in one call; at most {QUEUED_EVENTS_MAX}",
            r.events.len()
        )));
    }
    r.events
        .into_iter()
        .map(|e| {
            super::id("event_id", &e.event_id)?;
            super::id("account_id", &e.account_id)?;
            Ok(QueuedEvent {
                event_id: e.event_id,
                account_id: e.account_id,
                kind: e.kind,
                payload: e.payload,
                at_ms: e.at_ms,
                ordinal: e.ordinal,
            })
        })
        .collect()
}
