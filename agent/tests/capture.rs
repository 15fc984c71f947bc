//! End-to-end: plant real processes, sockets and mappings on this host, run
//! the real `ircap-agent capture`, and find them in the capture. Needs root
//! (network namespaces, other users' /proc entries).

mod support;

use std::ffi::OsStr;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
use support::*;

const HOSTILE_ARG0: &[u8] = b"evil\nname\t\"q\" \\ \xff\xfe";
const HOSTILE_ARG: &[u8] = b"x\ny\t\"z\"\r\x1b[31m\xc3\x28";
const HOSTILE_COMM: &[u8] = b"ev\nil\t\"\xff)(";

#[test]
fn planted_processes_sockets_and_maps_are_found() -> TestResult {
    let tmp = tempfile::tempdir()?;

    // A process with a hostile name and arguments, one of them 100 KB:
    // a copy of bash whose file name (and so comm) is hostile.
    let long_arg = vec![b'A'; 100 * 1024];
    let hostile_exe = tmp.path().join(OsStr::from_bytes(HOSTILE_COMM));
    std::fs::copy("/bin/bash", &hostile_exe)?;
    let mut cmd = Command::new(&hostile_exe);
    cmd.arg0(OsStr::from_bytes(HOSTILE_ARG0))
        .args(["-c", "echo ready; sleep 600; :"])
        .arg(OsStr::from_bytes(HOSTILE_ARG))
        .arg(OsStr::from_bytes(&long_arg));
    let (hostile, _) = spawn_ready(cmd);

    // A copy of a binary, running, then deleted.
    let copy = tmp.path().join("evil-sleep");
    std::fs::copy("/bin/sleep", &copy)?;
    let copy_sha = sha256_file(&copy);
    let deleted = Planted(Command::new(&copy).arg("600").spawn()?);
    wait_exec(deleted.pid(), "nonexistent");
    std::fs::remove_file(&copy)?;

    // A listener in its own network namespace.
    let mut ns_cmd = Command::new("unshare");
    ns_cmd.args([
        "--net",
        "python3",
        "-c",
        "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',45671))\ns.listen()\nprint('ready',flush=True)\ntime.sleep(600)",
    ]);
    let (ns_listener, ready) = spawn_ready(ns_cmd);
    assert_eq!(ready, "ready");
    let ns_inode = std::fs::read_link(format!("/proc/{}/ns/net", ns_listener.pid()))?;
    let ns_inode: u64 = ns_inode
        .to_string_lossy()
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()?;

    // Sockets owned by this test process.
    let me = i64::from(std::process::id());
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let lport = listener.local_addr()?.port();
    let client = TcpStream::connect(("127.0.0.1", lport))?;
    let (_server_side, _) = listener.accept()?;
    let cport = client.local_addr()?.port();
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let uport = udp.local_addr()?.port();
    let unix_path = tmp.path().join("ir cap.sock");
    let _unix = UnixListener::bind(&unix_path)?;

    // A writable+executable anonymous mapping in this process.
    // SAFETY: a fresh private anonymous mapping aliases nothing.
    let rwx = unsafe {
        mmap_anonymous(
            None,
            NonZeroUsize::new(4096).unwrap(),
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE | ProtFlags::PROT_EXEC,
            MapFlags::MAP_PRIVATE,
        )?
    };
    let rwx_addr = format!("0x{:x}", rwx.as_ptr() as usize);

    let out = tmp.path().join("captures");
    let run = capture(&out, &["--no-logs"]);

    // --- processes ---
    let procs = run.table("processes");
    let h = by_pid(&procs, hostile.pid());
    assert_eq!(h.len(), 1);
    let h = h[0];
    assert_eq!(b64(h["comm_b64"].as_str().unwrap()), HOSTILE_COMM);
    assert!(b64(h["exe_b64"].as_str().unwrap()).ends_with(HOSTILE_COMM));
    let argv: Vec<Vec<u8>> = h["argv_b64"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| b64(a.as_str().unwrap()))
        .collect();
    assert_eq!(
        argv,
        vec![
            HOSTILE_ARG0.to_vec(),
            b"-c".to_vec(),
            b"echo ready; sleep 600; :".to_vec(),
            HOSTILE_ARG.to_vec(),
            long_arg.clone()
        ]
    );
    assert_eq!(h["argv"][4].as_str().unwrap().len(), 100 * 1024);
    assert_eq!(h["argv_truncated"], false);

    let d = by_pid(&procs, deleted.pid())[0];
    assert_eq!(d["exe_deleted"], true, "{d}");
    assert!(d["exe"].as_str().unwrap().ends_with(" (deleted)"));
    assert_eq!(d["exe_sha256"].as_str(), Some(copy_sha.as_str()));

    let mine = by_pid(&procs, me)[0];
    assert!(mine["start_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(mine["uid"], 0);
    assert_eq!(mine["user"], "root");
    assert!(mine["namespaces"]["net"].as_u64().is_some());

    let manifest = run.manifest();
    let agent_pid = manifest["agent"]["pid"].as_i64().unwrap();
    let agent_rec = by_pid(&procs, agent_pid);
    assert_eq!(agent_rec.len(), 1, "the agent records itself");
    assert_eq!(agent_rec[0]["is_agent"], true);

    if let Some(k) = by_pid(&procs, 2)
        .first()
        .filter(|k| k["comm"] == "kthreadd")
    {
        assert_eq!(k["kernel_thread"], true);
        assert!(k["exe"].is_null());
        assert_eq!(k["errors"].as_array().unwrap().len(), 0, "{k}");
    }

    // --- connections ---
    let conns = run.table("connections");
    let find = |f: &dyn Fn(&serde_json::Value) -> bool| conns.iter().find(|c| f(c)).cloned();
    let owned = |c: &serde_json::Value, pid: i64| {
        c["pids"]
            .as_array()
            .is_some_and(|p| p.iter().any(|x| x.as_i64() == Some(pid)))
    };
    let l = find(&|c| c["protocol"] == "tcp" && c["local_port"] == lport && c["state"] == "LISTEN")
        .expect("tcp listener");
    assert!(owned(&l, me), "{l}");
    let e =
        find(&|c| c["protocol"] == "tcp" && c["local_port"] == cport && c["remote_port"] == lport)
            .expect("established client side");
    assert_eq!(e["state"], "ESTABLISHED");
    assert!(owned(&e, me));
    let u = find(&|c| c["protocol"] == "udp" && c["local_port"] == uport).expect("udp");
    assert!(owned(&u, me));
    assert_eq!(u["state"], "UNCONN");
    let x = find(&|c| c["path"].as_str() == unix_path.to_str()).expect("unix socket");
    assert_eq!(x["state"], "LISTEN");
    assert!(owned(&x, me));
    let n = find(&|c| c["local_port"] == 45671 && c["state"] == "LISTEN").expect("netns listener");
    assert_eq!(n["netns"].as_u64(), Some(ns_inode));
    assert!(owned(&n, ns_listener.pid()), "{n}");
    assert!(
        n["process_names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("python"))
    );
    let host_ns = mine["namespaces"]["net"].as_u64().unwrap();
    assert_ne!(ns_inode, host_ns);

    // --- memory maps ---
    let maps = run.table("memory_maps");
    let r = maps
        .iter()
        .find(|m| m["pid"].as_i64() == Some(me) && m["start"] == rwx_addr.as_str())
        .expect("rwx mapping");
    assert_eq!(r["write_exec"], true);
    assert_eq!(r["anon_exec"], true);
    assert_eq!(r["suspicious"], true);
    assert!(
        maps.iter()
            .any(|m| m["pid"].as_i64() == Some(deleted.pid()) && m["deleted_backed"] == true),
        "deleted binary's mapping flagged"
    );
    // The test process's own [vdso] is the kernel's, not an indicator.
    let vdso = maps
        .iter()
        .find(|m| m["pid"].as_i64() == Some(me) && m["path"] == "[vdso]")
        .expect("the test process has a [vdso]");
    assert_eq!(vdso["kernel_provided"], true, "{vdso}");
    assert_eq!(vdso["suspicious"], false, "{vdso}");

    // --- every table parses, the capture verifies ---
    for a in manifest["artifacts"].as_array().unwrap() {
        let name = a["name"].as_str().unwrap();
        if name.ends_with(".jsonl.gz") {
            let rows = read_table(&run.dir.join(name));
            assert_eq!(
                Some(rows.len() as u64),
                a["record_count"].as_u64(),
                "{name}"
            );
        }
    }
    let v = agent().arg("verify").arg(&run.dir).output()?;
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // SAFETY: unmapping the mapping made above, unused since.
    unsafe { nix::sys::mman::munmap(rwx, 4096)? };
    Ok(())
}

#[test]
fn unprivileged_run_records_permission_errors_and_completes() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("out");
    std::fs::create_dir(&out)?;
    nix::unistd::chown(&out, Some(65534.into()), Some(65534.into()))?;
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    // A root process whose environ and fds nobody may read.
    let root_child = Planted(Command::new("sleep").arg("600").spawn()?);
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_ircap-agent"))
        // Not /tmp: on a loaded host its listing may meet its time budget
        // and make the capture partial, which is not what this tests.
        .args([
            "capture",
            "--no-imds",
            "--no-logs",
            "--skip",
            "volatile_files",
        ])
        .arg("--output")
        .arg(&out)
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert!(summary["error_count"].as_u64().unwrap() > 0);
    let dir = std::path::PathBuf::from(summary["location"].as_str().unwrap());
    let procs = read_table(&dir.join("processes.jsonl.gz"));
    let rec = by_pid(&procs, root_child.pid())[0];
    let errors: Vec<&str> = rec["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("environ") && e.contains("permission denied")),
        "{errors:?}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let p = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "processes.jsonl.gz")
        .unwrap();
    assert!(p["error_count"].as_u64().unwrap() > 0);
    assert!(
        p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("permission denied")),
        "{p}"
    );
    assert_eq!(manifest["agent"]["uid"], 65534);
    Ok(())
}

#[test]
fn processes_exiting_during_capture_do_not_break_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // A storm of short-lived processes for the whole capture.
    let storm = Planted(
        Command::new("bash")
            .args(["-c", "while :; do /bin/true & /bin/true & wait; done"])
            .spawn()?,
    );
    let runs: Vec<Run> = (0..3)
        .map(|i| {
            capture(
                &tmp.path().join(format!("c{i}")),
                &["--no-logs", "--skip", "volatile_files"],
            )
        })
        .collect();
    drop(storm);
    for run in &runs {
        let v = agent().arg("verify").arg(&run.dir).output()?;
        assert!(v.status.success());
        assert!(!run.table("processes").is_empty());
    }
    Ok(())
}

fn assert_no_capture_left(root: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(root) {
        let names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.is_empty(), "left behind: {names:?}");
    }
}

#[test]
fn output_under_a_regular_file_fails_cleanly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"x")?;
    let out = agent()
        .args(["capture", "--no-imds", "--no-logs", "--output"])
        .arg(file.join("sub"))
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot create output directory"), "{err}");
    assert!(err.contains("plain-file"), "{err}");
    Ok(())
}

#[test]
fn read_only_output_fails_cleanly() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro)?;
    let script = format!(
        "mount -t tmpfs -o ro none '{}' && exec '{}' capture --no-imds --no-logs --output '{}'",
        ro.display(),
        env!("CARGO_BIN_EXE_ircap-agent"),
        ro.display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Read-only file system"), "{err}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_ne!(summary["status"], "complete");
    Ok(())
}

#[test]
fn disk_full_mid_capture_leaves_nothing_that_looks_complete() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let small = tmp.path().join("small");
    std::fs::create_dir(&small)?;
    // 8 KiB: room for the directories, not for the tables.
    let script = format!(
        "mount -t tmpfs -o size=8k none '{d}' && '{agent}' capture --no-imds --no-logs --output '{d}'; rc=$?; ls -A '{d}'; exit $rc",
        d = small.display(),
        agent = env!("CARGO_BIN_EXE_ircap-agent"),
    );
    let out = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let summary: serde_json::Value = serde_json::from_str(lines.next().unwrap_or("{}"))?;
    assert_eq!(summary["status"], "failed");
    assert!(
        summary["error"].as_str().unwrap().contains("No space left"),
        "{summary}"
    );
    // `ls -A` of the output directory after the run: nothing left at all.
    assert_eq!(lines.next(), None, "left behind: {stdout}");
    assert_no_capture_left(&small);
    Ok(())
}

#[test]
fn bad_option_values_are_usage_errors() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for args in [
        ["--logs-since", "yesterday"],
        ["--logs-max-bytes", "lots"],
        ["--upload-deadline", "soon"],
    ] {
        let out = agent()
            .args(["capture", "--no-imds", "--output"])
            .arg(tmp.path())
            .args(args)
            .output()?;
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains(args[0]));
    }
    assert_no_capture_left(tmp.path());
    Ok(())
}

/// A tmpfs of `size` mounted on `dir` for the test; lazily unmounted when
/// dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    #[allow(clippy::unwrap_used)]
    fn mount(dir: &std::path::Path, size: &str) -> Self {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "none"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `n` bytes that gzip cannot shrink.
fn incompressible(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

#[test]
fn disk_full_during_the_last_artifact_keeps_the_others_as_a_partial_capture() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir(&logs)?;
    std::fs::write(logs.join("small.log"), b"Dec  1 sshd[1]: Accepted\n")?;
    std::fs::write(logs.join("big.log"), incompressible(8 << 20))?;
    let small = tmp.path().join("out");
    std::fs::create_dir(&small)?;
    // 2 MiB: room for the tables and the small log, not for the big one.
    let _mount = Tmpfs::mount(&small, "2m");
    let logs_dir = logs.display().to_string();
    let run = capture_partial(
        &small,
        &[
            "--artifacts",
            "processes,connections,kernel,logs",
            "--logs-dir",
            &logs_dir,
            "--logs-since",
            "2000-01-01T00:00:00Z",
        ],
    );
    let m = run.manifest();
    assert_eq!(m["status"], "partial");
    let errors = m["errors"].as_array().unwrap();
    let dropped = errors
        .iter()
        .find(|e| e["source"].as_str().unwrap().contains("big.log"))
        .unwrap_or_else(|| panic!("big.log not named: {errors:?}"));
    assert!(
        dropped["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{dropped}"
    );
    // Everything captured before it is kept, and the capture verifies.
    for table in ["processes", "connections", "log_files"] {
        assert!(!run.table(table).is_empty(), "{table}");
    }
    let index = run.table("log_files");
    let row = |name: &str| {
        index
            .iter()
            .find(|r| r["path"].as_str().unwrap().ends_with(name))
            .unwrap()
            .clone()
    };
    assert_eq!(row("small.log")["included"], true);
    assert_eq!(row("big.log")["included"], false);
    assert!(
        row("big.log")["reason"]
            .as_str()
            .unwrap()
            .contains("dropped")
    );
    let verify = agent().arg("verify").arg(&run.dir).output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    Ok(())
}

#[test]
fn physical_memory_asked_for_but_impossible_is_partial_with_the_reason() -> TestResult {
    if std::path::Path::new("/proc/kcore").exists() {
        eprintln!("this host has /proc/kcore; the lab test covers refusal by lockdown");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let run = capture_partial(
        tmp.path(),
        &["--artifacts", "processes", "--physical-memory"],
    );
    let m = run.manifest();
    assert_eq!(m["status"], "partial");
    let e = m["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| {
            e["source"] == "physical_memory"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("requested but not captured")
        })
        .cloned()
        .unwrap_or_default();
    assert!(
        e["message"].as_str().unwrap_or_default().contains("kcore"),
        "{m}"
    );
    let verify = agent().arg("verify").arg(&run.dir).output()?;
    assert!(verify.status.success());
    Ok(())
}

#[test]
fn plain_http_collector_urls_are_refused_naming_the_url() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for (cmd, url) in [
        ("capture", "http://127.0.0.1:7443"),
        ("serve", "http://127.0.0.1:7444"),
    ] {
        let mut c = agent();
        c.args([cmd, "--no-imds", "--collector", url, "--ca"])
            .arg(tmp.path().join("ca.pem"))
            .arg("--cert")
            .arg(tmp.path().join("a.pem"))
            .arg("--key")
            .arg(tmp.path().join("a.key"))
            .env_remove("IRCAP_AGENT_CONFIG");
        if cmd == "capture" {
            c.arg("--no-logs");
        }
        let out = c.output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {err}");
        assert!(
            err.contains(url) && err.contains("https://"),
            "{cmd}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{cmd}: one line: {err}");
    }
    Ok(())
}

#[test]
fn unanswered_fuse_mounts_and_fifos_cannot_freeze_a_capture() -> TestResult {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "fuse-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&out)?;
    // In a private mount namespace: a fresh /tmp holding two FUSE mounts
    // whose server (this shell, holding /dev/fuse open) never answers,
    // one of them inside the log directory, and a FIFO among the logs.
    let script = format!(
        r#"set -e
mount -t tmpfs none /tmp
mkdir -p /tmp/hang /tmp/logs/hang
printf 'Dec  1 sshd[1]: Accepted\n' > /tmp/logs/auth.log
mkfifo /tmp/logs/fifo.log
exec 3<>/dev/fuse 4<>/dev/fuse
mount -i -t fuse -o fd=3,rootmode=40000,user_id=0,group_id=0 none /tmp/hang
mount -i -t fuse -o fd=4,rootmode=40000,user_id=0,group_id=0 none /tmp/logs/hang
set +e
timeout 120 '{agent}' capture --no-imds --artifacts volatile_files,logs --logs-dir /tmp/logs --logs-since 2000-01-01T00:00:00Z --output '{out}' 3>&- 4>&-
rc=$?
umount -l /tmp/hang /tmp/logs/hang
exit $rc"#,
        agent = env!("CARGO_BIN_EXE_ircap-agent"),
        out = out.display(),
    );
    let t0 = std::time::Instant::now();
    let output = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        matches!(output.status.code(), Some(0 | 4)),
        "{:?}: {stderr}",
        output.status
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let run = Run {
        output,
        dir: std::path::PathBuf::from(summary["location"].as_str().unwrap_or_default()),
        summary,
    };
    let files = run.table("volatile_files");
    let hang = files
        .iter()
        .find(|r| r["path"] == "/tmp/hang")
        .unwrap_or_else(|| panic!("/tmp/hang not listed"));
    assert_eq!(hang["not_descended"], "blocking_filesystem", "{hang}");
    assert_eq!(hang["mount_point"], true);
    let logs = run.table("log_files");
    let included: Vec<&str> = logs
        .iter()
        .filter(|r| r["included"] == true)
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert_eq!(included, ["/tmp/logs/auth.log"]);
    let m = run.manifest();
    let log_errors = m["artifacts"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter(|a| a["name"] == "log_files.jsonl.gz")
        .flat_map(|a| a["errors"].as_array().cloned().unwrap_or_default())
        .map(|e| e.as_str().unwrap_or_default().to_owned())
        .collect::<Vec<_>>();
    assert!(
        log_errors
            .iter()
            .any(|e| e.contains("/tmp/logs/hang: a fuse mount, not entered")),
        "{log_errors:?}"
    );
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// Runs `ircap-agent capture` and returns (exit code, stdout, peak RSS in
/// KiB): `VmHWM` of the agent, read until it exits.
#[allow(clippy::panic)]
fn capture_peak_rss(out: &std::path::Path, extra: &[&str]) -> (Option<i32>, Vec<u8>, u64) {
    let mut cmd = agent();
    cmd.args(["capture", "--no-imds", "--output"])
        .arg(out)
        .args(extra);
    peak_rss(cmd)
}

/// Runs `cmd` and returns (exit code, stdout, peak RSS in KiB): `VmHWM`
/// of its process (the agent it execs, if it does), read until it exits.
#[allow(clippy::panic)]
fn peak_rss(mut cmd: Command) -> (Option<i32>, Vec<u8>, u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let mut stdout = Vec::new();
    let mut pipe = child.stdout.take().unwrap_or_else(|| panic!("stdout"));
    let reader = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    });
    let code = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb);
        }
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    if let Ok(b) = reader.join() {
        stdout = b;
    }
    (code, stdout, peak)
}

#[test]
fn a_process_with_60000_long_path_mappings_keeps_the_agent_under_25_mib() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let script = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
p = sys.argv[1]
for i in range(14):
    p = os.path.join(p, "d" * 200)
os.makedirs(p)
f = os.path.join(p, "f" * 200)
with open(f, "wb") as w:
    w.write(b"x" * 4096)
fd = os.open(f, os.O_RDONLY)
# PROT_READ, MAP_PRIVATE, all at offset 0: the kernel cannot merge them.
for _ in range(60000):
    if libc.mmap(None, 4096, 1, 2, fd, 0) in (None, ctypes.c_void_p(-1).value):
        sys.exit("mmap failed: %d" % ctypes.get_errno())
print("ready", flush=True)
sys.stdin.read()
"#;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script])
        .arg(tmp.path())
        .stdin(std::process::Stdio::piped());
    let (planted, ready) = spawn_ready(cmd);
    assert_eq!(ready, "ready");
    let maps_len = std::fs::read(format!("/proc/{}/maps", planted.pid()))?.len();
    assert!(maps_len > 150 << 20, "maps is only {maps_len} bytes");
    let out = tmp.path().join("out");
    let (code, stdout, peak_kib) =
        capture_peak_rss(&out, &["--artifacts", "processes,memory_maps"]);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&stdout));
    eprintln!("agent peak RSS {peak_kib} KiB with a {maps_len}-byte maps file");
    assert!(
        peak_kib > 0 && peak_kib < 25 * 1024,
        "peak RSS {peak_kib} KiB"
    );
    let summary: serde_json::Value = serde_json::from_slice(&stdout)?;
    let regions = summary["records"]["memory_maps"].as_u64().unwrap_or(0);
    assert!(regions >= 60_000, "{summary}");
    Ok(())
}

/// A tiny static program that forks `argv[1]` children which only sleep
/// (each dies with it: `PR_SET_PDEATHSIG`), prints `ready N`, and on EOF of
/// stdin kills and reaps them all.
const SLEEPERS_C: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 0, made = 0;
    pid_t me = getpid(), *kids = calloc(n > 0 ? n : 1, sizeof *kids);
    for (; kids && made < n; made++) {
        pid_t p = fork();
        if (p == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != me) _exit(0);
            for (;;) pause();
        }
        if (p < 0) break;
        kids[made] = p;
    }
    printf("ready %d\n", made);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    for (int i = 0; i < made; i++) kill(kids[i], SIGKILL);
    for (int i = 0; i < made; i++) waitpid(kids[i], 0, 0);
    return 0;
}
"#;

/// `n` sleeping processes; closing their parent's stdin (on drop, also
/// when the test fails) kills and reaps them, and they die with it if the
/// test itself is killed.
struct Sleepers {
    parent: std::process::Child,
}

impl Sleepers {
    fn start(dir: &std::path::Path, n: usize) -> Result<Self, Box<dyn std::error::Error>> {
        use std::io::BufRead as _;
        let src = dir.join("sleepers.c");
        let bin = dir.join("sleepers");
        std::fs::write(&src, SLEEPERS_C)?;
        let cc = Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()?;
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let mut parent = Command::new(&bin)
            .arg(n.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        if let Some(out) = parent.stdout.take() {
            std::io::BufReader::new(out).read_line(&mut line)?;
        }
        let sleepers = Self { parent };
        assert_eq!(line.trim(), format!("ready {n}"), "could not fork {n}");
        Ok(sleepers)
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        drop(self.parent.stdin.take());
        let _ = self.parent.wait();
    }
}

#[test]
fn twenty_thousand_sleeping_processes_keep_the_agent_under_25_mib() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let sleepers = Sleepers::start(tmp.path(), 20_000)?;
    let out = tmp.path().join("out");
    let t0 = std::time::Instant::now();
    let (code, stdout, peak_kib) =
        capture_peak_rss(&out, &["--artifacts", "connections,processes,memory_maps"]);
    let took = t0.elapsed();
    drop(sleepers);
    assert_eq!(code, Some(0), "{}", String::from_utf8_lossy(&stdout));
    eprintln!("agent peak RSS {peak_kib} KiB with 20,000 more processes in {took:?}");
    let summary: serde_json::Value = serde_json::from_slice(&stdout)?;
    let processes = summary["records"]["processes"].as_u64().unwrap_or(0);
    assert!(processes >= 20_000, "{summary}");
    assert!(
        peak_kib > 0 && peak_kib < 25 * 1024,
        "peak RSS {peak_kib} KiB"
    );
    Ok(())
}

/// One artifact per log file, thousands of them: the agent's memory stays
/// flat (glibc once held ~200 KiB of freed buffers per artifact, 538 MiB at
/// 2,500 files), and files past the kept-file limit are a recorded cut.
#[test]
fn thousands_of_log_files_keep_the_agent_flat_and_the_cut_recorded() -> TestResult {
    const FILES: usize = 2_600;
    let tmp = tempfile::tempdir()?;
    let logs = tmp.path().join("logs");
    std::fs::create_dir(&logs)?;
    for i in 0..FILES {
        std::fs::write(logs.join(format!("app-{i:04}.log")), format!("line {i}\n"))?;
    }
    let out = tmp.path().join("out");
    let (code, stdout, peak_kib) = capture_peak_rss(
        &out,
        &[
            "--artifacts",
            "logs",
            "--logs-dir",
            logs.to_str().ok_or("path")?,
            "--logs-since",
            "2000-01-01T00:00:00Z",
        ],
    );
    eprintln!("agent peak RSS {peak_kib} KiB with {FILES} log files");
    let summary: serde_json::Value = serde_json::from_slice(&stdout)?;
    assert_eq!(code, Some(4), "{summary}");
    assert_eq!(summary["status"], "partial", "{summary}");
    let id = summary["capture_id"].as_str().ok_or("no capture id")?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(id).join("manifest.json"))?)?;
    let kept = manifest["artifacts"]
        .as_array()
        .ok_or("no artifacts")?
        .iter()
        .filter(|a| a["name"].as_str().is_some_and(|n| n.starts_with("logs/")))
        .count();
    assert_eq!(
        kept,
        ircap_agent::collect::logs::MAX_KEPT,
        "{kept} log artifacts"
    );
    assert!(
        manifest["errors"]
            .to_string()
            .contains("log files left out"),
        "{}",
        manifest["errors"]
    );
    assert!(
        peak_kib > 0 && peak_kib < 25 * 1024,
        "peak RSS {peak_kib} KiB"
    );
    Ok(())
}

#[test]
fn a_million_files_under_tmp_are_cut_by_the_entry_budget_with_flat_memory() -> TestResult {
    // Not under /tmp: a fresh tmpfs hides that for the agent.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let out = tmp.path().join("out");
    // In a private mount namespace: a fresh /tmp holding 1,000,000 empty
    // files; the shell then becomes the agent (same pid, so its peak RSS
    // is read), and the mount goes with the namespace.
    let script = format!(
        r#"set -e
mount -t tmpfs -o nr_inodes=1100000,size=64m none /tmp
python3 -c '
import os
for d in range(10):
    os.mkdir("/tmp/d%d" % d)
    for i in range(100000):
        os.close(os.open("/tmp/d%d/f%d" % (d, i), os.O_CREAT | os.O_WRONLY, 0o600))
'
exec '{agent}' capture --no-imds --artifacts volatile_files --output '{out}'"#,
        agent = env!("CARGO_BIN_EXE_ircap-agent"),
        out = out.display(),
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "sh", "-c", &script]);
    let t0 = std::time::Instant::now();
    let (code, stdout, peak_kib) = peak_rss(cmd);
    eprintln!(
        "agent peak RSS {peak_kib} KiB over 1,000,000 files, {:?} with their creation",
        t0.elapsed()
    );
    assert_eq!(code, Some(4), "{}", String::from_utf8_lossy(&stdout));
    let summary: serde_json::Value = serde_json::from_slice(&stdout)?;
    assert_eq!(summary["status"], "partial", "{summary}");
    assert!(
        peak_kib > 0 && peak_kib < 25 * 1024,
        "peak RSS {peak_kib} KiB"
    );
    let run = Run {
        output: std::process::Output {
            status: std::os::unix::process::ExitStatusExt::from_raw(0),
            stdout: Vec::new(),
            stderr: Vec::new(),
        },
        dir: std::path::PathBuf::from(summary["location"].as_str().unwrap_or_default()),
        summary,
    };
    let m = run.manifest();
    let cut = m["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["source"] == "volatile_files");
    assert!(cut, "{m}");
    let table_errors: Vec<String> = m["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["name"] == "volatile_files.jsonl.gz")
        .flat_map(|a| a["errors"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    assert!(
        table_errors
            .iter()
            .any(|e| e.starts_with("/tmp: stopped at the")),
        "{table_errors:?}"
    );
    let rows = run.table("volatile_files");
    let under_tmp = rows.iter().filter(|r| r["root"] == "/tmp").count();
    assert!(
        (1_000..=100_001).contains(&under_tmp),
        "{under_tmp} rows under /tmp"
    );
    Ok(())
}

/// Runs the agent with `args` in a private mount namespace whose `/tmp` is
/// a fresh tmpfs holding a log directory (`/tmp/logs/auth.log`) and an
/// unanswered FUSE mount at each of `hung` (its server, the shell, holds
/// `/dev/fuse` open and never reads it: any access waits for ever). Returns
/// the run, its exit code and its wall time.
fn capture_with_hung_mounts(
    hung: &[&str],
    args: &str,
) -> Result<(Run, Option<i32>, std::time::Duration), Box<dyn std::error::Error>> {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "hung-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&out)?;
    let mut mounts = String::new();
    for (i, dir) in hung.iter().enumerate() {
        let fd = i + 3;
        mounts += &format!(
            "mkdir -p {dir}\nexec {fd}<>/dev/fuse\nmount -i -t fuse -o fd={fd},rootmode=40000,user_id=0,group_id=0 none {dir}\n"
        );
    }
    let closed: String = (0..hung.len()).map(|i| format!(" {}>&-", i + 3)).collect();
    let script = format!(
        r#"set -e
mount -t tmpfs none /tmp
mkdir -p /tmp/logs
printf 'Dec  1 sshd[1]: Accepted\n' > /tmp/logs/auth.log
{mounts}set +e
timeout 120 '{agent}' capture --no-imds --enter-remote-fs --logs-dir /tmp/logs --logs-since 2000-01-01T00:00:00Z --output '{out}' {args}{closed}
rc=$?
umount -l {dirs}
exit $rc"#,
        agent = env!("CARGO_BIN_EXE_ircap-agent"),
        out = out.display(),
        dirs = hung.join(" "),
    );
    let t0 = std::time::Instant::now();
    let output = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()?;
    let took = t0.elapsed();
    let code = output.status.code();
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "{e}: {:?}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let run = Run {
        dir: std::path::PathBuf::from(summary["location"].as_str().unwrap_or_default()),
        output,
        summary,
    };
    Ok((run, code, took))
}

/// The manifest's errors as (source, message).
fn capture_errors(m: &serde_json::Value) -> Vec<(String, String)> {
    m["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["source"].as_str().unwrap_or_default().to_owned(),
                e["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn artifact_names(m: &serde_json::Value) -> Vec<String> {
    m["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_step_stuck_in_a_read_is_abandoned_and_the_capture_is_partial() -> TestResult {
    // `--enter-remote-fs` walks into the hung mount under /tmp: the
    // volatile_files step blocks in the kernel and never returns.
    let (run, code, took) = capture_with_hung_mounts(
        &["/tmp/hang"],
        "--deadline 4s --artifacts processes,connections,kernel,volatile_files,logs",
    )?;
    assert_eq!(code, Some(4), "{}", run.stderr());
    assert_eq!(run.summary["status"], "partial");
    // 4 s less a 200 ms reserve for each of the two steps after it.
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
    eprintln!("stuck volatile_files with --deadline 4s: capture took {took:?}");
    let m = run.manifest();
    let errors = capture_errors(&m);
    let (_, why) = errors
        .iter()
        .find(|(s, _)| s == "volatile_files")
        .unwrap_or_else(|| panic!("volatile_files not named: {errors:?}"));
    assert!(why.contains("abandoned after"), "{why}");
    // Nothing of the stuck step is stored; every other table is, whole,
    // including the logs read after it.
    let names = artifact_names(&m);
    assert!(
        !names.iter().any(|n| n.starts_with("volatile_files")),
        "{names:?}"
    );
    for table in ["processes", "connections", "kernel", "system", "log_files"] {
        assert!(
            names.contains(&format!("{table}.jsonl.gz")),
            "{table}: {names:?}"
        );
    }
    let stored: Vec<String> = std::fs::read_dir(&run.dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !stored.iter().any(|n| n.starts_with("volatile_files")),
        "{stored:?}"
    );
    assert_eq!(run.table("log_files")[0]["path"], "/tmp/logs/auth.log");
    let verify = agent().arg("verify").arg(&run.dir).output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let _ = std::fs::remove_dir_all(run.dir.parent().unwrap_or(&run.dir));
    Ok(())
}

#[test]
fn a_stuck_read_costs_a_tenth_of_a_long_deadline_not_the_whole_of_it() -> TestResult {
    // With --deadline 60s the stuck /tmp walk's share is over 50 s; it
    // makes no progress (no byte stored, no CPU), so it is abandoned after
    // a tenth of the deadline, and the logs after it are read in full.
    let (run, code, took) = capture_with_hung_mounts(
        &["/tmp/hang"],
        "--deadline 60s --artifacts processes,kernel,volatile_files,logs",
    )?;
    assert_eq!(code, Some(4), "{}", run.stderr());
    eprintln!("stuck volatile_files with --deadline 60s: capture took {took:?}");
    assert!(took < std::time::Duration::from_secs(25), "took {took:?}");
    let m = run.manifest();
    let errors = capture_errors(&m);
    let (_, why) = errors
        .iter()
        .find(|(s, _)| s == "volatile_files")
        .unwrap_or_else(|| panic!("volatile_files not named: {errors:?}"));
    assert!(why.contains("without progress for 6s"), "{why}");
    let names = artifact_names(&m);
    for table in ["processes", "kernel", "system", "log_files"] {
        assert!(
            names.contains(&format!("{table}.jsonl.gz")),
            "{table}: {names:?}"
        );
    }
    assert_eq!(run.table("log_files")[0]["path"], "/tmp/logs/auth.log");
    let _ = std::fs::remove_dir_all(run.dir.parent().unwrap_or(&run.dir));
    Ok(())
}

#[test]
fn steps_past_the_deadline_are_abandoned_and_the_capture_ends_on_time() -> TestResult {
    // Two steps that block for ever (the /tmp walk and the log walk, each
    // entering a hung mount): each is abandoned at its share, the steps
    // between and after them still run, and the capture ends by the
    // deadline whatever the host does.
    let (run, code, took) = capture_with_hung_mounts(
        &["/tmp/hang", "/tmp/logs/hang"],
        "--deadline 3s --artifacts processes,users,volatile_files,logs,journal",
    )?;
    assert_eq!(code, Some(4), "{}", run.stderr());
    eprintln!("two stuck steps with --deadline 3s: capture took {took:?}");
    // The deadline, plus process start, commit and exit.
    assert!(took < std::time::Duration::from_secs(6), "took {took:?}");
    let m = run.manifest();
    let errors = capture_errors(&m);
    for step in ["volatile_files", "logs"] {
        assert!(
            errors
                .iter()
                .any(|(s, why)| s == step && why.contains("--deadline of 3s")),
            "{step} not abandoned: {errors:?}"
        );
    }
    let names = artifact_names(&m);
    for table in ["processes", "logins", "system", "journal"] {
        assert!(
            names.contains(&format!("{table}.jsonl.gz")),
            "{table}: {names:?}"
        );
    }
    assert!(
        !names.contains(&"log_files.jsonl.gz".to_owned()),
        "{names:?}"
    );
    let verify = agent().arg("verify").arg(&run.dir).output()?;
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let _ = std::fs::remove_dir_all(run.dir.parent().unwrap_or(&run.dir));
    Ok(())
}
