//! Signing capture receipts at commit (`serve --receipt-key`).
//!
//! The receipt format and its offline check live in
//! [`ircap_proto::receipt`], shared with `ircap-agent verify`; this module
//! only holds the key. It is loaded and checked at start — the key must
//! match the certificate, and the certificate must chain to `--ca` for
//! document signing — so a wrong file fails before anything listens
//! instead of producing receipts nobody can verify.

use std::path::Path;

use ircap_proto::hashing::sha256_hex;
use ircap_proto::receipt::{
    RECEIPT_CERT_FILE, RECEIPT_FILE, RECEIPT_SIG_FILE, Receipt, check_signer_chain,
    pem_certificates, verify_signature,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

/// Why the receipt key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("receipt key {key} / certificate {cert}: {reason}")]
pub struct ReceiptKeyError {
    key: String,
    cert: String,
    reason: String,
}

/// The collector's receipt key and certificate.
pub struct ReceiptSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    cert_pem: Vec<u8>,
    cert_sha256: String,
}

impl std::fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiptSigner")
            .field("cert_sha256", &self.cert_sha256)
            .finish_non_exhaustive()
    }
}

/// A signed receipt: the three files stored beside the manifest.
#[derive(Debug, Clone)]
pub struct SignedReceipt {
    /// `manifest.receipt.json`.
    pub json: Vec<u8>,
    /// `manifest.receipt.sig`.
    pub sig: Vec<u8>,
    /// `manifest.receipt.pem`.
    pub cert_pem: Vec<u8>,
}

impl SignedReceipt {
    /// The files, by name.
    #[must_use]
    pub fn files(&self) -> [(&'static str, &[u8]); 3] {
        [
            (RECEIPT_FILE, &self.json),
            (RECEIPT_SIG_FILE, &self.sig),
            (RECEIPT_CERT_FILE, &self.cert_pem),
        ]
    }
}

impl ReceiptSigner {
    /// Loads an ECDSA P-256 PKCS#8 key and its certificate, and checks
    /// that they match and that the certificate chains to `ca_pem` for
    /// document signing now.
    ///
    /// # Errors
    /// [`ReceiptKeyError`] naming both files and what is wrong.
    pub fn load(key: &Path, cert: &Path, ca_pem: &[u8]) -> Result<Self, ReceiptKeyError> {
        let fail = |reason: String| ReceiptKeyError {
            key: key.display().to_string(),
            cert: cert.display().to_string(),
            reason,
        };
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_file(key)
            .map_err(|e| fail(format!("not a PKCS#8 PEM private key: {e}")))?;
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|e| fail(format!("not an ECDSA P-256 key: {e}")))?;
        let cert_pem =
            std::fs::read(cert).map_err(|e| fail(format!("cannot read the certificate: {e}")))?;
        let first = pem_certificates(&cert_pem)
            .map_err(&fail)?
            .into_iter()
            .next()
            .ok_or_else(|| fail("no certificate".into()))?;
        check_signer_chain(&first, ca_pem, time::OffsetDateTime::now_utc()).map_err(&fail)?;
        let probe = b"ircap receipt key check";
        let sig = pair
            .sign(&rng, probe)
            .map_err(|e| fail(format!("cannot sign: {e}")))?;
        verify_signature(&first, probe, sig.as_ref())
            .map_err(|e| fail(format!("the key does not match the certificate: {e}")))?;
        // Store exactly the one certificate, re-encoded, so the file
        // beside each capture is the signer and nothing else.
        let cert_pem = pem_encode(first.as_ref());
        Ok(Self {
            key: pair,
            rng,
            cert_pem,
            cert_sha256: sha256_hex(first.as_ref()),
        })
    }

    /// SHA-256 of the receipt certificate.
    #[must_use]
    pub fn cert_sha256(&self) -> &str {
        &self.cert_sha256
    }

    /// Signs `receipt` (pretty JSON and a newline, the bytes signed).
    ///
    /// # Errors
    /// A message when serialising or signing failed.
    pub fn sign(&self, receipt: &Receipt) -> Result<SignedReceipt, String> {
        let mut json = serde_json::to_vec_pretty(receipt).map_err(|e| e.to_string())?;
        json.push(b'\n');
        let sig = self
            .key
            .sign(&self.rng, &json)
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok(SignedReceipt {
            json,
            sig: sig.as_ref().to_vec(),
            cert_pem: self.cert_pem.clone(),
        })
    }
}

fn pem_encode(der: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out.into_bytes()
}
