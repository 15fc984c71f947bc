//! The client side of the collector's mutual TLS, shared by the agent's
//! upload and the analyst commands so that both connect the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the collector is and which certificate to present.
#[derive(Debug, Clone)]
pub struct MtlsSettings {
    /// `https://host:port`.
    pub url: String,
    /// CA certificate the collector's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate (agent or analyst).
    pub cert: PathBuf,
    /// Client private key.
    pub key: PathBuf,
}

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A PEM file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The URL is not usable.
    #[error("collector URL {url:?}: {message}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The TLS settings were refused (the message names why).
    #[error("TLS settings refused: {0}")]
    Tls(String),
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Refuses any collector URL that is not `https://HOST[:PORT]`: tonic would
/// otherwise talk plain HTTP/2 to an `http://` URL, silently without TLS.
///
/// # Errors
/// [`ClientError::Url`] naming the URL.
pub fn check_https(url: &str) -> Result<(), ClientError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ClientError::Url {
            url: url.to_owned(),
            message: "only https:// collector URLs are accepted (mutual TLS is required)".into(),
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(ClientError::Url {
            url: url.to_owned(),
            message: "expected https://HOST:PORT".into(),
        });
    }
    Ok(())
}

/// Reads the three PEM files and builds the TLS client configuration from
/// them, as a connection would, without connecting: a missing or empty
/// file, or a key that does not belong to the certificate, is named here,
/// before anything is sent.
///
/// # Errors
/// [`ClientError`] naming the file or the mismatch.
pub fn check_files(s: &MtlsSettings) -> Result<(), ClientError> {
    client_config(s).map(drop)
}

/// The rustls client configuration the three PEM files make.
fn client_config(s: &MtlsSettings) -> Result<rustls::ClientConfig, ClientError> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    check_https(&s.url)?;
    let bad = |what: &str, path: &Path, why: String| {
        ClientError::Tls(format!("{what} {}: {why}", path.display()))
    };
    let ca = read(&s.ca, "CA certificate")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        let c = c.map_err(|e| bad("--ca", &s.ca, e.to_string()))?;
        roots
            .add(c)
            .map_err(|e| bad("--ca", &s.ca, e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("--ca", &s.ca, "no PEM certificate in it".into()));
    }
    let cert = read(&s.cert, "certificate")?;
    let chain = CertificateDer::pem_slice_iter(&cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("--cert", &s.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("--cert", &s.cert, "no PEM certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&s.key, "key")?)
        .map_err(|e| bad("--key", &s.key, format!("no usable PEM private key ({e})")))?;
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| ClientError::Tls(crate::explain::error(&e, &s.url)))
}

/// How long [`diagnose`] waits to connect and to finish the handshake.
const PROBE_STEP: Duration = Duration::from_secs(5);

/// How long [`diagnose`] waits for the collector's verdict after the
/// handshake: a refusal comes at once, so silence this long means the
/// certificate was accepted (it runs on every unexplained failure, so it
/// is kept short).
const PROBE_VERDICT: Duration = Duration::from_secs(2);

/// Finds out why connections to the collector fail when the call's own
/// error does not say (with TLS 1.3 the collector's verdict on the client
/// certificate comes after the handshake, and a client that is already
/// writing often sees only a broken pipe): one TCP connection, one TLS
/// handshake with the same files, then one read that receives the
/// collector's alert if it refused the certificate. Nothing is sent
/// beyond the handshake. `None` when the probe found nothing wrong.
pub async fn diagnose(s: &MtlsSettings) -> Option<crate::explain::Explained> {
    let explained = |e: &(dyn std::error::Error + 'static)| crate::explain::explained(e, &s.url);
    use tokio::io::AsyncReadExt as _;

    let mut config = match client_config(s) {
        Ok(c) => c,
        Err(e) => {
            return Some(crate::explain::Explained {
                message: e.to_string(),
                certificate_refused: matches!(e, ClientError::Tls(_)),
            });
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let authority = crate::explain::authority(&s.url);
    let host = authority
        .rsplit_once(':')
        .map_or(authority.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = rustls::pki_types::ServerName::try_from(host).ok()?;
    let tcp =
        match tokio::time::timeout(PROBE_STEP, tokio::net::TcpStream::connect(&authority)).await {
            Err(_) => return explained(&TimedOut),
            Ok(Err(e)) => return explained(&e),
            Ok(Ok(t)) => t,
        };
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let mut tls = match tokio::time::timeout(PROBE_STEP, connector.connect(name, tcp)).await {
        Err(_) => return explained(&TimedOut),
        Ok(Err(e)) => return explained(&e),
        Ok(Ok(t)) => t,
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(PROBE_VERDICT, tls.read(&mut byte)).await {
        Ok(Err(e)) => explained(&e),
        _ => None,
    }
}

/// A step of [`diagnose`] that got no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out")]
struct TimedOut;

/// A lazily connected mutual-TLS channel (it reconnects on use), with
/// keepalives so a dead peer is noticed.
///
/// # Errors
/// [`ClientError`] when a PEM file cannot be read or the URL is not an
/// `https://` URL.
pub fn mtls_channel(s: &MtlsSettings) -> Result<Channel, ClientError> {
    check_files(s)?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&s.ca, "CA certificate")?))
        .identity(Identity::from_pem(
            read(&s.cert, "certificate")?,
            read(&s.key, "key")?,
        ));
    let endpoint = Endpoint::from_shared(s.url.clone())
        .map_err(|e| ClientError::Url {
            url: s.url.clone(),
            message: e.to_string(),
        })?
        .tls_config(tls)
        .map_err(|e| ClientError::Tls(crate::explain::error(&e, &s.url)))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::check_https;

    #[test]
    fn only_https_urls() {
        assert!(check_https("https://collector.internal:7443").is_ok());
        for bad in [
            "http://127.0.0.1:7443",
            "HTTP://x:1",
            "collector:7443",
            "https://",
            "grpc://x:1",
            "",
        ] {
            let err = check_https(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
