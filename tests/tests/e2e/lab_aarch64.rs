//! The aarch64 (Graviton) agent on Debian's arm64 kernel, booted by
//! `ircap_e2e::lab` under `qemu-system-aarch64 -M virt -cpu max` (TCG):
//! the static aarch64 agent reads the guest's real `/proc/kcore`, the LiME
//! ranges are the guest's System RAM (whole pages), the capture verifies,
//! Volatility 3 finds the banner of `/proc/version`, and the KASLR offset,
//! derivable on x86_64 only, is recorded as not derivable with the reason.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ircap_e2e::lab::{
    Arch, Guest, capture_dir, gunzip_to, kernel_symbols_row, lime_ranges, manifest, system_ram,
    verify, vol, work_dir,
};
use serde_json::Value;

const SCENARIO: &str = "
uname -m >/out/uname
cat /proc/iomem >/out/iomem
cat /proc/version >/out/version
ircap-agent preflight --output /out/cap >/out/preflight.json 2>/out/preflight.log
echo $? >/out/preflight.rc
mkdir -p /out/cap
t0=$(cut -d' ' -f1 /proc/uptime)
ircap-agent capture --output /out/cap --no-imds --no-logs --physical-memory >/out/summary.json 2>/out/agent.log
echo $? >/out/agent.rc
echo \"$t0 $(cut -d' ' -f1 /proc/uptime)\" >/out/capture.times
";

#[test]
fn lab_aarch64_physical_memory_from_kcore_is_lime_that_volatility_opens() {
    let mut guest = Guest::new(192, SCENARIO);
    guest.arch = Arch::Aarch64;
    let booted = guest.boot();
    assert_eq!(
        booted.rc,
        Some(0),
        "scenario failed:\n{}\nagent log:\n{}\nconsole:\n{}",
        booted.text("scenario.log"),
        booted.text("agent.log"),
        booted.console
    );
    eprintln!(
        "lab: aarch64 192 MiB guest: boot to /init {:?} s, capture (guest uptime start end) {}, whole run {:.1} s",
        booted.boot_secs,
        booted.text("capture.times").trim(),
        booted.elapsed.as_secs_f64()
    );
    assert_eq!(booted.text("uname").trim(), "aarch64");
    assert_eq!(
        booted.text("agent.rc").trim(),
        "0",
        "{}",
        booted.text("agent.log")
    );
    let summary: Value = serde_json::from_str(&booted.text("summary.json")).unwrap();
    assert_eq!(summary["status"], "complete", "{summary}");
    let cap = capture_dir(&booted, "cap");
    verify(&cap);
    let m = manifest(&cap);
    assert_eq!(m["status"], "complete");

    // Preflight on the guest saw the same kcore the capture used.
    assert_eq!(booted.text("preflight.rc").trim(), "0");
    let pre: Value = serde_json::from_str(&booted.text("preflight.json"))
        .unwrap_or_else(|e| panic!("{e}: {}", booted.text("preflight.log")));
    assert_eq!(pre["arch"], "aarch64");
    assert_eq!(pre["physical_memory"]["kcore"]["usable"], true, "{pre}");

    let work = work_dir();
    let lime = work.path().join("physical_memory.lime");
    gunzip_to(&cap.join("physical_memory.lime.gz"), &lime);
    let lime_size = std::fs::metadata(&lime).unwrap().len();
    eprintln!(
        "lab: aarch64 LiME {lime_size} bytes ({:.1} MiB), stored gzip {} bytes, agent duration {} ms",
        lime_size as f64 / 1_048_576.0,
        std::fs::metadata(cap.join("physical_memory.lime.gz"))
            .unwrap()
            .len(),
        summary["duration_ms"]
    );
    let ram = system_ram(&booted.text("iomem"));
    assert!(!ram.is_empty(), "{}", booted.text("iomem"));
    assert!(
        ram[0].0 >= 0x4000_0000,
        "virt's RAM starts at 1 GiB: {ram:x?}"
    );
    let ranges: Vec<(u64, u64)> = lime_ranges(&lime).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(ranges, ram, "LiME ranges vs the guest's System RAM");
    assert_eq!(
        pre["physical_memory"]["kcore"]["bytes"].as_u64(),
        Some(ranges.iter().map(|(s, e)| e - s + 1).sum::<u64>()),
        "preflight's kcore size is the dump's"
    );

    let cache = work.path().join("vol-cache");
    let banners = vol(&lime, None, "banners.Banners", &cache);
    let version = booted.text("version");
    assert!(
        banners
            .iter()
            .any(|b| b["Banner"].as_str().map(str::trim) == Some(version.trim())),
        "banner {version:?} not among {banners:?}"
    );

    // Symbol sources taken; KASLR offsets not guessed on aarch64.
    let row = kernel_symbols_row(&cap);
    assert_eq!(row["banner"], version.as_str());
    assert_eq!(row["kallsyms_addresses_visible"], true, "{row}");
    assert!(row["btf_bytes"].as_u64() > Some(1 << 20), "{row}");
    // Debian's arm64 kernel has no CONFIG_KALLSYMS_ALL: kallsyms lists
    // functions only, and the capture says so.
    assert_eq!(row["kallsyms_data_symbols"], false, "{row}");
    assert!(row["kaslr_virtual_offset"].is_null(), "{row}");
    let why = row["kaslr_not_derivable"].as_str().unwrap_or_default();
    assert!(why.contains("aarch64"), "{row}");
}
