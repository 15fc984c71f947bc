//! What an artifact may be called.
//!
//! Artifact names are relative paths inside a capture directory. Because a
//! manifest can come from a hostile or broken agent, every consumer checks
//! names with [`ArtifactName::parse`] before touching a file: no absolute
//! paths, no `..`, no empty components, only a conservative character set.
//!
//! Some names are reserved because a store or a capture directory uses them
//! for itself, and an artifact taking one would overwrite or hide it:
//! `manifest` and `manifest.<anything>` as the first component (the
//! manifest, its temporary file, and `manifest.json/x`, which would make
//! the manifest's path a directory), and any component starting with `.`
//! (temporary and partial files are hidden names).

use std::fmt;
use std::path::{Path, PathBuf};

/// The manifest's own file name; no artifact may take it.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Longest artifact name accepted.
pub const MAX_LEN: usize = 255;

/// Why an artifact name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArtifactNameError {
    /// Empty, too long, or with a character outside `[A-Za-z0-9._-/]`.
    #[error(
        "artifact name {name:?} is empty, longer than {MAX_LEN} bytes or has a character outside [A-Za-z0-9._-/]"
    )]
    Charset {
        /// The refused name.
        name: String,
    },
    /// An absolute path, an empty component, `.` or `..`.
    #[error("artifact name {name:?} is not a plain relative path")]
    NotRelative {
        /// The refused name.
        name: String,
    },
    /// A name reserved for the manifest or for temporary files.
    #[error(
        "artifact name {name:?} is reserved: the first component may not be `manifest` or `manifest.*` and no component may start with `.`"
    )]
    Reserved {
        /// The refused name.
        name: String,
    },
}

/// A checked artifact name (see the module docs for the rules).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArtifactName(String);

impl ArtifactName {
    /// Checks `name`.
    ///
    /// # Errors
    /// [`ArtifactNameError`] when the name breaks a rule.
    pub fn parse(name: &str) -> Result<Self, ArtifactNameError> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
        if name.is_empty() || name.len() > MAX_LEN || !name.chars().all(allowed) {
            return Err(ArtifactNameError::Charset {
                name: name.to_owned(),
            });
        }
        if name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(ArtifactNameError::NotRelative {
                name: name.to_owned(),
            });
        }
        if is_reserved(name) {
            return Err(ArtifactNameError::Reserved {
                name: name.to_owned(),
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The artifact's path below a capture directory.
    #[must_use]
    pub fn path_in(&self, capture_dir: &Path) -> PathBuf {
        capture_dir.join(&self.0)
    }
}

/// Whether an otherwise well-formed relative name is reserved (see the
/// module docs).
fn is_reserved(name: &str) -> bool {
    let first = name.split('/').next().unwrap_or_default();
    let manifest_stem = MANIFEST_FILE.split('.').next().unwrap_or_default();
    first == manifest_stem
        || first.starts_with(&format!("{manifest_stem}."))
        || name.split('/').any(|part| part.starts_with('.'))
}

impl fmt::Display for ArtifactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Turns arbitrary bytes (a log file's name, say) into a string that is
/// safe inside an artifact name: every byte outside `[A-Za-z0-9._-]`
/// becomes `_`, leading dots too, and the result is cut to `max` bytes.
#[must_use]
pub fn sanitize_component(raw: &[u8], max: usize) -> String {
    let mut out: String = raw
        .iter()
        .take(max)
        .map(|&b| {
            let c = char::from(b);
            if b.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in [
            "processes.jsonl.gz",
            "logs/0001-auth.log.gz",
            "memory/pid-1.bin",
        ] {
            assert_eq!(ArtifactName::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn refuses_escapes_and_junk() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "a/",
            "a b",
            "a\nb",
            "é",
        ] {
            assert!(ArtifactName::parse(bad).is_err(), "{bad:?} accepted");
        }
        for reserved in [
            "manifest.json",
            "manifest.tmp",
            "manifest.json/x",
            "manifest",
            "manifest.json.tmp",
            ".hidden",
            "logs/.partial",
            "a/.x.tmp",
        ] {
            assert_eq!(
                ArtifactName::parse(reserved),
                Err(ArtifactNameError::Reserved {
                    name: reserved.to_owned()
                }),
                "{reserved:?}"
            );
        }
        // Only the first component is the manifest's place.
        assert!(ArtifactName::parse("logs/manifest.json.gz").is_ok());
        assert!(ArtifactName::parse("manifests.jsonl.gz").is_ok());
        assert!(ArtifactName::parse(&"a".repeat(MAX_LEN + 1)).is_err());
    }

    #[test]
    fn sanitize_makes_valid_components() {
        let s = sanitize_component(b"..evil\n/name\xff", 64);
        assert_eq!(s, "_.evil__name_");
        assert!(ArtifactName::parse(&s).is_ok());
        assert_eq!(sanitize_component(b"", 8), "_");
        assert_eq!(sanitize_component(b"abcdef", 3), "abc");
    }
}
