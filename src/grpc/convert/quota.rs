//! The Quota service's messages: its requests checked into the engine's, and the engine's
//! views (balances, sessions, streams, accruals), usage decisions and events out.

use super::deny_reason;
use super::{grant_out, id, metered_resource, money_out, quantity, sku};
use crate::engine;
use crate::engine::events::{Event, EventKind};
use crate::engine::work::WorkKey;
use crate::grpc::error::Invalid;
use crate::journal::SessionState;
use crate::pb;

/// A Reserve request, checked (ttl_ms: 0 is the default, never negative).
pub fn reserve_in(r: &pb::ReserveRequest) -> Result<engine::ReserveRequest, Invalid> {
    if r.ttl_ms < 0 {
        return Err(Invalid(format!("ttl_ms {} must not be negative", r.ttl_ms)));
    }
    Ok(engine::ReserveRequest {
        account_id: id("account_id", &r.account_id)?.to_owned(),
        reservation_id: id("reservation_id", &r.reservation_id)?.to_owned(),
        resource: metered_resource(r.resource)?,
        sku: sku(&r.sku)?.to_owned(),
        quantity: quantity(r.quantity, false)?,
        ttl_ms: r.ttl_ms,
    })
}

/// A StartSession request, checked (idle_timeout_ms: 0 is 20 minutes, never negative).
pub fn start_session_in(
    r: &pb::StartSessionRequest,
) -> Result<engine::sessions::StartSession, Invalid> {
    if r.idle_timeout_ms < 0 {
        return Err(Invalid(format!(
            "idle_timeout_ms {} must not be negative (0 = 20 minutes)",
            r.idle_timeout_ms
        )));
    }
    Ok(engine::sessions::StartSession {
        account_id: id("account_id", &r.account_id)?.to_owned(),
        session_id: id("session_id", &r.session_id)?.to_owned(),
        sku: sku(&r.sku)?.to_owned(),
        auto_shutdown: r.auto_shutdown.unwrap_or(true),
        idle_timeout_ms: r.idle_timeout_ms,
    })
}

/// A ReportStorage level: (bytes stored, from when; 0 = now).
pub fn storage_level_in(r: &pb::ReportStorageRequest) -> Result<(u64, i64), Invalid> {
    let bytes = u64::try_from(r.bytes_stored).map_err(|_| {
        Invalid(format!(
            "bytes_stored {} is negative; report the bytes stored now",
            r.bytes_stored
        ))
    })?;
    if r.at_ms < 0 {
        return Err(Invalid(format!("at_ms {} is negative (0 = now)", r.at_ms)));
    }
    Ok((bytes, r.at_ms))
}

/// The deny reason's proto name, the label of decision metrics ("" when admitted).
pub fn decision_label(admitted: bool, reason: i32) -> &'static str {
    if admitted {
        return "";
    }
    pb::DenyReason::try_from(reason)
        .map(|r| r.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// The Balance message for an account view; GetBalance adds the sessions, streams and
/// accruals of this sidecar.
pub fn balance_out(currency: &str, v: &engine::BalanceView) -> pb::Balance {
    use crate::billing::AccountStatus as S;
    let status = match v.status {
        S::Active => pb::balance::AccountStatus::Active,
        S::Overdue => pb::balance::AccountStatus::Overdue,
        S::NoEntitlement => pb::balance::AccountStatus::NoEntitlement,
    };
    pb::Balance {
        account_id: v.account_id.clone(),
        status: status.into(),
        balance: money_out(currency, v.balance),
        available: money_out(currency, v.available),
        held: money_out(currency, v.held),
        grants: v
            .grants
            .iter()
            .map(|g| grant_out(currency, g, v.now_ms))
            .collect(),
        sessions: Vec::new(),
        streams: Vec::new(),
        accruals: None,
    }
}

pub fn session_out(c: &str, s: engine::sessions::SessionView) -> pb::SessionInfo {
    pb::SessionInfo {
        session_id: s.session_id,
        sku: s.sku,
        started_at_ms: s.started_at_ms,
        auto_shutdown: s.auto_shutdown,
        idle_timeout_ms: s.idle_timeout_ms,
        last_busy_at_ms: s.last_busy_at_ms,
        charged: money_out(c, s.charged),
        accrued: money_out(c, s.accrued),
        hourly: money_out(c, s.hourly),
        accrues_without_activity: s.accrues_without_activity,
    }
}

pub fn work_out(c: &str, w: engine::work::WorkView) -> pb::WorkInfo {
    pb::WorkInfo {
        work_id: w.work_id,
        sku: w.sku,
        charged: money_out(c, w.charged),
        held: money_out(c, w.held),
        last_seq: w.last_seq,
    }
}

pub fn accruals_out(c: &str, a: &engine::storage::AccrualsView) -> pb::Accruals {
    pb::Accruals {
        bytes_stored: i64::try_from(a.bytes_stored).unwrap_or(i64::MAX),
        storage_reported_at_ms: a.storage_reported_at_ms,
        storage_covered_bytes: i64::try_from(a.storage_covered_bytes).unwrap_or(i64::MAX),
        storage_hourly: money_out(c, a.storage_hourly),
        sessions_hourly: money_out(c, a.sessions_hourly),
        sessions_running: i32::try_from(a.sessions_running).unwrap_or(i32::MAX),
        sessions_without_auto_shutdown: i32::try_from(a.sessions_without_auto_shutdown)
            .unwrap_or(i32::MAX),
        hourly: money_out(c, a.projection.hourly),
        grants_exhausted_at_ms: a.projection.grants_exhausted_at_ms.unwrap_or(0),
        balance_exhausted_at_ms: a.projection.balance_exhausted_at_ms.unwrap_or(0),
    }
}

/// The key a usage report names; later reports of a stream must name the same job.
pub fn work_key(r: &pb::UsageReport) -> Result<WorkKey, Invalid> {
    Ok(WorkKey {
        account_id: id("account_id", &r.account_id)?.to_owned(),
        work_id: id("work_id", &r.work_id)?.to_owned(),
        resource: metered_resource(r.resource)?,
        sku: sku(&r.sku)?.to_owned(),
    })
}

/// Whether a later report of a stream names the stream's job: compared in place, so the
/// usual report copies none of its names.
pub fn names_work(r: &pb::UsageReport, key: &WorkKey) -> bool {
    r.account_id == key.account_id
        && r.work_id == key.work_id
        && r.sku == key.sku
        && metered_resource(r.resource).is_ok_and(|res| res == key.resource)
}

pub fn decision_out(currency: &str, d: engine::work::Decision) -> pb::UsageDecision {
    let action = if d.stop.is_some() {
        pb::Action::Stop
    } else {
        pb::Action::Continue
    };
    pb::UsageDecision {
        seq: d.seq,
        action: action.into(),
        reason: deny_reason(d.stop),
        remaining_quantity: i64::try_from(d.remaining_quantity).unwrap_or(i64::MAX),
        ignored: d.ignored,
        charged: money_out(currency, d.charged),
    }
}

/// What a session's state means for its instance: go on, or stop and why.
pub fn session_outcome(
    state: SessionState,
) -> (
    pb::Action,
    Option<crate::billing::DenyReason>,
    pb::SessionStop,
) {
    use crate::billing::DenyReason;
    match state {
        SessionState::Running => (pb::Action::Continue, None, pb::SessionStop::Unspecified),
        SessionState::Stopped => (pb::Action::Stop, None, pb::SessionStop::Requested),
        SessionState::IdleShutdown => (pb::Action::Stop, None, pb::SessionStop::Idle),
        SessionState::InsufficientFunds => (
            pb::Action::Stop,
            Some(DenyReason::InsufficientFunds),
            pb::SessionStop::InsufficientFunds,
        ),
    }
}

pub fn event_out(e: &Event) -> pb::AccountEvent {
    use crate::billing::alerts::AlertKind as A;
    use pb::account_event::Kind as K;
    let kind = match e.kind {
        EventKind::Alert(A::LowQuota) => K::LowQuota,
        EventKind::Alert(A::GrantExpiring) => K::GrantExpiring,
        EventKind::Alert(A::GrantExpired) => K::GrantExpired,
        EventKind::Alert(A::Overdue) => K::Overdue,
        EventKind::Alert(A::Recovered) => K::Recovered,
        EventKind::WorkStopped => K::WorkStopped,
        EventKind::SessionIdleShutdown => K::SessionIdleShutdown,
        EventKind::SessionStopped => K::SessionStopped,
    };
    pb::AccountEvent {
        account_id: e.account_id.clone(),
        kind: kind.into(),
        grant_id: e.subject_id.clone(),
        message: e.message.clone(),
        at_ms: e.at_ms,
        threshold: e.threshold.clone(),
        dropped: 0,
    }
}

/// The notice a watcher that fell behind gets in place of the `n` events it missed.
pub fn events_dropped(account_id: &str, n: u64) -> pb::AccountEvent {
    pb::AccountEvent {
        account_id: account_id.to_owned(),
        kind: pb::account_event::Kind::EventsDropped.into(),
        message: format!("{n} events were not delivered: this watcher fell behind (watch buffer)"),
        dropped: n,
        ..Default::default()
    }
}
