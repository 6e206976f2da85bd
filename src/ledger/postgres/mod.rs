//! The ledger store on PostgreSQL: the shared store of `quotad ledger`, for many sidecars
//! and several ledger processes over one database. Same schema and semantics as
//! `ledger::sqlite`, but money is NUMERIC (exact), times BIGINT milliseconds, flags BOOLEAN.
//!
//! The SQL is kept portable to the distributed PostgreSQL-compatible engines (CockroachDB,
//! YugabyteDB), so the ledger can move to one of them when one PostgreSQL is outgrown.
//! Deliberately avoided, and why:
//! - advisory locks (`pg_advisory_lock`): CockroachDB has none. Migrations are serialised by
//!   the primary key of `quotad_migrations` instead, accounts by their `version` column.
//! - `SELECT ... FOR UPDATE`: row locks behave differently on each engine (best effort under
//!   CockroachDB's serializable default) and would make a slow ledger block the others;
//!   concurrency control is optimistic (`UPDATE ... WHERE version = $n`, Conflict, retry).
//! - stored procedures, triggers, LISTEN/NOTIFY: absent, or recent and partial, on
//!   CockroachDB, and not needed: every rule lives in Rust, above the store.
//! - SERIAL and sequences: CockroachDB's SERIAL is `unique_rowid()`, neither dense nor in
//!   commit order, and a sequence is a hot spot across nodes; every key here is a natural
//!   id chosen by the caller.
//! - NUMERIC over the wire: the crate's sqlx has no decimal codec, and a text round trip is
//!   exact on every engine: values are written as `$n::numeric` from text and read back as
//!   `col::text`.
//!
//! What is used is plain: `INSERT ... ON CONFLICT`, `UPDATE ... FROM`, multi-argument
//! `UNNEST` for set-based writes (one statement per table per commit, however many usage
//! records), `= ANY($1)` lookups, `ARRAY(subquery)`, `GREATEST`. Serialization failures
//! (SQLSTATE 40001, what the serializable engines return under contention) become
//! `StoreError::Conflict`, so the ledger reloads and retries exactly as after a version
//! mismatch.
//!
//! Layout: `migrations` (the schema and how several starters agree on it), `reads` (one
//! statement per account load), `writes` (the set-based commit), `unnest` (the column
//! builder those writes share). This file: connecting, the error mapping, and the
//! `LedgerStore` impl that hands each call to them.

mod migrations;
mod reads;
mod unnest;
mod webhooks;
mod writes;

use std::collections::HashSet;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

pub use migrations::SCHEMA_VERSION;

use super::StatementEntry;
use super::store::rows::permissions;
use super::store::{
    AccessRow, AccountState, ChangeSet, LedgerStore, PurchaseRecord, StoreError, TokenRow,
    TopUpRecord,
};
use crate::billing::{Grant, Money};
use migrations::migrate;

/// Default most connections one ledger process keeps to PostgreSQL. A commit holds one
/// connection for a few round trips, so 16 keep a few thousand commits per second in flight
/// while leaving room under PostgreSQL's default `max_connections` (100) for several ledger
/// processes and operators.
pub const DEFAULT_PG_POOL_MAX: u32 = 16;

/// Longest wait for the first connection at start, and for a pooled connection afterwards.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLSTATE of a unique violation.
const UNIQUE_VIOLATION: &str = "23505";
/// SQLSTATE of a serialization failure (the retry error of the serializable engines).
const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a detected deadlock: the transaction was rolled back and may be retried.
const DEADLOCK_DETECTED: &str = "40P01";
/// SQLSTATE of creating a table that exists (a concurrent starter won the race).
const DUPLICATE_TABLE: &str = "42P07";
/// SQLSTATE of creating an object whose name is taken: PostgreSQL's `type "t" already
/// exists` when a concurrent `CREATE TABLE IF NOT EXISTS t` committed the table's row type
/// between this statement's existence check and its own insertion.
const DUPLICATE_OBJECT: &str = "42710";

pub struct PgStore {
    pool: PgPool,
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    sqlstate(e).as_deref() == Some(UNIQUE_VIOLATION)
}

/// Any database error as a `StoreError`. sqlx's messages carry the server's text, never the
/// connection URL or its password.
fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// A failed statement of a commit on `account_id`: retryable failures become `Conflict`.
fn tx_err(account_id: &str, e: sqlx::Error) -> StoreError {
    match sqlstate(&e).as_deref() {
        Some(SERIALIZATION_FAILURE | DEADLOCK_DETECTED) => {
            StoreError::Conflict(account_id.to_owned())
        }
        _ => db(e),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The password in a connection URL (userinfo or `password=` parameter), raw and
/// percent-decoded, to scrub from error messages.
fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((_, pw)) = userinfo.split_once(':')
    {
        out.push(pw.to_owned());
    }
    if let Some((_, query)) = rest.split_once('?') {
        for kv in query.split('&') {
            if let Some(pw) = kv.strip_prefix("password=") {
                out.push(pw.to_owned());
            }
        }
    }
    let decoded: Vec<String> = out.iter().map(|s| percent_decode(s)).collect();
    out.extend(decoded);
    out.retain(|s| !s.is_empty());
    out
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn scrub(mut msg: String, secrets: &[String]) -> String {
    for s in secrets {
        msg = msg.replace(s.as_str(), "****");
    }
    msg
}

impl PgStore {
    /// Connects to the PostgreSQL database at `url` (a `postgres://` URL) with at most
    /// `pool_max` pooled connections, and applies the embedded migrations that are missing.
    /// Several ledger processes may start at once against one database: each migration is
    /// applied in a transaction that first inserts its row in `quotad_migrations`, so one
    /// starter applies it and the others wait on that row's primary key, then see it done.
    pub async fn connect(url: &str, pool_max: u32) -> Result<PgStore, StoreError> {
        let secrets = url_secrets(url);
        let opts = PgConnectOptions::from_str(url).map_err(|e| {
            StoreError::Database(scrub(format!("invalid PostgreSQL URL: {e}"), &secrets))
        })?;
        let target = format!(
            "PostgreSQL database {:?} on {}:{} as user {:?}",
            opts.get_database().unwrap_or(opts.get_username()),
            opts.get_host(),
            opts.get_port(),
            opts.get_username(),
        );
        let fail = |what: &str, e: String| {
            StoreError::Database(scrub(format!("{what} {target}: {e}"), &secrets))
        };
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&opts))
            .await
            .map_err(|_| {
                fail(
                    "cannot connect to",
                    format!("no answer in {} s", CONNECT_TIMEOUT.as_secs()),
                )
            })?
            .map_err(|e| fail("cannot connect to", e.to_string()))?;
        let migrated = migrate(&mut conn).await;
        let _ = conn.close().await;
        migrated.map_err(|e| match e {
            StoreError::Database(m) => fail("cannot migrate", m),
            other => other,
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_max.max(1))
            .acquire_timeout(CONNECT_TIMEOUT)
            // sqlx already pings a connection when it goes back to the pool (and drops it if
            // that fails); a second ping on every acquire would add a round trip to every
            // load and commit.
            .test_before_acquire(false)
            .connect_lazy_with(opts);
        Ok(PgStore { pool })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl LedgerStore for PgStore {
    fn pool(&self) -> Option<crate::ledger::store::PoolStats> {
        Some(crate::ledger::store::PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle(),
            max: self.pool.options().get_max_connections(),
        })
    }

    async fn create_account(
        &self,
        account_id: &str,
        balance: Money,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        writes::create_account(&self.pool, account_id, &balance.to_string(), now_ms).await
    }

    async fn load(
        &self,
        account_id: &str,
        sidecar_id: &str,
    ) -> Result<Option<AccountState>, StoreError> {
        reads::load(&self.pool, account_id, sidecar_id).await
    }

    async fn commit(
        &self,
        account_id: &str,
        expected_version: i64,
        changes: ChangeSet,
    ) -> Result<(), StoreError> {
        writes::commit(&self.pool, account_id, expected_version, &changes).await
    }

    async fn find_topup(&self, topup_id: &str) -> Result<Option<TopUpRecord>, StoreError> {
        reads::find_topup(&self.pool, topup_id).await
    }

    async fn find_purchase(
        &self,
        purchase_id: &str,
    ) -> Result<Option<(PurchaseRecord, Vec<Grant>)>, StoreError> {
        reads::find_purchase(&self.pool, purchase_id).await
    }

    async fn find_grant(&self, grant_id: &str) -> Result<Option<(String, Grant)>, StoreError> {
        reads::find_grant(&self.pool, grant_id).await
    }

    /// One statement for the whole batch (see `reads::load_many`).
    async fn load_many(
        &self,
        account_ids: &[String],
        sidecar_id: &str,
    ) -> Result<Vec<AccountState>, StoreError> {
        reads::load_many(&self.pool, account_ids, sidecar_id).await
    }

    /// One statement, the leases summed in the database (see `reads::load_views`).
    async fn load_views(
        &self,
        account_ids: &[String],
        sidecar_id: &str,
        expired_before_ms: i64,
    ) -> Result<Vec<(AccountState, Money)>, StoreError> {
        reads::load_views(&self.pool, account_ids, sidecar_id, expired_before_ms).await
    }

    /// One transaction of set-based statements (see `writes::commit_many`).
    async fn commit_many(
        &self,
        commits: Vec<(String, i64, ChangeSet)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        writes::commit_many(&self.pool, &commits).await
    }

    async fn known_usage(&self, usage_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        reads::known_usage(&self.pool, usage_ids).await
    }

    async fn leased_accounts(
        &self,
        sidecar_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        reads::leases_where(&self.pool, sidecar_id, "remaining > 0", limit).await
    }

    async fn recalls(&self, sidecar_id: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        reads::leases_where(&self.pool, sidecar_id, "give_back", limit).await
    }

    async fn statement(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<(Vec<StatementEntry>, bool), StoreError> {
        reads::statement(&self.pool, account_id, limit).await
    }

    async fn insert_token(&self, token: TokenRow) -> Result<(), StoreError> {
        writes::insert_token(&self.pool, &token).await
    }

    async fn token_by_hash(&self, token_sha256: &str) -> Result<Option<TokenRow>, StoreError> {
        reads::token_by_hash(&self.pool, token_sha256).await
    }

    async fn revoke_token(&self, token_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        writes::revoke_token(&self.pool, token_id, now_ms).await
    }

    async fn has_operator_token(&self) -> Result<bool, StoreError> {
        reads::has_operator_token(&self.pool).await
    }

    async fn grant_access(
        &self,
        account_id: &str,
        sub_user: &str,
        perms: u8,
    ) -> Result<u8, StoreError> {
        let held = writes::grant_access(&self.pool, account_id, sub_user, perms).await?;
        permissions(i64::from(held))
    }

    async fn revoke_access(
        &self,
        account_id: &str,
        sub_user: &str,
        perms: u8,
    ) -> Result<u8, StoreError> {
        match writes::revoke_access(&self.pool, account_id, sub_user, perms).await? {
            Some(left) => permissions(i64::from(left)),
            None => Ok(0),
        }
    }

    async fn access_of(
        &self,
        sub_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, u8)>, StoreError> {
        reads::access_of(&self.pool, sub_user, limit).await
    }

    async fn has_sub_user(&self, name: &str) -> Result<bool, StoreError> {
        reads::has_sub_user(&self.pool, name).await
    }

    async fn list_accounts(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        reads::list_accounts(&self.pool, after, limit).await
    }

    async fn list_tokens(&self, after: &str, limit: usize) -> Result<Vec<TokenRow>, StoreError> {
        reads::list_tokens(&self.pool, after, limit).await
    }

    async fn list_access(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<Vec<AccessRow>, StoreError> {
        reads::list_access(&self.pool, account_id, limit).await
    }
}
