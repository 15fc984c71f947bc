//! Offline verification of a capture directory.
//!
//! Recomputes the SHA-256 and size of every artifact's stored bytes and, for
//! gzip artifacts, of the decoded content; reports every missing, damaged or
//! unexpected file by name. `ircap-agent verify`, `ircap-collector verify`
//! and `pull` all call [`verify_capture`].

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use serde::Serialize;

use crate::artifact_name::{ArtifactName, MANIFEST_FILE};
use crate::hashing::{Digest, HashingReader, hash_reader};
use crate::manifest::{ArtifactEntry, Encoding, Manifest, ManifestError};
use crate::receipt::{RECEIPT_FILES, ReceiptStatus};

/// One thing wrong with a capture directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// Listed in the manifest but not on disk.
    Missing {
        /// Artifact name.
        file: String,
    },
    /// On disk but not listed in the manifest.
    Unexpected {
        /// Path relative to the capture directory.
        file: String,
    },
    /// The manifest lists a name that is not a safe relative path.
    BadName {
        /// The name as listed.
        file: String,
        /// Why it was refused.
        reason: String,
    },
    /// Stored bytes differ from the manifest.
    StoredMismatch {
        /// Artifact name.
        file: String,
        /// Size and SHA-256 in the manifest.
        expected: String,
        /// Size and SHA-256 found.
        found: String,
    },
    /// Decoded content differs from the manifest.
    ContentMismatch {
        /// Artifact name.
        file: String,
        /// Size and SHA-256 in the manifest.
        expected: String,
        /// Size and SHA-256 found.
        found: String,
    },
    /// The file could not be read or decoded.
    Unreadable {
        /// Artifact name.
        file: String,
        /// The error.
        reason: String,
    },
    /// The signed receipt, or what it binds, does not check out.
    Receipt {
        /// The receipt file or `manifest.json`.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

impl Problem {
    /// The file the problem is about.
    #[must_use]
    pub fn file(&self) -> &str {
        match self {
            Self::Missing { file }
            | Self::Unexpected { file }
            | Self::BadName { file, .. }
            | Self::StoredMismatch { file, .. }
            | Self::ContentMismatch { file, .. }
            | Self::Unreadable { file, .. }
            | Self::Receipt { file, .. } => file,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing { file } => write!(f, "{file}: missing"),
            Self::Unexpected { file } => write!(f, "{file}: not listed in the manifest"),
            Self::BadName { file, reason } => write!(f, "{file:?}: refused name: {reason}"),
            Self::StoredMismatch {
                file,
                expected,
                found,
            } => write!(
                f,
                "{file}: stored bytes do not match (manifest {expected}, found {found})"
            ),
            Self::ContentMismatch {
                file,
                expected,
                found,
            } => write!(
                f,
                "{file}: decoded content does not match (manifest {expected}, found {found})"
            ),
            Self::Unreadable { file, reason } => write!(f, "{file}: unreadable: {reason}"),
            Self::Receipt { file, reason } => write!(f, "{file}: {reason}"),
        }
    }
}

/// The outcome of a verification that could read the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The capture id from the manifest.
    pub capture_id: String,
    /// Number of artifacts checked.
    pub artifacts_checked: usize,
    /// Stored bytes hashed.
    pub bytes_checked: u64,
    /// Everything found wrong; empty means the capture verifies.
    pub problems: Vec<Problem>,
    /// The collector's signed receipt: who received the capture and when.
    pub receipt: Box<ReceiptStatus>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Why verification could not even start.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The manifest is missing or invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The capture directory could not be listed.
    #[error("cannot list capture directory {path}: {source}")]
    List {
        /// The directory.
        path: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Verifies the capture in `dir` against its `manifest.json`.
///
/// # Errors
/// [`VerifyError`] when the manifest cannot be read or the directory cannot
/// be listed; every problem with an artifact is in the report instead.
pub fn verify_capture(dir: &Path) -> Result<VerifyReport, VerifyError> {
    verify_capture_with(dir, None)
}

/// Exit code of `verify`: the capture verifies.
pub const EXIT_VERIFIED: u8 = 0;
/// Exit code of `verify`: the capture or the CA cannot be read.
pub const EXIT_UNREADABLE: u8 = 1;
/// Exit code of `verify`: a hash, size or the receipt does not match.
pub const EXIT_MISMATCH: u8 = 3;

/// The `verify` command of both binaries (offline, nothing is sent
/// anywhere): verifies `dir` (with the CA certificate at `ca`, if given),
/// logs each problem and the receipt's status on stderr (escaped: names
/// and receipt fields come from the capture) and prints the report as one
/// JSON line on stdout; returns the exit code.
#[must_use]
pub fn run_verify_command(dir: &Path, ca: Option<&Path>) -> u8 {
    use crate::terminal::escape;
    let ca_pem = match ca.map(std::fs::read).transpose() {
        Ok(pem) => pem,
        Err(e) => {
            tracing::error!(
                "--ca {}: {e}",
                escape(&ca.unwrap_or(dir).display().to_string())
            );
            return EXIT_UNREADABLE;
        }
    };
    match verify_capture_with(dir, ca_pem.as_deref()) {
        Ok(report) => {
            for p in &report.problems {
                tracing::error!("{}", escape(&p.to_string()));
            }
            tracing::info!("{}", escape(&report.receipt.to_string()));
            crate::terminal::print_json(&report);
            if report.is_ok() {
                tracing::info!(
                    capture_id = %escape(&report.capture_id),
                    artifacts = report.artifacts_checked,
                    "Capture verifies"
                );
                EXIT_VERIFIED
            } else {
                tracing::error!(problems = report.problems.len(), "Capture does NOT verify");
                EXIT_MISMATCH
            }
        }
        Err(err) => {
            tracing::error!("{}", escape(&err.to_string()));
            EXIT_UNREADABLE
        }
    }
}

/// [`verify_capture`], and the signed receipt checked against the CA
/// certificates in `ca_pem` (PEM): with a CA, a capture without a signed
/// receipt fails; without one, an unsigned capture verifies as before and
/// a signed one has its signature checked against the enclosed
/// certificate only (see [`crate::receipt`]).
///
/// # Errors
/// As [`verify_capture`].
pub fn verify_capture_with(dir: &Path, ca_pem: Option<&[u8]>) -> Result<VerifyReport, VerifyError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let display = manifest_path.display().to_string();
    let manifest_json = std::fs::read(&manifest_path).map_err(|source| ManifestError::Read {
        path: display.clone(),
        source,
    })?;
    let manifest = Manifest::from_slice(&manifest_json, &display)?;
    let mut problems = Vec::new();
    let mut listed = BTreeSet::new();
    let mut bytes_checked = 0;
    for entry in &manifest.artifacts {
        let name = match ArtifactName::parse(&entry.name) {
            Ok(name) => name,
            Err(err) => {
                problems.push(Problem::BadName {
                    file: entry.name.clone(),
                    reason: err.to_string(),
                });
                continue;
            }
        };
        listed.insert(name.as_str().to_owned());
        bytes_checked += entry.size_stored;
        if let Some(problem) = check_artifact(&name.path_in(dir), entry) {
            problems.push(problem);
        }
    }
    let mut on_disk = Vec::new();
    list_files(dir, dir, &mut on_disk).map_err(|source| VerifyError::List {
        path: dir.display().to_string(),
        source,
    })?;
    for file in on_disk {
        if file != MANIFEST_FILE
            && !RECEIPT_FILES.contains(&file.as_str())
            && !listed.contains(&file)
        {
            problems.push(Problem::Unexpected { file });
        }
    }
    let (receipt, receipt_problems) = crate::receipt::check(dir, &manifest_json, &manifest, ca_pem);
    problems.extend(receipt_problems);
    Ok(VerifyReport {
        capture_id: manifest.capture_id,
        artifacts_checked: manifest.artifacts.len(),
        bytes_checked,
        problems,
        receipt: Box::new(receipt),
    })
}

fn describe(digest: &Digest) -> String {
    format!("{} bytes sha256 {}", digest.bytes, digest.sha256)
}

fn check_artifact(path: &Path, entry: &ArtifactEntry) -> Option<Problem> {
    let file = entry.name.clone();
    let unreadable = |err: io::Error| Problem::Unreadable {
        file: file.clone(),
        reason: err.to_string(),
    };
    let handle = match File::open(path) {
        Ok(handle) => handle,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Some(Problem::Missing { file });
        }
        Err(err) => return Some(unreadable(err)),
    };
    let expected_stored = Digest {
        sha256: entry.sha256_stored.clone(),
        bytes: entry.size_stored,
    };
    let expected_content = Digest {
        sha256: entry.sha256_uncompressed.clone(),
        bytes: entry.size_uncompressed,
    };
    let (stored, content) = match entry.encoding {
        Encoding::Identity => match hash_reader(BufReader::with_capacity(1 << 18, handle)) {
            Ok(d) => (d.clone(), d),
            Err(err) => return Some(unreadable(err)),
        },
        Encoding::Gzip => {
            let mut stored_hasher = HashingReader::new(BufReader::with_capacity(1 << 18, handle));
            let content = hash_reader(MultiGzDecoder::new(&mut stored_hasher));
            // Hash whatever trails the gzip stream too, so appended bytes
            // show up as a stored-bytes mismatch rather than going unseen.
            let rest = io::copy(&mut stored_hasher, &mut io::sink());
            match (content, rest) {
                (Ok(content), Ok(_)) => (stored_hasher.finish(), content),
                (Err(err), _) | (_, Err(err)) => {
                    let stored = drain_digest(stored_hasher);
                    if stored != expected_stored {
                        return Some(Problem::StoredMismatch {
                            file,
                            expected: describe(&expected_stored),
                            found: describe(&stored),
                        });
                    }
                    return Some(unreadable(err));
                }
            }
        }
    };
    if stored != expected_stored {
        return Some(Problem::StoredMismatch {
            file,
            expected: describe(&expected_stored),
            found: describe(&stored),
        });
    }
    if content != expected_content {
        return Some(Problem::ContentMismatch {
            file,
            expected: describe(&expected_content),
            found: describe(&content),
        });
    }
    None
}

/// Finishes hashing a reader whose decoder failed part-way.
fn drain_digest<R: Read>(mut reader: HashingReader<R>) -> Digest {
    let _ = io::copy(&mut reader, &mut io::sink());
    reader.finish()
}

/// Every regular file (and anything that is not a directory) below `dir`,
/// as `/`-separated paths relative to `root`. Symlinks are not followed.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path: PathBuf = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push(parts.join("/"));
        }
    }
    Ok(())
}
