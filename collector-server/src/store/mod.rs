//! Where the collector keeps captures.
//!
//! The [`Store`] contract, whatever the backend:
//!
//! - A capture is owned by the identity that opened it; the store records
//!   the owner and the service refuses anyone else.
//! - Artifact bytes are appended at the offset the store reports as
//!   durable; `append` returns only after the bytes are durable, so an
//!   acknowledged offset survives a collector crash and a resumed upload
//!   continues from it. A store may ask for appends of at least
//!   [`Store::part_size`] bytes (all but the artifact's last): the service
//!   then buffers that much and acknowledges only what was appended, so
//!   acknowledgements lag by up to one part.
//! - When an artifact's digests verified, `finish_artifact` makes it final
//!   (the S3 store assembles its parts there and checks S3's checksums);
//!   only then is it recorded as finished in the capture state.
//! - Bytes of an artifact that has not finished are kept apart from the
//!   capture's evidence (staging), so that they never appear in it.
//! - `commit` writes the verified manifest first, then the index entry,
//!   then the complete state. The manifest is the truth: a capture without
//!   one is incomplete, never listed as complete; one with a manifest is
//!   complete even if a crash cut the commit short before its state was
//!   saved, and [`repair`] finishes such commits at start.
//! - Small control documents (capture requests, their results, agent
//!   presence) live in the store too, under [`DocKey`]s, so that collector
//!   replicas sharing one store share them and keep nothing of their own.

pub mod any;
pub mod file;
pub mod repair;
pub mod s3;

use std::collections::BTreeMap;

use ircap_proto::ArtifactName;
use serde::{Deserialize, Serialize};

/// Why the store failed. The service maps these to gRPC statuses.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing (with the path or key).
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Stored state that cannot be parsed.
    #[error("corrupt store state {context}: {message}")]
    Corrupt {
        /// Which object.
        context: String,
        /// What is wrong.
        message: String,
    },
    /// Unknown capture.
    #[error("capture {0} is not known")]
    UnknownCapture(String),
    /// A control document key that is not a plain relative name.
    #[error("bad document key {0:?}")]
    BadKey(String),
    /// The storage service failed or cannot be reached (retryable).
    #[error("{context}: {message}")]
    Backend {
        /// What the store was doing (with the bucket and key).
        context: String,
        /// The service's error.
        message: String,
    },
    /// Stored bytes or a reported checksum differ from what was verified.
    #[error("integrity check failed for {context}: {message}")]
    Integrity {
        /// Which object.
        context: String,
        /// What differs.
        message: String,
    },
    /// The offset given is not where the artifact stands.
    #[error("artifact {name} is at offset {durable}, not {given}")]
    Offset {
        /// Artifact.
        name: String,
        /// Where it stands.
        durable: u64,
        /// What was asked.
        given: u64,
    },
}

impl StoreError {
    /// Wraps an I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Digests of a finished, verified artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedArtifact {
    /// `gzip` or `identity`.
    pub encoding: String,
    /// Stored bytes.
    pub size: u64,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
    /// Decoded bytes.
    pub size_uncompressed: u64,
    /// SHA-256 of the decoded bytes.
    pub sha256_uncompressed: String,
}

/// What the store knows about one capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureState {
    /// Capture id.
    pub capture_id: String,
    /// Identity (certificate name) of the agent that opened it.
    pub owner: String,
    /// Hostname the agent reported.
    pub hostname: String,
    /// When it was first opened (RFC 3339).
    pub opened_at: String,
    /// Artifacts that ended and verified.
    pub finished: BTreeMap<String, FinishedArtifact>,
    /// Committed (manifest verified and stored).
    pub complete: bool,
}

/// One committed capture, as `list` shows it. Written at commit so that
/// listing reads one small record per capture, never the artifacts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// Capture id.
    pub capture_id: String,
    /// Agent identity from its certificate.
    pub agent: String,
    /// Hostname from the manifest.
    pub hostname: String,
    /// EC2 instance id, when known.
    pub instance_id: Option<String>,
    /// Capture start (RFC 3339).
    pub started_at: String,
    /// Capture end (RFC 3339).
    pub ended_at: String,
    /// Stored bytes of all artifacts.
    pub stored_bytes: u64,
    /// Number of artifacts.
    pub artifacts: u32,
    /// When the collector committed it (RFC 3339).
    pub committed_at: String,
    /// Triage findings by severity, computed at commit (absent in
    /// entries written before triage, or when it could not run).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub findings: BTreeMap<String, u64>,
}

/// The key of a control document: `/`-separated segments of ASCII
/// letters, digits, `.`, `_` and `-`, none empty or starting with `.`; at most 512
/// bytes. Backends map it below their own control prefix, so a key can
/// never reach evidence.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocKey(String);

impl DocKey {
    /// Checks `key`.
    ///
    /// # Errors
    /// [`StoreError::BadKey`] when it is not a plain relative name.
    pub fn new(key: impl Into<String>) -> Result<Self, StoreError> {
        let key = key.into();
        let segment_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        if key.len() > 512 || !key.split('/').all(segment_ok) {
            return Err(StoreError::BadKey(key));
        }
        Ok(Self(key))
    }

    /// The key as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DocKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A capture store (see the module docs for the contract).
pub trait Store: Send + Sync + 'static {
    /// The state of `capture_id`, if known.
    fn state(
        &self,
        capture_id: &str,
    ) -> impl Future<Output = Result<Option<CaptureState>, StoreError>> + Send;

    /// Records a new capture (or overwrites the state of an open one).
    fn save_state(
        &self,
        state: &CaptureState,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Bytes of `name` held durably.
    fn durable_len(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Reads `len` bytes of `name` from `offset` (to rebuild hashes when an
    /// upload resumes).
    fn read_range(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    /// Smallest append the store wants, except an artifact's last (0: any
    /// size).
    fn part_size(&self) -> usize {
        0
    }

    /// Appends `data` at `offset` (which must be the durable length) and
    /// returns the new durable length once the bytes are durable.
    fn append(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        data: &[u8],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Makes a verified artifact final once every byte was appended (`finished`
    /// holds the digests the agent and the collector agreed on). Runs again
    /// harmlessly when a previous attempt was interrupted.
    fn finish_artifact(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        finished: &FinishedArtifact,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = (state, name, finished);
        async { Ok(()) }
    }

    /// Records a verified, final artifact in the capture's state. The
    /// caller serialises calls for one capture. The default rewrites the
    /// whole state; a backend that can append does it in O(1).
    fn record_finished(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        finished: &FinishedArtifact,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            let mut fresh = self
                .state(&state.capture_id)
                .await?
                .ok_or_else(|| StoreError::UnknownCapture(state.capture_id.clone()))?;
            fresh.finished.insert(name.to_string(), finished.clone());
            self.save_state(&fresh).await
        }
    }

    /// Stores the verified manifest, marks the capture complete and adds it
    /// to the index.
    fn commit(
        &self,
        state: &CaptureState,
        manifest_json: &[u8],
        index: &IndexEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The committed manifest of a capture, if it has one.
    fn find_manifest(
        &self,
        state: &CaptureState,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Whether the index has an entry for `capture_id`.
    fn has_index(&self, capture_id: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every committed capture's index entry.
    fn list_index(&self) -> impl Future<Output = Result<Vec<IndexEntry>, StoreError>> + Send;

    /// Every capture's state (complete or not).
    fn list_states(&self) -> impl Future<Output = Result<Vec<CaptureState>, StoreError>> + Send;

    /// The committed manifest of a capture.
    fn read_manifest(
        &self,
        state: &CaptureState,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    /// Writes (or replaces) a control document; durable on return.
    fn put_doc(
        &self,
        key: &DocKey,
        bytes: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A control document, if present.
    fn get_doc(
        &self,
        key: &DocKey,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Keys of the control documents directly under `prefix` (a key naming
    /// a "directory"), sorted. An absent prefix lists nothing.
    fn list_docs(
        &self,
        prefix: &DocKey,
    ) -> impl Future<Output = Result<Vec<DocKey>, StoreError>> + Send;

    /// Removes a control document; removing an absent one is not an error.
    fn delete_doc(&self, key: &DocKey) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::DocKey;

    #[test]
    fn doc_keys_are_plain_relative_names() {
        for good in ["requests/0191-abc", "agents/web-1.example", "a_b/c.d/e-f"] {
            assert!(DocKey::new(good).is_ok(), "{good}");
        }
        let long = "a".repeat(513);
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "./a",
            "a/.",
            "a/.hidden",
            "sp ace",
            "a\\b",
            "é",
            "a\nb",
            long.as_str(),
        ] {
            assert!(DocKey::new(bad).is_err(), "{bad:?}");
        }
    }
}
