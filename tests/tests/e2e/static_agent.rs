//! The static agent from `packaging/build-static.sh`: statically linked,
//! small, with a correct `.sha256`, and it captures and verifies in an
//! empty chroot that holds nothing but the binary and a mounted `/proc`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use ircap_e2e::packaging::{sha256_hex, static_agent, tool};
use ircap_e2e::{TestResult, bin};

/// Runs `/ircap-agent ARGS` chrooted into `root` with an empty environment,
/// in a private mount namespace where `root/proc` is a fresh procfs.
fn in_empty_chroot(root: &Path, args: &[&str]) -> Output {
    let script = r#"mount -t proc proc "$1/proc" && root=$1 && shift && exec env -i "$(command -v chroot)" "$root" /ircap-agent "$@""#;
    Command::new(tool("/usr/bin/unshare"))
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            script,
            "sh",
        ])
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .unwrap()
}

#[test]
fn static_agent_is_static_small_and_hashed() -> TestResult {
    let agent = static_agent();
    let out = Command::new(tool("/usr/bin/file"))
        .arg("-b")
        .arg(&agent)
        .output()?;
    let desc = String::from_utf8_lossy(&out.stdout);
    assert!(
        desc.contains("statically linked") || desc.contains("static-pie linked"),
        "{desc}"
    );
    assert!(
        !desc.contains("dynamically linked") && !desc.contains("interpreter"),
        "{desc}"
    );
    let size = std::fs::metadata(&agent)?.len();
    // 6 MB was the bound before the YARA engine (boreal, +1.43 MB); its
    // issue allowed the agent to grow but not past 10 MB.
    assert!(size < 10 * 1000 * 1000, "{size} bytes");
    let name = agent.file_name().unwrap().to_string_lossy().into_owned();
    let sha_file = std::fs::read_to_string(agent.with_file_name(format!("{name}.sha256")))?;
    let digest = sha256_hex(&agent);
    assert_eq!(sha_file, format!("{digest}  {name}\n"));
    Ok(())
}

#[test]
fn static_agent_captures_and_verifies_in_an_empty_chroot() -> TestResult {
    let root = tempfile::tempdir()?;
    std::fs::copy(static_agent(), root.path().join("ircap-agent"))?;
    std::fs::create_dir(root.path().join("proc"))?;
    std::fs::create_dir(root.path().join("out"))?;
    // Nothing else: no libc, no loader, no /etc, no /dev.
    let mut entries: Vec<String> = std::fs::read_dir(root.path())?
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["ircap-agent", "out", "proc"]);

    let out = in_empty_chroot(
        root.path(),
        &["capture", "--output", "/out", "--no-logs", "--no-imds"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = summary["capture_id"].as_str().unwrap();

    let verify = in_empty_chroot(root.path(), &["verify", &format!("/out/{id}")]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let verify = bin("ircap-collector")
        .arg("verify")
        .arg(root.path().join("out").join(id))
        .output()?;
    assert!(verify.status.success());

    // It saw the host's processes through the mounted /proc, this test among them.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
        root.path().join("out").join(id).join("manifest.json"),
    )?)?;
    let processes = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "processes.jsonl.gz")
        .unwrap();
    assert!(
        processes["record_count"].as_u64().unwrap() > 2,
        "{processes}"
    );
    // The mount was private: the host's view of root/proc is still empty.
    assert_eq!(std::fs::read_dir(root.path().join("proc"))?.count(), 0);
    Ok(())
}
