//! An account as this sidecar caches it: the ledger's last snapshot, the usage
//! acknowledged here since (`pending`), and the live view (`balance`, `grants`, request
//! counts) that is the snapshot with that usage burned down in journal order, exactly as
//! the ledger will; beside it, what this sidecar has committed on the account (open holds,
//! unsettled and pending usage) and the arithmetic of its lease. Nothing here does I/O or
//! waits: the engine calls these under the account's lock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use dashmap::DashMap;

use super::reservation::Hold;

use crate::billing::alerts::AlertMemo;
use crate::billing::free_tier::{Calendar, RequestCounts};
use crate::billing::status;
use crate::billing::storage::StorageMeter;
use crate::billing::usage;
use crate::billing::{Grant, Money, Resource};
use crate::journal::{HoldState, ReservationRow};
use crate::ledger::api::AccountSnapshot;

/// Usage acknowledged here and not yet in the account's snapshot.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) seq: u64,
    pub(super) resource: Resource,
    pub(super) quantity: u64,
    /// List cost of the quantity (what the record carries).
    pub(super) cost: Money,
    /// Money it took in the live view, after free requests and volume plans: what it
    /// spends of the lease.
    pub(super) money: Money,
    pub(super) at_ms: i64,
}

impl Pending {
    /// Burns this usage down on a view (balance, grants, the month's counts) in the
    /// billing rules' order; the money it takes there.
    fn charge_onto(
        &self,
        cal: &Calendar,
        balance: &mut Money,
        grants: &mut [Grant],
        counts: &mut RequestCounts,
    ) -> Money {
        let (r, q, c, at) = (self.resource, self.quantity, self.cost, self.at_ms);
        usage::charge_counted(grants, balance, counts, cal, r, q, c, at).money
    }
}

pub(super) struct Account {
    pub(super) base: AccountSnapshot,
    pub(super) pending: VecDeque<Pending>,
    /// Live view: `base` with `pending` burned down.
    pub(super) balance: Money,
    pub(super) grants: Vec<Grant>,
    /// Sum of open holds.
    pub(super) held: Money,
    /// Quantities of the open holds by resource (`Resource as usize`): what they will take
    /// of the month's free requests and of volume plans (traffic GB) once committed, so a
    /// concurrent Reserve cannot count on the same free requests or plan GB (G1).
    pub(super) held_units: [u64; 6],
    /// Open holds by expiry, earliest first (entries of settled holds are skipped).
    pub(super) expiries: BinaryHeap<Reverse<(i64, String)>>,
    /// Sum of `pending` costs: spent from the lease but not yet at the ledger.
    pub(super) pending_cost: Money,
    /// Charged since the current lease was granted: the spend rate that sizes the next.
    pub(super) spent_since_lease: Money,
    /// Sequence number of the last give-back sent: a lease set by an older request is not
    /// spent from (the ledger may have shrunk it to what was committed then).
    pub(super) lease_floor_seq: u64,
    /// Costs of the lease requests in flight for this account (requests waiting on the
    /// ledger): every request's `need` counts them, so concurrent ones do not starve.
    pub(super) lease_inflight: Money,
    /// Holds settled but not yet durable: still committed until the journal confirms
    /// (a failed write puts them back), so a give-back keeps covering them.
    pub(super) unsettled: Money,
    pub(super) last_touch_ms: i64,
    /// Last request that looked at the account (any: a look keeps it cached, not active).
    pub(super) seen_ms: i64,
    /// The time of its entry in the engine's alert deadlines (`i64::MAX`: none).
    pub(super) alert_due_ms: i64,
    /// The time of its entry in the engine's hold deadlines (`i64::MAX`: none): at most
    /// the earliest of `expiries`, so only a hold expiring before it is indexed again.
    pub(super) hold_due_ms: i64,
    /// What is left of the fail-open budget, and what was admitted from it.
    pub(super) fail_open_left: Money,
    pub(super) fail_open_spent: Money,
    /// Alert crossings that fired (persisted in the journal).
    pub(super) alert_memo: AlertMemo,
    /// Requests counted per month: the snapshot's plus `pending` (the free tier).
    pub(super) counts: RequestCounts,
    /// The catalog's calendar (months of the free tier).
    pub(super) cal: Calendar,
    /// The last storage level and the hour in progress (see `storage`). Async-locked
    /// for the whole of a step, journal wait included, so that a look at the account
    /// waits for a step in flight instead of missing its charges.
    pub(super) storage: Arc<tokio::sync::Mutex<Option<StorageMeter>>>,
}

impl Account {
    pub(super) fn new(
        base: AccountSnapshot,
        pending: VecDeque<Pending>,
        fail_open_budget: Money,
        now_ms: i64,
        cal: Calendar,
    ) -> Account {
        let mut a = Account {
            balance: base.balance,
            grants: base.grants.clone(),
            base,
            pending,
            held: Money::ZERO,
            held_units: [0; 6],
            expiries: BinaryHeap::new(),
            pending_cost: Money::ZERO,
            spent_since_lease: Money::ZERO,
            lease_floor_seq: 0,
            lease_inflight: Money::ZERO,
            unsettled: Money::ZERO,
            last_touch_ms: now_ms,
            seen_ms: now_ms,
            alert_due_ms: i64::MAX,
            hold_due_ms: i64::MAX,
            fail_open_left: fail_open_budget,
            fail_open_spent: Money::ZERO,
            alert_memo: AlertMemo::default(),
            counts: RequestCounts::default(),
            cal,
            storage: Arc::new(tokio::sync::Mutex::new(None)),
        };
        a.recompute();
        a
    }

    pub(super) fn recompute(&mut self) {
        self.balance = self.base.balance;
        self.grants.clone_from(&self.base.grants);
        self.counts.clone_from(&self.base.request_counts);
        self.pending_cost = Money::ZERO;
        for p in &mut self.pending {
            p.money = p.charge_onto(
                &self.cal,
                &mut self.balance,
                &mut self.grants,
                &mut self.counts,
            );
            self.pending_cost += p.money;
        }
    }

    /// The money a charge of `quantity` (list cost `cost`) would take now, after the
    /// month's free requests and volume plans.
    pub(super) fn money_due(
        &self,
        resource: Resource,
        quantity: u64,
        cost: Money,
        now_ms: i64,
    ) -> Money {
        // Open holds come first: they take the free requests and plan GB before this one.
        let held = self.held_units[resource as usize];
        let free = self
            .counts
            .free_part_after(&self.cal, resource, held, quantity, now_ms);
        usage::money_due(&self.grants, resource, quantity, cost, free, held, now_ms)
    }

    /// A reservation of `quantity` of `resource` is open (`true`) or no longer (`false`).
    pub(super) fn count_units(&mut self, resource: Resource, quantity: u64, open: bool) {
        let u = &mut self.held_units[resource as usize];
        *u = if open {
            u.saturating_add(quantity)
        } else {
            u.saturating_sub(quantity)
        };
    }

    /// What the account can pay after this sidecar's holds, by the billing rules alone.
    pub(super) fn billing_available(&self, resource: Resource, now_ms: i64) -> Money {
        status::available_for(self.balance, &self.grants, self.held, resource, now_ms)
    }

    /// What this sidecar could admit now: the billing view, and with several sidecars
    /// (`whole_account` false) no more than its lease's unspent part plus the money no
    /// sidecar holds a lease on, as of the last snapshot.
    pub(super) fn available(&self, resource: Resource, now_ms: i64, whole_account: bool) -> Money {
        let billing = self.billing_available(resource, now_ms);
        if whole_account {
            return billing;
        }
        let spendable = self.lease_spendable(now_ms).unwrap_or_default();
        billing.min(spendable.non_negative() + self.base.unleased)
    }

    /// What the lease still lets this sidecar admit, or None once it has expired or a
    /// give-back may have shrunk it at the ledger.
    pub(super) fn lease_spendable(&self, now_ms: i64) -> Option<Money> {
        let l = &self.base.lease;
        (now_ms < l.expires_at_ms && l.seq >= self.lease_floor_seq)
            .then(|| l.remaining - self.pending_cost - self.held)
    }

    /// The account is near the edge (or the ledger wants unused lease back): keep no
    /// headroom.
    pub(super) fn lease_recalled(&self) -> bool {
        self.base.lease.edge || self.base.lease.give_back
    }

    /// What this sidecar has committed: open holds and usage the ledger has not applied.
    pub(super) fn committed(&self) -> Money {
        self.held + self.pending_cost + self.unsettled
    }

    /// Money held by open holds (a reservation, a job's next interval, a session's hour)
    /// grows by `amount`.
    pub(super) fn add_held(&mut self, amount: Money) {
        self.held += amount;
    }

    /// `amount` held by an open hold is given back (it settled, expired or shrank).
    pub(super) fn remove_held(&mut self, amount: Money) {
        self.held -= amount;
        // `held` is the sum of the open holds: it can only go below zero if a hold is
        // given back twice, or one that was never added.
        debug_assert!(
            !self.held.is_negative(),
            "held {} after giving back {amount}",
            self.held
        );
    }

    /// When the account was last used or looked at.
    pub(super) fn used_at_ms(&self) -> i64 {
        self.seen_ms.max(self.last_touch_ms)
    }

    /// Nothing depends on the account staying cached: no open hold, no usage the ledger
    /// has not applied nor settlement not yet durable, no lease request in flight, no
    /// stored level accruing (nor a storage step in flight), and its lease given back
    /// (`whole_account`, embedded: the lease is the whole account, nobody else wants it).
    pub(super) fn quiet(&self, whole_account: bool) -> bool {
        let storage_idle = self.storage.try_lock().is_ok_and(|m| {
            m.as_ref().is_none_or(|m| {
                m.bytes_stored == 0 && m.excess_byte_ms == 0 && m.stored_byte_ms == 0
            })
        });
        self.held.is_zero()
            && self.held_units.iter().all(|u| *u == 0)
            && self.pending.is_empty()
            && self.unsettled.is_zero()
            && self.lease_inflight.is_zero()
            && storage_idle
            && (whole_account || self.base.lease.remaining.is_zero())
    }

    /// Takes a snapshot newer than the cached one (`false`: it is older, and ignored):
    /// usage it includes leaves `pending`, and the live view is burned down again from it.
    pub(super) fn apply_snapshot(&mut self, snap: AccountSnapshot) -> bool {
        if snap.version < self.base.version {
            return false;
        }
        if snap.lease.expires_at_ms != self.base.lease.expires_at_ms {
            self.spent_since_lease = Money::ZERO;
        }
        let applied = snap.applied_seq;
        // `pending` is in seq order: the usage the snapshot includes leads it.
        let included = self.pending.partition_point(|p| p.seq <= applied);
        let unchanged = self.moved_by_exactly(included, &snap);
        let gone: Money = self.pending.drain(..included).map(|p| p.money).sum();
        self.base = snap;
        if unchanged {
            // The live view is the new base with the rest burned down, which it is already.
            self.pending_cost -= gone;
            debug_assert!(
                self.is_base_with_pending(),
                "a kept live view differs from a recompute"
            );
        } else {
            self.recompute();
        }
        true
    }

    /// Whether `snap` is the cached base with the first `included` pending usage burned
    /// down and nothing else (no top-up, grant or other sidecar's usage in between): then
    /// the live view, that usage and the rest burned down in order on the base, is already
    /// the new base with the rest burned down, and a snapshot costs the usage it includes
    /// instead of every pending record (under a backlog, hundreds of thousands per sync).
    fn moved_by_exactly(&self, included: usize, snap: &AccountSnapshot) -> bool {
        let (balance, grants, counts) = self.burned_down(included, |_, _| {});
        balance == snap.balance && grants == snap.grants && counts == snap.request_counts
    }

    /// Whether the live view is what `recompute` would make of `base` and `pending` (the
    /// invariant `apply_snapshot` relies on when it keeps the view).
    fn is_base_with_pending(&self) -> bool {
        let (mut cost, mut each_same) = (Money::ZERO, true);
        let (balance, grants, counts) = self.burned_down(self.pending.len(), |p, money| {
            cost += money;
            each_same &= money == p.money;
        });
        each_same
            && cost == self.pending_cost
            && (balance, &grants, &counts) == (self.balance, &self.grants, &self.counts)
    }

    /// The base with the first `n` pending records burned down in order (`recompute`'s
    /// walk, on copies); `each` sees every record's money.
    fn burned_down(
        &self,
        n: usize,
        mut each: impl FnMut(&Pending, Money),
    ) -> (Money, Vec<Grant>, RequestCounts) {
        let mut balance = self.base.balance;
        let mut grants = self.base.grants.clone();
        let mut counts = self.base.request_counts.clone();
        for p in self.pending.iter().take(n) {
            each(
                p,
                p.charge_onto(&self.cal, &mut balance, &mut grants, &mut counts),
            );
        }
        (balance, grants, counts)
    }

    /// The ledger wants unused lease back, or the account reached the edge while this
    /// sidecar holds more lease than it has committed: give it back now.
    pub(super) fn owes_give_back(&self) -> bool {
        self.base.lease.give_back
            || self.lease_recalled() && self.base.lease.remaining > self.committed()
    }

    /// Charges usage on the live view (grants, then the balance, exactly as the ledger
    /// will) as pending usage `seq`; returns the money it took, after free requests and
    /// volume plans (what it spends of the lease).
    pub(super) fn charge(
        &mut self,
        seq: u64,
        resource: Resource,
        quantity: u64,
        cost: Money,
        at_ms: i64,
    ) -> Money {
        // `pending` is in seq order: seqs are handed out under this account's lock.
        debug_assert!(
            self.pending.back().is_none_or(|p| p.seq < seq),
            "usage seq {seq} is not above the account's last pending seq"
        );
        let cal = self.cal;
        let money = usage::charge_counted(
            &mut self.grants,
            &mut self.balance,
            &mut self.counts,
            &cal,
            resource,
            quantity,
            cost,
            at_ms,
        )
        .money;
        self.spent_since_lease += money;
        self.pending_cost += money;
        self.pending.push_back(Pending {
            seq,
            resource,
            quantity,
            cost,
            money,
            at_ms,
        });
        money
    }

    /// Takes pending usage `seq` back (its journal write failed).
    pub(super) fn undo_charge(&mut self, seq: u64) {
        self.pending.retain(|p| p.seq != seq);
        self.recompute();
    }

    /// The money pending usage `seq` took in the live view.
    pub(super) fn pending_money(&self, seq: u64) -> Option<Money> {
        let i = self.pending.binary_search_by_key(&seq, |p| p.seq).ok()?;
        Some(self.pending[i].money)
    }

    /// Expires the open holds whose TTL has passed by `now_ms` (G3), calling `expired`
    /// with each one's new row (to journal it) while the hold is still locked. Returns
    /// whether any expired.
    pub(super) fn expire_due(
        &mut self,
        holds: &DashMap<String, Hold>,
        now_ms: i64,
        mut expired: impl FnMut(&ReservationRow),
    ) -> bool {
        let mut any = false;
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now_ms {
                break;
            }
            let Some(Reverse((_, id))) = self.expiries.pop() else {
                break;
            };
            let Some(mut h) = holds.get_mut(&id) else {
                continue;
            };
            if h.row.state != HoldState::Open
                || h.busy
                || h.streaming
                || h.row.expires_at_ms > now_ms
            {
                continue;
            }
            h.row.state = HoldState::Expired;
            h.row.settled_at_ms = now_ms;
            self.remove_held(h.row.held);
            self.count_units(h.row.resource, h.row.quantity, false);
            any = true;
            expired(&h.row);
        }
        any
    }
}
