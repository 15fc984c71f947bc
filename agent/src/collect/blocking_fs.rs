//! File systems whose every access can block forever: network and
//! user-space file systems (FUSE, NFS, CIFS/SMB, 9p, Ceph, ...). Any local
//! user can mount an unanswered FUSE file system under `/tmp`
//! (`fusermount`), and a hung NFS server does the same: a single `lstat`
//! of the mount point then waits for ever.
//!
//! Walks therefore learn the mount points of such file systems from
//! `/proc/self/mountinfo` first (reading it never touches them) and list
//! each one as a mount point that was not entered, without a single
//! system call on it.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// File system types that can block: these and any `fuse.*` subtype.
pub const BLOCKING_TYPES: &[&str] = &[
    "fuse",
    "fuseblk",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "afs",
    "coda",
    "lustre",
    "gfs2",
    "ocfs2",
    "davfs",
    "sshfs",
    "virtiofs",
];

/// Whether `fs_type` can block.
#[must_use]
pub fn is_blocking(fs_type: &str) -> bool {
    BLOCKING_TYPES.contains(&fs_type) || fs_type.starts_with("fuse.")
}

/// Mount points of blocking file systems, with their types.
#[derive(Debug, Clone, Default)]
pub struct BlockingMounts(Vec<(PathBuf, String)>);

impl BlockingMounts {
    /// Reads `<proc>/self/mountinfo`; unreadable means none known.
    #[must_use]
    pub fn read(proc_root: &Path) -> Self {
        let Ok(raw) = super::fsread::read_bounded(&proc_root.join("self/mountinfo"), 16 << 20)
        else {
            return Self::default();
        };
        Self::parse(&raw.0)
    }

    /// Parses a `mountinfo`: `id parent maj:min root mount_point options
    /// [optional...] - fstype source super_options`.
    #[must_use]
    pub fn parse(raw: &[u8]) -> Self {
        let mut out = Vec::new();
        for line in raw.split(|&b| b == b'\n') {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let Some(point) = fields.get(4) else { continue };
            let Some(dash) = fields.iter().skip(6).position(|f| *f == b"-") else {
                continue;
            };
            let Some(fs_type) = fields.get(6 + dash + 1) else {
                continue;
            };
            let fs_type = String::from_utf8_lossy(fs_type).into_owned();
            if is_blocking(&fs_type) {
                let path = super::kernel::unescape_octal(point);
                out.push((PathBuf::from(std::ffi::OsString::from_vec(path)), fs_type));
            }
        }
        Self(out)
    }

    /// The file system type when `path` is such a mount point.
    #[must_use]
    pub fn at(&self, path: &Path) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, t)| t.as_str())
    }

    /// The innermost such mount holding `path` (an absolute path, compared
    /// by components, not resolved), with its type.
    #[must_use]
    pub fn containing(&self, path: &Path) -> Option<(&Path, &str)> {
        self.0
            .iter()
            .filter(|(p, _)| path.starts_with(p))
            .max_by_key(|(p, _)| p.components().count())
            .map(|(p, t)| (p.as_path(), t.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_of_blocking_types_are_found() {
        let raw = b"22 1 0:21 / /proc rw - proc proc rw\n64 63 0:40 / /tmp/a\\040b rw,relatime shared:5 - fuse.sshfs x rw\n65 63 0:41 / /mnt/n rw - nfs4 srv:/ rw\n";
        let m = BlockingMounts::parse(raw);
        assert_eq!(m.at(Path::new("/tmp/a b")), Some("fuse.sshfs"));
        assert_eq!(m.at(Path::new("/mnt/n")), Some("nfs4"));
        assert_eq!(m.at(Path::new("/proc")), None);
        assert_eq!(
            m.containing(Path::new("/mnt/n/cases/1")),
            Some((Path::new("/mnt/n"), "nfs4"))
        );
        assert_eq!(m.containing(Path::new("/mnt/nx")), None);
        assert_eq!(m.at(Path::new("/mnt/n/bin")), None);
    }

    #[test]
    fn types() {
        for t in ["fuse", "fuse.sshfs", "nfs4", "cifs", "9p"] {
            assert!(is_blocking(t), "{t}");
        }
        for t in ["ext4", "tmpfs", "proc", "overlay", "xfs"] {
            assert!(!is_blocking(t), "{t}");
        }
    }
}
