//! The end of a seed: heal the network, drain every journal, then hold the ledger to what
//! the model saw acknowledged (checks 1, 2 and 4 of tests/simulation.rs), and the report
//! that makes a G1 failure readable.

use std::collections::BTreeMap;

use quotad::billing::{Grant, Resource};
use quotad::ledger::{AccountSnapshot, StatementEntry};
use rust_decimal::Decimal;

use super::{Sim, T0_MS};
use crate::model::ModelAccount;
use crate::net::LedgerEvent;

/// The ledger's leases on an account against what each sidecar has out.
pub(super) struct LeaseReport {
    pub text: String,
    /// Money out (open holds, usage not yet at the ledger) at sidecars whose lease the
    /// ledger has reclaimed: they were silent for hold_grace_ms past its expiry.
    pub lapsed_out: Decimal,
    /// Some sidecar has more out than the ledger sets aside for it.
    pub short: bool,
    /// The live leases add up to more than the account can pay.
    pub overleased: bool,
}

/// Usage ids in the order the ledger applied them.
fn usage_ids(history: &[LedgerEvent]) -> Vec<&String> {
    history
        .iter()
        .filter_map(|e| match e {
            LedgerEvent::Usage(id) => Some(id),
            LedgerEvent::Grant(_) => None,
        })
        .collect()
}

impl Sim {
    /// The final audit.
    pub(super) async fn finish(&mut self) {
        self.drain().await;
        let history = self.net.history();
        for account in 0..self.model.accounts.len() {
            let empty = Vec::new();
            let events = history
                .get(&self.model.accounts[account].account_id)
                .unwrap_or(&empty);
            self.audit_account(account, events).await;
        }
    }

    /// Heals the network and pushes every journal to the ledger.
    async fn drain(&mut self) {
        self.net.heal();
        for i in 0..self.sidecars.len() {
            let engine = self.engine(i);
            for _ in 0..10 {
                if engine.journal().outbox_len() == 0 && engine.ledger_reachable() {
                    break;
                }
                if let Err(e) = engine.flush().await {
                    self.fail(format!("flush of sidecar-{i} on a healed network: {e}"));
                }
            }
            let left = engine.journal().outbox_len();
            if left != 0 {
                self.fail(format!(
                    "sidecar-{i} still has {left} usage records after flushing"
                ));
            }
        }
    }

    async fn audit_account(&self, account: usize, history: &[LedgerEvent]) {
        let a = &self.model.accounts[account];
        let (entries, truncated) = self
            .ledger
            .statement(&a.account_id)
            .await
            .unwrap_or_else(|e| self.fail(format!("statement of {}: {e}", a.account_id)));
        if truncated {
            self.fail(format!("statement of {} is truncated", a.account_id));
        }
        let snap = self
            .ledger
            .snapshot("sim-audit", &a.account_id)
            .await
            .unwrap_or_else(|e| self.fail(format!("snapshot of {}: {e}", a.account_id)));
        self.check_statement(account, &entries, history);
        self.check_burn_down(account, &entries, &snap, history);
        self.check_money(account, &entries, &snap, history);
    }

    /// Check 1 (G2, G4): every acknowledged Commit is charged exactly once, with its
    /// quantity, cost and time; nothing else is.
    fn check_statement(&self, account: usize, entries: &[StatementEntry], history: &[LedgerEvent]) {
        let name = &self.model.accounts[account].account_id;
        let acked: BTreeMap<&String, _> = self
            .model
            .commits
            .iter()
            .filter(|(_, c)| c.account == account)
            .collect();
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for e in entries {
            let Some(c) = acked.get(&e.usage_id) else {
                self.fail(format!(
                    "{name}: the ledger charged {} ({}), which no sidecar acknowledged",
                    e.usage_id, e.cost
                ));
            };
            if e.cost.as_decimal() != c.cost || e.quantity != c.quantity || e.at_ms != c.at_ms {
                self.fail(format!(
                    "{name}: usage {} is {} ms / {} at t+{} in the ledger, {} ms / {} at t+{} \
                     as acknowledged",
                    e.usage_id,
                    e.quantity,
                    e.cost,
                    e.at_ms - T0_MS,
                    c.quantity,
                    c.cost,
                    c.at_ms - T0_MS
                ));
            }
            *seen.entry(e.usage_id.as_str()).or_default() += 1;
        }
        for (id, c) in &acked {
            match seen.get(id.as_str()) {
                Some(1) => {}
                Some(n) => self.fail(format!("{name}: {id} charged {n} times")),
                None => self.fail(format!(
                    "{name}: acknowledged commit {id} ({} on sidecar-{} at t+{}) never reached \
                     the ledger (G2)",
                    c.cost,
                    c.sidecar,
                    c.at_ms - T0_MS
                )),
            }
        }
        let applied = usage_ids(history);
        if applied.len() != acked.len() || applied.iter().any(|id| !acked.contains_key(id)) {
            self.fail(format!(
                "{name}: the ledger applied {} usage ids, {} were acknowledged",
                applied.len(),
                acked.len()
            ));
        }
    }

    /// Check 4: the ledger's balance, grants and every charge's deductions equal the
    /// model's burn-down of the same charges in the order the ledger applied them.
    fn check_burn_down(
        &self,
        account: usize,
        entries: &[StatementEntry],
        snap: &AccountSnapshot,
        history: &[LedgerEvent],
    ) {
        let name = &self.model.accounts[account].account_id;
        let (balance, remaining, deductions) = self.model.burn_down(account, history);
        if snap.balance.as_decimal() != balance {
            self.fail(format!(
                "{name}: ledger balance {} != model balance {balance}",
                snap.balance
            ));
        }
        if snap.grants.len() != remaining.len() {
            self.fail(format!(
                "{name}: ledger has {} grants, the model {}",
                snap.grants.len(),
                remaining.len()
            ));
        }
        for g in &snap.grants {
            if remaining.get(&g.grant_id) != Some(&g.remaining) {
                self.fail(format!(
                    "{name}: grant {} has {} left in the ledger, {:?} in the model",
                    g.grant_id,
                    g.remaining,
                    remaining.get(&g.grant_id)
                ));
            }
        }
        for e in entries {
            let got: Vec<(String, Decimal)> = e
                .deductions
                .iter()
                .map(|d| (d.source.label().to_owned(), d.amount.as_decimal()))
                .collect();
            let want: Vec<(String, Decimal)> = deductions[&e.usage_id]
                .iter()
                .map(|d| (d.source.clone(), d.amount))
                .collect();
            if got != want {
                self.fail(format!(
                    "{name}: {} was paid by {got:?}, the model says {want:?}",
                    e.usage_id
                ));
            }
        }
    }

    /// Check 2 (G1): money is conserved exactly, and a fail-closed fleet never takes the
    /// balance below zero (a fail-open one by at most its allowance).
    fn check_money(
        &self,
        account: usize,
        entries: &[StatementEntry],
        snap: &AccountSnapshot,
        history: &[LedgerEvent],
    ) {
        let a = &self.model.accounts[account];
        let given: Decimal =
            a.initial_balance + a.topups + a.grants.iter().map(|g| g.amount).sum::<Decimal>();
        let left: Decimal =
            snap.balance.as_decimal() + snap.grants.iter().map(|g| g.remaining).sum::<Decimal>();
        if given - left != a.committed {
            self.fail(format!(
                "{}: given {given} - left {left} != acknowledged commits {}",
                a.account_id, a.committed
            ));
        }
        let silent = self
            .model
            .silent_overrun
            .get(&account)
            .copied()
            .unwrap_or_default();
        if snap.balance.as_decimal() < -(self.model.overspend_allowed + silent) {
            self.fail(format!(
                "{}: balance {} is below zero by more than the fail-open allowance {} and the \
                 overrun of presumed-gone sidecars {silent} (G1); acknowledged commits {} <= \
                 GPU credit {}\n{}",
                a.account_id,
                snap.balance,
                self.model.overspend_allowed,
                a.committed,
                a.gpu_credit(),
                who_paid(a, entries, &snap.grants, history)
            ));
        }
    }

    /// The ledger's view of an account's leases, and the model's holds and unapplied
    /// commits per sidecar: what a G1 failure needs to be understood. A sidecar with money
    /// out that the ledger no longer sets aside is marked LAPSED (its lease expired more
    /// than hold_grace_ms ago: presumed gone) or SHORT (its lease is smaller than what it
    /// has out).
    pub(super) async fn lease_report(&self, account: usize) -> LeaseReport {
        let a = &self.model.accounts[account];
        let now = self.now();
        let history = self.net.history();
        let applied = history
            .get(&a.account_id)
            .map(|h| usage_ids(h))
            .unwrap_or_default();
        let grace = self.ledger.lease_config().hold_grace_ms;
        let mut out = Vec::new();
        let mut leased = Decimal::ZERO;
        let mut payable = Decimal::ZERO;
        let mut lapsed_out = Decimal::ZERO;
        let mut short = false;
        for (i, s) in self.sidecars.iter().enumerate() {
            let held: Decimal = self
                .model
                .holds
                .values()
                .filter(|h| h.sidecar == i && h.account == account && now < h.expires_at_ms)
                .map(|h| h.held)
                .sum();
            let unapplied: Decimal = self
                .model
                .commits
                .iter()
                .filter(|(id, c)| c.sidecar == i && c.account == account && !applied.contains(id))
                .map(|(_, c)| c.cost)
                .sum();
            let out_here = held + unapplied;
            let (lease, hint) = match self.ledger.snapshot(&s.id, &a.account_id).await {
                Err(e) => (e.to_string(), String::new()),
                Ok(snap) => {
                    let l = snap.lease;
                    if now < l.expires_at_ms + grace {
                        leased += l.remaining.as_decimal();
                    }
                    payable = snap.balance.as_decimal().max(Decimal::ZERO)
                        + snap
                            .grants
                            .iter()
                            .filter(|g| g.pays_money_for(Resource::GpuShared, now))
                            .map(|g| g.remaining)
                            .sum::<Decimal>();
                    let lease = format!(
                        "ledger balance {} lease {} until t+{}",
                        snap.balance,
                        l.remaining,
                        l.expires_at_ms - T0_MS
                    );
                    let hint = if out_here.is_zero() {
                        String::new()
                    } else if l.expires_at_ms + grace <= now {
                        lapsed_out += out_here;
                        format!(
                            " <- LAPSED: sidecar-{i} has {out_here} out under a lease the \
                             ledger stopped setting aside at t+{} (expiry + hold_grace_ms)",
                            l.expires_at_ms + grace - T0_MS
                        )
                    } else if l.remaining.as_decimal() < out_here {
                        short = true;
                        format!(
                            " <- SHORT: the ledger sets aside {} for sidecar-{i}, which has \
                             {out_here} out",
                            l.remaining
                        )
                    } else {
                        String::new()
                    };
                    (lease, hint)
                }
            };
            out.push(format!(
                "  sidecar-{i}: {lease}; model: open holds {held}, commits not at the ledger \
                 {unapplied}{hint}"
            ));
        }
        let overleased = leased > payable;
        if overleased {
            out.push(format!(
                "  <- OVERLEASED: the ledger sets aside {leased} for sidecars, the account can \
                 pay {payable}"
            ));
        }
        LeaseReport {
            text: out.join("\n"),
            lapsed_out,
            short,
            overleased,
        }
    }
}

/// The charges in the order the ledger applied them with who paid each, and the grants:
/// what an overdrawn balance needs to be understood.
fn who_paid(
    a: &ModelAccount,
    entries: &[StatementEntry],
    grants: &[Grant],
    history: &[LedgerEvent],
) -> String {
    let mut lines = Vec::new();
    for id in usage_ids(history) {
        let Some(e) = entries.iter().find(|e| &e.usage_id == id) else {
            continue;
        };
        let paid: Vec<String> = e
            .deductions
            .iter()
            .map(|d| format!("{} {}", d.source.label(), d.amount))
            .collect();
        lines.push(format!(
            "    {id} at t+{} cost {} paid by [{}]",
            e.at_ms - T0_MS,
            e.cost,
            paid.join(", ")
        ));
    }
    for g in grants {
        lines.push(format!(
            "    grant {} valid t+{}..t+{} covers {:?}: {} of {} left",
            g.grant_id,
            g.starts_at_ms - T0_MS,
            g.expires_at_ms - T0_MS,
            g.covers,
            g.remaining,
            g.quota
        ));
    }
    lines.push(format!(
        "    initial balance {}, top-ups {}",
        a.initial_balance, a.topups
    ));
    lines.join("\n")
}
