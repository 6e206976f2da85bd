//! An account event as a webhook delivers it: its stable id, its JSON body (Standard
//! Webhooks' `type` / `timestamp` / `data`), fixed when it is queued so every retry sends
//! and signs the same bytes.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::journal::JournaledEvent;
use crate::ledger::store::webhooks::QueuedEvent;

/// Every event kind an endpoint may ask for (`CreateWebhook.event_kinds`), plus the test
/// event `TestWebhook` sends.
pub const EVENT_KINDS: [&str; 8] = [
    "LOW_QUOTA",
    "GRANT_EXPIRING",
    "GRANT_EXPIRED",
    "OVERDUE",
    "RECOVERED",
    "WORK_STOPPED",
    "SESSION_IDLE_SHUTDOWN",
    "SESSION_STOPPED",
];
/// The kind of the event `TestWebhook` sends.
pub const TEST_KIND: &str = "WEBHOOK_TEST";

#[derive(Serialize)]
struct Body<'a> {
    r#type: String,
    timestamp: String,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    event_id: &'a str,
    account_id: &'a str,
    kind: &'a str,
    subject_id: &'a str,
    threshold: &'a str,
    message: &'a str,
    at_ms: i64,
}

/// The stable id of an event. A crossing of a grant (low quota at a threshold, expiring,
/// expired) happens once per grant, so its id leaves out the time: two sidecars that both
/// see it queue one event. The others (overdue, recovered, stops) may recur, so theirs
/// includes when.
pub fn event_id(e: &JournaledEvent) -> String {
    let once = matches!(
        e.kind.as_str(),
        "LOW_QUOTA" | "GRANT_EXPIRING" | "GRANT_EXPIRED"
    ) && !e.subject_id.is_empty();
    let at = if once {
        String::new()
    } else {
        e.at_ms.to_string()
    };
    let mut h = Sha256::new();
    for part in [
        e.account_id.as_str(),
        &e.kind,
        &e.subject_id,
        &e.threshold,
        &at,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let hex: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("evt_{hex}")
}

/// The JSON body of an event.
pub fn body(
    event_id: &str,
    account_id: &str,
    kind: &str,
    subject_id: &str,
    threshold: &str,
    message: &str,
    at_ms: i64,
) -> String {
    let timestamp = chrono::DateTime::from_timestamp_millis(at_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default();
    let b = Body {
        r#type: format!("account.{}", kind.to_ascii_lowercase()),
        timestamp,
        data: Data {
            event_id,
            account_id,
            kind,
            subject_id,
            threshold,
            message,
            at_ms,
        },
    };
    serde_json::to_string(&b).unwrap_or_default()
}

/// `e` ready for the outbox; `ordinal` orders it among the events found with it.
pub fn queued(e: &JournaledEvent, ordinal: i64) -> QueuedEvent {
    let id = event_id(e);
    let kind = e.kind.as_str();
    QueuedEvent {
        payload: body(
            &id,
            &e.account_id,
            kind,
            &e.subject_id,
            &e.threshold,
            &e.message,
            e.at_ms,
        ),
        event_id: id,
        account_id: e.account_id.clone(),
        kind: kind.to_owned(),
        at_ms: e.at_ms,
        ordinal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::alerts::AlertKind;
    use crate::engine::events::{Event, EventKind};

    fn ev(kind: EventKind, subject: &str, at_ms: i64) -> JournaledEvent {
        Event {
            account_id: "acme".into(),
            kind,
            subject_id: subject.into(),
            threshold: "0.2".into(),
            message: "m".into(),
            at_ms,
        }
        .journaled()
    }

    #[test]
    fn a_grant_crossing_has_one_id_whenever_it_is_seen() {
        let low = EventKind::Alert(AlertKind::LowQuota);
        assert_eq!(event_id(&ev(low, "g1", 1)), event_id(&ev(low, "g1", 2)));
        assert_ne!(event_id(&ev(low, "g1", 1)), event_id(&ev(low, "g2", 1)));
        let overdue = EventKind::Alert(AlertKind::Overdue);
        assert_ne!(event_id(&ev(overdue, "", 1)), event_id(&ev(overdue, "", 2)));
    }

    #[test]
    fn the_body_is_json_with_type_timestamp_and_data() {
        let q = queued(&ev(EventKind::Alert(AlertKind::LowQuota), "g1", 1_000), 0);
        let v: serde_json::Value = serde_json::from_str(&q.payload).unwrap();
        assert_eq!(v["type"], "account.low_quota");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:01.000Z");
        assert_eq!(v["data"]["event_id"], q.event_id.as_str());
        assert_eq!(v["data"]["account_id"], "acme");
    }
}
