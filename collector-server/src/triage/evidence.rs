//! The tables of one capture, read for triage.
//!
//! Every table is gzip'd JSON Lines written by an agent the attacker may
//! own, so reading is bounded: a line longer than [`MAX_LINE`] or past
//! [`MAX_RECORDS`] records is skipped and named in [`Evidence::problems`],
//! a line that does not parse is skipped and named, and a table that is
//! absent is simply empty (its absence is in the manifest). Each kept
//! record carries its 1-based line number, so a finding can point at the
//! exact row an analyst opens with `zcat TABLE | sed -n Np`.
//!
//! Only the fields the rules, the diff and the report use are decoded;
//! serde skips the rest.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use ircap_proto::manifest::Manifest;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Longest table line decoded (a process with a 100 KB argument and
/// thousands of open files fits easily).
pub const MAX_LINE: usize = 16 << 20;

/// Most records decoded per table.
pub const MAX_RECORDS: usize = 4_000_000;

/// Most decoded bytes read per table: a gzip bomb stops here.
pub const MAX_TABLE_CONTENT: u64 = 1 << 30;

/// Why a capture could not be read for triage.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The manifest is missing or not one.
    #[error(transparent)]
    Manifest(#[from] ircap_proto::manifest::ManifestError),
    /// A table could not be read.
    #[error("{context}: {source}")]
    Io {
        /// Which table.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// One decoded record and where it is.
#[derive(Debug, Clone)]
pub struct Row<T> {
    /// 1-based line number in the table.
    pub line: u64,
    /// The record.
    pub rec: T,
}

/// A `processes` record (fields used by triage).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Process {
    pub pid: i32,
    pub ppid: Option<i32>,
    pub comm: String,
    pub exe: Option<String>,
    pub exe_deleted: bool,
    pub exe_sha256: Option<String>,
    pub argv: Vec<String>,
    pub environ: Vec<EnvVar>,
    pub uid: Option<u32>,
    pub euid: Option<u32>,
    pub user: Option<String>,
    pub start_time: Option<String>,
    pub start_ticks: Option<u64>,
    pub container_id: Option<String>,
    pub namespaces: BTreeMap<String, u64>,
    pub cap_effective_names: Vec<String>,
    pub tracer_pid: Option<i32>,
    pub kernel_thread: bool,
    pub is_agent: bool,
}

/// One environment variable of a process.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
}

/// A `memory_maps` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Region {
    pub pid: i32,
    pub comm: String,
    pub start: String,
    pub end: String,
    pub size: u64,
    pub perms: String,
    pub path: Option<String>,
    pub anonymous: bool,
    pub kernel_provided: bool,
    pub anon_exec: bool,
    pub write_exec: bool,
    pub deleted_backed: bool,
}

/// A `connections` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Connection {
    pub netns: u64,
    pub protocol: String,
    pub local_address: Option<String>,
    pub local_port: Option<u16>,
    pub remote_address: Option<String>,
    pub remote_port: Option<u16>,
    pub state: String,
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub path: Option<String>,
    pub pids: Vec<i32>,
    pub process_names: Vec<String>,
}

/// A `kernel` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Kernel {
    pub tainted: Option<u64>,
    pub taint_letters: Option<String>,
    pub taint_flags: Vec<String>,
    pub lockdown: Option<String>,
}

/// A `kernel_modules` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Module {
    pub name: String,
    pub taint: Option<String>,
    pub in_proc_modules: bool,
    pub in_sys_module: Option<bool>,
}

/// A `mounts` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Mount {
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
    pub mount_options: Vec<String>,
}

/// A `volatile_files` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VolatileFile {
    pub path: String,
    pub file_type: String,
    pub size: u64,
    pub mode: String,
    pub setuid: bool,
    pub setgid: bool,
    pub uid: u32,
    pub user: Option<String>,
    pub sha256: Option<String>,
    pub is_elf: Option<bool>,
}

/// A `logins` record (utmp, wtmp, btmp).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Login {
    pub source: String,
    pub file: String,
    #[serde(rename = "type")]
    pub entry_type: String,
    pub user: String,
    pub host: String,
    pub line: String,
    pub time: Option<String>,
    pub address: Option<String>,
}

/// A `lastlog` record: one per account.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Lastlog {
    pub uid: u32,
    pub user: Option<String>,
    pub time: Option<String>,
    pub host: String,
}

/// A `network_config` record: one configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConfigFile {
    pub path: String,
    pub content: Option<String>,
    pub sha256: Option<String>,
}

/// A `network_interfaces` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub addresses: Vec<String>,
    pub promiscuous: bool,
}

/// A `network_routes` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Route {
    pub family: String,
    pub interface: String,
    pub destination: String,
    pub gateway: String,
}

/// Every table triage reads, from one capture.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    pub processes: Vec<Row<Process>>,
    /// Only the regions triage looks at: anonymous-executable,
    /// writable+executable or backed by a deleted file (a big host has
    /// hundreds of thousands of the others).
    pub memory_maps: Vec<Row<Region>>,
    /// Regions recorded in all.
    pub memory_maps_total: u64,
    pub connections: Vec<Row<Connection>>,
    pub kernel: Vec<Row<Kernel>>,
    pub kernel_modules: Vec<Row<Module>>,
    pub mounts: Vec<Row<Mount>>,
    pub volatile_files: Vec<Row<VolatileFile>>,
    pub logins: Vec<Row<Login>>,
    pub lastlog: Vec<Row<Lastlog>>,
    pub network_config: Vec<Row<ConfigFile>>,
    pub network_interfaces: Vec<Row<Interface>>,
    pub network_routes: Vec<Row<Route>>,
}

/// A capture's manifest and tables.
#[derive(Debug, Clone)]
pub struct Evidence {
    /// The directory it was read from (empty when read from a store).
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// The tables.
    pub tables: Tables,
    /// Lines skipped and tables that could not be read, by table.
    pub problems: Vec<String>,
    /// Index into `tables.processes` by pid (the first record of a pid).
    by_pid: std::collections::HashMap<i32, usize>,
}

/// The table names triage reads (`<name>.jsonl.gz`).
pub const TABLES: &[&str] = &[
    "processes",
    "memory_maps",
    "connections",
    "kernel",
    "kernel_modules",
    "mounts",
    "volatile_files",
    "logins",
    "lastlog",
    "network_config",
    "network_interfaces",
    "network_routes",
];

/// The artifact name of table `name`.
#[must_use]
pub fn artifact(name: &str) -> String {
    format!("{name}.jsonl.gz")
}

/// Decodes the gzip'd JSON Lines in `reader` as records of `T`, bounded
/// (see the module docs); problems name `table`.
pub fn read_table<T: DeserializeOwned, R: Read>(
    table: &str,
    reader: R,
    problems: &mut Vec<String>,
) -> Vec<Row<T>> {
    read_table_kept(table, reader, problems, |_| true).0
}

/// [`read_table`], keeping only records `keep` accepts (and shrinking
/// them with it); also returns how many records were decoded in all.
pub fn read_table_kept<T: DeserializeOwned, R: Read>(
    table: &str,
    reader: R,
    problems: &mut Vec<String>,
    mut keep: impl FnMut(&mut T) -> bool,
) -> (Vec<Row<T>>, u64) {
    let mut decoded = 0u64;
    let mut reader =
        BufReader::new(flate2::read::MultiGzDecoder::new(reader).take(MAX_TABLE_CONTENT));
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0u64;
    let mut skipped = 0u64;
    loop {
        buf.clear();
        let limit = u64::try_from(MAX_LINE).unwrap_or(u64::MAX) + 1;
        match reader.by_ref().take(limit).read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                problems.push(format!("{table}: read stopped after line {line}: {e}"));
                break;
            }
        }
        line += 1;
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            problems.push(format!(
                "{table}: line {line} is longer than {MAX_LINE} bytes; skipped"
            ));
            if !skip_line(&mut reader) {
                break;
            }
            continue;
        }
        if rows.len() >= MAX_RECORDS {
            skipped += 1;
            continue;
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<T>(text) {
            Ok(mut rec) => {
                decoded += 1;
                if keep(&mut rec) {
                    rows.push(Row { line, rec });
                }
            }
            Err(e) => problems.push(format!("{table}: line {line} is not a record: {e}")),
        }
    }
    if reader.get_ref().limit() == 0 {
        problems.push(format!(
            "{table}: only the first {MAX_TABLE_CONTENT} decoded bytes were read"
        ));
    }
    if skipped > 0 {
        problems.push(format!(
            "{table}: {skipped} records past the first {MAX_RECORDS} were not read"
        ));
    }
    (rows, decoded)
}

/// Discards the rest of an over-long line; false at the end of input.
fn skip_line<R: BufRead>(reader: &mut R) -> bool {
    loop {
        let (done, used) = match reader.fill_buf() {
            Ok([]) | Err(_) => return false,
            Ok(chunk) => match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, chunk.len()),
            },
        };
        reader.consume(used);
        if done {
            return true;
        }
    }
}

impl Tables {
    /// Reads every table through `open` (table artifact name -> its
    /// stored gzip bytes, `None` when the capture has no such table).
    pub fn load<F>(mut open: F, problems: &mut Vec<String>) -> Self
    where
        F: FnMut(&str) -> Result<Option<Box<dyn Read>>, std::io::Error>,
    {
        let mut t = Self::default();
        for &name in TABLES {
            let reader = match open(&artifact(name)) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    problems.push(format!("{name}: cannot be read: {e}"));
                    continue;
                }
            };
            match name {
                "processes" => {
                    // Only what triage reads is kept: the loader's
                    // variables, the network namespace and the
                    // capabilities a container escape needs (a big host
                    // has tens of thousands of processes).
                    t.processes = read_table_kept(name, reader, problems, |p: &mut Process| {
                        p.environ.retain(|v| v.name.starts_with("LD_"));
                        p.namespaces.retain(|k, _| k == "net");
                        p.cap_effective_names.retain(|c| {
                            crate::triage::rules::container_caps::ESCAPE_CAPS.contains(&c.as_str())
                        });
                        p.environ.shrink_to_fit();
                        p.cap_effective_names.shrink_to_fit();
                        true
                    })
                    .0;
                }
                "memory_maps" => {
                    (t.memory_maps, t.memory_maps_total) =
                        read_table_kept(name, reader, problems, |r: &mut Region| {
                            r.anon_exec || r.write_exec || r.deleted_backed
                        });
                }
                "connections" => t.connections = read_table(name, reader, problems),
                "kernel" => t.kernel = read_table(name, reader, problems),
                "kernel_modules" => t.kernel_modules = read_table(name, reader, problems),
                "mounts" => t.mounts = read_table(name, reader, problems),
                "volatile_files" => t.volatile_files = read_table(name, reader, problems),
                "logins" => t.logins = read_table(name, reader, problems),
                "lastlog" => t.lastlog = read_table(name, reader, problems),
                "network_config" => t.network_config = read_table(name, reader, problems),
                "network_interfaces" => {
                    t.network_interfaces = read_table(name, reader, problems);
                }
                "network_routes" => t.network_routes = read_table(name, reader, problems),
                _ => {}
            }
        }
        t
    }
}

impl Evidence {
    /// Evidence of these tables.
    #[must_use]
    pub fn new(dir: PathBuf, manifest: Manifest, tables: Tables, problems: Vec<String>) -> Self {
        let mut by_pid = std::collections::HashMap::with_capacity(tables.processes.len());
        for (i, p) in tables.processes.iter().enumerate() {
            by_pid.entry(p.rec.pid).or_insert(i);
        }
        Self {
            dir,
            manifest,
            tables,
            problems,
            by_pid,
        }
    }

    /// Reads the capture in `dir` (the directory holding `manifest.json`).
    /// Only tables the manifest lists are read.
    ///
    /// # Errors
    /// [`EvidenceError::Manifest`] when the manifest is missing or invalid.
    pub fn from_dir(dir: &Path) -> Result<Self, EvidenceError> {
        let manifest = Manifest::read(&dir.join(ircap_proto::artifact_name::MANIFEST_FILE))?;
        let listed: std::collections::HashSet<&str> =
            manifest.artifacts.iter().map(|a| a.name.as_str()).collect();
        let mut problems = Vec::new();
        let tables = Tables::load(
            |name| {
                if !listed.contains(name) {
                    return Ok(None);
                }
                let file = std::fs::File::open(dir.join(name))?;
                Ok(Some(Box::new(file) as Box<dyn Read>))
            },
            &mut problems,
        );
        Ok(Self::new(dir.to_path_buf(), manifest, tables, problems))
    }

    /// The process with `pid`, if recorded.
    #[must_use]
    pub fn process(&self, pid: i32) -> Option<&Row<Process>> {
        self.by_pid
            .get(&pid)
            .and_then(|&i| self.tables.processes.get(i))
    }

    /// The host's network namespace: pid 1's when recorded, else the
    /// capturing agent's, else the one most processes are in.
    #[must_use]
    pub fn host_netns(&self) -> Option<u64> {
        let net = |p: &Row<Process>| p.rec.namespaces.get("net").copied();
        let procs = &self.tables.processes;
        procs
            .iter()
            .find(|p| p.rec.pid == 1)
            .and_then(net)
            .or_else(|| procs.iter().find(|p| p.rec.is_agent).and_then(net))
            .or_else(|| {
                let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
                for ns in procs.iter().filter_map(net) {
                    *counts.entry(ns).or_insert(0) += 1;
                }
                counts.into_iter().max_by_key(|&(_, n)| n).map(|(ns, _)| ns)
            })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    fn gz(text: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn bad_and_huge_lines_are_skipped_and_named_with_line_numbers() {
        let mut text = b"{\"pid\":1,\"comm\":\"init\"}\nnot json\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        text.extend(b"\n{\"pid\":7,\"comm\":\"late\"}\n");
        let mut problems = Vec::new();
        let rows: Vec<Row<Process>> = read_table("processes", &gz(&text)[..], &mut problems);
        let got: Vec<(u64, i32)> = rows.iter().map(|r| (r.line, r.rec.pid)).collect();
        assert_eq!(got, vec![(1, 1), (4, 7)]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("line 2"), "{problems:?}");
        assert!(problems[1].contains("line 3"), "{problems:?}");
    }

    #[test]
    fn the_host_netns_falls_back_from_pid_1_to_the_agent_to_the_majority() {
        let rows = |text: &str| {
            let mut problems = Vec::new();
            read_table::<Process, _>("processes", &gz(text.as_bytes())[..], &mut problems)
        };
        let e = |text: &str| {
            Evidence::new(
                PathBuf::new(),
                crate::triage::rules::fixture::manifest(),
                Tables {
                    processes: rows(text),
                    ..Tables::default()
                },
                Vec::new(),
            )
        };
        let a = "{\"pid\":1,\"namespaces\":{\"net\":5}}\n{\"pid\":2,\"namespaces\":{\"net\":7}}\n";
        assert_eq!(e(a).host_netns(), Some(5));
        let b = "{\"pid\":1}\n{\"pid\":2,\"is_agent\":true,\"namespaces\":{\"net\":7}}\n{\"pid\":3,\"namespaces\":{\"net\":9}}\n{\"pid\":4,\"namespaces\":{\"net\":9}}\n";
        assert_eq!(e(b).host_netns(), Some(7));
        let c = "{\"pid\":1}\n{\"pid\":3,\"namespaces\":{\"net\":9}}\n{\"pid\":4,\"namespaces\":{\"net\":9}}\n{\"pid\":5,\"namespaces\":{\"net\":8}}\n";
        assert_eq!(e(c).host_netns(), Some(9));
    }

    #[test]
    fn truncated_gzip_keeps_what_was_read() {
        let full = gz(b"{\"pid\":1}\n{\"pid\":2}\n");
        let mut problems = Vec::new();
        let rows: Vec<Row<Process>> =
            read_table("processes", &full[..full.len() - 6], &mut problems);
        assert!(rows.len() <= 2);
        assert_eq!(problems.len(), 1, "{problems:?}");
    }
}
