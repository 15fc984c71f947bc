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

/// A lazily connected mutual-TLS channel (it reconnects on use), with
/// keepalives so a dead peer is noticed.
///
/// # Errors
/// [`ClientError`] when a PEM file cannot be read or the URL is not an
/// `https://` URL.
pub fn mtls_channel(s: &MtlsSettings) -> Result<Channel, ClientError> {
    check_https(&s.url)?;
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
