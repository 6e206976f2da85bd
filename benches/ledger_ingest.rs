//! Ledger ingest: how many usage records per second the ledger applies through its real
//! Sync path (`LedgerApi::sync`: exactly-once check, burn-down, set-based writes) on
//! PostgreSQL, in batches as sidecars send them. Needs DATABASE_URL (a database it may
//! create scratch databases in); without it, it says so and measures nothing.
//!
//! `cargo bench --bench ledger_ingest` (env: INGEST_RECORDS, INGEST_BATCH, INGEST_ACCOUNTS).

use std::sync::Arc;
use std::time::Instant;

use quotad::billing::{Catalog, Money, Resource};
use quotad::clock::SystemClock;
use quotad::ledger::postgres::PgStore;
use quotad::ledger::{LeaseConfig, Ledger, LedgerApi, SyncRequest, UsageRecord};
use rust_decimal::Decimal;
use sqlx::Connection;

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

#[tokio::main]
async fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!(
            "ledger_ingest: skipped, set DATABASE_URL=postgres://... to measure PostgreSQL ingest"
        );
        return;
    };
    let records = env_usize("INGEST_RECORDS", 200_000);
    let batch = env_usize("INGEST_BATCH", 5_000).max(1);
    let accounts = env_usize("INGEST_ACCOUNTS", 100).max(1);

    let db = format!("quotad_ingest_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await
        .expect("create scratch database");
    let scratch = with_db(&url, &db);

    let store = PgStore::connect(&scratch, 16).await.expect("ledger store");
    let catalog = Arc::new(Catalog::default_catalog().expect("catalog"));
    let ledger = Ledger::new(
        Arc::new(store),
        catalog,
        Arc::new(SystemClock),
        LeaseConfig::default(),
    );
    let ids: Vec<String> = (0..accounts).map(|i| format!("ingest-{i}")).collect();
    for id in &ids {
        ledger
            .create_account(id, Money::from_decimal(Decimal::from(1_000_000_000)))
            .await
            .expect("account");
    }
    let cost = Money::parse("0.0006").expect("cost");
    let now = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut seq = 0u64;
    let mut sent = 0usize;
    while sent < records {
        let n = batch.min(records - sent);
        let usage: Vec<UsageRecord> = (0..n)
            .map(|i| {
                seq += 1;
                UsageRecord {
                    seq,
                    usage_id: format!("u-{seq}"),
                    account_id: ids[(sent + i) % accounts].clone(),
                    resource: Resource::GpuShared,
                    sku: "gpu.shared.a10".into(),
                    quantity: 1_000,
                    cost,
                    at_ms: now,
                }
            })
            .collect();
        let req = SyncRequest {
            sidecar_id: "bench".into(),
            usage,
            leases: Vec::new(),
            accounts: Vec::new(),
        };
        ledger.sync(req).await.expect("sync");
        sent += n;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ledger_ingest: {records} usage records in batches of {batch} over {accounts} accounts: {:.2} s, {:.0} records/s (PostgreSQL, real Sync path)",
        secs,
        records as f64 / secs
    );
    drop(ledger);
    let _ = sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
}
