//! The schema of the PostgreSQL store and how it is brought up to date, safely when
//! several ledger processes start at once against one database (no advisory locks: each
//! migration claims its version row under a primary key, in the transaction that applies
//! it).

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::{
    DEADLOCK_DETECTED, DUPLICATE_OBJECT, DUPLICATE_TABLE, SERIALIZATION_FAILURE, UNIQUE_VIOLATION,
    now_ms, sqlstate,
};
use crate::ledger::store::StoreError;

/// Default most attempts at one migration step (creating `quotad_migrations`, or applying
/// one version) that lost a race to another ledger process starting at the same moment.
/// A lost race costs one attempt and is settled as soon as the winner commits, so a step
/// needs one or two attempts in practice; after this many the start fails with an error
/// naming the step.
const DEFAULT_MIGRATION_ATTEMPTS: u32 = 16;

/// Default pause after a lost migration race, multiplied by the attempt number (10 ms,
/// 20 ms, ...: at most about 1.2 s in all over `DEFAULT_MIGRATION_ATTEMPTS`). It lets the
/// winner's transaction end before this process looks again at what is applied.
const DEFAULT_MIGRATION_BACKOFF: Duration = Duration::from_millis(10);

/// Schema, applied in order; migration `i` (from 0) is recorded as version `i + 1` in
/// `quotad_migrations`. The same tables as the SQLite store's, with NUMERIC money. Small
/// integers are INT4, not INTEGER, which CockroachDB makes 64-bit. Statements are run one
/// at a time, split at `;`, so none may contain one.
///
/// One difference in constraints: `usage.account_id` and `usage_deductions.usage_id` carry
/// no FOREIGN KEY here. Those are the two tables written per usage record, and a foreign
/// key is checked row by row (a trigger per row on PostgreSQL, a lookup per row on the
/// distributed engines): measured, the two checks halve the rate at which `commit` ingests
/// usage. Both hold by construction: usage rows are inserted only by `write_batch`, in the
/// transaction whose first statement updated (so locked) their account's row; deductions
/// only in that same transaction, right after their usage rows; and nothing is deleted.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    account_id    TEXT PRIMARY KEY,
    version       BIGINT NOT NULL,
    balance       NUMERIC NOT NULL,
    created_at_ms BIGINT NOT NULL
);
CREATE TABLE grants (
    grant_id      TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts(account_id),
    kind          TEXT NOT NULL,
    covers        INT4 NOT NULL,
    unit          TEXT NOT NULL,
    quota         NUMERIC NOT NULL,
    remaining     NUMERIC NOT NULL,
    starts_at_ms  BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    source        TEXT NOT NULL,
    stackable     BOOLEAN NOT NULL,
    purchase_id   TEXT
);
CREATE INDEX grants_by_account ON grants(account_id);
CREATE INDEX grants_by_purchase ON grants(purchase_id);
CREATE TABLE topups (
    topup_id   TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(account_id),
    amount     NUMERIC NOT NULL,
    at_ms      BIGINT NOT NULL
);
CREATE TABLE purchases (
    purchase_id      TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts(account_id),
    sku              TEXT NOT NULL,
    price_paid       NUMERIC NOT NULL,
    effective_at_ms  BIGINT NOT NULL,
    at_ms            BIGINT NOT NULL,
    once_per_account BOOLEAN NOT NULL
);
CREATE INDEX purchases_by_account ON purchases(account_id);
CREATE TABLE usage (
    usage_id   TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    resource   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    quantity   BIGINT NOT NULL,
    cost       NUMERIC NOT NULL,
    at_ms      BIGINT NOT NULL,
    sidecar_id TEXT NOT NULL,
    seq        BIGINT NOT NULL
);
CREATE INDEX usage_by_account ON usage(account_id, at_ms);
CREATE TABLE usage_deductions (
    usage_id TEXT NOT NULL,
    ordinal  INT4 NOT NULL,
    source   TEXT NOT NULL,
    amount   NUMERIC NOT NULL,
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
    remaining     NUMERIC NOT NULL,
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
    permissions INT4 NOT NULL,
    PRIMARY KEY (account_id, sub_user)
);
CREATE INDEX auth_access_by_sub_user ON auth_access(sub_user);
"#,
    r#"
ALTER TABLE leases ADD COLUMN held NUMERIC NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN want NUMERIC NOT NULL DEFAULT 0;
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
ALTER TABLE usage_deductions ADD COLUMN gb NUMERIC;
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
    state              INT4 NOT NULL,
    attempts           BIGINT NOT NULL,
    next_attempt_at_ms BIGINT NOT NULL,
    claimed_by         TEXT NOT NULL DEFAULT '',
    claimed_until_ms   BIGINT NOT NULL DEFAULT 0,
    finished_at_ms     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_queue
    ON webhook_deliveries(state, webhook_id, account_id, at_ms, ordinal)
"#,
];

/// The schema version this build migrates to (the number of migrations).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Whether `e` is what a migration step gets when another ledger process ran the same step
/// at the same moment: the step is to be looked at again, not reported. PostgreSQL's
/// `CREATE TABLE IF NOT EXISTS` is not atomic against itself: the loser of two concurrent
/// ones fails with a unique violation on the catalog (`pg_type_typname_nsp_index`,
/// `pg_class_relname_nsp_index`), `duplicate_table` or `duplicate_object` (`type ...
/// already exists`); the serializable engines answer a conflicting claim with a
/// serialization failure.
fn lost_migration_race(e: &sqlx::Error) -> bool {
    matches!(
        sqlstate(e).as_deref(),
        Some(
            UNIQUE_VIOLATION
                | DUPLICATE_TABLE
                | DUPLICATE_OBJECT
                | SERIALIZATION_FAILURE
                | DEADLOCK_DETECTED
        )
    )
}

/// The pause before attempt `attempt + 1` of a migration step that lost a race.
fn migration_backoff(attempt: u32) -> Duration {
    DEFAULT_MIGRATION_BACKOFF * attempt
}

/// Applies the migrations not yet recorded in `quotad_migrations`, in order.
///
/// Safe against other ledger processes doing the same at the same moment, without advisory
/// locks or row locks: each migration runs in one transaction that first claims its version
/// (`INSERT ... ON CONFLICT DO NOTHING` on the primary key), then runs its statements, and
/// commits both together. A concurrent claimer of the same version waits on that key until
/// the first transaction ends; if it committed, the claim inserts nothing and the version
/// is done (never half done: its row and its schema became visible in one commit); if it
/// rolled back, the claim goes through and this process applies the migration. A step that
/// fails because of another starter anyway (see `lost_migration_race`) is rolled back and
/// tried again, after a pause and a fresh look at the applied versions, at most
/// `DEFAULT_MIGRATION_ATTEMPTS` times.
pub(super) async fn migrate(conn: &mut PgConnection) -> Result<(), StoreError> {
    create_migrations_table(conn).await?;
    let mut applied = applied_migrations(conn).await?;
    for (version, statements) in (1_i64..).zip(MIGRATIONS) {
        let mut attempt = 1;
        while !applied.contains(&version) {
            match apply_migration(conn, version, statements).await {
                Ok(true) => {
                    tracing::info!(version, "ledger schema migration applied");
                    break;
                }
                // Another starter committed this version first.
                Ok(false) => break,
                Err(e) if lost_migration_race(&e) && attempt < DEFAULT_MIGRATION_ATTEMPTS => {
                    tracing::debug!(version, attempt, error = %e, "ledger schema migration raced");
                    tokio::time::sleep(migration_backoff(attempt)).await;
                    attempt += 1;
                    applied = applied_migrations(conn).await?;
                }
                Err(e) if lost_migration_race(&e) => {
                    return Err(StoreError::Database(format!(
                        "ledger schema migration {version} is still not applied after \
                         {attempt} attempts that conflicted with other ledger processes \
                         starting at the same time; last error: {e}"
                    )));
                }
                Err(e) => {
                    return Err(StoreError::Database(format!(
                        "ledger schema migration {version} failed: {e}"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Creates `quotad_migrations` if it is missing, retrying when a concurrent starter's
/// `CREATE TABLE IF NOT EXISTS` collides with this one's.
async fn create_migrations_table(conn: &mut PgConnection) -> Result<(), StoreError> {
    let mut attempt = 1;
    loop {
        let created = sqlx::query(
            "CREATE TABLE IF NOT EXISTS quotad_migrations (\
             version INT PRIMARY KEY, applied_at_ms BIGINT NOT NULL)",
        )
        .execute(&mut *conn)
        .await;
        match created {
            Ok(_) => return Ok(()),
            Err(e) if lost_migration_race(&e) && attempt < DEFAULT_MIGRATION_ATTEMPTS => {
                tracing::debug!(attempt, error = %e, "creating quotad_migrations raced");
                tokio::time::sleep(migration_backoff(attempt)).await;
                attempt += 1;
            }
            Err(e) => {
                return Err(StoreError::Database(format!(
                    "cannot create the table quotad_migrations (attempt {attempt}): {e}"
                )));
            }
        }
    }
}

/// The versions recorded in `quotad_migrations`; `Corrupt` if one is newer than this
/// quotad's migrations (a newer quotad migrated the database).
async fn applied_migrations(conn: &mut PgConnection) -> Result<HashSet<i64>, StoreError> {
    // `version INT` is 32-bit on PostgreSQL and 64-bit on CockroachDB: read it as BIGINT.
    let applied: HashSet<i64> = sqlx::query_scalar("SELECT version::BIGINT FROM quotad_migrations")
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| StoreError::Database(format!("cannot read the applied migrations: {e}")))?
        .into_iter()
        .collect();
    if let Some(&newer) = applied
        .iter()
        .filter(|&&v| !matches!(usize::try_from(v), Ok(v) if v <= MIGRATIONS.len()))
        .max()
    {
        return Err(StoreError::Corrupt(format!(
            "ledger schema version {newer} is newer than this quotad ({})",
            MIGRATIONS.len()
        )));
    }
    Ok(applied)
}

/// Claims `version` and applies its `statements`, in one transaction. `Ok(false)` when
/// another starter had committed the version: nothing was done. On error the transaction
/// is rolled back (when the `Transaction` is dropped, before the connection's next use).
async fn apply_migration(
    conn: &mut PgConnection,
    version: i64,
    statements: &str,
) -> Result<bool, sqlx::Error> {
    let mut tx = conn.begin().await?;
    // The version row first: a concurrent claimer waits on its primary key until this
    // transaction ends, then inserts nothing if it committed.
    let claimed = sqlx::query(
        "INSERT INTO quotad_migrations (version, applied_at_ms) VALUES ($1, $2) \
         ON CONFLICT (version) DO NOTHING",
    )
    .bind(version)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !claimed {
        tx.rollback().await?;
        return Ok(false);
    }
    // One statement at a time: `raw_sql` would take them all at once, but its future is
    // not `Send` for every lifetime, which would keep `connect` out of `tokio::spawn`.
    for statement in statements
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(true)
}
