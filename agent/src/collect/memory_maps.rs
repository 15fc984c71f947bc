//! The `memory_maps` artifact: every mapped region of every process, with
//! the classic injection indicators flagged.

use serde::Serialize;

use super::Context;
use super::fsread::{self, ReadError};
use crate::artifact::JsonlWriter;
use crate::host_text::HostText;
use crate::sink::SinkError;
use std::io::Read as _;

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
    /// A mapping the kernel puts into every process (`[vdso]`, `[vvar]`,
    /// `[vsyscall]`, `[uprobes]`, ...): anonymous and often executable, but
    /// no sign of injection. User space cannot give a mapping such a name
    /// (its own names read `[anon:...]`).
    pub kernel_provided: bool,
    /// Anonymous and executable, and not kernel-provided.
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

/// Pseudo-names of the mappings the kernel itself provides.
const KERNEL_PROVIDED: &[&[u8]] = &[
    b"[vdso]",
    b"[vvar]",
    b"[vvar_vclock]",
    b"[vsyscall]",
    b"[uprobes]",
    b"[sigpage]",
    b"[vectors]",
];

fn is_kernel_provided(path: &[u8]) -> bool {
    KERNEL_PROVIDED.contains(&path)
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
    let kernel_provided = path.is_some_and(is_kernel_provided);
    let anon_exec = anonymous && executable && !kernel_provided;
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
        kernel_provided,
        anon_exec,
        write_exec,
        deleted_backed,
        suspicious: anon_exec || write_exec || deleted_backed,
    })
}

/// Longest `/proc/PID/maps` line read (a path is at most `PATH_MAX`,
/// 4096 bytes); longer lines are recorded as errors, not parsed.
pub const MAX_LINE: usize = 8192;
/// Most regions read of one process (the kernel's default
/// `vm.max_map_count` is 65530); the rest are recorded as not read.
pub const MAX_REGIONS: u64 = 1_000_000;
/// Serialised regions a worker keeps for one process; a process whose maps
/// are bigger is streamed into the table by the writing thread instead, so
/// memory stays bounded whatever one process maps.
const WORKER_BYTES: usize = 256 << 10;
/// Serialised lines read ahead of the writer, at most (plus one worker's
/// [`WORKER_BYTES`] per thread).
const HELD_BYTES: u64 = 1 << 20;

/// Streams `/proc/PID/maps` line by line, calling `each` for every
/// region, never holding more than one line. Returns the problems met
/// (unparsable or over-long lines, the region cap).
///
/// # Errors
/// [`ReadError`] when the file cannot be opened or read; `E` from `each`.
pub fn stream_maps<E>(
    ctx: &Context<'_>,
    pid: i32,
    comm: &str,
    each: impl FnMut(Region) -> Result<(), E>,
) -> Result<Result<Vec<String>, E>, ReadError> {
    stream_maps_at(&ctx.roots.proc, pid, comm, each)
}

/// [`stream_maps`] under the procfs mount `proc_root`, for callers
/// without a capture context (`ircap-agent preflight`).
///
/// # Errors
/// As [`stream_maps`].
pub fn stream_maps_at<E>(
    proc_root: &std::path::Path,
    pid: i32,
    comm: &str,
    mut each: impl FnMut(Region) -> Result<(), E>,
) -> Result<Result<Vec<String>, E>, ReadError> {
    use std::io::BufRead as _;
    let path = proc_root.join(pid.to_string()).join("maps");
    if super::own_task::is_agent(proc_root, pid) {
        return Ok(Ok(vec![format!("pid {pid}: the agent itself, not read")]));
    }
    let file = fsread::open_regular(&path, false)?;
    let mut reader = std::io::BufReader::with_capacity(64 << 10, file);
    let mut line = Vec::with_capacity(512);
    let mut errors = Vec::new();
    let mut count = 0u64;
    loop {
        line.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| ReadError::from_io(&path, e))?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && n == MAX_LINE {
            // Skip the rest of an over-long line.
            let mut rest = Vec::new();
            reader
                .read_until(b'\n', &mut rest)
                .map_err(|e| ReadError::from_io(&path, e))?;
            errors.push(format!(
                "pid {pid}: maps line over {MAX_LINE} bytes, not parsed"
            ));
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.is_empty() {
            continue;
        }
        if count >= MAX_REGIONS {
            errors.push(format!(
                "pid {pid}: more than {MAX_REGIONS} regions; the rest are not listed"
            ));
            break;
        }
        match parse_line(pid, comm, text) {
            Some(r) => {
                count += 1;
                if let Err(e) = each(r) {
                    return Ok(Err(e));
                }
            }
            None => errors.push(format!(
                "pid {pid}: unparsable maps line {:?}",
                String::from_utf8_lossy(&text[..text.len().min(256)])
            )),
        }
    }
    Ok(Ok(errors))
}

/// What a worker read of one process.
enum Read {
    /// Serialised lines, their count, and the problems met.
    Lines(Vec<u8>, u64, Vec<String>),
    /// Over [`WORKER_BYTES`]: to be streamed by the writer.
    TooBig,
    /// Could not be read.
    Failed(ReadError),
}

/// Too many bytes for a worker.
struct Overflow;

fn read_small(ctx: &Context<'_>, pid: i32, comm: &str) -> Read {
    let mut lines = Vec::new();
    let mut count = 0u64;
    let streamed = stream_maps(ctx, pid, comm, |r| {
        if serde_json::to_writer(&mut lines, &r).is_ok() {
            lines.push(b'\n');
            count += 1;
        }
        if lines.len() > WORKER_BYTES {
            Err(Overflow)
        } else {
            Ok(())
        }
    });
    match streamed {
        Ok(Ok(errors)) => Read::Lines(lines, count, errors),
        Ok(Err(Overflow)) => Read::TooBig,
        Err(e) => Read::Failed(e),
    }
}

/// Writes `memory_maps.jsonl.gz` for `targets` (pid, comm) of user-space
/// processes: small processes are read on the worker threads while the
/// writer compresses what they read before, bigger ones streamed region by
/// region by the writer, so memory is bounded by bytes,
/// not by the number of processes or regions.
///
/// # Errors
/// [`SinkError`] when the table cannot be stored.
pub fn write(
    ctx: &Context<'_>,
    targets: &[(i32, String)],
) -> Result<ircap_proto::ArtifactEntry, SinkError> {
    let mut table = JsonlWriter::open(ctx.sink, "memory_maps", "memory_maps")?;
    super::bounded_ordered(
        targets,
        ctx.threads,
        HELD_BYTES,
        |(pid, comm)| read_small(ctx, *pid, comm),
        |read| match read {
            Read::Lines(lines, ..) => lines.len() as u64,
            Read::TooBig | Read::Failed(_) => 0,
        },
        |(pid, comm), result| {
            let failed = match result {
                Read::Lines(lines, count, errors) => {
                    for e in errors {
                        table.error(e);
                    }
                    table.write_lines(&lines, count)?;
                    None
                }
                Read::TooBig => match stream_maps(ctx, *pid, comm, |r| table.write(&r)) {
                    Ok(Ok(errors)) => {
                        for e in errors {
                            table.error(e);
                        }
                        None
                    }
                    Ok(Err(sink)) => return Err(sink),
                    Err(e) => Some(e),
                },
                Read::Failed(e) => Some(e),
            };
            match failed {
                Some(e) if e.is_gone() => {
                    table.error(format!("pid {pid}: exited before its maps could be read"));
                }
                Some(e) => table.error(format!("pid {pid}: {e}")),
                None => {}
            }
            Ok(())
        },
    )?;
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
        assert!(!v.anon_exec && v.kernel_provided);
        assert_eq!(v.start, "0xffffffffff600000");

        // Every process has a [vdso]; it is not an injection indicator.
        let vdso = parse_line(
            1,
            "x",
            b"7ffd1a5f4000-7ffd1a5f6000 r-xp 00000000 00:00 0                          [vdso]",
        )
        .unwrap();
        assert!(vdso.kernel_provided && vdso.anonymous);
        assert!(!vdso.anon_exec && !vdso.suspicious);
        // Anonymous memory user space named itself stays suspicious.
        let named = parse_line(1, "x", b"1000-2000 r-xp 00000000 00:00 0 [anon:vdso]").unwrap();
        assert!(!named.kernel_provided && named.anon_exec && named.suspicious);
        // A written-to [vdso] (w+x) is still flagged, by write_exec.
        let patched = parse_line(1, "x", b"1000-2000 rwxp 00000000 00:00 0 [vdso]").unwrap();
        assert!(patched.write_exec && patched.suspicious && !patched.anon_exec);

        assert!(parse_line(1, "x", b"junk").is_none());
    }
}
