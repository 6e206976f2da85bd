//! Group commit of Syncs. Every sidecar syncs every second, and a busy account (one that
//! jobs on many nodes charge) appears in nearly every Sync. Written one Sync at a time,
//! each write is a transaction on that account's row: they queue on its lock, each pays a
//! commit, and under the optimistic version check most of them lose and retry, so the
//! ledger's throughput fell with the number of sidecars (BENCHMARKS.md, the fleet bench).
//!
//! So the writes of the Syncs that arrive while a round is being written (usage, lease
//! requests, restarts' give-backs) wait for the next round, which takes them all: per
//! account, every sidecar's usage is burned down and its leases decided in the order the
//! Syncs arrived, then one set-based transaction writes every account of the round. Each
//! Sync waits for its round, so an answer still means its usage is applied. Reads
//! (snapshots) stay with each Sync. Rounds run on a task of their own, so a Sync whose
//! caller went away does not stop a round half-way; with several ledger processes each
//! runs its own rounds, and the version check settles what they race for.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use super::lease;
use super::store::{AccountState, AppliedUsage, ChangeSet, LeaseRow, StoreError};
use super::{
    COMMIT_RETRIES_MAX, DEFAULT_RESET_LEASES_MAX, LeaseRequest, Ledger, LedgerError, RESET_CHUNK,
    UsageRecord,
};
use crate::billing::{self, Money};

/// Most Syncs one round takes (the rest wait for the next round).
pub const DEFAULT_ROUND_SYNCS_MAX: usize = 1_000;
/// Most usage records one round takes (a Sync is never split; a larger one goes alone).
pub const DEFAULT_ROUND_RECORDS_MAX: usize = 50_000;
/// Most Syncs waiting for a round; one more is refused as unavailable, and its sidecar
/// backs off and sends it again.
pub const DEFAULT_ROUND_QUEUE_MAX: usize = 20_000;

/// The writes of one Sync.
#[derive(Debug, Default)]
pub(super) struct Writes {
    pub sidecar_id: String,
    pub usage: Vec<UsageRecord>,
    pub leases: Vec<LeaseRequest>,
    /// A restarted sidecar's give-back of its previous run's leases (0: none).
    pub reset_seq: u64,
}

/// What a round wrote for one Sync: per account of its lease requests, the unused money of
/// other sidecars being recalled for it.
#[derive(Debug, Default)]
pub(super) struct Written {
    pub recalling: HashMap<String, Money>,
}

struct Job {
    writes: Writes,
    done: tokio::sync::oneshot::Sender<Result<Written, LedgerError>>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// A task is running rounds (it takes what is queued until nothing is).
    running: bool,
}

/// The Syncs waiting for a round.
#[derive(Default)]
pub(super) struct Rounds {
    queue: Mutex<Queue>,
}

fn poisoned() -> LedgerError {
    LedgerError::Unavailable("the ledger's round queue is poisoned (a round panicked)".into())
}

/// A copy of a round's error for each Sync of the round.
fn copy(e: &LedgerError) -> LedgerError {
    match e {
        LedgerError::Contended(a) => LedgerError::Contended(a.clone()),
        LedgerError::UnknownAccount(a) => LedgerError::UnknownAccount(a.clone()),
        LedgerError::Unavailable(m) => LedgerError::Unavailable(m.clone()),
        other => LedgerError::Store(StoreError::Database(other.to_string())),
    }
}

impl Ledger {
    /// Writes one Sync's usage and leases in the next round; returns once they are written.
    pub(super) async fn write(&self, writes: Writes) -> Result<Written, LedgerError> {
        if writes.usage.is_empty() && writes.leases.is_empty() && writes.reset_seq == 0 {
            return Ok(Written::default());
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        let lead = {
            let mut q = self.rounds.queue.lock().map_err(|_| poisoned())?;
            if q.jobs.len() >= DEFAULT_ROUND_QUEUE_MAX {
                return Err(LedgerError::Unavailable(format!(
                    "{} syncs are waiting to be written; send again later",
                    q.jobs.len()
                )));
            }
            q.jobs.push_back(Job { writes, done });
            !std::mem::replace(&mut q.running, true)
        };
        if lead {
            let ledger = self.clone();
            tokio::spawn(async move { ledger.run_rounds().await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(LedgerError::Unavailable(
                "the ledger's round ended without an answer".into(),
            ))
        })
    }

    /// Rounds until nothing is queued.
    async fn run_rounds(&self) {
        loop {
            let jobs = {
                let Ok(mut q) = self.rounds.queue.lock() else {
                    tracing::error!("round queue poisoned: syncs wait for their deadline");
                    return;
                };
                let mut jobs = Vec::new();
                let mut records = 0usize;
                while let Some(j) = q.jobs.front() {
                    let n = j.writes.usage.len();
                    let full = jobs.len() >= DEFAULT_ROUND_SYNCS_MAX
                        || !jobs.is_empty() && records + n > DEFAULT_ROUND_RECORDS_MAX;
                    if full {
                        break;
                    }
                    records += n;
                    jobs.extend(q.jobs.pop_front());
                }
                if jobs.is_empty() {
                    q.running = false;
                    return;
                }
                jobs
            };
            let (writes, dones): (Vec<Writes>, Vec<_>) =
                jobs.into_iter().map(|j| (j.writes, j.done)).unzip();
            let results = self.round(&writes).await;
            for (done, r) in dones.into_iter().zip(results) {
                // A Sync whose caller went away has nobody to tell.
                let _ = done.send(r);
            }
        }
    }

    /// One round: restarts' give-backs, then every account's usage and leases in one write
    /// (retrying the accounts another ledger process changed meanwhile). One result per Sync.
    async fn round(&self, writes: &[Writes]) -> Vec<Result<Written, LedgerError>> {
        let mut out: Vec<Result<Written, LedgerError>> =
            writes.iter().map(|_| Ok(Written::default())).collect();
        for (i, w) in writes.iter().enumerate() {
            if w.reset_seq != 0
                && let Err(e) = self
                    .reset_leases(&w.sidecar_id, w.reset_seq, &w.leases)
                    .await
            {
                out[i] = Err(e);
            }
        }
        let named: BTreeSet<&str> = writes
            .iter()
            .zip(&out)
            .filter(|(_, r)| r.is_ok())
            .flat_map(|(w, _)| {
                w.usage
                    .iter()
                    .map(|u| u.account_id.as_str())
                    .chain(w.leases.iter().map(|l| l.account_id.as_str()))
            })
            .collect();
        let mut todo: BTreeSet<String> = named.into_iter().map(str::to_owned).collect();
        // A write again (an applied id met, or another ledger process's write) looks first.
        let mut look_up = self.store.known_usage_first();
        for _ in 0..COMMIT_RETRIES_MAX {
            if todo.is_empty() {
                return out;
            }
            match self.write_accounts(writes, &mut out, &todo, look_up).await {
                Ok(conflicted) => todo = conflicted,
                Err(e) => {
                    for r in out.iter_mut().filter(|r| r.is_ok()) {
                        *r = Err(copy(&e));
                    }
                    return out;
                }
            }
            look_up = true;
        }
        if let Some(a) = todo.first() {
            for (i, w) in writes.iter().enumerate() {
                let touches = w.usage.iter().any(|u| &u.account_id == a)
                    || w.leases.iter().any(|l| &l.account_id == a);
                if touches && out[i].is_ok() {
                    out[i] = Err(LedgerError::Contended(a.clone()));
                }
            }
        }
        out
    }

    /// Loads `todo`, decides each account's changes from every Sync still standing, writes
    /// them at once. Returns the accounts that changed concurrently or met an applied
    /// usage id (to do again). `look_up`: ask which usage is applied before (else a write
    /// that meets an applied id fails its account alone, and it is done again).
    async fn write_accounts(
        &self,
        writes: &[Writes],
        out: &mut [Result<Written, LedgerError>],
        todo: &BTreeSet<String>,
        look_up: bool,
    ) -> Result<BTreeSet<String>, LedgerError> {
        let ids: Vec<String> = todo.iter().cloned().collect();
        // Which usage was applied before is asked for every Sync still standing, at the
        // same time as the accounts load (two connections of a pool; a Sync that fails on
        // a missing account below only made the question larger).
        let usage_ids: Vec<String> = if look_up {
            (0..writes.len())
                .filter(|&i| out[i].is_ok())
                .flat_map(|i| writes[i].usage.iter())
                .filter(|u| todo.contains(&u.account_id))
                .map(|u| u.usage_id.clone())
                .collect()
        } else {
            Vec::new()
        };
        let (states, known) = tokio::join!(self.store.load_many(&ids, ""), async {
            if usage_ids.is_empty() {
                Ok(HashSet::new())
            } else {
                self.store.known_usage(&usage_ids).await
            }
        });
        let (states, known) = (states?, known?);
        let found: HashSet<&str> = states.iter().map(|s| s.account_id.as_str()).collect();
        // A Sync naming an account that does not exist fails alone.
        for (i, w) in writes.iter().enumerate() {
            let missing = w
                .usage
                .iter()
                .map(|u| &u.account_id)
                .chain(w.leases.iter().map(|l| &l.account_id))
                .find(|a| todo.contains(*a) && !found.contains(a.as_str()));
            if let (Some(a), true) = (missing, out[i].is_ok()) {
                out[i] = Err(LedgerError::UnknownAccount(a.clone()));
            }
        }
        let standing: Vec<usize> = (0..writes.len()).filter(|&i| out[i].is_ok()).collect();
        // Each account's records, in the order of the Syncs and within each (one pass over
        // the round, not one per account).
        let mut by_account: HashMap<&str, Vec<(&str, &UsageRecord)>> = HashMap::new();
        for &i in &standing {
            for u in &writes[i].usage {
                by_account
                    .entry(u.account_id.as_str())
                    .or_default()
                    .push((writes[i].sidecar_id.as_str(), u));
            }
        }
        let mut commits = Vec::new();
        let mut recalls: Vec<Vec<(usize, String, Money)>> = Vec::new();
        for state in states {
            let account = state.account_id.clone();
            let version = state.version;
            let records = by_account
                .get(account.as_str())
                .map_or(&[][..], Vec::as_slice);
            let (changes, recalled) =
                self.account_changes(state, records, writes, &standing, &known);
            if let Some(c) = changes {
                commits.push((account, version, c));
                recalls.push(recalled);
            }
        }
        let accounts: Vec<String> = commits.iter().map(|(a, _, _)| a.clone()).collect();
        let results = self.store.commit_many(commits).await?;
        let mut conflicted = BTreeSet::new();
        for (account, (r, recalled)) in accounts.into_iter().zip(results.into_iter().zip(recalls)) {
            match r {
                Ok(()) => {
                    for (i, a, m) in recalled {
                        if let Ok(w) = &mut out[i] {
                            w.recalling.insert(a, m);
                        }
                    }
                }
                Err(StoreError::Conflict(_)) => {
                    conflicted.insert(account);
                }
                Err(e @ StoreError::Duplicate { .. }) => {
                    // Some of this usage was applied before (the write did not look first)
                    // or another ledger process wrote it between our look and our write:
                    // a reload, with the look, sees it as applied.
                    tracing::debug!(account_id = %account, error = %e, "usage written meanwhile; again");
                    conflicted.insert(account);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(conflicted)
    }

    /// One account's changes from the standing Syncs, in their order: its usage burned down
    /// (`records`: the account's records with their sidecars, in order), then its lease
    /// requests decided on what the usage left. Also, per lease request, the
    /// money recalled for it: (Sync index, account, amount).
    fn account_changes(
        &self,
        mut state: AccountState,
        records: &[(&str, &UsageRecord)],
        writes: &[Writes],
        standing: &[usize],
        known: &HashSet<String>,
    ) -> (Option<ChangeSet>, Vec<(usize, String, Money)>) {
        let account = state.account_id.clone();
        let before: Vec<LeaseRow> = state.leases.clone();
        let mut changes = usage_changes(&state, records, known, &self.catalog.calendar);
        if let Some(c) = &changes {
            // What the usage leaves is what the lease requests are decided on.
            state.balance = c.balance;
            for (id, remaining) in &c.grant_remaining {
                if let Some(g) = state.grants.iter_mut().find(|g| &g.grant_id == id) {
                    g.remaining = *remaining;
                }
            }
            for row in &c.leases {
                state.leases.retain(|l| l.sidecar_id != row.sidecar_id);
                state.leases.push(row.clone());
            }
        }
        let mut recalled = Vec::new();
        for &i in standing {
            let sidecar_id = writes[i].sidecar_id.as_str();
            for req in writes[i].leases.iter().filter(|l| l.account_id == account) {
                if let Some(m) = self.decide_lease(&mut state, sidecar_id, req) {
                    recalled.push((i, account.clone(), m));
                }
            }
        }
        // Every lease row that usage or a decision changed (not the others: a busy account
        // has a row per sidecar).
        let changed: Vec<LeaseRow> = state
            .leases
            .iter()
            .filter(|r| !before.contains(r))
            .cloned()
            .collect();
        match &mut changes {
            Some(c) => c.leases = changed,
            None if !changed.is_empty() => {
                changes = Some(ChangeSet {
                    balance: state.balance,
                    leases: changed,
                    ..ChangeSet::default()
                });
            }
            None => {}
        }
        (changes, recalled)
    }
}

/// What applying `records` (each with the sidecar that sent it, in order) to the account
/// changes: the burn-down of each record not applied before, each sidecar's cursor, and
/// each sidecar's lease less the money its usage took. None if nothing.
pub(super) fn usage_changes(
    state: &AccountState,
    records: &[(&str, &UsageRecord)],
    known: &HashSet<String>,
    cal: &billing::free_tier::Calendar,
) -> Option<ChangeSet> {
    if records.is_empty() {
        return None;
    }
    let mut grants = state.grants.clone();
    let mut balance = state.balance;
    let mut counts = billing::free_tier::RequestCounts::from_rows(state.request_counts.clone());
    let mut counted = BTreeSet::new();
    let mut seen = HashSet::with_capacity(records.len());
    let mut applied = Vec::new();
    let mut cursors: BTreeMap<&str, u64> = BTreeMap::new();
    for (sidecar_id, r) in records {
        let c = cursors.entry(sidecar_id).or_default();
        *c = (*c).max(r.seq);
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
            sidecar_id: (*sidecar_id).to_owned(),
            deductions: c.deductions,
            free_quantity: c.free_quantity,
        });
    }
    if applied.is_empty() {
        // All sent again: applied before, with their cursors.
        return None;
    }
    let grant_remaining = grants
        .iter()
        .zip(&state.grants)
        .filter(|(new, old)| new.remaining != old.remaining)
        .map(|(new, _)| (new.grant_id.clone(), new.remaining))
        .collect();
    let leases = spent_leases(&state.leases, &applied);
    let request_counts = counted
        .into_iter()
        .map(|(r, m)| (r, m, counts.0.get(&(r, m)).copied().unwrap_or(0)))
        .collect();
    Some(ChangeSet {
        balance,
        grant_remaining,
        request_counts,
        usage: applied,
        cursors: cursors
            .into_iter()
            .map(|(s, seq)| (s.to_owned(), seq))
            .collect(),
        leases,
        ..ChangeSet::default()
    })
}

/// The lease rows the applied usage spent from: what was used came out of its sidecar's
/// lease. Money only: free requests and GB from volume plans spend nothing of a lease.
fn spent_leases(leases: &[LeaseRow], applied: &[AppliedUsage]) -> Vec<LeaseRow> {
    let mut spent: BTreeMap<&str, Money> = BTreeMap::new();
    for u in applied {
        let money: Money = u
            .deductions
            .iter()
            .filter(|d| d.is_money())
            .map(|d| d.amount)
            .sum();
        *spent.entry(u.sidecar_id.as_str()).or_default() += money;
    }
    leases
        .iter()
        .filter_map(|l| {
            let s = spent.get(l.sidecar_id.as_str()).copied()?;
            s.is_positive().then(|| LeaseRow {
                remaining: (l.remaining - s).non_negative(),
                held: (l.held - s).non_negative(),
                ..l.clone()
            })
        })
        .collect()
}

impl Ledger {
    /// Decides one lease request on the account's state (updated in place); returns the
    /// money recalled for it, None for a late copy of an older request.
    fn decide_lease(
        &self,
        state: &mut AccountState,
        sidecar_id: &str,
        req: &LeaseRequest,
    ) -> Option<Money> {
        let now_ms = self.now_ms();
        if let Some(r) = state.leases.iter().find(|l| l.sidecar_id == sidecar_id)
            && req.seq <= r.request_seq
        {
            tracing::debug!(account_id = %req.account_id, sidecar_id, seq = req.seq,
                newer = r.request_seq, "stale lease request ignored");
            return None;
        }
        let payable = lease::payable(state.balance, &state.grants, now_ms);
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
        for row in std::iter::once(d.row).chain(d.others) {
            state.leases.retain(|l| l.sidecar_id != row.sidecar_id);
            state.leases.push(row);
        }
        Some(d.recalling)
    }

    /// A restarted sidecar gives back the leases its previous runs left, but on `keep`
    /// (what it still owes, which the same Sync gives back to what is owed).
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
            self.release_all(sidecar_id, seq, chunk).await?;
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

    /// Releases `sidecar_id`'s leases on `accounts` (request sequence `seq`).
    async fn release_all(
        &self,
        sidecar_id: &str,
        seq: u64,
        accounts: &[String],
    ) -> Result<(), LedgerError> {
        let mut todo = accounts.to_vec();
        for _ in 0..COMMIT_RETRIES_MAX {
            if todo.is_empty() {
                return Ok(());
            }
            let mut commits = Vec::new();
            for mut state in self.store.load_many(&todo, "").await? {
                let before = state.leases.clone();
                let req = LeaseRequest {
                    account_id: state.account_id.clone(),
                    want: Money::ZERO,
                    need: Money::ZERO,
                    held: Money::ZERO,
                    release: true,
                    give_back: false,
                    seq,
                };
                self.decide_lease(&mut state, sidecar_id, &req);
                let changed: Vec<LeaseRow> = state
                    .leases
                    .iter()
                    .filter(|r| !before.contains(r))
                    .cloned()
                    .collect();
                if !changed.is_empty() {
                    let c = ChangeSet {
                        balance: state.balance,
                        leases: changed,
                        ..ChangeSet::default()
                    };
                    commits.push((state.account_id.clone(), state.version, c));
                }
            }
            let ids: Vec<String> = commits.iter().map(|c| c.0.clone()).collect();
            let results = self.store.commit_many(commits).await?;
            todo = ids
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
}
