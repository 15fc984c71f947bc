//! `ircap.v1.CaptureRequests`: analysts create capture requests, follow
//! their results and list connected agents. Only the analyst role may call
//! it. Everything is read from and written to the store, so any replica
//! answers the same.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ircap_proto::v1::capture_requests_server::CaptureRequests;
use ircap_proto::v1::{
    AgentInfo, ApproveRequestRequest, ApproveRequestResponse, CreateRequestRequest,
    CreateRequestResponse, ListAgentsRequest, ListResultsRequest, RequestResult,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::approvals::{ApprovalPolicy, PendingDoc, check_approver};
use super::docs::{self, LiveAgent, MatchedBy, RequestDoc, ResultDoc, TargetDoc, key};
use super::replica::Replica;
use crate::audit;
use crate::service::{check_capture_id, store_status};

/// How long a request waits for agents that are not connected yet.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Longest time a request may wait.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 86_400);
/// The analyst side of the control service.
pub struct RequestService {
    replica: Arc<Replica>,
    require_case: bool,
    approvals: Option<ApprovalPolicy>,
}

impl RequestService {
    /// Serves analysts for `replica`.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self {
            replica,
            require_case: false,
            approvals: None,
        }
    }

    /// The same service holding approval-class requests for a second
    /// analyst.
    #[must_use]
    pub fn with_approvals(mut self, policy: Option<ApprovalPolicy>) -> Self {
        self.approvals = policy;
        self
    }

    /// The same service refusing calls that carry no case id.
    #[must_use]
    pub fn with_require_case(mut self, require: bool) -> Self {
        self.require_case = require;
        self
    }
}

/// Checks a capture spec's shape before it is stored (what a host allows
/// is that host's policy, checked by its agent).
fn check_spec(spec: &ircap_proto::v1::CaptureSpec) -> Result<(), Status> {
    ircap_proto::request_args::check_spec(spec).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The analyst's target as stored.
fn target(req: &CreateRequestRequest) -> Result<TargetDoc, Status> {
    let t = req.target.clone().unwrap_or_default();
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let doc = TargetDoc {
        host: non_empty(t.host),
        claimed_hostname: non_empty(t.claimed_hostname),
        instance_id: non_empty(t.instance_id),
        labels: t.labels.into_iter().collect(),
        all: t.all,
    };
    if doc.is_empty() {
        return Err(Status::invalid_argument(
            "name a target: --host, --claimed-hostname, --instance-id, --label or --all",
        ));
    }
    if doc.all
        && (doc.host.is_some()
            || doc.claimed_hostname.is_some()
            || doc.instance_id.is_some()
            || !doc.labels.is_empty())
    {
        return Err(Status::invalid_argument(
            "--all cannot be combined with another target",
        ));
    }
    Ok(doc)
}

fn agent_info(a: LiveAgent, matched_by: &[MatchedBy]) -> AgentInfo {
    let p = a.presence;
    AgentInfo {
        agent: p.facts.agent,
        session_id: p.session_id,
        hostname: p.facts.hostname,
        instance_id: p.facts.instance_id,
        labels: p.facts.labels.into_iter().collect(),
        replica_id: p.replica_id,
        connected_at: p.connected_at,
        last_seen: a.seen.last_seen,
        duplicate: a.duplicate,
        busy_request_id: a.seen.busy_request_id.unwrap_or_default(),
        agent_version: p.agent_version,
        matched_by: matched_by.iter().map(|m| m.as_str().to_owned()).collect(),
    }
}

fn result_message(r: ResultDoc) -> RequestResult {
    RequestResult {
        request_id: r.request_id,
        agent: r.agent,
        session_id: r.session_id,
        hostname: r.hostname,
        status: r.status,
        capture_id: r.capture_id,
        error: r.error,
        bytes_stored: r.bytes_stored,
        updated_at: r.updated_at,
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<RequestResult, Status>> + Send>>;
type AgentStream = Pin<Box<dyn Stream<Item = Result<AgentInfo, Status>> + Send>>;

#[tonic::async_trait]
impl CaptureRequests for RequestService {
    async fn create_request(
        &self,
        request: Request<CreateRequestRequest>,
    ) -> Result<Response<CreateRequestResponse>, Status> {
        let (mut ev, admitted) = audit::admit(&request, "create_request", self.require_case)?;
        let who = audit::caller(&request)?;
        let result = match admitted {
            Ok(tag) => self.create(&who, &tag, request.into_inner()).await,
            Err(e) => Err(e),
        };
        if let Ok(r) = &result {
            ev.request_id = Some(r.get_ref().request_id.clone());
        }
        audit::answer(self.replica.store(), ev, result).await
    }

    type ListResultsStream = ResultStream;

    async fn list_results(
        &self,
        request: Request<ListResultsRequest>,
    ) -> Result<Response<Self::ListResultsStream>, Status> {
        let (mut ev, admitted) = audit::admit(&request, "list_results", self.require_case)?;
        let id = request.into_inner().request_id;
        ev.request_id = Some(id.clone());
        let result = match admitted {
            Ok(_) => self.results(id).await,
            Err(e) => Err(e),
        };
        audit::answer(self.replica.store(), ev, result).await
    }

    async fn approve_request(
        &self,
        request: Request<ApproveRequestRequest>,
    ) -> Result<Response<ApproveRequestResponse>, Status> {
        let (mut ev, admitted) = audit::admit(&request, "approve_request", self.require_case)?;
        let who = audit::caller(&request)?;
        let id = request.into_inner().request_id;
        ev.request_id = Some(id.clone());
        let result = match admitted {
            Ok(_) => self.approve(&who, &id).await,
            Err(e) => Err(e),
        };
        audit::answer(self.replica.store(), ev, result).await
    }

    type ListAgentsStream = AgentStream;

    async fn list_agents(
        &self,
        request: Request<ListAgentsRequest>,
    ) -> Result<Response<Self::ListAgentsStream>, Status> {
        let (ev, admitted) = audit::admit(&request, "list_agents", self.require_case)?;
        let result = match admitted {
            Ok(_) => self.agents().await,
            Err(e) => Err(e),
        };
        audit::answer(self.replica.store(), ev, result).await
    }
}

impl RequestService {
    async fn create(
        &self,
        who: &crate::auth::Identity,
        tag: &audit::CaseTag,
        req: CreateRequestRequest,
    ) -> Result<Response<CreateRequestResponse>, Status> {
        let target = target(&req)?;
        let mut spec = req.spec.unwrap_or_default();
        // The collector, not the analyst's spec, says who asked and for
        // which case: the agent records these in the manifest.
        spec.case_id = tag.case.clone().unwrap_or_default();
        spec.case_reason = tag.reason.clone().unwrap_or_default();
        spec.requested_by.clone_from(&who.name);
        spec.approved_by.clear();
        check_spec(&spec)?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TTL,
            s => Duration::from_secs(s).min(MAX_TTL),
        };
        let replica = &self.replica;
        let doc = RequestDoc {
            request_id: uuid::Uuid::now_v7().to_string(),
            created_by: who.name.clone(),
            created_at: docs::now(),
            expires_at: docs::from_now(ttl),
            target,
            spec,
            max_bytes: req.max_bytes,
            max_seconds: req.max_seconds,
        };
        let matched: Vec<AgentInfo> = docs::live_agents(replica.store(), replica.stale_after())
            .await
            .map_err(store_status)?
            .into_iter()
            .filter_map(|a| {
                let by = doc.target.matched_by(&a.presence.facts)?;
                Some(agent_info(a, &by))
            })
            .collect();
        let classes = self
            .approvals
            .as_ref()
            .map(|p| p.classes_of(&doc, matched.len()))
            .unwrap_or_default();
        if let (false, Some(policy)) = (classes.is_empty(), &self.approvals) {
            let pending = PendingDoc {
                request: doc,
                classes,
                requested_by_sha256: who.fingerprint_sha256.clone(),
                ttl_seconds: ttl.as_secs(),
                approval_expires_at: docs::from_now(policy.ttl),
                status: "pending".into(),
                approved_by: None,
                approved_by_sha256: None,
                approved_at: None,
            };
            let k = key(&["pending", &pending.request.request_id]).map_err(store_status)?;
            docs::write(replica.store(), &k, &pending)
                .await
                .map_err(store_status)?;
            tracing::info!(
                request_id = pending.request.request_id,
                analyst = who.name,
                classes = ?pending.classes,
                "Capture request waits for another analyst's approval"
            );
            return Ok(Response::new(CreateRequestResponse {
                request_id: pending.request.request_id,
                matched,
                status: "pending".into(),
                approval_classes: pending.classes,
                approval_expires_at: pending.approval_expires_at,
            }));
        }
        let k = key(&["requests", &doc.request_id]).map_err(store_status)?;
        docs::write(replica.store(), &k, &doc)
            .await
            .map_err(store_status)?;
        tracing::info!(
            request_id = doc.request_id,
            analyst = who.name,
            target = ?doc.target,
            spec = ?doc.spec,
            matched = matched.len(),
            "Capture request created"
        );
        replica.wake();
        Ok(Response::new(CreateRequestResponse {
            request_id: doc.request_id,
            matched,
            status: "created".into(),
            ..CreateRequestResponse::default()
        }))
    }

    async fn approve(
        &self,
        who: &crate::auth::Identity,
        id: &str,
    ) -> Result<Response<ApproveRequestResponse>, Status> {
        check_capture_id(id)?;
        let store = self.replica.store();
        let k = key(&["pending", id]).map_err(store_status)?;
        let mut pending: PendingDoc = docs::read(store, &k)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!("no request waiting for approval with id {id}"))
            })?;
        check_approver(&pending, who)?;
        let now = docs::now();
        pending.status = "approved".into();
        pending.approved_by = Some(who.name.clone());
        pending.approved_by_sha256 = Some(who.fingerprint_sha256.clone());
        pending.approved_at = Some(now.clone());
        let mut doc = pending.request.clone();
        doc.spec.approved_by.clone_from(&who.name);
        doc.expires_at = docs::from_now(Duration::from_secs(pending.ttl_seconds));
        // The record first: a request is never delivered without it.
        docs::write(store, &k, &pending)
            .await
            .map_err(store_status)?;
        docs::write(store, &key(&["requests", id]).map_err(store_status)?, &doc)
            .await
            .map_err(store_status)?;
        tracing::info!(
            request_id = id,
            requested_by = doc.created_by,
            approved_by = who.name,
            "Capture request approved"
        );
        self.replica.wake();
        Ok(Response::new(ApproveRequestResponse {
            request_id: id.to_owned(),
            requested_by: doc.created_by,
            approved_by: who.name.clone(),
            approved_at: now,
            expires_at: doc.expires_at,
        }))
    }

    async fn results(&self, id: String) -> Result<Response<ResultStream>, Status> {
        check_capture_id(&id)?;
        let store = self.replica.store();
        if store
            .get_doc(&key(&["requests", &id]).map_err(store_status)?)
            .await
            .map_err(store_status)?
            .is_none()
        {
            // Waiting for approval: no results yet.
            if store
                .get_doc(&key(&["pending", &id]).map_err(store_status)?)
                .await
                .map_err(store_status)?
                .is_some()
            {
                return Ok(Response::new(Box::pin(tokio_stream::iter(Vec::new()))));
            }
            return Err(Status::not_found(format!("no request with id {id}")));
        }
        let mut results = Vec::new();
        for k in store
            .list_docs(&key(&["results", &id]).map_err(store_status)?)
            .await
            .map_err(store_status)?
        {
            if let Some(r) = docs::read::<ResultDoc>(store, &k)
                .await
                .map_err(store_status)?
            {
                results.push(Ok(result_message(r)));
            }
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(results))))
    }

    async fn agents(&self) -> Result<Response<AgentStream>, Status> {
        let replica = &self.replica;
        let mut agents: Vec<AgentInfo> = docs::live_agents(replica.store(), replica.stale_after())
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|a| agent_info(a, &[]))
            .collect();
        agents.sort_by(|a, b| (&a.agent, &a.connected_at).cmp(&(&b.agent, &b.connected_at)));
        Ok(Response::new(Box::pin(tokio_stream::iter(
            agents.into_iter().map(Ok),
        ))))
    }
}
