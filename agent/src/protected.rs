//! The agent's own secrets: its private key, certificates and config.
//!
//! No collector reads them, whatever directory a capture names and however
//! the file is reached (a symlink, a hard link, a bind mount): files are
//! recognised by device and inode, taken when the capture starts, and every
//! collector that reads file contents (logs, volatile files) checks the
//! file it opened against this set before reading a byte. A capture that
//! meets one records it as left out.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Device and inode of each protected file, with its path for messages.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Protected {
    /// The paths as given (recorded in the manifest's options).
    pub paths: Vec<PathBuf>,
    #[serde(skip)]
    ids: Vec<(u64, u64)>,
}

impl Protected {
    /// The agent's key, certificates and config: `explicit` (from flags or
    /// the daemon's settings), plus `config` (or the default
    /// `/etc/ircap/agent.toml`) and the key and certificates it names.
    /// Files that do not exist are simply not there to protect.
    pub fn of_agent<'a>(
        explicit: impl IntoIterator<Item = &'a Path>,
        config: Option<&Path>,
    ) -> Self {
        let mut out = Self::default();
        for p in explicit {
            out.add(p);
        }
        let config = config.unwrap_or(Path::new(crate::daemon::config::DEFAULT_CONFIG));
        out.add(config);
        if let Ok(file) = crate::daemon::config::AgentConfig::from_file(config) {
            for p in [file.key, file.cert, file.ca].into_iter().flatten() {
                out.add(&p);
            }
        }
        out
    }

    /// Adds `path` (followed if it is a symlink: the target is what must
    /// not be read).
    pub fn add(&mut self, path: &Path) {
        if let Ok(md) = std::fs::metadata(path) {
            let id = (md.dev(), md.ino());
            if !self.ids.contains(&id) {
                self.ids.push(id);
                self.paths.push(path.to_path_buf());
            }
        }
    }

    /// Whether the file described by `md` is protected.
    #[must_use]
    pub fn contains(&self, md: &std::fs::Metadata) -> bool {
        self.ids.contains(&(md.dev(), md.ino()))
    }

    /// Whether the file with device `dev` and inode `ino` is protected.
    #[must_use]
    pub fn contains_id(&self, dev: u64, ino: u64) -> bool {
        self.ids.contains(&(dev, ino))
    }

    /// The reason recorded for a protected file left out.
    pub const REASON: &'static str =
        "the agent's own key, certificate or config: never read into a capture";
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn hard_links_and_symlinks_of_a_protected_file_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent.key");
        std::fs::write(&key, "secret").unwrap();
        let hard = dir.path().join("hard");
        std::fs::hard_link(&key, &hard).unwrap();
        let soft = dir.path().join("soft");
        std::os::unix::fs::symlink(&key, &soft).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, "x").unwrap();
        let p = Protected::of_agent([soft.as_path()], Some(&dir.path().join("none.toml")));
        assert!(p.contains(&std::fs::metadata(&hard).unwrap()));
        assert!(p.contains(&std::fs::metadata(&key).unwrap()));
        assert!(!p.contains(&std::fs::metadata(&other).unwrap()));
    }

    #[test]
    fn the_config_and_the_files_it_names_are_protected() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, "secret").unwrap();
        let config = dir.path().join("agent.toml");
        std::fs::write(&config, format!("key = \"{}\"\n", key.display())).unwrap();
        let p = Protected::of_agent([], Some(&config));
        assert!(p.contains(&std::fs::metadata(&key).unwrap()));
        assert!(p.contains(&std::fs::metadata(&config).unwrap()));
    }
}
