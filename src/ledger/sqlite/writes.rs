//! Writes of the SQLite store: an account's changes row by row under the account's version
//! check, leaving the rows the PostgreSQL store's set-based statements leave. A batch of
//! accounts (a Sync round) is one transaction, so one WAL sync however many accounts it
//! carries; each account in a savepoint of its own, so one that fails writes nothing of
//! its own and the others still commit. Statements are prepared once per connection and
//! reused (`prepare_cached`): SQLite has no round trips to save, the cost per row is
//! parsing and the fsync.

use rusqlite::{Connection, OptionalExtension, Statement, params};

use super::{GRANT_COLUMNS, db, dup};
use crate::billing::{Deduction, Money};
use crate::ledger::store::rows::{bigint, deduction_row, permissions};
use crate::ledger::store::{AppliedUsage, ChangeSet, StoreError, TokenRow};

/// Writes `c` for `account_id` in `tx`, only if the account is still at
/// `expected_version` (else `Conflict`); row by row, in the order the PostgreSQL store's
/// set-based statements leave behind.
pub(super) fn write_changes(
    tx: &Connection,
    account_id: &str,
    expected_version: i64,
    c: &ChangeSet,
) -> Result<(), StoreError> {
    let n = tx
        .prepare_cached(
            "UPDATE accounts SET version = version + 1, balance = ?1 \
             WHERE account_id = ?2 AND version = ?3",
        )
        .map_err(db)?
        .execute(params![c.balance.to_string(), account_id, expected_version])
        .map_err(db)?;
    if n != 1 {
        return Err(StoreError::Conflict(account_id.to_owned()));
    }
    write_grants(tx, account_id, c)?;
    write_payments(tx, account_id, c)?;
    write_usage(tx, account_id, c)?;
    write_leases(tx, account_id, c)?;
    write_counts(tx, account_id, c)
}

/// Remaining amounts of existing grants, then new grants.
fn write_grants(tx: &Connection, account_id: &str, c: &ChangeSet) -> Result<(), StoreError> {
    for (id, remaining) in &c.grant_remaining {
        tx.prepare_cached(
            "UPDATE grants SET remaining = ?1 WHERE grant_id = ?2 AND account_id = ?3",
        )
        .map_err(db)?
        .execute(params![remaining.to_string(), id, account_id])
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
                i64::from(g.covers.bits()),
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
    Ok(())
}

/// The top-up or purchase the change records.
fn write_payments(tx: &Connection, account_id: &str, c: &ChangeSet) -> Result<(), StoreError> {
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
    Ok(())
}

/// Usage rows, and then deduction rows, inserted by one statement per this many: a
/// statement is opened, started and halted once for them instead of once per row (10
/// columns: 320 parameters, within SQLite's limit of 999 bound parameters of old
/// versions). Fewer left over go one row per statement.
pub const DEFAULT_SQLITE_ROWS_PER_INSERT: usize = 32;

const USAGE_INSERT: &str = "INSERT INTO usage (usage_id, account_id, resource, sku, quantity, \
     cost, at_ms, sidecar_id, seq, free_quantity) VALUES ";
const USAGE_ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
const DEDUCTION_INSERT: &str =
    "INSERT INTO usage_deductions (usage_id, ordinal, source, amount, unit, gb) VALUES ";
const DEDUCTION_ROW: &str = "(?, ?, ?, ?, ?, ?)";

/// `head` with `rows` copies of `row`: one multi-row INSERT.
fn insert_sql(head: &str, row: &str, rows: usize) -> String {
    let mut sql = String::with_capacity(head.len() + rows * (row.len() + 2));
    sql.push_str(head);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql
}

/// Usage records, then their deductions (in the order taken: one ordinal sequence each),
/// several rows per statement. A chunk that reuses a usage id is done again row by row
/// (the failed statement wrote nothing), so the error names the id.
fn write_usage(tx: &Connection, account_id: &str, c: &ChangeSet) -> Result<(), StoreError> {
    let n = DEFAULT_SQLITE_ROWS_PER_INSERT;
    let mut chunks = c.usage.chunks_exact(n);
    if c.usage.len() >= n {
        let mut ins = tx
            .prepare_cached(&insert_sql(USAGE_INSERT, USAGE_ROW, n))
            .map_err(db)?;
        for chunk in &mut chunks {
            for (i, u) in chunk.iter().enumerate() {
                bind_usage(&mut ins, i * 10, account_id, u)?;
            }
            match ins.raw_execute() {
                Ok(_) => {}
                Err(e) if super::is_unique_violation(&e) => usage_rows(tx, account_id, chunk)?,
                Err(e) => return Err(db(e)),
            }
        }
    }
    usage_rows(tx, account_id, chunks.remainder())?;
    let deductions: Vec<(&str, i64, &Deduction)> = c
        .usage
        .iter()
        .flat_map(|u| {
            (0_i64..)
                .zip(&u.deductions)
                .map(|(o, d)| (u.record.usage_id.as_str(), o, d))
        })
        .collect();
    let mut chunks = deductions.chunks_exact(n);
    if deductions.len() >= n {
        let mut ins = tx
            .prepare_cached(&insert_sql(DEDUCTION_INSERT, DEDUCTION_ROW, n))
            .map_err(db)?;
        for chunk in &mut chunks {
            for (i, (usage_id, ordinal, d)) in chunk.iter().enumerate() {
                bind_deduction(&mut ins, i * 6, usage_id, *ordinal, d)?;
            }
            ins.raw_execute().map_err(db)?;
        }
    }
    let mut ded = tx
        .prepare_cached(&insert_sql(DEDUCTION_INSERT, DEDUCTION_ROW, 1))
        .map_err(db)?;
    for (usage_id, ordinal, d) in chunks.remainder() {
        bind_deduction(&mut ded, 0, usage_id, *ordinal, d)?;
        ded.raw_execute().map_err(db)?;
    }
    Ok(())
}

/// Usage records one row per statement.
fn usage_rows(tx: &Connection, account_id: &str, usage: &[AppliedUsage]) -> Result<(), StoreError> {
    if usage.is_empty() {
        return Ok(());
    }
    let mut ins = tx
        .prepare_cached(&insert_sql(USAGE_INSERT, USAGE_ROW, 1))
        .map_err(db)?;
    for u in usage {
        bind_usage(&mut ins, 0, account_id, u)?;
        ins.raw_execute()
            .map_err(dup("usage", &u.record.usage_id))?;
    }
    Ok(())
}

/// Binds one usage row's 10 values after the first `at` parameters.
fn bind_usage(
    ins: &mut Statement<'_>,
    at: usize,
    account_id: &str,
    u: &AppliedUsage,
) -> Result<(), StoreError> {
    let r = &u.record;
    ins.raw_bind_parameter(at + 1, &r.usage_id).map_err(db)?;
    ins.raw_bind_parameter(at + 2, account_id).map_err(db)?;
    ins.raw_bind_parameter(at + 3, r.resource.name())
        .map_err(db)?;
    ins.raw_bind_parameter(at + 4, &r.sku).map_err(db)?;
    ins.raw_bind_parameter(at + 5, bigint("quantity", r.quantity)?)
        .map_err(db)?;
    ins.raw_bind_parameter(at + 6, r.cost.to_string())
        .map_err(db)?;
    ins.raw_bind_parameter(at + 7, r.at_ms).map_err(db)?;
    ins.raw_bind_parameter(at + 8, &u.sidecar_id).map_err(db)?;
    ins.raw_bind_parameter(at + 9, bigint("seq", r.seq)?)
        .map_err(db)?;
    ins.raw_bind_parameter(at + 10, bigint("free quantity", u.free_quantity)?)
        .map_err(db)
}

/// Binds one deduction row's 6 values after the first `at` parameters.
fn bind_deduction(
    ins: &mut Statement<'_>,
    at: usize,
    usage_id: &str,
    ordinal: i64,
    d: &Deduction,
) -> Result<(), StoreError> {
    let (source, amount, unit, gb) = deduction_row(d);
    ins.raw_bind_parameter(at + 1, usage_id).map_err(db)?;
    ins.raw_bind_parameter(at + 2, ordinal).map_err(db)?;
    ins.raw_bind_parameter(at + 3, source).map_err(db)?;
    ins.raw_bind_parameter(at + 4, amount).map_err(db)?;
    ins.raw_bind_parameter(at + 5, unit).map_err(db)?;
    ins.raw_bind_parameter(at + 6, gb).map_err(db)
}

fn write_leases(tx: &Connection, account_id: &str, c: &ChangeSet) -> Result<(), StoreError> {
    let mut upsert = tx
        .prepare_cached(
            "INSERT INTO leases (account_id, sidecar_id, remaining, expires_at_ms, request_seq, \
             held, want, edge, give_back) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (account_id, sidecar_id) DO UPDATE SET \
             remaining = excluded.remaining, expires_at_ms = excluded.expires_at_ms, \
             request_seq = excluded.request_seq, held = excluded.held, want = excluded.want, \
             edge = excluded.edge, give_back = excluded.give_back",
        )
        .map_err(db)?;
    for l in &c.leases {
        upsert
            .execute(params![
                account_id,
                l.sidecar_id,
                l.remaining.to_string(),
                l.expires_at_ms,
                bigint("lease request seq", l.request_seq)?,
                l.held.to_string(),
                l.want.to_string(),
                l.edge,
                l.give_back
            ])
            .map_err(db)?;
    }
    Ok(())
}

/// Request counts (absolute values) and the sidecars' cursors.
fn write_counts(tx: &Connection, account_id: &str, c: &ChangeSet) -> Result<(), StoreError> {
    for (resource, month, count) in &c.request_counts {
        tx.prepare_cached(
            "INSERT INTO request_counts (account_id, resource, month, count) \
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (account_id, resource, month) \
             DO UPDATE SET count = excluded.count",
        )
        .map_err(db)?
        .execute(params![
            account_id,
            resource.name(),
            month,
            bigint("request count", *count)?
        ])
        .map_err(db)?;
    }
    for (sidecar, seq) in &c.cursors {
        tx.prepare_cached(
            "INSERT INTO sidecar_cursors (sidecar_id, account_id, applied_seq) VALUES (?1, ?2, ?3) \
             ON CONFLICT (sidecar_id, account_id) DO UPDATE SET applied_seq = \
             CASE WHEN excluded.applied_seq > sidecar_cursors.applied_seq \
             THEN excluded.applied_seq ELSE sidecar_cursors.applied_seq END",
        )
        .map_err(db)?
        .execute(params![sidecar, account_id, bigint("applied seq", *seq)?])
        .map_err(db)?;
    }
    Ok(())
}

/// `LedgerStore::commit_many`: the whole batch in one transaction (one WAL sync), each
/// entry in a savepoint, so that an entry whose version moved (Conflict) or that reuses an
/// id (Duplicate) writes nothing of its own while the others commit. One result per entry,
/// in order; any other failure rolls the whole batch back.
pub(super) fn commit_many(
    c: &mut Connection,
    commits: &[(String, i64, ChangeSet)],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = c.transaction().map_err(db)?;
    let mut out = Vec::with_capacity(commits.len());
    for (account_id, version, changes) in commits {
        let sp = tx.savepoint().map_err(db)?;
        match write_changes(&sp, account_id, *version, changes) {
            Ok(()) => {
                sp.commit().map_err(db)?;
                out.push(Ok(()));
            }
            Err(e @ (StoreError::Conflict(_) | StoreError::Duplicate { .. })) => {
                // Dropped unfinished, a savepoint rolls back to where it began.
                sp.finish().map_err(db)?;
                out.push(Err(e));
            }
            Err(e) => return Err(e),
        }
    }
    tx.commit().map_err(db)?;
    Ok(out)
}

pub(super) fn create_account(
    c: &Connection,
    id: &str,
    balance: Money,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "INSERT INTO accounts (account_id, version, balance, created_at_ms) \
             VALUES (?1, 1, ?2, ?3) ON CONFLICT (account_id) DO NOTHING",
            params![id, balance.to_string(), now_ms],
        )
        .map_err(db)?;
    Ok(n == 1)
}

pub(super) fn insert_token(c: &Connection, t: &TokenRow) -> Result<(), StoreError> {
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
}

pub(super) fn revoke_token(c: &Connection, id: &str, now_ms: i64) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE auth_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, ?2) \
             WHERE token_id = ?1",
            params![id, now_ms],
        )
        .map_err(db)?;
    Ok(n == 1)
}

/// Adds `perms` to what `sub_user` holds on `account_id`; what it holds after.
pub(super) fn grant_access(
    c: &Connection,
    account_id: &str,
    sub_user: &str,
    perms: u8,
) -> Result<u8, StoreError> {
    c.query_row(
        "INSERT INTO auth_access (account_id, sub_user, permissions) VALUES (?1, ?2, ?3) \
         ON CONFLICT (account_id, sub_user) DO UPDATE \
         SET permissions = auth_access.permissions | excluded.permissions \
         RETURNING permissions",
        params![account_id, sub_user, i64::from(perms)],
        |r| r.get::<_, i64>(0),
    )
    .map_err(db)
    .and_then(permissions)
}

/// Takes `perms` away (a row left with none is deleted); what is left.
pub(super) fn revoke_access(
    c: &mut Connection,
    account_id: &str,
    sub_user: &str,
    perms: u8,
) -> Result<u8, StoreError> {
    let tx = c.transaction().map_err(db)?;
    tx.execute(
        "UPDATE auth_access SET permissions = permissions & ~?3 \
         WHERE account_id = ?1 AND sub_user = ?2",
        params![account_id, sub_user, i64::from(perms)],
    )
    .map_err(db)?;
    tx.execute(
        "DELETE FROM auth_access WHERE account_id = ?1 AND sub_user = ?2 AND permissions = 0",
        params![account_id, sub_user],
    )
    .map_err(db)?;
    let left: Option<i64> = tx
        .query_row(
            "SELECT permissions FROM auth_access WHERE account_id = ?1 AND sub_user = ?2",
            params![account_id, sub_user],
            |r| r.get(0),
        )
        .optional()
        .map_err(db)?;
    tx.commit().map_err(db)?;
    permissions(left.unwrap_or(0))
}
