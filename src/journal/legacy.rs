//! Reading a journal written by an earlier quotad, which kept it in a SQLite file
//! (`journal.db`). On the first start of this version the file is read once, its state
//! written to the new journal, and the old file renamed, so an upgrade loses no
//! acknowledged usage and needs no manual step.

use std::path::Path;
use std::str::FromStr;

use rusqlite::{Connection, OptionalExtension};
use rust_decimal::Decimal;

use super::entry::{HoldState, ReservationRow, SessionRow, SessionState};
use super::error::{JournalError, open_err};
use super::tables::Recovered;
use crate::billing::{Money, Resource};
use crate::ledger::api::UsageRecord;

/// Reads everything the SQLite journal at `db` holds. Tables or columns added by later
/// versions of that format are created empty first, so any version of it can be read.
pub(super) fn read(db: &Path) -> Result<Recovered, JournalError> {
    let conn = Connection::open(db).map_err(open_err)?;
    conn.execute_batch(SCHEMA).map_err(open_err)?;
    upgrade(&conn)?;
    read_all(&conn)
}

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS reservations (
    reservation_id   TEXT PRIMARY KEY,
    account_id       TEXT NOT NULL,
    resource         TEXT NOT NULL,
    sku              TEXT NOT NULL,
    quantity         INTEGER NOT NULL,
    held             TEXT NOT NULL,
    expires_at_ms    INTEGER NOT NULL,
    state            INTEGER NOT NULL,
    charged          TEXT NOT NULL,
    charged_quantity INTEGER NOT NULL,
    settled_at_ms    INTEGER NOT NULL,
    streamed_quantity INTEGER NOT NULL DEFAULT 0,
    streamed_cost    TEXT NOT NULL DEFAULT '0'
);
CREATE INDEX IF NOT EXISTS reservations_settled ON reservations(state, settled_at_ms);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY,
    usage_id   TEXT NOT NULL,
    account_id TEXT NOT NULL,
    resource   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    quantity   INTEGER NOT NULL,
    cost       TEXT NOT NULL,
    at_ms      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id      TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    sku             TEXT NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    auto_shutdown   INTEGER NOT NULL,
    idle_timeout_ms INTEGER NOT NULL,
    last_busy_at_ms INTEGER NOT NULL,
    billed_until_ms INTEGER NOT NULL,
    hours_settled   INTEGER NOT NULL,
    held            TEXT NOT NULL,
    charged         TEXT NOT NULL,
    state           INTEGER NOT NULL,
    stopped_at_ms   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS works (
    work_id  TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    account_id TEXT NOT NULL,
    key        TEXT NOT NULL,
    PRIMARY KEY (account_id, key)
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#;

fn money(s: &str) -> Result<Money, JournalError> {
    Decimal::from_str(s)
        .map(Money::from_decimal)
        .map_err(|_| open_err(format!("corrupt amount {s:?}")))
}

fn resource(s: &str) -> Result<Resource, JournalError> {
    Resource::from_name(s).ok_or_else(|| open_err(format!("corrupt resource {s:?}")))
}
/// Brings a journal written by an earlier quotad up to this schema (columns added since).
fn upgrade(conn: &Connection) -> Result<(), JournalError> {
    let has_streamed: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('reservations') WHERE name = 'streamed_quantity'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(open_err)?
        > 0;
    if !has_streamed {
        conn.execute_batch(
            "ALTER TABLE reservations ADD COLUMN streamed_quantity INTEGER NOT NULL DEFAULT 0; \
             ALTER TABLE reservations ADD COLUMN streamed_cost TEXT NOT NULL DEFAULT '0';",
        )
        .map_err(open_err)?;
    }
    Ok(())
}

fn read_all(conn: &Connection) -> Result<Recovered, JournalError> {
    let outbox = read_outbox(conn)?;
    let stored_next = meta(conn, "next_seq")?.unwrap_or(1).max(1);
    let next_seq = outbox
        .last()
        .map(|u| u.seq + 1)
        .unwrap_or(1)
        .max(stored_next);
    let works: Vec<(String, i64, i64)> = rows(conn, "SELECT work_id, last_seq, at_ms FROM works")?;
    Ok(Recovered {
        reservations: read_reservations(conn)?,
        outbox,
        next_seq,
        sessions: read_sessions(conn)?,
        alerts: rows(
            conn,
            "SELECT account_id, key FROM alerts ORDER BY account_id",
        )?,
        works: works
            .into_iter()
            .map(|(w, s, at)| (w, unsigned(s), at))
            .collect(),
        lease_seq_floor: meta(conn, "lease_seq_floor")?.unwrap_or(0),
        // Storage meters and journaled events came after the SQLite journal.
        storage: Vec::new(),
        events: Vec::new(),
    })
}

/// Every row `sql` selects, as a tuple of its columns.
fn rows<T>(conn: &Connection, sql: &str) -> Result<Vec<T>, JournalError>
where
    T: for<'r> TryFrom<&'r rusqlite::Row<'r>, Error = rusqlite::Error>,
{
    let mut stmt = conn.prepare(sql).map_err(open_err)?;
    stmt.query_map([], |r| T::try_from(r))
        .map_err(open_err)?
        .collect::<Result<_, _>>()
        .map_err(open_err)
}

/// A number kept in the `meta` table (never negative when written).
fn meta(conn: &Connection, key: &str) -> Result<Option<u64>, JournalError> {
    let value: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(open_err)?;
    Ok(value.map(unsigned))
}

/// A stored count or sequence number: SQLite keeps them signed, and a negative one was
/// never written (read as 0, as before).
fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn read_reservations(conn: &Connection) -> Result<Vec<ReservationRow>, JournalError> {
    type Raw = (
        String,
        String,
        String,
        String,
        i64,
        String,
        i64,
        i64,
        String,
        i64,
        i64,
        i64,
        String,
    );
    let raw: Vec<Raw> = rows(
        conn,
        "SELECT reservation_id, account_id, resource, sku, quantity, held, expires_at_ms, \
         state, charged, charged_quantity, settled_at_ms, streamed_quantity, streamed_cost \
         FROM reservations",
    )?;
    let mut out = Vec::with_capacity(raw.len());
    for (id, account, res, sku, qty, held, exp, state, charged, cq, settled, sq, sc) in raw {
        out.push(ReservationRow {
            resource: resource(&res)?,
            state: HoldState::from_code(state)
                .ok_or_else(|| open_err(format!("corrupt hold state {state}")))?,
            held: money(&held)?,
            charged: money(&charged)?,
            reservation_id: id,
            account_id: account,
            sku,
            quantity: unsigned(qty),
            expires_at_ms: exp,
            charged_quantity: unsigned(cq),
            settled_at_ms: settled,
            streamed_quantity: unsigned(sq),
            streamed_cost: money(&sc)?,
        });
    }
    Ok(out)
}

fn read_outbox(conn: &Connection) -> Result<Vec<UsageRecord>, JournalError> {
    type Raw = (i64, String, String, String, String, i64, String, i64);
    let raw: Vec<Raw> = rows(
        conn,
        "SELECT seq, usage_id, account_id, resource, sku, quantity, cost, at_ms FROM outbox \
         ORDER BY seq",
    )?;
    let mut out = Vec::with_capacity(raw.len());
    for (seq, usage_id, account_id, res, sku, quantity, cost, at_ms) in raw {
        out.push(UsageRecord {
            seq: unsigned(seq),
            usage_id,
            account_id,
            resource: resource(&res)?,
            sku,
            quantity: unsigned(quantity),
            cost: money(&cost)?,
            at_ms,
        });
    }
    Ok(out)
}

fn read_sessions(conn: &Connection) -> Result<Vec<SessionRow>, JournalError> {
    type Raw = (
        String,
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        String,
        String,
        i64,
        i64,
    );
    let raw: Vec<Raw> = rows(
        conn,
        "SELECT session_id, account_id, sku, started_at_ms, auto_shutdown, idle_timeout_ms, \
         last_busy_at_ms, billed_until_ms, hours_settled, held, charged, state, \
         stopped_at_ms FROM sessions",
    )?;
    let mut out = Vec::with_capacity(raw.len());
    for (
        id,
        account,
        sku,
        started,
        auto,
        idle,
        busy,
        billed,
        hours,
        held,
        charged,
        state,
        stopped,
    ) in raw
    {
        out.push(SessionRow {
            session_id: id,
            account_id: account,
            sku,
            started_at_ms: started,
            auto_shutdown: auto != 0,
            idle_timeout_ms: idle,
            last_busy_at_ms: busy,
            billed_until_ms: billed,
            hours_settled: u32::try_from(hours).unwrap_or(0),
            held: money(&held)?,
            charged: money(&charged)?,
            state: SessionState::from_code(state)
                .ok_or_else(|| open_err(format!("corrupt session state {state}")))?,
            stopped_at_ms: stopped,
        });
    }
    Ok(out)
}
