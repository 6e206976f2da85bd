//! Watch as the engine serves it: the subscription, and alert detection (R7) on every
//! change of an account (a charge, a snapshot with a top-up or a grant) and on looks and
//! scans as time passes. A crossing is journaled in the account's memo before its event
//! is queued on the hub (`events`), which sends it once the memo is durable.

use tokio::sync::broadcast;

use super::account::Account;
use super::events::{Batch, Event, EventKind, WatchGuard};
use super::{Engine, EngineError};
use crate::billing::alerts;
use crate::journal::{Durable, Entry};

impl Engine {
    /// Subscribes to the account's events.
    pub async fn watch(
        &self,
        account_id: &str,
    ) -> Result<(broadcast::Receiver<Event>, WatchGuard), EngineError> {
        self.ensure_account(account_id).await?;
        let subscribed = self.events.subscribe(account_id)?;
        // Report crossings due by now (e.g. an expiry reached while nobody looked).
        self.check_account(account_id, self.now_ms());
        Ok(subscribed)
    }

    /// Events that went out to watchers (those of accounts nobody watched included).
    pub fn events_sent(&self) -> u64 {
        self.events.sent()
    }

    /// Hands every durable batch of events to `f` too (webhook delivery); `f` must not
    /// wait. Set once.
    pub fn forward_events(&self, f: impl Fn(Vec<Event>) + Send + Sync + 'static) {
        self.events.forward_to(Box::new(f));
    }

    pub fn watchers(&self) -> usize {
        self.events.watchers()
    }

    /// Under the account's lock: the alert crossings it made, journaled; the events go
    /// out once the journal has them.
    pub(super) fn alerts_locked(
        &self,
        a: &mut Account,
        account_id: &str,
        now_ms: i64,
    ) -> Option<Batch> {
        let currency = &self.catalog.currency;
        let (found, change) = alerts::detect(
            &self.cfg.alerts,
            &mut a.alert_memo,
            a.balance,
            &a.grants,
            |g| g.unit.label(currency),
            now_ms,
        );
        if change.is_empty() {
            return None;
        }
        let events: Vec<Event> = found
            .into_iter()
            .map(|al| Event {
                account_id: account_id.to_owned(),
                kind: EventKind::Alert(al.kind),
                subject_id: al.grant_id,
                threshold: al.threshold,
                message: al.message,
                at_ms: now_ms,
            })
            .collect();
        let durable = match self.journal.submit(Entry::Alerts {
            account_id: account_id.to_owned(),
            set: change.set.clone(),
            unset: change.unset.clone(),
            events: events.iter().map(Event::journaled).collect(),
        }) {
            Ok(d) => Some(d),
            Err(e) => {
                // Not fired: undo, so the next look finds the crossing again.
                tracing::warn!(account_id, error = %e, "alert memo not journaled; retried later");
                a.alert_memo.revert(&change);
                return None;
            }
        };
        Some(Batch { durable, events })
    }

    /// Sends what `alerts_locked` found (call after releasing the account's lock).
    pub(super) fn publish(&self, batch: Option<Batch>) {
        if let Some(b) = batch {
            self.events.publish(b.durable, b.events);
        }
    }

    /// Sends events about work or sessions once `durable` resolves.
    pub(super) fn publish_events(&self, durable: Option<Durable>, events: Vec<Event>) {
        self.events.publish(durable, events);
    }

    /// Looks for alert crossings on one cached account now.
    pub fn check_account(&self, account_id: &str, now_ms: i64) {
        let batch = match self.accounts.get_mut(account_id) {
            Some(mut a) => self.alerts_locked(&mut a, account_id, now_ms),
            None => None,
        };
        self.publish(batch);
    }
}
