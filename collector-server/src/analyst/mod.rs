//! The analyst commands' client side: `list`, `show` and `pull` over the
//! same mutual TLS as agents, with an analyst certificate.
//!
//! `pull` downloads into `DIR/.<id>.partial/`, resumes from whatever is
//! already there, then verifies every hash with the same code as
//! `verify`; only a capture that verifies is renamed to `DIR/<id>`, so a
//! partial or damaged pull never looks complete.

use ircap_proto::manifest::Manifest;
use ircap_proto::v1::CaptureInfo;

use crate::render::{Table, escape};

mod client;

pub use client::{AnalystClient, AnalystError, ServerSettings, YaraSummary, is_final};

/// A `--since`/`--until` value as the RFC 3339 text the collector's
/// query takes: a duration back from now (`1h`, `7d`) or an RFC 3339 time;
/// empty when the flag was not given.
///
/// # Errors
/// [`AnalystError::Config`] naming the option.
pub fn query_time(option: &str, value: Option<&str>) -> Result<String, AnalystError> {
    value.map_or(Ok(String::new()), |v| {
        ircap_proto::units::since_rfc3339(v, std::time::SystemTime::now())
            .map_err(|e| AnalystError::Config(format!("{option}: {e}")))
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS.get(unit).unwrap_or(&"B"))
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
