//! Careful reads of host files.
//!
//! Every evidence file is opened with `O_NOATIME` when the kernel allows it
//! (we are the owner or hold CAP_FOWNER), so reading does not change the
//! access times investigators rely on; reads are bounded; errors are
//! classified so that "the process exited" is told apart from "permission
//! denied".

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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

/// Reads at most `max` bytes of `path`; the flag is true when the file had
/// more.
///
/// # Errors
/// [`ReadError`] when it cannot be opened or read.
pub fn read_bounded(path: &Path, max: u64) -> Result<(Vec<u8>, bool), ReadError> {
    let file = open_noatime(path)?;
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
