//! `ircap-collector list`: captures as a table or JSON Lines, filtered by
//! certificate identity, claimed hostname or instance id, time, case and
//! YARA matches.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use ircap_proto::v1::{CaptureInfo, ListCapturesRequest};

use super::{AnalystError, ServerArgs, human_bytes, query_time};
use crate::render::{Table, json};

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only captures uploaded with the certificate identity NAME (the
    /// identity the collector recorded, never a claimed hostname).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Only captures whose manifest claims this hostname.
    #[arg(long, value_name = "HOSTNAME")]
    claimed_hostname: Option<String>,
    /// Only captures whose manifest claims this EC2 instance id.
    #[arg(long)]
    instance_id: Option<String>,
    /// Only captures started at or after this time: a duration back
    /// from now (`1h`, `7d`, `2w`) or an RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only captures started at or before this time (same forms).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Also list captures that were never committed.
    #[arg(long)]
    incomplete: bool,
    /// JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Only captures whose YARA scan matched (reads each capture's
    /// manifest and `yara_matches` table).
    #[arg(long)]
    yara_matched: bool,
}

/// Runs `list`.
#[must_use]
pub fn run(args: ListArgs) -> ExitCode {
    super::run(&args.server, list(&args))
}

async fn list(args: &ListArgs) -> Result<ExitCode, AnalystError> {
    let since = query_time("--since", args.since.as_deref())?;
    let until = query_time("--until", args.until.as_deref())?;
    let mut client = args.server.connect()?;
    let captures = client
        .list(ListCapturesRequest {
            host: args.host.clone().unwrap_or_default(),
            claimed_hostname: args.claimed_hostname.clone().unwrap_or_default(),
            instance_id: args.instance_id.clone().unwrap_or_default(),
            since,
            until,
            include_incomplete: args.incomplete,
            // `list --case X` lists that case's captures.
            case_id: args.server.case.clone().unwrap_or_default(),
        })
        .await?;
    let mut yara = BTreeMap::new();
    if args.yara_matched {
        for c in captures.iter().filter(|c| c.status == "complete") {
            let s = client.yara_summary(&c.capture_id).await?;
            if s.matches > 0 {
                yara.insert(c.capture_id.clone(), s);
            }
        }
    }
    let captures: Vec<_> = captures
        .into_iter()
        .filter(|c| !args.yara_matched || yara.contains_key(&c.capture_id))
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json && args.yara_matched {
        for c in &captures {
            let mut line = capture_json(c);
            line["yara"] = serde_json::to_value(yara.get(&c.capture_id)).unwrap_or_default();
            let _ = writeln!(out, "{}", json(&line).unwrap_or_default());
        }
    } else if args.json {
        for c in &captures {
            let _ = writeln!(out, "{}", json(&capture_json(c)).unwrap_or_default());
        }
    } else {
        let _ = write!(out, "{}", list_table(&captures));
    }
    Ok(ExitCode::SUCCESS)
}

fn capture_json(c: &CaptureInfo) -> serde_json::Value {
    serde_json::json!({
        "capture_id": c.capture_id,
        "agent": c.agent,
        "hostname": c.hostname,
        "instance_id": (!c.instance_id.is_empty()).then_some(&c.instance_id),
        "started_at": c.started_at,
        "ended_at": c.ended_at,
        "stored_bytes": c.stored_bytes,
        "artifacts": c.artifacts,
        "status": c.status,
        "committed_at": c.committed_at,
        "findings": c.findings,
        "case": c.case_id,
    })
}

fn duration(start: &str, end: &str) -> String {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    match (
        OffsetDateTime::parse(start, &Rfc3339),
        OffsetDateTime::parse(end, &Rfc3339),
    ) {
        (Ok(a), Ok(b)) => format!("{:.1}s", (b - a).as_seconds_f64()),
        _ => "-".into(),
    }
}

/// Renders captures as a table (host text escaped).
#[must_use]
pub fn list_table(captures: &[CaptureInfo]) -> String {
    let mut rows = Table::new(&[
        "ID",
        "HOST (claimed)",
        "AGENT",
        "INSTANCE (claimed)",
        "STARTED",
        "DURATION",
        "SIZE",
        "ARTIFACTS",
        "STATUS",
        "FINDINGS",
    ]);
    for c in captures {
        rows.row([
            c.capture_id.clone(),
            c.hostname.clone(),
            c.agent.clone(),
            if c.instance_id.is_empty() {
                "-".into()
            } else {
                c.instance_id.clone()
            },
            c.started_at.clone(),
            duration(&c.started_at, &c.ended_at),
            human_bytes(c.stored_bytes),
            c.artifacts.to_string(),
            c.status.clone(),
            crate::triage::counts_text(&c.findings.clone().into_iter().collect()),
        ]);
    }
    rows.render()
}
