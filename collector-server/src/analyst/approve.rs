//! `ircap-collector approve`: approve a request that waits for a second
//! analyst (serve --approvals); the requester cannot approve their own.

use std::process::ExitCode;

use clap::Args;

use super::ServerArgs;
use crate::render::{escape, print_json};

/// `approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The request id `request` printed.
    request_id: String,
}

/// Runs `approve`.
#[must_use]
pub fn run(args: ApproveArgs) -> ExitCode {
    super::run(&args.server, async {
        let mut client = args.server.connect()?;
        let done = client.approve(&args.request_id).await?;
        tracing::info!(
            request_id = done.request_id,
            requested_by = escape(&done.requested_by).as_ref(),
            "Request approved; it is delivered from now"
        );
        print_json(&serde_json::json!({
            "request_id": done.request_id,
            "status": "approved",
            "requested_by": done.requested_by,
            "approved_by": done.approved_by,
            "approved_at": done.approved_at,
            "expires_at": done.expires_at,
        }));
        Ok(ExitCode::SUCCESS)
    })
}
