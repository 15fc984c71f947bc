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
    /// A call to the collector failed (refused, or never reached it).
    #[error("{}", ircap_proto::explain::status(.0, ""))]
    Call(Box<tonic::Status>),
    /// Bad settings.
    #[error("{0}")]
    Config(String),
    /// The pull's destination already holds that capture.
    #[error("{} already exists: pull into another directory, or remove it first", .0.display())]
    Exists(PathBuf),
    /// The pulled capture does not verify.
    #[error("pulled capture does not verify: {}", .0.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Verify(VerifyReport),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> AnalystError {
    let context = context.into();
    move |source| AnalystError::Io { context, source }
}

pub(crate) fn rpc(status: &tonic::Status) -> AnalystError {
    AnalystError::Call(Box::new(status.clone()))
}

impl AnalystError {
    /// The error in one line, naming the collector at `url` where the
    /// cause is a connection or TLS failure.
    #[must_use]
    pub fn explain(&self, url: &str) -> String {
        match self {
            Self::Call(status) => ircap_proto::explain::status(status, url),
            other => other.to_string(),
        }
    }
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

/// Lists captures.
///
/// # Errors
/// [`AnalystError::Rpc`] when the collector refuses.
pub async fn list(
    client: &mut CaptureQueryClient<Channel>,
    filter: ListCapturesRequest,
) -> Result<Vec<CaptureInfo>, AnalystError> {
    let mut stream = client
        .list_captures(tagged(filter))
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
    let bytes = manifest_response(client, id).await?.manifest_json;
    let m = Manifest::from_slice(&bytes, "manifest from the collector")
        .map_err(|e| AnalystError::Rpc(e.to_string()))?;
    Ok((m, bytes))
}

/// `GetManifest` for the capture `id` names (a whole id or a unique
/// prefix).
async fn manifest_response(
    client: &mut CaptureQueryClient<Channel>,
    id: &str,
) -> Result<ircap_proto::v1::GetManifestResponse, AnalystError> {
    let capture_id = resolve_id(client, id).await?;
    Ok(client
        .get_manifest(tagged(GetManifestRequest { capture_id }))
        .await
        .map_err(|s| rpc(&s))?
        .into_inner())
}

/// The case id and reason this process's analyst calls carry (set once
/// from `--case` / `--reason`), sent as metadata on every call so the
/// collector records them in the access trail whatever the call.
static CASE: std::sync::OnceLock<(Option<String>, Option<String>)> = std::sync::OnceLock::new();

/// Sets the case id and reason every later call carries (first call wins).
pub fn set_case(case: Option<String>, reason: Option<String>) {
    let _ = CASE.set((case, reason));
}

/// `msg` as a request carrying the case id and reason, if any.
pub fn tagged<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some((case, reason)) = CASE.get() {
        if let Some(v) = case.as_deref().and_then(|c| c.parse().ok()) {
            req.metadata_mut().insert(crate::audit::CASE_HEADER, v);
        }
        if let Some(r) = reason {
            req.metadata_mut().insert_bin(
                crate::audit::REASON_HEADER,
                tonic::metadata::MetadataValue::from_bytes(r.as_bytes()),
            );
        }
    }
    req
}

/// The access trail the collector keeps (oldest first).
///
/// # Errors
/// [`AnalystError::Rpc`] when the collector refuses.
pub async fn audit(
    client: &mut CaptureQueryClient<Channel>,
    filter: ircap_proto::v1::ListAuditRequest,
) -> Result<Vec<crate::audit::AuditEvent>, AnalystError> {
    let mut stream = client
        .list_audit(tagged(filter))
        .await
        .map_err(|s| rpc(&s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await.map_err(|s| rpc(&s))? {
        let e = serde_json::from_str(&r.json).map_err(|e| AnalystError::Rpc(e.to_string()))?;
        out.push(e);
    }
    Ok(out)
}

/// The length of a whole capture id (a UUID in its text form).
const FULL_ID_LEN: usize = 36;

/// The whole capture id that `id` names: `id` itself when it is whole,
/// else the one committed capture whose id starts with it (a trailing
/// `…` or `...`, as shortened ids are printed, is ignored).
///
/// # Errors
/// [`AnalystError::Rpc`] when no capture or more than one starts with the
/// prefix; [`AnalystError::Config`] when it is too short to mean anything.
pub async fn resolve_id(
    client: &mut CaptureQueryClient<Channel>,
    id: &str,
) -> Result<String, AnalystError> {
    let prefix = id
        .trim()
        .trim_end_matches('…')
        .trim_end_matches("...")
        .to_ascii_lowercase();
    if prefix.len() >= FULL_ID_LEN {
        return Ok(prefix);
    }
    if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(AnalystError::Config(format!(
            "capture id {id:?}: give the whole id or a unique prefix of at least 4 hex digits"
        )));
    }
    let matches: Vec<String> = list(
        client,
        ListCapturesRequest {
            include_incomplete: true,
            ..ListCapturesRequest::default()
        },
    )
    .await?
    .into_iter()
    .map(|c| c.capture_id)
    .filter(|c| c.starts_with(&prefix))
    .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(AnalystError::Rpc(format!(
            "no capture id starts with {prefix:?} (see `ircap-collector list --incomplete`)"
        ))),
        many => Err(AnalystError::Rpc(format!(
            "{} capture ids start with {prefix:?} ({}{}): give more of the id",
            many.len(),
            many.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if many.len() > 5 { ", ..." } else { "" }
        ))),
    }
}

/// The findings the collector computed at commit for capture `id`.
///
/// # Errors
/// [`AnalystError::Rpc`] when the collector refuses.
pub async fn findings(
    client: &mut CaptureQueryClient<Channel>,
    id: &str,
) -> Result<Vec<crate::triage::Finding>, AnalystError> {
    let bytes = manifest_response(client, id).await?.findings_jsonl;
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
    let response = manifest_response(client, id).await?;
    let manifest_bytes = response.manifest_json;
    let m = Manifest::from_slice(&manifest_bytes, "manifest from the collector")
        .map_err(|e| AnalystError::Rpc(e.to_string()))?;
    let final_dir = dir.join(&m.capture_id);
    if final_dir.join(MANIFEST_FILE).exists() {
        return Err(AnalystError::Exists(final_dir));
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
                .read_artifact(tagged(ReadArtifactRequest {
                    capture_id: m.capture_id.clone(),
                    name: a.name.clone(),
                    offset,
                }))
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
    let receipt = [
        response.receipt_json,
        response.receipt_sig,
        response.receipt_cert_pem,
    ];
    if receipt.iter().all(|f| !f.is_empty()) {
        for (name, bytes) in ircap_proto::receipt::RECEIPT_FILES.iter().zip(&receipt) {
            let path = partial.join(name);
            std::fs::write(&path, bytes).map_err(io(format!("cannot write {}", path.display())))?;
        }
    }
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

/// Most bytes of a `yara_matches` table read for a summary (stored and
/// decompressed): a hostile agent's table cannot make the analyst's
/// command hold more.
const YARA_TABLE_MAX: u64 = 16 << 20;
/// Most rule names listed in a summary.
const YARA_RULES_MAX: usize = 100;

/// What a capture's YARA scan found, from its manifest and its
/// `yara_matches` table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct YaraSummary {
    /// The capture had a YARA scan.
    pub scanned: bool,
    /// Rows of `yara_matches` (each a rule matched in one region or file).
    pub matches: u64,
    /// Names of the rules that matched (at most 100).
    pub rules: Vec<String>,
    /// The scan was cut by a budget (the capture's errors say how).
    pub cut: bool,
}

/// The YARA summary of capture `capture_id`.
///
/// # Errors
/// [`AnalystError`] when the collector refuses.
pub async fn yara_summary(
    client: &mut CaptureQueryClient<Channel>,
    capture_id: &str,
) -> Result<YaraSummary, AnalystError> {
    let (m, _) = manifest(client, capture_id).await?;
    let table = m
        .artifacts
        .iter()
        .find(|a| a.name == "yara_matches.jsonl.gz");
    let mut summary = YaraSummary {
        scanned: table.is_some(),
        matches: table.and_then(|a| a.record_count).unwrap_or(0),
        rules: Vec::new(),
        cut: m.errors.iter().any(|e| e.source == "yara_matches"),
    };
    let Some(table) = table else {
        return Ok(summary);
    };
    if summary.matches == 0 {
        return Ok(summary);
    }
    let mut stream = client
        .read_artifact(ReadArtifactRequest {
            capture_id: m.capture_id.clone(),
            name: table.name.clone(),
            offset: 0,
        })
        .await
        .map_err(|s| rpc(&s))?
        .into_inner();
    let mut gz = Vec::new();
    while let Some(msg) = stream.message().await.map_err(|s| rpc(&s))? {
        gz.extend_from_slice(&msg.data);
        if gz.len() as u64 >= YARA_TABLE_MAX {
            break;
        }
    }
    let mut text = Vec::new();
    let _ = std::io::Read::read_to_end(
        &mut std::io::Read::take(
            flate2::read::MultiGzDecoder::new(gz.as_slice()),
            YARA_TABLE_MAX,
        ),
        &mut text,
    );
    let mut rules = std::collections::BTreeSet::new();
    for line in text.split(|&b| b == b'\n') {
        #[derive(serde::Deserialize)]
        struct Row {
            rule: String,
        }
        if let Ok(row) = serde_json::from_slice::<Row>(line)
            && rules.len() < YARA_RULES_MAX
        {
            rules.insert(row.rule);
        }
    }
    summary.rules = rules.into_iter().collect();
    Ok(summary)
}
