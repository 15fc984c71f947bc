//! This replica's side of daemon mode: the agent connections it holds, its
//! heartbeat document, and the loop that delivers stored requests to them.
//!
//! Nothing here is the only copy of anything: requests, results and
//! presence are control documents in the store. The loop lists
//! `requests/` every poll interval (and at once when a request is made on
//! this replica or an agent connects or finishes), and gives each idle
//! local connection the oldest unexpired request that targets it and has
//! no `results/<request>/<agent>` document yet, writing that document
//! (`delivered`) before sending — so the same agent never gets a request
//! twice, whichever replica it is connected to.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ircap_proto::v1::{CaptureRequest, CollectorMessage, collector_message};
use tokio::sync::{Notify, mpsc};
use tonic::Status;

use super::docs::{
    self, ConnectionSeen, LiveConnection, PresenceDoc, ReplicaDoc, RequestDoc, ResultDoc, key,
};
use crate::store::{Store, StoreError};

/// Default interval between looks at the store.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);
/// How long delivery waits for room in one agent connection's queue: an
/// agent that does not read its stream loses the request (it is offered
/// again later), never the other agents their heartbeat and deliveries.
pub const DELIVERY_SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Request documents by id; `None` for one expired or unreadable.
type RequestCache = BTreeMap<String, Option<RequestDoc>>;

/// Messages to one agent connection.
pub type Outbound = mpsc::Sender<Result<CollectorMessage, Status>>;

/// One agent connection held by this replica.
struct Conn {
    presence: PresenceDoc,
    tx: Outbound,
    seen: ConnectionSeen,
    /// Requests known to be handled for this agent (delivered here or
    /// elsewhere), so the store is asked about each one once.
    handled: HashSet<String>,
}

/// This replica.
pub struct Replica {
    /// Random per collector process.
    pub id: String,
    store: Arc<Store>,
    conns: Mutex<HashMap<String, Conn>>,
    wake: Notify,
    /// Interval between looks at the store.
    pub poll: Duration,
}

impl Replica {
    /// A replica over `store`, polling every `poll`.
    pub fn new(store: Arc<Store>, poll: Duration) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            store,
            conns: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            poll,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A replica document older than this is a dead replica.
    #[must_use]
    pub fn stale_after(&self) -> Duration {
        self.poll * 3 + Duration::from_secs(5)
    }

    /// Makes the delivery loop look now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn with_conns<T>(&self, f: impl FnOnce(&mut HashMap<String, Conn>) -> T) -> T {
        match self.conns.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Adds a connection and publishes it.
    pub async fn register(&self, presence: PresenceDoc, busy: Option<String>, tx: Outbound) {
        let conn = Conn {
            seen: ConnectionSeen {
                last_seen: docs::now(),
                busy_request_id: busy,
            },
            presence,
            tx,
            handled: HashSet::new(),
        };
        self.with_conns(|c| c.insert(conn.presence.connection_id.clone(), conn));
        self.publish().await;
        self.wake();
    }

    /// Removes a connection (its stream ended) and its presence document.
    pub async fn unregister(&self, connection_id: &str) {
        let gone = self.with_conns(|c| c.remove(connection_id));
        if let Some(conn) = gone {
            let p = &conn.presence;
            if let Ok(k) = key(&["agents", &p.facts.agent, &p.connection_id])
                && let Err(e) = self.store.delete_doc(&k).await
            {
                tracing::warn!(error = %e, "Cannot remove agent presence");
            }
            tracing::info!(
                agent = p.facts.agent,
                hostname = p.facts.hostname,
                connection = p.connection_id,
                "Agent disconnected"
            );
            // Delivered but never acknowledged by a progress report: the
            // agent may never have received it, so let it be offered again
            // (the agent itself refuses to run a request id twice).
            if let Some(request_id) = &conn.seen.busy_request_id
                && let Err(e) = self.forget_unstarted(request_id, &p.facts.agent).await
            {
                tracing::warn!(request_id, error = %e, "Cannot reset an unstarted request");
            }
        }
        self.publish().await;
    }

    /// (hostname, session) of this replica's connections of `agent`.
    pub fn local_sessions_of(&self, agent: &str) -> Vec<(String, String)> {
        self.with_conns(|c| {
            c.values()
                .filter(|conn| conn.presence.facts.agent == agent)
                .map(|conn| {
                    let p = &conn.presence;
                    (p.facts.hostname.clone(), p.session_id.clone())
                })
                .collect()
        })
    }

    /// Removes `results/<request>/<agent>` if it still says `delivered`.
    async fn forget_unstarted(&self, request_id: &str, agent: &str) -> Result<(), StoreError> {
        let k = key(&["results", request_id, agent])?;
        let doc: Option<ResultDoc> = docs::read(self.store.as_ref(), &k).await?;
        if doc.is_some_and(|d| d.status == "delivered") {
            self.store.delete_doc(&k).await?;
        }
        Ok(())
    }

    /// A heartbeat or other message from a connection.
    pub fn touch(&self, connection_id: &str, busy: Option<String>) {
        self.with_conns(|c| {
            if let Some(conn) = c.get_mut(connection_id) {
                conn.seen.last_seen = docs::now();
                if busy.is_some() {
                    conn.seen.busy_request_id = busy;
                }
            }
        });
    }

    /// The connection finished `request_id`: it may get the next one.
    pub fn finished(&self, connection_id: &str, request_id: &str) {
        self.with_conns(|c| {
            if let Some(conn) = c.get_mut(connection_id) {
                conn.seen.last_seen = docs::now();
                if conn.seen.busy_request_id.as_deref() == Some(request_id) {
                    conn.seen.busy_request_id = None;
                }
            }
        });
        self.wake();
    }

    /// Ends every agent stream (on shutdown): agents reconnect, to another
    /// replica or to this one when it is back.
    pub fn close_all(&self) {
        self.with_conns(HashMap::clear);
    }

    /// Writes `replicas/<id>` with every connection's last-seen time.
    pub async fn publish(&self) {
        let doc = ReplicaDoc {
            replica_id: self.id.clone(),
            written_at: docs::now(),
            connections: self.with_conns(|c| {
                c.iter()
                    .map(|(id, conn)| {
                        let live = LiveConnection {
                            presence: conn.presence.clone(),
                            seen: conn.seen.clone(),
                        };
                        (id.clone(), live)
                    })
                    .collect()
            }),
        };
        let result = match key(&["replicas", &self.id]) {
            Ok(k) => docs::write(self.store.as_ref(), &k, &doc).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "Cannot publish the replica's connections");
        }
    }

    /// Publishes and delivers forever (spawn it).
    pub async fn run(self: Arc<Self>) {
        let mut requests = RequestCache::new();
        loop {
            self.publish().await;
            if let Err(e) = self.refresh_requests(&mut requests).await {
                tracing::warn!(error = %e, "Cannot read capture requests");
            } else if let Err(e) = self.deliver(&requests).await {
                tracing::warn!(error = %e, "Cannot deliver capture requests");
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = self.wake.notified() => {}
            }
        }
    }

    /// Brings the cache of request documents (immutable once written) in
    /// line with `requests/`. Each document is read once: expired and
    /// unreadable ones are remembered as such (`None`) for as long as they
    /// are listed, instead of being read again every poll.
    async fn refresh_requests(&self, cache: &mut RequestCache) -> Result<(), StoreError> {
        let listed = self.store.list_docs(&key(&["requests"])?).await?;
        let ids: HashSet<String> = listed.iter().map(|k| docs::leaf(k).to_owned()).collect();
        cache.retain(|id, _| ids.contains(id));
        for r in cache.values_mut() {
            if r.as_ref()
                .is_some_and(|r| docs::older_than(&r.expires_at, Duration::ZERO))
            {
                *r = None;
            }
        }
        for k in &listed {
            let id = docs::leaf(k);
            if cache.contains_key(id) {
                continue;
            }
            let doc = match docs::read::<RequestDoc>(&self.store, k).await {
                Ok(Some(r)) if !docs::older_than(&r.expires_at, Duration::ZERO) => Some(r),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(request = id, error = %e, "Unreadable capture request");
                    None
                }
            };
            cache.insert(id.to_owned(), doc);
        }
        Ok(())
    }

    /// Gives each idle connection its next request.
    async fn deliver(&self, cache: &RequestCache) -> Result<(), StoreError> {
        let requests: BTreeMap<&String, &RequestDoc> = cache
            .iter()
            .filter_map(|(id, r)| Some((id, r.as_ref()?)))
            .collect();
        if requests.is_empty() {
            return Ok(());
        }
        // (connection, agent, candidate request ids) for idle connections.
        let idle: Vec<(String, PresenceDoc, Vec<String>)> = self.with_conns(|c| {
            c.iter()
                .filter(|(_, conn)| conn.seen.busy_request_id.is_none())
                .map(|(id, conn)| {
                    let todo = requests
                        .values()
                        .filter(|r| {
                            !conn.handled.contains(&r.request_id)
                                && r.target.matches(&conn.presence.facts)
                        })
                        .map(|r| r.request_id.clone())
                        .collect();
                    (id.clone(), conn.presence.clone(), todo)
                })
                .collect()
        });
        for (conn_id, presence, todo) in idle {
            for request_id in todo {
                let result_key = key(&["results", &request_id, &presence.facts.agent])?;
                let mark = |me: &Self| {
                    me.with_conns(|c| {
                        if let Some(conn) = c.get_mut(&conn_id) {
                            conn.handled.insert(request_id.clone());
                        }
                    });
                };
                if self.store.get_doc(&result_key).await?.is_some() {
                    mark(self);
                    continue;
                }
                let Some(request) = requests.get(&request_id).copied() else {
                    continue;
                };
                let doc = ResultDoc {
                    request_id: request_id.clone(),
                    agent: presence.facts.agent.clone(),
                    session_id: presence.session_id.clone(),
                    hostname: presence.facts.hostname.clone(),
                    status: "delivered".into(),
                    capture_id: String::new(),
                    error: String::new(),
                    bytes_stored: 0,
                    replica_id: self.id.clone(),
                    updated_at: docs::now(),
                };
                docs::write(self.store.as_ref(), &result_key, &doc).await?;
                mark(self);
                let tx = self.with_conns(|c| {
                    c.get_mut(&conn_id).map(|conn| {
                        conn.seen.busy_request_id = Some(request_id.clone());
                        conn.tx.clone()
                    })
                });
                let msg = CollectorMessage {
                    body: Some(collector_message::Body::Request(CaptureRequest {
                        request_id: request_id.clone(),
                        spec: Some(request.spec.clone()),
                        max_bytes: request.max_bytes,
                        max_seconds: request.max_seconds,
                    })),
                };
                let sent = match tx {
                    Some(tx) => tokio::time::timeout(DELIVERY_SEND_TIMEOUT, tx.send(Ok(msg)))
                        .await
                        .is_ok_and(|sent| sent.is_ok()),
                    None => false,
                };
                if sent {
                    tracing::info!(
                        request_id,
                        agent = presence.facts.agent,
                        hostname = presence.facts.hostname,
                        "Capture request delivered"
                    );
                } else {
                    // The connection went away between the two steps, or
                    // its agent does not read: it never got the request,
                    // so it may get it again (on a new connection: this
                    // one is not offered it again, so a stalled agent costs
                    // the loop one timeout per request, not one per poll).
                    tracing::info!(
                        request_id,
                        agent = presence.facts.agent,
                        "Connection gone or not reading; not delivered"
                    );
                    self.with_conns(|c| {
                        if let Some(conn) = c.get_mut(&conn_id) {
                            conn.seen.busy_request_id = None;
                        }
                    });
                    self.store.delete_doc(&result_key).await?;
                }
                // One request at a time per connection.
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::any::AnyBlob;
    use crate::store::evidence::Evidence;
    use crate::store::file::FileBlob;
    use docs::{HostFacts, TargetDoc};

    fn replica(dir: &std::path::Path) -> Arc<Replica> {
        let store = Evidence::new(AnyBlob::File(FileBlob::open(dir).unwrap()));
        Arc::new(Replica::new(Arc::new(store), DEFAULT_POLL))
    }

    fn request(id: &str, expires_at: &str) -> RequestDoc {
        RequestDoc {
            request_id: id.into(),
            created_by: "analyst-1".into(),
            created_at: docs::now(),
            expires_at: expires_at.into(),
            target: TargetDoc {
                host: Some("web-1".into()),
                ..TargetDoc::default()
            },
            spec: ircap_proto::v1::CaptureSpec::default(),
            max_bytes: 0,
            max_seconds: 0,
        }
    }

    fn presence() -> PresenceDoc {
        PresenceDoc {
            facts: HostFacts {
                agent: "web-1".into(),
                hostname: "web-1".into(),
                ..HostFacts::default()
            },
            session_id: "s".into(),
            connection_id: "c1".into(),
            replica_id: "r".into(),
            connected_at: docs::now(),
            cert_sha256: String::new(),
            agent_version: String::new(),
        }
    }

    #[tokio::test]
    async fn an_expired_request_is_read_once_not_every_poll() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path());
        let k = key(&["requests", "old"]).unwrap();
        docs::write(r.store(), &k, &request("old", "2000-01-01T00:00:00Z"))
            .await
            .unwrap();
        let mut cache = RequestCache::new();
        r.refresh_requests(&mut cache).await.unwrap();
        assert_eq!(cache.get("old"), Some(&None));
        // Request documents never change; if this one were read again the
        // cache would now hold a live request.
        docs::write(r.store(), &k, &request("old", "2999-01-01T00:00:00Z"))
            .await
            .unwrap();
        r.refresh_requests(&mut cache).await.unwrap();
        assert_eq!(cache.get("old"), Some(&None));
        // Gone from the store, gone from the cache.
        r.store().delete_doc(&k).await.unwrap();
        r.refresh_requests(&mut cache).await.unwrap();
        assert!(cache.is_empty());
    }

    #[tokio::test]
    async fn an_agent_that_does_not_read_cannot_stall_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path());
        // A connection whose queue is full and never read.
        let (tx, _rx) = mpsc::channel(1);
        tx.send(Ok(CollectorMessage::default())).await.unwrap();
        r.register(presence(), None, tx).await;
        let k = key(&["requests", "now"]).unwrap();
        docs::write(r.store(), &k, &request("now", "2999-01-01T00:00:00Z"))
            .await
            .unwrap();
        let mut cache = RequestCache::new();
        r.refresh_requests(&mut cache).await.unwrap();
        let started = std::time::Instant::now();
        tokio::time::timeout(DELIVERY_SEND_TIMEOUT * 3, r.deliver(&cache))
            .await
            .expect("delivery waited on a stalled agent")
            .unwrap();
        assert!(started.elapsed() >= DELIVERY_SEND_TIMEOUT);
        // Not delivered, so not marked as such, and the connection is idle.
        let result = key(&["results", "now", "web-1"]).unwrap();
        assert_eq!(r.store().get_doc(&result).await.unwrap(), None);
        r.with_conns(|c| assert_eq!(c["c1"].seen.busy_request_id, None));
        // The heartbeat still goes out.
        r.publish().await;
        let doc = key(&["replicas", &r.id]).unwrap();
        assert!(r.store().get_doc(&doc).await.unwrap().is_some());
    }
}
