//! Helpers for the cross-crate end-to-end tests in `tests/tests/`: find the
//! real `ircap-agent` and `ircap-collector` binaries that
//! `cargo test --workspace` built next to the test executables.

use std::path::PathBuf;
use std::process::Command;

/// The workspace's build directory for the current profile
/// (`target/debug` when run by `cargo test`).
#[must_use]
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A command running one of the workspace binaries.
///
/// # Panics
/// When the binary was not built: run the tests with
/// `cargo test --workspace`, which builds every binary that has tests.
#[must_use]
#[allow(clippy::panic)]
pub fn bin(name: &str) -> Command {
    let path = build_dir().join(name);
    if !path.exists() {
        panic!(
            "{} is missing: run the suite with `cargo test --workspace` so every binary is built",
            path.display()
        );
    }
    Command::new(path)
}
