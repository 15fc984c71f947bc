//! Reads one region of a process's address space through `/proc/PID/mem`
//! in large reads, finding the exact page boundaries of what cannot be read.
//!
//! Unreadable pages are not errors: they become [`Gap`]s, and the bytes
//! around them are streamed as [`Extent`]s. Gaps are **omitted** from the
//! stored bytes (never zero-filled), so a stored zero is always a zero that
//! was in memory; each extent says where its bytes sit in the artifact.

use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::sink::SinkError;

/// Page size used for probing (x86-64 and most arm64 kernels).
pub const PAGE: u64 = 4096;
/// Unreadable pages probed one by one before the search for the end of a
/// gap starts doubling its step (keeps huge unreadable ranges fast).
const LINEAR_PROBES: u64 = 256;

/// A range of virtual addresses whose bytes are stored.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Extent {
    /// First virtual address, hex.
    pub start: String,
    /// End virtual address (exclusive), hex.
    pub end: String,
    /// Offset of the byte at `start` in the process's bytes artifact.
    pub artifact_offset: u64,
}

/// A range of virtual addresses whose bytes are not stored, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gap {
    /// First virtual address, hex.
    pub start: String,
    /// End virtual address (exclusive), hex.
    pub end: String,
    /// `end - start`.
    pub size: u64,
    /// Why: `unreadable: <error>`, `no read permission`, `budget`,
    /// `process exited`.
    pub reason: String,
}

impl Gap {
    /// A gap over `[start, end)`.
    #[must_use]
    pub fn new(start: u64, end: u64, reason: impl Into<String>) -> Self {
        Self {
            start: hex(start),
            end: hex(end),
            size: end.saturating_sub(start),
            reason: reason.into(),
        }
    }
}

/// `0x`-prefixed lower-case hex, as in the `memory_maps` table.
#[must_use]
pub fn hex(v: u64) -> String {
    format!("0x{v:x}")
}

/// What reading one region gave.
#[derive(Debug, Default)]
pub struct RegionBytes {
    /// Stored bytes, in address order.
    pub extents: Vec<Extent>,
    /// Bytes not stored.
    pub gaps: Vec<Gap>,
    /// Bytes stored.
    pub stored: u64,
    /// SHA-256 of the stored bytes, in order, as read.
    pub sha256: String,
    /// The address space went away while reading.
    pub exited: bool,
}

/// Where read bytes go: the artifact (which hashes them) and its offset.
pub trait ByteSink {
    /// Bytes stored in the artifact so far.
    fn offset(&self) -> u64;
    /// Appends bytes.
    ///
    /// # Errors
    /// [`SinkError`] when the capture cannot store them.
    fn put(&mut self, bytes: &[u8]) -> Result<(), SinkError>;
}

/// Reads `[start, end)` of the address space behind `mem` (an open
/// `/proc/PID/mem`), storing at most `limit` bytes into `out` through
/// `buf` (the read size). Pages past `limit` become a `budget` gap.
///
/// # Errors
/// Only [`SinkError`]: host read failures become gaps.
pub fn read_region(
    mem: &File,
    start: u64,
    end: u64,
    limit: u64,
    buf: &mut [u8],
    out: &mut dyn ByteSink,
) -> Result<RegionBytes, SinkError> {
    let mut result = RegionBytes::default();
    let mut hasher = Sha256::new();
    let mut open: Option<(u64, u64)> = None; // (start address, artifact offset)
    let mut addr = start;
    while addr < end {
        let left = limit.saturating_sub(result.stored);
        if left == 0 {
            close_extent(&mut result, &mut open, addr);
            result.gaps.push(Gap::new(addr, end, "budget"));
            break;
        }
        let want = usize::try_from((end - addr).min(left))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let Some(chunk) = buf.get_mut(..want) else {
            break;
        };
        match mem.read_at(chunk, addr) {
            Ok(0) => {
                // The kernel answers 0 only when the address space is gone.
                close_extent(&mut result, &mut open, addr);
                result.gaps.push(Gap::new(addr, end, "process exited"));
                result.exited = true;
                break;
            }
            Ok(n) => {
                let bytes = chunk.get(..n).unwrap_or_default();
                if open.is_none() {
                    open = Some((addr, out.offset()));
                }
                hasher.update(bytes);
                out.put(bytes)?;
                result.stored += n as u64;
                addr += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                close_extent(&mut result, &mut open, addr);
                result.gaps.push(Gap::new(addr, end, "process exited"));
                result.exited = true;
                break;
            }
            Err(e) => {
                close_extent(&mut result, &mut open, addr);
                let gap_end = unreadable_end(mem, addr, end);
                result
                    .gaps
                    .push(Gap::new(addr, gap_end, format!("unreadable: {e}")));
                addr = gap_end;
            }
        }
    }
    close_extent(&mut result, &mut open, addr.min(end));
    result.sha256 = ircap_proto::hashing::to_hex(&hasher.finalize());
    Ok(result)
}

fn close_extent(result: &mut RegionBytes, open: &mut Option<(u64, u64)>, at: u64) {
    if let Some((start, offset)) = open.take()
        && at > start
    {
        result.extents.push(Extent {
            start: hex(start),
            end: hex(at),
            artifact_offset: offset,
        });
    }
}

fn readable(mem: &File, addr: u64) -> bool {
    let mut byte = [0u8; 1];
    matches!(mem.read_at(&mut byte, addr), Ok(1))
}

/// The first readable page boundary after `from` (whose page failed), or
/// `end`. Pages are probed one by one for the first [`LINEAR_PROBES`]
/// pages; past that the step doubles until a readable page is found and
/// the boundary is then located by bisection, so a gigabyte of unreadable
/// pages costs a few dozen reads rather than a quarter million.
fn unreadable_end(mem: &File, from: u64, end: u64) -> u64 {
    let mut bad = from; // an address known unreadable
    let mut page = (from / PAGE + 1) * PAGE;
    let mut probes = 0;
    while page < end && probes < LINEAR_PROBES {
        if readable(mem, page) {
            return page;
        }
        bad = page;
        page += PAGE;
        probes += 1;
    }
    if page >= end {
        return end;
    }
    let mut step = PAGE;
    let good = loop {
        let next = bad.saturating_add(step);
        if next >= end {
            if readable(mem, end - 1) {
                break (end - 1) / PAGE * PAGE;
            }
            return end;
        }
        if readable(mem, next) {
            break next / PAGE * PAGE;
        }
        bad = next;
        step = step.saturating_mul(2);
    };
    // bad is unreadable, good readable: bisect on page boundaries.
    let (mut lo, mut hi) = (bad / PAGE, good / PAGE);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if readable(mem, mid * PAGE) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi * PAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    struct VecSink(Vec<u8>);

    impl ByteSink for VecSink {
        fn offset(&self) -> u64 {
            self.0.len() as u64
        }
        fn put(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }

    #[test]
    fn reads_own_memory_around_an_unreadable_hole() {
        use std::os::fd::AsRawFd;
        let pages = 1100usize; // the hole is longer than LINEAR_PROBES pages
        let page = PAGE as usize;
        let len = pages * page;
        // SAFETY: a fresh private anonymous mapping owned by this test.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let start = base as u64;
        // SAFETY: the mapping is len bytes, readable and writable.
        let bytes = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), len) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        // Pages [3, 1003): an empty file mapped over them, so every access
        // is past its end (SIGBUS in the process, EIO through /proc/PID/mem)
        // while the addresses stay reserved.
        let empty = tempfile::tempfile().unwrap();
        // SAFETY: MAP_FIXED over pages this test owns.
        let hole = unsafe {
            libc::mmap(
                base.cast::<u8>().add(3 * page).cast(),
                1000 * page,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                empty.as_raw_fd(),
                0,
            )
        };
        assert_ne!(hole, libc::MAP_FAILED);
        let mem = File::open("/proc/self/mem").unwrap();
        let mut out = VecSink(Vec::new());
        let mut buf = vec![0u8; 1 << 20];
        let end = start + len as u64;
        let r = read_region(&mem, start, end, u64::MAX, &mut buf, &mut out).unwrap();
        assert_eq!(r.gaps.len(), 1, "{:?}", r.gaps);
        assert_eq!(r.gaps[0].start, hex(start + 3 * PAGE));
        assert_eq!(r.gaps[0].end, hex(start + 1003 * PAGE));
        assert_eq!(r.extents.len(), 2);
        assert_eq!(r.stored, 100 * PAGE);
        assert_eq!(r.extents[1].start, hex(start + 1003 * PAGE));
        assert_eq!(r.extents[1].artifact_offset, 3 * PAGE);
        let expect: Vec<u8> = (0..3 * page)
            .chain(1003 * page..len)
            .map(|i| (i % 251) as u8)
            .collect();
        assert!(out.0 == expect, "bytes differ");
        assert_eq!(r.sha256, ircap_proto::hashing::sha256_hex(&expect));

        // A budget cuts the region and says so.
        let mut out = VecSink(Vec::new());
        let r = read_region(&mem, start, end, 5000, &mut buf, &mut out).unwrap();
        assert_eq!(r.stored, 5000);
        assert_eq!(out.0.len(), 5000);
        assert_eq!(r.gaps.last().unwrap().reason, "budget");
        assert_eq!(r.gaps.last().unwrap().start, hex(start + 5000));
        // SAFETY: unmapping what this test mapped.
        unsafe { libc::munmap(base, len) };
    }
}
