//! `manifest.json`: the description of one capture (SPEC §4).
//!
//! The manifest lists every artifact with its sizes and SHA-256 digests (of
//! the stored bytes and of the uncompressed content), the host and agent
//! identity, the capture options and every error met on the way. It is
//! written last, after every artifact has been closed, so a directory with a
//! manifest is a finished capture.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Version of the capture format written by this crate.
pub const FORMAT_VERSION: u32 = 1;

/// At most this many error messages are kept per artifact in the manifest;
/// the full list stays in the artifact's own records.
pub const MAX_ERRORS_PER_ARTIFACT: usize = 50;

/// How an artifact's stored bytes relate to its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Stored bytes are a gzip stream of the content.
    Gzip,
    /// Stored bytes are the content itself (for instance a log that was
    /// already compressed on the host, kept exactly as found).
    Identity,
}

/// One stored file of a capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactEntry {
    /// Relative path inside the capture directory (see `ArtifactName`).
    pub name: String,
    /// What it holds: `processes`, `connections`, `logs`, ...
    pub kind: String,
    /// MIME type of the content (before `encoding`).
    pub content_type: String,
    /// How the stored bytes encode the content.
    pub encoding: Encoding,
    /// Bytes stored.
    pub size_stored: u64,
    /// Bytes of content after decoding.
    pub size_uncompressed: u64,
    /// SHA-256 of the stored bytes.
    pub sha256_stored: String,
    /// SHA-256 of the content after decoding.
    pub sha256_uncompressed: String,
    /// When the agent began collecting it (RFC 3339 UTC).
    pub started_at: String,
    /// When the agent closed it (RFC 3339 UTC).
    pub ended_at: String,
    /// Number of records for JSON Lines tables; `None` for raw evidence.
    pub record_count: Option<u64>,
    /// Number of errors met while collecting it.
    pub error_count: u64,
    /// The first [`MAX_ERRORS_PER_ARTIFACT`] error messages.
    pub errors: Vec<String>,
}

/// Identity of the captured host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdentity {
    /// Hostname as the kernel reports it.
    pub hostname: String,
    /// `/etc/machine-id`, when present.
    pub machine_id: Option<String>,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: Option<String>,
    /// Kernel release (`uname -r`).
    pub kernel_release: String,
    /// EC2 instance id, when the instance metadata service answered.
    pub instance_id: Option<String>,
    /// EC2 account id, when known.
    pub account_id: Option<String>,
    /// EC2 region, when known.
    pub region: Option<String>,
    /// EC2 AMI id, when known.
    pub ami_id: Option<String>,
}

/// The agent that made the capture.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Agent version.
    pub version: String,
    /// The agent's own pid, so analysts can exclude it.
    pub pid: u32,
    /// Effective uid it ran as.
    pub uid: u32,
    /// Whether it lowered its CPU and I/O priority.
    pub lowered_priority: bool,
    /// The certificate identity it presented, when sent to a collector.
    pub identity: Option<String>,
}

/// A capture-level error: which artifact (or stage) and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureError {
    /// Artifact or stage that met it.
    pub source: String,
    /// Human-readable message.
    pub message: String,
}

/// Whether a capture holds everything that was asked of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureStatus {
    /// Every requested artifact was collected and stored.
    #[default]
    Complete,
    /// Some artifact was dropped or cut (it could not be stored, a
    /// deadline or budget cut it, or it was impossible on this host); each
    /// is named with its reason in `errors`. What is listed verifies.
    Partial,
}

/// The manifest of one capture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Time-sortable unique id (UUIDv7).
    pub capture_id: String,
    /// When the capture began (RFC 3339 UTC).
    pub started_at: String,
    /// When the last artifact was closed (RFC 3339 UTC).
    pub ended_at: String,
    /// `complete` or `partial` (absent in older manifests: complete).
    #[serde(default)]
    pub status: CaptureStatus,
    /// The captured host.
    pub host: HostIdentity,
    /// The agent that captured it.
    pub agent: AgentInfo,
    /// The options the capture ran with.
    pub options: serde_json::Value,
    /// `AWS_SSM_COMMAND_ID` when the agent ran under SSM Run Command.
    pub ssm_command_id: Option<String>,
    /// Every stored artifact, in collection order.
    pub artifacts: Vec<ArtifactEntry>,
    /// Total number of errors met (artifact and capture level).
    pub error_count: u64,
    /// Capture-level errors, at most [`MAX_ERRORS_PER_ARTIFACT`] per source.
    pub errors: Vec<CaptureError>,
    /// Added by the collector when it received the capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_receipt: Option<serde_json::Value>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid manifest.
    #[error("manifest {path} is not valid: {source}")]
    Parse {
        /// The manifest path.
        path: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Written by a newer format version.
    #[error("manifest {path} has format version {found}, this build reads up to {FORMAT_VERSION}")]
    Version {
        /// The manifest path.
        path: String,
        /// The version found.
        found: u32,
    },
}

impl Manifest {
    /// Reads and parses a `manifest.json`.
    ///
    /// # Errors
    /// [`ManifestError`] when the file cannot be read, parsed, or is of a
    /// newer format version.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let display = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: display.clone(),
            source,
        })?;
        Self::from_slice(&bytes, &display)
    }

    /// Parses manifest bytes; `origin` names them in errors.
    ///
    /// # Errors
    /// [`ManifestError::Parse`] or [`ManifestError::Version`].
    pub fn from_slice(bytes: &[u8], origin: &str) -> Result<Self, ManifestError> {
        let manifest: Self =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
                path: origin.to_owned(),
                source,
            })?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(ManifestError::Version {
                path: origin.to_owned(),
                found: manifest.format_version,
            });
        }
        Ok(manifest)
    }

    /// Total bytes stored across artifacts.
    #[must_use]
    pub fn stored_bytes(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size_stored).sum()
    }
}

#[cfg(test)]
mod properties {
    //! The manifest parser under arbitrary input, bounded to a few seconds
    //! (64 cases each).

    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use proptest::prelude::*;

    use super::*;

    fn artifact() -> impl Strategy<Value = ArtifactEntry> {
        (
            any::<String>(),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            "[0-9a-f]{64}",
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(any::<String>(), 0..3),
        )
            .prop_map(
                |(name, gz, stored, content, sum, records, errors)| ArtifactEntry {
                    name,
                    kind: "k".into(),
                    content_type: "application/octet-stream".into(),
                    encoding: if gz {
                        Encoding::Gzip
                    } else {
                        Encoding::Identity
                    },
                    size_stored: stored,
                    size_uncompressed: content,
                    sha256_stored: sum.clone(),
                    sha256_uncompressed: sum,
                    started_at: String::new(),
                    ended_at: String::new(),
                    record_count: records,
                    error_count: errors.len() as u64,
                    errors,
                },
            )
    }

    fn manifest() -> impl Strategy<Value = Manifest> {
        (
            any::<String>(),
            any::<String>(),
            proptest::option::of(any::<String>()),
            any::<bool>(),
            proptest::collection::vec(artifact(), 0..6),
        )
            .prop_map(|(id, hostname, instance, partial, artifacts)| Manifest {
                format_version: FORMAT_VERSION,
                capture_id: id,
                started_at: "2026-01-01T00:00:00Z".into(),
                ended_at: "2026-01-01T00:00:01Z".into(),
                status: if partial {
                    CaptureStatus::Partial
                } else {
                    CaptureStatus::Complete
                },
                host: HostIdentity {
                    hostname,
                    instance_id: instance,
                    ..HostIdentity::default()
                },
                agent: AgentInfo::default(),
                options: serde_json::Value::Null,
                ssm_command_id: None,
                artifacts,
                error_count: 0,
                errors: Vec::new(),
                collector_receipt: None,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Any host-supplied text (control characters, quotes, any
        /// Unicode) survives a write and a parse unchanged.
        #[test]
        fn manifests_round_trip(m in manifest()) {
            let bytes = serde_json::to_vec(&m).unwrap();
            prop_assert_eq!(Manifest::from_slice(&bytes, "m").unwrap(), m);
        }

        /// Arbitrary bytes, and a real manifest cut anywhere or with a
        /// byte changed, end in a manifest or an error naming the origin,
        /// never a panic.
        #[test]
        fn damaged_manifests_are_errors_not_panics(
            m in manifest(),
            cut in any::<usize>(),
            flip in any::<(usize, u8)>(),
            junk in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let bytes = serde_json::to_vec(&m).unwrap();
            let cut = cut % bytes.len();
            if let Err(e) = Manifest::from_slice(&bytes[..cut], "cut") {
                prop_assert!(e.to_string().contains("cut"));
            }
            let mut changed = bytes.clone();
            let i = flip.0 % changed.len();
            changed[i] ^= flip.1;
            let _ = Manifest::from_slice(&changed, "changed");
            let _ = Manifest::from_slice(&junk, "junk");
        }

        /// A manifest from a newer format is refused, whatever else it says.
        #[test]
        fn newer_formats_are_refused(m in manifest(), ahead in 1u32..1000) {
            let mut newer = m;
            newer.format_version = FORMAT_VERSION + ahead;
            let bytes = serde_json::to_vec(&newer).unwrap();
            let refused = matches!(
                Manifest::from_slice(&bytes, "newer"),
                Err(ManifestError::Version { .. })
            );
            prop_assert!(refused, "a newer format was read");
        }
    }
}
