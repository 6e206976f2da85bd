//! The ledger store on SQLite: the embedded default of `quotad serve`, one file in the data
//! directory, no server to run. Calls run on tokio's blocking pool; one connection in WAL
//! mode with `synchronous = FULL`, so an acknowledged admin change survives power loss.
//!
//! Layout, as for `postgres`: `migrations` (the schema), `reads`, `writes` (row by row with
//! statements compiled once, a batch in one transaction: SQLite has one writer and no
//! round trips to save, so what a batch shares is the WAL sync); row decoding is shared
//! with the PostgreSQL store (`store::rows`). This file: opening, the blocking-pool bridge
//! and the `LedgerStore` impl that hands each call to them.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::Connection;

use super::StatementEntry;
use super::store::{
    AccessRow, AccountState, ChangeSet, LedgerStore, PurchaseRecord, StoreError, TokenRow,
    TopUpRecord,
};
use crate::billing::{Grant, Money};

mod migrations;
mod reads;
mod webhooks;
mod writes;

/// Grant columns in the order reads and writes list them.
const GRANT_COLUMNS: &str = "grant_id, kind, covers, unit, quota, remaining, starts_at_ms, \
                             expires_at_ms, source, stackable, created_at_ms";

/// Compiled statements the connection keeps for reuse: more than the distinct statements
/// a Sync round runs (loads, usage and deduction inserts, the per-account writes), so that
/// none of them is compiled again for every account of a round.
const STATEMENT_CACHE_CAPACITY: usize = 64;

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

impl SqliteStore {
    /// Opens (creating if needed) the ledger database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        // SQLite says only "unable to open database file"; opening it first gets the
        // operating system's reason (read-only file system, permission, missing directory).
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| StoreError::Database(format!("{}: {e}", path.display())))?;
        let in_path = |e: rusqlite::Error| StoreError::Database(format!("{}: {e}", path.display()));
        let mut conn = Connection::open(path).map_err(in_path)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        migrations::migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Database("ledger connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Database(format!("ledger task failed: {e}")))?
    }
}

fn dup<'a>(what: &'static str, id: &'a str) -> impl FnOnce(rusqlite::Error) -> StoreError + 'a {
    move |e| {
        if is_unique_violation(&e) {
            StoreError::Duplicate {
                what,
                id: id.to_owned(),
            }
        } else {
            db(e)
        }
    }
}

#[async_trait]
impl LedgerStore for SqliteStore {
    /// One connection, idle unless a call holds it.
    fn pool(&self) -> Option<crate::ledger::store::PoolStats> {
        let idle = usize::from(self.conn.try_lock().is_ok());
        Some(crate::ledger::store::PoolStats {
            size: 1,
            idle,
            max: 1,
        })
    }

    async fn create_account(
        &self,
        account_id: &str,
        balance: Money,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = account_id.to_owned();
        self.with(move |c| writes::create_account(c, &id, balance, now_ms))
            .await
    }

    async fn load(
        &self,
        account_id: &str,
        sidecar_id: &str,
    ) -> Result<Option<AccountState>, StoreError> {
        let id = account_id.to_owned();
        let sidecar = sidecar_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            let state = reads::load_state(&tx, id, &sidecar)?;
            tx.commit().map_err(db)?;
            Ok(state)
        })
        .await
    }

    async fn commit(
        &self,
        account_id: &str,
        expected_version: i64,
        changes: ChangeSet,
    ) -> Result<(), StoreError> {
        let id = account_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            writes::write_changes(&tx, &id, expected_version, &changes)?;
            tx.commit().map_err(db)
        })
        .await
    }

    /// One read transaction for the whole batch (one snapshot, one trip to the blocking
    /// pool).
    async fn load_many(
        &self,
        account_ids: &[String],
        sidecar_id: &str,
    ) -> Result<Vec<AccountState>, StoreError> {
        if account_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = account_ids.to_vec();
        let sidecar = sidecar_id.to_owned();
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(reads::load_state(&tx, id, &sidecar)?);
            }
            tx.commit().map_err(db)?;
            Ok(out)
        })
        .await
    }

    /// One transaction for the whole batch (see `writes::commit_many`).
    async fn commit_many(
        &self,
        commits: Vec<(String, i64, ChangeSet)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        self.with(move |c| writes::commit_many(c, &commits)).await
    }

    async fn find_topup(&self, topup_id: &str) -> Result<Option<TopUpRecord>, StoreError> {
        let id = topup_id.to_owned();
        self.with(move |c| reads::find_topup(c, &id)).await
    }

    async fn find_purchase(
        &self,
        purchase_id: &str,
    ) -> Result<Option<(PurchaseRecord, Vec<Grant>)>, StoreError> {
        let id = purchase_id.to_owned();
        self.with(move |c| reads::find_purchase(c, &id)).await
    }

    async fn find_grant(&self, grant_id: &str) -> Result<Option<(String, Grant)>, StoreError> {
        let id = grant_id.to_owned();
        self.with(move |c| reads::find_grant(c, &id)).await
    }

    async fn known_usage(&self, usage_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let ids = usage_ids.to_vec();
        self.with(move |c| reads::known_usage(c, ids)).await
    }

    /// A lookup here is a probe of the usage table's primary key per record, the same
    /// probe its insert makes (and fails on, alone in the account's savepoint): a round
    /// writes first and looks only when an account met an applied id.
    fn known_usage_first(&self) -> bool {
        false
    }

    async fn leased_accounts(
        &self,
        sidecar_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let id = sidecar_id.to_owned();
        self.with(move |c| reads::leased_accounts(c, &id, limit))
            .await
    }

    async fn recalls(&self, sidecar_id: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let id = sidecar_id.to_owned();
        self.with(move |c| reads::recalls(c, &id, limit)).await
    }

    async fn statement(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<(Vec<StatementEntry>, bool), StoreError> {
        let id = account_id.to_owned();
        self.with(move |c| reads::statement_of(c, &id, limit)).await
    }

    async fn insert_token(&self, t: TokenRow) -> Result<(), StoreError> {
        self.with(move |c| writes::insert_token(c, &t)).await
    }

    async fn token_by_hash(&self, token_sha256: &str) -> Result<Option<TokenRow>, StoreError> {
        let h = token_sha256.to_owned();
        self.with(move |c| reads::token_by_hash(c, &h)).await
    }

    async fn revoke_token(&self, token_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = token_id.to_owned();
        self.with(move |c| writes::revoke_token(c, &id, now_ms))
            .await
    }

    async fn has_operator_token(&self) -> Result<bool, StoreError> {
        self.with(|c| reads::has_operator_token(c)).await
    }

    async fn grant_access(
        &self,
        account_id: &str,
        sub_user: &str,
        perms: u8,
    ) -> Result<u8, StoreError> {
        let (a, u) = (account_id.to_owned(), sub_user.to_owned());
        self.with(move |c| writes::grant_access(c, &a, &u, perms))
            .await
    }

    async fn revoke_access(
        &self,
        account_id: &str,
        sub_user: &str,
        perms: u8,
    ) -> Result<u8, StoreError> {
        let (a, u) = (account_id.to_owned(), sub_user.to_owned());
        self.with(move |c| writes::revoke_access(c, &a, &u, perms))
            .await
    }

    async fn access_of(
        &self,
        sub_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, u8)>, StoreError> {
        let u = sub_user.to_owned();
        self.with(move |c| reads::access_of(c, &u, limit)).await
    }

    async fn has_sub_user(&self, name: &str) -> Result<bool, StoreError> {
        let n = name.to_owned();
        self.with(move |c| reads::has_sub_user(c, &n)).await
    }

    async fn list_accounts(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let a = after.to_owned();
        self.with(move |c| reads::list_accounts(c, &a, limit)).await
    }

    async fn list_tokens(&self, after: &str, limit: usize) -> Result<Vec<TokenRow>, StoreError> {
        let a = after.to_owned();
        self.with(move |c| reads::list_tokens(c, &a, limit)).await
    }

    async fn list_access(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<Vec<AccessRow>, StoreError> {
        let a = account_id.to_owned();
        self.with(move |c| reads::list_access(c, &a, limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger file of the schema before grants kept `created_at_ms`: the migration takes
    /// a purchase's grants as recorded with the purchase, a credit's as of its start.
    #[tokio::test]
    async fn grants_recorded_before_created_at_get_their_purchase_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.db");
        {
            let mut c = Connection::open(&path).unwrap();
            let tx = c.transaction().unwrap();
            for m in &migrations::MIGRATIONS[..5] {
                tx.execute_batch(m).unwrap();
            }
            tx.pragma_update(None, "user_version", 5i64).unwrap();
            tx.execute_batch(
                "INSERT INTO accounts VALUES ('acme', 1, '0', 0);
                 INSERT INTO purchases VALUES ('imp', 'acme', 'plan.compute.500', '450', 100, 900, 0);
                 INSERT INTO grants VALUES ('imp/1', 'acme', 'PLAN', 3, 'money', '500', '500',
                     100, 5000, 'plan.compute.500', 1, 'imp');
                 INSERT INTO grants VALUES ('c1', 'acme', 'COUPON', 3, 'money', '5', '5',
                     300, 5000, 'coupon', 1, NULL);",
            )
            .unwrap();
            tx.commit().unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        let st = s.load("acme", "x").await.unwrap().unwrap();
        let got: Vec<(&str, i64, i64)> = st
            .grants
            .iter()
            .map(|g| (g.grant_id.as_str(), g.starts_at_ms, g.created_at_ms))
            .collect();
        assert_eq!(got, vec![("c1", 300, 300), ("imp/1", 100, 900)]);
    }
}
