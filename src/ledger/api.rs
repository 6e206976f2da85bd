//! The contract between a sidecar's engine and its ledger: what a sidecar journals and
//! pushes (usage records), what it caches (account snapshots with its lease), what it asks
//! for (lease requests), and the one call that carries them (`LedgerApi::sync`). The engine
//! and the journal see the ledger only through these types, so the ledger's rules and its
//! stores can change without touching them; the embedded ledger and `RemoteLedger` both
//! implement `LedgerApi`.

use async_trait::async_trait;

use super::store::StoreError;
use crate::billing::{self, Deduction, Grant, Money, PurchaseError, Resource};

/// How long after its expiry a lease nobody gave back is still set aside: the time after
/// which a silent sidecar is presumed gone (see `ledger::lease`). A sidecar clamps its holds
/// to it until the ledger says otherwise (`SyncResponse::hold_grace_ms`).
pub const DEFAULT_LEASE_HOLD_GRACE_MS: i64 = 24 * 60 * 60 * 1000;

/// One acknowledged charge, as a sidecar journals and pushes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The sidecar's journal sequence number: increasing per account.
    pub seq: u64,
    /// Exactly-once key: the reservation id (or usage report id).
    pub usage_id: String,
    pub account_id: String,
    pub resource: Resource,
    pub sku: String,
    pub quantity: u64,
    pub cost: Money,
    pub at_ms: i64,
}

/// What a sidecar caches of an account.
#[derive(Debug, Clone)]
pub struct AccountSnapshot {
    pub account_id: String,
    /// Increases with every change of the account at the ledger.
    pub version: i64,
    pub balance: Money,
    pub grants: Vec<Grant>,
    /// Highest seq of the asking sidecar's usage included in this snapshot.
    pub applied_seq: u64,
    /// The asking sidecar's lease, as of `applied_seq`.
    pub lease: Lease,
    /// Requests counted this month and before (the free tier), as of `applied_seq`.
    pub request_counts: billing::free_tier::RequestCounts,
    /// Money of the account no sidecar holds a lease on: what any sidecar could be granted
    /// at once.
    pub unleased: Money,
    /// Unused money of other sidecars the ledger asked back for this sidecar's unmet need
    /// (0 unless this answer is to such a request): it frees up at their next sync.
    pub recalling: Money,
}

#[derive(Debug, Clone)]
pub struct StatementEntry {
    pub usage_id: String,
    pub resource: Resource,
    pub sku: String,
    pub quantity: u64,
    /// The list cost of the quantity.
    pub cost: Money,
    pub at_ms: i64,
    /// What paid each part of the cost, in the order taken (they sum to `cost`): the free
    /// tier, grants (volume plans with their GB), the balance.
    pub deductions: Vec<Deduction>,
    /// Requests inside the month's free tier.
    pub free_quantity: u64,
}

#[derive(Debug, Clone)]
pub struct SyncRequest {
    pub sidecar_id: String,
    /// Usage in journal order; applied exactly once whatever is sent again.
    pub usage: Vec<UsageRecord>,
    /// Leases to grant, renew or give back (after the usage is applied).
    pub leases: Vec<LeaseRequest>,
    /// Accounts to return snapshots of (besides those in `usage` and `leases`).
    pub accounts: Vec<String>,
    /// Non-zero: the sidecar has just started, and gives back every lease a previous run
    /// of it left (on accounts not in `leases`), with this lease request sequence number.
    /// Its journal tells it what it still owes; what it does not name, it does not use.
    pub reset_seq: u64,
}

#[derive(Debug, Clone)]
pub struct SyncResponse {
    /// Every record of the request is applied (now or before). Snapshots taken after.
    pub snapshots: Vec<AccountSnapshot>,
    /// The ledger's clock when it answered.
    pub now_ms: i64,
    /// Holds must expire by their lease's expiry plus this (see `lease`).
    pub hold_grace_ms: i64,
    /// Accounts on which the ledger asks this sidecar to give back its unused lease
    /// (also those it has not cached), at most `DEFAULT_RECALLS_MAX`.
    pub recalls: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("account {0} does not exist")]
    UnknownAccount(String),
    #[error("account {0} already exists")]
    AccountExists(String),
    #[error("unknown sku {0:?}: see GetCatalog for what is on offer")]
    UnknownOffer(String),
    #[error("{what} {id} was already used with different parameters: {detail}")]
    IdReused {
        what: &'static str,
        id: String,
        detail: String,
    },
    #[error(transparent)]
    Purchase(#[from] PurchaseError),
    #[error("expires_at_ms {expires_at_ms} is not after now ({now_ms})")]
    ExpiryInPast { expires_at_ms: i64, now_ms: i64 },
    #[error("account {0} is changing too often to commit; retry")]
    Contended(String),
    #[error("ledger storage: {0}")]
    Store(#[from] StoreError),
    #[error("ledger unreachable: {0}")]
    Unavailable(String),
}

/// The interface between a sidecar's engine and its ledger: one call, so that a remote
/// ledger costs one round trip per sync whatever it carries.
#[async_trait]
pub trait LedgerApi: Send + Sync + 'static {
    /// Applies a usage batch exactly once, then grants the leases asked for, and returns
    /// fresh snapshots of every account named.
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError>;
}

/// A sidecar's lease on one account as the sidecar sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lease {
    /// What it may still admit, as of the snapshot it came with.
    pub remaining: Money,
    pub expires_at_ms: i64,
    /// Sequence number of the sidecar's request that set this lease.
    pub seq: u64,
    /// The account is near the edge: keep no headroom, ask for each need, give back at
    /// once what is not used.
    pub edge: bool,
    /// The ledger asks for the unused part back now (another sidecar needs it).
    pub give_back: bool,
}

/// A sidecar asking to (re)size its lease on an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub account_id: String,
    /// The lease it would like to have in total (its commitments plus headroom).
    pub want: Money,
    /// The lease it must have for the work waiting on this answer: its commitments plus
    /// the cost of the requests in flight. Not granted at all unless it fits.
    pub need: Money,
    /// What the lease must keep covering: the sidecar's open holds plus its usage the
    /// ledger has not applied yet (not counting usage in the same sync). Never leased away.
    pub held: Money,
    /// Giving the lease back (graceful shutdown): keep only `held`, expire now.
    pub release: bool,
    /// Giving the unused part back: the lease becomes `held`, its expiry stays. The
    /// sidecar admits nothing more under its current lease once it has sent this.
    pub give_back: bool,
    /// Increases with every lease request of the sidecar, also across its restarts. The
    /// ledger applies a request only if it is newer than the one that set the lease.
    pub seq: u64,
}
