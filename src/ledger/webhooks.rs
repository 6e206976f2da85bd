//! The ledger's webhook tables (endpoints, the outbox): reached through here by the
//! webhook endpoints' admin calls and the delivery worker (`crate::webhooks`), and by
//! nothing else of the store.

use std::sync::Arc;

use super::Ledger;
use super::store::webhooks::WebhookStore;

impl Ledger {
    /// The webhook endpoints and outbox of this ledger's store.
    pub fn webhook_store(&self) -> Arc<dyn WebhookStore> {
        self.store.clone()
    }
}
