//! Reads of the SQLite store: an account with its grants, leases and counts (in one
//! transaction, so one snapshot), and statements; rows decoded by the row types both
//! stores share (`store::rows`).

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};
use rust_decimal::Decimal;

use super::{GRANT_COLUMNS, db};
use crate::billing::Grant;
use crate::ledger::StatementEntry;
use crate::ledger::store::rows::{
    self, RawGrant, RawLease, RawPurchase, RawUsage, count, dec, money, permissions,
};
use crate::ledger::store::{
    AccessRow, AccountState, LeaseRow, PurchaseRecord, StoreError, TokenRow, TopUpRecord,
};

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

pub(super) fn grants_where(
    conn: &Connection,
    clause: &str,
    arg: &str,
) -> Result<Vec<Grant>, StoreError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE {clause} ORDER BY grant_id");
    let raw = query_all(conn, &sql, arg, read_grant)?;
    raw.into_iter().map(RawGrant::into_grant).collect()
}

/// The account `id` as `sidecar` sees it, read in `tx` (one snapshot).
pub(super) fn load_state(
    tx: &rusqlite::Transaction<'_>,
    id: String,
    sidecar: &str,
) -> Result<Option<AccountState>, StoreError> {
    let row: Option<(i64, String)> = tx
        .prepare_cached("SELECT version, balance FROM accounts WHERE account_id = ?1")
        .map_err(db)?
        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(db)?;
    let Some((version, balance)) = row else {
        return Ok(None);
    };
    let applied_seq: i64 = tx
        .prepare_cached(
            "SELECT applied_seq FROM sidecar_cursors WHERE sidecar_id = ?1 AND account_id = ?2",
        )
        .map_err(db)?
        .query_row(params![sidecar, id], |r| r.get(0))
        .optional()
        .map_err(db)?
        .unwrap_or(0);
    Ok(Some(AccountState {
        grants: grants_where(tx, "account_id = ?1", &id)?,
        once_skus: query_all(
            tx,
            "SELECT DISTINCT sku FROM purchases WHERE account_id = ?1 \
             AND once_per_account ORDER BY sku",
            &id,
            |r| r.get(0),
        )?,
        leases: leases_of(tx, &id)?,
        request_counts: request_counts_of(tx, &id)?,
        version,
        balance: money(&balance)?,
        applied_seq: count("applied seq", applied_seq)?,
        account_id: id,
    }))
}

/// Every row of `sql` (one `?1` parameter, `arg`), read by `read`.
fn query_all<T>(
    c: &Connection,
    sql: &str,
    arg: &str,
    read: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = c.prepare_cached(sql).map_err(db)?;
    stmt.query_map([arg], read)
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)
}

fn leases_of(c: &Connection, account_id: &str) -> Result<Vec<LeaseRow>, StoreError> {
    let raw = query_all(
        c,
        "SELECT sidecar_id, remaining, expires_at_ms, request_seq, held, want, edge, give_back \
         FROM leases WHERE account_id = ?1 ORDER BY sidecar_id",
        account_id,
        |r| {
            Ok(RawLease {
                sidecar_id: r.get(0)?,
                remaining: r.get(1)?,
                expires_at_ms: r.get(2)?,
                request_seq: r.get(3)?,
                held: r.get(4)?,
                want: r.get(5)?,
                edge: r.get(6)?,
                give_back: r.get(7)?,
            })
        },
    )?;
    raw.into_iter().map(RawLease::into_lease).collect()
}

fn request_counts_of(
    c: &Connection,
    account_id: &str,
) -> Result<Vec<(crate::billing::Resource, i64, u64)>, StoreError> {
    let raw = query_all(
        c,
        "SELECT resource, month, count FROM request_counts \
         WHERE account_id = ?1 ORDER BY resource, month",
        account_id,
        |r| <(String, i64, i64)>::try_from(r),
    )?;
    raw.into_iter()
        .map(|(r, month, n)| rows::request_count(&r, month, n))
        .collect()
}

/// The latest `limit` usage entries of the account, oldest first, and whether older ones
/// were left out.
pub(super) fn statement_of(
    c: &Connection,
    account_id: &str,
    limit: usize,
) -> Result<(Vec<StatementEntry>, bool), StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT usage_id, resource, sku, quantity, cost, at_ms, free_quantity FROM usage \
             WHERE account_id = ?1 ORDER BY at_ms DESC, usage_id DESC LIMIT ?2",
        )
        .map_err(db)?;
    let limit_rows = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
    let found = stmt
        .query_map(params![account_id, limit_rows], |r| {
            Ok(RawUsage {
                usage_id: r.get(0)?,
                resource: r.get(1)?,
                sku: r.get(2)?,
                quantity: r.get(3)?,
                cost: r.get(4)?,
                at_ms: r.get(5)?,
                free_quantity: r.get(6)?,
            })
        })
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    let truncated = found.len() > limit;
    let mut out = Vec::with_capacity(found.len().min(limit));
    for usage in found.into_iter().take(limit) {
        let deductions = query_all(
            c,
            "SELECT source, amount, unit, gb FROM usage_deductions WHERE usage_id = ?1 \
             ORDER BY ordinal",
            &usage.usage_id,
            |r| <(String, String, String, Option<String>)>::try_from(r),
        )?;
        out.push(usage.into_entry(deductions)?);
    }
    out.reverse();
    Ok((out, truncated))
}

pub(super) fn find_topup(c: &Connection, id: &str) -> Result<Option<TopUpRecord>, StoreError> {
    let row: Option<(String, String, i64)> = c
        .query_row(
            "SELECT account_id, amount, at_ms FROM topups WHERE topup_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(db)?;
    row.map(|(account_id, amount, at_ms)| rows::topup(id, account_id, &amount, at_ms))
        .transpose()
}

pub(super) fn find_purchase(
    c: &Connection,
    id: &str,
) -> Result<Option<(PurchaseRecord, Vec<Grant>)>, StoreError> {
    let row: Option<RawPurchase> = c
        .query_row(
            "SELECT account_id, sku, price_paid, effective_at_ms, at_ms, once_per_account \
             FROM purchases WHERE purchase_id = ?1",
            [id],
            |r| {
                Ok(RawPurchase {
                    account_id: r.get(0)?,
                    sku: r.get(1)?,
                    price_paid: r.get(2)?,
                    effective_at_ms: r.get(3)?,
                    at_ms: r.get(4)?,
                    once_per_account: r.get(5)?,
                })
            },
        )
        .optional()
        .map_err(db)?;
    let Some(purchase) = row else {
        return Ok(None);
    };
    let grants = grants_where(c, "purchase_id = ?1", id)?;
    Ok(Some((purchase.into_record(id)?, grants)))
}

pub(super) fn find_grant(c: &Connection, id: &str) -> Result<Option<(String, Grant)>, StoreError> {
    let account: Option<String> = c
        .query_row(
            "SELECT account_id FROM grants WHERE grant_id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    let Some(account) = account else {
        return Ok(None);
    };
    let g = grants_where(c, "grant_id = ?1", id)?;
    Ok(g.into_iter().next().map(|g| (account, g)))
}

pub(super) fn known_usage(c: &Connection, ids: Vec<String>) -> Result<HashSet<String>, StoreError> {
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
}

/// Accounts on which `sidecar_id` holds a lease with money in it (the remaining amount is
/// text here, so compared in Rust), at most `limit`, in account order.
pub(super) fn leased_accounts(
    c: &Connection,
    sidecar_id: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let leases = query_all(
        c,
        "SELECT account_id, remaining FROM leases WHERE sidecar_id = ?1 ORDER BY account_id",
        sidecar_id,
        |r| <(String, String)>::try_from(r),
    )?;
    let mut out = Vec::new();
    for (account, remaining) in leases {
        if out.len() >= limit {
            break;
        }
        if dec(&remaining)? > Decimal::ZERO {
            out.push(account);
        }
    }
    Ok(out)
}

pub(super) fn recalls(
    c: &Connection,
    sidecar_id: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT account_id FROM leases WHERE sidecar_id = ?1 AND give_back \
             ORDER BY account_id LIMIT ?2",
        )
        .map_err(db)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    stmt.query_map(params![sidecar_id, limit], |r| r.get::<_, String>(0))
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)
}

const TOKEN_COLUMNS: &str =
    "token_id, token_sha256, kind, account_id, name, created_at_ms, revoked_at_ms";

fn read_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok(TokenRow {
        token_id: r.get(0)?,
        token_sha256: r.get(1)?,
        kind: r.get(2)?,
        account_id: r.get(3)?,
        name: r.get(4)?,
        created_at_ms: r.get(5)?,
        revoked_at_ms: r.get(6)?,
    })
}

pub(super) fn token_by_hash(c: &Connection, hash: &str) -> Result<Option<TokenRow>, StoreError> {
    c.query_row(
        &format!("SELECT {TOKEN_COLUMNS} FROM auth_tokens WHERE token_sha256 = ?1"),
        [hash],
        read_token,
    )
    .optional()
    .map_err(db)
}

pub(super) fn has_sub_user(c: &Connection, name: &str) -> Result<bool, StoreError> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM auth_tokens WHERE kind = 'sub_user' AND name = ?1 \
         AND revoked_at_ms IS NULL)",
        [name],
        |r| r.get(0),
    )
    .map_err(db)
}

pub(super) fn list_accounts(
    c: &Connection,
    after: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = c
        .prepare_cached(
            "SELECT account_id FROM accounts WHERE account_id > ?1 ORDER BY account_id LIMIT ?2",
        )
        .map_err(db)?;
    stmt.query_map(params![after, limit], |r| r.get(0))
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)
}

pub(super) fn list_tokens(
    c: &Connection,
    after: &str,
    limit: usize,
) -> Result<Vec<TokenRow>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {TOKEN_COLUMNS} FROM auth_tokens WHERE token_id > ?1 \
             ORDER BY token_id LIMIT ?2"
        ))
        .map_err(db)?;
    stmt.query_map(params![after, limit], read_token)
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)
}

pub(super) fn list_access(
    c: &Connection,
    account_id: &str,
    limit: usize,
) -> Result<Vec<AccessRow>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut stmt = c
        .prepare_cached(
            "SELECT account_id, sub_user, permissions FROM auth_access \
             WHERE ?1 = '' OR account_id = ?1 ORDER BY account_id, sub_user LIMIT ?2",
        )
        .map_err(db)?;
    let found = stmt
        .query_map(params![account_id, limit], |r| {
            <(String, String, i64)>::try_from(r)
        })
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    found
        .into_iter()
        .map(|(account_id, sub_user, p)| {
            Ok(AccessRow {
                account_id,
                sub_user,
                permissions: permissions(p)?,
            })
        })
        .collect()
}

pub(super) fn has_operator_token(c: &Connection) -> Result<bool, StoreError> {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM auth_tokens WHERE kind = 'operator' \
         AND revoked_at_ms IS NULL)",
        [],
        |r| r.get(0),
    )
    .map_err(db)
}

pub(super) fn access_of(
    c: &Connection,
    sub_user: &str,
    limit: usize,
) -> Result<Vec<(String, u8)>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT account_id, permissions FROM auth_access WHERE sub_user = ?1 \
             ORDER BY account_id LIMIT ?2",
        )
        .map_err(db)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let found = stmt
        .query_map(params![sub_user, limit], |r| <(String, i64)>::try_from(r))
        .map_err(db)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(db)?;
    found
        .into_iter()
        .map(|(account, p)| Ok((account, permissions(p)?)))
        .collect()
}
