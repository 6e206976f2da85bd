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

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Row};

use super::StatementEntry;
use super::store::{
    AccountState, ChangeSet, LeaseRow, LedgerStore, PurchaseRecord, StoreError, TokenRow,
    TopUpRecord,
};
use crate::billing::{Grant, GrantKind, GrantUnit, Money, Resource, ResourceSet};

/// Default most connections one ledger process keeps to PostgreSQL. A commit holds one
/// connection for a few round trips, so 16 keep a few thousand commits per second in flight
/// while leaving room under PostgreSQL's default `max_connections` (100) for several ledger
/// processes and operators.
pub const DEFAULT_PG_POOL_MAX: u32 = 16;

/// Longest wait for the first connection at start, and for a pooled connection afterwards.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
];

/// The schema version this build migrates to (the number of migrations).
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

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

fn dec(s: &str) -> Result<Decimal, StoreError> {
    Decimal::from_str(s).map_err(|_| StoreError::Corrupt(format!("{s:?} is not a decimal")))
}

fn money(s: &str) -> Result<Money, StoreError> {
    dec(s).map(Money::from_decimal)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
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
        (b as char).to_digit(16).map(|d| d as u8)
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

/// Reads a grant from `row`, its columns starting at `at` in `GRANT_COLUMNS` order.
fn read_grant(row: &PgRow, at: usize) -> Result<Grant, StoreError> {
    let kind: String = row.try_get(at + 1).map_err(db)?;
    let covers: i32 = row.try_get(at + 2).map_err(db)?;
    let unit: String = row.try_get(at + 3).map_err(db)?;
    let quota: String = row.try_get(at + 4).map_err(db)?;
    let remaining: String = row.try_get(at + 5).map_err(db)?;
    Ok(Grant {
        grant_id: row.try_get(at).map_err(db)?,
        kind: GrantKind::from_name(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("grant kind {kind:?}")))?,
        covers: ResourceSet::from_bits(covers as u8),
        unit: GrantUnit::from_code(&unit)
            .ok_or_else(|| StoreError::Corrupt(format!("grant unit {unit:?}")))?,
        quota: dec(&quota)?,
        remaining: dec(&remaining)?,
        starts_at_ms: row.try_get(at + 6).map_err(db)?,
        expires_at_ms: row.try_get(at + 7).map_err(db)?,
        source: row.try_get(at + 8).map_err(db)?,
        stackable: row.try_get(at + 9).map_err(db)?,
        created_at_ms: row.try_get(at + 10).map_err(db)?,
    })
}

/// Grant columns as `read_grant` reads them (NUMERIC as text).
const GRANT_COLUMNS: &str = "grant_id, kind, covers, unit, quota::text, remaining::text, \
                             starts_at_ms, expires_at_ms, source, stackable, created_at_ms";

/// Loads one account in one statement, so that version, balance, grants, cursor and leases
/// come from one snapshot on every engine, in one round trip. Grants and leases come as one
/// array per column, all ordered by their key.
const LOAD_SQL: &str = "SELECT a.version, a.balance::text, \
    COALESCE((SELECT c.applied_seq FROM sidecar_cursors c \
              WHERE c.sidecar_id = $2 AND c.account_id = a.account_id), 0), \
    ARRAY(SELECT DISTINCT p.sku FROM purchases p \
          WHERE p.account_id = a.account_id AND p.once_per_account ORDER BY p.sku), \
    ARRAY(SELECT g.grant_id FROM grants g WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.kind FROM grants g WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.covers FROM grants g WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.unit FROM grants g WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.quota::text FROM grants g \
          WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.remaining::text FROM grants g \
          WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.starts_at_ms FROM grants g \
          WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.expires_at_ms FROM grants g \
          WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.source FROM grants g WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT g.stackable FROM grants g \
          WHERE g.account_id = a.account_id ORDER BY g.grant_id), \
    ARRAY(SELECT l.sidecar_id FROM leases l \
          WHERE l.account_id = a.account_id ORDER BY l.sidecar_id), \
    ARRAY(SELECT l.remaining::text FROM leases l \
          WHERE l.account_id = a.account_id ORDER BY l.sidecar_id), \
    ARRAY(SELECT l.expires_at_ms FROM leases l \
          WHERE l.account_id = a.account_id ORDER BY l.sidecar_id), \
    ARRAY(SELECT l.request_seq FROM leases l \
          WHERE l.account_id = a.account_id ORDER BY l.sidecar_id), \
    ARRAY(SELECT l.held::text FROM leases l \
          WHERE l.account_id = a.account_id ORDER BY l.sidecar_id), \
    ARRAY(SELECT l.want::text FROM leases l \
          WHERE l.account_id = a.account_id ORDER BY l.sidecar_id), \
    ARRAY(SELECT l.edge FROM leases l \
          WHERE l.account_id = a.account_id ORDER BY l.sidecar_id), \
    ARRAY(SELECT l.give_back FROM leases l \
          WHERE l.account_id = a.account_id ORDER BY l.sidecar_id), \
    ARRAY(SELECT r.resource FROM request_counts r \
          WHERE r.account_id = a.account_id ORDER BY r.resource, r.month), \
    ARRAY(SELECT r.month FROM request_counts r \
          WHERE r.account_id = a.account_id ORDER BY r.resource, r.month), \
    ARRAY(SELECT r.count FROM request_counts r \
          WHERE r.account_id = a.account_id ORDER BY r.resource, r.month), \
    ARRAY(SELECT g.created_at_ms FROM grants g \
          WHERE g.account_id = a.account_id ORDER BY g.grant_id) \
    FROM accounts a WHERE a.account_id = $1";

/// Columns of LOAD_SQL (the account id follows them in `load_many`).
const LOAD_COLUMNS: usize = 26;

fn read_state(account_id: &str, row: &PgRow) -> Result<AccountState, StoreError> {
    fn col<'r, T>(row: &'r PgRow, i: usize) -> Result<T, StoreError>
    where
        T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        row.try_get(i).map_err(db)
    }
    let version: i64 = col(row, 0)?;
    let balance: String = col(row, 1)?;
    let applied_seq: i64 = col(row, 2)?;
    let once_skus: Vec<String> = col(row, 3)?;
    let ids: Vec<String> = col(row, 4)?;
    let kinds: Vec<String> = col(row, 5)?;
    let covers: Vec<i32> = col(row, 6)?;
    let units: Vec<String> = col(row, 7)?;
    let quotas: Vec<String> = col(row, 8)?;
    let remainings: Vec<String> = col(row, 9)?;
    let starts: Vec<i64> = col(row, 10)?;
    let expires: Vec<i64> = col(row, 11)?;
    let sources: Vec<String> = col(row, 12)?;
    let stackables: Vec<bool> = col(row, 13)?;
    let lease_sidecars: Vec<String> = col(row, 14)?;
    let lease_remaining: Vec<String> = col(row, 15)?;
    let lease_expires: Vec<i64> = col(row, 16)?;
    let lease_seqs: Vec<i64> = col(row, 17)?;
    let lease_held: Vec<String> = col(row, 18)?;
    let lease_want: Vec<String> = col(row, 19)?;
    let lease_edge: Vec<bool> = col(row, 20)?;
    let lease_give_back: Vec<bool> = col(row, 21)?;
    let rc_resources: Vec<String> = col(row, 22)?;
    let rc_months: Vec<i64> = col(row, 23)?;
    let rc_counts: Vec<i64> = col(row, 24)?;
    let created: Vec<i64> = col(row, 25)?;
    if rc_months.len() != rc_resources.len() || rc_counts.len() != rc_resources.len() {
        return Err(StoreError::Corrupt(format!(
            "account {account_id}: request count columns of unequal length"
        )));
    }
    let request_counts = rc_resources
        .into_iter()
        .zip(rc_months)
        .zip(rc_counts)
        .map(|((r, month), count)| {
            let r = Resource::from_name(&r)
                .ok_or_else(|| StoreError::Corrupt(format!("resource {r:?}")))?;
            Ok((r, month, count.max(0) as u64))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let n = ids.len();
    if [
        kinds.len(),
        covers.len(),
        units.len(),
        quotas.len(),
        remainings.len(),
        starts.len(),
        expires.len(),
        sources.len(),
        stackables.len(),
        created.len(),
    ]
    .iter()
    .any(|&l| l != n)
        || lease_remaining.len() != lease_sidecars.len()
        || lease_expires.len() != lease_sidecars.len()
        || lease_seqs.len() != lease_sidecars.len()
        || lease_held.len() != lease_sidecars.len()
        || lease_want.len() != lease_sidecars.len()
        || lease_edge.len() != lease_sidecars.len()
        || lease_give_back.len() != lease_sidecars.len()
    {
        return Err(StoreError::Corrupt(format!(
            "account {account_id}: grant or lease columns of unequal length"
        )));
    }
    let mut grants = Vec::with_capacity(n);
    for i in 0..n {
        grants.push(Grant {
            grant_id: ids[i].clone(),
            kind: GrantKind::from_name(&kinds[i])
                .ok_or_else(|| StoreError::Corrupt(format!("grant kind {:?}", kinds[i])))?,
            covers: ResourceSet::from_bits(covers[i] as u8),
            unit: GrantUnit::from_code(&units[i])
                .ok_or_else(|| StoreError::Corrupt(format!("grant unit {:?}", units[i])))?,
            quota: dec(&quotas[i])?,
            remaining: dec(&remainings[i])?,
            starts_at_ms: starts[i],
            expires_at_ms: expires[i],
            created_at_ms: created[i],
            source: sources[i].clone(),
            stackable: stackables[i],
        });
    }
    let mut leases = Vec::with_capacity(lease_sidecars.len());
    for (i, sidecar_id) in lease_sidecars.into_iter().enumerate() {
        leases.push(LeaseRow {
            sidecar_id,
            remaining: money(&lease_remaining[i])?,
            expires_at_ms: lease_expires[i],
            request_seq: u64::try_from(lease_seqs[i]).unwrap_or(0),
            held: money(&lease_held[i])?,
            want: money(&lease_want[i])?,
            edge: lease_edge[i],
            give_back: lease_give_back[i],
        });
    }
    Ok(AccountState {
        account_id: account_id.to_owned(),
        version,
        balance: money(&balance)?,
        grants,
        once_skus,
        applied_seq: applied_seq.max(0) as u64,
        leases,
        request_counts,
    })
}

/// Why a write failed before its transaction could finish.
enum Failure {
    Store(StoreError),
    /// A unique id (topup, purchase, grant, usage) of a set-based insert is already
    /// recorded; which one is looked up once the statement's failure is rolled back.
    DuplicateIn(&'static str),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// One account's changes in a write: (account id, expected version, changes).
type Entry<'a> = (&'a str, i64, &'a ChangeSet);

/// A failed statement of a write: retryable failures (serialization, deadlock) are a
/// `Conflict` of `account_id`, a unique violation is `on_unique`, anything else `Database`.
fn write_err<'a>(
    account_id: &'a str,
    on_unique: Option<&'static str>,
) -> impl FnOnce(sqlx::Error) -> Failure + 'a {
    move |e| match on_unique {
        Some(what) if is_unique_violation(&e) => Failure::DuplicateIn(what),
        _ => Failure::Store(tx_err(account_id, e)),
    }
}

/// Keeps the last of the entries with the same key, in the order of their last occurrence
/// (what row-by-row writes in the SQLite store leave behind).
fn last_per_key<'a, T, K: Eq + std::hash::Hash>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut last: HashMap<K, usize> = HashMap::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        last.insert(key(it), i);
    }
    items
        .iter()
        .enumerate()
        .filter(|(i, it)| last.get(&key(it)) == Some(i))
        .map(|(_, it)| it)
        .collect()
}

/// Writes `entries` in the open transaction `tx` with one statement per table, however
/// many accounts and usage records: first the version check of every account (one UPDATE),
/// then the rows of the accounts that passed it. Returns, per entry, whether its account
/// was still at the expected version (and so written); a later entry of an account already
/// in `entries` is never written. A unique violation fails the whole write
/// (`Failure::DuplicateIn`): the caller rolls back and finds out which entry it was.
async fn write_batch(tx: &mut PgConnection, entries: &[Entry<'_>]) -> Result<Vec<bool>, Failure> {
    // For errors that concern the write as a whole; a single account's write names it.
    let scope = match entries {
        [(account_id, _, _)] => *account_id,
        _ => "(batch)",
    };
    let mut firsts = HashSet::with_capacity(entries.len());
    let first: Vec<bool> = entries.iter().map(|(a, _, _)| firsts.insert(*a)).collect();
    let candidates: Vec<&Entry<'_>> = entries
        .iter()
        .zip(&first)
        .filter_map(|(e, f)| f.then_some(e))
        .collect();
    if candidates.is_empty() {
        return Ok(vec![false; entries.len()]);
    }
    let updated: Vec<String> = sqlx::query_scalar(
        "UPDATE accounts SET version = accounts.version + 1, balance = v.balance::numeric \
         FROM UNNEST($1::text[], $2::int8[], $3::text[]) AS v(account_id, version, balance) \
         WHERE accounts.account_id = v.account_id AND accounts.version = v.version \
         RETURNING accounts.account_id",
    )
    .bind(candidates.iter().map(|(a, _, _)| *a).collect::<Vec<_>>())
    .bind(candidates.iter().map(|(_, v, _)| *v).collect::<Vec<_>>())
    .bind(
        candidates
            .iter()
            .map(|(_, _, c)| c.balance.to_string())
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(write_err(scope, None))?;
    let updated: HashSet<&str> = updated.iter().map(String::as_str).collect();
    let live_mask: Vec<bool> = entries
        .iter()
        .zip(&first)
        .map(|((a, _, _), f)| *f && updated.contains(a))
        .collect();
    let live: Vec<(&str, &ChangeSet)> = entries
        .iter()
        .zip(&live_mask)
        .filter_map(|((a, _, c), l)| l.then_some((*a, *c)))
        .collect();

    // Grants: remaining amounts, then new grants.
    let mut g_ids = Vec::new();
    let mut g_rem = Vec::new();
    let mut g_acc = Vec::new();
    for (a, c) in &live {
        for (id, r) in last_per_key(&c.grant_remaining, |(id, _)| id.as_str()) {
            g_ids.push(id.as_str());
            g_rem.push(r.to_string());
            g_acc.push(*a);
        }
    }
    if !g_ids.is_empty() {
        sqlx::query(
            "UPDATE grants SET remaining = v.remaining::numeric \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS v(grant_id, remaining, account_id) \
             WHERE grants.grant_id = v.grant_id AND grants.account_id = v.account_id",
        )
        .bind(g_ids)
        .bind(g_rem)
        .bind(g_acc)
        .execute(&mut *tx)
        .await
        .map_err(write_err(scope, None))?;
    }
    let new_grants: Vec<(&str, &Grant, Option<&str>)> = live
        .iter()
        .flat_map(|(a, c)| c.new_grants.iter().map(|(g, p)| (*a, g, p.as_deref())))
        .collect();
    if !new_grants.is_empty() {
        let g = &new_grants;
        sqlx::query(
            "INSERT INTO grants (grant_id, kind, covers, unit, quota, remaining, starts_at_ms, \
             expires_at_ms, source, stackable, purchase_id, account_id, created_at_ms) \
             SELECT g, k, c, u, q::numeric, r::numeric, s, e, src, st, p, a, cr \
             FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[], \
             $6::text[], $7::int8[], $8::int8[], $9::text[], $10::bool[], $11::text[], \
             $12::text[], $13::int8[]) AS v(g, k, c, u, q, r, s, e, src, st, p, a, cr)",
        )
        .bind(
            g.iter()
                .map(|(_, g, _)| g.grant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(g.iter().map(|(_, g, _)| g.kind.name()).collect::<Vec<_>>())
        .bind(
            g.iter()
                .map(|(_, g, _)| i32::from(g.covers.bits()))
                .collect::<Vec<_>>(),
        )
        .bind(g.iter().map(|(_, g, _)| g.unit.code()).collect::<Vec<_>>())
        .bind(
            g.iter()
                .map(|(_, g, _)| g.quota.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            g.iter()
                .map(|(_, g, _)| g.remaining.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(g.iter().map(|(_, g, _)| g.starts_at_ms).collect::<Vec<_>>())
        .bind(
            g.iter()
                .map(|(_, g, _)| g.expires_at_ms)
                .collect::<Vec<_>>(),
        )
        .bind(
            g.iter()
                .map(|(_, g, _)| g.source.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(g.iter().map(|(_, g, _)| g.stackable).collect::<Vec<_>>())
        .bind(g.iter().map(|(_, _, p)| *p).collect::<Vec<_>>())
        .bind(g.iter().map(|(a, _, _)| *a).collect::<Vec<_>>())
        .bind(
            g.iter()
                .map(|(_, g, _)| g.created_at_ms)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await
        .map_err(write_err(scope, Some("grant")))?;
    }

    // Top-ups and purchases.
    let topups: Vec<(&str, &TopUpRecord)> = live
        .iter()
        .filter_map(|(a, c)| c.topup.as_ref().map(|t| (*a, t)))
        .collect();
    if !topups.is_empty() {
        sqlx::query(
            "INSERT INTO topups (topup_id, account_id, amount, at_ms) \
             SELECT id, a, amt::numeric, at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[]) AS v(id, a, amt, at)",
        )
        .bind(
            topups
                .iter()
                .map(|(_, t)| t.topup_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(topups.iter().map(|(a, _)| *a).collect::<Vec<_>>())
        .bind(
            topups
                .iter()
                .map(|(_, t)| t.amount.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(topups.iter().map(|(_, t)| t.at_ms).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(write_err(scope, Some("topup")))?;
    }
    let purchases: Vec<(&str, &PurchaseRecord)> = live
        .iter()
        .filter_map(|(a, c)| c.purchase.as_ref().map(|p| (*a, p)))
        .collect();
    if !purchases.is_empty() {
        let p = &purchases;
        sqlx::query(
            "INSERT INTO purchases (purchase_id, account_id, sku, price_paid, effective_at_ms, \
             at_ms, once_per_account) \
             SELECT id, a, sku, price::numeric, eff, at, once \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], \
             $6::int8[], $7::bool[]) AS v(id, a, sku, price, eff, at, once)",
        )
        .bind(
            p.iter()
                .map(|(_, p)| p.purchase_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(p.iter().map(|(a, _)| *a).collect::<Vec<_>>())
        .bind(p.iter().map(|(_, p)| p.sku.as_str()).collect::<Vec<_>>())
        .bind(
            p.iter()
                .map(|(_, p)| p.price_paid.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(p.iter().map(|(_, p)| p.effective_at_ms).collect::<Vec<_>>())
        .bind(p.iter().map(|(_, p)| p.at_ms).collect::<Vec<_>>())
        .bind(
            p.iter()
                .map(|(_, p)| p.once_per_account)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await
        .map_err(write_err(scope, Some("purchase")))?;
    }

    // Usage and its deductions.
    let n: usize = live.iter().map(|(_, c)| c.usage.len()).sum();
    if n > 0 {
        let mut ids = Vec::with_capacity(n);
        let mut accounts = Vec::with_capacity(n);
        let mut resources = Vec::with_capacity(n);
        let mut skus = Vec::with_capacity(n);
        let mut quantities = Vec::with_capacity(n);
        let mut costs = Vec::with_capacity(n);
        let mut ats = Vec::with_capacity(n);
        let mut sidecars = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(n);
        let mut d_ids = Vec::with_capacity(n);
        let mut d_ordinals = Vec::with_capacity(n);
        let mut d_sources = Vec::with_capacity(n);
        let mut d_amounts = Vec::with_capacity(n);
        let mut d_units = Vec::with_capacity(n);
        let mut d_gbs = Vec::with_capacity(n);
        let mut frees = Vec::with_capacity(n);
        for (a, c) in &live {
            for u in &c.usage {
                let r = &u.record;
                ids.push(r.usage_id.as_str());
                accounts.push(*a);
                resources.push(r.resource.name());
                skus.push(r.sku.as_str());
                quantities.push(r.quantity as i64);
                costs.push(r.cost.to_string());
                ats.push(r.at_ms);
                sidecars.push(u.sidecar_id.as_str());
                seqs.push(r.seq as i64);
                frees.push(u.free_quantity as i64);
                // In the order taken: one ordinal sequence.
                for (i, d) in u.deductions.iter().enumerate() {
                    let (source, amount, unit, gb) = super::store::deduction_row(d);
                    d_ids.push(r.usage_id.as_str());
                    d_ordinals.push(i32::try_from(i).unwrap_or(i32::MAX));
                    d_sources.push(source);
                    d_amounts.push(amount);
                    d_units.push(unit);
                    d_gbs.push(gb);
                }
            }
        }
        sqlx::query(
            "INSERT INTO usage (usage_id, account_id, resource, sku, quantity, cost, at_ms, \
             sidecar_id, seq, free_quantity) \
             SELECT id, a, res, sku, qty, cost::numeric, at, sc, seq, fq \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], \
             $6::text[], $7::int8[], $8::text[], $9::int8[], $10::int8[]) \
             AS v(id, a, res, sku, qty, cost, at, sc, seq, fq)",
        )
        .bind(ids)
        .bind(accounts)
        .bind(resources)
        .bind(skus)
        .bind(quantities)
        .bind(costs)
        .bind(ats)
        .bind(sidecars)
        .bind(seqs)
        .bind(frees)
        .execute(&mut *tx)
        .await
        .map_err(write_err(scope, Some("usage")))?;
        if !d_ids.is_empty() {
            sqlx::query(
                "INSERT INTO usage_deductions (usage_id, ordinal, source, amount, unit, gb) \
                 SELECT id, ord, src, amt::numeric, u, gb::numeric \
                 FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[], \
                 $6::text[]) AS v(id, ord, src, amt, u, gb)",
            )
            .bind(d_ids)
            .bind(d_ordinals)
            .bind(d_sources)
            .bind(d_amounts)
            .bind(d_units)
            .bind(d_gbs)
            .execute(&mut *tx)
            .await
            .map_err(write_err(scope, None))?;
        }
    }

    // Leases: one row per (account, sidecar), as ON CONFLICT DO UPDATE may not touch a row
    // twice in one statement.
    let mut l_acc = Vec::new();
    let mut l_sc = Vec::new();
    let mut l_rem = Vec::new();
    let mut l_exp = Vec::new();
    let mut l_seq = Vec::new();
    let mut l_held = Vec::new();
    let mut l_want = Vec::new();
    let mut l_edge = Vec::new();
    let mut l_give = Vec::new();
    for (a, c) in &live {
        for l in last_per_key(&c.leases, |l| l.sidecar_id.as_str()) {
            l_acc.push(*a);
            l_sc.push(l.sidecar_id.as_str());
            l_rem.push(l.remaining.to_string());
            l_exp.push(l.expires_at_ms);
            l_seq.push(i64::try_from(l.request_seq).unwrap_or(i64::MAX));
            l_held.push(l.held.to_string());
            l_want.push(l.want.to_string());
            l_edge.push(l.edge);
            l_give.push(l.give_back);
        }
    }
    if !l_acc.is_empty() {
        sqlx::query(
            "INSERT INTO leases (account_id, sidecar_id, remaining, expires_at_ms, request_seq, \
             held, want, edge, give_back) \
             SELECT a, sc, rem::numeric, exp, rs, h::numeric, w::numeric, e, g \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
             $6::text[], $7::text[], $8::bool[], $9::bool[]) \
             AS v(a, sc, rem, exp, rs, h, w, e, g) \
             ON CONFLICT (account_id, sidecar_id) DO UPDATE SET \
             remaining = excluded.remaining, expires_at_ms = excluded.expires_at_ms, \
             request_seq = excluded.request_seq, held = excluded.held, want = excluded.want, \
             edge = excluded.edge, give_back = excluded.give_back",
        )
        .bind(l_acc)
        .bind(l_sc)
        .bind(l_rem)
        .bind(l_exp)
        .bind(l_seq)
        .bind(l_held)
        .bind(l_want)
        .bind(l_edge)
        .bind(l_give)
        .execute(&mut *tx)
        .await
        .map_err(write_err(scope, None))?;
    }

    // Request counts: absolute values decided under the version check just passed.
    let mut rc_acc = Vec::new();
    let mut rc_res = Vec::new();
    let mut rc_month = Vec::new();
    let mut rc_count = Vec::new();
    for (a, c) in &live {
        for (r, m, n) in last_per_key(&c.request_counts, |(r, m, _)| (*r, *m)) {
            rc_acc.push(*a);
            rc_res.push(r.name());
            rc_month.push(*m);
            rc_count.push(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
    if !rc_acc.is_empty() {
        sqlx::query(
            "INSERT INTO request_counts (account_id, resource, month, count) \
             SELECT a, r, m, n FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[]) \
             AS v(a, r, m, n) \
             ON CONFLICT (account_id, resource, month) DO UPDATE SET count = excluded.count",
        )
        .bind(rc_acc)
        .bind(rc_res)
        .bind(rc_month)
        .bind(rc_count)
        .execute(&mut *tx)
        .await
        .map_err(write_err(scope, None))?;
    }

    // Cursors: one per sidecar of a live entry (ON CONFLICT DO UPDATE may not touch a row
    // twice in one statement), and live entries are of distinct accounts.
    let cursors: Vec<(&str, &str, i64)> = live
        .iter()
        .flat_map(|(a, c)| {
            last_per_key(&c.cursors, |(sc, _)| sc.as_str())
                .into_iter()
                .map(move |(sc, seq)| (*a, sc.as_str(), i64::try_from(*seq).unwrap_or(i64::MAX)))
        })
        .collect();
    if !cursors.is_empty() {
        sqlx::query(
            "INSERT INTO sidecar_cursors (sidecar_id, account_id, applied_seq) \
             SELECT sc, a, seq FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS v(sc, a, seq) \
             ON CONFLICT (sidecar_id, account_id) DO UPDATE SET \
             applied_seq = GREATEST(sidecar_cursors.applied_seq, excluded.applied_seq)",
        )
        .bind(cursors.iter().map(|(_, sc, _)| *sc).collect::<Vec<_>>())
        .bind(cursors.iter().map(|(a, _, _)| *a).collect::<Vec<_>>())
        .bind(cursors.iter().map(|(_, _, s)| *s).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await
        .map_err(write_err(scope, None))?;
    }
    Ok(live_mask)
}

/// The first id of `ids` that is repeated within `ids`.
fn first_repeated<'a>(ids: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = HashSet::new();
    ids.into_iter().find(|id| !seen.insert(*id))
}

/// Which unique id of kind `what` in `changes` made a write fail: one already stored (as
/// `conn` sees it), else one repeated in `changes` itself, else the first.
async fn duplicate_id(
    conn: &mut PgConnection,
    what: &'static str,
    changes: &[&ChangeSet],
) -> StoreError {
    let (ids, sql): (Vec<&str>, &str) = match what {
        "grant" => (
            changes
                .iter()
                .flat_map(|c| c.new_grants.iter().map(|(g, _)| g.grant_id.as_str()))
                .collect(),
            "SELECT grant_id FROM grants WHERE grant_id = ANY($1::text[]) \
             ORDER BY grant_id LIMIT 1",
        ),
        "topup" => (
            changes
                .iter()
                .filter_map(|c| c.topup.as_ref().map(|t| t.topup_id.as_str()))
                .collect(),
            "SELECT topup_id FROM topups WHERE topup_id = ANY($1::text[]) \
             ORDER BY topup_id LIMIT 1",
        ),
        "purchase" => (
            changes
                .iter()
                .filter_map(|c| c.purchase.as_ref().map(|p| p.purchase_id.as_str()))
                .collect(),
            "SELECT purchase_id FROM purchases WHERE purchase_id = ANY($1::text[]) \
             ORDER BY purchase_id LIMIT 1",
        ),
        _ => (
            changes
                .iter()
                .flat_map(|c| c.usage.iter().map(|u| u.record.usage_id.as_str()))
                .collect(),
            "SELECT usage_id FROM usage WHERE usage_id = ANY($1::text[]) \
             ORDER BY usage_id LIMIT 1",
        ),
    };
    let stored: Option<String> = if ids.len() == 1 {
        None
    } else {
        sqlx::query_scalar(sql)
            .bind(&ids)
            .fetch_optional(&mut *conn)
            .await
            .ok()
            .flatten()
    };
    let id = stored
        .or_else(|| first_repeated(ids.iter().copied()).map(str::to_owned))
        .or_else(|| ids.first().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    StoreError::Duplicate { what, id }
}

/// Writes `entries` one account at a time, each in a savepoint of `tx`, so that an entry
/// with a reused unique id fails alone, reported with that id. Slower than `write_batch`
/// (a few round trips per account); used only after a batch hit a duplicate. A failure that
/// lost the whole transaction comes back as an error.
async fn write_each(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    entries: &[Entry<'_>],
) -> Result<Vec<Result<(), StoreError>>, Failure> {
    use sqlx::Acquire;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let (account_id, _, changes) = *entry;
        let mut sp = (&mut *tx)
            .begin()
            .await
            .map_err(|e| Failure::Store(tx_err(account_id, e)))?;
        match write_batch(&mut sp, std::slice::from_ref(entry)).await {
            Ok(written) if written == [true] => {
                sp.commit()
                    .await
                    .map_err(|e| Failure::Store(tx_err(account_id, e)))?;
                out.push(Ok(()));
            }
            Ok(_) => {
                sp.rollback()
                    .await
                    .map_err(|e| Failure::Store(tx_err(account_id, e)))?;
                out.push(Err(StoreError::Conflict(account_id.to_owned())));
            }
            Err(Failure::DuplicateIn(what)) => {
                sp.rollback()
                    .await
                    .map_err(|e| Failure::Store(tx_err(account_id, e)))?;
                // Seen from this transaction: what is stored plus the earlier entries.
                out.push(Err(duplicate_id(&mut *tx, what, &[changes]).await));
            }
            Err(f) => return Err(f),
        }
    }
    Ok(out)
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
async fn migrate(conn: &mut PgConnection) -> Result<(), StoreError> {
    create_migrations_table(conn).await?;
    let mut applied = applied_migrations(conn).await?;
    for (i, statements) in MIGRATIONS.iter().enumerate() {
        let version = (i + 1) as i64;
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
        .filter(|&&v| v as usize > MIGRATIONS.len())
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

#[async_trait]
impl LedgerStore for PgStore {
    async fn create_account(
        &self,
        account_id: &str,
        balance: Money,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO accounts (account_id, version, balance, created_at_ms) \
             VALUES ($1, 1, $2::numeric, $3) ON CONFLICT (account_id) DO NOTHING",
        )
        .bind(account_id)
        .bind(balance.to_string())
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn load(
        &self,
        account_id: &str,
        sidecar_id: &str,
    ) -> Result<Option<AccountState>, StoreError> {
        let row = sqlx::query(LOAD_SQL)
            .bind(account_id)
            .bind(sidecar_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| read_state(account_id, &r)).transpose()
    }

    async fn commit(
        &self,
        account_id: &str,
        expected_version: i64,
        changes: ChangeSet,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(|e| tx_err(account_id, e))?;
        match write_batch(&mut tx, &[(account_id, expected_version, &changes)]).await {
            Ok(written) if written == [true] => {
                tx.commit().await.map_err(|e| tx_err(account_id, e))
            }
            Ok(_) => {
                let _ = tx.rollback().await;
                Err(StoreError::Conflict(account_id.to_owned()))
            }
            Err(f) => {
                let _ = tx.rollback().await;
                Err(match f {
                    Failure::Store(e) => e,
                    Failure::DuplicateIn(what) => match self.pool.acquire().await {
                        Ok(mut conn) => duplicate_id(&mut conn, what, &[&changes]).await,
                        Err(e) => db(e),
                    },
                })
            }
        }
    }

    async fn find_topup(&self, topup_id: &str) -> Result<Option<TopUpRecord>, StoreError> {
        let row: Option<(String, String, i64)> = sqlx::query_as(
            "SELECT account_id, amount::text, at_ms FROM topups WHERE topup_id = $1",
        )
        .bind(topup_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|(account_id, amount, at_ms)| {
            Ok(TopUpRecord {
                topup_id: topup_id.to_owned(),
                account_id,
                amount: money(&amount)?,
                at_ms,
            })
        })
        .transpose()
    }

    async fn find_purchase(
        &self,
        purchase_id: &str,
    ) -> Result<Option<(PurchaseRecord, Vec<Grant>)>, StoreError> {
        let row: Option<(String, String, String, i64, i64, bool)> = sqlx::query_as(
            "SELECT account_id, sku, price_paid::text, effective_at_ms, at_ms, once_per_account \
             FROM purchases WHERE purchase_id = $1",
        )
        .bind(purchase_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some((account_id, sku, price, effective_at_ms, at_ms, once)) = row else {
            return Ok(None);
        };
        // Written in the purchase's own transaction and never changed but for `remaining`.
        let grants = sqlx::query(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE purchase_id = $1 ORDER BY grant_id"
        ))
        .bind(purchase_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|r| read_grant(r, 0))
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((
            PurchaseRecord {
                purchase_id: purchase_id.to_owned(),
                account_id,
                sku,
                price_paid: money(&price)?,
                effective_at_ms,
                at_ms,
                once_per_account: once,
            },
            grants,
        )))
    }

    async fn find_grant(&self, grant_id: &str) -> Result<Option<(String, Grant)>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {GRANT_COLUMNS}, account_id FROM grants WHERE grant_id = $1"
        ))
        .bind(grant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| {
            let account: String = r.try_get(11).map_err(db)?;
            Ok((account, read_grant(&r, 0)?))
        })
        .transpose()
    }

    /// One statement for the whole batch: LOAD_SQL over `ANY($1)`, with the account id.
    async fn load_many(
        &self,
        account_ids: &[String],
        sidecar_id: &str,
    ) -> Result<Vec<AccountState>, StoreError> {
        if account_ids.is_empty() {
            return Ok(Vec::new());
        }
        static LOAD_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
            let sql = LOAD_SQL.replace(
                " FROM accounts a WHERE a.account_id = $1",
                ", a.account_id FROM accounts a WHERE a.account_id = ANY($1::text[])",
            );
            assert_ne!(
                sql, LOAD_SQL,
                "LOAD_SQL no longer ends as load_many expects"
            );
            sql
        });
        let rows = sqlx::query(LOAD_MANY_SQL.as_str())
            .bind(account_ids)
            .bind(sidecar_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(LOAD_COLUMNS).map_err(db)?;
                read_state(&id, r)
            })
            .collect()
    }

    /// One transaction for the whole batch (one fsync) with one statement per table
    /// (`write_batch`), accounts in id order so that concurrent batches tend to lock them in
    /// the same order (a deadlock all the same is a Conflict of every entry, retried). An
    /// account whose version moved is left out and reported as Conflict. A reused unique id
    /// fails the set-based statement for all: then the batch is written again one account
    /// at a time, each in a savepoint, to tell which entry it was.
    async fn commit_many(
        &self,
        commits: Vec<(String, i64, ChangeSet)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        let mut order: Vec<usize> = (0..commits.len()).collect();
        order.sort_by(|&i, &j| commits[i].0.cmp(&commits[j].0));
        let entries: Vec<Entry<'_>> = order
            .iter()
            .map(|&i| (commits[i].0.as_str(), commits[i].1, &commits[i].2))
            .collect();
        let all_conflict = || {
            commits
                .iter()
                .map(|(a, _, _)| Err(StoreError::Conflict(a.clone())))
                .collect::<Vec<_>>()
        };
        // Results of `entries` (sorted) back in the order of `commits`.
        let unsort = |sorted: Vec<Result<(), StoreError>>| {
            let mut out: Vec<Option<Result<(), StoreError>>> =
                (0..commits.len()).map(|_| None).collect();
            for (k, r) in sorted.into_iter().enumerate() {
                out[order[k]] = Some(r);
            }
            out.into_iter()
                .map(|r| r.unwrap_or_else(|| Err(StoreError::Database("lost result".into()))))
                .collect::<Vec<_>>()
        };

        let mut tx = self.pool.begin().await.map_err(db)?;
        let sorted = match write_batch(&mut tx, &entries).await {
            Ok(written) => written
                .iter()
                .zip(&entries)
                .map(|(w, (a, _, _))| {
                    if *w {
                        Ok(())
                    } else {
                        Err(StoreError::Conflict((*a).to_owned()))
                    }
                })
                .collect(),
            Err(Failure::DuplicateIn(_)) => {
                let _ = tx.rollback().await;
                tx = self.pool.begin().await.map_err(db)?;
                match write_each(&mut tx, &entries).await {
                    Ok(sorted) => sorted,
                    Err(Failure::Store(StoreError::Conflict(_))) => {
                        let _ = tx.rollback().await;
                        return Ok(all_conflict());
                    }
                    Err(Failure::Store(e)) => return Err(e),
                    Err(Failure::DuplicateIn(_)) => {
                        return Err(StoreError::Database("unattributed duplicate".into()));
                    }
                }
            }
            // A serialization failure or deadlock: the whole batch retries.
            Err(Failure::Store(StoreError::Conflict(_))) => {
                let _ = tx.rollback().await;
                return Ok(all_conflict());
            }
            Err(Failure::Store(e)) => {
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        match tx.commit().await {
            Ok(()) => Ok(unsort(sorted)),
            Err(e) => match tx_err("(batch)", e) {
                // The whole batch lost to a concurrent writer: every entry retries.
                StoreError::Conflict(_) => Ok(all_conflict()),
                other => Err(other),
            },
        }
    }

    async fn known_usage(&self, usage_ids: &[String]) -> Result<HashSet<String>, StoreError> {
        if usage_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let known: Vec<String> =
            sqlx::query_scalar("SELECT usage_id FROM usage WHERE usage_id = ANY($1::text[])")
                .bind(usage_ids)
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        Ok(known.into_iter().collect())
    }

    async fn leased_accounts(
        &self,
        sidecar_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT account_id FROM leases WHERE sidecar_id = $1 AND remaining > 0 \
             ORDER BY account_id LIMIT $2",
        )
        .bind(sidecar_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.into_iter().map(|(a,)| a).collect())
    }

    async fn recalls(&self, sidecar_id: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT account_id FROM leases WHERE sidecar_id = $1 AND give_back \
             ORDER BY account_id LIMIT $2",
        )
        .bind(sidecar_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.into_iter().map(|(a,)| a).collect())
    }

    async fn statement(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<(Vec<StatementEntry>, bool), StoreError> {
        let rows: Vec<(String, String, String, i64, String, i64, i64)> = sqlx::query_as(
            "SELECT usage_id, resource, sku, quantity, cost::text, at_ms, free_quantity \
             FROM usage \
             WHERE account_id = $1 ORDER BY at_ms DESC, usage_id DESC LIMIT $2",
        )
        .bind(account_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let truncated = rows.len() > limit;
        let rows: Vec<_> = rows.into_iter().take(limit).collect();
        let mut raw: HashMap<String, Vec<super::store::DeductionRow>> = HashMap::new();
        if !rows.is_empty() {
            let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
            let found: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
                "SELECT usage_id, source, amount::text, unit, gb::text FROM usage_deductions \
                 WHERE usage_id = ANY($1::text[]) ORDER BY usage_id, ordinal",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
            for (usage_id, source, amount, unit, gb) in found {
                raw.entry(usage_id)
                    .or_default()
                    .push((source, amount, unit, gb));
            }
        }
        let mut out = Vec::with_capacity(rows.len());
        for (usage_id, resource, sku, quantity, cost, at_ms, free) in rows {
            let cost = money(&cost)?;
            let free = free.max(0) as u64;
            let deductions = super::store::read_deductions(
                raw.remove(&usage_id).unwrap_or_default(),
                cost,
                free,
            )?;
            out.push(StatementEntry {
                resource: Resource::from_name(&resource)
                    .ok_or_else(|| StoreError::Corrupt(format!("resource {resource:?}")))?,
                deductions,
                free_quantity: free,
                usage_id,
                sku,
                quantity: quantity.max(0) as u64,
                cost,
                at_ms,
            });
        }
        out.reverse();
        Ok((out, truncated))
    }

    async fn insert_token(&self, t: TokenRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO auth_tokens (token_id, token_sha256, kind, account_id, name, \
             created_at_ms, revoked_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&t.token_id)
        .bind(&t.token_sha256)
        .bind(&t.kind)
        .bind(&t.account_id)
        .bind(&t.name)
        .bind(t.created_at_ms)
        .bind(t.revoked_at_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if sqlstate(&e).as_deref() == Some(UNIQUE_VIOLATION) {
                StoreError::Duplicate {
                    what: "token",
                    id: t.token_id.clone(),
                }
            } else {
                db(e)
            }
        })?;
        Ok(())
    }

    async fn token_by_hash(&self, token_sha256: &str) -> Result<Option<TokenRow>, StoreError> {
        let row: Option<(String, String, String, String, String, i64, Option<i64>)> =
            sqlx::query_as(
                "SELECT token_id, token_sha256, kind, account_id, name, created_at_ms, \
                 revoked_at_ms FROM auth_tokens WHERE token_sha256 = $1",
            )
            .bind(token_sha256)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(row.map(
            |(token_id, token_sha256, kind, account_id, name, created_at_ms, revoked_at_ms)| {
                TokenRow {
                    token_id,
                    token_sha256,
                    kind,
                    account_id,
                    name,
                    created_at_ms,
                    revoked_at_ms,
                }
            },
        ))
    }

    async fn revoke_token(&self, token_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE auth_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, $2) \
             WHERE token_id = $1",
        )
        .bind(token_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(db)?
        .rows_affected();
        Ok(n == 1)
    }

    async fn has_operator_token(&self) -> Result<bool, StoreError> {
        let (found,): (bool,) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM auth_tokens WHERE kind = 'operator' \
             AND revoked_at_ms IS NULL)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(found)
    }

    async fn grant_access(
        &self,
        account_id: &str,
        sub_user: &str,
        permissions: u8,
    ) -> Result<u8, StoreError> {
        let (p,): (i32,) = sqlx::query_as(
            "INSERT INTO auth_access (account_id, sub_user, permissions) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id, sub_user) DO UPDATE \
             SET permissions = auth_access.permissions | excluded.permissions \
             RETURNING permissions",
        )
        .bind(account_id)
        .bind(sub_user)
        .bind(i32::from(permissions))
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(p as u8)
    }

    async fn revoke_access(
        &self,
        account_id: &str,
        sub_user: &str,
        permissions: u8,
    ) -> Result<u8, StoreError> {
        let left: Option<(i32,)> = sqlx::query_as(
            "UPDATE auth_access SET permissions = permissions & ~($3::int4) \
             WHERE account_id = $1 AND sub_user = $2 RETURNING permissions",
        )
        .bind(account_id)
        .bind(sub_user)
        .bind(i32::from(permissions))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        sqlx::query(
            "DELETE FROM auth_access WHERE account_id = $1 AND sub_user = $2 AND permissions = 0",
        )
        .bind(account_id)
        .bind(sub_user)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(left.map_or(0, |(p,)| p as u8))
    }

    async fn access_of(
        &self,
        sub_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, u8)>, StoreError> {
        let rows: Vec<(String, i32)> = sqlx::query_as(
            "SELECT account_id, permissions FROM auth_access WHERE sub_user = $1 \
             ORDER BY account_id LIMIT $2",
        )
        .bind(sub_user)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows.into_iter().map(|(a, p)| (a, p as u8)).collect())
    }
}
