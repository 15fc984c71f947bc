//! End-to-end: process memory bytes (`--memory-regions`) from a real canary
//! process, and physical memory (`--physical-memory`) converted from a
//! synthetic ELF core to LiME and opened with the real Volatility 3.
//! Needs root (reading another process's memory).

// The canary and LiME helpers below are test code outside #[test] fns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flate2::read::MultiGzDecoder;
use serde_json::Value;
use support::*;

/// A python3 canary: maps anonymous memory, copies the bytes it gets on
/// stdin into it, maps a read+write+execute region holding the first 64 KiB
/// reversed and a `PROT_NONE` region, prints their addresses as JSON and
/// waits.
const CANARY: &str = r#"
import ctypes, json, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
R, W, X, PRIVATE, ANON = 1, 2, 4, 0x02, 0x20
def mm(size, prot):
    a = libc.mmap(None, size, prot, PRIVATE | ANON, -1, 0)
    if a is None or a == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "mmap")
    return a
size, repeat = int(sys.argv[1]), int(sys.argv[2])
data = sys.stdin.buffer.read(size)
assert len(data) == size
out = {"data": mm(size * repeat, R | W)}
for i in range(repeat):
    ctypes.memmove(out["data"] + i * size, data, size)
out["rwx"] = mm(65536, R | W | X)
ctypes.memmove(out["rwx"], data[:65536][::-1], 65536)
out["none"] = mm(65536, R | W)
ctypes.memmove(out["none"], data[:65536], 65536)
assert libc.mprotect(out["none"], 65536, 0) == 0
print(json.dumps(out), flush=True)
time.sleep(600)
"#;

struct Canary {
    process: Planted,
    data: Vec<u8>,
    addr: Value,
}

impl Canary {
    /// A canary holding `size` random bytes `repeat` times in a row.
    fn start(size: usize, repeat: usize) -> Self {
        let mut data = vec![0u8; size];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut data)
            .unwrap();
        let mut child = Command::new("python3")
            .args(["-c", CANARY, &size.to_string(), &repeat.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr: Value = serde_json::from_str(&line).unwrap();
        Self {
            process: Planted(child),
            data,
            addr,
        }
    }

    fn pid(&self) -> i64 {
        self.process.pid()
    }

    fn addr(&self, name: &str) -> u64 {
        self.addr[name].as_u64().unwrap()
    }
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The index row of `pid` whose region holds `addr`.
fn row_at(rows: &[Value], pid: i64, addr: u64) -> &Value {
    rows.iter()
        .find(|r| {
            r["pid"].as_i64() == Some(pid) && hex(&r["start"]) <= addr && addr < hex(&r["end"])
        })
        .unwrap_or_else(|| panic!("no region of {pid} holds {addr:#x}"))
}

/// The stored bytes `[addr, addr + len)` of a process, found through the
/// index exactly as an analyst would: row -> extent -> artifact offset.
fn bytes_at(run: &Run, rows: &[Value], pid: i64, addr: u64, len: usize) -> Vec<u8> {
    let row = row_at(rows, pid, addr);
    let extent = row["extents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| hex(&e["start"]) <= addr && addr + len as u64 <= hex(&e["end"]))
        .unwrap_or_else(|| panic!("no extent holds {addr:#x}: {row}"));
    let blob = gunzip(&run.dir.join(row["artifact"].as_str().unwrap()));
    let at = (extent["artifact_offset"].as_u64().unwrap() + addr - hex(&extent["start"])) as usize;
    blob[at..at + len].to_vec()
}

fn verify(dir: &Path) {
    let out = agent().arg("verify").arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "verify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn regions_by_pid_hold_the_exact_bytes_at_their_addresses_with_gaps() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let canary = Canary::start(4 << 20, 1);
    let pid = canary.pid();
    let run = capture(
        tmp.path(),
        &["--no-logs", "--memory-regions", &format!("pid={pid}")],
    );
    verify(&run.dir);
    let rows = run.table("memory_regions");
    assert!(rows.iter().all(|r| r["pid"].as_i64() == Some(pid)));

    // The random pattern, byte for byte, at its virtual address.
    let data = canary.addr("data");
    assert!(bytes_at(&run, &rows, pid, data, canary.data.len()) == canary.data);
    let reversed: Vec<u8> = canary.data[..65536].iter().rev().copied().collect();
    let rwx = canary.addr("rwx");
    assert!(bytes_at(&run, &rows, pid, rwx, 65536) == reversed);
    assert_eq!(row_at(&rows, pid, rwx)["write_exec"], true);

    // PROT_NONE: a gap, not read, not an error.
    let none = row_at(&rows, pid, canary.addr("none"));
    assert_eq!(none["perms"], "---p");
    assert_eq!(none["bytes_stored"], 0);
    assert_eq!(none["gaps"][0]["reason"], "no read permission");
    assert_eq!(none["gaps"][0]["size"], none["size"]);

    // [vvar] is mapped readable but the kernel refuses to read it: a gap
    // found by reading, covering the whole region.
    let vvar = rows
        .iter()
        .find(|r| r["path"] == "[vvar]")
        .expect("a [vvar] region");
    assert_eq!(vvar["bytes_stored"], 0, "{vvar}");
    assert!(vvar["extents"].as_array().unwrap().is_empty());
    let gap = &vvar["gaps"][0];
    assert!(
        gap["reason"].as_str().unwrap().starts_with("unreadable"),
        "{gap}"
    );
    assert_eq!(
        (hex(&gap["start"]), hex(&gap["end"])),
        (hex(&vvar["start"]), hex(&vvar["end"]))
    );

    // Every region accounted for: stored + gaps = size, SHA-256 of the
    // stored bytes matches, and the artifact is exactly the regions' bytes
    // in order.
    let artifact = format!("memory/pid-{pid}.bin.gz");
    let blob = gunzip(&run.dir.join(&artifact));
    let mut offset = 0u64;
    for r in &rows {
        let gaps: u64 = r["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["size"].as_u64().unwrap())
            .sum();
        assert_eq!(
            r["bytes_stored"].as_u64().unwrap() + gaps,
            r["size"].as_u64().unwrap(),
            "{r}"
        );
        let mut stored = Vec::new();
        for e in r["extents"].as_array().unwrap() {
            assert_eq!(e["artifact_offset"].as_u64().unwrap(), offset);
            let n = hex(&e["end"]) - hex(&e["start"]);
            stored.extend_from_slice(&blob[offset as usize..(offset + n) as usize]);
            offset += n;
        }
        if let Some(sha) = r["sha256"].as_str() {
            assert_eq!(sha, ircap_proto::hashing::sha256_hex(&stored), "{r}");
        }
    }
    assert_eq!(offset, blob.len() as u64);
    let entry = run.manifest()["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == artifact.as_str())
        .cloned()
        .expect("bytes artifact in the manifest");
    assert_eq!(entry["size_uncompressed"].as_u64(), Some(blob.len() as u64));
    assert_eq!(
        entry["sha256_uncompressed"],
        ircap_proto::hashing::sha256_hex(&blob)
    );

    // `suspicious`: the rwx region is there with its bytes, the plain
    // read-write data is not.
    let run = capture(tmp.path(), &["--no-logs", "--memory-regions", "suspicious"]);
    verify(&run.dir);
    let rows = run.table("memory_regions");
    assert!(rows.iter().all(|r| r["suspicious"] == true));
    assert!(bytes_at(&run, &rows, pid, rwx, 65536) == reversed);
    assert!(
        !rows.iter().any(|r| r["pid"].as_i64() == Some(pid)
            && hex(&r["start"]) <= data
            && data < hex(&r["end"])),
        "plain data region selected as suspicious"
    );
    Ok(())
}

#[test]
fn budgets_cap_what_is_stored_and_say_so() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let a = Canary::start(2 << 20, 1);
    let b = Canary::start(2 << 20, 1);
    let stored = |run: &Run, pid: i64| -> u64 {
        run.table("memory_regions")
            .iter()
            .filter(|r| r["pid"].as_i64() == Some(pid))
            .map(|r| r["bytes_stored"].as_u64().unwrap())
            .sum()
    };
    let budget_gaps = |run: &Run| {
        run.table("memory_regions")
            .iter()
            .flat_map(|r| r["gaps"].as_array().unwrap().clone())
            .filter(|g| g["reason"] == "budget")
            .count()
    };

    // Total budget: exactly 1 MiB over both processes.
    let sel = format!("pid={},{}", a.pid(), b.pid());
    let run = capture(
        tmp.path(),
        &[
            "--no-logs",
            "--memory-regions",
            &sel,
            "--memory-budget",
            "1M",
        ],
    );
    verify(&run.dir);
    assert_eq!(stored(&run, a.pid()) + stored(&run, b.pid()), 1 << 20);
    assert!(budget_gaps(&run) > 0);
    assert!(
        !run.dir
            .join(format!("memory/pid-{}.bin.gz", b.pid()))
            .exists()
    );
    let errors = run.manifest()["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "memory_regions.jsonl.gz")
        .unwrap()["errors"]
        .to_string();
    assert!(errors.contains("--memory-budget spent"), "{errors}");

    // Per-process budget: 256 KiB each.
    let run = capture(
        tmp.path(),
        &[
            "--no-logs",
            "--memory-regions",
            &sel,
            "--memory-process-budget",
            "256K",
        ],
    );
    assert_eq!(stored(&run, a.pid()), 256 << 10);
    assert_eq!(stored(&run, b.pid()), 256 << 10);
    assert!(budget_gaps(&run) > 0);
    Ok(())
}

#[test]
fn process_exiting_mid_dump_is_recorded_and_the_capture_completes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // 1 MiB of random bytes repeated 768 times: slow to gzip, so the dump
    // takes seconds and the kill lands in the middle.
    let mut canary = Canary::start(1 << 20, 768);
    let pid = canary.pid();
    let mut child = agent()
        .args([
            "capture",
            "--no-imds",
            "--no-logs",
            "--log",
            "info",
            "--output",
        ])
        .arg(tmp.path())
        .args(["--memory-regions", &format!("pid={pid}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read stderr on a thread (to the end, so the agent never writes into
    // a closed pipe) and kill the canary once its dump has started.
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("Dumping process memory") {
                let _ = started_tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    started_rx.recv_timeout(std::time::Duration::from_secs(60))?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    canary.process.0.kill()?;
    canary.process.0.wait()?;
    let out = child.wait_with_output()?;
    let seen = reader.join().unwrap();
    assert!(out.status.success(), "agent failed: {seen}");
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["status"], "complete");
    let run = Run {
        output: out,
        dir: PathBuf::from(summary["location"].as_str().unwrap()),
        summary,
    };
    verify(&run.dir);
    let rows = run.table("memory_regions");
    let exited: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            r["gaps"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["reason"] == "process exited")
        })
        .collect();
    assert!(!exited.is_empty(), "no region records the exit");
    let stored: u64 = rows
        .iter()
        .map(|r| r["bytes_stored"].as_u64().unwrap())
        .sum();
    assert!(
        stored < 768 << 20,
        "the whole process was dumped before the kill"
    );
    let manifest = run.manifest();
    let entry = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "memory_regions.jsonl.gz")
        .unwrap();
    assert!(
        entry["errors"]
            .to_string()
            .contains("exited while its memory was being read"),
        "{entry}"
    );
    assert!(run.summary["errors_by_artifact"]["memory_regions.jsonl.gz"].as_u64() >= Some(1));
    Ok(())
}

// ---- physical memory -------------------------------------------------------

const BANNER: &[u8] = b"Linux version 6.1.0-ircap-test (ircap@ci) (gcc (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.0-1 (2026-11-23)\n\0";
const BANNER_PHYS: u64 = 0x10_2345;

/// Segment of the synthetic core: (p_type, p_paddr, contents).
struct Seg {
    kind: u32,
    paddr: u64,
    bytes: Vec<u8>,
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Keep to non-letters so nothing in the noise looks like a banner.
            (x % 32) as u8
        })
        .collect()
}

/// Builds an ELF64 core in the /proc/kcore layout: a PT_NOTE, two RAM
/// PT_LOADs (the second holding the banner), a vmalloc PT_LOAD without a
/// physical address (must be skipped) and a kernel-text PT_LOAD that maps
/// RAM already covered (must appear once).
fn synthetic_kcore(path: &Path) -> Vec<Seg> {
    let low = noise(0x8000, 1);
    let mut high = noise(0x4_0000, 2);
    let at = (BANNER_PHYS - 0x10_0000) as usize;
    high[at..at + BANNER.len()].copy_from_slice(BANNER);
    let segs = vec![
        Seg {
            kind: 4,
            paddr: 0,
            bytes: vec![0u8; 64],
        },
        Seg {
            kind: 1,
            paddr: 0x1000,
            bytes: low,
        },
        Seg {
            kind: 1,
            paddr: u64::MAX,
            bytes: noise(0x3000, 3),
        },
        Seg {
            kind: 1,
            paddr: 0x10_0000,
            bytes: high.clone(),
        },
        Seg {
            kind: 1,
            paddr: 0x10_8000,
            bytes: high[0x8000..0xa000].to_vec(),
        },
    ];
    let phoff = 64u64;
    let mut offset = phoff + 56 * segs.len() as u64;
    let mut out = Vec::new();
    out.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // entry
    out.extend_from_slice(&phoff.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&64u16.to_le_bytes());
    out.extend_from_slice(&56u16.to_le_bytes());
    out.extend_from_slice(&(segs.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0u8; 6]); // shentsize, shnum, shstrndx
    assert_eq!(out.len(), 64);
    for s in &segs {
        out.extend_from_slice(&s.kind.to_le_bytes());
        out.extend_from_slice(&7u32.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&0xffff_8880_0000_0000u64.wrapping_add(s.paddr).to_le_bytes());
        out.extend_from_slice(&s.paddr.to_le_bytes());
        out.extend_from_slice(&(s.bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&(s.bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&4096u64.to_le_bytes());
        offset += s.bytes.len() as u64;
    }
    for s in &segs {
        out.extend_from_slice(&s.bytes);
    }
    std::fs::write(path, out).unwrap();
    segs
}

/// Parses a LiME file: (start, end inclusive, bytes) per range.
fn parse_lime(data: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let h = &data[at..at + 32];
        assert_eq!(
            u32::from_le_bytes(h[0..4].try_into().unwrap()),
            0x4C69_4D45,
            "magic at {at}"
        );
        assert_eq!(
            u32::from_le_bytes(h[4..8].try_into().unwrap()),
            1,
            "version at {at}"
        );
        let s = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let e = u64::from_le_bytes(h[16..24].try_into().unwrap());
        assert_eq!(&h[24..32], &[0u8; 8]);
        let len = (e - s + 1) as usize;
        out.push((s, e, data[at + 32..at + 32 + len].to_vec()));
        at += 32 + len;
    }
    out
}

/// Volatility 3's `vol`, installed by `.ci/run` (never skipped: missing is
/// a failure).
fn vol() -> PathBuf {
    let path = std::env::var_os("IRCAP_VOL").map_or_else(
        || PathBuf::from("/opt/ircap-ci/venv/bin/vol"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "Volatility 3 not found at {} (set IRCAP_VOL or run .ci/run, which installs it)",
        path.display()
    );
    path
}

/// Runs `vol -vv -f FILE banners.Banners`; returns (stacked layers line,
/// banners found as (offset, text)).
fn vol_banners(file: &Path) -> (String, Vec<(u64, String)>) {
    let out = Command::new(vol())
        .args(["-q", "-vv", "-r", "json", "-f"])
        .arg(file)
        .arg("banners.Banners")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stacked = stderr
        .lines()
        .find(|l| l.contains("Stacked layers"))
        .unwrap_or_default()
        .to_owned();
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let banners = rows
        .iter()
        .map(|r| {
            (
                r["Offset"].as_u64().unwrap_or(u64::MAX),
                r["Banner"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    (stacked, banners)
}

#[test]
fn physical_memory_from_a_synthetic_kcore_is_lime_that_volatility_opens() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let core = tmp.path().join("kcore.elf");
    let segs = synthetic_kcore(&core);
    let out = tmp.path().join("out");
    let run = capture(
        &out,
        &[
            "--no-logs",
            "--physical-memory",
            "--physical-memory-source",
            core.to_str().unwrap(),
        ],
    );
    verify(&run.dir);

    // Our own parser: two ranges, exact bytes, vmalloc skipped, the text
    // duplicate folded into the direct map.
    let lime = gunzip(&run.dir.join("physical_memory.lime.gz"));
    let ranges = parse_lime(&lime);
    assert_eq!(
        ranges.len(),
        2,
        "{:?}",
        ranges.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>()
    );
    assert_eq!((ranges[0].0, ranges[0].1), (0x1000, 0x8fff));
    assert!(ranges[0].2 == segs[1].bytes);
    assert_eq!((ranges[1].0, ranges[1].1), (0x10_0000, 0x13_ffff));
    assert!(ranges[1].2 == segs[3].bytes);
    let index = run.table("physical_memory");
    assert_eq!(index.len(), 2);
    assert_eq!(index[1]["start"], "0x100000");
    assert_eq!(index[1]["lime_header_offset"], 32 + 0x8000);
    assert_eq!(
        index[1]["sha256"],
        ircap_proto::hashing::sha256_hex(&segs[3].bytes)
    );

    // Volatility 3 on the gunzipped file: LimeLayer stacked, and the
    // planted banner found at its physical address.
    let lime_path = tmp.path().join("out.lime");
    std::fs::write(&lime_path, &lime)?;
    let (stacked, banners) = vol_banners(&lime_path);
    assert!(
        stacked.contains("LimeLayer"),
        "vol did not stack LimeLayer: {stacked:?}"
    );
    let text = String::from_utf8_lossy(&BANNER[..BANNER.len() - 2]).into_owned();
    assert!(
        banners
            .iter()
            .any(|(o, b)| *o == BANNER_PHYS && b.trim_end() == text),
        "banner not at {BANNER_PHYS:#x}: {banners:?}"
    );

    // The same checks fail on a file that is not LiME (vol exits 0 anyway).
    let mut broken = lime.clone();
    broken[0] ^= 0xff;
    let broken_path = tmp.path().join("broken.lime");
    std::fs::write(&broken_path, &broken)?;
    let (stacked, _) = vol_banners(&broken_path);
    assert!(!stacked.contains("LimeLayer"), "{stacked}");
    Ok(())
}

#[test]
fn missing_physical_source_is_recorded_and_the_capture_is_partial() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let run = capture_partial(
        tmp.path(),
        &[
            "--no-logs",
            "--physical-memory",
            "--physical-memory-source",
            "/nonexistent/kcore",
        ],
    );
    verify(&run.dir);
    assert!(run.table("physical_memory").is_empty());
    assert!(!run.dir.join("physical_memory.lime.gz").exists());
    let manifest = run.manifest();
    let errors = manifest["errors"].to_string();
    assert!(
        errors.contains("physical_memory") && errors.contains("/nonexistent/kcore"),
        "{errors}"
    );

    // A file that is not an ELF core: the same, with the reason.
    let junk = tmp.path().join("junk");
    std::fs::write(&junk, vec![0u8; 4096])?;
    let run = capture_partial(
        tmp.path(),
        &[
            "--no-logs",
            "--physical-memory",
            "--physical-memory-source",
            junk.to_str().unwrap(),
        ],
    );
    assert!(
        run.manifest()["errors"]
            .to_string()
            .contains("not an ELF file")
    );
    Ok(())
}

#[test]
fn bad_memory_options_are_usage_errors() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for bad in [
        &["--memory-regions", "pid=0"][..],
        &["--memory-regions", "everything"],
        &["--memory-regions", "all", "--memory-budget", "lots"],
        &["--physical-memory-source", "/proc/kcore"],
        &["--physical-memory", "--physical-memory-budget", "1.5G"],
    ] {
        let out = agent()
            .args(["capture", "--no-imds", "--no-logs", "--output"])
            .arg(tmp.path())
            .args(bad)
            .output()?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("complete")
        );
    }
    assert_eq!(std::fs::read_dir(tmp.path())?.count(), 0, "nothing written");
    Ok(())
}
