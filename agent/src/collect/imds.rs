//! EC2 identity through IMDSv2, with a short timeout and never fatal.
//!
//! Plain HTTP/1.1 over a TCP socket: the metadata service speaks nothing
//! else, and a full HTTP client would double the agent's size.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Serialize;

/// Connect and read timeout for each request.
const TIMEOUT: Duration = Duration::from_millis(400);

/// What the instance metadata service said about this instance.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Ec2Identity {
    /// `available`, or why not (`unavailable: ...`, `disabled`).
    pub status: String,
    /// Instance id.
    pub instance_id: Option<String>,
    /// Account id.
    pub account_id: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// AMI id.
    pub image_id: Option<String>,
    /// Instance type.
    pub instance_type: Option<String>,
    /// Private IP.
    pub private_ip: Option<String>,
}

impl Ec2Identity {
    /// The record for a capture that did not ask.
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            status: "disabled".into(),
            ..Self::default()
        }
    }
}

/// Asks the metadata service at `endpoint` (host:port) for the instance
/// identity document.
#[must_use]
pub fn query(endpoint: &str) -> Ec2Identity {
    match query_inner(endpoint) {
        Ok(doc) => {
            let field = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            Ec2Identity {
                status: "available".into(),
                instance_id: field("instanceId"),
                account_id: field("accountId"),
                region: field("region"),
                availability_zone: field("availabilityZone"),
                image_id: field("imageId"),
                instance_type: field("instanceType"),
                private_ip: field("privateIp"),
            }
        }
        Err(why) => Ec2Identity {
            status: format!("unavailable: {why}"),
            ..Ec2Identity::default()
        },
    }
}

fn query_inner(endpoint: &str) -> Result<serde_json::Value, String> {
    let addr: SocketAddr = endpoint
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let token = request(
        addr,
        "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 60\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )?;
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("bad token".into());
    }
    let doc = request(
        addr,
        &format!(
            "GET /latest/dynamic/instance-identity/document HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token: {token}\r\nConnection: close\r\n\r\n"
        ),
    )?;
    serde_json::from_str(&doc).map_err(|e| format!("bad identity document: {e}"))
}

/// Sends one request and returns the body of a 200 answer.
fn request(addr: SocketAddr, req: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed answer")?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("answered {status:?}"));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A real HTTP peer on loopback playing the metadata service.
    #[test]
    fn reads_identity_from_a_local_imds() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for (i, conn) in listener.incoming().take(2).enumerate() {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 2048];
                let n = conn.read(&mut buf).unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if i == 0 {
                    assert!(req.starts_with("PUT /latest/api/token"));
                    "tok-123".to_string()
                } else {
                    assert!(req.contains("X-aws-ec2-metadata-token: tok-123"));
                    r#"{"instanceId":"i-0abc","accountId":"123456789012","region":"eu-west-1","imageId":"ami-1"}"#.to_string()
                };
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
        });
        let id = query(&addr.to_string());
        server.join().unwrap();
        assert_eq!(id.status, "available");
        assert_eq!(id.instance_id.as_deref(), Some("i-0abc"));
        assert_eq!(id.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn unreachable_is_recorded_not_fatal() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let id = query(&addr.to_string());
        assert!(id.status.starts_with("unavailable"), "{}", id.status);
        assert!(id.instance_id.is_none());
    }
}
