//! Limits per agent identity, so one agent (perhaps the attacker's) cannot
//! hold the collector's streams or state for everyone.
//!
//! | limit | value | excess |
//! |---|---|---|
//! | upload streams at once per identity | [`MAX_STREAMS_PER_IDENTITY`] | `RESOURCE_EXHAUSTED`, retry after [`STREAM_PUSHBACK`] |
//! | HTTP/2 streams at once per connection | [`MAX_STREAMS_PER_CONNECTION`] | held back by HTTP/2 flow control |
//! | connections at once per identity | [`MAX_CONNECTIONS_PER_IDENTITY`] | every call on the extra connection: `RESOURCE_EXHAUSTED`, retry (on a new connection) after [`CONNECTION_PUSHBACK`] |
//! | captures opened in the last [`OPEN_WINDOW`] and not committed, per identity | [`MAX_OPEN_CAPTURES`] | `RESOURCE_EXHAUSTED`, retry after [`OPEN_PUSHBACK`] |
//! | artifacts per capture | [`MAX_ARTIFACTS`] | `RESOURCE_EXHAUSTED`, no retry |
//! | one upload stream's life | [`STREAM_DEADLINE`] | `DEADLINE_EXCEEDED` (resumable) |
//! | an artifact that decoded past a cap (a gzip bomb) | the identity's next uploads wait [`BOMB_PENALTY`], doubling per bomb up to [`MAX_BOMB_PENALTY`] | `RESOURCE_EXHAUSTED` at stream start, before any byte is decoded, retry after what is left of it |
//! | a manifest | [`MAX_MANIFEST_BYTES`] (holds [`MAX_ARTIFACTS`] entries with room to spare) | `INVALID_ARGUMENT`, naming the limit |
//!
//! The retry hint travels as the standard `grpc-retry-pushback-ms`
//! metadata; the agent waits that long plus jitter before trying again,
//! and gives up on a `RESOURCE_EXHAUSTED` without one.
//!
//! Counts live in this replica. Open captures are counted from the store
//! at start and kept as captures open and commit; one left uncommitted
//! stops counting after [`OPEN_WINDOW`], so an agent whose captures broke
//! off is not locked out for good (and after the upload TTL the capture
//! itself expires from the store, see [`crate::store::repair::sweep`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tonic::Status;

/// Upload streams one identity may have open at once.
pub const MAX_STREAMS_PER_IDENTITY: usize = 8;
/// HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// TLS connections one identity may hold at once (an agent needs one or
/// two; the margin covers reconnects while a dead one times out).
pub const MAX_CONNECTIONS_PER_IDENTITY: usize = 8;
/// Retry hint on a connection past [`MAX_CONNECTIONS_PER_IDENTITY`].
pub const CONNECTION_PUSHBACK: Duration = Duration::from_secs(5);
/// Captures one identity may have opened and not committed.
pub const MAX_OPEN_CAPTURES: usize = 16;
/// How long an uncommitted capture counts against its agent.
pub const OPEN_WINDOW: Duration = Duration::from_secs(3600);
/// Artifacts one capture may hold, and the largest manifest a commit may
/// carry: one pair shared with the agent, chosen so that a capture of
/// [`MAX_ARTIFACTS`] always has a manifest that fits (the agent stops its
/// per-file collectors below the artifact limit and records the cut).
pub use ircap_proto::manifest::{MAX_ARTIFACTS, MAX_MANIFEST_BYTES};
/// Longest life of one upload stream (the agent then resumes on another).
pub const STREAM_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// Retry hint when an identity has too many streams.
pub const STREAM_PUSHBACK: Duration = Duration::from_secs(2);
/// Retry hint when an identity has too many open captures.
pub const OPEN_PUSHBACK: Duration = Duration::from_secs(30);
/// How long an identity's uploads are refused after its first artifact
/// that decoded past a cap: a bomb costs the collector tens of
/// milliseconds of CPU to refuse, a refused stream start almost nothing,
/// so a bombing agent cannot take the CPU from the others.
pub const BOMB_PENALTY: Duration = Duration::from_secs(2);
/// The longest that penalty grows to (it doubles per bomb).
pub const MAX_BOMB_PENALTY: Duration = Duration::from_secs(60);

/// `RESOURCE_EXHAUSTED` with a retry hint (`None`: do not retry).
#[must_use]
pub fn exhausted(message: String, retry_after: Option<Duration>) -> Status {
    let mut status = Status::resource_exhausted(message);
    if let Some(after) = retry_after
        && let Ok(v) = after.as_millis().to_string().parse()
    {
        status.metadata_mut().insert("grpc-retry-pushback-ms", v);
    }
    status
}

#[derive(Debug, Default)]
struct Counts {
    streams: HashMap<String, usize>,
    /// Per identity: uploads refused until, and the penalty that set it.
    penalties: HashMap<String, (Instant, Duration)>,
    /// Per identity: capture id -> when it was opened.
    open: HashMap<String, HashMap<String, Instant>>,
}

/// The counts behind the limits.
#[derive(Debug, Default, Clone)]
pub struct Quotas {
    counts: Arc<Mutex<Counts>>,
}

/// One upload stream counted against its identity until dropped.
#[derive(Debug)]
pub struct StreamPermit {
    counts: Arc<Mutex<Counts>>,
    who: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = c.streams.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.streams.remove(&self.who);
            }
        }
    }
}

impl Quotas {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new upload stream of `who`.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` past [`MAX_STREAMS_PER_IDENTITY`].
    pub fn stream(&self, who: &str) -> Result<StreamPermit, Status> {
        let mut c = self.lock();
        if let Some(&(until, _)) = c.penalties.get(who) {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(exhausted(
                    format!(
                        "{who} sent an artifact that decoded past the collector's cap; its uploads are refused for {} ms more",
                        left.as_millis()
                    ),
                    Some(left),
                ));
            }
        }
        let n = c.streams.entry(who.to_owned()).or_default();
        if *n >= MAX_STREAMS_PER_IDENTITY {
            return Err(exhausted(
                format!(
                    "{who} already has {MAX_STREAMS_PER_IDENTITY} upload streams open; retry later"
                ),
                Some(STREAM_PUSHBACK),
            ));
        }
        *n += 1;
        Ok(StreamPermit {
            counts: Arc::clone(&self.counts),
            who: who.to_owned(),
        })
    }

    /// Refuses `who`'s uploads for a while after an artifact of theirs
    /// decoded past a cap: [`BOMB_PENALTY`] the first time, doubling for
    /// each bomb while penalised or within one penalty after it, up to
    /// [`MAX_BOMB_PENALTY`].
    pub fn penalize(&self, who: &str) {
        let now = Instant::now();
        let mut c = self.lock();
        let next = match c.penalties.get(who) {
            Some(&(until, last)) if now < until + last => (last * 2).min(MAX_BOMB_PENALTY),
            _ => BOMB_PENALTY,
        };
        c.penalties.insert(who.to_owned(), (now + next, next));
        // Forget identities whose penalty ran out long ago.
        c.penalties
            .retain(|_, (until, last)| now < *until + *last + MAX_BOMB_PENALTY);
    }

    /// Counts capture `id` as opened by `who` (again: no change).
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` past [`MAX_OPEN_CAPTURES`].
    pub fn open(&self, who: &str, id: &str) -> Result<(), Status> {
        let mut c = self.lock();
        let open = c.open.entry(who.to_owned()).or_default();
        if open.contains_key(id) {
            return Ok(());
        }
        open.retain(|_, at| at.elapsed() < OPEN_WINDOW);
        if open.len() >= MAX_OPEN_CAPTURES {
            return Err(exhausted(
                format!(
                    "{who} already has {MAX_OPEN_CAPTURES} captures open and not committed; commit them or retry later"
                ),
                Some(OPEN_PUSHBACK),
            ));
        }
        open.insert(id.to_owned(), Instant::now());
        Ok(())
    }

    /// Capture `id` of `who` is no longer open (committed or expired).
    pub fn close(&self, who: &str, id: &str) {
        let mut c = self.lock();
        if let Some(open) = c.open.get_mut(who) {
            open.remove(id);
            if open.is_empty() {
                c.open.remove(who);
            }
        }
    }

    /// Counts captures found open, each opened `age` ago (beyond the
    /// limit if there are that many: they only stop new ones).
    pub fn seed_open(&self, open: impl IntoIterator<Item = (String, String, Duration)>) {
        let mut c = self.lock();
        for (who, id, age) in open {
            if age >= OPEN_WINDOW {
                continue;
            }
            let at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
            c.open.entry(who).or_default().entry(id).or_insert(at);
        }
    }
}

#[derive(Debug, Default)]
struct ConnectionCounts {
    /// Connections served, per identity.
    served: HashMap<String, usize>,
    /// Connections past the limit (remote address -> identity): every
    /// call on them is refused until they close.
    refused: HashMap<SocketAddr, String>,
}

/// Connections per identity, counted from the TLS handshake to the close.
#[derive(Debug, Default, Clone)]
pub struct Connections {
    counts: Arc<Mutex<ConnectionCounts>>,
}

/// One connection counted against its identity until dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    counts: Arc<Mutex<ConnectionCounts>>,
    who: String,
    /// Set when this connection is past the limit.
    refused: Option<SocketAddr>,
}

impl ConnectionPermit {
    /// Whether calls on this connection are refused.
    #[must_use]
    pub fn refused(&self) -> bool {
        self.refused.is_some()
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(addr) = self.refused {
            c.refused.remove(&addr);
        } else if let Some(n) = c.served.get_mut(&self.who) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.served.remove(&self.who);
            }
        }
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionCounts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a new connection of `who` from `remote`; past
    /// [`MAX_CONNECTIONS_PER_IDENTITY`] it is marked refused instead.
    #[must_use]
    pub fn admit(&self, who: &str, remote: SocketAddr) -> ConnectionPermit {
        let mut c = self.lock();
        let served = c.served.get(who).copied().unwrap_or(0);
        let refused = if served >= MAX_CONNECTIONS_PER_IDENTITY {
            c.refused.insert(remote, who.to_owned());
            Some(remote)
        } else {
            *c.served.entry(who.to_owned()).or_default() += 1;
            None
        };
        ConnectionPermit {
            counts: Arc::clone(&self.counts),
            who: who.to_owned(),
            refused,
        }
    }

    /// Refuses a call on a connection past the limit.
    ///
    /// # Errors
    /// `RESOURCE_EXHAUSTED` with a retry hint.
    pub fn check(&self, remote: Option<SocketAddr>) -> Result<(), Status> {
        let c = self.lock();
        match remote.and_then(|r| c.refused.get(&r)) {
            None => Ok(()),
            Some(who) => Err(exhausted(
                format!(
                    "{who} already has {MAX_CONNECTIONS_PER_IDENTITY} connections open to this collector; close this one and retry later"
                ),
                Some(CONNECTION_PUSHBACK),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn connections_are_bounded_per_identity() {
        let c = Connections::default();
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let mut held: Vec<_> = (0..MAX_CONNECTIONS_PER_IDENTITY)
            .map(|i| c.admit("a", addr(1000 + i as u16)))
            .collect();
        assert!(held.iter().all(|p| !p.refused()));
        let extra = c.admit("a", addr(2000));
        assert!(extra.refused());
        let status = c.check(Some(addr(2000))).unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("connections"), "{status:?}");
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "5000"
        );
        assert!(c.check(Some(addr(1000))).is_ok());
        assert!(c.check(None).is_ok());
        assert!(!c.admit("b", addr(3000)).refused(), "another identity");
        // Closing the extra one forgets it; closing a served one makes room.
        drop(extra);
        assert!(c.check(Some(addr(2000))).is_ok());
        held.pop();
        assert!(!c.admit("a", addr(2001)).refused());
    }

    #[test]
    fn a_bombing_identity_is_refused_for_a_doubling_while_and_no_one_else() {
        let q = Quotas::default();
        assert!(q.stream("bomber").is_ok());
        q.penalize("bomber");
        let refused = q.stream("bomber").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("decoded past"), "{refused:?}");
        let hint: u64 = refused
            .metadata()
            .get("grpc-retry-pushback-ms")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(hint > 1_900 && hint <= 2_000, "{hint}");
        assert!(q.stream("honest").is_ok(), "another identity");
        // A second bomb while penalised doubles it, up to the cap.
        q.penalize("bomber");
        assert_eq!(q.lock().penalties["bomber"].1, BOMB_PENALTY * 2);
        for _ in 0..10 {
            q.penalize("bomber");
        }
        assert_eq!(q.lock().penalties["bomber"].1, MAX_BOMB_PENALTY);
        // Once it has run out, uploads are taken again.
        q.lock()
            .penalties
            .insert("bomber".into(), (Instant::now(), BOMB_PENALTY));
        assert!(q.stream("bomber").is_ok());
    }

    #[test]
    fn streams_and_open_captures_are_bounded_per_identity() {
        let q = Quotas::default();
        let permits: Vec<_> = (0..MAX_STREAMS_PER_IDENTITY)
            .map(|_| q.stream("a").unwrap())
            .collect();
        let refused = q.stream("a").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "2000"
        );
        assert!(q.stream("b").is_ok(), "another identity is not limited");
        drop(permits);
        assert!(q.stream("a").is_ok());

        for i in 0..MAX_OPEN_CAPTURES {
            q.open("a", &format!("c{i}")).unwrap();
        }
        q.open("a", "c0").unwrap();
        assert!(q.open("a", "new").is_err());
        q.close("a", "c0");
        q.open("a", "new").unwrap();

        // Captures opened long ago no longer count.
        let q = Quotas::default();
        q.seed_open(
            (0..MAX_OPEN_CAPTURES).map(|i| ("a".to_owned(), format!("old{i}"), OPEN_WINDOW)),
        );
        q.open("a", "fresh").unwrap();
        q.seed_open(
            (0..MAX_OPEN_CAPTURES).map(|i| ("b".to_owned(), format!("c{i}"), Duration::ZERO)),
        );
        assert!(q.open("b", "fresh").is_err());
    }
}
