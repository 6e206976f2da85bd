//! The schema of the SQLite store, applied in order at open; `PRAGMA user_version`
//! records how many migrations ran.

use rusqlite::Connection;

use super::db;
use crate::ledger::store::StoreError;

/// Schema, applied in order; `PRAGMA user_version` records how many ran. Types and SQL are
/// kept to what PostgreSQL accepts as well (TEXT money, BIGINT times, no SQLite-only syntax).
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    account_id    TEXT PRIMARY KEY,
    version       BIGINT NOT NULL,
    balance       TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE grants (
    grant_id      TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(account_id),
    kind          TEXT NOT NULL,
    covers        INTEGER NOT NULL,
    unit          TEXT NOT NULL,
    quota         TEXT NOT NULL,
    remaining     TEXT NOT NULL,
    starts_at_ms  BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    source        TEXT NOT NULL,
    stackable     BOOLEAN NOT NULL,
    purchase_id   TEXT
);
CREATE INDEX grants_by_account ON grants(account_id);
CREATE TABLE topups (
    topup_id   TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    amount     TEXT NOT NULL,
    at_ms      BIGINT NOT NULL
);
CREATE TABLE purchases (
    purchase_id      TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts(account_id),
    sku              TEXT NOT NULL,
    price_paid       TEXT NOT NULL,
    effective_at_ms  BIGINT NOT NULL,
    at_ms            BIGINT NOT NULL,
    once_per_account BOOLEAN NOT NULL
);
CREATE INDEX purchases_by_account ON purchases(account_id);
CREATE TABLE usage (
    usage_id   TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    resource   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    quantity   BIGINT NOT NULL,
    cost       TEXT NOT NULL,
    at_ms      BIGINT NOT NULL,
    sidecar_id TEXT NOT NULL,
    seq        BIGINT NOT NULL
);
CREATE INDEX usage_by_account ON usage(account_id, at_ms);
CREATE TABLE usage_deductions (
    usage_id TEXT NOT NULL REFERENCES usage(usage_id),
    ordinal  INTEGER NOT NULL,
    source   TEXT NOT NULL,
    amount   TEXT NOT NULL,
    PRIMARY KEY (usage_id, ordinal)
);
CREATE TABLE sidecar_cursors (
    sidecar_id  TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    applied_seq BIGINT NOT NULL,
    PRIMARY KEY (sidecar_id, account_id)
);
"#,
    r#"
CREATE TABLE leases (
    account_id    TEXT NOT NULL REFERENCES accounts(account_id),
    sidecar_id    TEXT NOT NULL,
    remaining     TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, sidecar_id)
);
"#,
    r#"
ALTER TABLE leases ADD COLUMN request_seq BIGINT NOT NULL DEFAULT 0;
"#,
    r#"
CREATE TABLE request_counts (
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    resource   TEXT NOT NULL,
    month      BIGINT NOT NULL,
    count      BIGINT NOT NULL,
    PRIMARY KEY (account_id, resource, month)
);
ALTER TABLE usage ADD COLUMN free_quantity BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_deductions ADD COLUMN unit TEXT NOT NULL DEFAULT 'money';
"#,
    r#"
CREATE TABLE auth_tokens (
    token_id      TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL,
    account_id    TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);
CREATE TABLE auth_access (
    account_id  TEXT NOT NULL,
    sub_user    TEXT NOT NULL,
    permissions INTEGER NOT NULL,
    PRIMARY KEY (account_id, sub_user)
);
CREATE INDEX auth_access_by_sub_user ON auth_access(sub_user);
"#,
    r#"
ALTER TABLE leases ADD COLUMN held TEXT NOT NULL DEFAULT '0';
ALTER TABLE leases ADD COLUMN want TEXT NOT NULL DEFAULT '0';
ALTER TABLE leases ADD COLUMN edge BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE leases ADD COLUMN give_back BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX leases_by_sidecar ON leases(sidecar_id);
"#,
    // When each grant was recorded: it pays for usage from then on. A purchase's grants
    // were recorded with the purchase; a credit's when it started.
    r#"
ALTER TABLE grants ADD COLUMN created_at_ms BIGINT NOT NULL DEFAULT 0;
UPDATE grants SET created_at_ms = COALESCE(
    (SELECT p.at_ms FROM purchases p WHERE p.purchase_id = grants.purchase_id),
    starts_at_ms);
"#,
    // Every deduction carries money: a volume plan's row keeps its GB here and the money
    // they stand for in `amount` (rows written before keep the GB in `amount`, NULL here).
    r#"
ALTER TABLE usage_deductions ADD COLUMN gb TEXT;
"#,
    // Webhook endpoints and their delivery outbox (`store::webhooks`).
    r#"
CREATE TABLE webhooks (
    webhook_id         TEXT PRIMARY KEY,
    url                TEXT NOT NULL,
    event_kinds        TEXT NOT NULL,
    account_ids        TEXT NOT NULL,
    secret             TEXT NOT NULL,
    created_at_ms      BIGINT NOT NULL,
    last_success_at_ms BIGINT NOT NULL DEFAULT 0,
    last_failure_at_ms BIGINT NOT NULL DEFAULT 0,
    last_error         TEXT NOT NULL DEFAULT ''
);
CREATE TABLE webhook_events (
    event_id   TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    at_ms      BIGINT NOT NULL,
    ordinal    BIGINT NOT NULL
);
CREATE TABLE webhook_deliveries (
    webhook_id         TEXT NOT NULL,
    event_id           TEXT NOT NULL,
    account_id         TEXT NOT NULL,
    at_ms              BIGINT NOT NULL,
    ordinal            BIGINT NOT NULL,
    state              INTEGER NOT NULL,
    attempts           BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    claimed_by         TEXT NOT NULL DEFAULT '',
    claimed_until_ms   BIGINT NOT NULL DEFAULT 0,
    finished_at_ms     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_queue
    ON webhook_deliveries(state, webhook_id, account_id, at_ms, ordinal);
"#,
];

/// Applies the migrations `user_version` does not count yet, each in a transaction with
/// its new version; `Corrupt` if the file is of a newer quotad.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let applied: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(db)?;
    let applied = match usize::try_from(applied) {
        Ok(n) if n <= MIGRATIONS.len() => n,
        _ => {
            return Err(StoreError::Corrupt(format!(
                "ledger schema version {applied} is newer than this quotad ({})",
                MIGRATIONS.len()
            )));
        }
    };
    for (version, m) in (1_i64..).zip(MIGRATIONS).skip(applied) {
        let tx = conn.transaction().map_err(db)?;
        tx.execute_batch(m).map_err(db)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}
