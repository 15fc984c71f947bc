//! `ircap-collector verify`: recompute every hash of a capture directory
//! on this machine against its manifest, and check the collector's signed
//! receipt; nothing is sent to the collector.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::render::{escape, print_json};

/// `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The capture directory (the one holding manifest.json).
    dir: PathBuf,
    /// The ircap CA certificate (PEM): the receipt must be signed by a
    /// receipt certificate it issued; a capture without a signed
    /// receipt then fails.
    #[arg(long, value_name = "CA_PEM")]
    ca: Option<PathBuf>,
}

/// Runs `verify`: exit 0 verified, 1 unreadable, 3 mismatch.
#[must_use]
pub fn run(args: &VerifyArgs) -> ExitCode {
    let (dir, ca) = (args.dir.as_path(), args.ca.as_deref());
    let ca_pem = match ca.map(std::fs::read).transpose() {
        Ok(pem) => pem,
        Err(e) => {
            tracing::error!("--ca {}: {e}", ca.unwrap_or(dir).display());
            return ExitCode::from(1);
        }
    };
    match ircap_proto::verify_capture_with(dir, ca_pem.as_deref()) {
        Ok(report) => {
            for p in &report.problems {
                tracing::error!("{}", escape(&p.to_string()));
            }
            tracing::info!("{}", escape(&report.receipt.to_string()));
            print_json(&report);
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(err) => {
            tracing::error!("{}", escape(&err.to_string()));
            ExitCode::from(1)
        }
    }
}
