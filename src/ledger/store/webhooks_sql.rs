//! The outbox's SQL, the same text for both stores (SQLite takes `$n` parameters too):
//! kept in one place so the dialects cannot drift apart.

pub const WEBHOOK_COLUMNS: &str = "webhook_id, url, event_kinds, account_ids, secret, \
     created_at_ms, last_success_at_ms, last_failure_at_ms, last_error";

pub const INSERT_WEBHOOK: &str = "INSERT INTO webhooks (webhook_id, url, event_kinds, \
     account_ids, secret, created_at_ms, last_success_at_ms, last_failure_at_ms, last_error) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

pub const DELETE_DELIVERIES_OF: &str = "DELETE FROM webhook_deliveries WHERE webhook_id = $1";
pub const DELETE_WEBHOOK: &str = "DELETE FROM webhooks WHERE webhook_id = $1";

pub const INSERT_EVENT: &str = "INSERT INTO webhook_events (event_id, account_id, kind, \
     payload, at_ms, ordinal) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING";

pub const INSERT_DELIVERY: &str = "INSERT INTO webhook_deliveries (webhook_id, event_id, \
     account_id, at_ms, ordinal, state, attempts, next_attempt_at_ms) \
     VALUES ($1, $2, $3, $4, $5, 0, 0, $6) ON CONFLICT (webhook_id, event_id) DO NOTHING";

/// Heads of the (endpoint, account) queues that are due and unclaimed: `$1` now, `$2`
/// limit. No row-value comparisons (portable), no locks.
pub const DUE_DELIVERIES: &str = "SELECT d.webhook_id, d.event_id, d.account_id, e.payload, \
     d.at_ms, d.attempts FROM webhook_deliveries d \
     JOIN webhook_events e ON e.event_id = d.event_id \
     WHERE d.state = 0 AND d.next_attempt_at_ms <= $1 AND d.claimed_until_ms <= $1 \
     AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.state = 0 \
       AND p.webhook_id = d.webhook_id AND p.account_id = d.account_id \
       AND (p.at_ms < d.at_ms OR (p.at_ms = d.at_ms AND (p.ordinal < d.ordinal \
         OR (p.ordinal = d.ordinal AND p.event_id < d.event_id))))) \
     ORDER BY d.next_attempt_at_ms, d.at_ms, d.ordinal LIMIT $2";

/// `$1` endpoint, `$2` event, `$3` worker, `$4` now, `$5` claimed until.
pub const CLAIM: &str = "UPDATE webhook_deliveries SET claimed_by = $3, claimed_until_ms = $5 \
     WHERE webhook_id = $1 AND event_id = $2 AND state = 0 AND claimed_until_ms <= $4";

/// `$1` endpoint, `$2` event, `$3` worker, `$4` state, `$5` next attempt, `$6` finished at.
pub const FINISH: &str = "UPDATE webhook_deliveries SET state = $4, attempts = attempts + 1, \
     next_attempt_at_ms = $5, finished_at_ms = $6, claimed_by = '', claimed_until_ms = 0 \
     WHERE webhook_id = $1 AND event_id = $2 AND claimed_by = $3 AND state = 0";

pub const MARK_SUCCESS: &str = "UPDATE webhooks SET last_success_at_ms = $2 WHERE webhook_id = $1";
pub const MARK_FAILURE: &str =
    "UPDATE webhooks SET last_failure_at_ms = $2, last_error = $3 WHERE webhook_id = $1";

pub const QUEUES: &str = "SELECT webhook_id, COUNT(*), MIN(at_ms) FROM webhook_deliveries \
     WHERE state = 0 GROUP BY webhook_id ORDER BY webhook_id";

pub const PRUNE_DELIVERIES: &str =
    "DELETE FROM webhook_deliveries WHERE state <> 0 AND finished_at_ms < $1";
pub const PRUNE_EVENTS: &str = "DELETE FROM webhook_events WHERE at_ms < $1 AND NOT EXISTS \
     (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.event_id)";

/// Longest error text kept per endpoint.
pub const LAST_ERROR_MAX: usize = 512;

/// `e` cut to `LAST_ERROR_MAX` bytes at a character boundary.
pub fn short_error(e: &str) -> String {
    let mut end = e.len().min(LAST_ERROR_MAX);
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    e[..end].to_owned()
}
