//! End-to-end: process memory bytes streamed by the real agent to the real
//! collector over mutual TLS on loopback, stored, verified, and mapped back
//! to their virtual addresses through the region index.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use ircap_e2e::{Collector, TestResult, agent_capture, pki};
use serde_json::Value;

/// Maps 8 MiB read+write+execute, fills it with the bytes from stdin,
/// prints its address and waits.
const CANARY: &str = "import ctypes, mmap, sys, time\n\
n = int(sys.argv[1])\n\
m = mmap.mmap(-1, n, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n\
m.write(sys.stdin.buffer.read(n))\n\
print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)\n\
time.sleep(600)\n";

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap_or("").trim_start_matches("0x"), 16).unwrap_or(0)
}

fn gunzip(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(path)?).read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn memory_regions_stream_to_the_collector_and_map_back_to_addresses() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = Collector::start(&pki, &tmp.path().join("store"), 0);

    let size = 8 << 20;
    let mut data = vec![0u8; size];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut data)?;
    let mut canary = Command::new("python3")
        .args(["-c", CANARY, &size.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    canary.stdin.take().unwrap().write_all(&data)?;
    let mut line = String::new();
    BufReader::new(canary.stdout.take().unwrap()).read_line(&mut line)?;
    let addr: u64 = line.trim().parse()?;
    let pid = i64::from(canary.id());

    let out = agent_capture(
        &collector.url(),
        &pki,
        "web-1",
        &["--no-logs", "--memory-regions", "suspicious"],
    );
    let _ = canary.kill();
    let _ = canary.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["status"], "complete");
    let dir = collector.capture_dir("web-1", summary["capture_id"].as_str().unwrap_or_default());
    ircap_e2e::assert_verifies(&dir);

    let index = gunzip(&dir.join("memory_regions.jsonl.gz"))?;
    let rows: Vec<Value> = index
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(serde_json::from_slice)
        .collect::<Result<_, _>>()?;
    let row = rows
        .iter()
        .find(|r| {
            r["pid"].as_i64() == Some(pid) && hex(&r["start"]) <= addr && addr < hex(&r["end"])
        })
        .expect("the canary's rwx region is in the index");
    assert_eq!(row["write_exec"], true);
    let extent = row["extents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| hex(&e["start"]) <= addr && addr + size as u64 <= hex(&e["end"]))
        .expect("one extent holds the canary's bytes");
    let blob = gunzip(&dir.join(row["artifact"].as_str().unwrap_or_default()))?;
    let at =
        (extent["artifact_offset"].as_u64().unwrap_or(0) + addr - hex(&extent["start"])) as usize;
    assert!(
        blob[at..at + size] == data[..],
        "stored bytes differ from the canary's"
    );
    Ok(())
}
