//! `ircap-collector pull`: download a capture, resuming a partial
//! download, and verify every hash (the download itself is
//! [`AnalystClient::pull`](super::AnalystClient::pull)).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{AnalystError, ServerArgs};
use crate::render::{escape, print_json};

/// `pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Capture id.
    id: String,
    /// Directory that receives <id>/ [default: .].
    dir: Option<PathBuf>,
}

/// Runs `pull`: exit 0 with the verified directory, 3 naming every
/// damaged file when the capture does not verify.
#[must_use]
pub fn run(args: PullArgs) -> ExitCode {
    super::run(&args.server, pull(&args))
}

async fn pull(args: &PullArgs) -> Result<ExitCode, AnalystError> {
    let mut client = args.server.connect()?;
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    match client.pull(&args.id, &dir).await {
        Ok(dir) => {
            tracing::info!(dir = %dir.display(), "Capture pulled and verified");
            print_json(
                &serde_json::json!({ "status": "verified", "path": dir.display().to_string() }),
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(AnalystError::Verify(report)) => {
            for p in &report.problems {
                tracing::error!("{}", escape(&p.to_string()));
            }
            print_json(&report);
            Ok(ExitCode::from(3))
        }
        Err(err) => Err(err),
    }
}
