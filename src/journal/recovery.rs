//! Reading the journal back at start: every intact record is replayed into the tables; a
//! torn last write (a crash, or zeros a power loss left) is cut off; damage with intact
//! records after it stops the start, since it may hide acknowledged usage. A SQLite
//! journal of an earlier version is carried over once, first.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::error::{JournalError, open_err};
use super::tables::Tables;
use super::writer::{sync_dir, write_atomically};
use super::{codec, legacy};
use crate::ledger::api::UsageRecord;

/// Reads the journal at `path` (creating it if missing): its state, the file open for
/// appending, and the file's length. A torn last record is cut off; damage before intact
/// records is an error.
pub(super) fn load(path: &Path) -> Result<(File, Tables, u64), JournalError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| open_err(format!("{}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| open_err(format!("{}: {e}", path.display())))?;
    let mut tables = Tables::new();
    let header = codec::MAGIC.len();
    let good_len = if bytes.len() < header && codec::MAGIC.starts_with(&bytes) {
        // New, or its creation was cut short before the header was whole.
        let mut fresh = Vec::with_capacity(header);
        fresh.extend_from_slice(codec::MAGIC);
        file.set_len(0).map_err(open_err)?;
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        file.write_all(&fresh).map_err(open_err)?;
        file.sync_all().map_err(open_err)?;
        sync_dir(path).map_err(open_err)?;
        header as u64
    } else if !bytes.starts_with(codec::MAGIC) {
        return Err(open_err(format!(
            "{} is not a quotad journal (it does not start with {:?})",
            path.display(),
            String::from_utf8_lossy(codec::MAGIC)
        )));
    } else {
        let end = replay(path, &bytes, &mut tables)?;
        if end < bytes.len() {
            if bytes[end..].iter().all(|b| *b == 0) {
                // Space written ahead and not used before a kill: the records end here.
                tracing::debug!(offset = end, "journal ends before its preallocated space");
            } else {
                tracing::warn!(
                    path = %path.display(),
                    offset = end,
                    dropped_bytes = bytes.len() - end,
                    "journal ends in a torn record (a write cut short by a crash, never \
                     acknowledged); cutting it off"
                );
            }
            file.set_len(end as u64).map_err(open_err)?;
            file.sync_all().map_err(open_err)?;
        }
        end as u64
    };
    drop(bytes);
    file.seek(SeekFrom::Start(good_len)).map_err(open_err)?;
    Ok((file, tables, good_len))
}

/// Applies every intact record of `bytes` (a whole file) to `tables`; returns where the
/// intact records end.
fn replay(path: &Path, bytes: &[u8], tables: &mut Tables) -> Result<usize, JournalError> {
    let mut pos = codec::MAGIC.len();
    while pos < bytes.len() {
        let bad = match next_record(&bytes[pos..]) {
            Ok((payload, len)) => match codec::decode(payload) {
                Ok(record) => {
                    tables.replay(record);
                    pos += len;
                    continue;
                }
                Err(e) => (e.to_string(), pos + len),
            },
            Err(Damage { reason, end }) => (reason, end.map_or(bytes.len(), |e| pos + e)),
        };
        let (reason, record_end) = bad;
        // A crash can only cut the last write short, and a power loss may leave zeros
        // after it: either way nothing follows the damage but zeros.
        let rest = bytes.get(record_end..).unwrap_or(&[]);
        if rest.iter().all(|b| *b == 0) {
            return Ok(pos);
        }
        return Err(JournalError::Corrupt {
            path: path.display().to_string(),
            offset: pos as u64,
            reason,
        });
    }
    Ok(pos)
}

struct Damage {
    reason: String,
    /// Where the damaged record ends, relative to its start, if its length is believable.
    end: Option<usize>,
}

/// The payload of the record at the start of `b` and the record's whole length.
fn next_record(b: &[u8]) -> Result<(&[u8], usize), Damage> {
    if b.len() < codec::FRAME_BYTES {
        return Err(Damage {
            reason: format!("{} bytes, too few for a record frame", b.len()),
            end: None,
        });
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len == 0 || len > codec::RECORD_MAX_BYTES {
        return Err(Damage {
            reason: format!("impossible record length {len}"),
            end: None,
        });
    }
    let end = codec::FRAME_BYTES + len;
    if b.len() < end {
        return Err(Damage {
            reason: format!("record of {len} bytes cut short at {}", b.len()),
            end: None,
        });
    }
    let payload = &b[codec::FRAME_BYTES..end];
    if !codec::checksum_ok(payload, crc) {
        return Err(Damage {
            reason: "checksum mismatch".into(),
            end: Some(end),
        });
    }
    Ok((payload, end))
}

/// Writes the state of the SQLite journal `legacy` as a new journal at `path`, then renames
/// the old file so it is not read again (and is kept for inspection).
pub(super) fn carry_over(legacy: &Path, path: &Path) -> Result<(), JournalError> {
    let recovered = legacy::read(legacy)?;
    let tables = Tables::from_recovered(recovered);
    let outbox: VecDeque<UsageRecord> = tables.outbox.values().cloned().collect();
    let mut bytes = Vec::new();
    tables.encode(&outbox, &mut bytes).map_err(open_err)?;
    write_atomically(path, &bytes).map_err(open_err)?;
    let kept = legacy.with_extension("db.carried-over");
    std::fs::rename(legacy, &kept).map_err(open_err)?;
    for ext in ["db-wal", "db-shm"] {
        let _ = std::fs::remove_file(legacy.with_extension(ext));
    }
    tracing::info!(
        from = %legacy.display(),
        to = %path.display(),
        kept = %kept.display(),
        reservations = tables.reservations.len(),
        unacknowledged_usage = outbox.len(),
        "carried the SQLite journal of an earlier quotad over to the append-only journal"
    );
    Ok(())
}
