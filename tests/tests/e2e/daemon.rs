//! Daemon mode against real binaries on loopback: `ircap-agent serve`
//! processes keep their outbound stream to real collectors, analysts
//! target one host, a label or every agent with `ircap-collector request`,
//! two collector replicas share one store, a collector restart is survived,
//! budgets cut a capture to partial, refused options fail cleanly, a hung
//! capture step is reported and the agent restarts, duplicate identities are
//! flagged, and agent certificates cannot make requests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ircap_e2e::{Collector, TestResult, analyst, analyst_command, bin, json_lines, pki};
use ircap_proto::v1::agent_control_client::AgentControlClient;
use ircap_proto::v1::{AgentMessage, Hello, agent_message};
use serde_json::Value;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Delivery poll interval of the test collectors.
const POLL_MS: &str = "200";
/// Longest a test waits for agents to (re)connect.
const CONNECT: Duration = Duration::from_secs(30);

/// A collector with a short poll interval, logging to `log`.
fn collector(pki: &Path, store: &Path, port: u16, log: &Path) -> Collector {
    Collector::builder(pki, store)
        .port(port)
        .env("IRCAP_CONTROL_POLL_MS", POLL_MS)
        .log(log)
        .start()
}

/// An `ircap-agent serve` process; killed when dropped.
/// A process holding `n` one-page anonymous mappings with alternating
/// protections (so the kernel cannot merge them); killed when dropped.
fn many_mappings(n: usize) -> Result<Daemon, Box<dyn std::error::Error>> {
    let script = format!(
        "import mmap, sys, time\n\
         keep = [mmap.mmap(-1, 4096, prot=mmap.PROT_READ | (mmap.PROT_WRITE if i % 2 else 0)) for i in range({n})]\n\
         print('ready', flush=True)\n\
         time.sleep(600)\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?),
        &mut line,
    )?;
    let held = Daemon(child);
    if line.trim() != "ready" {
        return Err(format!("mapping process said {line:?}").into());
    }
    Ok(held)
}

// A process killed when dropped (an agent, or a planted one).
use ircap_e2e::ServeAgent as Daemon;

/// `ircap-agent serve` as `who` with a one-second heartbeat and backoff,
/// certificates from a TOML config file, plus `extra` flags.
fn daemon(tmp: &Path, url: &str, pki: &Path, who: &str, labels: &str, extra: &[&str]) -> Daemon {
    daemon_with_policy(tmp, url, pki, who, labels, "", extra)
}

/// [`daemon`] with a `[policy]` table (TOML lines; empty: the defaults).
fn daemon_with_policy(
    tmp: &Path,
    url: &str,
    pki: &Path,
    who: &str,
    labels: &str,
    policy: &str,
    extra: &[&str],
) -> Daemon {
    daemon_full(tmp, url, pki, who, labels, policy, None, extra)
}

/// [`daemon`] in its own UTS namespace whose hostname is `hostname`, so
/// that it announces that hostname whatever its certificate says (what
/// an attacker root on the host can do).
fn daemon_claiming(tmp: &Path, url: &str, pki: &Path, who: &str, hostname: &str) -> Daemon {
    daemon_full(tmp, url, pki, who, "", "", Some(hostname), &[])
}

#[allow(clippy::too_many_arguments)]
fn daemon_full(
    tmp: &Path,
    url: &str,
    pki: &Path,
    who: &str,
    labels: &str,
    policy: &str,
    hostname: Option<&str>,
    extra: &[&str],
) -> Daemon {
    let config = config_file(tmp, url, pki, who, "", labels, policy);
    let log = daemon_log(tmp, who);
    let agent = bin("ircap-agent");
    let mut cmd = match hostname {
        None => agent,
        Some(h) => {
            // unshare and sh both exec, so the child is the agent itself.
            let mut c = std::process::Command::new("unshare");
            if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
                c.args(["--user", "--map-root-user"]);
            }
            c.args(["--uts", "sh", "-c", "hostname \"$0\" && exec \"$@\"", h])
                .arg(agent.get_program());
            c
        }
    };
    let child = cmd
        .args(["serve", "--no-imds", "--backoff-max", "1s", "--config"])
        .arg(&config)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Daemon(child)
}

/// A config file for `who`: `top` (TOML lines before the tables),
/// `labels` and `policy`.
fn config_file(
    tmp: &Path,
    url: &str,
    pki: &Path,
    who: &str,
    top: &str,
    labels: &str,
    policy: &str,
) -> std::path::PathBuf {
    let config = tmp.join(format!("{who}-{}.toml", uuid_like()));
    std::fs::write(
        &config,
        format!(
            "collector = \"{url}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nheartbeat = \"1s\"\n{top}\n[labels]\n{labels}\n[policy]\n{policy}\n",
            pki.join("ca.pem").display(),
            pki.join(format!("{who}.pem")).display(),
            pki.join(format!("{who}.key")).display(),
        ),
    )
    .unwrap();
    config
}

/// The daemon's stderr, appended to `<tmp>/<who>.log`.
fn daemon_log(tmp: &Path, who: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.join(format!("{who}.log")))
        .unwrap()
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `agents --json` as alice.
fn agents(url: &str, pki: &Path) -> Vec<Value> {
    let out = analyst(url, pki, "alice", "agents", &["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)
}

/// Waits until `agents` lists exactly `want` (identities, with repeats).
fn wait_for_agents(url: &str, pki: &Path, want: &[&str]) -> Vec<Value> {
    let mut want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    let start = Instant::now();
    loop {
        let listed = agents(url, pki);
        let mut names: Vec<String> = listed
            .iter()
            .map(|a| a["agent"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        if names == want {
            return listed;
        }
        assert!(
            start.elapsed() < CONNECT,
            "agents {names:?} never became {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `request ARGS --wait` as alice; (exit success, the created line, the
/// results by agent).
fn request(url: &str, pki: &Path, args: &[&str]) -> (bool, Value, Vec<Value>) {
    let mut all = vec!["--wait", "--timeout", "120s"];
    all.extend_from_slice(args);
    let out = analyst(url, pki, "alice", "request", &all);
    let mut lines = json_lines(&out).into_iter();
    let created = lines
        .next()
        .unwrap_or_else(|| panic!("no output: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), created, lines.collect())
}

/// Captures listed by `list --json`, as (agent, capture id).
fn listed(url: &str, pki: &Path, extra: &[&str]) -> BTreeSet<(String, String)> {
    let out = analyst(url, pki, "alice", "list", &[&["--json"], extra].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&out)
        .iter()
        .map(|c| {
            (
                c["agent"].as_str().unwrap().to_owned(),
                c["capture_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn matched_agents(created: &Value) -> BTreeSet<String> {
    created["matched"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent"].as_str().unwrap().to_owned())
        .collect()
}

/// The complete results, as (agent, capture id); panics on any other.
fn complete(results: &[Value]) -> BTreeSet<(String, String)> {
    results
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "complete", "{r}");
            (
                r["agent"].as_str().unwrap().to_owned(),
                r["capture_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

const QUICK: &[&str] = &["--skip", "logs"];

#[test]
fn requests_reach_exactly_the_targeted_agents() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let c = collector(
        &pki_dir,
        &tmp.path().join("store"),
        0,
        &tmp.path().join("collector.log"),
    );
    let url = c.url();
    let _a1 = daemon(tmp.path(), &url, &pki_dir, "web-1", "env = \"prod\"", &[]);
    let _a2 = daemon(
        tmp.path(),
        &url,
        &pki_dir,
        "web-2",
        "env = \"dev\"",
        &["--label", "role=db"],
    );
    let listed_agents = wait_for_agents(&url, &pki_dir, &["web-1", "web-2"]);
    let web2 = listed_agents
        .iter()
        .find(|a| a["agent"] == "web-2")
        .unwrap();
    assert_eq!(web2["labels"]["env"], "dev", "{web2}");
    assert_eq!(web2["labels"]["role"], "db", "{web2}");
    assert_eq!(web2["duplicate"], false);

    // One host: only web-1 captures.
    let (ok, created, results) = request(&url, &pki_dir, &[&["--host", "web-1"], QUICK].concat());
    assert!(ok, "{created} {results:?}");
    assert_eq!(matched_agents(&created), ["web-1".to_owned()].into());
    let first = complete(&results);
    assert_eq!(first.len(), 1);
    assert!(first.iter().all(|(a, _)| a == "web-1"));
    assert_eq!(
        listed(&url, &pki_dir, &[]),
        first,
        "only web-1's capture is stored"
    );

    // A label: only web-2. `--label` targets agents by their labels;
    // `--capture-label` labels the capture, in its stored manifest.
    let (ok, _, results) = request(
        &url,
        &pki_dir,
        &[
            &["--label", "env=dev", "--capture-label", "baseline=true"],
            QUICK,
        ]
        .concat(),
    );
    assert!(ok);
    let second = complete(&results);
    assert!(
        second.len() == 1 && second.iter().all(|(a, _)| a == "web-2"),
        "{second:?}"
    );
    let options = |(agent, id): &(String, String)| -> Value {
        let m: Value = serde_json::from_slice(
            &std::fs::read(c.capture_dir(agent, id).join("manifest.json")).unwrap(),
        )
        .unwrap();
        m["options"]["labels"].clone()
    };
    assert!(second.iter().all(|c| options(c)["baseline"] == "true"));
    assert!(first.iter().all(|c| options(c) == serde_json::json!({})));

    // Every agent.
    let (ok, created, results) = request(&url, &pki_dir, &[&["--all"], QUICK].concat());
    assert!(ok, "{results:?}");
    let everyone: BTreeSet<String> = ["web-1".to_owned(), "web-2".to_owned()].into();
    assert_eq!(matched_agents(&created), everyone);
    let third = complete(&results);
    assert_eq!(
        third
            .iter()
            .map(|(a, _)| a.clone())
            .collect::<BTreeSet<_>>(),
        everyone
    );

    // Every capture is listed, complete, and verifies on the store.
    let all: BTreeSet<_> = first.iter().chain(&second).chain(&third).cloned().collect();
    assert_eq!(listed(&url, &pki_dir, &[]), all);
    for (agent, id) in &all {
        let out = bin("ircap-collector")
            .arg("verify")
            .arg(c.capture_dir(agent, id))
            .output()?;
        assert!(
            out.status.success(),
            "{agent}/{id}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

/// The `matched` entry of `agent` in a created line.
fn matched_entry<'a>(created: &'a Value, agent: &str) -> &'a Value {
    created["matched"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent"] == agent)
        .unwrap_or_else(|| panic!("{agent} not matched: {created}"))
}

/// Issue 13 item 4: `web-2` holds its own certificate but announces the
/// hostname `db-prod`. `--host db-prod` names the certificate identity and
/// reaches only the real `db-prod`; the claim is matched only when asked
/// for with `--claimed-hostname`, and the output says so.
#[test]
fn host_targets_the_certificate_identity_not_a_claimed_hostname() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let out = bin("ircap-collector")
        .args(["pki", "issue", "--role", "agent", "--ca-dir"])
        .arg(&pki_dir)
        .arg("--out")
        .arg(&pki_dir)
        .arg("db-prod")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = collector(
        &pki_dir,
        &tmp.path().join("store"),
        0,
        &tmp.path().join("collector.log"),
    );
    let url = c.url();
    let _impostor = daemon_claiming(tmp.path(), &url, &pki_dir, "web-2", "db-prod");
    let _db = daemon_claiming(tmp.path(), &url, &pki_dir, "db-prod", "db-prod");
    let listed_agents = wait_for_agents(&url, &pki_dir, &["db-prod", "web-2"]);
    for a in &listed_agents {
        assert_eq!(a["hostname"], "db-prod", "both claim db-prod: {a}");
    }

    // --host is the certificate identity: only db-prod is matched and
    // captures, and the match is by identity.
    let (ok, created, results) = request(&url, &pki_dir, &[&["--host", "db-prod"], QUICK].concat());
    assert!(ok, "{created} {results:?}");
    assert_eq!(matched_agents(&created), ["db-prod".to_owned()].into());
    let db = matched_entry(&created, "db-prod");
    assert_eq!(db["matched_by"], "identity", "{db}");
    assert_eq!(db["by_claim"], false, "{db}");
    let by_identity = complete(&results);
    assert!(
        by_identity.len() == 1 && by_identity.iter().all(|(a, _)| a == "db-prod"),
        "{by_identity:?}"
    );
    assert_eq!(
        listed(&url, &pki_dir, &[]),
        by_identity,
        "web-2 captured nothing"
    );

    // --claimed-hostname matches the claim: both, each said to be by claim.
    let out = analyst(
        &url,
        &pki_dir,
        "alice",
        "request",
        &[
            &[
                "--wait",
                "--timeout",
                "120",
                "--claimed-hostname",
                "db-prod",
            ],
            QUICK,
        ]
        .concat(),
    );
    let lines = json_lines(&out);
    let (created, results) = lines.split_first().unwrap();
    assert!(out.status.success(), "{created} {results:?}");
    let both: BTreeSet<String> = ["db-prod".to_owned(), "web-2".to_owned()].into();
    assert_eq!(matched_agents(created), both);
    for agent in &both {
        let m = matched_entry(created, agent);
        assert_eq!(m["matched_by"], "claimed hostname", "{m}");
        assert_eq!(m["by_claim"], true, "{m}");
        assert_eq!(m["hostname"], "db-prod", "{m}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Matched by what the agent claims"),
        "{stderr}"
    );
    let by_claim = complete(results);
    assert_eq!(
        by_claim
            .iter()
            .map(|(a, _)| a.clone())
            .collect::<BTreeSet<_>>(),
        both
    );

    // `list --host` is the identity the collector recorded at upload too;
    // the claimed hostname is its own filter.
    let all: BTreeSet<_> = by_identity.iter().chain(&by_claim).cloned().collect();
    let of =
        |agent: &str| -> BTreeSet<_> { all.iter().filter(|(a, _)| a == agent).cloned().collect() };
    assert_eq!(
        listed(&url, &pki_dir, &["--host", "db-prod"]),
        of("db-prod")
    );
    assert_eq!(listed(&url, &pki_dir, &["--host", "web-2"]), of("web-2"));
    assert_eq!(
        listed(&url, &pki_dir, &["--claimed-hostname", "db-prod"]),
        all
    );
    Ok(())
}

#[test]
fn over_budget_is_partial_and_refused_options_fail_cleanly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let c = collector(
        &pki_dir,
        &tmp.path().join("store"),
        0,
        &tmp.path().join("collector.log"),
    );
    let url = c.url();
    let _a1 = daemon(tmp.path(), &url, &pki_dir, "web-1", "", &[]);
    wait_for_agents(&url, &pki_dir, &["web-1"]);

    // Over the byte budget: the memory maps table (well over 32 KiB
    // compressed, whatever else runs here: a process of this test holds
    // 6,000 mappings that cannot merge) is cut, what fits is kept, and the
    // capture is committed as partial, naming the artifact and the limit.
    let _mapped = many_mappings(6_000)?;
    let (ok, _, results) = request(
        &url,
        &pki_dir,
        &[
            "--host",
            "web-1",
            "--artifacts",
            "memory_maps,kernel",
            "--max-bytes",
            "32K",
        ],
    );
    assert!(!ok, "a capture over its budget is not a success");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["status"], "partial", "{}", results[0]);
    let error = results[0]["error"].as_str().unwrap();
    assert!(
        error.contains("memory_maps: not stored, dropped")
            && error.contains("byte budget of 32768 bytes exceeded"),
        "{}",
        results[0]
    );
    let partial_id = results[0]["capture_id"].as_str().unwrap();
    assert!(
        listed(&url, &pki_dir, &[]).contains(&("web-1".to_owned(), partial_id.to_owned())),
        "committed"
    );

    // Command-line arguments are no longer a request: there is nothing
    // to pass them through, and nothing is stored.
    let out = analyst(
        &url,
        &pki_dir,
        "alice",
        "request",
        &["--host", "web-1", "--", "--output", "/tmp/x"],
    );
    assert!(!out.status.success());
    // A malformed spec is refused before anything is stored.
    let out = analyst(
        &url,
        &pki_dir,
        "alice",
        "request",
        &["--host", "web-1", "--skip", "system,shadow"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an artifact"));

    // A value the agent cannot use: refused, no capture.
    let (ok, _, results) = request(
        &url,
        &pki_dir,
        &["--host", "web-1", "--logs-since", "yesterday"],
    );
    assert!(!ok);
    assert_eq!(results[0]["status"], "refused", "{}", results[0]);
    assert!(
        results[0]["error"]
            .as_str()
            .unwrap()
            .contains("--logs-since")
    );

    // The agent is still there and works.
    let (ok, _, results) = request(&url, &pki_dir, &[&["--host", "web-1"], QUICK].concat());
    assert!(ok, "{results:?}");
    assert_eq!(complete(&results).len(), 1);
    Ok(())
}

/// `ircap-agent serve` as `who` in a private mount namespace where
/// `hung` is an unanswered FUSE mount (the agent itself holds `/dev/fuse`
/// open and never reads it: any access waits for ever), with
/// `enter_remote_fs = true` and the policy allowing logs under `logs`.
fn daemon_with_a_hung_mount(
    tmp: &Path,
    url: &str,
    pki: &Path,
    who: &str,
    logs: &Path,
    hung: &Path,
) -> Daemon {
    let config = config_file(
        tmp,
        url,
        pki,
        who,
        "enter_remote_fs = true",
        "",
        &format!("log_roots = [\"{}\"]", logs.display()),
    );
    let script = "set -e\nmkdir -p \"$0\"\nexec 3<>/dev/fuse\nmount -i -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 none \"$0\"\nexec \"$@\"";
    // unshare and sh both exec, so the child is the agent itself.
    let child = Command::new("unshare")
        .args(["--mount", "sh", "-c", script])
        .arg(hung)
        .arg(bin("ircap-agent").get_program())
        .args(["serve", "--no-imds", "--backoff-max", "1s", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(daemon_log(tmp, who))
        .spawn()
        .unwrap();
    Daemon(child)
}

#[test]
fn a_daemon_whose_capture_step_hangs_reports_partial_and_restarts() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let c = collector(
        &pki_dir,
        &tmp.path().join("store"),
        0,
        &tmp.path().join("collector.log"),
    );
    let url = c.url();
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    std::fs::write(logs.join("auth.log"), "Dec  1 sshd[1]: Accepted\n")?;
    let mut agent = daemon_with_a_hung_mount(
        tmp.path(),
        &url,
        &pki_dir,
        "web-1",
        &logs,
        &logs.join("hang"),
    );
    wait_for_agents(&url, &pki_dir, &["web-1"]);

    // The log walk enters the hung mount and never returns.
    let t0 = Instant::now();
    let logs_dir = logs.display().to_string();
    let (ok, _, results) = request(
        &url,
        &pki_dir,
        &[
            "--host",
            "web-1",
            "--artifacts",
            "processes,logs",
            "--logs-dir",
            &logs_dir,
            "--deadline",
            "3s",
        ],
    );
    let took = t0.elapsed();
    eprintln!("request with a hung log walk answered in {took:?}");
    assert!(!ok, "a partial capture is not a success: {results:?}");
    assert_eq!(results.len(), 1);
    assert_eq!(results[0]["status"], "partial", "{}", results[0]);
    let error = results[0]["error"].as_str().unwrap();
    assert!(error.contains("logs: abandoned after"), "{error}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    // What was captured is committed: processes, system.
    let captures = listed(&url, &pki_dir, &[]);
    assert_eq!(captures.len(), 1, "{captures:?}");

    // Then the agent exits, for systemd to restart it clean.
    let status = loop {
        if let Some(status) = agent.0.try_wait()? {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the agent did not exit after reporting"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = std::fs::read_to_string(tmp.path().join("web-1.log"))?;
    assert!(log.contains("restarts the agent clean"), "{log}");
    Ok(())
}

/// Every stored byte of a capture directory, gzip members decompressed.
fn stored_bytes(dir: &Path) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let raw = std::fs::read(&p).unwrap();
            out.extend_from_slice(&raw);
            let mut plain = Vec::new();
            if flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut plain)
                .is_ok()
            {
                out.extend_from_slice(&plain);
            }
        }
    }
    out
}

/// The base64 body lines of a PEM file (what would show if any of it
/// leaked into a capture).
fn pem_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
        .map(str::to_owned)
        .collect()
}

/// The thread ids of process `pid` other than `pid` itself.
fn threads_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|t| *t != pid.to_string())
        .collect()
}

#[test]
fn requests_the_host_policy_does_not_allow_are_refused_naming_the_policy_line() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let c = collector(
        &pki_dir,
        &tmp.path().join("store"),
        0,
        &tmp.path().join("collector.log"),
    );
    let url = c.url();
    // The default policy.
    let agent = daemon(tmp.path(), &url, &pki_dir, "web-1", "", &[]);
    wait_for_agents(&url, &pki_dir, &["web-1"]);
    let pki_text = pki_dir.display().to_string();
    let own_thread = format!("pid={}", agent.0.id());
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--logs-dir",
                &pki_text,
                "--logs-since",
                "2000-01-01T00:00:00Z",
            ],
            "[policy] log_roots",
        ),
        (
            &["--memory-regions", &own_thread],
            "[policy] remote_memory_regions",
        ),
        (&["--full-environ"], "[policy] remote_full_environ = false"),
        (
            &["--memory-regions", "all"],
            "[policy] remote_memory_regions",
        ),
        (
            &["--physical-memory"],
            "[policy] remote_physical_memory = false",
        ),
    ];
    for (asked, line) in cases {
        let (ok, _, results) = request(&url, &pki_dir, &[&["--host", "web-1"], asked].concat());
        assert!(!ok, "{asked:?}");
        assert_eq!(results.len(), 1, "{asked:?}");
        let r = &results[0];
        assert_eq!(r["status"], "refused", "{asked:?}: {r}");
        let error = r["error"].as_str().unwrap();
        assert!(error.contains(line), "{asked:?}: {error}");
        assert!(r["capture_id"].is_null(), "no capture started: {r}");
    }
    assert!(listed(&url, &pki_dir, &["--incomplete"]).is_empty());
    // Refused, not broken: the next allowed request runs.
    let (ok, _, results) = request(&url, &pki_dir, &[&["--host", "web-1"], QUICK].concat());
    assert!(ok, "{results:?}");
    Ok(())
}

#[test]
fn a_permissive_policy_still_never_captures_the_agents_key_or_memory() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let c = collector(
        &pki_dir,
        &tmp.path().join("store"),
        0,
        &tmp.path().join("collector.log"),
    );
    let url = c.url();
    // A host owner who allows everything, the PKI directory included.
    let policy = format!(
        "log_roots = [\"{}\"]\nremote_memory_regions = [\"pid\", \"all\", \"suspicious\"]\nremote_full_environ = true\nmax_memory_budget = \"64M\"\n",
        pki_dir.display()
    );
    let agent = daemon_with_policy(tmp.path(), &url, &pki_dir, "web-1", "", &policy, &[]);
    wait_for_agents(&url, &pki_dir, &["web-1"]);
    let mut own: Vec<String> = threads_of(agent.0.id());
    own.push(agent.0.id().to_string());
    let own_tasks = format!("pid={}", own.join(","));
    let pki_text = pki_dir.display().to_string();
    let cases: [&[&str]; 3] = [
        &[
            "--logs-dir",
            &pki_text,
            "--logs-since",
            "2000-01-01T00:00:00Z",
            "--artifacts",
            "logs",
        ],
        &[
            "--memory-regions",
            &own_tasks,
            "--artifacts",
            "memory_regions,processes",
            "--full-environ",
        ],
        &[
            "--memory-regions",
            "all",
            "--memory-budget",
            "32M",
            "--artifacts",
            "memory_regions",
        ],
    ];
    let mut captured = Vec::new();
    for asked in cases {
        let (ok, _, results) = request(&url, &pki_dir, &[&["--host", "web-1"], asked].concat());
        assert!(ok, "{asked:?}: {results:?}");
        let id = results[0]["capture_id"].as_str().unwrap();
        let dir = c.capture_dir("web-1", id);
        ircap_e2e::assert_verifies(&dir);
        captured.push(String::from_utf8_lossy(&stored_bytes(&dir)).into_owned());
    }
    // Read only now: this test process may itself be dumped by `all`.
    let secret = pem_lines(&pki_dir.join("web-1.key"));
    assert!(!secret.is_empty());
    for (asked, bytes) in cases.iter().zip(&captured) {
        for line in &secret {
            assert!(
                !bytes.contains(line.as_str()),
                "{asked:?}: the agent's key is in the capture"
            );
        }
    }
    // The logs index says why the key was left out, while the CA's key
    // (not the agent's, under a root the host allowed) was read: the
    // directory really was walked.
    let logs = &captured[0];
    assert!(
        logs.contains("the agent's own key"),
        "key not recorded as left out"
    );
    let ca_key = pem_lines(&pki_dir.join("ca.key"));
    assert!(
        logs.contains(&ca_key[0]),
        "the allowed directory was not read"
    );
    // The agent's own tasks were named and none was dumped.
    let memory = &captured[1];
    assert!(memory.contains("is the agent itself, not dumped"));
    Ok(())
}

#[test]
fn a_request_made_on_another_replica_reaches_the_agent_once() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    let r1 = collector(&pki_dir, &store, 0, &tmp.path().join("r1.log"));
    let r2 = collector(&pki_dir, &store, 0, &tmp.path().join("r2.log"));
    let _a1 = daemon(tmp.path(), &r1.url(), &pki_dir, "web-1", "", &[]);
    // Replica 2 sees the agent connected to replica 1.
    let seen = wait_for_agents(&r2.url(), &pki_dir, &["web-1"]);
    let on_r1 = wait_for_agents(&r1.url(), &pki_dir, &["web-1"]);
    assert_eq!(seen[0]["replica_id"], on_r1[0]["replica_id"]);

    let (ok, created, results) =
        request(&r2.url(), &pki_dir, &[&["--host", "web-1"], QUICK].concat());
    assert!(ok, "{created} {results:?}");
    let done = complete(&results);
    assert_eq!(done.len(), 1);
    // Stored exactly once, visible from both replicas.
    assert_eq!(listed(&r1.url(), &pki_dir, &[]), done);
    assert_eq!(listed(&r2.url(), &pki_dir, &["--incomplete"]), done);
    // Give both replicas several polls: nobody delivers it again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(listed(&r1.url(), &pki_dir, &["--incomplete"]), done);
    let log = std::fs::read_to_string(tmp.path().join("web-1.log"))?;
    assert_eq!(log.matches("Requested capture started").count(), 1, "{log}");
    Ok(())
}

#[test]
fn agents_reconnect_after_a_collector_restart() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    let log = tmp.path().join("collector.log");
    let first = collector(&pki_dir, &store, 0, &log);
    let port = first.addr.port();
    let url = first.url();
    let _a1 = daemon(tmp.path(), &url, &pki_dir, "web-1", "", &[]);
    let _a2 = daemon(tmp.path(), &url, &pki_dir, "web-2", "", &[]);
    wait_for_agents(&url, &pki_dir, &["web-1", "web-2"]);
    drop(first); // SIGKILL: no goodbye to the agents.
    std::thread::sleep(Duration::from_millis(500));
    let _second = collector(&pki_dir, &store, port, &log);
    wait_for_agents(&url, &pki_dir, &["web-1", "web-2"]);
    let (ok, _, results) = request(&url, &pki_dir, &[&["--all"], QUICK].concat());
    assert!(ok, "{results:?}");
    assert_eq!(complete(&results).len(), 2);
    Ok(())
}

#[test]
fn cloned_identities_are_both_listed_and_flagged() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let log = tmp.path().join("collector.log");
    let c = collector(&pki_dir, &tmp.path().join("store"), 0, &log);
    let url = c.url();
    let _a = daemon(tmp.path(), &url, &pki_dir, "web-1", "", &[]);
    let _clone = daemon(tmp.path(), &url, &pki_dir, "web-1", "", &[]);
    let listed = wait_for_agents(&url, &pki_dir, &["web-1", "web-1"]);
    assert!(listed.iter().all(|a| a["duplicate"] == true), "{listed:?}");
    let sessions: BTreeSet<&str> = listed
        .iter()
        .map(|a| a["session_id"].as_str().unwrap())
        .collect();
    assert_eq!(sessions.len(), 2, "two agent processes, not merged");
    let text = std::fs::read_to_string(&log)?;
    assert!(text.contains("Duplicate agent identity"), "{text}");
    Ok(())
}

#[tokio::test]
async fn only_analysts_request_and_only_agents_attach() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let c = collector(
        &pki_dir,
        &tmp.path().join("store"),
        0,
        &tmp.path().join("collector.log"),
    );
    let url = c.url();
    for cmd in [&["request", "--all"][..], &["agents"]] {
        let out = analyst(&url, &pki_dir, "web-1", cmd[0], &cmd[1..]);
        assert!(!out.status.success(), "{cmd:?} with an agent certificate");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("PermissionDenied"), "{cmd:?}: {err}");
    }
    assert!(!c.store.join("control/requests").exists(), "nothing stored");

    // An analyst certificate on the agent stream.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(
            pki_dir.join("ca.pem"),
        )?))
        .identity(Identity::from_pem(
            std::fs::read(pki_dir.join("alice.pem"))?,
            std::fs::read(pki_dir.join("alice.key"))?,
        ));
    let channel = Endpoint::from_shared(url)?.tls_config(tls)?.connect_lazy();
    let hello = AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            session_id: "0190-test".into(),
            hostname: "h".into(),
            ..Hello::default()
        })),
    };
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        AgentControlClient::new(channel).attach(tokio_stream::iter([hello])),
    )
    .await?
    .expect_err("an analyst may not attach as an agent");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    Ok(())
}

#[test]
fn bad_daemon_settings_fail_at_start_naming_the_problem() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let missing = tmp.path().join("missing.pem");
    let unknown_key = tmp.path().join("unknown.toml");
    std::fs::write(&unknown_key, "colector = \"https://x:1\"\n")?;
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec![
                "--config".into(),
                tmp.path().join("nope.toml").display().to_string(),
            ],
            "nope.toml".into(),
        ),
        (
            vec!["--config".into(), unknown_key.display().to_string()],
            "colector".into(),
        ),
        (
            vec![
                "--config".into(),
                unknown_key
                    .display()
                    .to_string()
                    .replace("unknown", "absent"),
                "--collector".into(),
                "https://127.0.0.1:1".into(),
            ],
            "absent.toml".into(),
        ),
        (
            vec![
                "--collector".into(),
                "https://127.0.0.1:1".into(),
                "--ca".into(),
                pki_dir.join("ca.pem").display().to_string(),
                "--cert".into(),
                missing.display().to_string(),
                "--key".into(),
                pki_dir.join("web-1.key").display().to_string(),
            ],
            "missing.pem".into(),
        ),
    ];
    for (args, named) in cases {
        let out = bin("ircap-agent")
            .args(["serve", "--no-imds"])
            .args(&args)
            .env_remove("IRCAP_COLLECTOR")
            .output()?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&named), "{args:?}: {err}");
    }
    Ok(())
}

#[test]
fn waiting_for_a_host_that_is_not_connected_waits_and_says_until_when() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let log = tmp.path().join("collector.log");
    let c = collector(&pki_dir, &tmp.path().join("store"), 0, &log);
    let url = c.url();

    // Nobody connected: --wait waits out --timeout, then exits non-zero
    // saying the request is still pending and until when.
    let started = Instant::now();
    let out = analyst(
        &url,
        &pki_dir,
        "alice",
        "request",
        &[
            &[
                "--host",
                "web-1",
                "--wait",
                "--timeout",
                "3s",
                "--ttl",
                "1h",
            ],
            QUICK,
        ]
        .concat(),
    );
    let waited = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        waited >= Duration::from_secs(3),
        "returned after {waited:?}"
    );
    let lines = json_lines(&out);
    let pending = lines
        .iter()
        .find(|l| l["status"] == "pending")
        .unwrap_or_else(|| panic!("no pending line: {lines:?}"));
    let until = pending["pending_until"].as_str().unwrap_or_default();
    assert!(until.ends_with('Z') && until.len() >= 20, "{pending}");
    assert!(err.contains("stays pending until"), "{err}");

    // The host connects while an analyst waits: the wait ends with its
    // result, exit 0.
    let waiting = analyst_child(
        &url,
        &pki_dir,
        &[&["--host", "web-1", "--wait", "--timeout", "120s"], QUICK].concat(),
    );
    std::thread::sleep(Duration::from_secs(1));
    let _agent = daemon(tmp.path(), &url, &pki_dir, "web-1", "", &[]);
    let out = waiting.wait_with_output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = json_lines(&out);
    assert!(
        results
            .iter()
            .any(|r| r["agent"] == "web-1" && r["status"] == "complete"),
        "{results:?}"
    );
    Ok(())
}

/// `request ARGS` as alice, running in the background (stdout piped).
fn analyst_child(url: &str, pki: &Path, args: &[&str]) -> Child {
    analyst_command(url, pki, "alice", "request", args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
