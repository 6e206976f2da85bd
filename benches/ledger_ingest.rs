//! Ledger ingest on PostgreSQL, for the target of DESIGN.md section 5 (">= 100k usage
//! records/s with set-based batches"): how many usage records per second the ledger
//! applies, against what the database itself does with the same records in the same
//! batches.
//!
//! Each phase applies the same number of fresh usage records, in the same batches, spread
//! the same way over the same number of accounts, one batch at a time (as one sidecar's
//! sync loop sends them):
//!
//! - `ledger_sync`: the real Sync path, `LedgerApi::sync` (exactly-once check, burn-down,
//!   set-based writes of usage, deductions, balances, cursors and leases in one
//!   transaction, then a snapshot of every account in the batch for the sidecar).
//! - `ledger_apply_usage`: `Ledger::apply_usage` alone, the same without the snapshots.
//! - `raw_update`: the floor the design's number is read against: one hand-written
//!   set-based UPDATE per batch, the batch's costs summed per account
//!   (`UPDATE ... FROM (SELECT id, SUM(cost) FROM UNNEST(...) GROUP BY id)`), on a scratch
//!   table of balances. It records no usage row, so it is not exactly-once.
//! - `raw_insert_update`: the smallest exactly-once form in SQL: one statement per batch
//!   that inserts the usage rows (`ON CONFLICT DO NOTHING`, a table shaped as the ledger's
//!   `usage`, with its index) and debits the balances by what was inserted.
//!
//! Everything runs in a scratch database created for the run (and dropped after); the raw
//! tables live in its own schema `raw`. The raw phases check the balances afterwards, so a
//! statement that matched nothing cannot pass for a fast one.
//!
//! `DATABASE_URL=postgres://... cargo bench --bench ledger_ingest` (env: INGEST_RECORDS,
//! INGEST_BATCH, INGEST_ACCOUNTS). Without DATABASE_URL, or if PostgreSQL cannot be reached
//! or a scratch database cannot be created, it says so and measures nothing. Results are
//! printed and written as JSON to `$CARGO_TARGET_DIR/bench-results/ledger_ingest.json`
//! (default `target/`).

// Benches fail loudly: unwrapping is how they stop on the unexpected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation
)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use quotad::billing::{Catalog, Money, Resource};
use quotad::clock::SystemClock;
use quotad::ledger::postgres::PgStore;
use quotad::ledger::{LeaseConfig, Ledger, LedgerApi, SyncRequest, UsageRecord};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};

/// The design target (DESIGN.md section 5).
const TARGET_RECORDS_PER_S: f64 = 100_000.0;
const SKU: &str = "gpu.shared.a10";
const SIDECAR: &str = "bench";
/// Starting balance of every account (ledger and raw alike).
const START_BALANCE: i64 = 1_000_000_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `url` with its database name replaced by `db` (query parameters kept).
fn with_db(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let root = match base[host_start..].find('/') {
        Some(i) => &base[..host_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// `url` without its password, to print.
fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// The Cargo target directory: `CARGO_TARGET_DIR`, else the one this bench binary was
/// built in (`<target>/<profile>/deps/ledger_ingest-<hash>`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `s` as a JSON string literal.
fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

fn write_json(body: &str) {
    let dir = target_dir().join("bench-results");
    let out = dir.join("ledger_ingest.json");
    match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&out, body)) {
        Ok(()) => println!("wrote {}", out.display()),
        Err(e) => eprintln!("could not write {}: {e}", out.display()),
    }
}

/// Says why nothing was measured, on stdout and in the JSON (which then holds no numbers).
fn skip(reason: &str) {
    println!("ledger_ingest: skipped: {reason}");
    let unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    write_json(&format!(
        "{{\n  \"bench\": \"ledger_ingest\",\n  \"unix_time_s\": {unix_s},\n  \"skipped\": {}\n}}\n",
        json_str(reason)
    ));
}

/// The shape of every phase's input.
#[derive(Clone, Copy)]
struct Plan {
    records: usize,
    batch: usize,
    accounts: usize,
}

impl Plan {
    /// The batches of one phase: `records` fresh usage records (ids `{prefix}-{seq}`) in
    /// batches of `batch`, round-robin over `ids`.
    fn batches(&self, prefix: &str, ids: &[String], cost: Money, now_ms: i64) -> Batches {
        Batches {
            plan: *self,
            prefix: prefix.to_owned(),
            ids: ids.to_vec(),
            cost,
            now_ms,
            sent: 0,
        }
    }
}

/// Builds each batch when asked, inside the timed loop of every phase alike.
struct Batches {
    plan: Plan,
    prefix: String,
    ids: Vec<String>,
    cost: Money,
    now_ms: i64,
    sent: usize,
}

impl Iterator for Batches {
    type Item = Vec<UsageRecord>;

    fn next(&mut self) -> Option<Vec<UsageRecord>> {
        if self.sent >= self.plan.records {
            return None;
        }
        let n = self.plan.batch.min(self.plan.records - self.sent);
        let usage = (0..n)
            .map(|i| {
                let seq = (self.sent + i + 1) as u64;
                UsageRecord {
                    seq,
                    usage_id: format!("{}-{seq}", self.prefix),
                    account_id: self.ids[(self.sent + i) % self.ids.len()].clone(),
                    resource: Resource::GpuShared,
                    sku: SKU.into(),
                    quantity: 1_000,
                    cost: self.cost,
                    at_ms: self.now_ms,
                }
            })
            .collect();
        self.sent += n;
        Some(usage)
    }
}

/// One phase's result.
struct Phase {
    name: &'static str,
    records: usize,
    secs: f64,
}

impl Phase {
    fn per_s(&self) -> f64 {
        self.records as f64 / self.secs
    }
}

const RAW_SCHEMA: &str = r#"
CREATE SCHEMA raw;
CREATE TABLE raw.accounts (
    account_id TEXT PRIMARY KEY,
    balance    NUMERIC NOT NULL
);
CREATE TABLE raw.usage (
    usage_id   TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    resource   TEXT NOT NULL,
    sku        TEXT NOT NULL,
    quantity   BIGINT NOT NULL,
    cost       NUMERIC NOT NULL,
    at_ms      BIGINT NOT NULL,
    sidecar_id TEXT NOT NULL,
    seq        BIGINT NOT NULL
);
CREATE INDEX raw_usage_by_account ON raw.usage(account_id, at_ms);
"#;

/// The floor: the batch's costs summed per account, one UPDATE.
const RAW_UPDATE: &str = "UPDATE raw.accounts a SET balance = a.balance - v.cost \
     FROM (SELECT id, SUM(cost::numeric) AS cost \
           FROM UNNEST($1::text[], $2::text[]) AS u(id, cost) GROUP BY id) v \
     WHERE a.account_id = v.id";

/// Exactly once in one statement: insert the usage rows not seen before, debit what was
/// inserted.
const RAW_INSERT_UPDATE: &str = "WITH ins AS ( \
       INSERT INTO raw.usage (usage_id, account_id, resource, sku, quantity, cost, at_ms, \
                              sidecar_id, seq) \
       SELECT u, a, r, s, q, c::numeric, t, $8::text, n \
       FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], \
                   $7::int8[], $9::int8[]) AS v(u, a, r, s, q, c, t, n) \
       ON CONFLICT (usage_id) DO NOTHING \
       RETURNING account_id, cost) \
     UPDATE raw.accounts a SET balance = a.balance - d.cost \
     FROM (SELECT account_id, SUM(cost) AS cost FROM ins GROUP BY account_id) d \
     WHERE a.account_id = d.account_id";

async fn raw_phase(
    conn: &mut PgConnection,
    name: &'static str,
    batches: Batches,
    exactly_once: bool,
) -> Result<Phase, sqlx::Error> {
    let started = Instant::now();
    let mut records = 0;
    for usage in batches {
        records += usage.len();
        let ids: Vec<&str> = usage.iter().map(|u| u.account_id.as_str()).collect();
        let costs: Vec<String> = usage.iter().map(|u| u.cost.to_string()).collect();
        if exactly_once {
            sqlx::query(RAW_INSERT_UPDATE)
                .bind(
                    usage
                        .iter()
                        .map(|u| u.usage_id.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(ids)
                .bind(usage.iter().map(|u| u.resource.name()).collect::<Vec<_>>())
                .bind(usage.iter().map(|u| u.sku.as_str()).collect::<Vec<_>>())
                .bind(usage.iter().map(|u| u.quantity as i64).collect::<Vec<_>>())
                .bind(costs)
                .bind(usage.iter().map(|u| u.at_ms).collect::<Vec<_>>())
                .bind(SIDECAR)
                .bind(usage.iter().map(|u| u.seq as i64).collect::<Vec<_>>())
                .execute(&mut *conn)
                .await?;
        } else {
            sqlx::query(RAW_UPDATE)
                .bind(ids)
                .bind(costs)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(Phase {
        name,
        records,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// Sum of the raw balances, as text (exact).
async fn raw_total(conn: &mut PgConnection) -> Result<Decimal, String> {
    let s: String = sqlx::query_scalar("SELECT SUM(balance)::text FROM raw.accounts")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
    s.parse().map_err(|e| format!("{s}: {e}"))
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not: no ingest then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("ledger_ingest: not run outside `cargo bench`");
        return;
    }
    let Ok(url) = std::env::var("DATABASE_URL") else {
        skip("DATABASE_URL is not set (DATABASE_URL=postgres://... to measure PostgreSQL ingest)");
        return;
    };
    let plan = Plan {
        records: env_usize("INGEST_RECORDS", 200_000).max(1),
        batch: env_usize("INGEST_BATCH", 5_000).max(1),
        accounts: env_usize("INGEST_ACCOUNTS", 100).max(1),
    };

    let mut admin = match PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            skip(&format!(
                "PostgreSQL at {} is unreachable: {e}",
                redacted(&url)
            ));
            return;
        }
    };
    let db = format!("quotad_ingest_{}", std::process::id());
    if let Err(e) = sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
    {
        skip(&format!("cannot create scratch database {db}: {e}"));
        return;
    }
    let scratch = with_db(&url, &db);
    let result = run(&scratch, plan).await;
    // Close every connection to the scratch database before dropping it.
    let _ = sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    if let Err(e) = result {
        eprintln!("ledger_ingest: failed: {e}");
        std::process::exit(1);
    }
}

async fn run(scratch: &str, plan: Plan) -> Result<(), String> {
    let store = PgStore::connect(scratch, 16)
        .await
        .map_err(|e| format!("ledger store: {e}"))?;
    let catalog = Arc::new(Catalog::default_catalog().map_err(|e| e.to_string())?);
    let ledger = Ledger::new(
        Arc::new(store),
        catalog,
        Arc::new(SystemClock),
        LeaseConfig::default(),
    );
    let ids: Vec<String> = (0..plan.accounts).map(|i| format!("ingest-{i}")).collect();
    for id in &ids {
        ledger
            .create_account(id, Money::from_decimal(Decimal::from(START_BALANCE)))
            .await
            .map_err(|e| format!("account {id}: {e}"))?;
    }
    let mut conn = PgConnection::connect(scratch)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql(RAW_SCHEMA)
        .execute(&mut conn)
        .await
        .map_err(|e| format!("raw schema: {e}"))?;
    sqlx::query(
        "INSERT INTO raw.accounts (account_id, balance) SELECT UNNEST($1::text[]), $2::numeric",
    )
    .bind(&ids)
    .bind(START_BALANCE.to_string())
    .execute(&mut conn)
    .await
    .map_err(|e| format!("raw accounts: {e}"))?;

    let cost = Money::parse("0.0006").map_err(|e| e.to_string())?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut phases = Vec::new();

    let started = Instant::now();
    let mut records = 0;
    for usage in plan.batches("sync", &ids, cost, now_ms) {
        records += usage.len();
        let req = SyncRequest {
            sidecar_id: SIDECAR.into(),
            usage,
            leases: Vec::new(),
            accounts: Vec::new(),
            reset_seq: 0,
        };
        ledger.sync(req).await.map_err(|e| format!("sync: {e}"))?;
    }
    phases.push(Phase {
        name: "ledger_sync",
        records,
        secs: started.elapsed().as_secs_f64(),
    });

    let started = Instant::now();
    let mut records = 0;
    for usage in plan.batches("apply", &ids, cost, now_ms) {
        records += usage.len();
        ledger
            .apply_usage(SIDECAR, &usage)
            .await
            .map_err(|e| format!("apply_usage: {e}"))?;
    }
    phases.push(Phase {
        name: "ledger_apply_usage",
        records,
        secs: started.elapsed().as_secs_f64(),
    });

    // Each raw phase must have debited exactly its records' cost.
    let phase_cost = cost.as_decimal() * Decimal::from(plan.records);
    for (name, prefix, exactly_once) in [
        ("raw_update", "raw", false),
        ("raw_insert_update", "rawx", true),
    ] {
        let before = raw_total(&mut conn).await?;
        let batches = plan.batches(prefix, &ids, cost, now_ms);
        let phase = raw_phase(&mut conn, name, batches, exactly_once)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let after = raw_total(&mut conn).await?;
        if before - after != phase_cost {
            return Err(format!(
                "{name}: balances fell by {} instead of {phase_cost}",
                before - after
            ));
        }
        phases.push(phase);
    }
    drop(conn);
    drop(ledger);
    report(plan, &phases);
    Ok(())
}

fn report(plan: Plan, phases: &[Phase]) {
    let rate = |name: &str| phases.iter().find(|p| p.name == name).map(Phase::per_s);
    println!(
        "ledger_ingest: {} usage records per phase, batches of {}, over {} accounts (PostgreSQL)",
        plan.records, plan.batch, plan.accounts
    );
    for p in phases {
        println!(
            "  {:<20} {:>8.2} s  {:>9.0} records/s",
            p.name,
            p.secs,
            p.per_s()
        );
    }
    let sync = rate("ledger_sync");
    let apply = rate("ledger_apply_usage");
    let raw = rate("raw_update");
    let raw_x = rate("raw_insert_update");
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let sync_over_raw = ratio(sync, raw);
    let apply_over_raw = ratio(apply, raw);
    let sync_over_raw_x = ratio(sync, raw_x);
    let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    println!(
        "  ledger_sync / raw_update: {} (raw is {}x faster); ledger_apply_usage / raw_update: {}; ledger_sync / raw_insert_update: {}",
        show(sync_over_raw),
        show(sync_over_raw.map(|r| 1.0 / r)),
        show(apply_over_raw),
        show(sync_over_raw_x)
    );
    println!(
        "  target >= {TARGET_RECORDS_PER_S:.0} records/s: ledger_sync {}",
        sync.map_or("-", |s| if s >= TARGET_RECORDS_PER_S {
            "met"
        } else {
            "not met"
        })
    );

    let num = |v: Option<f64>| match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".to_owned(),
    };
    let unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut json = String::from("{\n  \"bench\": \"ledger_ingest\",\n");
    let _ = writeln!(json, "  \"unix_time_s\": {unix_s},");
    let _ = writeln!(json, "  \"records_per_phase\": {},", plan.records);
    let _ = writeln!(json, "  \"batch\": {},", plan.batch);
    let _ = writeln!(json, "  \"accounts\": {},", plan.accounts);
    json.push_str("  \"phases\": {\n");
    let rows: Vec<String> = phases
        .iter()
        .map(|p| {
            format!(
                "    {}: {{\"records\": {}, \"seconds\": {}, \"records_per_s\": {}}}",
                json_str(p.name),
                p.records,
                num(Some(p.secs)),
                num(Some(p.per_s()))
            )
        })
        .collect();
    json.push_str(&rows.join(",\n"));
    json.push_str("\n  },\n");
    let _ = writeln!(json, "  \"sync_over_raw_update\": {},", num(sync_over_raw));
    let _ = writeln!(
        json,
        "  \"apply_usage_over_raw_update\": {},",
        num(apply_over_raw)
    );
    let _ = writeln!(
        json,
        "  \"sync_over_raw_insert_update\": {},",
        num(sync_over_raw_x)
    );
    let _ = writeln!(
        json,
        "  \"target_min_records_per_s\": {},",
        num(Some(TARGET_RECORDS_PER_S))
    );
    let _ = writeln!(
        json,
        "  \"sync_target_met\": {}",
        sync.map_or("null".to_owned(), |s| (s >= TARGET_RECORDS_PER_S)
            .to_string())
    );
    json.push_str("}\n");
    write_json(&json);
}
