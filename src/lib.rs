//! quotad: a low-latency quota-enforcement sidecar for GPU platforms.
//!
//! Layout:
//! - `billing`: the platform's billing rules as pure functions (money, catalog, grants,
//!   burn-down, account status, purchases, alert crossings, the Exclusive session clock,
//!   storage levels, volume plans, the monthly free tier, accrual projections).
//!   No I/O, no tokio, no prost types.
//! - `engine`: the sidecar's in-memory admission: cached entitlement per account, holds,
//!   Reserve / Commit / Release / Admit; `engine::work` meters running jobs,
//!   `engine::sessions` bills Exclusive instances, `engine::storage` meters stored levels
//!   hourly and reports accruals, `engine::events` feeds Watch; `engine::sync` pushes
//!   usage to the ledger.
//! - `journal`: local durability of everything the sidecar acknowledged: an append-only
//!   file of checksummed records, group-committed and compacted (`journal::codec`).
//! - `ledger`: the authoritative record and its rules, over a store (`ledger::sqlite`),
//!   reached by the engine only through `ledger::LedgerApi`.
//! - `envoy`: quotad behind Envoy: ext_authz Check (a Reserve per HTTP request) and the
//!   access log service that charges each finished request once; the HTTP mapping; the
//!   bootstrap `ctl envoy-config` prints.
//! - `grpc`: thin adapters from the wire to the engine and the ledger; one error map.
//! - `lock`: one process per data directory (an exclusive lock file).
//! - `bootstrap`: the first operator token, the sidecar's id and ledger token check.
//! - `server`: wiring, limits, health, reflection and the shutdown order.
//! - `config`: settings from flags, environment and the TOML file, with one precedence.
//! - `guard`: the layer in front of every RPC: request ids, load shedding, latency.
//! - `logging`: the servers' log lines and the request each is logged in.
//! - `auth`: tokens, principals and permissions (R9); its layer authenticates every RPC.
//! - `metrics`: the prometheus-client registry, OpenMetrics encoding, process metrics and
//!   the /metrics, /healthz and /readyz endpoint.
//! - `telemetry`: what a sidecar and a ledger export at scrape time and check for /readyz.
//! - `ctl`: the operator command line.
//! - `clock`: injected time.
//! - `tls`: optional TLS and mTLS (rustls) of the servers and their clients.
//! - `webhooks`: account events delivered as signed webhooks from the ledger's outbox.
//! - `pb`: generated protobuf and gRPC code for `quotad.v1`; `pb_codec` decodes its
//!   messages from one slice.

#![forbid(unsafe_code)]

pub mod auth;
pub mod billing;
pub mod bootstrap;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod engine;
pub mod envoy;
pub mod grpc;
pub mod guard;
pub mod journal;
pub mod ledger;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod pb_codec;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod webhooks;

/// Generated code for proto/quotad/v1, and its descriptor set for reflection.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("quotad.v1");
    // serde for every message and enum (proto3 JSON mapping, proto field names), for
    // `ctl --output json`.
    include!(concat!(env!("OUT_DIR"), "/quotad.v1.serde.rs"));
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quotad_descriptor");
}
