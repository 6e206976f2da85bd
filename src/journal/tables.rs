//! The state the journal's records add up to (open and recently settled reservations,
//! sessions, jobs' last report seqs, fired alerts, storage meters, sequence floors): what a
//! start recovers, what the writer keeps current, and what a compacted file holds.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::codec::{self, Record};
use super::entry::{Entry, HoldState, JournaledEvent, ReservationRow, SessionRow, SessionState};
use crate::billing::storage::StorageMeter;
use crate::ledger::api::UsageRecord;

/// What was in the journal when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    pub reservations: Vec<ReservationRow>,
    /// Unacknowledged usage (also in the outbox queue).
    pub outbox: Vec<UsageRecord>,
    /// The next usage sequence number to use: above every one ever written.
    pub next_seq: u64,
    pub sessions: Vec<SessionRow>,
    /// Fired alert keys by account.
    pub alerts: Vec<(String, String)>,
    /// Last report seq of recent jobs: (work id, seq, when).
    pub works: Vec<(String, u64, i64)>,
    /// Lease request sequence numbers used so far are below this.
    pub lease_seq_floor: u64,
    /// Storage meters by account.
    pub storage: Vec<(String, StorageMeter)>,
    /// Events not yet queued for webhook delivery, oldest first.
    pub events: Vec<JournaledEvent>,
}

/// Most journaled events kept waiting for the webhook outbox; beyond, the oldest are
/// forgotten (logged), so a ledger out of reach for long cannot grow the journal without
/// bound.
pub const DEFAULT_JOURNAL_EVENTS_MAX: usize = 100_000;

/// The state the journal's records add up to: what a start recovers and what a compacted
/// file holds.
#[derive(Default)]
pub(super) struct Tables {
    pub(super) reservations: HashMap<String, ReservationRow>,
    sessions: HashMap<String, SessionRow>,
    works: HashMap<String, (u64, i64)>,
    alerts: BTreeSet<(String, String)>,
    storage: HashMap<String, StorageMeter>,
    next_seq: u64,
    lease_seq_floor: u64,
    /// Events not yet queued for webhook delivery, by key, in journal order.
    events: VecDeque<(String, JournaledEvent)>,
    /// Unacknowledged usage by seq, kept only while the file is read at start; after that
    /// the journal's shared outbox queue is the one copy.
    pub(super) outbox: BTreeMap<u64, UsageRecord>,
}

impl Tables {
    pub(super) fn new() -> Tables {
        Tables {
            next_seq: 1,
            ..Tables::default()
        }
    }

    pub(super) fn from_recovered(r: Recovered) -> Tables {
        let mut t = Tables::new();
        t.next_seq = r.next_seq.max(1);
        t.lease_seq_floor = r.lease_seq_floor;
        for row in r.reservations {
            t.reservations.insert(row.reservation_id.clone(), row);
        }
        for s in r.sessions {
            t.sessions.insert(s.session_id.clone(), s);
        }
        for (w, seq, at) in r.works {
            t.works.insert(w, (seq, at));
        }
        t.alerts.extend(r.alerts);
        t.storage.extend(r.storage);
        t.events = r.events.into_iter().map(|e| (e.key(), e)).collect();
        for u in r.outbox {
            t.next_seq = t.next_seq.max(u.seq + 1);
            t.outbox.insert(u.seq, u);
        }
        t
    }

    fn note_usage(&mut self, u: &UsageRecord) {
        self.next_seq = self.next_seq.max(u.seq + 1);
    }

    /// Applies a record read back at start (usage goes to the outbox).
    pub(super) fn replay(&mut self, record: Record) {
        match record {
            Record::Entry(e) => {
                let mut usage = Vec::new();
                self.apply(e, &mut usage);
                for u in usage {
                    self.outbox.insert(u.seq, u);
                }
            }
            Record::NextSeq(n) => self.next_seq = self.next_seq.max(n),
            Record::Work {
                work_id,
                seq,
                at_ms,
            } => {
                self.works.insert(work_id, (seq, at_ms));
            }
            Record::Usage(u) => {
                self.note_usage(&u);
                self.outbox.insert(u.seq, u);
            }
        }
    }

    /// Applies a written entry; the usage it carries goes to `usage` (for the outbox).
    pub(super) fn apply(&mut self, e: Entry, usage_out: &mut Vec<UsageRecord>) {
        match e {
            Entry::Reservation(r) => {
                self.reservations.insert(r.reservation_id.clone(), r);
            }
            Entry::Commit(r, u) => {
                self.reservations.insert(r.reservation_id.clone(), r);
                self.note_usage(&u);
                usage_out.push(u);
            }
            Entry::Report {
                usage,
                work_id,
                seq,
                row,
            } => {
                if let Some(r) = row {
                    self.reservations.insert(r.reservation_id.clone(), r);
                }
                self.works.insert(work_id, (seq, usage.at_ms));
                self.note_usage(&usage);
                usage_out.push(usage);
            }
            Entry::Session(r, u) => {
                self.sessions.insert(r.session_id.clone(), r);
                if let Some(u) = u {
                    self.note_usage(&u);
                    usage_out.push(u);
                }
            }
            Entry::Storage {
                account_id,
                meter,
                usage,
            } => {
                self.storage.insert(account_id, meter);
                for u in usage {
                    self.note_usage(&u);
                    usage_out.push(u);
                }
            }
            Entry::LeaseSeqFloor(f) => {
                self.lease_seq_floor = f;
            }
            Entry::Alerts {
                account_id,
                set,
                unset,
                events,
            } => {
                for k in unset {
                    self.alerts.remove(&(account_id.clone(), k));
                }
                for k in set {
                    self.alerts.insert((account_id.clone(), k));
                }
                self.add_events(events);
            }
            Entry::EventsQueued(keys) => {
                let keys: BTreeSet<String> = keys.into_iter().collect();
                self.events.retain(|(k, _)| !keys.contains(k));
            }
            Entry::Trim(seqs) => {
                for s in seqs {
                    self.outbox.remove(&s);
                }
            }
            Entry::Prune { settled_before_ms } => {
                self.reservations.retain(|_, r| {
                    r.state == HoldState::Open || r.settled_at_ms >= settled_before_ms
                });
                self.sessions.retain(|_, s| {
                    s.state == SessionState::Running || s.stopped_at_ms >= settled_before_ms
                });
                self.works.retain(|_, (_, at)| *at >= settled_before_ms);
            }
        }
    }

    fn add_events(&mut self, events: Vec<JournaledEvent>) {
        self.events.extend(events.into_iter().map(|e| (e.key(), e)));
        let over = self.events.len().saturating_sub(DEFAULT_JOURNAL_EVENTS_MAX);
        if over > 0 {
            self.events.drain(..over);
            tracing::warn!(
                events = over,
                "oldest journaled events dropped before the webhook outbox took them"
            );
        }
    }

    /// What a start hands the engine; the outbox moves out (the shared queue takes over).
    pub(super) fn recovered(&mut self) -> Recovered {
        let outbox: Vec<UsageRecord> = std::mem::take(&mut self.outbox).into_values().collect();
        Recovered {
            reservations: self.reservations.values().cloned().collect(),
            outbox,
            next_seq: self.next_seq,
            sessions: self.sessions.values().cloned().collect(),
            alerts: self.alerts.iter().cloned().collect(),
            works: self
                .works
                .iter()
                .map(|(w, (s, at))| (w.clone(), *s, *at))
                .collect(),
            lease_seq_floor: self.lease_seq_floor,
            storage: self
                .storage
                .iter()
                .map(|(a, m)| (a.clone(), m.clone()))
                .collect(),
            events: self.events.iter().map(|(_, e)| e.clone()).collect(),
        }
    }

    /// The whole state as records, after the file header: a compacted journal. Fails only
    /// if a record would be too large to read back (see `codec::frame`).
    pub(super) fn encode(
        &self,
        outbox: &VecDeque<UsageRecord>,
        out: &mut Vec<u8>,
    ) -> Result<(), codec::TooLarge> {
        out.extend_from_slice(codec::MAGIC);
        codec::encode_next_seq(out, self.next_seq)?;
        codec::encode_entry(out, &Entry::LeaseSeqFloor(self.lease_seq_floor))?;
        for r in self.reservations.values() {
            codec::encode_reservation(out, r)?;
        }
        for s in self.sessions.values() {
            codec::encode_session(out, s)?;
        }
        for (w, (seq, at)) in &self.works {
            codec::encode_work(out, w, *seq, *at)?;
        }
        let mut by_account: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (a, k) in &self.alerts {
            by_account.entry(a).or_default().push(k.clone());
        }
        for (a, keys) in by_account {
            codec::encode_entry(
                out,
                &Entry::Alerts {
                    account_id: a.to_owned(),
                    set: keys,
                    unset: Vec::new(),
                    events: Vec::new(),
                },
            )?;
        }
        for chunk in self
            .events
            .iter()
            .map(|(_, e)| e.clone())
            .collect::<Vec<_>>()
            .chunks(256)
        {
            codec::encode_entry(
                out,
                &Entry::Alerts {
                    account_id: String::new(),
                    set: Vec::new(),
                    unset: Vec::new(),
                    events: chunk.to_vec(),
                },
            )?;
        }
        for (a, m) in &self.storage {
            codec::encode_storage(out, a, m)?;
        }
        for u in outbox {
            codec::encode_usage(out, u)?;
        }
        Ok(())
    }
}
