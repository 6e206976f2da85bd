//! The model: what the simulated workers and operator were told, in plain arithmetic that
//! shares nothing with the crate's billing code. Prices are recomputed here from the
//! catalog's A10 rate, and charges are burned down here by the rules of DESIGN.md §1 R2/R3.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::net::LedgerEvent;

/// gpu.shared.a10 costs 0.0006 per GPU-second, quantities are milliseconds: 6e-7 per ms,
/// exact in 7 places, so no rounding is ever involved.
pub fn a10_cost(quantity_ms: u64) -> Decimal {
    Decimal::from(quantity_ms) * Decimal::new(6, 7)
}

#[derive(Debug, Clone)]
pub struct ModelHold {
    pub sidecar: usize,
    pub account: usize,
    pub quantity: u64,
    pub held: Decimal,
    pub expires_at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct ModelCommit {
    pub sidecar: usize,
    pub account: usize,
    pub quantity: u64,
    pub cost: Decimal,
    pub at_ms: i64,
}

#[derive(Debug, Clone)]
pub struct ModelGrant {
    pub grant_id: String,
    pub amount: Decimal,
    pub starts_at_ms: i64,
    pub expires_at_ms: i64,
    /// Pays for GPU time (a storage-only coupon must never be drawn on by GPU work).
    pub covers_gpu: bool,
}

#[derive(Debug, Clone)]
pub struct ModelAccount {
    pub account_id: String,
    pub initial_balance: Decimal,
    pub topups: Decimal,
    pub grants: Vec<ModelGrant>,
    /// Sum of acknowledged commit costs.
    pub committed: Decimal,
}

impl ModelAccount {
    /// Everything the account was ever given that can pay for GPU time.
    pub fn gpu_credit(&self) -> Decimal {
        self.initial_balance.max(Decimal::ZERO)
            + self.topups
            + self
                .grants
                .iter()
                .filter(|g| g.covers_gpu)
                .map(|g| g.amount)
                .sum::<Decimal>()
    }
}

/// One charge as the model burns it down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDeduction {
    /// Grant id, or "balance".
    pub source: String,
    pub amount: Decimal,
}

#[derive(Default)]
pub struct Model {
    pub accounts: Vec<ModelAccount>,
    /// Acknowledged Reserves not yet committed, released or seen expired, by reservation id.
    pub holds: BTreeMap<String, ModelHold>,
    /// Acknowledged Commits, by reservation id (= usage id).
    pub commits: BTreeMap<String, ModelCommit>,
    /// Overspend the configuration allows per account (fail-open budget × sidecars).
    pub overspend_allowed: Decimal,
    /// Per account, the largest overspend seen that G1's documented exception allows: a
    /// sidecar silent for longer than hold_grace_ms past its lease's expiry is presumed
    /// gone, its lease reclaimed, and the usage it later brings back is an overrun.
    pub silent_overrun: BTreeMap<usize, Decimal>,
    /// Largest outstanding / credit seen at an acknowledged Reserve.
    pub max_ratio: Decimal,
}

impl Model {
    /// Open holds of the account that have not reached their expiry.
    pub fn open_held(&self, account: usize, now_ms: i64) -> Decimal {
        self.holds
            .values()
            .filter(|h| h.account == account && now_ms < h.expires_at_ms)
            .map(|h| h.held)
            .sum()
    }

    /// What the account has been promised: acknowledged commits plus live holds. With
    /// fail-closed sidecars this may never exceed what it was ever given (G1 across all
    /// sidecars); returns (outstanding, credit).
    pub fn outstanding(&self, account: usize, now_ms: i64) -> (Decimal, Decimal) {
        let a = &self.accounts[account];
        (
            a.committed + self.open_held(account, now_ms),
            a.gpu_credit(),
        )
    }

    /// G1 at an acknowledged Reserve: Err(excess, explanation) when the account has
    /// more out than it was given plus the fail-open allowance.
    pub fn check_outstanding(
        &mut self,
        account: usize,
        now_ms: i64,
    ) -> Result<(), (Decimal, String)> {
        let (out, credit) = self.outstanding(account, now_ms);
        if !credit.is_zero() {
            self.max_ratio = self.max_ratio.max((out / credit).round_dp(4));
        }
        let excess = out - credit - self.overspend_allowed;
        if excess > Decimal::ZERO {
            let a = &self.accounts[account];
            return Err((
                excess,
                format!(
                    "G1 overspend on {}: committed {} + open holds {} = {out} > credit \
                     {credit} (+ allowed fail-open overspend {})",
                    a.account_id,
                    a.committed,
                    self.open_held(account, now_ms),
                    self.overspend_allowed
                ),
            ));
        }
        Ok(())
    }

    pub fn commit(&mut self, id: &str, quantity: u64, cost: Decimal, at_ms: i64) {
        let h = self
            .holds
            .remove(id)
            .expect("committed hold is in the model");
        self.accounts[h.account].committed += cost;
        self.commits.insert(
            id.to_owned(),
            ModelCommit {
                sidecar: h.sidecar,
                account: h.account,
                quantity,
                cost,
                at_ms,
            },
        );
    }

    /// Burns the account's acknowledged charges down in the ledger's order (`history`):
    /// per charge, the grants that exist by then, are valid at the charge's time and cover
    /// GPU work, earliest expiry first, then lowest grant id; the rest from the balance.
    /// Top-ups commute with charges (the balance is just a sum), so they are not in the
    /// history. Returns the final balance, the grants' remaining amounts and each charge's
    /// deductions.
    pub fn burn_down(
        &self,
        account: usize,
        history: &[LedgerEvent],
    ) -> (
        Decimal,
        BTreeMap<String, Decimal>,
        BTreeMap<String, Vec<ModelDeduction>>,
    ) {
        let a = &self.accounts[account];
        let mut balance = a.initial_balance + a.topups;
        // (grant, remaining, created yet)
        let mut grants: Vec<(ModelGrant, Decimal, bool)> = a
            .grants
            .iter()
            .map(|g| (g.clone(), g.amount, false))
            .collect();
        grants.sort_by(|(x, ..), (y, ..)| {
            (x.expires_at_ms, &x.grant_id).cmp(&(y.expires_at_ms, &y.grant_id))
        });
        let mut deductions = BTreeMap::new();
        for event in history {
            let id = match event {
                LedgerEvent::Grant(gid) => {
                    for (g, _, created) in grants.iter_mut() {
                        *created |= g.grant_id == *gid;
                    }
                    continue;
                }
                LedgerEvent::Usage(id) => id,
            };
            let c = &self.commits[id];
            let mut left = c.cost;
            let mut ds = Vec::new();
            for (g, remaining, created) in grants.iter_mut() {
                let usable = *created
                    && g.covers_gpu
                    && g.starts_at_ms <= c.at_ms
                    && c.at_ms < g.expires_at_ms
                    && *remaining > Decimal::ZERO;
                if left <= Decimal::ZERO || !usable {
                    continue;
                }
                let take = left.min(*remaining);
                *remaining -= take;
                left -= take;
                ds.push(ModelDeduction {
                    source: g.grant_id.clone(),
                    amount: take,
                });
            }
            if left > Decimal::ZERO {
                balance -= left;
                ds.push(ModelDeduction {
                    source: "balance".into(),
                    amount: left,
                });
            }
            deductions.insert(id.clone(), ds);
        }
        let remaining = grants
            .into_iter()
            .map(|(g, r, _)| (g.grant_id, r))
            .collect();
        (balance, remaining, deductions)
    }
}
