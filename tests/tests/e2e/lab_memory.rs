//! Physical memory from a real kernel (Debian's, booted in QEMU by
//! `ircap_e2e::lab`): the LiME image holds every System RAM range of the
//! guest's `/proc/iomem` under exact headers, a canary planted in a guest
//! process is in it and in that process's region dump, the capture
//! verifies, Volatility 3 finds the banner of `/proc/version`, and the
//! symbol table `ircap-collector symbols` makes from the capture's BTF and
//! kallsyms lets `linux.pslist` and `linux.lsmod` walk the kernel's lists.
//! Under `lockdown=confidentiality` the capture is partial and says why.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use ircap_e2e::bin;
use ircap_e2e::lab::{
    Booted, Guest, Kit, capture_dir, file_contains, gunzip, gunzip_to, kernel_symbols_row,
    lime_ranges, manifest, system_ram, system_ram_bytes, verify, vol, work_dir,
};
use serde_json::Value;

/// The canary: a script (so its `comm` is its own name) whose shell holds
/// `IRCAP-CANARY-<uuid>` in a variable. The whole string exists only in
/// that process's heap: the uuid is written out alone and the prefix is
/// never next to it anywhere else.
const CANARY: &str = r#"
cat >/bin/ircap-canary <<'EOF'
#!/bin/sh
u=$(cat /proc/sys/kernel/random/uuid)
CANARY="IRCAP-CANARY-$u"
echo "$u" >/out/canary.uuid
echo $$ >/out/canary.pid
while :; do sleep 3600; done
EOF
chmod +x /bin/ircap-canary
/bin/ircap-canary &
while [ ! -s /out/canary.pid ]; do sleep 0.1; done
PID=$(cat /out/canary.pid)
"#;

fn scenario(agent_args: &str) -> String {
    format!(
        "{CANARY}
cat /proc/iomem >/out/iomem
cat /proc/version >/out/version
cat /proc/modules >/out/modules
ircap-agent preflight --output /out/cap >/out/preflight.json 2>/out/preflight.log
mkdir -p /out/cap
t0=$(cut -d' ' -f1 /proc/uptime)
ircap-agent capture --output /out/cap --no-imds --no-logs {agent_args} >/out/summary.json 2>/out/agent.log
echo $? >/out/agent.rc
echo \"$t0 $(cut -d' ' -f1 /proc/uptime)\" >/out/capture.times
"
    )
}

fn boot_and_capture(memory_mb: u32, cmdline: &[&str], agent_args: &str) -> Booted {
    let mut guest = Guest::new(memory_mb, &scenario(agent_args));
    guest.cmdline = cmdline.iter().map(|s| (*s).to_owned()).collect();
    let booted = guest.boot();
    assert_eq!(
        booted.rc,
        Some(0),
        "scenario failed:\n{}\nagent log:\n{}",
        booted.text("scenario.log"),
        booted.text("agent.log")
    );
    eprintln!(
        "lab: {memory_mb} MiB guest {cmdline:?}: boot to /init {:?} s, capture (guest uptime start end) {}, whole run {:.1} s",
        booted.boot_secs,
        booted.text("capture.times").trim(),
        booted.elapsed.as_secs_f64()
    );
    booted
}

/// Builds the symbol table, then checks that `linux.pslist` finds the
/// canary by pid and name and `linux.lsmod` the guest's modules; returns
/// the pslist rows.
fn symbols_open_the_image(booted: &Booted, cap: &Path, lime: &Path, work: &Path) -> Vec<Value> {
    let symbols = work.join("symbols");
    let out = bin("ircap-collector")
        .arg("symbols")
        .arg(cap)
        .arg("--out")
        .arg(&symbols)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "symbols failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("lab: symbols summary {summary}");
    assert!(
        summary["counts"]["user_types"].as_u64().unwrap() > 1000,
        "{summary}"
    );
    let isf = PathBuf::from(summary["isf"].as_str().unwrap());
    assert!(isf.starts_with(&symbols) && isf.exists(), "{summary}");

    let cache = work.join("vol-cache");
    let t0 = std::time::Instant::now();
    let ps = vol(lime, Some(&symbols), "linux.pslist", &cache);
    eprintln!("lab: vol linux.pslist {:.1} s", t0.elapsed().as_secs_f64());
    let pid: u64 = booted.text("canary.pid").trim().parse().unwrap();
    for row in ps.iter().take(3).chain(ps.iter().rev().take(3)) {
        eprintln!(
            "lab: pslist PID {} PPID {} COMM {}",
            row["PID"], row["PPID"], row["COMM"]
        );
    }
    let canary = ps
        .iter()
        .find(|r| r["PID"].as_u64() == Some(pid))
        .unwrap_or_else(|| panic!("pid {pid} not in pslist: {ps:?}"));
    assert_eq!(canary["COMM"], "ircap-canary", "{canary}");
    assert!(
        ps.iter().any(|r| r["PID"] == 1 && r["COMM"] == "init"),
        "init not in pslist"
    );

    let lsmod = vol(lime, Some(&symbols), "linux.lsmod", &cache);
    let listed: Vec<&str> = lsmod
        .iter()
        .filter_map(|r| r["Module Name"].as_str())
        .collect();
    let modules = booted.text("modules");
    let expected: Vec<&str> = modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!expected.is_empty());
    for m in &expected {
        assert!(listed.contains(m), "module {m} not in lsmod {listed:?}");
    }
    ps
}

#[test]
fn lab_physical_memory_of_a_real_kernel_is_complete_lime_that_volatility_opens() {
    let booted = boot_and_capture(256, &[], "--physical-memory --memory-regions pid=$PID");
    let cap = capture_dir(&booted, "cap");
    assert_eq!(
        booted.text("agent.rc").trim(),
        "0",
        "{}",
        booted.text("agent.log")
    );
    let summary: Value = serde_json::from_str(&booted.text("summary.json")).unwrap();
    assert_eq!(summary["status"], "complete", "{summary}");
    verify(&cap);
    let m = manifest(&cap);
    let errors = m["errors"].as_array().unwrap();
    assert!(
        !errors.iter().any(|e| e["source"] == "physical_memory"),
        "{errors:?}"
    );

    let work = work_dir();
    let lime = work.path().join("physical_memory.lime");
    gunzip_to(&cap.join("physical_memory.lime.gz"), &lime);
    let lime_size = std::fs::metadata(&lime).unwrap().len();
    eprintln!(
        "lab: LiME {} bytes ({:.1} MiB), stored gzip {} bytes, agent duration {} ms",
        lime_size,
        lime_size as f64 / 1048576.0,
        std::fs::metadata(cap.join("physical_memory.lime.gz"))
            .unwrap()
            .len(),
        summary["duration_ms"]
    );

    // Every System RAM range of the guest, exactly, and nothing else.
    let ram = system_ram(&booted.text("iomem"));
    assert!(ram.len() >= 2, "{ram:?}");
    let ranges: Vec<(u64, u64)> = lime_ranges(&lime).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(ranges, ram, "LiME ranges vs the guest's System RAM");
    ranges_account_for_all_system_ram(&booted, &cap);

    // Preflight, run in the guest just before, saw this kcore and this RAM.
    let pre = preflight(&booted);
    assert_eq!(pre["lockdown"], "none", "{pre}");
    assert_eq!(pre["physical_memory"]["possible"], true, "{pre}");
    assert_eq!(pre["physical_memory"]["kcore"]["usable"], true, "{pre}");
    assert_eq!(
        pre["physical_memory"]["kcore"]["bytes"].as_u64(),
        Some(ranges.iter().map(|(s, e)| e - s + 1).sum::<u64>()),
        "{pre}"
    );
    assert_eq!(
        pre["estimates"]["physical_memory_bytes"].as_u64(),
        Some(
            system_ram_bytes(&booted.text("iomem"))
                .iter()
                .map(|(s, e)| e - s + 1)
                .sum::<u64>()
        ),
        "{pre}"
    );
    assert_eq!(pre["output"]["blocking_fs"], "9p", "{pre}");

    // The canary, whole, in the physical image and in the process dump.
    let canary = format!("IRCAP-CANARY-{}", booted.text("canary.uuid").trim());
    assert_eq!(canary.len(), 13 + 36);
    assert!(
        file_contains(&lime, canary.as_bytes()),
        "canary not in the LiME image"
    );
    let pid = booted.text("canary.pid").trim().to_owned();
    let dump = gunzip(&cap.join(format!("memory/pid-{pid}.bin.gz")));
    assert!(
        dump.windows(canary.len()).any(|w| w == canary.as_bytes()),
        "canary not in the memory_regions dump of pid {pid}"
    );

    // Volatility stacks the LiME layer and finds the guest's banner.
    let cache = work.path().join("vol-cache");
    let banners = vol(&lime, None, "banners.Banners", &cache);
    let version = booted.text("version");
    assert!(
        banners
            .iter()
            .any(|b| b["Banner"].as_str().map(str::trim) == Some(version.trim())),
        "banner {version:?} not among {banners:?}"
    );

    // Symbols: sources captured, KASLR offset derived, the table opens it.
    let row = kernel_symbols_row(&cap);
    assert_eq!(row["banner"], version.as_str());
    assert_eq!(row["kallsyms_addresses_visible"], true, "{row}");
    assert_eq!(row["kallsyms_data_symbols"], true, "{row}");
    let kaslr = row["kaslr_virtual_offset"].as_str().unwrap();
    assert_ne!(kaslr, "0x0", "KASLR is on in this guest: {row}");
    assert_eq!(row["five_level_paging"], false, "{row}");
    save_btf(&cap);
    symbols_open_the_image(&booted, &cap, &lime, work.path());
}

#[test]
fn lab_nokaslr_kernel_symbols_give_a_zero_offset_and_open_the_image() {
    let booted = boot_and_capture(192, &["nokaslr"], "--physical-memory");
    let cap = capture_dir(&booted, "cap");
    assert_eq!(
        booted.text("agent.rc").trim(),
        "0",
        "{}",
        booted.text("agent.log")
    );
    verify(&cap);
    let row = kernel_symbols_row(&cap);
    assert_eq!(row["kaslr_virtual_offset"], "0x0", "{row}");
    assert_eq!(row["text_address"], "0xffffffff81000000", "{row}");
    let work = work_dir();
    let lime = work.path().join("physical_memory.lime");
    gunzip_to(&cap.join("physical_memory.lime.gz"), &lime);
    let ranges: Vec<(u64, u64)> = lime_ranges(&lime).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(ranges, system_ram(&booted.text("iomem")));
    symbols_open_the_image(&booted, &cap, &lime, work.path());
}

#[test]
fn lab_lockdown_confidentiality_gives_a_partial_capture_with_the_kernels_reason() {
    let mut guest = Guest::new(
        128,
        &scenario("--physical-memory").replace(CANARY, "PID=1\n"),
    );
    guest.cmdline = vec!["lockdown=confidentiality".into()];
    let booted = guest.boot();
    assert_eq!(booted.rc, Some(0), "{}", booted.text("scenario.log"));
    let cap = capture_dir(&booted, "cap");
    verify(&cap);
    let m = manifest(&cap);
    let refusal = m["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "physical_memory")
        .unwrap_or_else(|| panic!("no physical_memory error: {}", m["errors"]));
    let message = refusal["message"].as_str().unwrap();
    assert!(
        message.contains("/proc/kcore") && message.contains("lockdown is in confidentiality mode"),
        "{message}"
    );
    assert!(
        !cap.join("physical_memory.lime.gz").exists(),
        "no image under lockdown"
    );
    // Preflight said so beforehand, with the same reason.
    let pre = preflight(&booted);
    assert_eq!(pre["lockdown"], "confidentiality", "{pre}");
    let kcore = &pre["physical_memory"]["kcore"];
    assert_eq!(kcore["present"], true, "{pre}");
    assert_eq!(kcore["usable"], false, "{pre}");
    assert!(
        kcore["error"]
            .as_str()
            .is_some_and(|e| e.contains("lockdown is in confidentiality mode")),
        "{pre}"
    );
    assert_eq!(pre["physical_memory"]["possible"], false, "{pre}");
    // The symbol sources are still taken: BTF is not locked down.
    assert!(cap.join("kernel_symbols/vmlinux.btf.gz").exists());
    // Shared contract (issue 12): an explicitly requested artifact that was
    // impossible makes the capture "partial", exit code 4.
    let summary: Value = serde_json::from_str(&booted.text("summary.json")).unwrap();
    assert_eq!(summary["status"], "partial", "{summary}");
    assert_eq!(m["status"], "partial");
    assert_eq!(
        booted.text("agent.rc").trim(),
        "4",
        "{}",
        booted.text("agent.log")
    );
}

/// `ircap-agent preflight`'s report from the guest.
fn preflight(booted: &Booted) -> Value {
    serde_json::from_str(&booted.text("preflight.json")).unwrap_or_else(|e| {
        panic!(
            "preflight.json: {e}: {}{}",
            booted.text("preflight.json"),
            booted.text("preflight.log")
        )
    })
}

/// Each System RAM range of `/proc/iomem`, byte for byte, is the LiME
/// ranges cut from it plus the parts the index records as not in the
/// source: the tail of 0x1000-0x9fbff that kcore's whole pages leave out
/// is named, not silently dropped.
fn ranges_account_for_all_system_ram(booted: &Booted, cap: &Path) {
    let rows: Vec<Value> = gunzip(&cap.join("physical_memory.jsonl.gz"))
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .filter(|r: &Value| r.get("start").is_some())
        .collect();
    let hex =
        |v: &Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let mut clipped = 0;
    for (start, end) in system_ram_bytes(&booted.text("iomem")) {
        let mine: Vec<&Value> = rows
            .iter()
            .filter(|r| {
                hex(&r["system_ram"]["start"]) == start
                    && hex(&r["system_ram"]["end_inclusive"]) == end
            })
            .collect();
        assert!(
            !mine.is_empty(),
            "no row for System RAM {start:#x}-{end:#x}: {rows:?}"
        );
        let dumped: u64 = mine.iter().map(|r| r["size"].as_u64().unwrap()).sum();
        let missing: u64 = mine
            .iter()
            .flat_map(|r| r["not_in_source"].as_array().unwrap())
            .map(|g| g["size"].as_u64().unwrap())
            .sum();
        assert_eq!(
            dumped + missing,
            end - start + 1,
            "{start:#x}-{end:#x}: {mine:?}"
        );
        if (end + 1) % 4096 != 0 {
            let gap = &mine[0]["not_in_source"][0];
            assert_eq!(hex(&gap["end"]), end + 1, "{gap}");
            assert!(
                gap["reason"].as_str().unwrap().contains("whole pages"),
                "{gap}"
            );
            clipped += 1;
        }
    }
    assert!(
        clipped >= 1,
        "this guest's 0x9fbff range ends inside a page"
    );
}

/// Keeps the guest's real BTF under `<target>/lab/btf/` for anyone
/// working on the reader (not in git: 4 MiB of the kernel's data), and
/// checks the reader on it.
fn save_btf(cap: &Path) {
    let btf = gunzip(&cap.join("kernel_symbols/vmlinux.btf.gz"));
    let kit = Kit::get();
    let dir = kit.cache.join("btf");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("vmlinux-{}.btf", kit.release)), &btf).unwrap();
    let parsed = ircap_collector::symbols::btf::Btf::parse(&btf).unwrap();
    assert!(parsed.len() > 50_000, "{} types", parsed.len());
    let Some((_, ircap_collector::symbols::btf::Type::Struct { members, .. })) =
        parsed.struct_named("task_struct")
    else {
        panic!("no task_struct in the guest's BTF")
    };
    assert!(members.iter().any(|m| m.name == "comm"));
    assert!(members.iter().any(|m| m.name == "tasks"));
}
