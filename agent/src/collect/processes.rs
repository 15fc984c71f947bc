//! The `processes` artifact: one record per process (thread-group leader).
//!
//! One pass over `/proc/<pid>` per process reads everything about it,
//! including its open files; socket inodes found there feed the
//! `connections` artifact, so `/proc/*/fd` is walked exactly once per
//! capture. Executables are hashed once per distinct (device, inode).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use procfs::FromRead;
use serde::Serialize;

use super::Context;
use super::fsread::{self, ReadError};
use super::proc_dir::ProcDir;
use crate::artifact::JsonlWriter;
use crate::host_text::{HostText, text_list};
use crate::sink::SinkError;

/// Environment variables whose values are kept by default: they say how a
/// process was started or redirected and rarely hold secrets.
pub const ENV_ALLOW_LIST: &[&str] = &[
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "LD_DEBUG",
    "PATH",
    "PWD",
    "OLDPWD",
    "HOME",
    "SHELL",
    "USER",
    "LOGNAME",
    "SSH_CONNECTION",
    "SSH_CLIENT",
    "SSH_TTY",
    "SUDO_USER",
    "SUDO_UID",
    "SUDO_GID",
    "SUDO_COMMAND",
    "HISTFILE",
    "HISTSIZE",
    "HISTFILESIZE",
    "PROMPT_COMMAND",
    "TERM",
    "LANG",
    "container",
    "AWS_SSM_COMMAND_ID",
    "INVOCATION_ID",
];

/// Longest command line / environment read per process.
const MAX_CMDLINE: u64 = 4 << 20;
/// Most open files listed per process (all are counted).
const MAX_OPEN_FILES: usize = 20_000;
/// Linux `PF_KTHREAD` in `/proc/PID/stat` flags.
const PF_KTHREAD: u64 = 0x0020_0000;
/// Namespace links read per process: (name, link under `/proc/PID`).
const NAMESPACES: &[(&str, &str)] = &[
    ("cgroup", "ns/cgroup"),
    ("ipc", "ns/ipc"),
    ("mnt", "ns/mnt"),
    ("net", "ns/net"),
    ("pid", "ns/pid"),
    ("pid_for_children", "ns/pid_for_children"),
    ("time", "ns/time"),
    ("user", "ns/user"),
    ("uts", "ns/uts"),
];

/// One open file descriptor.
#[derive(Debug, Clone, Serialize)]
pub struct OpenFile {
    /// Descriptor number.
    pub fd: i32,
    /// `file`, `socket`, `pipe`, `anon_inode`, `device` or `other`.
    pub kind: &'static str,
    /// Link target as the kernel shows it.
    pub target: String,
    /// Exact target bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_b64: Option<String>,
    /// A file that was deleted while open.
    pub deleted: bool,
    /// Socket inode for sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_inode: Option<u64>,
}

/// One environment variable.
#[derive(Debug, Clone, Serialize)]
pub struct EnvVar {
    /// Name (lossy UTF-8).
    pub name: String,
    /// Value, when allowed (see `--full-environ`).
    pub value: Option<String>,
    /// Exact `NAME=value` bytes, base64, when not UTF-8 and the value is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_b64: Option<String>,
}

/// One record of `processes.jsonl.gz`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ProcessRecord {
    pub pid: i32,
    pub ppid: Option<i32>,
    pub tgid: Option<i32>,
    pub pgid: Option<i32>,
    pub sid: Option<i32>,
    pub threads: Option<u64>,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_b64: Option<String>,
    pub state: Option<String>,
    pub kernel_thread: bool,
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_b64: Option<String>,
    pub exe_deleted: bool,
    pub exe_sha256: Option<String>,
    pub exe_size: Option<u64>,
    pub exe_device: Option<u64>,
    pub exe_inode: Option<u64>,
    pub argv: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv_b64: Option<Vec<String>>,
    pub argv_truncated: bool,
    pub environ: Vec<EnvVar>,
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd_b64: Option<String>,
    pub root: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_b64: Option<String>,
    pub uid: Option<u32>,
    pub euid: Option<u32>,
    pub suid: Option<u32>,
    pub fsuid: Option<u32>,
    pub gid: Option<u32>,
    pub egid: Option<u32>,
    pub user: Option<String>,
    pub effective_user: Option<String>,
    pub group: Option<String>,
    pub effective_group: Option<String>,
    /// Audit login uid (`None` when unset).
    pub login_uid: Option<u32>,
    pub login_user: Option<String>,
    /// Audit session id (`None` when unset).
    pub audit_session: Option<u32>,
    pub tty_nr: Option<i64>,
    pub start_time: Option<String>,
    pub start_ticks: Option<u64>,
    pub cgroup: Vec<String>,
    pub container_id: Option<String>,
    pub namespaces: BTreeMap<&'static str, u64>,
    pub cap_effective: Option<String>,
    pub cap_effective_names: Vec<&'static str>,
    pub cap_permitted: Option<String>,
    pub tracer_pid: Option<i32>,
    pub rss_bytes: Option<u64>,
    pub vsz_bytes: Option<u64>,
    pub fd_count: usize,
    pub open_files: Vec<OpenFile>,
    pub open_files_truncated: bool,
    /// This process is the capturing agent itself.
    pub is_agent: bool,
    /// What could not be read about this process.
    pub errors: Vec<String>,
}

/// Fields of `/proc/PID/stat` that we use.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stat {
    pub comm: Vec<u8>,
    pub state: String,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: i64,
    pub flags: u64,
    pub num_threads: u64,
    pub starttime: u64,
    pub vsize: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/PID/stat`. `comm` is taken between the first `(` and the
/// last `)`, so a name holding `)` or spaces cannot shift the fields.
#[must_use]
pub fn parse_stat(raw: &[u8]) -> Option<Stat> {
    let open = raw.iter().position(|&b| b == b'(')?;
    let close = raw.iter().rposition(|&b| b == b')')?;
    let comm = raw.get(open + 1..close)?.to_vec();
    let rest = std::str::from_utf8(raw.get(close + 1..)?).ok()?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<i64>().ok());
    let unum = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some(Stat {
        comm,
        state: (*f.first()?).to_owned(),
        ppid: i32::try_from(num(1)?).ok()?,
        pgrp: i32::try_from(num(2)?).ok()?,
        session: i32::try_from(num(3)?).ok()?,
        tty_nr: num(4)?,
        flags: unum(6)?,
        num_threads: unum(17)?,
        starttime: unum(19)?,
        vsize: unum(20)?,
        rss_pages: u64::try_from(num(21)?.max(0)).ok()?,
    })
}

/// The namespace inode in a link target like `net:[4026531840]`.
#[must_use]
pub fn ns_inode(target: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(target).ok()?;
    s.split_once(":[")?.1.strip_suffix(']')?.parse().ok()
}

/// The container id (64 hex characters) in a cgroup path, if any.
#[must_use]
pub fn container_id(cgroup: &str) -> Option<String> {
    let bytes = cgroup.as_bytes();
    let mut run = 0usize;
    for (i, b) in bytes.iter().enumerate() {
        if b.is_ascii_hexdigit() && !b.is_ascii_uppercase() {
            run += 1;
            let next_is_hex = bytes
                .get(i + 1)
                .is_some_and(|n| n.is_ascii_hexdigit() && !n.is_ascii_uppercase());
            if run == 64 && !next_is_hex {
                return cgroup.get(i + 1 - 64..=i).map(str::to_owned);
            }
        } else {
            run = 0;
        }
    }
    None
}

/// Capability names by bit number.
const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Names of the capabilities set in `mask`.
#[must_use]
pub fn cap_names(mask: u64) -> Vec<&'static str> {
    CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Classifies a `/proc/PID/fd/N` link target.
#[must_use]
pub fn classify_fd(fd: i32, target: &[u8]) -> OpenFile {
    let text = HostText::new(target);
    let bracket = |prefix: &str| {
        text.text
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
    };
    let socket_inode = bracket("socket:[");
    let kind = if socket_inode.is_some() {
        "socket"
    } else if text.text.starts_with("pipe:[") {
        "pipe"
    } else if text.text.starts_with("anon_inode:") {
        "anon_inode"
    } else if text.text.starts_with("/dev/") {
        "device"
    } else if text.text.starts_with('/') {
        "file"
    } else {
        "other"
    };
    let deleted = kind == "file" && target.ends_with(b" (deleted)");
    OpenFile {
        fd,
        kind,
        target: text.text,
        target_b64: text.b64,
        deleted,
        socket_inode,
    }
}

/// Splits `/proc/PID/environ` into variables, keeping values only for
/// the allow-list unless `full` is set.
#[must_use]
pub fn parse_environ(raw: &[u8], full: bool) -> Vec<EnvVar> {
    raw.split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (name, value) = match entry.iter().position(|&b| b == b'=') {
                Some(i) => (entry.get(..i).unwrap_or(entry), entry.get(i + 1..)),
                None => (entry, None),
            };
            let name_text = String::from_utf8_lossy(name).into_owned();
            let keep = full || ENV_ALLOW_LIST.contains(&name_text.as_str());
            let (value, raw_b64) = match (keep, value) {
                (true, Some(v)) => {
                    let t = HostText::new(v);
                    let raw_b64 = std::str::from_utf8(entry)
                        .is_err()
                        .then(|| HostText::new(entry).b64)
                        .flatten();
                    (Some(t.text), raw_b64)
                }
                _ => (None, None),
            };
            EnvVar {
                name: name_text,
                value,
                raw_b64,
            }
        })
        .collect()
}

/// Reads one optional string link like `cwd` or `root`.
fn link_text(
    dir: &ProcDir,
    name: &str,
    errors: &mut Vec<String>,
    kernel_thread: bool,
) -> (Option<String>, Option<String>) {
    match dir.read_link(name) {
        Ok(raw) => {
            let t = HostText::new(&raw);
            (Some(t.text), t.b64)
        }
        Err(e) => {
            if !kernel_thread {
                errors.push(e.to_string());
            }
            (None, None)
        }
    }
}

fn audit_id(dir: &ProcDir, name: &str) -> Option<u32> {
    dir.read_small(name)
        .ok()
        .and_then(|raw| String::from_utf8_lossy(&raw).trim().parse::<u32>().ok())
        .filter(|&v| v != u32::MAX)
}

/// Reads one process. `Err` only when it is gone before its `stat` could
/// be read; anything unreadable later is listed in the record's `errors`.
///
/// # Errors
/// [`ReadError`] when the process's `stat` cannot be read.
pub fn read_process(ctx: &Context<'_>, pid: i32) -> Result<ProcessRecord, ReadError> {
    let dir = ProcDir::open(&ctx.roots.proc, pid)?;
    let raw_stat = dir.read_small("stat")?;
    let stat = parse_stat(&raw_stat).ok_or_else(|| ReadError::Other {
        path: dir.path_of("stat").display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "unparsable stat"),
    })?;
    let mut errors = Vec::new();
    let kernel_thread = stat.flags & PF_KTHREAD != 0;
    let comm = HostText::new(&stat.comm);
    let mut rec = ProcessRecord {
        pid,
        ppid: Some(stat.ppid),
        pgid: Some(stat.pgrp),
        sid: Some(stat.session),
        threads: Some(stat.num_threads),
        comm: comm.text,
        comm_b64: comm.b64,
        state: Some(stat.state.clone()),
        kernel_thread,
        tty_nr: Some(stat.tty_nr),
        start_ticks: Some(stat.starttime),
        start_time: Some(ctx.clock.after_boot(stat.starttime)),
        vsz_bytes: Some(stat.vsize),
        rss_bytes: Some(stat.rss_pages * ctx.clock.page_size),
        is_agent: pid == super::own_task::agent_tgid(),
        ..ProcessRecord::default()
    };

    match dir.read_small("status") {
        Ok(raw) => match procfs::process::Status::from_read(&raw[..]) {
            Ok(st) => {
                // A thread of the agent read by its id has the agent's tgid.
                rec.is_agent |= st.tgid == super::own_task::agent_tgid();
                rec.tgid = Some(st.tgid);
                rec.uid = Some(st.ruid);
                rec.euid = Some(st.euid);
                rec.suid = Some(st.suid);
                rec.fsuid = Some(st.fuid);
                rec.gid = Some(st.rgid);
                rec.egid = Some(st.egid);
                rec.user = ctx.accounts.user(st.ruid);
                rec.effective_user = ctx.accounts.user(st.euid);
                rec.group = ctx.accounts.group(st.rgid);
                rec.effective_group = ctx.accounts.group(st.egid);
                rec.cap_effective = Some(format!("{:016x}", st.capeff));
                rec.cap_effective_names = cap_names(st.capeff);
                rec.cap_permitted = Some(format!("{:016x}", st.capprm));
                rec.tracer_pid = Some(st.tracerpid);
            }
            Err(e) => errors.push(format!("status: {e}")),
        },
        Err(e) => errors.push(e.to_string()),
    }

    // Executable: the link names it (with " (deleted)" when unlinked); the
    // file itself is reached through the link even when deleted.
    let exe_link = dir.path_of("exe");
    match dir.read_link("exe") {
        Ok(raw) => {
            let t = HostText::new(&raw);
            rec.exe = Some(t.text);
            rec.exe_b64 = t.b64;
            let path = std::path::PathBuf::from(std::ffi::OsString::from_vec(raw.clone()));
            let on_blocking = ctx.blocking.containing(&path).map(|(_, t)| t);
            match on_blocking.map_or_else(
                || dir.stat_followed("exe"),
                |fs| {
                    Err(std::io::Error::other(format!(
                        "on a {fs} mount, not read (it can block)"
                    )))
                },
            ) {
                Ok(st) => {
                    rec.exe_deleted = st.st_nlink == 0;
                    rec.exe_size = u64::try_from(st.st_size).ok();
                    rec.exe_device = Some(st.st_dev);
                    rec.exe_inode = Some(st.st_ino);
                }
                Err(e) => {
                    rec.exe_deleted = raw.ends_with(b" (deleted)");
                    errors.push(ReadError::from_io(&exe_link, e).to_string());
                }
            }
        }
        // Kernel threads have no executable; that is not an error.
        Err(_) if kernel_thread => {}
        Err(e) => errors.push(e.to_string()),
    }

    match dir.read("cmdline", MAX_CMDLINE) {
        Ok((raw, truncated)) => {
            let body = raw.strip_suffix(&[0]).unwrap_or(&raw);
            if !body.is_empty() {
                let (argv, argv_b64) = text_list(body.split(|&b| b == 0));
                rec.argv = argv;
                rec.argv_b64 = argv_b64;
            }
            rec.argv_truncated = truncated;
        }
        Err(e) => errors.push(e.to_string()),
    }

    // The agent's own environment and descriptors are not read (see
    // `own_task`); its row says which process it is.
    if !kernel_thread && !rec.is_agent {
        match dir.read("environ", MAX_CMDLINE) {
            Ok((raw, _)) => rec.environ = parse_environ(&raw, ctx.options.full_environ),
            Err(e) => errors.push(e.to_string()),
        }
    }

    (rec.cwd, rec.cwd_b64) = link_text(&dir, "cwd", &mut errors, kernel_thread);
    (rec.root, rec.root_b64) = link_text(&dir, "root", &mut errors, kernel_thread);
    rec.login_uid = audit_id(&dir, "loginuid");
    rec.login_user = rec.login_uid.and_then(|u| ctx.accounts.user(u));
    rec.audit_session = audit_id(&dir, "sessionid");

    match dir.read_small("cgroup") {
        Ok(raw) => {
            let text = String::from_utf8_lossy(&raw);
            rec.cgroup = text.lines().map(str::to_owned).collect();
            rec.container_id = container_id(&text);
        }
        Err(e) => errors.push(e.to_string()),
    }

    for (ns, link) in NAMESPACES {
        if let Ok(target) = dir.read_link(link)
            && let Some(inode) = ns_inode(&target)
        {
            rec.namespaces.insert(*ns, inode);
        }
    }

    if !rec.is_agent {
        read_fds(&dir, &mut rec, &mut errors);
    }
    rec.errors = errors;
    Ok(rec)
}

fn read_fds(dir: &ProcDir, rec: &mut ProcessRecord, errors: &mut Vec<String>) {
    let names = match dir.list("fd") {
        Ok(names) => names,
        Err(e) => {
            if !rec.kernel_thread {
                errors.push(e.to_string());
            }
            return;
        }
    };
    for name in names {
        let Some(fd) = std::str::from_utf8(&name)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        rec.fd_count += 1;
        if rec.open_files.len() >= MAX_OPEN_FILES {
            rec.open_files_truncated = true;
            continue;
        }
        // A descriptor closed between listing and readlink is not an error.
        if let Ok(target) = dir.read_link(&format!("fd/{fd}")) {
            rec.open_files.push(classify_fd(fd, &target));
        }
    }
    rec.open_files.sort_by_key(|f| f.fd);
}

/// The process ids listed in `/proc`, ascending.
///
/// # Errors
/// [`ReadError`] when `/proc` cannot be listed.
pub fn list_pids(proc_root: &Path) -> Result<Vec<i32>, ReadError> {
    let entries = std::fs::read_dir(proc_root).map_err(|e| ReadError::from_io(proc_root, e))?;
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// What the rest of the capture needs from the process pass: compact
/// joins, not the records (those are written as they are read), so memory
/// does not grow with the records' size.
#[derive(Debug, Default)]
pub struct ProcessIndex {
    /// (pid, comm) of every user-space process, for the memory maps pass.
    pub map_targets: Vec<(i32, String)>,
    /// socket inode -> pids holding it open.
    sockets: HashMap<u64, Vec<i32>>,
    /// comm of each pid that holds a socket.
    socket_comms: HashMap<i32, String>,
    /// Processes read.
    pub records: u64,
}

impl ProcessIndex {
    /// The (pid, comm) of every process holding socket `inode`.
    pub fn socket_owners(&self, inode: u64) -> impl Iterator<Item = (i32, &str)> {
        self.sockets
            .get(&inode)
            .into_iter()
            .flatten()
            .map(|pid| (*pid, self.socket_comms.get(pid).map_or("", String::as_str)))
    }

    fn add(&mut self, pid: i32, comm: &str, kernel_thread: bool, sockets: &[u64]) {
        self.records += 1;
        if !kernel_thread {
            self.map_targets.push((pid, comm.to_owned()));
        }
        for inode in sockets {
            let list = self.sockets.entry(*inode).or_default();
            if !list.contains(&pid) {
                list.push(pid);
            }
        }
        if !sockets.is_empty() {
            self.socket_comms.insert(pid, comm.to_owned());
        }
    }
}

/// One process as a worker hands it to the writer: its serialised line and
/// what the index keeps.
struct Scanned {
    line: Vec<u8>,
    pid: i32,
    comm: String,
    kernel_thread: bool,
    sockets: Vec<u64>,
    errors: Vec<String>,
}

impl Scanned {
    fn bytes(&self) -> u64 {
        (self.line.len()
            + self.comm.len()
            + self.sockets.len() * 8
            + self.errors.iter().map(String::len).sum::<usize>()) as u64
    }
}

/// Serialised process records held at once between the workers and the
/// writer (plus one being read per worker).
const SCAN_BYTES: u64 = 1 << 20;

/// Digests of executables already hashed, by (device, inode): each
/// distinct file is read once per capture.
#[derive(Default)]
struct ExeHashes(std::sync::Mutex<HashMap<(u64, u64), Result<String, String>>>);

impl ExeHashes {
    fn get(&self, key: (u64, u64)) -> Option<Result<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .cloned()
    }

    /// The digest of the file behind `path` (`/proc/PID/exe`, which
    /// reaches deleted binaries). A file over the limit is remembered as
    /// such; a process that could not be read through is not, so the next
    /// process running the same file is tried.
    fn hash(&self, key: (u64, u64), path: &Path, max: u64) -> Result<String, String> {
        if let Some(known) = self.get(key) {
            return known;
        }
        let (result, lasting) = hash_file(path, max);
        if result.is_ok() || lasting {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(key, result.clone());
        }
        result
    }
}

/// Hashes one executable; the flag says whether a failure would be the
/// same through any other process (the file is too big).
fn hash_file(path: &Path, max: u64) -> (Result<String, String>, bool) {
    let file = match fsread::open_regular(path, true) {
        Ok(f) => f,
        Err(e) => return (Err(e.to_string()), false),
    };
    if let Ok(md) = file.metadata()
        && md.len() > max
    {
        return (
            Err(format!(
                "{} bytes is above the {max}-byte hashing limit",
                md.len()
            )),
            true,
        );
    }
    match ircap_proto::hashing::hash_reader(std::io::BufReader::with_capacity(1 << 18, file)) {
        Ok(d) => (Ok(d.sha256), true),
        Err(e) => (Err(ReadError::from_io(path, e).to_string()), false),
    }
}

/// Reads, hashes and (when `serialise`) encodes one process.
fn scan_one(
    ctx: &Context<'_>,
    hashes: &ExeHashes,
    pid: i32,
    serialise: bool,
) -> Result<Scanned, String> {
    let mut rec = match read_process(ctx, pid) {
        Ok(rec) => rec,
        Err(e) if e.is_gone() => return Err(format!("pid {pid} exited before it could be read")),
        Err(e) => return Err(format!("pid {pid}: {e}")),
    };
    if let (Some(dev), Some(ino)) = (rec.exe_device, rec.exe_inode) {
        let path = ctx.roots.proc.join(pid.to_string()).join("exe");
        match hashes.hash((dev, ino), &path, ctx.options.exe_hash_max_bytes) {
            Ok(sha) => rec.exe_sha256 = Some(sha),
            Err(e) => rec.errors.push(format!("exe hash: {e}")),
        }
    }
    let mut line = Vec::new();
    if serialise {
        match serde_json::to_writer(&mut line, &rec) {
            Ok(()) => line.push(b'\n'),
            Err(e) => {
                line.clear();
                rec.errors.push(format!("record not encodable: {e}"));
            }
        }
    }
    Ok(Scanned {
        line,
        pid,
        comm: rec.comm,
        kernel_thread: rec.kernel_thread,
        sockets: rec
            .open_files
            .iter()
            .filter_map(|f| f.socket_inode)
            .collect(),
        errors: rec.errors,
    })
}

/// Reads every process, in parallel but bounded by bytes, writing each
/// record to `processes.jsonl.gz` as it is read when `write` is set (in
/// pid order; each distinct executable hashed once). Returns the compact
/// index the socket owners and the memory maps need, and the table's
/// outcome when it was written: a table that could not be stored does not
/// stop the pass, whose index the other tables still need.
#[must_use]
pub fn scan(
    ctx: &Context<'_>,
    pids: &[i32],
    write: bool,
) -> (
    ProcessIndex,
    Option<Result<ircap_proto::ArtifactEntry, SinkError>>,
) {
    let hashes = ExeHashes::default();
    let mut index = ProcessIndex::default();
    let mut table = write.then(|| JsonlWriter::open(ctx.sink, "processes", "processes"));
    let _ = super::bounded_ordered(
        pids,
        ctx.threads,
        SCAN_BYTES,
        |&pid| scan_one(ctx, &hashes, pid, write),
        |r| r.as_ref().map_or(0, Scanned::bytes),
        |_, item| {
            let scanned = match item {
                Ok(s) => s,
                Err(lost) => {
                    if let Some(Ok(t)) = &mut table {
                        t.error(lost);
                    }
                    return Ok::<(), std::convert::Infallible>(());
                }
            };
            index.add(
                scanned.pid,
                &scanned.comm,
                scanned.kernel_thread,
                &scanned.sockets,
            );
            if let Some(Ok(t)) = &mut table {
                for e in &scanned.errors {
                    t.error(format!("pid {}: {e}", scanned.pid));
                }
                if !scanned.line.is_empty()
                    && let Err(e) = t.write_lines(&scanned.line, 1)
                {
                    table = Some(Err(e));
                }
            }
            Ok(())
        },
    );
    (index, table.map(|t| t.and_then(JsonlWriter::finish)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_hostile_comm() {
        let raw = b"42 (a) b\n(c)) S 1 42 42 34816 42 4194560 1 0 0 0 0 0 0 0 20 0 3 0 12345 1000000 250 18446744073709551615";
        let s = parse_stat(raw).unwrap();
        assert_eq!(s.comm, b"a) b\n(c)");
        assert_eq!(s.state, "S");
        assert_eq!(s.ppid, 1);
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.starttime, 12345);
        assert_eq!(s.vsize, 1_000_000);
        assert_eq!(s.rss_pages, 250);
        assert!(parse_stat(b"garbage").is_none());
        assert!(parse_stat(b"1 (x) S").is_none());
    }

    #[test]
    fn container_ids() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(
            container_id(&format!("0::/system.slice/docker-{id}.scope")).as_deref(),
            Some(id.as_str())
        );
        assert_eq!(container_id("0::/user.slice/session-1.scope"), None);
        assert_eq!(container_id(&format!("0::/x/{id}0")), None);
    }

    #[test]
    fn fd_kinds() {
        let s = classify_fd(3, b"socket:[12345]");
        assert_eq!((s.kind, s.socket_inode), ("socket", Some(12345)));
        let d = classify_fd(4, b"/tmp/x (deleted)");
        assert!(d.deleted);
        assert_eq!(d.kind, "file");
        assert_eq!(classify_fd(5, b"pipe:[9]").kind, "pipe");
        assert_eq!(classify_fd(6, b"anon_inode:[eventfd]").kind, "anon_inode");
        let bad = classify_fd(7, b"/tmp/\xff");
        assert!(bad.target_b64.is_some());
    }

    #[test]
    fn environ_redacts_by_default() {
        let raw = b"LD_PRELOAD=/tmp/evil.so\0AWS_SECRET_ACCESS_KEY=hunter2\0NOVALUE\0";
        let env = parse_environ(raw, false);
        assert_eq!(env.len(), 3);
        assert_eq!(env[0].value.as_deref(), Some("/tmp/evil.so"));
        assert_eq!(env[1].name, "AWS_SECRET_ACCESS_KEY");
        assert_eq!(env[1].value, None);
        let full = parse_environ(raw, true);
        assert_eq!(full[1].value.as_deref(), Some("hunter2"));
    }

    #[test]
    fn caps_and_ns() {
        assert_eq!(cap_names(0b101), ["CAP_CHOWN", "CAP_DAC_READ_SEARCH"]);
        assert_eq!(ns_inode(b"net:[4026531840]"), Some(4_026_531_840));
        assert_eq!(ns_inode(b"net:[x]"), None);
    }
}
