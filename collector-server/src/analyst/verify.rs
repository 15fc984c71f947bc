//! `ircap-collector verify`: recompute every hash of a capture directory
//! on this machine against its manifest, and check the collector's signed
//! receipt; nothing is sent to the collector.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

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

/// Runs `verify`: exit 0 verified, 1 unreadable, 3 mismatch (the same
/// command as `ircap-agent verify`).
#[must_use]
pub fn run(args: &VerifyArgs) -> ExitCode {
    ExitCode::from(ircap_proto::verify::run_verify_command(
        &args.dir,
        args.ca.as_deref(),
    ))
}
