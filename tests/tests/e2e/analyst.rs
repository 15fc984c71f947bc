//! The analyst side against real binaries: `ircap-collector list`, `show`
//! and `pull` with an analyst certificate over mutual TLS; agents are
//! refused; a capture damaged on the server, in a partial download or after
//! the pull fails verification naming the file; a partial pull resumes to
//! byte-identical evidence; unknown and incomplete captures are clear
//! errors; and a pulled capture opens in DuckDB as docs/analysis.md shows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::error::Error;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use ircap_e2e::inproc::InProcessCollector;
use ircap_e2e::{
    TestResult, agent_capture, bin, build_dir, client, copy_dir, docs, json_lines, pki,
};
use ircap_proto::v1::capture_query_client::CaptureQueryClient;
use ircap_proto::v1::{
    CaptureInfo, GetManifestRequest, ListCapturesRequest, OpenCaptureRequest, ReadArtifactRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// A capture id in UUIDv7 shape that no agent ever uploaded.
const UNKNOWN: &str = "01a20000-0000-7000-8000-00000000dead";
/// The id of a capture opened by hand and never committed.
const INCOMPLETE: &str = "01a20000-0000-7000-8000-000000000001";
/// Longest any single gRPC call may take before the test fails.
const CALL: Duration = Duration::from_secs(30);

/// A PKI and a store in fresh temporary directories, and a collector on
/// them, served in this process (the analyst commands and the agent are
/// the binaries under test).
struct Setup {
    tmp: tempfile::TempDir,
    collector: InProcessCollector,
}

impl Setup {
    fn new() -> Result<Self, Box<dyn Error>> {
        let tmp = tempfile::tempdir()?;
        let pki_dir = pki(&tmp.path().join("pki"));
        let collector = InProcessCollector::start(&pki_dir, &tmp.path().join("store"));
        Ok(Self { tmp, collector })
    }

    fn pki(&self) -> &Path {
        &self.collector.pki
    }

    /// A fresh directory under the test's temporary directory.
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// `ircap-agent capture --no-logs` as `who`; the capture id.
    fn capture(&self, who: &str) -> String {
        let out = agent_capture(&self.collector.url(), self.pki(), who, &["--no-logs"]);
        assert!(
            out.status.success(),
            "capture as {who}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["status"], "complete", "{s}");
        s["capture_id"].as_str().unwrap().to_owned()
    }

    /// `ircap-collector CMD --server .. --ca .. --cert WHO --key WHO ARGS`.
    fn analyst(&self, who: &str, cmd: &str, args: &[&str]) -> Output {
        ircap_e2e::analyst(&self.collector.url(), self.pki(), who, cmd, args)
    }

    /// `pull ID DIR` as alice.
    fn pull(&self, id: &str, dir: &Path) -> Output {
        self.analyst("alice", "pull", &[id, dir.to_str().unwrap()])
    }

    /// Pulls `id` into a fresh directory `name`, asserting success; the
    /// pulled capture directory.
    fn pulled(&self, id: &str, name: &str) -> PathBuf {
        let dir = self.dir(name);
        let out = self.pull(id, &dir);
        assert_exit(&out, 0, "pull");
        dir.join(id)
    }
}

/// Kills a spawned process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn ids(rows: &[serde_json::Value]) -> Vec<String> {
    rows.iter()
        .map(|r| r["capture_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A failed verification (pull or verify): exit 3, `file` named on stderr
/// and as a problem's `file` in the JSON report on stdout.
fn assert_names(out: &Output, file: &str, what: &str) {
    assert_exit(out, 3, what);
    let err = text(&out.stderr);
    assert!(
        err.contains(file),
        "{what}: stderr does not name {file}: {err}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not a JSON report ({e}): {}",
            text(&out.stdout)
        )
    });
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    assert!(
        problems.iter().any(|p| p["file"] == file),
        "{what}: report does not name {file}: {report}"
    );
}

/// `ircap-collector verify DIR` and `ircap-agent verify DIR`.
fn verify_both(dir: &Path) -> [Output; 2] {
    [
        bin("ircap-collector")
            .arg("verify")
            .arg(dir)
            .output()
            .unwrap(),
        bin("ircap-agent").arg("verify").arg(dir).output().unwrap(),
    ]
}

fn assert_verifies(dir: &Path, what: &str) {
    for out in verify_both(dir) {
        assert_exit(&out, 0, what);
    }
}

fn assert_verify_names(dir: &Path, file: &str, what: &str) {
    for out in verify_both(dir) {
        assert_names(&out, file, what);
    }
}

/// Inverts the byte at `at`.
fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(
        at < bytes.len(),
        "{} has only {} bytes",
        path.display(),
        bytes.len()
    );
    bytes[at] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Every file below `dir` by `/`-separated relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                out.insert(key, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn assert_identical(a: &Path, b: &Path) {
    let (ta, tb) = (tree(a), tree(b));
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        tb.keys().collect::<Vec<_>>(),
        "{} and {} hold different files",
        a.display(),
        b.display()
    );
    for (name, bytes) in &ta {
        assert!(
            tb.get(name) == Some(bytes),
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// Names in `dir`.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A raw `CaptureQuery` client presenting `who`'s certificate (`None`: no
/// client certificate).
fn query_client(addr: SocketAddr, pki: &Path, who: Option<&str>) -> CaptureQueryClient<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
        std::fs::read(pki.join("ca.pem")).unwrap(),
    ));
    if let Some(name) = who {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(pki.join(format!("{name}.pem"))).unwrap(),
            std::fs::read(pki.join(format!("{name}.key"))).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    CaptureQueryClient::new(channel)
}

/// Every capture `ListCaptures` streams back, unfiltered.
async fn list_captures(c: &mut CaptureQueryClient<Channel>) -> Result<Vec<CaptureInfo>, Status> {
    let mut stream = c
        .list_captures(ListCapturesRequest::default())
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(info) = stream.message().await? {
        out.push(info);
    }
    Ok(out)
}

async fn timed<T>(fut: impl Future<Output = T>) -> Result<T, Box<dyn Error>> {
    tokio::time::timeout(CALL, fut)
        .await
        .map_err(|_| format!("call did not finish within {CALL:?}").into())
}

#[test]
fn list_show_and_pull_a_verified_capture() -> TestResult {
    let s = Setup::new()?;
    let a = s.capture("web-1");
    let b = s.capture("web-2");

    // list --json: one JSON object per line, both captures, complete.
    let out = s.analyst("alice", "list", &["--json"]);
    assert_exit(&out, 0, "list --json");
    let rows = json_lines(&out);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (id, agent) in [(&a, "web-1"), (&b, "web-2")] {
        let row = rows
            .iter()
            .find(|r| r["capture_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not listed: {rows:?}"));
        assert_eq!(row["agent"], agent, "{row}");
        assert_eq!(row["status"], "complete", "{row}");
        assert!(row["artifacts"].as_u64().unwrap_or(0) > 0, "{row}");
        assert!(row["stored_bytes"].as_u64().unwrap_or(0) > 0, "{row}");
    }

    // The same with the settings from the environment.
    let out = bin("ircap-collector")
        .args(["list", "--json"])
        .env("IRCAP_SERVER", s.collector.url())
        .env("IRCAP_CA", s.pki().join("ca.pem"))
        .env("IRCAP_CERT", s.pki().join("alice.pem"))
        .env("IRCAP_KEY", s.pki().join("alice.key"))
        .output()?;
    assert_exit(&out, 0, "list --json with IRCAP_* settings");
    let mut env_ids = ids(&json_lines(&out));
    env_ids.sort();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(env_ids, both);

    // The environment's server without a scheme is refused before
    // connecting, naming the rule.
    let out = bin("ircap-collector")
        .args(["list", "--json"])
        .env("IRCAP_SERVER", s.collector.url().replace("https://", ""))
        .env("IRCAP_CA", s.pki().join("ca.pem"))
        .env("IRCAP_CERT", s.pki().join("alice.pem"))
        .env("IRCAP_KEY", s.pki().join("alice.key"))
        .output()?;
    assert_exit(&out, 2, "IRCAP_SERVER without https://");
    assert!(text(&out.stderr).contains("only https://"));

    // --since/--until take durations as the agent does, or RFC 3339.
    let out = s.analyst("alice", "list", &["--json", "--since", "1h"]);
    assert_exit(&out, 0, "list --since 1h");
    assert_eq!(json_lines(&out).len(), 2);
    let out = s.analyst("alice", "list", &["--json", "--until", "1h"]);
    assert_exit(&out, 0, "list --until 1h");
    assert_eq!(
        json_lines(&out).len(),
        0,
        "both started less than an hour ago"
    );
    let out = s.analyst(
        "alice",
        "list",
        &["--json", "--since", "2000-01-01T00:00:00Z"],
    );
    assert_exit(&out, 0, "list --since RFC 3339");
    assert_eq!(json_lines(&out).len(), 2);
    let out = s.analyst("alice", "list", &["--since", "yesterday"]);
    assert_exit(&out, 2, "list --since yesterday");
    assert!(
        text(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out.stderr)
    );

    // Filters.
    let out = s.analyst("alice", "list", &["--json", "--host", "web-1"]);
    assert_exit(&out, 0, "list --host web-1");
    assert_eq!(ids(&json_lines(&out)), [a.as_str()]);
    let out = s.analyst("alice", "list", &["--json", "--host", "web-2"]);
    assert_exit(&out, 0, "list --host web-2");
    assert_eq!(ids(&json_lines(&out)), [b.as_str()]);
    let out = s.analyst(
        "alice",
        "list",
        &["--json", "--since", "2999-01-01T00:00:00Z"],
    );
    assert_exit(&out, 0, "list --since future");
    assert_eq!(json_lines(&out), Vec::<serde_json::Value>::new());
    let out = s.analyst(
        "alice",
        "list",
        &["--json", "--since", "2000-01-01T00:00:00Z"],
    );
    assert_exit(&out, 0, "list --since past");
    assert_eq!(json_lines(&out).len(), 2);
    let out = s.analyst(
        "alice",
        "list",
        &["--json", "--until", "2000-01-01T00:00:00Z"],
    );
    assert_exit(&out, 0, "list --until past");
    assert_eq!(json_lines(&out), Vec::<serde_json::Value>::new());

    // Table.
    let out = s.analyst("alice", "list", &[]);
    assert_exit(&out, 0, "list");
    let table = text(&out.stdout);
    for needle in [
        a.as_str(),
        b.as_str(),
        "STATUS",
        "complete",
        "web-1",
        "web-2",
    ] {
        assert!(table.contains(needle), "table lacks {needle:?}:\n{table}");
    }

    // show --json: the stored manifest with the collector's receipt.
    for (id, agent) in [(&a, "web-1"), (&b, "web-2")] {
        let out = s.analyst("alice", "show", &[id, "--json"]);
        assert_exit(&out, 0, "show --json");
        let m: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(m["capture_id"], id.as_str(), "{m}");
        assert_eq!(m["collector_receipt"]["peer_identity"], agent, "{m}");
        assert_eq!(m["collector_receipt"]["verification"], "verified", "{m}");
        assert_eq!(
            out.stdout,
            std::fs::read(s.collector.capture_dir(agent, id).join("manifest.json"))?,
            "show --json is not the stored manifest"
        );
    }
    let out = s.analyst("alice", "show", &[&a]);
    assert_exit(&out, 0, "show");
    let shown = text(&out.stdout);
    for needle in [
        "chain of custody",
        "web-1",
        a.as_str(),
        "processes.jsonl.gz",
    ] {
        assert!(shown.contains(needle), "show lacks {needle:?}:\n{shown}");
    }

    // pull: verified, renamed, nothing partial left, verifies offline, and
    // is byte-identical to what the collector stored.
    let dir = s.dir("evidence");
    let out = s.pull(&a, &dir);
    assert_exit(&out, 0, "pull");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["status"], "verified", "{summary}");
    let pulled = dir.join(&a);
    assert_eq!(summary["path"], pulled.display().to_string(), "{summary}");
    assert!(pulled.join("manifest.json").is_file());
    assert_verifies(&pulled, "verify the pulled capture");
    assert_eq!(entries(&dir), [a.as_str()], "only the capture remains");
    assert!(!dir.join(format!(".{a}.partial")).exists());
    assert_identical(&s.collector.capture_dir("web-1", &a), &pulled);

    // Pulling again into the same directory refuses to overwrite.
    let out = s.pull(&a, &dir);
    assert_exit(&out, 1, "second pull into the same directory");
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_verifies(&pulled, "the first pull is untouched");
    Ok(())
}

#[test]
fn show_and_pull_take_a_unique_id_prefix_and_show_lists_errors_and_original_hashes() -> TestResult {
    let s = Setup::new()?;
    // A log directory with a log file, stored gzip'd with its original's
    // hash.
    let logs = s.dir("logs");
    let log_body = b"Dec  2 02:00:00 host sshd[1]: Accepted publickey for root\n".repeat(50);
    std::fs::write(logs.join("auth.log"), &log_body)?;
    let out = agent_capture(
        &s.collector.url(),
        s.pki(),
        "web-1",
        &["--logs-dir", logs.to_str().unwrap(), "--logs-since", "1d"],
    );
    assert!(
        out.status.success() || out.status.code() == Some(4),
        "{}",
        text(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = summary["capture_id"].as_str().unwrap().to_owned();
    let other = s.capture("web-2");

    // A unique prefix (what a person copies from a table) is the capture;
    // a prefix both ids share is refused, naming both.
    let unique = &id[..id.len() - 6];
    let out = s.analyst("alice", "show", &[unique]);
    assert_exit(&out, 0, "show with a unique prefix");
    let shown = text(&out.stdout);
    assert!(shown.contains(&id), "{shown}");
    let shortened = format!("{}…", &id[..id.len() - 6]);
    let out = s.analyst("alice", "show", &[&shortened, "--json"]);
    assert_exit(&out, 0, "show with a printed shortened id");
    let common: String = id
        .chars()
        .zip(other.chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    assert!(common.len() >= 4, "{id} and {other} share {common:?}");
    let out = s.analyst("alice", "show", &[&common]);
    assert_exit(&out, 1, "show with an ambiguous prefix");
    let err = text(&out.stderr);
    assert!(err.contains(&id) && err.contains(&other), "{err}");
    let out = s.analyst("alice", "show", &["ab"]);
    assert_exit(&out, 2, "show with a two-character prefix");
    let dir = s.dir("by-prefix");
    let out = s.pull(unique, &dir);
    assert_exit(&out, 0, "pull with a unique prefix");
    assert!(dir.join(&id).join("manifest.json").is_file());

    // show lists the recorded errors and the original (uncompressed) hash
    // of the log file, the one `sha256sum` of the host's file gives.
    let original = {
        use sha2::Digest as _;
        sha2::Sha256::digest(&log_body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert!(
        shown.contains(&original),
        "no original hash {original}: {shown}"
    );
    // The agent's own key lies under /tmp (the test's PKI), so the
    // volatile-files walk records that it did not read it.
    assert!(shown.contains("errors ("), "no error list: {shown}");
    assert!(
        shown.contains("web-1.key: the agent's own key"),
        "the recorded error is not listed: {shown}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_analyst_certificates_may_query() -> TestResult {
    let s = Setup::new()?;
    let id = s.capture("web-1");
    let dir = s.dir("evidence");

    // The CLI with an agent certificate.
    for (cmd, args) in [
        ("list", vec!["--json"]),
        ("show", vec![id.as_str()]),
        ("pull", vec![id.as_str(), dir.to_str().unwrap()]),
    ] {
        let out = s.analyst("web-1", cmd, &args);
        assert_exit(&out, 1, &format!("{cmd} as agent web-1"));
        assert!(
            text(&out.stderr).contains("PermissionDenied"),
            "{cmd} as web-1: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{cmd}: {}", text(&out.stdout));
    }
    assert!(!dir.join(&id).exists(), "an agent pulled the capture");

    // The raw gRPC service with an agent certificate: every call refused.
    let addr = s.collector.addr;
    let mut agent = query_client(addr, s.pki(), Some("web-1"));
    let status = timed(list_captures(&mut agent))
        .await?
        .expect_err("agent list_captures must fail");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = timed(agent.get_manifest(GetManifestRequest {
        capture_id: id.clone(),
    }))
    .await?
    .expect_err("agent get_manifest must fail");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = timed(agent.read_artifact(ReadArtifactRequest {
        capture_id: id.clone(),
        name: "processes.jsonl.gz".into(),
        offset: 0,
    }))
    .await?
    .expect_err("agent read_artifact must fail");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // The analyst may.
    let mut alice = query_client(addr, s.pki(), Some("alice"));
    let listed = timed(list_captures(&mut alice)).await??;
    assert_eq!(
        listed
            .iter()
            .map(|c| c.capture_id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    let mut stream = timed(alice.read_artifact(ReadArtifactRequest {
        capture_id: id.clone(),
        name: "processes.jsonl.gz".into(),
        offset: 0,
    }))
    .await??
    .into_inner();
    let mut bytes = Vec::new();
    while let Some(msg) = timed(stream.message()).await?? {
        assert_eq!(msg.offset, bytes.len() as u64);
        bytes.extend_from_slice(&msg.data);
    }
    assert_eq!(
        bytes,
        std::fs::read(
            s.collector
                .capture_dir("web-1", &id)
                .join("processes.jsonl.gz")
        )?
    );

    // No client certificate at all: refused.
    let mut anonymous = query_client(addr, s.pki(), None);
    let result = timed(list_captures(&mut anonymous)).await?;
    assert!(
        result.is_err(),
        "a client without a certificate listed captures: {result:?}"
    );
    Ok(())
}

#[test]
fn a_capture_damaged_on_the_server_fails_the_pull_naming_the_file() -> TestResult {
    let s = Setup::new()?;
    let id = s.capture("web-1");
    let stored = s
        .collector
        .capture_dir("web-1", &id)
        .join("processes.jsonl.gz");
    let len = usize::try_from(std::fs::metadata(&stored)?.len())?;
    flip(&stored, len / 2);

    let dir = s.dir("evidence");
    let out = s.pull(&id, &dir);
    assert_names(&out, "processes.jsonl.gz", "pull of a damaged capture");
    assert!(!dir.join(&id).exists(), "a damaged pull looks complete");
    let partial = format!(".{id}.partial");
    let left = entries(&dir);
    assert!(
        left.is_empty() || left == [partial.as_str()],
        "only the hidden partial directory may remain: {left:?}"
    );
    if left == [partial.as_str()] {
        assert!(
            !dir.join(&partial).join("manifest.json").exists(),
            "the partial directory has a manifest, so it looks complete"
        );
    }
    Ok(())
}

#[test]
fn a_partial_pull_resumes_to_identical_bytes_and_trusts_only_verified_ones() -> TestResult {
    let s = Setup::new()?;
    let id = s.capture("web-1");
    let a = s.pulled(&id, "a");
    let procs_len = usize::try_from(std::fs::metadata(a.join("processes.jsonl.gz"))?.len())?;
    assert!(procs_len > 2, "processes.jsonl.gz is too small to halve");
    let partial = |d: &Path| d.join(format!(".{id}.partial"));

    // B: half of processes, no memory_maps, no manifest.
    let b = s.dir("b");
    copy_dir(&a, &partial(&b));
    let half = std::fs::read(a.join("processes.jsonl.gz"))?[..procs_len / 2].to_vec();
    std::fs::write(partial(&b).join("processes.jsonl.gz"), &half)?;
    std::fs::remove_file(partial(&b).join("memory_maps.jsonl.gz"))?;
    std::fs::remove_file(partial(&b).join("manifest.json"))?;
    let out = s.pull(&id, &b);
    assert_exit(&out, 0, "resumed pull");
    assert_verifies(&b.join(&id), "the resumed pull");
    assert_identical(&a, &b.join(&id));
    assert_eq!(entries(&b), [id.as_str()], "nothing partial remains");

    // C: the kept half is wrong. Resume appends after it without reading
    // it again, so only the final verification can catch this.
    let c = s.dir("c");
    copy_dir(&a, &partial(&c));
    let mut bad = half.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(partial(&c).join("processes.jsonl.gz"), &bad)?;
    std::fs::remove_file(partial(&c).join("manifest.json"))?;
    let out = s.pull(&id, &c);
    assert_names(&out, "processes.jsonl.gz", "pull resumed on wrong bytes");
    assert!(!c.join(&id).exists(), "a damaged pull looks complete");

    // D: a partial file longer than the artifact is fetched again whole.
    let d = s.dir("d");
    copy_dir(&a, &partial(&d));
    let mut long = std::fs::read(a.join("connections.jsonl.gz"))?;
    long.extend_from_slice(b"trailing garbage");
    std::fs::write(partial(&d).join("connections.jsonl.gz"), &long)?;
    std::fs::remove_file(partial(&d).join("manifest.json"))?;
    let out = s.pull(&id, &d);
    assert_exit(&out, 0, "pull over an over-long partial file");
    assert_identical(&a, &d.join(&id));
    Ok(())
}

#[test]
fn a_pulled_capture_damaged_later_fails_verify_naming_the_file() -> TestResult {
    let s = Setup::new()?;
    let id = s.capture("web-1");
    let dir = s.pulled(&id, "evidence");
    assert_verifies(&dir, "fresh pull");

    // One flipped byte.
    let conns = dir.join("connections.jsonl.gz");
    let original = std::fs::read(&conns)?;
    flip(&conns, original.len() / 2);
    assert_verify_names(&dir, "connections.jsonl.gz", "flipped byte");
    std::fs::write(&conns, &original)?;
    assert_verifies(&dir, "restored");

    // A file removed.
    let kernel = dir.join("kernel.jsonl.gz");
    let original = std::fs::read(&kernel)?;
    std::fs::remove_file(&kernel)?;
    assert_verify_names(&dir, "kernel.jsonl.gz", "removed file");
    std::fs::write(&kernel, &original)?;
    assert_verifies(&dir, "restored");

    // A file added.
    std::fs::write(dir.join("planted.jsonl.gz"), b"not evidence")?;
    assert_verify_names(&dir, "planted.jsonl.gz", "added file");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_incomplete_captures_are_clear_errors() -> TestResult {
    let s = Setup::new()?;
    let complete = s.capture("web-1");
    let dir = s.dir("evidence");

    for (cmd, args) in [
        ("show", vec![UNKNOWN]),
        ("pull", vec![UNKNOWN, dir.to_str().unwrap()]),
    ] {
        let out = s.analyst("alice", cmd, &args);
        assert_exit(&out, 1, &format!("{cmd} unknown id"));
        assert!(
            text(&out.stderr).contains("no capture with id"),
            "{cmd}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(entries(&dir), Vec::<String>::new(), "pull of nothing wrote");

    // Opened as web-1 and never committed.
    let mut up = client(
        s.collector.addr,
        &s.pki().join("ca.pem"),
        Some((s.pki(), "web-1")),
    )
    .await;
    timed(up.open_capture(OpenCaptureRequest {
        capture_id: INCOMPLETE.into(),
        hostname: "test-host".into(),
    }))
    .await??;

    let out = s.analyst("alice", "list", &["--incomplete", "--json"]);
    assert_exit(&out, 0, "list --incomplete");
    let rows = json_lines(&out);
    let row = rows
        .iter()
        .find(|r| r["capture_id"] == INCOMPLETE)
        .unwrap_or_else(|| panic!("incomplete capture not listed: {rows:?}"));
    assert_eq!(row["status"], "incomplete", "{row}");
    assert_eq!(row["agent"], "web-1", "{row}");
    assert!(
        rows.iter()
            .any(|r| r["capture_id"] == complete.as_str() && r["status"] == "complete"),
        "{rows:?}"
    );
    let out = s.analyst("alice", "list", &["--json"]);
    assert_exit(&out, 0, "list");
    assert_eq!(ids(&json_lines(&out)), [complete.as_str()]);
    let out = s.analyst("alice", "list", &["--incomplete"]);
    assert_exit(&out, 0, "list --incomplete (table)");
    assert!(
        text(&out.stdout).contains(INCOMPLETE),
        "{}",
        text(&out.stdout)
    );

    for (cmd, args) in [
        ("show", vec![INCOMPLETE]),
        ("pull", vec![INCOMPLETE, dir.to_str().unwrap()]),
    ] {
        let out = s.analyst("alice", cmd, &args);
        assert_exit(&out, 1, &format!("{cmd} incomplete capture"));
        assert!(
            text(&out.stderr).contains("incomplete"),
            "{cmd}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(
        entries(&dir),
        Vec::<String>::new(),
        "pull of an incomplete capture wrote"
    );
    Ok(())
}

/// The pinned DuckDB command line (PyPI `duckdb-cli`, which is what gives a
/// `duckdb` command; `pip install duckdb` gives only the Python module).
const DUCKDB_CLI: &str = "duckdb-cli==1.5.6";

/// The `duckdb` command: `$IRCAP_DUCKDB` (installed by `tests/run.sh`), else
/// a venv under the build directory made once, under a file lock.
fn duckdb_cli() -> PathBuf {
    if let Some(p) = std::env::var_os("IRCAP_DUCKDB") {
        return PathBuf::from(p);
    }
    let venv = build_dir().join("duckdb-cli-venv");
    let duckdb = venv.join("bin").join("duckdb");
    let works = |d: &Path| {
        Command::new(d)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let lock = std::fs::File::create(build_dir().join("duckdb-cli-venv.lock")).unwrap();
    lock.lock().unwrap();
    if !works(&duckdb) {
        let _ = std::fs::remove_dir_all(&venv);
        let out = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python3 -m venv: {}",
            text(&out.stderr)
        );
        let out = Command::new(venv.join("bin").join("python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                DUCKDB_CLI,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pip install {DUCKDB_CLI}: {}",
            text(&out.stderr)
        );
    }
    let _ = lock.unlock();
    duckdb
}

/// The `duckdb -c "..."` commands of the "Open a capture" block of
/// `docs/analysis.md`, as written there.
fn readme_duckdb_commands() -> Vec<String> {
    let section = docs::sh_block("docs/analysis.md", "## Open a capture");
    let section = section.as_str();
    // The docs install the same DuckDB the queries are tested with.
    assert!(
        section.contains(&format!("pip install {DUCKDB_CLI}")),
        "docs/analysis.md's \"Open a capture\" block does not install {DUCKDB_CLI}"
    );
    let mut commands = Vec::new();
    let mut rest = section;
    while let Some(at) = rest.find("duckdb -c \"") {
        let body = &rest[at + "duckdb -c \"".len()..];
        let end = body
            .find('"')
            .unwrap_or_else(|| panic!("unterminated query"));
        commands.push(format!("duckdb -c \"{}\"", &body[..end]));
        rest = &body[end + 1..];
    }
    commands
}

/// Runs a documented `duckdb -c "..."` command line with bash in `dir`, with
/// JSON output (`-json` added after `duckdb`); its rows.
fn run_duckdb(duckdb: &Path, dir: &Path, command: &str) -> Vec<serde_json::Value> {
    let bin_dir = duckdb.parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let line = command.replacen("duckdb ", "duckdb -json ", 1);
    let out = Command::new("bash")
        .args(["-c", &line])
        .current_dir(dir)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{line}: {}", text(&out.stderr));
    let t = text(&out.stdout);
    if t.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{line}: {e}: {t}"))
}

/// A TCP listener on loopback that no process holds: the listening socket
/// was sent over a Unix socket pair (SCM_RIGHTS) and closed, so only the
/// message in flight keeps it open, as with a listener whose owner cannot
/// be read. Returns the helper (kill it to end) and the port.
fn unowned_listener() -> (Running, u16) {
    const SCRIPT: &str = "import socket, sys, time\n\
        l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen()\n\
        a, b = socket.socketpair(socket.AF_UNIX)\n\
        socket.send_fds(a, [b'x'], [l.fileno()])\n\
        port = l.getsockname()[1]; l.close()\n\
        print(port, flush=True)\n\
        time.sleep(600)\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("port: {line:?}"));
    (Running(child), port)
}

/// Copies `/bin/sleep` into `dir`, runs it for 600 s and deletes the copy.
fn deleted_binary_sleeper(dir: &Path) -> Running {
    let exe = dir.join("sleeper");
    std::fs::copy("/bin/sleep", &exe).unwrap();
    // Another test thread forking while the copy's write descriptor was
    // open makes exec fail with ETXTBSY for a moment.
    let mut tries = 0;
    let child = loop {
        match Command::new(&exe).arg("600").spawn() {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(26) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot run {}: {e}", exe.display()),
        }
    };
    std::fs::remove_file(&exe).unwrap();
    Running(child)
}

#[test]
fn a_pulled_capture_opens_in_duckdb_with_the_readmes_queries() -> TestResult {
    let duckdb = duckdb_cli();
    let commands = readme_duckdb_commands();
    let [deleted_query, listener_query] = <[_; 2]>::try_from(commands)
        .map_err(|v| format!("expected the two DuckDB commands of docs/analysis.md: {v:?}"))?;
    let s = Setup::new()?;
    // Planted: a listener owned by this test process, one that no process
    // holds, and a process whose executable was deleted after it started.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = u64::from(listener.local_addr()?.port());
    let (unowned, unowned_port) = unowned_listener();
    let sleeper = deleted_binary_sleeper(&s.dir("bin"));
    let sleeper_pid = u64::from(sleeper.0.id());
    let id = s.capture("web-1");
    drop(sleeper);
    drop(listener);
    drop(unowned);
    let dir = s.pulled(&id, "evidence");

    let deleted = run_duckdb(&duckdb, &dir, &deleted_query);
    assert!(
        deleted
            .iter()
            .any(|r| r["pid"].as_u64() == Some(sleeper_pid)),
        "the deleted-binary sleeper {sleeper_pid} is not listed: {deleted:?}"
    );
    let listeners = run_duckdb(&duckdb, &dir, &listener_query);
    let me = u64::from(std::process::id());
    let row = listeners
        .iter()
        .find(|r| r["local_port"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("listener on port {port} not joined: {listeners:?}"));
    assert_eq!(row["pid"].as_u64(), Some(me), "{row:?}");
    let my_comm = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    assert_eq!(
        row["comm"].as_str().unwrap_or_default(),
        my_comm.trim_end(),
        "comm of the test process: {row:?}"
    );
    let row = listeners
        .iter()
        .find(|r| r["local_port"].as_u64() == Some(u64::from(unowned_port)))
        .unwrap_or_else(|| {
            panic!("the listener no process holds ({unowned_port}) vanished: {listeners:?}")
        });
    assert!(row["pid"].is_null(), "{row:?}");
    Ok(())
}

/// The hostname of the hostile agent: retitles the window, turns
/// the text red and forges a table row.
const HOSTILE: &str = "evil\x1b]0;PWNED\x07\x1b[31m...\r\nfake-row";
/// What the control stream lets through (it refuses control characters):
/// a right-to-left override that makes `web-1` read as the host.
const BIDI: &str = "db-prod\u{202e}1-bew";
/// The capture the hostile agent commits.
const HOSTILE_CAPTURE: &str = "01a20000-0000-7000-8000-0000000000e1";

/// Neither stdout nor stderr carries a raw ESC, BEL or CR, or a line that
/// host text started.
fn assert_terminal_safe(out: &Output, what: &str) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let t = text(bytes);
        for c in ['\x1b', '\x07', '\r', '\u{9b}', '\u{202e}'] {
            assert!(!t.contains(c), "{what}: raw {c:?} on {stream}: {t:?}");
        }
        assert!(
            !t.lines().any(|l| l.trim_start().starts_with("fake-row")),
            "{what}: a forged line on {stream}: {t:?}"
        );
    }
}

/// A manifest for [`HOSTILE_CAPTURE`] with one identity artifact `t.bin`
/// holding `data`, and host text set to [`HOSTILE`] wherever an agent
/// chooses it.
fn hostile_manifest(data: &[u8]) -> Vec<u8> {
    use ircap_proto::manifest::{
        AgentInfo, ArtifactEntry, Encoding, FORMAT_VERSION, HostIdentity, Manifest,
    };
    let sha = ircap_proto::hashing::sha256_hex(data);
    let m = Manifest {
        format_version: FORMAT_VERSION,
        capture_id: HOSTILE_CAPTURE.into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        ended_at: "2026-01-01T00:00:01Z".into(),
        status: ircap_proto::manifest::CaptureStatus::default(),
        host: HostIdentity {
            hostname: HOSTILE.into(),
            kernel_release: HOSTILE.into(),
            instance_id: Some(HOSTILE.into()),
            ..HostIdentity::default()
        },
        agent: AgentInfo {
            version: HOSTILE.into(),
            ..AgentInfo::default()
        },
        options: serde_json::Value::Null,
        ssm_command_id: Some(HOSTILE.into()),
        artifacts: vec![ArtifactEntry {
            name: "t.bin".into(),
            kind: HOSTILE.into(),
            content_type: HOSTILE.into(),
            encoding: Encoding::Identity,
            size_stored: data.len() as u64,
            size_uncompressed: data.len() as u64,
            sha256_stored: sha.clone(),
            sha256_uncompressed: sha,
            started_at: String::new(),
            ended_at: String::new(),
            record_count: None,
            error_count: 0,
            errors: vec![],
        }],
        error_count: 0,
        errors: vec![],
        collector_receipt: None,
        case: None,
    };
    serde_json::to_vec(&m).unwrap()
}

/// Web-1 uploads and commits [`HOSTILE_CAPTURE`] through a raw client,
/// and opens a second capture it never commits, both claiming [`HOSTILE`].
async fn upload_hostile_capture(s: &Setup) -> TestResult {
    use ircap_proto::v1::{
        ArtifactEnd, ArtifactHeader, Chunk, CommitCaptureRequest, UploadMessage, upload_message,
    };
    let mut c = client(
        s.collector.addr,
        &s.pki().join("ca.pem"),
        Some((s.pki(), "web-1")),
    )
    .await;
    for id in [HOSTILE_CAPTURE, INCOMPLETE] {
        timed(c.open_capture(OpenCaptureRequest {
            capture_id: id.into(),
            hostname: HOSTILE.into(),
        }))
        .await??;
    }
    let data = b"hello";
    let sha = ircap_proto::hashing::sha256_hex(data);
    let msgs = [
        upload_message::Body::Header(ArtifactHeader {
            capture_id: HOSTILE_CAPTURE.into(),
            name: "t.bin".into(),
            encoding: "identity".into(),
            offset: 0,
        }),
        upload_message::Body::Chunk(Chunk {
            offset: 0,
            data: data.to_vec().into(),
            sha256: <sha2::Sha256 as sha2::Digest>::digest(data).to_vec(),
        }),
        upload_message::Body::End(ArtifactEnd {
            size: 5,
            sha256: sha.clone(),
            size_uncompressed: 5,
            sha256_uncompressed: sha,
        }),
    ]
    .map(|b| UploadMessage { body: Some(b) });
    let mut acks = timed(c.upload_artifact(tokio_stream::iter(msgs)))
        .await??
        .into_inner();
    let mut finished = false;
    while let Some(ack) = timed(acks.message()).await?? {
        finished |= ack.finished;
    }
    assert!(finished, "hostile artifact never finished");
    timed(c.commit_capture(CommitCaptureRequest {
        capture_id: HOSTILE_CAPTURE.into(),
        manifest_json: hostile_manifest(data),
    }))
    .await??;
    Ok(())
}

/// Host-supplied text never drives the analyst's terminal: a hostname,
/// instance id, kernel, agent version, SSM id and artifact kind carrying
/// escape sequences and a forged row come out escaped from `list`,
/// `list --incomplete`, `show`, `agents`, `request --wait` (whose agent
/// answers with a hostile error), `pull` and `verify` (a hostile file
/// name), on stdout and stderr; the JSON forms stay parseable and keep
/// the text exact.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_host_text_is_escaped_on_the_analysts_terminal() -> TestResult {
    use ircap_proto::v1::agent_control_client::AgentControlClient;
    use ircap_proto::v1::{AgentMessage, CaptureOutcome, Hello, agent_message, collector_message};

    let s = std::sync::Arc::new(Setup::new()?);
    upload_hostile_capture(&s).await?;

    // Web-2 attaches in daemon mode claiming the text the control stream
    // lets through everywhere.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(
            s.pki().join("ca.pem"),
        )?))
        .identity(Identity::from_pem(
            std::fs::read(s.pki().join("web-2.pem"))?,
            std::fs::read(s.pki().join("web-2.key"))?,
        ));
    let channel = Endpoint::from_shared(s.collector.url())?
        .tls_config(tls)?
        .connect_lazy();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            session_id: "0190-hostile".into(),
            hostname: BIDI.into(),
            instance_id: BIDI.into(),
            labels: [("role".to_owned(), BIDI.to_owned())].into(),
            agent_version: BIDI.into(),
            busy_request_id: String::new(),
        })),
    })
    .await?;
    let mut from_collector = timed(
        AgentControlClient::new(channel).attach(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await??
    .into_inner();

    let run = |cmd: &'static str, args: Vec<String>| {
        let s = std::sync::Arc::clone(&s);
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            s.analyst("alice", cmd, &args)
        })
    };

    // `agents` may run before the hello is recorded: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = run("agents", vec!["--json".into()]).await?;
        if text(&out.stdout).contains("web-2") || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A request for web-2, answered with a hostile error.
    let request = run(
        "request",
        vec![
            "--host".into(),
            "web-2".into(),
            "--wait".into(),
            "--timeout".into(),
            "20s".into(),
        ],
    );
    let request_id = loop {
        match timed(from_collector.message()).await?? {
            Some(msg) => {
                if let Some(collector_message::Body::Request(r)) = msg.body {
                    break r.request_id;
                }
            }
            None => return Err("control stream ended before the request".into()),
        }
    };
    tx.send(AgentMessage {
        body: Some(agent_message::Body::Outcome(CaptureOutcome {
            request_id,
            status: "failed".into(),
            error: HOSTILE.into(),
            ..CaptureOutcome::default()
        })),
    })
    .await?;
    let out = timed(request).await??;
    assert_terminal_safe(&out, "request --wait");

    let mut outputs = vec![("request --wait", out)];
    for (what, cmd, args) in [
        ("list", "list", vec![]),
        ("list --incomplete", "list", vec!["--incomplete".to_owned()]),
        ("show", "show", vec![HOSTILE_CAPTURE.to_owned()]),
        ("agents", "agents", vec![]),
        ("show of an unknown id", "show", vec![HOSTILE.to_owned()]),
    ] {
        outputs.push((what, run(cmd, args).await?));
    }
    let pulled = s.dir("pulled");
    let out = run(
        "pull",
        vec![HOSTILE_CAPTURE.to_owned(), pulled.display().to_string()],
    )
    .await?;
    assert_exit(&out, 0, "pull of the hostile capture");
    outputs.push(("pull", out));
    let dir = pulled.join(HOSTILE_CAPTURE);
    std::fs::write(dir.join(HOSTILE), b"planted")?;
    let verify = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || bin("ircap-collector").arg("verify").arg(&dir).output()
    })
    .await??;
    assert_exit(&verify, 3, "verify with a hostile extra file");
    assert!(
        text(&verify.stderr).contains("evil\\x1b]0;PWNED"),
        "{}",
        text(&verify.stderr)
    );
    outputs.push(("verify", verify));
    // The agent's verify reads the same capture the same way.
    let agent_verify = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || bin("ircap-agent").arg("verify").arg(&dir).output()
    })
    .await??;
    assert_exit(
        &agent_verify,
        3,
        "ircap-agent verify with a hostile extra file",
    );
    assert!(
        text(&agent_verify.stderr).contains("evil\\x1b]0;PWNED"),
        "{}",
        text(&agent_verify.stderr)
    );
    outputs.push(("ircap-agent verify", agent_verify));

    for (what, out) in &outputs {
        assert_terminal_safe(out, what);
    }
    let table = |what: &str| {
        outputs
            .iter()
            .find(|(w, _)| *w == what)
            .map(|(_, o)| text(&o.stdout))
            .unwrap_or_default()
    };
    assert!(
        table("agents").contains("db-prod\\u{202e}1-bew"),
        "agents: {}",
        table("agents")
    );
    // Escaped, not dropped: the analyst still sees what the host claimed.
    for what in ["list", "list --incomplete", "show"] {
        assert!(
            table(what).contains("evil\\x1b]0;PWNED\\x07\\x1b[31m...\\x0d\\x0afake-row"),
            "{what}: {}",
            table(what)
        );
    }
    // One table row per capture: the forged row did not split it.
    assert_eq!(table("list").lines().count(), 2, "{}", table("list"));

    // JSON keeps the exact text for machines.
    let json = run("list", vec!["--json".to_owned()]).await?;
    let rows = json_lines(&json);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["hostname"], HOSTILE);
    assert_terminal_safe(&json, "list --json");
    drop(tx);
    Ok(())
}

/// The README's "Run a collector" block, run as written (host names, the
/// listening port and the store directory aside): `pki init` in a working
/// directory, `serve` with the optional `--crl`, a host holding exactly the
/// three files the README says it gets capturing to it, then `pki issue` and
/// `pki revoke`, after which the revoked agent is refused.
#[test]
fn the_readmes_run_a_collector_block_runs_as_written() -> TestResult {
    let commands = docs::block_commands(&docs::sh_block("README.md", "## Run a collector"));
    let names: Vec<String> = commands
        .iter()
        .map(|c| c.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        names,
        [
            "ircap-collector pki init",
            "ircap-collector serve --listen",
            "ircap-agent capture --collector",
            "ircap-collector pki issue",
            "ircap-collector pki revoke",
        ],
        "the README block changed: update this test with it"
    );
    let tmp = tempfile::tempdir()?;
    let work = tmp.path().join("collector-host");
    let host = tmp.path().join("web-1-host");
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&host)?;
    let path = format!(
        "{}:{}",
        build_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let sh = |dir: &Path, command: &str| -> Command {
        let mut c = Command::new("bash");
        c.args(["-euo", "pipefail", "-c", command])
            .current_dir(dir)
            .env("PATH", &path);
        c
    };
    let run = |dir: &Path, command: &str| -> Result<Output, Box<dyn Error>> {
        let out = sh(dir, command).output()?;
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
        Ok(out)
    };

    // 1. The PKI, exactly as written.
    run(&work, &commands[0])?;
    assert!(work.join("pki/crl.pem").exists(), "no empty CRL");

    // 2. The collector: loopback and a free port instead of 0.0.0.0:7443,
    //    a temporary store, the optional CRL taken.
    let serve = commands[1]
        .replace("0.0.0.0:7443", "127.0.0.1:0")
        .replace(
            "file:///var/lib/ircap",
            &format!("file://{}", store.display()),
        )
        .replace("[--crl pki/crl.pem]", "--crl pki/crl.pem");
    let mut collector = Running(
        sh(&work, &format!("exec {serve}"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(collector.0.stdout.take().ok_or("no stdout")?),
        &mut line,
    )?;
    let listening: serde_json::Value = serde_json::from_str(&line)?;
    let port = listening["listening"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .ok_or("no listening address")?
        .to_owned();

    // 3. The host gets the three files the README names, and nothing else.
    for f in ["ca.pem", "web-1.pem", "web-1.key"] {
        std::fs::copy(work.join("pki").join(f), host.join(f))?;
    }
    let capture = commands[2].replace(
        "https://collector.internal:7443",
        &format!("https://localhost:{port}"),
    );
    let out = run(&host, &capture)?;
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["status"], "complete", "{summary}");
    let id = summary["capture_id"].as_str().ok_or("no capture id")?;
    assert!(
        store
            .join("captures/web-1")
            .join(id)
            .join("manifest.json")
            .exists(),
        "the capture is not in the store"
    );
    let mut on_host: Vec<String> = entries(&host);
    on_host.sort();
    assert_eq!(
        on_host,
        ["ca.pem", "web-1.key", "web-1.pem"],
        "the capture wrote to the host"
    );

    // 4. More identities, and revocation (the collector reloads its CRL).
    run(&work, &commands[3])?;
    assert!(work.join("pki/web-3.pem").exists());
    run(&work, &commands[4])?;
    for f in ["web-2.pem", "web-2.key"] {
        std::fs::copy(work.join("pki").join(f), host.join(f))?;
    }
    let revoked = capture.replace("web-1.", "web-2.");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = sh(&host, &format!("{revoked} --upload-attempts 1")).output()?;
        if !out.status.success() && text(&out.stderr).contains("revoked") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "web-2 still accepted after pki revoke: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(collector);
    Ok(())
}

/// The subcommands a `--help` text lists under `Commands:`.
fn help_subcommands(help: &str) -> Vec<String> {
    help.split("Commands:")
        .nth(1)
        .map(|rest| {
            rest.lines()
                .skip(1)
                .take_while(|l| l.starts_with("  "))
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `help` documents the long flag `flag` exactly (`--log` is not
/// `--log-json`).
fn help_has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        help[at + flag.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    })
}

/// Every `ircap-agent` and `ircap-collector` command in the README's and
/// `docs/`'s `sh` blocks names subcommands and long flags the built
/// binaries have, so a renamed flag or a removed command fails here, not
/// in a responder's shell. Checked against each subcommand's `--help`.
#[test]
fn every_documented_command_names_real_subcommands_and_flags() -> TestResult {
    let mut helps: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut help = |path: &[String]| -> Result<String, Box<dyn Error>> {
        if let Some(h) = helps.get(path) {
            return Ok(h.clone());
        }
        let out = bin(&path[0]).args(&path[1..]).arg("--help").output()?;
        if !out.status.success() {
            return Err(format!("{} --help: {}", path.join(" "), text(&out.stderr)).into());
        }
        let h = text(&out.stdout);
        helps.insert(path.to_vec(), h.clone());
        Ok(h)
    };
    let mut checked = 0;
    let mut problems = Vec::new();
    for (doc, body) in docs::all() {
        for block in docs::sh_blocks(&body) {
            for line in docs::block_commands(&block) {
                for cmd in docs::simple_commands(&line) {
                    let words: Vec<&str> = cmd.split_whitespace().collect();
                    let Some(first) = words.first() else { continue };
                    if *first != "ircap-agent" && *first != "ircap-collector" {
                        continue;
                    }
                    let mut path = vec![(*first).to_owned()];
                    let mut rest = &words[1..];
                    while let Some(w) = rest.first() {
                        if help_subcommands(&help(&path)?).iter().any(|s| s == w) {
                            path.push((*w).to_owned());
                            rest = &rest[1..];
                        } else {
                            break;
                        }
                    }
                    if path.len() == 1 && !rest.is_empty() && !rest[0].starts_with('-') {
                        problems.push(format!("{doc}: `{cmd}`: no subcommand {:?}", rest[0]));
                        continue;
                    }
                    let h = help(&path)?;
                    for w in rest {
                        let w = w.trim_start_matches('[');
                        if !w.starts_with("--") {
                            continue;
                        }
                        let flag = w
                            .split('=')
                            .next()
                            .unwrap_or(w)
                            .trim_end_matches([']', ')', '"', '\'']);
                        if !help_has_flag(&h, flag) {
                            problems.push(format!(
                                "{doc}: `{cmd}`: `{}` has no flag {flag}",
                                path.join(" ")
                            ));
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "stale documented commands:\n{}",
        problems.join("\n")
    );
    // The README alone documents more than 20: a parser that found none
    // would pass vacuously.
    assert!(checked > 40, "only {checked} documented commands found");
    eprintln!("{checked} documented commands checked");
    Ok(())
}

/// GitHub's anchor of a Markdown heading: lower case, spaces to `-`,
/// punctuation other than `-` and `_` dropped.
fn heading_anchor(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link in the README, `docs/` and the changelog points at
/// a file that exists and, with `#anchor`, at one of its headings.
#[test]
fn documented_links_point_at_files_and_headings_that_exist() -> TestResult {
    let mut documents = docs::all();
    documents.push(("CHANGELOG.md".to_owned(), docs::read("CHANGELOG.md")));
    let mut broken = Vec::new();
    let mut links = 0;
    for (doc, body) in &documents {
        let base = Path::new(doc).parent().unwrap_or(Path::new(""));
        for piece in body.split("](").skip(1) {
            let Some(link) = piece.split(')').next() else {
                continue;
            };
            if link.contains("://") || link.contains(' ') {
                continue;
            }
            links += 1;
            let (file, anchor) = link.split_once('#').unwrap_or((link, ""));
            let target = if file.is_empty() {
                PathBuf::from(doc)
            } else {
                base.join(file)
            };
            let Ok(text) = std::fs::read_to_string(docs::root().join(&target)) else {
                if !docs::root().join(&target).exists() {
                    broken.push(format!("{doc}: {link}: no such file"));
                }
                continue;
            };
            if !anchor.is_empty()
                && !text
                    .lines()
                    .filter_map(|l| {
                        l.trim_start_matches('#')
                            .strip_prefix(' ')
                            .filter(|_| l.starts_with('#'))
                    })
                    .any(|h| heading_anchor(h) == anchor)
            {
                broken.push(format!("{doc}: {link}: no heading #{anchor}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(links > 20, "only {links} links found");
    Ok(())
}
