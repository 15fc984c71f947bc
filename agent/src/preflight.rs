//! `ircap-agent preflight`: what this host lets a capture take, and why
//! not, before anything is captured (SSM users run it first).
//!
//! Every answer comes from the function the capture itself uses, so the
//! two cannot disagree: the physical memory source is opened exactly as
//! `--physical-memory` opens it ([`physical::open_kcore`],
//! [`physical::open_crash`], with the kernel's reason from
//! [`physical::refusal`]), kallsyms is scanned by the capture's
//! [`kernel_symbols::KallsymsScan`], sysctls come from
//! [`kernel::kernel_record`], memory regions are listed and selected as
//! `--memory-regions` selects them, and free space is [`free_bytes`], which
//! the capture's own warning calls.
//!
//! It only reads: nothing is written anywhere, `--output` included (a
//! missing output directory is reported with the free space of its nearest
//! existing parent). A `statvfs` on a hung network file system would
//! block for ever, so it runs on a helper thread with a time limit.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use procfs::FromRead as _;
use serde::Serialize;

use crate::collect::blocking_fs::BlockingMounts;
use crate::collect::physical::{self, refusal, source::PhysicalSource as _};
use crate::collect::{Roots, fsread, kernel, kernel_symbols, memory_maps, own_task, processes};
use crate::options::{DEFAULT_MEMORY_BUDGET, DEFAULT_MEMORY_PROCESS_BUDGET, MemorySelector};

/// How long `statvfs` of the output may take.
const STATVFS_TIMEOUT: Duration = Duration::from_secs(5);

/// Capabilities the capture relies on, with what each gives it.
pub const WANTED_CAPABILITIES: &[(&str, &str)] = &[
    (
        "CAP_SYS_PTRACE",
        "other processes' memory, environment and descriptors",
    ),
    (
        "CAP_DAC_READ_SEARCH",
        "every file and directory (logs, /proc entries of others)",
    ),
    ("CAP_SYS_RAWIO", "/proc/kcore (physical memory)"),
    (
        "CAP_SYS_ADMIN",
        "/proc/iomem addresses (physical RAM ranges)",
    ),
    ("CAP_SYSLOG", "/proc/kallsyms addresses"),
    ("CAP_FOWNER", "O_NOATIME on files of other owners"),
];

/// The whole answer, printed as one JSON document.
#[derive(Debug, Serialize)]
pub struct Report {
    /// This agent's version.
    pub agent_version: &'static str,
    /// Architecture the agent was built for (`x86_64`, `aarch64`).
    pub arch: &'static str,
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_release: Option<String>,
    /// The agent's pid.
    pub pid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Effective uid is 0.
    pub root: bool,
    /// Capabilities held (effective set).
    pub capabilities: Capabilities,
    /// Kernel lockdown mode (securityfs, else `lockdown=` on the command
    /// line); `None` when the kernel shows none.
    pub lockdown: Option<String>,
    /// `kernel.kptr_restrict`.
    pub kptr_restrict: Option<String>,
    /// `kernel.perf_event_paranoid`.
    pub perf_event_paranoid: Option<String>,
    /// `kernel.yama.ptrace_scope` (`None`: Yama not built in).
    pub ptrace_scope: Option<String>,
    /// The physical memory sources.
    pub physical_memory: PhysicalMemory,
    /// The kernel's symbol sources.
    pub kernel_symbols: SymbolSources,
    /// The output directory, when `--output` was given.
    pub output: Option<Output>,
    /// Sizes of the memory artifacts.
    pub estimates: Estimates,
    /// One sentence per thing a capture here would miss, or risk.
    pub limitations: Vec<String>,
}

/// The effective capability set.
#[derive(Debug, Serialize, Default)]
pub struct Capabilities {
    /// `CapEff` of `/proc/self/status`, hex.
    pub effective: Option<String>,
    /// Its capability names.
    pub names: Vec<&'static str>,
    /// [`WANTED_CAPABILITIES`] not held.
    pub missing: Vec<&'static str>,
}

/// One physical memory source.
#[derive(Debug, Serialize)]
pub struct SourceCheck {
    /// The path.
    pub path: String,
    /// It exists.
    pub present: bool,
    /// It opened (and, for kcore, parsed) as the capture opens it.
    pub usable: bool,
    /// Physical ranges it gives.
    pub ranges: Option<usize>,
    /// Bytes in those ranges.
    pub bytes: Option<u64>,
    /// Why it cannot be used.
    pub error: Option<String>,
}

/// The physical memory sources, in the order the capture tries them.
#[derive(Debug, Serialize)]
pub struct PhysicalMemory {
    /// `/proc/kcore`.
    pub kcore: SourceCheck,
    /// `/dev/crash`.
    pub crash: SourceCheck,
    /// `--physical-memory` would capture something.
    pub possible: bool,
}

/// The kernel's symbol sources (`kernel_symbols` artifacts).
#[derive(Debug, Serialize)]
pub struct SymbolSources {
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf_present: bool,
    /// Its size.
    pub btf_bytes: Option<u64>,
    /// `/proc/kallsyms` shows real addresses to this process.
    pub kallsyms_addresses_visible: Option<bool>,
    /// Why kallsyms could not be read.
    pub kallsyms_error: Option<String>,
}

/// The output directory.
#[derive(Debug, Serialize)]
pub struct Output {
    /// As given.
    pub path: String,
    /// It exists (the capture creates it otherwise).
    pub exists: bool,
    /// The directory whose file system was measured (the path, or its
    /// nearest existing parent).
    pub measured: String,
    /// Bytes this process may use there (`f_bavail`).
    pub free_bytes: Option<u64>,
    /// Type of the network or user-space file system holding it, if any.
    pub blocking_fs: Option<String>,
    /// Why free space is unknown.
    pub error: Option<String>,
}

/// Sizes of the memory artifacts, before compression.
#[derive(Debug, Serialize, Default)]
pub struct Estimates {
    /// `--physical-memory`: System RAM of `/proc/iomem` (else `MemTotal`).
    pub physical_memory_bytes: Option<u64>,
    /// Processes looked at (the agent excluded).
    pub processes: u64,
    /// Processes whose maps could not be read.
    pub processes_unreadable: u64,
    /// Sum of resident set sizes (`VmRSS`): what `--memory-regions all`
    /// finds in RAM.
    pub resident_bytes: u64,
    /// Sum of readable mapped bytes: what `--memory-regions all` reads
    /// before budgets.
    pub memory_regions_all_bytes: u64,
    /// Regions `--memory-regions suspicious` selects.
    pub suspicious_regions: u64,
    /// Their readable bytes, before budgets.
    pub memory_regions_suspicious_bytes: u64,
    /// `--memory-budget` default.
    pub memory_budget: u64,
    /// `--memory-process-budget` default.
    pub memory_process_budget: u64,
}

/// Bytes free for this process on the file system holding `dir`
/// (`f_bavail * f_frsize`).
///
/// # Errors
/// The `statvfs` error.
pub fn free_bytes(dir: &Path) -> nix::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Runs every check against `roots` (the host: [`Roots::host`]).
#[must_use]
pub fn run(roots: &Roots, output: Option<&Path>) -> Report {
    let euid = nix::unistd::geteuid().as_raw();
    let (kernel_rec, _) = kernel::kernel_record(&roots.proc, &roots.sys);
    let sysctl = |name: &str| kernel_rec.sysctls.get(name).cloned().flatten();
    let mut report = Report {
        agent_version: env!("CARGO_PKG_VERSION"),
        arch: std::env::consts::ARCH,
        kernel_release: fsread::read_trimmed(&roots.proc.join("sys/kernel/osrelease")),
        pid: std::process::id(),
        euid,
        root: euid == 0,
        capabilities: capabilities(&roots.proc),
        lockdown: refusal::lockdown_mode(roots),
        kptr_restrict: sysctl("kernel.kptr_restrict"),
        perf_event_paranoid: sysctl("kernel.perf_event_paranoid"),
        ptrace_scope: sysctl("kernel.yama.ptrace_scope"),
        physical_memory: physical_memory(roots),
        kernel_symbols: symbol_sources(roots),
        output: output.map(|dir| output_check(&roots.proc, dir)),
        estimates: estimates(roots),
        limitations: Vec::new(),
    };
    report.limitations = limitations(&report);
    report
}

fn capabilities(proc: &Path) -> Capabilities {
    let status = fsread::read_small(&proc.join("self/status"))
        .ok()
        .and_then(|raw| procfs::process::Status::from_read(&raw[..]).ok());
    let Some(st) = status else {
        return Capabilities::default();
    };
    let names = processes::cap_names(st.capeff);
    let missing = WANTED_CAPABILITIES
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !names.contains(name))
        .collect();
    Capabilities {
        effective: Some(format!("{:016x}", st.capeff)),
        names,
        missing,
    }
}

fn source_check(path: &Path, opened: Result<physical::source::FileSource, String>) -> SourceCheck {
    let present = std::fs::symlink_metadata(path).is_ok();
    match opened {
        Ok(src) => SourceCheck {
            path: path.display().to_string(),
            present,
            usable: true,
            ranges: Some(src.ranges().len()),
            bytes: Some(src.ranges().iter().map(|r| r.len).sum()),
            error: None,
        },
        Err(error) => SourceCheck {
            path: path.display().to_string(),
            present,
            usable: false,
            ranges: None,
            bytes: None,
            error: Some(error),
        },
    }
}

fn physical_memory(roots: &Roots) -> PhysicalMemory {
    let ram = physical::system_ram(roots);
    let kcore = source_check(
        &roots.proc.join("kcore"),
        physical::open_kcore(roots, ram.as_deref()),
    );
    let crash = source_check(
        Path::new(physical::CRASH_DEVICE),
        physical::open_crash(roots, ram.as_deref()),
    );
    let possible = [&kcore, &crash]
        .iter()
        .any(|s| s.usable && s.ranges.unwrap_or(0) > 0);
    PhysicalMemory {
        kcore,
        crash,
        possible,
    }
}

fn symbol_sources(roots: &Roots) -> SymbolSources {
    let btf = std::fs::metadata(kernel_symbols::btf_path(roots)).ok();
    let kallsyms = kernel_symbols::kallsyms_addresses_visible(roots);
    SymbolSources {
        btf_present: btf.is_some(),
        btf_bytes: btf.map(|m| m.len()),
        kallsyms_addresses_visible: kallsyms.as_ref().ok().copied(),
        kallsyms_error: kallsyms.err(),
    }
}

fn output_check(proc: &Path, dir: &Path) -> Output {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let exists = absolute.is_dir();
    let measured = absolute
        .ancestors()
        .find(|p| p.is_dir())
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let blocking_fs = BlockingMounts::read(proc)
        .containing(&absolute)
        .map(|(_, t)| t.to_owned());
    let (tx, rx) = mpsc::channel();
    let target = measured.clone();
    // Detached on purpose: a statvfs stuck on a dead server cannot be
    // cancelled, only left behind when the process exits.
    let _ = std::thread::Builder::new()
        .name("preflight-statvfs".into())
        .spawn(move || {
            let _ = tx.send(free_bytes(&target));
        });
    let (free_bytes, error) = match rx.recv_timeout(STATVFS_TIMEOUT) {
        Ok(Ok(free)) => (Some(free), None),
        Ok(Err(e)) => (None, Some(format!("statvfs {}: {e}", measured.display()))),
        Err(_) => (
            None,
            Some(format!(
                "statvfs {} did not answer within {}s (a hung network file system?)",
                measured.display(),
                STATVFS_TIMEOUT.as_secs()
            )),
        ),
    };
    Output {
        path: dir.display().to_string(),
        exists,
        measured: measured.display().to_string(),
        free_bytes,
        blocking_fs,
        error,
    }
}

fn estimates(roots: &Roots) -> Estimates {
    let mut est = Estimates {
        physical_memory_bytes: physical::expected_bytes(roots),
        memory_budget: DEFAULT_MEMORY_BUDGET,
        memory_process_budget: DEFAULT_MEMORY_PROCESS_BUDGET,
        ..Estimates::default()
    };
    let Ok(pids) = processes::list_pids(&roots.proc) else {
        return est;
    };
    let suspicious = MemorySelector::Suspicious;
    for pid in pids {
        if own_task::is_agent(&roots.proc, pid) {
            continue;
        }
        est.processes += 1;
        let status = fsread::read_small(&roots.proc.join(pid.to_string()).join("status"))
            .ok()
            .and_then(|raw| procfs::process::Status::from_read(&raw[..]).ok());
        if let Some(kib) = status.and_then(|s| s.vmrss) {
            est.resident_bytes = est.resident_bytes.saturating_add(kib.saturating_mul(1024));
        }
        let (mut all, mut sus, mut sus_regions) = (0u64, 0u64, 0u64);
        let streamed = memory_maps::stream_maps_at(&roots.proc, pid, "", |r| {
            if r.perms.starts_with('r') {
                all = all.saturating_add(r.size);
                if suspicious.wants(&r) {
                    sus = sus.saturating_add(r.size);
                }
            }
            if suspicious.wants(&r) {
                sus_regions += 1;
            }
            Ok::<(), std::convert::Infallible>(())
        });
        if streamed.is_err() {
            est.processes_unreadable += 1;
            continue;
        }
        // At most the per-process budget of each process is stored.
        est.memory_regions_all_bytes = est
            .memory_regions_all_bytes
            .saturating_add(all.min(DEFAULT_MEMORY_PROCESS_BUDGET));
        est.memory_regions_suspicious_bytes = est
            .memory_regions_suspicious_bytes
            .saturating_add(sus.min(DEFAULT_MEMORY_PROCESS_BUDGET));
        est.suspicious_regions += sus_regions;
    }
    est
}

/// The sentences of [`Report::limitations`].
fn limitations(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    if !r.root {
        out.push(format!(
            "not root (euid {}): other users' processes, logs and all kernel memory are out of reach",
            r.euid
        ));
    }
    for name in &r.capabilities.missing {
        if let Some((_, what)) = WANTED_CAPABILITIES.iter().find(|(n, _)| n == name) {
            out.push(format!("{name} not held: no {what}"));
        }
    }
    if !r.physical_memory.possible {
        let why = [&r.physical_memory.kcore, &r.physical_memory.crash]
            .iter()
            .filter_map(|s| s.error.as_deref())
            .collect::<Vec<_>>()
            .join("; ");
        out.push(format!("--physical-memory would capture nothing: {why}"));
    }
    if r.ptrace_scope.as_deref() == Some("3") {
        out.push(
            "kernel.yama.ptrace_scope is 3: no process memory can be read, root included \
             (it cannot be lowered without a reboot)"
                .to_owned(),
        );
    }
    if !r.kernel_symbols.btf_present {
        out.push(
            "no /sys/kernel/btf/vmlinux: `ircap-collector symbols` cannot build a symbol table \
             (a debug kernel package is needed)"
                .to_owned(),
        );
    }
    match (
        r.kernel_symbols.kallsyms_addresses_visible,
        &r.kernel_symbols.kallsyms_error,
    ) {
        (Some(false), _) => out.push(format!(
            "/proc/kallsyms shows zero addresses (kptr_restrict {}): symbols cannot be located \
             in a memory image",
            r.kptr_restrict.as_deref().unwrap_or("?")
        )),
        (None, Some(e)) => out.push(format!("kallsyms: {e}")),
        _ => {}
    }
    if let Some(o) = &r.output {
        if let Some(t) = &o.blocking_fs {
            out.push(format!(
                "the output {} is on a {t} file system: a hung server stalls the capture",
                o.path
            ));
        }
        if let Some(e) = &o.error {
            out.push(format!("output: {e}"));
        }
        if let (Some(free), Some(need)) = (o.free_bytes, r.estimates.physical_memory_bytes)
            && r.physical_memory.possible
            && need > free
        {
            out.push(format!(
                "the output has {free} bytes free, less than physical memory ({need} bytes \
                 before compression): set --physical-memory-budget or use --collector"
            ));
        }
    }
    out
}

/// The human table (for a terminal).
#[must_use]
pub fn render(r: &Report) -> String {
    let yes = |b: bool| if b { "yes" } else { "NO" };
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    let source = |s: &SourceCheck| {
        if s.usable {
            format!(
                "usable, {} range(s), {}",
                s.ranges.unwrap_or(0),
                size(s.bytes)
            )
        } else if s.present {
            format!("present, NOT usable: {}", opt(&s.error))
        } else {
            "absent".to_owned()
        }
    };
    let mut rows: Vec<(&str, String)> = vec![
        (
            "agent",
            format!("{} ({}), pid {}", r.agent_version, r.arch, r.pid),
        ),
        ("kernel", opt(&r.kernel_release)),
        ("root", format!("{} (euid {})", yes(r.root), r.euid)),
        (
            "capabilities missing",
            if r.capabilities.missing.is_empty() {
                "none".to_owned()
            } else {
                r.capabilities.missing.join(", ")
            },
        ),
        ("lockdown", opt(&r.lockdown)),
        ("kptr_restrict", opt(&r.kptr_restrict)),
        ("perf_event_paranoid", opt(&r.perf_event_paranoid)),
        ("ptrace_scope", opt(&r.ptrace_scope)),
        ("/proc/kcore", source(&r.physical_memory.kcore)),
        ("/dev/crash", source(&r.physical_memory.crash)),
        (
            "BTF",
            if r.kernel_symbols.btf_present {
                format!("yes, {}", size(r.kernel_symbols.btf_bytes))
            } else {
                "NO".to_owned()
            },
        ),
        (
            "kallsyms addresses",
            r.kernel_symbols
                .kallsyms_addresses_visible
                .map_or_else(|| "unreadable".to_owned(), |v| yes(v).to_owned()),
        ),
        (
            "physical memory size",
            size(r.estimates.physical_memory_bytes),
        ),
        (
            "regions all / suspicious",
            format!(
                "{} / {} ({} regions), budget {}",
                size(Some(r.estimates.memory_regions_all_bytes)),
                size(Some(r.estimates.memory_regions_suspicious_bytes)),
                r.estimates.suspicious_regions,
                size(Some(r.estimates.memory_budget))
            ),
        ),
    ];
    if let Some(o) = &r.output {
        rows.push((
            "output free",
            format!("{} at {}", size(o.free_bytes), o.measured),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = String::new();
    for (k, v) in rows {
        text.push_str(&format!("{k:<width$}  {v}\n"));
    }
    for l in &r.limitations {
        text.push_str(&format!("! {l}\n"));
    }
    text
}

/// Bytes in MiB (or `-`).
fn size(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1} MiB", b as f64 / 1_048_576.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixture host: kcore missing, lockdown in confidentiality, BTF
    /// present, kallsyms hidden.
    #[test]
    fn fixture_host_reports_each_refusal() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let roots = Roots {
            proc: tmp.path().join("proc"),
            sys: tmp.path().join("sys"),
            ..Roots::host()
        };
        std::fs::create_dir_all(roots.proc.join("sys/kernel/yama"))?;
        std::fs::create_dir_all(roots.sys.join("kernel/security"))?;
        std::fs::create_dir_all(roots.sys.join("kernel/btf"))?;
        std::fs::write(roots.proc.join("sys/kernel/kptr_restrict"), "2\n")?;
        std::fs::write(roots.proc.join("sys/kernel/yama/ptrace_scope"), "3\n")?;
        std::fs::write(roots.proc.join("sys/kernel/osrelease"), "6.1.0-test\n")?;
        std::fs::write(
            roots.proc.join("iomem"),
            "00001000-0009fbff : System RAM\n00100000-0fffffff : System RAM\n",
        )?;
        std::fs::write(
            roots.proc.join("kallsyms"),
            "0000000000000000 T _text\n0000000000000000 T _stext\n",
        )?;
        std::fs::write(
            roots.sys.join("kernel/security/lockdown"),
            "none integrity [confidentiality]\n",
        )?;
        std::fs::write(roots.sys.join("kernel/btf/vmlinux"), vec![0u8; 4096])?;
        let r = run(&roots, Some(&tmp.path().join("not/yet")));
        assert_eq!(r.lockdown.as_deref(), Some("confidentiality"));
        assert_eq!(r.kptr_restrict.as_deref(), Some("2"));
        assert_eq!(r.ptrace_scope.as_deref(), Some("3"));
        assert_eq!(r.kernel_release.as_deref(), Some("6.1.0-test"));
        assert!(!r.physical_memory.kcore.present);
        assert!(!r.physical_memory.possible);
        let kcore_err = r.physical_memory.kcore.error.as_deref().unwrap_or("");
        assert!(kcore_err.contains("CONFIG_PROC_KCORE"), "{kcore_err}");
        assert_eq!(r.kernel_symbols.btf_bytes, Some(4096));
        assert_eq!(r.kernel_symbols.kallsyms_addresses_visible, Some(false));
        assert_eq!(
            r.estimates.physical_memory_bytes,
            Some(0x9_fc00 - 0x1000 + 0x1000_0000 - 0x10_0000)
        );
        let out = r.output.as_ref().ok_or("no output check")?;
        assert!(!out.exists);
        assert_eq!(out.measured, tmp.path().display().to_string());
        assert!(out.free_bytes.is_some_and(|f| f > 0));
        let all = r.limitations.join("\n");
        assert!(all.contains("ptrace_scope is 3"), "{all}");
        assert!(all.contains("zero addresses (kptr_restrict 2)"), "{all}");
        assert!(
            all.contains("--physical-memory would capture nothing"),
            "{all}"
        );
        let table = render(&r);
        assert!(table.contains("lockdown"), "{table}");
        assert!(table.contains("confidentiality"), "{table}");
        Ok(())
    }
}
