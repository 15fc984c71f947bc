//! The `logins` and `lastlog` tables: who is logged in (utmp), who logged
//! in and out and when the host booted (wtmp), failed logins (btmp), and
//! each account's last login (lastlog), parsed from the binary records.
//!
//! Layouts are glibc's on 64-bit Linux (x86_64, aarch64), in host byte
//! order: `struct utmp` is 384 bytes, `struct lastlog` 292 bytes indexed
//! by uid. Times are read as unsigned 32-bit seconds, as glibc does since
//! it made them Y2038-safe; no real login predates 1970, so nothing is
//! lost.
//!
//! A missing file is not an error (many hosts have no btmp, newer
//! distributions no utmp); a file that cannot be read is. A zeroed record
//! inside wtmp is kept and flagged (`zeroed`): wiping records in place is
//! a classic way of hiding a login.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::Context;
use super::accounts::Accounts;
use super::fsread;
use crate::artifact::JsonlWriter;
use crate::host_text::HostText;
use crate::sink::SinkError;
use crate::timefmt;

/// Size of glibc's `struct utmp` on 64-bit Linux.
pub const UTMP_SIZE: usize = 384;
/// Size of `struct lastlog`.
pub const LASTLOG_SIZE: usize = 292;
/// Most bytes of one utmp/wtmp/btmp file parsed; beyond it the newest
/// records (the end of the file) are kept.
pub const MAX_LOGIN_FILE_BYTES: u64 = 256 << 20;
/// Most data bytes of lastlog read (holes of the sparse file are skipped
/// without reading).
pub const MAX_LASTLOG_BYTES: u64 = 64 << 20;
/// Records read per chunk.
const CHUNK_RECORDS: usize = 1024;

/// `ut_type` names, by value.
const UT_TYPES: [&str; 10] = [
    "EMPTY",
    "RUN_LVL",
    "BOOT_TIME",
    "NEW_TIME",
    "OLD_TIME",
    "INIT_PROCESS",
    "LOGIN_PROCESS",
    "USER_PROCESS",
    "DEAD_PROCESS",
    "ACCOUNTING",
];

/// One record of `logins.jsonl.gz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoginRecord {
    /// `utmp`, `wtmp` or `btmp`.
    pub source: &'static str,
    /// The file read.
    pub file: String,
    /// Position of the record in the file (0-based).
    pub record_index: u64,
    /// `ut_type` name (`USER_PROCESS`, ...), or `UNKNOWN(n)`.
    #[serde(rename = "type")]
    pub entry_type: String,
    /// `ut_type` as stored.
    pub type_code: i16,
    /// `ut_pid`.
    pub pid: i32,
    /// Terminal (`pts/0`).
    pub line: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_b64: Option<String>,
    /// Terminal suffix / init id.
    pub id: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_b64: Option<String>,
    /// User name (for btmp: the name that was tried).
    pub user: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_b64: Option<String>,
    /// Remote host, or kernel version for boot records.
    pub host: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_b64: Option<String>,
    /// `ut_session`.
    pub session: i32,
    /// `ut_tv`, RFC 3339 UTC; `None` when zero.
    pub time: Option<String>,
    /// `ut_addr_v6`: IPv4 when only the first word is set, else IPv6;
    /// `None` when zero.
    pub address: Option<String>,
    /// `ut_exit.e_termination`.
    pub exit_termination: i16,
    /// `ut_exit.e_exit`.
    pub exit_status: i16,
    /// Every byte of the record is zero (wiped in place?).
    pub zeroed: bool,
}

/// One record of `lastlog.jsonl.gz`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastlogRecord {
    /// The uid (record index).
    pub uid: u32,
    /// Its name in the host's passwd, if any.
    pub user: Option<String>,
    /// Last login, RFC 3339 UTC; `None` when zero.
    pub time: Option<String>,
    /// Terminal.
    pub line: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_b64: Option<String>,
    /// Remote host.
    pub host: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_b64: Option<String>,
}

/// What [`parse_utmp`] found in a run of bytes.
#[derive(Debug, Default)]
pub struct UtmpChunk {
    /// Whole records.
    pub records: Vec<LoginRecord>,
    /// Bytes after the last whole record.
    pub trailing: usize,
}

fn bytes_at<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

fn i16_at(b: &[u8], off: usize) -> Option<i16> {
    bytes_at(b, off).map(i16::from_ne_bytes)
}

fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    bytes_at(b, off).map(i32::from_ne_bytes)
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    bytes_at(b, off).map(u32::from_ne_bytes)
}

/// A fixed-size C string field: up to the first NUL.
fn c_text(b: &[u8], off: usize, len: usize) -> Option<HostText> {
    let field = b.get(off..off.checked_add(len)?)?;
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    Some(HostText::new(field.get(..end)?))
}

fn login_time(secs: u32, usec: u32) -> Option<String> {
    if secs == 0 && usec == 0 {
        return None;
    }
    // A bad microsecond count is hostile or corrupt data: keep the seconds.
    let micros = if usec < 1_000_000 { usec } else { 0 };
    Some(timefmt::rfc3339(
        UNIX_EPOCH
            + Duration::from_secs(u64::from(secs))
            + Duration::from_micros(u64::from(micros)),
    ))
}

/// Renders `ut_addr_v6` (network byte order).
fn address(raw: [u8; 16]) -> Option<String> {
    if raw.iter().all(|&b| b == 0) {
        return None;
    }
    let (v4, rest) = raw.split_at(4);
    if rest.iter().all(|&b| b == 0) {
        let v4: [u8; 4] = v4.try_into().ok()?;
        return Some(Ipv4Addr::from(v4).to_string());
    }
    Some(Ipv6Addr::from(raw).to_string())
}

/// Parses one 384-byte `struct utmp`; `None` when `rec` is shorter.
#[must_use]
pub fn parse_utmp_record(
    source: &'static str,
    file: &str,
    index: u64,
    rec: &[u8],
) -> Option<LoginRecord> {
    let rec = rec.get(..UTMP_SIZE)?;
    let type_code = i16_at(rec, 0)?;
    let entry_type = usize::try_from(type_code)
        .ok()
        .and_then(|t| UT_TYPES.get(t))
        .map_or_else(|| format!("UNKNOWN({type_code})"), |t| (*t).to_owned());
    let line = c_text(rec, 8, 32)?;
    let id = c_text(rec, 40, 4)?;
    let user = c_text(rec, 44, 32)?;
    let host = c_text(rec, 76, 256)?;
    Some(LoginRecord {
        source,
        file: file.to_owned(),
        record_index: index,
        entry_type,
        type_code,
        pid: i32_at(rec, 4)?,
        line: line.text,
        line_b64: line.b64,
        id: id.text,
        id_b64: id.b64,
        user: user.text,
        user_b64: user.b64,
        host: host.text,
        host_b64: host.b64,
        exit_termination: i16_at(rec, 332)?,
        exit_status: i16_at(rec, 334)?,
        session: i32_at(rec, 336)?,
        time: login_time(u32_at(rec, 340)?, u32_at(rec, 344)?),
        address: address(bytes_at(rec, 348)?),
        zeroed: rec.iter().all(|&b| b == 0),
    })
}

/// Parses consecutive utmp records; `first_index` numbers the first one.
#[must_use]
pub fn parse_utmp(source: &'static str, file: &str, first_index: u64, bytes: &[u8]) -> UtmpChunk {
    let chunks = bytes.chunks_exact(UTMP_SIZE);
    let trailing = chunks.remainder().len();
    let records = chunks
        .zip(first_index..)
        .filter_map(|(rec, i)| parse_utmp_record(source, file, i, rec))
        .collect();
    UtmpChunk { records, trailing }
}

/// Parses one 292-byte `struct lastlog`; `None` when it is all zero (the
/// uid never logged in) or short.
#[must_use]
pub fn parse_lastlog_record(uid: u32, rec: &[u8], accounts: &Accounts) -> Option<LastlogRecord> {
    let rec = rec.get(..LASTLOG_SIZE)?;
    if rec.iter().all(|&b| b == 0) {
        return None;
    }
    let line = c_text(rec, 4, 32)?;
    let host = c_text(rec, 36, 256)?;
    Some(LastlogRecord {
        uid,
        user: accounts.user(uid),
        time: login_time(u32_at(rec, 0)?, 0),
        line: line.text,
        line_b64: line.b64,
        host: host.text,
        host_b64: host.b64,
    })
}

/// Parses consecutive lastlog records, skipping empty ones; the first
/// belongs to `first_uid`.
#[must_use]
pub fn parse_lastlog(first_uid: u32, bytes: &[u8], accounts: &Accounts) -> Vec<LastlogRecord> {
    bytes
        .chunks_exact(LASTLOG_SIZE)
        .zip(first_uid..)
        .filter_map(|(rec, uid)| parse_lastlog_record(uid, rec, accounts))
        .collect()
}

/// Reads until `buf` is full or the reader ends; returns the bytes read.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..) {
        if rest.is_empty() {
            break;
        }
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Opens a host file; `Ok(None)` when it does not exist.
fn open_optional(path: &Path) -> Result<Option<File>, String> {
    match fsread::open_regular(path, false) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.is_gone() => {
            tracing::debug!(path = %path.display(), "Absent, skipped");
            Ok(None)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Streams the records of one utmp-format file to `emit` (`Ok` records,
/// `Err` messages for what could not be read). At most `max_bytes` are
/// parsed: a bigger file (btmp under a brute-force attack) keeps its
/// newest records, and the skip is reported.
///
/// # Errors
/// Only what `emit` returns.
pub fn read_login_file<E>(
    path: &Path,
    source: &'static str,
    max_bytes: u64,
    emit: &mut impl FnMut(Result<LoginRecord, String>) -> Result<(), E>,
) -> Result<(), E> {
    let file_name = path.display().to_string();
    let mut file = match open_optional(path) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(()),
        Err(e) => return emit(Err(format!("{source}: {e}"))),
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return emit(Err(format!("{source}: cannot stat {file_name}: {e}"))),
    };
    let rec_size = UTMP_SIZE as u64;
    let start = len
        .saturating_sub(max_bytes)
        .div_ceil(rec_size)
        .saturating_mul(rec_size);
    if start > 0 {
        emit(Err(format!(
            "{source}: {file_name} is {len} bytes, over the {max_bytes}-byte limit: its first {} records were skipped, the newest kept",
            start / rec_size
        )))?;
        if let Err(e) = file.seek(SeekFrom::Start(start)) {
            return emit(Err(format!("{source}: cannot seek in {file_name}: {e}")));
        }
    }
    // The file may grow while it is read: stop at the length seen now.
    let mut reader = file.take(len.saturating_sub(start));
    let mut buf = vec![0u8; UTMP_SIZE * CHUNK_RECORDS];
    let mut index = start / rec_size;
    loop {
        let n = match fill(&mut reader, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                return emit(Err(format!(
                    "{source}: read error in {file_name} at record {index}: {e}"
                )));
            }
        };
        let chunk = parse_utmp(source, &file_name, index, buf.get(..n).unwrap_or_default());
        for record in chunk.records {
            emit(Ok(record))?;
        }
        index += (n / UTMP_SIZE) as u64;
        if chunk.trailing > 0 {
            emit(Err(format!(
                "{source}: {file_name} ends with a partial record of {} bytes at offset {}",
                chunk.trailing,
                index * rec_size
            )))?;
        }
        if n < buf.len() {
            return Ok(());
        }
    }
}

/// The data extents of `[from, len)`: `(start, end)` of the next one, or
/// `None` past the last. Falls back to "all data" where the file system
/// cannot report holes.
fn next_data(file: &File, from: u64, len: u64) -> Option<(u64, u64)> {
    use nix::unistd::{Whence, lseek};
    if from >= len {
        return None;
    }
    let off = i64::try_from(from).ok()?;
    let data = match lseek(file, off, Whence::SeekData) {
        Ok(d) => u64::try_from(d).ok()?,
        // ENXIO: no data after `from`.
        Err(nix::errno::Errno::ENXIO) => return None,
        Err(_) => return Some((from, len)),
    };
    let hole = lseek(file, i64::try_from(data).ok()?, Whence::SeekHole)
        .ok()
        .and_then(|h| u64::try_from(h).ok())
        .filter(|&h| h > data)
        .unwrap_or(len);
    Some((data, hole.min(len)))
}

/// Streams the non-empty records of lastlog to `emit`, reading only the
/// data extents of the sparse file and at most `max_bytes` of them.
///
/// # Errors
/// Only what `emit` returns.
pub fn read_lastlog<E>(
    path: &Path,
    accounts: &Accounts,
    max_bytes: u64,
    emit: &mut impl FnMut(Result<LastlogRecord, String>) -> Result<(), E>,
) -> Result<(), E> {
    let name = path.display();
    let file = match open_optional(path) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(()),
        Err(e) => return emit(Err(format!("lastlog: {e}"))),
    };
    let len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => return emit(Err(format!("lastlog: cannot stat {name}: {e}"))),
    };
    let rec_size = LASTLOG_SIZE as u64;
    // Only whole records are read.
    let whole = len - len % rec_size;
    if whole < len {
        emit(Err(format!(
            "lastlog: {name} ends with a partial record of {} bytes",
            len - whole
        )))?;
    }
    let mut buf = vec![0u8; LASTLOG_SIZE * CHUNK_RECORDS];
    let mut read_total = 0u64;
    let mut pos = 0u64;
    while let Some((data, hole)) = next_data(&file, pos, whole) {
        // Records may straddle extent boundaries: widen to whole records.
        let mut at = (data - data % rec_size).max(pos);
        let end = hole.div_ceil(rec_size).saturating_mul(rec_size).min(whole);
        while at < end {
            if read_total >= max_bytes {
                return emit(Err(format!(
                    "lastlog: stopped after reading {max_bytes} bytes of {name}; uids from {} on were not read",
                    at / rec_size
                )));
            }
            let want = (end - at).min(buf.len() as u64).min(max_bytes - read_total);
            let want = want - want % rec_size;
            let Some(chunk) = buf.get_mut(..usize::try_from(want).unwrap_or(0)) else {
                return Ok(());
            };
            if chunk.is_empty() {
                // Budget left is less than one record.
                read_total = max_bytes;
                continue;
            }
            if let Err(e) = file.read_exact_at(chunk, at) {
                return emit(Err(format!(
                    "lastlog: read error in {name} at offset {at}: {e}"
                )));
            }
            let Ok(first_uid) = u32::try_from(at / rec_size) else {
                return emit(Err(format!(
                    "lastlog: {name} has records past the largest uid"
                )));
            };
            for record in parse_lastlog(first_uid, chunk, accounts) {
                emit(Ok(record))?;
            }
            read_total += want;
            at += want;
        }
        pos = end.max(hole);
    }
    Ok(())
}

fn to_table<T: Serialize>(
    table: &mut JsonlWriter,
    item: Result<T, String>,
) -> Result<(), SinkError> {
    match item {
        Ok(record) => table.write(&record),
        Err(message) => {
            table.error(message);
            Ok(())
        }
    }
}

/// Writes `logins.jsonl.gz` (utmp, wtmp, btmp and their `.1` rotations)
/// and `lastlog.jsonl.gz`.
///
/// # Errors
/// [`SinkError`] when a table cannot be stored.
pub fn write(ctx: &Context<'_>) -> Result<Vec<ircap_proto::ArtifactEntry>, SinkError> {
    let var_log = &ctx.roots.var_log;
    let sources = [
        ("utmp", ctx.roots.run.join("utmp")),
        ("wtmp", var_log.join("wtmp")),
        ("wtmp", var_log.join("wtmp.1")),
        ("btmp", var_log.join("btmp")),
        ("btmp", var_log.join("btmp.1")),
    ];
    let mut logins = JsonlWriter::open(ctx.sink, "logins", "users")?;
    for (source, path) in &sources {
        read_login_file(path, source, MAX_LOGIN_FILE_BYTES, &mut |item| {
            to_table(&mut logins, item)
        })?;
    }
    let mut lastlog = JsonlWriter::open(ctx.sink, "lastlog", "users")?;
    read_lastlog(
        &var_log.join("lastlog"),
        ctx.accounts,
        MAX_LASTLOG_BYTES,
        &mut |item| to_table(&mut lastlog, item),
    )?;
    Ok(vec![logins.finish()?, lastlog.finish()?])
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::fs;

    use super::*;

    /// Builds one `struct utmp` the way glibc lays it out.
    #[allow(clippy::too_many_arguments)]
    fn utmp(
        ut_type: i16,
        pid: i32,
        line: &[u8],
        user: &[u8],
        host: &[u8],
        secs: u32,
        usec: u32,
        addr: [u8; 16],
    ) -> Vec<u8> {
        let mut r = vec![0u8; UTMP_SIZE];
        r[0..2].copy_from_slice(&ut_type.to_ne_bytes());
        r[4..8].copy_from_slice(&pid.to_ne_bytes());
        r[8..8 + line.len()].copy_from_slice(line);
        r[40..44].copy_from_slice(b"ts/0");
        r[44..44 + user.len()].copy_from_slice(user);
        r[76..76 + host.len()].copy_from_slice(host);
        r[332..334].copy_from_slice(&3i16.to_ne_bytes());
        r[334..336].copy_from_slice(&7i16.to_ne_bytes());
        r[336..340].copy_from_slice(&99i32.to_ne_bytes());
        r[340..344].copy_from_slice(&secs.to_ne_bytes());
        r[344..348].copy_from_slice(&usec.to_ne_bytes());
        r[348..364].copy_from_slice(&addr);
        r
    }

    fn lastlog(secs: u32, line: &[u8], host: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; LASTLOG_SIZE];
        r[0..4].copy_from_slice(&secs.to_ne_bytes());
        r[4..4 + line.len()].copy_from_slice(line);
        r[36..36 + host.len()].copy_from_slice(host);
        r
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut r = [0u8; 16];
        r[..4].copy_from_slice(&a);
        r
    }

    fn lastlog_records(
        path: &Path,
        accounts: &Accounts,
        max_bytes: u64,
    ) -> Vec<Result<LastlogRecord, String>> {
        let mut out = Vec::new();
        let _ = read_lastlog::<Infallible>(path, accounts, max_bytes, &mut |item| {
            out.push(item);
            Ok(())
        });
        out
    }

    fn collect_logins(
        path: &Path,
        source: &'static str,
        max: u64,
    ) -> Vec<Result<LoginRecord, String>> {
        let mut out = Vec::new();
        let _ = read_login_file::<Infallible>(path, source, max, &mut |item| {
            out.push(item);
            Ok(())
        });
        out
    }

    #[test]
    fn parses_a_user_process_record() {
        let raw = utmp(
            7,
            4242,
            b"pts/0",
            b"alice",
            b"203.0.113.9",
            1_700_000_000,
            250_000,
            v4([203, 0, 113, 9]),
        );
        let chunk = parse_utmp("wtmp", "/var/log/wtmp", 5, &raw);
        assert_eq!(chunk.trailing, 0);
        let r = &chunk.records[0];
        assert_eq!(r.entry_type, "USER_PROCESS");
        assert_eq!(r.type_code, 7);
        assert_eq!(r.record_index, 5);
        assert_eq!((r.pid, r.session), (4242, 99));
        assert_eq!((r.line.as_str(), r.id.as_str()), ("pts/0", "ts/0"));
        assert_eq!((r.user.as_str(), r.host.as_str()), ("alice", "203.0.113.9"));
        assert_eq!(r.time.as_deref(), Some("2023-11-14T22:13:20.25Z"));
        assert_eq!(r.address.as_deref(), Some("203.0.113.9"));
        assert_eq!((r.exit_termination, r.exit_status), (3, 7));
        assert!(!r.zeroed);
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["type"], "USER_PROCESS");
        assert!(json.get("user_b64").is_none());
    }

    #[test]
    fn addresses_types_and_hostile_strings() {
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let mut raw = utmp(8, 1, b"pts/1", b"ev\xffil", b"", 1, 0, v6.octets());
        raw.extend(utmp(42, 0, b"", b"", b"", 0, 0, [0; 16]));
        // A full-width user name has no NUL terminator.
        raw.extend(utmp(6, 2, b"tty1", &[b'x'; 32], b"", 5, 2_000_000, [0; 16]));
        raw.extend(vec![0u8; UTMP_SIZE]);
        let chunk = parse_utmp("utmp", "u", 0, &raw);
        let [dead, unknown, login, zero] = chunk.records.as_slice() else {
            panic!("expected 4 records, got {:?}", chunk.records);
        };
        assert_eq!(dead.entry_type, "DEAD_PROCESS");
        assert_eq!(dead.address.as_deref(), Some("2001:db8::1"));
        assert_eq!(dead.user, "ev\u{fffd}il");
        assert_eq!(dead.user_b64.as_deref(), Some("ZXb/aWw="));
        assert_eq!(unknown.entry_type, "UNKNOWN(42)");
        assert_eq!(unknown.time, None);
        assert_eq!(unknown.address, None);
        assert_eq!(login.user, "x".repeat(32));
        // An impossible microsecond count keeps the seconds only.
        assert_eq!(login.time.as_deref(), Some("1970-01-01T00:00:05Z"));
        assert_eq!(zero.entry_type, "EMPTY");
        assert!(zero.zeroed);
    }

    #[test]
    fn partial_record_is_an_error_not_a_panic() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wtmp");
        let mut raw = utmp(2, 0, b"~", b"reboot", b"6.8.0", 1_700_000_000, 0, [0; 16]);
        raw.extend(utmp(
            7,
            9,
            b"pts/2",
            b"bob",
            b"h",
            1_700_000_100,
            0,
            [0; 16],
        ));
        raw.extend([1u8; 100]);
        fs::write(&path, &raw)?;
        let items = collect_logins(&path, "wtmp", MAX_LOGIN_FILE_BYTES);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].as_ref().unwrap().entry_type, "BOOT_TIME");
        assert_eq!(items[1].as_ref().unwrap().user, "bob");
        let err = items[2].as_ref().unwrap_err();
        assert!(
            err.contains("partial record of 100 bytes at offset 768"),
            "{err}"
        );
        assert!(parse_utmp("wtmp", "w", 0, &raw[..200]).records.is_empty());
        Ok(())
    }

    #[test]
    fn oversized_file_keeps_the_newest_records() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("btmp");
        let raw: Vec<u8> = (0..5u32)
            .flat_map(|i| {
                utmp(
                    6,
                    0,
                    b"ssh:notty",
                    format!("u{i}").as_bytes(),
                    b"",
                    i + 1,
                    0,
                    [0; 16],
                )
            })
            .collect();
        fs::write(&path, &raw)?;
        // Room for two and a bit records: the last two are kept.
        let items = collect_logins(&path, "btmp", 2 * UTMP_SIZE as u64 + 10);
        assert!(
            items[0]
                .as_ref()
                .unwrap_err()
                .contains("first 3 records were skipped")
        );
        let users: Vec<_> = items[1..]
            .iter()
            .map(|r| {
                r.as_ref()
                    .map(|r| (r.record_index, r.user.clone()))
                    .map_err(Clone::clone)
            })
            .collect::<Result<_, String>>()?;
        assert_eq!(users, [(3, "u3".to_owned()), (4, "u4".to_owned())]);
        Ok(())
    }

    #[test]
    fn many_chunks_and_missing_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wtmp");
        let n = CHUNK_RECORDS as u32 * 2 + 3;
        let raw: Vec<u8> = (0..n)
            .flat_map(|i| utmp(7, i.cast_signed(), b"pts/0", b"u", b"", i + 1, 0, [0; 16]))
            .collect();
        fs::write(&path, &raw)?;
        let items = collect_logins(&path, "wtmp", MAX_LOGIN_FILE_BYTES);
        assert_eq!(items.len(), n as usize);
        assert!(items.iter().all(Result::is_ok));
        assert_eq!(
            items.last().unwrap().as_ref().unwrap().record_index,
            u64::from(n) - 1
        );
        assert!(collect_logins(&dir.path().join("nope"), "btmp", 1 << 20).is_empty());
        assert!(
            lastlog_records(&dir.path().join("nope"), &Accounts::default(), 1 << 20).is_empty()
        );
        Ok(())
    }

    #[test]
    fn sparse_lastlog_skips_empty_records() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        fs::write(
            dir.path().join("passwd"),
            "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/h:/bin/sh\n",
        )?;
        let accounts = Accounts::load(dir.path());
        let path = dir.path().join("lastlog");
        let file = File::create(&path)?;
        file.write_all_at(&lastlog(1_700_000_000, b"pts/0", b"198.51.100.7"), 0)?;
        file.write_all_at(
            &lastlog(1_700_000_500, b"tty1", b""),
            1000 * LASTLOG_SIZE as u64,
        )?;
        // A far uid makes the file sparse, as nfsnobody does on real hosts.
        file.write_all_at(
            &lastlog(1_700_001_000, b"pts/9", b"h\xfe"),
            3_000_000 * LASTLOG_SIZE as u64,
        )?;
        drop(file);
        let items = lastlog_records(&path, &accounts, MAX_LASTLOG_BYTES);
        let records: Vec<LastlogRecord> = items.into_iter().collect::<Result<_, _>>()?;
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].uid, 0);
        assert_eq!(records[0].user.as_deref(), Some("root"));
        assert_eq!(records[0].host, "198.51.100.7");
        assert_eq!(records[0].time.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(
            (records[1].uid, records[1].user.as_deref()),
            (1000, Some("alice"))
        );
        assert_eq!(records[1].line, "tty1");
        assert_eq!(
            (records[2].uid, records[2].user.as_deref()),
            (3_000_000, None)
        );
        assert_eq!(records[2].host_b64.as_deref(), Some("aP4="));

        // A small budget stops with an error instead of reading on.
        let capped = lastlog_records(&path, &accounts, 4096);
        assert!(capped.iter().any(|r| {
            r.as_ref()
                .is_err_and(|e| e.contains("stopped after reading 4096"))
        }));
        assert!(capped.first().is_some_and(Result::is_ok));
        Ok(())
    }

    #[test]
    fn lastlog_partial_tail_and_parse_seam() {
        let mut raw = lastlog(0, b"", b"");
        raw.extend(lastlog(60, b"pts/3", b"x"));
        let recs = parse_lastlog(10, &raw, &Accounts::default());
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].uid, 11);
        assert_eq!(recs[0].time.as_deref(), Some("1970-01-01T00:01:00Z"));
        assert!(parse_lastlog_record(0, &raw[..100], &Accounts::default()).is_none());
    }

    #[test]
    fn write_produces_logins_and_lastlog() -> Result<(), Box<dyn std::error::Error>> {
        use crate::collect::Roots;
        use crate::collect::system::BootClock;
        use crate::options::CaptureOptions;
        use crate::sink::dir::DirSink;

        let fx = tempfile::tempdir()?;
        let var_log = fx.path().join("log");
        fs::create_dir(&var_log)?;
        let mut wtmp = utmp(2, 0, b"~", b"reboot", b"6.1.0", 1_700_000_000, 0, [0; 16]);
        wtmp.extend(utmp(
            7,
            5,
            b"pts/0",
            b"eve",
            b"x",
            1_700_000_001,
            0,
            [0; 16],
        ));
        fs::write(var_log.join("wtmp"), &wtmp)?;
        fs::write(var_log.join("wtmp.1"), &wtmp[..UTMP_SIZE])?;
        // Cannot be read as a file: one recorded error, the rest goes on.
        fs::create_dir(var_log.join("btmp"))?;
        fs::write(
            var_log.join("lastlog"),
            lastlog(1_700_000_000, b"pts/0", b"h"),
        )?;
        let roots = Roots {
            proc: fx.path().join("proc"),
            etc: fx.path().join("etc"),
            var_log,
            run: fx.path().join("run"),
            sys: fx.path().join("sys"),
        };
        let out = tempfile::tempdir()?;
        let sink = DirSink::create(out.path(), "cap")?;
        let options = CaptureOptions::with_defaults(out.path().to_path_buf());
        let clock = BootClock {
            boot_unix: 0.0,
            clk_tck: 100,
            page_size: 4096,
        };
        let ctx = Context {
            sink: &sink,
            options: &options,
            roots: &roots,
            accounts: &Accounts::default(),
            clock: &clock,
            threads: 1,
            blocking: Default::default(),
            dropped: Default::default(),
        };
        let entries = write(&ctx)?;
        let summary: Vec<_> = entries
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.kind.as_str(),
                    e.record_count,
                    e.error_count,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("logins.jsonl.gz", "users", Some(3), 1),
                ("lastlog.jsonl.gz", "users", Some(1), 0)
            ]
        );
        assert!(entries[0].errors[0].starts_with("btmp: "));
        Ok(())
    }

    #[test]
    fn unreadable_file_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        // A directory where a file is expected cannot be read as one.
        let dir = tempfile::tempdir()?;
        let items = collect_logins(dir.path(), "btmp", 1 << 20);
        assert_eq!(items.len(), 1);
        assert!(items[0].as_ref().unwrap_err().starts_with("btmp: "));
        Ok(())
    }
}
