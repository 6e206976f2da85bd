//! `WebhookStore` on PostgreSQL: the outbox's shared SQL (`store::webhooks_sql`). A claim
//! is one conditional UPDATE: of two ledger processes claiming the same delivery, the
//! second finds the row claimed and updates nothing.

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Acquire, Row};

use super::{PgStore, UNIQUE_VIOLATION, db, sqlstate};
use crate::ledger::store::StoreError;
use crate::ledger::store::webhooks::{
    Attempt, DeliveryRow, QueueStats, QueuedEvent, STATE_DELIVERED, STATE_FAILED, WebhookRow,
    WebhookStore, join_list, split_list,
};
use crate::ledger::store::webhooks_sql as sql;

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn webhook(r: &PgRow) -> Result<WebhookRow, sqlx::Error> {
    Ok(WebhookRow {
        webhook_id: r.try_get(0)?,
        url: r.try_get(1)?,
        event_kinds: split_list(&r.try_get::<String, _>(2)?),
        account_ids: split_list(&r.try_get::<String, _>(3)?),
        secret: r.try_get(4)?,
        created_at_ms: r.try_get(5)?,
        last_success_at_ms: r.try_get(6)?,
        last_failure_at_ms: r.try_get(7)?,
        last_error: r.try_get(8)?,
    })
}

async fn read_webhooks<'e>(
    ex: impl sqlx::PgExecutor<'e>,
    n: usize,
) -> Result<Vec<WebhookRow>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {} FROM webhooks ORDER BY webhook_id LIMIT $1",
        sql::WEBHOOK_COLUMNS
    ))
    .bind(limit(n))
    .fetch_all(ex)
    .await
    .map_err(db)?;
    rows.iter()
        .map(webhook)
        .collect::<Result<_, _>>()
        .map_err(db)
}

/// `(state, next attempt, finished at)` of an attempt's outcome.
fn outcome(a: &Attempt) -> (i32, i64, i64) {
    match a {
        Attempt::Delivered { at_ms } => (i32::try_from(STATE_DELIVERED).unwrap_or(1), 0, *at_ms),
        Attempt::Retry { next_at_ms, .. } => (0, *next_at_ms, 0),
        Attempt::Failed { at_ms, .. } => (i32::try_from(STATE_FAILED).unwrap_or(2), 0, *at_ms),
    }
}

#[async_trait]
impl WebhookStore for PgStore {
    async fn insert_webhook(&self, w: WebhookRow) -> Result<(), StoreError> {
        sqlx::query(sql::INSERT_WEBHOOK)
            .bind(&w.webhook_id)
            .bind(&w.url)
            .bind(join_list(&w.event_kinds))
            .bind(join_list(&w.account_ids))
            .bind(&w.secret)
            .bind(w.created_at_ms)
            .bind(w.last_success_at_ms)
            .bind(w.last_failure_at_ms)
            .bind(&w.last_error)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if sqlstate(&e).as_deref() == Some(UNIQUE_VIOLATION) {
                    StoreError::Duplicate {
                        what: "webhook",
                        id: w.webhook_id.clone(),
                    }
                } else {
                    db(e)
                }
            })?;
        Ok(())
    }

    async fn webhooks(&self, limit: usize) -> Result<Vec<WebhookRow>, StoreError> {
        read_webhooks(&self.pool, limit).await
    }

    async fn delete_webhook(&self, webhook_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query(sql::DELETE_DELIVERIES_OF)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let n = sqlx::query(sql::DELETE_WEBHOOK)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(n > 0)
    }

    async fn enqueue_events(
        &self,
        events: Vec<QueuedEvent>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let conn = tx.acquire().await.map_err(db)?;
        let hooks = read_webhooks(&mut *conn, usize::MAX).await?;
        let mut queued = 0;
        for e in &events {
            let new = sqlx::query(sql::INSERT_EVENT)
                .bind(&e.event_id)
                .bind(&e.account_id)
                .bind(&e.kind)
                .bind(&e.payload)
                .bind(e.at_ms)
                .bind(e.ordinal)
                .execute(&mut *conn)
                .await
                .map_err(db)?
                .rows_affected();
            if new == 0 {
                continue;
            }
            for w in hooks.iter().filter(|w| w.wants(&e.kind, &e.account_id)) {
                queued += sqlx::query(sql::INSERT_DELIVERY)
                    .bind(&w.webhook_id)
                    .bind(&e.event_id)
                    .bind(&e.account_id)
                    .bind(e.at_ms)
                    .bind(e.ordinal)
                    .bind(now_ms)
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?
                    .rows_affected();
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(queued)
    }

    async fn due_deliveries(
        &self,
        now_ms: i64,
        limit_n: usize,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query(sql::DUE_DELIVERIES)
            .bind(now_ms)
            .bind(limit(limit_n))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryRow {
                    webhook_id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    account_id: r.try_get(2)?,
                    payload: r.try_get(3)?,
                    at_ms: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)
    }

    async fn claim_delivery(
        &self,
        webhook_id: &str,
        event_id: &str,
        worker: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(sql::CLAIM)
            .bind(webhook_id)
            .bind(event_id)
            .bind(worker)
            .bind(now_ms)
            .bind(until_ms)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        Ok(n == 1)
    }

    async fn finish_delivery(
        &self,
        webhook_id: &str,
        event_id: &str,
        worker: &str,
        attempt: Attempt,
    ) -> Result<bool, StoreError> {
        let (state, next, done) = outcome(&attempt);
        let mut tx = self.pool.begin().await.map_err(db)?;
        let n = sqlx::query(sql::FINISH)
            .bind(webhook_id)
            .bind(event_id)
            .bind(worker)
            .bind(state)
            .bind(next)
            .bind(done)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if n == 1 {
            let mark = match &attempt {
                Attempt::Delivered { at_ms } => {
                    sqlx::query(sql::MARK_SUCCESS).bind(webhook_id).bind(*at_ms)
                }
                Attempt::Retry { at_ms, error, .. } | Attempt::Failed { at_ms, error } => {
                    sqlx::query(sql::MARK_FAILURE)
                        .bind(webhook_id)
                        .bind(*at_ms)
                        .bind(sql::short_error(error))
                }
            };
            mark.execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(n == 1)
    }

    async fn webhook_queues(&self) -> Result<Vec<QueueStats>, StoreError> {
        let rows = sqlx::query(sql::QUEUES)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                Ok(QueueStats {
                    webhook_id: r.try_get(0)?,
                    pending: u64::try_from(r.try_get::<i64, _>(1)?).unwrap_or(0),
                    oldest_at_ms: r.try_get(2)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)
    }

    async fn prune_webhooks(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let a = sqlx::query(sql::PRUNE_DELIVERIES)
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        let b = sqlx::query(sql::PRUNE_EVENTS)
            .bind(before_ms)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        tx.commit().await.map_err(db)?;
        Ok(a + b)
    }
}
