//! Triage end to end on this host: real planted things (a process running
//! a deleted binary, a memfd exec, an rwx region, an LD_PRELOAD process, a
//! listener in a new network namespace, a setuid file in a /tmp root),
//! captured by the real agent, then `findings`, `diff` and `report` by the
//! real collector binary, the report opened in a real headless Chromium.
//!
//! The tests in this file run one at a time (they compare the children
//! of this test process between captures).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ircap_e2e::{TestResult, bin, build_dir};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A file name no shell, terminal or browser should obey.
const HOSTILE: &str = "<img src=x onerror=alert(1)>'\"\x1b[31m";

/// Children killed on drop.
struct Planted {
    children: Vec<Child>,
    root: tempfile::TempDir,
}

impl Drop for Planted {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until `/proc/PID/exe` satisfies `ok` (the exec happened).
fn wait_exe(pid: u32, ok: impl Fn(&str) -> bool) -> Result<String, Box<dyn std::error::Error>> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(target) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            let t = target.to_string_lossy().into_owned();
            if ok(&t) {
                return Ok(t);
            }
        }
        if Instant::now() > until {
            return Err(format!("pid {pid} never reached its exec").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ready_line(child: &mut Child) -> Result<String, Box<dyn std::error::Error>> {
    let mut line = String::new();
    let out = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(out).read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

struct Pids {
    deleted: u32,
    memfd: u32,
    rwx: u32,
    preload: u32,
    netns: u32,
    netns_port: String,
    suid: PathBuf,
    preload_lib: String,
}

const PRELOAD_LIB: &str = "/lib/x86_64-linux-gnu/libm.so.6";

fn plant() -> Result<(Planted, Pids), Box<dyn std::error::Error>> {
    let root = tempfile::Builder::new()
        .prefix("ircap-triage-")
        .tempdir_in("/tmp")?;
    let mut p = Planted {
        children: Vec::new(),
        root,
    };
    // A process whose binary is deleted once it runs (a hostile name, too).
    let exe = p.root.path().join(HOSTILE);
    std::fs::copy("/usr/bin/sleep", &exe)?;
    p.children.push(Command::new(&exe).arg("600").spawn()?);
    let deleted = p.children[0].id();
    wait_exe(deleted, |t| t.contains("onerror"))?;
    std::fs::remove_file(&exe)?;
    // A process executed from a memfd: no file on any disk.
    p.children.push(
        Command::new("python3")
            .args(["-c", "import os\nfd = os.memfd_create('ircap-triage', 0)\nos.write(fd, open('/usr/bin/sleep', 'rb').read())\nos.execv('/proc/self/fd/%d' % fd, ['ircap-memfd', '600'])"])
            .spawn()?,
    );
    let memfd = p.children[1].id();
    wait_exe(memfd, |t| t.starts_with("/memfd:"))?;
    // An anonymous read+write+execute region.
    let mut rwx = Command::new("python3")
        .args(["-c", "import mmap, time\nm = mmap.mmap(-1, 65536, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\nm.write(b'\\xcc' * 16)\nprint('ready', flush=True)\ntime.sleep(600)"])
        .stdout(Stdio::piped())
        .spawn()?;
    ready_line(&mut rwx)?;
    let rwx_pid = rwx.id();
    p.children.push(rwx);
    // LD_PRELOAD of a real library.
    p.children.push(
        Command::new("/usr/bin/sleep")
            .arg("607.25")
            .env("LD_PRELOAD", PRELOAD_LIB)
            .spawn()?,
    );
    let preload = p.children[3].id();
    wait_exe(preload, |t| t == "/usr/bin/sleep")?;
    // A listener in a network namespace of its own.
    let mut ns = Command::new("unshare")
        .args(["-n", "python3", "-c", "import socket, time\ns = socket.socket()\ns.bind(('0.0.0.0', 0))\ns.listen()\nprint(s.getsockname()[1], flush=True)\ntime.sleep(600)"])
        .stdout(Stdio::piped())
        .spawn()?;
    let netns_port = ready_line(&mut ns)?;
    let netns = ns.id();
    p.children.push(ns);
    // A setuid file in the /tmp root.
    let suid = p.root.path().join("suid-true");
    std::fs::copy("/usr/bin/true", &suid)?;
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755))?;
    let pids = Pids {
        deleted,
        memfd,
        rwx: rwx_pid,
        preload,
        netns,
        netns_port,
        suid,
        preload_lib: PRELOAD_LIB.into(),
    };
    Ok((p, pids))
}

fn capture(out: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let output = bin("ircap-agent")
        .args(["capture", "--no-imds", "--no-logs", "--output"])
        .arg(out)
        .output()?;
    assert!(
        matches!(output.status.code(), Some(0 | 4)),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout)?;
    Ok(PathBuf::from(
        summary["location"].as_str().unwrap_or_default(),
    ))
}

fn collector(
    args: &[&std::ffi::OsStr],
) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    let out = bin("ircap-collector").args(args).output()?;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// Record `line` (1-based) of a gzip'd table.
fn record(dir: &Path, artifact: &str, line: u64) -> Result<Value, Box<dyn std::error::Error>> {
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(dir.join(artifact))?)
        .read_to_string(&mut text)?;
    let n = usize::try_from(line)? - 1;
    let l = text.lines().nth(n).ok_or("no such line")?;
    Ok(serde_json::from_str(l)?)
}

fn findings(dir: &Path) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
    let out = collector(&["findings".as_ref(), dir.as_os_str(), "--json".as_ref()])?;
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?)
}

fn names_pid(f: &Value, pid: u32) -> bool {
    f["pointers"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["pid"] == pid))
}

/// The finding of `rule` naming `pid`, with its first pointer checked
/// against the row it points at.
fn finding_for<'a>(
    all: &'a [Value],
    dir: &Path,
    rule: &str,
    pid: u32,
) -> Result<&'a Value, Box<dyn std::error::Error>> {
    let f = all
        .iter()
        .find(|f| f["rule"] == rule && names_pid(f, pid))
        .ok_or_else(|| format!("no {rule} finding for pid {pid}: {all:#?}"))?;
    let p = &f["pointers"][0];
    let row = record(
        dir,
        p["artifact"].as_str().unwrap_or(""),
        p["line"].as_u64().unwrap_or(0),
    )?;
    assert_eq!(row["pid"], pid, "{rule}: pointer {p} leads to {row}");
    Ok(f)
}

#[test]
fn planted_things_are_found_pointed_at_and_diffed() -> TestResult {
    let _one = ONE_AT_A_TIME.lock();
    let out = tempfile::tempdir()?;
    let before = capture(out.path())?;
    let (planted, pids) = plant()?;
    let after = capture(out.path())?;
    let all = findings(&after)?;

    let f = finding_for(&all, &after, "exe_origin", pids.deleted)?;
    assert_eq!(
        (f["mitre"].as_str(), f["severity"].as_str()),
        (Some("T1070.004"), Some("high"))
    );
    let f = finding_for(&all, &after, "exe_origin", pids.memfd)?;
    assert_eq!(f["mitre"], "T1620");
    let f = finding_for(&all, &after, "exec_memory", pids.rwx)?;
    assert_eq!(f["severity"], "high");
    let region = record(
        &after,
        "memory_maps.jsonl.gz",
        f["pointers"][0]["line"].as_u64().unwrap_or(0),
    )?;
    assert!(
        region["perms"].as_str().unwrap_or("").starts_with("rwx"),
        "{region}"
    );
    let f = finding_for(&all, &after, "preload", pids.preload)?;
    assert_eq!(
        f["pointers"][0]["path"].as_str(),
        Some(pids.preload_lib.as_str())
    );
    let f = all
        .iter()
        .find(|f| {
            f["rule"] == "listeners"
                && f["id"].as_str().unwrap_or("").contains("netns/")
                && names_pid(f, pids.netns)
        })
        .ok_or("no netns listener finding")?;
    let conn = record(
        &after,
        "connections.jsonl.gz",
        f["pointers"][0]["line"].as_u64().unwrap_or(0),
    )?;
    assert_eq!(conn["local_port"].to_string(), pids.netns_port, "{conn}");
    let suid = pids.suid.display().to_string();
    let f = all
        .iter()
        .find(|f| f["rule"] == "tmp_files" && f["pointers"][0]["path"] == suid.as_str())
        .ok_or("no setuid finding")?;
    let file = record(
        &after,
        "volatile_files.jsonl.gz",
        f["pointers"][0]["line"].as_u64().unwrap_or(0),
    )?;
    assert_eq!(
        (file["path"].as_str(), file["setuid"].as_bool()),
        (Some(suid.as_str()), Some(true))
    );
    let written = ircap_collector::triage::findings_path(&after);
    assert_eq!(
        std::fs::read_to_string(&written)?.lines().count(),
        all.len()
    );
    // The findings file sits beside the capture, which still verifies.
    collector(&["verify".as_ref(), after.as_os_str()])?;

    // The diff lists exactly what was planted among this test's own
    // children and files (the host's background activity may add more).
    let out_diff = collector(&[
        "diff".as_ref(),
        before.as_os_str(),
        after.as_os_str(),
        "--json".as_ref(),
    ])?;
    let d: Value = serde_json::from_slice(&out_diff.stdout)?;
    let section = |name: &str| -> Vec<Value> {
        d["sections"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name))
            .and_then(|s| s["added"].as_array().cloned())
            .unwrap_or_default()
    };
    let me = std::process::id();
    let ours: std::collections::BTreeSet<u32> =
        [pids.deleted, pids.memfd, pids.rwx, pids.preload, pids.netns].into();
    let is_ours = |pid: &Value| {
        pid.as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .is_some_and(|p| ours.contains(&p))
    };
    let added_procs: std::collections::BTreeSet<u32> = section("processes")
        .iter()
        .filter_map(|i| {
            i["pointer"]["pid"]
                .as_u64()
                .and_then(|p| u32::try_from(p).ok())
        })
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .and_then(|x| x.parse::<u32>().ok())
                })
                == Some(me)
        })
        .collect();
    // Other tests of the suite start children of this process too (their
    // collectors and agents), so ours must be among the added, not all.
    assert!(
        ours.is_subset(&added_procs),
        "new children of this test: {ours:?} not all in {added_procs:?}"
    );
    let ns_listeners: Vec<Value> = section("listeners")
        .into_iter()
        .filter(|i| {
            i["detail"].as_str().unwrap_or("").contains("python3")
                && i["key"].as_str().unwrap_or("").starts_with("netns:")
        })
        .filter(|i| {
            i["pointer"]["path"]
                .as_str()
                .unwrap_or("")
                .ends_with(&format!(":{}", pids.netns_port))
        })
        .collect();
    assert_eq!(ns_listeners.len(), 1, "{d:#}");
    let root = planted.root.path().display().to_string();
    let suids: Vec<String> = section("setuid_files")
        .iter()
        .filter_map(|i| i["pointer"]["path"].as_str().map(str::to_owned))
        .filter(|p| p.starts_with(&root))
        .collect();
    assert_eq!(suids, vec![suid.clone()]);
    let new_findings = section("findings");
    let mut ours_found: Vec<String> = new_findings
        .iter()
        .filter(|f| {
            is_ours(&f["pointer"]["pid"])
                || f["pointer"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(&root))
        })
        .map(|f| {
            f["key"]
                .as_str()
                .unwrap_or("")
                .split(':')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    // `service_shell` is left out: the planted processes' parent is this
    // test process, which holds the TCP listeners of whatever other test
    // of the suite runs at the same time, so the rule may rightly fire.
    ours_found.retain(|k| k != "service_shell");
    ours_found.sort();
    assert_eq!(
        ours_found,
        vec![
            "exe_origin",
            "exe_origin",
            "exec_memory",
            "listeners",
            "preload",
            "tmp_files"
        ],
        "{new_findings:#?}"
    );
    // --baseline picks the earlier capture of the same host beside it.
    let out_base = collector(&[
        "diff".as_ref(),
        "--baseline".as_ref(),
        after.as_os_str(),
        "--json".as_ref(),
    ])?;
    let base: Value = serde_json::from_slice(&out_base.stdout)?;
    assert_eq!(base["a"], d["a"]);
    drop(planted);
    Ok(())
}

/// The page's own tags (host text is escaped, so a raw `<` opens markup the
/// report wrote) that could make a browser fetch something: a script,
/// stylesheet link, frame or object, or an attribute or CSS `url(` whose
/// target is neither in-page (`#...`) nor inline (`data:`). URLs inside
/// escaped host text (a process's command line may hold one) are text, not
/// fetches, and are not counted.
fn fetching_markup(page: &str) -> Vec<String> {
    const TAGS: &[&str] = &[
        "<script", "<link", "<iframe", "<frame", "<object", "<embed", "<base",
    ];
    const ATTRS: &[&str] = &[
        "src=",
        "href=",
        "action=",
        "poster=",
        "srcset=",
        "background=",
    ];
    let mut found = Vec::new();
    let mut rest = page;
    while let Some(open) = rest.find('<') {
        let tag_end = rest[open..].find('>').map_or(rest.len(), |e| open + e + 1);
        let tag = &rest[open..tag_end];
        let lower = tag.to_ascii_lowercase();
        let fetches = TAGS.iter().any(|t| lower.starts_with(t))
            || ATTRS.iter().any(|a| {
                lower.match_indices(a).any(|(at, _)| {
                    let value = lower[at + a.len()..].trim_start_matches(['"', '\'']);
                    !(value.starts_with('#') || value.starts_with("data:"))
                })
            });
        if fetches {
            found.push(tag.to_owned());
        }
        rest = &rest[tag_end..];
    }
    // Inline CSS in the page's own <style> blocks: any url( or @import
    // other than data: fetches.
    for block in page.split("<style").skip(1) {
        let css = block.split("</style>").next().unwrap_or_default();
        for (at, _) in css
            .match_indices("url(")
            .chain(css.match_indices("@import"))
        {
            let after = css[at..]
                .trim_start_matches("url(")
                .trim_start_matches(['"', '\'']);
            if !after.starts_with("data:") {
                found.push(css[at..css.len().min(at + 60)].to_owned());
            }
        }
    }
    found
}

#[test]
fn fetching_markup_is_found_and_urls_in_text_are_not() {
    let text = "<p>curl http://evil.example/x &lt;img src=http://x&gt;</p><a href=\"#f1\">f</a>";
    assert!(fetching_markup(text).is_empty());
    for bad in [
        "<img src=\"http://x/a.png\">",
        "<link rel=stylesheet href=https://x/s.css>",
        "<script>1</script>",
        "<style>body{background:url(http://x/b.png)}</style>",
    ] {
        assert_eq!(fetching_markup(bad).len(), 1, "{bad}");
    }
}

/// Chromium's command, headless, as root, with its own profile directory.
fn chromium(profile: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn the_html_report_renders_in_chromium_with_the_finding_and_no_script() -> TestResult {
    let _one = ONE_AT_A_TIME.lock();
    let (planted, pids) = plant()?;
    let out = tempfile::tempdir()?;
    let dir = capture(out.path())?;
    drop(planted);
    let html = out.path().join("report.html");
    collector(&[
        "report".as_ref(),
        dir.as_os_str(),
        "--html".as_ref(),
        html.as_os_str(),
    ])?;
    let page = std::fs::read_to_string(&html)?;
    assert!(!page.contains("<img"), "a host name became markup");
    let fetching = fetching_markup(&page);
    assert!(
        fetching.is_empty(),
        "the page's markup can fetch: {fetching:#?}"
    );

    let profile = tempfile::tempdir()?;
    let dom = chromium(profile.path())
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("file://{}", html.display()))
        .output()?;
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let text = String::from_utf8_lossy(&dom.stdout);
    assert!(
        text.contains("id=\"findings\""),
        "no findings section in the DOM"
    );
    let title = format!("pid {} (", pids.deleted);
    assert!(
        text.contains(&title) && text.contains("runs a deleted executable"),
        "planted finding not in the DOM"
    );
    assert!(
        text.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "hostile name not shown as text"
    );
    assert!(
        !text.contains("<img"),
        "the DOM holds an element from host text"
    );
    let log = String::from_utf8_lossy(&dom.stderr);
    let console: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("CONSOLE") || l.contains("Uncaught") || l.contains("Content Security Policy")
        })
        .collect();
    assert!(console.is_empty(), "console errors: {console:#?}");

    let shots = build_dir()
        .parent()
        .map(|t| t.join("triage"))
        .ok_or("no target dir")?;
    std::fs::create_dir_all(&shots)?;
    let png = shots.join("report.png");
    let _ = std::fs::remove_file(&png);
    let shot = chromium(profile.path())
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,900")
        .arg(format!("file://{}", html.display()))
        .output()?;
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let bytes = std::fs::read(&png)?;
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "screenshot {} bytes",
        bytes.len()
    );
    Ok(())
}

#[test]
fn the_collector_counts_findings_at_commit_and_show_and_findings_by_id_use_them() -> TestResult {
    let _one = ONE_AT_A_TIME.lock();
    let tmp = tempfile::tempdir()?;
    let pki = ircap_e2e::pki(&tmp.path().join("pki"));
    let collector = ircap_e2e::Collector::start(&pki, &tmp.path().join("store"), 0);
    let (planted, pids) = plant()?;
    let out = ircap_e2e::agent_capture(&collector.url(), &pki, "web-1", &["--no-logs"]);
    drop(planted);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    let id = summary["capture_id"]
        .as_str()
        .ok_or("no capture id")?
        .to_owned();
    let analyst =
        |cmd: &str, args: &[&str]| -> Result<std::process::Output, Box<dyn std::error::Error>> {
            let out = bin("ircap-collector")
                .arg(cmd)
                .args(["--server", &collector.url()])
                .arg("--ca")
                .arg(pki.join("ca.pem"))
                .arg("--cert")
                .arg(pki.join("alice.pem"))
                .arg("--key")
                .arg(pki.join("alice.key"))
                .args(args)
                .output()?;
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(out)
        };
    let list = analyst("list", &["--json"])?;
    let row: Value = serde_json::from_slice(&list.stdout)?;
    assert!(row["findings"]["high"].as_u64().unwrap_or(0) >= 4, "{row}");
    let table = String::from_utf8(analyst("list", &[])?.stdout)?;
    assert!(
        table.contains("FINDINGS") && table.contains(" high"),
        "{table}"
    );
    let show = String::from_utf8(analyst("show", &[&id])?.stdout)?;
    assert!(
        show.contains(&format!("pid {} (", pids.deleted))
            && show.contains("runs a deleted executable"),
        "{show}"
    );
    // By id: pulled (and verified) into --pull-dir, then triaged there.
    let pull_dir = tmp.path().join("evidence");
    std::fs::create_dir_all(&pull_dir)?;
    let found = analyst(
        "findings",
        &[
            &id,
            "--json",
            "--pull-dir",
            pull_dir.to_str().ok_or("path")?,
        ],
    )?;
    let lines: Vec<Value> = String::from_utf8(found.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    finding_for(&lines, &pull_dir.join(&id), "exe_origin", pids.memfd)?;
    assert!(pull_dir.join(format!("{id}.findings.jsonl")).is_file());
    Ok(())
}

/// The golden-AMI first-boot line of docs/deployment.md (`ircap-agent capture ...
/// --capture-label baseline=true`), its collector and `/etc/ircap` files
/// swapped for this test's, without IMDS and with the triage profile.
fn readme_baseline_command(
    url: &str,
    pki: &Path,
    who: &str,
) -> Result<Command, Box<dyn std::error::Error>> {
    let deployment = ircap_e2e::docs::read("docs/deployment.md");
    let line = deployment
        .lines()
        .find(|l| l.starts_with("ircap-agent capture ") && l.contains("--capture-label baseline=true"))
        .ok_or("docs/deployment.md has no first-boot `ircap-agent capture ... --capture-label baseline=true` line")?;
    let words: Vec<&str> = line
        .split("||")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let mut cmd = bin("ircap-agent");
    for w in words.iter().skip(1) {
        match *w {
            "https://collector.internal:7443" => cmd.arg(url),
            "/etc/ircap/ca.pem" => cmd.arg(pki.join("ca.pem")),
            "/etc/ircap/agent.pem" => cmd.arg(pki.join(format!("{who}.pem"))),
            "/etc/ircap/agent.key" => cmd.arg(pki.join(format!("{who}.key"))),
            other => cmd.arg(other),
        };
    }
    cmd.args(["--no-imds", "--profile", "triage"]);
    Ok(cmd)
}

/// Id of the capture a successful `ircap-agent capture` printed.
fn captured(out: &std::process::Output) -> Result<String, Box<dyn std::error::Error>> {
    assert!(
        matches!(out.status.code(), Some(0 | 4)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout)?;
    Ok(summary["capture_id"]
        .as_str()
        .ok_or("no capture id")?
        .to_owned())
}

#[test]
fn diff_baseline_prefers_the_labelled_capture_else_the_earliest_on_the_collector_and_beside()
-> TestResult {
    let _one = ONE_AT_A_TIME.lock();
    let tmp = tempfile::tempdir()?;
    let pki = ircap_e2e::pki(&tmp.path().join("pki"));
    let server = ircap_e2e::Collector::start(&pki, &tmp.path().join("store"), 0);
    let url = server.url();
    let triage = ["--profile", "triage"];
    // Another agent identity on this same machine (same machine id),
    // labelled and earliest: never web-1's baseline on the collector.
    let other = captured(&readme_baseline_command(&url, &pki, "web-2")?.output()?)?;
    let c0 = captured(&ircap_e2e::agent_capture(&url, &pki, "web-1", &triage))?;
    let c1 = captured(&ircap_e2e::agent_capture(&url, &pki, "web-1", &triage))?;
    let c2 = captured(&ircap_e2e::agent_capture(&url, &pki, "web-1", &triage))?;
    // The labelled baseline, NOT the earliest, taken by the documented line.
    let labelled = captured(&readme_baseline_command(&url, &pki, "web-1")?.output()?)?;
    let incident = captured(&ircap_e2e::agent_capture(&url, &pki, "web-1", &triage))?;

    let pulls = tmp.path().join("evidence");
    std::fs::create_dir_all(&pulls)?;
    let diff = |b: &str, server: bool| -> Result<Value, Box<dyn std::error::Error>> {
        let mut cmd = bin("ircap-collector");
        cmd.env_remove("IRCAP_SERVER")
            .args(["diff", "--baseline", b, "--json", "--pull-dir"])
            .arg(&pulls);
        if server {
            cmd.args(["--server", &url])
                .arg("--ca")
                .arg(pki.join("ca.pem"))
                .arg("--cert")
                .arg(pki.join("alice.pem"))
                .arg("--key")
                .arg(pki.join("alice.key"));
        }
        let out = cmd.output()?;
        assert!(
            out.status.success(),
            "diff --baseline {b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let chose = |d: &Value| {
        (
            d["a"].as_str().unwrap_or_default().to_owned(),
            d["baseline"]["rule"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            d["baseline"]["among"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    let want =
        |id: &str, rule: &str, among: &str| (id.to_owned(), rule.to_owned(), among.to_owned());

    // On the collector, by id: the labelled one wins over the earlier
    // unlabelled ones (and over web-2's), and is pulled and verified.
    let d = diff(&incident, true)?;
    assert_eq!(chose(&d), want(&labelled, "labelled", "collector"), "{d:#}");
    assert_eq!(d["b"], incident.as_str());
    assert!(pulls.join(&labelled).join("manifest.json").is_file());
    let m: Value =
        serde_json::from_slice(&std::fs::read(pulls.join(&labelled).join("manifest.json"))?)?;
    assert_eq!(
        m["options"]["labels"]["baseline"], "true",
        "{}",
        m["options"]
    );
    // Before the labelled one existed: the earliest of web-1's, not the
    // latest and not web-2's.
    let d = diff(&c2, true)?;
    assert_eq!(chose(&d), want(&c0, "earliest", "collector"), "{d:#}");

    // Beside the pulled captures (no collector): the same answers, by the
    // manifests alone. web-2's capture is not pulled here: on one machine
    // it would count as the same claimed host.
    collector(&[
        "pull".as_ref(),
        "--server".as_ref(),
        url.as_ref(),
        "--ca".as_ref(),
        pki.join("ca.pem").as_os_str(),
        "--cert".as_ref(),
        pki.join("alice.pem").as_os_str(),
        "--key".as_ref(),
        pki.join("alice.key").as_os_str(),
        c1.as_ref(),
        pulls.as_os_str(),
    ])?;
    assert!(!pulls.join(&other).exists());
    let beside_incident = pulls.join(&incident).display().to_string();
    let d = diff(&beside_incident, false)?;
    assert_eq!(chose(&d), want(&labelled, "labelled", "beside"), "{d:#}");
    let beside_c2 = pulls.join(&c2).display().to_string();
    let d = diff(&beside_c2, false)?;
    assert_eq!(chose(&d), want(&c0, "earliest", "beside"), "{d:#}");
    // The pulled captures all verify (the label is inside the hashed
    // manifest, not beside it).
    for id in [&c0, &c1, &c2, &labelled, &incident] {
        collector(&["verify".as_ref(), pulls.join(id).as_os_str()])?;
    }
    Ok(())
}
