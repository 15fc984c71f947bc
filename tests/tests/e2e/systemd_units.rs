//! `packaging/systemd/*.service`: clean under `systemd-analyze verify`,
//! hardened as measured by `systemd-analyze security --offline=true`, and
//! the collector unit's command line starts a real collector with the
//! shipped config.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ircap_e2e::packaging::{repo_root, tool};
use ircap_e2e::{TestResult, build_dir, pki};

const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

fn shipped(unit: &str) -> String {
    std::fs::read_to_string(repo_root().join("packaging/systemd").join(unit)).unwrap()
}

/// Writes `text` as `dir/unit` with `/usr/bin/ircap-*` pointing at the
/// workspace's real binaries (verify checks that ExecStart exists; the
/// shipped unit keeps /usr/bin).
fn staged(dir: &Path, unit: &str, text: &str) -> PathBuf {
    let text = text.replace(
        "/usr/bin/ircap-",
        &format!("{}/ircap-", build_dir().display()),
    );
    let path = dir.join(unit);
    std::fs::write(&path, text).unwrap();
    path
}

/// `systemd-analyze verify`: its exit status and everything it printed.
fn verify(path: &Path) -> (bool, String) {
    let out = Command::new(tool(SYSTEMD_ANALYZE))
        .arg("verify")
        .arg(path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The overall exposure `systemd-analyze security --offline=true` gives.
fn exposure(path: &Path) -> f64 {
    let out = Command::new(tool(SYSTEMD_ANALYZE))
        .args(["security", "--offline=true", "--no-pager"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no exposure line in {text}"));
    // "→ Overall exposure level for x.service: 1.1 OK 🙂"
    line.split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}

#[test]
fn systemd_units_verify_cleanly() -> TestResult {
    let dir = tempfile::tempdir()?;
    for unit in ["ircap-agent.service", "ircap-collector.service"] {
        let path = staged(dir.path(), unit, &shipped(unit));
        let (ok, text) = verify(&path);
        assert!(ok && text.trim().is_empty(), "{unit}: {text}");
    }
    // The check notices a unit systemd would only half understand.
    let bad = shipped("ircap-agent.service").replace("ProtectClock=yes", "ProtectClok=yes");
    let broken = tempfile::tempdir()?;
    let (_, text) = verify(&staged(broken.path(), "ircap-agent.service", &bad));
    assert!(text.contains("ProtectClok"), "{text}");
    Ok(())
}

#[test]
fn systemd_units_keep_the_shipped_paths() {
    let agent = shipped("ircap-agent.service");
    assert!(
        agent.contains("\nExecStart=/usr/bin/ircap-agent serve --config /etc/ircap/agent.toml\n")
    );
    assert!(agent.contains("\nCapabilityBoundingSet=CAP_SYS_PTRACE CAP_DAC_READ_SEARCH\n"));
    assert!(agent.contains("\nProtectSystem=strict\n"));
    assert!(agent.contains("\nNoNewPrivileges=yes\n"));
    let collector = shipped("ircap-collector.service");
    assert!(
        collector.contains("\nExecStart=/usr/bin/ircap-collector serve --config %d/collector.toml")
    );
    assert!(collector.contains("\nDynamicUser=yes\n"));
}

#[test]
fn systemd_units_security_exposure() -> TestResult {
    let dir = tempfile::tempdir()?;
    let agent = exposure(&staged(
        dir.path(),
        "ircap-agent.service",
        &shipped("ircap-agent.service"),
    ));
    let collector = exposure(&staged(
        dir.path(),
        "ircap-collector.service",
        &shipped("ircap-collector.service"),
    ));
    eprintln!("exposure: ircap-agent.service {agent}, ircap-collector.service {collector}");
    // The README quotes these figures ("Deploy").
    assert!(collector <= 1.5, "collector exposure {collector}");
    assert!(agent <= 3.0, "agent exposure {agent}");
    // The parser reads real figures: an unhardened unit scores high.
    let bare = staged(
        dir.path(),
        "bare.service",
        "[Service]\nExecStart=/usr/bin/ircap-agent serve\n",
    );
    assert!(exposure(&bare) > 9.0);
    Ok(())
}

#[test]
fn collector_unit_command_line_serves_with_the_shipped_config() -> TestResult {
    // What systemd does: copy the credentials to %d and run ExecStart.
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let creds = tmp.path().join("credentials");
    std::fs::create_dir(&creds)?;
    std::fs::copy(
        repo_root().join("packaging/config/collector.toml"),
        creds.join("collector.toml"),
    )?;
    std::fs::copy(pki.join("ca.pem"), creds.join("ca.pem"))?;
    std::fs::copy(pki.join("server.pem"), creds.join("server.pem"))?;
    std::fs::copy(pki.join("server.key"), creds.join("server.key"))?;
    let unit = shipped("ircap-collector.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .replace("%d", &creds.to_string_lossy());
    let mut words = exec.split_whitespace();
    let program = words
        .next()
        .unwrap()
        .replace("/usr/bin/", &format!("{}/", build_dir().display()));
    // The shipped config listens on 0.0.0.0:7443 and stores in
    // /var/lib/ircap; the environment (which wins over the file) keeps the
    // test on loopback and in its own directory.
    let store = tmp.path().join("store");
    let mut child = Command::new(program)
        .args(words)
        .env("IRCAP_LISTEN", "127.0.0.1:0")
        .env("IRCAP_STORE", format!("file://{}", store.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value = serde_json::from_str(&line)?;
    assert!(
        v["listening"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    Ok(())
}

/// The agent's record of process `pid` in a capture written to `out`.
fn process_record(out: &Path, pid: u32) -> serde_json::Value {
    let id_dir = std::fs::read_dir(out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let gz = std::fs::File::open(id_dir.join("processes.jsonl.gz")).unwrap();
    let text = std::io::read_to_string(flate2::read::GzDecoder::new(gz)).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} not captured"))
}

/// Runs the static agent as root with only `caps` in its bounding set and
/// no new privileges, as the unit does.
fn capture_with_caps(out: &Path, caps: &str) {
    let status = Command::new(tool("/usr/bin/setpriv"))
        .arg(format!("--bounding-set=-all{caps}"))
        .args(["--inh-caps=-all", "--no-new-privs"])
        .arg(ircap_e2e::packaging::static_agent())
        .args(["capture", "--no-logs", "--no-imds", "--output"])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn agent_unit_capabilities_are_enough_to_read_other_users_processes() -> TestResult {
    let unit = shipped("ircap-agent.service");
    let caps: String = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap()
        .split_whitespace()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    // Another user's process.
    let mut other = Command::new(tool("/usr/bin/setpriv"))
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sleep",
            "60",
        ])
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let tmp = tempfile::tempdir()?;
    let with = tmp.path().join("with");
    let without = tmp.path().join("without");
    capture_with_caps(&with, &caps);
    capture_with_caps(&without, "");
    let pid = other.id();
    let _ = other.kill();
    let _ = other.wait();
    // With the unit's two capabilities: environ, exe hash, fds, no errors.
    let r = process_record(&with, pid);
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert!(r["exe_sha256"].is_string(), "{r}");
    assert!(!r["environ"].as_array().unwrap().is_empty(), "{r}");
    // Root without them is refused: the capabilities are what matters.
    let r = process_record(&without, pid);
    assert!(r["exe_sha256"].is_null(), "{r}");
    assert!(r["errors"].to_string().contains("permission denied"), "{r}");
    Ok(())
}
