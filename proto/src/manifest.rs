//! `manifest.json`: the description of one capture (the format's
//! reference is [`crate::format`], `docs/capture-format.md`).
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

/// Largest manifest a collector accepts at commit (under its gRPC message
/// limit of a 4 MiB chunk plus envelope, so the refusal is this one).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Most artifacts one capture may hold; the collector refuses more, and
/// the agent's per-file collectors (logs) stop below it and record the
/// cut. Chosen so that this many entries with the longest artifact name
/// (255 bytes), largest sizes and no error messages leave more than 1 MiB
/// of [`MAX_MANIFEST_BYTES`] free as the agent sends it (pretty JSON,
/// measured at 857 bytes an entry, 2.6 MB in all: test
/// `artifact_limit_fits_the_manifest_limit`); error messages share the
/// rest and are trimmed by [`Manifest::fit_to_limit`] when they would not
/// fit.
pub const MAX_ARTIFACTS: usize = 3_000;

/// Longest error message kept once a manifest had to be trimmed.
const TRIMMED_MESSAGE: usize = 200;

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
    /// The case the capture was taken for (`--case`, or the request's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<CaseRef>,
}

/// The case a capture was taken for, and who asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseRef {
    /// Case id, e.g. `IR-2026-041`.
    pub id: String,
    /// Why, as the analyst gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The analyst identity that requested the capture (daemon requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// The analyst identity that approved it, when approval was needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

impl CaseRef {
    /// The case of a typed request, if it names one or was approved (the
    /// id is then empty).
    #[must_use]
    pub fn from_spec(spec: &crate::v1::CaptureSpec) -> Option<Self> {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        if spec.case_id.is_empty() && spec.approved_by.is_empty() {
            return None;
        }
        Some(Self {
            id: spec.case_id.clone(),
            reason: some(&spec.case_reason),
            requested_by: some(&spec.requested_by),
            approved_by: some(&spec.approved_by),
        })
    }
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

    /// The manifest as written and sent at commit (pretty JSON).
    ///
    /// # Errors
    /// A [`serde_json::Error`] (not expected for this type).
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = serde_json::to_vec_pretty(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Makes [`Self::to_json`] fit [`MAX_ARTIFACTS`]-sized captures into
    /// [`MAX_MANIFEST_BYTES`] by trimming the kept error messages only
    /// (never an artifact, a digest or a count: `error_count` and each
    /// artifact's own records keep the full tally): first each message is
    /// cut to 200 characters, then the artifacts keep none and the capture
    /// at most [`MAX_ERRORS_PER_ARTIFACT`]. Returns whether it trimmed.
    ///
    /// # Errors
    /// A [`serde_json::Error`] (not expected for this type).
    pub fn fit_to_limit(&mut self) -> Result<bool, serde_json::Error> {
        if self.to_json()?.len() <= MAX_MANIFEST_BYTES {
            return Ok(false);
        }
        let cut = |m: &mut String| {
            if let Some((at, _)) = m.char_indices().nth(TRIMMED_MESSAGE) {
                m.truncate(at);
                m.push_str("... (trimmed to fit the manifest)");
            }
        };
        for a in &mut self.artifacts {
            a.errors.iter_mut().for_each(cut);
        }
        for e in &mut self.errors {
            cut(&mut e.message);
            cut(&mut e.source);
        }
        if self.to_json()?.len() > MAX_MANIFEST_BYTES {
            for a in &mut self.artifacts {
                a.errors.clear();
            }
            self.errors.truncate(MAX_ERRORS_PER_ARTIFACT);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod limits {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn entry(i: usize, errors: Vec<String>) -> ArtifactEntry {
        let mut name = format!("logs/{i:05}-");
        name.push_str(&"x".repeat(crate::artifact_name::MAX_LEN - name.len()));
        ArtifactEntry {
            name,
            kind: "logs".into(),
            content_type: "application/octet-stream".into(),
            encoding: Encoding::Gzip,
            size_stored: u64::MAX,
            size_uncompressed: u64::MAX,
            sha256_stored: "f".repeat(64),
            sha256_uncompressed: "f".repeat(64),
            started_at: "2026-12-07T12:00:00.123456789Z".into(),
            ended_at: "2026-12-07T12:00:00.123456789Z".into(),
            record_count: Some(u64::MAX),
            error_count: errors.len() as u64,
            errors,
        }
    }

    fn manifest(artifacts: Vec<ArtifactEntry>, errors: usize) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            capture_id: "c".repeat(36),
            started_at: String::new(),
            ended_at: String::new(),
            status: CaptureStatus::Partial,
            host: HostIdentity::default(),
            agent: AgentInfo::default(),
            options: serde_json::json!({"logs_dirs": ["/var/log"]}),
            ssm_command_id: None,
            error_count: 0,
            errors: (0..errors)
                .map(|_| CaptureError {
                    source: "logs".into(),
                    message: "e".repeat(4096),
                })
                .collect(),
            artifacts,
            collector_receipt: None,
            case: None,
        }
    }

    #[test]
    fn artifact_limit_fits_the_manifest_limit() {
        let m = manifest(
            (0..MAX_ARTIFACTS).map(|i| entry(i, Vec::new())).collect(),
            0,
        );
        let bytes = m.to_json().unwrap().len();
        let per_entry = bytes / MAX_ARTIFACTS;
        assert!(
            bytes <= MAX_MANIFEST_BYTES - (1 << 20),
            "{MAX_ARTIFACTS} entries take {bytes} bytes ({per_entry} an entry)"
        );
    }

    #[test]
    fn error_messages_are_trimmed_until_the_manifest_fits() {
        // Every artifact with 10 kept errors naming a 4 KiB path (30 MB
        // of them), and 200 long capture errors.
        let long = vec!["/var/log/".repeat(455); 10];
        let mut m = manifest(
            (0..MAX_ARTIFACTS).map(|i| entry(i, long.clone())).collect(),
            200,
        );
        let digests: Vec<_> = m
            .artifacts
            .iter()
            .map(|a| a.sha256_stored.clone())
            .collect();
        assert!(m.fit_to_limit().unwrap());
        assert!(m.to_json().unwrap().len() <= MAX_MANIFEST_BYTES);
        assert_eq!(m.artifacts.len(), MAX_ARTIFACTS);
        assert_eq!(m.artifacts[0].error_count, 10);
        let after: Vec<_> = m
            .artifacts
            .iter()
            .map(|a| a.sha256_stored.clone())
            .collect();
        assert_eq!(digests, after);

        // A few long messages only get cut, not dropped.
        let mut m = manifest(vec![entry(0, long)], 0);
        m.artifacts
            .extend((1..MAX_ARTIFACTS).map(|i| entry(i, Vec::new())));
        m.errors = vec![
            CaptureError {
                source: "logs".into(),
                message: "e".repeat(3 << 20),
            };
            1
        ];
        assert!(m.fit_to_limit().unwrap());
        assert_eq!(m.artifacts[0].errors.len(), 10);
        assert!(
            m.errors[0]
                .message
                .ends_with("(trimmed to fit the manifest)")
        );

        // One that fits is left alone.
        let mut m = manifest(vec![entry(0, vec!["short".into()])], 1);
        assert!(!m.fit_to_limit().unwrap());
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
                case: None,
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
