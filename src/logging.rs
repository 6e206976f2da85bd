//! The log lines of `quotad serve` and `quotad ledger`, and the request each line is
//! logged in. Every RPC runs with its method and request id in a task-local
//! (`RequestLog::scope`, set by the guard), not in a tracing span: a span at INFO is
//! created, its fields formatted and stored, entered and left on every call whether or
//! not anything is logged, which cost an Admit about a tenth of its time. The task-local
//! is moved in and out on each poll (no allocation, no formatting), and only a line that
//! is actually written reads it: text lines end with `rpc=... request_id=...`, JSON lines
//! carry `"rpc"` and `"request_id"` keys.

use std::fmt;

use tokio::task::futures::TaskLocalFuture;
use tonic::codegen::http;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The request a piece of work runs for: what its log lines name.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// The RPC's path (`/quotad.v1.Quota/Admit`); shared with the request, not copied.
    pub rpc: Option<http::uri::PathAndQuery>,
    /// The request id (the client's `x-request-id` or a made one): printable ASCII.
    pub request_id: http::HeaderValue,
}

tokio::task_local! {
    static REQUEST: RequestLog;
}

impl RequestLog {
    /// Runs `fut` with this request as the one its log lines name.
    pub fn scope<F: Future>(self, fut: F) -> TaskLocalFuture<RequestLog, F> {
        REQUEST.scope(self, fut)
    }

    /// The request the running code serves, if it runs inside one.
    pub fn with_current<R>(f: impl FnOnce(&RequestLog) -> R) -> Option<R> {
        REQUEST.try_with(f).ok()
    }

    fn rpc(&self) -> &str {
        self.rpc.as_ref().map_or("", |p| p.path())
    }

    fn id(&self) -> &str {
        // Ids are checked or made printable ASCII.
        self.request_id.to_str().unwrap_or("?")
    }
}

/// Sets up logging as the servers do: `RUST_LOG`, else info, to stderr, as text or JSON.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.fmt_fields(TextFields).init(),
        LogFormat::Json => fmt
            .json()
            .event_format(JsonLines(Format::default().json().with_current_span(true)))
            .init(),
    }
}

/// Text lines: the standard fields, then the request's if the line is logged in one.
/// (quotad makes no spans, so only events' fields are formatted here.)
pub struct TextFields;

impl<'w> FormatFields<'w> for TextFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut w: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        DefaultFields::new().format_fields(w.by_ref(), fields)?;
        RequestLog::with_current(|r| write!(w, " rpc={} request_id={}", r.rpc(), r.id()))
            .unwrap_or(Ok(()))
    }
}

/// JSON lines: the standard object, with `rpc` and `request_id` added if the line is
/// logged in a request (formatted into a buffer only then).
pub struct JsonLines(pub Format<Json>);

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(extra) = RequestLog::with_current(json_keys) else {
            return self.0.format_event(ctx, w, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(object) => writeln!(w, "{object}{extra}}}"),
            None => w.write_str(&line),
        }
    }
}

/// `,"rpc":"...","request_id":"..."` (JSON-escaped).
fn json_keys(r: &RequestLog) -> String {
    let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"?\"".to_owned());
    format!(",\"rpc\":{},\"request_id\":{}", s(r.rpc()), s(r.id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer, as a subscriber's `MakeWriter`.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    fn request(id: &'static str) -> RequestLog {
        RequestLog {
            rpc: Some(http::uri::PathAndQuery::from_static(
                "/quotad.v1.Quota/Admit",
            )),
            request_id: http::HeaderValue::from_static(id),
        }
    }

    /// One line logged outside a request, one inside (also after an await), one error.
    async fn log_some() {
        tracing::info!(n = 1, "outside");
        request("req-\"7\"")
            .scope(async {
                tracing::info!(n = 2, "inside");
                tokio::task::yield_now().await;
                tracing::error!("failed");
            })
            .await;
    }

    #[tokio::test]
    async fn text_lines_in_a_request_name_it() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .fmt_fields(TextFields)
            .finish();
        let _g = tracing::subscriber::set_default(sub);
        log_some().await;
        let lines = buf.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].ends_with("outside n=1"), "{lines:?}");
        let named = " rpc=/quotad.v1.Quota/Admit request_id=req-\"7\"";
        assert!(
            lines[1].ends_with(&format!("inside n=2{named}")),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("ERROR") && lines[2].ends_with(named),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn json_lines_in_a_request_name_it() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .json()
            .event_format(JsonLines(Format::default().json().with_current_span(true)))
            .finish();
        let _g = tracing::subscriber::set_default(sub);
        log_some().await;
        let lines: Vec<serde_json::Value> = buf
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["fields"]["message"], "outside");
        assert!(lines[0].get("request_id").is_none(), "{lines:?}");
        for l in &lines[1..] {
            assert_eq!(l["rpc"], "/quotad.v1.Quota/Admit", "{l}");
            assert_eq!(l["request_id"], "req-\"7\"", "{l}");
        }
        assert_eq!(lines[2]["level"], "ERROR");
    }
}
