//! What happens in a step: the actions of workers (Reserve, Commit, Release, their
//! retries, Admit), of time and the sync loops, of the network, of the operator (top-ups,
//! coupons) and of the machines (graceful restarts, crashes). Each answer is checked
//! against the model on the spot.

use quotad::billing::Resource;
use quotad::engine::sync::DEFAULT_SYNC_BATCH_MAX;
use quotad::engine::{EngineError, ReserveRequest};
use quotad::ledger::LedgerError;
use rust_decimal::Decimal;

use super::{A10, SETTLED_RETENTION_MS, Sim, T0_MS, cents, money};
use crate::model::{ModelHold, a10_cost};

#[derive(Debug, Clone, Copy)]
enum Action {
    Reserve,
    Commit,
    Release,
    RetryCommit,
    RetryReserve,
    Admit,
    Advance,
    Sync,
    Sweep,
    Partition,
    DeliverStale,
    TopUp,
    Coupon,
    Restart,
    Crash,
}

/// How often each action is drawn.
const ACTIONS: [(Action, u32); 15] = [
    (Action::Reserve, 30),
    (Action::Commit, 20),
    (Action::Release, 5),
    (Action::RetryCommit, 3),
    (Action::RetryReserve, 2),
    (Action::Admit, 4),
    (Action::Advance, 16),
    (Action::Sync, 12),
    (Action::Sweep, 2),
    (Action::Partition, 2),
    (Action::DeliverStale, 2),
    (Action::TopUp, 1),
    (Action::Coupon, 1),
    (Action::Restart, 1),
    (Action::Crash, 1),
];

impl Sim {
    /// Draws one action and plays it.
    pub(super) async fn play_step(&mut self) {
        let weights: Vec<u32> = ACTIONS.iter().map(|(_, w)| *w).collect();
        let action = ACTIONS[self.rng.weighted(&weights)].0;
        self.act(action).await;
    }

    async fn act(&mut self, action: Action) {
        match action {
            Action::Reserve => self.reserve().await,
            Action::Commit => self.settle(true).await,
            Action::Release => self.settle(false).await,
            Action::RetryCommit => self.retry_commit().await,
            Action::RetryReserve => self.retry_reserve().await,
            Action::Admit => self.admit().await,
            Action::Advance => {
                self.advance();
                self.tick_sync_loops().await;
            }
            Action::Sync => self.sync().await,
            Action::Sweep => {
                let i = self.rng.index(self.sidecars.len());
                self.engine(i).sweep(self.now());
                self.note(format!("sweep sidecar-{i}"));
            }
            Action::Partition => self.partition(),
            Action::DeliverStale => {
                let done = self.net.deliver_stale().await;
                self.note(format!("deliver a stale request: {done}"));
            }
            Action::TopUp => self.top_up().await,
            Action::Coupon => self.coupon().await,
            Action::Restart => self.restart(false).await,
            Action::Crash => self.restart(true).await,
        }
    }

    /// The operator gives an account a coupon, now and then one that does not pay for
    /// GPU work (it must never be drawn on here).
    async fn coupon(&mut self) {
        let i = self.rng.index(self.model.accounts.len());
        let gpu = self.rng.chance(850);
        self.coupon_on(i, gpu).await;
        self.stats.coupons += 1;
    }

    /// Stops a sidecar (gracefully or as a crash) and starts it again on the same files.
    async fn restart(&mut self, crash: bool) {
        let i = self.rng.index(self.sidecars.len());
        if self.cfg.off(if crash { "crash" } else { "restart" }) {
            return;
        }
        self.stop_sidecar(i, !crash).await;
        self.start_sidecar(i).await;
        if crash {
            self.stats.crashes += 1;
        } else {
            self.stats.graceful_restarts += 1;
        }
    }

    /// A job length in ms: mostly short, sometimes long enough to drain an account. In a
    /// fleet, jobs are small against the accounts (0.0006 to 0.12 each), so that many
    /// sidecars compete for an account's last money job by job.
    fn quantity(&mut self) -> u64 {
        if self.fleet {
            return self.rng.range(1_000, 200_000) as u64;
        }
        let q = match self.rng.weighted(&[60, 30, 10]) {
            0 => self.rng.range(1_000, 400_000),
            1 => self.rng.range(400_000, 2_000_000),
            _ => self.rng.range(2_000_000, 8_000_000),
        };
        q as u64
    }

    /// An account for new work: acct-0 is hot (half of the work, from every sidecar), so
    /// that sidecars compete for its last money; the others are quieter.
    fn work_account(&mut self) -> usize {
        self.rng.weighted(&[4, 2, 1, 1])
    }

    async fn reserve(&mut self) {
        let i = self.rng.index(self.sidecars.len());
        let account = self.work_account();
        let quantity = self.quantity();
        let ttl_ms = self.rng.range(1_000, 20_000);
        let id = self.new_id(&format!("s{i}-r"));
        let account_id = self.model.accounts[account].account_id.clone();
        let now = self.now();
        let req = super::liveness::reserve_request(&account_id, &id, quantity, ttl_ms);
        let sent = self.before_reserve(i, account).await;
        let r = self.engine(i).reserve(req.clone()).await;
        let o = r.unwrap_or_else(|e| self.fail(format!("reserve {id} on sidecar-{i}: {e}")));
        if !o.admitted {
            let reason = o.reason.map(|r| r.name()).unwrap_or("NONE");
            *self.stats.denied.entry(reason).or_default() += 1;
            self.note(format!(
                "reserve {id} sidecar-{i} {account_id} {quantity} ms: denied {reason} (available {})",
                o.available
            ));
        }
        let Some((id, o)) = self.judge_reserve(i, account, &req, o, sent).await else {
            return;
        };
        let now = now.max(self.now());
        let held = o.held.as_decimal();
        if held != a10_cost(quantity) {
            self.fail(format!(
                "reserve {id} held {held}, the price says {}",
                a10_cost(quantity)
            ));
        }
        if o.expires_at_ms <= now || o.expires_at_ms > now + ttl_ms {
            self.fail(format!(
                "reserve {id} expires at t+{}, outside (now, now + ttl {ttl_ms}]",
                o.expires_at_ms - T0_MS
            ));
        }
        self.model.holds.insert(
            id.clone(),
            ModelHold {
                sidecar: i,
                account,
                quantity,
                held,
                expires_at_ms: o.expires_at_ms,
            },
        );
        self.stats.admitted += 1;
        if o.fail_open {
            self.fail_open_admitted(i, account, held);
        }
        let (out, credit) = self.model.outstanding(account, now);
        self.note(format!(
            "reserve {id} sidecar-{i} {account_id} {quantity} ms: held {held} until t+{}{} \
             (outstanding {out} of {credit})",
            o.expires_at_ms - T0_MS,
            if o.fail_open { " FAIL-OPEN" } else { "" }
        ));
        if let Err((excess, m)) = self.model.check_outstanding(account, now) {
            self.overspent(account, excess, m).await;
        }
    }

    /// An acknowledged Reserve left the account with more out than it was given: allowed
    /// only within G1's documented exception (money out at sidecars presumed gone, whose
    /// leases the ledger reclaimed), else the seed fails with the ledger's leases.
    async fn overspent(&mut self, account: usize, excess: Decimal, m: String) {
        for line in self.net.take_notes() {
            self.note(line);
        }
        let report = self.lease_report(account).await;
        if excess <= report.lapsed_out {
            let e = self.model.silent_overrun.entry(account).or_default();
            *e = (*e).max(excess);
            self.stats.silent_overruns += 1;
            self.stats.max_silent_overrun = self.stats.max_silent_overrun.max(excess);
            self.note(format!(
                "  overrun of {excess} allowed: presumed-gone sidecars have {} out",
                report.lapsed_out
            ));
            return;
        }
        // The kind of cause, on the first line, so that a list of failing seeds sorts.
        let tag = if report.short {
            " [a lease shorter than what is out]"
        } else if report.overleased {
            " [leases exceed what the account can pay]"
        } else if !report.lapsed_out.is_zero() {
            " [more than presumed-gone sidecars have out]"
        } else {
            ""
        };
        self.fail(format!("{m}{tag}\n{}", report.text));
    }

    /// Accounts for a fail-open admission: within one process, the engine may admit at
    /// most its budget per account.
    fn fail_open_admitted(&mut self, i: usize, account: usize, held: Decimal) {
        self.stats.admitted_fail_open += 1;
        let budget = self.engine_cfg.fail_open_default.as_decimal();
        let incarnation = self.sidecars[i].incarnation;
        let this_run = self.fail_open.entry((i, incarnation, account)).or_default();
        *this_run += held;
        let this_run = *this_run;
        if this_run > budget {
            self.fail(format!(
                "sidecar-{i} admitted {this_run} fail-open on {} since it started, over its \
                 budget of {budget}",
                self.model.accounts[account].account_id
            ));
        }
        let all_runs: Decimal = self
            .fail_open
            .iter()
            .filter(|((s, _, a), _)| *s == i && *a == account)
            .map(|(_, v)| *v)
            .sum();
        self.stats.max_fail_open_budgets = self
            .stats
            .max_fail_open_budgets
            .max((all_runs / budget).round_dp(2));
    }

    /// Picks a hold the model knows: usually one still live, sometimes one past its expiry
    /// (which must be refused).
    fn pick_hold(&mut self) -> Option<(String, ModelHold)> {
        let now = self.now();
        let want_live = self.rng.chance(900);
        let pool: Vec<(&String, &ModelHold)> = self
            .model
            .holds
            .iter()
            .filter(|(_, h)| (now < h.expires_at_ms) == want_live)
            .collect();
        if pool.is_empty() {
            return None;
        }
        let (id, h) = pool[self.rng.index(pool.len())];
        Some((id.clone(), h.clone()))
    }

    /// Commits (with a quantity up to the reserved one) or releases a hold.
    async fn settle(&mut self, commit: bool) {
        let Some((id, h)) = self.pick_hold() else {
            return;
        };
        let now = self.now();
        let live = now < h.expires_at_ms;
        let engine = self.engine(h.sidecar);
        let quantity = match self.rng.weighted(&[2, 30, 68]) {
            0 => 0,
            1 => h.quantity,
            _ => self.rng.range(1, h.quantity as i64) as u64,
        };
        let r = if commit {
            engine.commit(&id, quantity).await.map(|c| c.charged)
        } else {
            engine.release(&id).await
        };
        let what = if commit {
            format!("commit {id} ({quantity} of {} ms)", h.quantity)
        } else {
            format!("release {id}")
        };
        match r {
            Ok(amount) => {
                if !live {
                    self.fail(format!(
                        "{what} acknowledged after the hold expired at t+{}: its money was \
                         already given back (G1/G3)",
                        h.expires_at_ms - T0_MS
                    ));
                }
                let expected = if commit { a10_cost(quantity) } else { h.held };
                if amount.as_decimal() != expected {
                    self.fail(format!("{what} answered {amount}, expected {expected}"));
                }
                if commit {
                    self.model.commit(&id, quantity, expected, now);
                    self.stats.commits += 1;
                } else {
                    self.model.holds.remove(&id);
                    self.stats.releases += 1;
                }
                self.note(format!("{what} on sidecar-{}: {amount}", h.sidecar));
                // New durable usage wakes the sync loop, unless it is backing off.
                if commit && !self.sidecars[h.sidecar].failing {
                    self.sync_loop_round(h.sidecar, "usage").await;
                }
            }
            Err(EngineError::ReservationExpired { .. }) if !live => {
                self.model.holds.remove(&id);
                self.stats.expired_refused += 1;
                self.note(format!("{what}: refused, expired"));
            }
            // Expired long enough ago to have been forgotten (settled_retention_ms).
            Err(EngineError::UnknownReservation(_))
                if now - h.expires_at_ms > SETTLED_RETENTION_MS =>
            {
                self.model.holds.remove(&id);
                self.stats.expired_refused += 1;
                self.note(format!("{what}: unknown, expired and forgotten"));
            }
            // After a restart while cut off, the account of a recovered hold is not loaded
            // yet and loading it needs the ledger. The hold stays; the worker retries.
            Err(EngineError::Ledger(LedgerError::Unavailable(_))) => {
                self.stats.unavailable_refused += 1;
                self.note(format!("{what}: ledger unavailable"));
            }
            Err(e) => self.fail(format!(
                "{what} on sidecar-{} (hold live: {live}): unexpected error {e}",
                h.sidecar
            )),
        }
    }

    /// Sends an acknowledged Commit again: it must answer the first outcome (G4); the
    /// final audit checks it was charged once.
    async fn retry_commit(&mut self) {
        if self.model.commits.is_empty() {
            return;
        }
        let k = self.rng.index(self.model.commits.len());
        let (id, c) = self
            .model
            .commits
            .iter()
            .nth(k)
            .map(|(id, c)| (id.clone(), c.clone()))
            .expect("in range");
        let now = self.now();
        let r = self.engine(c.sidecar).commit(&id, c.quantity).await;
        self.stats.commit_retries += 1;
        match r {
            Ok(o) if o.charged.as_decimal() == c.cost => {}
            Ok(o) => self.fail(format!(
                "retried commit {id} answered {}, first answer was {}",
                o.charged, c.cost
            )),
            Err(EngineError::UnknownReservation(_)) if now - c.at_ms > SETTLED_RETENTION_MS => {}
            Err(EngineError::Ledger(LedgerError::Unavailable(_))) => {}
            Err(e) => self.fail(format!(
                "retried commit {id} on sidecar-{} (committed at t+{}): {e}",
                c.sidecar,
                c.at_ms - T0_MS
            )),
        }
        self.note(format!("retry commit {id}"));
    }

    /// Sends an acknowledged Reserve of a live hold again: it must answer the first
    /// outcome and hold nothing more (G4).
    async fn retry_reserve(&mut self) {
        let now = self.now();
        let live: Vec<(String, ModelHold)> = self
            .model
            .holds
            .iter()
            .filter(|(_, h)| now < h.expires_at_ms)
            .map(|(id, h)| (id.clone(), h.clone()))
            .collect();
        if live.is_empty() {
            return;
        }
        let (id, h) = live[self.rng.index(live.len())].clone();
        let r = self
            .engine(h.sidecar)
            .reserve(ReserveRequest {
                account_id: self.model.accounts[h.account].account_id.clone(),
                reservation_id: id.clone(),
                resource: Resource::GpuShared,
                sku: A10.into(),
                quantity: h.quantity,
                ttl_ms: self.rng.range(1_000, 20_000),
            })
            .await;
        self.stats.reserve_retries += 1;
        match r {
            Ok(o)
                if o.admitted
                    && o.held.as_decimal() == h.held
                    && o.expires_at_ms == h.expires_at_ms => {}
            Ok(o) => self.fail(format!(
                "retried reserve {id} on sidecar-{} answered {o:?}, first answer held {} \
                 until t+{}",
                h.sidecar,
                h.held,
                h.expires_at_ms - T0_MS
            )),
            Err(e) => self.fail(format!(
                "retried reserve {id} on sidecar-{}: {e}",
                h.sidecar
            )),
        }
        self.note(format!("retry reserve {id}"));
    }

    async fn admit(&mut self) {
        let i = self.rng.index(self.sidecars.len());
        let account = self.work_account();
        let quantity = self.quantity();
        let account_id = self.model.accounts[account].account_id.clone();
        let r = self
            .engine(i)
            .admit(&account_id, Resource::GpuShared, A10, quantity)
            .await;
        let o = r.unwrap_or_else(|e| self.fail(format!("admit on sidecar-{i}: {e}")));
        self.stats.admits += 1;
        self.note(format!(
            "admit sidecar-{i} {account_id} {quantity} ms: {:?}",
            o.reason
        ));
    }

    fn advance(&mut self) {
        let d = match self.rng.weighted(&[70, 25, 5]) {
            0 => self.rng.range(1, 1_500),
            1 => self.rng.range(1_500, 6_000),
            _ => self.rng.range(6_000, 30_000),
        };
        self.clock.advance_ms(d);
        self.note(format!("advance {d} ms"));
    }

    async fn sync(&mut self) {
        let i = self.rng.index(self.sidecars.len());
        // Small batches now and then, so that a backlog takes several rounds.
        let batch = if self.rng.chance(200) {
            self.rng.range(1, 3) as usize
        } else {
            DEFAULT_SYNC_BATCH_MAX
        };
        let r = self.engine(i).sync_once(batch).await;
        match r {
            Ok(n) => self.note(format!("sync sidecar-{i}: {n} usage acknowledged")),
            Err(EngineError::Ledger(LedgerError::Unavailable(e))) => {
                self.note(format!("sync sidecar-{i}: {e}"))
            }
            Err(e) => self.fail(format!("sync_once on sidecar-{i}: {e}")),
        }
    }

    fn partition(&mut self) {
        let i = self.rng.index(self.sidecars.len());
        let d = if self.rng.chance(700) {
            self.rng.range(500, 8_000)
        } else {
            self.rng.range(8_000, 40_000)
        };
        if self.cfg.off("partition") {
            return;
        }
        self.net.partition(&self.sidecars[i].id, self.now() + d);
        self.stats.partitions += 1;
        self.note(format!("partition sidecar-{i} for {d} ms"));
    }

    async fn top_up(&mut self) {
        let account = self.rng.index(self.model.accounts.len());
        let amount = cents(&mut self.rng, 50, 500);
        let id = self.new_id("topup");
        let account_id = self.model.accounts[account].account_id.clone();
        self.ledger
            .top_up(&account_id, money(amount), &id)
            .await
            .unwrap_or_else(|e| self.fail(format!("top-up {id}: {e}")));
        self.model.accounts[account].topups += amount;
        self.stats.topups += 1;
        self.note(format!("top-up {id} of {amount} on {account_id}"));
    }
}
