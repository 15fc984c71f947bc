//! The agent's .deb (`cargo deb -p ircap-agent`, metadata in
//! `agent/Cargo.toml`): the static binary, the unit, a 0600 conffile, and
//! maintainer scripts that start nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ircap_e2e::TestResult;
use ircap_e2e::packaging::{MUSL_TARGET, repo_root, sha256_hex, static_agent, tool};

fn cargo_deb_installed() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap();
    let path = home.join("bin/cargo-deb");
    assert!(
        path.exists(),
        "{} is missing: .ci/run installs cargo-deb",
        path.display()
    );
    path
}

/// Builds the agent's .deb into `out` from the static build in `target/`.
fn build_deb(out: &Path) -> PathBuf {
    let _ = static_agent();
    let _ = cargo_deb_installed();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let run = Command::new(cargo)
        .current_dir(repo_root())
        .args([
            "deb",
            "-p",
            "ircap-agent",
            "--no-build",
            "--no-strip",
            "--target",
            MUSL_TARGET,
        ])
        .args(["--profile", "dist", "--output"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut debs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "{debs:?}");
    debs.pop().unwrap()
}

fn dpkg_deb(args: &[&str], deb: &Path, dir: Option<&Path>) -> String {
    let mut cmd = Command::new(tool("/usr/bin/dpkg-deb"));
    cmd.args(args).arg(deb);
    if let Some(d) = dir {
        cmd.arg(d);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn agent_deb_contents_permissions_and_scripts() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let deb = build_deb(tmp.path());

    // Every file with its mode and owner.
    let listing = dpkg_deb(&["--contents"], &deb, None);
    let mode_of = |path: &str| {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} not in\n{listing}"))
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(mode_of("usr/bin/ircap-agent"), "-rwxr-xr-x 0/0");
    assert_eq!(
        mode_of("lib/systemd/system/ircap-agent.service"),
        "-rw-r--r-- 0/0"
    );
    assert_eq!(mode_of("etc/ircap/agent.toml"), "-rw------- 0/0");

    // The packaged binary is the static build, byte for byte.
    let root = tmp.path().join("root");
    dpkg_deb(&["--extract"], &deb, Some(&root));
    assert_eq!(
        sha256_hex(&root.join("usr/bin/ircap-agent")),
        sha256_hex(&static_agent())
    );
    assert_eq!(
        std::fs::read_to_string(root.join("lib/systemd/system/ircap-agent.service"))?,
        std::fs::read_to_string(repo_root().join("packaging/systemd/ircap-agent.service"))?
    );
    // No identity in the package: no certificate or key at all.
    let files = listing
        .lines()
        .filter(|l| l.ends_with(".pem") || l.ends_with(".key"))
        .count();
    assert_eq!(files, 0, "{listing}");

    // Control: a conffile, no library dependency, scripts that start nothing.
    let control = tmp.path().join("control");
    dpkg_deb(&["--control"], &deb, Some(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles"))?;
    assert!(
        conffiles.lines().any(|l| l == "/etc/ircap/agent.toml"),
        "{conffiles}"
    );
    let fields = std::fs::read_to_string(control.join("control"))?;
    assert!(!fields.contains("libc6"), "{fields}");
    for script in ["postinst", "prerm", "postrm"] {
        let text = std::fs::read_to_string(control.join(script))?;
        for forbidden in [
            "systemctl start",
            "systemctl enable",
            "systemctl restart",
            "deb-systemd-invoke",
        ] {
            assert!(!text.contains(forbidden), "{script} contains {forbidden}");
        }
        let syntax = Command::new("/bin/sh")
            .arg("-n")
            .arg(control.join(script))
            .status()?;
        assert!(syntax.success(), "{script} is not valid sh");
    }
    Ok(())
}
