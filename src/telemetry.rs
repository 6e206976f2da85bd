//! What each process exports beside its RPC metrics, read at scrape time, and what
//! `/readyz` checks. A sidecar: the engine's gauges, the journal's size and fsync latency;
//! ready while its journal takes writes and it can admit (the ledger answers, or it holds
//! a lease to admit from). A ledger: its connection pool, each sidecar's last sync and
//! leases (at most `ledger::sidecars::DEFAULT_SIDECAR_SERIES_MAX` by name); ready while
//! its database answers, which a probe checks every `DEFAULT_LEDGER_PROBE_MS`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::Engine;
use crate::ledger::Ledger;
use crate::metrics::{Sample, SharedMetrics};

/// How often the ledger process checks its database and counts each sidecar's leases.
pub const DEFAULT_LEDGER_PROBE_MS: u64 = 5_000;
/// Leases of one sidecar counted at most (the gauge stops there).
pub const DEFAULT_LEASES_COUNTED_MAX: usize = 100_000;

/// A sidecar's gauges and readiness.
pub fn sidecar(metrics: &SharedMetrics, engine: &Arc<Engine>) {
    engine_metrics(metrics, engine);
    let journal = engine.journal().stats().clone();
    metrics.histogram(
        "quotad_journal_fsync_seconds",
        "Time of each fdatasync of a journal group commit",
        journal.fsync.clone(),
    );
    metrics.collect(move |out| {
        out.push(Sample::gauge(
            "quotad_journal_bytes",
            "Bytes of records in the journal file.",
            journal.file_bytes() as f64,
        ));
    });
    let weak = Arc::downgrade(engine);
    metrics.ready_when(move || {
        let Some(e) = weak.upgrade() else {
            return Err("stopped".into());
        };
        if !e.journal().stats().writable() {
            return Err("the journal is closed or refuses writes".into());
        }
        if e.ledger_reachable() || e.stats().leases > 0 {
            Ok(())
        } else {
            Err("the ledger does not answer and no lease is left to admit from".into())
        }
    });
}
/// Gauges read from the engine at each scrape.
fn engine_metrics(metrics: &SharedMetrics, engine: &Arc<Engine>) {
    let engine = Arc::downgrade(engine);
    metrics.collect(move |out| {
        let Some(e) = engine.upgrade() else { return };
        let s = e.stats();
        out.extend([
            Sample::gauge(
                "quotad_holds",
                "Reservations in memory: open, and settled ones kept for retries.",
                s.holds as f64,
            ),
            Sample::gauge(
                "quotad_accounts_cached",
                "Accounts cached in memory.",
                s.accounts as f64,
            ),
            Sample::gauge(
                "quotad_leases",
                "Cached accounts with an unexpired lease from the ledger.",
                s.leases as f64,
            ),
            Sample::gauge(
                "quotad_usage_streams",
                "Open StreamUsage streams.",
                s.streams as f64,
            ),
            Sample::gauge(
                "quotad_sessions_running",
                "Exclusive sessions running.",
                s.sessions_running as f64,
            ),
            Sample::gauge("quotad_watchers", "Open Watch streams.", s.watchers as f64),
            Sample::counter(
                "quotad_events_sent_total",
                "Account events handed to watchers.",
                s.events_sent,
            ),
            Sample::counter(
                "quotad_events_dropped_total",
                "Account events not sent because the event queue was full.",
                s.events_dropped,
            ),
            Sample::gauge(
                "quotad_journal_backlog",
                "Usage records acknowledged and journaled, not yet applied by the ledger.",
                s.journal_backlog as f64,
            ),
            Sample::gauge(
                "quotad_sync_lag_seconds",
                "Age of the oldest usage record the ledger has not applied (0: none).",
                s.sync_lag_ms as f64 / 1e3,
            ),
            Sample::gauge(
                "quotad_ledger_up",
                "1 while the last exchange with the ledger succeeded.",
                if s.ledger_up { 1.0 } else { 0.0 },
            ),
        ]);
    });
}

/// A ledger process's gauges and readiness; its probe runs until `stop` turns true.
pub fn ledger(metrics: &SharedMetrics, ledger: &Arc<Ledger>, stop: watch::Receiver<bool>) {
    let reachable = Arc::new(AtomicBool::new(true));
    tokio::spawn(probe(ledger.clone(), reachable.clone(), stop));
    let up = reachable.clone();
    metrics.ready_when(move || {
        if up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("the ledger database does not answer".into())
        }
    });
    let ledger = Arc::downgrade(ledger);
    metrics.collect(move |out| {
        let Some(l) = ledger.upgrade() else { return };
        out.push(Sample::gauge(
            "quotad_ledger_db_up",
            "1 while the ledger's database answered its last probe.",
            if reachable.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        ));
        if let Some(p) = l.pool() {
            let busy = (p.size as usize).saturating_sub(p.idle);
            out.extend([
                Sample::gauge(
                    "quotad_ledger_pool_connections",
                    "Database connections of the ledger's pool, by state.",
                    p.idle as f64,
                )
                .with_label("state", "idle"),
                Sample::gauge(
                    "quotad_ledger_pool_connections",
                    "Database connections of the ledger's pool, by state.",
                    busy as f64,
                )
                .with_label("state", "busy"),
                Sample::gauge(
                    "quotad_ledger_pool_connections_max",
                    "Most database connections the ledger's pool opens (pg_pool_max).",
                    f64::from(p.max),
                ),
            ]);
        }
        sidecar_samples(&l, out);
    });
}

/// Per sidecar: time since its last Sync, the age of the usage it brought, its leases.
fn sidecar_samples(ledger: &Ledger, out: &mut Vec<Sample>) {
    let now_ms = ledger.now_ms();
    for (id, seen) in ledger.sidecars().list() {
        out.push(
            Sample::gauge(
                "quotad_ledger_sidecar_sync_age_seconds",
                "Time since the sidecar's last Sync (sidecars beyond the limit: \"other\").",
                now_ms.saturating_sub(seen.synced_at_ms).max(0) as f64 / 1e3,
            )
            .with_label("sidecar", id.clone()),
        );
        out.push(
            Sample::gauge(
                "quotad_ledger_sidecar_sync_lag_seconds",
                "Age of the oldest usage record in the sidecar's last Sync when it arrived.",
                seen.usage_lag_ms as f64 / 1e3,
            )
            .with_label("sidecar", id.clone()),
        );
        if let Some(n) = seen.leases {
            out.push(
                Sample::gauge(
                    "quotad_ledger_sidecar_leases",
                    "Accounts on which the sidecar holds a lease with money in it.",
                    n as f64,
                )
                .with_label("sidecar", id),
            );
        }
    }
}

/// Checks the database and counts each named sidecar's leases, every
/// `DEFAULT_LEDGER_PROBE_MS` and when a sidecar syncs for the first time.
async fn probe(ledger: Arc<Ledger>, reachable: Arc<AtomicBool>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(DEFAULT_LEDGER_PROBE_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ledger.sidecars().seen_new() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let up = ledger.has_operator_token().await.is_ok();
        if up != reachable.swap(up, Ordering::Relaxed) {
            tracing::warn!(up, "ledger database reachability changed");
        }
        if !up {
            continue;
        }
        for (id, _) in ledger.sidecars().list() {
            if id == crate::ledger::sidecars::OTHER_SIDECARS {
                continue;
            }
            if let Ok(n) = ledger.leases_of(&id, DEFAULT_LEASES_COUNTED_MAX).await {
                ledger.sidecars().set_leases(&id, n);
            }
        }
    }
}
