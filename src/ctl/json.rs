//! The JSON output (`--output json`), for scripts: one JSON object per line on stdout.
//!
//! A command's answer is the proto message the server answered, in the proto3 JSON
//! mapping with the proto's field names (`account_id`, `expires_at_ms`; enums by name,
//! 64-bit integers as strings, every scalar field present, an unset message absent): the
//! proto's names are its contract (never renamed), so these are too. What only ctl
//! computes has its own structs below, with names kept as stable. `watch` prints one
//! `AccountEvent` per line as it arrives.
//! Nothing else goes to stdout: a fresh id is not printed (pass `--id` to retry).

use std::io::Write;

use serde::Serialize;

use super::CtlError;
use super::list::Listing;
use super::reply::{Render, Reply, StatementReply};
use super::statement::{self, StatementBy, Sums};
use super::webhook::WebhookReply;
use crate::pb;

/// JSON for scripts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Render for Json {
    fn fresh_id(&self, _out: &mut dyn Write, _label: &str, _id: &str) -> Result<(), CtlError> {
        Ok(())
    }

    fn event(&self, out: &mut dyn Write, event: &pb::AccountEvent) -> Result<(), CtlError> {
        line(out, event)?;
        Ok(out.flush()?)
    }

    fn reply(&self, out: &mut dyn Write, reply: &Reply) -> Result<(), CtlError> {
        match reply {
            Reply::Balance(b) | Reply::Accruals(b) => line(out, b),
            Reply::Purchased(r) => line(out, r),
            Reply::Grant(g) => line(out, g),
            Reply::Statement(s) => statement_reply(out, s),
            Reply::StorageReported {
                account,
                bytes_stored,
            } => line(
                out,
                &StorageReported {
                    account_id: account,
                    bytes_stored: *bytes_stored,
                },
            ),
            Reply::Catalog(c) => line(out, c),
            Reply::Reserved(r) => line(out, r),
            Reply::Committed(r) => line(out, r),
            Reply::Released(r) => line(out, r),
            Reply::Admitted(r) => line(out, r),
            // Its events were printed as they came, one per line.
            Reply::WatchEnded { .. } => Ok(()),
            Reply::SessionStarted(r) => line(out, r),
            Reply::Heartbeat(r) => line(out, r),
            Reply::SessionStopped(r) => line(out, r),
            Reply::TokenCreated(r) => line(out, r),
            Reply::TokenRevoked(r) => line(out, r),
            Reply::Access(r) => line(out, r),
            Reply::EnvoyBootstrap { yaml, token_id } => line(
                out,
                &EnvoyBootstrap {
                    bootstrap_yaml: yaml,
                    token_id,
                },
            ),
            Reply::Script(script) => line(out, &Script { script }),
            Reply::Webhook(w) => webhook_reply(out, w),
            // `create-token --quiet`: the token alone, as a JSON string.
            Reply::Line(l) => line(out, l),
            Reply::Listing(l) => line(out, &listing(l)),
        }
    }
}

/// `webhook create|list|test`: the Admin answer; `webhook delete`: what was deleted.
fn webhook_reply(out: &mut dyn Write, reply: &WebhookReply) -> Result<(), CtlError> {
    match reply {
        WebhookReply::Created(r) => line(out, r),
        WebhookReply::Listed(r) => line(out, r),
        WebhookReply::Tested(r) => line(out, r),
        WebhookReply::Deleted {
            webhook_id,
            deleted,
        } => line(
            out,
            &WebhookDeleted {
                webhook_id,
                deleted: *deleted,
            },
        ),
    }
}

/// `list-accounts`, `list-tokens`, `list-access`: one object per row, keyed by the
/// listing's column names, and whether the server left rows out.
fn listing(l: &Listing) -> serde_json::Value {
    let rows = l
        .rows
        .iter()
        .map(|row| {
            let fields = l.columns.iter().zip(row);
            serde_json::Value::Object(
                fields
                    .map(|(c, v)| ((*c).to_owned(), serde_json::Value::String(v.clone())))
                    .collect(),
            )
        })
        .collect();
    serde_json::json!({ "rows": serde_json::Value::Array(rows), "more": l.more })
}

/// `webhook delete`: the endpoint and whether it existed.
#[derive(Serialize)]
struct WebhookDeleted<'a> {
    webhook_id: &'a str,
    deleted: bool,
}

/// `value` as one line of JSON.
fn line(out: &mut dyn Write, value: &impl Serialize) -> Result<(), CtlError> {
    serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from)?;
    Ok(writeln!(out)?)
}

/// `report-storage`: the level recorded.
#[derive(Serialize)]
struct StorageReported<'a> {
    account_id: &'a str,
    bytes_stored: u64,
}

/// `envoy-config`: the bootstrap and the proxy token made for it.
#[derive(Serialize)]
struct EnvoyBootstrap<'a> {
    bootstrap_yaml: &'a str,
    token_id: &'a str,
}

/// `completions` (only when not run from `quotad ctl`, which prints the script itself).
#[derive(Serialize)]
struct Script<'a> {
    script: &'a str,
}

/// `statement --by day` and `--by resource`: the entries summed.
#[derive(Serialize)]
struct StatementSums<'a> {
    account_id: &'a str,
    /// "day" or "resource".
    by: &'static str,
    currency: &'a str,
    groups: Vec<Group>,
    total: Total,
    /// Some amount could not be read and is left out of the sums.
    unreadable: bool,
    /// Older entries were left out by the server.
    truncated: bool,
}

/// One group's sums: `day` (YYYY-MM-DD in the platform's zone) only `--by day`.
#[derive(Serialize)]
struct Group {
    #[serde(skip_serializing_if = "Option::is_none")]
    day: Option<String>,
    resource: String,
    #[serde(flatten)]
    sums: SumsJson,
}

/// Sums; amounts as decimal strings in `currency`, quantities as integers.
#[derive(Serialize)]
struct SumsJson {
    entries: usize,
    quantity: u128,
    free_quantity: u128,
    cost: String,
    from_grants: String,
    gb_from_plans: String,
    from_balance: String,
}

/// Over all groups: entries and money (quantities of different resources do not add up).
#[derive(Serialize)]
struct Total {
    entries: usize,
    cost: String,
    from_grants: String,
    from_balance: String,
}

impl From<&Sums> for SumsJson {
    fn from(s: &Sums) -> Self {
        SumsJson {
            entries: s.entries,
            quantity: s.quantity,
            free_quantity: s.free_quantity,
            cost: s.cost.to_string(),
            from_grants: s.from_grants.to_string(),
            gb_from_plans: s.gb_from_plans.normalize().to_string(),
            from_balance: s.from_balance.to_string(),
        }
    }
}

/// `--by entry`: the statement as the server answered it (cut to --month); else sums.
fn statement_reply(out: &mut dyn Write, s: &StatementReply) -> Result<(), CtlError> {
    let by = match s.by {
        StatementBy::Entry => return line(out, &s.statement),
        StatementBy::Day => "day",
        StatementBy::Resource => "resource",
    };
    let sums = statement::sums(&s.statement, s.by, &s.calendar);
    let groups = sums
        .groups
        .iter()
        .map(|((day, resource), g)| Group {
            day: (s.by == StatementBy::Day).then(|| day.clone()),
            resource: resource.clone(),
            sums: g.into(),
        })
        .collect();
    let t = &sums.total;
    let total = Total {
        entries: t.entries,
        cost: t.cost.to_string(),
        from_grants: t.from_grants.to_string(),
        from_balance: t.from_balance.to_string(),
    };
    line(
        out,
        &StatementSums {
            account_id: &s.statement.account_id,
            by,
            currency: &s.currency,
            groups,
            total,
            unreadable: sums.unreadable,
            truncated: s.statement.truncated,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::free_tier::Calendar;

    fn json(f: impl FnOnce(&mut Vec<u8>) -> Result<(), CtlError>) -> serde_json::Value {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn money(amount: &str) -> Option<pb::Money> {
        Some(pb::Money {
            currency: "CNY".into(),
            amount: amount.into(),
        })
    }

    #[test]
    fn replies_are_the_proto_messages_with_proto_field_names() {
        let r = pb::ReserveResponse {
            admitted: false,
            reason: pb::DenyReason::InsufficientFunds.into(),
            available: money("0.5"),
            expires_at_ms: 1_795_341_600_000,
            ..Default::default()
        };
        let v = json(|o| Json.reply(o, &Reply::Reserved(r)));
        assert_eq!(v["admitted"], false);
        assert_eq!(v["reason"], "INSUFFICIENT_FUNDS");
        assert_eq!(v["available"]["amount"], "0.5");
        assert_eq!(v["available"]["currency"], "CNY");
        assert_eq!(v["expires_at_ms"], "1795341600000");
        assert_eq!(v["fail_open"], false, "defaults are present: {v}");
    }

    #[test]
    fn fresh_ids_print_nothing_and_events_are_one_line_each() {
        let mut out = Vec::new();
        Json.fresh_id(&mut out, "top-up", "topup-1").unwrap();
        assert!(out.is_empty());
        let e = pb::AccountEvent {
            account_id: "acme".into(),
            kind: pb::account_event::Kind::LowQuota.into(),
            ..Default::default()
        };
        let v = json(|o| Json.event(o, &e));
        assert_eq!(
            (v["account_id"].as_str(), v["kind"].as_str()),
            (Some("acme"), Some("LOW_QUOTA"))
        );
    }

    #[test]
    fn statement_sums_by_day_carry_day_resource_and_amounts() {
        let entry = |usage: &str, at_ms: i64| pb::StatementEntry {
            usage_id: usage.into(),
            resource: pb::Resource::GpuShared.into(),
            sku: "gpu.shared.a10".into(),
            quantity: 1000,
            cost: money("0.6"),
            deductions: vec![pb::Deduction {
                source: "balance".into(),
                amount: money("0.6"),
                ..Default::default()
            }],
            at_ms,
            ..Default::default()
        };
        let statement = pb::Statement {
            account_id: "acme".into(),
            entries: vec![
                entry("u1", 1_795_341_600_000),
                entry("u2", 1_795_341_700_000),
            ],
            truncated: false,
        };
        let reply = Reply::Statement(StatementReply {
            statement,
            by: StatementBy::Day,
            calendar: Calendar::default(),
            currency: "CNY".into(),
        });
        let v = json(|o| Json.reply(o, &reply));
        assert_eq!(v["by"], "day");
        let g = &v["groups"][0];
        assert_eq!(g["day"], "2026-11-22");
        assert_eq!(g["resource"], "GPU_SHARED");
        assert_eq!(
            (g["entries"].as_u64(), g["quantity"].as_u64()),
            (Some(2), Some(2000))
        );
        assert_eq!(g["cost"], "1.2");
        assert_eq!(v["total"]["from_balance"], "1.2");
    }
}
