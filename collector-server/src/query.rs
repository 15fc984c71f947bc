//! The `ircap.v1.CaptureQuery` service for the analyst role: list captures
//! from the index, read manifests, stream artifact bytes from an offset.
//! Statuses are built here and in `service.rs` only.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;

use ircap_proto::manifest::Manifest;
use ircap_proto::v1::capture_query_server::CaptureQuery;
use ircap_proto::v1::{
    ArtifactData, AuditRecord, CaptureInfo, GetManifestRequest, GetManifestResponse,
    ListAuditRequest, ListCapturesRequest, ReadArtifactRequest,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::{self, AuditEvent, CaseTag};
use crate::service::{check_capture_id, store_status};
use crate::store::{CaptureState, IndexEntry, Store};

/// Bytes per `ArtifactData` message.
const READ_CHUNK: u64 = 1 << 20;
/// Listing rows buffered ahead of a slow client.
const LIST_BUFFER: usize = 256;

/// The query service over a [`Store`].
pub struct QueryService {
    store: Arc<Store>,
    require_case: bool,
}

impl QueryService {
    /// Queries `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            require_case: false,
        }
    }

    /// The same service refusing calls that carry no case id.
    #[must_use]
    pub fn with_require_case(mut self, require: bool) -> Self {
        self.require_case = require;
        self
    }

    fn admit<T>(
        &self,
        request: &Request<T>,
        call: &str,
    ) -> Result<(AuditEvent, Result<CaseTag, Status>), Status> {
        audit::admit(request, call, self.require_case)
    }

    async fn answer<R>(&self, ev: AuditEvent, result: Result<R, Status>) -> Result<R, Status> {
        audit::answer(&self.store, ev, result).await
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
        case_id: e.case.unwrap_or_default(),
    }
}

type DataStream = Pin<Box<dyn Stream<Item = Result<ArtifactData, Status>> + Send>>;
type InfoStream = Pin<Box<dyn Stream<Item = Result<CaptureInfo, Status>> + Send>>;
type AuditStream = Pin<Box<dyn Stream<Item = Result<AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl CaptureQuery for QueryService {
    type ListCapturesStream = InfoStream;

    async fn list_captures(
        &self,
        request: Request<ListCapturesRequest>,
    ) -> Result<Response<Self::ListCapturesStream>, Status> {
        let (ev, admitted) = self.admit(&request, "list_captures")?;
        let result = match admitted {
            Ok(_) => self.list(request.into_inner()).await,
            Err(e) => Err(e),
        };
        self.answer(ev, result).await
    }

    async fn get_manifest(
        &self,
        request: Request<GetManifestRequest>,
    ) -> Result<Response<GetManifestResponse>, Status> {
        let (mut ev, admitted) = self.admit(&request, "get_manifest")?;
        let id = request.into_inner().capture_id;
        ev.capture_id = Some(id.clone());
        let result = match admitted {
            Ok(_) => self.manifest(&id).await,
            Err(e) => Err(e),
        };
        if let Ok(r) = &result {
            ev.bytes_served = r.get_ref().manifest_json.len() as u64;
        }
        self.answer(ev, result).await
    }

    type ReadArtifactStream = DataStream;

    async fn read_artifact(
        &self,
        request: Request<ReadArtifactRequest>,
    ) -> Result<Response<Self::ReadArtifactStream>, Status> {
        let (mut ev, admitted) = self.admit(&request, "read_artifact")?;
        let req = request.into_inner();
        ev.capture_id = Some(req.capture_id.clone());
        ev.artifact = Some(req.name.clone());
        let result = match admitted {
            Ok(_) => self.read(&ev.identity, req).await,
            Err(e) => Err(e),
        };
        let result = result.map(|(bytes, stream)| {
            ev.bytes_served = bytes;
            stream
        });
        self.answer(ev, result).await
    }

    type ListAuditStream = AuditStream;

    async fn list_audit(
        &self,
        request: Request<ListAuditRequest>,
    ) -> Result<Response<Self::ListAuditStream>, Status> {
        let (mut ev, admitted) = self.admit(&request, "list_audit")?;
        let req = request.into_inner();
        ev.capture_id = (!req.capture_id.is_empty()).then(|| req.capture_id.clone());
        let result = match admitted {
            Ok(_) => self.audit(req).await,
            Err(e) => Err(e),
        };
        self.answer(ev, result).await
    }
}

impl QueryService {
    async fn audit(&self, req: ListAuditRequest) -> Result<Response<AuditStream>, Status> {
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let filter = audit::Filter {
            capture_id: non_empty(&req.capture_id),
            identity: non_empty(&req.identity),
            since: parse_time(&req.since, "--since")?,
            case: non_empty(&req.case_id),
        };
        let events = audit::list(&self.store, &filter).await?;
        let records: Vec<Result<AuditRecord, Status>> = events
            .iter()
            .filter_map(|e| serde_json::to_string(e).ok())
            .map(|json| Ok(AuditRecord { json }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(records))))
    }

    /// Streams the listing day by day (see
    /// [`crate::store::evidence::Evidence::read_days`]):
    /// the collector holds a few days of records and the capture ids seen,
    /// not the whole index. Rows come by day recorded, then capture id;
    /// open captures (`--incomplete`) last.
    async fn list(&self, req: ListCapturesRequest) -> Result<Response<InfoStream>, Status> {
        let since = parse_time(&req.since, "--since")?;
        let until = parse_time(&req.until, "--until")?;
        let days = self
            .store
            .index_days_since(since)
            .await
            .map_err(store_status)?;
        let store = Arc::clone(&self.store);
        let (tx, rx) = mpsc::channel(LIST_BUFFER);
        tokio::spawn(async move {
            let wanted = |c: &CaptureInfo| {
                let started = OffsetDateTime::parse(&c.started_at, &Rfc3339).ok();
                (req.host.is_empty() || c.agent == req.host)
                    && (req.claimed_hostname.is_empty() || c.hostname == req.claimed_hostname)
                    && (req.instance_id.is_empty() || c.instance_id == req.instance_id)
                    && (req.case_id.is_empty() || c.case_id == req.case_id)
                    && since.is_none_or(|t| started.is_some_and(|s| s >= t))
                    && until.is_none_or(|t| started.is_some_and(|s| s <= t))
            };
            let mut seen = HashSet::new();
            let mut reader = store.read_days(days);
            loop {
                let entries = match reader.next_day().await {
                    Ok(Some(entries)) => entries,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(store_status(e))).await;
                        return;
                    }
                };
                for e in entries {
                    if !seen.insert(e.capture_id.clone()) {
                        continue;
                    }
                    let c = info(e);
                    if wanted(&c) && tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
            }
            if !req.include_incomplete {
                return;
            }
            let states = match store
                .open_states(crate::store::repair::OPEN_SCAN_LIMIT)
                .await
            {
                Ok(states) => states,
                Err(e) => {
                    let _ = tx.send(Err(store_status(e))).await;
                    return;
                }
            };
            let mut open: Vec<CaptureInfo> = states
                .into_iter()
                .filter(|s| !s.complete && !seen.contains(&s.capture_id))
                .map(|s| CaptureInfo {
                    capture_id: s.capture_id,
                    agent: s.owner,
                    hostname: s.hostname,
                    started_at: s.opened_at,
                    artifacts: u32::try_from(s.finished.len()).unwrap_or(u32::MAX),
                    stored_bytes: s.finished.values().map(|f| f.size).sum(),
                    status: "incomplete".into(),
                    ..CaptureInfo::default()
                })
                .filter(|c| wanted(c))
                .collect();
            open.sort_by(|a, b| a.capture_id.cmp(&b.capture_id));
            for c in open {
                if tx.send(Ok(c)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn manifest(&self, id: &str) -> Result<Response<GetManifestResponse>, Status> {
        let state = self.complete_state(id).await?;
        let manifest_json = self
            .store
            .read_manifest(&state)
            .await
            .map_err(store_status)?;
        let findings_jsonl = crate::triage::at_commit::stored(&self.store, &state.capture_id)
            .await
            .unwrap_or_default();
        let [receipt_json, receipt_sig, receipt_cert_pem] = self
            .store
            .read_receipt(&state)
            .await
            .map_err(store_status)?
            .unwrap_or_default();
        Ok(Response::new(GetManifestResponse {
            manifest_json,
            findings_jsonl,
            receipt_json,
            receipt_sig,
            receipt_cert_pem,
        }))
    }

    /// The bytes it will serve, and the stream.
    async fn read(
        &self,
        who: &str,
        req: ReadArtifactRequest,
    ) -> Result<(u64, Response<DataStream>), Status> {
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
            .staged(&state, &name)
            .await
            .map_err(store_status)?
            .len;
        if req.offset > end {
            return Err(Status::out_of_range(format!(
                "offset {} is past the end ({end})",
                req.offset
            )));
        }
        tracing::info!(analyst = who, capture_id = state.capture_id, artifact = %name, offset = req.offset, "Artifact read");
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
        Ok((
            end - req.offset,
            Response::new(Box::pin(ReceiverStream::new(rx))),
        ))
    }
}
