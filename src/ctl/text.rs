//! The text output: answers for people, as key-value lines and aligned tables, one line
//! per event of a watch. Only this file knows what the text looks like.

use std::io::Write;

use super::CtlError;
use super::format::{
    Table, admitted_rows, deny_reason, enum_name, fmt_duration_ms, fmt_money, fmt_time,
    fmt_time_utc, one_line, resource_name, stop_cause, yes_no,
};
use super::reply::{Render, Reply, StatementReply};
use super::statement::{self, StatementBy};
use crate::pb;

/// Text for people (the default output format).
#[derive(Debug, Clone, Copy, Default)]
pub struct Text;

impl Render for Text {
    fn fresh_id(&self, out: &mut dyn Write, label: &str, id: &str) -> Result<(), CtlError> {
        // Said before the call: should the process be stopped in it, a retry can still
        // reuse it. How to retry is said only with a failure that may pass on a retry.
        writeln!(out, "{label} id: {id}")?;
        Ok(())
    }

    fn event(&self, out: &mut dyn Write, event: &pb::AccountEvent) -> Result<(), CtlError> {
        writeln!(out, "{}", event_line(event))?;
        Ok(out.flush()?)
    }

    fn reply(&self, out: &mut dyn Write, reply: &Reply) -> Result<(), CtlError> {
        match reply {
            Reply::Balance(b) => write_balance(out, b),
            Reply::Purchased(r) => write_purchase(out, r),
            Reply::Grant(g) => write_grants(out, std::slice::from_ref(g)),
            Reply::Statement(s) => write_statement_reply(out, s),
            Reply::Accruals(b) => write_accruals(out, b),
            Reply::StorageReported {
                account,
                bytes_stored,
            } => Ok(writeln!(
                out,
                "storage level of {account}: {bytes_stored} bytes"
            )?),
            Reply::Catalog(c) => write_catalog(out, c),
            Reply::Reserved(r) => write_reserve(out, r),
            Reply::Committed(r) => write_kv(
                out,
                &[
                    ("charged", fmt_money(&r.charged)),
                    ("available", fmt_money(&r.available)),
                ],
            ),
            Reply::Released(r) => write_kv(out, &[("released", fmt_money(&r.released))]),
            Reply::Admitted(r) => {
                let mut rows = admitted_rows(r.admitted, r.reason);
                rows.push(("available", fmt_money(&r.available)));
                write_kv(out, &rows)
            }
            // Its events were printed as they came.
            Reply::WatchEnded { .. } => Ok(()),
            Reply::SessionStarted(r) => write_session_start(out, r),
            Reply::Heartbeat(r) => write_heartbeat(out, r),
            Reply::SessionStopped(r) => write_kv(
                out,
                &[
                    ("charged", fmt_money(&r.charged)),
                    ("stopped at", fmt_time_utc(r.stopped_at_ms)),
                    ("stop cause", stop_cause(r.stop_cause)),
                ],
            ),
            Reply::TokenCreated(r) => write_kv(
                out,
                &[
                    ("token id", r.token_id.clone()),
                    ("token", r.token.clone()),
                    ("note", "shown once; quotad keeps only its hash".into()),
                ],
            ),
            Reply::Line(line) => Ok(writeln!(out, "{line}")?),
            Reply::Listing(l) => Ok(out.write_all(l.text().as_bytes())?),
            Reply::TokenRevoked(r) => write_kv(out, &[("revoked", r.token_id.clone())]),
            Reply::Access(r) => write_access(out, r),
            Reply::Webhook(r) => super::webhook::write_text(out, r),
            Reply::EnvoyBootstrap { yaml, token_id } => {
                out.write_all(yaml.as_bytes())?;
                writeln!(
                    out,
                    "# proxy token id: {token_id} (quotad ctl revoke-token {token_id})"
                )?;
                Ok(())
            }
            Reply::Script(s) => Ok(out.write_all(s.as_bytes())?),
        }
    }
}

fn write_kv(out: &mut dyn Write, rows: &[(&str, String)]) -> Result<(), CtlError> {
    let mut t = Table::headless();
    for (k, v) in rows {
        t.row(vec![k.to_string(), v.clone()]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

fn write_purchase(out: &mut dyn Write, r: &pb::PurchaseResponse) -> Result<(), CtlError> {
    write_kv(out, &[("price paid", fmt_money(&r.price_paid))])?;
    writeln!(out)?;
    write_grants(out, &r.grants)
}

fn write_reserve(out: &mut dyn Write, r: &pb::ReserveResponse) -> Result<(), CtlError> {
    let mut rows = admitted_rows(r.admitted, r.reason);
    rows.push(("held", fmt_money(&r.held)));
    rows.push(("available", fmt_money(&r.available)));
    if r.admitted {
        rows.push(("expires at", fmt_time_utc(r.expires_at_ms)));
    }
    write_kv(out, &rows)
}

fn write_session_start(out: &mut dyn Write, r: &pb::StartSessionResponse) -> Result<(), CtlError> {
    let mut rows = admitted_rows(r.admitted, r.reason);
    rows.push(("held", fmt_money(&r.held)));
    if r.admitted {
        rows.push(("started at", fmt_time_utc(r.started_at_ms)));
    }
    write_kv(out, &rows)
}

fn write_heartbeat(out: &mut dyn Write, r: &pb::HeartbeatResponse) -> Result<(), CtlError> {
    let mut rows = vec![("action", enum_name(r.action, pb::Action::as_str_name))];
    if r.reason != 0 {
        rows.push(("reason", deny_reason(r.reason)));
    }
    if r.stop_cause != 0 {
        rows.push(("stop cause", stop_cause(r.stop_cause)));
    }
    if r.stopped_at_ms != 0 {
        rows.push(("stopped at", fmt_time_utc(r.stopped_at_ms)));
    }
    write_kv(out, &rows)
}

fn write_access(out: &mut dyn Write, r: &pb::AccessResponse) -> Result<(), CtlError> {
    let perms = if r.permissions.is_empty() {
        "(none)".to_owned()
    } else {
        r.permissions.join(", ")
    };
    write_kv(
        out,
        &[
            ("account", r.account_id.clone()),
            ("sub-user", r.sub_user.clone()),
            ("permissions", perms),
        ],
    )
}

fn write_balance(out: &mut dyn Write, b: &pb::Balance) -> Result<(), CtlError> {
    write_kv(
        out,
        &[
            ("account", b.account_id.clone()),
            (
                "status",
                enum_name(b.status, pb::balance::AccountStatus::as_str_name),
            ),
            ("balance", fmt_money(&b.balance)),
            ("available", fmt_money(&b.available)),
            ("held", fmt_money(&b.held)),
        ],
    )?;
    writeln!(out)?;
    write_grants(out, &b.grants)?;
    if !b.sessions.is_empty() {
        writeln!(out)?;
        writeln!(out, "Exclusive sessions running on this quotad:")?;
        write_sessions(out, &b.sessions)?;
    }
    if !b.streams.is_empty() {
        writeln!(out)?;
        writeln!(out, "usage streams open on this quotad:")?;
        write_streams(out, &b.streams)?;
    }
    Ok(())
}

fn write_sessions<'s>(
    out: &mut dyn Write,
    sessions: impl IntoIterator<Item = &'s pb::SessionInfo>,
) -> Result<(), CtlError> {
    let mut t = Table::new(&[
        "SESSION",
        "SKU",
        "STARTED (UTC)",
        "AUTO-SHUTDOWN",
        "LAST BUSY (UTC)",
        "CHARGED",
        "ACCRUED",
        "HOURLY",
        "ACCRUES IDLE",
    ]);
    for s in sessions {
        let auto_shutdown = match (s.auto_shutdown, s.idle_timeout_ms) {
            (false, _) => "off".to_owned(),
            (true, ms) if ms <= 0 => "on".to_owned(),
            (true, ms) => format!("on, idle {}", fmt_duration_ms(ms)),
        };
        t.row(vec![
            s.session_id.clone(),
            s.sku.clone(),
            fmt_time(s.started_at_ms),
            auto_shutdown,
            fmt_time(s.last_busy_at_ms),
            fmt_money(&s.charged),
            fmt_money(&s.accrued),
            fmt_money(&s.hourly),
            yes_no(s.accrues_without_activity),
        ]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

fn write_streams(out: &mut dyn Write, streams: &[pb::WorkInfo]) -> Result<(), CtlError> {
    let mut t = Table::new(&["WORK", "SKU", "CHARGED", "HELD", "LAST SEQ"]);
    for w in streams {
        t.row(vec![
            w.work_id.clone(),
            w.sku.clone(),
            fmt_money(&w.charged),
            fmt_money(&w.held),
            w.last_seq.to_string(),
        ]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

/// One watched event on one line: time (UTC), kind, the grant, work or session it concerns,
/// the threshold crossed, the dropped count, then the server's message.
fn event_line(e: &pb::AccountEvent) -> String {
    use pb::account_event::Kind;
    let kind = Kind::try_from(e.kind).ok();
    let mut parts = vec![fmt_time(e.at_ms), enum_name(e.kind, Kind::as_str_name)];
    if !e.grant_id.is_empty() {
        let what = match kind {
            Some(Kind::WorkStopped) => "work",
            Some(Kind::SessionIdleShutdown | Kind::SessionStopped) => "session",
            Some(Kind::LowQuota | Kind::GrantExpiring | Kind::GrantExpired) => "grant",
            _ => "id",
        };
        parts.push(format!("{what} {}", e.grant_id));
    }
    if !e.threshold.is_empty() {
        match kind {
            // A lead time in milliseconds.
            Some(Kind::GrantExpiring) => match e.threshold.parse::<i64>() {
                Ok(ms) => parts.push(format!("within {}", fmt_duration_ms(ms))),
                Err(_) => parts.push(format!("threshold {}", e.threshold)),
            },
            _ => parts.push(format!("threshold {}", e.threshold)),
        }
    }
    if e.dropped != 0 || kind == Some(Kind::EventsDropped) {
        parts.push(format!("dropped {}", e.dropped));
    }
    if !e.message.is_empty() {
        parts.push(e.message.clone());
    }
    one_line(&parts.join("  "))
}

fn write_grants(out: &mut dyn Write, grants: &[pb::Grant]) -> Result<(), CtlError> {
    if grants.is_empty() {
        writeln!(out, "no grants")?;
        return Ok(());
    }
    let mut t = Table::new(&[
        "GRANT",
        "KIND",
        "COVERS",
        "QUOTA",
        "REMAINING",
        "UNIT",
        "STATE",
        "STARTS (UTC)",
        "EXPIRES (UTC)",
        "SOURCE",
    ]);
    for g in grants {
        let covers = if g.covers.is_empty() {
            "any".to_owned()
        } else {
            let names: Vec<String> = g.covers.iter().map(|&r| resource_name(r)).collect();
            names.join(",")
        };
        t.row(vec![
            g.grant_id.clone(),
            enum_name(g.kind, pb::grant::Kind::as_str_name),
            covers,
            g.quota.clone(),
            g.remaining.clone(),
            g.unit.clone(),
            enum_name(g.state, pb::grant::State::as_str_name),
            fmt_time(g.starts_at_ms),
            fmt_time(g.expires_at_ms),
            g.source.clone(),
        ]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

fn write_statement_reply(out: &mut dyn Write, s: &StatementReply) -> Result<(), CtlError> {
    if s.statement.entries.is_empty() {
        writeln!(out, "no charges for account {}", s.statement.account_id)?;
        return Ok(());
    }
    match s.by {
        StatementBy::Entry => write_statement(out, &s.statement, &s.currency),
        StatementBy::Day | StatementBy::Resource => write_statement_sums(out, s),
    }
}

/// One line per charge with what paid it, then the total.
fn write_statement(
    out: &mut dyn Write,
    st: &pb::Statement,
    currency: &str,
) -> Result<(), CtlError> {
    let mut t = Table::new(&[
        "AT (UTC)",
        "USAGE",
        "RESOURCE",
        "SKU",
        "QUANTITY",
        "COST",
        "PAID FROM",
    ]);
    for e in &st.entries {
        t.row(vec![
            fmt_time(e.at_ms),
            e.usage_id.clone(),
            resource_name(e.resource),
            e.sku.clone(),
            if e.free_quantity > 0 {
                format!("{} ({} free)", e.quantity, e.free_quantity)
            } else {
                e.quantity.to_string()
            },
            fmt_money(&e.cost),
            paid_from(e),
        ]);
    }
    out.write_all(t.render().as_bytes())?;
    let cur = st
        .entries
        .iter()
        .find_map(|e| e.cost.as_ref().map(|c| c.currency.as_str()))
        .unwrap_or(currency);
    let n = st.entries.len();
    match statement::total_cost(st) {
        Some(total) => writeln!(out, "total: {n} entries, {total} {cur}")?,
        None => writeln!(
            out,
            "total: {n} entries, cost not summed (a cost was unreadable)"
        )?,
    }
    if st.truncated {
        writeln!(
            out,
            "(older entries left out: the statement shows the latest {n})"
        )?;
    }
    Ok(())
}

/// "source:amount" per deduction; a volume plan's with its GB.
fn paid_from(e: &pb::StatementEntry) -> String {
    let deductions: Vec<String> = e
        .deductions
        .iter()
        .map(|d| {
            let amount = d.amount.as_ref().map_or("?", |m| m.amount.as_str());
            if !d.gb.is_empty() {
                return format!("{}:{} GB ({amount})", d.source, d.gb);
            }
            format!("{}:{amount}", d.source)
        })
        .collect();
    deductions.join(", ")
}

/// Statement entries summed per day and resource, or per resource (`statement::sums`).
fn write_statement_sums(out: &mut dyn Write, s: &StatementReply) -> Result<(), CtlError> {
    let (st, by, currency) = (&s.statement, s.by, s.currency.as_str());
    let sums = statement::sums(st, by, &s.calendar);
    let mut header = vec![
        "RESOURCE",
        "ENTRIES",
        "QUANTITY",
        "FREE",
        "LIST COST",
        "FROM GRANTS",
        "GB FROM PLANS",
        "FROM BALANCE",
    ];
    if by == StatementBy::Day {
        header.insert(0, "DAY");
    }
    let mut t = Table::new(&header);
    for ((day, resource), g) in &sums.groups {
        let mut row = vec![
            resource.clone(),
            g.entries.to_string(),
            g.quantity.to_string(),
            g.free_quantity.to_string(),
            format!("{} {currency}", g.cost),
            format!("{} {currency}", g.from_grants),
            g.gb_from_plans.normalize().to_string(),
            format!("{} {currency}", g.from_balance),
        ];
        if by == StatementBy::Day {
            row.insert(0, day.clone());
        }
        t.row(row);
    }
    out.write_all(t.render().as_bytes())?;
    let total = &sums.total;
    writeln!(
        out,
        "total: {} entries listing {} {currency}; paid {} {currency} from grants and {} {currency} from the balance",
        total.entries, total.cost, total.from_grants, total.from_balance
    )?;
    if sums.unreadable {
        writeln!(out, "(some amounts were unreadable and are left out)")?;
    }
    if st.truncated {
        writeln!(
            out,
            "(older entries left out: the statement holds only the latest ones)"
        )?;
    }
    Ok(())
}

/// What accrues on an account while nothing runs (R10), with the projection.
fn write_accruals(out: &mut dyn Write, b: &pb::Balance) -> Result<(), CtlError> {
    let Some(a) = &b.accruals else {
        writeln!(out, "this quotad does not report accruals")?;
        return Ok(());
    };
    let mut rows = vec![("account", b.account_id.clone())];
    rows.extend(storage_rows(a));
    rows.push((
        "sessions running",
        format!(
            "{} ({} with auto-shutdown disabled), {} per hour",
            a.sessions_running,
            a.sessions_without_auto_shutdown,
            fmt_money(&a.sessions_hourly)
        ),
    ));
    rows.push(("accrues per hour", fmt_money(&a.hourly)));
    let when = |ms: i64| {
        if ms == 0 {
            "not within a year".to_owned()
        } else {
            fmt_time_utc(ms)
        }
    };
    rows.push(("grants run short", when(a.grants_exhausted_at_ms)));
    rows.push(("balance runs out", when(a.balance_exhausted_at_ms)));
    write_kv(out, &rows)?;
    let mut idle = b
        .sessions
        .iter()
        .filter(|s| s.accrues_without_activity)
        .peekable();
    if idle.peek().is_some() {
        writeln!(out)?;
        writeln!(
            out,
            "sessions billing while nothing runs (auto-shutdown off, or idle):"
        )?;
        write_sessions(out, idle)?;
    }
    Ok(())
}

/// Stored GB, the GB a plan covers and what the rest costs per hour.
fn storage_rows(a: &pb::Accruals) -> Vec<(&'static str, String)> {
    if a.storage_reported_at_ms == 0 {
        return vec![("stored", "nothing reported".to_owned())];
    }
    let gb = |bytes: i64| {
        (rust_decimal::Decimal::from(bytes) / rust_decimal::Decimal::from(1_000_000_000))
            .normalize()
            .to_string()
    };
    vec![
        (
            "stored",
            format!(
                "{} GB (reported {})",
                gb(a.bytes_stored),
                fmt_time_utc(a.storage_reported_at_ms)
            ),
        ),
        (
            "covered by plan",
            format!("{} GB", gb(a.storage_covered_bytes)),
        ),
        (
            "charged",
            format!(
                "{} GB, {} per hour",
                gb(a.bytes_stored.saturating_sub(a.storage_covered_bytes)),
                fmt_money(&a.storage_hourly)
            ),
        ),
    ]
}

fn write_catalog(out: &mut dyn Write, c: &pb::Catalog) -> Result<(), CtlError> {
    let mut t = Table::new(&["SKU", "KIND", "RESOURCE", "PRICE", "UNIT", "DESCRIPTION"]);
    for s in &c.skus {
        t.row(vec![
            s.id.clone(),
            enum_name(s.kind, pb::sku::Kind::as_str_name),
            resource_name(s.resource),
            fmt_money(&s.unit_price),
            s.unit.clone(),
            s.description.clone(),
        ]);
    }
    Ok(out.write_all(t.render().as_bytes())?)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::billing::free_tier::{Calendar, Month};
    use crate::ctl::statement::keep_month;
    use crate::ctl::statement::tests::{cny, month_statement};

    fn text(f: impl FnOnce(&mut Vec<u8>) -> Result<(), CtlError>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn statement_reply(st: pb::Statement, by: StatementBy, cal: Calendar) -> StatementReply {
        StatementReply {
            statement: st,
            by,
            calendar: cal,
            currency: "CNY".into(),
        }
    }

    #[test]
    fn balance_view_lists_account_then_grants() {
        let b = pb::Balance {
            account_id: "acme".into(),
            status: pb::balance::AccountStatus::Active as i32,
            balance: cny("10"),
            available: cny("25.5"),
            held: cny("0"),
            grants: vec![pb::Grant {
                grant_id: "c1".into(),
                kind: pb::grant::Kind::Coupon as i32,
                covers: vec![
                    pb::Resource::GpuShared as i32,
                    pb::Resource::GpuExclusive as i32,
                ],
                quota: "20".into(),
                remaining: "15.5".into(),
                unit: "CNY".into(),
                starts_at_ms: 1_795_341_600_000,
                source: "coupon".into(),
                state: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let want = "\
account    acme
status     ACTIVE
balance    10 CNY
available  25.5 CNY
held       0 CNY

GRANT  KIND    COVERS                    QUOTA  REMAINING  UNIT  STATE  STARTS (UTC)         EXPIRES (UTC)  SOURCE
c1     COUPON  GPU_SHARED,GPU_EXCLUSIVE  20     15.5       CNY   ?42    2026-11-22 10:00:00  -              coupon
";
        assert_eq!(text(|o| Text.reply(o, &Reply::Balance(b))), want);
    }

    #[test]
    fn statement_lists_deductions_and_totals_costs() {
        let entry = |id: &str, cost: &str, from: &[(&str, &str)]| pb::StatementEntry {
            usage_id: id.into(),
            resource: pb::Resource::GpuShared as i32,
            sku: "gpu.shared.t4".into(),
            quantity: 1000,
            cost: cny(cost),
            deductions: from
                .iter()
                .map(|(s, a)| pb::Deduction {
                    source: s.to_string(),
                    amount: cny(a),
                    gb: String::new(),
                })
                .collect(),
            at_ms: 1_795_341_600_000,
            free_quantity: 0,
        };
        let st = pb::Statement {
            account_id: "acme".into(),
            truncated: false,
            entries: vec![
                entry("r1", "0.3", &[("c1", "0.1"), ("balance", "0.2")]),
                entry("r2", "0.0003", &[("balance", "0.0003")]),
            ],
        };
        let reply = statement_reply(st, StatementBy::Entry, Calendar::default());
        let text = text(|o| Text.reply(o, &Reply::Statement(reply)));
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].ends_with("0.3 CNY     c1:0.1, balance:0.2"),
            "{text}"
        );
        assert_eq!(lines[3], "total: 2 entries, 0.3003 CNY");
    }

    #[test]
    fn statement_sums_by_day_use_the_platforms_zone() {
        let reply = statement_reply(month_statement(), StatementBy::Day, Calendar::default());
        let text = text(|o| Text.reply(o, &Reply::Statement(reply)));
        let lines: Vec<&str> = text.lines().collect();
        // Traffic on Nov 30 (Shanghai): cost 1.5 + 0.5, 2 GB from the plan, 1.0 from the
        // balance; GET: 0.006 from a coupon, 400 free; storage falls on Dec 1.
        assert!(lines[1].starts_with("2026-11-30  REQUEST_GET  1"), "{text}");
        assert!(lines[1].contains("400"), "{text}");
        assert!(lines[2].starts_with("2026-11-30  TRAFFIC      2"), "{text}");
        assert!(lines[2].contains(" 2 CNY"), "{text}");
        assert!(lines[2].contains(" 2  "), "{text}");
        assert!(lines[2].ends_with(" 1 CNY"), "{text}");
        assert!(lines[3].starts_with("2026-12-01  STORAGE"), "{text}");
        assert_eq!(
            lines[4],
            "total: 4 entries listing 2.21 CNY; paid 0.006 CNY from grants and 1.2 CNY from the balance"
        );
    }

    #[test]
    fn statement_of_a_month_by_resource_keeps_that_months_entries() {
        let cal = Calendar::default();
        let mut st = month_statement();
        keep_month(&mut st, Month::parse("2026-11").unwrap(), &cal);
        let reply = statement_reply(st, StatementBy::Resource, cal);
        let text = text(|o| Text.reply(o, &Reply::Statement(reply)));
        assert!(!text.contains("STORAGE"), "{text}");
        assert!(
            text.lines().nth(2).unwrap().starts_with("TRAFFIC      2"),
            "{text}"
        );
    }

    #[test]
    fn statement_entries_show_gb_from_plans_and_free_requests() {
        let reply = statement_reply(month_statement(), StatementBy::Entry, Calendar::default());
        let text = text(|o| Text.reply(o, &Reply::Statement(reply)));
        // A volume plan's GB with the money they stand for; what free requests stand for.
        assert!(text.contains("t1/1:2 GB (1), balance:0.5"), "{text}");
        assert!(text.contains("1000 (400 free)"), "{text}");
        assert!(text.contains("free_tier:0.004, c1:0.006"), "{text}");
    }

    #[test]
    fn an_empty_statement_says_so_whatever_the_grouping() {
        for by in [StatementBy::Entry, StatementBy::Day, StatementBy::Resource] {
            let st = pb::Statement {
                account_id: "acme".into(),
                ..Default::default()
            };
            let reply = statement_reply(st, by, Calendar::default());
            let text = text(|o| Text.reply(o, &Reply::Statement(reply)));
            assert_eq!(text, "no charges for account acme\n");
        }
    }

    #[test]
    fn accruals_show_storage_sessions_and_when_money_runs_out() {
        let b = pb::Balance {
            account_id: "acme".into(),
            sessions: vec![pb::SessionInfo {
                session_id: "s1".into(),
                sku: "gpu.exclusive.a10.8c30g".into(),
                started_at_ms: 1_795_341_600_000,
                auto_shutdown: false,
                idle_timeout_ms: 1_200_000,
                last_busy_at_ms: 1_795_341_600_000,
                charged: cny("0"),
                accrued: cny("0"),
                hourly: cny("9.9"),
                accrues_without_activity: true,
            }],
            accruals: Some(pb::Accruals {
                bytes_stored: 150_000_000_000,
                storage_reported_at_ms: 1_795_341_600_000,
                storage_covered_bytes: 100_000_000_000,
                storage_hourly: cny("0.00833333"),
                sessions_hourly: cny("9.9"),
                sessions_running: 1,
                sessions_without_auto_shutdown: 1,
                hourly: cny("9.90833333"),
                grants_exhausted_at_ms: 1_795_341_600_000,
                balance_exhausted_at_ms: 0,
            }),
            ..pb::Balance::default()
        };
        let text = text(|o| Text.reply(o, &Reply::Accruals(b)));
        for want in [
            "stored            150 GB (reported 2026-11-22 10:00:00 UTC)",
            "covered by plan   100 GB",
            "charged           50 GB, 0.00833333 CNY per hour",
            "sessions running  1 (1 with auto-shutdown disabled), 9.9 CNY per hour",
            "accrues per hour  9.90833333 CNY",
            "grants run short  2026-11-22 10:00:00 UTC",
            "balance runs out  not within a year",
            "s1",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }

    /// An event of `kind` on acme at 2026-11-22 10:00:00 UTC.
    pub fn event(kind: pb::account_event::Kind) -> pb::AccountEvent {
        pb::AccountEvent {
            account_id: "acme".into(),
            kind: kind as i32,
            at_ms: 1_795_341_600_000,
            ..Default::default()
        }
    }

    #[test]
    fn event_lines_show_time_kind_subject_threshold_and_message() {
        use pb::account_event::Kind;
        let e = pb::AccountEvent {
            grant_id: "c1".into(),
            threshold: "0.2".into(),
            message: "coupon c1 has 15% of its quota left".into(),
            ..event(Kind::LowQuota)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  LOW_QUOTA  grant c1  threshold 0.2  \
             coupon c1 has 15% of its quota left"
        );
        let e = pb::AccountEvent {
            grant_id: "plan-1".into(),
            threshold: "86400000".into(),
            message: "expires tomorrow\nwith 3 CNY left".into(),
            ..event(Kind::GrantExpiring)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  GRANT_EXPIRING  grant plan-1  within 1d  \
             expires tomorrow with 3 CNY left"
        );
        let e = pb::AccountEvent {
            grant_id: "job-7".into(),
            message: "INSUFFICIENT_FUNDS".into(),
            ..event(Kind::WorkStopped)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  WORK_STOPPED  work job-7  INSUFFICIENT_FUNDS"
        );
        let e = pb::AccountEvent {
            grant_id: "s1".into(),
            ..event(Kind::SessionIdleShutdown)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  SESSION_IDLE_SHUTDOWN  session s1"
        );
        let e = pb::AccountEvent {
            dropped: 17,
            message: "watcher fell behind".into(),
            ..event(Kind::EventsDropped)
        };
        assert_eq!(
            event_line(&e),
            "2026-11-22 10:00:00  EVENTS_DROPPED  dropped 17  watcher fell behind"
        );
        let e = pb::AccountEvent {
            kind: 99,
            at_ms: 0,
            grant_id: "x".into(),
            ..Default::default()
        };
        assert_eq!(event_line(&e), "-  ?99  id x");
    }

    #[test]
    fn balance_view_adds_sessions_and_streams_when_there_are_any() {
        let b = pb::Balance {
            account_id: "acme".into(),
            status: pb::balance::AccountStatus::Active as i32,
            balance: cny("10"),
            available: cny("7"),
            held: cny("3"),
            sessions: vec![
                pb::SessionInfo {
                    session_id: "s1".into(),
                    sku: "gpu.excl.a100".into(),
                    started_at_ms: 1_795_341_600_000,
                    auto_shutdown: true,
                    idle_timeout_ms: 1_200_000,
                    last_busy_at_ms: 1_795_342_500_000,
                    charged: cny("0"),
                    accrued: cny("1.5"),
                    hourly: cny("6"),
                    accrues_without_activity: false,
                },
                pb::SessionInfo {
                    session_id: "s2".into(),
                    sku: "gpu.excl.h100".into(),
                    started_at_ms: 1_795_341_600_000,
                    auto_shutdown: false,
                    charged: cny("12"),
                    accrued: cny("0.2"),
                    hourly: cny("12"),
                    accrues_without_activity: true,
                    ..Default::default()
                },
            ],
            streams: vec![pb::WorkInfo {
                work_id: "job-7".into(),
                sku: "gpu.shared.t4".into(),
                charged: cny("0.018"),
                held: cny("0.0036"),
                last_seq: 42,
            }],
            ..Default::default()
        };
        let want = "\
account    acme
status     ACTIVE
balance    10 CNY
available  7 CNY
held       3 CNY

no grants

Exclusive sessions running on this quotad:
SESSION  SKU            STARTED (UTC)        AUTO-SHUTDOWN  LAST BUSY (UTC)      CHARGED  ACCRUED  HOURLY  ACCRUES IDLE
s1       gpu.excl.a100  2026-11-22 10:00:00  on, idle 20m   2026-11-22 10:15:00  0 CNY    1.5 CNY  6 CNY   no
s2       gpu.excl.h100  2026-11-22 10:00:00  off            -                    12 CNY   0.2 CNY  12 CNY  yes

usage streams open on this quotad:
WORK   SKU            CHARGED    HELD        LAST SEQ
job-7  gpu.shared.t4  0.018 CNY  0.0036 CNY  42
";
        assert_eq!(text(|o| Text.reply(o, &Reply::Balance(b.clone()))), want);

        // Neither section (nor its heading) without sessions or streams.
        let b = pb::Balance {
            sessions: vec![],
            streams: vec![],
            ..b
        };
        let text = text(|o| Text.reply(o, &Reply::Balance(b)));
        assert!(text.ends_with("held       3 CNY\n\nno grants\n"), "{text}");
    }

    #[test]
    fn fresh_ids_are_said_before_the_call() {
        let text = text(|o| Text.fresh_id(o, "top-up", "topup-1"));
        assert_eq!(text, "top-up id: topup-1\n");
    }
}
