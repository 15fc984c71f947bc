//! The agent's .deb (`packaging/deb/build-agent-deb.sh`, dpkg-deb from the
//! static agent): the static binary, the unit, a 0600 conffile, maintainer
//! scripts that start nothing, and the same bytes from the same tree.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use ircap_e2e::TestResult;
use ircap_e2e::packaging::{agent_deb, repo_root, sha256_hex, static_agent, tool};

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
    let deb = agent_deb(tmp.path());

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
    assert_eq!(mode_of("usr/bin/ircap-agent"), "-rwxr-xr-x root/root");
    assert_eq!(
        mode_of("lib/systemd/system/ircap-agent.service"),
        "-rw-r--r-- root/root"
    );
    assert_eq!(mode_of("etc/ircap/agent.toml"), "-rw------- root/root");

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
    // Every packaged file is listed in md5sums with its digest (dpkg
    // --verify reads it), and the package is reproducible: built again
    // from the same tree, the same bytes.
    let md5sums = std::fs::read_to_string(control.join("md5sums"))?;
    for path in [
        "usr/bin/ircap-agent",
        "lib/systemd/system/ircap-agent.service",
        "etc/ircap/agent.toml",
    ] {
        assert!(
            md5sums.lines().any(|l| l.ends_with(&format!("  {path}"))),
            "{path} not in md5sums:\n{md5sums}"
        );
    }
    let again = agent_deb(&tmp.path().join("again"));
    assert_eq!(sha256_hex(&deb), sha256_hex(&again), "not reproducible");
    Ok(())
}
