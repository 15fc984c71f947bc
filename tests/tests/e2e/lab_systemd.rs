//! The golden-AMI path on a real systemd host: a Debian 12 guest
//! (`ircap_e2e::lab_debian`, systemd as PID 1 on Debian's kernel under
//! QEMU) gets the freshly built agent .deb by `dpkg -i` and the collector
//! installed as the README says, both started by systemd from the shipped
//! units; real sshd logins, failed passwords, journal messages, a failing
//! unit and a planted listener are then captured on an analyst's request
//! under the unit's sandbox. The scenario (`tests/lab/systemd-scenario.sh`)
//! runs in the guest and records; every check is made here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use ircap_e2e::build_dir;
use ircap_e2e::lab::Booted;
use ircap_e2e::lab_debian::DebianGuest;
use ircap_e2e::packaging::agent_deb;
use ircap_e2e::packaging::{repo_root, sha256_hex, static_agent};
use ircap_e2e::ssm::{load_yaml, shell_step, ssm_dir};
use serde_json::Value;

/// The guest's inputs: scenario, .deb, collector binary, unit, config, and
/// the SSM document's script with this lab's parameters.
fn guest() -> DebianGuest {
    let root = repo_root();
    let scenario = std::fs::read_to_string(root.join("tests/lab/systemd-scenario.sh")).unwrap();
    let g = DebianGuest::new(&scenario);
    let debs = tempfile::tempdir().unwrap();
    std::fs::copy(agent_deb(debs.path()), g.input("ircap-agent.deb")).unwrap();
    std::fs::copy(
        build_dir().join("ircap-collector"),
        g.input("ircap-collector"),
    )
    .unwrap();
    std::fs::copy(
        root.join("packaging/config/collector.toml"),
        g.input("collector.toml"),
    )
    .unwrap();
    std::fs::copy(
        root.join("packaging/systemd/ircap-collector.service"),
        g.input("ircap-collector.service"),
    )
    .unwrap();
    // The document as a site renders it: the collector, the agent's hash
    // and path are constants in it, not parameters a caller chooses.
    let sha = sha256_hex(&static_agent());
    let rendered = std::process::Command::new("sh")
        .arg(ssm_dir().join("render-document.sh"))
        .args([
            "--collector",
            "https://127.0.0.1:7443",
            "--agent-sha256",
            &sha,
        ])
        .args(["--agent-path", "/usr/bin/ircap-agent"])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "render-document.sh: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let site = g.input("ircap-capture.site.yaml");
    std::fs::write(&site, &rendered.stdout).unwrap();
    let doc = load_yaml(&site);
    let step = shell_step(&doc, &[("skipArtifacts", "logs")]).unwrap();
    std::fs::create_dir_all(g.input("ssm")).unwrap();
    std::fs::write(g.input("ssm/_script.sh"), step.lines.join("\n") + "\n").unwrap();
    std::fs::write(g.input("ssm/step"), &step.name).unwrap();
    g
}

/// What the scenario recorded.
struct Results {
    booted: Booted,
    steps: BTreeMap<String, i64>,
    values: BTreeMap<String, String>,
}

impl Results {
    fn step(&self, name: &str) -> i64 {
        *self.steps.get(name).unwrap_or_else(|| {
            panic!(
                "step {name} did not run; steps {:?}\nscenario log:\n{}",
                self.steps,
                self.booted.text("scenario.log")
            )
        })
    }

    fn ok(&self, name: &str) {
        assert_eq!(
            self.step(name),
            0,
            "step {name} failed; its log:\n{}\nscenario log:\n{}",
            self.booted.text(&format!("{name}.log")),
            self.booted.text("scenario.log")
        );
    }

    fn value(&self, key: &str) -> &str {
        self.values
            .get(key)
            .unwrap_or_else(|| panic!("no value {key}: {:?}", self.values))
    }

    /// The one capture directory the scenario kept in `/lab/out/<sub>`.
    fn capture(&self, sub: &str) -> PathBuf {
        let dirs = self.captures(sub);
        assert_eq!(dirs.len(), 1, "{sub}: {dirs:?}");
        dirs.into_iter().next().unwrap()
    }

    fn captures(&self, sub: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.booted.path(sub))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn parse_results(booted: Booted) -> Results {
    let text = booted.text("results.json");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "results.json ({e}): {text}\nscenario log:\n{}\nconsole:\n{}",
            booted.text("scenario.log"),
            booted.console
        )
    });
    let steps = v["steps"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
        .collect();
    let values = v["values"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    Results {
        booted,
        steps,
        values,
    }
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The content of a stored file (gunzipped when it is gzip).
fn content(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw
    }
}

/// The rows of table `<name>.jsonl.gz` of a capture.
fn table(dir: &Path, name: &str) -> Vec<Value> {
    String::from_utf8(content(&dir.join(format!("{name}.jsonl.gz"))))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The decoded contents of every artifact of `kind`.
fn artifacts_of(dir: &Path, kind: &str) -> Vec<(String, Vec<u8>)> {
    manifest(dir)["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == kind)
        .map(|a| {
            let name = a["name"].as_str().unwrap().to_owned();
            let bytes = content(&dir.join(&name));
            (name, bytes)
        })
        .collect()
}

/// A capture the collector holds artifacts of but never committed: no
/// manifest, and `list --incomplete` says `incomplete`.
fn not_complete(dir: &Path, listed: &str) {
    let id = dir.file_name().unwrap().to_str().unwrap();
    assert!(
        !dir.join("manifest.json").exists(),
        "{id} has a manifest: {}",
        manifest(dir)
    );
    let row = listed
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["capture_id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {listed}"));
    assert_eq!(row["status"], "incomplete", "{row}");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A `journalctl -o json` value as byte strings: a string, an array of
/// byte numbers (not printable UTF-8), or an array of those for a field
/// repeated in the entry; `null` (over the size journalctl shows) as none.
fn journalctl_values(v: &Value) -> Vec<Vec<u8>> {
    match v {
        Value::String(s) => vec![s.as_bytes().to_vec()],
        Value::Array(a) if a.iter().all(Value::is_number) => vec![
            a.iter()
                .map(|n| u8::try_from(n.as_u64().unwrap()).unwrap())
                .collect(),
        ],
        Value::Array(a) => a.iter().flat_map(journalctl_values).collect(),
        Value::Null => Vec::new(),
        other => panic!("unexpected journalctl value {other}"),
    }
}

/// A `journal` table row's field as byte strings (`<FIELD>_b64` when the
/// text is lossy).
fn row_values(row: &serde_json::Map<String, Value>, name: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let decode = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    match (&row[name], row.get(&format!("{name}_b64"))) {
        (Value::String(s), None) => vec![s.as_bytes().to_vec()],
        (Value::String(_), Some(b)) => vec![decode(b)],
        (Value::Array(a), None) => a
            .iter()
            .map(|s| s.as_str().unwrap().as_bytes().to_vec())
            .collect(),
        (Value::Array(_), Some(Value::Array(b))) => b.iter().map(decode).collect(),
        (v, b) => panic!("unexpected journal row field {name}: {v} {b:?}"),
    }
}

type Fields = BTreeMap<String, Vec<Vec<u8>>>;

/// (seqnum, realtime, monotonic, boot id) of an entry, and its fields.
type Keyed = BTreeMap<(u64, String, String, String), Fields>;

fn key_of(v: &serde_json::Map<String, Value>, seqnum: u64) -> (u64, String, String, String) {
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    (
        seqnum,
        s("__REALTIME_TIMESTAMP"),
        s("__MONOTONIC_TIMESTAMP"),
        s("_BOOT_ID"),
    )
}

fn table_entries(rows: &[Value]) -> Keyed {
    rows.iter()
        .map(|r| {
            let r = r.as_object().unwrap();
            let fields = r
                .keys()
                .filter(|k| !k.ends_with("_b64") && *k != "__SEQNUM")
                .map(|k| (k.clone(), row_values(r, k)))
                .collect();
            (key_of(r, r["__SEQNUM"].as_u64().unwrap()), fields)
        })
        .collect()
}

/// `journalctl -o json --all` output, keyed like [`table_entries`] (the
/// seqnum read from the `i=` part of `__CURSOR`).
fn journalctl_entries(text: &str) -> Keyed {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let v = v.as_object().unwrap().clone();
            let cursor = v["__CURSOR"].as_str().unwrap();
            let seqnum = cursor
                .split(';')
                .find_map(|p| p.strip_prefix("i="))
                .map(|h| u64::from_str_radix(h, 16).unwrap())
                .unwrap();
            let fields = v
                .iter()
                .filter(|(k, _)| !k.starts_with("__CURSOR") && !k.starts_with("__SEQNUM"))
                .map(|(k, x)| (k.clone(), journalctl_values(x)))
                .collect();
            (key_of(&v, seqnum), fields)
        })
        .collect()
}

/// The `journal` table against `journalctl -o json` of the same files,
/// run in the guest just after the capture: every row is an entry
/// journalctl shows, with the same fields and bytes, and every entry older
/// than the newest row (less 2 s for entries journald was still writing
/// while the table was read) is a row.
fn check_journal_table(rows: &[Value], journalctl: &str) {
    let ours = table_entries(rows);
    let theirs = journalctl_entries(journalctl);
    assert!(!ours.is_empty(), "empty journal table");
    for (key, fields) in &ours {
        let Some(j) = theirs.get(key) else {
            panic!("journal row {key:?} is not an entry journalctl shows");
        };
        assert_eq!(fields, j, "journal row {key:?} differs from journalctl's");
    }
    let newest: u64 = ours
        .keys()
        .map(|k| k.1.parse::<u64>().unwrap())
        .max()
        .unwrap();
    let missing: Vec<_> = theirs
        .iter()
        .filter(|(k, _)| k.1.parse::<u64>().unwrap() + 2_000_000 < newest)
        .filter(|(k, _)| !ours.contains_key(*k))
        .map(|(k, f)| (k.clone(), f.get("MESSAGE").cloned()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} journal entries journalctl shows are not in the table: {missing:?}",
        missing.len()
    );
    eprintln!(
        "lab: journal table {} rows, all equal to journalctl -o json",
        ours.len()
    );
}

#[test]
fn lab_systemd_host_units_deb_logins_journal_and_faults() {
    let g = guest();
    let booted = g.boot();
    eprintln!(
        "lab: guest ran {:.0?} (initramfs at {:?} s)",
        booted.elapsed, booted.boot_secs
    );
    let r = parse_results(booted);
    eprintln!("lab: steps {:?}\nlab: values {:?}", r.steps, r.values);

    // Booted by systemd; the package and the README's install steps work.
    assert!(
        r.value("systemd").starts_with("systemd_252"),
        "{:?}",
        r.values
    );
    assert!(r.value("debian").starts_with("12."), "{:?}", r.values);
    for s in [
        "boot",
        "deb_install",
        "collector_install",
        "agent_start",
        "agent_connected",
        "activity",
    ] {
        r.ok(s);
    }
    for (unit, max) in [("ircap-agent", 3.0), ("ircap-collector", 1.5)] {
        let score: f64 = r
            .value(&format!("security_{unit}"))
            .parse()
            .unwrap_or_else(|e| {
                panic!(
                    "{unit}: {e}\n{}",
                    r.booted.text(&format!("security-{unit}.txt"))
                )
            });
        assert!(score <= max, "{unit}.service exposure {score} > {max}");
    }

    // The analyst's request: complete under the unit's sandbox, verified.
    r.ok("request");
    r.ok("verify_request");
    let cap = r.capture("cap-request");
    let m = manifest(&cap);
    assert_eq!(m["status"], "complete", "errors: {}", m["errors"]);
    // Nothing the agent reads was blocked by the unit's sandbox.
    for a in m["artifacts"].as_array().unwrap() {
        for e in a["errors"].as_array().unwrap() {
            let e = e.as_str().unwrap();
            assert!(
                ![
                    "EPERM",
                    "EACCES",
                    "EAFNOSUPPORT",
                    "ermission denied",
                    "not permitted"
                ]
                .iter()
                .any(|d| e.contains(d)),
                "{}: the sandbox denied: {e}",
                a["name"]
            );
        }
    }
    let interfaces = table(&cap, "network_interfaces");
    assert!(
        interfaces.iter().any(|i| i["name"] == "lo"),
        "no loopback interface: {interfaces:?}"
    );
    let token = r.booted.text("token").trim().to_owned();
    assert!(token.starts_with("IRCAP-TOKEN-"), "{token}");

    // The key login over loopback, with its source address (utmp, wtmp).
    let logins = table(&cap, "logins");
    for source in ["utmp", "wtmp"] {
        assert!(
            logins.iter().any(|l| l["source"] == source
                && l["user"] == "webadmin"
                && l["type"] == "USER_PROCESS"
                && l["host"] == "127.0.0.1"),
            "no webadmin session from 127.0.0.1 in {source}: {logins:#?}"
        );
    }
    // The failed passwords (btmp), the unknown user's too.
    for user in ["webadmin", "mallory"] {
        assert!(
            logins
                .iter()
                .any(|l| l["source"] == "btmp" && l["user"] == user && l["host"] == "127.0.0.1"),
            "no failed login of {user} in btmp: {logins:#?}"
        );
    }
    let lastlog = table(&cap, "lastlog");
    assert!(
        lastlog
            .iter()
            .any(|l| l["user"] == "webadmin" && l["host"] == "127.0.0.1"),
        "webadmin not in lastlog: {lastlog:#?}"
    );

    // The token and the failing unit in the raw journal files.
    let journals: Vec<(String, Vec<u8>)> = artifacts_of(&cap, "logs")
        .into_iter()
        .filter(|(n, _)| n.contains("journal"))
        .collect();
    assert!(!journals.is_empty(), "no journal file in the capture");
    assert!(
        journals.iter().any(|(_, b)| contains(b, token.as_bytes())),
        "token not in any journal file: {:?}",
        journals.iter().map(|j| &j.0).collect::<Vec<_>>()
    );
    assert!(
        journals
            .iter()
            .any(|(_, b)| contains(b, b"ircap-lab-fails.service")),
        "the failing unit is not in the journal"
    );

    // The same journal as a table, equal to journalctl's view of it: the
    // token, the failing unit and a binary field byte for byte.
    let rows = table(&cap, "journal");
    check_journal_table(&rows, &r.booted.text("journalctl.json"));
    let field = |r: &Value, k: &str| r[k].as_str().map(str::to_owned);
    assert!(
        rows.iter()
            .any(|j| field(j, "MESSAGE").as_deref() == Some(token.as_str())
                && field(j, "SYSLOG_IDENTIFIER").as_deref() == Some("ircap-lab")),
        "token not in the journal table"
    );
    assert!(
        rows.iter().any(
            |j| field(j, "UNIT").as_deref() == Some("ircap-lab-fails.service")
                && field(j, "MESSAGE").is_some_and(|m| m.contains("Failed with result"))
        ),
        "the failing unit's failure is not in the journal table"
    );
    let binary = format!("IRCAP-BINARY-{token}");
    let bin = rows
        .iter()
        .find(|j| field(j, "MESSAGE").as_deref() == Some(binary.as_str()))
        .expect("the binary entry is not in the journal table");
    assert_eq!(bin["IRCAP_BIN_b64"], "//4AYQ==", "{bin}");

    // The planted process of another user, read in full, and its listener.
    let planted: i64 = r.booted.text("planted.pid").trim().parse().unwrap();
    let procs = table(&cap, "processes");
    let p = procs
        .iter()
        .find(|p| p["pid"] == planted)
        .unwrap_or_else(|| panic!("planted pid {planted} not in processes"));
    assert_eq!(p["exe"], "/tmp/.lab/kworker-lab", "{p:#}");
    assert_eq!(p["user"], "webadmin", "{p:#}");
    assert!(
        p["environ"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "IRCAP_PLANT"),
        "the planted process's environment was not read: {p:#}"
    );
    assert!(
        p["fd_count"].as_u64().unwrap() > 0 && p["errors"] == Value::Array(vec![]),
        "the planted process's fds were not read: {p:#}"
    );
    let conns = table(&cap, "connections");
    assert!(
        conns.iter().any(|c| c["local_port"] == 31337
            && c["state"] == "LISTEN"
            && c["pids"]
                .as_array()
                .unwrap()
                .contains(&Value::from(planted))),
        "no listener on 31337 held by {planted}: {conns:#?}"
    );

    // A full capture stays under the unit's MemoryMax.
    r.ok("request_full");
    r.ok("verify_full");
    let peak: u64 = r.value("agent_memory_peak").parse().unwrap();
    let max: u64 = r.value("agent_memory_max").parse().unwrap();
    eprintln!("lab: agent memory.peak {peak} of memory.max {max}");
    assert!(peak < max, "memory.peak {peak} >= MemoryMax {max}");
    assert!(
        r.value("agent_memory_events").contains("oom_kill=0"),
        "{}",
        r.value("agent_memory_events")
    );

    // The SSM document's script, run as aws:runShellScript runs it.
    assert_eq!(
        r.step("ssm"),
        0,
        "stdout {}\nstderr {}",
        r.booted.text("ssm.stdout"),
        r.booted.text("ssm.stderr")
    );
    let ssm = manifest(&r.capture("cap-ssm"));
    assert_eq!(ssm["ssm_command_id"], "lab-command-1", "{ssm}");
    assert_eq!(ssm["status"], "complete", "{}", ssm["errors"]);

    // SIGKILL mid-capture: systemd restarts the agent, nothing is
    // committed for the killed capture, the next request succeeds.
    r.ok("kill_wait");
    r.ok("kill");
    assert_ne!(
        r.step("request_killed"),
        0,
        "the killed capture reported success"
    );
    let killed = r.booted.text("request-killed.jsonl");
    let last: Value = serde_json::from_str(killed.lines().last().unwrap()).unwrap();
    assert!(
        !["complete", "partial"].contains(&last["status"].as_str().unwrap_or("")),
        "{killed}"
    );
    r.ok("restarted");
    r.ok("reconnected");
    let listed = r.booted.text("list-final.jsonl");
    let kept_killed = r.captures("cap-killed");
    assert!(
        !kept_killed.is_empty(),
        "the killed upload left no capture to check"
    );
    for c in kept_killed {
        not_complete(&c, &listed);
    }
    r.ok("request_after_kill");
    r.ok("verify_after_kill");
    let after = r.capture("cap-after-kill");
    let m = manifest(&after);
    assert_eq!(m["status"], "complete", "{}", m["errors"]);
    // That request allowed 16 KiB of logs since just after the activity:
    // the journal table holds nothing older (not the token) and stops at
    // the budget, saying so.
    let since = r.value("after_activity");
    let since_usec = u64::try_from(
        time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp(),
    )
    .unwrap()
        * 1_000_000;
    let rows = table(&after, "journal");
    assert!(!rows.is_empty());
    for row in &rows {
        let t: u64 = row["__REALTIME_TIMESTAMP"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            t >= since_usec,
            "row older than --logs-since {since}: {row}"
        );
        assert_ne!(
            row["MESSAGE"],
            token.as_str(),
            "the token predates --logs-since"
        );
    }
    let j = m["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "journal")
        .unwrap();
    assert!(j["size_uncompressed"].as_u64().unwrap() <= 16384, "{j}");
    assert!(
        j["errors"].as_array().unwrap().iter().any(|e| e
            .as_str()
            .unwrap()
            .starts_with("cut at --logs-max-bytes (16384 bytes)")),
        "{j}"
    );

    // The collector stopped during an upload: a clean, bounded stop, and
    // no capture falsely complete.
    r.ok("stop_wait");
    r.ok("collector_stop");
    let stopped = r.booted.text("collector-stopped.show");
    assert!(stopped.contains("Result=success"), "{stopped}");
    // Stopped mid-upload within the unit's TimeoutStopSec (30 s), by its
    // own shutdown rather than systemd's SIGKILL.
    let (t0, t1) = r
        .value("collector_stop_secs")
        .split_once('-')
        .expect("collector_stop_secs is START-END");
    let stop_secs = t1.parse::<f64>().unwrap() - t0.parse::<f64>().unwrap();
    eprintln!("collector stop during an upload: {stop_secs:.1} s");
    assert!(stop_secs < 30.0, "collector took {stop_secs:.1} s to stop");
    assert_ne!(r.step("request_stopped"), 0);
    let kept_stopped = r.captures("cap-stopped");
    assert!(
        !kept_stopped.is_empty(),
        "the stopped upload left no capture to check"
    );
    for c in kept_stopped {
        not_complete(&c, &listed);
    }
    r.ok("collector_restart");
    r.ok("reconnected_after_stop");
}
