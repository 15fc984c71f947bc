//! The kernel tables: `kernel` (one record: command line, taint, security
//! sysctls, lockdown), `kernel_modules` (`/proc/modules`, cross-checked
//! against `/sys/module`) and `mounts` (`/proc/self/mountinfo`).
//!
//! Mounts are those of the agent's own mount namespace (`/proc/self`);
//! run from the host's namespace for the host's view.
//!
//! Mount paths: the kernel writes space, tab, newline and backslash in
//! mountinfo as octal escapes (`\040`, `\011`, `\012`, `\134`). They are
//! decoded here, so `mount_point` is the real path; bytes that are not
//! UTF-8 keep their exact form in the `<field>_b64` sibling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Serialize;

use super::Context;
use super::fsread::{self, ReadError};
use crate::artifact::JsonlWriter;
use crate::host_text::HostText;
use crate::sink::SinkError;

/// Security-relevant sysctls, by their dotted names.
pub const SYSCTLS: &[&str] = &[
    "kernel.yama.ptrace_scope",
    "kernel.kptr_restrict",
    "kernel.dmesg_restrict",
    "kernel.perf_event_paranoid",
    "kernel.unprivileged_bpf_disabled",
    "kernel.modules_disabled",
    "kernel.kexec_load_disabled",
    "kernel.randomize_va_space",
    "kernel.sysrq",
    "kernel.core_pattern",
    "fs.suid_dumpable",
    "fs.protected_symlinks",
    "fs.protected_hardlinks",
    "fs.protected_fifos",
    "fs.protected_regular",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter",
    "net.ipv4.tcp_syncookies",
    "user.max_user_namespaces",
    "kernel.unprivileged_userns_clone",
    "vm.mmap_min_addr",
];

/// Kernel taint bits 0..=18: letter and name (see the kernel's
/// `Documentation/admin-guide/tainted-kernels.rst`).
pub const TAINT_FLAGS: [(char, &str); 19] = [
    ('P', "proprietary_module"),
    ('F', "forced_module"),
    ('S', "cpu_out_of_spec"),
    ('R', "forced_rmmod"),
    ('M', "machine_check"),
    ('B', "bad_page"),
    ('U', "user"),
    ('D', "die"),
    ('A', "overridden_acpi_table"),
    ('W', "warn"),
    ('C', "staging_driver"),
    ('I', "firmware_workaround"),
    ('O', "out_of_tree_module"),
    ('E', "unsigned_module"),
    ('L', "soft_lockup"),
    ('K', "live_patch"),
    ('X', "auxiliary"),
    ('T', "struct_randomization"),
    ('N', "test"),
];

/// The record of `kernel.jsonl.gz`.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct KernelRecord {
    /// `/proc/cmdline`, trailing newline removed.
    pub cmdline: Option<String>,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline_b64: Option<String>,
    /// `/proc/sys/kernel/tainted` (0: not tainted).
    pub tainted: Option<u64>,
    /// Letters of the set taint bits, in bit order (`"POE"`).
    pub taint_letters: Option<String>,
    /// Names of the set taint bits (`unknown_bit_N` past bit 18).
    pub taint_flags: Vec<String>,
    /// Dotted sysctl name -> value (trailing newline removed); `null` when
    /// the kernel does not have it or it could not be read.
    pub sysctls: BTreeMap<&'static str, Option<String>>,
    /// Exact bytes of values that are not UTF-8.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls_b64: BTreeMap<&'static str, String>,
    /// Active lockdown mode (`none`, `integrity`, `confidentiality`), when
    /// securityfs shows it.
    pub lockdown: Option<String>,
}

/// One record of `kernel_modules.jsonl.gz`.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct ModuleRecord {
    /// Module name.
    pub name: String,
    /// Size in bytes.
    pub size: Option<u64>,
    /// Reference count (`None` when the kernel does not track it).
    pub refcount: Option<i64>,
    /// Modules using this one (may hold `[permanent]`).
    pub used_by: Vec<String>,
    /// `Live`, `Loading`, `Unloading` (or the `initstate` word from sysfs).
    pub state: Option<String>,
    /// Load address as shown (all zero unless the reader may see it).
    pub address: Option<String>,
    /// Module taint letters (`"OE"`), if any.
    pub taint: Option<String>,
    /// Names of those letters.
    pub taint_flags: Vec<String>,
    /// Listed in `/proc/modules`.
    pub in_proc_modules: bool,
    /// Present in `/sys/module` (`None` when that could not be listed). A
    /// loadable module in only one of the two lists is a rootkit
    /// indicator.
    pub in_sys_module: Option<bool>,
}

/// One record of `mounts.jsonl.gz`.
#[derive(Debug, Clone, Serialize, Default, PartialEq, Eq)]
pub struct MountRecord {
    /// Mount id.
    pub mount_id: u64,
    /// Parent mount id.
    pub parent_id: u64,
    /// `major:minor` of the file system (`st_dev`).
    pub device: String,
    /// Directory of the file system mounted here (bind mounts).
    pub root: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root_b64: Option<String>,
    /// Mount point.
    pub mount_point: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mount_point_b64: Option<String>,
    /// Per-mount options (`rw`, `nosuid`, `noexec`, ...).
    pub mount_options: Vec<String>,
    /// Propagation tags (`shared:1`, `master:2`, ...).
    pub optional_fields: Vec<String>,
    /// File system type (`ext4`, `fuse.sshfs`, ...).
    pub fs_type: String,
    /// Mount source (device, `none`, ...).
    pub source: String,
    /// Exact bytes when not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_b64: Option<String>,
    /// Per-superblock options.
    pub super_options: Vec<String>,
}

/// Letters and names of the set bits of a taint value.
#[must_use]
pub fn decode_taint(value: u64) -> (String, Vec<String>) {
    let mut letters = String::new();
    let mut names = Vec::new();
    for bit in 0..64u32 {
        if value & (1u64 << bit) == 0 {
            continue;
        }
        match usize::try_from(bit).ok().and_then(|b| TAINT_FLAGS.get(b)) {
            Some((letter, name)) => {
                letters.push(*letter);
                names.push((*name).to_owned());
            }
            None => names.push(format!("unknown_bit_{bit}")),
        }
    }
    (letters, names)
}

/// Names of module taint letters (`"OE"`).
fn taint_letter_names(letters: &str) -> Vec<String> {
    letters
        .chars()
        .map(|c| {
            TAINT_FLAGS
                .iter()
                .find(|(l, _)| *l == c)
                .map_or_else(|| format!("unknown_{c}"), |(_, n)| (*n).to_owned())
        })
        .collect()
}

/// The bracketed (active) word of securityfs' `lockdown`.
#[must_use]
pub fn parse_lockdown(raw: &str) -> Option<String> {
    raw.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_owned)
}

fn trim_newline(raw: &[u8]) -> &[u8] {
    raw.strip_suffix(b"\n").unwrap_or(raw)
}

/// Reads an optional kernel file: `Ok(None)` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, ReadError> {
    match fsread::read_small(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.is_gone() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Builds the `kernel` record from `<proc>` and `<sys>`; unreadable parts
/// are returned as messages.
#[must_use]
pub fn kernel_record(proc: &Path, sys: &Path) -> (KernelRecord, Vec<String>) {
    let mut rec = KernelRecord::default();
    let mut errors = Vec::new();

    match read_optional(&proc.join("cmdline")) {
        Ok(Some(raw)) => {
            let text = HostText::new(trim_newline(&raw));
            rec.cmdline = Some(text.text);
            rec.cmdline_b64 = text.b64;
        }
        Ok(None) => {}
        Err(e) => errors.push(format!("cmdline: {e}")),
    }

    match read_optional(&proc.join("sys/kernel/tainted")) {
        Ok(Some(raw)) => match String::from_utf8_lossy(&raw).trim().parse::<u64>() {
            Ok(value) => {
                let (letters, names) = decode_taint(value);
                rec.tainted = Some(value);
                rec.taint_letters = Some(letters);
                rec.taint_flags = names;
            }
            Err(_) => errors.push(format!(
                "tainted: not a number: {:?}",
                String::from_utf8_lossy(&raw)
            )),
        },
        Ok(None) => {}
        Err(e) => errors.push(format!("tainted: {e}")),
    }

    for name in SYSCTLS {
        let path = proc.join("sys").join(name.replace('.', "/"));
        let value = match read_optional(&path) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("sysctl {name}: {e}"));
                None
            }
        };
        let value = value.map(|raw| {
            let text = HostText::new(trim_newline(&raw));
            if let Some(b64) = text.b64 {
                rec.sysctls_b64.insert(name, b64);
            }
            text.text
        });
        rec.sysctls.insert(name, value);
    }

    match read_optional(&sys.join("kernel/security/lockdown")) {
        Ok(Some(raw)) => rec.lockdown = parse_lockdown(&String::from_utf8_lossy(&raw)),
        Ok(None) => {}
        // Taken only when readable: securityfs may be closed to us.
        Err(ReadError::Denied { path }) => {
            tracing::debug!(path, "Lockdown state not readable, skipped");
        }
        Err(e) => errors.push(format!("lockdown: {e}")),
    }
    (rec, errors)
}

/// Parses one line of `/proc/modules`:
/// `name size refcount used_by state address [(taint)]`.
#[must_use]
pub fn parse_module_line(line: &str) -> Option<ModuleRecord> {
    let mut fields = line.split_whitespace();
    let name = fields.next()?.to_owned();
    let size = fields.next()?.parse().ok();
    let refcount = fields.next()?.parse().ok();
    let used_by = fields
        .next()?
        .split(',')
        .filter(|u| !u.is_empty() && *u != "-")
        .map(str::to_owned)
        .collect();
    let state = fields.next().map(str::to_owned);
    let address = fields.next().map(str::to_owned);
    let taint = fields
        .next()
        .and_then(|t| t.strip_prefix('(')?.strip_suffix(')'))
        .map(str::to_owned);
    Some(ModuleRecord {
        name,
        size,
        refcount,
        used_by,
        state,
        address,
        taint_flags: taint.as_deref().map(taint_letter_names).unwrap_or_default(),
        taint,
        in_proc_modules: true,
        in_sys_module: None,
    })
}

/// Parses `/proc/modules`; unparsable lines come back as messages.
#[must_use]
pub fn parse_modules(raw: &[u8]) -> (Vec<ModuleRecord>, Vec<String>) {
    let text = String::from_utf8_lossy(raw);
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match parse_module_line(line) {
            Some(m) => out.push(m),
            None => errors.push(format!("modules: unparsable line {line:?}")),
        }
    }
    (out, errors)
}

/// Loadable modules in `<sys>/module` (those with an `initstate`; built-in
/// ones have none), with their sysfs state.
fn sys_modules(sys: &Path) -> Result<BTreeMap<String, Option<String>>, String> {
    let dir = sys.join("module");
    let entries = std::fs::read_dir(&dir).map_err(|e| ReadError::from_io(&dir, e).to_string())?;
    let mut out = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(raw) = fsread::read_small(&entry.path().join("initstate")) {
            let state = String::from_utf8_lossy(trim_newline(&raw)).into_owned();
            out.insert(name, Some(state));
        }
    }
    Ok(out)
}

fn read_sys_value(path: &Path) -> Option<String> {
    fsread::read_trimmed(path).filter(|s| !s.is_empty())
}

/// `/proc/modules` joined with `/sys/module`: every module in either.
#[must_use]
pub fn module_records(proc: &Path, sys: &Path) -> (Vec<ModuleRecord>, Vec<String>) {
    let mut errors = Vec::new();
    let (mut modules, parse_errors) = match read_optional(&proc.join("modules")) {
        Ok(Some(raw)) => parse_modules(&raw),
        Ok(None) => (Vec::new(), Vec::new()),
        Err(e) => (Vec::new(), vec![format!("modules: {e}")]),
    };
    errors.extend(parse_errors);
    let in_sys = match sys_modules(sys) {
        Ok(m) => Some(m),
        Err(e) => {
            errors.push(format!("sysfs modules: {e}"));
            None
        }
    };
    let Some(in_sys) = in_sys else {
        return (modules, errors);
    };
    let listed: BTreeSet<String> = modules.iter().map(|m| m.name.clone()).collect();
    for m in &mut modules {
        m.in_sys_module = Some(in_sys.contains_key(&m.name));
    }
    for (name, state) in in_sys.into_iter().filter(|(n, _)| !listed.contains(n)) {
        let dir = sys.join("module").join(&name);
        let taint = read_sys_value(&dir.join("taint"));
        modules.push(ModuleRecord {
            size: read_sys_value(&dir.join("coresize")).and_then(|s| s.parse().ok()),
            refcount: read_sys_value(&dir.join("refcnt")).and_then(|s| s.parse().ok()),
            taint_flags: taint.as_deref().map(taint_letter_names).unwrap_or_default(),
            taint,
            state,
            name,
            in_proc_modules: false,
            in_sys_module: Some(true),
            ..ModuleRecord::default()
        });
    }
    (modules, errors)
}

/// Decodes the kernel's `\ooo` octal escapes.
#[must_use]
pub fn unescape_octal(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'\\'
            && let Some(digits) = raw.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

fn options(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == b',')
        .filter(|o| !o.is_empty())
        .map(|o| String::from_utf8_lossy(&unescape_octal(o)).into_owned())
        .collect()
}

/// Parses one line of `mountinfo`:
/// `id parent maj:min root mount_point options [optional...] - fstype source super_options`.
#[must_use]
pub fn parse_mountinfo_line(line: &[u8]) -> Option<MountRecord> {
    let mut fields = line.split(|&b| b == b' ');
    let num = |f: Option<&[u8]>| std::str::from_utf8(f?).ok()?.parse::<u64>().ok();
    let mount_id = num(fields.next())?;
    let parent_id = num(fields.next())?;
    let device = String::from_utf8_lossy(fields.next()?).into_owned();
    let root = HostText::new(&unescape_octal(fields.next()?));
    let mount_point = HostText::new(&unescape_octal(fields.next()?));
    let mount_options = options(fields.next()?);
    let mut optional_fields = Vec::new();
    loop {
        let f = fields.next()?;
        if f == b"-" {
            break;
        }
        optional_fields.push(String::from_utf8_lossy(f).into_owned());
    }
    let fs_type = String::from_utf8_lossy(&unescape_octal(fields.next()?)).into_owned();
    let source = HostText::new(&unescape_octal(fields.next().unwrap_or_default()));
    let super_options = fields.next().map(options).unwrap_or_default();
    Some(MountRecord {
        mount_id,
        parent_id,
        device,
        root: root.text,
        root_b64: root.b64,
        mount_point: mount_point.text,
        mount_point_b64: mount_point.b64,
        mount_options,
        optional_fields,
        fs_type,
        source: source.text,
        source_b64: source.b64,
        super_options,
    })
}

/// Parses a whole `mountinfo`; unparsable lines come back as messages.
#[must_use]
pub fn parse_mountinfo(raw: &[u8]) -> (Vec<MountRecord>, Vec<String>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for line in raw.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match parse_mountinfo_line(line) {
            Some(m) => out.push(m),
            None => errors.push(format!(
                "mountinfo: unparsable line {:?}",
                String::from_utf8_lossy(line)
            )),
        }
    }
    (out, errors)
}

fn write_table<T: Serialize>(
    table: &mut JsonlWriter,
    records: &[T],
    errors: Vec<String>,
) -> Result<(), SinkError> {
    for e in errors {
        table.error(e);
    }
    for r in records {
        table.write(r)?;
    }
    Ok(())
}

/// Writes `kernel.jsonl.gz`, `kernel_modules.jsonl.gz` and
/// `mounts.jsonl.gz`.
///
/// # Errors
/// [`SinkError`] when a table cannot be stored.
pub fn write(ctx: &Context<'_>) -> Result<Vec<ircap_proto::ArtifactEntry>, SinkError> {
    let roots = ctx.roots;
    let mut entries = Vec::with_capacity(3);

    let mut table = JsonlWriter::open(ctx.sink, "kernel", "kernel")?;
    let (record, errors) = kernel_record(&roots.proc, &roots.sys);
    write_table(&mut table, &[record], errors)?;
    entries.push(table.finish()?);

    let mut table = JsonlWriter::open(ctx.sink, "kernel_modules", "kernel")?;
    let (modules, errors) = module_records(&roots.proc, &roots.sys);
    write_table(&mut table, &modules, errors)?;
    entries.push(table.finish()?);

    let mut table = JsonlWriter::open(ctx.sink, "mounts", "kernel")?;
    let path = roots.proc.join("self/mountinfo");
    let (mounts, errors) = match fsread::read_bounded(&path, 64 << 20) {
        Ok((raw, truncated)) => {
            let (mounts, mut errors) = parse_mountinfo(&raw);
            if truncated {
                errors.push(format!("{}: truncated at 64 MiB", path.display()));
            }
            (mounts, errors)
        }
        Err(e) => (Vec::new(), vec![e.to_string()]),
    };
    write_table(&mut table, &mounts, errors)?;
    entries.push(table.finish()?);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::io::Read;
    use std::path::PathBuf;

    use super::*;
    use crate::collect::accounts::Accounts;
    use crate::collect::system::BootClock;
    use crate::collect::{Context, Roots};
    use crate::options::CaptureOptions;
    use crate::sink::dir::DirSink;

    fn b64(raw: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    fn put(root: &Path, rel: &str, content: &[u8]) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    /// A fixture `/proc` and `/sys`.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        put(
            &proc,
            "cmdline",
            b"BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n",
        );
        put(&proc, "sys/kernel/tainted", b"12289\n");
        put(&proc, "sys/kernel/yama/ptrace_scope", b"1\n");
        put(&proc, "sys/kernel/kptr_restrict", b"2\n");
        put(&proc, "sys/kernel/core_pattern", b"|/tmp/\xffcore %p\n");
        put(&proc, "sys/net/ipv4/conf/all/rp_filter", b"2\n");
        put(&proc, "sys/net/ipv4/ip_forward", b"1\n");
        put(
            &proc,
            "modules",
            b"rootkit 16384 0 - Live 0xffffffffc0a00000 (OE)\n\
              nf_tables 376832 3 nft_chain_nat,nft_compat, Live 0x0000000000000000\n",
        );
        put(
            &proc,
            "self/mountinfo",
            b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro\n\
              35 22 0:31 / /tmp/with\\040space rw,nosuid,nodev,noexec - tmpfs tmpfs rw,size=1024k\n",
        );
        put(
            &sys,
            "kernel/security/lockdown",
            b"none [integrity] confidentiality\n",
        );
        put(&sys, "module/nf_tables/initstate", b"live\n");
        put(&sys, "module/hidden_one/initstate", b"live\n");
        put(&sys, "module/hidden_one/taint", b"OE\n");
        put(&sys, "module/hidden_one/coresize", b"20480\n");
        // Built in: no initstate, not a loadable module.
        put(&sys, "module/printk/parameters/time", b"Y\n");
        dir
    }

    #[test]
    fn decodes_taint_bits() {
        assert_eq!(decode_taint(0), (String::new(), Vec::<String>::new()));
        let (letters, names) = decode_taint(1 | (1 << 12) | (1 << 13));
        assert_eq!(letters, "POE");
        assert_eq!(
            names,
            [
                "proprietary_module",
                "out_of_tree_module",
                "unsigned_module"
            ]
        );
        let (letters, names) = decode_taint((1 << 18) | (1 << 20));
        assert_eq!(letters, "N");
        assert_eq!(names, ["test", "unknown_bit_20"]);
    }

    #[test]
    fn kernel_record_from_fixture() {
        let dir = fixture();
        let (rec, errors) = kernel_record(&dir.path().join("proc"), &dir.path().join("sys"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(
            rec.cmdline.as_deref(),
            Some("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet")
        );
        assert_eq!(rec.tainted, Some(12289));
        assert_eq!(rec.taint_letters.as_deref(), Some("POE"));
        assert_eq!(rec.sysctls.len(), SYSCTLS.len());
        assert_eq!(
            rec.sysctls["kernel.yama.ptrace_scope"].as_deref(),
            Some("1")
        );
        assert_eq!(
            rec.sysctls["net.ipv4.conf.all.rp_filter"].as_deref(),
            Some("2")
        );
        // Absent sysctls are null, not errors.
        assert_eq!(rec.sysctls["kernel.unprivileged_userns_clone"], None);
        assert_eq!(
            rec.sysctls["kernel.core_pattern"].as_deref(),
            Some("|/tmp/\u{fffd}core %p")
        );
        assert_eq!(
            rec.sysctls_b64["kernel.core_pattern"],
            b64(b"|/tmp/\xffcore %p")
        );
        assert_eq!(rec.lockdown.as_deref(), Some("integrity"));
        let json = serde_json::to_value(&rec).unwrap();
        assert!(json["sysctls"]["vm.mmap_min_addr"].is_null());
    }

    #[test]
    fn bad_taint_is_an_error_and_missing_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "sys/kernel/tainted", b"lots\n");
        let (rec, errors) = kernel_record(dir.path(), &dir.path().join("nosys"));
        assert_eq!(rec.tainted, None);
        assert_eq!(rec.cmdline, None);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("tainted: not a number"));
    }

    #[test]
    fn parses_modules_and_finds_hidden_ones() {
        let dir = fixture();
        let (mods, errors) = module_records(&dir.path().join("proc"), &dir.path().join("sys"));
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<_> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["rootkit", "nf_tables", "hidden_one"]);
        let rk = &mods[0];
        assert_eq!(rk.size, Some(16384));
        assert_eq!(rk.refcount, Some(0));
        assert!(rk.used_by.is_empty());
        assert_eq!(rk.state.as_deref(), Some("Live"));
        assert_eq!(rk.address.as_deref(), Some("0xffffffffc0a00000"));
        assert_eq!(rk.taint.as_deref(), Some("OE"));
        assert_eq!(rk.taint_flags, ["out_of_tree_module", "unsigned_module"]);
        assert_eq!(rk.in_sys_module, Some(false));
        let nf = &mods[1];
        assert_eq!(nf.used_by, ["nft_chain_nat", "nft_compat"]);
        assert_eq!(nf.taint, None);
        assert_eq!(nf.in_sys_module, Some(true));
        let hidden = &mods[2];
        assert!(!hidden.in_proc_modules);
        assert_eq!(hidden.state.as_deref(), Some("live"));
        assert_eq!(hidden.size, Some(20480));
        assert_eq!(hidden.taint.as_deref(), Some("OE"));

        let (_, errors) = parse_modules(b"ok 1 0 - Live 0x0\n\njunk\n");
        assert_eq!(errors.len(), 1);
        let m = parse_module_line("m 10 - [permanent], Live 0x0").unwrap();
        assert_eq!(m.refcount, None);
        assert_eq!(m.used_by, ["[permanent]"]);
    }

    #[test]
    fn parses_mountinfo_with_escapes() {
        let raw = b"22 1 8:1 / / rw,relatime shared:1 master:4 - ext4 /dev/sda1 rw,errors=remount-ro\n\
                    35 22 0:31 /bind\\134x /mnt/a\\040b\\012c\\377 rw,noexec - fuse.sshfs me@h:/x\\040y rw\n\
                    40 22 0:5 / /dev rw - devtmpfs\n\
                    garbage line\n";
        let (mounts, errors) = parse_mountinfo(raw);
        assert_eq!(errors.len(), 1, "{errors:?}");
        // A line cut short after the type keeps what it has.
        assert_eq!(
            (mounts[2].fs_type.as_str(), mounts[2].source.as_str()),
            ("devtmpfs", "")
        );
        let root = &mounts[0];
        assert_eq!((root.mount_id, root.parent_id), (22, 1));
        assert_eq!(root.device, "8:1");
        assert_eq!(root.mount_point, "/");
        assert_eq!(root.mount_options, ["rw", "relatime"]);
        assert_eq!(root.optional_fields, ["shared:1", "master:4"]);
        assert_eq!(root.fs_type, "ext4");
        assert_eq!(root.source, "/dev/sda1");
        assert_eq!(root.super_options, ["rw", "errors=remount-ro"]);
        let odd = &mounts[1];
        assert_eq!(odd.root, "/bind\\x");
        assert_eq!(odd.mount_point, "/mnt/a b\nc\u{fffd}");
        assert_eq!(odd.mount_point_b64, Some(b64(b"/mnt/a b\nc\xff")));
        assert!(odd.optional_fields.is_empty());
        assert_eq!(odd.fs_type, "fuse.sshfs");
        assert_eq!(odd.source, "me@h:/x y");
        assert_eq!(unescape_octal(b"a\\04"), b"a\\04");
        assert_eq!(unescape_octal(b"\\999\\"), b"\\999\\");
    }

    fn read_table(dir: &Path, name: &str) -> Vec<serde_json::Value> {
        let partial = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .unwrap()
            .path();
        let file = fs::File::open(partial.join(format!("{name}.jsonl.gz"))).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn write_produces_three_tables() -> Result<(), Box<dyn std::error::Error>> {
        let fx = fixture();
        let out = tempfile::tempdir()?;
        let sink = DirSink::create(out.path(), "cap")?;
        let roots = Roots {
            proc: fx.path().join("proc"),
            etc: fx.path().join("etc"),
            var_log: fx.path().join("var/log"),
            run: fx.path().join("run"),
            sys: fx.path().join("sys"),
        };
        let options = CaptureOptions::with_defaults(PathBuf::from(out.path()));
        let accounts = Accounts::default();
        let clock = BootClock {
            boot_unix: 0.0,
            clk_tck: 100,
            page_size: 4096,
        };
        let ctx = Context {
            sink: &sink,
            options: &options,
            roots: &roots,
            accounts: &accounts,
            clock: &clock,
            threads: 1,
            blocking: Default::default(),
            dropped: Default::default(),
        };
        let entries = write(&ctx)?;
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "kernel.jsonl.gz",
                "kernel_modules.jsonl.gz",
                "mounts.jsonl.gz"
            ]
        );
        assert!(
            entries
                .iter()
                .all(|e| e.kind == "kernel" && e.error_count == 0)
        );
        assert_eq!(
            entries.iter().map(|e| e.record_count).collect::<Vec<_>>(),
            [Some(1), Some(3), Some(2)]
        );
        let kernel = read_table(out.path(), "kernel");
        assert_eq!(kernel[0]["taint_letters"], "POE");
        assert_eq!(kernel[0]["sysctls"]["kernel.kptr_restrict"], "2");
        let mounts = read_table(out.path(), "mounts");
        assert_eq!(mounts[1]["mount_point"], "/tmp/with space");
        assert_eq!(mounts[1]["mount_options"][3], "noexec");
        Ok(())
    }
}
