//! One process's `/proc/PID` directory, opened once.
//!
//! Every file and link of that process is then read relative to the open
//! directory: a pid that exits and is reused meanwhile is never mistaken
//! for the process listed (reads through the old directory fail with
//! `ESRCH`), and each read is one lookup instead of a walk from `/`. Reads
//! start with a page-sized buffer, so a `status` or `environ` takes one
//! `read` and the end-of-file one instead of a doubling series from 32
//! bytes.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};

use super::fsread::ReadError;

/// First read of a file: most `/proc/PID` files fit in one page.
const FIRST_READ: usize = 4096;

/// An open `/proc/PID` directory.
#[derive(Debug)]
pub struct ProcDir {
    dir: OwnedFd,
    path: PathBuf,
}

fn classify(path: &Path, e: nix::Error) -> ReadError {
    ReadError::from_io(path, std::io::Error::from(e))
}

impl ProcDir {
    /// Opens `proc_root/pid` (a directory, not followed when a symlink).
    ///
    /// # Errors
    /// [`ReadError`] classified from the open error (`Gone` when the
    /// process has exited).
    pub fn open(proc_root: &Path, pid: i32) -> Result<Self, ReadError> {
        let path = proc_root.join(pid.to_string());
        let dir = nix::fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| classify(&path, e))?;
        Ok(Self { dir, path })
    }

    /// The path of `name` under this directory, for messages.
    #[must_use]
    pub fn path_of(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` read-only the careful way (`O_NONBLOCK`, the last
    /// component not followed) and keeps it only when it is a regular file.
    fn open_regular(&self, name: &str) -> Result<File, ReadError> {
        let fd = openat(
            &self.dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            nix::Error::ELOOP => ReadError::NotRegular {
                path: self.path_of(name).display().to_string(),
            },
            e => classify(&self.path_of(name), e),
        })?;
        let file = File::from(fd);
        let md = file
            .metadata()
            .map_err(|e| ReadError::from_io(&self.path_of(name), e))?;
        if !md.is_file() {
            return Err(ReadError::NotRegular {
                path: self.path_of(name).display().to_string(),
            });
        }
        Ok(file)
    }

    /// Reads at most `max` bytes of `name`; the flag is true when the file
    /// had more.
    ///
    /// # Errors
    /// [`ReadError`] when it cannot be opened or read.
    pub fn read(&self, name: &str, max: u64) -> Result<(Vec<u8>, bool), ReadError> {
        let file = self.open_regular(name)?;
        let mut buf =
            Vec::with_capacity(FIRST_READ.min(usize::try_from(max + 1).unwrap_or(FIRST_READ)));
        file.take(max + 1)
            .read_to_end(&mut buf)
            .map_err(|e| ReadError::from_io(&self.path_of(name), e))?;
        let truncated = buf.len() as u64 > max;
        if truncated {
            buf.truncate(usize::try_from(max).unwrap_or(usize::MAX));
        }
        Ok((buf, truncated))
    }

    /// Reads a small file (at most 1 MiB) whole.
    ///
    /// # Errors
    /// [`ReadError`] when it cannot be opened or read.
    pub fn read_small(&self, name: &str) -> Result<Vec<u8>, ReadError> {
        self.read(name, 1 << 20).map(|(b, _)| b)
    }

    /// `readlink` of `name` (`exe`, `cwd`, `ns/net`, `fd/3`) as raw bytes.
    ///
    /// # Errors
    /// [`ReadError`] classified from the error.
    pub fn read_link(&self, name: &str) -> Result<Vec<u8>, ReadError> {
        readlinkat(&self.dir, name)
            .map(OsStringExt::into_vec)
            .map_err(|e| classify(&self.path_of(name), e))
    }

    /// `stat` of what `name` leads to (the link followed: for `exe`, the
    /// executable itself, even when deleted).
    ///
    /// # Errors
    /// The `stat` error.
    pub fn stat_followed(&self, name: &str) -> Result<FileStat, std::io::Error> {
        fstatat(&self.dir, name, AtFlags::empty()).map_err(std::io::Error::from)
    }

    /// The names in the directory `name` (`fd`, `task`), unsorted.
    ///
    /// # Errors
    /// [`ReadError`] when it cannot be opened or listed.
    pub fn list(&self, name: &str) -> Result<Vec<Vec<u8>>, ReadError> {
        let path = self.path_of(name);
        let fd = openat(
            &self.dir,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| classify(&path, e))?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(|e| classify(&path, e))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| classify(&path, e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
        }
        Ok(names)
    }
}

/// True when `st` is a regular file.
#[must_use]
pub fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_files_links_and_lists_of_a_live_process() {
        let me = i32::try_from(std::process::id()).unwrap();
        let dir = ProcDir::open(Path::new("/proc"), me).unwrap();
        let status = dir.read_small("status").unwrap();
        assert!(status.starts_with(b"Name:"));
        assert_eq!(super::super::own_task::tgid(&status), Some(me));
        let exe = dir.read_link("exe").unwrap();
        assert!(!exe.is_empty());
        assert!(is_regular(&dir.stat_followed("exe").unwrap()));
        assert!(dir.read_link("ns/net").unwrap().starts_with(b"net:["));
        assert!(dir.list("fd").unwrap().iter().any(|n| n == b"0"));
        // Bounded: the flag says there was more.
        let (two, more) = dir.read("status", 2).unwrap();
        assert_eq!((two.as_slice(), more), (&b"Na"[..], true));
        // A link is not read as a file.
        assert!(matches!(
            dir.read_small("cwd"),
            Err(ReadError::NotRegular { .. })
        ));
    }

    #[test]
    fn a_process_that_exits_is_gone_and_its_reused_pid_is_never_read() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let dir = ProcDir::open(Path::new("/proc"), pid).unwrap();
        assert!(dir.read_small("stat").is_ok());
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever process holds the pid next, reads through the directory
        // opened for the one that exited fail as gone.
        assert!(dir.read_small("stat").unwrap_err().is_gone());
        assert!(dir.read_link("exe").unwrap_err().is_gone());
        assert!(
            ProcDir::open(Path::new("/proc"), pid)
                .unwrap_err()
                .is_gone()
        );
    }
}
