//! Thin gRPC adapters: validate, convert, call the engine or the ledger, and map errors to
//! `Status` in one place (`error`).

pub mod admin;
pub mod convert;
pub mod elsewhere;
pub mod error;
pub mod ledger;
pub mod quota;
mod usage_stream;
mod webhooks;
