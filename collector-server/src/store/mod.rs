//! Where the collector keeps captures: a small blob layer per backend
//! ([`blob::Blob`]: [`file::FileBlob`], [`s3::S3Blob`]) and one evidence
//! layer above it ([`evidence::Evidence`]) that owns the layout, the
//! commit order and the capture states for both.
//!
//! The contract, whatever the backend:
//!
//! - A capture is owned by the identity that opened it; the store records
//!   the owner and the service refuses anyone else.
//! - Artifact bytes are appended at the offset the store reports as
//!   durable; `append` returns only after the bytes are durable, so an
//!   acknowledged offset survives a collector crash and a resumed upload
//!   continues from it. A backend may ask for appends of at least
//!   `part_size` bytes (all but the artifact's last): the service then
//!   buffers that much and acknowledges only what was appended, so
//!   acknowledgements lag by up to two parts (one written in the background
//!   while the next fills).
//! - When an artifact's digests verified, `finish_artifact` makes it final
//!   (the S3 backend assembles its parts there and checks S3's checksums);
//!   only then is it recorded as finished.
//! - Bytes of an artifact that has not finished are kept apart from the
//!   capture's evidence (staging), so that they never appear in it.
//! - A committed manifest is never replaced, and a committed capture's
//!   state never goes back to open (conditional writes, so this holds for
//!   replicas sharing a bucket too). The manifest is the truth: a capture
//!   without one is incomplete, never listed as complete; one with a
//!   manifest is complete even if a crash cut the commit short, and
//!   [`repair`] finishes such commits at start.
//! - Small control documents (capture requests, their results, agent
//!   presence) live in the store too, under [`DocKey`]s, so that collector
//!   replicas sharing one store share them and keep nothing of their own.

pub mod any;
pub mod blob;
pub mod evidence;
pub mod file;
pub mod file_cache;
pub mod group_sync;
pub mod index;
pub mod repair;
pub mod s3;
pub mod s3_parts;

use std::collections::BTreeMap;

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
    /// The storage service refused the store's settings at start-up (the
    /// credentials, the bucket, its Object Lock): not retryable, the
    /// collector exits 2 as for any refused setting.
    #[error("{context}: {message}")]
    Refused {
        /// What was checked (with the bucket).
        context: String,
        /// The service's answer, and what to check.
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
    /// When it expired, never committed (RFC 3339): nothing more is
    /// accepted into it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
}

impl CaptureState {
    /// A capture just opened by `owner`, nothing finished yet.
    #[must_use]
    pub fn opened(capture_id: &str, owner: &str, hostname: &str, opened_at: &str) -> Self {
        Self {
            capture_id: capture_id.to_owned(),
            owner: owner.to_owned(),
            hostname: hostname.to_owned(),
            opened_at: opened_at.to_owned(),
            finished: BTreeMap::new(),
            complete: false,
            expired_at: None,
        }
    }
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
    /// The case the capture was taken for (its manifest's `case.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
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

/// The store `serve` runs on.
pub type Store = evidence::Evidence<any::AnyBlob>;

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
