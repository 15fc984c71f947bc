//! Agent -> collector over mutual TLS on loopback, with real certificates
//! from `ircap-collector pki init`: the capture arrives complete, verifies,
//! carries the collector's receipt, and survives a dropped connection.
//! The agent is the binary under test; the collector is served in this
//! process except where its binary is the point (SIGTERM, SIGHUP, killed
//! mid-upload).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use ircap_collector::serve::ServeConfig;
use ircap_e2e::inproc::InProcessCollector;
use ircap_e2e::{Collector, TestResult, agent_capture, bin, pki};

/// Every record of a stored `.jsonl.gz` table, parsed strictly.
fn table(dir: &std::path::Path, name: &str) -> Vec<serde_json::Value> {
    ircap_e2e::table_rows(&dir.join(format!("{name}.jsonl.gz")))
}

fn summary(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn capture_arrives_complete_verified_and_receipted() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = InProcessCollector::start(&pki, &tmp.path().join("store"));
    // Planted: a process and a listener owned by this test process.
    let mut planted = std::process::Command::new("sleep").arg("600").spawn()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let out = agent_capture(&collector.url(), &pki, "web-1", &["--logs-since", "3650d"]);
    let _ = planted.kill();
    let _ = planted.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    assert_eq!(s["status"], "complete");
    let id = s["capture_id"].as_str().unwrap_or_default();
    let dir = collector.capture_dir("web-1", id);

    let verify = bin("ircap-collector").arg("verify").arg(&dir).output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    assert_eq!(manifest["agent"]["identity"], "web-1");
    let receipt = &manifest["collector_receipt"];
    assert_eq!(receipt["peer_identity"], "web-1");
    assert_eq!(receipt["peer_role"], "agent");
    assert_eq!(receipt["verification"], "verified");
    assert_eq!(
        receipt["peer_certificate_sha256"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(
        manifest["artifacts"].as_array().map(Vec::len),
        s["artifacts"].as_u64().map(|n| n as usize)
    );
    // The planted process and listener are in the stored tables.
    let procs = table(&dir, "processes");
    let sleeper = procs
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(planted.id())))
        .expect("planted process");
    assert_eq!(sleeper["argv"], serde_json::json!(["sleep", "600"]));
    let me = u64::from(std::process::id());
    let conns = table(&dir, "connections");
    let l = conns
        .iter()
        .find(|c| c["local_port"].as_u64() == Some(u64::from(port)) && c["state"] == "LISTEN")
        .expect("planted listener");
    assert!(
        l["pids"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x.as_u64() == Some(me)))
    );
    drop(listener);
    // The index names the capture under the agent's certificate identity.
    let record = collector.index_record(id).expect("an index record");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(record)?)?;
    assert_eq!(index["agent"], "web-1");
    Ok(())
}

/// Forwards TCP to `upstream`; the first connection is cut (both ways)
/// once `cut_after` bytes went from client to server.
struct CuttingProxy {
    addr: SocketAddr,
    cuts: Arc<AtomicUsize>,
}

impl CuttingProxy {
    fn start(upstream: SocketAddr, cut_after: u64) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let cuts = Arc::new(AtomicUsize::new(0));
        let cut_done = Arc::new(AtomicBool::new(false));
        let counted = Arc::new(AtomicU64::new(0));
        let cuts2 = Arc::clone(&cuts);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                    (Ok(c), Ok(s)) => (c, s),
                    _ => continue,
                };
                let cut_here = !cut_done.load(Ordering::SeqCst);
                let (cuts, cut_done, counted) = (
                    Arc::clone(&cuts2),
                    Arc::clone(&cut_done),
                    Arc::clone(&counted),
                );
                // client -> server, counting and possibly cutting.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client, server);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        let total = counted.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if cut_here && total >= cut_after && !cut_done.swap(true, Ordering::SeqCst)
                        {
                            cuts.fetch_add(1, Ordering::SeqCst);
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                // server -> client.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        Ok(Self { addr, cuts })
    }
}

#[test]
fn a_dropped_connection_resumes_and_the_capture_is_byte_identical() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = InProcessCollector::start(&pki, &tmp.path().join("store"));
    // Cut after 16 KB from the agent: past the TLS handshake, inside the
    // upload of the first tables.
    let proxy = CuttingProxy::start(collector.addr, 16 * 1024)?;
    let out = agent_capture(
        &format!("https://{}", proxy.addr),
        &pki,
        "web-1",
        &["--logs-since", "3650d"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        proxy.cuts.load(Ordering::SeqCst),
        1,
        "the proxy cut one connection"
    );
    assert!(
        stderr.contains("Upload interrupted") || stderr.contains("retrying"),
        "the agent saw the break and recovered: {stderr}"
    );
    let s = summary(&out);
    let dir = collector.capture_dir("web-1", s["capture_id"].as_str().unwrap_or_default());
    let verify = bin("ircap-collector").arg("verify").arg(&dir).output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    Ok(())
}

#[test]
fn an_unreachable_collector_fails_clearly_and_writes_nothing_locally() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    // A port with nothing listening.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let out = bin("ircap-agent")
        .current_dir(tmp.path())
        .args([
            "capture",
            "--no-imds",
            "--no-logs",
            "--upload-attempts",
            "2",
        ])
        .args(["--collector", &format!("https://127.0.0.1:{port}")])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join("web-1.pem"))
        .arg("--key")
        .arg(pki.join("web-1.key"))
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&out);
    assert_eq!(s["status"], "failed");
    // The error names the address and the cause, not a bare gRPC code.
    let error = s["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("127.0.0.1:{port}")) && error.contains("connection refused"),
        "{s}"
    );
    // Nothing but the PKI in the working directory.
    let names: Vec<_> = std::fs::read_dir(tmp.path())?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("pki")]);
    Ok(())
}

#[test]
fn a_revoked_agent_is_refused_when_a_crl_is_configured() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let crl = pki.join("crl.pem");
    let revoke = bin("ircap-collector")
        .args(["pki", "revoke", "--ca-dir"])
        .arg(&pki)
        .arg("--crl")
        .arg(&crl)
        .arg(pki.join("web-2.pem"))
        .output()?;
    assert!(
        revoke.status.success(),
        "{}",
        String::from_utf8_lossy(&revoke.stderr)
    );
    let collector = InProcessCollector::builder(&pki, &tmp.path().join("store"))
        .config(ServeConfig {
            crl: Some(crl),
            ..ServeConfig::default()
        })
        .start();

    let refused = agent_capture(
        &collector.url(),
        &pki,
        "web-2",
        &["--no-logs", "--upload-attempts", "1"],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(summary(&refused)["status"], "failed");
    assert!(!collector.store.join("captures/web-2").exists());

    let allowed = agent_capture(&collector.url(), &pki, "web-1", &["--no-logs"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    Ok(())
}

#[test]
fn the_collector_shuts_down_cleanly_on_sigterm() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let mut collector = Collector::start(&pki, &tmp.path().join("store"), 0);
    let pid = collector.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?;
    assert!(kill.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(status) = collector.child.try_wait()? {
            assert!(status.success(), "exit status {status}");
            return Ok(());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "collector still running 30 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn collector_killed_mid_upload_and_restarted_the_agent_resumes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    let first = Collector::start(&pki, &store, 0);
    let port = first.addr.port();
    // 64 MiB of incompressible bytes in a log directory of our own.
    let logs = tmp.path().join("logs");
    std::fs::create_dir(&logs)?;
    let mut data = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = (x >> 24) as u8;
    }
    std::fs::write(logs.join("big.log"), &data)?;
    let planted_sha = ircap_proto::hashing::sha256_hex(&data);
    drop(data);

    let logs_arg = logs.display().to_string();
    let url = first.url();
    let agent = std::thread::spawn({
        let pki = pki.clone();
        move || {
            agent_capture(
                &url,
                &pki,
                "web-1",
                &[
                    "--logs-dir",
                    &logs_arg,
                    "--logs-since",
                    "1d",
                    "--upload-attempts",
                    "12",
                ],
            )
        }
    });
    // Wait until the big log is partly stored (in staging: a capture
    // directory holds finished artifacts only), then kill the collector.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let partial = loop {
        let found = std::fs::read_dir(store.join("staging"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(Result::ok)
            .map(|e| e.path().join("logs/00000-big.log.gz"))
            .and_then(|p| std::fs::metadata(&p).ok().map(|m| m.len()));
        if let Some(len) = found.filter(|&l| l > 8 << 20) {
            break len;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "upload never reached 8 MiB"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    drop(first); // SIGKILL
    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = Collector::start(&pki, &store, port);
    let out = agent.join().map_err(|_| "agent thread")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Upload interrupted"), "{stderr}");
    let s = summary(&out);
    let dir = second.capture_dir("web-1", s["capture_id"].as_str().unwrap_or_default());
    let verify = bin("ircap-collector").arg("verify").arg(&dir).output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // The stored log holds exactly the planted bytes: the hash a local
    // capture records for the same file.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let entry = manifest["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == "logs/00000-big.log.gz"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        entry["sha256_uncompressed"].as_str(),
        Some(planted_sha.as_str())
    );
    assert!(entry["size_stored"].as_u64().unwrap_or(0) > partial);
    Ok(())
}

#[test]
fn spool_keeps_a_local_copy_identical_to_what_the_collector_stored() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = InProcessCollector::start(&pki, &tmp.path().join("store"));
    let spool = tmp.path().join("spool");
    let spool_arg = spool.display().to_string();
    let out = agent_capture(
        &collector.url(),
        &pki,
        "web-1",
        &["--no-logs", "--spool", &spool_arg],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    let id = s["capture_id"].as_str().unwrap_or_default();
    let local = spool.join(id);
    let remote = collector.capture_dir("web-1", id);
    for dir in [&local, &remote] {
        let v = bin("ircap-agent").arg("verify").arg(dir).output()?;
        assert!(
            v.status.success(),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    let read = |d: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap()
    };
    // Same artifacts, same digests; only the collector adds its receipt.
    assert_eq!(read(&local)["artifacts"], read(&remote)["artifacts"]);
    assert!(read(&local)["collector_receipt"].is_null());
    assert!(read(&remote)["collector_receipt"].is_object());
    Ok(())
}

#[test]
fn spool_with_an_unreachable_collector_says_not_delivered_and_keeps_the_capture() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let spool = tmp.path().join("spool");
    let spool_arg = spool.display().to_string();
    let started = std::time::Instant::now();
    let out = agent_capture(
        &format!("https://127.0.0.1:{port}"),
        &pki,
        "web-1",
        &[
            "--no-logs",
            "--spool",
            &spool_arg,
            "--upload-attempts",
            "1000",
            "--upload-deadline",
            "3s",
        ],
    );
    // The overall deadline, not the 1000 attempts, ended the retries.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1));
    let s = summary(&out);
    assert_eq!(s["status"], "not_delivered", "{s}");
    let local = std::path::PathBuf::from(s["location"].as_str().unwrap_or_default());
    assert!(local.starts_with(&spool));
    let v = bin("ircap-agent").arg("verify").arg(&local).output()?;
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    Ok(())
}

/// `GET path` on the metrics port; (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(String, String)> {
    let mut conn = TcpStream::connect(addr)?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in {body}"))
}

#[test]
fn metrics_count_what_was_received_and_verified() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = InProcessCollector::builder(&pki, &tmp.path().join("store"))
        .config(ServeConfig {
            metrics_listen: Some("127.0.0.1:0".into()),
            ..ServeConfig::default()
        })
        .start();
    let metrics = collector.metrics.ok_or("no metrics address")?;
    let (status, before) = http_get(metrics, "/metrics")?;
    assert!(status.contains("200"), "{status}");
    assert_eq!(metric(&before, "ircap_captures_completed_total"), 0);

    let out = agent_capture(&collector.url(), &pki, "web-1", &["--no-logs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = summary(&out);
    let (_, after) = http_get(metrics, "/metrics")?;
    assert_eq!(metric(&after, "ircap_captures_completed_total"), 1);
    assert_eq!(
        metric(&after, "ircap_artifacts_verified_total"),
        s["artifacts"].as_u64().unwrap_or_default()
    );
    assert_eq!(
        metric(&after, "ircap_bytes_received_total"),
        s["bytes_stored"].as_u64().unwrap_or_default()
    );
    assert_eq!(metric(&after, "ircap_verification_failures_total"), 0);
    assert_eq!(metric(&after, "ircap_active_streams"), 0);
    let (status, _) = http_get(metrics, "/other")?;
    assert!(status.contains("404"), "{status}");
    Ok(())
}

/// `pki revoke` into `crl` for `cert`, asserting success.
fn revoke(pki: &std::path::Path, crl: &std::path::Path, cert: &std::path::Path) {
    let out = bin("ircap-collector")
        .args(["pki", "revoke", "--ca-dir"])
        .arg(pki)
        .arg("--crl")
        .arg(crl)
        .arg(cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `who` can open a capture over a fresh connection.
fn can_open(collector: &Collector, who: &str, id: &str) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = ircap_e2e::client(
            collector.addr,
            &collector.pki.join("ca.pem"),
            Some((&collector.pki, who)),
        )
        .await;
        let req = ircap_proto::v1::OpenCaptureRequest {
            capture_id: id.to_owned(),
            hostname: "h".to_owned(),
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), c.open_capture(req))
            .await
            .is_ok_and(|r| r.is_ok())
    })
}

/// A running collector picks up a new CRL: on SIGHUP, and by itself when
/// the file changes; an agent revoked since start is then refused on its
/// next connection.
#[test]
fn the_collector_reloads_its_crl_on_sighup_and_on_change() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let crl = pki.join("crl.pem");
    // A CRL revoking an identity nobody uses here.
    let spare = bin("ircap-collector")
        .args(["pki", "issue", "--ca-dir"])
        .arg(&pki)
        .arg("--out")
        .arg(&pki)
        .args(["--role", "agent", "spare-1"])
        .output()?;
    assert!(
        spare.status.success(),
        "{}",
        String::from_utf8_lossy(&spare.stderr)
    );
    revoke(&pki, &crl, &pki.join("spare-1.pem"));
    let crl_arg = crl.display().to_string();
    let collector = Collector::builder(&pki, &tmp.path().join("store"))
        .args(&["--crl", &crl_arg])
        .start();
    assert!(can_open(
        &collector,
        "web-1",
        "01a20000-0000-7000-8000-00000000c001"
    ));
    assert!(can_open(
        &collector,
        "web-2",
        "01a20000-0000-7000-8000-00000000c002"
    ));

    let refused_within = |who: &str, id: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if !can_open(&collector, who, id) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        false
    };
    // SIGHUP.
    revoke(&pki, &crl, &pki.join("web-2.pem"));
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &collector.child.id().to_string()])
        .status()?;
    assert!(hup.success());
    assert!(
        refused_within("web-2", "01a20000-0000-7000-8000-00000000c003"),
        "web-2 still accepted after its revocation and SIGHUP"
    );
    // Still serving, and web-1 (not revoked) still welcome.
    assert!(
        can_open(&collector, "web-1", "01a20000-0000-7000-8000-00000000c005"),
        "web-1 refused after the reload (did SIGHUP stop the collector?)"
    );
    // A change of the file alone.
    revoke(&pki, &crl, &pki.join("web-1.pem"));
    assert!(
        refused_within("web-1", "01a20000-0000-7000-8000-00000000c004"),
        "web-1 still accepted after its revocation"
    );
    Ok(())
}
