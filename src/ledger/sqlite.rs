//! The ledger store on SQLite: the embedded default of `quotad serve`, one file in the data
//! directory, no server to run. Calls run on tokio's blocking pool; one connection in WAL
//! mode with `synchronous = FULL`, so an acknowledged admin change survives power loss.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use rust_decimal::Decimal;

use super::StatementEntry;
use super::store::{
    AccountState, ChangeSet, LeaseRow, LedgerStore, PurchaseRecord, StoreError, TokenRow,
    TopUpRecord,
};
use crate::billing::{Grant, GrantKind, GrantUnit, Money, Resource, ResourceSet};

/// Schema, applied in order; `PRAGMA user_version` records how many ran. Types and SQL are
/// kept to what PostgreSQL accepts as well (TEXT money, BIGINT times, no SQLite-only syntax).
const MIGRATIONS: &[&str] = &[
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
];

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn dec(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|_| StoreError::Corrupt(format!("{s:?} is not a decimal")))
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
        let applied: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .map_err(db)? as usize;
        if applied > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "ledger schema version {applied} is newer than this quotad ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(applied) {
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(m).map_err(db)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(db)?;
            tx.commit().map_err(db)?;
        }
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

fn read_grant(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawGrant> {
    Ok(RawGrant {
        grant_id: r.get(0)?,
        kind: r.get(1)?,
        covers: r.get(2)?,
        unit: r.get(3)?,
        quota: r.get(4)?,
        remaining: r.get(5)?,
        starts_at_ms: r.get(6)?,
        expires_at_ms: r.get(7)?,
        source: r.get(8)?,
        stackable: r.get(9)?,
        created_at_ms: r.get(10)?,
    })
}

const GRANT_COLUMNS: &str = "grant_id, kind, covers, unit, quota, remaining, starts_at_ms, \
                             expires_at_ms, source, stackable, created_at_ms";

struct RawGrant {
    grant_id: String,
    kind: String,
    covers: i64,
    unit: String,
    quota: String,
    remaining: String,
    starts_at_ms: i64,
    expires_at_ms: i64,
    source: String,
    stackable: bool,
    created_at_ms: i64,
}

impl RawGrant {
    fn into_grant(self) -> Result<Grant, StoreError> {
        Ok(Grant {
            kind: GrantKind::from_name(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("grant kind {:?}", self.kind)))?,
            covers: ResourceSet::from_bits(self.covers as u8),
            unit: GrantUnit::from_code(&self.unit)
                .ok_or_else(|| StoreError::Corrupt(format!("grant unit {:?}", self.unit)))?,
            quota: dec(&self.quota)?,
            remaining: dec(&self.remaining)?,
            starts_at_ms: self.starts_at_ms,
            expires_at_ms: self.expires_at_ms,
            created_at_ms: self.created_at_ms,
            source: self.source,
            stackable: self.stackable,
            grant_id: self.grant_id,
        })
    }
}

fn grants_where(conn: &Connection, clause: &str, arg: &str) -> Result<Vec<Grant>, StoreError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE {clause} ORDER BY grant_id");
    let mut stmt = conn.prepare_cached(&sql).map_err(db)?;
    let rows = stmt
        .query_map([arg], read_grant)
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    rows.into_iter().map(RawGrant::into_grant).collect()
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

fn write_changes(
    tx: &rusqlite::Transaction<'_>,
    account_id: &str,
    expected_version: i64,
    c: &ChangeSet,
) -> Result<(), StoreError> {
    let n = tx
        .execute(
            "UPDATE accounts SET version = version + 1, balance = ?1 \
             WHERE account_id = ?2 AND version = ?3",
            params![c.balance.to_string(), account_id, expected_version],
        )
        .map_err(db)?;
    if n != 1 {
        return Err(StoreError::Conflict(account_id.to_owned()));
    }
    for (id, remaining) in &c.grant_remaining {
        tx.execute(
            "UPDATE grants SET remaining = ?1 WHERE grant_id = ?2 AND account_id = ?3",
            params![remaining.to_string(), id, account_id],
        )
        .map_err(db)?;
    }
    for (g, purchase_id) in &c.new_grants {
        tx.execute(
            &format!(
                "INSERT INTO grants ({GRANT_COLUMNS}, account_id, purchase_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                g.grant_id,
                g.kind.name(),
                g.covers.bits() as i64,
                g.unit.code(),
                g.quota.to_string(),
                g.remaining.to_string(),
                g.starts_at_ms,
                g.expires_at_ms,
                g.source,
                g.stackable,
                g.created_at_ms,
                account_id,
                purchase_id,
            ],
        )
        .map_err(dup("grant", &g.grant_id))?;
    }
    if let Some(t) = &c.topup {
        tx.execute(
            "INSERT INTO topups (topup_id, account_id, amount, at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![t.topup_id, account_id, t.amount.to_string(), t.at_ms],
        )
        .map_err(dup("topup", &t.topup_id))?;
    }
    if let Some(p) = &c.purchase {
        tx.execute(
            "INSERT INTO purchases (purchase_id, account_id, sku, price_paid, effective_at_ms, \
             at_ms, once_per_account) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                p.purchase_id,
                account_id,
                p.sku,
                p.price_paid.to_string(),
                p.effective_at_ms,
                p.at_ms,
                p.once_per_account
            ],
        )
        .map_err(dup("purchase", &p.purchase_id))?;
    }
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO usage (usage_id, account_id, resource, sku, quantity, cost, at_ms, \
                 sidecar_id, seq, free_quantity) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(db)?;
        let mut ded = tx
            .prepare_cached(
                "INSERT INTO usage_deductions (usage_id, ordinal, source, amount, unit, gb) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db)?;
        for u in &c.usage {
            let r = &u.record;
            ins.execute(params![
                r.usage_id,
                account_id,
                r.resource.name(),
                r.sku,
                r.quantity as i64,
                r.cost.to_string(),
                r.at_ms,
                u.sidecar_id,
                r.seq as i64,
                u.free_quantity as i64
            ])
            .map_err(dup("usage", &r.usage_id))?;
            // In the order taken: one ordinal sequence.
            for (i, d) in u.deductions.iter().enumerate() {
                let (source, amount, unit, gb) = super::store::deduction_row(d);
                ded.execute(params![r.usage_id, i as i64, source, amount, unit, gb])
                    .map_err(db)?;
            }
        }
    }
    for l in &c.leases {
        tx.execute(
            "INSERT INTO leases (account_id, sidecar_id, remaining, expires_at_ms, request_seq, \
             held, want, edge, give_back) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (account_id, sidecar_id) DO UPDATE SET \
             remaining = excluded.remaining, expires_at_ms = excluded.expires_at_ms, \
             request_seq = excluded.request_seq, held = excluded.held, want = excluded.want, \
             edge = excluded.edge, give_back = excluded.give_back",
            params![
                account_id,
                l.sidecar_id,
                l.remaining.to_string(),
                l.expires_at_ms,
                i64::try_from(l.request_seq).unwrap_or(i64::MAX),
                l.held.to_string(),
                l.want.to_string(),
                l.edge,
                l.give_back
            ],
        )
        .map_err(db)?;
    }
    for (resource, month, count) in &c.request_counts {
        tx.execute(
            "INSERT INTO request_counts (account_id, resource, month, count) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (account_id, resource, month) \
             DO UPDATE SET count = excluded.count",
            params![
                account_id,
                resource.name(),
                month,
                i64::try_from(*count).unwrap_or(i64::MAX)
            ],
        )
        .map_err(db)?;
    }
    for (sidecar, seq) in &c.cursors {
        tx.execute(
            "INSERT INTO sidecar_cursors (sidecar_id, account_id, applied_seq) VALUES (?1, ?2, ?3) \
             ON CONFLICT (sidecar_id, account_id) DO UPDATE SET applied_seq = \
             CASE WHEN excluded.applied_seq > sidecar_cursors.applied_seq \
             THEN excluded.applied_seq ELSE sidecar_cursors.applied_seq END",
            params![sidecar, account_id, i64::try_from(*seq).unwrap_or(i64::MAX)],
        )
        .map_err(db)?;
    }
    Ok(())
}

#[async_trait]
impl LedgerStore for SqliteStore {
    async fn create_account(
        &self,
        account_id: &str,
        balance: Money,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let id = account_id.to_owned();
        self.with(move |c| {
            let n = c
                .execute(
                    "INSERT INTO accounts (account_id, version, balance, created_at_ms) \
                     VALUES (?1, 1, ?2, ?3) ON CONFLICT (account_id) DO NOTHING",
                    params![id, balance.to_string(), now_ms],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
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
            let row: Option<(i64, String)> = tx
                .query_row(
                    "SELECT version, balance FROM accounts WHERE account_id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            let Some((version, balance)) = row else {
                return Ok(None);
            };
            let grants = grants_where(&tx, "account_id = ?1", &id)?;
            let once_skus = {
                let mut s = tx
                    .prepare_cached(
                        "SELECT DISTINCT sku FROM purchases WHERE account_id = ?1 \
                         AND once_per_account ORDER BY sku",
                    )
                    .map_err(db)?;
                s.query_map([&id], |r| r.get::<_, String>(0))
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?
            };
            let applied_seq: i64 = tx
                .query_row(
                    "SELECT applied_seq FROM sidecar_cursors WHERE sidecar_id = ?1 \
                     AND account_id = ?2",
                    params![sidecar, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?
                .unwrap_or(0);
            let leases = {
                let mut s = tx
                    .prepare_cached(
                        "SELECT sidecar_id, remaining, expires_at_ms, request_seq, held, want, \
                         edge, give_back FROM leases WHERE account_id = ?1 ORDER BY sidecar_id",
                    )
                    .map_err(db)?;
                type Row = (String, String, i64, i64, String, String, bool, bool);
                let rows = s
                    .query_map([&id], |r| <Row>::try_from(r))
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                rows.into_iter()
                    .map(
                        |(
                            sidecar_id,
                            remaining,
                            expires_at_ms,
                            seq,
                            held,
                            want,
                            edge,
                            give_back,
                        )| {
                            Ok(LeaseRow {
                                sidecar_id,
                                remaining: Money::from_decimal(dec(&remaining)?),
                                expires_at_ms,
                                request_seq: u64::try_from(seq).unwrap_or(0),
                                held: Money::from_decimal(dec(&held)?),
                                want: Money::from_decimal(dec(&want)?),
                                edge,
                                give_back,
                            })
                        },
                    )
                    .collect::<Result<Vec<_>, StoreError>>()?
            };
            let request_counts = {
                let mut s = tx
                    .prepare_cached(
                        "SELECT resource, month, count FROM request_counts \
                         WHERE account_id = ?1 ORDER BY resource, month",
                    )
                    .map_err(db)?;
                let rows = s
                    .query_map([&id], |r| <(String, i64, i64)>::try_from(r))
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                rows.into_iter()
                    .map(|(r, month, count)| {
                        let r = Resource::from_name(&r)
                            .ok_or_else(|| StoreError::Corrupt(format!("resource {r:?}")))?;
                        Ok((r, month, count.max(0) as u64))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?
            };
            tx.commit().map_err(db)?;
            Ok(Some(AccountState {
                request_counts,
                leases,
                account_id: id,
                version,
                balance: Money::from_decimal(dec(&balance)?),
                grants,
                once_skus,
                applied_seq: applied_seq.max(0) as u64,
            }))
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
            write_changes(&tx, &id, expected_version, &changes)?;
            tx.commit().map_err(db)
        })
        .await
    }

    async fn find_topup(&self, topup_id: &str) -> Result<Option<TopUpRecord>, StoreError> {
        let id = topup_id.to_owned();
        self.with(move |c| {
            let row: Option<(String, String, i64)> = c
                .query_row(
                    "SELECT account_id, amount, at_ms FROM topups WHERE topup_id = ?1",
                    [&id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(db)?;
            row.map(|(account_id, amount, at_ms)| {
                Ok(TopUpRecord {
                    topup_id: id.clone(),
                    account_id,
                    amount: Money::from_decimal(dec(&amount)?),
                    at_ms,
                })
            })
            .transpose()
        })
        .await
    }

    async fn find_purchase(
        &self,
        purchase_id: &str,
    ) -> Result<Option<(PurchaseRecord, Vec<Grant>)>, StoreError> {
        let id = purchase_id.to_owned();
        self.with(move |c| {
            let row: Option<(String, String, String, i64, i64, bool)> = c
                .query_row(
                    "SELECT account_id, sku, price_paid, effective_at_ms, at_ms, once_per_account \
                     FROM purchases WHERE purchase_id = ?1",
                    [&id],
                    |r| <_>::try_from(r),
                )
                .optional()
                .map_err(db)?;
            let Some((account_id, sku, price, effective_at_ms, at_ms, once)) = row else {
                return Ok(None);
            };
            let grants = grants_where(c, "purchase_id = ?1", &id)?;
            Ok(Some((
                PurchaseRecord {
                    purchase_id: id,
                    account_id,
                    sku,
                    price_paid: Money::from_decimal(dec(&price)?),
                    effective_at_ms,
                    at_ms,
                    once_per_account: once,
                },
                grants,
            )))
        })
        .await
    }

    async fn find_grant(&self, grant_id: &str) -> Result<Option<(String, Grant)>, StoreError> {
        let id = grant_id.to_owned();
        self.with(move |c| {
            let account: Option<String> = c
                .query_row(
                    "SELECT account_id FROM grants WHERE grant_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            let Some(account) = account else {
                return Ok(None);
            };
            let g = grants_where(c, "grant_id = ?1", &id)?;
            Ok(g.into_iter().next().map(|g| (account, g)))
        })
        .await
    }

    async fn known_usage(&self, usage_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        let ids = usage_ids.to_vec();
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached("SELECT 1 FROM usage WHERE usage_id = ?1")
                .map_err(db)?;
            let mut known = HashSet::new();
            for id in ids {
                if stmt.exists([&id]).map_err(db)? {
                    known.insert(id);
                }
            }
            Ok(known)
        })
        .await
    }

    async fn leased_accounts(
        &self,
        sidecar_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let id = sidecar_id.to_owned();
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT account_id, remaining FROM leases WHERE sidecar_id = ?1 \
                     ORDER BY account_id",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([&id], |r| <(String, String)>::try_from(r))
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            let mut out = Vec::new();
            for (account, remaining) in rows {
                if out.len() >= limit {
                    break;
                }
                if dec(&remaining)? > Decimal::ZERO {
                    out.push(account);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn recalls(&self, sidecar_id: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let id = sidecar_id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT account_id FROM leases WHERE sidecar_id = ?1 AND give_back \
                     ORDER BY account_id LIMIT ?2",
                )
                .map_err(db)?;
            stmt.query_map(params![id, limit], |r| r.get::<_, String>(0))
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)
        })
        .await
    }

    async fn statement(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<(Vec<StatementEntry>, bool), StoreError> {
        let id = account_id.to_owned();
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT usage_id, resource, sku, quantity, cost, at_ms, free_quantity FROM usage \
                     WHERE account_id = ?1 ORDER BY at_ms DESC, usage_id DESC LIMIT ?2",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![id, (limit as i64).saturating_add(1)], |r| {
                    <(String, String, String, i64, String, i64, i64)>::try_from(r)
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            let truncated = rows.len() > limit;
            let mut ded = c
                .prepare_cached(
                    "SELECT source, amount, unit, gb FROM usage_deductions WHERE usage_id = ?1 \
                     ORDER BY ordinal",
                )
                .map_err(db)?;
            let mut out = Vec::with_capacity(rows.len().min(limit));
            for (usage_id, resource, sku, quantity, cost, at_ms, free) in
                rows.into_iter().take(limit)
            {
                let raw = ded
                    .query_map([&usage_id], |r| {
                        <(String, String, String, Option<String>)>::try_from(r)
                    })
                    .map_err(db)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db)?;
                let cost = Money::from_decimal(dec(&cost)?);
                let free = free.max(0) as u64;
                let deductions = super::store::read_deductions(raw, cost, free)?;
                out.push(StatementEntry {
                    resource: Resource::from_name(&resource)
                        .ok_or_else(|| StoreError::Corrupt(format!("resource {resource:?}")))?,
                    usage_id,
                    sku,
                    quantity: quantity.max(0) as u64,
                    cost,
                    at_ms,
                    deductions,
                    free_quantity: free,
                });
            }
            out.reverse();
            Ok((out, truncated))
        })
        .await
    }

    async fn insert_token(&self, t: TokenRow) -> Result<(), StoreError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO auth_tokens (token_id, token_sha256, kind, account_id, name, \
                 created_at_ms, revoked_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    t.token_id,
                    t.token_sha256,
                    t.kind,
                    t.account_id,
                    t.name,
                    t.created_at_ms,
                    t.revoked_at_ms
                ],
            )
            .map_err(dup("token", &t.token_id))?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, token_sha256: &str) -> Result<Option<TokenRow>, StoreError> {
        let h = token_sha256.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT token_id, token_sha256, kind, account_id, name, created_at_ms, \
                 revoked_at_ms FROM auth_tokens WHERE token_sha256 = ?1",
                [&h],
                |r| {
                    Ok(TokenRow {
                        token_id: r.get(0)?,
                        token_sha256: r.get(1)?,
                        kind: r.get(2)?,
                        account_id: r.get(3)?,
                        name: r.get(4)?,
                        created_at_ms: r.get(5)?,
                        revoked_at_ms: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(db)
        })
        .await
    }

    async fn revoke_token(&self, token_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let id = token_id.to_owned();
        self.with(move |c| {
            let n = c
                .execute(
                    "UPDATE auth_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) \
                     WHERE token_id = ?1",
                    params![id, now_ms],
                )
                .map_err(db)?;
            Ok(n == 1)
        })
        .await
    }

    async fn has_operator_token(&self) -> Result<bool, StoreError> {
        self.with(move |c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM auth_tokens WHERE kind = 'operator' \
                 AND revoked_at_ms IS NULL)",
                [],
                |r| r.get(0),
            )
            .map_err(db)
        })
        .await
    }

    async fn grant_access(
        &self,
        account_id: &str,
        sub_user: &str,
        permissions: u8,
    ) -> Result<u8, StoreError> {
        let (a, u) = (account_id.to_owned(), sub_user.to_owned());
        self.with(move |c| {
            c.query_row(
                "INSERT INTO auth_access (account_id, sub_user, permissions) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (account_id, sub_user) DO UPDATE \
                 SET permissions = auth_access.permissions | excluded.permissions \
                 RETURNING permissions",
                params![a, u, i64::from(permissions)],
                |r| r.get::<_, i64>(0),
            )
            .map(|p| p as u8)
            .map_err(db)
        })
        .await
    }

    async fn revoke_access(
        &self,
        account_id: &str,
        sub_user: &str,
        permissions: u8,
    ) -> Result<u8, StoreError> {
        let (a, u) = (account_id.to_owned(), sub_user.to_owned());
        self.with(move |c| {
            let tx = c.transaction().map_err(db)?;
            tx.execute(
                "UPDATE auth_access SET permissions = permissions & ~?3 \
                 WHERE account_id = ?1 AND sub_user = ?2",
                params![a, u, i64::from(permissions)],
            )
            .map_err(db)?;
            tx.execute(
                "DELETE FROM auth_access WHERE account_id = ?1 AND sub_user = ?2 \
                 AND permissions = 0",
                params![a, u],
            )
            .map_err(db)?;
            let left: Option<i64> = tx
                .query_row(
                    "SELECT permissions FROM auth_access WHERE account_id = ?1 AND sub_user = ?2",
                    params![a, u],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            tx.commit().map_err(db)?;
            Ok(left.unwrap_or(0) as u8)
        })
        .await
    }

    async fn access_of(
        &self,
        sub_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, u8)>, StoreError> {
        let u = sub_user.to_owned();
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT account_id, permissions FROM auth_access WHERE sub_user = ?1 \
                     ORDER BY account_id LIMIT ?2",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map(params![u, limit as i64], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u8))
                })
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            Ok(rows)
        })
        .await
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
            for m in &MIGRATIONS[..5] {
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
