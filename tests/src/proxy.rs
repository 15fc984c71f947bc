//! A TCP forwarder on loopback for the tests: it counts the bytes each way
//! and, for plain HTTP/1.1 (a collector talking to SeaweedFS), the request
//! lines the client sent; its upstream can be switched, as a load balancer
//! moves new connections to another collector replica.
//!
//! Request lines are found by scanning the client's bytes for a line that
//! starts with an HTTP method and ends in ` HTTP/1.1`, at the start of a
//! connection or after a line feed; in incompressible test data such a
//! line by chance is vanishingly unlikely.

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

/// Longest request line kept (SigV4 query strings are long).
const MAX_LINE: usize = 16 << 10;
const METHODS: [&[u8]; 5] = [b"GET ", b"PUT ", b"POST ", b"HEAD ", b"DELETE "];

/// Finds request lines in one direction of one connection.
struct LineScanner {
    line: Vec<u8>,
    /// Whether the bytes since the last line feed may still be a request
    /// line.
    candidate: bool,
}

impl LineScanner {
    fn new() -> Self {
        Self {
            line: Vec::new(),
            candidate: true,
        }
    }

    fn feed(&mut self, data: &[u8], out: &mut Vec<String>) {
        let mut rest = data;
        while !rest.is_empty() {
            let nl = rest.iter().position(|&b| b == b'\n');
            let (piece, next) = match nl {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if self.candidate {
                self.line.extend_from_slice(piece);
                let n = self.line.len().min(7);
                let prefix_ok = METHODS
                    .iter()
                    .any(|m| m.starts_with(&self.line[..n]) || self.line.starts_with(m));
                if !prefix_ok || self.line.len() > MAX_LINE {
                    self.candidate = false;
                    self.line.clear();
                }
            }
            match next {
                Some(after) => {
                    if self.candidate {
                        let text = String::from_utf8_lossy(&self.line);
                        if let Some(req) = text.trim_end_matches('\r').strip_suffix(" HTTP/1.1") {
                            out.push(req.to_owned());
                        }
                    }
                    self.line.clear();
                    self.candidate = true;
                    rest = after;
                }
                None => break,
            }
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, count: &AtomicU64, scan: Option<&Seen>) {
    let mut buf = vec![0u8; 256 << 10];
    let mut scanner = LineScanner::new();
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
    fn request_lines_are_found_across_reads_and_not_in_bodies() {
        let stream = b"PUT /b/k?x-id=PutObject HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nxxGET /nope\nGET /b/k2 HTTP/1.1\r\n\r\n";
        for cut in 0..stream.len() {
            let mut s = LineScanner::new();
            let mut out = Vec::new();
            s.feed(&stream[..cut], &mut out);
            s.feed(&stream[cut..], &mut out);
            assert_eq!(
                out,
                vec!["PUT /b/k?x-id=PutObject", "GET /b/k2"],
                "cut {cut}"
            );
        }
    }
}
