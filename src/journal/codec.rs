//! The byte layout of the journal file. Hand-written rather than derived so that the format
//! is explicit, checked field by field when read back, and costs nothing per record beyond
//! the bytes themselves.
//!
//! A file is `MAGIC` followed by records. A record is `len: u32 LE`, `crc: u32 LE` (CRC-32C
//! of the payload) and `len` payload bytes; the payload's first byte says what it holds.
//! Integers are little-endian and fixed-width, strings are a `u32` length and UTF-8 bytes,
//! amounts are rust_decimal's 16-byte exact form (no rounding, no text parsing on replay).

use rust_decimal::Decimal;

use super::entry::{Entry, HoldState, JournaledEvent, ReservationRow, SessionRow, SessionState};
use crate::billing::storage::StorageMeter;
use crate::billing::{Money, Resource};
use crate::ledger::api::UsageRecord;

/// The first bytes of every journal file; the digit is the format version.
pub const MAGIC: &[u8; 8] = b"QUOTADJ1";

/// Bytes before each payload: its length and its checksum.
pub const FRAME_BYTES: usize = 8;

/// Largest payload a record may have. Every real record is far smaller (ids are bounded
/// by request validation); a larger length field can only be damage.
pub const RECORD_MAX_BYTES: usize = 16 << 20;

const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

const TAG_RESERVATION: u8 = 1;
const TAG_COMMIT: u8 = 2;
const TAG_REPORT: u8 = 3;
const TAG_SESSION: u8 = 4;
const TAG_LEASE_SEQ_FLOOR: u8 = 5;
const TAG_ALERTS: u8 = 6;
const TAG_TRIM: u8 = 7;
const TAG_PRUNE: u8 = 8;
const TAG_NEXT_SEQ: u8 = 9;
const TAG_WORK: u8 = 10;
const TAG_USAGE: u8 = 11;
const TAG_STORAGE: u8 = 12;
/// Alerts with the events they make (TAG_ALERTS: none).
const TAG_ALERTS_EVENTS: u8 = 13;
const TAG_EVENTS_QUEUED: u8 = 14;

/// What one record holds: a journal entry as written by the engine, or one of the rows a
/// compacted file starts with.
#[derive(Debug)]
pub enum Record {
    Entry(Entry),
    /// The next usage sequence number (snapshot).
    NextSeq(u64),
    /// A job's last report seq (snapshot).
    Work {
        work_id: String,
        seq: u64,
        at_ms: i64,
    },
    /// Unacknowledged usage (snapshot).
    Usage(UsageRecord),
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record ends early (needs {needed} more bytes)")]
    Short { needed: usize },
    #[error("unknown record tag {0}")]
    Tag(u8),
    #[error("unknown {what} code {code}")]
    Code { what: &'static str, code: u8 },
    #[error("text is not UTF-8")]
    Utf8,
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
}

/// A record longer than `RECORD_MAX_BYTES`: a start would take it for damage, so it is
/// refused rather than written.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("a journal record of {0} bytes is over the maximum of {RECORD_MAX_BYTES}")]
pub struct TooLarge(pub usize);

/// Appends one framed record to `out`: the frame is written around whatever `body` puts.
/// A record over `RECORD_MAX_BYTES` leaves `out` as it was.
pub fn frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) -> Result<(), TooLarge> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_BYTES]);
    body(out);
    let payload = &out[start + FRAME_BYTES..];
    let n = payload.len();
    let len = match u32::try_from(n) {
        Ok(len) if n <= RECORD_MAX_BYTES => len,
        _ => {
            out.truncate(start);
            return Err(TooLarge(n));
        }
    };
    let crc = CRC.checksum(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME_BYTES].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Whether `payload` is what a frame with checksum `crc` was written around.
pub fn checksum_ok(payload: &[u8], crc: u32) -> bool {
    CRC.checksum(payload) == crc
}

pub fn encode_entry(out: &mut Vec<u8>, e: &Entry) -> Result<(), TooLarge> {
    frame(out, |b| match e {
        Entry::Reservation(r) => {
            b.push(TAG_RESERVATION);
            put_row(b, r);
        }
        Entry::Commit(r, u) => {
            b.push(TAG_COMMIT);
            put_row(b, r);
            put_usage(b, u);
        }
        Entry::Report {
            usage,
            work_id,
            seq,
            row,
        } => {
            b.push(TAG_REPORT);
            put_usage(b, usage);
            put_str(b, work_id);
            put_u64(b, *seq);
            put_optional(b, row.as_ref(), put_row);
        }
        Entry::Session(r, u) => {
            b.push(TAG_SESSION);
            put_session(b, r);
            put_optional(b, u.as_ref(), put_usage);
        }
        Entry::Storage {
            account_id,
            meter,
            usage,
        } => {
            b.push(TAG_STORAGE);
            put_str(b, account_id);
            put_meter(b, meter);
            put_len(b, usage.len());
            for u in usage {
                put_usage(b, u);
            }
        }
        Entry::LeaseSeqFloor(f) => {
            b.push(TAG_LEASE_SEQ_FLOOR);
            put_u64(b, *f);
        }
        Entry::Alerts {
            account_id,
            set,
            unset,
            events,
        } => {
            b.push(if events.is_empty() {
                TAG_ALERTS
            } else {
                TAG_ALERTS_EVENTS
            });
            put_str(b, account_id);
            put_strs(b, set);
            put_strs(b, unset);
            if !events.is_empty() {
                put_len(b, events.len());
                for e in events {
                    put_event(b, e);
                }
            }
        }
        Entry::EventsQueued(keys) => {
            b.push(TAG_EVENTS_QUEUED);
            put_strs(b, keys);
        }
        Entry::Trim(seqs) => {
            b.push(TAG_TRIM);
            put_len(b, seqs.len());
            for s in seqs {
                put_u64(b, *s);
            }
        }
        Entry::Prune { settled_before_ms } => {
            b.push(TAG_PRUNE);
            put_i64(b, *settled_before_ms);
        }
    })
}

pub fn encode_reservation(out: &mut Vec<u8>, r: &ReservationRow) -> Result<(), TooLarge> {
    frame(out, |b| {
        b.push(TAG_RESERVATION);
        put_row(b, r);
    })
}

pub fn encode_session(out: &mut Vec<u8>, r: &SessionRow) -> Result<(), TooLarge> {
    frame(out, |b| {
        b.push(TAG_SESSION);
        put_session(b, r);
        b.push(0);
    })
}

/// An account's storage meter alone (snapshot).
pub fn encode_storage(
    out: &mut Vec<u8>,
    account_id: &str,
    meter: &StorageMeter,
) -> Result<(), TooLarge> {
    frame(out, |b| {
        b.push(TAG_STORAGE);
        put_str(b, account_id);
        put_meter(b, meter);
        put_u32(b, 0);
    })
}

pub fn encode_next_seq(out: &mut Vec<u8>, next_seq: u64) -> Result<(), TooLarge> {
    frame(out, |b| {
        b.push(TAG_NEXT_SEQ);
        put_u64(b, next_seq);
    })
}

pub fn encode_work(out: &mut Vec<u8>, work_id: &str, seq: u64, at_ms: i64) -> Result<(), TooLarge> {
    frame(out, |b| {
        b.push(TAG_WORK);
        put_str(b, work_id);
        put_u64(b, seq);
        put_i64(b, at_ms);
    })
}

pub fn encode_usage(out: &mut Vec<u8>, u: &UsageRecord) -> Result<(), TooLarge> {
    frame(out, |b| {
        b.push(TAG_USAGE);
        put_usage(b, u);
    })
}

/// Reads one record's payload (without its frame).
pub fn decode(payload: &[u8]) -> Result<Record, DecodeError> {
    let mut d = Dec { buf: payload };
    let record = match d.u8()? {
        TAG_RESERVATION => Record::Entry(Entry::Reservation(d.row()?)),
        TAG_COMMIT => {
            let r = d.row()?;
            Record::Entry(Entry::Commit(r, d.usage()?))
        }
        TAG_REPORT => {
            let usage = d.usage()?;
            let work_id = d.string()?;
            let seq = d.u64()?;
            let row = d.optional(Dec::row)?;
            Record::Entry(Entry::Report {
                usage,
                work_id,
                seq,
                row,
            })
        }
        TAG_SESSION => {
            let r = d.session()?;
            let u = d.optional(Dec::usage)?;
            Record::Entry(Entry::Session(r, u))
        }
        TAG_STORAGE => {
            let account_id = d.string()?;
            let meter = d.meter()?;
            // A usage record takes well over 8 bytes.
            let usage = d.list(8, Dec::usage)?;
            Record::Entry(Entry::Storage {
                account_id,
                meter,
                usage,
            })
        }
        TAG_LEASE_SEQ_FLOOR => Record::Entry(Entry::LeaseSeqFloor(d.u64()?)),
        TAG_ALERTS => {
            let account_id = d.string()?;
            let set = d.strings()?;
            let unset = d.strings()?;
            Record::Entry(Entry::Alerts {
                account_id,
                set,
                unset,
                events: Vec::new(),
            })
        }
        TAG_ALERTS_EVENTS => {
            let account_id = d.string()?;
            let set = d.strings()?;
            let unset = d.strings()?;
            // Five strings (4 bytes each at least) and a time.
            let events = d.list(28, Dec::event)?;
            Record::Entry(Entry::Alerts {
                account_id,
                set,
                unset,
                events,
            })
        }
        TAG_EVENTS_QUEUED => Record::Entry(Entry::EventsQueued(d.strings()?)),
        TAG_TRIM => Record::Entry(Entry::Trim(d.list(8, Dec::u64)?)),
        TAG_PRUNE => Record::Entry(Entry::Prune {
            settled_before_ms: d.i64()?,
        }),
        TAG_NEXT_SEQ => Record::NextSeq(d.u64()?),
        TAG_WORK => {
            let work_id = d.string()?;
            let seq = d.u64()?;
            Record::Work {
                work_id,
                seq,
                at_ms: d.i64()?,
            }
        }
        TAG_USAGE => Record::Usage(d.usage()?),
        t => return Err(DecodeError::Tag(t)),
    };
    if !d.buf.is_empty() {
        return Err(DecodeError::Trailing(d.buf.len()));
    }
    Ok(record)
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_i64(b: &mut Vec<u8>, v: i64) {
    b.extend_from_slice(&v.to_le_bytes());
}

/// A length or count. One over `u32::MAX` makes its record longer than `RECORD_MAX_BYTES`,
/// which `frame` refuses: the saturated value is never written.
fn put_len(b: &mut Vec<u8>, n: usize) {
    put_u32(b, u32::try_from(n).unwrap_or(u32::MAX));
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_len(b, s.len());
    b.extend_from_slice(s.as_bytes());
}

/// A flag, then the item if there is one.
fn put_optional<T>(b: &mut Vec<u8>, item: Option<&T>, put: impl FnOnce(&mut Vec<u8>, &T)) {
    match item {
        Some(x) => {
            b.push(1);
            put(b, x);
        }
        None => b.push(0),
    }
}

fn put_strs(b: &mut Vec<u8>, v: &[String]) {
    put_len(b, v.len());
    for s in v {
        put_str(b, s);
    }
}

fn put_event(b: &mut Vec<u8>, e: &JournaledEvent) {
    for s in [
        &e.account_id,
        &e.kind,
        &e.subject_id,
        &e.threshold,
        &e.message,
    ] {
        put_str(b, s);
    }
    put_i64(b, e.at_ms);
}

fn put_money(b: &mut Vec<u8>, m: Money) {
    b.extend_from_slice(&m.as_decimal().serialize());
}

fn resource_code(r: Resource) -> u8 {
    r as u8
}

fn put_row(b: &mut Vec<u8>, r: &ReservationRow) {
    put_str(b, &r.reservation_id);
    put_str(b, &r.account_id);
    b.push(resource_code(r.resource));
    put_str(b, &r.sku);
    put_u64(b, r.quantity);
    put_money(b, r.held);
    put_i64(b, r.expires_at_ms);
    b.push(r.state.code());
    put_money(b, r.charged);
    put_u64(b, r.charged_quantity);
    put_i64(b, r.settled_at_ms);
    put_u64(b, r.streamed_quantity);
    put_money(b, r.streamed_cost);
}

fn put_usage(b: &mut Vec<u8>, u: &UsageRecord) {
    put_u64(b, u.seq);
    put_str(b, &u.usage_id);
    put_str(b, &u.account_id);
    b.push(resource_code(u.resource));
    put_str(b, &u.sku);
    put_u64(b, u.quantity);
    put_money(b, u.cost);
    put_i64(b, u.at_ms);
}

fn put_meter(b: &mut Vec<u8>, m: &StorageMeter) {
    put_u64(b, m.bytes_stored);
    put_i64(b, m.level_at_ms);
    put_i64(b, m.hour_start_ms);
    b.extend_from_slice(&m.excess_byte_ms.to_le_bytes());
    b.extend_from_slice(&m.stored_byte_ms.to_le_bytes());
}

fn put_session(b: &mut Vec<u8>, r: &SessionRow) {
    put_str(b, &r.session_id);
    put_str(b, &r.account_id);
    put_str(b, &r.sku);
    put_i64(b, r.started_at_ms);
    b.push(u8::from(r.auto_shutdown));
    put_i64(b, r.idle_timeout_ms);
    put_i64(b, r.last_busy_at_ms);
    put_i64(b, r.billed_until_ms);
    put_u32(b, r.hours_settled);
    put_money(b, r.held);
    put_money(b, r.charged);
    b.push(r.state.code());
    put_i64(b, r.stopped_at_ms);
}

struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Short {
                needed: n - self.buf.len(),
            });
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        self.need(n)?;
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn flag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            code => Err(DecodeError::Code { what: "flag", code }),
        }
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn u128(&mut self) -> Result<u128, DecodeError> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    fn meter(&mut self) -> Result<StorageMeter, DecodeError> {
        Ok(StorageMeter {
            bytes_stored: self.u64()?,
            level_at_ms: self.i64()?,
            hour_start_ms: self.i64()?,
            excess_byte_ms: self.u128()?,
            stored_byte_ms: self.u128()?,
        })
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Utf8)
    }

    fn event(&mut self) -> Result<JournaledEvent, DecodeError> {
        Ok(JournaledEvent {
            account_id: self.string()?,
            kind: self.string()?,
            subject_id: self.string()?,
            threshold: self.string()?,
            message: self.string()?,
            at_ms: self.i64()?,
        })
    }

    fn strings(&mut self) -> Result<Vec<String>, DecodeError> {
        // Each string takes at least its 4-byte length.
        self.list(4, Dec::string)
    }

    /// A count, then as many items of at least `min_bytes` each: a count the payload
    /// cannot hold is damage, and must not size an allocation.
    fn list<T>(
        &mut self,
        min_bytes: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let n = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        self.need(n.saturating_mul(min_bytes))?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }

    /// A flag, then the item if it is set.
    fn optional<T>(
        &mut self,
        item: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        if self.flag()? {
            item(self).map(Some)
        } else {
            Ok(None)
        }
    }

    fn money(&mut self) -> Result<Money, DecodeError> {
        Ok(Money::from_decimal(Decimal::deserialize(self.array()?)))
    }

    fn resource(&mut self) -> Result<Resource, DecodeError> {
        let code = self.u8()?;
        Resource::ALL
            .get(usize::from(code))
            .copied()
            .ok_or(DecodeError::Code {
                what: "resource",
                code,
            })
    }

    fn row(&mut self) -> Result<ReservationRow, DecodeError> {
        Ok(ReservationRow {
            reservation_id: self.string()?,
            account_id: self.string()?,
            resource: self.resource()?,
            sku: self.string()?,
            quantity: self.u64()?,
            held: self.money()?,
            expires_at_ms: self.i64()?,
            state: {
                let code = self.u8()?;
                HoldState::from_code(i64::from(code)).ok_or(DecodeError::Code {
                    what: "hold state",
                    code,
                })?
            },
            charged: self.money()?,
            charged_quantity: self.u64()?,
            settled_at_ms: self.i64()?,
            streamed_quantity: self.u64()?,
            streamed_cost: self.money()?,
        })
    }

    fn usage(&mut self) -> Result<UsageRecord, DecodeError> {
        Ok(UsageRecord {
            seq: self.u64()?,
            usage_id: self.string()?,
            account_id: self.string()?,
            resource: self.resource()?,
            sku: self.string()?,
            quantity: self.u64()?,
            cost: self.money()?,
            at_ms: self.i64()?,
        })
    }

    fn session(&mut self) -> Result<SessionRow, DecodeError> {
        Ok(SessionRow {
            session_id: self.string()?,
            account_id: self.string()?,
            sku: self.string()?,
            started_at_ms: self.i64()?,
            auto_shutdown: self.flag()?,
            idle_timeout_ms: self.i64()?,
            last_busy_at_ms: self.i64()?,
            billed_until_ms: self.i64()?,
            hours_settled: self.u32()?,
            held: self.money()?,
            charged: self.money()?,
            state: {
                let code = self.u8()?;
                SessionState::from_code(i64::from(code)).ok_or(DecodeError::Code {
                    what: "session state",
                    code,
                })?
            },
            stopped_at_ms: self.i64()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn money(units: i64, scale: u32) -> Money {
        Money::from_decimal(Decimal::new(units, scale))
    }

    #[test]
    fn a_record_too_large_to_read_back_is_refused_and_leaves_nothing() {
        let mut out = b"before".to_vec();
        let seqs: Vec<u64> = (0..).take(RECORD_MAX_BYTES / 8 + 1).collect();
        let refused = encode_entry(&mut out, &Entry::Trim(seqs));
        assert!(
            matches!(refused, Err(TooLarge(n)) if n > RECORD_MAX_BYTES),
            "{refused:?}"
        );
        assert_eq!(out, b"before");
        // The largest record that fits is written and reads back.
        let seqs: Vec<u64> = (0..).take((RECORD_MAX_BYTES - 5) / 8).collect();
        encode_entry(&mut out, &Entry::Trim(seqs.clone())).unwrap();
        match decode(&out[6 + FRAME_BYTES..]) {
            Ok(Record::Entry(Entry::Trim(got))) => assert_eq!(got, seqs),
            other => panic!("{other:?}"),
        }
    }

    prop_compose! {
        fn any_row()(
            id in "[a-z0-9/-]{0,24}",
            account in "\\PC{0,12}",
            res in 0usize..6,
            qty in any::<u64>(),
            held in any::<i64>(),
            scale in 0u32..=8,
            exp in any::<i64>(),
            state in 0i64..4,
            streamed in any::<u64>(),
        ) -> ReservationRow {
            ReservationRow {
                reservation_id: id,
                account_id: account,
                resource: Resource::ALL[res],
                sku: "gpu.shared.a10".into(),
                quantity: qty,
                held: money(held, scale),
                expires_at_ms: exp,
                state: HoldState::from_code(state).unwrap(),
                charged: money(held / 3, scale),
                charged_quantity: qty / 2,
                settled_at_ms: exp / 2,
                streamed_quantity: streamed,
                streamed_cost: money(-held, scale),
            }
        }
    }

    prop_compose! {
        fn any_usage()(
            seq in any::<u64>(),
            id in "\\PC{0,30}",
            res in 0usize..6,
            qty in any::<u64>(),
            cost in any::<i64>(),
            scale in 0u32..=8,
            at in any::<i64>(),
        ) -> UsageRecord {
            UsageRecord {
                seq,
                usage_id: id,
                account_id: "acct".into(),
                resource: Resource::ALL[res],
                sku: "sku".into(),
                quantity: qty,
                cost: money(cost, scale),
                at_ms: at,
            }
        }
    }

    fn payload(framed: &[u8]) -> &[u8] {
        &framed[FRAME_BYTES..]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// What is written is what is read back, field for field, amounts exactly.
        #[test]
        fn entries_round_trip(row in any_row(), u in any_usage(), seq in any::<u64>(),
                              with_row in any::<bool>()) {
            let entries = [
                Entry::Reservation(row.clone()),
                Entry::Commit(row.clone(), u.clone()),
                Entry::Report {
                    usage: u.clone(),
                    work_id: row.reservation_id.clone(),
                    seq,
                    row: with_row.then(|| row.clone()),
                },
            ];
            for e in &entries {
                let mut out = Vec::new();
                encode_entry(&mut out, e).unwrap();
                let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
                prop_assert_eq!(len, out.len() - FRAME_BYTES);
                let crc = u32::from_le_bytes(out[4..8].try_into().unwrap());
                prop_assert!(checksum_ok(payload(&out), crc));
                match (decode(payload(&out)).unwrap(), e) {
                    (Record::Entry(Entry::Reservation(a)), Entry::Reservation(b)) => {
                        prop_assert_eq!(&a, b)
                    }
                    (Record::Entry(Entry::Commit(a, ua)), Entry::Commit(b, ub)) => {
                        prop_assert_eq!(&a, b);
                        prop_assert_eq!(&ua, ub);
                    }
                    (
                        Record::Entry(Entry::Report { usage, work_id, seq: s, row: r }),
                        Entry::Report { usage: u2, work_id: w2, seq: s2, row: r2 },
                    ) => {
                        prop_assert_eq!(&usage, u2);
                        prop_assert_eq!(&work_id, w2);
                        prop_assert_eq!(s, *s2);
                        prop_assert_eq!(&r, r2);
                    }
                    (got, want) => prop_assert!(false, "{got:?} for {want:?}"),
                }
            }
        }

        /// Any bytes at all decode to a record or an error, never a panic or a huge
        /// allocation.
        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        /// A record with any byte flipped is either refused by its checksum or (for the
        /// length) not a whole record any more.
        #[test]
        fn a_flipped_byte_is_caught(u in any_usage(), at in any::<prop::sample::Index>(),
                                    bit in 0u8..8) {
            let mut out = Vec::new();
            encode_usage(&mut out, &u).unwrap();
            let i = at.index(out.len());
            out[i] ^= 1 << bit;
            let len = u32::from_le_bytes(out[..4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(out[4..8].try_into().unwrap());
            let whole = len == out.len() - FRAME_BYTES;
            prop_assert!(!whole || !checksum_ok(payload(&out), crc));
        }
    }

    #[test]
    fn a_count_larger_than_the_payload_is_refused_without_allocating() {
        let mut b = vec![TAG_TRIM];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&b), Err(DecodeError::Short { .. })));
        let mut b = vec![TAG_ALERTS];
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&b), Err(DecodeError::Short { .. })));
    }
}
