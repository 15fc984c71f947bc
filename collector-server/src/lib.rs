//! The ircap collector: receives captures from agents over mutual-TLS gRPC,
//! verifies every chunk and artifact hash as bytes arrive, stores captures
//! through the evidence layer ([`store::evidence::Evidence`], over a file
//! or S3 blob layer) and marks them complete only when the manifest
//! matches everything received.

pub mod analyst;
pub mod audit;
pub mod auth;
pub mod capture_lock;
pub mod control;
pub mod ingest;
pub mod metrics;
pub mod pki;
pub mod query;
pub mod quota;
pub mod receipt;
pub mod render;
pub mod serve;
pub mod service;
pub mod status;
pub mod store;
pub mod stored_digest;
pub mod symbols;
pub mod timefmt;
pub mod triage;
