//! The end-to-end suite: real `ircap-agent` and `ircap-collector` binaries,
//! real certificates on loopback, SeaweedFS, QEMU guests. One test binary
//! with one module per subject, so the workspace links it once; shared
//! fixtures live in the `ircap-e2e` library (`tests/src/`).
//!
//! Filter by module or name: `cargo test -p ircap-e2e --test e2e s3::`,
//! `... lab_` (the QEMU labs, which `tests/run.sh` runs on their own).

mod analyst;
mod collector_security;
mod connection_errors;
mod custody;
mod daemon;
mod deb;
mod inproc;
mod lab_aarch64;
mod lab_memory;
mod lab_systemd;
mod memory_upload;
mod readme;
mod s3;
mod s3_docs;
mod ssm;
mod static_agent;
mod systemd_units;
mod triage;
mod upload;
mod verify;
mod yara;
