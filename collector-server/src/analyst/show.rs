//! `ircap-collector show`: a capture's manifest and chain of custody, the
//! findings the collector computed at commit and the capture's access
//! history; or, with `--json`, the stored manifest itself.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use ircap_proto::manifest::Manifest;

use super::{AnalystError, ServerArgs, human_bytes};
use crate::render::{Table, escape, json};

/// `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Capture id.
    id: String,
    /// The manifest JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `show`.
#[must_use]
pub fn run(args: ShowArgs) -> ExitCode {
    super::run(&args.server, show(&args))
}

async fn show(args: &ShowArgs) -> Result<ExitCode, AnalystError> {
    let id = &args.id;
    let mut client = args.server.connect()?;
    let (manifest, bytes) = client.manifest(id).await?;
    let mut out = std::io::stdout().lock();
    if args.json && std::io::IsTerminal::is_terminal(&out) {
        // The same document, with terminal controls escaped.
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| AnalystError::Rpc(e.to_string()))?;
        let _ = writeln!(out, "{}", json(&value).unwrap_or_default());
    } else if args.json {
        // Byte for byte the stored manifest, for machines.
        let _ = out.write_all(&bytes);
    } else {
        let found = client.findings(id).await?;
        let _ = write!(out, "{}", show_text(&manifest));
        let _ = write!(
            out,
            "\nfindings ({}, computed by the collector at commit)\n{}",
            crate::triage::counts_text(&crate::triage::counts(&found)),
            crate::triage::table(&found)
        );
        let history = client
            .audit(ircap_proto::v1::ListAuditRequest {
                capture_id: manifest.capture_id.clone(),
                ..Default::default()
            })
            .await?;
        let _ = write!(
            out,
            "\naccess history ({} events)\n{}",
            history.len(),
            crate::audit::table(&history)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders a manifest: artifacts and chain of custody (host text escaped).
#[must_use]
pub fn show_text(m: &Manifest) -> String {
    let mut rows = Table::new(&[
        "ARTIFACT",
        "KIND",
        "RECORDS",
        "SIZE",
        "SHA256 (stored)",
        "SHA256 (original, if gzipped)",
        "ERRORS",
    ]);
    for a in &m.artifacts {
        rows.row([
            a.name.clone(),
            a.kind.clone(),
            a.record_count.map_or_else(|| "-".into(), |n| n.to_string()),
            human_bytes(a.size_stored),
            a.sha256_stored.clone(),
            if a.sha256_uncompressed.is_empty() || a.sha256_uncompressed == a.sha256_stored {
                "-".into()
            } else {
                a.sha256_uncompressed.clone()
            },
            a.error_count.to_string(),
        ]);
    }
    let receipt = m.collector_receipt.clone().unwrap_or_default();
    let field =
        |k: &str| escape(receipt.get(k).and_then(|v| v.as_str()).unwrap_or("-")).into_owned();
    let instance = escape(m.host.instance_id.as_deref().unwrap_or("-"));
    let status = serde_json::to_value(m.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut out = format!(
        "capture {} ({status})\nhost {} (claimed; instance {}), kernel {}\ncaptured {} .. {}, agent {} pid {}, {} errors\n\n",
        escape(&m.capture_id),
        escape(&m.host.hostname),
        instance,
        escape(&m.host.kernel_release),
        escape(&m.started_at),
        escape(&m.ended_at),
        escape(&m.agent.version),
        m.agent.pid,
        m.error_count,
    );
    if let Some(labels) = m.options.get("labels").and_then(|l| l.as_object())
        && !labels.is_empty()
    {
        let text: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        out.push_str(&format!("labels {}\n\n", escape(&text.join(", "))));
    }
    out.push_str(&rows.render());
    out.push_str(&error_list(m));
    out.push_str(&format!(
        "\nchain of custody\n  agent identity     {}\n  certificate sha256 {}\n  ssm command id     {}\n  instance id        {} (claimed)\n  collector opened   {}\n  collector verified {} ({})\n",
        field("peer_identity"),
        field("peer_certificate_sha256"),
        escape(m.ssm_command_id.as_deref().unwrap_or("-")),
        instance,
        field("opened_at"),
        field("committed_at"),
        field("verification"),
    ));
    out
}

/// How many error lines `show` prints before pointing at `--json`.
const SHOWN_ERRORS: usize = 50;

/// The capture's errors, then each artifact's, one escaped line each.
fn error_list(m: &Manifest) -> String {
    let lines: Vec<String> = m
        .errors
        .iter()
        .map(|e| format!("{}: {}", escape(&e.source), escape(&e.message)))
        .chain(m.artifacts.iter().flat_map(|a| {
            a.errors
                .iter()
                .map(move |e| format!("{}: {}", escape(&a.name), escape(e)))
        }))
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nerrors ({} recorded)\n",
        m.error_count.max(lines.len() as u64)
    );
    for line in lines.iter().take(SHOWN_ERRORS) {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    if lines.len() > SHOWN_ERRORS {
        out.push_str(&format!(
            "  ... and {} more (show --json lists them all)\n",
            lines.len() - SHOWN_ERRORS
        ));
    }
    out
}
