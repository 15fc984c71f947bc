//! `ircap.v1.AgentControl/Attach`: the stream an agent in daemon mode
//! keeps open. Only the agent role may call it; the identity is the
//! certificate's, never a field of the hello.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ircap_proto::v1::agent_control_server::AgentControl;
use ircap_proto::v1::{
    AgentMessage, CaptureOutcome, CollectorMessage, Hello, Welcome, agent_message,
    collector_message,
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::docs::{self, HostFacts, PresenceDoc, ResultDoc, key};
use super::replica::Replica;
use crate::auth::Role;
use crate::service::{caller_with_role, check_capture_id, store_status};

/// How long an agent has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most labels accepted.
const MAX_LABELS: usize = 32;

/// The agent side of the control service.
pub struct AgentControlService {
    replica: Arc<Replica>,
}

impl AgentControlService {
    /// Serves agents for `replica`.
    pub fn new(replica: Arc<Replica>) -> Self {
        Self { replica }
    }
}

fn text_ok(s: &str, max: usize) -> bool {
    s.len() <= max && !s.chars().any(char::is_control)
}

/// Refuses a hello whose facts cannot be stored or shown safely.
fn check_hello(h: &Hello) -> Result<(), Status> {
    check_capture_id(&h.session_id).map_err(|_| {
        Status::invalid_argument("session id must be 1-64 characters of [A-Za-z0-9-]")
    })?;
    if !text_ok(&h.hostname, 255) || !text_ok(&h.instance_id, 64) || !text_ok(&h.agent_version, 64)
    {
        return Err(Status::invalid_argument(
            "hostname, instance id or version too long or with control characters",
        ));
    }
    if h.labels.len() > MAX_LABELS
        || h.labels
            .iter()
            .any(|(k, v)| k.is_empty() || !text_ok(k, 64) || !text_ok(v, 256))
    {
        return Err(Status::invalid_argument(format!(
            "at most {MAX_LABELS} labels, keys 1-64 and values 0-256 bytes without control characters"
        )));
    }
    if !h.busy_request_id.is_empty() {
        check_capture_id(&h.busy_request_id)?;
    }
    Ok(())
}

type OutStream = Pin<Box<dyn Stream<Item = Result<CollectorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for AgentControlService {
    type AttachStream = OutStream;

    async fn attach(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let who = caller_with_role(&request, Role::Agent)?;
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello in time"))??;
        let Some(AgentMessage {
            body: Some(agent_message::Body::Hello(hello)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        check_hello(&hello)?;
        let replica = &self.replica;
        let presence = PresenceDoc {
            facts: HostFacts {
                agent: who.name.clone(),
                hostname: hello.hostname.clone(),
                instance_id: hello.instance_id.clone(),
                labels: hello.labels.clone().into_iter().collect(),
            },
            session_id: hello.session_id.clone(),
            connection_id: uuid::Uuid::now_v7().to_string(),
            replica_id: replica.id.clone(),
            connected_at: docs::now(),
            cert_sha256: who.fingerprint_sha256.clone(),
            agent_version: hello.agent_version.clone(),
        };
        let conn_key =
            key(&["agents", &who.name, &presence.connection_id]).map_err(store_status)?;
        docs::write(replica.store(), &conn_key, &presence)
            .await
            .map_err(store_status)?;
        let (tx, rx) = mpsc::channel(16);
        let busy = (!hello.busy_request_id.is_empty()).then(|| hello.busy_request_id.clone());
        replica.register(presence.clone(), busy, tx.clone()).await;
        // A cloned image: another agent process with this identity. Checked
        // after registering, so of two clones connecting at once the second
        // to check sees the first (on this replica at once, through the
        // store within a poll interval on another).
        let mut others: Vec<(String, String)> = replica.local_sessions_of(&who.name);
        if let Ok(remote) =
            docs::live_connections_of(replica.store(), &who.name, replica.stale_after()).await
        {
            others.extend(remote.into_iter().map(|p| (p.facts.hostname, p.session_id)));
        }
        others.retain(|(_, session)| *session != hello.session_id);
        others.sort();
        others.dedup();
        let duplicate = !others.is_empty();
        if duplicate {
            tracing::warn!(
                agent = who.name,
                hostname = hello.hostname,
                session = hello.session_id,
                others = ?others,
                "Duplicate agent identity: another live agent presents the same certificate (a cloned image?); both are kept and flagged"
            );
        }
        let welcome = CollectorMessage {
            body: Some(collector_message::Body::Welcome(Welcome {
                replica_id: replica.id.clone(),
                duplicate,
            })),
        };
        // Cannot fail: `rx` is still here, and has room.
        let _ = tx.send(Ok(welcome)).await;
        drop(tx);
        tracing::info!(
            agent = who.name,
            hostname = hello.hostname,
            instance_id = hello.instance_id,
            connection = presence.connection_id,
            "Agent connected"
        );
        let connection_id = presence.connection_id.clone();
        let replica = Arc::clone(replica);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(msg)) => handle(&replica, &presence, msg).await,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(connection = connection_id, error = %status, "Agent stream ended");
                        break;
                    }
                }
            }
            replica.unregister(&connection_id).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One message from a connected agent.
async fn handle(replica: &Replica, presence: &PresenceDoc, msg: AgentMessage) {
    let conn = &presence.connection_id;
    match msg.body {
        Some(agent_message::Body::Heartbeat(hb)) => {
            let busy = (!hb.busy_request_id.is_empty()).then_some(hb.busy_request_id);
            replica.touch(conn, busy);
        }
        Some(agent_message::Body::Progress(p)) => {
            replica.touch(conn, None);
            let update = |r: &mut ResultDoc| {
                r.status = "running".into();
                r.capture_id.clone_from(&p.capture_id);
            };
            if let Err(e) =
                update_result(replica, presence, &p.request_id, &p.capture_id, update).await
            {
                tracing::warn!(
                    agent = presence.facts.agent,
                    request_id = p.request_id,
                    "Progress not recorded: {e}"
                );
            }
        }
        Some(agent_message::Body::Outcome(o)) => {
            let status = match o.status.as_str() {
                s @ ("complete" | "partial" | "failed" | "refused") => s.to_owned(),
                _ => "failed".to_owned(),
            };
            let CaptureOutcome {
                request_id,
                capture_id,
                mut error,
                bytes_stored,
                ..
            } = o;
            let mut status = status;
            // A partial capture is a committed capture too: the same
            // ownership and freshness checks apply before it is believed.
            if matches!(status.as_str(), "complete" | "partial")
                && let Err(why) =
                    accept_complete(replica, &presence.facts.agent, &request_id, &capture_id).await
            {
                tracing::warn!(
                    agent = presence.facts.agent,
                    request_id,
                    capture_id,
                    "Outcome refused: {why}"
                );
                error = format!("reported {status}, refused by the collector: {why}");
                status = "failed".to_owned();
            }
            tracing::info!(
                agent = presence.facts.agent,
                request_id,
                capture_id,
                status,
                error,
                "Capture request finished"
            );
            let update = |r: &mut ResultDoc| {
                r.status.clone_from(&status);
                r.capture_id.clone_from(&capture_id);
                r.error = error.chars().take(2000).collect();
                r.bytes_stored = bytes_stored;
            };
            if let Err(e) = update_result(replica, presence, &request_id, &capture_id, update).await
            {
                tracing::warn!(
                    agent = presence.facts.agent,
                    request_id,
                    "Outcome not recorded: {e}"
                );
            }
            replica.finished(conn, &request_id);
        }
        Some(agent_message::Body::Hello(_)) | None => {
            tracing::debug!(connection = conn, "Ignored an unexpected message");
        }
    }
}

/// Whether `agent` may report `capture_id` as the result of `request_id`:
/// the capture must be its own, complete, and opened after the request
/// was made (an agent cannot pass off an older capture, or another
/// agent's, as the one asked for).
async fn accept_complete(
    replica: &Replica,
    agent: &str,
    request_id: &str,
    capture_id: &str,
) -> Result<(), String> {
    check_capture_id(capture_id).map_err(|s| s.message().to_owned())?;
    let store = replica.store();
    let k = key(&["requests", request_id]).map_err(|e| e.to_string())?;
    let request: docs::RequestDoc = docs::read(store, &k)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no such request")?;
    let state = store
        .state(capture_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("capture {capture_id} was never opened"))?;
    if state.owner != agent {
        return Err(format!("capture {capture_id} belongs to another agent"));
    }
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    };
    match (parse(&state.opened_at), parse(&request.created_at)) {
        (Some(opened), Some(asked)) if opened >= asked => {}
        _ => {
            return Err(format!(
                "capture {capture_id} was opened at {}, before the request ({})",
                state.opened_at, request.created_at
            ));
        }
    }
    let complete = state.complete
        || store
            .find_manifest(&state)
            .await
            .map_err(|e| e.to_string())?
            .is_some();
    if !complete {
        return Err(format!("capture {capture_id} is not complete"));
    }
    Ok(())
}

/// Updates `results/<request>/<agent>`, which must exist (the request was
/// delivered to this identity) and must not be final yet.
async fn update_result(
    replica: &Replica,
    presence: &PresenceDoc,
    request_id: &str,
    capture_id: &str,
    update: impl FnOnce(&mut ResultDoc),
) -> Result<(), String> {
    check_capture_id(request_id).map_err(|s| s.message().to_owned())?;
    if !capture_id.is_empty() {
        check_capture_id(capture_id).map_err(|s| s.message().to_owned())?;
    }
    let k = key(&["results", request_id, &presence.facts.agent]).map_err(|e| e.to_string())?;
    let mut doc: ResultDoc = docs::read(replica.store(), &k)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no such request was delivered to this agent")?;
    if doc.is_final() {
        return Err(format!("result already {}", doc.status));
    }
    update(&mut doc);
    doc.session_id.clone_from(&presence.session_id);
    doc.updated_at = docs::now();
    docs::write(replica.store(), &k, &doc)
        .await
        .map_err(|e| e.to_string())
}
