//! The `memory_maps` artifact: every mapped region of every process, with
//! the classic injection indicators flagged.

use serde::Serialize;

use super::fsread::{self, ReadError};
use super::{Context, parallel_map};
use crate::artifact::JsonlWriter;
use crate::host_text::HostText;
use crate::sink::SinkError;

/// One mapped region.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct Region {
    /// Owning pid.
    pub pid: i32,
    /// Owning process name.
    pub comm: String,
    /// Start address, `0x`-prefixed hex (addresses exceed i64).
    pub start: String,
    /// End address (exclusive), hex.
    pub end: String,
    /// `end - start`.
    pub size: u64,
    /// `rwxp` / `rwxs` flags.
    pub perms: String,
    /// File offset.
    pub offset: u64,
    /// `major:minor` of the backing file.
    pub device: String,
    /// Inode of the backing file (0 for anonymous).
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`, ...), if any.
    pub path: Option<String>,
    /// Exact path bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    /// Not backed by a file.
    pub anonymous: bool,
    /// Anonymous and executable.
    pub anon_exec: bool,
    /// Writable and executable.
    pub write_exec: bool,
    /// Backed by a deleted file (including memfd).
    pub deleted_backed: bool,
    /// Any of the three indicators.
    pub suspicious: bool,
}

impl Region {
    /// Start and end (exclusive) addresses as numbers.
    #[must_use]
    pub fn bounds(&self) -> (u64, u64) {
        let parse = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0);
        let start = parse(&self.start);
        (start, start.saturating_add(self.size))
    }
}

/// Parses one line of `/proc/PID/maps`.
#[must_use]
pub fn parse_line(pid: i32, comm: &str, line: &[u8]) -> Option<Region> {
    let mut rest = line;
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        let start = rest.iter().position(|&b| b != b' ')?;
        rest = rest.get(start..)?;
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        fields.push(std::str::from_utf8(rest.get(..end)?).ok()?);
        rest = rest.get(end..)?;
    }
    let path_start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    let path = rest.get(path_start..).filter(|p| !p.is_empty());
    let (lo, hi) = fields.first()?.split_once('-')?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let perms = (*fields.get(1)?).to_owned();
    let inode: u64 = fields.get(4)?.parse().ok()?;
    let executable = perms.as_bytes().get(2) == Some(&b'x');
    let writable = perms.as_bytes().get(1) == Some(&b'w');
    let named_file = path.is_some_and(|p| p.first() == Some(&b'/'));
    let anonymous = inode == 0 && !named_file;
    let deleted_backed =
        path.is_some_and(|p| p.ends_with(b" (deleted)") || p.starts_with(b"/memfd:"));
    let anon_exec = anonymous && executable && path != Some(b"[vsyscall]".as_slice());
    let write_exec = writable && executable;
    let text = path.map(HostText::new);
    Some(Region {
        pid,
        comm: comm.to_owned(),
        start: format!("0x{lo:x}"),
        end: format!("0x{hi:x}"),
        size: hi.saturating_sub(lo),
        perms,
        offset: u64::from_str_radix(fields.get(2)?, 16).ok()?,
        device: (*fields.get(3)?).to_owned(),
        inode,
        path_b64: text.as_ref().and_then(|t| t.b64.clone()),
        path: text.map(|t| t.text),
        anonymous,
        anon_exec,
        write_exec,
        deleted_backed,
        suspicious: anon_exec || write_exec || deleted_backed,
    })
}

/// Reads and parses `/proc/PID/maps`.
///
/// # Errors
/// [`ReadError`] when the file cannot be read.
pub fn read_maps(
    ctx: &Context<'_>,
    pid: i32,
    comm: &str,
) -> Result<(Vec<Region>, Vec<String>), ReadError> {
    let path = ctx.roots.proc.join(pid.to_string()).join("maps");
    if super::own_task::is_agent(&ctx.roots.proc, pid) {
        return Ok((
            Vec::new(),
            vec![format!("pid {pid}: the agent itself, not read")],
        ));
    }
    let (raw, _) = fsread::read_bounded(&path, 256 << 20)?;
    let mut regions = Vec::new();
    let mut errors = Vec::new();
    for line in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match parse_line(pid, comm, line) {
            Some(r) => regions.push(r),
            None => errors.push(format!(
                "pid {pid}: unparsable maps line {:?}",
                String::from_utf8_lossy(line)
            )),
        }
    }
    Ok((regions, errors))
}

/// Processes per batch: maps are read and serialised in parallel one batch
/// at a time, so memory stays bounded by a batch, not by the host.
const BATCH: usize = 128;

/// Writes `memory_maps.jsonl.gz` for `targets` (pid, comm) of user-space
/// processes.
///
/// # Errors
/// [`SinkError`] when the table cannot be stored.
pub fn write(
    ctx: &Context<'_>,
    targets: &[(i32, String)],
) -> Result<ircap_proto::ArtifactEntry, SinkError> {
    let mut table = JsonlWriter::open(ctx.sink, "memory_maps", "memory_maps")?;
    for batch in targets.chunks(BATCH) {
        // Workers read and serialise; this thread only compresses.
        let results = parallel_map(batch, ctx.threads, |(pid, comm)| {
            read_maps(ctx, *pid, comm).map(|(regions, errors)| {
                let mut lines = Vec::with_capacity(regions.len() * 256);
                for r in &regions {
                    if serde_json::to_writer(&mut lines, r).is_ok() {
                        lines.push(b'\n');
                    }
                }
                (lines, regions.len() as u64, errors)
            })
        });
        for ((pid, _), result) in batch.iter().zip(results) {
            match result {
                Ok((lines, count, errors)) => {
                    for e in errors {
                        table.error(e);
                    }
                    table.write_lines(&lines, count)?;
                }
                Err(e) if e.is_gone() => {
                    table.error(format!("pid {pid}: exited before its maps could be read"))
                }
                Err(e) => table.error(format!("pid {pid}: {e}")),
            }
        }
    }
    table.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_regions_and_flags() {
        let r = parse_line(1, "x", b"7f0000000000-7f0000001000 rwxp 00000000 00:00 0 ").unwrap();
        assert!(r.anonymous && r.anon_exec && r.write_exec && r.suspicious);
        assert_eq!(r.size, 4096);
        assert_eq!(r.path, None);

        let f = parse_line(
            1,
            "x",
            b"55d0c0a00000-55d0c0a21000 r-xp 00002000 fd:01 1234   /usr/bin/my prog",
        )
        .unwrap();
        assert!(!f.anonymous && !f.suspicious);
        assert_eq!(f.path.as_deref(), Some("/usr/bin/my prog"));
        assert_eq!(f.offset, 0x2000);

        let d = parse_line(
            1,
            "x",
            b"1000-2000 r-xp 00000000 fd:01 99 /tmp/evil (deleted)",
        )
        .unwrap();
        assert!(d.deleted_backed && d.suspicious);

        let m = parse_line(
            1,
            "x",
            b"1000-2000 r-xs 00000000 00:01 5 /memfd:payload (deleted)",
        )
        .unwrap();
        assert!(m.deleted_backed && !m.anonymous);

        let v = parse_line(
            1,
            "x",
            b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]",
        )
        .unwrap();
        assert!(!v.anon_exec);
        assert_eq!(v.start, "0xffffffffff600000");

        assert!(parse_line(1, "x", b"junk").is_none());
    }
}
