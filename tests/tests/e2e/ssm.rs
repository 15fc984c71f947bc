//! The SSM Command document `packaging/ssm/ircap-capture.yaml`, run the way
//! the SSM agent's `aws:runShellScript` plugin runs it (see
//! `ircap_e2e::ssm`), against a real collector on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ircap_e2e::packaging::sha256_hex;
use ircap_e2e::ssm::{self, Invocation, ShellStep};
use ircap_e2e::{Collector, TestResult, bin, build_dir, pki};

const COMMAND_ID: &str = "3f2c9a8e-1b7d-4c55-9e0a-6d2f1c4b8a90";
const INSTANCE_ID: &str = "i-0123456789abcdef0";

/// The document template as it is in the repository (site constants not
/// filled in).
fn document() -> serde_json::Value {
    ssm::load_yaml(&ssm::ssm_dir().join("ircap-capture.yaml"))
}

/// Runs `packaging/ssm/render-document.sh` with `args`.
fn render(args: &[&str]) -> std::process::Output {
    Command::new("sh")
        .arg(ssm::ssm_dir().join("render-document.sh"))
        .args(args)
        .output()
        .unwrap()
}

/// The document for one site: the template with its constants filled in
/// by `render-document.sh` (`--collector` and `--agent-sha256` included).
fn site_document(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = render(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("ircap-capture.site.yaml");
    std::fs::write(&path, &out.stdout).unwrap();
    ssm::load_yaml(&path)
}

/// The workspace's agent binary copied to `dir/ircap-agent`.
fn installed_agent(dir: &Path) -> PathBuf {
    let path = dir.join("ircap-agent");
    std::fs::copy(build_dir().join("ircap-agent"), &path).unwrap();
    path
}

/// Runs `doc` with `params` as command [`COMMAND_ID`].
fn run(
    doc: &serde_json::Value,
    root: &Path,
    params: &[(&str, &str)],
    env: &[(&str, &str)],
) -> Invocation {
    let step: ShellStep = ssm::shell_step(doc, params).unwrap();
    ssm::run_like_ssm_agent(root, INSTANCE_ID, COMMAND_ID, &step, env)
}

/// Runs `doc` with `params` and the scratch directory `scratch`: the
/// document only allows `/run` and `/dev/shm`, so this test's copy also
/// allows `scratch`, where what the run leaves behind can be checked
/// without other tests' runs in the way.
fn run_in(
    doc: &serde_json::Value,
    root: &Path,
    params: &[(&str, &str)],
    scratch: &Path,
) -> Invocation {
    run_in_env(doc, root, params, scratch, &[])
}

fn run_in_env(
    doc: &serde_json::Value,
    root: &Path,
    params: &[(&str, &str)],
    scratch: &Path,
    env: &[(&str, &str)],
) -> Invocation {
    let mut doc = doc.clone();
    let scratch = scratch.to_string_lossy().into_owned();
    doc["parameters"]["scratchDirectory"]["allowedValues"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::Value::String(scratch.clone()));
    let mut params = params.to_vec();
    params.push(("scratchDirectory", &scratch));
    run(&doc, root, &params, env)
}

/// Scratch directories the document left behind.
fn leftovers(scratch: &Path) -> Vec<String> {
    std::fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ircap-ssm."))
        .collect()
}

#[test]
fn ssm_json_document_is_the_yaml_document() -> TestResult {
    let doc = document();
    let rendered = ssm::render_json(&doc);
    let json_path = ssm::ssm_dir().join("ircap-capture.json");
    if std::env::var_os("IRCAP_BLESS").is_some() {
        std::fs::write(&json_path, &rendered)?;
    }
    let on_disk = std::fs::read_to_string(&json_path)?;
    assert!(
        on_disk == rendered,
        "{} differs from ircap-capture.yaml: regenerate it with \
         `IRCAP_BLESS=1 cargo test -p ircap-e2e --test e2e ssm::ssm_json`",
        json_path.display()
    );
    assert_eq!(doc["schemaVersion"], "2.2");
    let steps = doc["mainSteps"].as_array().unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0]["action"], "aws:runShellScript");
    Ok(())
}

#[test]
fn ssm_parameters_are_checked_like_send_command() {
    let doc = document();
    if let Err(e) = ssm::shell_step(&doc, &[]) {
        panic!("{e}");
    }
    // Anything that could break out of the script's single quotes is refused.
    for (name, bad) in [
        ("skipArtifacts", "logs; reboot"),
        ("skipArtifacts", "$(reboot)"),
        ("skipArtifacts", "logs,system"),
        ("memoryRegions", "all"),
        ("memoryRegions", "pid=1"),
        ("profile", "everything"),
        ("instanceMetadata", "maybe"),
        ("mode", "shell"),
        ("scratchDirectory", "/etc"),
        ("scratchDirectory", "/var/lib/x"),
        ("logsSince", "7d`id`"),
        ("caseId", "IR-1; reboot"),
        ("caseId", "$(reboot)"),
        ("caseId", "../x"),
        ("executionTimeout", "0"),
        ("executionTimeout", "28801"),
        // No free-form options: nothing names a directory, a spool, an
        // endpoint or the full environment.
        ("extraArgs", "--logs-dir /etc/ircap"),
        // Site constants are not parameters: no caller picks the
        // collector, the CA, the certificates or the binary that runs.
        ("collector", "https://attacker.example:443"),
        ("caCertificate", "/tmp/ca.pem"),
        ("certificateSource", "parameterstore"),
        ("agentCertificate", "/tmp/a.pem"),
        ("agentKey", "/tmp/a.key"),
        (
            "agentSha256",
            "0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("agentPath", "/tmp/evil"),
        ("agentUrl", "https://attacker.example/agent"),
        ("nonsense", "1"),
    ] {
        assert!(
            ssm::resolve_parameters(&doc, &[(name, bad)]).is_err(),
            "{name}={bad:?} was accepted"
        );
    }
    // Every parameter is enumerated or a short pattern of safe characters.
    for (name, spec) in doc["parameters"].as_object().unwrap() {
        assert!(
            spec["allowedValues"].is_array() || spec["allowedPattern"].is_string(),
            "{name} is free-form"
        );
    }
}

#[test]
fn ssm_render_script_fills_the_site_constants_and_refuses_bad_ones() -> TestResult {
    let sha = "ab".repeat(32);
    let ok = [
        "--collector",
        "https://collector.internal:7443",
        "--agent-sha256",
        &sha,
    ];
    for format in ["yaml", "json"] {
        let mut args = ok.to_vec();
        args.extend(["--format", format]);
        let out = render(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        assert!(!text.contains("@IRCAP_"), "{text}");
        assert!(
            text.contains("COLLECTOR='https://collector.internal:7443'"),
            "{text}"
        );
        assert!(text.contains(&format!("AGENT_SHA256='{sha}'")), "{text}");
    }
    for (flag, bad) in [
        ("--collector", "http://collector.internal:7443"),
        ("--collector", "https://x';touch /tmp/pwned;'"),
        ("--collector", "https://ok\n'; id; '"),
        ("--agent-sha256", "ABC"),
        ("--agent-url", "s3://bucket/key'x"),
        ("--agent-url", "http://plain/agent"),
        ("--agent-path", "/usr/bin/ircap agent"),
        ("--cert-source", "vault"),
        ("--ca", "a|b"),
        ("--format", "xml"),
    ] {
        let mut args: Vec<&str> = ok.to_vec();
        args.extend([flag, bad]);
        let out = render(&args);
        assert_eq!(out.status.code(), Some(2), "{flag} {bad:?} was accepted");
        assert!(out.stdout.is_empty());
    }
    // Without --collector or --agent-sha256: nothing rendered.
    assert_eq!(render(&["--collector", ok[1]]).status.code(), Some(2));
    Ok(())
}

#[test]
fn ssm_template_without_site_constants_runs_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let inv = run(&document(), tmp.path(), &[], &[]);
    assert_eq!(inv.exit_code, Some(13), "{} {}", inv.stdout, inv.stderr);
    let report: serde_json::Value = serde_json::from_str(inv.stdout.trim())?;
    assert_eq!(report["stage"], "config");
    Ok(())
}

#[test]
fn ssm_document_captures_to_collector_with_command_id() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = Collector::start(&pki, &tmp.path().join("store"), 0);
    let agent = installed_agent(tmp.path());
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    let sha = sha256_hex(&agent);
    let url = collector.url();
    let (ca, cert, key) = (
        pki.join("ca.pem"),
        pki.join("web-1.pem"),
        pki.join("web-1.key"),
    );
    let doc = site_document(
        tmp.path(),
        &[
            "--collector",
            &url,
            "--agent-sha256",
            &sha,
            "--agent-path",
            &agent.to_string_lossy(),
            "--ca",
            &ca.to_string_lossy(),
            "--agent-cert",
            &cert.to_string_lossy(),
            "--agent-key",
            &key.to_string_lossy(),
        ],
    );
    let params = [
        ("logsSince", "1h"),
        ("skipArtifacts", "logs"),
        ("instanceMetadata", "false"),
        ("executionTimeout", "120"),
        ("caseId", "IR-2026-041"),
    ];
    let inv = run_in(&doc, tmp.path(), &params, &scratch);
    assert_eq!(
        inv.exit_code,
        Some(0),
        "stdout {} stderr {}",
        inv.stdout,
        inv.stderr
    );
    // Exactly the agent's one-line summary, well within SSM's 24 KB.
    assert!(inv.stdout.len() < 24_000, "{} bytes", inv.stdout.len());
    assert_eq!(inv.stdout.lines().count(), 1, "{}", inv.stdout);
    let summary: serde_json::Value = serde_json::from_str(&inv.stdout)?;
    let id = summary["capture_id"].as_str().unwrap();
    // Arrived complete, with the command id the script derived from its
    // own path in the manifest.
    let stored = collector.capture_dir("web-1", id);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored.join("manifest.json"))?)?;
    assert_eq!(manifest["ssm_command_id"], COMMAND_ID);
    assert_eq!(manifest["case"]["id"], "IR-2026-041");
    assert!(!manifest["collector_receipt"].is_null());
    let verify = bin("ircap-collector").arg("verify").arg(&stored).output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(leftovers(&scratch).is_empty(), "{:?}", leftovers(&scratch));
    assert!(
        inv.dir
            .ends_with(format!("orchestration/{COMMAND_ID}/captureHost"))
    );
    Ok(())
}

#[test]
fn ssm_document_refuses_an_agent_with_the_wrong_sha256() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    // An "agent" that leaves a mark if it is ever run.
    let marker = tmp.path().join("ran");
    let impostor = tmp.path().join("ircap-agent");
    std::fs::write(
        &impostor,
        format!("#!/bin/sh\ntouch {}\n", marker.display()),
    )?;
    std::fs::set_permissions(&impostor, std::fs::Permissions::from_mode(0o755))?;
    let expected = sha256_hex(&build_dir().join("ircap-agent"));
    let doc = site_document(
        tmp.path(),
        &[
            "--collector",
            "https://127.0.0.1:9",
            "--agent-sha256",
            &expected,
            "--agent-path",
            &impostor.to_string_lossy(),
        ],
    );
    let inv = run_in(&doc, tmp.path(), &[], &scratch);
    assert_eq!(inv.exit_code, Some(10), "{} {}", inv.stdout, inv.stderr);
    let report: serde_json::Value = serde_json::from_str(inv.stdout.trim())?;
    assert_eq!(report["status"], "failed");
    assert_eq!(report["stage"], "agent");
    assert!(!marker.exists(), "the mismatched agent was run");
    assert!(leftovers(&scratch).is_empty());
    Ok(())
}

/// A python3 HTTPS server on loopback serving `dir`, with the PKI's
/// server certificate (valid for 127.0.0.1).
struct HttpsServer {
    child: Child,
    port: u16,
}

impl HttpsServer {
    fn start(dir: &Path, pki: &Path) -> Self {
        let code = r"
import http.server, ssl, sys, functools
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
httpd = http.server.HTTPServer(('127.0.0.1', 0), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
";
        let mut child = Command::new("python3")
            .args(["-c", code])
            .arg(dir)
            .arg(pki.join("server.pem"))
            .arg(pki.join("server.key"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (installed by .ci/run)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("python3 https server port");
        Self { child, port }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ssm_document_downloads_checks_and_runs_the_agent() -> TestResult {
    assert!(
        Path::new("/usr/bin/curl").exists(),
        "curl is missing (installed by .ci/run)"
    );
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = Collector::start(&pki, &tmp.path().join("store"), 0);
    let www = tmp.path().join("www");
    std::fs::create_dir(&www)?;
    let agent = installed_agent(&www);
    std::fs::write(www.join("tampered"), b"#!/bin/sh\necho tampered\n")?;
    let server = HttpsServer::start(&www, &pki);
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    let sha = sha256_hex(&agent);
    let ca = pki.join("ca.pem");
    let url = collector.url();
    let not_installed = tmp.path().join("not-installed/ircap-agent");
    let site = |name: &str, agent_url: String| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let doc = site_document(
            &dir,
            &[
                "--collector",
                &url,
                "--agent-sha256",
                &sha,
                "--agent-path",
                &not_installed.to_string_lossy(),
                "--agent-url",
                &agent_url,
                "--ca",
                &ca.to_string_lossy(),
                "--agent-cert",
                &pki.join("web-2.pem").to_string_lossy(),
                "--agent-key",
                &pki.join("web-2.key").to_string_lossy(),
            ],
        );
        (dir, doc)
    };
    let params = [("skipArtifacts", "logs"), ("instanceMetadata", "false")];
    // curl trusts the test CA through CURL_CA_BUNDLE.
    let env = [("CURL_CA_BUNDLE", ca.to_str().unwrap())];

    // A tampered download is refused and never run.
    let (dir, doc) = site("a", format!("https://127.0.0.1:{}/tampered", server.port));
    let inv = run_in_env(&doc, &dir, &params, &scratch, &env);
    assert_eq!(inv.exit_code, Some(10), "{} {}", inv.stdout, inv.stderr);
    assert!(!inv.stdout.contains("tampered\n"), "{}", inv.stdout);
    assert!(inv.stderr.contains("not run"), "{}", inv.stderr);

    // A download that fails is reported as such.
    let (dir, doc) = site("b", format!("https://127.0.0.1:{}/missing", server.port));
    let inv = run_in_env(&doc, &dir, &params, &scratch, &env);
    assert_eq!(inv.exit_code, Some(11), "{} {}", inv.stdout, inv.stderr);

    // The genuine download runs, from the scratch directory, and is gone after.
    let (dir, doc) = site(
        "c",
        format!("https://127.0.0.1:{}/ircap-agent", server.port),
    );
    let inv = run_in_env(&doc, &dir, &params, &scratch, &env);
    assert_eq!(inv.exit_code, Some(0), "{} {}", inv.stdout, inv.stderr);
    let summary: serde_json::Value = serde_json::from_str(&inv.stdout)?;
    let stored = collector.capture_dir("web-2", summary["capture_id"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored.join("manifest.json"))?)?;
    assert_eq!(manifest["ssm_command_id"], COMMAND_ID);
    assert!(
        !not_installed.exists(),
        "the download was written outside scratch"
    );
    assert!(leftovers(&scratch).is_empty(), "{:?}", leftovers(&scratch));
    Ok(())
}

#[test]
fn ssm_preflight_mode_runs_the_agent_preflight_and_sends_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let agent = installed_agent(tmp.path());
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    // A collector that does not exist: preflight must not need one.
    let doc = site_document(
        tmp.path(),
        &[
            "--collector",
            "https://127.0.0.1:9",
            "--agent-sha256",
            &sha256_hex(&agent),
            "--agent-path",
            &agent.to_string_lossy(),
        ],
    );
    let inv = run_in(&doc, tmp.path(), &[("mode", "preflight")], &scratch);
    assert_eq!(inv.exit_code, Some(0), "{} {}", inv.stdout, inv.stderr);
    // The preflight report (not a capture summary): this agent's own
    // version and pid, and no capture id.
    let report: serde_json::Value = serde_json::from_str(inv.stdout.trim())?;
    assert_eq!(
        report["agent_version"],
        env!("CARGO_PKG_VERSION"),
        "{report}"
    );
    assert!(report["pid"].as_u64().is_some(), "{report}");
    assert!(report.get("capture_id").is_none(), "{report}");
    assert!(leftovers(&scratch).is_empty());
    Ok(())
}
