//! Every conversion between wire messages and quotad's values, for all three services:
//! request validation (ids, amounts, resources, quantities), the Quota service's views
//! (balances, usage decisions, sessions, events), the Admin service's (statements, the
//! catalog, access) and the Ledger service's sync and authentication messages, both ways.
//! Adapters call these and nothing else touches a `pb` field, so the wire format is read
//! and written in one file. Nothing here decides anything about billing.

use crate::auth::{AuthError, Caller, Kind, Perms};
use crate::billing::catalog::Catalog;
use crate::billing::{
    Deduction, Grant, GrantKind, GrantState, GrantUnit, Money, OfferKind, Resource, ResourceSet,
};
use crate::engine;
use crate::engine::events::{Event, EventKind};
use crate::engine::work::WorkKey;
use crate::journal::SessionState;
use crate::ledger::{
    AccountSnapshot, Lease, LeaseRequest, StatementEntry, SyncRequest, SyncResponse, UsageRecord,
};
use crate::pb;

use super::error::Invalid;

/// Longest id (account, reservation, top-up, purchase, grant) accepted.
pub const ID_LEN_MAX: usize = 128;

/// Characters ids may use. '/' is left out: purchase grant ids use it (`purchase/1`).
fn id_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@')
}

/// The start of a value for an error message, so a megabyte of junk is not echoed back.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push_str("...");
    }
    format!("{out:?}")
}

pub fn id<'a>(field: &str, s: &'a str) -> Result<&'a str, Invalid> {
    if s.is_empty() {
        return Err(Invalid(format!("{field} is required")));
    }
    if s.len() > ID_LEN_MAX {
        return Err(Invalid(format!(
            "{field} is {} bytes long; the maximum is {ID_LEN_MAX}",
            s.len()
        )));
    }
    if !s.bytes().all(id_char_ok) {
        return Err(Invalid(format!(
            "{field} {} may only contain letters, digits and . _ - : @",
            shown(s)
        )));
    }
    Ok(s)
}

/// A usage id from a sidecar: a client id, or one quotad derives with '/' (storage hours:
/// `storage/ACCOUNT/HOUR_START_MS`), which no client id can contain.
pub fn usage_id(s: &str) -> Result<&str, Invalid> {
    for part in s.split('/') {
        id("usage_id", part)?;
    }
    if s.len() > 3 * ID_LEN_MAX {
        return Err(Invalid(format!("usage_id is {} bytes long", s.len())));
    }
    Ok(s)
}

pub fn sku(s: &str) -> Result<&str, Invalid> {
    if s.is_empty() {
        return Err(Invalid("sku is required (see GetCatalog)".into()));
    }
    if s.len() > 64 {
        return Err(Invalid(format!("sku {} is longer than 64 bytes", shown(s))));
    }
    Ok(s)
}

pub fn resource(field: &str, v: i32) -> Result<Resource, Invalid> {
    match pb::Resource::try_from(v) {
        Ok(pb::Resource::Unspecified) => Err(Invalid(format!("{field} is required"))),
        Ok(r) => {
            Ok(from_pb_resource(r).ok_or_else(|| Invalid(format!("{field} {v} is not valid")))?)
        }
        Err(_) => Err(Invalid(format!("{field} {v} is not a known Resource"))),
    }
}

/// A resource that Reserve and Admit meter by quantity in this version.
pub fn metered_resource(v: i32) -> Result<Resource, Invalid> {
    let r = resource("resource", v)?;
    match r {
        Resource::GpuShared
        | Resource::GpuExclusive
        | Resource::Traffic
        | Resource::RequestPut
        | Resource::RequestGet => Ok(r),
        Resource::Storage => Err(Invalid(
            "STORAGE is billed from stored levels (ReportStorage), not reserved".into(),
        )),
    }
}

pub fn quantity(v: i64, zero_ok: bool) -> Result<u64, Invalid> {
    match u64::try_from(v) {
        Ok(q) if q > 0 || zero_ok => Ok(q),
        _ => {
            let want = if zero_ok {
                "zero or more"
            } else {
                "greater than zero"
            };
            Err(Invalid(format!("quantity {v} must be {want}")))
        }
    }
}

pub fn from_pb_resource(r: pb::Resource) -> Option<Resource> {
    Some(match r {
        pb::Resource::Unspecified => return None,
        pb::Resource::GpuShared => Resource::GpuShared,
        pb::Resource::GpuExclusive => Resource::GpuExclusive,
        pb::Resource::Storage => Resource::Storage,
        pb::Resource::Traffic => Resource::Traffic,
        pb::Resource::RequestPut => Resource::RequestPut,
        pb::Resource::RequestGet => Resource::RequestGet,
    })
}

pub fn to_pb_resource(r: Resource) -> pb::Resource {
    match r {
        Resource::GpuShared => pb::Resource::GpuShared,
        Resource::GpuExclusive => pb::Resource::GpuExclusive,
        Resource::Storage => pb::Resource::Storage,
        Resource::Traffic => pb::Resource::Traffic,
        Resource::RequestPut => pb::Resource::RequestPut,
        Resource::RequestGet => pb::Resource::RequestGet,
    }
}

/// Converts money to the wire in the deployment's currency.
pub fn money_out(currency: &str, m: Money) -> Option<pb::Money> {
    Some(pb::Money {
        currency: currency.to_owned(),
        amount: m.to_string(),
    })
}

/// Reads an amount of money; an empty currency means the deployment's.
pub fn money_in(field: &str, currency: &str, m: Option<&pb::Money>) -> Result<Money, Invalid> {
    let m = m.ok_or_else(|| Invalid(format!("{field} is required")))?;
    if !m.currency.is_empty() && m.currency != currency {
        return Err(Invalid(format!(
            "{field} currency {} is not this deployment's currency {currency}",
            shown(&m.currency)
        )));
    }
    Money::parse(&m.amount).map_err(|e| Invalid(format!("{field}: {e}")))
}

pub fn deny_reason(r: Option<crate::billing::DenyReason>) -> i32 {
    use crate::billing::DenyReason as D;
    i32::from(match r {
        None => pb::DenyReason::Unspecified,
        Some(D::Overdue) => pb::DenyReason::Overdue,
        Some(D::NoEntitlement) => pb::DenyReason::NoEntitlement,
        Some(D::InsufficientFunds) => pb::DenyReason::InsufficientFunds,
        Some(D::LedgerUnavailable) => pb::DenyReason::LedgerUnavailable,
    })
}

pub fn grant_kind_out(k: GrantKind) -> pb::grant::Kind {
    match k {
        GrantKind::Plan => pb::grant::Kind::Plan,
        GrantKind::Coupon => pb::grant::Kind::Coupon,
        GrantKind::Trial => pb::grant::Kind::Trial,
    }
}

pub fn grant_out(currency: &str, g: &Grant, now_ms: i64) -> pb::Grant {
    let state = match g.state_at(now_ms) {
        GrantState::Valid => pb::grant::State::Valid,
        GrantState::Pending => pb::grant::State::Pending,
        GrantState::Expired => pb::grant::State::Expired,
        GrantState::Exhausted => pb::grant::State::Exhausted,
    };
    let covers: Vec<i32> = if g.covers.is_any() {
        Vec::new()
    } else {
        g.covers.iter().map(|r| to_pb_resource(r).into()).collect()
    };
    let resource = match g.covers.single() {
        Some(r) if !g.covers.is_any() => to_pb_resource(r),
        _ => pb::Resource::Unspecified,
    };
    pb::Grant {
        grant_id: g.grant_id.clone(),
        kind: grant_kind_out(g.kind).into(),
        resource: resource.into(),
        quota: g.quota.normalize().to_string(),
        remaining: g.remaining.normalize().to_string(),
        unit: g.unit.label(currency),
        starts_at_ms: g.starts_at_ms,
        expires_at_ms: g.expires_at_ms,
        source: g.source.clone(),
        covers,
        state: state.into(),
        stackable: g.stackable,
        created_at_ms: g.created_at_ms,
    }
}

/// A statement's deduction: its money, and for a volume plan the GB it gave.
pub fn deduction_out(currency: &str, d: &Deduction) -> pb::Deduction {
    pb::Deduction {
        source: d.source.label().to_owned(),
        amount: money_out(currency, d.amount),
        gb: d
            .gb
            .map(|gb| gb.normalize().to_string())
            .unwrap_or_default(),
    }
}

/// A grant back from the wire (ledger to sidecar). `unit` is "GB" or the currency.
pub fn grant_in(g: &pb::Grant) -> Result<Grant, Invalid> {
    let kind = match pb::grant::Kind::try_from(g.kind) {
        Ok(pb::grant::Kind::Plan) => GrantKind::Plan,
        Ok(pb::grant::Kind::Coupon) => GrantKind::Coupon,
        Ok(pb::grant::Kind::Trial) => GrantKind::Trial,
        _ => {
            return Err(Invalid(format!(
                "grant {} has no valid kind",
                shown(&g.grant_id)
            )));
        }
    };
    let covers = if g.covers.is_empty() {
        ResourceSet::ANY
    } else {
        g.covers
            .iter()
            .map(|r| resource("covers", *r))
            .collect::<Result<ResourceSet, _>>()?
    };
    let dec = |field: &str, v: &str| {
        v.parse::<rust_decimal::Decimal>().map_err(|_| {
            Invalid(format!(
                "grant {} {field} {} is not a decimal",
                shown(&g.grant_id),
                shown(v)
            ))
        })
    };
    Ok(Grant {
        grant_id: g.grant_id.clone(),
        kind,
        covers,
        unit: if g.unit == "GB" {
            GrantUnit::Gigabytes
        } else {
            GrantUnit::Money
        },
        quota: dec("quota", &g.quota)?,
        remaining: dec("remaining", &g.remaining)?,
        starts_at_ms: g.starts_at_ms,
        expires_at_ms: g.expires_at_ms,
        created_at_ms: g.created_at_ms,
        source: g.source.clone(),
        stackable: g.stackable,
    })
}

/// What a GrantCredit's `resource` covers: one resource, or any.
pub fn covers_in(v: i32) -> Result<ResourceSet, Invalid> {
    match pb::Resource::try_from(v) {
        Ok(pb::Resource::Unspecified) => Ok(ResourceSet::ANY),
        Ok(r) => {
            Ok(ResourceSet::of(from_pb_resource(r).ok_or_else(|| {
                Invalid(format!("resource {v} is not valid"))
            })?))
        }
        Err(_) => Err(Invalid(format!("resource {v} is not a known Resource"))),
    }
}

/// A grant kind GrantCredit may create: COUPON or TRIAL (plans come from Purchase).
pub fn credit_kind_in(v: i32) -> Result<GrantKind, Invalid> {
    match pb::grant::Kind::try_from(v) {
        Ok(pb::grant::Kind::Coupon) => Ok(GrantKind::Coupon),
        Ok(pb::grant::Kind::Trial) => Ok(GrantKind::Trial),
        Ok(pb::grant::Kind::Plan) => Err(Invalid(
            "kind PLAN is created by Purchase; GrantCredit takes COUPON or TRIAL".into(),
        )),
        _ => Err(Invalid(format!("kind {v} must be COUPON or TRIAL"))),
    }
}

// --- Quota: requests, views and decisions ----------------------------------------------

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

// --- Admin: statements, the catalog, tokens and access --------------------------------

pub fn statement_entry_out(currency: &str, e: StatementEntry) -> pb::StatementEntry {
    pb::StatementEntry {
        usage_id: e.usage_id,
        resource: to_pb_resource(e.resource).into(),
        sku: e.sku,
        quantity: i64::try_from(e.quantity).unwrap_or(i64::MAX),
        cost: money_out(currency, e.cost),
        deductions: e
            .deductions
            .iter()
            .map(|d| deduction_out(currency, d))
            .collect(),
        at_ms: e.at_ms,
        free_quantity: i64::try_from(e.free_quantity).unwrap_or(i64::MAX),
    }
}

/// Every sku of the catalog: prices, then plans and packages.
pub fn catalog_out(c: &Catalog) -> pb::Catalog {
    let prices = c.prices.values().map(|p| pb::Sku {
        id: p.sku.clone(),
        resource: to_pb_resource(p.resource).into(),
        kind: pb::sku::Kind::Price.into(),
        unit_price: money_out(&c.currency, p.unit_price),
        unit: p.unit().name().to_owned(),
        description: p.description.clone(),
    });
    let offers = c.offers.values().map(|o| {
        let covers: ResourceSet = o.grants.iter().flat_map(|g| g.covers.iter()).collect();
        let kind = match o.kind {
            OfferKind::Plan => pb::sku::Kind::Plan,
            OfferKind::Package => pb::sku::Kind::Package,
        };
        pb::Sku {
            id: o.sku.clone(),
            resource: covers
                .single()
                .map_or(pb::Resource::Unspecified, to_pb_resource)
                .into(),
            kind: kind.into(),
            unit_price: money_out(&c.currency, o.price),
            unit: "purchase".to_owned(),
            description: o.description.clone(),
        }
    });
    pb::Catalog {
        skus: prices.chain(offers).collect(),
    }
}

/// Whom CreateToken makes a token for: (kind, account id, name). An owner's name is its
/// account; the other kinds have a name and no account.
pub fn principal_in(p: &pb::Principal) -> Result<(Kind, String, String), Invalid> {
    let named = |kind| {
        Ok((
            kind,
            String::new(),
            id("principal.name", &p.name)?.to_owned(),
        ))
    };
    match pb::principal::Kind::try_from(p.kind) {
        Ok(pb::principal::Kind::Owner) => {
            let account_id = id("principal.account_id", &p.account_id)?;
            Ok((Kind::Owner, account_id.to_owned(), account_id.to_owned()))
        }
        Ok(pb::principal::Kind::SubUser) => named(Kind::SubUser),
        Ok(pb::principal::Kind::Sidecar) => named(Kind::Sidecar),
        Ok(pb::principal::Kind::Proxy) => named(Kind::Proxy),
        Ok(pb::principal::Kind::Operator) => named(Kind::Operator),
        _ => Err(Invalid(format!(
            "principal.kind {} must be OPERATOR, OWNER, SUB_USER, SIDECAR or PROXY",
            p.kind
        ))),
    }
}

pub fn access_out(account_id: &str, sub_user: &str, bits: u8) -> pb::AccessResponse {
    pb::AccessResponse {
        account_id: account_id.to_owned(),
        sub_user: sub_user.to_owned(),
        permissions: Perms(bits).names(),
    }
}

// --- Ledger: sync between sidecar and ledger, and authentication ----------------------

/// An amount between sidecar and ledger: both ends bill in the catalog's currency, so the
/// currency is not checked (unlike `money_in`, for clients).
fn amount_in(field: &str, m: Option<&pb::Money>) -> Result<Money, Invalid> {
    let m = m.ok_or_else(|| Invalid(format!("{field} is required")))?;
    Money::parse(&m.amount).map_err(|e| Invalid(format!("{field}: {e}")))
}

/// An optional amount (fields added after the first version): unset is zero.
fn amount_or_zero(field: &str, m: Option<&pb::Money>) -> Result<Money, Invalid> {
    m.map_or(Ok(Money::ZERO), |m| amount_in(field, Some(m)))
}

fn usage_out(currency: &str, u: &UsageRecord) -> pb::UsageRecord {
    pb::UsageRecord {
        seq: u.seq,
        usage_id: u.usage_id.clone(),
        account_id: u.account_id.clone(),
        resource: to_pb_resource(u.resource).into(),
        sku: u.sku.clone(),
        quantity: u.quantity,
        cost: money_out(currency, u.cost),
        at_ms: u.at_ms,
    }
}

fn usage_in(u: &pb::UsageRecord) -> Result<UsageRecord, Invalid> {
    let cost = amount_in("cost", u.cost.as_ref())?;
    if cost.is_negative() {
        return Err(Invalid(format!("usage {} has a negative cost", u.usage_id)));
    }
    Ok(UsageRecord {
        seq: u.seq,
        usage_id: usage_id(&u.usage_id)?.to_owned(),
        account_id: id("account_id", &u.account_id)?.to_owned(),
        resource: resource("resource", u.resource)?,
        sku: sku(&u.sku)?.to_owned(),
        quantity: u.quantity,
        cost,
        at_ms: u.at_ms,
    })
}

fn lease_request_in(l: &pb::LeaseRequest) -> Result<LeaseRequest, Invalid> {
    let held = amount_in("held", l.held.as_ref())?;
    Ok(LeaseRequest {
        account_id: id("account_id", &l.account_id)?.to_owned(),
        want: amount_in("want", l.want.as_ref())?,
        need: match &l.need {
            Some(n) => amount_in("need", Some(n))?,
            None => held,
        },
        held,
        release: l.release,
        give_back: l.give_back,
        seq: l.seq,
    })
}

fn lease_request_out(c: &str, l: &LeaseRequest) -> pb::LeaseRequest {
    pb::LeaseRequest {
        account_id: l.account_id.clone(),
        want: money_out(c, l.want),
        need: money_out(c, l.need),
        held: money_out(c, l.held),
        release: l.release,
        give_back: l.give_back,
        seq: l.seq,
    }
}

/// A Sync request as the ledger takes it, every id and amount checked.
pub fn sync_request_in(r: &pb::SyncRequest) -> Result<SyncRequest, Invalid> {
    Ok(SyncRequest {
        sidecar_id: id("sidecar_id", &r.sidecar_id)?.to_owned(),
        usage: r.usage.iter().map(usage_in).collect::<Result<_, _>>()?,
        leases: r
            .leases
            .iter()
            .map(lease_request_in)
            .collect::<Result<_, _>>()?,
        accounts: r
            .accounts
            .iter()
            .map(|a| id("accounts", a).map(str::to_owned))
            .collect::<Result<_, _>>()?,
        reset_seq: r.reset_seq,
    })
}

/// A Sync request as a sidecar sends it.
pub fn sync_request_out(c: &str, req: SyncRequest) -> pb::SyncRequest {
    pb::SyncRequest {
        usage: req.usage.iter().map(|u| usage_out(c, u)).collect(),
        leases: req.leases.iter().map(|l| lease_request_out(c, l)).collect(),
        sidecar_id: req.sidecar_id,
        accounts: req.accounts,
        reset_seq: req.reset_seq,
    }
}

pub fn sync_response_out(currency: &str, resp: SyncResponse) -> pb::SyncResponse {
    pb::SyncResponse {
        snapshots: resp
            .snapshots
            .iter()
            .map(|s| snapshot_out(currency, s, resp.now_ms))
            .collect(),
        now_ms: resp.now_ms,
        hold_grace_ms: resp.hold_grace_ms,
        recalls: resp.recalls,
    }
}

/// The ledger's answer as a sidecar takes it; a snapshot that does not read is refused.
pub fn sync_response_in(resp: pb::SyncResponse) -> Result<SyncResponse, Invalid> {
    Ok(SyncResponse {
        snapshots: resp
            .snapshots
            .iter()
            .map(snapshot_in)
            .collect::<Result<_, _>>()?,
        now_ms: resp.now_ms,
        hold_grace_ms: resp.hold_grace_ms,
        recalls: resp.recalls,
    })
}

fn snapshot_out(currency: &str, s: &AccountSnapshot, now_ms: i64) -> pb::AccountSnapshot {
    pb::AccountSnapshot {
        account_id: s.account_id.clone(),
        version: s.version,
        balance: money_out(currency, s.balance),
        grants: s
            .grants
            .iter()
            .map(|g| grant_out(currency, g, now_ms))
            .collect(),
        applied_seq: s.applied_seq,
        lease: Some(pb::Lease {
            remaining: money_out(currency, s.lease.remaining),
            expires_at_ms: s.lease.expires_at_ms,
            seq: s.lease.seq,
            edge: s.lease.edge,
            give_back: s.lease.give_back,
        }),
        unleased: money_out(currency, s.unleased),
        recalling: money_out(currency, s.recalling),
        request_counts: s
            .request_counts
            .rows()
            .into_iter()
            .map(|(r, month, count)| pb::RequestCount {
                resource: to_pb_resource(r).into(),
                month,
                count,
            })
            .collect(),
    }
}

fn snapshot_in(s: &pb::AccountSnapshot) -> Result<AccountSnapshot, Invalid> {
    let lease = match &s.lease {
        Some(l) => Lease {
            remaining: amount_in("lease.remaining", l.remaining.as_ref())?,
            expires_at_ms: l.expires_at_ms,
            seq: l.seq,
            edge: l.edge,
            give_back: l.give_back,
        },
        None => Lease::default(),
    };
    Ok(AccountSnapshot {
        account_id: s.account_id.clone(),
        version: s.version,
        balance: amount_in("balance", s.balance.as_ref())?,
        grants: s.grants.iter().map(grant_in).collect::<Result<_, _>>()?,
        applied_seq: s.applied_seq,
        lease,
        unleased: amount_or_zero("unleased", s.unleased.as_ref())?,
        recalling: amount_or_zero("recalling", s.recalling.as_ref())?,
        request_counts: crate::billing::free_tier::RequestCounts::from_rows(
            s.request_counts
                .iter()
                .map(|c| Ok((resource("resource", c.resource)?, c.month, c.count)))
                .collect::<Result<Vec<_>, Invalid>>()?,
        ),
    })
}

/// A token hash a sidecar asks the ledger about: 64 hex digits, compared in lower case.
pub fn token_hash_in(hash: &str) -> Result<String, Invalid> {
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Invalid("token_sha256 must be 64 hex digits".into()));
    }
    Ok(hash.to_ascii_lowercase())
}

/// The ledger's Authenticate answer for a known token.
pub fn caller_out(token_id: String, caller: &Caller) -> pb::AuthenticateResponse {
    use pb::principal::Kind as K;
    let (kind, account_id, name, access) = match caller {
        Caller::Unchecked => (K::Operator, String::new(), String::new(), Vec::new()),
        Caller::Operator { name } => (K::Operator, String::new(), name.clone(), Vec::new()),
        Caller::Owner { account_id } => (K::Owner, account_id.clone(), String::new(), Vec::new()),
        Caller::SubUser { name, access } => (
            K::SubUser,
            String::new(),
            name.clone(),
            access
                .iter()
                .map(|(a, p)| pb::AccessEntry {
                    account_id: a.clone(),
                    permissions: p.names(),
                })
                .collect(),
        ),
        Caller::Sidecar { name } => (K::Sidecar, String::new(), name.clone(), Vec::new()),
        Caller::Proxy { name } => (K::Proxy, String::new(), name.clone(), Vec::new()),
    };
    pb::AuthenticateResponse {
        known: true,
        principal: Some(pb::Principal {
            kind: kind.into(),
            account_id,
            name,
        }),
        token_id,
        access,
    }
}

/// The caller an Authenticate answer names; None for an unknown token. An answer that does
/// not read is `Unavailable`: the ledger cannot be trusted with it.
pub fn caller_in(r: pb::AuthenticateResponse) -> Result<Option<Caller>, AuthError> {
    if !r.known {
        return Ok(None);
    }
    let bad = |what: &str| AuthError::Unavailable(format!("bad answer from the ledger: {what}"));
    let p = r.principal.ok_or_else(|| bad("no principal"))?;
    use pb::principal::Kind as K;
    Ok(Some(match K::try_from(p.kind) {
        Ok(K::Operator) => Caller::Operator { name: p.name },
        Ok(K::Owner) => Caller::Owner {
            account_id: p.account_id,
        },
        Ok(K::SubUser) => Caller::SubUser {
            name: p.name,
            access: r
                .access
                .into_iter()
                .map(|a| Ok((a.account_id, Perms::parse(&a.permissions)?)))
                .collect::<Result<_, AuthError>>()?,
        },
        Ok(K::Sidecar) => Caller::Sidecar { name: p.name },
        Ok(K::Proxy) => Caller::Proxy { name: p.name },
        _ => return Err(bad("unknown principal kind")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_with_their_value() {
        assert!(id("account_id", "acme-1").is_ok());
        assert!(id("account_id", "").unwrap_err().0.contains("required"));
        assert!(
            id("account_id", &"x".repeat(129))
                .unwrap_err()
                .0
                .contains("129 bytes")
        );
        let e = id("account_id", "a b").unwrap_err().0;
        assert!(e.contains("\"a b\""), "{e}");
        assert!(id("grant_id", "p1/1").is_err());
    }

    #[test]
    fn money_needs_the_deployment_currency() {
        let m = pb::Money {
            currency: "USD".into(),
            amount: "1".into(),
        };
        assert!(money_in("amount", "CNY", Some(&m)).is_err());
        let m = pb::Money {
            currency: "".into(),
            amount: "1.5".into(),
        };
        assert_eq!(
            money_in("amount", "CNY", Some(&m)).unwrap().to_string(),
            "1.5"
        );
        assert!(money_in("amount", "CNY", None).is_err());
    }

    #[test]
    fn resources_and_quantities() {
        assert!(resource("resource", 0).is_err());
        assert!(resource("resource", 99).is_err());
        assert_eq!(resource("resource", 1).unwrap(), Resource::GpuShared);
        for (v, r) in [
            (4, Resource::Traffic),
            (5, Resource::RequestPut),
            (6, Resource::RequestGet),
        ] {
            assert_eq!(metered_resource(v).unwrap(), r);
        }
        assert_eq!(
            usage_id("storage/acme/3600000").unwrap(),
            "storage/acme/3600000"
        );
        assert!(usage_id("storage//1").is_err());
        assert!(usage_id("a b").is_err());
        assert!(metered_resource(3).unwrap_err().0.contains("ReportStorage"));
        assert!(quantity(-1, true).is_err());
        assert!(quantity(0, false).is_err());
        assert_eq!(quantity(0, true).unwrap(), 0);
    }

    mod fuzz {
        //! Request validation under arbitrary input: never a panic, always a verdict that
        //! names the field and never echoes more than a short prefix of the value.
        use super::*;
        use proptest::prelude::*;

        /// Longest error message: the field, a 40-character excerpt and the rule.
        const MESSAGE_MAX: usize = 400;

        fn any_text() -> impl Strategy<Value = String> {
            prop_oneof![
                "\\PC{0,300}",
                "[a-zA-Z0-9._:@-]{0,140}",
                "[0-9.eE+-]{0,40}",
                Just("x".repeat(100_000)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn ids(s in any_text()) {
                match id("account_id", &s) {
                    Ok(v) => {
                        prop_assert_eq!(v, s.as_str());
                        prop_assert!(!s.is_empty() && s.len() <= ID_LEN_MAX);
                        prop_assert!(s.bytes().all(id_char_ok));
                    }
                    Err(Invalid(m)) => {
                        prop_assert!(m.contains("account_id"), "{}", m);
                        prop_assert!(m.len() <= MESSAGE_MAX, "{}", m.len());
                    }
                }
                if let Err(Invalid(m)) = sku(&s) {
                    prop_assert!(m.contains("sku") && m.len() <= MESSAGE_MAX, "{}", m);
                }
            }

            #[test]
            fn amounts(amount in any_text(), currency in "[A-Z]{0,4}|\\PC{0,8}") {
                let m = pb::Money { currency, amount };
                match money_in("amount", "CNY", Some(&m)) {
                    Ok(v) => {
                        // What was accepted reads back as itself.
                        prop_assert_eq!(Money::parse(&v.to_string()), Ok(v));
                    }
                    Err(Invalid(e)) => {
                        prop_assert!(e.contains("amount"), "{}", e);
                        prop_assert!(e.len() <= MESSAGE_MAX, "{}", e.len());
                    }
                }
            }

            #[test]
            fn enums_and_quantities(v in any::<i32>(), q in any::<i64>(), zero_ok in any::<bool>()) {
                let _ = resource("resource", v);
                let _ = covers_in(v);
                if let Err(Invalid(m)) = metered_resource(v) {
                    prop_assert!(m.contains("resource") || m.contains("STORAGE"), "{}", m);
                }
                match quantity(q, zero_ok) {
                    Ok(n) => prop_assert!(q > 0 || (zero_ok && q == 0) && n == 0),
                    Err(Invalid(m)) => prop_assert!(m.contains("quantity")),
                }
            }

            #[test]
            fn grants_from_the_wire(
                grant_id in any_text(),
                kind in any::<i32>(),
                covers in proptest::collection::vec(any::<i32>(), 0..4),
                quota in any_text(),
                remaining in any_text(),
                unit in "GB|CNY|\\PC{0,4}",
            ) {
                let g = pb::Grant {
                    grant_id,
                    kind,
                    covers,
                    quota,
                    remaining,
                    unit,
                    ..Default::default()
                };
                if let Err(Invalid(m)) = grant_in(&g) {
                    prop_assert!(m.len() <= MESSAGE_MAX, "{}", m.len());
                }
            }
        }
    }
}
