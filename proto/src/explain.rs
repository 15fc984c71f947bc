//! One line that says why a call to the collector failed: what was
//! refused, by whom, and what to check.
//!
//! tonic reports every connection failure as `Unknown: transport error` or
//! `Unavailable: tcp connect error`; the cause (a TLS alert from the
//! collector, a certificate the client refused, a name that does not
//! resolve) is buried in the error's source chain. This walks that chain
//! and names the cause in the operator's terms.

use std::error::Error as StdError;

use rustls::CertificateError;

/// What the client made of the collector's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerCert {
    UnknownIssuer,
    NotValidForName,
    Expired,
    Revoked,
    Other(String),
}

/// What went wrong, as found in an error's source chain.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cause {
    /// The collector sent this TLS alert (it refused our certificate); the
    /// alert's name as rustls spells it (`CertificateExpired`, ...).
    Alert(String),
    /// We refused the collector's certificate.
    ServerCertificate(ServerCert),
    /// Our key does not belong to our certificate.
    KeyMismatch,
    /// The host name did not resolve.
    Dns,
    /// Nothing listens there.
    Refused,
    /// No answer in time.
    TimedOut,
    /// The collector closed the connection right after the handshake
    /// (with TLS 1.3 that is how a refused client certificate often
    /// looks to the client: the alert is lost behind a broken pipe).
    Closed,
}

fn server_cert(c: &CertificateError) -> ServerCert {
    match c {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            ServerCert::UnknownIssuer
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            ServerCert::NotValidForName
        }
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => ServerCert::Expired,
        CertificateError::Revoked => ServerCert::Revoked,
        other => ServerCert::Other(other.to_string()),
    }
}

fn from_rustls(e: &rustls::Error) -> Option<Cause> {
    match e {
        rustls::Error::AlertReceived(a) => Some(Cause::Alert(format!("{a:?}"))),
        rustls::Error::InvalidCertificate(c) => Some(Cause::ServerCertificate(server_cert(c))),
        rustls::Error::InconsistentKeys(_) => Some(Cause::KeyMismatch),
        _ => None,
    }
}

/// The same causes from an error's text: tonic's TLS connector keeps only
/// the text of the rustls error it saw.
fn from_text(text: &str) -> Option<Cause> {
    if let Some((_, alert)) = text.split_once("received fatal alert: ") {
        let name: String = alert
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        return Some(Cause::Alert(name));
    }
    if let Some((_, why)) = text.split_once("invalid peer certificate: ") {
        let kind = if why.starts_with("UnknownIssuer") || why.starts_with("BadSignature") {
            ServerCert::UnknownIssuer
        } else if why.contains("not valid for name") || why.starts_with("NotValidForName") {
            ServerCert::NotValidForName
        } else if why.contains("expired") || why.contains("not valid yet") {
            ServerCert::Expired
        } else if why.starts_with("Revoked") || why.contains("revoked") {
            ServerCert::Revoked
        } else {
            ServerCert::Other(why.to_owned())
        };
        return Some(Cause::ServerCertificate(kind));
    }
    if text.contains("private key") && text.contains("does not match") {
        return Some(Cause::KeyMismatch);
    }
    if text.starts_with("dns error") || text.contains("failed to lookup address") {
        return Some(Cause::Dns);
    }
    if text.contains("timed out") {
        return Some(Cause::TimedOut);
    }
    None
}

fn cause_of(err: &(dyn StdError + 'static)) -> Option<Cause> {
    if let Some(e) = err.downcast_ref::<rustls::Error>() {
        return from_rustls(e);
    }
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if let Some(inner) = io.get_ref()
            && let Some(e) = inner.downcast_ref::<rustls::Error>()
        {
            return from_rustls(e);
        }
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => return Some(Cause::Refused),
            std::io::ErrorKind::TimedOut => return Some(Cause::TimedOut),
            std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::UnexpectedEof => {
                return from_text(&io.to_string()).or(Some(Cause::Closed));
            }
            _ => {}
        }
    }
    from_text(&err.to_string())
}

/// The first recognised cause in `err`'s chain, and the chain as text.
fn walk(err: &(dyn StdError + 'static)) -> (Option<Cause>, String) {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = None;
    let mut next: Option<&(dyn StdError + 'static)> = Some(err);
    let mut depth = 0;
    while let Some(e) = next {
        if cause.is_none() {
            cause = cause_of(e);
        }
        let text = e.to_string();
        if parts.last().is_none_or(|p| !p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
        depth += 1;
        if depth > 16 {
            break;
        }
    }
    (cause, parts.join(": "))
}

/// `host:port` of an `https://` URL, for messages (443 when absent).
#[must_use]
pub fn authority(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap_or(url);
    let host_port = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let has_port = host_port
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && !host_port.ends_with(']');
    if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:443")
    }
}

fn host_of(url: &str) -> String {
    let a = authority(url);
    a.rsplit_once(':').map_or(a.clone(), |(h, _)| h.to_owned())
}

fn sentence(cause: &Cause, url: &str) -> String {
    let (at, collector) = if url.is_empty() {
        ("the collector".to_owned(), "the collector".to_owned())
    } else {
        let a = authority(url);
        (a.clone(), format!("the collector at {a}"))
    };
    match cause {
        Cause::Alert(a) => match a.as_str() {
            "CertificateExpired" => format!(
                "{collector} refused this client's certificate as expired or not yet valid: check its dates (openssl x509 -noout -dates -in CERT) and issue a new one with `ircap-collector pki issue`"
            ),
            "CertificateRevoked" => format!(
                "{collector} refused this client's certificate as revoked (it is on the collector's CRL): issue a new one with `ircap-collector pki issue`"
            ),
            "UnknownCA" | "DecryptError" | "BadCertificate" => format!(
                "{collector} refused this client's certificate: it is not signed by the CA the collector trusts; use a certificate issued by that collector's `ircap-collector pki`"
            ),
            "UnsupportedCertificate" => format!(
                "{collector} refused this client's certificate: it is not for TLS client authentication (extended key usage clientAuth is required)"
            ),
            "CertificateRequired" => format!(
                "{collector} requires a client certificate and none was sent: pass --cert and --key"
            ),
            other => format!(
                "{collector} refused the TLS handshake (alert {other}): check that --cert and --key were issued by that collector's CA and are current"
            ),
        },
        Cause::ServerCertificate(c) => match c {
            ServerCert::UnknownIssuer => format!(
                "the certificate presented by {at} is not signed by the CA in --ca: pass the collector's CA certificate (pki/ca.pem on the collector), or check that {at} is the collector"
            ),
            ServerCert::NotValidForName => format!(
                "the certificate presented by {at} is not issued for the name {}: connect with a name in its certificate (openssl x509 -noout -ext subjectAltName -in server.pem)",
                host_of(url)
            ),
            ServerCert::Expired => format!(
                "the certificate presented by {at} is expired or not yet valid: the collector's server certificate must be renewed, or check this host's clock"
            ),
            ServerCert::Revoked => format!("the certificate presented by {at} is revoked"),
            ServerCert::Other(why) => {
                format!("the certificate presented by {at} was refused: {why}")
            }
        },
        Cause::Closed => format!(
            "{collector} closed the connection right after the TLS handshake: it probably refused this client's certificate (another CA, expired, revoked, or not a clientAuth certificate); check --cert and --key against the collector's CA and CRL"
        ),
        Cause::KeyMismatch => {
            "the private key (--key) does not belong to the certificate (--cert): pass the key that was issued with it".to_owned()
        }
        Cause::Dns => format!(
            "cannot resolve the collector's host name {}: check the URL, DNS, or /etc/hosts",
            if url.is_empty() { "(unknown)".to_owned() } else { host_of(url) }
        ),
        Cause::Refused => format!(
            "nothing accepts connections at {at} (connection refused): is the collector running, and is that its --listen address?"
        ),
        Cause::TimedOut => format!(
            "no answer from {at} in time: check the address, a firewall or security group, and that the collector is running"
        ),
    }
}

/// Why a call to the collector at `url` failed, in one line (`url` may be
/// empty where the caller does not know it).
#[must_use]
pub fn status(status: &tonic::Status, url: &str) -> String {
    let chain = std::error::Error::source(status).map(walk);
    match chain {
        Some((Some(cause), _)) => sentence(&cause, url),
        Some((None, text))
            if status.message().is_empty() || status.message() == "transport error" =>
        {
            if url.is_empty() {
                format!("cannot reach the collector: {text}")
            } else {
                format!("cannot reach the collector at {}: {text}", authority(url))
            }
        }
        _ => format!(
            "the collector answered {:?}: {}",
            status.code(),
            status.message()
        ),
    }
}

/// Whether `status` failed because a certificate or key was refused by
/// either side: retrying cannot help.
#[must_use]
pub fn is_certificate_refusal(status: &tonic::Status) -> bool {
    std::error::Error::source(status)
        .map(walk)
        .is_some_and(|(cause, _)| {
            matches!(
                cause,
                Some(Cause::Alert(_) | Cause::ServerCertificate(_) | Cause::KeyMismatch)
            )
        })
}

/// Whether `status` is a failure to reach the collector whose cause the
/// error itself does not name (see [`crate::client::diagnose`]).
#[must_use]
pub fn is_unexplained(status: &tonic::Status) -> bool {
    std::error::Error::source(status)
        .map(walk)
        .is_some_and(|(cause, _)| matches!(cause, None | Some(Cause::Closed)))
}

/// A recognised cause, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    /// One line: what was refused, by whom, what to check.
    pub message: String,
    /// A certificate or key was refused (by either side): trying again
    /// cannot help.
    pub certificate_refused: bool,
}

/// The explanation of `err` when its cause is recognised (and is more
/// than a bare closed connection).
#[must_use]
pub fn explained(err: &(dyn StdError + 'static), url: &str) -> Option<Explained> {
    match walk(err) {
        (Some(Cause::Closed) | None, _) => None,
        (Some(cause), _) => Some(Explained {
            message: sentence(&cause, url),
            certificate_refused: matches!(
                cause,
                Cause::Alert(_) | Cause::ServerCertificate(_) | Cause::KeyMismatch
            ),
        }),
    }
}

/// Why setting up a connection to `url` failed (e.g. the key and the
/// certificate do not match), in one line.
#[must_use]
pub fn error(err: &(dyn StdError + 'static), url: &str) -> String {
    match walk(err) {
        (Some(cause), _) => sentence(&cause, url),
        (None, text) => text,
    }
}

#[cfg(test)]
mod tests {
    use super::authority;

    #[test]
    fn authorities() {
        assert_eq!(authority("https://c.internal:7443"), "c.internal:7443");
        assert_eq!(authority("https://c.internal"), "c.internal:443");
        assert_eq!(authority("https://c.internal/x"), "c.internal:443");
        assert_eq!(authority("https://[::1]:9"), "[::1]:9");
        assert_eq!(authority("https://[::1]"), "[::1]:443");
    }
}
