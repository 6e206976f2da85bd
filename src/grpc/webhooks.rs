//! The Admin webhook calls (operator only: the auth layer keeps unlisted Admin methods for
//! the operator) and the Ledger's QueueEvents, over the ledger's webhook tables.

use std::time::Duration;

use tonic::Status;

use super::convert;
use super::error::Invalid;
use crate::ledger::Ledger;
use crate::pb;
use crate::webhooks::delivery::DEFAULT_WEBHOOK_TIMEOUT_MS;
use crate::webhooks::endpoints::{self, DEFAULT_WEBHOOKS_MAX, NewWebhook};

pub(super) async fn create(
    ledger: &Ledger,
    r: pb::CreateWebhookRequest,
) -> Result<pb::CreateWebhookResponse, Status> {
    let new = NewWebhook {
        url: r.url,
        event_kinds: r.event_kinds,
        account_ids: r.account_ids,
    };
    let row = endpoints::create(&*ledger.webhook_store(), new, ledger.now_ms()).await?;
    let secret = row.secret.clone();
    Ok(pb::CreateWebhookResponse {
        webhook: Some(convert::webhook_out(row, None)),
        secret,
    })
}

pub(super) async fn list(ledger: &Ledger) -> Result<pb::ListWebhooksResponse, Status> {
    let store = ledger.webhook_store();
    let rows = store
        .webhooks(DEFAULT_WEBHOOKS_MAX)
        .await
        .map_err(crate::webhooks::WebhookError::from)?;
    let queues = store
        .webhook_queues()
        .await
        .map_err(crate::webhooks::WebhookError::from)?;
    Ok(pb::ListWebhooksResponse {
        webhooks: rows
            .into_iter()
            .map(|w| {
                let q = queues.iter().find(|q| q.webhook_id == w.webhook_id);
                convert::webhook_out(w, q)
            })
            .collect(),
    })
}

pub(super) async fn delete(
    ledger: &Ledger,
    r: pb::DeleteWebhookRequest,
) -> Result<pb::DeleteWebhookResponse, Status> {
    let id = convert::id("webhook_id", &r.webhook_id)?;
    let deleted = ledger
        .webhook_store()
        .delete_webhook(id)
        .await
        .map_err(crate::webhooks::WebhookError::from)?;
    Ok(pb::DeleteWebhookResponse { deleted })
}

pub(super) async fn test(
    ledger: &Ledger,
    r: pb::TestWebhookRequest,
) -> Result<pb::TestWebhookResponse, Status> {
    let id = convert::id("webhook_id", &r.webhook_id)?;
    let timeout = Duration::from_millis(u64::try_from(DEFAULT_WEBHOOK_TIMEOUT_MS).unwrap_or(0));
    let t = endpoints::send_test(&*ledger.webhook_store(), id, ledger.now_ms(), timeout).await?;
    Ok(pb::TestWebhookResponse {
        delivered: t.error.is_empty(),
        event_id: t.event_id,
        http_status: u32::from(t.http_status),
        error: t.error,
    })
}

pub(super) async fn queue_events(
    ledger: &Ledger,
    r: pb::QueueEventsRequest,
) -> Result<pb::QueueEventsResponse, Status> {
    let events = convert::queued_events_in(r)?;
    if events.is_empty() {
        return Err(Invalid("events is empty".into()).into());
    }
    let queued = ledger
        .webhook_store()
        .enqueue_events(events, ledger.now_ms())
        .await
        .map_err(crate::webhooks::WebhookError::from)?;
    Ok(pb::QueueEventsResponse { queued })
}
