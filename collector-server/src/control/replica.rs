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
pub struct Replica<S: Store> {
    /// Random per collector process.
    pub id: String,
    store: Arc<S>,
    conns: Mutex<HashMap<String, Conn>>,
    wake: Notify,
    /// Interval between looks at the store.
    pub poll: Duration,
}

impl<S: Store> Replica<S> {
    /// A replica over `store`, polling every `poll`.
    pub fn new(store: Arc<S>, poll: Duration) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            store,
            conns: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            poll,
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
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
        let mut requests: BTreeMap<String, RequestDoc> = BTreeMap::new();
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
    /// line with `requests/`, keeping the unexpired ones.
    async fn refresh_requests(
        &self,
        cache: &mut BTreeMap<String, RequestDoc>,
    ) -> Result<(), StoreError> {
        let listed = self.store.list_docs(&key(&["requests"])?).await?;
        let ids: HashSet<String> = listed.iter().map(|k| docs::leaf(k).to_owned()).collect();
        cache.retain(|id, r| ids.contains(id) && !docs::older_than(&r.expires_at, Duration::ZERO));
        for k in &listed {
            let id = docs::leaf(k);
            if cache.contains_key(id) {
                continue;
            }
            match docs::read::<S, RequestDoc>(&self.store, k).await {
                Ok(Some(r)) if !docs::older_than(&r.expires_at, Duration::ZERO) => {
                    cache.insert(id.to_owned(), r);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(request = id, error = %e, "Unreadable capture request"),
            }
        }
        Ok(())
    }

    /// Gives each idle connection its next request.
    async fn deliver(&self, requests: &BTreeMap<String, RequestDoc>) -> Result<(), StoreError> {
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
                let Some(request) = requests.get(&request_id) else {
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
                    Some(tx) => tx.send(Ok(msg)).await.is_ok(),
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
                    // The connection went away between the two steps: the
                    // agent never got it, so it may get it again.
                    tracing::info!(
                        request_id,
                        agent = presence.facts.agent,
                        "Connection gone before delivery"
                    );
                    self.store.delete_doc(&result_key).await?;
                }
                // One request at a time per connection.
                break;
            }
        }
        Ok(())
    }
}
