//! The `connections` artifact: every TCP, UDP, raw and unix socket in every
//! network namespace on the host.
//!
//! Namespaces are found through `/proc/*/ns/net`; each one's socket tables
//! are read through `/proc/<member pid>/net/*`, which the kernel answers
//! for that process's namespace, so no `setns` is needed. Owners come from
//! the single `/proc/*/fd` pass of the process scan.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Serialize;

use super::Context;
use super::fsread::{self, ReadError};
use super::processes::ns_inode;
use crate::artifact::JsonlWriter;
use crate::host_text::HostText;
use crate::sink::SinkError;

/// The inet tables and their protocol names.
const INET_TABLES: &[(&str, &str)] = &[
    ("tcp", "tcp"),
    ("tcp6", "tcp6"),
    ("udp", "udp"),
    ("udp6", "udp6"),
    ("raw", "raw"),
    ("raw6", "raw6"),
];

/// One socket.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ConnectionRecord {
    /// Network namespace inode.
    pub netns: u64,
    /// `tcp`, `tcp6`, `udp`, `udp6`, `raw`, `raw6` or `unix`.
    pub protocol: &'static str,
    /// Local address (inet).
    pub local_address: Option<String>,
    /// Local port (inet; protocol number for raw).
    pub local_port: Option<u16>,
    /// Remote address (inet).
    pub remote_address: Option<String>,
    /// Remote port (inet).
    pub remote_port: Option<u16>,
    /// Socket state (`LISTEN`, `ESTABLISHED`, `UNCONN`, `CONNECTED`, ...).
    pub state: String,
    /// Owner uid (inet).
    pub uid: Option<u32>,
    /// Owner user name.
    pub user: Option<String>,
    /// Socket inode.
    pub inode: u64,
    /// Send queue bytes.
    pub tx_queue: Option<u64>,
    /// Receive queue bytes.
    pub rx_queue: Option<u64>,
    /// Unix socket type (`stream`, `dgram`, `seqpacket`).
    pub socket_type: Option<&'static str>,
    /// Unix socket path (`@name` for abstract).
    pub path: Option<String>,
    /// Exact path bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    /// Processes holding the socket open.
    pub pids: Vec<i32>,
    /// Their names, in the same order.
    pub process_names: Vec<String>,
}

/// Network namespace inode -> member pids (ascending), from
/// `/proc/*/ns/net`.
#[must_use]
pub fn namespaces(proc_root: &Path, pids: &[i32]) -> BTreeMap<u64, Vec<i32>> {
    let mut out: BTreeMap<u64, Vec<i32>> = BTreeMap::new();
    for &pid in pids {
        let link = proc_root.join(pid.to_string()).join("ns/net");
        if let Some(inode) = fsread::read_link(&link).ok().and_then(|t| ns_inode(&t)) {
            out.entry(inode).or_default().push(pid);
        }
    }
    out
}

fn tcp_state(code: u8) -> &'static str {
    match code {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

fn datagram_state(code: u8) -> &'static str {
    match code {
        0x01 => "ESTABLISHED",
        0x07 => "UNCONN",
        _ => "UNKNOWN",
    }
}

/// Parses `0100007F:1F90` (IPv4) or the 32-hex-digit IPv6 form. The kernel
/// prints each 32-bit word in host byte order.
#[must_use]
pub fn parse_inet_address(field: &str) -> Option<(String, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        addr.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => Ipv4Addr::from(word(0)?).to_string(),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped()
                .map_or_else(|| v6.to_string(), |v4| format!("::ffff:{v4}"))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// Parses one `/proc/net/{tcp,udp,raw}{,6}` table.
#[must_use]
pub fn parse_inet_table(
    protocol: &'static str,
    text: &str,
    netns: u64,
) -> (Vec<ConnectionRecord>, Vec<String>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        let parsed = (|| {
            let (local_address, local_port) = parse_inet_address(f.get(1)?)?;
            let (remote_address, remote_port) = parse_inet_address(f.get(2)?)?;
            let st = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(ConnectionRecord {
                netns,
                protocol,
                local_address: Some(local_address),
                local_port: Some(local_port),
                remote_address: Some(remote_address),
                remote_port: Some(remote_port),
                state: if protocol.starts_with("tcp") {
                    tcp_state(st)
                } else {
                    datagram_state(st)
                }
                .to_owned(),
                uid: f.get(7)?.parse().ok(),
                inode: f.get(9)?.parse().ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok(),
                rx_queue: u64::from_str_radix(rx, 16).ok(),
                ..ConnectionRecord::default()
            })
        })();
        match parsed {
            Some(rec) => records.push(rec),
            None => errors.push(format!("{protocol}: unparsable line {line:?}")),
        }
    }
    (records, errors)
}

/// Parses `/proc/net/unix` (raw bytes: paths may be anything).
#[must_use]
pub fn parse_unix_table(raw: &[u8], netns: u64) -> (Vec<ConnectionRecord>, Vec<String>) {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for line in raw.split(|&b| b == b'\n').skip(1).filter(|l| !l.is_empty()) {
        let parsed = (|| {
            // Seven space-separated fields, then the optional path (which
            // may itself hold spaces).
            let mut rest = line;
            let mut fields = Vec::with_capacity(7);
            for _ in 0..7 {
                let start = rest.iter().position(|&b| b != b' ')?;
                rest = rest.get(start..)?;
                let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                fields.push(std::str::from_utf8(rest.get(..end)?).ok()?);
                rest = rest.get(end..)?;
            }
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let kind = u16::from_str_radix(fields.get(4)?, 16).ok()?;
            let st = u8::from_str_radix(fields.get(5)?, 16).ok()?;
            let path = rest.strip_prefix(b" ").unwrap_or(rest);
            let path = (!path.is_empty()).then(|| HostText::new(path));
            let listening = flags & 0x0001_0000 != 0;
            Some(ConnectionRecord {
                netns,
                protocol: "unix",
                state: match (listening, st) {
                    (true, _) => "LISTEN",
                    (_, 1) => "UNCONNECTED",
                    (_, 2) => "CONNECTING",
                    (_, 3) => "CONNECTED",
                    (_, 4) => "DISCONNECTING",
                    _ => "UNKNOWN",
                }
                .to_owned(),
                inode: fields.get(6)?.parse().ok()?,
                socket_type: Some(match kind {
                    1 => "stream",
                    2 => "dgram",
                    5 => "seqpacket",
                    _ => "other",
                }),
                path_b64: path.as_ref().and_then(|p| p.b64.clone()),
                path: path.map(|p| p.text),
                ..ConnectionRecord::default()
            })
        })();
        match parsed {
            Some(rec) => records.push(rec),
            None => errors.push(format!(
                "unix: unparsable line {:?}",
                String::from_utf8_lossy(line)
            )),
        }
    }
    (records, errors)
}

/// Socket tables of every namespace, read before anything else because
/// they change fastest.
#[derive(Default)]
pub struct SocketSnapshot {
    /// Sockets without owners yet.
    pub records: Vec<ConnectionRecord>,
    /// Tables that could not be read or parsed.
    pub errors: Vec<String>,
    /// Namespaces seen, with their member count.
    pub namespaces: BTreeMap<u64, usize>,
}

/// Reads every socket table of every namespace.
#[must_use]
pub fn snapshot(proc_root: &Path, pids: &[i32]) -> SocketSnapshot {
    let namespaces = namespaces(proc_root, pids);
    let mut records = Vec::new();
    let mut errors = Vec::new();
    for (&netns, members) in &namespaces {
        read_namespace(proc_root, netns, members, &mut records, &mut errors);
    }
    SocketSnapshot {
        records,
        errors,
        namespaces: namespaces.iter().map(|(k, v)| (*k, v.len())).collect(),
    }
}

/// Reads one namespace's tables through the first member still alive.
fn read_namespace(
    proc_root: &Path,
    netns: u64,
    members: &[i32],
    records: &mut Vec<ConnectionRecord>,
    errors: &mut Vec<String>,
) {
    for pid in members {
        let net = proc_root.join(pid.to_string()).join("net");
        let mut found = Vec::new();
        let mut table_errors = Vec::new();
        let mut gone = false;
        for (file, protocol) in INET_TABLES {
            match fsread::read_bounded(&net.join(file), 256 << 20) {
                Ok((raw, _)) => {
                    let (r, e) = parse_inet_table(protocol, &String::from_utf8_lossy(&raw), netns);
                    found.extend(r);
                    table_errors.extend(e);
                }
                Err(e) if e.is_gone() && *file == "tcp" => {
                    gone = true;
                    break;
                }
                // IPv6 or raw tables can be absent on a host: not fatal.
                Err(ReadError::Gone { .. }) => {}
                Err(e) => table_errors.push(e.to_string()),
            }
        }
        if gone {
            continue;
        }
        match fsread::read_bounded(&net.join("unix"), 256 << 20) {
            Ok((raw, _)) => {
                let (r, e) = parse_unix_table(&raw, netns);
                found.extend(r);
                table_errors.extend(e);
            }
            Err(e) => table_errors.push(e.to_string()),
        }
        records.extend(found);
        errors.extend(table_errors);
        return;
    }
    errors.push(format!(
        "network namespace {netns}: every member process exited before its sockets could be read"
    ));
}

/// Fills in owners and user names.
pub fn attach_owners(
    records: &mut [ConnectionRecord],
    owners: &super::processes::ProcessIndex,
    accounts: &super::accounts::Accounts,
) {
    for rec in records {
        for (pid, comm) in owners.socket_owners(rec.inode) {
            rec.pids.push(pid);
            rec.process_names.push(comm.to_owned());
        }
        rec.user = rec.uid.and_then(|u| accounts.user(u));
    }
}

/// Writes `connections.jsonl.gz`.
///
/// # Errors
/// [`SinkError`] when the table cannot be stored.
pub fn write(
    ctx: &Context<'_>,
    snapshot: &SocketSnapshot,
) -> Result<ircap_proto::ArtifactEntry, SinkError> {
    let mut table = JsonlWriter::open(ctx.sink, "connections", "connections")?;
    for e in &snapshot.errors {
        table.error(e.clone());
    }
    for rec in &snapshot.records {
        table.write(rec)?;
    }
    table.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inet_addresses() {
        assert_eq!(
            parse_inet_address("0100007F:1F90").unwrap(),
            ("127.0.0.1".into(), 8080)
        );
        assert_eq!(
            parse_inet_address("00000000000000000000000001000000:0016").unwrap(),
            ("::1".into(), 22)
        );
        assert_eq!(
            parse_inet_address("0000000000000000FFFF00000100007F:0050").unwrap(),
            ("::ffff:127.0.0.1".into(), 80)
        );
        assert!(parse_inet_address("zz:1").is_none());
    }

    #[test]
    fn tcp_table() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000001 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0\n   1: garbage\n";
        let (recs, errs) = parse_inet_table("tcp", text, 7);
        assert_eq!(recs.len(), 1);
        assert_eq!(errs.len(), 1);
        let r = &recs[0];
        assert_eq!(r.state, "LISTEN");
        assert_eq!(r.uid, Some(1000));
        assert_eq!(r.inode, 4242);
        assert_eq!(r.rx_queue, Some(1));
        assert_eq!(r.netns, 7);
    }

    #[test]
    fn unix_table_with_spaces_and_junk_in_paths() {
        let raw = b"Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 111 /run/a b.sock\n0000000000000000: 00000002 00000000 00000000 0002 03 222 @abs\xff\n0000000000000000: 00000002 00000000 00000000 0001 03 333\n";
        let (recs, errs) = parse_unix_table(raw, 1);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].path.as_deref(), Some("/run/a b.sock"));
        assert_eq!(recs[0].state, "LISTEN");
        assert_eq!(recs[1].socket_type, Some("dgram"));
        assert!(recs[1].path_b64.is_some());
        assert_eq!(recs[2].path, None);
        assert_eq!(recs[2].inode, 333);
    }
}
