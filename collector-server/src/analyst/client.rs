//! [`AnalystClient`]: the analyst commands' one connection to the
//! collector. It owns both generated clients (captures and requests) over
//! one mutual-TLS channel, tags every call with the case id and reason,
//! and returns ircap's own types and [`AnalystError`].
//!
//! `pull` downloads into `DIR/.<id>.partial/`, resumes from whatever is
//! already there, then verifies every hash with the same code as
//! `verify`; only a capture that verifies is renamed to `DIR/<id>`, so a
//! partial or damaged pull never looks complete.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ircap_proto::artifact_name::MANIFEST_FILE;
use ircap_proto::manifest::Manifest;
use ircap_proto::v1::capture_query_client::CaptureQueryClient;
use ircap_proto::v1::capture_requests_client::CaptureRequestsClient;
use ircap_proto::v1::{
    AgentInfo, ApproveRequestRequest, ApproveRequestResponse, ArtifactData, CaptureInfo,
    CreateRequestRequest, CreateRequestResponse, GetManifestRequest, GetManifestResponse,
    ListAgentsRequest, ListAuditRequest, ListCapturesRequest, ListResultsRequest,
    ReadArtifactRequest, RequestResult,
};
use ircap_proto::{ArtifactName, VerifyReport};
use tonic::transport::Channel;

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

fn rpc(status: &tonic::Status) -> AnalystError {
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

/// The length of a whole capture id (a UUID in its text form).
const FULL_ID_LEN: usize = 36;

/// How often `wait` and `wait_first` ask for results.
const WAIT_POLL: Duration = Duration::from_millis(500);

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

/// Whether a result is final.
#[must_use]
pub fn is_final(r: &RequestResult) -> bool {
    matches!(
        r.status.as_str(),
        "complete" | "partial" | "failed" | "refused"
    )
}

/// The collector as an analyst sees it: captures, their artifacts and
/// access trail, requests and connected agents.
#[derive(Debug, Clone)]
pub struct AnalystClient {
    query: CaptureQueryClient<Channel>,
    requests: CaptureRequestsClient<Channel>,
    /// The case id every call carries (`--case`), if any.
    case: Option<String>,
    /// Why (`--reason`), recorded with the case id.
    reason: Option<String>,
}

impl AnalystClient {
    /// Connects (lazily) with mutual TLS; every call then carries `case`
    /// and `reason` as metadata, so the collector records them in the
    /// access trail whatever the call.
    ///
    /// # Errors
    /// [`AnalystError::Config`] when a PEM file cannot be read or the URL
    /// is bad.
    pub fn connect(
        s: &ServerSettings,
        case: Option<String>,
        reason: Option<String>,
    ) -> Result<Self, AnalystError> {
        let channel = ircap_proto::client::mtls_channel(s)
            .map_err(|e| AnalystError::Config(e.to_string()))?;
        Ok(Self {
            query: CaptureQueryClient::new(channel.clone()).max_decoding_message_size(8 << 20),
            requests: CaptureRequestsClient::new(channel),
            case,
            reason,
        })
    }

    /// `msg` as a request carrying the case id and reason, if any.
    fn tagged<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Some(v) = self.case.as_deref().and_then(|c| c.parse().ok()) {
            req.metadata_mut().insert(crate::audit::CASE_HEADER, v);
        }
        if let Some(r) = &self.reason {
            req.metadata_mut().insert_bin(
                crate::audit::REASON_HEADER,
                tonic::metadata::MetadataValue::from_bytes(r.as_bytes()),
            );
        }
        req
    }

    /// Lists captures.
    ///
    /// # Errors
    /// [`AnalystError::Call`] when the collector refuses.
    pub async fn list(
        &mut self,
        filter: ListCapturesRequest,
    ) -> Result<Vec<CaptureInfo>, AnalystError> {
        let request = self.tagged(filter);
        all(self.query.list_captures(request).await).await
    }

    /// Fetches and parses a capture's manifest.
    ///
    /// # Errors
    /// [`AnalystError`] when the collector refuses or the manifest is invalid.
    pub async fn manifest(&mut self, id: &str) -> Result<(Manifest, Vec<u8>), AnalystError> {
        let bytes = self.manifest_response(id).await?.manifest_json;
        let m = Manifest::from_slice(&bytes, "manifest from the collector")
            .map_err(|e| AnalystError::Rpc(e.to_string()))?;
        Ok((m, bytes))
    }

    /// `GetManifest` for the capture `id` names (a whole id or a unique
    /// prefix).
    async fn manifest_response(&mut self, id: &str) -> Result<GetManifestResponse, AnalystError> {
        let capture_id = self.resolve_id(id).await?;
        let request = self.tagged(GetManifestRequest { capture_id });
        Ok(self
            .query
            .get_manifest(request)
            .await
            .map_err(|s| rpc(&s))?
            .into_inner())
    }

    /// The access trail the collector keeps (oldest first).
    ///
    /// # Errors
    /// [`AnalystError`] when the collector refuses or sends an event that
    /// does not parse.
    pub async fn audit(
        &mut self,
        filter: ListAuditRequest,
    ) -> Result<Vec<crate::audit::AuditEvent>, AnalystError> {
        let request = self.tagged(filter);
        all(self.query.list_audit(request).await)
            .await?
            .iter()
            .map(|r| serde_json::from_str(&r.json).map_err(|e| AnalystError::Rpc(e.to_string())))
            .collect()
    }

    /// The whole capture id that `id` names: `id` itself when it is whole,
    /// else the one committed capture whose id starts with it (a trailing
    /// `…` or `...`, as shortened ids are printed, is ignored).
    ///
    /// # Errors
    /// [`AnalystError::Rpc`] when no capture or more than one starts with
    /// the prefix; [`AnalystError::Config`] when it is too short to mean
    /// anything.
    pub async fn resolve_id(&mut self, id: &str) -> Result<String, AnalystError> {
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
        let matches: Vec<String> = self
            .list(ListCapturesRequest {
                include_incomplete: true,
                ..ListCapturesRequest::default()
            })
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
    /// [`AnalystError::Call`] when the collector refuses.
    pub async fn findings(
        &mut self,
        id: &str,
    ) -> Result<Vec<crate::triage::Finding>, AnalystError> {
        let bytes = self.manifest_response(id).await?.findings_jsonl;
        Ok(crate::triage::parse_jsonl(&bytes))
    }

    /// Downloads capture `id` into `dir/<id>`, resuming a partial pull, and
    /// verifies it. Returns the final directory.
    ///
    /// # Errors
    /// [`AnalystError::Verify`] naming every damaged file (the download
    /// stays in the hidden partial directory), or any transfer error.
    pub async fn pull(&mut self, id: &str, dir: &Path) -> Result<PathBuf, AnalystError> {
        let response = self.manifest_response(id).await?;
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
            let name =
                ArtifactName::parse(&a.name).map_err(|e| AnalystError::Rpc(e.to_string()))?;
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
                let mut stream = self.read_artifact(&m.capture_id, &a.name, offset).await?;
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
                std::fs::write(&path, bytes)
                    .map_err(io(format!("cannot write {}", path.display())))?;
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

    /// Artifact `name` of capture `capture_id` from byte `offset`, as the
    /// collector streams it.
    async fn read_artifact(
        &mut self,
        capture_id: &str,
        name: &str,
        offset: u64,
    ) -> Result<tonic::Streaming<ArtifactData>, AnalystError> {
        let request = self.tagged(ReadArtifactRequest {
            capture_id: capture_id.to_owned(),
            name: name.to_owned(),
            offset,
        });
        Ok(self
            .query
            .read_artifact(request)
            .await
            .map_err(|s| rpc(&s))?
            .into_inner())
    }

    /// The YARA summary of capture `capture_id`.
    ///
    /// # Errors
    /// [`AnalystError`] when the collector refuses.
    pub async fn yara_summary(&mut self, capture_id: &str) -> Result<YaraSummary, AnalystError> {
        let (m, _) = self.manifest(capture_id).await?;
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
        let mut stream = self.read_artifact(&m.capture_id, &table.name, 0).await?;
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

    /// Creates a request.
    ///
    /// # Errors
    /// [`AnalystError::Call`] when the collector refuses.
    pub async fn create_request(
        &mut self,
        req: CreateRequestRequest,
    ) -> Result<CreateRequestResponse, AnalystError> {
        let request = self.tagged(req);
        self.requests
            .create_request(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| rpc(&s))
    }

    /// Approves a pending request.
    ///
    /// # Errors
    /// [`AnalystError::Call`] when the collector refuses (not pending,
    /// lapsed, or the caller requested it).
    pub async fn approve(
        &mut self,
        request_id: &str,
    ) -> Result<ApproveRequestResponse, AnalystError> {
        let request = self.tagged(ApproveRequestRequest {
            request_id: request_id.to_owned(),
        });
        self.requests
            .approve_request(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| rpc(&s))
    }

    /// Every result recorded so far.
    ///
    /// # Errors
    /// [`AnalystError::Call`] when the collector refuses.
    pub async fn results(&mut self, request_id: &str) -> Result<Vec<RequestResult>, AnalystError> {
        let request = self.tagged(ListResultsRequest {
            request_id: request_id.to_owned(),
        });
        all(self.requests.list_results(request).await).await
    }

    /// Waits until every agent in `expected` has a final result, calling
    /// `on_final` once for each as it arrives, or until `timeout`. Returns
    /// the agents still without a final result.
    ///
    /// # Errors
    /// [`AnalystError::Call`] when the collector refuses.
    pub async fn wait(
        &mut self,
        request_id: &str,
        expected: &BTreeSet<String>,
        timeout: Duration,
        on_final: &mut dyn FnMut(&RequestResult),
    ) -> Result<BTreeSet<String>, AnalystError> {
        let until = Instant::now() + timeout;
        let mut pending = expected.clone();
        while !pending.is_empty() {
            for r in self.results(request_id).await? {
                if is_final(&r) && pending.remove(&r.agent) {
                    on_final(&r);
                }
            }
            if pending.is_empty() || Instant::now() >= until {
                break;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
        Ok(pending)
    }

    /// Polls a request that matched no connected agent until the first
    /// agents that connect later deliver final results (calling `on_final`
    /// for each), or until `timeout`. Returns whether any result arrived.
    ///
    /// # Errors
    /// [`AnalystError::Call`] when the collector refuses.
    pub async fn wait_first(
        &mut self,
        request_id: &str,
        timeout: Duration,
        on_final: &mut dyn FnMut(&RequestResult),
    ) -> Result<bool, AnalystError> {
        let until = Instant::now() + timeout;
        loop {
            let finals: Vec<RequestResult> = self
                .results(request_id)
                .await?
                .into_iter()
                .filter(is_final)
                .collect();
            if !finals.is_empty() {
                finals.iter().for_each(&mut *on_final);
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            tokio::time::sleep(WAIT_POLL.min(until.saturating_duration_since(Instant::now())))
                .await;
        }
    }

    /// Connected agents.
    ///
    /// # Errors
    /// [`AnalystError::Call`] when the collector refuses.
    pub async fn agents(&mut self) -> Result<Vec<AgentInfo>, AnalystError> {
        let request = self.tagged(ListAgentsRequest {});
        all(self.requests.list_agents(request).await).await
    }
}

/// Every message of a streamed answer, or the call's failure.
async fn all<T>(
    answer: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
) -> Result<Vec<T>, AnalystError> {
    let mut stream = answer.map_err(|s| rpc(&s))?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.map_err(|s| rpc(&s))? {
        out.push(m);
    }
    Ok(out)
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
