//! Helpers for the tests of `packaging/`: the repository root, the static
//! agent that `packaging/build-static.sh` writes to `dist/`, and the
//! external tools those tests need (installed by `.ci/run`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

use sha2::{Digest, Sha256};

/// The repository root.
#[must_use]
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap()
}

/// The static agent's musl target.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// `dist/ircap-agent-x86_64-linux-musl`. `.ci/run` builds it with
/// `bash packaging/build-static.sh` before `cargo test`; when it is missing
/// (a developer ran `cargo test` alone) the script is run here once.
///
/// # Panics
/// When the script fails.
#[must_use]
pub fn static_agent() -> PathBuf {
    static BUILD: Once = Once::new();
    let path = repo_root().join("dist/ircap-agent-x86_64-linux-musl");
    BUILD.call_once(|| {
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| repo_root().join("target"), PathBuf::from);
        let built = target_dir.join(MUSL_TARGET).join("dist/ircap-agent");
        if path.exists() && built.exists() {
            return;
        }
        let status = Command::new("bash")
            .arg(repo_root().join("packaging/build-static.sh"))
            .status()
            .expect("bash");
        assert!(status.success(), "packaging/build-static.sh failed");
    });
    assert!(path.exists(), "{} missing after the build", path.display());
    path
}

/// The agent's .deb, built into `out` from the static agent by
/// `packaging/deb/build-agent-deb.sh` (the command the deployment docs
/// give); returns its path.
///
/// # Panics
/// When the script fails or prints no path of a file it made.
#[must_use]
pub fn agent_deb(out: &Path) -> PathBuf {
    let _ = static_agent();
    let run = Command::new("bash")
        .arg(repo_root().join("packaging/deb/build-agent-deb.sh"))
        .arg("--out")
        .arg(out)
        .output()
        .expect("bash");
    assert!(
        run.status.success(),
        "build-agent-deb.sh: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&run.stdout).trim());
    assert!(
        deb.is_file(),
        "build-agent-deb.sh printed {}",
        deb.display()
    );
    deb
}

/// An external tool at the path `.ci/run` installs it to; fails (never
/// skips) when it is missing.
///
/// # Panics
/// When the tool is not there.
#[must_use]
pub fn tool(path: &str) -> PathBuf {
    let p = PathBuf::from(path);
    assert!(
        p.exists(),
        "{path} is missing: tests/run.sh installs it (see docs/testing.md)"
    );
    p
}

/// SHA-256 of a file, lowercase hex (what `sha256sum` prints).
#[must_use]
pub fn sha256_hex(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
