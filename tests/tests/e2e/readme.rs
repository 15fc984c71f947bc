//! The README run as written: every command of its `sh` blocks, section
//! by section, in one working directory with the built binaries first on
//! `PATH`, each in a mount namespace whose `/etc/hosts` makes the README's
//! host names resolve to loopback (what the README tells a reader to do).
//! What is not run is named in [`SKIPPED`] with the reason; what is changed
//! is in [`substitutions`], each with its reason; sections that need what a
//! later one sets up run after it ([`MOVED`]). A new command is run by
//! default, and any command that exits non-zero fails the test.
//!
//! Needs root (the mount namespace) and the SeaweedFS venv (the S3 recipe).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::BufRead as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ircap_e2e::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use ircap_e2e::{TestResult, build_dir, docs};

/// README commands not run here, by how they begin, and why.
const SKIPPED: &[(&str, &str)] = &[
    (
        "cargo run --release -p ircap-agent",
        "a release build of the agent takes minutes; \"Capture locally\" runs the same capture with the built agent",
    ),
    ("bash tests/run.sh", "the whole suite, this test included"),
    (
        "ircap-agent capture -o ./captures --no-logs --physical-memory",
        "copies all of this machine's RAM from /proc/kcore; lab_memory runs it in a QEMU guest",
    ),
    (
        "ircap-collector symbols",
        "needs the physical-memory capture above; lab_memory runs it on one",
    ),
    (
        "vol -f ./captures/",
        "Volatility 3 on the physical-memory capture and symbols above; lab_memory runs it on a guest's",
    ),
    (
        "bash packaging/build-static.sh",
        "a release musl build (minutes); tests/src/packaging.rs runs it for static_agent and deb",
    ),
    (
        "bash packaging/deb/build-agent-deb.sh",
        "needs the static agent; tests/src/packaging.rs runs it for deb",
    ),
];

/// Exit codes other than 0 a README command may end with here, by how it
/// begins, and why.
const ALSO_ACCEPTED: &[(&str, i32, &str)] = &[(
    "ircap-agent capture",
    4,
    "stored but partial, each cut named (the README's exit 4): on a machine \
     busy with other tests a budget may cut a listing",
)];

/// Sections run after another one instead of where the README has them:
/// (section, run after, why).
const MOVED: &[(&str, &str, &str)] = &[
    (
        "## Agents as a service, captures on request",
        "## Triage a capture",
        "its analyst commands use the environment that section's `export` sets",
    ),
    (
        "## Hunt with YARA",
        "## Agents as a service, captures on request",
        "`request --all` needs an agent serving, and `list` the analyst environment",
    ),
];

/// State the README presumes before a section, made by running the
/// README's upload command (from "Run a collector") once more:
/// (section, why).
const UPLOAD_AGAIN_BEFORE: &[(&str, &str)] = &[(
    "## Triage a capture",
    "`diff --baseline` needs an earlier capture of the same host: the one pulled is the later one",
)];

/// The README's host names and what they resolve to in the namespace's
/// `/etc/hosts`.
const HOSTS: &[(&str, &str)] = &[("collector.internal", "127.0.0.1")];

/// Commands that keep running: started in the background, waited for.
const LONG_RUNNING: &[&str] = &["ircap-collector serve", "ircap-agent serve"];

/// The S3 section, whose collectors listen on a port of their own.
const S3_SECTION: &str = "## Store captures in S3";

/// The bucket the README's S3 recipe names.
const BUCKET: &str = "evidence-bucket";

/// Environment variables the shell sets by itself, not the README.
const SHELL_VARS: &[&str] = &["PWD", "OLDPWD", "SHLVL", "_"];

/// A process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Exit 0, or a code [`ALSO_ACCEPTED`] allows for `command`.
fn ended_well(command: &str, out: &Output) -> bool {
    out.status.success()
        || ALSO_ACCEPTED
            .iter()
            .any(|(start, code, _)| command.starts_with(start) && out.status.code() == Some(*code))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The README's sections with `sh` blocks, in order: heading and its
/// commands (continuations joined, comments dropped).
fn sections(readme: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, String)> = vec![(String::new(), String::new())];
    for line in readme.lines() {
        if line.starts_with("## ") {
            out.push((line.to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out.into_iter()
        .map(|(heading, body)| {
            let commands = docs::sh_blocks(&body)
                .iter()
                .flat_map(|b| docs::block_commands(b))
                .map(|c| docs::strip_comment(&c).to_owned())
                .collect::<Vec<_>>();
            (heading, commands)
        })
        .filter(|(_, c)| !c.is_empty())
        .collect()
}

/// [`sections`] in the order they run: [`MOVED`] applied.
fn ordered(sections: Vec<(String, Vec<String>)>) -> Vec<(String, Vec<String>)> {
    fn emit(
        s: (String, Vec<String>),
        held: &mut Vec<(String, Vec<String>)>,
        out: &mut Vec<(String, Vec<String>)>,
    ) {
        let heading = s.0.clone();
        out.push(s);
        for (moved, _, _) in MOVED.iter().filter(|(_, after, _)| *after == heading) {
            let at = held
                .iter()
                .position(|h| h.0 == *moved)
                .unwrap_or_else(|| panic!("MOVED: {moved:?} is not held before {heading:?}"));
            let next = held.remove(at);
            emit(next, held, out);
        }
    }
    let mut held = Vec::new();
    let mut out = Vec::new();
    for s in sections {
        if MOVED.iter().any(|(m, _, _)| *m == s.0) {
            held.push(s);
        } else {
            emit(s, &mut held, &mut out);
        }
    }
    assert!(
        held.is_empty(),
        "MOVED names sections that never ran: {:?}",
        held.iter().map(|h| &h.0).collect::<Vec<_>>()
    );
    out
}

/// What the test changes in a README command, in order: (only in this
/// section, else everywhere; README text; what runs), each with its reason.
fn substitutions(w: &Walk, s3: &S3Server) -> Vec<(Option<&'static str>, String, String)> {
    let dir = w.dir.display();
    let any = |from: &str, to: String| (None, from.to_owned(), to);
    vec![
        // Loopback and free ports: this machine runs other tests, and the
        // S3 recipe's collectors run beside the file-store one.
        (
            Some(S3_SECTION),
            "0.0.0.0:7443".to_owned(),
            format!("127.0.0.1:{}", w.s3_port),
        ),
        any("0.0.0.0:7443", format!("127.0.0.1:{}", w.port)),
        any(
            "collector.internal:7443",
            format!("collector.internal:{}", w.port),
        ),
        // A store the test owns instead of /var/lib.
        any("file:///var/lib/ircap", format!("file://{dir}/store")),
        // The optional flag, taken.
        any("[--crl pki/crl.pem]", "--crl pki/crl.pem".to_owned()),
        // A removable disk's mount point.
        any("/mnt/usb/captures", "./usb/captures".to_owned()),
        // The host's config file, written by the test (see `agent_toml`).
        any("/etc/ircap/agent.toml", "./agent.toml".to_owned()),
        // The S3-compatible server: SeaweedFS, plain HTTP on loopback, and
        // its keys.
        any("https://s3.internal:9000", s3.endpoint()),
        any("<key id>", ACCESS_KEY.to_owned()),
        any("<secret>", SECRET_KEY.to_owned()),
    ]
}

/// The host's `agent.toml` for `ircap-agent serve` (docs/daemon.md's keys):
/// the README's collector, the files the host holds, the label and the
/// policy the README's requests use.
fn agent_toml(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        "collector = \"https://collector.internal:{port}\"\n\
         ca = \"{d}/ca.pem\"\ncert = \"{d}/web-1.pem\"\nkey = \"{d}/web-1.key\"\n\
         [labels]\nenv = \"prod\"\n\
         [policy]\nremote_memory_regions = [\"suspicious\"]\n"
    )
}

/// The rule file the README's YARA commands name.
const IMPLANT_YAR: &str = "rule implant { strings: $a = \"ircap-readme-implant\" condition: $a }\n";

/// The state of the walk: the working directory, the shell environment
/// the README's commands build up, and what is running.
struct Walk {
    dir: PathBuf,
    logs: PathBuf,
    hosts: PathBuf,
    env_file: PathBuf,
    env: HashMap<String, String>,
    port: u16,
    s3_port: u16,
    last_local: Option<String>,
    last_uploaded: Option<String>,
    running: Vec<Running>,
}

impl Walk {
    /// `bash -euo pipefail -c SCRIPT` in the working directory, with the
    /// walk's environment, in a mount namespace with the README's hosts.
    ///
    /// An `ircap-agent` command runs on the host, whose shell has none of
    /// the analyst's `IRCAP_*` settings (the agent would take
    /// `IRCAP_CERT` and `IRCAP_KEY` over its own).
    fn shell(&self, script: &str) -> Command {
        let on_host = script
            .trim_start_matches("exec ")
            .starts_with("ircap-agent");
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind "$0" /etc/hosts && exec bash -euo pipefail -c "$1""#,
        ])
        .arg(&self.hosts)
        .arg(script)
        .current_dir(&self.dir)
        .env_clear()
        .envs(
            self.env
                .iter()
                .filter(|(k, _)| !(on_host && k.starts_with("IRCAP_"))),
        );
        c
    }

    /// Runs `command` to its end; on success the environment it leaves
    /// (an `export`) becomes the walk's, unless it ran on the host.
    fn exec(&mut self, command: &str) -> Output {
        let script = format!("{command}\nenv -0 > '{}'", self.env_file.display());
        let out = self.shell(&script).output().unwrap();
        // The host's shell is not the walk's (see `shell`).
        if out.status.success() && !command.starts_with("ircap-agent") {
            let dump = std::fs::read(&self.env_file).unwrap();
            self.env = dump
                .split(|b| *b == 0)
                .filter_map(|kv| {
                    let kv = text(kv);
                    let (k, v) = kv.split_once('=')?;
                    (!SHELL_VARS.contains(&k)).then(|| (k.to_owned(), v.to_owned()))
                })
                .collect();
        }
        out
    }

    /// Starts a long-running `command` with `extra` in its environment,
    /// stdout piped, stderr to a log.
    fn spawn(&self, command: &str, name: &str, extra: &[(&str, String)]) -> (Running, PathBuf) {
        let log = self.logs.join(format!("{name}.log"));
        let child = self
            .shell(&format!("exec {command}"))
            .envs(extra.iter().map(|(k, v)| (*k, v)))
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (Running(child), log)
    }

    /// Starts `ircap-collector serve ...` and waits for its
    /// `{"listening":..}` line.
    fn serve_collector(&self, command: &str, extra: &[(&str, String)]) -> Running {
        let (mut running, log) =
            self.spawn(command, &format!("collector-{}", self.running.len()), extra);
        let mut line = String::new();
        let stdout = running.0.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let listening: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            panic!(
                "`{command}` did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        assert!(listening["listening"].is_string(), "{listening}");
        running
    }

    /// Waits (30 s at most) until `ircap-collector agents` lists `who`.
    fn wait_connected(&mut self, who: &str, log: &Path) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.exec("ircap-collector agents");
            if out.status.success() && text(&out.stdout).contains(who) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{who} never connected: {}\nagent log: {}",
                text(&out.stderr),
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The capture ids a command printed, remembered for `<capture-id>`.
    fn remember(&mut self, command: &str, out: &Output) {
        if !command.starts_with("ircap-agent capture") {
            return;
        }
        let local = command.contains(" -o ") || command.contains(" --output ");
        for line in text(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if let Some(id) = v["capture_id"].as_str() {
                if local {
                    self.last_local = Some(id.to_owned());
                } else {
                    self.last_uploaded = Some(id.to_owned());
                }
            }
        }
    }

    /// `<capture-id>`: under `./captures/` the last local capture, else
    /// the last one uploaded to the collector.
    fn placeholders(&self, command: &str) -> String {
        let mut c = command.to_owned();
        if c.contains("./captures/<capture-id>") {
            let id = self.last_local.as_deref().expect("no local capture yet");
            c = c.replace("./captures/<capture-id>", &format!("./captures/{id}"));
        }
        if c.contains("<capture-id>") {
            let id = self
                .last_uploaded
                .as_deref()
                .expect("no uploaded capture yet");
            c = c.replace("<capture-id>", id);
        }
        c
    }
}

/// Every README command that can run on this machine, run as written
/// (host names resolved through `/etc/hosts`, the substitutions named in
/// [`substitutions`]): local captures and their verification, the
/// collector with the agent uploading to it, the S3 recipe against
/// SeaweedFS with an upload through each of its collectors, list / pull /
/// findings / diff / report / verify / audit, an agent serving requests,
/// and the YARA hunt. Each command must exit 0.
#[test]
fn every_readme_command_that_can_run_here_runs_as_written() -> TestResult {
    let readme = docs::read("README.md");
    let all = sections(&readme);
    let commands: Vec<&String> = all.iter().flat_map(|(_, c)| c).collect();
    for (start, why) in SKIPPED {
        assert!(
            commands.iter().any(|c| c.starts_with(start)),
            "SKIPPED names {start:?} ({why}), which the README no longer has"
        );
    }
    let upload_command = commands
        .iter()
        .find(|c| c.starts_with("ircap-agent capture --collector"))
        .ok_or("the README has no upload command")?
        .to_string();

    let tmp = tempfile::Builder::new()
        .prefix("ircap-readme-")
        .tempdir_in(build_dir())?;
    let dir = tmp.path().join("work");
    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&dir)?;
    std::fs::create_dir_all(&logs)?;
    let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    for (name, addr) in HOSTS {
        hosts.push_str(&format!("{addr} {name}\n"));
    }
    let hosts_file = tmp.path().join("hosts");
    std::fs::write(&hosts_file, hosts)?;

    let s3 = S3Server::start(&tmp.path().join("weed"));
    s3.create_bucket(BUCKET, true);

    let mut env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| !k.starts_with("IRCAP_") && !k.starts_with("AWS_"))
        .collect();
    let path = format!(
        "{}:{}",
        build_dir().display(),
        env.get("PATH").map_or("/usr/bin:/bin", String::as_str)
    );
    env.insert("PATH".into(), path);
    let mut w = Walk {
        dir: dir.clone(),
        logs,
        hosts: hosts_file,
        env_file: tmp.path().join("env"),
        env,
        port: free_port(),
        s3_port: free_port(),
        last_local: None,
        last_uploaded: None,
        running: Vec::new(),
    };
    std::fs::write(dir.join("agent.toml"), agent_toml(&dir, w.port))?;
    std::fs::write(dir.join("implant.yar"), IMPLANT_YAR)?;
    let subs = substitutions(&w, &s3);
    let substitute = |section: &str, command: &str| -> String {
        let mut c = command.to_owned();
        for (only, from, to) in &subs {
            if only.is_none_or(|s| s == section) {
                c = c.replace(from.as_str(), to);
            }
        }
        c
    };

    let mut ran = 0;
    for (section, commands) in ordered(all) {
        if let Some((_, why)) = UPLOAD_AGAIN_BEFORE.iter().find(|(s, _)| *s == section) {
            eprintln!("{section}: the upload again, because {why}");
            let out = w.exec(&substitute(&section, &upload_command));
            assert!(
                ended_well(&upload_command, &out),
                "upload again: {}",
                text(&out.stderr)
            );
            w.remember(&upload_command, &out);
        }
        for readme_command in commands {
            if let Some((_, why)) = SKIPPED.iter().find(|(s, _)| readme_command.starts_with(s)) {
                eprintln!("skipped `{readme_command}`: {why}");
                continue;
            }
            let command = w.placeholders(&substitute(&section, &readme_command));
            assert!(
                !command.contains(" <") && !command.contains("'<"),
                "{section}: `{command}` has a placeholder this test does not fill"
            );
            eprintln!("{section}: {command}");
            ran += 1;
            if command.starts_with("ircap-collector serve") {
                // An AWS recipe (no --s3-endpoint) reaches SeaweedFS
                // through the environment standing in for an AWS account.
                let aws = if command.contains("s3://") && !command.contains("--s3-endpoint") {
                    vec![
                        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
                        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
                        ("AWS_REGION", "us-east-1".to_owned()),
                        ("AWS_ENDPOINT_URL_S3", s3.endpoint()),
                        ("IRCAP_S3_PATH_STYLE", "true".to_owned()),
                    ]
                } else {
                    Vec::new()
                };
                let collector = w.serve_collector(&command, &aws);
                if command.contains("s3://") {
                    // One upload through it (the README's own command),
                    // found in the bucket; then it stops.
                    let upload = substitute("", &upload_command)
                        .replace(&format!(":{}", w.port), &format!(":{}", w.s3_port));
                    let out = w.exec(&upload);
                    assert!(
                        ended_well(&upload, &out),
                        "{section}: upload through `{command}`: {}",
                        text(&out.stderr)
                    );
                    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                    let id = summary["capture_id"].as_str().ok_or("no capture id")?;
                    let keys = s3.boto_json(&["list", BUCKET, "ircap/captures/web-1/"]);
                    let manifest = format!("ircap/captures/web-1/{id}/manifest.json");
                    assert!(
                        keys.as_array()
                            .is_some_and(|k| k.iter().any(|k| k.as_str() == Some(&manifest))),
                        "{section}: {manifest} not in the bucket: {keys}"
                    );
                    drop(collector);
                } else {
                    w.running.push(collector);
                }
                continue;
            }
            if LONG_RUNNING.iter().any(|l| command.starts_with(l)) {
                let (agent, log) = w.spawn(&command, "agent-serve", &[]);
                w.running.push(agent);
                w.wait_connected("web-1", &log);
                continue;
            }
            let out = w.exec(&command);
            assert!(
                ended_well(&command, &out),
                "{section}: `{readme_command}` ran as `{command}`\nstdout: {}\nstderr: {}",
                text(&out.stdout),
                text(&out.stderr)
            );
            w.remember(&command, &out);
            if command.starts_with("ircap-collector pki init") {
                // The files the README gives the host and the analyst.
                for f in ["ca.pem", "web-1.pem", "web-1.key", "alice.pem", "alice.key"] {
                    std::fs::copy(dir.join("pki").join(f), dir.join(f))?;
                }
            }
        }
    }
    // The README has more than 30 commands; most of them must have run.
    assert!(ran >= 25, "only {ran} README commands ran");
    eprintln!("{ran} README commands ran");
    drop(w);
    Ok(())
}
