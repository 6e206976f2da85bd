//! The ledger: the authoritative record of accounts, grants, top-ups, purchases and usage.
//! Sidecars never write it directly; they push usage batches and pull snapshots through
//! `LedgerApi` (`api`, the contract between engine and ledger), which the embedded ledger
//! implements in-process and a remote ledger implements over gRPC. Every rule applied
//! here is the pure billing code the sidecar runs too.

pub mod api;
pub mod lease;
pub mod postgres;
pub mod sqlite;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;

use crate::billing::status::BalanceView;
use crate::billing::{
    self, Catalog, Grant, GrantKind, GrantUnit, Money, PurchaseContext, Resource, ResourceSet,
};
use crate::clock::SharedClock;
pub use api::{
    AccountSnapshot, DEFAULT_LEASE_HOLD_GRACE_MS, Lease, LeaseRequest, LedgerApi, LedgerError,
    StatementEntry, SyncRequest, SyncResponse, UsageRecord,
};
pub use lease::LeaseConfig;
use store::{
    AppliedUsage, ChangeSet, LeaseRow, LedgerStore, PurchaseRecord, StoreError, TopUpRecord,
};

/// Most entries one statement returns (the latest ones).
pub const DEFAULT_STATEMENT_ENTRIES_MAX: usize = 10_000;

/// Times an operation reloads and retries after a concurrent change of the same account.
pub const COMMIT_RETRIES_MAX: usize = 32;

/// Most recalled accounts one Sync answer lists (the rest follow in later syncs).
pub const DEFAULT_RECALLS_MAX: usize = 1_000;
/// Most leases a restarted sidecar's first Sync gives back (far more than one sidecar
/// ever holds), written `RESET_CHUNK` at a time.
pub const DEFAULT_RESET_LEASES_MAX: usize = 1_000_000;
const RESET_CHUNK: usize = 1_000;

/// Sidecar id of the sidecar embedded with its ledger in `quotad serve`.
pub const EMBEDDED_SIDECAR_ID: &str = "embedded";

/// What applying `records` to the account changes: burn-down of each record not applied
/// before, its sidecar's cursor, and its lease less what was used. None if nothing.
fn usage_changes(
    state: &store::AccountState,
    records: &[&UsageRecord],
    known: &HashSet<String>,
    sidecar_id: &str,
    cal: &billing::free_tier::Calendar,
) -> Option<ChangeSet> {
    let mut grants = state.grants.clone();
    let mut balance = state.balance;
    let mut counts = billing::free_tier::RequestCounts::from_rows(state.request_counts.clone());
    let mut counted = std::collections::BTreeSet::new();
    let mut seen = HashSet::new();
    let mut applied = Vec::new();
    let mut max_seq = state.applied_seq;
    for r in records {
        max_seq = max_seq.max(r.seq);
        if known.contains(&r.usage_id) || !seen.insert(r.usage_id.as_str()) {
            continue;
        }
        // Volume plans (traffic GB) change `grants` here and show in `grant_remaining`;
        // the free tier is measured against the ledger's own counts (authoritative when
        // several sidecars serve the account).
        if let Some(key) = counts.add(cal, r.resource, 0, r.at_ms) {
            counted.insert(key);
        }
        let c = billing::usage::charge_counted(
            &mut grants,
            &mut balance,
            &mut counts,
            cal,
            r.resource,
            r.quantity,
            r.cost,
            r.at_ms,
        );
        applied.push(AppliedUsage {
            record: (*r).clone(),
            sidecar_id: sidecar_id.to_owned(),
            deductions: c.deductions,
            free_quantity: c.free_quantity,
        });
    }
    if applied.is_empty() && max_seq == state.applied_seq {
        return None;
    }
    let grant_remaining = grants
        .iter()
        .zip(&state.grants)
        .filter(|(new, old)| new.remaining != old.remaining)
        .map(|(new, _)| (new.grant_id.clone(), new.remaining))
        .collect();
    // What was used came out of this sidecar's lease.
    // Money only: free requests and GB from volume plans spend nothing of a lease.
    let spent: Money = applied
        .iter()
        .flat_map(|u| u.deductions.iter().filter(|d| d.is_money()))
        .map(|d| d.amount)
        .sum();
    let leases = state
        .leases
        .iter()
        .filter(|l| l.sidecar_id == sidecar_id && spent.is_positive())
        .map(|l| LeaseRow {
            remaining: (l.remaining - spent).non_negative(),
            held: (l.held - spent).non_negative(),
            ..l.clone()
        })
        .collect();
    let request_counts = counted
        .into_iter()
        .map(|(r, m)| (r, m, counts.0.get(&(r, m)).copied().unwrap_or(0)))
        .collect();
    Some(ChangeSet {
        balance,
        grant_remaining,
        request_counts,
        usage: applied,
        cursor: Some((sidecar_id.to_owned(), max_seq)),
        leases,
        ..ChangeSet::default()
    })
}

/// The ledger's rules over a store.
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
    catalog: Arc<Catalog>,
    clock: SharedClock,
    lease_cfg: LeaseConfig,
}

impl Ledger {
    pub fn new(
        store: Arc<dyn LedgerStore>,
        catalog: Arc<Catalog>,
        clock: SharedClock,
        lease_cfg: LeaseConfig,
    ) -> Ledger {
        Ledger {
            store,
            catalog,
            clock,
            lease_cfg,
        }
    }

    pub fn lease_config(&self) -> LeaseConfig {
        self.lease_cfg
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The store, for what lives beside the accounts (tokens and access, see `auth`).
    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    async fn load(
        &self,
        account_id: &str,
        sidecar_id: &str,
    ) -> Result<store::AccountState, LedgerError> {
        self.store
            .load(account_id, sidecar_id)
            .await?
            .ok_or_else(|| LedgerError::UnknownAccount(account_id.to_owned()))
    }

    /// Loads, lets `decide` build the changes, commits; reloads and retries on a concurrent
    /// change. `decide` returning None means nothing to write.
    async fn update<T>(
        &self,
        account_id: &str,
        sidecar_id: &str,
        mut decide: impl FnMut(&store::AccountState) -> Result<Option<(ChangeSet, T)>, LedgerError>,
    ) -> Result<Option<T>, LedgerError> {
        for _ in 0..COMMIT_RETRIES_MAX {
            let state = self.load(account_id, sidecar_id).await?;
            let Some((changes, out)) = decide(&state)? else {
                return Ok(None);
            };
            match self.store.commit(account_id, state.version, changes).await {
                Ok(()) => return Ok(Some(out)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(LedgerError::Contended(account_id.to_owned()))
    }

    pub async fn create_account(
        &self,
        account_id: &str,
        balance: Money,
    ) -> Result<(), LedgerError> {
        if self
            .store
            .create_account(account_id, balance, self.now_ms())
            .await?
        {
            tracing::info!(account_id, %balance, "account created");
            Ok(())
        } else {
            Err(LedgerError::AccountExists(account_id.to_owned()))
        }
    }

    /// Adds `amount` to the balance once per `topup_id`.
    pub async fn top_up(
        &self,
        account_id: &str,
        amount: Money,
        topup_id: &str,
    ) -> Result<(), LedgerError> {
        let check = |t: &TopUpRecord| {
            if t.account_id == account_id && t.amount == amount {
                Ok(())
            } else {
                Err(LedgerError::IdReused {
                    what: "topup_id",
                    id: topup_id.to_owned(),
                    detail: format!("first used for {} on account {}", t.amount, t.account_id),
                })
            }
        };
        if let Some(t) = self.store.find_topup(topup_id).await? {
            return check(&t);
        }
        let now_ms = self.now_ms();
        let r = self
            .update(account_id, EMBEDDED_SIDECAR_ID, |s| {
                let c = ChangeSet {
                    balance: s.balance + amount,
                    topup: Some(TopUpRecord {
                        topup_id: topup_id.to_owned(),
                        account_id: account_id.to_owned(),
                        amount,
                        at_ms: now_ms,
                    }),
                    ..ChangeSet::default()
                };
                Ok(Some((c, s.balance + amount)))
            })
            .await;
        match r {
            Ok(b) => {
                let balance = b.unwrap_or_default();
                tracing::info!(account_id, topup_id, %amount, %balance, "top-up");
                Ok(())
            }
            // A concurrent retry of the same top-up won the race.
            Err(LedgerError::Store(StoreError::Duplicate { .. })) => {
                match self.store.find_topup(topup_id).await? {
                    Some(t) => check(&t),
                    None => Err(LedgerError::Contended(account_id.to_owned())),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Buys `sku` once per `purchase_id`; returns the grants created and the price recorded.
    pub async fn purchase(
        &self,
        account_id: &str,
        sku: &str,
        purchase_id: &str,
        effective_at_ms: i64,
    ) -> Result<(Vec<Grant>, Money), LedgerError> {
        let check = |(p, grants): (PurchaseRecord, Vec<Grant>)| {
            if p.account_id == account_id && p.sku == sku {
                Ok((grants, p.price_paid))
            } else {
                Err(LedgerError::IdReused {
                    what: "purchase_id",
                    id: purchase_id.to_owned(),
                    detail: format!("first used for {} on account {}", p.sku, p.account_id),
                })
            }
        };
        if let Some(found) = self.store.find_purchase(purchase_id).await? {
            return check(found);
        }
        let offer = self
            .catalog
            .offer(sku)
            .ok_or_else(|| LedgerError::UnknownOffer(sku.to_owned()))?;
        let first_grant = billing::purchase_grant_id(purchase_id, 1);
        let r = self
            .update(account_id, EMBEDDED_SIDECAR_ID, |s| {
                if s.grants.iter().any(|g| g.grant_id == first_grant) {
                    // A concurrent call with this purchase id won: answer with its outcome
                    // rather than judge this copy against the grants it created.
                    return Ok(None);
                }
                // "Now" of this attempt, read after the account was loaded: a plan a
                // concurrent purchase sold before the load started no later than this.
                let now_ms = self.now_ms();
                let plan = billing::plan_purchase(
                    offer,
                    &PurchaseContext {
                        grants: &s.grants,
                        once_skus_bought: &s.once_skus,
                        now_ms,
                    },
                    purchase_id,
                    effective_at_ms,
                )?;
                let c = ChangeSet {
                    balance: s.balance,
                    new_grants: plan
                        .grants
                        .iter()
                        .map(|g| (g.clone(), Some(purchase_id.to_owned())))
                        .collect(),
                    purchase: Some(PurchaseRecord {
                        purchase_id: purchase_id.to_owned(),
                        account_id: account_id.to_owned(),
                        sku: sku.to_owned(),
                        price_paid: plan.price_paid,
                        effective_at_ms: plan.effective_at_ms,
                        at_ms: now_ms,
                        once_per_account: offer.once_per_account,
                    }),
                    ..ChangeSet::default()
                };
                Ok(Some((c, (plan.grants, plan.price_paid))))
            })
            .await;
        match r {
            Ok(Some(out)) => {
                tracing::info!(account_id, sku, purchase_id, price_paid = %out.1, "purchase");
                Ok(out)
            }
            // A concurrent copy of this purchase won the race.
            Ok(None) | Err(LedgerError::Store(StoreError::Duplicate { .. })) => {
                match self.store.find_purchase(purchase_id).await? {
                    Some(found) => check(found),
                    None => Err(LedgerError::Contended(account_id.to_owned())),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Grants a coupon or trial credit in money, once per `grant_id`.
    pub async fn grant_credit(
        &self,
        account_id: &str,
        grant_id: &str,
        kind: GrantKind,
        covers: ResourceSet,
        amount: Money,
        expires_at_ms: i64,
    ) -> Result<Grant, LedgerError> {
        let check = |(acct, g): (String, Grant)| {
            if acct == account_id
                && g.kind == kind
                && g.quota == amount.as_decimal()
                && g.covers == covers
                && g.expires_at_ms == expires_at_ms
            {
                Ok(g)
            } else {
                Err(LedgerError::IdReused {
                    what: "grant_id",
                    id: grant_id.to_owned(),
                    detail: format!("it is a {} of {} on account {acct}", g.kind.name(), g.quota),
                })
            }
        };
        if let Some(found) = self.store.find_grant(grant_id).await? {
            return check(found);
        }
        let now_ms = self.now_ms();
        if expires_at_ms <= now_ms {
            return Err(LedgerError::ExpiryInPast {
                expires_at_ms,
                now_ms,
            });
        }
        let r = self
            .update(account_id, EMBEDDED_SIDECAR_ID, |s| {
                if s.grants.iter().any(|g| g.grant_id == grant_id) {
                    // A concurrent call with this grant id won: answer with its outcome.
                    return Ok(None);
                }
                // Valid, and paying for usage, from when it is recorded: this attempt.
                let now_ms = self.now_ms();
                let grant = Grant {
                    grant_id: grant_id.to_owned(),
                    kind,
                    covers,
                    unit: GrantUnit::Money,
                    quota: amount.as_decimal(),
                    remaining: amount.as_decimal(),
                    starts_at_ms: now_ms,
                    expires_at_ms,
                    created_at_ms: now_ms,
                    source: kind.name().to_ascii_lowercase(),
                    stackable: true,
                };
                let c = ChangeSet {
                    balance: s.balance,
                    new_grants: vec![(grant.clone(), None)],
                    ..ChangeSet::default()
                };
                Ok(Some((c, grant)))
            })
            .await;
        match r {
            Ok(Some(grant)) => {
                tracing::info!(account_id, grant_id, %amount, kind = kind.name(), "credit granted");
                Ok(grant)
            }
            Ok(None) | Err(LedgerError::Store(StoreError::Duplicate { .. })) => {
                match self.store.find_grant(grant_id).await? {
                    Some(found) => check(found),
                    None => Err(LedgerError::Contended(account_id.to_owned())),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The latest usage entries of the account, oldest first, and whether older ones exist.
    pub async fn statement(
        &self,
        account_id: &str,
    ) -> Result<(Vec<StatementEntry>, bool), LedgerError> {
        // Distinguish an unknown account from one with no usage.
        self.load(account_id, EMBEDDED_SIDECAR_ID).await?;
        Ok(self
            .store
            .statement(account_id, DEFAULT_STATEMENT_ENTRIES_MAX)
            .await?)
    }

    /// Applies usage exactly once, per account in the order given. The whole batch is
    /// loaded, decided and written with a handful of set-based store calls; accounts that
    /// changed concurrently (another ledger process) are reloaded and retried alone.
    pub async fn apply_usage(
        &self,
        sidecar_id: &str,
        usage: &[UsageRecord],
    ) -> Result<(), LedgerError> {
        let mut by_account: BTreeMap<&str, Vec<&UsageRecord>> = BTreeMap::new();
        for u in usage {
            by_account.entry(u.account_id.as_str()).or_default().push(u);
        }
        let mut todo: Vec<String> = by_account.keys().map(|k| (*k).to_owned()).collect();
        for _ in 0..COMMIT_RETRIES_MAX {
            if todo.is_empty() {
                return Ok(());
            }
            let states = self.store.load_many(&todo, sidecar_id).await?;
            if let Some(missing) = todo
                .iter()
                .find(|id| !states.iter().any(|s| &s.account_id == *id))
            {
                return Err(LedgerError::UnknownAccount(missing.clone()));
            }
            let ids: Vec<String> = todo
                .iter()
                .flat_map(|a| by_account[a.as_str()].iter().map(|r| r.usage_id.clone()))
                .collect();
            let known = self.store.known_usage(&ids).await?;
            let commits: Vec<(String, i64, ChangeSet)> = states
                .iter()
                .filter_map(|state| {
                    let records = &by_account[state.account_id.as_str()];
                    usage_changes(state, records, &known, sidecar_id, &self.catalog.calendar)
                        .map(|c| (state.account_id.clone(), state.version, c))
                })
                .collect();
            let accounts: Vec<String> = commits.iter().map(|c| c.0.clone()).collect();
            let results = self.store.commit_many(commits).await?;
            // Another ledger process applied some of the same usage, or changed the
            // account: reload those and apply only what is still missing.
            todo = accounts
                .into_iter()
                .zip(results)
                .filter(|(_, r)| r.is_err())
                .map(|(a, _)| a)
                .collect();
        }
        match todo.first() {
            None => Ok(()),
            Some(a) => Err(LedgerError::Contended(a.clone())),
        }
    }

    /// The account as `sidecar_id` should cache it.
    fn snapshot_of(&self, s: store::AccountState, sidecar_id: &str) -> AccountSnapshot {
        let now_ms = self.now_ms();
        let grace = self.lease_cfg.hold_grace_ms;
        let lease = s
            .leases
            .iter()
            .find(|l| l.sidecar_id == sidecar_id)
            .map(|l| Lease {
                remaining: l.remaining,
                expires_at_ms: l.expires_at_ms,
                seq: l.request_seq,
                edge: l.edge,
                give_back: l.give_back,
            })
            .unwrap_or_default();
        let payable = lease::payable(s.balance, &s.grants, now_ms);
        AccountSnapshot {
            unleased: lease::unleased(payable, &s.leases, now_ms, grace),
            recalling: Money::ZERO,
            account_id: s.account_id,
            version: s.version,
            balance: s.balance,
            grants: s.grants,
            applied_seq: s.applied_seq,
            lease,
            request_counts: billing::free_tier::RequestCounts::from_rows(s.request_counts),
        }
    }

    /// The account as the ledger sees it: money leased to sidecars counts as held.
    pub async fn balance_view(&self, account_id: &str) -> Result<BalanceView, LedgerError> {
        let now_ms = self.now_ms();
        let s = self.load(account_id, "").await?;
        let leased = lease::occupied_by_others(&s.leases, "", now_ms, self.lease_cfg.hold_grace_ms);
        let available = billing::status::available_for(
            s.balance,
            &s.grants,
            leased,
            Resource::GpuShared,
            now_ms,
        );
        Ok(BalanceView {
            account_id: s.account_id,
            status: billing::status::account_status(s.balance, &s.grants, None, now_ms),
            balance: s.balance,
            available,
            held: leased,
            grants: s.grants,
            now_ms,
        })
    }

    /// A snapshot of the account for `sidecar_id`.
    pub async fn snapshot(
        &self,
        sidecar_id: &str,
        account_id: &str,
    ) -> Result<AccountSnapshot, LedgerError> {
        let state = self.load(account_id, sidecar_id).await?;
        Ok(self.snapshot_of(state, sidecar_id))
    }

    /// Snapshots of many accounts for `sidecar_id`, with one set-based load.
    async fn snapshots(
        &self,
        sidecar_id: &str,
        account_ids: &[String],
    ) -> Result<Vec<AccountSnapshot>, LedgerError> {
        let states = self.store.load_many(account_ids, sidecar_id).await?;
        if let Some(missing) = account_ids
            .iter()
            .find(|id| !states.iter().any(|s| &s.account_id == *id))
        {
            return Err(LedgerError::UnknownAccount(missing.clone()));
        }
        Ok(states
            .into_iter()
            .map(|s| self.snapshot_of(s, sidecar_id))
            .collect())
    }

    /// Applies one account's lease requests (oldest first) to its loaded state: the
    /// changes to write (None: nothing changes) and the snapshot to answer with.
    fn lease_changes(
        &self,
        sidecar_id: &str,
        mut state: store::AccountState,
        reqs: &[&LeaseRequest],
    ) -> (Option<ChangeSet>, AccountSnapshot) {
        let now_ms = self.now_ms();
        let payable = lease::payable(state.balance, &state.grants, now_ms);
        let mut changed: Vec<LeaseRow> = Vec::new();
        let mut recalling = Money::ZERO;
        for req in reqs {
            let current = state.leases.iter().find(|l| l.sidecar_id == sidecar_id);
            if let Some(r) = current
                && req.seq <= r.request_seq
            {
                // A late copy of an older request: the lease already reflects a newer one.
                tracing::debug!(account_id = %req.account_id, sidecar_id, seq = req.seq,
                    newer = r.request_seq, "stale lease request ignored");
                continue;
            }
            let d = lease::decide(
                req,
                sidecar_id,
                &state.leases,
                payable,
                now_ms,
                self.lease_cfg,
            );
            tracing::debug!(account_id = %req.account_id, sidecar_id, remaining = %d.row.remaining,
                need = %req.need, edge = d.row.edge, recalling = %d.recalling, %payable, "lease");
            if !d.others.is_empty() {
                tracing::info!(account_id = %req.account_id, sidecar_id, need = %req.need,
                    recalling = %d.recalling, sidecars = d.others.len(),
                    "account near the edge: other sidecars' unused leases asked back");
            }
            recalling = d.recalling;
            for row in std::iter::once(d.row).chain(d.others) {
                state.leases.retain(|l| l.sidecar_id != row.sidecar_id);
                changed.retain(|l| l.sidecar_id != row.sidecar_id);
                changed.push(row.clone());
                state.leases.push(row);
            }
        }
        let changes = (!changed.is_empty()).then(|| ChangeSet {
            balance: state.balance,
            leases: changed,
            ..ChangeSet::default()
        });
        if changes.is_some() {
            state.version += 1;
        }
        let mut snap = self.snapshot_of(state, sidecar_id);
        snap.recalling = recalling;
        (changes, snap)
    }

    /// Grants, renews or gives back leases, one set-based load and write per round;
    /// accounts that changed concurrently are reloaded and retried alone. Returns the
    /// snapshots of the accounts named.
    async fn apply_leases(
        &self,
        sidecar_id: &str,
        reqs: &[LeaseRequest],
    ) -> Result<Vec<AccountSnapshot>, LedgerError> {
        let mut by_account: BTreeMap<&str, Vec<&LeaseRequest>> = BTreeMap::new();
        for r in reqs {
            by_account.entry(r.account_id.as_str()).or_default().push(r);
        }
        for v in by_account.values_mut() {
            v.sort_by_key(|r| r.seq);
        }
        let mut todo: Vec<String> = by_account.keys().map(|k| (*k).to_owned()).collect();
        let mut out = Vec::with_capacity(todo.len());
        for _ in 0..COMMIT_RETRIES_MAX {
            if todo.is_empty() {
                return Ok(out);
            }
            let states = self.store.load_many(&todo, sidecar_id).await?;
            if let Some(missing) = todo
                .iter()
                .find(|id| !states.iter().any(|s| &s.account_id == *id))
            {
                return Err(LedgerError::UnknownAccount(missing.clone()));
            }
            let mut commits = Vec::new();
            let mut pending = Vec::new();
            for state in states {
                let (account_id, version) = (state.account_id.clone(), state.version);
                let reqs = &by_account[account_id.as_str()];
                match self.lease_changes(sidecar_id, state, reqs) {
                    (None, snap) => out.push(snap),
                    (Some(c), snap) => {
                        commits.push((account_id, version, c));
                        pending.push(snap);
                    }
                }
            }
            let results = self.store.commit_many(commits).await?;
            todo.clear();
            for (snap, r) in pending.into_iter().zip(results) {
                match r {
                    Ok(()) => out.push(snap),
                    Err(StoreError::Conflict(_)) => todo.push(snap.account_id),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        match todo.first() {
            None => Ok(out),
            Some(a) => Err(LedgerError::Contended(a.clone())),
        }
    }
}

impl Ledger {
    /// `LedgerApi::sync`, callable without the trait in scope.
    pub async fn sync_as_ledger(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        LedgerApi::sync(self, req).await
    }
}

impl Ledger {
    /// A restarted sidecar gives back the leases its previous runs left, but on `keep`.
    async fn reset_leases(
        &self,
        sidecar_id: &str,
        seq: u64,
        keep: &[LeaseRequest],
    ) -> Result<(), LedgerError> {
        let accounts: Vec<String> = self
            .store
            .leased_accounts(sidecar_id, DEFAULT_RESET_LEASES_MAX)
            .await?
            .into_iter()
            .filter(|a| !keep.iter().any(|l| &l.account_id == a))
            .collect();
        for chunk in accounts.chunks(RESET_CHUNK) {
            let reqs: Vec<LeaseRequest> = chunk
                .iter()
                .map(|account_id| LeaseRequest {
                    account_id: account_id.clone(),
                    want: Money::ZERO,
                    need: Money::ZERO,
                    held: Money::ZERO,
                    release: true,
                    give_back: false,
                    seq,
                })
                .collect();
            self.apply_leases(sidecar_id, &reqs).await?;
        }
        if !accounts.is_empty() {
            tracing::info!(
                sidecar_id,
                leases = accounts.len(),
                "sidecar restarted: leases of its previous run given back"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl LedgerApi for Ledger {
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        self.apply_usage(&req.sidecar_id, &req.usage).await?;
        if req.reset_seq != 0 {
            self.reset_leases(&req.sidecar_id, req.reset_seq, &req.leases)
                .await?;
        }
        let mut snapshots = self.apply_leases(&req.sidecar_id, &req.leases).await?;
        let mut ids: Vec<String> = req
            .usage
            .iter()
            .map(|u| u.account_id.as_str())
            .chain(req.accounts.iter().map(String::as_str))
            .filter(|id| !req.leases.iter().any(|l| l.account_id == *id))
            .map(str::to_owned)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        snapshots.extend(self.snapshots(&req.sidecar_id, &ids).await?);
        let recalls = self
            .store
            .recalls(&req.sidecar_id, DEFAULT_RECALLS_MAX)
            .await?;
        Ok(SyncResponse {
            snapshots,
            now_ms: self.now_ms(),
            hold_grace_ms: self.lease_cfg.hold_grace_ms,
            recalls,
        })
    }
}
