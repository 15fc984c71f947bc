//! The ircap collector: receives captures from agents over mutual-TLS gRPC,
//! verifies every hash, stores them, and serves analysts.

pub mod pki;
