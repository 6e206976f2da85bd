//! The storage interface under the ledger. The ledger's rules run once, above it, as
//! "load the account, decide with pure billing code, commit the changes if the account's
//! version is still the one loaded". That optimistic pattern needs nothing but plain SQL
//! (no advisory locks, no stored procedures), so the same rules run over SQLite and the
//! PostgreSQL-compatible engines.

pub mod rows;
pub mod webhooks;
pub mod webhooks_sql;

use std::collections::HashSet;

use async_trait::async_trait;
use rust_decimal::Decimal;

use super::{StatementEntry, UsageRecord};
use crate::billing::{Deduction, Grant, Money, Resource};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The account changed since it was loaded; load again and retry.
    #[error("account {0} changed concurrently")]
    Conflict(String),
    /// A unique id (topup, purchase, grant, usage) is already recorded.
    #[error("{what} {id} is already recorded")]
    Duplicate { what: &'static str, id: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A number too large for its column; nothing was written.
    #[error("{what} {value} is too large to store")]
    TooLarge { what: &'static str, value: u64 },
    #[error("database error: {0}")]
    Database(String),
}

/// An account as stored, with what one sidecar has had applied.
#[derive(Debug, Clone)]
pub struct AccountState {
    pub account_id: String,
    pub version: i64,
    pub balance: Money,
    pub grants: Vec<Grant>,
    /// Skus of once-per-account offers already bought.
    pub once_skus: Vec<String>,
    /// Highest usage seq of the asking sidecar applied to this account (0: none).
    pub applied_seq: u64,
    /// Every sidecar's lease on this account, expired ones included.
    pub leases: Vec<LeaseRow>,
    /// Requests counted per (resource, month key YYYYMM): the free tier's measure.
    pub request_counts: Vec<(Resource, i64, u64)>,
}

/// Money the ledger has set aside for one sidecar to admit on one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub sidecar_id: String,
    /// What the sidecar may still admit: the lease granted less the usage applied since.
    pub remaining: Money,
    pub expires_at_ms: i64,
    /// Sequence of the sidecar's request that set this lease: an older request arriving
    /// late (a retry, a slow network) is not applied over a newer one.
    pub request_seq: u64,
    /// What the sidecar reported as committed (open holds, unapplied usage) with that
    /// request, less the usage applied since: the part of the lease that is not headroom.
    pub held: Money,
    /// The lease the sidecar wanted with that request (its demand).
    pub want: Money,
    /// The account is near the edge: this sidecar keeps no headroom (see `lease`).
    pub edge: bool,
    /// The ledger asked this sidecar to give back what it does not use.
    pub give_back: bool,
}

#[derive(Debug, Clone)]
pub struct TopUpRecord {
    pub topup_id: String,
    pub account_id: String,
    pub amount: Money,
    pub at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct PurchaseRecord {
    pub purchase_id: String,
    pub account_id: String,
    pub sku: String,
    pub price_paid: Money,
    pub effective_at_ms: i64,
    pub at_ms: i64,
    pub once_per_account: bool,
}

#[derive(Debug, Clone)]
pub struct AppliedUsage {
    pub record: UsageRecord,
    pub sidecar_id: String,
    /// Every part of the charge, in the order taken (see `billing::usage::charge`).
    pub deductions: Vec<Deduction>,
    /// Requests of the record inside the month's free tier.
    pub free_quantity: u64,
}

/// Everything one ledger operation changes on one account, written in one transaction.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    pub balance: Money,
    pub grant_remaining: Vec<(String, Decimal)>,
    pub new_grants: Vec<(Grant, Option<String>)>,
    pub usage: Vec<AppliedUsage>,
    pub topup: Option<TopUpRecord>,
    pub purchase: Option<PurchaseRecord>,
    /// (sidecar id, highest seq applied) to record for this account.
    pub cursors: Vec<(String, u64)>,
    /// Leases to insert or replace (one row per sidecar and account).
    pub leases: Vec<LeaseRow>,
    /// Request counts to set (resource, month key, new count).
    pub request_counts: Vec<(Resource, i64, u64)>,
}

/// What a sub-user may do on an account, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRow {
    pub account_id: String,
    pub sub_user: String,
    /// A bit set, see `auth::Perms`.
    pub permissions: u8,
}

/// An API token as stored: never the token, only its SHA-256 (lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub token_id: String,
    pub token_sha256: String,
    /// `operator`, `owner`, `sub_user` or `sidecar` (see `auth::Kind`).
    pub kind: String,
    /// The account an owner token acts for; empty for the other kinds.
    pub account_id: String,
    /// The sub-user's, sidecar's or operator's name; the account for owners.
    pub name: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// A store's connection pool, as metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open, in use or idle.
    pub size: u32,
    pub idle: usize,
    pub max: u32,
}

#[async_trait]
pub trait LedgerStore: webhooks::WebhookStore + Send + Sync + 'static {
    /// The connection pool, for stores that have one.
    fn pool(&self) -> Option<PoolStats> {
        None
    }

    /// Creates the account; false if it already exists.
    async fn create_account(
        &self,
        account_id: &str,
        balance: Money,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    async fn load(
        &self,
        account_id: &str,
        sidecar_id: &str,
    ) -> Result<Option<AccountState>, StoreError>;

    /// Writes `changes` and bumps the version, only if the version is still
    /// `expected_version`; else `Conflict`. A unique id already present gives `Duplicate`
    /// and writes nothing.
    async fn commit(
        &self,
        account_id: &str,
        expected_version: i64,
        changes: ChangeSet,
    ) -> Result<(), StoreError>;

    async fn find_topup(&self, topup_id: &str) -> Result<Option<TopUpRecord>, StoreError>;

    /// The purchase and the grants it created.
    async fn find_purchase(
        &self,
        purchase_id: &str,
    ) -> Result<Option<(PurchaseRecord, Vec<Grant>)>, StoreError>;

    /// The grant and its account.
    async fn find_grant(&self, grant_id: &str) -> Result<Option<(String, Grant)>, StoreError>;

    /// Which of `usage_ids` are already applied.
    async fn known_usage(&self, usage_ids: &[String]) -> Result<HashSet<String>, StoreError>;

    /// Whether a Sync round asks `known_usage` before its first write. A store whose
    /// usage insert probes the same unique index anyway answers false: the round then
    /// writes first, and an account whose write meets an applied id (`Duplicate`, which
    /// writes nothing of that account) is written again after the lookup.
    fn known_usage_first(&self) -> bool {
        true
    }

    /// `load` for many accounts (usage batches): the ones that exist, in any order.
    /// Stores override this with one round trip per table.
    async fn load_many(
        &self,
        account_ids: &[String],
        sidecar_id: &str,
    ) -> Result<Vec<AccountState>, StoreError> {
        let mut out = Vec::with_capacity(account_ids.len());
        for id in account_ids {
            if let Some(s) = self.load(id, sidecar_id).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// What `sidecar_id` caches of many accounts: `load_many` with only that sidecar's
    /// lease, and the money every sidecar's lease keeps set aside (leases expiring after
    /// `expired_before_ms`, that is now less the grace). A busy account has a lease per
    /// sidecar; a snapshot needs only their sum. Stores override this with one statement
    /// that sums in the database.
    async fn load_views(
        &self,
        account_ids: &[String],
        sidecar_id: &str,
        expired_before_ms: i64,
    ) -> Result<Vec<(AccountState, Money)>, StoreError> {
        let states = self.load_many(account_ids, sidecar_id).await?;
        Ok(states
            .into_iter()
            .map(|mut s| {
                let set_aside: Money = s
                    .leases
                    .iter()
                    .filter(|l| l.expires_at_ms > expired_before_ms)
                    .map(|l| l.remaining.non_negative())
                    .sum();
                s.leases.retain(|l| l.sidecar_id == sidecar_id);
                (s, set_aside)
            })
            .collect())
    }

    /// `commit` for many accounts at once; one result per entry, in order. An entry that
    /// fails (Conflict, Duplicate) writes nothing of its own; the others still commit.
    /// Stores override this with one transaction of set-based statements.
    async fn commit_many(
        &self,
        commits: Vec<(String, i64, ChangeSet)>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let mut out = Vec::with_capacity(commits.len());
        for (account_id, version, changes) in commits {
            out.push(match self.commit(&account_id, version, changes).await {
                Ok(()) => Ok(()),
                Err(e @ (StoreError::Conflict(_) | StoreError::Duplicate { .. })) => Err(e),
                Err(e) => return Err(e),
            });
        }
        Ok(out)
    }

    /// Accounts on which `sidecar_id`'s lease is flagged `give_back`, at most `limit`.
    async fn recalls(&self, sidecar_id: &str, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Accounts on which `sidecar_id` holds a lease with money in it, at most `limit`, in
    /// account order (a restarted sidecar gives them back).
    async fn leased_accounts(
        &self,
        sidecar_id: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// The latest `limit` usage entries of the account, oldest first, and whether older
    /// ones were left out.
    async fn statement(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<(Vec<StatementEntry>, bool), StoreError>;

    /// Records a new token; `Duplicate` if its id or hash is already recorded.
    async fn insert_token(&self, token: TokenRow) -> Result<(), StoreError>;

    /// The token with this hash, revoked or not.
    async fn token_by_hash(&self, token_sha256: &str) -> Result<Option<TokenRow>, StoreError>;

    /// Marks the token revoked at `now_ms` (a second revocation keeps the first time);
    /// false if no token has this id.
    async fn revoke_token(&self, token_id: &str, now_ms: i64) -> Result<bool, StoreError>;

    /// Whether an unrevoked operator token exists.
    async fn has_operator_token(&self) -> Result<bool, StoreError>;

    /// Adds `permissions` (a bit set, see `auth::Perms`) to what `sub_user` holds on
    /// `account_id`; returns what it holds afterwards.
    async fn grant_access(
        &self,
        account_id: &str,
        sub_user: &str,
        permissions: u8,
    ) -> Result<u8, StoreError>;

    /// Takes `permissions` away; returns what is left (0: the row is gone).
    async fn revoke_access(
        &self,
        account_id: &str,
        sub_user: &str,
        permissions: u8,
    ) -> Result<u8, StoreError>;

    /// Every account `sub_user` holds permissions on, at most `limit`.
    async fn access_of(
        &self,
        sub_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, u8)>, StoreError>;

    /// Whether an unrevoked sub-user token has this name.
    async fn has_sub_user(&self, name: &str) -> Result<bool, StoreError>;

    /// Account ids after `after` (all: empty), in order, at most `limit`.
    async fn list_accounts(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError>;

    /// Tokens (revoked ones too) with ids after `after`, in id order, at most `limit`.
    async fn list_tokens(&self, after: &str, limit: usize) -> Result<Vec<TokenRow>, StoreError>;

    /// Access rows of `account_id` (every account: empty), in (account, sub-user) order,
    /// at most `limit`.
    async fn list_access(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<Vec<AccessRow>, StoreError>;
}
