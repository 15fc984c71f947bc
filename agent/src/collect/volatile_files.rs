//! The `volatile_files` table: a listing of the directories where
//! attackers stage tools and where memory-backed files live (`/tmp`,
//! `/var/tmp`, `/dev/shm`, `/run/user`), with the SHA-256 and an ELF check
//! of small regular files.
//!
//! The walk changes as little as the kernel allows:
//! - symlinks are never followed (`lstat`; the target is recorded);
//! - directories are listed and files read with `O_NOATIME` where the
//!   kernel allows it (owner or `CAP_FOWNER`), so neither listing nor
//!   hashing moves access times. Reading a symlink's target may still
//!   update the link's own access time: Linux has no no-atime `readlink`;
//! - files are opened with `O_NOFOLLOW | O_NONBLOCK` and checked to be the
//!   regular file that was listed (same device and inode), so a FIFO or a
//!   symlink swapped in after listing can neither block nor redirect the
//!   read.
//!
//! It stays on each start directory's file system, except for
//! memory-backed mounts below it (tmpfs, ramfs, such as `/run/user/<uid>`),
//! which are what this artifact is about. Other mount points are recorded
//! with `not_descended: "other_filesystem"`, not entered.
//!
//! Limits: [`MAX_DEPTH`] levels below each start directory,
//! [`MAX_ENTRIES`] entries per start directory (an error says where the
//! walk stopped), content read only for files of at most
//! [`HASH_MAX_BYTES`] (larger ones get the ELF check from their first four
//! bytes, no hash).

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use super::accounts::Accounts;
use super::blocking_fs::BlockingMounts;
use super::fsread::{self, ReadError};
use super::{Context, Roots};
use crate::artifact::JsonlWriter;
use crate::host_text::HostText;
use crate::protected::Protected;
use crate::sink::SinkError;
use crate::timefmt;

/// Deepest level listed below a start directory.
pub const MAX_DEPTH: u32 = 16;
/// Most entries listed per start directory.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest file hashed.
pub const HASH_MAX_BYTES: u64 = 1 << 20;
/// `RAMFS_MAGIC` from `linux/magic.h` (not in libc).
const RAMFS_MAGIC: u64 = 0x8584_58f6;
/// Bytes asked of each `getdents64` call.
const DIRENT_BUF: usize = 64 << 10;

/// Total bytes hashed across all volatile files of one capture: a `/tmp`
/// stuffed with junk must not stall the capture.
pub const HASH_BUDGET_BYTES: u64 = 64 << 20;

/// Wall time the whole listing may take: an attacker-filled `/tmp` must
/// not make every capture as slow as the attacker likes. A cut is recorded
/// (where the walk stopped) and makes the capture partial.
pub const TIME_BUDGET: Duration = Duration::from_secs(5);

/// Entries in one directory from which they are inspected on worker
/// threads (fewer cost more in threads than they save).
const PARALLEL_FROM: usize = 256;

/// Inspected entries held ahead of the writer, at most.
const HELD_BYTES: u64 = 1 << 20;

/// Bounds of one walk.
#[derive(Debug)]
pub struct Limits {
    /// Deepest level listed (the start directory is level 0).
    pub max_depth: u32,
    /// Most entries per start directory, itself included.
    pub max_entries: usize,
    /// Largest regular file hashed.
    pub hash_max_bytes: u64,
    /// Bytes that may still be hashed (spent as files are hashed).
    pub hash_budget: AtomicU64,
    /// Files never read (the agent's own secrets).
    pub protected: Protected,
    /// No entry is listed after this instant.
    pub until: std::time::Instant,
    /// Set when a limit cut the listing short.
    pub cut: AtomicBool,
    /// Mount points of file systems that can block: listed, never touched.
    pub blocking: BlockingMounts,
    /// Threads that inspect the entries of a large directory.
    pub threads: usize,
}

impl Limits {
    /// The largest size `content` may hash for a file of `len` bytes:
    /// `hash_max_bytes` when the budget allows (and then spends it), else 0.
    fn hash_allowance(&self, len: u64) -> u64 {
        let spent = len <= self.hash_max_bytes
            && self
                .hash_budget
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    left.checked_sub(len)
                })
                .is_ok();
        if spent { self.hash_max_bytes } else { 0 }
    }

    /// Whether the listing must stop now (the time budget is spent).
    fn out_of_time(&self) -> bool {
        std::time::Instant::now() >= self.until
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH,
            max_entries: MAX_ENTRIES,
            hash_max_bytes: HASH_MAX_BYTES,
            hash_budget: AtomicU64::new(HASH_BUDGET_BYTES),
            protected: Protected::default(),
            until: std::time::Instant::now() + TIME_BUDGET,
            cut: AtomicBool::new(false),
            blocking: BlockingMounts::default(),
            threads: 1,
        }
    }
}

/// One record of `volatile_files.jsonl.gz`.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct FileRecord {
    /// The start directory this entry was found under.
    pub root: String,
    /// Full path.
    pub path: String,
    /// Exact path bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_b64: Option<String>,
    /// Levels below `root` (0 for `root` itself).
    pub depth: u32,
    /// `file`, `dir`, `symlink`, `socket`, `fifo`, `char`, `block` or
    /// `unknown`.
    pub file_type: &'static str,
    /// Name starts with a dot.
    pub hidden: bool,
    /// Size in bytes (`st_size`).
    pub size: u64,
    /// Permission and special bits, octal (`"0644"`, `"1777"`, `"4755"`).
    pub mode: String,
    /// Set-user-id bit.
    pub setuid: bool,
    /// Set-group-id bit.
    pub setgid: bool,
    /// Sticky bit.
    pub sticky: bool,
    /// A regular file with any execute bit.
    pub executable: bool,
    /// Owner uid.
    pub uid: u32,
    /// Owner name in the host's passwd.
    pub user: Option<String>,
    /// Group gid.
    pub gid: u32,
    /// Group name in the host's group file.
    pub group: Option<String>,
    /// `major:minor` of the file system holding it.
    pub device: String,
    /// Inode number.
    pub inode: u64,
    /// Hard link count.
    pub nlink: u64,
    /// Device number for `char` and `block` files.
    pub rdev: Option<String>,
    /// Access time, RFC 3339 UTC.
    pub atime: String,
    /// Modification time.
    pub mtime: String,
    /// Status change time.
    pub ctime: String,
    /// Birth time, when the file system records it.
    pub btime: Option<String>,
    /// Target of a symlink (never followed).
    pub symlink_target: Option<String>,
    /// Exact target bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target_b64: Option<String>,
    /// SHA-256 of a regular file of at most 1 MiB.
    pub sha256: Option<String>,
    /// Regular file starting with the ELF magic (`None` when not read).
    pub is_elf: Option<bool>,
    /// Why a small regular file has no `sha256`.
    pub hash_skipped: Option<&'static str>,
    /// A directory on another file system than its parent.
    pub mount_point: bool,
    /// Why a directory was not entered (`depth_limit`,
    /// `other_filesystem`), if it was not.
    pub not_descended: Option<&'static str>,
}

/// The host's volatile directories: `/tmp`, `/var/tmp` and `/dev/shm`
/// (no [`Roots`] field covers them) and `<run>/user`.
#[must_use]
pub fn host_dirs(roots: &Roots) -> Vec<PathBuf> {
    vec![
        PathBuf::from("/tmp"),
        PathBuf::from("/var/tmp"),
        PathBuf::from("/dev/shm"),
        roots.run.join("user"),
    ]
}

fn file_type(meta: &Metadata) -> &'static str {
    let ft = meta.file_type();
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_char_device() {
        "char"
    } else if ft.is_block_device() {
        "block"
    } else {
        "unknown"
    }
}

/// `major:minor` of a Linux `dev_t`.
fn dev_string(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & 0xffff_f000);
    let minor = (dev & 0xff) | ((dev >> 12) & 0xffff_ff00);
    format!("{major}:{minor}")
}

fn timestamp(secs: i64, nsec: i64) -> String {
    match (u64::try_from(secs), u32::try_from(nsec)) {
        (Ok(s), Ok(n)) if n < 1_000_000_000 => timefmt::rfc3339(UNIX_EPOCH + Duration::new(s, n)),
        _ => timefmt::from_unix_secs(secs),
    }
}

/// The metadata part of a record (no content read).
fn describe(
    path: &Path,
    root: &str,
    depth: u32,
    meta: &Metadata,
    accounts: &Accounts,
) -> FileRecord {
    let text = HostText::new(path.as_os_str().as_bytes());
    let mode = meta.mode();
    let kind = file_type(meta);
    FileRecord {
        root: root.to_owned(),
        path: text.text,
        path_b64: text.b64,
        depth,
        file_type: kind,
        hidden: path
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(b".")),
        size: meta.size(),
        mode: format!("{:04o}", mode & 0o7777),
        setuid: mode & 0o4000 != 0,
        setgid: mode & 0o2000 != 0,
        sticky: mode & 0o1000 != 0,
        executable: kind == "file" && mode & 0o111 != 0,
        uid: meta.uid(),
        user: accounts.user(meta.uid()),
        gid: meta.gid(),
        group: accounts.group(meta.gid()),
        device: dev_string(meta.dev()),
        inode: meta.ino(),
        nlink: meta.nlink(),
        rdev: matches!(kind, "char" | "block").then(|| dev_string(meta.rdev())),
        atime: timestamp(meta.atime(), meta.atime_nsec()),
        mtime: timestamp(meta.mtime(), meta.mtime_nsec()),
        ctime: timestamp(meta.ctime(), meta.ctime_nsec()),
        // Some file systems report a zero birth time for inodes they made
        // before recording it: that is "unknown", not 1970.
        btime: meta
            .created()
            .ok()
            .filter(|t| *t != UNIX_EPOCH)
            .map(timefmt::rfc3339),
        ..FileRecord::default()
    }
}

/// SHA-256 (files of at most `max` bytes) and ELF check of a listed
/// regular file, from one read.
fn content(
    path: &Path,
    listed: &Metadata,
    max: u64,
    protected: &Protected,
) -> Result<(Option<String>, bool), String> {
    let file = fsread::open_listed(path, listed.dev(), listed.ino(), protected)
        .map_err(|e| e.to_string())?;
    let small = listed.len() <= max;
    let want = if small { max.saturating_add(1) } else { 4 };
    let mut buf = Vec::new();
    file.take(want)
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::from_io(path, e).to_string())?;
    let is_elf = buf.starts_with(b"\x7fELF");
    // A file that grew past the limit since it was listed is not hashed.
    let sha = (small && buf.len() as u64 <= max).then(|| ircap_proto::hashing::sha256_hex(&buf));
    Ok((sha, is_elf))
}

/// Names in a `getdents64` buffer, without `.` and `..`. Each record is
/// `d_ino: u64, d_off: i64, d_reclen: u16, d_type: u8, d_name` (NUL
/// terminated, padded to `d_reclen`).
fn parse_dirents(buf: &[u8]) -> Vec<&[u8]> {
    let mut names = Vec::new();
    let mut pos = 0usize;
    while let Some(len) = pos
        .checked_add(16)
        .and_then(|at| buf.get(at..at + 2))
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
    {
        let reclen = usize::from(u16::from_ne_bytes(len));
        // Header plus at least the terminating NUL; anything shorter is
        // corrupt and would loop forever.
        if reclen < 20 {
            break;
        }
        let Some(name) = pos
            .checked_add(reclen)
            .and_then(|end| buf.get(pos + 19..end))
        else {
            break;
        };
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if name != b"." && name != b".." {
            names.push(name);
        }
        pos += reclen;
    }
    names
}

/// Lists at most `max` names of `dir` through an `O_NOATIME` descriptor
/// (`std::fs::read_dir` would move the directory's access time).
fn list_dir(dir: &Path, max: usize) -> io::Result<Vec<Vec<u8>>> {
    let fd = fsread::open_noatime_with(dir, libc::O_DIRECTORY | libc::O_NOFOLLOW)?;
    let mut buf = vec![0u8; DIRENT_BUF];
    let mut names = Vec::new();
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the
        // whole call and `fd` is an open directory descriptor.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Ok(names);
        }
        for name in parse_dirents(buf.get(..n).unwrap_or_default()) {
            if names.len() >= max {
                return Ok(names);
            }
            names.push(name.to_vec());
        }
    }
}

/// Memory-backed file systems, entered even when they are mount points.
fn is_memory_fs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| {
        s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC
            || u64::try_from(s.filesystem_type().0).ok() == Some(RAMFS_MAGIC)
    })
}

/// Why a directory at `depth` is not entered, or `None` to enter it.
fn skip_reason(
    parent_dev: u64,
    dev: u64,
    depth: u32,
    max_depth: u32,
    memory_fs: impl FnOnce() -> bool,
) -> Option<&'static str> {
    if depth >= max_depth {
        Some("depth_limit")
    } else if dev != parent_dev && !memory_fs() {
        Some("other_filesystem")
    } else {
        None
    }
}

/// Fills in what only reading the entry tells: symlink target, hash, ELF.
fn inspect(
    path: &Path,
    meta: &Metadata,
    limits: &Limits,
    rec: &mut FileRecord,
) -> Result<(), String> {
    if meta.file_type().is_symlink() {
        let target = fsread::read_link(path).map_err(|e| e.to_string())?;
        let text = HostText::new(&target);
        rec.symlink_target = Some(text.text);
        rec.symlink_target_b64 = text.b64;
    } else if meta.is_file() {
        let max = limits.hash_allowance(meta.len());
        let (sha, is_elf) = content(path, meta, max, &limits.protected)?;
        if sha.is_none() && meta.len() <= limits.hash_max_bytes && max == 0 {
            rec.hash_skipped = Some("volatile-file hash budget spent");
        }
        rec.sha256 = sha;
        rec.is_elf = Some(is_elf);
    }
    Ok(())
}

/// A mount point of a file system that can block, known from mountinfo
/// only: nothing is asked of it, not even `lstat`.
fn blocking_record(path: &Path, root: &str, depth: u32, fs_type: &str) -> FileRecord {
    let text = HostText::new(path.as_os_str().as_bytes());
    FileRecord {
        root: root.to_owned(),
        path: text.text,
        path_b64: text.b64,
        depth,
        file_type: "dir",
        mount_point: true,
        not_descended: Some("blocking_filesystem"),
        hash_skipped: Some(if fs_type.starts_with("fuse") {
            "fuse file system: not entered (it can block)"
        } else {
            "network file system: not entered (it can block)"
        }),
        ..FileRecord::default()
    }
}

/// Walks one start directory breadth first.
fn walk<E>(
    root: &Path,
    accounts: &Accounts,
    limits: &Limits,
    emit: &mut impl FnMut(Result<FileRecord, String>) -> Result<(), E>,
) -> Result<(), E> {
    let root_name = root.display().to_string();
    if let Some(fs_type) = limits.blocking.at(root) {
        return emit(Ok(blocking_record(root, &root_name, 0, fs_type)));
    }
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) => {
            let e = ReadError::from_io(root, e);
            if e.is_gone() {
                tracing::debug!(path = %root_name, "Absent, skipped");
                return Ok(());
            }
            return emit(Err(e.to_string()));
        }
    };
    let mut rec = describe(root, &root_name, 0, &meta, accounts);
    if let Err(e) = inspect(root, &meta, limits, &mut rec) {
        emit(Err(e))?;
    }
    let mut queue = VecDeque::new();
    if meta.is_dir() {
        queue.push_back((root.to_path_buf(), 0u32, meta.dev()));
    }
    emit(Ok(rec))?;
    let mut count = 1usize;

    while let Some((dir, depth, dir_dev)) = queue.pop_front() {
        // One name past the budget tells that the limit was reached.
        let budget = limits.max_entries.saturating_sub(count).saturating_add(1);
        let mut names = match list_dir(&dir, budget) {
            Ok(n) => n,
            Err(e) => {
                emit(Err(ReadError::from_io(&dir, e).to_string()))?;
                continue;
            }
        };
        names.sort_unstable();
        let room = limits.max_entries.saturating_sub(count);
        let over = names.len() > room;
        names.truncate(room);
        // Entries are inspected on worker threads where a directory is
        // large enough to pay for them, and emitted in name order.
        let threads = if names.len() >= PARALLEL_FROM {
            limits.threads
        } else {
            1
        };
        let child_depth = depth + 1;
        let listed = super::bounded_ordered(
            &names,
            threads,
            HELD_BYTES,
            |name| {
                let path = dir.join(OsStr::from_bytes(name));
                // Past the time budget nothing more is asked of the host.
                (!limits.out_of_time())
                    .then(|| entry(path, &root_name, child_depth, dir_dev, accounts, limits))
            },
            |e| e.as_ref().map_or(0, Entry::weight),
            |_, e| {
                let Some(e) = e.filter(|_| !limits.out_of_time()) else {
                    return Err(Stop::Time);
                };
                count += 1;
                if let Some(error) = e.error {
                    emit(Err(error)).map_err(Stop::Emit)?;
                }
                if let Some(rec) = e.record {
                    emit(Ok(rec)).map_err(Stop::Emit)?;
                }
                if let Some(next) = e.descend {
                    queue.push_back(next);
                }
                Ok(())
            },
        );
        match listed {
            Ok(()) => {}
            Err(Stop::Emit(e)) => return Err(e),
            Err(Stop::Time) => {
                limits.cut.store(true, Ordering::Relaxed);
                return emit(Err(format!(
                    "{root_name}: stopped at the time budget of {}s after {count} entries; the rest of the tree (from {}) is not listed",
                    TIME_BUDGET.as_secs(),
                    dir.display()
                )));
            }
        }
        if over {
            limits.cut.store(true, Ordering::Relaxed);
            return emit(Err(format!(
                "{root_name}: stopped at the limit of {} entries; the rest of the tree is not listed",
                limits.max_entries
            )));
        }
    }
    Ok(())
}

/// Why a directory's listing stopped early.
enum Stop<E> {
    /// `emit` failed.
    Emit(E),
    /// The time budget was spent.
    Time,
}

/// One entry of a directory, inspected: what to emit (in this order) and
/// the directory to descend into, if any.
struct Entry {
    error: Option<String>,
    record: Option<FileRecord>,
    descend: Option<(PathBuf, u32, u64)>,
}

impl Entry {
    /// Bytes held for it, roughly.
    fn weight(&self) -> u64 {
        let record = self.record.as_ref().map_or(0, |r| {
            r.path.len() + r.symlink_target.as_ref().map_or(0, String::len)
        });
        (std::mem::size_of::<Self>() + record + self.error.as_ref().map_or(0, String::len)) as u64
    }
}

/// Inspects the entry `path` of a directory on device `dir_dev`.
fn entry(
    path: PathBuf,
    root_name: &str,
    depth: u32,
    dir_dev: u64,
    accounts: &Accounts,
    limits: &Limits,
) -> Entry {
    if let Some(fs_type) = limits.blocking.at(&path) {
        return Entry {
            error: None,
            record: Some(blocking_record(&path, root_name, depth, fs_type)),
            descend: None,
        };
    }
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) => {
            return Entry {
                error: Some(ReadError::from_io(&path, e).to_string()),
                record: None,
                descend: None,
            };
        }
    };
    let mut rec = describe(&path, root_name, depth, &meta, accounts);
    let error = inspect(&path, &meta, limits, &mut rec).err();
    let mut descend = None;
    if meta.is_dir() {
        rec.mount_point = meta.dev() != dir_dev;
        rec.not_descended = skip_reason(dir_dev, meta.dev(), depth, limits.max_depth, || {
            is_memory_fs(&path)
        });
        if rec.not_descended.is_none() {
            descend = Some((path, depth, meta.dev()));
        }
    }
    Entry {
        error,
        record: Some(rec),
        descend,
    }
}

/// Lists every directory of `dirs` (missing ones are skipped), sending
/// records (`Ok`) and what could not be read (`Err`) to `emit`.
///
/// # Errors
/// Only what `emit` returns.
pub fn collect_dirs<E>(
    dirs: &[PathBuf],
    accounts: &Accounts,
    limits: &Limits,
    emit: &mut impl FnMut(Result<FileRecord, String>) -> Result<(), E>,
) -> Result<(), E> {
    for dir in dirs {
        walk(dir, accounts, limits, emit)?;
    }
    Ok(())
}

/// Writes `volatile_files.jsonl.gz` for [`host_dirs`].
///
/// # Errors
/// [`SinkError`] when the table cannot be stored.
pub fn write(ctx: &Context<'_>) -> Result<Vec<ircap_proto::ArtifactEntry>, SinkError> {
    let mut table = JsonlWriter::open(ctx.sink, "volatile_files", "volatile_files")?;
    let limits = Limits {
        protected: ctx.options.protected.clone(),
        blocking: ctx.blocking.clone(),
        threads: ctx.threads,
        ..Limits::default()
    };
    collect_dirs(
        &host_dirs(ctx.roots),
        ctx.accounts,
        &limits,
        &mut |item| match item {
            Ok(record) => table.write(&record),
            Err(message) => {
                table.error(message);
                Ok(())
            }
        },
    )?;
    if limits.cut.load(Ordering::Relaxed) {
        ctx.dropped.push(
            "volatile_files",
            "listing cut by its entry or time budget; the table's errors say where".into(),
        );
    }
    Ok(vec![table.finish()?])
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::fs::{File, FileTimes, Permissions};
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::os::unix::net::UnixListener;

    use super::*;

    type Items = Vec<Result<FileRecord, String>>;

    fn collect(dirs: &[PathBuf], accounts: &Accounts, limits: &Limits) -> Items {
        let mut out = Vec::new();
        let _ = collect_dirs::<Infallible>(dirs, accounts, limits, &mut |item| {
            out.push(item);
            Ok(())
        });
        out
    }

    fn by_name<'a>(items: &'a Items, name: &str) -> &'a FileRecord {
        items
            .iter()
            .flatten()
            .find(|r| r.path.ends_with(&format!("/{name}")))
            .unwrap_or_else(|| panic!("{name} not listed: {items:?}"))
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn lists_a_fixture_tree() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let etc = tempfile::tempdir()?;
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        fs::write(
            etc.path().join("passwd"),
            format!("me:x:{uid}:{gid}::/:/bin/sh\n"),
        )?;
        fs::write(etc.path().join("group"), format!("us:x:{gid}:\n"))?;
        let accounts = Accounts::load(etc.path());
        let root = dir.path().join("tmp");
        fs::create_dir(&root)?;
        chmod(&root, 0o1777);

        fs::write(root.join("plain.txt"), "hello")?;
        chmod(&root.join("plain.txt"), 0o644);
        fs::write(root.join(".hidden"), "")?;
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        fs::write(root.join("tool"), &elf)?;
        chmod(&root.join("tool"), 0o4755);
        let mut big = elf.clone();
        big.resize(usize::try_from(HASH_MAX_BYTES)? + 1, 7);
        fs::write(root.join("big"), &big)?;
        symlink("/etc/passwd", root.join("link"))?;
        symlink(".", root.join("loop"))?;
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )?;
        let _listener = UnixListener::bind(root.join("sock"))?;
        fs::create_dir_all(root.join("sub/deeper"))?;
        fs::write(root.join("sub/deeper/x"), "x")?;
        fs::write(root.join(OsStr::from_bytes(b"bad\xffname")), "")?;

        let dirs = [root.clone(), dir.path().join("absent")];
        let items = collect(&dirs, &accounts, &Limits::default());
        let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(items.len(), 13);

        let top = items[0].as_ref().unwrap();
        assert_eq!((top.depth, top.file_type), (0, "dir"));
        assert_eq!(top.path, root.display().to_string());
        assert_eq!((top.mode.as_str(), top.sticky), ("1777", true));

        let plain = by_name(&items, "plain.txt");
        assert_eq!(plain.file_type, "file");
        assert_eq!((plain.size, plain.mode.as_str()), (5, "0644"));
        assert_eq!(
            plain.sha256.as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(plain.is_elf, Some(false));
        assert!(!plain.executable && !plain.hidden && !plain.setuid);
        assert_eq!((plain.uid, plain.user.as_deref()), (uid, Some("me")));
        assert_eq!((plain.gid, plain.group.as_deref()), (gid, Some("us")));
        assert_eq!(plain.depth, 1);
        assert_eq!(plain.nlink, 1);
        assert!(plain.mtime.ends_with('Z') && plain.atime.ends_with('Z'));
        assert!(by_name(&items, ".hidden").hidden);

        let tool = by_name(&items, "tool");
        assert_eq!(tool.mode, "4755");
        assert!(tool.setuid && tool.executable);
        assert_eq!(tool.is_elf, Some(true));
        assert_eq!(tool.sha256, Some(ircap_proto::hashing::sha256_hex(&elf)));

        let big = by_name(&items, "big");
        assert_eq!((big.sha256.as_deref(), big.is_elf), (None, Some(true)));
        assert_eq!(big.size, HASH_MAX_BYTES + 1);

        let link = by_name(&items, "link");
        assert_eq!(link.file_type, "symlink");
        assert_eq!(link.symlink_target.as_deref(), Some("/etc/passwd"));
        assert_eq!((link.sha256.as_deref(), link.is_elf), (None, None));
        // A symlink to a directory is not walked into.
        assert_eq!(by_name(&items, "loop").symlink_target.as_deref(), Some("."));
        assert_eq!(by_name(&items, "fifo").file_type, "fifo");
        assert_eq!(by_name(&items, "sock").file_type, "socket");
        assert_eq!(by_name(&items, "x").depth, 3);
        let sub = by_name(&items, "sub");
        assert_eq!(
            (sub.file_type, sub.mount_point, sub.not_descended),
            ("dir", false, None)
        );

        let bad = items
            .iter()
            .flatten()
            .find(|r| r.path_b64.is_some())
            .unwrap();
        assert!(bad.path.ends_with("bad\u{fffd}name"));
        let json = serde_json::to_value(bad)?;
        assert!(json["path_b64"].is_string());
        assert!(json.get("symlink_target_b64").is_none());
        Ok(())
    }

    #[test]
    fn hash_budget_is_shared_across_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        for name in ["a", "b"] {
            fs::write(dir.path().join(name), "12345678")?;
        }
        let limits = Limits {
            hash_budget: AtomicU64::new(10),
            ..Limits::default()
        };
        let items = collect(&[dir.path().to_path_buf()], &Accounts::default(), &limits);
        let files: Vec<&FileRecord> = items
            .iter()
            .flatten()
            .filter(|r| r.file_type == "file")
            .collect();
        assert_eq!(files.len(), 2);
        assert_eq!(files.iter().filter(|r| r.sha256.is_some()).count(), 1);
        let skipped: Vec<_> = files.iter().filter_map(|r| r.hash_skipped).collect();
        assert_eq!(skipped, ["volatile-file hash budget spent"]);
        Ok(())
    }

    #[test]
    fn a_large_directory_on_threads_lists_the_same_in_name_order()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let n = PARALLEL_FROM * 3;
        for i in 0..n {
            fs::write(
                dir.path().join(format!("f{i:05}")),
                format!("content {i:05}"),
            )?;
        }
        fs::create_dir(dir.path().join("sub"))?;
        fs::write(dir.path().join("sub/inner"), "x")?;
        let walk = |threads: usize| {
            let limits = Limits {
                threads,
                ..Limits::default()
            };
            collect(&[dir.path().to_path_buf()], &Accounts::default(), &limits)
        };
        let one = walk(1);
        let two = walk(2);
        assert_eq!(one.len(), n + 3, "root, files, sub and sub/inner");
        assert_eq!(one, two);
        let paths: Vec<&str> = two.iter().flatten().map(|r| r.path.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort_unstable();
        assert_eq!(paths, sorted, "breadth first in name order");
        assert!(
            two.iter()
                .flatten()
                .all(|r| r.file_type != "file" || r.sha256.is_some())
        );
        // The shared hash budget holds across threads: exactly as many
        // files hashed as fit.
        let limits = Limits {
            threads: 2,
            hash_budget: AtomicU64::new(13 * 100),
            ..Limits::default()
        };
        let items = collect(&[dir.path().to_path_buf()], &Accounts::default(), &limits);
        let hashed = items
            .iter()
            .flatten()
            .filter(|r| r.sha256.is_some())
            .count();
        assert_eq!(hashed, 100);
        Ok(())
    }

    #[test]
    fn depth_and_entry_limits() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let deep = dir.path().join("a/b/c/d/e");
        fs::create_dir_all(&deep)?;
        fs::write(deep.join("f"), "")?;
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let root = [dir.path().to_path_buf()];
        let items = collect(&root, &Accounts::default(), &limits);
        let depths: Vec<u32> = items.iter().flatten().map(|r| r.depth).collect();
        assert_eq!(depths, [0, 1, 2, 3]);
        assert_eq!(by_name(&items, "c").not_descended, Some("depth_limit"));

        let flat = tempfile::tempdir()?;
        for i in 0..10 {
            fs::write(flat.path().join(format!("f{i}")), "")?;
        }
        let limits = Limits {
            max_entries: 5,
            ..Limits::default()
        };
        let items = collect(&[flat.path().to_path_buf()], &Accounts::default(), &limits);
        assert_eq!(items.len(), 6);
        assert_eq!(items.iter().flatten().count(), 5);
        let err = items[5].as_ref().unwrap_err();
        assert!(err.contains("limit of 5 entries"), "{err}");
        assert!(limits.cut.load(Ordering::Relaxed));

        // A spent time budget stops the walk at once, saying where.
        let limits = Limits {
            until: std::time::Instant::now(),
            ..Limits::default()
        };
        let items = collect(&[flat.path().to_path_buf()], &Accounts::default(), &limits);
        assert_eq!(
            items.iter().flatten().count(),
            1,
            "only the start directory"
        );
        let err = items.last().unwrap().as_ref().unwrap_err();
        assert!(err.contains("time budget"), "{err}");
        assert!(limits.cut.load(Ordering::Relaxed));
        Ok(())
    }

    #[test]
    fn reading_keeps_access_times() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().join("t");
        fs::create_dir(&root)?;
        let file = root.join("f");
        fs::write(&file, "payload")?;
        // atime before mtime: relatime would update it on any plain read.
        let old = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let newer = UNIX_EPOCH + Duration::from_secs(1_100_000_000);
        let times = FileTimes::new().set_accessed(old).set_modified(newer);
        File::options().write(true).open(&file)?.set_times(times)?;
        File::open(&root)?.set_times(times)?;

        let items = collect(
            std::slice::from_ref(&root),
            &Accounts::default(),
            &Limits::default(),
        );
        assert_eq!(
            by_name(&items, "f").sha256.as_deref().map(str::len),
            Some(64)
        );
        assert_eq!(fs::metadata(&file)?.accessed()?, old);
        assert_eq!(fs::metadata(&root)?.accessed()?, old);
        assert_eq!(by_name(&items, "f").atime, timefmt::rfc3339(old));
        Ok(())
    }

    #[test]
    fn a_swapped_file_is_not_read() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::write(&a, "a")?;
        fs::write(&b, "b")?;
        let listed = fs::symlink_metadata(&a)?;
        let err = content(&b, &listed, HASH_MAX_BYTES, &Protected::default()).unwrap_err();
        assert!(
            err.contains("replaced between listing and reading"),
            "{err}"
        );
        // Listed as a file, now a symlink: O_NOFOLLOW refuses it.
        fs::remove_file(&a)?;
        symlink(&b, &a)?;
        assert!(content(&a, &listed, HASH_MAX_BYTES, &Protected::default()).is_err());
        Ok(())
    }

    #[test]
    fn parses_dirent_buffers() {
        fn dirent(name: &[u8]) -> Vec<u8> {
            let len = (19 + name.len() + 1).div_ceil(8) * 8;
            let mut r = vec![0u8; len];
            r[0..8].copy_from_slice(&7u64.to_ne_bytes());
            r[16..18].copy_from_slice(&u16::try_from(len).unwrap().to_ne_bytes());
            r[18] = 8;
            r[19..19 + name.len()].copy_from_slice(name);
            r
        }
        let mut buf = dirent(b".");
        buf.extend(dirent(b".."));
        buf.extend(dirent(b"a name"));
        buf.extend(dirent(b"a-much-longer-name\xff"));
        assert_eq!(
            parse_dirents(&buf),
            [&b"a name"[..], &b"a-much-longer-name\xff"[..]]
        );
        // Truncated or corrupt buffers end the parse, never panic.
        assert_eq!(parse_dirents(&buf[..buf.len() - 3]).len(), 1);
        let mut bad = dirent(b"x");
        bad[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert!(parse_dirents(&bad).is_empty());
        assert!(parse_dirents(&[]).is_empty());
    }

    #[test]
    fn mount_points_and_depth_decide_descent() {
        let never = || panic!("file system type asked needlessly");
        assert_eq!(skip_reason(1, 1, 3, 16, never), None);
        assert_eq!(skip_reason(1, 1, 16, 16, never), Some("depth_limit"));
        assert_eq!(skip_reason(1, 2, 3, 16, || false), Some("other_filesystem"));
        assert_eq!(skip_reason(1, 2, 3, 16, || true), None);
        assert_eq!(dev_string(0x0803), "8:3");
        // glibc's makedev: 12+20 bits of major, 8+24 bits of minor.
        let makedev = |ma: u64, mi: u64| {
            ((ma & 0xfff) << 8) | ((ma & !0xfff) << 32) | (mi & 0xff) | ((mi & !0xff) << 12)
        };
        assert_eq!(dev_string(makedev(259, 5)), "259:5");
        assert_eq!(dev_string(makedev(4097, 70_000)), "4097:70000");
    }

    #[test]
    fn unreadable_directory_is_an_error() -> Result<(), Box<dyn std::error::Error>> {
        if nix::unistd::geteuid().is_root() {
            // Root reads everything; nothing to check here.
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let locked = dir.path().join("locked");
        fs::create_dir(&locked)?;
        chmod(&locked, 0o000);
        let items = collect(
            &[dir.path().to_path_buf()],
            &Accounts::default(),
            &Limits::default(),
        );
        chmod(&locked, 0o700);
        assert_eq!(items.iter().flatten().count(), 2);
        assert!(
            items
                .iter()
                .any(|i| i.as_ref().is_err_and(|e| e.contains("permission denied")))
        );
        Ok(())
    }

    #[test]
    fn timestamps_before_the_epoch() {
        assert_eq!(timestamp(-1, 0), "1969-12-31T23:59:59Z");
        assert_eq!(timestamp(1, 500_000_000), "1970-01-01T00:00:01.5Z");
    }
}
