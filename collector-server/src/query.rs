//! The `ircap.v1.CaptureQuery` service for the analyst role: list captures
//! from the index, read manifests, stream artifact bytes from an offset.
//! Statuses are built here and in `service.rs` only.

use std::pin::Pin;
use std::sync::Arc;

use ircap_proto::manifest::Manifest;
use ircap_proto::v1::capture_query_server::CaptureQuery;
use ircap_proto::v1::{
    ArtifactData, CaptureInfo, GetManifestRequest, GetManifestResponse, ListCapturesRequest,
    ReadArtifactRequest,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::service::{caller_with_role, check_capture_id, store_status};
use crate::store::{CaptureState, IndexEntry, Store};

/// Bytes per `ArtifactData` message.
const READ_CHUNK: u64 = 1 << 20;

/// The query service over a [`Store`].
pub struct QueryService {
    store: Arc<Store>,
}

impl QueryService {
    /// Queries `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// The committed capture `id`.
    async fn complete_state(&self, id: &str) -> Result<CaptureState, Status> {
        check_capture_id(id)?;
        let state = self
            .store
            .state(id)
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::not_found(format!("no capture with id {id}")))?;
        // A stored manifest makes a capture complete, even when a crash
        // cut its commit short before the state said so.
        if !state.complete
            && self
                .store
                .find_manifest(&state)
                .await
                .map_err(store_status)?
                .is_none()
        {
            return Err(Status::failed_precondition(format!(
                "capture {id} is incomplete: it was never committed"
            )));
        }
        Ok(state)
    }
}

fn parse_time(text: &str, what: &str) -> Result<Option<OffsetDateTime>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    OffsetDateTime::parse(text, &Rfc3339)
        .map(Some)
        .map_err(|e| Status::invalid_argument(format!("{what} {text:?} is not RFC 3339: {e}")))
}

fn info(e: IndexEntry) -> CaptureInfo {
    CaptureInfo {
        capture_id: e.capture_id,
        agent: e.agent,
        hostname: e.hostname,
        instance_id: e.instance_id.unwrap_or_default(),
        started_at: e.started_at,
        ended_at: e.ended_at,
        stored_bytes: e.stored_bytes,
        artifacts: e.artifacts,
        status: "complete".into(),
        committed_at: e.committed_at,
        findings: e.findings.into_iter().collect(),
    }
}

type DataStream = Pin<Box<dyn Stream<Item = Result<ArtifactData, Status>> + Send>>;
type InfoStream = Pin<Box<dyn Stream<Item = Result<CaptureInfo, Status>> + Send>>;

#[tonic::async_trait]
impl CaptureQuery for QueryService {
    type ListCapturesStream = InfoStream;

    async fn list_captures(
        &self,
        request: Request<ListCapturesRequest>,
    ) -> Result<Response<Self::ListCapturesStream>, Status> {
        caller_with_role(&request, Role::Analyst)?;
        let req = request.into_inner();
        let since = parse_time(&req.since, "--since")?;
        let until = parse_time(&req.until, "--until")?;
        let mut captures: Vec<CaptureInfo> = self
            .store
            .list_index(since)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(info)
            .collect();
        if req.include_incomplete {
            let states = self
                .store
                .open_states(crate::store::repair::OPEN_SCAN_LIMIT)
                .await
                .map_err(store_status)?;
            let indexed: std::collections::HashSet<String> =
                captures.iter().map(|c| c.capture_id.clone()).collect();
            captures.extend(
                states
                    .into_iter()
                    .filter(|s| !s.complete && !indexed.contains(&s.capture_id))
                    .map(|s| CaptureInfo {
                        capture_id: s.capture_id,
                        agent: s.owner,
                        hostname: s.hostname,
                        started_at: s.opened_at,
                        artifacts: u32::try_from(s.finished.len()).unwrap_or(u32::MAX),
                        stored_bytes: s.finished.values().map(|f| f.size).sum(),
                        status: "incomplete".into(),
                        ..CaptureInfo::default()
                    }),
            );
        }
        captures.retain(|c| {
            let started = OffsetDateTime::parse(&c.started_at, &Rfc3339).ok();
            (req.host.is_empty() || c.agent == req.host)
                && (req.claimed_hostname.is_empty() || c.hostname == req.claimed_hostname)
                && (req.instance_id.is_empty() || c.instance_id == req.instance_id)
                && since.is_none_or(|t| started.is_some_and(|s| s >= t))
                && until.is_none_or(|t| started.is_some_and(|s| s <= t))
        });
        captures.sort_by(|a, b| a.capture_id.cmp(&b.capture_id));
        Ok(Response::new(Box::pin(tokio_stream::iter(
            captures.into_iter().map(Ok),
        ))))
    }

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestResponse>, Status> {
        caller_with_role(&request, Role::Analyst)?;
        let state = self.complete_state(&request.get_ref().capture_id).await?;
        let manifest_json = self
            .store
            .read_manifest(&state)
            .await
            .map_err(store_status)?;
        let findings_jsonl = crate::triage::at_commit::stored(&self.store, &state.capture_id)
            .await
            .unwrap_or_default();
        Ok(Response::new(GetManifestResponse {
            manifest_json,
            findings_jsonl,
        }))
    }

    type ReadArtifactStream = DataStream;

    async fn read_artifact(
        &self,
        request: Request<ReadArtifactRequest>,
    ) -> Result<Response<Self::ReadArtifactStream>, Status> {
        let who = caller_with_role(&request, Role::Analyst)?;
        let req = request.into_inner();
        let state = self.complete_state(&req.capture_id).await?;
        let manifest_bytes = self
            .store
            .read_manifest(&state)
            .await
            .map_err(store_status)?;
        let manifest = Manifest::from_slice(&manifest_bytes, "stored manifest")
            .map_err(|e| Status::internal(e.to_string()))?;
        let entry = manifest
            .artifacts
            .iter()
            .find(|a| a.name == req.name)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "capture {} has no artifact {:?}",
                    req.capture_id, req.name
                ))
            })?;
        let name = ircap_proto::ArtifactName::parse(&entry.name)
            .map_err(|e| Status::internal(e.to_string()))?;
        let end = self
            .store
            .durable_len(&state, &name)
            .await
            .map_err(store_status)?;
        if req.offset > end {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end ({end})",
                req.offset
            )));
        }
        tracing::info!(analyst = who.name, capture_id = state.capture_id, artifact = %name, offset = req.offset, "Artifact read");
        let (tx, rx) = mpsc::channel(4);
        let store = Arc::clone(&self.store);
        tokio::spawn(async move {
            let mut offset = req.offset;
            while offset < end {
                let len = READ_CHUNK.min(end - offset);
                let msg = match store.read_range(&state, &name, offset, len).await {
                    Ok(data) if !data.is_empty() => {
                        let m = ArtifactData {
                            offset,
                            data: data.into(),
                        };
                        offset += len;
                        Ok(m)
                    }
                    Ok(_) => Err(Status::data_loss(format!(
                        "{name}: stored file shorter than expected"
                    ))),
                    Err(e) => Err(store_status(e)),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
