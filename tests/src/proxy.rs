//! A TCP forwarder on loopback for the tests: it counts the bytes each way
//! and, for plain HTTP/1.1 (a collector talking to SeaweedFS), the request
//! lines the client sent; its upstream can be switched, as a load balancer
//! moves new connections to another collector replica.
//!
//! Requests are found by following the client's HTTP/1.1 framing
//! (request line and headers, then a body by `Content-Length` or chunked),
//! so every request is counted, also one that follows a body directly,
//! and nothing inside a body is taken for one.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the forwarder saw.
#[derive(Default)]
struct Seen {
    up: AtomicU64,
    down: AtomicU64,
    requests: Mutex<Vec<String>>,
}

/// A running forwarder; its threads end with the process.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    upstream: Arc<Mutex<SocketAddr>>,
    seen: Arc<Seen>,
}

/// Longest request head kept (SigV4 query strings and headers are long).
const MAX_HEAD: usize = 64 << 10;

/// Where the client's side of one connection stands.
#[derive(Debug)]
enum Framing {
    /// In a request's line and headers, kept until the blank line.
    Head(Vec<u8>),
    /// In a body of known length: bytes left.
    Body(u64),
    /// In a chunked body: a chunk's size line so far.
    ChunkSize(Vec<u8>),
    /// In a chunk's data (and its closing CRLF): bytes left.
    ChunkData(u64),
    /// After the last chunk: the trailer so far, until a blank line.
    Trailer(Vec<u8>),
    /// Not HTTP/1.1 as expected: nothing more is counted.
    Lost,
}

/// Finds the requests in the client's bytes of one connection by
/// following HTTP/1.1 framing (request line, headers, a body by
/// `Content-Length` or chunked), so a request that follows a body is
/// found wherever it starts, and nothing in a body is taken for one.
struct RequestFramer {
    state: Framing,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The request line and how its body is framed, from a complete head.
fn parse_head(head: &[u8]) -> Option<(String, Framing)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let line = lines.next()?.strip_suffix(" HTTP/1.1")?.to_owned();
    if !METHODS.iter().any(|m| line.starts_with(m)) {
        return None;
    }
    let mut framing = Framing::Head(Vec::new());
    for header in lines {
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            let n: u64 = value.parse().ok()?;
            if n > 0 {
                framing = Framing::Body(n);
            }
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            framing = Framing::ChunkSize(Vec::new());
        }
    }
    Some((line, framing))
}

/// Completes the line begun in `buf` from `rest`: the line without its
/// `\n` (`rest` then starts after it), or, when `rest` holds no `\n`,
/// everything so far as `Err` (`rest` is then used up).
fn take_line(mut buf: Vec<u8>, rest: &mut &[u8]) -> Result<Vec<u8>, Vec<u8>> {
    match rest.iter().position(|&b| b == b'\n') {
        None => {
            buf.extend_from_slice(rest);
            *rest = &[];
            Err(buf)
        }
        Some(nl) => {
            buf.extend_from_slice(&rest[..nl]);
            *rest = &rest[nl + 1..];
            Ok(buf)
        }
    }
}

const METHODS: [&str; 5] = ["GET ", "PUT ", "POST ", "HEAD ", "DELETE "];

impl RequestFramer {
    fn new() -> Self {
        Self {
            state: Framing::Head(Vec::new()),
        }
    }

    /// Takes the next bytes; pushes each request line (`METHOD TARGET`)
    /// whose head is complete.
    fn feed(&mut self, mut rest: &[u8], out: &mut Vec<String>) {
        while !rest.is_empty() {
            let state = std::mem::replace(&mut self.state, Framing::Lost);
            self.state = match state {
                Framing::Lost => return,
                Framing::Body(left) | Framing::ChunkData(left) if left > rest.len() as u64 => {
                    let left = left - rest.len() as u64;
                    rest = &[];
                    match state {
                        Framing::Body(_) => Framing::Body(left),
                        _ => Framing::ChunkData(left),
                    }
                }
                Framing::Body(left) => {
                    rest = &rest[usize::try_from(left).unwrap()..];
                    Framing::Head(Vec::new())
                }
                Framing::ChunkData(left) => {
                    rest = &rest[usize::try_from(left).unwrap()..];
                    Framing::ChunkSize(Vec::new())
                }
                Framing::Head(buf) | Framing::ChunkSize(buf) | Framing::Trailer(buf)
                    if buf.len() > MAX_HEAD =>
                {
                    Framing::Lost
                }
                Framing::Head(mut buf) => {
                    let from = buf.len().saturating_sub(3);
                    let taken = rest.len();
                    buf.extend_from_slice(rest);
                    match find(&buf[from..], b"\r\n\r\n") {
                        None => {
                            rest = &[];
                            Framing::Head(buf)
                        }
                        Some(at) => {
                            let end = from + at + 4;
                            rest = &rest[taken - (buf.len() - end)..];
                            match parse_head(&buf[..end]) {
                                Some((line, framing)) => {
                                    out.push(line);
                                    framing
                                }
                                None => Framing::Lost,
                            }
                        }
                    }
                }
                Framing::ChunkSize(buf) => match take_line(buf, &mut rest) {
                    Err(partial) => Framing::ChunkSize(partial),
                    Ok(line) => {
                        let text = String::from_utf8_lossy(&line);
                        let size = text.trim_end_matches('\r').split(';').next().unwrap_or("");
                        match u64::from_str_radix(size.trim(), 16) {
                            Ok(0) => Framing::Trailer(Vec::new()),
                            // The data, then its CRLF.
                            Ok(n) => Framing::ChunkData(n + 2),
                            Err(_) => Framing::Lost,
                        }
                    }
                },
                Framing::Trailer(buf) => match take_line(buf, &mut rest) {
                    Err(partial) => Framing::Trailer(partial),
                    // A blank line ends the trailer, and the request.
                    Ok(line) if line == b"\r" || line.is_empty() => Framing::Head(Vec::new()),
                    Ok(_) => Framing::Trailer(Vec::new()),
                },
            };
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64, scan: Option<&Seen>) {
    let mut buf = vec![0u8; 256 << 10];
    let mut scanner = RequestFramer::new();
    let mut found = Vec::new();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        count.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(seen) = scan {
            scanner.feed(&buf[..n], &mut found);
            if !found.is_empty() {
                seen.requests.lock().unwrap().append(&mut found);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl Proxy {
    /// Forwards 127.0.0.1:PORT (a free port) to `upstream`.
    #[must_use]
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = Arc::new(Mutex::new(upstream));
        let seen = Arc::new(Seen::default());
        let (up, s) = (Arc::clone(&upstream), Arc::clone(&seen));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let target = *up.lock().unwrap();
                let Ok(server) = TcpStream::connect(target) else {
                    continue; // the client sees the connection close
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (sa, sb) = (Arc::clone(&s), Arc::clone(&s));
                std::thread::spawn(move || pump(client, server, &sa.up, Some(&sa)));
                std::thread::spawn(move || pump(s2, c2, &sb.down, None));
            }
        });
        Self {
            addr,
            upstream,
            seen,
        }
    }

    /// Sends new connections to `upstream` (open ones stay where they are).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap() = upstream;
    }

    /// Bytes from clients to the upstream so far.
    #[must_use]
    pub fn bytes_up(&self) -> u64 {
        self.seen.up.load(Ordering::Relaxed)
    }

    /// Bytes from the upstream to clients so far.
    #[must_use]
    pub fn bytes_down(&self) -> u64 {
        self.seen.down.load(Ordering::Relaxed)
    }

    /// HTTP request lines (`METHOD TARGET`) sent so far.
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        self.seen.requests.lock().unwrap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_found_across_reads_after_bodies_and_not_in_them() {
        let stream: &[u8] = b"PUT /b/k?x-id=PutObject HTTP/1.1\r\nHost: x\r\nContent-Length: 24\r\n\r\nxx\r\nGET /nope HTTP/1.1\r\nGET /b/k2 HTTP/1.1\r\nHost: x\r\n\r\nPOST /b/k3 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nGET /\r\n0\r\nT: 1\r\n\r\nDELETE /b/k4 HTTP/1.1\r\n\r\n";
        for cut in 0..stream.len() {
            let mut s = RequestFramer::new();
            let mut out = Vec::new();
            s.feed(&stream[..cut], &mut out);
            s.feed(&stream[cut..], &mut out);
            assert_eq!(
                out,
                vec![
                    "PUT /b/k?x-id=PutObject",
                    "GET /b/k2",
                    "POST /b/k3",
                    "DELETE /b/k4"
                ],
                "cut {cut}"
            );
        }
    }
}
