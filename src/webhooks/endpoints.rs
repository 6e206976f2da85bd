//! Endpoints as operators manage them: checked on creation (an http URL, known event
//! kinds, account ids), with a fresh signing secret shown once.

use super::event::EVENT_KINDS;
use super::signature::{self, SignatureError};
use crate::ledger::store::StoreError;
use crate::ledger::store::webhooks::{WebhookRow, WebhookStore};

/// Most endpoints one ledger keeps.
pub const DEFAULT_WEBHOOKS_MAX: usize = 100;
/// Longest endpoint URL.
pub const URL_MAX_BYTES: usize = 2048;
/// Most accounts one endpoint may name.
pub const ACCOUNTS_PER_WEBHOOK_MAX: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook url {0:?} must be http://HOST[:PORT]/PATH (at most {URL_MAX_BYTES} bytes)")]
    BadUrl(String),
    #[error("unknown event kind {0:?}; kinds: {kinds}", kinds = EVENT_KINDS.join(", "))]
    UnknownKind(String),
    #[error("account id {0:?} is not valid in a webhook's accounts")]
    BadAccount(String),
    #[error("{0} accounts named; at most {ACCOUNTS_PER_WEBHOOK_MAX}")]
    TooManyAccounts(usize),
    #[error("{0} webhooks exist; at most {DEFAULT_WEBHOOKS_MAX}")]
    TooManyWebhooks(usize),
    #[error("webhook {0} does not exist")]
    Unknown(String),
    #[error(transparent)]
    Secret(#[from] SignatureError),
    #[error("ledger storage: {0}")]
    Store(#[from] StoreError),
}

/// What an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct NewWebhook {
    pub url: String,
    /// Empty: every kind.
    pub event_kinds: Vec<String>,
    /// Empty: every account.
    pub account_ids: Vec<String>,
}

fn check_url(url: &str) -> Result<(), WebhookError> {
    let bad = || WebhookError::BadUrl(url.to_owned());
    if url.len() > URL_MAX_BYTES {
        return Err(bad());
    }
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(())
}

fn check(w: &NewWebhook) -> Result<(), WebhookError> {
    check_url(&w.url)?;
    if let Some(k) = w
        .event_kinds
        .iter()
        .find(|k| !EVENT_KINDS.contains(&k.as_str()))
    {
        return Err(WebhookError::UnknownKind(k.clone()));
    }
    if w.account_ids.len() > ACCOUNTS_PER_WEBHOOK_MAX {
        return Err(WebhookError::TooManyAccounts(w.account_ids.len()));
    }
    if let Some(a) = w
        .account_ids
        .iter()
        .find(|a| a.is_empty() || a.len() > 128 || a.contains(','))
    {
        return Err(WebhookError::BadAccount(a.clone()));
    }
    Ok(())
}

fn new_id() -> Result<String, WebhookError> {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_err(|e| SignatureError::Random(e.to_string()))?;
    Ok(format!(
        "wh_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

/// Records a new endpoint; the row returned holds its secret (show it once).
pub async fn create(
    store: &dyn WebhookStore,
    mut w: NewWebhook,
    now_ms: i64,
) -> Result<WebhookRow, WebhookError> {
    w.event_kinds.sort();
    w.event_kinds.dedup();
    w.account_ids.sort();
    w.account_ids.dedup();
    check(&w)?;
    let n = store.webhooks(DEFAULT_WEBHOOKS_MAX).await?.len();
    if n >= DEFAULT_WEBHOOKS_MAX {
        return Err(WebhookError::TooManyWebhooks(n));
    }
    let row = WebhookRow {
        webhook_id: new_id()?,
        url: w.url,
        event_kinds: w.event_kinds,
        account_ids: w.account_ids,
        secret: signature::new_secret()?,
        created_at_ms: now_ms,
        last_success_at_ms: 0,
        last_failure_at_ms: 0,
        last_error: String::new(),
    };
    store.insert_webhook(row.clone()).await?;
    Ok(row)
}

/// The endpoint with this id.
pub async fn find(store: &dyn WebhookStore, webhook_id: &str) -> Result<WebhookRow, WebhookError> {
    store
        .webhooks(DEFAULT_WEBHOOKS_MAX)
        .await?
        .into_iter()
        .find(|w| w.webhook_id == webhook_id)
        .ok_or_else(|| WebhookError::Unknown(webhook_id.to_owned()))
}

/// What `TestWebhook` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub event_id: String,
    /// 0: no answer.
    pub http_status: u16,
    pub error: String,
}

/// Sends a signed `WEBHOOK_TEST` message to the endpoint now (not through the outbox).
pub async fn send_test(
    store: &dyn WebhookStore,
    webhook_id: &str,
    now_ms: i64,
    timeout: std::time::Duration,
) -> Result<TestResult, WebhookError> {
    let w = find(store, webhook_id).await?;
    let key = signature::key_of(&w.secret)?;
    let event_id = format!("evt_test_{now_ms}");
    let body = super::event::body(
        &event_id,
        "",
        super::event::TEST_KIND,
        webhook_id,
        "",
        "a test message from quotad",
        now_ms,
    );
    let timestamp_s = now_ms.div_euclid(1000);
    let signed = super::http::Signed {
        signature: signature::sign(&key, &event_id, timestamp_s, body.as_bytes()),
        webhook_id: event_id.clone(),
        timestamp_s,
    };
    let (http_status, error) = match super::http::post(&w.url, &signed, body, timeout).await {
        Ok(s) if (200..300).contains(&s) => (s, String::new()),
        Ok(s) => (s, format!("HTTP {s}")),
        Err(e) => (0, e),
    };
    Ok(TestResult {
        event_id,
        http_status,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(url: &str, kinds: &[&str]) -> NewWebhook {
        NewWebhook {
            url: url.into(),
            event_kinds: kinds.iter().map(|k| k.to_string()).collect(),
            account_ids: vec![],
        }
    }

    #[test]
    fn urls_and_kinds_are_checked() {
        assert!(check(&hook("http://127.0.0.1:9/hook", &["LOW_QUOTA"])).is_ok());
        assert!(check(&hook("http://example.com", &[])).is_ok());
        for bad in ["ftp://x/", "https://x/", "not a url", "http:///x", ""] {
            assert!(
                matches!(check(&hook(bad, &[])), Err(WebhookError::BadUrl(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            check(&hook("http://x/", &["LOW"])),
            Err(WebhookError::UnknownKind(_))
        ));
    }
}
