//! Certificates the PKI does not issue: an agent certificate from the
//! test PKI's CA with chosen dates or key usages (expired, not yet valid,
//! without clientAuth), made the way `pki issue` makes one.

use std::path::Path;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use time::OffsetDateTime;

use crate::TestResult;

/// Issues an agent certificate for `ircap://agent/<name>` (EKU clientAuth,
/// ECDSA P-256, the profile `pki init` uses) from the CA in `pki_dir`,
/// valid from `not_before` to `not_after`, as `<out>/<name>.pem` and
/// `<out>/<name>.key`. Loads the CA the way `pki issue` does.
pub fn issue_agent_cert(
    pki_dir: &Path,
    out: &Path,
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> TestResult {
    issue_agent_cert_with(
        pki_dir,
        out,
        name,
        (not_before, not_after),
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// [`issue_agent_cert`] with the given extended key usages (none: no
/// extension at all).
pub fn issue_agent_cert_with(
    pki_dir: &Path,
    out: &Path,
    name: &str,
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
    ekus: Vec<ExtendedKeyUsagePurpose>,
) -> TestResult {
    let ca_pem = std::fs::read_to_string(pki_dir.join("ca.pem"))?;
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki_dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        format!("ircap://agent/{name}").as_str().try_into()?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = ekus;
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.signed_by(&key, &issuer)?;
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("{name}.pem")), cert.pem())?;
    std::fs::write(out.join(format!("{name}.key")), key.serialize_pem())?;
    Ok(())
}
