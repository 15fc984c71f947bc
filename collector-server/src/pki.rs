//! A small certificate authority for trials and small fleets:
//! `ircap-collector pki init`, `pki issue` and `pki revoke`.
//!
//! [`init`] writes into one directory a CA (`ca.pem`, `ca.key`), a server
//! certificate (`server.pem`, `server.key`) and one `<name>.pem` /
//! `<name>.key` pair per agent and analyst. Every key is ECDSA P-256 and
//! written with mode 0600. Client certificates carry their identity as the
//! URI SAN `ircap://agent/<name>` or `ircap://analyst/<name>` (see
//! [`crate::auth`]). It also writes `receipt.pem` / `receipt.key`, the
//! key the collector signs capture receipts with (`serve --receipt-key`):
//! key usage digitalSignature and extended key usage id-kp-documentSigning
//! only, so it is no TLS certificate and no TLS certificate can sign a
//! receipt (see [`ircap_proto::receipt`]). [`issue`] adds one more client
//! certificate from an existing CA, [`issue_receipt`] a receipt
//! certificate, and [`revoke`] writes a CRL for the collector's `--crl`.
//!
//! Production deployments can bring their own CA instead; the certificate
//! profile they must follow is described in [`crate::auth`].

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, RevokedCertParams, SanType,
    SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, DnsName};
use serde::Serialize;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;

use crate::auth::{InvalidName, Role, sha256_hex, validate_name};

/// CA certificate file name.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// Collector (server) certificate file name.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// Collector (server) private key file name.
pub const SERVER_KEY_FILE: &str = "server.key";
/// The receipt-signing certificate file name.
pub const RECEIPT_CERT_FILE: &str = "receipt.pem";
/// The receipt-signing private key file name.
pub const RECEIPT_KEY_FILE: &str = "receipt.key";
/// Subject common name of the receipt-signing certificate.
pub const RECEIPT_COMMON_NAME: &str = "ircap collector receipts";
/// The CRL [`init`] writes (empty) and [`revoke`] extends, in the PKI directory.
pub const CRL_FILE: &str = "crl.pem";
/// Subject common name of the CA made by [`init`].
pub const CA_COMMON_NAME: &str = "ircap CA";
/// Subject common name of the server certificate.
pub const SERVER_COMMON_NAME: &str = "ircap collector";
/// Names that would collide with the CA, server or CRL files.
pub const RESERVED_NAMES: [&str; 4] = ["ca", "server", "crl", "receipt"];

/// Lifetime of agent, analyst and server certificates.
pub const LEAF_VALIDITY: Duration = Duration::days(730);
/// Lifetime of the CA certificate.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How far `notBefore` is set in the past, to tolerate clock skew.
pub const BACKDATE: Duration = Duration::hours(1);
/// Time between a CRL's `thisUpdate` and `nextUpdate`. The collector
/// enforces `nextUpdate`: it refuses to start with a CRL past it, keeps
/// the CRL it has when a reload finds one past it, and refuses client
/// certificates once the CRL it holds is past it (see
/// [`crate::auth::check_crls_current`]). Re-run `pki revoke` before then,
/// and to publish changes.
pub const CRL_VALIDITY: Duration = Duration::days(365);

/// Errors from [`init`], [`issue`] and [`revoke`].
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("create directory", "write", "read").
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A name broke the naming rules.
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    /// A name would collide with the CA, server or CRL files.
    #[error("name {name:?} is reserved (ca, server, crl and receipt are taken)")]
    ReservedName {
        /// The name.
        name: String,
    },
    /// The same name (compared without case) was given twice.
    #[error(
        "name {name:?} is given more than once (names must be unique across agents and analysts, ignoring case)"
    )]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A server name is neither an IP address nor a valid DNS name.
    #[error("server name {name:?} is neither an IP address nor a valid DNS name")]
    BadServerName {
        /// The name.
        name: String,
    },
    /// A file would be overwritten.
    #[error("refusing to overwrite {} (remove it, or pass --force to `pki init`)", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// rcgen failed to generate a key, certificate or CRL.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },
    /// The CA certificate or key cannot be used.
    #[error("unusable CA in {}: {reason}", path.display())]
    BadCa {
        /// The CA certificate or key file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate to revoke cannot be read or was not issued by the CA.
    #[error("cannot revoke the certificate in {}: {reason}", path.display())]
    BadCert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An existing CRL cannot be extended.
    #[error("cannot extend the existing CRL {}: {reason}", path.display())]
    BadCrl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What a certificate written by this module is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertKind {
    /// The certificate authority.
    Ca,
    /// The collector's TLS server certificate.
    Server,
    /// An agent client certificate.
    Agent,
    /// An analyst client certificate.
    Analyst,
    /// The collector's receipt-signing certificate.
    Receipt,
}

impl From<Role> for CertKind {
    fn from(role: Role) -> Self {
        match role {
            Role::Agent => Self::Agent,
            Role::Analyst => Self::Analyst,
        }
    }
}

/// One certificate and key written to disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IssuedCert {
    /// What it is for.
    pub kind: CertKind,
    /// Agent or analyst name, or the subject common name for CA and server.
    pub name: String,
    /// The PEM certificate file.
    pub cert: PathBuf,
    /// The PEM private key file (mode 0600).
    pub key: PathBuf,
    /// Serial number, colon-separated hex (as `openssl x509 -serial` groups it).
    pub serial: String,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub fingerprint_sha256: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// Identity URI SAN for agents and analysts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_uri: Option<String>,
    /// Subject alternative names of the server certificate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub server_names: Vec<String>,
}

/// What [`init`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PkiSummary {
    /// The output directory.
    pub dir: PathBuf,
    /// CA first, then the server, then agents and analysts in the order
    /// given, then the receipt-signing certificate.
    pub files: Vec<IssuedCert>,
    /// The CA's CRL, revoking nothing yet, so the collector's `--crl` works
    /// from the start and `pki revoke` extends it.
    pub crl: CrlSummary,
}

/// What [`revoke`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrlSummary {
    /// The PEM CRL file.
    pub crl: PathBuf,
    /// The CRL number (increases with every CRL written).
    pub crl_number: u64,
    /// Serials newly revoked by this call.
    pub added: Vec<String>,
    /// Every serial in the CRL, including those carried over from the
    /// previous CRL at the same path.
    pub revoked: Vec<String>,
}

/// A certificate and key generated in memory, waiting to be written.
struct Pending {
    cert_pem: String,
    key_pem: String,
    summary: IssuedCert,
}

/// Creates a CA, a server certificate and one client certificate per agent
/// and analyst in `out` (created with mode 0700 if missing).
///
/// The server certificate is valid for `localhost`, `127.0.0.1`, `::1` and
/// every entry of `server_names` (IP addresses become IP SANs, anything
/// else a DNS SAN). Everything is generated in memory before the first file
/// is written.
///
/// # Errors
///
/// [`PkiError::InvalidName`], [`PkiError::ReservedName`] or
/// [`PkiError::DuplicateName`] for bad names, [`PkiError::BadServerName`],
/// [`PkiError::Exists`] if any of the files exists and `force` is false,
/// and [`PkiError::Io`] naming the path of a failed write.
pub fn init(
    out: &Path,
    agents: &[String],
    analysts: &[String],
    server_names: &[String],
    force: bool,
) -> Result<PkiSummary, PkiError> {
    let clients: Vec<(Role, &str)> = agents
        .iter()
        .map(|n| (Role::Agent, n.as_str()))
        .chain(analysts.iter().map(|n| (Role::Analyst, n.as_str())))
        .collect();
    let mut seen = HashSet::new();
    for (_, name) in &clients {
        check_client_name(name)?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(PkiError::DuplicateName {
                name: (*name).to_owned(),
            });
        }
    }
    let server_sans = server_sans(server_names)?;

    let now = OffsetDateTime::now_utc();
    let mut pending = Vec::with_capacity(clients.len() + 2);

    let ca_key = generate_key(CA_COMMON_NAME)?;
    let ca = CertifiedIssuer::self_signed(ca_params(now), ca_key).map_err(|source| {
        PkiError::Generate {
            what: "the CA certificate".to_owned(),
            source,
        }
    })?;
    let ca_not_after = now + CA_VALIDITY;
    pending.push(Pending {
        cert_pem: ca.pem(),
        key_pem: ca.key().serialize_pem(),
        summary: summary(
            CertKind::Ca,
            CA_COMMON_NAME,
            out,
            "ca",
            ca.der(),
            ca_not_after,
        ),
    });

    let mut server = leaf(
        &ca,
        CertKind::Server,
        SERVER_COMMON_NAME,
        server_sans.iter().map(|(_, san)| san.clone()).collect(),
        ExtendedKeyUsagePurpose::ServerAuth,
        now,
        ca_not_after,
        out,
        "server",
    )?;
    server.summary.server_names = server_sans.into_iter().map(|(name, _)| name).collect();
    pending.push(server);

    for (role, name) in clients {
        pending.push(client_leaf(&ca, role, name, now, ca_not_after, out)?);
    }
    pending.push(receipt_leaf(&ca, now, ca_not_after, out)?);

    create_dir(out)?;
    let crl_path = out.join(CRL_FILE);
    if force {
        // A CRL of the CA being replaced cannot be extended by the new one.
        remove_if_present(&crl_path)?;
    } else {
        for p in &pending {
            for path in [&p.summary.key, &p.summary.cert] {
                refuse_existing(path)?;
            }
        }
        refuse_existing(&crl_path)?;
    }
    let mut files = Vec::with_capacity(pending.len());
    for p in pending {
        write_pair(&p, force)?;
        files.push(p.summary);
    }
    let crl = revoke(out, &[], &crl_path)?;
    Ok(PkiSummary {
        dir: out.to_owned(),
        files,
        crl,
    })
}

/// Issues one more agent or analyst certificate from the CA in `ca_dir`
/// (`ca.pem` and `ca.key`), writing `<name>.pem` and `<name>.key` into
/// `out`. The certificate never outlives the CA.
///
/// # Errors
///
/// As [`init`] for the name; [`PkiError::BadCa`] if the CA cannot be loaded,
/// is not a CA or its key does not match; [`PkiError::Exists`] if either
/// file already exists; [`PkiError::Io`] naming the path of a failed read
/// or write.
pub fn issue(out: &Path, ca_dir: &Path, role: Role, name: &str) -> Result<IssuedCert, PkiError> {
    check_client_name(name)?;
    let ca = LoadedCa::load(ca_dir)?;
    let pending = client_leaf(
        &ca.issuer,
        role,
        name,
        OffsetDateTime::now_utc(),
        ca.not_after,
        out,
    )?;
    create_dir(out)?;
    refuse_existing(&pending.summary.cert)?;
    refuse_existing(&pending.summary.key)?;
    write_pair(&pending, false)?;
    Ok(pending.summary)
}

/// Issues a receipt-signing certificate (`receipt.pem`, `receipt.key`)
/// from the CA in `ca_dir` into `out`, for a PKI made before receipts.
///
/// # Errors
/// As [`issue`].
pub fn issue_receipt(out: &Path, ca_dir: &Path) -> Result<IssuedCert, PkiError> {
    let ca = LoadedCa::load(ca_dir)?;
    let pending = receipt_leaf(&ca.issuer, OffsetDateTime::now_utc(), ca.not_after, out)?;
    create_dir(out)?;
    refuse_existing(&pending.summary.cert)?;
    refuse_existing(&pending.summary.key)?;
    write_pair(&pending, false)?;
    Ok(pending.summary)
}

/// Writes a PEM CRL signed by the CA in `ca_dir` that revokes the
/// certificates in `cert_pems` (the first certificate of each file).
///
/// If `out_crl` already holds a CRL from the same CA, its entries are kept,
/// so revoking one certificate at a time accumulates; the CRL number always
/// increases. Revoking a certificate twice is not an error.
///
/// # Errors
///
/// [`PkiError::BadCa`] if the CA cannot be loaded, [`PkiError::BadCert`] if
/// a certificate cannot be read or was not issued by this CA,
/// [`PkiError::BadCrl`] if an existing `out_crl` was not signed by this CA,
/// and [`PkiError::Io`] naming the path of a failed read or write.
pub fn revoke(
    ca_dir: &Path,
    cert_pems: &[PathBuf],
    out_crl: &Path,
) -> Result<CrlSummary, PkiError> {
    revoke_at(ca_dir, cert_pems, out_crl, OffsetDateTime::now_utc())
}

/// [`revoke`] as if run at `now` (tests make out-of-date CRLs with it).
///
/// # Errors
/// As [`revoke`].
pub fn revoke_at(
    ca_dir: &Path,
    cert_pems: &[PathBuf],
    out_crl: &Path,
    now: OffsetDateTime,
) -> Result<CrlSummary, PkiError> {
    let ca = LoadedCa::load(ca_dir)?;

    let (mut revoked, previous_number) = if out_crl.exists() {
        ca.existing_crl_entries(out_crl)?
    } else {
        (Vec::new(), 0)
    };

    let mut added = Vec::new();
    for path in cert_pems {
        let serial = ca.serial_of_issued(path)?;
        if revoked
            .iter()
            .any(|r: &RevokedCertParams| r.serial_number.as_ref() == serial.as_slice())
        {
            continue;
        }
        added.push(format_serial(&serial));
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }

    let unix_now = u64::try_from(now.unix_timestamp()).unwrap_or(0);
    let crl_number = unix_now.max(previous_number.saturating_add(1));
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from(crl_number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: ca.key_id_method.clone(),
    };
    let crl = params
        .signed_by(&ca.issuer)
        .map_err(|source| PkiError::Generate {
            what: "the CRL".to_owned(),
            source,
        })?;
    let pem = crl.pem().map_err(|source| PkiError::Generate {
        what: "the CRL PEM".to_owned(),
        source,
    })?;
    if let Some(parent) = out_crl.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    write_file(out_crl, pem.as_bytes(), false, true)?;
    Ok(CrlSummary {
        crl: out_crl.to_owned(),
        crl_number,
        added,
        revoked: params
            .revoked_certs
            .iter()
            .map(|r| format_serial(r.serial_number.as_ref()))
            .collect(),
    })
}

fn check_client_name(name: &str) -> Result<(), PkiError> {
    validate_name(name)?;
    if RESERVED_NAMES
        .iter()
        .any(|reserved| reserved.eq_ignore_ascii_case(name))
    {
        return Err(PkiError::ReservedName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The server certificate's SANs, defaults first, without duplicates.
fn server_sans(extra: &[String]) -> Result<Vec<(String, SanType)>, PkiError> {
    let defaults = [
        "localhost".to_owned(),
        IpAddr::V4(Ipv4Addr::LOCALHOST).to_string(),
        IpAddr::V6(Ipv6Addr::LOCALHOST).to_string(),
    ];
    let mut sans: Vec<(String, SanType)> = Vec::new();
    for name in defaults.iter().chain(extra) {
        let san = if let Ok(ip) = name.parse::<IpAddr>() {
            SanType::IpAddress(ip)
        } else {
            let bad = || PkiError::BadServerName { name: name.clone() };
            DnsName::try_from(name.as_str()).map_err(|_| bad())?;
            SanType::DnsName(name.as_str().try_into().map_err(|_| bad())?)
        };
        if !sans.iter().any(|(_, s)| *s == san) {
            sans.push((name.clone(), san));
        }
    }
    Ok(sans)
}

fn generate_key(what: &str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate {
        what: format!("a key for {what}"),
        source,
    })
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params
}

#[allow(clippy::too_many_arguments)]
fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    kind: CertKind,
    common: &str,
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    now: OffsetDateTime,
    ca_not_after: OffsetDateTime,
    out: &Path,
    file_stem: &str,
) -> Result<Pending, PkiError> {
    let key = generate_key(common)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(common);
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - BACKDATE;
    params.not_after = (now + LEAF_VALIDITY).min(ca_not_after);
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|source| PkiError::Generate {
            what: format!("the certificate for {common}"),
            source,
        })?;
    Ok(Pending {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        summary: summary(kind, common, out, file_stem, cert.der(), params.not_after),
    })
}

fn receipt_leaf(
    issuer: &Issuer<'_, KeyPair>,
    now: OffsetDateTime,
    ca_not_after: OffsetDateTime,
    out: &Path,
) -> Result<Pending, PkiError> {
    leaf(
        issuer,
        CertKind::Receipt,
        RECEIPT_COMMON_NAME,
        Vec::new(),
        ExtendedKeyUsagePurpose::Other(ircap_proto::receipt::DOCUMENT_SIGNING_OID.to_vec()),
        now,
        ca_not_after,
        out,
        "receipt",
    )
}

fn client_leaf(
    issuer: &Issuer<'_, KeyPair>,
    role: Role,
    name: &str,
    now: OffsetDateTime,
    ca_not_after: OffsetDateTime,
    out: &Path,
) -> Result<Pending, PkiError> {
    let uri = role.identity_uri(name);
    let san = uri
        .as_str()
        .try_into()
        .map_err(|source| PkiError::Generate {
            what: format!("the identity URI {uri}"),
            source,
        })?;
    let mut pending = leaf(
        issuer,
        role.into(),
        name,
        vec![SanType::URI(san)],
        ExtendedKeyUsagePurpose::ClientAuth,
        now,
        ca_not_after,
        out,
        name,
    )?;
    pending.summary.identity_uri = Some(uri);
    Ok(pending)
}

fn summary(
    kind: CertKind,
    name: &str,
    out: &Path,
    file_stem: &str,
    der: &CertificateDer<'_>,
    not_after: OffsetDateTime,
) -> IssuedCert {
    let serial = x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| format_serial(cert.raw_serial()))
        .unwrap_or_default();
    IssuedCert {
        kind,
        name: name.to_owned(),
        cert: out.join(format!("{file_stem}.pem")),
        key: out.join(format!("{file_stem}.key")),
        serial,
        fingerprint_sha256: sha256_hex(der),
        not_after: not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        identity_uri: None,
        server_names: Vec::new(),
    }
}

fn format_serial(bytes: &[u8]) -> String {
    let trimmed = match bytes {
        [0, rest @ ..] if !rest.is_empty() => rest,
        _ => bytes,
    };
    trimmed
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The CA of an existing PKI directory, ready to sign.
struct LoadedCa {
    cert_path: PathBuf,
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    key_id_method: KeyIdMethod,
    not_after: OffsetDateTime,
}

impl LoadedCa {
    fn load(ca_dir: &Path) -> Result<Self, PkiError> {
        let cert_path = ca_dir.join(CA_CERT_FILE);
        let key_path = ca_dir.join(CA_KEY_FILE);
        let bad_cert = |reason: String| PkiError::BadCa {
            path: cert_path.clone(),
            reason,
        };
        let der = CertificateDer::from_pem_slice(&read(&cert_path)?)
            .map_err(|e| bad_cert(format!("no PEM certificate: {e}")))?;
        let key_pem = String::from_utf8(read(&key_path)?).map_err(|_| PkiError::BadCa {
            path: key_path.clone(),
            reason: "not a PEM file".to_owned(),
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadCa {
            path: key_path.clone(),
            reason: format!("no usable private key: {e}"),
        })?;

        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad_cert(format!("cannot parse: {e}")))?;
        let is_ca = cert
            .basic_constraints()
            .map_err(|e| bad_cert(format!("basic constraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(bad_cert("not a CA certificate".to_owned()));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(PkiError::BadCa {
                path: key_path,
                reason: format!("the key does not belong to {}", cert_path.display()),
            });
        }
        let key_id_method =
            subject_key_id(&cert).map_or(KeyIdMethod::Sha256, KeyIdMethod::PreSpecified);
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| bad_cert(format!("cannot use as issuer: {e}")))?;
        Ok(Self {
            cert_path,
            der,
            issuer,
            key_id_method,
            not_after,
        })
    }

    fn parsed(&self) -> Result<X509Certificate<'_>, PkiError> {
        x509_parser::parse_x509_certificate(&self.der)
            .map(|(_, cert)| cert)
            .map_err(|e| PkiError::BadCa {
                path: self.cert_path.clone(),
                reason: format!("cannot parse: {e}"),
            })
    }

    /// The raw serial of the first certificate in `path`, after checking
    /// that this CA signed it.
    fn serial_of_issued(&self, path: &Path) -> Result<Vec<u8>, PkiError> {
        let bad = |reason: String| PkiError::BadCert {
            path: path.to_owned(),
            reason,
        };
        let der = CertificateDer::from_pem_slice(&read(path)?)
            .map_err(|e| bad(format!("no PEM certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| bad(format!("cannot parse: {e}")))?;
        let ca = self.parsed()?;
        if cert.issuer().as_raw() != ca.subject().as_raw()
            || cert.verify_signature(Some(ca.public_key())).is_err()
        {
            return Err(bad(format!(
                "not issued by the CA in {}",
                self.cert_path.display()
            )));
        }
        Ok(cert.raw_serial().to_vec())
    }

    /// Entries and CRL number of an existing CRL signed by this CA.
    fn existing_crl_entries(&self, path: &Path) -> Result<(Vec<RevokedCertParams>, u64), PkiError> {
        let bad = |reason: String| PkiError::BadCrl {
            path: path.to_owned(),
            reason,
        };
        let der = CertificateRevocationListDer::from_pem_slice(&read(path)?)
            .map_err(|e| bad(format!("no PEM CRL: {e}")))?;
        let (_, crl) =
            x509_parser::parse_x509_crl(&der).map_err(|e| bad(format!("cannot parse: {e}")))?;
        let ca = self.parsed()?;
        if crl.issuer().as_raw() != ca.subject().as_raw()
            || crl.verify_signature(ca.public_key()).is_err()
        {
            return Err(bad(format!(
                "not signed by the CA in {}",
                self.cert_path.display()
            )));
        }
        let number = match crl.crl_number() {
            Some(n) => u64::try_from(n).map_err(|_| bad("CRL number too large".to_owned()))?,
            None => 0,
        };
        let entries = crl
            .iter_revoked_certificates()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: r.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        Ok((entries, number))
    }
}

fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|source| PkiError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| PkiError::Io {
        action: "create directory",
        path: dir.to_owned(),
        source,
    })
}

fn refuse_existing(path: &Path) -> Result<(), PkiError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(PkiError::Exists {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PkiError::Io {
            action: "inspect",
            path: path.to_owned(),
            source,
        }),
    }
}

fn remove_if_present(path: &Path) -> Result<(), PkiError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(PkiError::Io {
            action: "remove",
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn write_pair(pending: &Pending, overwrite: bool) -> Result<(), PkiError> {
    write_file(
        &pending.summary.key,
        pending.key_pem.as_bytes(),
        true,
        overwrite,
    )?;
    write_file(
        &pending.summary.cert,
        pending.cert_pem.as_bytes(),
        false,
        overwrite,
    )
}

/// Writes `contents` to `path`; a `secret` file gets mode 0600 before any
/// byte is written, also when it already existed with a wider mode.
fn write_file(path: &Path, contents: &[u8], secret: bool, overwrite: bool) -> Result<(), PkiError> {
    let io_error = |action| {
        move |source| PkiError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let mut options = OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut file = options.open(path).map_err(io_error("create"))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_error("set permissions on"))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    file.write_all(contents).map_err(io_error("write"))?;
    file.sync_all().map_err(io_error("sync"))
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::os::unix::fs::PermissionsExt as _;

    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::auth::identity_from_cert;

    type TestResult = Result<(), Box<dyn Error>>;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn der(path: &Path) -> Result<CertificateDer<'static>, Box<dyn Error>> {
        Ok(CertificateDer::from_pem_file(path)?)
    }

    fn mode(path: &Path) -> Result<u32, Box<dyn Error>> {
        Ok(fs::metadata(path)?.permissions().mode() & 0o777)
    }

    fn common_name_of(cert: &X509Certificate<'_>) -> Option<String> {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
    }

    fn sans_of<'a>(cert: &'a X509Certificate<'a>) -> Result<Vec<GeneralName<'a>>, Box<dyn Error>> {
        Ok(cert
            .subject_alternative_name()?
            .map(|ext| ext.value.general_names.clone())
            .unwrap_or_default())
    }

    fn init_default(dir: &Path) -> Result<PkiSummary, PkiError> {
        init(
            dir,
            &names(&["web-01", "db.02"]),
            &names(&["alice"]),
            &names(&["collector.example.org", "10.0.0.5", "localhost"]),
            false,
        )
    }

    #[test]
    fn init_writes_every_file_with_private_keys() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("pki");
        let summary = init_default(&dir)?;

        let kinds: Vec<(CertKind, &str)> = summary
            .files
            .iter()
            .map(|f| (f.kind, f.name.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (CertKind::Ca, CA_COMMON_NAME),
                (CertKind::Server, SERVER_COMMON_NAME),
                (CertKind::Agent, "web-01"),
                (CertKind::Agent, "db.02"),
                (CertKind::Analyst, "alice"),
                (CertKind::Receipt, RECEIPT_COMMON_NAME),
            ]
        );
        for stem in ["ca", "server", "receipt", "web-01", "db.02", "alice"] {
            let cert = dir.join(format!("{stem}.pem"));
            let key = dir.join(format!("{stem}.key"));
            assert!(cert.is_file(), "{}", cert.display());
            assert_eq!(mode(&key)?, 0o600, "{}", key.display());
            assert!(
                fs::read_to_string(&key)?.starts_with("-----BEGIN PRIVATE KEY-----"),
                "{}",
                key.display()
            );
        }
        assert_eq!(mode(&dir)?, 0o700);
        for file in &summary.files {
            assert_eq!(file.fingerprint_sha256, sha256_hex(&der(&file.cert)?));
            assert!(!file.serial.is_empty());
        }
        let json = serde_json::to_value(&summary)?;
        assert_eq!(json["files"][2]["kind"], "agent");
        assert_eq!(json["files"][2]["identity_uri"], "ircap://agent/web-01");
        Ok(())
    }

    #[test]
    fn receipt_certificate_signs_documents_only() -> TestResult {
        let tmp = tempfile::tempdir()?;
        init_default(tmp.path())?;
        let receipt = der(&tmp.path().join(RECEIPT_CERT_FILE))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&receipt)?;
        assert_eq!(common_name_of(&cert).as_deref(), Some(RECEIPT_COMMON_NAME));
        assert!(!cert.is_ca());
        let usage = cert.key_usage()?.ok_or("no key usage")?.value;
        assert!(usage.digital_signature());
        assert!(!usage.key_cert_sign() && !usage.key_encipherment());
        let eku = cert.extended_key_usage()?.ok_or("no EKU")?.value;
        assert!(!eku.server_auth && !eku.client_auth && !eku.any);
        assert_eq!(eku.other.len(), 1);
        assert_eq!(eku.other[0].to_id_string(), "1.3.6.1.5.5.7.3.36");
        // Chains to the CA for document signing: what `verify --ca` asks.
        let ca = fs::read(tmp.path().join(CA_CERT_FILE))?;
        ircap_proto::receipt::check_signer_chain(&receipt, &ca, OffsetDateTime::now_utc())?;
        // An agent certificate does not: its EKU is clientAuth.
        let agent = der(&tmp.path().join("web-01.pem"))?;
        assert!(
            ircap_proto::receipt::check_signer_chain(&agent, &ca, OffsetDateTime::now_utc())
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn a_receipt_certificate_can_be_added_to_an_older_pki() -> TestResult {
        let tmp = tempfile::tempdir()?;
        init_default(tmp.path())?;
        fs::remove_file(tmp.path().join(RECEIPT_CERT_FILE))?;
        fs::remove_file(tmp.path().join(RECEIPT_KEY_FILE))?;
        let issued = issue_receipt(tmp.path(), tmp.path())?;
        assert_eq!(issued.kind, CertKind::Receipt);
        assert_eq!(mode(&issued.key)?, 0o600);
        let ca = fs::read(tmp.path().join(CA_CERT_FILE))?;
        ircap_proto::receipt::check_signer_chain(
            &der(&issued.cert)?,
            &ca,
            OffsetDateTime::now_utc(),
        )?;
        assert!(matches!(
            issue_receipt(tmp.path(), tmp.path()),
            Err(PkiError::Exists { .. })
        ));
        Ok(())
    }

    #[test]
    fn ca_certificate_profile() -> TestResult {
        let tmp = tempfile::tempdir()?;
        init_default(tmp.path())?;
        let ca_der = der(&tmp.path().join(CA_CERT_FILE))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)?;
        assert_eq!(common_name_of(&ca).as_deref(), Some(CA_COMMON_NAME));
        assert!(ca.basic_constraints()?.is_some_and(|bc| bc.value.ca));
        let usage = ca.key_usage()?.ok_or("no key usage")?.value;
        assert!(usage.key_cert_sign() && usage.crl_sign());
        let validity = ca.validity();
        let lifetime = validity.not_after.to_datetime() - validity.not_before.to_datetime();
        assert_eq!(lifetime, CA_VALIDITY + BACKDATE);
        ca.verify_signature(None)?;
        Ok(())
    }

    #[test]
    fn server_certificate_profile() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let summary = init_default(tmp.path())?;
        let ca_der = der(&tmp.path().join(CA_CERT_FILE))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)?;
        let server_der = der(&tmp.path().join(SERVER_CERT_FILE))?;
        let (_, server) = x509_parser::parse_x509_certificate(&server_der)?;
        server.verify_signature(Some(ca.public_key()))?;
        let eku = server.extended_key_usage()?.ok_or("no EKU")?.value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(!server.basic_constraints()?.is_some_and(|bc| bc.value.ca));
        let sans = sans_of(&server)?;
        assert_eq!(
            sans,
            [
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::IPAddress(&Ipv6Addr::LOCALHOST.octets()),
                GeneralName::DNSName("collector.example.org"),
                GeneralName::IPAddress(&[10, 0, 0, 5]),
            ]
        );
        assert_eq!(
            summary.files[1].server_names,
            names(&[
                "localhost",
                "127.0.0.1",
                "::1",
                "collector.example.org",
                "10.0.0.5"
            ])
        );
        Ok(())
    }

    #[test]
    fn client_certificate_profile() -> TestResult {
        let tmp = tempfile::tempdir()?;
        init_default(tmp.path())?;
        let ca_der = der(&tmp.path().join(CA_CERT_FILE))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)?;
        for (stem, uri) in [
            ("web-01", "ircap://agent/web-01"),
            ("alice", "ircap://analyst/alice"),
        ] {
            let leaf_der = der(&tmp.path().join(format!("{stem}.pem")))?;
            let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)?;
            leaf.verify_signature(Some(ca.public_key()))?;
            assert_eq!(common_name_of(&leaf).as_deref(), Some(stem));
            assert_eq!(sans_of(&leaf)?, [GeneralName::URI(uri)]);
            let eku = leaf.extended_key_usage()?.ok_or("no EKU")?.value;
            assert!(eku.client_auth && !eku.server_auth);
            let validity = leaf.validity();
            let lifetime = validity.not_after.to_datetime() - validity.not_before.to_datetime();
            assert_eq!(lifetime, LEAF_VALIDITY + BACKDATE);
            assert!(validity.is_valid());
        }
        Ok(())
    }

    #[test]
    fn init_refuses_to_overwrite_unless_forced() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let first = init_default(tmp.path())?;
        let again = init_default(tmp.path());
        assert!(
            matches!(&again, Err(PkiError::Exists { path }) if path.ends_with(CA_KEY_FILE)),
            "{again:?}"
        );
        // A stray agent file alone also stops a fresh init.
        let other = tempfile::tempdir()?;
        fs::write(other.path().join("web-01.key"), "keep me")?;
        let err = init(other.path(), &names(&["web-01"]), &[], &[], false);
        assert!(matches!(err, Err(PkiError::Exists { .. })), "{err:?}");
        assert_eq!(
            fs::read_to_string(other.path().join("web-01.key"))?,
            "keep me"
        );
        assert!(!other.path().join(CA_KEY_FILE).exists());

        // Forced: new CA, and a key that had been loosened is 0600 again.
        fs::set_permissions(
            tmp.path().join("alice.key"),
            fs::Permissions::from_mode(0o644),
        )?;
        let forced = init(
            tmp.path(),
            &names(&["web-01"]),
            &names(&["alice"]),
            &[],
            true,
        )?;
        assert_ne!(
            forced.files[0].fingerprint_sha256,
            first.files[0].fingerprint_sha256
        );
        assert_eq!(mode(&tmp.path().join("alice.key"))?, 0o600);
        Ok(())
    }

    #[test]
    fn init_rejects_bad_names_before_writing() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("pki");
        let long = "x".repeat(65);
        for bad in [
            "",
            ".hidden",
            "a/b",
            "a b",
            "é",
            long.as_str(),
            "..",
            "a\0b",
        ] {
            let err = init(&dir, &names(&[bad]), &[], &[], false);
            assert!(
                matches!(err, Err(PkiError::InvalidName(_))),
                "{bad:?}: {err:?}"
            );
        }
        for reserved in ["ca", "server", "Server", "crl"] {
            let err = init(&dir, &[], &names(&[reserved]), &[], false);
            assert!(
                matches!(err, Err(PkiError::ReservedName { .. })),
                "{reserved:?}: {err:?}"
            );
        }
        let err = init(&dir, &names(&["web"]), &names(&["web"]), &[], false);
        assert!(matches!(err, Err(PkiError::DuplicateName { ref name }) if name == "web"));
        let err = init(&dir, &names(&["web", "WEB"]), &[], &[], false);
        assert!(
            matches!(err, Err(PkiError::DuplicateName { .. })),
            "{err:?}"
        );
        let err = init(&dir, &[], &[], &names(&["not a host"]), false);
        assert!(
            matches!(err, Err(PkiError::BadServerName { .. })),
            "{err:?}"
        );
        assert!(!dir.exists(), "nothing is written when a name is refused");

        // Longest and most varied valid names are accepted.
        let ok = "A".repeat(64);
        init(&dir, &names(&[&ok, "a.b_c-d", "x."]), &[], &[], false)?;
        Ok(())
    }

    #[test]
    fn issue_adds_a_certificate_from_an_existing_ca() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let ca_dir = tmp.path().join("pki");
        init(&ca_dir, &names(&["web-01"]), &[], &[], false)?;
        let out = tmp.path().join("issued");
        let issued = issue(&out, &ca_dir, Role::Analyst, "bob")?;
        assert_eq!(issued.kind, CertKind::Analyst);
        assert_eq!(issued.cert, out.join("bob.pem"));
        assert_eq!(mode(&issued.key)?, 0o600);

        let ca_der = der(&ca_dir.join(CA_CERT_FILE))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)?;
        let leaf_der = der(&issued.cert)?;
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der)?;
        leaf.verify_signature(Some(ca.public_key()))?;
        assert_eq!(leaf.issuer().as_raw(), ca.subject().as_raw());
        let identity = identity_from_cert(&leaf_der)?;
        assert_eq!(
            (identity.name.as_str(), identity.role),
            ("bob", Role::Analyst)
        );

        let again = issue(&out, &ca_dir, Role::Analyst, "bob");
        assert!(matches!(again, Err(PkiError::Exists { .. })), "{again:?}");
        let reserved = issue(&out, &ca_dir, Role::Agent, "ca");
        assert!(matches!(reserved, Err(PkiError::ReservedName { .. })));
        let missing = issue(&out, &tmp.path().join("nowhere"), Role::Agent, "x");
        assert!(
            matches!(&missing, Err(PkiError::Io { path, .. }) if path.ends_with(CA_CERT_FILE)),
            "{missing:?}"
        );
        Ok(())
    }

    #[test]
    fn issue_refuses_a_ca_key_that_does_not_match() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        init(&a, &[], &[], &[], false)?;
        init(&b, &[], &[], &[], false)?;
        fs::copy(b.join(CA_KEY_FILE), a.join(CA_KEY_FILE))?;
        let err = issue(&tmp.path().join("out"), &a, Role::Agent, "x");
        assert!(matches!(err, Err(PkiError::BadCa { .. })), "{err:?}");

        // A leaf is not a CA, even with its own key.
        fs::copy(b.join(SERVER_CERT_FILE), a.join(CA_CERT_FILE))?;
        fs::copy(b.join(SERVER_KEY_FILE), a.join(CA_KEY_FILE))?;
        let err = issue(&tmp.path().join("out"), &a, Role::Agent, "x");
        assert!(
            matches!(&err, Err(PkiError::BadCa { reason, .. }) if reason.contains("not a CA")),
            "{err:?}"
        );
        Ok(())
    }

    fn crl_serials(path: &Path) -> Result<(Vec<String>, u64), Box<dyn Error>> {
        let der = CertificateRevocationListDer::from_pem_file(path)?;
        let (_, crl) = x509_parser::parse_x509_crl(&der)?;
        let serials = crl
            .iter_revoked_certificates()
            .map(|r| format_serial(r.raw_serial()))
            .collect();
        let number = u64::try_from(crl.crl_number().ok_or("no CRL number")?)?;
        Ok((serials, number))
    }

    #[test]
    fn revoke_writes_an_accumulating_crl() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let summary = init(dir, &names(&["a1", "a2", "a3"]), &[], &[], false)?;
        let serial = |i: usize| summary.files.get(i).map(|f| f.serial.clone());
        let crl_path = dir.join("crl.pem");

        let first = revoke(dir, &[dir.join("a1.pem")], &crl_path)?;
        assert_eq!(first.added, [serial(2).ok_or("no a1")?]);
        let (serials, number1) = crl_serials(&crl_path)?;
        assert_eq!(serials, first.revoked);
        assert_eq!(number1, first.crl_number);

        let second = revoke(dir, &[dir.join("a2.pem"), dir.join("a1.pem")], &crl_path)?;
        assert_eq!(second.added, [serial(3).ok_or("no a2")?]);
        let (serials, number2) = crl_serials(&crl_path)?;
        assert_eq!(serials, [serial(2).ok_or("a1")?, serial(3).ok_or("a2")?]);
        assert!(number2 > number1);

        let ca_der = der(&dir.join(CA_CERT_FILE))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)?;
        let crl_der = CertificateRevocationListDer::from_pem_file(&crl_path)?;
        let (_, crl) = x509_parser::parse_x509_crl(&crl_der)?;
        crl.verify_signature(ca.public_key())?;
        Ok(())
    }

    #[test]
    fn init_writes_an_empty_crl_that_revoke_extends() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        let summary = init(dir, &names(&["a1"]), &[], &[], false)?;
        let crl_path = dir.join(CRL_FILE);
        assert_eq!(summary.crl.crl, crl_path);
        let (serials, number) = crl_serials(&crl_path)?;
        assert!(serials.is_empty(), "{serials:?}");
        assert_eq!(number, summary.crl.crl_number);
        // The collector's --crl loader takes it as it is.
        assert_eq!(crate::auth::load_crls(&crl_path)?.len(), 1);

        let revoked = revoke(dir, &[dir.join("a1.pem")], &crl_path)?;
        assert_eq!(revoked.revoked.len(), 1);
        assert!(revoked.crl_number > number);

        // A second init stops at the CRL too; a forced one replaces it with
        // an empty CRL of the new CA instead of failing on the old one.
        let again = init(dir, &[], &[], &[], false);
        assert!(matches!(again, Err(PkiError::Exists { .. })), "{again:?}");
        let forced = init(dir, &names(&["a1"]), &[], &[], true)?;
        let (serials, _) = crl_serials(&crl_path)?;
        assert!(serials.is_empty(), "{serials:?}");
        assert_eq!(forced.crl.revoked.len(), 0);
        Ok(())
    }

    #[test]
    fn the_exists_error_names_the_flag() {
        let err = PkiError::Exists {
            path: PathBuf::from("pki/ca.key"),
        };
        assert!(err.to_string().contains("--force"), "{err}");
    }

    #[test]
    fn revoke_refuses_foreign_certificates_and_crls() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        init(&a, &names(&["x"]), &[], &[], false)?;
        init(&b, &names(&["y"]), &[], &[], false)?;
        let crl_before = fs::read(a.join(CRL_FILE))?;
        let err = revoke(&a, &[b.join("y.pem")], &a.join(CRL_FILE));
        assert!(
            matches!(&err, Err(PkiError::BadCert { path, .. }) if path.ends_with("y.pem")),
            "{err:?}"
        );
        // A refused revoke leaves the CRL init wrote as it was.
        assert_eq!(fs::read(a.join(CRL_FILE))?, crl_before);

        revoke(&b, &[b.join("y.pem")], &b.join("crl.pem"))?;
        let err = revoke(&a, &[a.join("x.pem")], &b.join("crl.pem"));
        assert!(matches!(err, Err(PkiError::BadCrl { .. })), "{err:?}");
        Ok(())
    }
}
