//! The `logs` artifacts: original bytes of host log files, bounded by
//! `--logs-since` and `--logs-max-bytes`, plus a `log_files` index.
//!
//! Files under `/var/log` (rotated and compressed ones included, systemd
//! journal files in `/var/log/journal` too) and the volatile journal in
//! `/run/log/journal` are considered. A file is taken when it was modified
//! at or after `--logs-since`, newest first, until the byte budget is
//! spent; a plain-text file that does not fit keeps its newest bytes (its
//! tail) and says so. Each file becomes one artifact holding its exact
//! bytes: gzip-compressed when it was plain, stored as found when it was
//! already compressed (gzip, xz, bzip2, zstd), so `sha256_uncompressed` in
//! the manifest is always the SHA-256 of the original bytes read.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ircap_proto::ArtifactName;
use ircap_proto::artifact_name::sanitize_component;
use serde::Serialize;

use super::Context;
use super::blocking_fs::BlockingMounts;
use super::fsread;
use crate::artifact::{ArtifactStream, JsonlWriter, Store};
use crate::host_text::HostText;
use crate::protected::Protected;
use crate::sink::SinkError;
use crate::timefmt;

/// Deepest directory level walked below a log root.
const MAX_DEPTH: usize = 8;
/// Most files considered (the index says when more were there, and the
/// capture is partial).
const MAX_FILES: usize = 20_000;
/// Most log files kept, newest first: one artifact each, and a capture may
/// hold [`ircap_proto::manifest::MAX_ARTIFACTS`]; the rest is left for
/// every other artifact. Files past it are listed in the index as not
/// included and the capture is partial.
pub const MAX_KEPT: usize = ircap_proto::manifest::MAX_ARTIFACTS - 500;
/// Artifacts kept free for what comes after the log files (their index,
/// the journal table) when the capture's other artifacts are counted.
pub const AFTER_LOGS: usize = 16;
/// Why a file past [`MAX_KEPT`] was left out.
const PAST_MAX_KEPT: &str = "artifact limit: the newest log files already fill the capture";

/// A candidate log file.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its path.
    pub path: PathBuf,
    /// Size when listed.
    pub size: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Inode.
    pub inode: u64,
    /// Device of its file system.
    pub dev: u64,
}

/// One row of `log_files.jsonl.gz`.
#[derive(Debug, Serialize)]
pub struct LogFileRecord {
    /// Path on the host.
    pub path: String,
    /// Exact path bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    /// Size when listed.
    pub size: u64,
    /// Modification time.
    pub mtime: String,
    /// Inode.
    pub inode: u64,
    /// Whether its bytes are in the capture.
    pub included: bool,
    /// Why (not) included.
    pub reason: String,
    /// The artifact holding its bytes.
    pub artifact: Option<String>,
    /// Offset of the first byte kept (non-zero when only the tail fit).
    pub kept_from_offset: u64,
    /// Bytes kept.
    pub kept_bytes: u64,
    /// SHA-256 of the bytes kept (as read from the host).
    pub sha256: Option<String>,
    /// Compression found on the host (`gzip`, `xz`, `bzip2`, `zstd`).
    pub compression: Option<&'static str>,
}

/// Lists regular files below `roots`, no symlinks followed, never
/// entering a file system that can block (`blocking`).
#[must_use]
pub fn list_candidates(
    roots: &[PathBuf],
    blocking: &BlockingMounts,
    errors: &mut Vec<String>,
) -> Vec<Candidate> {
    let mut out = Vec::new();
    for root in roots {
        walk(root, 0, blocking, &mut out, errors);
    }
    out
}

fn walk(
    dir: &Path,
    depth: usize,
    blocking: &BlockingMounts,
    out: &mut Vec<Candidate>,
    errors: &mut Vec<String>,
) {
    if let Some(fs_type) = blocking.at(dir) {
        errors.push(format!(
            "{}: a {fs_type} mount, not entered (it can block)",
            dir.display()
        ));
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            errors.push(format!("{}: {e}", dir.display()));
            return;
        }
    };
    for entry in entries.flatten() {
        if out.len() >= MAX_FILES {
            errors.push(format!("{TOO_MANY}; the rest were not considered"));
            return;
        }
        let path = entry.path();
        if let Some(fs_type) = blocking.at(&path) {
            errors.push(format!(
                "{}: a {fs_type} mount, not entered (it can block)",
                path.display()
            ));
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if md.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, blocking, out, errors);
            }
        } else if md.is_file() {
            out.push(Candidate {
                size: md.len(),
                mtime: md.modified().unwrap_or(UNIX_EPOCH),
                inode: md.ino(),
                dev: md.dev(),
                path,
            });
        }
    }
}

/// Start of the walk error saying [`MAX_FILES`] stopped the listing.
const TOO_MANY: &str = "more than 20000 log files";

/// Compression of a file by its magic bytes.
#[must_use]
pub fn compression(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some("gzip")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if head.starts_with(b"BZh") {
        Some("bzip2")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    }
}

/// What to do with each candidate, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Keep bytes `[from, size)`.
    Keep {
        /// First byte kept.
        from: u64,
    },
    /// Leave out, with the reason.
    Skip(&'static str),
}

/// Decides which files fit: modified since `since`, newest first, within
/// `budget` bytes and `max_kept` files (at most [`MAX_KEPT`]); a plain file
/// that does not fit keeps its tail.
/// `compressed(i)` says whether candidate `i` is compressed (no tail then);
/// `protected(i)` whether it is one of the agent's own secrets (never
/// read).
#[must_use]
pub fn plan(
    candidates: &[Candidate],
    since: SystemTime,
    budget: u64,
    max_kept: usize,
    compressed: impl Fn(usize) -> bool,
    protected: impl Fn(usize) -> bool,
) -> Vec<Plan> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(candidates.get(i).map(|c| c.mtime)));
    let mut plans = vec![Plan::Skip("not considered"); candidates.len()];
    let mut left = budget;
    let mut kept = 0;
    for i in order {
        let Some(c) = candidates.get(i) else { continue };
        let decision = if protected(i) {
            Plan::Skip(Protected::REASON)
        } else if c.mtime < since {
            Plan::Skip("modified before --logs-since")
        } else if kept >= max_kept.min(MAX_KEPT) {
            Plan::Skip(PAST_MAX_KEPT)
        } else if c.size <= left {
            left -= c.size;
            Plan::Keep { from: 0 }
        } else if left > 0 && !compressed(i) {
            let from = c.size - left;
            left = 0;
            Plan::Keep { from }
        } else {
            Plan::Skip("--logs-max-bytes budget spent")
        };
        if matches!(decision, Plan::Keep { .. }) {
            kept += 1;
        }
        if let Some(slot) = plans.get_mut(i) {
            *slot = decision;
        }
    }
    plans
}

fn peek_compression(c: &Candidate, protected: &Protected) -> Option<&'static str> {
    let mut head = [0u8; 6];
    let mut file = fsread::open_listed(&c.path, c.dev, c.inode, protected).ok()?;
    let n = file.read(&mut head).ok()?;
    compression(head.get(..n)?)
}

/// Writes every kept log file below `roots` and the `log_files` index,
/// keeping at most `max_kept` files (what the capture's artifact limit
/// leaves once its other artifacts are counted; [`MAX_KEPT`] at most).
///
/// # Errors
/// [`SinkError`] when an artifact cannot be stored.
pub fn write(
    ctx: &Context<'_>,
    roots: &[PathBuf],
    max_kept: usize,
) -> Result<Vec<ircap_proto::ArtifactEntry>, SinkError> {
    let max_kept = max_kept.min(MAX_KEPT);
    let mut walk_errors = Vec::new();
    let mut candidates = list_candidates(roots, &ctx.blocking, &mut walk_errors);
    candidates.sort_by(|a, b| a.path.cmp(&b.path));
    let kinds: Vec<Option<&'static str>> = candidates
        .iter()
        .map(|c| peek_compression(c, &ctx.options.protected))
        .collect();
    let plans = plan(
        &candidates,
        ctx.options.logs_since_time,
        ctx.options.logs_max_bytes,
        max_kept,
        |i| kinds.get(i).copied().flatten().is_some(),
        |i| {
            candidates
                .get(i)
                .is_some_and(|c| ctx.options.protected.contains_id(c.dev, c.inode))
        },
    );
    // Cuts by count are the capture's, not just the index's: partial.
    let past_limit = plans
        .iter()
        .filter(|p| **p == Plan::Skip(PAST_MAX_KEPT))
        .count();
    if past_limit > 0 {
        ctx.dropped.push(
            "logs",
            format!(
                "{past_limit} log files left out: at most {max_kept} fit the capture's artifact limit, newest first (each is listed in log_files)"
            ),
        );
    }
    if let Some(e) = walk_errors.iter().find(|e| e.starts_with(TOO_MANY)) {
        ctx.dropped.push("logs", e.clone());
    }
    let mut index = JsonlWriter::open(ctx.sink, "log_files", "logs")?;
    for e in walk_errors {
        index.error(e);
    }
    let mut entries = Vec::new();
    for (n, ((c, p), kind)) in candidates.iter().zip(&plans).zip(&kinds).enumerate() {
        let path_text = HostText::new(c.path.as_os_str().as_bytes());
        let mut row = LogFileRecord {
            path: path_text.text,
            path_b64: path_text.b64,
            size: c.size,
            mtime: timefmt::rfc3339(c.mtime),
            inode: c.inode,
            included: false,
            reason: String::new(),
            artifact: None,
            kept_from_offset: 0,
            kept_bytes: 0,
            sha256: None,
            compression: *kind,
        };
        match p {
            Plan::Skip(why) => row.reason = (*why).to_owned(),
            Plan::Keep { from } => match copy_log(ctx, n, c, *from, *kind) {
                // The output filled up: this file is dropped, the files
                // already stored are kept.
                Err(err @ SinkError::Io { .. }) if ctx.sink.drop_unfinished() => {
                    let why = format!("not stored, dropped: {err}");
                    ctx.dropped
                        .push(&format!("logs ({})", row.path), why.clone());
                    index.error(why.clone());
                    row.reason = why;
                }
                Err(err) => return Err(err),
                Ok(Err(e)) => {
                    index.error(e.clone());
                    row.reason = e;
                }
                Ok(Ok(entry)) => {
                    row.included = true;
                    row.reason = if *from > 0 {
                        "newest bytes only: --logs-max-bytes budget".into()
                    } else {
                        "modified since --logs-since".into()
                    };
                    row.artifact = Some(entry.name.clone());
                    row.kept_from_offset = *from;
                    row.kept_bytes = entry.size_uncompressed;
                    row.sha256 = Some(entry.sha256_uncompressed.clone());
                    entries.push(entry);
                }
            },
        }
        index.write(&row)?;
    }
    entries.push(index.finish()?);
    Ok(entries)
}

/// Copies one file's bytes `[from, size at listing)` into its own artifact.
/// The outer `Result` is the sink's; the inner one is the host file's.
fn copy_log(
    ctx: &Context<'_>,
    n: usize,
    c: &Candidate,
    from: u64,
    kind: Option<&'static str>,
) -> Result<Result<ircap_proto::ArtifactEntry, String>, SinkError> {
    let mut file = match fsread::open_listed(&c.path, c.dev, c.inode, &ctx.options.protected) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if from > 0
        && let Err(e) = file.seek(SeekFrom::Start(from))
    {
        return Ok(Err(format!("{}: {e}", c.path.display())));
    }
    let base = sanitize_component(
        c.path.file_name().map(|s| s.as_bytes()).unwrap_or(b"log"),
        80,
    );
    let (name, store, content_type) = match kind {
        Some(k) => (
            format!("logs/{n:05}-{base}"),
            Store::Identity,
            compressed_type(k),
        ),
        None => (
            format!("logs/{n:05}-{base}.gz"),
            Store::Gzip(1),
            "application/octet-stream",
        ),
    };
    let name = ArtifactName::parse(&name).map_err(|e| {
        SinkError::io(
            format!("log artifact name {name}"),
            std::io::Error::other(e),
        )
    })?;
    let mut stream = ArtifactStream::open(ctx.sink, name, "logs", content_type, store)?;
    // Active logs grow while we read: keep exactly the bytes that existed
    // when the file was listed, so the index's size is what was captured.
    stream.copy_from(&mut file.take(c.size - from), &c.path, |_| {})?;
    if stream.content_bytes() < c.size - from {
        stream.errors.push(format!(
            "{}: shrank while being read ({} of {} bytes)",
            c.path.display(),
            stream.content_bytes(),
            c.size - from
        ));
    }
    Ok(Ok(stream.finish(None)?))
}

fn compressed_type(kind: &str) -> &'static str {
    match kind {
        "gzip" => "application/gzip",
        "xz" => "application/x-xz",
        "bzip2" => "application/x-bzip2",
        _ => "application/zstd",
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn cand(name: &str, size: u64, mtime: u64) -> Candidate {
        Candidate {
            path: PathBuf::from(name),
            size,
            mtime: at(mtime),
            inode: 1,
            dev: 1,
        }
    }

    #[test]
    fn plan_keeps_newest_within_budget_and_tails_plain_files() {
        let c = [
            cand("old", 10, 100),
            cand("new", 50, 1000),
            cand("mid", 80, 900),
            cand("midgz", 30, 950),
        ];
        // Budget 70: new (50) fits, midgz (30, compressed) does not fit in
        // the 20 left and cannot be tailed, mid keeps its last 20 bytes.
        let p = plan(&c, at(500), 70, MAX_KEPT, |i| i == 3, |_| false);
        assert_eq!(p[0], Plan::Skip("modified before --logs-since"));
        assert_eq!(p[1], Plan::Keep { from: 0 });
        assert_eq!(p[3], Plan::Skip("--logs-max-bytes budget spent"));
        assert_eq!(p[2], Plan::Keep { from: 60 });
    }

    #[test]
    fn plan_keeps_at_most_max_kept_files_newest_first() {
        let c: Vec<_> = (0..MAX_KEPT + 3)
            .map(|i| cand(&format!("f{i}"), 1, 1000 + i as u64))
            .collect();
        let p = plan(&c, at(0), u64::MAX, MAX_KEPT, |_| false, |_| false);
        let kept = p.iter().filter(|p| **p == Plan::Keep { from: 0 }).count();
        assert_eq!(kept, MAX_KEPT);
        // The oldest three are the ones left out.
        for slot in p.iter().take(3) {
            assert_eq!(*slot, Plan::Skip(PAST_MAX_KEPT));
        }
        assert_eq!(p[3], Plan::Keep { from: 0 });
        assert_eq!(TOO_MANY, format!("more than {MAX_FILES} log files"));
        // What the capture's other artifacts left: fewer, still newest.
        let p = plan(&c, at(0), u64::MAX, 10, |_| false, |_| false);
        assert_eq!(
            p.iter().filter(|p| **p == Plan::Keep { from: 0 }).count(),
            10
        );
        assert_eq!(p[MAX_KEPT + 2], Plan::Keep { from: 0 });
        assert_eq!(p[MAX_KEPT - 8], Plan::Skip(PAST_MAX_KEPT));
    }

    #[test]
    fn magic_bytes() {
        assert_eq!(compression(&[0x1f, 0x8b, 8]), Some("gzip"));
        assert_eq!(compression(b"BZh9"), Some("bzip2"));
        assert_eq!(compression(b"Nov 23 "), None);
        assert_eq!(compression(b""), None);
    }
}
