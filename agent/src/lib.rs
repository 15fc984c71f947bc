//! The ircap agent: captures the volatile state of a Linux host.
//!
//! [`capture::run`] collects artifacts in order of volatility (RFC 3227)
//! through the [`collect`] modules, writes each one through the
//! hash-while-writing [`artifact`] pipeline into a [`sink`], and finishes
//! with the manifest. Nothing here writes to the host's disks except the
//! sink the user asked for.

pub mod artifact;
pub mod capture;
pub mod cli;
pub mod collect;
pub mod daemon;
pub mod host_text;
pub mod options;
pub mod preflight;
pub mod priority;
pub mod protected;
pub mod sink;
pub mod timefmt;
