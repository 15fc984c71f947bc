//! The `system` artifact: who and what this host is, and its clocks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use nix::sys::time::TimeSpec;
use nix::time::{ClockId, clock_gettime};
use serde::Serialize;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};

use super::fsread;
use super::imds::Ec2Identity;
use crate::timefmt;

/// Boot time and tick rate, to turn `/proc/PID/stat` ticks into UTC.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    /// Boot time, seconds since the epoch (realtime minus boottime clock,
    /// so sub-second precise).
    pub boot_unix: f64,
    /// `sysconf(_SC_CLK_TCK)`.
    pub clk_tck: u64,
    /// `sysconf(_SC_PAGESIZE)`.
    pub page_size: u64,
}

fn secs(ts: TimeSpec) -> f64 {
    // Precision loss past 2^53 ns is irrelevant for clocks.
    #[allow(clippy::cast_precision_loss)]
    let s = ts.tv_sec() as f64 + ts.tv_nsec() as f64 / 1e9;
    s
}

impl BootClock {
    /// Reads the running host's clocks.
    #[must_use]
    pub fn read() -> Self {
        let sysconf = |var| {
            nix::unistd::sysconf(var)
                .ok()
                .flatten()
                .and_then(|v| u64::try_from(v).ok())
        };
        let now = clock_gettime(ClockId::CLOCK_REALTIME)
            .map(secs)
            .unwrap_or(0.0);
        let up = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .map(secs)
            .unwrap_or(0.0);
        Self {
            boot_unix: now - up,
            clk_tck: sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap_or(100),
            page_size: sysconf(nix::unistd::SysconfVar::PAGE_SIZE).unwrap_or(4096),
        }
    }

    /// RFC 3339 time of an event `ticks` clock ticks after boot.
    #[must_use]
    pub fn after_boot(&self, ticks: u64) -> String {
        #[allow(clippy::cast_precision_loss)]
        let offset = ticks as f64 / self.clk_tck.max(1) as f64;
        timefmt::from_unix_f64(self.boot_unix + offset)
    }
}

/// Clock readings taken together at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Clocks {
    /// Wall clock, RFC 3339 UTC.
    pub utc: String,
    /// CLOCK_REALTIME, seconds.
    pub realtime_seconds: f64,
    /// CLOCK_MONOTONIC, seconds (excludes suspend).
    pub monotonic_seconds: f64,
    /// CLOCK_BOOTTIME, seconds (includes suspend) = uptime.
    pub boottime_seconds: f64,
}

impl Clocks {
    /// Reads all clocks now.
    #[must_use]
    pub fn now() -> Self {
        let read = |id| clock_gettime(id).map(secs).unwrap_or(f64::NAN);
        Self {
            utc: timefmt::rfc3339(SystemTime::now()),
            realtime_seconds: read(ClockId::CLOCK_REALTIME),
            monotonic_seconds: read(ClockId::CLOCK_MONOTONIC),
            boottime_seconds: read(ClockId::CLOCK_BOOTTIME),
        }
    }
}

/// Kernel identification from `uname`.
#[derive(Debug, Clone, Serialize)]
pub struct Kernel {
    /// `uname -s`.
    pub sysname: String,
    /// `uname -r`.
    pub release: String,
    /// `uname -v`.
    pub version: String,
    /// `uname -m`.
    pub machine: String,
}

/// Reads `uname`.
#[must_use]
pub fn kernel() -> Kernel {
    match nix::sys::utsname::uname() {
        Ok(u) => Kernel {
            sysname: u.sysname().to_string_lossy().into_owned(),
            release: u.release().to_string_lossy().into_owned(),
            version: u.version().to_string_lossy().into_owned(),
            machine: u.machine().to_string_lossy().into_owned(),
        },
        Err(_) => Kernel {
            sysname: String::new(),
            release: String::new(),
            version: String::new(),
            machine: String::new(),
        },
    }
}

/// The one record of `system.jsonl.gz`.
#[derive(Debug, Serialize)]
pub struct SystemRecord {
    /// Hostname.
    pub hostname: String,
    /// `uname` fields.
    pub kernel: Kernel,
    /// `/etc/os-release` (or `/usr/lib/os-release`) as key/value.
    pub os_release: BTreeMap<String, String>,
    /// `/etc/machine-id`.
    pub machine_id: Option<String>,
    /// Kernel boot id.
    pub boot_id: Option<String>,
    /// Boot time, RFC 3339 UTC.
    pub boot_time: String,
    /// Seconds since boot (boottime clock).
    pub uptime_seconds: f64,
    /// Clocks read at capture start.
    pub clock_at_start: Clocks,
    /// Time zone name (`/etc/timezone` or the `/etc/localtime` link).
    pub timezone: Option<String>,
    /// `/proc/loadavg`.
    pub loadavg: Option<String>,
    /// Logical CPUs.
    pub cpu_count: usize,
    /// CPU model.
    pub cpu_model: Option<String>,
    /// Total memory, bytes.
    pub memory_total_bytes: u64,
    /// Available memory, bytes.
    pub memory_available_bytes: u64,
    /// Total swap, bytes.
    pub swap_total_bytes: u64,
    /// EC2 identity or why it is unavailable.
    pub ec2: Ec2Identity,
    /// Agent version.
    pub agent_version: String,
    /// Agent pid.
    pub agent_pid: u32,
    /// How the agent's priority was lowered (or why not).
    pub agent_priority: serde_json::Value,
    /// The capture's options.
    pub capture_options: serde_json::Value,
}

/// Parses os-release `KEY="value"` lines.
#[must_use]
pub fn parse_os_release(bytes: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// Reads the host's time zone name.
#[must_use]
pub fn timezone(etc: &Path) -> Option<String> {
    if let Some(tz) = fsread::read_trimmed(&etc.join("timezone")).filter(|s| !s.is_empty()) {
        return Some(tz);
    }
    let link = std::fs::read_link(etc.join("localtime")).ok()?;
    let link = link.to_string_lossy();
    Some(
        link.split_once("zoneinfo/")
            .map_or(link.as_ref(), |(_, name)| name)
            .to_owned(),
    )
}

/// Hostname as the kernel has it.
#[must_use]
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `MemTotal` of `<proc>/meminfo`, in bytes.
#[must_use]
pub fn mem_total_bytes(proc_root: &std::path::Path) -> Option<u64> {
    let raw = super::fsread::read_small(&proc_root.join("meminfo")).ok()?;
    String::from_utf8_lossy(&raw)
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib.saturating_mul(1024))
}

/// CPU and memory totals through sysinfo.
#[must_use]
pub fn hardware() -> (usize, Option<String>, u64, u64, u64) {
    let refresh = RefreshKind::nothing()
        .with_memory(MemoryRefreshKind::everything())
        .with_cpu(CpuRefreshKind::nothing());
    match System::new_with_specifics(refresh) {
        Ok(sys) => (
            sys.cpus().len(),
            sys.cpus()
                .first()
                .map(|c| c.brand().trim().to_owned())
                .filter(|b| !b.is_empty()),
            sys.total_memory(),
            sys.available_memory(),
            sys.total_swap(),
        ),
        Err(_) => (0, None, 0, 0, 0),
    }
}

/// Writes `system.jsonl.gz` (one record) and returns the host identity
/// for the manifest.
///
/// # Errors
/// [`crate::sink::SinkError`] when the table cannot be stored.
pub fn write(
    ctx: &super::Context<'_>,
    clock_at_start: Clocks,
    ec2: Ec2Identity,
    priority: serde_json::Value,
) -> Result<
    (
        ircap_proto::ArtifactEntry,
        ircap_proto::manifest::HostIdentity,
    ),
    crate::sink::SinkError,
> {
    let mut table = crate::artifact::JsonlWriter::open(ctx.sink, "system", "system")?;
    let os_release = fsread::read_small(&ctx.roots.etc.join("os-release"))
        .or_else(|_| fsread::read_small(Path::new("/usr/lib/os-release")))
        .map(|b| parse_os_release(&b))
        .unwrap_or_else(|e| {
            table.error(e.to_string());
            BTreeMap::new()
        });
    let (cpu_count, cpu_model, mem_total, mem_avail, swap_total) = hardware();
    let kernel = kernel();
    let record = SystemRecord {
        hostname: hostname(),
        machine_id: fsread::read_trimmed(&ctx.roots.etc.join("machine-id")),
        boot_id: fsread::read_trimmed(&ctx.roots.proc.join("sys/kernel/random/boot_id")),
        boot_time: timefmt::from_unix_f64(ctx.clock.boot_unix),
        uptime_seconds: clock_at_start.boottime_seconds,
        clock_at_start,
        timezone: timezone(&ctx.roots.etc),
        loadavg: fsread::read_trimmed(&ctx.roots.proc.join("loadavg")),
        cpu_count,
        cpu_model,
        memory_total_bytes: mem_total,
        memory_available_bytes: mem_avail,
        swap_total_bytes: swap_total,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        agent_pid: std::process::id(),
        agent_priority: priority,
        capture_options: serde_json::to_value(ctx.options).unwrap_or_default(),
        kernel,
        os_release,
        ec2,
    };
    let host = ircap_proto::manifest::HostIdentity {
        hostname: record.hostname.clone(),
        machine_id: record.machine_id.clone(),
        boot_id: record.boot_id.clone(),
        kernel_release: record.kernel.release.clone(),
        instance_id: record.ec2.instance_id.clone(),
        account_id: record.ec2.account_id.clone(),
        region: record.ec2.region.clone(),
        ami_id: record.ec2.image_id.clone(),
    };
    table.write(&record)?;
    Ok((table.finish()?, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parses_quotes() {
        let m = parse_os_release(b"NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n# c\n");
        assert_eq!(m["NAME"], "Debian GNU/Linux");
        assert_eq!(m["ID"], "debian");
    }

    #[test]
    fn boot_clock_is_in_the_past() {
        let c = BootClock::read();
        assert!(c.boot_unix > 1.0e9);
        assert!(c.clk_tck > 0);
        assert!(c.after_boot(0).ends_with('Z'));
    }
}
