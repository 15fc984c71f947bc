//! `ircap-agent preflight` on this host: every value it reports is checked
//! against what the test reads itself (as root, then as an unprivileged
//! user), a planted writable+executable mapping shows in the suspicious
//! estimate, and the table appears only on a terminal.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
use serde_json::Value;
use support::*;

fn preflight(cmd: &mut Command) -> (Value, String) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "preflight failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (report, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn trimmed(path: &str) -> Value {
    std::fs::read_to_string(path).map_or(Value::Null, |s| Value::from(s.trim()))
}

/// Sum of the top-level System RAM ranges of an iomem text.
fn system_ram_bytes(iomem: &str) -> u64 {
    iomem
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(" : System RAM"))
        .filter_map(|l| {
            let (a, b) = l.split_once(" : ")?.0.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? + 1 - u64::from_str_radix(a, 16).ok()?)
        })
        .sum()
}

fn status_field(name: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        .unwrap()
}

#[test]
fn preflight_reports_what_this_host_allows() -> TestResult {
    // An 8 MiB writable+executable anonymous mapping in this (non-agent)
    // process: `--memory-regions suspicious` would take it.
    let len = std::num::NonZeroUsize::new(8 << 20).ok_or("zero")?;
    let map = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE | ProtFlags::PROT_EXEC,
            MapFlags::MAP_PRIVATE,
        )?
    };
    let tmp = tempfile::tempdir()?;
    let output = tmp.path().join("not/yet/there");
    let (r, stderr) = preflight(agent().arg("preflight").arg("--output").arg(&output));

    assert_eq!(r["agent_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(r["arch"], std::env::consts::ARCH);
    assert_eq!(r["kernel_release"], trimmed("/proc/sys/kernel/osrelease"));
    assert_eq!(r["euid"], 0, "the suite runs as root");
    assert_eq!(r["root"], true);
    assert_eq!(
        r["capabilities"]["effective"].as_str(),
        Some(status_field("CapEff:").as_str())
    );
    let capeff = u64::from_str_radix(&status_field("CapEff:"), 16)?;
    let names: Vec<&str> = r["capabilities"]["names"]
        .as_array()
        .ok_or("no names")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(names.len() as u32, capeff.count_ones(), "{names:?}");
    for m in r["capabilities"]["missing"]
        .as_array()
        .ok_or("no missing")?
    {
        let m = m.as_str().ok_or("not a name")?;
        assert!(!names.contains(&m), "{m} both held and missing");
    }
    if capeff == (1u64 << 41) - 1 {
        assert_eq!(r["capabilities"]["missing"], serde_json::json!([]));
    }
    assert_eq!(
        r["kptr_restrict"],
        trimmed("/proc/sys/kernel/kptr_restrict")
    );
    assert_eq!(
        r["perf_event_paranoid"],
        trimmed("/proc/sys/kernel/perf_event_paranoid")
    );
    assert_eq!(
        r["ptrace_scope"],
        trimmed("/proc/sys/kernel/yama/ptrace_scope")
    );
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
                .map(str::to_owned)
        });
    assert_eq!(r["lockdown"].as_str(), lockdown.as_deref());

    // Physical memory: this VM has no /proc/kcore; the reason is the
    // kernel's, and nothing is claimed possible that is not.
    let kcore = &r["physical_memory"]["kcore"];
    assert_eq!(kcore["present"], Path::new("/proc/kcore").exists());
    if !Path::new("/proc/kcore").exists() {
        assert_eq!(kcore["usable"], false);
        let why = kcore["error"].as_str().unwrap_or_default();
        assert!(why.contains("CONFIG_PROC_KCORE"), "{why}");
    }
    let crash = &r["physical_memory"]["crash"];
    assert_eq!(crash["present"], Path::new("/dev/crash").exists());
    let possible = kcore["usable"] == true || crash["usable"] == true;
    assert_eq!(r["physical_memory"]["possible"], possible);
    let limitations = r["limitations"].to_string();
    assert_eq!(
        limitations.contains("--physical-memory would capture nothing"),
        !possible,
        "{limitations}"
    );
    assert_eq!(
        r["estimates"]["physical_memory_bytes"].as_u64(),
        Some(system_ram_bytes(&std::fs::read_to_string("/proc/iomem")?))
    );

    // Symbol sources.
    let btf = std::fs::metadata("/sys/kernel/btf/vmlinux").ok();
    assert_eq!(r["kernel_symbols"]["btf_present"], btf.is_some());
    assert_eq!(
        r["kernel_symbols"]["btf_bytes"].as_u64(),
        btf.map(|m| m.len())
    );
    let kallsyms = std::fs::read_to_string("/proc/kallsyms")?;
    let visible = kallsyms
        .lines()
        .filter_map(|l| l.split(' ').next())
        .any(|a| u64::from_str_radix(a, 16).is_ok_and(|v| v != 0));
    assert_eq!(r["kernel_symbols"]["kallsyms_addresses_visible"], visible);

    // The output: not created, measured at its nearest existing parent.
    let out = &r["output"];
    assert_eq!(out["exists"], false);
    assert!(!output.exists() && !tmp.path().join("not").exists());
    assert_eq!(out["measured"], tmp.path().display().to_string());
    let st = nix::sys::statvfs::statvfs(tmp.path())?;
    let free = st.blocks_available() * st.fragment_size();
    let reported = out["free_bytes"].as_u64().ok_or("no free_bytes")?;
    assert!(
        reported.abs_diff(free) < (256 << 20),
        "{reported} vs {free}"
    );

    // Estimates: this process's w+x mapping is counted.
    let est = &r["estimates"];
    assert!(
        est["memory_regions_suspicious_bytes"].as_u64() >= Some(8 << 20),
        "{est}"
    );
    assert!(est["suspicious_regions"].as_u64() >= Some(1), "{est}");
    assert!(est["resident_bytes"].as_u64() > Some(0), "{est}");
    assert!(
        est["memory_regions_all_bytes"].as_u64() >= est["memory_regions_suspicious_bytes"].as_u64(),
        "{est}"
    );
    assert!(est["processes"].as_u64() > Some(1), "{est}");

    // Not a terminal: JSON only, no table.
    assert!(!stderr.contains("capabilities missing"), "{stderr}");
    unsafe { nix::sys::mman::munmap(map, len.get())? };
    Ok(())
}

#[test]
fn preflight_as_an_unprivileged_user_says_what_is_missing() -> TestResult {
    let (r, _) = preflight(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(env!("CARGO_BIN_EXE_ircap-agent"))
            .arg("preflight"),
    );
    assert_eq!(r["euid"], 65534);
    assert_eq!(r["root"], false);
    assert_eq!(r["capabilities"]["effective"], "0000000000000000");
    let missing = r["capabilities"]["missing"].to_string();
    for cap in ["CAP_SYS_PTRACE", "CAP_SYS_RAWIO", "CAP_SYSLOG"] {
        assert!(missing.contains(cap), "{missing}");
    }
    assert_eq!(r["physical_memory"]["possible"], false);
    // /proc/iomem reads as zeros without CAP_SYS_ADMIN: MemTotal instead.
    let mem_total: u64 = std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or("no MemTotal")?;
    assert_eq!(
        r["estimates"]["physical_memory_bytes"].as_u64(),
        Some(mem_total * 1024)
    );
    assert!(r["output"].is_null());
    let limitations = r["limitations"].to_string();
    assert!(
        limitations.contains("not root (euid 65534)"),
        "{limitations}"
    );
    Ok(())
}

#[test]
fn preflight_on_a_terminal_also_prints_the_table() -> TestResult {
    // `script` gives the agent a pseudo-terminal for stdout and stderr.
    let agent = env!("CARGO_BIN_EXE_ircap-agent");
    let out = Command::new("script")
        .args(["-qec", &format!("{agent} preflight"), "/dev/null"])
        .output()?;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for row in ["lockdown", "/proc/kcore", "capabilities missing", "BTF"] {
        assert!(text.contains(row), "{row} not in the table: {text}");
    }
    assert!(text.contains("\"agent_version\""), "{text}");
    Ok(())
}
