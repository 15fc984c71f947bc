//! The collector's signed receipt, and its offline check.
//!
//! At commit the collector writes three files beside `manifest.json`:
//!
//! - [`RECEIPT_FILE`] (`manifest.receipt.json`): a [`Receipt`] — capture
//!   id, the SHA-256 of the stored `manifest.json` bytes, every artifact's
//!   stored SHA-256, the agent's certificate identity and SHA-256, when it
//!   was opened and committed, and which collector received it;
//! - [`RECEIPT_SIG_FILE`] (`manifest.receipt.sig`): an ECDSA P-256 SHA-256
//!   signature (DER, as `openssl dgst -sha256 -sign` writes it) over the
//!   exact bytes of the receipt file;
//! - [`RECEIPT_CERT_FILE`] (`manifest.receipt.pem`): the receipt
//!   certificate, issued by the ircap CA for document signing only (key
//!   usage digitalSignature, extended key usage id-kp-documentSigning,
//!   RFC 9336), so no TLS peer certificate can sign a receipt and the
//!   receipt key cannot authenticate to anything.
//!
//! The names start with `manifest.`, which no artifact may take (see
//! [`crate::artifact_name`]), so a hostile agent cannot upload one.
//!
//! Because the receipt binds the manifest's bytes and the manifest binds
//! every artifact, one signature covers the whole capture. A third party
//! can check it with `openssl` alone (see `docs/custody.md`); [`check`] is
//! the same check in Rust. The certificate chain is checked at the
//! receipt's `committed_at` time, so a receipt stays verifiable after its
//! certificate expires; revocation is not checked offline.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use webpki::{EndEntityCert, KeyUsage};

use crate::hashing::sha256_hex;
use crate::manifest::Manifest;
use crate::verify::Problem;

/// The signed receipt file, beside `manifest.json`.
pub const RECEIPT_FILE: &str = "manifest.receipt.json";
/// Its detached signature (DER ECDSA P-256 SHA-256).
pub const RECEIPT_SIG_FILE: &str = "manifest.receipt.sig";
/// The certificate of the key that signed it (PEM).
pub const RECEIPT_CERT_FILE: &str = "manifest.receipt.pem";
/// The three files, in the order a reader needs them.
pub const RECEIPT_FILES: [&str; 3] = [RECEIPT_FILE, RECEIPT_SIG_FILE, RECEIPT_CERT_FILE];
/// The `format` of a [`Receipt`] this code writes and reads.
pub const RECEIPT_FORMAT: &str = "ircap.receipt.v1";
/// id-kp-documentSigning (RFC 9336), 1.3.6.1.5.5.7.3.36, as arcs.
pub const DOCUMENT_SIGNING_OID: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 3, 36];
/// The same OID's DER content bytes.
const DOCUMENT_SIGNING_OID_DER: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x24];
/// Largest receipt file read (a receipt lists every artifact; the manifest
/// itself is limited to a few MiB).
const MAX_RECEIPT_BYTES: u64 = 16 << 20;

/// What the collector signs at commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// [`RECEIPT_FORMAT`].
    pub format: String,
    /// The capture.
    pub capture_id: String,
    /// SHA-256 of the stored `manifest.json` bytes.
    pub manifest_sha256: String,
    /// Size of the stored `manifest.json`.
    pub manifest_bytes: u64,
    /// Every artifact's stored size and SHA-256, in manifest order.
    pub artifacts: Vec<ReceiptArtifact>,
    /// Who uploaded it.
    pub agent: ReceiptAgent,
    /// When the upload was opened (RFC 3339).
    pub opened_at: String,
    /// When the collector committed it (RFC 3339).
    pub committed_at: String,
    /// Who received it.
    pub collector: ReceiptCollector,
    /// The case the capture was taken for, when the request named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
}

/// One artifact in a [`Receipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptArtifact {
    /// Artifact name.
    pub name: String,
    /// Stored bytes.
    pub size: u64,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
}

/// The uploading agent in a [`Receipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptAgent {
    /// Identity from its certificate's URI SAN.
    pub identity: String,
    /// SHA-256 of its DER certificate.
    pub certificate_sha256: String,
    /// Its certificate's subject.
    pub subject: String,
    /// The hostname it claimed (not authenticated).
    pub reported_hostname: String,
}

/// The receiving collector in a [`Receipt`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptCollector {
    /// Collector version.
    pub version: String,
    /// SHA-256 of the receipt certificate (DER).
    pub receipt_certificate_sha256: String,
}

impl Receipt {
    /// The receipt for `manifest_json` (the exact stored bytes).
    #[must_use]
    pub fn for_manifest(
        manifest: &Manifest,
        manifest_json: &[u8],
        agent: ReceiptAgent,
        opened_at: String,
        committed_at: String,
        collector: ReceiptCollector,
    ) -> Self {
        Self {
            format: RECEIPT_FORMAT.to_owned(),
            capture_id: manifest.capture_id.clone(),
            manifest_sha256: sha256_hex(manifest_json),
            manifest_bytes: manifest_json.len() as u64,
            artifacts: manifest
                .artifacts
                .iter()
                .map(|a| ReceiptArtifact {
                    name: a.name.clone(),
                    size: a.size_stored,
                    sha256: a.sha256_stored.clone(),
                })
                .collect(),
            agent,
            opened_at,
            committed_at,
            collector,
            case: manifest
                .case
                .as_ref()
                .filter(|c| !c.id.is_empty())
                .map(|c| c.id.clone()),
        }
    }
}

/// What [`check`] found out about a capture's receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReceiptStatus {
    /// No signed receipt: a collector before signed receipts, or one
    /// serving without a receipt key, or a capture written by the agent
    /// to a local directory.
    Unsigned {
        /// Why, in words.
        note: String,
    },
    /// Signed, and the signature, manifest and artifacts agree with it.
    Signed {
        /// The agent identity the collector received it from.
        agent: String,
        /// That agent's certificate SHA-256.
        agent_certificate_sha256: String,
        /// When the collector committed it.
        committed_at: String,
        /// SHA-256 of the receipt certificate.
        signer_certificate_sha256: String,
        /// Whether the receipt certificate was checked against a CA.
        chain: ChainCheck,
        /// The case, when the receipt names one.
        #[serde(skip_serializing_if = "Option::is_none")]
        case: Option<String>,
    },
    /// Present but wrong: see the report's problems.
    Invalid,
}

/// How far the receipt certificate was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChainCheck {
    /// Chains to the CA given, for document signing, at `committed_at`.
    Verified,
    /// No CA was given: the signature matches the enclosed certificate,
    /// which proves integrity but not who signed.
    NotChecked,
}

/// `text` with every control character shown as `?`: what a receipt says
/// is written to terminals, and a receipt signed by an unchecked key can
/// say anything.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl std::fmt::Display for ReceiptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unsigned { note } => write!(f, "receipt: unsigned ({})", printable(note)),
            Self::Signed {
                agent,
                agent_certificate_sha256,
                committed_at,
                signer_certificate_sha256,
                chain,
                case,
            } => {
                write!(
                    f,
                    "receipt: signed; received from agent {} (certificate sha256 {}) at {}; receipt certificate sha256 {signer_certificate_sha256}",
                    printable(agent),
                    printable(agent_certificate_sha256),
                    printable(committed_at),
                )?;
                if let Some(case) = case {
                    write!(f, "; case {}", printable(case))?;
                }
                match chain {
                    ChainCheck::Verified => write!(f, "; chains to the CA given"),
                    ChainCheck::NotChecked => write!(
                        f,
                        "; NOT checked against a CA (give --ca to check who signed)"
                    ),
                }
            }
            Self::Invalid => write!(f, "receipt: INVALID"),
        }
    }
}

fn problem(file: &str, reason: impl Into<String>) -> Problem {
    Problem::Receipt {
        file: file.to_owned(),
        reason: reason.into(),
    }
}

fn read_small(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    match std::fs::File::open(path) {
        Ok(f) => {
            let mut buf = Vec::new();
            f.take(MAX_RECEIPT_BYTES + 1).read_to_end(&mut buf)?;
            if buf.len() as u64 > MAX_RECEIPT_BYTES {
                return Err(std::io::Error::other(format!(
                    "larger than {MAX_RECEIPT_BYTES} bytes"
                )));
            }
            Ok(Some(buf))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every certificate in a PEM file.
///
/// # Errors
/// A message when there is none or one is not valid PEM.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it".into());
    }
    Ok(certs)
}

/// Checks that `cert` was issued by one of `ca_pem`'s certificates for
/// document signing, valid at `at`.
///
/// # Errors
/// A message saying what failed.
pub fn check_signer_chain(
    cert: &CertificateDer<'_>,
    ca_pem: &[u8],
    at: OffsetDateTime,
) -> Result<(), String> {
    let cas = pem_certificates(ca_pem).map_err(|e| format!("the CA file: {e}"))?;
    let anchors = cas
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA file: {e}"))?;
    let ee = EndEntityCert::try_from(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    let secs = u64::try_from(at.unix_timestamp()).unwrap_or(0);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &[],
        time,
        KeyUsage::required(DOCUMENT_SIGNING_OID_DER),
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| format!("not issued by the CA given for document signing (valid at {at}): {e:?}"))
}

/// Verifies `signature` over `message` with `cert`'s ECDSA P-256 key.
///
/// # Errors
/// A message when the certificate is unreadable or the signature wrong.
pub fn verify_signature(
    cert: &CertificateDer<'_>,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let ee = EndEntityCert::try_from(cert).map_err(|e| format!("unreadable certificate: {e}"))?;
    ee.verify_signature(webpki::ring::ECDSA_P256_SHA256, message, signature)
        .map_err(|e| format!("{e:?}"))
}

/// Checks the receipt in `dir` against the stored `manifest_json` (and its
/// parsed `manifest`); with `ca_pem`, also that a certificate of that CA
/// signed it. Every problem names the file it is about.
#[must_use]
pub fn check(
    dir: &Path,
    manifest_json: &[u8],
    manifest: &Manifest,
    ca_pem: Option<&[u8]>,
) -> (ReceiptStatus, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut files = Vec::with_capacity(3);
    for name in RECEIPT_FILES {
        match read_small(&dir.join(name)) {
            Ok(bytes) => files.push(bytes),
            Err(e) => {
                problems.push(problem(name, format!("unreadable: {e}")));
                files.push(None);
            }
        }
    }
    if !problems.is_empty() {
        return (ReceiptStatus::Invalid, problems);
    }
    let [json, sig, cert_pem] = [files.remove(0), files.remove(0), files.remove(0)];
    let (json, sig, cert_pem) = match (json, sig, cert_pem) {
        (None, None, None) => {
            let note = match manifest
                .collector_receipt
                .as_ref()
                .and_then(|r| r.get("collector_version"))
                .and_then(|v| v.as_str())
            {
                Some(v) => format!(
                    "received by collector {v} without a receipt key, or before signed receipts"
                ),
                None => "not received by a collector: a local capture".to_owned(),
            };
            // Asked to check who signed, a missing signature is a failure:
            // deleting the receipt must not pass for an old capture.
            if ca_pem.is_some() {
                problems.push(problem(
                    RECEIPT_FILE,
                    format!("missing, and --ca asks for a signed receipt ({note})"),
                ));
                return (ReceiptStatus::Invalid, problems);
            }
            return (ReceiptStatus::Unsigned { note }, problems);
        }
        (Some(j), Some(s), Some(c)) => (j, s, c),
        (j, s, c) => {
            for (name, have) in RECEIPT_FILES
                .iter()
                .zip([j.is_some(), s.is_some(), c.is_some()])
            {
                if !have {
                    problems.push(problem(name, "missing while the other receipt files exist"));
                }
            }
            return (ReceiptStatus::Invalid, problems);
        }
    };
    let cert = match pem_certificates(&cert_pem) {
        Ok(mut certs) => certs.remove(0),
        Err(e) => {
            problems.push(problem(RECEIPT_CERT_FILE, e));
            return (ReceiptStatus::Invalid, problems);
        }
    };
    if let Err(e) = verify_signature(&cert, &json, &sig) {
        problems.push(problem(
            RECEIPT_FILE,
            format!(
                "the signature in {RECEIPT_SIG_FILE} does not verify with {RECEIPT_CERT_FILE}: the receipt or its signature was altered ({e})"
            ),
        ));
        return (ReceiptStatus::Invalid, problems);
    }
    let receipt: Receipt = match serde_json::from_slice(&json) {
        Ok(r) => r,
        Err(e) => {
            problems.push(problem(RECEIPT_FILE, format!("signed but unreadable: {e}")));
            return (ReceiptStatus::Invalid, problems);
        }
    };
    if receipt.format != RECEIPT_FORMAT {
        problems.push(problem(
            RECEIPT_FILE,
            format!("format {:?}, expected {RECEIPT_FORMAT:?}", receipt.format),
        ));
    }
    if receipt.capture_id != manifest.capture_id {
        problems.push(problem(
            RECEIPT_FILE,
            format!(
                "is for capture {}, the manifest for {}",
                receipt.capture_id, manifest.capture_id
            ),
        ));
    }
    let found = sha256_hex(manifest_json);
    if receipt.manifest_sha256 != found || receipt.manifest_bytes != manifest_json.len() as u64 {
        problems.push(problem(
            crate::artifact_name::MANIFEST_FILE,
            format!(
                "does not match the signed receipt (receipt: {} bytes sha256 {}, found {} bytes sha256 {found})",
                receipt.manifest_bytes,
                receipt.manifest_sha256,
                manifest_json.len()
            ),
        ));
    }
    let listed: Vec<ReceiptArtifact> = manifest
        .artifacts
        .iter()
        .map(|a| ReceiptArtifact {
            name: a.name.clone(),
            size: a.size_stored,
            sha256: a.sha256_stored.clone(),
        })
        .collect();
    if listed != receipt.artifacts {
        problems.push(problem(
            crate::artifact_name::MANIFEST_FILE,
            "its artifact list differs from the signed receipt's",
        ));
    }
    let chain = match ca_pem {
        None => ChainCheck::NotChecked,
        Some(ca) => {
            let at = OffsetDateTime::parse(&receipt.committed_at, &Rfc3339);
            match at {
                Err(e) => {
                    problems.push(problem(
                        RECEIPT_FILE,
                        format!("committed_at {:?}: {e}", receipt.committed_at),
                    ));
                }
                Ok(at) => {
                    if let Err(e) = check_signer_chain(&cert, ca, at) {
                        problems.push(problem(RECEIPT_CERT_FILE, e));
                    }
                }
            }
            ChainCheck::Verified
        }
    };
    if !problems.is_empty() {
        return (ReceiptStatus::Invalid, problems);
    }
    (
        ReceiptStatus::Signed {
            agent: receipt.agent.identity,
            agent_certificate_sha256: receipt.agent.certificate_sha256,
            committed_at: receipt.committed_at,
            signer_certificate_sha256: sha256_hex(cert.as_ref()),
            chain,
            case: receipt.case,
        },
        problems,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_receipt_says_reaches_a_terminal_without_controls() {
        let status = ReceiptStatus::Signed {
            agent: "web-1\u{1b}]0;owned\u{7}".into(),
            agent_certificate_sha256: "ab\r\ncd".into(),
            committed_at: "2026\u{1b}[2J".into(),
            signer_certificate_sha256: "ef".into(),
            chain: ChainCheck::NotChecked,
            case: Some("IR\u{1b}".into()),
        };
        let text = status.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.contains("web-1?]0;owned?"), "{text}");
    }
}
