//! Writes of the PostgreSQL store. An account's changes (`ChangeSet`) are written under
//! its version check, one set-based statement per table however many accounts and usage
//! records a batch carries (`write_batch`), so a sync of thousands of records costs a few
//! round trips and one commit. A reused unique id fails such a statement for all; the
//! batch is then written again one account at a time in savepoints to tell which one
//! (`write_each`).

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, PgPool};

use super::unnest::Unnest;
use super::{UNIQUE_VIOLATION, db, is_unique_violation, sqlstate, tx_err};
use crate::billing::Grant;
use crate::ledger::store::rows::{bigint, deduction_row, int4};
use crate::ledger::store::{
    AppliedUsage, ChangeSet, LeaseRow, PurchaseRecord, StoreError, TokenRow, TopUpRecord,
};

/// Why a write failed before its transaction could finish.
pub(super) enum Failure {
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
pub(super) type Entry<'a> = (&'a str, i64, &'a ChangeSet);

/// The accounts of a batch that passed their version check, with their changes.
type Live<'a> = [(&'a str, &'a ChangeSet)];

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
pub(super) async fn write_batch(
    tx: &mut PgConnection,
    entries: &[Entry<'_>],
) -> Result<Vec<bool>, Failure> {
    // For errors that concern the write as a whole; a single account's write names it.
    let scope = match entries {
        [(account_id, _, _)] => *account_id,
        _ => "(batch)",
    };
    let live_mask = check_versions(tx, entries, scope).await?;
    let live: Vec<(&str, &ChangeSet)> = entries
        .iter()
        .zip(&live_mask)
        .filter_map(|((a, _, c), l)| l.then_some((*a, *c)))
        .collect();
    debug_assert!(
        live.iter().map(|(a, _)| a).collect::<HashSet<_>>().len() == live.len(),
        "one written entry per account"
    );
    write_grants(tx, &live, scope).await?;
    write_topups(tx, &live, scope).await?;
    write_purchases(tx, &live, scope).await?;
    write_usage(tx, &live, scope).await?;
    write_leases(tx, &live, scope).await?;
    write_request_counts(tx, &live, scope).await?;
    write_cursors(tx, &live, scope).await?;
    Ok(live_mask)
}

/// The version check of every account (its first entry only), bumping the version and
/// setting the balance of those still at the expected version; per entry, whether it passed.
async fn check_versions(
    tx: &mut PgConnection,
    entries: &[Entry<'_>],
    scope: &str,
) -> Result<Vec<bool>, Failure> {
    let mut firsts = HashSet::with_capacity(entries.len());
    let first: Vec<bool> = entries.iter().map(|(a, _, _)| firsts.insert(*a)).collect();
    let candidates: Vec<&Entry<'_>> = entries
        .iter()
        .zip(&first)
        .filter_map(|(e, f)| f.then_some(e))
        .collect();
    let updated = Unnest::new(&candidates)
        .text("account_id", |(a, _, _)| a)
        .int8("version", |(_, v, _)| *v)
        .numeric("balance", |(_, _, c)| c.balance.to_string())
        .statement(|src| {
            format!(
                "UPDATE accounts SET version = accounts.version + 1, \
                 balance = v.balance::numeric FROM {src} \
                 WHERE accounts.account_id = v.account_id AND accounts.version = v.version \
                 RETURNING accounts.account_id"
            )
        })
        .fetch_text(tx)
        .await
        .map_err(write_err(scope, None))?;
    let updated: HashSet<&str> = updated.iter().map(String::as_str).collect();
    Ok(entries
        .iter()
        .zip(&first)
        .map(|((a, _, _), f)| *f && updated.contains(a))
        .collect())
}

/// Remaining amounts of existing grants, then new grants.
async fn write_grants(tx: &mut PgConnection, live: &Live<'_>, scope: &str) -> Result<(), Failure> {
    let remaining: Vec<(&str, &String, String)> = live
        .iter()
        .flat_map(|(a, c)| {
            last_per_key(&c.grant_remaining, |(id, _)| id.as_str())
                .into_iter()
                .map(|(id, r)| (*a, id, r.to_string()))
        })
        .collect();
    Unnest::new(&remaining)
        .text("grant_id", |(_, id, _)| id)
        .numeric("remaining", |(_, _, r)| r.clone())
        .text("account_id", |(a, _, _)| a)
        .statement(|src| {
            format!(
                "UPDATE grants SET remaining = v.remaining::numeric FROM {src} \
                 WHERE grants.grant_id = v.grant_id AND grants.account_id = v.account_id"
            )
        })
        .execute(tx)
        .await
        .map_err(write_err(scope, None))?;
    let new: Vec<(&str, &Grant, Option<&str>)> = live
        .iter()
        .flat_map(|(a, c)| c.new_grants.iter().map(|(g, p)| (*a, g, p.as_deref())))
        .collect();
    Unnest::new(&new)
        .text("grant_id", |(_, g, _)| &g.grant_id)
        .text("kind", |(_, g, _)| g.kind.name())
        .int4("covers", |(_, g, _)| i32::from(g.covers.bits()))
        .text("unit", |(_, g, _)| g.unit.code())
        .numeric("quota", |(_, g, _)| g.quota.to_string())
        .numeric("remaining", |(_, g, _)| g.remaining.to_string())
        .int8("starts_at_ms", |(_, g, _)| g.starts_at_ms)
        .int8("expires_at_ms", |(_, g, _)| g.expires_at_ms)
        .text("source", |(_, g, _)| &g.source)
        .boolean("stackable", |(_, g, _)| g.stackable)
        .text_opt("purchase_id", |(_, _, p)| *p)
        .text("account_id", |(a, _, _)| a)
        .int8("created_at_ms", |(_, g, _)| g.created_at_ms)
        .insert("grants", "")
        .execute(tx)
        .await
        .map_err(write_err(scope, Some("grant")))?;
    Ok(())
}

async fn write_topups(tx: &mut PgConnection, live: &Live<'_>, scope: &str) -> Result<(), Failure> {
    let topups: Vec<(&str, &TopUpRecord)> = live
        .iter()
        .filter_map(|(a, c)| c.topup.as_ref().map(|t| (*a, t)))
        .collect();
    Unnest::new(&topups)
        .text("topup_id", |(_, t)| &t.topup_id)
        .text("account_id", |(a, _)| a)
        .numeric("amount", |(_, t)| t.amount.to_string())
        .int8("at_ms", |(_, t)| t.at_ms)
        .insert("topups", "")
        .execute(tx)
        .await
        .map_err(write_err(scope, Some("topup")))?;
    Ok(())
}

async fn write_purchases(
    tx: &mut PgConnection,
    live: &Live<'_>,
    scope: &str,
) -> Result<(), Failure> {
    let purchases: Vec<(&str, &PurchaseRecord)> = live
        .iter()
        .filter_map(|(a, c)| c.purchase.as_ref().map(|p| (*a, p)))
        .collect();
    Unnest::new(&purchases)
        .text("purchase_id", |(_, p)| &p.purchase_id)
        .text("account_id", |(a, _)| a)
        .text("sku", |(_, p)| &p.sku)
        .numeric("price_paid", |(_, p)| p.price_paid.to_string())
        .int8("effective_at_ms", |(_, p)| p.effective_at_ms)
        .int8("at_ms", |(_, p)| p.at_ms)
        .boolean("once_per_account", |(_, p)| p.once_per_account)
        .insert("purchases", "")
        .execute(tx)
        .await
        .map_err(write_err(scope, Some("purchase")))?;
    Ok(())
}

/// A usage record's numbers as BIGINT: (quantity, seq, free quantity).
fn usage_numbers(u: &AppliedUsage) -> Result<(i64, i64, i64), StoreError> {
    Ok((
        bigint("quantity", u.record.quantity)?,
        bigint("seq", u.record.seq)?,
        bigint("free quantity", u.free_quantity)?,
    ))
}

/// Usage records, then their deductions (in the order taken: one ordinal sequence each).
async fn write_usage(tx: &mut PgConnection, live: &Live<'_>, scope: &str) -> Result<(), Failure> {
    let mut usage = Vec::new();
    let mut deductions = Vec::new();
    for (a, c) in live {
        for u in &c.usage {
            usage.push((*a, u, usage_numbers(u)?));
            for (i, d) in u.deductions.iter().enumerate() {
                let (source, amount, unit, gb) = deduction_row(d);
                let ordinal = int4("deduction ordinal", i)?;
                deductions.push((
                    u.record.usage_id.as_str(),
                    ordinal,
                    source,
                    amount,
                    unit,
                    gb,
                ));
            }
        }
    }
    Unnest::new(&usage)
        .text("usage_id", |(_, u, _)| &u.record.usage_id)
        .text("account_id", |(a, _, _)| a)
        .text("resource", |(_, u, _)| u.record.resource.name())
        .text("sku", |(_, u, _)| &u.record.sku)
        .int8("quantity", |(_, _, n)| n.0)
        .numeric("cost", |(_, u, _)| u.record.cost.to_string())
        .int8("at_ms", |(_, u, _)| u.record.at_ms)
        .text("sidecar_id", |(_, u, _)| &u.sidecar_id)
        .int8("seq", |(_, _, n)| n.1)
        .int8("free_quantity", |(_, _, n)| n.2)
        .insert("usage", "")
        .execute(tx)
        .await
        .map_err(write_err(scope, Some("usage")))?;
    Unnest::new(&deductions)
        .text("usage_id", |d| d.0)
        .int4("ordinal", |d| d.1)
        .text("source", |d| d.2)
        .numeric("amount", |d| d.3.clone())
        .text("unit", |d| d.4)
        .numeric_opt("gb", |d| d.5.clone())
        .insert("usage_deductions", "")
        .execute(tx)
        .await
        .map_err(write_err(scope, None))?;
    Ok(())
}

/// Leases: one row per (account, sidecar), as ON CONFLICT DO UPDATE may not touch a row
/// twice in one statement.
async fn write_leases(tx: &mut PgConnection, live: &Live<'_>, scope: &str) -> Result<(), Failure> {
    let mut leases: Vec<(&str, &LeaseRow, i64)> = Vec::new();
    for (a, c) in live {
        for l in last_per_key(&c.leases, |l| l.sidecar_id.as_str()) {
            leases.push((*a, l, bigint("lease request seq", l.request_seq)?));
        }
    }
    Unnest::new(&leases)
        .text("account_id", |(a, _, _)| a)
        .text("sidecar_id", |(_, l, _)| &l.sidecar_id)
        .numeric("remaining", |(_, l, _)| l.remaining.to_string())
        .int8("expires_at_ms", |(_, l, _)| l.expires_at_ms)
        .int8("request_seq", |(_, _, seq)| *seq)
        .numeric("held", |(_, l, _)| l.held.to_string())
        .numeric("want", |(_, l, _)| l.want.to_string())
        .boolean("edge", |(_, l, _)| l.edge)
        .boolean("give_back", |(_, l, _)| l.give_back)
        .insert(
            "leases",
            "ON CONFLICT (account_id, sidecar_id) DO UPDATE SET \
             remaining = excluded.remaining, expires_at_ms = excluded.expires_at_ms, \
             request_seq = excluded.request_seq, held = excluded.held, want = excluded.want, \
             edge = excluded.edge, give_back = excluded.give_back",
        )
        .execute(tx)
        .await
        .map_err(write_err(scope, None))?;
    Ok(())
}

/// Request counts: absolute values decided under the version check just passed.
async fn write_request_counts(
    tx: &mut PgConnection,
    live: &Live<'_>,
    scope: &str,
) -> Result<(), Failure> {
    let mut counts: Vec<(&str, &'static str, i64, i64)> = Vec::new();
    for (a, c) in live {
        for (r, m, n) in last_per_key(&c.request_counts, |(r, m, _)| (*r, *m)) {
            counts.push((*a, r.name(), *m, bigint("request count", *n)?));
        }
    }
    Unnest::new(&counts)
        .text("account_id", |c| c.0)
        .text("resource", |c| c.1)
        .int8("month", |c| c.2)
        .int8("count", |c| c.3)
        .insert(
            "request_counts",
            "ON CONFLICT (account_id, resource, month) DO UPDATE SET count = excluded.count",
        )
        .execute(tx)
        .await
        .map_err(write_err(scope, None))?;
    Ok(())
}

/// Cursors: one per sidecar of a live entry (ON CONFLICT DO UPDATE may not touch a row
/// twice in one statement), and live entries are of distinct accounts.
async fn write_cursors(tx: &mut PgConnection, live: &Live<'_>, scope: &str) -> Result<(), Failure> {
    let mut cursors: Vec<(&str, &str, i64)> = Vec::new();
    for (a, c) in live {
        for (sidecar, seq) in last_per_key(&c.cursors, |(sc, _)| sc.as_str()) {
            cursors.push((sidecar, a, bigint("applied seq", *seq)?));
        }
    }
    Unnest::new(&cursors)
        .text("sidecar_id", |c| c.0)
        .text("account_id", |c| c.1)
        .int8("applied_seq", |c| c.2)
        .insert(
            "sidecar_cursors",
            "ON CONFLICT (sidecar_id, account_id) DO UPDATE SET \
             applied_seq = GREATEST(sidecar_cursors.applied_seq, excluded.applied_seq)",
        )
        .execute(tx)
        .await
        .map_err(write_err(scope, None))?;
    Ok(())
}

/// The first id of `ids` that is repeated within `ids`.
fn first_repeated<'a>(ids: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = HashSet::new();
    ids.into_iter().find(|id| !seen.insert(*id))
}

/// The ids of kind `what` in `changes`, and the query that finds a stored one.
fn unique_ids<'a>(what: &str, changes: &[&'a ChangeSet]) -> (Vec<&'a str>, &'static str) {
    match what {
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
    }
}

/// Which unique id of kind `what` in `changes` made a write fail: one already stored (as
/// `conn` sees it), else one repeated in `changes` itself, else the first.
async fn duplicate_id(
    conn: &mut PgConnection,
    what: &'static str,
    changes: &[&ChangeSet],
) -> StoreError {
    let (ids, sql) = unique_ids(what, changes);
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
        let lost = |e| Failure::Store(tx_err(account_id, e));
        let mut sp = (&mut *tx).begin().await.map_err(lost)?;
        match write_batch(&mut sp, std::slice::from_ref(entry)).await {
            Ok(written) if written == [true] => {
                sp.commit().await.map_err(lost)?;
                out.push(Ok(()));
            }
            Ok(_) => {
                sp.rollback().await.map_err(lost)?;
                out.push(Err(StoreError::Conflict(account_id.to_owned())));
            }
            Err(Failure::DuplicateIn(what)) => {
                sp.rollback().await.map_err(lost)?;
                // Seen from this transaction: what is stored plus the earlier entries.
                out.push(Err(duplicate_id(&mut *tx, what, &[changes]).await));
            }
            Err(f) => return Err(f),
        }
    }
    Ok(out)
}

/// `LedgerStore::commit`: one account's changes in a transaction of their own.
pub(super) async fn commit(
    pool: &PgPool,
    account_id: &str,
    expected_version: i64,
    changes: &ChangeSet,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(|e| tx_err(account_id, e))?;
    match write_batch(&mut tx, &[(account_id, expected_version, changes)]).await {
        Ok(written) if written == [true] => tx.commit().await.map_err(|e| tx_err(account_id, e)),
        Ok(_) => {
            let _ = tx.rollback().await;
            Err(StoreError::Conflict(account_id.to_owned()))
        }
        Err(f) => {
            let _ = tx.rollback().await;
            Err(match f {
                Failure::Store(e) => e,
                Failure::DuplicateIn(what) => match pool.acquire().await {
                    Ok(mut conn) => duplicate_id(&mut conn, what, &[changes]).await,
                    Err(e) => db(e),
                },
            })
        }
    }
}

/// One result per entry of a batch: every entry a Conflict (the batch is retried).
fn all_conflict(commits: &[(String, i64, ChangeSet)]) -> Vec<Result<(), StoreError>> {
    commits
        .iter()
        .map(|(a, _, _)| Err(StoreError::Conflict(a.clone())))
        .collect()
}

/// `LedgerStore::commit_many`: one transaction for the whole batch (one fsync) with one
/// statement per table (`write_batch`), accounts in id order so that concurrent batches
/// tend to lock them in the same order (a deadlock all the same is a Conflict of every
/// entry, retried). An account whose version moved is left out and reported as Conflict. A
/// reused unique id fails the set-based statement for all: then the batch is written again
/// one account at a time, each in a savepoint, to tell which entry it was.
pub(super) async fn commit_many(
    pool: &PgPool,
    commits: &[(String, i64, ChangeSet)],
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
    let mut tx = pool.begin().await.map_err(db)?;
    let sorted = match write_batch(&mut tx, &entries).await {
        Ok(written) => written
            .iter()
            .zip(&entries)
            .map(|(w, (a, _, _))| match w {
                true => Ok(()),
                false => Err(StoreError::Conflict((*a).to_owned())),
            })
            .collect(),
        Err(Failure::DuplicateIn(_)) => {
            let _ = tx.rollback().await;
            tx = pool.begin().await.map_err(db)?;
            match write_each(&mut tx, &entries).await {
                Ok(sorted) => sorted,
                Err(Failure::Store(StoreError::Conflict(_))) => {
                    let _ = tx.rollback().await;
                    return Ok(all_conflict(commits));
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
            return Ok(all_conflict(commits));
        }
        Err(Failure::Store(e)) => {
            let _ = tx.rollback().await;
            return Err(e);
        }
    };
    match tx.commit().await {
        Ok(()) => Ok(unsort(&order, sorted)),
        Err(e) => match tx_err("(batch)", e) {
            // The whole batch lost to a concurrent writer: every entry retries.
            StoreError::Conflict(_) => Ok(all_conflict(commits)),
            other => Err(other),
        },
    }
}

/// Results of the sorted entries back in the order of the batch (`order[k]` is the batch
/// index of sorted entry `k`).
fn unsort(order: &[usize], sorted: Vec<Result<(), StoreError>>) -> Vec<Result<(), StoreError>> {
    debug_assert_eq!(order.len(), sorted.len(), "one result per entry");
    let mut out: Vec<Option<Result<(), StoreError>>> = (0..order.len()).map(|_| None).collect();
    for (k, r) in sorted.into_iter().enumerate() {
        if let Some(slot) = order.get(k).and_then(|&i| out.get_mut(i)) {
            *slot = Some(r);
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Database("lost result".into()))))
        .collect()
}

pub(super) async fn create_account(
    pool: &PgPool,
    account_id: &str,
    balance: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "INSERT INTO accounts (account_id, version, balance, created_at_ms) \
         VALUES ($1, 1, $2::numeric, $3) ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account_id)
    .bind(balance)
    .bind(now_ms)
    .execute(pool)
    .await
    .map_err(db)?
    .rows_affected();
    Ok(n == 1)
}

pub(super) async fn insert_token(pool: &PgPool, t: &TokenRow) -> Result<(), StoreError> {
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
    .execute(pool)
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

pub(super) async fn revoke_token(
    pool: &PgPool,
    token_id: &str,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let n = sqlx::query(
        "UPDATE auth_tokens SET revoked_at_ms = COALESCE(revoked_at_ms, $2) WHERE token_id = $1",
    )
    .bind(token_id)
    .bind(now_ms)
    .execute(pool)
    .await
    .map_err(db)?
    .rows_affected();
    Ok(n == 1)
}

/// Adds `permissions` to what `sub_user` holds on `account_id`; what it holds after.
pub(super) async fn grant_access(
    pool: &PgPool,
    account_id: &str,
    sub_user: &str,
    permissions: u8,
) -> Result<i32, StoreError> {
    let (p,): (i32,) = sqlx::query_as(
        "INSERT INTO auth_access (account_id, sub_user, permissions) VALUES ($1, $2, $3) \
         ON CONFLICT (account_id, sub_user) DO UPDATE \
         SET permissions = auth_access.permissions | excluded.permissions \
         RETURNING permissions",
    )
    .bind(account_id)
    .bind(sub_user)
    .bind(i32::from(permissions))
    .fetch_one(pool)
    .await
    .map_err(db)?;
    Ok(p)
}

/// Takes `permissions` away (a row left with none is deleted); what is left, if a row was.
pub(super) async fn revoke_access(
    pool: &PgPool,
    account_id: &str,
    sub_user: &str,
    permissions: u8,
) -> Result<Option<i32>, StoreError> {
    let left: Option<(i32,)> = sqlx::query_as(
        "UPDATE auth_access SET permissions = permissions & ~($3::int4) \
         WHERE account_id = $1 AND sub_user = $2 RETURNING permissions",
    )
    .bind(account_id)
    .bind(sub_user)
    .bind(i32::from(permissions))
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    sqlx::query(
        "DELETE FROM auth_access WHERE account_id = $1 AND sub_user = $2 AND permissions = 0",
    )
    .bind(account_id)
    .bind(sub_user)
    .execute(pool)
    .await
    .map_err(db)?;
    Ok(left.map(|(p,)| p))
}
