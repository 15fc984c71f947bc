//! `ircap-collector audit`: the access trail the collector keeps (who
//! listed, showed, pulled or requested what, and when).

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use ircap_proto::v1::ListAuditRequest;

use super::{AnalystError, ServerArgs, query_time};
use crate::render::json;

/// `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only events about this capture.
    #[arg(long, value_name = "ID")]
    capture: Option<String>,
    /// Only events by this certificate identity.
    #[arg(long, value_name = "NAME")]
    identity: Option<String>,
    /// Only events at or after this time (`1h`, `7d`, or RFC 3339).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events carrying this case id.
    #[arg(long = "for-case", value_name = "CASE")]
    for_case: Option<String>,
    /// JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `audit`.
#[must_use]
pub fn run(args: AuditArgs) -> ExitCode {
    super::run(&args.server, audit(&args))
}

async fn audit(args: &AuditArgs) -> Result<ExitCode, AnalystError> {
    let since = query_time("--since", args.since.as_deref())?;
    let mut client = args.server.connect()?;
    let events = client
        .audit(ListAuditRequest {
            capture_id: args.capture.clone().unwrap_or_default(),
            identity: args.identity.clone().unwrap_or_default(),
            since,
            case_id: args.for_case.clone().unwrap_or_default(),
        })
        .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for e in &events {
            let _ = writeln!(out, "{}", json(e).unwrap_or_default());
        }
    } else {
        let _ = write!(out, "{}", crate::audit::table(&events));
    }
    Ok(ExitCode::SUCCESS)
}
