//! Reads of the PostgreSQL store. An account loads in one statement (one snapshot on
//! every engine, one round trip): its grants, leases and request counts come as one array
//! per column, decoded by the row types both stores share (`store::rows`).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::db;
use crate::billing::{Grant, Money};
use crate::ledger::StatementEntry;
use crate::ledger::store::rows::{
    self, DeductionRow, RawGrant, RawLease, RawPurchase, RawUsage, count, money,
};
use crate::ledger::store::{
    AccessRow, AccountState, LeaseRow, PurchaseRecord, StoreError, TokenRow, TopUpRecord,
};

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

/// Column `i` of `row`.
fn col<'r, T>(row: &'r PgRow, i: usize) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(i).map_err(db)
}

/// Array column `i` of `row`, which must have `len` elements like the others of its table.
fn array<'r, T>(row: &'r PgRow, i: usize, len: usize, what: &str) -> Result<Vec<T>, StoreError>
where
    Vec<T>: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    let v: Vec<T> = col(row, i)?;
    if v.len() != len {
        return Err(StoreError::Corrupt(format!(
            "{what} columns of unequal length ({} and {len})",
            v.len()
        )));
    }
    Ok(v)
}

/// The grants of LOAD_SQL's row (columns 4 to 13 and 25). Every column array has been
/// checked to be as long as the ids, so each index is in bounds.
fn grants_of(row: &PgRow) -> Result<Vec<Grant>, StoreError> {
    let mut ids: Vec<String> = col(row, 4)?;
    let n = ids.len();
    let mut kinds: Vec<String> = array(row, 5, n, "grant")?;
    let covers: Vec<i32> = array(row, 6, n, "grant")?;
    let mut units: Vec<String> = array(row, 7, n, "grant")?;
    let mut quotas: Vec<String> = array(row, 8, n, "grant")?;
    let mut remainings: Vec<String> = array(row, 9, n, "grant")?;
    let starts: Vec<i64> = array(row, 10, n, "grant")?;
    let expires: Vec<i64> = array(row, 11, n, "grant")?;
    let mut sources: Vec<String> = array(row, 12, n, "grant")?;
    let stackables: Vec<bool> = array(row, 13, n, "grant")?;
    let created: Vec<i64> = array(row, 25, n, "grant")?;
    let take = std::mem::take::<String>;
    (0..n)
        .map(|i| {
            RawGrant {
                grant_id: take(&mut ids[i]),
                kind: take(&mut kinds[i]),
                covers: i64::from(covers[i]),
                unit: take(&mut units[i]),
                quota: take(&mut quotas[i]),
                remaining: take(&mut remainings[i]),
                starts_at_ms: starts[i],
                expires_at_ms: expires[i],
                source: take(&mut sources[i]),
                stackable: stackables[i],
                created_at_ms: created[i],
            }
            .into_grant()
        })
        .collect()
}

/// The leases of LOAD_SQL's row (columns 14 to 21), checked like the grants.
fn leases_of(row: &PgRow) -> Result<Vec<LeaseRow>, StoreError> {
    let mut sidecars: Vec<String> = col(row, 14)?;
    let n = sidecars.len();
    let mut remaining: Vec<String> = array(row, 15, n, "lease")?;
    let expires: Vec<i64> = array(row, 16, n, "lease")?;
    let seqs: Vec<i64> = array(row, 17, n, "lease")?;
    let mut held: Vec<String> = array(row, 18, n, "lease")?;
    let mut want: Vec<String> = array(row, 19, n, "lease")?;
    let edge: Vec<bool> = array(row, 20, n, "lease")?;
    let give_back: Vec<bool> = array(row, 21, n, "lease")?;
    let take = std::mem::take::<String>;
    (0..n)
        .map(|i| {
            RawLease {
                sidecar_id: take(&mut sidecars[i]),
                remaining: take(&mut remaining[i]),
                expires_at_ms: expires[i],
                request_seq: seqs[i],
                held: take(&mut held[i]),
                want: take(&mut want[i]),
                edge: edge[i],
                give_back: give_back[i],
            }
            .into_lease()
        })
        .collect()
}

/// The account LOAD_SQL's row holds.
fn read_state(account_id: &str, row: &PgRow) -> Result<AccountState, StoreError> {
    let in_account = |e: StoreError| match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("account {account_id}: {m}")),
        other => other,
    };
    let balance: String = col(row, 1)?;
    let resources: Vec<String> = col(row, 22)?;
    let months: Vec<i64> = array(row, 23, resources.len(), "request count").map_err(in_account)?;
    let counts: Vec<i64> = array(row, 24, resources.len(), "request count").map_err(in_account)?;
    let request_counts = resources
        .iter()
        .zip(months)
        .zip(counts)
        .map(|((r, month), n)| rows::request_count(r, month, n))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(AccountState {
        account_id: account_id.to_owned(),
        version: col(row, 0)?,
        balance: money(&balance)?,
        grants: grants_of(row).map_err(in_account)?,
        once_skus: col(row, 3)?,
        applied_seq: count("applied seq", col(row, 2)?)?,
        leases: leases_of(row).map_err(in_account)?,
        request_counts,
    })
}

pub(super) async fn load(
    pool: &PgPool,
    account_id: &str,
    sidecar_id: &str,
) -> Result<Option<AccountState>, StoreError> {
    let row = sqlx::query(LOAD_SQL)
        .bind(account_id)
        .bind(sidecar_id)
        .fetch_optional(pool)
        .await
        .map_err(db)?;
    row.map(|r| read_state(account_id, &r)).transpose()
}

/// One statement for the whole batch: LOAD_SQL over `ANY($1)`, with the account id.
pub(super) async fn load_many(
    pool: &PgPool,
    account_ids: &[String],
    sidecar_id: &str,
) -> Result<Vec<AccountState>, StoreError> {
    if account_ids.is_empty() {
        return Ok(Vec::new());
    }
    static LOAD_MANY_SQL: LazyLock<String> = LazyLock::new(|| {
        LOAD_SQL.replace(
            " FROM accounts a WHERE a.account_id = $1",
            ", a.account_id FROM accounts a WHERE a.account_id = ANY($1::text[])",
        )
    });
    debug_assert_ne!(
        LOAD_MANY_SQL.as_str(),
        LOAD_SQL,
        "LOAD_SQL no longer ends as load_many expects"
    );
    let rows = sqlx::query(LOAD_MANY_SQL.as_str())
        .bind(account_ids)
        .bind(sidecar_id)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let id: String = col(r, LOAD_COLUMNS)?;
            read_state(&id, r)
        })
        .collect()
}

/// `load_many` for snapshots (see `LedgerStore::load_views`): only this sidecar's lease
/// row, and the sum of every live lease computed by the database, so that an account with
/// a lease per sidecar of a large fleet does not ship them all to every Sync.
pub(super) async fn load_views(
    pool: &PgPool,
    account_ids: &[String],
    sidecar_id: &str,
    expired_before_ms: i64,
) -> Result<Vec<(AccountState, Money)>, StoreError> {
    if account_ids.is_empty() {
        return Ok(Vec::new());
    }
    static LOAD_VIEWS_SQL: LazyLock<String> = LazyLock::new(|| {
        LOAD_SQL
            .replace(
                "WHERE l.account_id = a.account_id ORDER BY l.sidecar_id",
                "WHERE l.account_id = a.account_id AND l.sidecar_id = $2 ORDER BY l.sidecar_id",
            )
            .replace(
                " FROM accounts a WHERE a.account_id = $1",
                ", a.account_id, COALESCE((SELECT SUM(l.remaining) FROM leases l \
                 WHERE l.account_id = a.account_id AND l.expires_at_ms > $3 \
                 AND l.remaining > 0), 0)::text \
                 FROM accounts a WHERE a.account_id = ANY($1::text[])",
            )
    });
    debug_assert!(LOAD_VIEWS_SQL.contains("l.sidecar_id = $2 ORDER BY"));
    let rows = sqlx::query(LOAD_VIEWS_SQL.as_str())
        .bind(account_ids)
        .bind(sidecar_id)
        .bind(expired_before_ms)
        .fetch_all(pool)
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let id: String = col(r, LOAD_COLUMNS)?;
            let set_aside: String = col(r, LOAD_COLUMNS + 1)?;
            Ok((read_state(&id, r)?, money(&set_aside)?))
        })
        .collect()
}

/// Reads a grant from `row`, its columns starting at `at` in `GRANT_COLUMNS` order.
fn read_grant(row: &PgRow, at: usize) -> Result<Grant, StoreError> {
    let covers: i32 = col(row, at + 2)?;
    RawGrant {
        grant_id: col(row, at)?,
        kind: col(row, at + 1)?,
        covers: i64::from(covers),
        unit: col(row, at + 3)?,
        quota: col(row, at + 4)?,
        remaining: col(row, at + 5)?,
        starts_at_ms: col(row, at + 6)?,
        expires_at_ms: col(row, at + 7)?,
        source: col(row, at + 8)?,
        stackable: col(row, at + 9)?,
        created_at_ms: col(row, at + 10)?,
    }
    .into_grant()
}

pub(super) async fn find_topup(
    pool: &PgPool,
    topup_id: &str,
) -> Result<Option<TopUpRecord>, StoreError> {
    let row: Option<(String, String, i64)> =
        sqlx::query_as("SELECT account_id, amount::text, at_ms FROM topups WHERE topup_id = $1")
            .bind(topup_id)
            .fetch_optional(pool)
            .await
            .map_err(db)?;
    row.map(|(account_id, amount, at_ms)| rows::topup(topup_id, account_id, &amount, at_ms))
        .transpose()
}

pub(super) async fn find_purchase(
    pool: &PgPool,
    purchase_id: &str,
) -> Result<Option<(PurchaseRecord, Vec<Grant>)>, StoreError> {
    let row: Option<(String, String, String, i64, i64, bool)> = sqlx::query_as(
        "SELECT account_id, sku, price_paid::text, effective_at_ms, at_ms, once_per_account \
         FROM purchases WHERE purchase_id = $1",
    )
    .bind(purchase_id)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    let Some((account_id, sku, price_paid, effective_at_ms, at_ms, once_per_account)) = row else {
        return Ok(None);
    };
    // Written in the purchase's own transaction and never changed but for `remaining`.
    let grants = sqlx::query(&format!(
        "SELECT {GRANT_COLUMNS} FROM grants WHERE purchase_id = $1 ORDER BY grant_id"
    ))
    .bind(purchase_id)
    .fetch_all(pool)
    .await
    .map_err(db)?
    .iter()
    .map(|r| read_grant(r, 0))
    .collect::<Result<Vec<_>, _>>()?;
    let purchase = RawPurchase {
        account_id,
        sku,
        price_paid,
        effective_at_ms,
        at_ms,
        once_per_account,
    };
    Ok(Some((purchase.into_record(purchase_id)?, grants)))
}

pub(super) async fn find_grant(
    pool: &PgPool,
    grant_id: &str,
) -> Result<Option<(String, Grant)>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {GRANT_COLUMNS}, account_id FROM grants WHERE grant_id = $1"
    ))
    .bind(grant_id)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    row.map(|r| Ok((col(&r, 11)?, read_grant(&r, 0)?)))
        .transpose()
}

pub(super) async fn known_usage(
    pool: &PgPool,
    usage_ids: &[String],
) -> Result<HashSet<String>, StoreError> {
    if usage_ids.is_empty() {
        return Ok(HashSet::new());
    }
    let known: Vec<String> =
        sqlx::query_scalar("SELECT usage_id FROM usage WHERE usage_id = ANY($1::text[])")
            .bind(usage_ids)
            .fetch_all(pool)
            .await
            .map_err(db)?;
    Ok(known.into_iter().collect())
}

/// The accounts of `sidecar_id`'s leases that match `condition`, at most `limit`, in order.
pub(super) async fn leases_where(
    pool: &PgPool,
    sidecar_id: &str,
    condition: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    sqlx::query_scalar(&format!(
        "SELECT account_id FROM leases WHERE sidecar_id = $1 AND {condition} \
         ORDER BY account_id LIMIT $2"
    ))
    .bind(sidecar_id)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(db)
}

/// The latest `limit` usage entries of the account, oldest first, and whether older ones
/// were left out.
pub(super) async fn statement(
    pool: &PgPool,
    account_id: &str,
    limit: usize,
) -> Result<(Vec<StatementEntry>, bool), StoreError> {
    let found: Vec<(String, String, String, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT usage_id, resource, sku, quantity, cost::text, at_ms, free_quantity \
         FROM usage \
         WHERE account_id = $1 ORDER BY at_ms DESC, usage_id DESC LIMIT $2",
    )
    .bind(account_id)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let truncated = found.len() > limit;
    let usage: Vec<RawUsage> = found
        .into_iter()
        .take(limit)
        .map(
            |(usage_id, resource, sku, quantity, cost, at_ms, free_quantity)| RawUsage {
                usage_id,
                resource,
                sku,
                quantity,
                cost,
                at_ms,
                free_quantity,
            },
        )
        .collect();
    let mut deductions = deductions_of(pool, &usage).await?;
    let mut out = usage
        .into_iter()
        .map(|u| {
            let rows = deductions.remove(&u.usage_id).unwrap_or_default();
            u.into_entry(rows)
        })
        .collect::<Result<Vec<_>, _>>()?;
    out.reverse();
    Ok((out, truncated))
}

/// The deduction rows of `usage`, per usage id, in their order.
async fn deductions_of(
    pool: &PgPool,
    usage: &[RawUsage],
) -> Result<HashMap<String, Vec<DeductionRow>>, StoreError> {
    let mut out: HashMap<String, Vec<DeductionRow>> = HashMap::new();
    if usage.is_empty() {
        return Ok(out);
    }
    let ids: Vec<&str> = usage.iter().map(|u| u.usage_id.as_str()).collect();
    let found: Vec<(String, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT usage_id, source, amount::text, unit, gb::text FROM usage_deductions \
         WHERE usage_id = ANY($1::text[]) ORDER BY usage_id, ordinal",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    for (usage_id, source, amount, unit, gb) in found {
        out.entry(usage_id)
            .or_default()
            .push((source, amount, unit, gb));
    }
    Ok(out)
}

const TOKEN_COLUMNS: &str =
    "token_id, token_sha256, kind, account_id, name, created_at_ms, revoked_at_ms";

fn read_token(r: &PgRow) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        token_id: col(r, 0)?,
        token_sha256: col(r, 1)?,
        kind: col(r, 2)?,
        account_id: col(r, 3)?,
        name: col(r, 4)?,
        created_at_ms: col(r, 5)?,
        revoked_at_ms: col(r, 6)?,
    })
}

pub(super) async fn token_by_hash(
    pool: &PgPool,
    token_sha256: &str,
) -> Result<Option<TokenRow>, StoreError> {
    let row = sqlx::query(&format!(
        "SELECT {TOKEN_COLUMNS} FROM auth_tokens WHERE token_sha256 = $1"
    ))
    .bind(token_sha256)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    row.as_ref().map(read_token).transpose()
}

pub(super) async fn has_sub_user(pool: &PgPool, name: &str) -> Result<bool, StoreError> {
    let (found,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM auth_tokens WHERE kind = 'sub_user' AND name = $1 \
         AND revoked_at_ms IS NULL)",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(found)
}

pub(super) async fn list_accounts(
    pool: &PgPool,
    after: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let found: Vec<(String,)> = sqlx::query_as(
        "SELECT account_id FROM accounts WHERE account_id > $1 ORDER BY account_id LIMIT $2",
    )
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    Ok(found.into_iter().map(|(a,)| a).collect())
}

pub(super) async fn list_tokens(
    pool: &PgPool,
    after: &str,
    limit: usize,
) -> Result<Vec<TokenRow>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {TOKEN_COLUMNS} FROM auth_tokens WHERE token_id > $1 \
         ORDER BY token_id LIMIT $2"
    ))
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    rows.iter().map(read_token).collect()
}

pub(super) async fn list_access(
    pool: &PgPool,
    account_id: &str,
    limit: usize,
) -> Result<Vec<AccessRow>, StoreError> {
    let found: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT account_id, sub_user, permissions FROM auth_access \
         WHERE $1 = '' OR account_id = $1 ORDER BY account_id, sub_user LIMIT $2",
    )
    .bind(account_id)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    found
        .into_iter()
        .map(|(account_id, sub_user, p)| {
            Ok(AccessRow {
                account_id,
                sub_user,
                permissions: rows::permissions(i64::from(p))?,
            })
        })
        .collect()
}

pub(super) async fn has_operator_token(pool: &PgPool) -> Result<bool, StoreError> {
    let (found,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM auth_tokens WHERE kind = 'operator' \
         AND revoked_at_ms IS NULL)",
    )
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(found)
}

pub(super) async fn access_of(
    pool: &PgPool,
    sub_user: &str,
    limit: usize,
) -> Result<Vec<(String, u8)>, StoreError> {
    let found: Vec<(String, i32)> = sqlx::query_as(
        "SELECT account_id, permissions FROM auth_access WHERE sub_user = $1 \
         ORDER BY account_id LIMIT $2",
    )
    .bind(sub_user)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(db)?;
    found
        .into_iter()
        .map(|(a, p)| Ok((a, rows::permissions(i64::from(p))?)))
        .collect()
}
