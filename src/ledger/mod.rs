//! The ledger: the authoritative record of accounts, grants, top-ups, purchases and usage.
//! Sidecars never write it directly; they push usage batches and pull snapshots through
//! `LedgerApi` (`api`, the contract between engine and ledger), which the embedded ledger
//! implements in-process and a remote ledger implements over gRPC. Every rule applied
//! here is the pure billing code the sidecar runs too.

pub mod api;
pub mod lease;
pub mod postgres;
mod round;
pub mod sidecars;
pub mod sqlite;
pub mod store;
mod webhooks;

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
use store::{ChangeSet, LedgerStore, PurchaseRecord, StoreError, TopUpRecord};

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

/// The ledger's rules over a store. Cheap to clone: every clone shares the store and the
/// round queue (see `round`).
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
    catalog: Arc<Catalog>,
    clock: SharedClock,
    lease_cfg: LeaseConfig,
    rounds: Arc<round::Rounds>,
    sidecars: Arc<sidecars::Sidecars>,
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
            rounds: Arc::default(),
            sidecars: Arc::default(),
        }
    }

    /// Keeps at most `series_max` sidecars by name in `sidecars` (metrics).
    pub fn with_sidecar_series_max(mut self, series_max: usize) -> Ledger {
        self.sidecars = Arc::new(sidecars::Sidecars::new(series_max));
        self
    }

    /// The sidecars that synced with this ledger (metrics).
    pub fn sidecars(&self) -> &Arc<sidecars::Sidecars> {
        &self.sidecars
    }

    /// Accounts on which `sidecar_id` holds a lease with money in it, at most `limit`.
    pub async fn leases_of(&self, sidecar_id: &str, limit: usize) -> Result<usize, LedgerError> {
        Ok(self.store.leased_accounts(sidecar_id, limit).await?.len())
    }

    /// The store's connection pool, if it has one (metrics).
    pub fn pool(&self) -> Option<store::PoolStats> {
        self.store.pool()
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
                let sale = Sale {
                    account_id,
                    offer,
                    purchase_id,
                    effective_at_ms,
                    now_ms: self.now_ms(),
                };
                sale.change(s).map(Some)
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
                let grant = credit(grant_id, kind, covers, amount, expires_at_ms, self.now_ms());
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

    /// Applies usage exactly once, per account in the order given (in the next round,
    /// with whatever other Syncs wait for it).
    pub async fn apply_usage(
        &self,
        sidecar_id: &str,
        usage: &[UsageRecord],
    ) -> Result<(), LedgerError> {
        self.write(round::Writes {
            sidecar_id: sidecar_id.to_owned(),
            usage: usage.to_vec(),
            ..round::Writes::default()
        })
        .await
        .map(drop)
    }

    /// The account as `sidecar_id` should cache it.
    fn snapshot_of(&self, s: store::AccountState, sidecar_id: &str) -> AccountSnapshot {
        let now_ms = self.now_ms();
        let grace = self.lease_cfg.hold_grace_ms;
        let set_aside = s
            .leases
            .iter()
            .map(|l| lease::occupied(l, now_ms, grace))
            .sum();
        self.view_of(s, sidecar_id, set_aside)
    }

    /// The account as `sidecar_id` should cache it, given the money all leases set aside.
    fn view_of(
        &self,
        s: store::AccountState,
        sidecar_id: &str,
        set_aside: Money,
    ) -> AccountSnapshot {
        let now_ms = self.now_ms();
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
            unleased: (payable - set_aside).non_negative(),
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
        let expired_before_ms = self.now_ms().saturating_sub(self.lease_cfg.hold_grace_ms);
        let views = self
            .store
            .load_views(account_ids, sidecar_id, expired_before_ms)
            .await?;
        if let Some(missing) = account_ids
            .iter()
            .find(|id| !views.iter().any(|(s, _)| &s.account_id == *id))
        {
            return Err(LedgerError::UnknownAccount(missing.clone()));
        }
        Ok(views
            .into_iter()
            .map(|(s, set_aside)| self.view_of(s, sidecar_id, set_aside))
            .collect())
    }
}

impl Ledger {
    /// `LedgerApi::sync`, callable without the trait in scope.
    pub async fn sync_as_ledger(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        LedgerApi::sync(self, req).await
    }
}

#[async_trait]
impl LedgerApi for Ledger {
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        let sidecar_id = req.sidecar_id;
        let oldest_ms = req.usage.iter().map(|u| u.at_ms).min();
        let mut ids: Vec<String> = req
            .usage
            .iter()
            .map(|u| u.account_id.clone())
            .chain(req.leases.iter().map(|l| l.account_id.clone()))
            .chain(req.accounts)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let written = self
            .write(round::Writes {
                sidecar_id: sidecar_id.clone(),
                usage: req.usage,
                leases: req.leases,
                reset_seq: req.reset_seq,
            })
            .await?;
        // After the write, so that leases counted on a first sight include this Sync's.
        self.sidecars.synced(&sidecar_id, self.now_ms(), oldest_ms);
        // Both reads at once (two connections of a pool).
        let (snapshots, recalls) = tokio::join!(
            self.snapshots(&sidecar_id, &ids),
            self.store.recalls(&sidecar_id, DEFAULT_RECALLS_MAX)
        );
        let (mut snapshots, recalls) = (snapshots?, recalls?);
        for s in &mut snapshots {
            if let Some(m) = written.recalling.get(&s.account_id) {
                s.recalling = *m;
            }
        }
        Ok(SyncResponse {
            snapshots,
            now_ms: self.now_ms(),
            hold_grace_ms: self.lease_cfg.hold_grace_ms,
            recalls,
        })
    }
}

/// Tokens and sub-users' access (see `auth`): kept in the ledger's store beside the
/// accounts, so `quotad ledger` and the sidecars that ask it agree on who may call.
/// Stored only as hashes; `auth` makes and checks them.
impl Ledger {
    /// Records a new token; `Duplicate` if its id or hash is already recorded.
    pub async fn insert_token(&self, token: store::TokenRow) -> Result<(), StoreError> {
        self.store.insert_token(token).await
    }

    /// The token with this hash, revoked or not.
    pub async fn token_by_hash(
        &self,
        token_sha256: &str,
    ) -> Result<Option<store::TokenRow>, StoreError> {
        self.store.token_by_hash(token_sha256).await
    }

    /// Revokes the token now (a second revocation keeps the first time); false if no token
    /// has this id.
    pub async fn revoke_token(&self, token_id: &str) -> Result<bool, StoreError> {
        self.store.revoke_token(token_id, self.now_ms()).await
    }

    /// Whether an unrevoked operator token exists.
    pub async fn has_operator_token(&self) -> Result<bool, StoreError> {
        self.store.has_operator_token().await
    }

    /// Adds `permissions` (a bit set, see `auth::Perms`) to what `sub_user` holds on
    /// `account_id`; returns what it holds afterwards.
    pub async fn grant_access(
        &self,
        account_id: &str,
        sub_user: &str,
        permissions: u8,
    ) -> Result<u8, StoreError> {
        self.store
            .grant_access(account_id, sub_user, permissions)
            .await
    }

    /// Takes `permissions` away; returns what is left (0: the row is gone).
    pub async fn revoke_access(
        &self,
        account_id: &str,
        sub_user: &str,
        permissions: u8,
    ) -> Result<u8, StoreError> {
        self.store
            .revoke_access(account_id, sub_user, permissions)
            .await
    }

    /// Whether an unrevoked sub-user token has this name (access is granted to names).
    pub async fn has_sub_user(&self, name: &str) -> Result<bool, StoreError> {
        self.store.has_sub_user(name).await
    }

    /// Account ids after `after`, in order, at most `limit`.
    pub async fn list_accounts(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.store.list_accounts(after, limit).await
    }

    /// Tokens (revoked ones too) after the id `after`, at most `limit`.
    pub async fn list_tokens(
        &self,
        after: &str,
        limit: usize,
    ) -> Result<Vec<store::TokenRow>, StoreError> {
        self.store.list_tokens(after, limit).await
    }

    /// Sub-users' access on `account_id` (every account: empty), at most `limit`.
    pub async fn list_access(
        &self,
        account_id: &str,
        limit: usize,
    ) -> Result<Vec<store::AccessRow>, StoreError> {
        self.store.list_access(account_id, limit).await
    }

    /// Every account `sub_user` holds permissions on, at most `limit`.
    pub async fn access_of(
        &self,
        sub_user: &str,
        limit: usize,
    ) -> Result<Vec<(String, u8)>, StoreError> {
        self.store.access_of(sub_user, limit).await
    }
}

/// One purchase as judged against the account it was loaded with.
struct Sale<'a> {
    account_id: &'a str,
    offer: &'a billing::catalog::Offer,
    purchase_id: &'a str,
    effective_at_ms: i64,
    now_ms: i64,
}

impl Sale<'_> {
    /// The grants the offer creates and the purchase record, or why it cannot be sold.
    fn change(
        &self,
        s: &store::AccountState,
    ) -> Result<(ChangeSet, (Vec<Grant>, Money)), LedgerError> {
        let plan = billing::plan_purchase(
            self.offer,
            &PurchaseContext {
                grants: &s.grants,
                once_skus_bought: &s.once_skus,
                now_ms: self.now_ms,
            },
            self.purchase_id,
            self.effective_at_ms,
        )?;
        let c = ChangeSet {
            balance: s.balance,
            new_grants: plan
                .grants
                .iter()
                .map(|g| (g.clone(), Some(self.purchase_id.to_owned())))
                .collect(),
            purchase: Some(PurchaseRecord {
                purchase_id: self.purchase_id.to_owned(),
                account_id: self.account_id.to_owned(),
                sku: self.offer.sku.clone(),
                price_paid: plan.price_paid,
                effective_at_ms: plan.effective_at_ms,
                at_ms: self.now_ms,
                once_per_account: self.offer.once_per_account,
            }),
            ..ChangeSet::default()
        };
        Ok((c, (plan.grants, plan.price_paid)))
    }
}

/// A coupon or trial credit in money, valid and paying for usage from `now_ms`.
fn credit(
    grant_id: &str,
    kind: GrantKind,
    covers: ResourceSet,
    amount: Money,
    expires_at_ms: i64,
    now_ms: i64,
) -> Grant {
    Grant {
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
    }
}
