//! `WebhookStore` on SQLite: the outbox's shared SQL (`store::webhooks_sql`) with `?n`
//! parameters, each call one transaction on the store's connection.

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{SqliteStore, db, dup};
use crate::ledger::store::StoreError;
use crate::ledger::store::webhooks::{
    Attempt, DeliveryRow, QueueStats, QueuedEvent, STATE_DELIVERED, STATE_FAILED, WebhookRow,
    WebhookStore, join_list, split_list,
};
use crate::ledger::store::webhooks_sql as sql;

/// The shared SQL with SQLite's numbered parameters (`$n` would be numbered by order of
/// appearance, not by `n`).
fn q(s: &str) -> String {
    s.replace('$', "?")
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read_webhooks(c: &Connection, n: usize) -> Result<Vec<WebhookRow>, StoreError> {
    let mut st = c
        .prepare(&format!(
            "SELECT {} FROM webhooks ORDER BY webhook_id LIMIT ?1",
            sql::WEBHOOK_COLUMNS
        ))
        .map_err(db)?;
    let rows = st
        .query_map([limit(n)], |r| {
            Ok(WebhookRow {
                webhook_id: r.get(0)?,
                url: r.get(1)?,
                event_kinds: split_list(&r.get::<_, String>(2)?),
                account_ids: split_list(&r.get::<_, String>(3)?),
                secret: r.get(4)?,
                created_at_ms: r.get(5)?,
                last_success_at_ms: r.get(6)?,
                last_failure_at_ms: r.get(7)?,
                last_error: r.get(8)?,
            })
        })
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

fn enqueue(c: &mut Connection, events: &[QueuedEvent], now_ms: i64) -> Result<u64, StoreError> {
    let tx = c.transaction().map_err(db)?;
    let hooks = read_webhooks(&tx, usize::MAX)?;
    let mut queued = 0u64;
    for e in events {
        let new = tx
            .execute(
                &q(sql::INSERT_EVENT),
                params![
                    e.event_id,
                    e.account_id,
                    e.kind,
                    e.payload,
                    e.at_ms,
                    e.ordinal
                ],
            )
            .map_err(db)?;
        if new == 0 {
            continue;
        }
        for w in hooks.iter().filter(|w| w.wants(&e.kind, &e.account_id)) {
            queued += u64::try_from(
                tx.execute(
                    &q(sql::INSERT_DELIVERY),
                    params![
                        w.webhook_id,
                        e.event_id,
                        e.account_id,
                        e.at_ms,
                        e.ordinal,
                        now_ms
                    ],
                )
                .map_err(db)?,
            )
            .unwrap_or(0);
        }
    }
    tx.commit().map_err(db)?;
    Ok(queued)
}

fn due(c: &Connection, now_ms: i64, n: usize) -> Result<Vec<DeliveryRow>, StoreError> {
    let mut st = c.prepare(&q(sql::DUE_DELIVERIES)).map_err(db)?;
    let rows = st
        .query_map(params![now_ms, limit(n)], |r| {
            Ok(DeliveryRow {
                webhook_id: r.get(0)?,
                event_id: r.get(1)?,
                account_id: r.get(2)?,
                payload: r.get(3)?,
                at_ms: r.get(4)?,
                attempts: r.get(5)?,
            })
        })
        .map_err(db)?;
    rows.collect::<Result<_, _>>().map_err(db)
}

fn finish(
    c: &mut Connection,
    webhook_id: &str,
    event_id: &str,
    worker: &str,
    attempt: &Attempt,
) -> Result<bool, StoreError> {
    let tx = c.transaction().map_err(db)?;
    let (state, next, done, mark) = match attempt {
        Attempt::Delivered { at_ms } => (STATE_DELIVERED, 0, *at_ms, None),
        Attempt::Retry {
            at_ms,
            next_at_ms,
            error,
        } => (0, *next_at_ms, 0, Some((*at_ms, error))),
        Attempt::Failed { at_ms, error } => (STATE_FAILED, 0, *at_ms, Some((*at_ms, error))),
    };
    let changed = tx
        .execute(
            &q(sql::FINISH),
            params![webhook_id, event_id, worker, state, next, done],
        )
        .map_err(db)?;
    if changed == 1 {
        match (attempt, mark) {
            (Attempt::Delivered { at_ms }, _) => {
                tx.execute(&q(sql::MARK_SUCCESS), params![webhook_id, at_ms])
                    .map_err(db)?;
            }
            (_, Some((at_ms, error))) => {
                tx.execute(
                    &q(sql::MARK_FAILURE),
                    params![webhook_id, at_ms, sql::short_error(error)],
                )
                .map_err(db)?;
            }
            _ => {}
        }
    }
    tx.commit().map_err(db)?;
    Ok(changed == 1)
}

fn queues(c: &Connection) -> Result<Vec<QueueStats>, StoreError> {
    let mut st = c.prepare(sql::QUEUES).map_err(db)?;
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .map_err(db)?;
    let mut out = Vec::new();
    for row in rows {
        let (webhook_id, n, oldest_at_ms) = row.map_err(db)?;
        out.push(QueueStats {
            webhook_id,
            pending: u64::try_from(n).unwrap_or(0),
            oldest_at_ms,
        });
    }
    Ok(out)
}

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn insert_webhook(&self, w: WebhookRow) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                &q(sql::INSERT_WEBHOOK),
                params![
                    w.webhook_id,
                    w.url,
                    join_list(&w.event_kinds),
                    join_list(&w.account_ids),
                    w.secret,
                    w.created_at_ms,
                    w.last_success_at_ms,
                    w.last_failure_at_ms,
                    w.last_error
                ],
            )
            .map_err(dup("webhook", &w.webhook_id))?;
            Ok(())
        })
        .await
    }

    async fn webhooks(&self, limit: usize) -> Result<Vec<WebhookRow>, StoreError> {
        self.with(move |c| read_webhooks(c, limit)).await
    }

    async fn delete_webhook(&self, webhook_id: &str) -> Result<bool, StoreError> {
        let id = webhook_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute(&q(sql::DELETE_DELIVERIES_OF), [&id])
                .map_err(db)?;
            let n = tx.execute(&q(sql::DELETE_WEBHOOK), [&id]).map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(n > 0)
        })
        .await
    }

    async fn enqueue_events(
        &self,
        events: Vec<QueuedEvent>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.with(move |c| enqueue(c, &events, now_ms)).await
    }

    async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.with(move |c| due(c, now_ms, limit)).await
    }

    async fn claim_delivery(
        &self,
        webhook_id: &str,
        event_id: &str,
        worker: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let (w, e, k) = (
            webhook_id.to_owned(),
            event_id.to_owned(),
            worker.to_owned(),
        );
        self.with(move |c| {
            let n = c
                .execute(&q(sql::CLAIM), params![w, e, k, now_ms, until_ms])
                .map_err(db)?;
            Ok(n == 1)
        })
        .await
    }

    async fn finish_delivery(
        &self,
        webhook_id: &str,
        event_id: &str,
        worker: &str,
        attempt: Attempt,
    ) -> Result<bool, StoreError> {
        let (w, e, k) = (
            webhook_id.to_owned(),
            event_id.to_owned(),
            worker.to_owned(),
        );
        self.with(move |c| finish(c, &w, &e, &k, &attempt)).await
    }

    async fn webhook_queues(&self) -> Result<Vec<QueueStats>, StoreError> {
        self.with(|c| queues(c)).await
    }

    async fn prune_webhooks(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            let a = tx
                .execute(&q(sql::PRUNE_DELIVERIES), [before_ms])
                .map_err(db)?;
            let b = tx.execute(&q(sql::PRUNE_EVENTS), [before_ms]).map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(u64::try_from(a + b).unwrap_or(0))
        })
        .await
    }
}
