//! Careful reads of host files.
//!
//! Every evidence file is opened with `O_NOATIME` when the kernel allows it
//! (we are the owner or hold CAP_FOWNER), so reading does not change the
//! access times investigators rely on; reads are bounded; errors are
//! classified so that "the process exited" is told apart from "permission
//! denied".

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::protected::Protected;

/// Why a host file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// It (or the process it belongs to) is gone.
    #[error("{path}: gone (process exited or file removed)")]
    Gone {
        /// The path.
        path: String,
    },
    /// Access refused.
    #[error("{path}: permission denied")]
    Denied {
        /// The path.
        path: String,
    },
    /// Not the regular file that was listed (a FIFO, device, symlink or
    /// another file took its place).
    #[error("{path}: replaced between listing and reading (or not a regular file); not read")]
    Replaced {
        /// The path.
        path: String,
    },
    /// A file the agent names itself (not listed by a walk) that is not a
    /// regular file: a FIFO, device or symlink put in its place.
    #[error("{path}: not a regular file (a FIFO, device or symlink in its place); not read")]
    NotRegular {
        /// The path.
        path: String,
    },
    /// One of the agent's own secrets.
    #[error("{path}: {}", crate::protected::Protected::REASON)]
    Protected {
        /// The path.
        path: String,
    },
    /// Any other failure.
    #[error("{path}: {source}")]
    Other {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ReadError {
    /// Classifies an I/O error on `path`.
    #[must_use]
    pub fn from_io(path: &Path, source: io::Error) -> Self {
        let path = path.display().to_string();
        match source.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => Self::Gone { path },
            Some(libc::EACCES | libc::EPERM) => Self::Denied { path },
            _ => Self::Other { path, source },
        }
    }

    /// True for [`ReadError::Gone`].
    #[must_use]
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Gone { .. })
    }
}

/// Opens `path` read-only, without updating its access time when allowed.
///
/// # Errors
/// [`ReadError`] classified from the open error.
pub fn open_noatime(path: &Path) -> Result<File, ReadError> {
    let noatime = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_CLOEXEC)
        .open(path);
    match noatime {
        Ok(f) => Ok(f),
        // EPERM: O_NOATIME is refused when we neither own the file nor hold
        // CAP_FOWNER; fall back to a plain read.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            File::open(path).map_err(|e| ReadError::from_io(path, e))
        }
        Err(e) => Err(ReadError::from_io(path, e)),
    }
}

/// Opens `path` read-only with extra `flags` (`O_NOFOLLOW`, `O_NONBLOCK`,
/// `O_DIRECTORY`, ...), without updating its access time when allowed.
///
/// # Errors
/// The open's error.
pub fn open_noatime_with(path: &Path, flags: i32) -> io::Result<File> {
    let open = |extra: i32| {
        OpenOptions::new()
            .read(true)
            .custom_flags(flags | extra | libc::O_CLOEXEC)
            .open(path)
    };
    match open(libc::O_NOATIME) {
        // EPERM: neither owner nor CAP_FOWNER; read without it.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(0),
        other => other,
    }
}

/// The one careful open of a host file that a walk listed (device `dev`,
/// inode `ino`): no symlink followed, `O_NONBLOCK` so a FIFO or a device
/// swapped in cannot block the open, then the opened file must still be
/// that regular file, and not one of the agent's own secrets.
///
/// # Errors
/// [`ReadError::Replaced`], [`ReadError::Protected`], or the classified
/// open error.
pub fn open_listed(
    path: &Path,
    dev: u64,
    ino: u64,
    protected: &Protected,
) -> Result<File, ReadError> {
    let file = open_noatime_with(path, libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .map_err(|e| ReadError::from_io(path, e))?;
    let now = file.metadata().map_err(|e| ReadError::from_io(path, e))?;
    let path_text = || path.display().to_string();
    if !now.is_file() || now.dev() != dev || now.ino() != ino {
        return Err(ReadError::Replaced { path: path_text() });
    }
    if protected.contains(&now) {
        return Err(ReadError::Protected { path: path_text() });
    }
    Ok(file)
}

/// The careful open of a host file the agent names itself (`/etc/passwd`,
/// `/var/log/wtmp`, `/proc/PID/status`, ...): `O_NONBLOCK`, so a FIFO or a
/// device put in its place cannot block the open, the last component not
/// followed when it is a symlink (unless `follow`: `/proc/PID/exe` is the
/// kernel's link to the executable), and only a regular file is returned.
///
/// # Errors
/// [`ReadError::NotRegular`], or the classified open error.
pub fn open_regular(path: &Path, follow: bool) -> Result<File, ReadError> {
    let flags = libc::O_NONBLOCK | if follow { 0 } else { libc::O_NOFOLLOW };
    let file = open_noatime_with(path, flags).map_err(|e| match e.raw_os_error() {
        // O_NOFOLLOW on a symlink.
        Some(libc::ELOOP) => ReadError::NotRegular {
            path: path.display().to_string(),
        },
        _ => ReadError::from_io(path, e),
    })?;
    let md = file.metadata().map_err(|e| ReadError::from_io(path, e))?;
    if !md.is_file() {
        return Err(ReadError::NotRegular {
            path: path.display().to_string(),
        });
    }
    Ok(file)
}

/// Reads at most `max` bytes of `path` (opened with [`open_regular`]); the
/// flag is true when the file had more.
///
/// # Errors
/// [`ReadError`] when it cannot be opened or read.
pub fn read_bounded(path: &Path, max: u64) -> Result<(Vec<u8>, bool), ReadError> {
    let file = open_regular(path, false)?;
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| ReadError::from_io(path, e))?;
    let truncated = buf.len() as u64 > max;
    if truncated {
        buf.truncate(usize::try_from(max).unwrap_or(usize::MAX));
    }
    Ok((buf, truncated))
}

/// Reads a small text-ish file (at most 1 MiB) whole.
///
/// # Errors
/// [`ReadError`] when it cannot be opened or read.
pub fn read_small(path: &Path) -> Result<Vec<u8>, ReadError> {
    read_bounded(path, 1 << 20).map(|(b, _)| b)
}

/// Reads a small file as trimmed UTF-8 (lossy), or `None`.
#[must_use]
pub fn read_trimmed(path: &Path) -> Option<String> {
    read_small(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
}

/// `readlink` as raw bytes.
///
/// # Errors
/// [`ReadError`] classified from the error.
pub fn read_link(path: &Path) -> Result<Vec<u8>, ReadError> {
    use std::os::unix::ffi::OsStringExt;
    std::fs::read_link(path)
        .map(|p| p.into_os_string().into_vec())
        .map_err(|e| ReadError::from_io(path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_fifo_swapped_in_after_listing_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("auth.log");
        std::fs::write(&log, "Dec  1 sshd: Accepted\n").unwrap();
        let listed = std::fs::metadata(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        nix::unistd::mkfifo(&log, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        // A plain open of a FIFO with no writer blocks forever; this one
        // must come back at once, refusing it.
        let t0 = Instant::now();
        let err = open_listed(&log, listed.dev(), listed.ino(), &Protected::default()).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, ReadError::Replaced { .. }), "{err}");
        // The same file, listed and unchanged, opens.
        let ok = dir.path().join("syslog");
        std::fs::write(&ok, "x").unwrap();
        let md = std::fs::metadata(&ok).unwrap();
        assert!(open_listed(&ok, md.dev(), md.ino(), &Protected::default()).is_ok());
        // One of the agent's own secrets does not.
        let mut protected = Protected::default();
        protected.add(&ok);
        let err = open_listed(&ok, md.dev(), md.ino(), &protected).unwrap_err();
        assert!(matches!(err, ReadError::Protected { .. }), "{err}");
    }

    #[test]
    fn a_named_file_that_is_a_fifo_or_symlink_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let wtmp = dir.path().join("wtmp");
        nix::unistd::mkfifo(&wtmp, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let t0 = Instant::now();
        let err = read_bounded(&wtmp, 1 << 20).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, ReadError::NotRegular { .. }), "{err}");
        let real = dir.path().join("passwd");
        std::fs::write(&real, "root:x:0:0::/root:/bin/sh\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = read_bounded(&link, 1 << 20).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular { .. }), "{err}");
        assert!(open_regular(&link, true).is_ok());
        assert_eq!(read_small(&real).unwrap(), b"root:x:0:0::/root:/bin/sh\n");
        // Through a directory: not a regular file either.
        let err = read_bounded(dir.path(), 10).unwrap_err();
        assert!(matches!(err, ReadError::NotRegular { .. }), "{err}");
    }
}
