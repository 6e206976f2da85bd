//! The seam between calling quotad and printing the answer. A command's `call` returns a
//! `Reply` (what the server answered, plus what the command asked for its display); a
//! `Render` prints it. Output formats differ only in their `Render`.

use std::io::Write;

use super::CtlError;
use super::statement::StatementBy;
use crate::billing::free_tier::Calendar;
use crate::pb;

/// What a command answered.
#[derive(Debug, Clone)]
pub enum Reply {
    /// An account's balance view (create-account, top-up, balance).
    Balance(pb::Balance),
    Purchased(pb::PurchaseResponse),
    /// A granted credit.
    Grant(pb::Grant),
    Statement(StatementReply),
    /// What accrues while nothing runs: the balance view carries it.
    Accruals(pb::Balance),
    StorageReported {
        account: String,
        bytes_stored: u64,
    },
    Catalog(pb::Catalog),
    Reserved(pb::ReserveResponse),
    Committed(pb::CommitResponse),
    Released(pb::ReleaseResponse),
    Admitted(pb::AdmitResponse),
    /// A watch ended (its events were rendered as they came).
    WatchEnded {
        events: u64,
    },
    SessionStarted(pb::StartSessionResponse),
    Heartbeat(pb::HeartbeatResponse),
    SessionStopped(pb::StopSessionResponse),
    TokenCreated(pb::CreateTokenResponse),
    /// One value alone on its line, for scripts (`create-token --quiet`: the token).
    Line(String),
    /// Rows under named columns (list-accounts, list-tokens, list-access).
    Listing(super::list::Listing),
    TokenRevoked(pb::RevokeTokenResponse),
    /// A sub-user's permissions after grant-access or revoke-access.
    Access(pb::AccessResponse),
    /// The bootstrap Envoy runs, and the id of the proxy token made for it.
    EnvoyBootstrap {
        yaml: String,
        token_id: String,
    },
    /// A shell completion script.
    Script(String),
    /// A webhook command's answer.
    Webhook(super::webhook::WebhookReply),
}

/// A statement with how the command was asked to show it.
#[derive(Debug, Clone)]
pub struct StatementReply {
    /// Already cut to the month asked for, if any.
    pub statement: pb::Statement,
    pub by: StatementBy,
    /// The platform's calendar: days and months are in its zone.
    pub calendar: Calendar,
    /// --currency: what sums are labelled with.
    pub currency: String,
}

/// An output format.
pub trait Render {
    /// A fresh id made for the operator, said before the call that uses it so a failed
    /// call can be retried with the same id.
    fn fresh_id(&self, out: &mut dyn Write, label: &str, id: &str) -> Result<(), CtlError>;

    /// One watched event, as it arrives (flushed: a watch runs until stopped).
    fn event(&self, out: &mut dyn Write, event: &pb::AccountEvent) -> Result<(), CtlError>;

    /// A command's answer.
    fn reply(&self, out: &mut dyn Write, reply: &Reply) -> Result<(), CtlError>;
}
