//! The control documents that hold every request, result and agent
//! connection in the store (never only in one replica's memory), their
//! keys, and the rules that read them.
//!
//! ```text
//! requests/<request-id>                 what was asked, of whom, by whom, until when
//! results/<request-id>/<agent>          one per agent: delivered, running, complete, failed, refused
//! agents/<agent>/<connection-id>        one per live connection: host facts, labels, replica
//! replicas/<replica-id>                 each replica's heartbeat, with the last-seen time of
//!                                       each of its connections
//! ```
//!
//! A connection is live while its replica's document is fresh and lists
//! it; a replica that died stops refreshing, so its connections stop
//! being listed without anyone cleaning up after it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::{DocKey, Store, StoreError};

/// `requests/<id>`: what an analyst asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestDoc {
    /// Request id (UUIDv7).
    pub request_id: String,
    /// Analyst identity from the certificate.
    pub created_by: String,
    /// RFC 3339.
    pub created_at: String,
    /// Agents that connect after this no longer receive it (RFC 3339).
    pub expires_at: String,
    /// Whom it is for.
    pub target: TargetDoc,
    /// What to capture (checked by `ircap_proto::request_args::check_spec`
    /// before it was stored; the agent's policy decides what it allows).
    pub spec: ircap_proto::v1::CaptureSpec,
    /// Byte budget (0: none).
    pub max_bytes: u64,
    /// Time budget in seconds (0: none).
    pub max_seconds: u64,
}

/// Which agents a request is for; every given field must match.
///
/// `host` is the agent's certificate identity, the only fact an agent
/// cannot choose; the hostname, instance id and labels come from the
/// agent's hello, so an attacker holding another host's certificate can
/// claim them, and a target names them only explicitly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetDoc {
    /// Agent identity from its certificate.
    pub host: Option<String>,
    /// Hostname the agent claims in its hello.
    #[serde(default)]
    pub claimed_hostname: Option<String>,
    /// EC2 instance id the agent claims.
    pub instance_id: Option<String>,
    /// Labels that must all be present with these values.
    pub labels: BTreeMap<String, String>,
    /// Every agent.
    pub all: bool,
}

/// What a target is matched against.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// Agent identity from its certificate.
    pub agent: String,
    /// Hostname the agent announced.
    pub hostname: String,
    /// EC2 instance id, when known.
    pub instance_id: String,
    /// Labels from the agent's config.
    pub labels: BTreeMap<String, String>,
}

/// What a target matched an agent by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchedBy {
    /// Its certificate identity.
    Identity,
    /// The hostname it claims.
    ClaimedHostname,
    /// The instance id it claims.
    ClaimedInstanceId,
    /// The labels it claims (from its own config).
    Labels,
    /// `--all`.
    All,
}

impl MatchedBy {
    /// How `request` output names it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::ClaimedHostname => "claimed hostname",
            Self::ClaimedInstanceId => "claimed instance id",
            Self::Labels => "labels",
            Self::All => "all",
        }
    }

    /// Whether it rests on something the agent said rather than on its
    /// certificate.
    #[must_use]
    pub fn is_claim(self) -> bool {
        matches!(
            self,
            Self::ClaimedHostname | Self::ClaimedInstanceId | Self::Labels
        )
    }
}

impl TargetDoc {
    /// Whether the target names anything at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.all
            && self.host.is_none()
            && self.claimed_hostname.is_none()
            && self.instance_id.is_none()
            && self.labels.is_empty()
    }

    /// Whether `facts` is targeted.
    #[must_use]
    pub fn matches(&self, facts: &HostFacts) -> bool {
        self.matched_by(facts).is_some()
    }

    /// What targeted `facts` (every criterion the target gives, each of
    /// which matched), or `None` when it is not targeted.
    #[must_use]
    pub fn matched_by(&self, facts: &HostFacts) -> Option<Vec<MatchedBy>> {
        if self.is_empty() {
            return None;
        }
        let mut by = Vec::new();
        if let Some(h) = &self.host {
            if *h != facts.agent {
                return None;
            }
            by.push(MatchedBy::Identity);
        }
        if let Some(h) = &self.claimed_hostname {
            if *h != facts.hostname {
                return None;
            }
            by.push(MatchedBy::ClaimedHostname);
        }
        if let Some(i) = &self.instance_id {
            if *i != facts.instance_id {
                return None;
            }
            by.push(MatchedBy::ClaimedInstanceId);
        }
        if !self.labels.is_empty() {
            if !self
                .labels
                .iter()
                .all(|(k, v)| facts.labels.get(k) == Some(v))
            {
                return None;
            }
            by.push(MatchedBy::Labels);
        }
        if self.all {
            by.push(MatchedBy::All);
        }
        Some(by)
    }
}

/// `results/<request-id>/<agent>`: where a request stands on one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultDoc {
    /// The request.
    pub request_id: String,
    /// Agent identity.
    pub agent: String,
    /// The agent process it was delivered to.
    pub session_id: String,
    /// Its hostname.
    pub hostname: String,
    /// `delivered`, `running`, `complete`, `failed` or `refused`.
    pub status: String,
    /// The capture, once started.
    pub capture_id: String,
    /// Why it failed or was refused.
    pub error: String,
    /// Stored bytes of a complete capture.
    pub bytes_stored: u64,
    /// The replica that delivered it.
    pub replica_id: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl ResultDoc {
    /// Whether nothing more will happen to it.
    #[must_use]
    pub fn is_final(&self) -> bool {
        matches!(
            self.status.as_str(),
            "complete" | "partial" | "failed" | "refused"
        )
    }
}

/// `agents/<agent>/<connection-id>`: one live connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceDoc {
    /// Host facts from the hello (identity from the certificate).
    #[serde(flatten)]
    pub facts: HostFacts,
    /// The agent process (random per process; a reconnect keeps it).
    pub session_id: String,
    /// This connection.
    pub connection_id: String,
    /// The replica holding the connection.
    pub replica_id: String,
    /// RFC 3339.
    pub connected_at: String,
    /// SHA-256 of the agent's certificate.
    pub cert_sha256: String,
    /// Agent version.
    pub agent_version: String,
}

/// A connection as its replica last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSeen {
    /// RFC 3339 time of the last heartbeat or message.
    pub last_seen: String,
    /// The request being captured, if any.
    pub busy_request_id: Option<String>,
}

/// One connection in its replica's document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveConnection {
    /// Who and where.
    pub presence: PresenceDoc,
    /// When last heard from, and what it is doing.
    pub seen: ConnectionSeen,
}

/// `replicas/<replica-id>`: a replica's heartbeat, with every connection
/// it holds, so that listing agents or matching a request reads one
/// document per replica, not one per agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDoc {
    /// Replica id (random per collector process).
    pub replica_id: String,
    /// RFC 3339 time this document was written.
    pub written_at: String,
    /// Live connections by connection id.
    pub connections: BTreeMap<String, LiveConnection>,
}

/// One live connection as `agents` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAgent {
    /// From the presence document.
    pub presence: PresenceDoc,
    /// From the replica document.
    pub seen: ConnectionSeen,
    /// Another live connection with the same identity has another session.
    pub duplicate: bool,
}

/// Builds a key from segments already known to be valid names.
///
/// # Errors
/// [`StoreError::BadKey`] when a segment is not.
pub fn key(parts: &[&str]) -> Result<DocKey, StoreError> {
    DocKey::new(parts.join("/"))
}

/// Now, RFC 3339.
#[must_use]
pub fn now() -> String {
    crate::timefmt::now()
}

/// `at` is older than `age` (or unreadable).
#[must_use]
pub fn older_than(at: &str, age: Duration) -> bool {
    OffsetDateTime::parse(at, &Rfc3339).map_or(true, |t| {
        OffsetDateTime::now_utc() - t > time::Duration::try_from(age).unwrap_or(time::Duration::MAX)
    })
}

/// RFC 3339 time `d` from now.
#[must_use]
pub fn from_now(d: Duration) -> String {
    let t = OffsetDateTime::now_utc() + time::Duration::try_from(d).unwrap_or(time::Duration::DAY);
    t.format(&Rfc3339).unwrap_or_default()
}

/// Reads and parses a document, if present.
///
/// # Errors
/// [`StoreError`] when it cannot be read or parsed.
pub async fn read<T: for<'de> Deserialize<'de>>(
    store: &Store,
    key: &DocKey,
) -> Result<Option<T>, StoreError> {
    match store.get_doc(key).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                context: key.to_string(),
                message: e.to_string(),
            }),
    }
}

/// Serialises and writes a document.
///
/// # Errors
/// [`StoreError`] when it cannot be written.
pub async fn write<T: Serialize>(store: &Store, key: &DocKey, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        context: key.to_string(),
        message: e.to_string(),
    })?;
    store.put_doc(key, &bytes).await
}

/// The last segment of a key.
#[must_use]
pub fn leaf(key: &DocKey) -> &str {
    key.as_str().rsplit('/').next().unwrap_or_default()
}

/// The fresh replica documents: a replica whose document is older than
/// `stale` is dead, and so are its connections.
///
/// # Errors
/// [`StoreError`] when the store cannot be read.
pub async fn live_replicas(
    store: &Store,
    stale: Duration,
) -> Result<BTreeMap<String, ReplicaDoc>, StoreError> {
    let mut replicas = BTreeMap::new();
    for k in store.list_docs(&key(&["replicas"])?).await? {
        if let Some(doc) = read::<ReplicaDoc>(store, &k).await?
            && !older_than(&doc.written_at, stale)
        {
            replicas.insert(doc.replica_id.clone(), doc);
        }
    }
    Ok(replicas)
}

/// Every live agent connection, whichever replica holds it (one read per
/// replica).
///
/// # Errors
/// [`StoreError`] when the store cannot be read.
pub async fn live_agents(store: &Store, stale: Duration) -> Result<Vec<LiveAgent>, StoreError> {
    let mut live: Vec<LiveAgent> = live_replicas(store, stale)
        .await?
        .into_values()
        .flat_map(|r| r.connections.into_values())
        .map(|c| LiveAgent {
            presence: c.presence,
            seen: c.seen,
            duplicate: false,
        })
        .collect();
    flag_duplicates(&mut live);
    Ok(live)
}

/// The live connections of one identity, from its `agents/<agent>/`
/// presence documents (usually one), checked against their replicas.
///
/// # Errors
/// [`StoreError`] when the store cannot be read.
pub async fn live_connections_of(
    store: &Store,
    agent: &str,
    stale: Duration,
) -> Result<Vec<PresenceDoc>, StoreError> {
    let mut replicas: BTreeMap<String, Option<ReplicaDoc>> = BTreeMap::new();
    let mut live = Vec::new();
    for k in store.list_docs(&key(&["agents", agent])?).await? {
        let Some(p) = read::<PresenceDoc>(store, &k).await? else {
            continue;
        };
        if !replicas.contains_key(&p.replica_id) {
            let doc = read::<ReplicaDoc>(store, &key(&["replicas", &p.replica_id])?)
                .await?
                .filter(|d| !older_than(&d.written_at, stale));
            replicas.insert(p.replica_id.clone(), doc);
        }
        let holds = replicas
            .get(&p.replica_id)
            .and_then(Option::as_ref)
            .is_some_and(|r| r.connections.contains_key(&p.connection_id));
        if holds {
            live.push(p);
        }
    }
    Ok(live)
}

/// Marks connections whose identity is also held by another agent process.
pub fn flag_duplicates(live: &mut [LiveAgent]) {
    let mut sessions: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for a in live.iter() {
        sessions
            .entry(a.presence.facts.agent.clone())
            .or_default()
            .insert(a.presence.session_id.clone());
    }
    for a in live.iter_mut() {
        a.duplicate = sessions
            .get(&a.presence.facts.agent)
            .is_some_and(|s| s.len() > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(agent: &str, host: &str, env: &str) -> HostFacts {
        HostFacts {
            agent: agent.into(),
            hostname: host.into(),
            instance_id: "i-1".into(),
            labels: [("env".to_owned(), env.to_owned())].into(),
        }
    }

    fn host(h: &str) -> TargetDoc {
        TargetDoc {
            host: Some(h.into()),
            ..TargetDoc::default()
        }
    }

    #[test]
    fn host_matches_the_certificate_identity_only() {
        // web-2 claims to be db-prod; the real db-prod claims its own name.
        let impostor = facts("web-2", "db-prod", "prod");
        let db = facts("db-prod", "db-prod", "prod");
        let target = host("db-prod");
        assert_eq!(target.matched_by(&db), Some(vec![MatchedBy::Identity]));
        assert_eq!(
            target.matched_by(&impostor),
            None,
            "a claim is not an identity"
        );
        assert!(!host("h1").matches(&facts("web-1", "h1", "prod")));
        assert!(host("web-1").matches(&facts("web-1", "h1", "prod")));
    }

    #[test]
    fn claims_match_only_when_asked_for_and_say_so() {
        let impostor = facts("web-2", "db-prod", "dev");
        let db = facts("db-prod", "db-prod", "prod");
        let by_claim = TargetDoc {
            claimed_hostname: Some("db-prod".into()),
            ..TargetDoc::default()
        };
        for f in [&impostor, &db] {
            assert_eq!(
                by_claim.matched_by(f),
                Some(vec![MatchedBy::ClaimedHostname])
            );
        }
        assert!(!by_claim.matches(&facts("web-1", "h1", "prod")));
        assert!(
            !by_claim.matches(&facts("db-prod", "other", "prod")),
            "a claimed hostname does not match an identity"
        );
        let by_instance = TargetDoc {
            instance_id: Some("i-1".into()),
            ..TargetDoc::default()
        };
        assert_eq!(
            by_instance.matched_by(&db),
            Some(vec![MatchedBy::ClaimedInstanceId])
        );
        assert!(
            !TargetDoc {
                instance_id: Some("i-2".into()),
                ..TargetDoc::default()
            }
            .matches(&db)
        );
        assert!(MatchedBy::ClaimedHostname.is_claim());
        assert!(MatchedBy::ClaimedInstanceId.is_claim());
        assert!(MatchedBy::Labels.is_claim());
        assert!(!MatchedBy::Identity.is_claim());
    }

    #[test]
    fn every_given_criterion_must_match_and_is_reported() {
        let db = facts("db-prod", "db-prod", "prod");
        let both = TargetDoc {
            host: Some("db-prod".into()),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            ..TargetDoc::default()
        };
        assert_eq!(
            both.matched_by(&db),
            Some(vec![MatchedBy::Identity, MatchedBy::Labels])
        );
        let wrong_label = TargetDoc {
            labels: [("env".to_owned(), "dev".to_owned())].into(),
            ..both.clone()
        };
        assert!(!wrong_label.matches(&db));
        let web2 = facts("web-2", "h2", "dev");
        let by_label = TargetDoc {
            labels: [("env".to_owned(), "dev".to_owned())].into(),
            ..TargetDoc::default()
        };
        assert_eq!(by_label.matched_by(&web2), Some(vec![MatchedBy::Labels]));
        assert!(!by_label.matches(&db));
        let all = TargetDoc {
            all: true,
            ..TargetDoc::default()
        };
        assert_eq!(all.matched_by(&web2), Some(vec![MatchedBy::All]));
        assert!(all.matches(&db));
        assert!(
            !TargetDoc::default().matches(&db),
            "an empty target matches nothing"
        );
    }

    #[test]
    fn requests_stored_before_claimed_hostname_existed_still_read() {
        let old = r#"{"host":"db-prod","instance_id":null,"labels":{},"all":false}"#;
        let t: TargetDoc = serde_json::from_str(old).unwrap_or_default();
        assert_eq!(t, host("db-prod"));
    }

    #[test]
    fn age() {
        assert!(!older_than(&now(), Duration::from_secs(60)));
        assert!(older_than("2000-01-01T00:00:00Z", Duration::from_secs(60)));
        assert!(older_than("garbage", Duration::from_secs(60)));
    }
}
