//! Certificate -> identity -> role, and the rustls configurations for the
//! collector's mutual TLS.
//!
//! Every agent and analyst authenticates with a client certificate. The
//! identity is never taken from a request field: it is read from one URI
//! subject alternative name of the verified leaf certificate,
//!
//! ```text
//! ircap://agent/<name>      may upload captures for <name> only
//! ircap://analyst/<name>    may list, pull and request captures
//! ```
//!
//! where `<name>` is 1 to 64 characters of `A-Z a-z 0-9 . _ -` not starting
//! with a dot (see [`validate_name`]). A certificate with no such URI, with
//! two of them, or with a malformed one carries no role and is refused.
//!
//! # Certificates from another CA
//!
//! `ircap-collector pki init` is meant for trials and small fleets. A
//! production CA (for example AWS Private CA) works unchanged as long as
//! each client certificate has the extended key usage `clientAuth` and
//! exactly one URI SAN of the form above (the subject does not matter).
//! With AWS Private CA, use an `APIPassthrough` template and put the URI in
//! the API passthrough:
//!
//! ```text
//! aws acm-pca issue-certificate \
//!   --certificate-authority-arn "$CA_ARN" --csr fileb://web-01.csr \
//!   --signing-algorithm SHA256WITHECDSA --validity Value=365,Type=DAYS \
//!   --template-arn arn:aws:acm-pca:::template/EndEntityClientAuthCertificate_APIPassthrough/V1 \
//!   --api-passthrough '{"Extensions":{"SubjectAlternativeNames":[
//!       {"UniformResourceIdentifier":"ircap://agent/web-01"}]}}'
//! ```
//!
//! The collector's `--ca` file must then hold the certificate(s) of the CA
//! that issued the client certificates. When a CRL file is given, it must
//! hold a CRL from every issuing CA in the verified chain below the trust
//! anchor: a certificate whose revocation status cannot be determined is
//! refused.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::Serialize;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// Scheme and authority prefix of an identity URI SAN.
pub const IDENTITY_URI_PREFIX: &str = "ircap://";

/// Longest agent or analyst name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// The only ALPN protocol spoken on the collector port: gRPC over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// What a client certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Uploads captures for its own identity only.
    Agent,
    /// Lists, pulls and requests captures.
    Analyst,
}

impl Role {
    /// The role as it appears in identity URIs, file listings and logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Analyst => "analyst",
        }
    }

    /// The identity URI SAN for `name` in this role: `ircap://<role>/<name>`.
    #[must_use]
    pub fn identity_uri(self, name: &str) -> String {
        format!("{IDENTITY_URI_PREFIX}{}/{name}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name other than `agent` or `analyst`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?} (expected \"agent\" or \"analyst\")")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Self::Agent),
            "analyst" => Ok(Self::Analyst),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// An agent or analyst name that [`validate_name`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid name {name:?}: {reason}")]
pub struct InvalidName {
    /// The name as given.
    pub name: String,
    /// Which rule it breaks.
    pub reason: &'static str,
}

/// Checks an agent or analyst name: 1 to [`MAX_NAME_LEN`] characters of
/// `A-Z a-z 0-9 . _ -`, not starting with a dot. Such a name is safe as a
/// file name, in a URI path and in a log line.
///
/// # Errors
///
/// [`InvalidName`] saying which rule the name breaks.
pub fn validate_name(name: &str) -> Result<(), InvalidName> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("must be at most 64 characters")
    } else if name.starts_with('.') {
        Some("must not start with a dot")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only A-Z a-z 0-9 . _ - are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Who is on the other end of a verified mutual-TLS connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Agent or analyst name from the identity URI.
    pub name: String,
    /// Role from the identity URI.
    pub role: Role,
    /// Lower-case hex SHA-256 of the DER leaf certificate.
    pub fingerprint_sha256: String,
    /// Subject distinguished name of the leaf, for logs.
    pub subject: String,
}

/// Errors from loading key material, building TLS configurations and
/// reading identities from certificates.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A client certificate without the clientAuth extended key usage.
    #[error(
        "certificate {subject} is not issued for client authentication (no clientAuth extended key usage)"
    )]
    NoClientAuth {
        /// The certificate's subject.
        subject: String,
    },
    /// A PEM file could not be read or decoded.
    #[error("cannot read {what} from {}: {source}", path.display())]
    Pem {
        /// What was being read ("certificates", "private key", "CRLs").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: pem::Error,
    },
    /// A PEM file held no item of the expected kind.
    #[error("no {what} found in {}", path.display())]
    Empty {
        /// What was expected.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate cannot serve as a trust anchor.
    #[error("CA certificate in {} is not usable as a trust anchor: {source}", path.display())]
    TrustAnchor {
        /// The CA file.
        path: PathBuf,
        /// Why rustls refused it.
        #[source]
        source: rustls::Error,
    },
    /// A CRL past its next update: it says nothing current, and every
    /// client would be refused.
    #[error("CRL {} is out of date (next update was {next_update}): issue a fresh one with `ircap-collector pki revoke` or `pki init`'s empty CRL", path.display())]
    CrlExpired {
        /// The CRL file.
        path: PathBuf,
        /// Its nextUpdate.
        next_update: String,
    },
    /// The client-certificate verifier could not be built (bad CRL, no CA).
    #[error("cannot build the client certificate verifier from CA {} and CRL {crl}: {source}", ca.display())]
    Verifier {
        /// The CA file.
        ca: PathBuf,
        /// The CRL file, or "none".
        crl: String,
        /// Why rustls refused.
        #[source]
        source: VerifierBuilderError,
    },
    /// rustls refused the configuration (for example a key that does not
    /// match the certificate).
    #[error("cannot build the TLS configuration from certificate {} and key {}: {source}", cert.display(), key.display())]
    Tls {
        /// The certificate chain file.
        cert: PathBuf,
        /// The private key file.
        key: PathBuf,
        /// Why rustls refused.
        #[source]
        source: rustls::Error,
    },
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The certificate is not valid DER X.509.
    #[error("cannot parse the peer certificate: {reason}")]
    BadCertificate {
        /// Parser message.
        reason: String,
    },
    /// The certificate has no `ircap://agent/…` or `ircap://analyst/…` URI.
    #[error(
        "certificate {subject:?} carries no ircap role: it needs a URI SAN ircap://agent/<name> or ircap://analyst/<name>"
    )]
    NoRole {
        /// Subject of the certificate.
        subject: String,
    },
    /// The certificate has more than one identity URI.
    #[error("certificate {subject:?} carries more than one ircap identity: {uris:?}")]
    AmbiguousIdentity {
        /// Subject of the certificate.
        subject: String,
        /// All identity URIs found.
        uris: Vec<String>,
    },
    /// An `ircap://` URI that is not `ircap://agent/<name>` or
    /// `ircap://analyst/<name>` with a valid name.
    #[error("certificate {subject:?} has a malformed identity URI {uri:?}: {reason}")]
    BadIdentityUri {
        /// Subject of the certificate.
        subject: String,
        /// The URI.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads the identity of the holder of a (verified) leaf certificate.
///
/// The certificate must carry exactly one URI SAN starting with `ircap://`
/// (scheme compared without case), and it must be `ircap://agent/<name>` or
/// `ircap://analyst/<name>` with a name accepted by [`validate_name`].
/// This function does not verify the certificate; rustls has done that
/// during the handshake.
///
/// # Errors
///
/// [`AuthError::BadCertificate`] if the DER does not parse,
/// [`AuthError::NoRole`] (naming the subject) without an identity URI,
/// [`AuthError::AmbiguousIdentity`] with more than one, and
/// [`AuthError::BadIdentityUri`] for a malformed one.
pub fn identity_from_cert(der: &[u8]) -> Result<Identity, AuthError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| AuthError::BadCertificate {
            reason: e.to_string(),
        })?;
    let subject = cert.subject().to_string();
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| AuthError::BadCertificate {
            reason: format!("subject alternative names: {e}"),
        })?;
    let uris: Vec<&str> = sans
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) if has_identity_scheme(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(AuthError::NoRole { subject }),
        [uri] => *uri,
        _ => {
            return Err(AuthError::AmbiguousIdentity {
                subject,
                uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            });
        }
    };
    let (role, name) = parse_identity_uri(uri).map_err(|reason| AuthError::BadIdentityUri {
        subject: subject.clone(),
        uri: uri.to_owned(),
        reason,
    })?;
    // webpki accepts a client certificate without any extended key usage;
    // an ircap identity must be issued for client authentication.
    let client_auth = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.client_auth);
    if !client_auth {
        return Err(AuthError::NoClientAuth { subject });
    }
    Ok(Identity {
        name: name.to_owned(),
        role,
        fingerprint_sha256: sha256_hex(der),
        subject,
    })
}

/// [`identity_from_cert`] on the leaf (first) certificate of a peer chain,
/// as returned by `tonic::Request::peer_certs`.
///
/// # Errors
///
/// [`AuthError::NoCertificate`] for an empty chain, otherwise as
/// [`identity_from_cert`].
pub fn identity_from_chain(chain: &[CertificateDer<'_>]) -> Result<Identity, AuthError> {
    let leaf = chain.first().ok_or(AuthError::NoCertificate)?;
    identity_from_cert(leaf.as_ref())
}

fn has_identity_scheme(uri: &str) -> bool {
    uri.get(..IDENTITY_URI_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(IDENTITY_URI_PREFIX))
}

fn parse_identity_uri(uri: &str) -> Result<(Role, &str), String> {
    let rest = uri
        .get(IDENTITY_URI_PREFIX.len()..)
        .ok_or_else(|| "too short".to_owned())?;
    let (role, name) = rest
        .split_once('/')
        .ok_or_else(|| "expected ircap://<role>/<name>".to_owned())?;
    let role = role.parse::<Role>().map_err(|e| e.to_string())?;
    validate_name(name).map_err(|e| e.to_string())?;
    Ok((role, name))
}

/// Lower-case hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Reads every certificate from a PEM file (other PEM sections are skipped).
///
/// # Errors
///
/// [`AuthError::Pem`] if the file cannot be read or decoded,
/// [`AuthError::Empty`] if it holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    const WHAT: &str = "certificates";
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_error(WHAT, path, source))?;
    if certs.is_empty() {
        return Err(AuthError::Empty {
            what: WHAT,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
///
/// # Errors
///
/// [`AuthError::Pem`] if the file cannot be read or decoded,
/// [`AuthError::Empty`] if it holds no private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, AuthError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| pem_error("private key", path, source))
}

/// Refuses CRLs whose next update has passed (or that cannot be parsed).
///
/// # Errors
/// [`AuthError::CrlExpired`] naming the file and the time.
pub fn check_crls_current(
    path: &Path,
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<(), AuthError> {
    let now = x509_parser::time::ASN1Time::now();
    for der in crls {
        let next = x509_parser::parse_x509_crl(der.as_ref())
            .ok()
            .and_then(|(_, crl)| crl.next_update());
        match next {
            Some(next) if next > now => {}
            Some(next) => {
                return Err(AuthError::CrlExpired {
                    path: path.to_owned(),
                    next_update: next.to_string(),
                });
            }
            None => {
                return Err(AuthError::CrlExpired {
                    path: path.to_owned(),
                    next_update: "not stated".into(),
                });
            }
        }
    }
    Ok(())
}

/// Reads every CRL from a PEM file.
///
/// # Errors
///
/// [`AuthError::Pem`] if the file cannot be read or decoded,
/// [`AuthError::Empty`] if it holds no CRL.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, AuthError> {
    const WHAT: &str = "CRLs";
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|source| pem_error(WHAT, path, source))?;
    if crls.is_empty() {
        return Err(AuthError::Empty {
            what: WHAT,
            path: path.to_owned(),
        });
    }
    Ok(crls)
}

fn pem_error(what: &'static str, path: &Path, source: pem::Error) -> AuthError {
    match source {
        pem::Error::NoItemsFound => AuthError::Empty {
            what,
            path: path.to_owned(),
        },
        source => AuthError::Pem {
            what,
            path: path.to_owned(),
            source,
        },
    }
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn root_store(ca: &Path) -> Result<RootCertStore, AuthError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|source| AuthError::TrustAnchor {
            path: ca.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The collector's TLS configuration: TLS 1.3 only, ring, ALPN `h2`, and a
/// client certificate **required** and verified against the CA certificates
/// in `ca` (and, when given, the CRLs in `crl`; then a client whose
/// revocation status is unknown is refused too).
///
/// # Errors
///
/// Any [`AuthError`] from loading the files, each naming its path, or
/// [`AuthError::Verifier`] / [`AuthError::Tls`] if rustls refuses them
/// (for example a key that does not match `cert`).
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    crl: Option<&Path>,
) -> Result<ServerConfig, AuthError> {
    let provider = ring_provider();
    let roots = Arc::new(root_store(ca)?);
    let crls = match crl {
        Some(path) => {
            let crls = load_crls(path)?;
            check_crls_current(path, &crls)?;
            crls
        }
        None => Vec::new(),
    };
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider)).with_crls(crls);
    if crl.is_some() {
        // A CRL past its nextUpdate says nothing current: refuse rather
        // than trust it.
        builder = builder.enforce_revocation_expiration();
    }
    let verifier = builder.build().map_err(|source| AuthError::Verifier {
        ca: ca.to_owned(),
        crl: crl.map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
        source,
    })?;
    let chain = load_certs(cert)?;
    let private_key = load_key(key)?;
    let tls_error = |source| AuthError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The agent's or analyst's TLS configuration: TLS 1.3 only, ring, ALPN
/// `h2`, the server verified against the CA certificates in `ca`, and the
/// client certificate chain `cert` with its `key` presented to the server.
///
/// # Errors
///
/// Any [`AuthError`] from loading the files, each naming its path, or
/// [`AuthError::Tls`] if rustls refuses them.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig, AuthError> {
    let roots = root_store(ca)?;
    let chain = load_certs(cert)?;
    let private_key = load_key(key)?;
    let tls_error = |source| AuthError::Tls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let mut config = ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, private_key)
        .map_err(tls_error)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::time::Duration;

    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::pki;

    type TestResult = Result<(), Box<dyn Error>>;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A PKI directory with agents web-01 and web-02 and analyst alice.
    fn make_pki(dir: &Path) -> Result<(), Box<dyn Error>> {
        pki::init(
            dir,
            &names(&["web-01", "web-02"]),
            &names(&["alice"]),
            &[],
            false,
        )?;
        Ok(())
    }

    fn server_in(dir: &Path, crl: Option<&Path>) -> Result<ServerConfig, AuthError> {
        server_config(
            &dir.join("ca.pem"),
            &dir.join("server.pem"),
            &dir.join("server.key"),
            crl,
        )
    }

    fn client_in(dir: &Path, trust: &Path, name: &str) -> Result<ClientConfig, AuthError> {
        client_config(
            &trust.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
    }

    fn leaf_der(dir: &Path, name: &str) -> Result<CertificateDer<'static>, Box<dyn Error>> {
        Ok(CertificateDer::from_pem_file(
            dir.join(format!("{name}.pem")),
        )?)
    }

    /// What each side saw of one connection.
    struct Outcome {
        /// The identity the server read from the verified peer certificate.
        server: Result<Identity, String>,
        /// Whether the client could exchange one byte with the server.
        client: Result<(), String>,
    }

    /// A real TLS connection over loopback TCP: the client writes one byte,
    /// the server echoes it. With TLS 1.3 a refused client certificate only
    /// shows on the client at this first exchange.
    async fn connect(
        server: ServerConfig,
        client: ClientConfig,
    ) -> Result<Outcome, Box<dyn Error>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let server_side = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let (_, conn) = tls.get_ref();
            if conn.alpn_protocol() != Some(ALPN_H2) {
                return Err("ALPN h2 not negotiated".to_owned());
            }
            let chain = conn
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default();
            let mut byte = [0_u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            tls.write_all(&byte).await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())?;
            identity_from_chain(&chain).map_err(|e| e.to_string())
        });
        let client_side = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let mut tls = TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            let mut byte = [0_u8; 1];
            tls.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            if &byte != b"x" {
                return Err("wrong echo".to_owned());
            }
            Ok(())
        };
        let deadline = Duration::from_secs(10);
        let client = tokio::time::timeout(deadline, client_side).await?;
        let server = tokio::time::timeout(deadline, server_side).await??;
        Ok(Outcome { server, client })
    }

    /// Asserts that both sides failed, each with the expected message.
    fn refused(outcome: &Outcome, server_says: &str, client_says: &str) {
        match (&outcome.server, &outcome.client) {
            (Err(server), Err(client)) => {
                assert!(server.contains(server_says), "server: {server}");
                assert!(client.contains(client_says), "client: {client}");
            }
            (server, client) => {
                unreachable!("not refused: server {server:?}, client {client:?}")
            }
        }
    }

    #[test]
    fn names_are_validated() {
        for good in ["a", "web-01", "db.02", "A_b-C.d", "x.", &"z".repeat(64)] {
            assert_eq!(validate_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            ".x",
            "..",
            "a/b",
            "a b",
            "a:b",
            "a%2f",
            "ä",
            "a\n",
            &"z".repeat(65),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            validate_name(".x").map_err(|e| e.reason),
            Err("must not start with a dot")
        );
    }

    #[test]
    fn roles_round_trip() {
        for role in [Role::Agent, Role::Analyst] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("Agent".parse::<Role>().is_err());
        assert_eq!(Role::Agent.identity_uri("w"), "ircap://agent/w");
    }

    #[test]
    fn identity_of_generated_certificates() -> TestResult {
        let tmp = tempfile::tempdir()?;
        make_pki(tmp.path())?;
        let agent_der = leaf_der(tmp.path(), "web-01")?;
        let agent = identity_from_cert(&agent_der)?;
        assert_eq!(agent.name, "web-01");
        assert_eq!(agent.role, Role::Agent);
        assert_eq!(agent.subject, "CN=web-01");
        assert_eq!(agent.fingerprint_sha256, sha256_hex(&agent_der));
        assert_eq!(agent.fingerprint_sha256.len(), 64);

        let analyst = identity_from_chain(&[leaf_der(tmp.path(), "alice")?])?;
        assert_eq!(
            (analyst.name.as_str(), analyst.role),
            ("alice", Role::Analyst)
        );

        let server = identity_from_cert(&leaf_der(tmp.path(), "server")?);
        let Err(err @ AuthError::NoRole { .. }) = server else {
            return Err(format!("server certificate has a role: {server:?}").into());
        };
        assert!(err.to_string().contains("CN=ircap collector"), "{err}");
        assert!(matches!(
            identity_from_chain(&[]),
            Err(AuthError::NoCertificate)
        ));
        assert!(matches!(
            identity_from_cert(b"not a certificate"),
            Err(AuthError::BadCertificate { .. })
        ));
        Ok(())
    }

    /// A self-signed certificate with the given URI SANs.
    fn cert_with_uris(uris: &[&str]) -> Result<CertificateDer<'static>, Box<dyn Error>> {
        let mut params = CertificateParams::default();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into()?));
        }
        params
            .subject_alt_names
            .push(SanType::DnsName("host.example".try_into()?));
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Ok(params.self_signed(&key)?.der().clone())
    }

    #[test]
    fn identity_uri_rules() -> TestResult {
        let ok = identity_from_cert(&cert_with_uris(&[
            "https://example.org/x",
            "ircap://analyst/bob",
        ])?)?;
        assert_eq!((ok.name.as_str(), ok.role), ("bob", Role::Analyst));

        let none = identity_from_cert(&cert_with_uris(&["https://example.org/agent/x"])?);
        assert!(matches!(none, Err(AuthError::NoRole { .. })), "{none:?}");

        let two = identity_from_cert(&cert_with_uris(&["ircap://agent/a", "ircap://analyst/a"])?);
        assert!(
            matches!(&two, Err(AuthError::AmbiguousIdentity { uris, .. }) if uris.len() == 2),
            "{two:?}"
        );
        // Also a case variant of the scheme counts as an identity URI.
        let two = identity_from_cert(&cert_with_uris(&["ircap://agent/a", "IRCAP://agent/b"])?);
        assert!(
            matches!(two, Err(AuthError::AmbiguousIdentity { .. })),
            "{two:?}"
        );

        for bad in [
            "ircap://admin/x",
            "ircap://Agent/x",
            "ircap://agent",
            "ircap://agent/",
            "ircap://agent/../x",
            "ircap://agent/a/b",
            "ircap://agent/.x",
        ] {
            let err = identity_from_cert(&cert_with_uris(&[bad])?);
            assert!(
                matches!(err, Err(AuthError::BadIdentityUri { .. })),
                "{bad}: {err:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn loading_errors_name_the_path() -> TestResult {
        let tmp = tempfile::tempdir()?;
        make_pki(tmp.path())?;
        let missing = tmp.path().join("missing.pem");
        let err = load_certs(&missing).err().ok_or("loaded a missing file")?;
        assert!(matches!(err, AuthError::Pem { .. }), "{err:?}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let key_only = tmp.path().join("web-01.key");
        let err = load_certs(&key_only)
            .err()
            .ok_or("certificates in a key file")?;
        assert!(matches!(err, AuthError::Empty { .. }), "{err:?}");
        assert!(err.to_string().contains("web-01.key"), "{err}");
        let err = load_key(&tmp.path().join("web-01.pem"))
            .err()
            .ok_or("key in a cert file")?;
        assert!(matches!(err, AuthError::Empty { .. }), "{err:?}");
        let err = load_crls(&tmp.path().join("ca.pem"))
            .err()
            .ok_or("CRL in a cert file")?;
        assert!(matches!(err, AuthError::Empty { .. }), "{err:?}");

        assert_eq!(load_certs(&tmp.path().join("ca.pem"))?.len(), 1);
        load_key(&key_only)?;

        // A key that does not belong to the certificate.
        let err = server_config(
            &tmp.path().join("ca.pem"),
            &tmp.path().join("server.pem"),
            &tmp.path().join("web-01.key"),
            None,
        )
        .err()
        .ok_or("mismatched key accepted")?;
        assert!(matches!(err, AuthError::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("web-01.key"), "{err}");
        Ok(())
    }

    #[tokio::test]
    async fn agent_and_analyst_are_identified_over_mutual_tls() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        make_pki(dir)?;
        for (name, role) in [("web-01", Role::Agent), ("alice", Role::Analyst)] {
            let outcome = connect(server_in(dir, None)?, client_in(dir, dir, name)?).await?;
            outcome.client?;
            let identity = outcome.server?;
            assert_eq!((identity.name.as_str(), identity.role), (name, role));
            assert_eq!(
                identity.fingerprint_sha256,
                sha256_hex(&leaf_der(dir, name)?)
            );
        }
        Ok(())
    }

    #[tokio::test]
    async fn client_from_another_ca_is_refused() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ours = tmp.path().join("ours");
        let theirs = tmp.path().join("theirs");
        make_pki(&ours)?;
        make_pki(&theirs)?;
        // The foreign client trusts our server, but our server does not
        // trust its CA.
        let outcome = connect(
            server_in(&ours, None)?,
            client_in(&theirs, &ours, "web-01")?,
        )
        .await?;
        // Both CAs are called "ircap CA", so webpki finds the issuer by
        // name and then rejects the signature.
        refused(&outcome, "invalid peer certificate", "fatal alert");
        Ok(())
    }

    #[tokio::test]
    async fn client_without_certificate_is_refused() -> TestResult {
        let tmp = tempfile::tempdir()?;
        make_pki(tmp.path())?;
        let anonymous = ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(root_store(&tmp.path().join("ca.pem"))?)
            .with_no_client_auth();
        let outcome = connect(server_in(tmp.path(), None)?, anonymous).await?;
        refused(&outcome, "peer sent no certificates", "CertificateRequired");
        Ok(())
    }

    #[tokio::test]
    async fn server_from_another_ca_is_refused_by_the_client() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ours = tmp.path().join("ours");
        let theirs = tmp.path().join("theirs");
        make_pki(&ours)?;
        make_pki(&theirs)?;
        let outcome = connect(
            server_in(&theirs, None)?,
            client_in(&ours, &ours, "web-01")?,
        )
        .await?;
        refused(&outcome, "fatal alert", "invalid peer certificate");
        Ok(())
    }

    #[tokio::test]
    async fn an_out_of_date_crl_is_refused_with_its_date() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        make_pki(dir)?;
        let crl = dir.join("old-crl.pem");
        // Issued long enough ago that its next update has passed.
        let then = time::OffsetDateTime::now_utc() - pki::CRL_VALIDITY - time::Duration::days(1);
        pki::revoke_at(dir, &[dir.join("web-01.pem")], &crl, then)?;
        let err = server_in(dir, Some(&crl))
            .err()
            .ok_or("an expired CRL was accepted")?;
        let text = err.to_string();
        assert!(
            matches!(err, AuthError::CrlExpired { .. }) && text.contains("out of date"),
            "{text}"
        );
        // A current one is fine.
        let fresh = dir.join("crl.pem");
        pki::revoke(dir, &[dir.join("web-01.pem")], &fresh)?;
        server_in(dir, Some(&fresh))?;
        Ok(())
    }

    #[tokio::test]
    async fn revoked_client_is_refused_when_the_crl_is_loaded() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        make_pki(dir)?;
        let crl = dir.join("crl.pem");
        pki::revoke(dir, &[dir.join("web-01.pem")], &crl)?;

        let outcome = connect(server_in(dir, Some(&crl))?, client_in(dir, dir, "web-01")?).await?;
        refused(&outcome, "Revoked", "CertificateRevoked");
        let outcome = connect(server_in(dir, Some(&crl))?, client_in(dir, dir, "web-02")?).await?;
        outcome.client?;
        assert_eq!(outcome.server?.name, "web-02");
        // Without the CRL the revoked certificate would still get in.
        let outcome = connect(server_in(dir, None)?, client_in(dir, dir, "web-01")?).await?;
        assert_eq!(outcome.server?.name, "web-01");
        Ok(())
    }
}
