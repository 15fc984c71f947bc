//! End-to-end: YARA rules run by the real agent over the memory of real
//! processes and over planted files, locally and through a request to a
//! serve-mode agent.
//!
//! The memory canary is a process that copies two halves of a pattern,
//! given in hex on its command line, side by side into one `malloc`ed
//! buffer: the whole pattern exists only there, in its `[heap]`, and it
//! prints the buffer's address. The rules name the pattern as a hex
//! string, so neither the rules text nor this test's binary holds its
//! bytes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use ircap_e2e::{TestResult, bin, json_lines, table_rows};
use serde_json::Value;

/// Copies argv[1] and argv[2] (hex) into one malloc'ed buffer, prints its
/// address and waits.
const CANARY: &str = "import ctypes, sys, time\n\
a = bytes.fromhex(sys.argv[1]); b = bytes.fromhex(sys.argv[2])\n\
libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p\n\
p = libc.malloc(4096)\n\
ctypes.memmove(p, a, len(a)); ctypes.memmove(p + len(a), b, len(b))\n\
print(p, flush=True)\n\
time.sleep(600)\n";

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A random pattern of 24 bytes, as its two hex halves.
fn pattern() -> (String, String) {
    let mut p = [0u8; 24];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut p));
    (to_hex(&p[..12]), to_hex(&p[12..]))
}

/// The running canary, killed on drop.
struct Canary {
    child: Child,
    addr: u64,
}

impl Canary {
    fn start(a: &str, b: &str) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", CANARY, a, b])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        Self {
            child,
            addr: line.trim().parse().unwrap(),
        }
    }

    fn pid(&self) -> i64 {
        i64::from(self.child.id())
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hex string of a YARA rule.
fn yara_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn rules(dir: &Path, heap_hex: &str, file_hex: &str) -> std::path::PathBuf {
    let text = format!(
        "rule heap_canary : implant test {{\n  meta:\n    author = \"e2e\"\n    severity = 7\n  strings:\n    $h = {{ {} }}\n  condition:\n    $h\n}}\n\
         rule file_canary {{\n  strings:\n    $f = {{ {} }}\n  condition:\n    $f\n}}\n",
        yara_hex(heap_hex),
        yara_hex(file_hex)
    );
    let path = dir.join("rules.yar");
    std::fs::write(&path, text).unwrap();
    path
}

fn capture(out: &Path, extra: &[&str]) -> Output {
    bin("ircap-agent")
        .args(["capture", "--no-imds", "--artifacts", "system", "-o"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn capture_dir(out: &Path, output: &Output) -> (Value, std::path::PathBuf) {
    let summary: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no summary: {}", String::from_utf8_lossy(&output.stderr)));
    let dir = out.join(summary["capture_id"].as_str().unwrap_or_default());
    (summary, dir)
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[test]
fn yara_finds_a_heap_canary_and_a_planted_file_but_never_scans_the_agent() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = pattern();
    let (fa, fb) = pattern();
    let canary = Canary::start(&a, &b);
    // A planted file under a test root: 1000 bytes, then the pattern.
    let files = tmp.path().join("tmp-root/sub");
    std::fs::create_dir_all(&files)?;
    let mut planted = vec![b'.'; 1000];
    planted.extend(
        (0..fa.len() + fb.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&format!("{fa}{fb}")[i..i + 2], 16).unwrap()),
    );
    planted.extend(b"trailer");
    let planted_path = files.join("dropper.bin");
    std::fs::write(&planted_path, &planted)?;
    // Hostile neighbours: a symlink to a copy outside the root (never
    // followed) and a FIFO nobody writes (must not block the scan).
    let outside = tmp.path().join("outside.bin");
    std::fs::write(&outside, &planted)?;
    std::os::unix::fs::symlink(&outside, files.join("link.bin"))?;
    assert!(
        Command::new("mkfifo")
            .arg(files.join("pipe"))
            .status()?
            .success()
    );
    let rules = rules(tmp.path(), &format!("{a}{b}"), &format!("{fa}{fb}"));
    let out = tmp.path().join("out");
    let got = capture(
        &out,
        &[
            "--yara",
            rules.to_str().unwrap(),
            "--yara-dir",
            tmp.path().join("tmp-root").to_str().unwrap(),
        ],
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let (summary, dir) = capture_dir(&out, &got);
    assert_eq!(summary["status"], "complete");
    ircap_e2e::assert_verifies(&dir);
    let rows = table_rows(&dir.join("yara_matches.jsonl.gz"));

    // Memory: the canary's heap, at exactly the buffer's address.
    let heap: Vec<&Value> = rows
        .iter()
        .filter(|r| r["pid"].as_i64() == Some(canary.pid()))
        .collect();
    assert_eq!(heap.len(), 1, "{heap:?}");
    let row = heap[0];
    assert_eq!(row["rule"], "heap_canary");
    assert_eq!(row["tags"], serde_json::json!(["implant", "test"]));
    assert_eq!(row["meta"]["author"], "e2e");
    assert_eq!(row["meta"]["severity"], 7);
    assert_eq!(row["target"], "memory");
    assert_eq!(row["process"], "python3");
    assert_eq!(row["region"]["path"], "[heap]");
    assert_eq!(row["sha256"].as_str().unwrap_or_default().len(), 64);
    let strings = row["strings"].as_array().unwrap();
    assert_eq!(strings.len(), 1, "the pattern exists once: {strings:?}");
    let start = u64::from_str_radix(
        row["region"]["start"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("0x"),
        16,
    )?;
    assert_eq!(strings[0]["id"], "$h");
    assert_eq!(strings[0]["address"], format!("0x{:x}", canary.addr));
    assert_eq!(strings[0]["offset"].as_u64(), Some(canary.addr - start));
    assert_eq!(strings[0]["length"], 24);
    assert_eq!(strings[0]["excerpt_hex"], format!("{a}{b}"));

    // The file: its path and the exact offset; the symlink not followed.
    let file: Vec<&Value> = rows.iter().filter(|r| r["target"] == "file").collect();
    assert_eq!(file.len(), 1, "{file:?}");
    assert_eq!(file[0]["rule"], "file_canary");
    assert_eq!(file[0]["path"], planted_path.to_str().unwrap());
    assert_eq!(file[0]["strings"][0]["offset"], 1000);
    assert_eq!(file[0]["bytes_scanned"], planted.len());
    assert_eq!(
        file[0]["sha256"],
        ircap_proto::hashing::sha256_hex(&planted)
    );

    // The agent never scanned itself (it holds the compiled pattern).
    let m = manifest(&dir);
    let agent_pid = m["agent"]["pid"].as_i64().unwrap();
    assert!(
        rows.iter().all(|r| r["pid"].as_i64() != Some(agent_pid)),
        "the agent scanned itself"
    );
    // The rules are recorded by hash, size and names, with the budgets.
    let y = &m["options"]["yara"];
    assert_eq!(
        y["rules"]["names"],
        serde_json::json!(["heap_canary", "file_canary"])
    );
    assert_eq!(y["cpu_budget"], 60.0);
    assert_eq!(y["max_bytes"], 16u64 << 30);
    Ok(())
}

#[test]
fn a_rule_that_matches_nothing_finds_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = pattern();
    let (fa, fb) = pattern();
    let canary = Canary::start(&pattern().0, &pattern().1);
    std::fs::create_dir_all(tmp.path().join("root"))?;
    std::fs::write(tmp.path().join("root/f"), b"nothing to see")?;
    let rules = rules(tmp.path(), &format!("{a}{b}"), &format!("{fa}{fb}"));
    let out = tmp.path().join("out");
    let pid = format!("pid={}", canary.pid());
    let got = capture(
        &out,
        &[
            "--yara",
            rules.to_str().unwrap(),
            "--memory-regions",
            &pid,
            "--yara-dir",
            tmp.path().join("root").to_str().unwrap(),
        ],
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let (summary, dir) = capture_dir(&out, &got);
    assert_eq!(summary["status"], "complete");
    assert_eq!(summary["records"]["yara_matches"], 0);
    assert!(table_rows(&dir.join("yara_matches.jsonl.gz")).is_empty());
    Ok(())
}

#[test]
fn a_byte_budget_cuts_the_scan_and_the_capture_says_so() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = pattern();
    let canary = Canary::start(&a, &b);
    let rules = rules(tmp.path(), &format!("{a}{b}"), &pattern().0);
    let out = tmp.path().join("out");
    let pid = format!("pid={}", canary.pid());
    let got = capture(
        &out,
        &[
            "--yara",
            rules.to_str().unwrap(),
            "--memory-regions",
            &pid,
            "--yara-max-bytes",
            "64K",
            "--yara-dir",
            tmp.path().to_str().unwrap(),
        ],
    );
    // Exit 4: stored, partial.
    assert_eq!(
        got.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let (summary, dir) = capture_dir(&out, &got);
    assert_eq!(summary["status"], "partial");
    let m = manifest(&dir);
    let cut = m["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == "yara_matches")
        .expect("the cut is in the manifest's errors");
    let message = cut["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("YARA scan cut") && message.contains("--yara-max-bytes of 65536 bytes"),
        "{message}"
    );
    assert_eq!(m["options"]["yara"]["max_bytes"], 65536);
    ircap_e2e::assert_verifies(&dir);
    Ok(())
}

#[test]
fn a_cpu_budget_cuts_the_scan_and_the_capture_says_so() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = pattern();
    let canary = Canary::start(&a, &b);
    let rules = rules(tmp.path(), &format!("{a}{b}"), &pattern().0);
    let out = tmp.path().join("out");
    let pid = format!("pid={}", canary.pid());
    let got = capture(
        &out,
        &[
            "--yara",
            rules.to_str().unwrap(),
            "--memory-regions",
            &pid,
            "--yara-cpu-budget",
            "1ms",
        ],
    );
    assert_eq!(
        got.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let (summary, dir) = capture_dir(&out, &got);
    assert_eq!(summary["status"], "partial");
    let errors = manifest(&dir)["errors"].to_string();
    assert!(errors.contains("CPU budget of 0.001s spent"), "{errors}");
    Ok(())
}

#[test]
fn a_malformed_rules_file_is_refused_with_the_compilers_message() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let rules = tmp.path().join("bad.yar");
    std::fs::write(
        &rules,
        "rule broken {\n  strings:\n    $a = \"x\"\n  condition:\n    $b\n}\n",
    )?;
    let out = tmp.path().join("out");
    let got = capture(&out, &["--yara", rules.to_str().unwrap()]);
    assert_eq!(got.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert!(stderr.contains("bad.yar:5:"), "{stderr}");
    assert!(stderr.contains("$b"), "{stderr}");
    assert!(!out.exists() || std::fs::read_dir(&out)?.next().is_none());
    Ok(())
}

/// `ircap-collector CMD --server URL ARGS` as alice.
fn analyst(url: &str, pki: &Path, cmd: &str, args: &[&str]) -> Output {
    ircap_e2e::analyst(url, pki, "alice", cmd, args)
}

fn wait_for_agent(url: &str, pki: &Path, who: &str) {
    let start = std::time::Instant::now();
    loop {
        let out = analyst(url, pki, "agents", &["--json"]);
        if json_lines(&out).iter().any(|a| a["agent"] == who) {
            return;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "{who} never connected"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_request_carries_the_rules_to_a_serve_mode_agent_which_finds_the_canary() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = ircap_e2e::pki(&tmp.path().join("pki"));
    let c = ircap_e2e::Collector::builder(&pki, &tmp.path().join("store"))
        .env("IRCAP_CONTROL_POLL_MS", "200")
        .log(&tmp.path().join("collector.log"))
        .start();
    let url = c.url();
    let _agent = ircap_e2e::ServeAgent::start(tmp.path(), &url, &pki, "web-1");
    wait_for_agent(&url, &pki, "web-1");
    let (a, b) = pattern();
    let canary = Canary::start(&a, &b);
    let rules = rules(tmp.path(), &format!("{a}{b}"), &pattern().0);

    let out = analyst(
        &url,
        &pki,
        "request",
        &[
            "--all",
            "--wait",
            "--timeout",
            "120s",
            "--artifacts",
            "system",
            "--yara",
            rules.to_str().unwrap(),
            "--case",
            "IR-2026-007",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let result = lines
        .iter()
        .find(|l| l["agent"] == "web-1" && l["status"].is_string())
        .unwrap_or_else(|| panic!("no result: {lines:?}"));
    assert_eq!(result["status"], "complete", "{result}");
    let id = result["capture_id"].as_str().unwrap_or_default();
    let dir = c.capture_dir("web-1", id);
    ircap_e2e::assert_verifies(&dir);
    let rows = table_rows(&dir.join("yara_matches.jsonl.gz"));
    let mine: Vec<&Value> = rows
        .iter()
        .filter(|r| r["pid"].as_i64() == Some(canary.pid()))
        .collect();
    assert_eq!(mine.len(), 1, "{rows:?}");
    assert_eq!(mine[0]["rule"], "heap_canary");
    assert_eq!(
        mine[0]["strings"][0]["address"],
        format!("0x{:x}", canary.addr)
    );
    let start = u64::from_str_radix(
        mine[0]["region"]["start"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("0x"),
        16,
    )?;
    assert_eq!(
        mine[0]["strings"][0]["offset"].as_u64(),
        Some(canary.addr - start)
    );
    let m = manifest(&dir);
    assert_eq!(m["options"]["yara"]["source"], "request");
    let agent_pid = m["agent"]["pid"].as_i64();
    assert!(rows.iter().all(|r| r["pid"].as_i64() != agent_pid));

    // The per-host summary of `request --wait`.
    let summary = lines
        .iter()
        .find(|l| l["agent"] == "web-1" && l["yara"].is_object())
        .unwrap_or_else(|| panic!("no yara line: {lines:?}"));
    assert_eq!(summary["capture_id"], id);
    assert_eq!(summary["yara"]["matched"], true);
    assert!(
        summary["yara"]["rules"]
            .as_array()
            .unwrap()
            .contains(&Value::from("heap_canary")),
        "{summary}"
    );

    // The summary's read of the table carries the case, as every call of
    // the command does (a collector with --require-case refuses the rest).
    let trail = json_lines(&analyst(&url, &pki, "audit", &["--json", "--capture", id]));
    let reads: Vec<&Value> = trail
        .iter()
        .filter(|e| e["call"] == "read_artifact" && e["artifact"] == "yara_matches.jsonl.gz")
        .collect();
    assert!(!reads.is_empty(), "{trail:?}");
    assert!(
        reads.iter().all(|e| e["case"] == "IR-2026-007"),
        "{reads:?}"
    );

    // A rule that matches nothing: matched false, and `list --yara-matched`
    // keeps only the first capture.
    let (x, y) = pattern();
    let nothing = tmp.path().join("nothing");
    std::fs::create_dir_all(&nothing)?;
    let none_rules = self::rules(&nothing, &format!("{x}{y}"), &pattern().0);
    let out = analyst(
        &url,
        &pki,
        "request",
        &[
            "--all",
            "--wait",
            "--timeout",
            "120s",
            "--artifacts",
            "system",
            "--yara",
            none_rules.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let summary = lines
        .iter()
        .find(|l| l["yara"].is_object())
        .unwrap_or_else(|| panic!("no yara line: {lines:?}"));
    assert_eq!(summary["yara"]["matched"], false, "{summary}");
    assert_eq!(summary["yara"]["rules"], serde_json::json!([]));
    let second = summary["capture_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let listed = json_lines(&analyst(&url, &pki, "list", &["--json"]));
    assert_eq!(listed.len(), 2);
    let matched = json_lines(&analyst(&url, &pki, "list", &["--json", "--yara-matched"]));
    assert_eq!(matched.len(), 1, "{matched:?}");
    assert_eq!(matched[0]["capture_id"], id);
    assert_ne!(matched[0]["capture_id"], second);
    assert_eq!(matched[0]["yara"]["rules"][0], "heap_canary");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_rule_is_refused_on_the_collector_with_the_compilers_message() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = ircap_e2e::pki(&tmp.path().join("pki"));
    let c = ircap_e2e::Collector::start(&pki, &tmp.path().join("store"), 0);
    let url = c.url();
    let bad = tmp.path().join("bad.yar");
    std::fs::write(&bad, "rule broken {\n  condition:\n    $missing\n}\n")?;

    // The analyst's command compiles first and names the file.
    let out = analyst(
        &url,
        &pki,
        "request",
        &["--all", "--yara", bad.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yar:3:"), "{err}");
    assert!(err.contains("$missing"), "{err}");

    // A raw request (no CLI) is refused by the collector with the message.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(
            pki.join("ca.pem"),
        )?))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(pki.join("alice.pem"))?,
            std::fs::read(pki.join("alice.key"))?,
        ));
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .tls_config(tls)?
        .connect_lazy();
    let mut client = ircap_proto::v1::capture_requests_client::CaptureRequestsClient::new(channel);
    let status = client
        .create_request(ircap_proto::v1::CreateRequestRequest {
            target: Some(ircap_proto::v1::Target {
                all: true,
                ..Default::default()
            }),
            spec: Some(ircap_proto::v1::CaptureSpec {
                yara_rules: std::fs::read_to_string(&bad)?,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad rules are refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("request:3:"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("$missing"),
        "{}",
        status.message()
    );
    assert!(!c.store.join("control/requests").exists(), "nothing stored");
    Ok(())
}

#[test]
fn yara_dump_stores_the_matching_region_and_maps_the_match_to_its_bytes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (a, b) = pattern();
    let canary = Canary::start(&a, &b);
    let rules = rules(tmp.path(), &format!("{a}{b}"), &pattern().0);
    let out = tmp.path().join("out");
    let pid = format!("pid={}", canary.pid());
    let got = capture(
        &out,
        &[
            "--yara",
            rules.to_str().unwrap(),
            "--yara-dump",
            "--memory-regions",
            &pid,
            "--skip",
            "memory_regions",
            "--yara-dir",
            tmp.path().join("none").to_str().unwrap(),
        ],
    );
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let (_, dir) = capture_dir(&out, &got);
    ircap_e2e::assert_verifies(&dir);
    assert!(
        !dir.join("memory_regions.jsonl.gz").exists(),
        "--skip memory_regions: only the matching region is stored"
    );
    let rows = table_rows(&dir.join("yara_matches.jsonl.gz"));
    assert_eq!(rows.len(), 1, "{rows:?}");
    let dump = &rows[0]["dump"];
    assert_eq!(
        dump["artifact"],
        format!("memory/yara-pid-{}.bin.gz", canary.pid())
    );
    let hex = |v: &Value| {
        u64::from_str_radix(v.as_str().unwrap_or("").trim_start_matches("0x"), 16).unwrap_or(0)
    };
    let extent = dump["extents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| hex(&e["start"]) <= canary.addr && canary.addr < hex(&e["end"]))
        .expect("an extent holds the match");
    let mut blob = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(
        dir.join(dump["artifact"].as_str().unwrap()),
    )?)
    .read_to_end(&mut blob)?;
    let at = usize::try_from(
        extent["artifact_offset"].as_u64().unwrap() + canary.addr - hex(&extent["start"]),
    )?;
    assert_eq!(to_hex(&blob[at..at + 24]), format!("{a}{b}"));
    Ok(())
}
