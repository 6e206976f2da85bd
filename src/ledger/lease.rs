//! Leases (Doorman-style, in money): the ledger sets aside, per account, an amount each
//! sidecar may admit until an expiry, and never sets aside more than the account can pay.
//! That bound is what keeps a fleet of sidecars from overspending an account (G1) while
//! each admits from memory, also through a ledger outage.
//!
//! The other half is liveness (G7): money one sidecar holds but does not use must not
//! starve another. So a lease is two parts: what the sidecar has committed (open holds and
//! usage the ledger has not applied, as it reports with every request) and headroom above
//! that, sized to the sidecar's demand. Headroom is a convenience; the ledger gives it only
//! while the account can pay every sidecar's wanted headroom. Near the edge (the money free
//! after everyone's commitments is less than the fleet's leases would want) nobody gets
//! headroom: each sidecar asks for exactly what the request at hand needs, so the ledger
//! decides every admission itself, in one round trip, the way quota services allocate near
//! a limit. Sidecars then give back at once what they stop using (a release, a Commit of
//! less). Entering the edge, and whenever a need cannot be met, the ledger flags the other
//! sidecars' leases `give_back`: each returns its unused part at its next sync (the flag is
//! in its snapshots and in every Sync answer's `recalls`), and the asking sidecar waits for
//! that, bounded, instead of denying a request the account can pay.
//!
//! An expired lease keeps its money set aside until its sidecar gives it back (a renewal,
//! a give-back, or a release once it has no open holds and has pushed all its usage): a
//! sidecar cut off from the ledger may still hold usage it admitted under the lease, and
//! that money must not be leased again before the usage arrives. Only a sidecar silent for
//! `hold_grace_ms` past its lease's expiry is presumed gone and its lease reclaimed; it
//! clamps every hold to expire by then, so after that it can admit nothing more under it.

use rust_decimal::Decimal;

use super::api::{DEFAULT_LEASE_HOLD_GRACE_MS, LeaseRequest};
use super::store::LeaseRow;
use crate::billing::{Grant, GrantUnit, Money, ResourceSet};

/// How long a lease lets a sidecar admit without hearing from the ledger.
pub const DEFAULT_LEASE_TTL_MS: i64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    pub ttl_ms: i64,
    pub hold_grace_ms: i64,
    /// Several sidecars may share an account (`quotad ledger`): headroom only while the
    /// account can pay the fleet's wants, synchronous admission near the edge. False for
    /// the embedded ledger, whose one sidecar may lease the whole account.
    pub fleet: bool,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            ttl_ms: DEFAULT_LEASE_TTL_MS,
            hold_grace_ms: DEFAULT_LEASE_HOLD_GRACE_MS,
            fleet: true,
        }
    }
}

/// What the account can pay for GPU work now: valid money grants covering GPU time plus a
/// non-negative balance.
pub fn payable(balance: Money, grants: &[Grant], now_ms: i64) -> Money {
    let from_grants: Decimal = grants
        .iter()
        .filter(|g| {
            g.unit == GrantUnit::Money
                && g.covers.bits() & ResourceSet::COMPUTE.bits() != 0
                && g.is_valid_at(now_ms)
        })
        .map(|g| g.remaining.max(Decimal::ZERO))
        .sum();
    Money::from_decimal(from_grants) + balance.non_negative()
}

/// Money a lease keeps set aside at `now_ms`: all of it until expiry plus grace.
pub fn occupied(l: &LeaseRow, now_ms: i64, grace_ms: i64) -> Money {
    if now_ms < l.expires_at_ms.saturating_add(grace_ms) {
        l.remaining.non_negative()
    } else {
        Money::ZERO
    }
}

/// Money other sidecars' leases keep set aside at `now_ms`.
pub fn occupied_by_others(
    leases: &[LeaseRow],
    sidecar_id: &str,
    now_ms: i64,
    grace_ms: i64,
) -> Money {
    leases
        .iter()
        .filter(|l| l.sidecar_id != sidecar_id)
        .map(|l| occupied(l, now_ms, grace_ms))
        .sum()
}

/// Money no sidecar holds a lease on: what any sidecar could be granted now.
pub fn unleased(payable: Money, leases: &[LeaseRow], now_ms: i64, grace_ms: i64) -> Money {
    let all: Money = leases.iter().map(|l| occupied(l, now_ms, grace_ms)).sum();
    (payable - all).non_negative()
}

/// What a lease holds beyond its sidecar's reported commitments, which the sidecar could
/// give back: the headroom of a live lease, all of a lapsed one (its sidecar may have
/// committed more than it reported before the lease expired; it says so when it answers).
pub fn unused(l: &LeaseRow, now_ms: i64, grace_ms: i64) -> Money {
    if now_ms < l.expires_at_ms {
        (l.remaining - l.held).non_negative()
    } else {
        occupied(l, now_ms, grace_ms)
    }
}

/// The outcome of one lease request on an account's lease rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseDecision {
    /// The asking sidecar's row.
    pub row: LeaseRow,
    /// Other sidecars' rows whose flags changed (edge, give_back).
    pub others: Vec<LeaseRow>,
    /// Unused money of other sidecars the ledger has asked back (0 if none).
    pub recalling: Money,
}

/// Decides a lease request against every lease on the account (`rows`, the asker's
/// included). See the module doc for the rules. G1 holds because a request for more
/// never takes a lease past what others leave free (nor below what is already set aside
/// for the asker), and a give-back or release never grows one: the money set aside for
/// sidecars never exceeds what the account can pay.
pub fn decide(
    req: &LeaseRequest,
    sidecar_id: &str,
    rows: &[LeaseRow],
    payable: Money,
    now_ms: i64,
    cfg: LeaseConfig,
) -> LeaseDecision {
    let grace = cfg.hold_grace_ms;
    let current = rows.iter().find(|l| l.sidecar_id == sidecar_id);
    let held = req.held.non_negative();
    // What is set aside for this sidecar now. A grant never goes below it, a give-back
    // never above it: `held` is the sidecar's word for what it committed, and may count
    // usage the ledger applied since the sidecar last heard (its answer was lost or is
    // still on its way), so it may size a lease only within what is free.
    let kept = current.map_or(Money::ZERO, |c| occupied(c, now_ms, grace));
    let mut row = LeaseRow {
        sidecar_id: sidecar_id.to_owned(),
        remaining: held.min(kept),
        expires_at_ms: now_ms,
        request_seq: req.seq,
        held,
        want: held,
        edge: current.is_some_and(|c| c.edge),
        give_back: false,
    };
    if req.release || req.give_back {
        if req.give_back {
            // The sidecar stopped admitting under the lease before asking: shrinking it to
            // its commitments is safe. Holds admitted under it keep their expiry bound. Its
            // demand stays what it says (the edge is judged by the fleet's demand).
            row.expires_at_ms = current.map_or(now_ms, |c| c.expires_at_ms);
            row.want = req.want.max(held);
        }
        return finish(row, Vec::new(), rows, now_ms, grace);
    }
    let others: Vec<&LeaseRow> = rows.iter().filter(|l| l.sidecar_id != sidecar_id).collect();
    let free = (payable - occupied_by_others(rows, sidecar_id, now_ms, grace)).non_negative();
    let need = req.need.max(held);
    let want = req.want.max(need);
    row.want = want;
    row.expires_at_ms = now_ms.saturating_add(cfg.ttl_ms);
    // Asked to give back and not done yet (this request crossed the ask): the ask stands,
    // and no headroom meanwhile. Only a give-back or release clears it.
    row.give_back = current.is_some_and(|c| c.give_back);
    let flags = if need > free {
        // Cannot be covered now: keep what is set aside, ask the others for what they do
        // not use. The account is contended, so it is at the edge for everyone.
        row.remaining = kept.max(held.min(free));
        row.edge = cfg.fleet;
        if cfg.fleet {
            recall_flags(&others, now_ms, grace)
        } else {
            Vec::new()
        }
    } else {
        let edge = cfg.fleet && near_edge(&others, payable, held, need, want, now_ms, grace);
        let headroom = if edge || row.give_back {
            Money::ZERO
        } else {
            want - need
        };
        // Never shrink a lease by a request for more: the sidecar may have admitted under
        // it while this request was on its way.
        row.remaining = (need + headroom).min(free).max(need).max(kept);
        row.edge = edge;
        edge_flags(&others, edge, now_ms, grace)
    };
    debug_assert!(
        row.remaining <= free.max(kept),
        "a grant stays within what is free"
    );
    finish(row, flags, rows, now_ms, grace)
}

/// The others' rows when a need cannot be met: every live one at the edge, and every one
/// holding money it does not use asked to give it back.
fn recall_flags(others: &[&LeaseRow], now_ms: i64, grace: i64) -> Vec<LeaseRow> {
    others
        .iter()
        .filter_map(|o| {
            let live = now_ms < o.expires_at_ms;
            let give = !unused(o, now_ms, grace).is_zero();
            (give && !o.give_back || live && !o.edge).then(|| LeaseRow {
                edge: o.edge || live,
                give_back: o.give_back || give,
                ..(*o).clone()
            })
        })
        .collect()
}

/// The others' rows after a granted request: live ones follow the account's edge, and at
/// the edge those holding money they do not use are asked to give it back.
fn edge_flags(others: &[&LeaseRow], edge: bool, now_ms: i64, grace: i64) -> Vec<LeaseRow> {
    others
        .iter()
        .filter_map(|o| {
            let live = now_ms < o.expires_at_ms;
            let give = edge && live && !unused(o, now_ms, grace).is_zero();
            let flip_edge = live && o.edge != edge;
            (flip_edge || give && !o.give_back).then(|| LeaseRow {
                edge: if live { edge } else { o.edge },
                give_back: o.give_back || give,
                ..(*o).clone()
            })
        })
        .collect()
}

/// The decision: the asker's row, the others' changed rows, and what is being recalled
/// from the others (their unused money under a give-back flag, after the change).
fn finish(
    row: LeaseRow,
    others: Vec<LeaseRow>,
    rows: &[LeaseRow],
    now_ms: i64,
    grace: i64,
) -> LeaseDecision {
    let recalling = rows
        .iter()
        .filter(|l| l.sidecar_id != row.sidecar_id)
        .map(|l| {
            others
                .iter()
                .find(|o| o.sidecar_id == l.sidecar_id)
                .unwrap_or(l)
        })
        .filter(|l| l.give_back)
        .map(|l| unused(l, now_ms, grace))
        .sum();
    LeaseDecision {
        row,
        others,
        recalling,
    }
}

/// Whether the account is near the edge for a request: after it, the money free of every
/// sidecar's commitments is less than the headroom the fleet's leases want.
fn near_edge(
    others: &[&LeaseRow],
    payable: Money,
    held: Money,
    need: Money,
    want: Money,
    now_ms: i64,
    grace: i64,
) -> bool {
    let mut committed = need;
    let mut wanted = want - need;
    for o in others {
        if now_ms < o.expires_at_ms {
            committed += o.held.min(o.remaining).non_negative();
            wanted += (o.want - o.held).non_negative();
        } else {
            committed += occupied(o, now_ms, grace);
        }
    }
    debug_assert!(need >= held);
    payable - committed < wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::grant::money_grant;
    use proptest::prelude::*;

    fn m(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    fn req(want: &str, need: &str, held: &str) -> LeaseRequest {
        LeaseRequest {
            account_id: "a".into(),
            want: m(want),
            need: m(need),
            held: m(held),
            release: false,
            give_back: false,
            seq: 1,
        }
    }

    fn row(sidecar: &str, remaining: &str, held: &str, want: &str, expires_at_ms: i64) -> LeaseRow {
        LeaseRow {
            sidecar_id: sidecar.into(),
            remaining: m(remaining),
            expires_at_ms,
            request_seq: 0,
            held: m(held),
            want: m(want),
            edge: false,
            give_back: false,
        }
    }

    const CFG: LeaseConfig = LeaseConfig {
        ttl_ms: 100,
        hold_grace_ms: 50,
        fleet: true,
    };

    #[test]
    fn payable_counts_valid_compute_money_and_non_negative_balance() {
        let grants = vec![money_grant("g", 10, 0, 1_000), money_grant("old", 10, 0, 5)];
        assert_eq!(payable(m("3"), &grants, 10), m("13"));
        assert_eq!(payable(m("-3"), &grants, 10), m("10"));
    }

    #[test]
    fn others_keep_their_lease_until_expiry_plus_grace() {
        let leases = vec![
            row("me", "5", "0", "0", 100),
            row("b", "2", "0", "0", 100),
            row("c", "1", "0", "0", 10),
        ];
        assert_eq!(occupied_by_others(&leases, "me", 20, 50), m("3"));
        assert_eq!(occupied_by_others(&leases, "me", 59, 50), m("3"));
        assert_eq!(occupied_by_others(&leases, "me", 60, 50), m("2"));
        assert_eq!(occupied_by_others(&leases, "me", 150, 50), Money::ZERO);
        assert_eq!(unleased(m("10"), &leases, 20, 50), m("2"));
    }

    #[test]
    fn a_rich_account_grants_what_is_wanted() {
        let d = decide(&req("4", "1", "0"), "me", &[], m("100"), 7, CFG);
        assert_eq!(d.row.remaining, m("4"));
        assert_eq!(d.row.expires_at_ms, 107);
        assert!(!d.row.edge);
        assert_eq!(d.recalling, Money::ZERO);
    }

    #[test]
    fn near_the_edge_only_the_need_is_granted() {
        // A lone sidecar wanting more than the account can pay gets just its need.
        let d = decide(&req("1", "0.006", "0"), "me", &[], m("0.08"), 0, CFG);
        assert_eq!(d.row.remaining, m("0.006"));
        assert!(d.row.edge);
        // The embedded ledger's one sidecar gets the whole account.
        let embedded = LeaseConfig {
            fleet: false,
            ..CFG
        };
        let d = decide(&req("1", "0.006", "0"), "me", &[], m("0.08"), 0, embedded);
        assert_eq!(d.row.remaining, m("0.08"));
    }

    #[test]
    fn a_need_others_hold_unused_is_recalled_not_granted() {
        // b holds 0.08 with nothing committed; me needs 0.006.
        let rows = vec![row("b", "0.08", "0", "1", 100)];
        let d = decide(&req("1", "0.006", "0"), "me", &rows, m("0.08"), 0, CFG);
        assert_eq!(d.row.remaining, Money::ZERO);
        assert_eq!(d.recalling, m("0.08"));
        assert_eq!(d.others.len(), 1);
        assert!(d.others[0].give_back && d.others[0].edge);
        // b gives its unused part back; now me is granted its need at once.
        let mut back = req("0", "0", "0");
        back.give_back = true;
        back.seq = 2;
        let b = decide(
            &back,
            "b",
            &[d.others[0].clone(), d.row.clone()],
            m("0.08"),
            1,
            CFG,
        );
        assert_eq!(b.row.remaining, Money::ZERO);
        assert_eq!(b.row.expires_at_ms, 100);
        assert!(!b.row.give_back);
        let d = decide(&req("1", "0.006", "0"), "me", &[b.row], m("0.08"), 2, CFG);
        assert_eq!(d.row.remaining, m("0.006"));
    }

    #[test]
    fn a_request_never_shrinks_what_is_set_aside_and_held_counts_only_within_what_is_free() {
        let rows = vec![row("me", "6", "0", "6", 50)];
        let d = decide(&req("1", "0", "0"), "me", &rows, m("10"), 7, CFG);
        assert_eq!(d.row.remaining, m("6"));
        // Expired, but still set aside until expiry plus grace (50 + 50).
        let d = decide(&req("1", "0", "0"), "me", &rows, m("10"), 50, CFG);
        assert_eq!(d.row.remaining, m("6"));
        let d = decide(&req("1", "0", "0"), "me", &rows, m("10"), 100, CFG);
        assert_eq!(d.row.remaining, m("1"));
        // Others leave 1 free; what this sidecar says it committed is covered only that far
        // (its word may count usage the ledger has applied since).
        let rows = vec![row("b", "9", "9", "9", 100)];
        let d = decide(&req("40", "9", "9"), "me", &rows, m("10"), 0, CFG);
        assert_eq!(d.row.remaining, m("1"));
        // A give-back never grows a lease.
        let mut back = req("0", "0", "5");
        back.give_back = true;
        let d = decide(
            &back,
            "me",
            &[row("me", "3", "3", "3", 100)],
            m("10"),
            0,
            CFG,
        );
        assert_eq!(d.row.remaining, m("3"));
        let mut r = req("4", "2", "2");
        r.release = true;
        let d = decide(&r, "me", &[row("me", "6", "2", "6", 50)], m("10"), 7, CFG);
        assert_eq!((d.row.remaining, d.row.expires_at_ms), (m("2"), 7));
    }

    #[test]
    fn leaving_the_edge_clears_the_flag_on_live_leases() {
        let mut b = row("b", "0", "0", "0.01", 100);
        b.edge = true;
        let d = decide(&req("1", "0.1", "0"), "me", &[b], m("50"), 0, CFG);
        assert!(!d.row.edge);
        assert_eq!(d.row.remaining, m("1"));
        assert_eq!(d.others.len(), 1);
        assert!(!d.others[0].edge);
    }

    /// A fleet of honest sidecars: each reports its commitments, never admits past its
    /// lease, and gives back what it does not use when asked.
    #[derive(Debug, Clone)]
    enum Op {
        Need {
            sidecar: usize,
            cost: u32,
            want: u32,
        },
        Spend {
            sidecar: usize,
            amount: u32,
        },
        GiveBack {
            sidecar: usize,
        },
        Release {
            sidecar: usize,
        },
        Advance {
            ms: u16,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 1..400u32, 0..3_000u32).prop_map(|(sidecar, cost, want)| Op::Need {
                sidecar,
                cost,
                want
            }),
            (0..4usize, 1..400u32).prop_map(|(sidecar, amount)| Op::Spend { sidecar, amount }),
            (0..4usize).prop_map(|sidecar| Op::GiveBack { sidecar }),
            (0..4usize).prop_map(|sidecar| Op::Release { sidecar }),
            (0..200u16).prop_map(|ms| Op::Advance { ms }),
        ]
    }

    fn cents(n: u32) -> Money {
        Money::from_decimal(Decimal::new(i64::from(n), 2))
    }

    proptest! {
        /// G1 at the ledger: whatever the order of requests, the money set aside for
        /// sidecars never exceeds what the account can pay, and each sidecar's lease covers
        /// what it committed. G7: a need that fits what is free of everyone's commitments
        /// is granted at once, or else other sidecars hold that much unused and are asked
        /// to give it back.
        #[test]
        fn leases_never_exceed_what_the_account_can_pay_and_needs_are_met(
            payable_cents in 0..5_000u32,
            ops in prop::collection::vec(op(), 1..80),
        ) {
            let payable = cents(payable_cents);
            let grace = CFG.hold_grace_ms;
            let mut rows: Vec<LeaseRow> = Vec::new();
            let mut committed = [Money::ZERO; 4];
            let mut now_ms = 0i64;
            let name = |i: usize| format!("s{i}");
            for (k, op) in ops.into_iter().enumerate() {
                let seq = u64::try_from(k).unwrap() + 1;
                let (i, r) = match op {
                    Op::Advance { ms } => {
                        now_ms += i64::from(ms);
                        // Holds are clamped to expire by their lease's expiry plus grace.
                        for l in &rows {
                            if now_ms >= l.expires_at_ms + grace {
                                let k: usize = l.sidecar_id[1..].parse().unwrap();
                                committed[k] = Money::ZERO;
                            }
                        }
                        continue;
                    }
                    Op::Spend { sidecar, amount } => {
                        // Admitting under its own lease only, while it is live.
                        let lease = rows.iter().find(|l| l.sidecar_id == name(sidecar));
                        let room = lease
                            .filter(|l| now_ms < l.expires_at_ms)
                            .map_or(Money::ZERO, |l| l.remaining - committed[sidecar]);
                        committed[sidecar] += cents(amount).min(room.non_negative());
                        continue;
                    }
                    Op::Need { sidecar, cost, want } => {
                        let c = committed[sidecar];
                        (sidecar, LeaseRequest {
                            account_id: "a".into(),
                            want: c + cents(cost) + cents(want),
                            need: c + cents(cost),
                            held: c,
                            release: false,
                            give_back: false,
                            seq,
                        })
                    }
                    Op::GiveBack { sidecar } | Op::Release { sidecar } => {
                        let c = committed[sidecar];
                        (sidecar, LeaseRequest {
                            account_id: "a".into(),
                            want: c,
                            need: c,
                            held: c,
                            release: matches!(op, Op::Release { .. }),
                            give_back: matches!(op, Op::GiveBack { .. }),
                            seq,
                        })
                    }
                };
                let d = decide(&r, &name(i), &rows, payable, now_ms, CFG);
                prop_assert!(d.row.remaining >= committed[i]);
                let free_of_commitments = payable - committed.iter().copied().sum::<Money>();
                let is_need = !r.release && !r.give_back;
                if is_need && r.need - r.held <= free_of_commitments && d.row.remaining < r.need {
                    let free = payable - occupied_by_others(&rows, &name(i), now_ms, grace);
                    prop_assert!(d.recalling >= r.need - free,
                        "need {} unmet, recalling only {}: {:?}, rows {:?}",
                        r.need, d.recalling, d, rows);
                }
                rows.retain(|l| l.sidecar_id != name(i)
                    && !d.others.iter().any(|o| o.sidecar_id == l.sidecar_id));
                rows.push(d.row);
                rows.extend(d.others);
                let set_aside: Money = rows.iter().map(|l| occupied(l, now_ms, grace)).sum();
                prop_assert!(set_aside <= payable, "set aside {set_aside} > payable {payable}: {rows:?}");
            }
        }
    }
}
