//! The analyst commands' client side: `list`, `show` and `pull` over the
//! same mutual TLS as agents, with an analyst certificate.
//!
//! `pull` downloads into `DIR/.<id>.partial/`, resumes from whatever is
//! already there, then verifies every hash with the same code as
//! `verify`; only a capture that verifies is renamed to `DIR/<id>`, so a
//! partial or damaged pull never looks complete.

use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ircap_proto::artifact_name::MANIFEST_FILE;
use ircap_proto::manifest::Manifest;
use ircap_proto::v1::capture_query_client::CaptureQueryClient;
use ircap_proto::v1::{CaptureInfo, GetManifestRequest, ListCapturesRequest, ReadArtifactRequest};
use ircap_proto::{ArtifactName, VerifyReport};
use tonic::transport::Channel;

use crate::render::{Table, escape};

/// Why an analyst command failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalystError {
    /// A local file problem.
    #[error("{context}: {source}")]
    Io {
        /// What and where.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The collector refused or failed.
    #[error("collector: {0}")]
    Rpc(String),
    /// Bad settings.
    #[error("{0}")]
    Config(String),
    /// The pulled capture does not verify.
    #[error("pulled capture does not verify: {}", .0.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Verify(VerifyReport),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AnalystError {
    let context = context.into();
    move |source| AnalystError::Io { context, source }
}

fn rpc(status: &tonic::Status) -> AnalystError {
    AnalystError::Rpc(format!("{:?}: {}", status.code(), status.message()))
}

/// Where the collector is and which analyst certificate to present.
pub use ircap_proto::client::MtlsSettings as ServerSettings;

/// Connects (lazily) with mutual TLS.
///
/// # Errors
/// [`AnalystError`] when a PEM file cannot be read or the URL is bad.
pub fn connect(s: &ServerSettings) -> Result<CaptureQueryClient<Channel>, AnalystError> {
    let channel =
        ircap_proto::client::mtls_channel(s).map_err(|e| AnalystError::Config(e.to_string()))?;
    Ok(CaptureQueryClient::new(channel).max_decoding_message_size(8 << 20))
}

/// Lists captures.
///
/// # Errors
/// [`AnalystError::Rpc`] when the collector refuses.
pub async fn list(
    client: &mut CaptureQueryClient<Channel>,
    filter: ListCapturesRequest,
) -> Result<Vec<CaptureInfo>, AnalystError> {
    let mut stream = client
        .list_captures(filter)
        .await
        .map_err(|s| rpc(&s))?
        .into_inner();
    let mut captures = Vec::new();
    while let Some(c) = stream.message().await.map_err(|s| rpc(&s))? {
        captures.push(c);
    }
    Ok(captures)
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

/// Fetches and parses a capture's manifest.
///
/// # Errors
/// [`AnalystError`] when the collector refuses or the manifest is invalid.
pub async fn manifest(
    client: &mut CaptureQueryClient<Channel>,
    id: &str,
) -> Result<(Manifest, Vec<u8>), AnalystError> {
    let bytes = client
        .get_manifest(GetManifestRequest {
            capture_id: id.to_owned(),
        })
        .await
        .map_err(|s| rpc(&s))?
        .into_inner()
        .manifest_json;
    let m = Manifest::from_slice(&bytes, "manifest from the collector")
        .map_err(|e| AnalystError::Rpc(e.to_string()))?;
    Ok((m, bytes))
}

/// The findings the collector computed at commit for capture `id`.
///
/// # Errors
/// [`AnalystError::Rpc`] when the collector refuses.
pub async fn findings(
    client: &mut CaptureQueryClient<Channel>,
    id: &str,
) -> Result<Vec<crate::triage::Finding>, AnalystError> {
    let bytes = client
        .get_manifest(GetManifestRequest {
            capture_id: id.to_owned(),
        })
        .await
        .map_err(|s| rpc(&s))?
        .into_inner()
        .findings_jsonl;
    Ok(crate::triage::parse_jsonl(&bytes))
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
        "ERRORS",
    ]);
    for a in &m.artifacts {
        rows.row([
            a.name.clone(),
            a.kind.clone(),
            a.record_count.map_or_else(|| "-".into(), |n| n.to_string()),
            human_bytes(a.size_stored),
            a.sha256_stored.clone(),
            a.error_count.to_string(),
        ]);
    }
    let receipt = m.collector_receipt.clone().unwrap_or_default();
    let field =
        |k: &str| escape(receipt.get(k).and_then(|v| v.as_str()).unwrap_or("-")).into_owned();
    let instance = escape(m.host.instance_id.as_deref().unwrap_or("-"));
    let mut out = format!(
        "capture {}\nhost {} (claimed; instance {}), kernel {}\ncaptured {} .. {}, agent {} pid {}, {} errors\n\n",
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
    out.push_str(&rows.render());
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

/// Downloads capture `id` into `dir/<id>`, resuming a partial pull, and
/// verifies it. Returns the final directory.
///
/// # Errors
/// [`AnalystError::Verify`] naming every damaged file (the download stays
/// in the hidden partial directory), or any transfer error.
pub async fn pull(
    client: &mut CaptureQueryClient<Channel>,
    id: &str,
    dir: &Path,
) -> Result<PathBuf, AnalystError> {
    let (m, manifest_bytes) = manifest(client, id).await?;
    let final_dir = dir.join(&m.capture_id);
    if final_dir.join(MANIFEST_FILE).exists() {
        return Err(AnalystError::Config(format!(
            "{} already exists",
            final_dir.display()
        )));
    }
    let partial = dir.join(format!(".{}.partial", m.capture_id));
    std::fs::create_dir_all(&partial)
        .map_err(io(format!("cannot create {}", partial.display())))?;
    let total: u64 = m.stored_bytes();
    let bar = progress(total);
    for a in &m.artifacts {
        let name = ArtifactName::parse(&a.name).map_err(|e| AnalystError::Rpc(e.to_string()))?;
        let path = name.path_in(&partial);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("cannot create {}", parent.display())))?;
        }
        let have = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(have <= a.size_stored)
            .write(true)
            .truncate(have > a.size_stored)
            .open(&path)
            .map_err(io(format!("cannot open {}", path.display())))?;
        let mut offset = if have > a.size_stored { 0 } else { have };
        bar.inc(offset);
        if offset < a.size_stored {
            let mut stream = client
                .read_artifact(ReadArtifactRequest {
                    capture_id: m.capture_id.clone(),
                    name: a.name.clone(),
                    offset,
                })
                .await
                .map_err(|s| rpc(&s))?
                .into_inner();
            while let Some(msg) = stream.message().await.map_err(|s| rpc(&s))? {
                if msg.offset != offset {
                    return Err(AnalystError::Rpc(format!(
                        "{}: data at offset {} while expecting {offset}",
                        a.name, msg.offset
                    )));
                }
                file.write_all(&msg.data)
                    .map_err(io(format!("cannot write {}", path.display())))?;
                offset += msg.data.len() as u64;
                bar.inc(msg.data.len() as u64);
            }
        }
        file.sync_all()
            .map_err(io(format!("cannot sync {}", path.display())))?;
    }
    bar.finish_and_clear();
    std::fs::write(partial.join(MANIFEST_FILE), &manifest_bytes).map_err(io(format!(
        "cannot write the manifest into {}",
        partial.display()
    )))?;
    let report =
        ircap_proto::verify_capture(&partial).map_err(|e| AnalystError::Rpc(e.to_string()))?;
    if !report.is_ok() {
        // Keep the evidence of what arrived, but never as a complete capture.
        let _ = std::fs::remove_file(partial.join(MANIFEST_FILE));
        return Err(AnalystError::Verify(report));
    }
    std::fs::rename(&partial, &final_dir)
        .map_err(io(format!("cannot rename to {}", final_dir.display())))?;
    Ok(final_dir)
}

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    {
        bar.set_style(style);
    }
    bar
}
