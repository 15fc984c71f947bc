//! The S3 store end to end: a real agent, real collectors and a real S3
//! server (SeaweedFS, which verifies SHA-256 checksums, enforces SigV4 and
//! Object Lock); what was stored is checked with boto3, not our code.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use ircap_e2e::proxy::Proxy;
use ircap_e2e::s3::S3Server;
use ircap_e2e::{Collector, TestResult, agent_capture, bin, build_dir, pki};

/// The collector's S3 part size (`store::s3::PART_SIZE`).
const PART: u64 = 8 << 20;

struct Setup {
    /// Declared first so it is stopped before its directory is removed.
    server: S3Server,
    /// Under the build directory, not /tmp (which the agent walks).
    tmp: tempfile::TempDir,
    pki: PathBuf,
    bucket: String,
}

impl Setup {
    /// A SeaweedFS of its own with one fresh bucket.
    fn new(bucket: &str, lock: bool) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("ircap-s3-")
            .tempdir_in(build_dir())
            .unwrap();
        let pki = pki(&tmp.path().join("pki"));
        let server = S3Server::start(&tmp.path().join("weed"));
        server.create_bucket(bucket, lock);
        Self {
            tmp,
            pki,
            server,
            bucket: bucket.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("s3://{}/ir", self.bucket)
    }

    /// A collector on this bucket, its stderr in `<name>.log`.
    fn collector(&self, name: &str, extra: &[&str]) -> Collector {
        self.server.collector(
            &self.pki,
            &self.url(),
            &self.tmp.path().join(format!("{name}.log")),
            extra,
        )
    }

    /// A collector on this bucket reaching S3 at `endpoint` (a proxy in
    /// front of the server), listening on `port` (0: any).
    fn collector_at(&self, name: &str, endpoint: &str, port: u16, extra: &[&str]) -> Collector {
        let mut cmd = self
            .server
            .collector_command(&self.tmp.path().join(format!("{name}.log")));
        cmd.env("AWS_ENDPOINT_URL_S3", endpoint);
        Collector::builder(&self.pki, std::path::Path::new(""))
            .command(cmd)
            .store_url(&self.url())
            .port(port)
            .args(extra)
            .start()
    }

    /// A directory of `mib` MiB of incompressible "log" bytes; its path
    /// and the bytes' SHA-256.
    fn big_log(&self, mib: usize) -> (PathBuf, String) {
        use sha2::Digest as _;
        let dir = self.tmp.path().join("logs");
        std::fs::create_dir_all(&dir).unwrap();
        let mut file = std::fs::File::create(dir.join("big.log")).unwrap();
        let mut hasher = sha2::Sha256::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for word in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes());
            }
            hasher.update(&block);
            file.write_all(&block).unwrap();
        }
        (dir, format!("{:x}", hasher.finalize()))
    }

    /// `ircap-collector CMD --server URL ...` as alice.
    fn analyst(&self, collector: &Collector, cmd: &str, args: &[&str]) -> Output {
        ircap_e2e::analyst(&collector.url(), &self.pki, "alice", cmd, args)
    }

    /// The committed manifest, read with boto3.
    fn manifest(&self, capture_id: &str) -> serde_json::Value {
        let out = self.server.boto(&[
            "cat",
            &self.bucket,
            &format!("ir/captures/web-1/{capture_id}/manifest.json"),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Checks every artifact of a capture with boto3: its bytes hash to the
    /// manifest's SHA-256 and S3's own stored checksum is the manifest's
    /// SHA-256 (one part) or the SHA-256 of the 8 MiB parts' SHA-256s.
    fn check_objects(&self, capture_id: &str) -> serde_json::Value {
        let manifest = self.manifest(capture_id);
        let artifacts = manifest["artifacts"].as_array().unwrap();
        assert!(!artifacts.is_empty());
        for a in artifacts {
            let name = a["name"].as_str().unwrap();
            let key = format!("ir/captures/web-1/{capture_id}/{name}");
            let o = self.server.boto_json(&["object", &self.bucket, &key]);
            assert_eq!(o["sha256"], a["sha256_stored"], "{name}: {o}");
            assert_eq!(o["size"], a["size_stored"], "{name}: {o}");
            let expected = if a["size_stored"].as_u64().unwrap() <= PART {
                &o["sha256_b64"]
            } else {
                &o["composite_8mib"]
            };
            assert_eq!(&o["s3_checksum_sha256"], expected, "{name}: {o}");
        }
        let staging = self
            .server
            .boto_json(&["list", &self.bucket, "ir/staging/"]);
        assert_eq!(staging, serde_json::json!([]), "upload records left");
        manifest
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn capture_id(out: &Output) -> String {
    assert!(out.status.success(), "agent: {}", text(&out.stderr));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "complete", "{s}");
    s["capture_id"].as_str().unwrap().to_owned()
}

fn artifact<'a>(manifest: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    manifest["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in the manifest"))
}

/// `web-1` captures every byte of the log directory `logs` to `url`.
fn capture_log_dir(url: &str, pki: &Path, logs: &Path) -> Output {
    agent_capture(
        url,
        pki,
        "web-1",
        &[
            "--logs-dir",
            logs.to_str().unwrap(),
            "--logs-since",
            "1d",
            "--logs-max-bytes",
            "2G",
        ],
    )
}

#[test]
fn capture_lands_in_s3_with_checksums_boto3_agrees_with() -> TestResult {
    let s = Setup::new("e2e-basic", false);
    let collector = s.collector("collector", &[]);
    // 20 MiB of incompressible log: a three-part artifact among small ones.
    let (logs, planted) = s.big_log(20);
    let out = agent_capture(
        &collector.url(),
        &s.pki,
        "web-1",
        &["--logs-dir", logs.to_str().unwrap(), "--logs-since", "1d"],
    );
    let id = capture_id(&out);
    let manifest = s.check_objects(&id);
    let big = artifact(&manifest, "logs/00000-big.log.gz");
    assert_eq!(big["sha256_uncompressed"].as_str(), Some(planted.as_str()));
    assert!(big["size_stored"].as_u64().unwrap() > 2 * PART, "{big}");
    // The index record `list` reads lives in the bucket too.
    let index = s
        .server
        .boto_json(&["list", &s.bucket, "ir/index/records/"]);
    let records: Vec<&str> = index
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .filter(|k| k.ends_with(&format!("/{id}.json")))
        .collect();
    assert_eq!(records.len(), 1, "{index}");
    Ok(())
}

#[test]
fn compliance_retention_refuses_delete_and_overwrite_and_is_checked_at_start() -> TestResult {
    let s = Setup::new("e2e-worm", true);
    let collector = s.collector(
        "collector",
        &[
            "--s3-retention-mode",
            "COMPLIANCE",
            "--s3-retention-days",
            "1",
        ],
    );
    let id = capture_id(&agent_capture(
        &collector.url(),
        &s.pki,
        "web-1",
        &["--no-logs"],
    ));
    let manifest = s.check_objects(&id);
    let first = manifest["artifacts"][0]["name"].as_str().unwrap();
    for name in [first, "manifest.json"] {
        let key = format!("ir/captures/web-1/{id}/{name}");
        let o = s.server.boto_json(&["object", &s.bucket, &key]);
        assert_eq!(o["lock_mode"], "COMPLIANCE", "{key}: {o}");
        let del = s.server.boto_json(&["try-delete-version", &s.bucket, &key]);
        assert_eq!(del["deleted"], false, "{key}: {del}");
        let over = s.server.boto_json(&["try-overwrite", &s.bucket, &key]);
        assert_eq!(
            over["original_after"]["sha256"], over["before"]["sha256"],
            "{key}: {over}"
        );
        assert_eq!(
            over["original_after"]["version_id"],
            over["before"]["version_id"]
        );
    }

    // Start-up checks: retention on a bucket without Object Lock, and a
    // bucket that does not exist, are refused with a clear message.
    s.server.create_bucket("e2e-nolock", false);
    for (url, extra, expect) in [
        (
            "s3://e2e-nolock/ir",
            &[
                "--s3-retention-mode",
                "COMPLIANCE",
                "--s3-retention-days",
                "1",
            ][..],
            "Object Lock",
        ),
        ("s3://e2e-missing/ir", &[][..], "not reachable"),
    ] {
        let log = s.tmp.path().join("refused.log");
        let status = s
            .server
            .collector_command(&log)
            .args(["serve", "--listen", "127.0.0.1:0", "--store", url])
            .arg("--ca")
            .arg(s.pki.join("ca.pem"))
            .arg("--cert")
            .arg(s.pki.join("server.pem"))
            .arg("--key")
            .arg(s.pki.join("server.key"))
            .args(extra)
            .output()?;
        let stderr = std::fs::read_to_string(&log)?;
        // Exit 2: a setting refused before anything was done.
        assert_eq!(status.status.code(), Some(2), "{url}: {stderr}");
        assert!(status.stdout.is_empty(), "{url}: listened");
        assert!(stderr.contains(expect), "{url}: {stderr}");
    }

    // A wrong secret is one short line naming the status and what to
    // check; with an S3-compatible endpoint and no region there is no
    // lookup of the EC2 metadata service (which warned at length).
    let log = s.tmp.path().join("secret.log");
    let status = s
        .server
        .collector_command(&log)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .env_remove("AWS_REGION")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .args(["serve", "--listen", "127.0.0.1:0", "--store", &s.url()])
        .arg("--ca")
        .arg(s.pki.join("ca.pem"))
        .arg("--cert")
        .arg(s.pki.join("server.pem"))
        .arg("--key")
        .arg(s.pki.join("server.key"))
        .output()?;
    let stderr = std::fs::read_to_string(&log)?;
    assert_eq!(
        status.status.code(),
        Some(2),
        "a wrong secret is a refused setting (exit 2): {stderr}"
    );
    assert!(status.stdout.is_empty(), "listened with a wrong secret");
    assert!(stderr.contains("HTTP 403"), "{stderr}");
    assert!(stderr.contains("access key and secret"), "{stderr}");
    assert!(stderr.len() < 1_000, "{} bytes: {stderr}", stderr.len());
    assert!(!stderr.to_lowercase().contains("imds"), "{stderr}");
    Ok(())
}

#[test]
fn two_replicas_share_one_bucket() -> TestResult {
    let s = Setup::new("e2e-replicas", false);
    let a = s.collector("a", &[]);
    let b = s.collector("b", &[]);
    let id = capture_id(&agent_capture(&a.url(), &s.pki, "web-1", &["--no-logs"]));

    let out = s.analyst(&b, "list", &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["capture_id"], id.as_str());
    assert_eq!(rows[0]["status"], "complete");

    let dest = s.tmp.path().join("pulled");
    std::fs::create_dir_all(&dest)?;
    let out = s.analyst(&b, "pull", &[&id, dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verify = bin("ircap-collector")
        .arg("verify")
        .arg(dest.join(&id))
        .output()?;
    assert!(verify.status.success(), "{}", text(&verify.stderr));
    // What was pulled through B is what A stored.
    let pulled: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join(&id).join("manifest.json"))?)?;
    assert_eq!(pulled["artifacts"], s.manifest(&id)["artifacts"]);
    Ok(())
}

/// `list --json` rows from `collector`, as alice.
fn listed(s: &Setup, collector: &Collector, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = s.analyst(collector, "list", &all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Right after a commit `list --since 1d` finds the capture through the
/// index (its record, merged into today's segment by the listing); with
/// the whole index deleted nothing is listed, and `ircap-collector
/// reindex` rebuilds it from the committed manifests alone, with the same
/// rows.
#[test]
fn list_reads_the_index_and_reindex_rebuilds_it_from_the_evidence() -> TestResult {
    let s = Setup::new("e2e-index", false);
    let collector = s.collector("collector", &[]);
    let id = capture_id(&agent_capture(
        &collector.url(),
        &s.pki,
        "web-1",
        &["--no-logs"],
    ));
    let rows = listed(&s, &collector, &["--since", "1d"]);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["capture_id"], id.as_str());
    assert_eq!(rows[0]["agent"], "web-1");
    let keys = s.server.boto_json(&["list", &s.bucket, "ir/index/"]);
    let keys: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("ir/index/days/") && k.ends_with(".ndjson")),
        "{keys:?}"
    );
    let day = keys
        .iter()
        .find(|k| k.ends_with(&format!("/{id}.json")))
        .expect("a record");
    let segment = text(
        &s.server
            .boto(&[
                "cat",
                &s.bucket,
                &day.replace("records/", "days/")
                    .replace(&format!("/{id}.json"), ".ndjson"),
            ])
            .stdout,
    );
    assert!(segment.contains(&id), "{segment}");
    // A --since after the capture's day lists nothing.
    assert!(listed(&s, &collector, &["--since", "2099-01-01T00:00:00Z"]).is_empty());

    let _ = s
        .server
        .boto_json(&["delete-prefix", &s.bucket, "ir/index/"]);
    assert!(listed(&s, &collector, &[]).is_empty());
    let out = s
        .server
        .collector_command(&s.tmp.path().join("reindex.log"))
        .args(["reindex", "--store", &s.url()])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        text(&std::fs::read(s.tmp.path().join("reindex.log"))?)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (report["captures"].as_u64(), report["skipped"].as_u64()),
        (Some(1), Some(0)),
        "{report}"
    );
    let again = listed(&s, &collector, &["--since", "1d"]);
    assert_eq!(again, rows);
    Ok(())
}

#[test]
fn s3_outage_mid_upload_the_agent_retries_and_the_capture_completes() -> TestResult {
    let mut s = Setup::new("e2e-outage", false);
    let collector = s.collector("collector", &["--metrics-listen", "127.0.0.1:0"]);
    let (logs, planted) = s.big_log(160);
    let url = collector.url();
    let pki_dir = s.pki.clone();
    let agent = std::thread::spawn(move || {
        agent_capture(
            &url,
            &pki_dir,
            "web-1",
            &[
                "--logs-dir",
                logs.to_str().unwrap(),
                "--logs-since",
                "1d",
                "--upload-attempts",
                "12",
            ],
        )
    });
    // As soon as the big log has a durable part in S3, take S3 away.
    let _ = s.server.boto_json(&[
        "wait-key",
        &s.bucket,
        "ir/staging/",
        "big.log.gz/@00001.",
        "120",
    ]);
    s.server.stop();
    std::thread::sleep(Duration::from_secs(3));
    // Nothing is listed complete while S3 is down.
    let out = s.analyst(&collector, "list", &["--json"]);
    assert!(
        !text(&out.stdout).contains("complete"),
        "{}",
        text(&out.stdout)
    );
    s.server.restart();
    let out = agent.join().map_err(|_| "agent thread")?;
    let stderr = text(&out.stderr);
    let id = capture_id(&out);
    assert!(stderr.contains("Upload interrupted"), "{stderr}");
    let manifest = s.check_objects(&id);
    let big = artifact(&manifest, "logs/00000-big.log.gz");
    assert_eq!(big["sha256_uncompressed"].as_str(), Some(planted.as_str()));
    let log = std::fs::read_to_string(s.tmp.path().join("collector.log"))?;
    assert!(log.contains("Store backend unavailable"), "{log}");
    // The retries are counted.
    let mut conn = std::net::TcpStream::connect(collector.metrics.unwrap())?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    std::io::Read::read_to_string(&mut conn, &mut body)?;
    let unavailable: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("ircap_store_unavailable_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(unavailable > 0, "{body}");
    Ok(())
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn one_gib_artifact_streams_through_with_bounded_collector_memory() -> TestResult {
    let s = Setup::new("e2e-large", false);
    let collector = s.collector("collector", &[]);
    let (logs, planted) = s.big_log(1024);
    let started = Instant::now();
    let out = capture_log_dir(&collector.url(), &s.pki, &logs);
    let elapsed = started.elapsed();
    let id = capture_id(&out);
    let rss = peak_rss(collector.child.id());
    std::fs::remove_dir_all(&logs)?;
    let manifest = s.check_objects(&id);
    let big = artifact(&manifest, "logs/00000-big.log.gz");
    assert_eq!(big["sha256_uncompressed"].as_str(), Some(planted.as_str()));
    let stored = big["size_stored"].as_u64().unwrap();
    assert!(stored > 1 << 30, "{big}");
    eprintln!(
        "1 GiB artifact ({stored} bytes stored) in {:.1} s; collector peak RSS {} MiB",
        elapsed.as_secs_f64(),
        rss >> 20
    );
    assert!(rss < 200 << 20, "collector peak RSS {} MiB", rss >> 20);
    Ok(())
}

/// The S3 server's address, for a proxy in front of it.
fn server_addr(s: &Setup) -> std::net::SocketAddr {
    s.server
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

#[test]
fn a_large_artifact_crosses_to_s3_once_and_is_never_read_back() -> TestResult {
    let s = Setup::new("e2e-one-pass", false);
    let proxy = Proxy::start(server_addr(&s));
    let collector = s.collector_at("collector", &format!("http://{}", proxy.addr), 0, &[]);
    let mib: usize = std::env::var("IRCAP_ONE_PASS_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let (logs, planted) = s.big_log(mib);
    let (up0, down0, req0) = (proxy.bytes_up(), proxy.bytes_down(), proxy.requests().len());
    let started = Instant::now();
    let out = capture_log_dir(&collector.url(), &s.pki, &logs);
    let elapsed = started.elapsed();
    let id = capture_id(&out);
    let (up, down) = (proxy.bytes_up() - up0, proxy.bytes_down() - down0);
    let requests: Vec<String> = proxy.requests().split_off(req0);
    std::fs::remove_dir_all(&logs)?;
    let manifest = s.check_objects(&id);
    let big = artifact(&manifest, "logs/00000-big.log.gz");
    assert_eq!(big["sha256_uncompressed"].as_str(), Some(planted.as_str()));
    let stored = big["size_stored"].as_u64().unwrap();
    let all: u64 = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["size_stored"].as_u64())
        .sum();
    let count = |method: &str| {
        requests
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")))
            .count()
    };
    // A read of artifact bytes: a GET of the big artifact's final object
    // (the key is in the path, before any query). Its upload records under
    // staging/ hold no evidence bytes.
    let evidence_gets: Vec<&String> = requests
        .iter()
        .filter(|r| {
            let path = r.split('?').next().unwrap_or_default();
            r.starts_with("GET ") && path.contains("big.log") && !path.contains("/staging/")
        })
        .collect();
    #[allow(clippy::cast_precision_loss)]
    let (ratio_up, ratio_down, rate) = (
        up as f64 / stored as f64,
        down as f64 / stored as f64,
        stored as f64 / 1e6 / elapsed.as_secs_f64(),
    );
    eprintln!(
        "{mib} MiB log, {stored} bytes stored ({all} in all artifacts) in {:.1} s ({rate:.1} MB/s): \
         collector -> S3 {up} bytes ({ratio_up:.3}x), S3 -> collector {down} bytes ({ratio_down:.3}x); \
         {} requests: {} PUT, {} GET, {} HEAD, {} POST, {} DELETE; evidence GETs {}",
        elapsed.as_secs_f64(),
        requests.len(),
        count("PUT"),
        count("GET"),
        count("HEAD"),
        count("POST"),
        count("DELETE"),
        evidence_gets.len(),
    );
    assert!(evidence_gets.is_empty(), "{evidence_gets:?}");
    assert!(
        ratio_up <= 1.05,
        "collector -> S3 {ratio_up:.3}x the artifact"
    );
    // Nothing of the evidence comes back (listings, states and the small
    // tables triage reads at commit do).
    assert!(
        ratio_down < 0.05,
        "S3 -> collector {ratio_down:.3}x the artifact"
    );
    Ok(())
}

/// Kills (SIGKILL) the collector while the big log is partly uploaded
/// (past its first 8 MiB part) and lets the agent resume: on a collector
/// restarted on the same port, or (`another_replica`) on a second replica
/// already running behind the same load balancer. The resuming collector
/// goes on from the part records and the digest state saved with them
/// (the parts of an unfinished upload cannot be read), and checks the
/// gzip content digest from the final object once.
fn killed_mid_artifact(bucket: &str, another_replica: bool) -> TestResult {
    let s = Setup::new(bucket, false);
    let first = s.collector("first", &[]);
    let second = another_replica.then(|| s.collector("second", &[]));
    let lb = Proxy::start(first.addr);
    let (logs, planted) = s.big_log(96);
    let url = format!("https://{}", lb.addr);
    let pki_dir = s.pki.clone();
    let agent = std::thread::spawn(move || {
        agent_capture(
            &url,
            &pki_dir,
            "web-1",
            &[
                "--logs-dir",
                logs.to_str().unwrap(),
                "--logs-since",
                "1d",
                "--upload-attempts",
                "12",
            ],
        )
    });
    let second_part = format!("big.log.gz/@00002.{PART}.");
    let _ = s
        .server
        .boto_json(&["wait-key", &s.bucket, "ir/staging/", &second_part, "120"]);
    let first_port = first.addr.port();
    drop(first); // SIGKILL
    let second = match second {
        Some(b) => b,
        None => s.collector_at("second", &s.server.endpoint(), first_port, &[]),
    };
    lb.set_upstream(second.addr);
    let out = agent.join().map_err(|_| "agent thread")?;
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Upload interrupted"), "{stderr}");
    let id = capture_id(&out);
    let manifest = s.check_objects(&id);
    let big = artifact(&manifest, "logs/00000-big.log.gz");
    assert_eq!(big["sha256_uncompressed"].as_str(), Some(planted.as_str()));
    assert!(big["size_stored"].as_u64().unwrap() > 4 * PART, "{big}");
    let log = std::fs::read_to_string(s.tmp.path().join("second.log"))?;
    assert!(log.contains("Resuming artifact"), "{log}");
    assert!(!log.contains("does not verify"), "{log}");
    Ok(())
}

#[test]
fn collector_killed_mid_artifact_the_upload_resumes_on_a_restarted_collector() -> TestResult {
    killed_mid_artifact("e2e-kill-same", false)
}

#[test]
fn collector_killed_mid_artifact_the_upload_resumes_on_another_replica() -> TestResult {
    killed_mid_artifact("e2e-kill-other", true)
}

/// `ircap-collector CMD` as alice against `collector`.
fn as_alice(s: &Setup, collector: &Collector, cmd: &str, args: &[&str]) -> Output {
    bin("ircap-collector")
        .arg(cmd)
        .args(["--server", &collector.url()])
        .arg("--ca")
        .arg(s.pki.join("ca.pem"))
        .arg("--cert")
        .arg(s.pki.join("alice.pem"))
        .arg("--key")
        .arg(s.pki.join("alice.key"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn audit_events_and_the_signed_receipt_are_locked_objects() -> TestResult {
    let s = Setup::new("e2e-audit", true);
    let collector = s.collector(
        "collector",
        &[
            "--s3-retention-mode",
            "COMPLIANCE",
            "--s3-retention-days",
            "1",
        ],
    );
    let id = capture_id(&agent_capture(
        &collector.url(),
        &s.pki,
        "web-1",
        &["--no-logs"],
    ));
    // The signed receipt is stored beside the manifest, locked like it.
    for name in [
        "manifest.receipt.json",
        "manifest.receipt.sig",
        "manifest.receipt.pem",
    ] {
        let key = format!("ir/captures/web-1/{id}/{name}");
        let o = s.server.boto_json(&["object", &s.bucket, &key]);
        assert_eq!(o["lock_mode"], "COMPLIANCE", "{key}: {o}");
    }
    let out = as_alice(&s, &collector, "list", &["--json", "--case", "IR-3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = as_alice(
        &s,
        &collector,
        "pull",
        &[
            "01a20000-0000-7000-8000-00000000dead",
            s.tmp.path().to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    // One object per call, under audit/, each locked.
    let keys = s.server.boto_json(&["list", &s.bucket, "ir/audit/"]);
    let keys: Vec<String> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let o = s.server.boto_json(&["object", &s.bucket, key]);
        assert_eq!(o["lock_mode"], "COMPLIANCE", "{key}: {o}");
        let del = s.server.boto_json(&["try-delete-version", &s.bucket, key]);
        assert_eq!(del["deleted"], false, "{key}: {del}");
    }
    // And `audit` reads them back from the bucket.
    let out = as_alice(&s, &collector, "audit", &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0]["call"], "list_captures");
    assert_eq!(events[0]["case"], "IR-3");
    assert_eq!(events[1]["call"], "get_manifest");
    assert!(
        events[1]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("NotFound")
    );
    Ok(())
}
