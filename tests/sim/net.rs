//! SimNet: the network between the sidecars and the ledger. It implements `LedgerApi`
//! around the real `Ledger` and, driven by its own seeded RNG, loses requests, loses
//! responses (after the ledger applied the request), delivers requests twice, keeps copies
//! of requests and delivers them again later (after newer ones), and cuts sidecars off for
//! a while. It also records, per account, the order of the ledger's events that decide
//! who pays a charge: each usage id's first application, and each grant's creation (a
//! grant pays for usage applied after it exists, if it is valid at the usage's time). The
//! model replays charges in that order.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use quotad::clock::{Clock, ManualClock};
use quotad::ledger::{Ledger, LedgerApi, LedgerError, SyncRequest, SyncResponse};

use crate::rng::Rng;

/// Requests kept for a late delivery; beyond this a random one is forgotten.
const STALE_KEPT_MAX: usize = 16;

/// Fault probabilities, in permille per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub request_loss: u32,
    pub response_loss: u32,
    pub duplicate: u32,
    /// Keep a copy of the request for a late delivery.
    pub stash: u32,
    /// After delivering a request, deliver a stashed older one too.
    pub stale_after: u32,
}

impl Faults {
    /// Each class is on for about half the seeds, so that a failure can be pinned on a
    /// class by comparing seeds. `disabled` (QUOTAD_SIM_DISABLE) turns classes off without
    /// moving any other draw.
    pub fn draw(rng: &mut Rng, disabled: &[String]) -> Faults {
        let mut class = |name: &str, maxes: [i64; 2]| {
            let on = rng.chance(500) && !disabled.iter().any(|d| d == name);
            maxes.map(|max| {
                let p = rng.range(10, max) as u32;
                if on { p } else { 0 }
            })
        };
        let [request_loss, _] = class("request_loss", [150, 10]);
        let [response_loss, _] = class("response_loss", [150, 10]);
        let [duplicate, _] = class("duplicate", [100, 10]);
        let [stash, stale_after] = class("stale", [150, 100]);
        Faults {
            request_loss,
            response_loss,
            duplicate,
            stash,
            stale_after,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub calls: u64,
    pub partition_drops: u64,
    pub request_lost: u64,
    pub response_lost: u64,
    pub duplicated: u64,
    pub stale_delivered: u64,
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Partitioned,
    RequestLost,
    Deliver,
    ResponseLost,
    Duplicate,
}

/// An event of the ledger's history of an account that burn-down depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerEvent {
    /// The usage id was applied (first time).
    Usage(String),
    /// The grant was created.
    Grant(String),
}

struct NetState {
    rng: Rng,
    faults: Faults,
    /// Sidecar id -> the partition lasts while the clock is below this.
    partitioned_until: HashMap<String, i64>,
    stale: Vec<SyncRequest>,
    applied: HashSet<String>,
    history: BTreeMap<String, Vec<LedgerEvent>>,
    stats: NetStats,
    /// What the faults did since the simulation last looked, for its step log.
    notes: Vec<String>,
    /// While a sidecar starts, one fate for all its calls (see `begin_start`).
    sticky: Option<Fate>,
}

/// One line about a request: who sent it, how much usage, which leases.
fn describe(req: &SyncRequest) -> String {
    // Sorted: the engine lists accounts in its maps' (random) iteration order.
    let mut leases: Vec<String> = req
        .leases
        .iter()
        .map(|l| {
            format!(
                "{} want {} held {}{}",
                l.account_id,
                l.want,
                l.held,
                if l.release { " RELEASE" } else { "" }
            )
        })
        .collect();
    leases.sort();
    format!(
        "{}: {} usage, leases [{}]",
        req.sidecar_id,
        req.usage.len(),
        leases.join("; ")
    )
}

impl NetState {
    fn draw_fate(&mut self) -> Fate {
        let f = self.faults;
        if self.rng.chance(f.request_loss) {
            Fate::RequestLost
        } else if self.rng.chance(f.response_loss) {
            Fate::ResponseLost
        } else if self.rng.chance(f.duplicate) {
            Fate::Duplicate
        } else {
            Fate::Deliver
        }
    }

    fn count(&mut self, fate: Fate) {
        match fate {
            Fate::Partitioned => self.stats.partition_drops += 1,
            Fate::RequestLost => self.stats.request_lost += 1,
            Fate::ResponseLost => self.stats.response_lost += 1,
            Fate::Duplicate => self.stats.duplicated += 1,
            Fate::Deliver => {}
        }
    }
}

pub struct SimNet {
    ledger: Arc<Ledger>,
    clock: Arc<ManualClock>,
    state: Mutex<NetState>,
}

impl SimNet {
    pub fn new(ledger: Arc<Ledger>, clock: Arc<ManualClock>, rng: Rng, faults: Faults) -> SimNet {
        SimNet {
            ledger,
            clock,
            state: Mutex::new(NetState {
                rng,
                faults,
                partitioned_until: HashMap::new(),
                stale: Vec::new(),
                applied: HashSet::new(),
                history: BTreeMap::new(),
                stats: NetStats::default(),
                notes: Vec::new(),
                sticky: None,
            }),
        }
    }

    fn st(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().expect("net state lock")
    }

    pub fn stats(&self) -> NetStats {
        self.st().stats
    }

    /// Cuts `sidecar_id` off until the clock reaches `until_ms` (extends, never shortens).
    pub fn partition(&self, sidecar_id: &str, until_ms: i64) {
        let mut s = self.st();
        let e = s
            .partitioned_until
            .entry(sidecar_id.to_owned())
            .or_insert(0);
        *e = (*e).max(until_ms);
    }

    /// A sidecar is about to start. `Engine::start` loads the accounts of recovered holds
    /// one call each, in the order of a hash map with a random seed; drawing a fate per
    /// call would make the run depend on that order. So every call until `end_start` gets
    /// one fate drawn here, nothing is kept for late delivery and no late one is delivered.
    pub fn begin_start(&self) {
        let mut s = self.st();
        let fate = s.draw_fate();
        s.sticky = Some(fate);
    }

    pub fn end_start(&self) {
        self.st().sticky = None;
    }

    /// Whether `sidecar_id` is cut off from the ledger at `now_ms`.
    pub fn is_partitioned(&self, sidecar_id: &str, now_ms: i64) -> bool {
        self.st()
            .partitioned_until
            .get(sidecar_id)
            .is_some_and(|&u| now_ms < u)
    }

    /// Calls that did not get through so far (partitioned, request or response lost): a
    /// change across an operation means the network failed it somewhere.
    pub fn failures(&self) -> u64 {
        let s = self.st().stats;
        s.partition_drops + s.request_lost + s.response_lost
    }

    /// Ends every partition and fault, and forgets the stashed requests (end of a run).
    pub fn heal(&self) {
        let mut s = self.st();
        s.partitioned_until.clear();
        s.faults = Faults::default();
        s.stale.clear();
        s.sticky = None;
    }

    /// What the network did since the last call.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut self.st().notes)
    }

    /// Records that the ledger created a grant (the simulation calls the ledger directly
    /// for admin operations, one step at a time, so this is in order with usage).
    pub fn note_grant(&self, account_id: &str, grant_id: &str) {
        self.st()
            .history
            .entry(account_id.to_owned())
            .or_default()
            .push(LedgerEvent::Grant(grant_id.to_owned()));
    }

    /// Per account, usage applications and grant creations in the ledger's order.
    pub fn history(&self) -> BTreeMap<String, Vec<LedgerEvent>> {
        self.st().history.clone()
    }

    /// Delivers one stashed request now, if any (its answer goes nowhere).
    pub async fn deliver_stale(&self) -> bool {
        let req = {
            let mut s = self.st();
            if s.stale.is_empty() {
                return false;
            }
            let n = s.stale.len();
            let i = s.rng.index(n);
            s.stats.stale_delivered += 1;
            let req = s.stale.swap_remove(i);
            let line = format!("  net: late delivery of {}", describe(&req));
            s.notes.push(line);
            req
        };
        let _ = self.deliver(req).await;
        true
    }

    /// Hands the request to the ledger; on success records which usage ids it applied
    /// first. Per account, the ledger applies a request's usage in the order given.
    async fn deliver(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        let fresh: Vec<(String, String)> = {
            let s = self.st();
            let mut seen = HashSet::new();
            req.usage
                .iter()
                .filter(|u| !s.applied.contains(&u.usage_id) && seen.insert(&u.usage_id))
                .map(|u| (u.account_id.clone(), u.usage_id.clone()))
                .collect()
        };
        let sidecar_id = req.sidecar_id.clone();
        match self.ledger.sync_as_ledger(req).await {
            Ok(resp) => {
                let mut s = self.st();
                for (account_id, usage_id) in fresh {
                    if s.applied.insert(usage_id.clone()) {
                        s.history
                            .entry(account_id)
                            .or_default()
                            .push(LedgerEvent::Usage(usage_id));
                    }
                }
                Ok(resp)
            }
            // Nothing here makes the ledger itself fail (one caller at a time, every
            // account exists): an error is a finding, not a network fault.
            Err(e) => panic!("the ledger failed a sync from {sidecar_id}: {e}"),
        }
    }

    fn decide(&self, req: &SyncRequest) -> (Fate, Option<SyncRequest>) {
        let now = self.clock.now_ms();
        let mut s = self.st();
        s.stats.calls += 1;
        let cut = s
            .partitioned_until
            .get(&req.sidecar_id)
            .is_some_and(|&u| now < u);
        if let Some(fate) = s.sticky {
            let fate = if cut { Fate::Partitioned } else { fate };
            s.count(fate);
            if fate != Fate::Deliver {
                let line = format!("  net: {fate:?} {}", describe(req));
                s.notes.push(line);
            }
            return (fate, None);
        }
        let f = s.faults;
        // Leases given back at a graceful stop are rare and matter most when late (the
        // sidecar is running again by then): keep them more often.
        let keep = if req.leases.iter().any(|l| l.release) {
            f.stash.max(500).min(f.stash * 10)
        } else {
            f.stash
        };
        if s.rng.chance(keep) {
            if s.stale.len() >= STALE_KEPT_MAX {
                let i = s.rng.index(STALE_KEPT_MAX);
                s.stale.remove(i);
            }
            s.stale.push(req.clone());
        }
        let fate = if cut {
            Fate::Partitioned
        } else {
            s.draw_fate()
        };
        s.count(fate);
        if fate != Fate::Deliver {
            let line = format!("  net: {fate:?} {}", describe(req));
            s.notes.push(line);
        }
        let delivered = matches!(fate, Fate::Deliver | Fate::ResponseLost | Fate::Duplicate);
        let stale = if delivered && !s.stale.is_empty() && s.rng.chance(f.stale_after) {
            let n = s.stale.len();
            let i = s.rng.index(n);
            s.stats.stale_delivered += 1;
            let old = s.stale.swap_remove(i);
            let line = format!("  net: late delivery of {}", describe(&old));
            s.notes.push(line);
            Some(old)
        } else {
            None
        };
        (fate, stale)
    }
}

#[async_trait]
impl LedgerApi for SimNet {
    async fn sync(&self, req: SyncRequest) -> Result<SyncResponse, LedgerError> {
        let (fate, stale) = self.decide(&req);
        let unavailable = |why: &str| Err(LedgerError::Unavailable(format!("simnet: {why}")));
        let out = match fate {
            Fate::Partitioned => return unavailable("partitioned"),
            Fate::RequestLost => return unavailable("request lost"),
            Fate::Deliver => self.deliver(req).await,
            Fate::ResponseLost => {
                let _ = self.deliver(req).await;
                unavailable("response lost")
            }
            Fate::Duplicate => {
                let _ = self.deliver(req.clone()).await;
                self.deliver(req).await
            }
        };
        // The old copy reaches the ledger after this newer request; its answer is lost.
        if let Some(old) = stale {
            let _ = self.deliver(old).await;
        }
        out
    }
}
