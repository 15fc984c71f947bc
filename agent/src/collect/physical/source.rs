//! Where physical memory is read from.
//!
//! A [`PhysicalSource`] says which physical ranges it holds and reads them
//! by position. Two exist: an ELF core in the `/proc/kcore` format
//! ([`FileSource::kcore`]: `PT_LOAD` segments whose `p_paddr` is the physical
//! address) and a device addressed by physical address such as
//! `/dev/crash` ([`FileSource::crash`], ranges from `/proc/iomem`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::iomem::Range;

/// Why a source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An I/O error, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not an ELF core file we can read.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// One physical range of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysRange {
    /// First physical address.
    pub start: u64,
    /// Length in bytes (never 0).
    pub len: u64,
    /// Position of `start` in the source (what [`PhysicalSource::read_at`]
    /// takes).
    pub position: u64,
}

/// A readable image of physical memory.
pub trait PhysicalSource {
    /// A short description (path and kind) for the index.
    fn describe(&self) -> String;
    /// Ranges in increasing physical order, never overlapping.
    fn ranges(&self) -> &[PhysRange];
    /// Reads at `position` (see [`PhysRange::position`]).
    ///
    /// # Errors
    /// The I/O error of the read.
    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<usize>;
    /// The RAM ranges the ranges were cut from (`/proc/iomem` System RAM),
    /// empty when the source's own ranges were taken as they are.
    fn asked(&self) -> &[Range] {
        &[]
    }
}

/// The parts of `asked` that no range of `got` holds, in order: what a
/// dump asked for and the source did not have (`/proc/kcore` maps RAM by
/// whole pages, so a System RAM range ending inside a page loses its
/// tail).
#[must_use]
pub fn uncovered(asked: &[Range], got: &[PhysRange]) -> Vec<Range> {
    let mut out = Vec::new();
    for a in asked {
        let mut at = a.start;
        for g in got {
            let (gs, ge) = (g.start, g.start.saturating_add(g.len));
            if ge <= at || gs >= a.end {
                continue;
            }
            if gs > at {
                out.push(Range { start: at, end: gs });
            }
            at = at.max(ge);
        }
        if at < a.end {
            out.push(Range {
                start: at,
                end: a.end,
            });
        }
    }
    out
}

/// A `PT_LOAD` segment of an ELF core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// `p_offset`.
    pub offset: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_paddr` (`u64::MAX` when the kernel has none: vmalloc, modules).
    pub paddr: u64,
    /// `p_filesz`.
    pub filesz: u64,
}

const PT_LOAD: u32 = 1;
const PN_XNUM: u16 = 0xffff;

/// The `PT_LOAD` segments of a 64-bit little-endian ELF file.
///
/// # Errors
/// [`SourceError`] when the file is not one or cannot be read.
pub fn load_segments(file: &File, path: &Path) -> Result<Vec<Segment>, SourceError> {
    let io = |source| SourceError::Io {
        path: path.to_owned(),
        source,
    };
    let format = |why: &str| SourceError::Format {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let mut ehdr = [0u8; 64];
    file.read_exact_at(&mut ehdr, 0).map_err(io)?;
    if ehdr.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(format("not an ELF file"));
    }
    if ehdr.get(4) != Some(&2) || ehdr.get(5) != Some(&1) {
        return Err(format("not a 64-bit little-endian ELF file"));
    }
    let phoff = le64(&ehdr, 0x20).ok_or_else(|| format("short header"))?;
    let phentsize = le16(&ehdr, 0x36).ok_or_else(|| format("short header"))?;
    let phnum = le16(&ehdr, 0x38).ok_or_else(|| format("short header"))?;
    if phnum == PN_XNUM {
        return Err(format(
            "more than 65534 program headers (PN_XNUM) is not supported",
        ));
    }
    if phentsize < 56 {
        return Err(format("program header entries are too small"));
    }
    let mut segments = Vec::new();
    let mut ph = vec![0u8; usize::from(phentsize)];
    for i in 0..u64::from(phnum) {
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .ok_or_else(|| format("program header offset overflows"))?;
        file.read_exact_at(&mut ph, at).map_err(io)?;
        let field = |o| le64(&ph, o).ok_or_else(|| format("short program header"));
        if le32(&ph, 0) != Some(PT_LOAD) {
            continue;
        }
        segments.push(Segment {
            offset: field(8)?,
            vaddr: field(16)?,
            paddr: field(24)?,
            filesz: field(32)?,
        });
    }
    Ok(segments)
}

fn le16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Physical ranges from `PT_LOAD` segments: segments without a physical
/// address are dropped; with `ram`, each segment is clipped to those
/// ranges (so device memory is never read); overlaps (kcore maps the
/// kernel text twice: in the text mapping and in the direct map) are kept
/// once, the first segment by physical address winning.
#[must_use]
pub fn physical_ranges(segments: &[Segment], ram: Option<&[Range]>) -> Vec<PhysRange> {
    let mut pieces: Vec<PhysRange> = Vec::new();
    for s in segments {
        if s.paddr == u64::MAX || s.filesz == 0 {
            continue;
        }
        let end = s.paddr.saturating_add(s.filesz);
        let clip = |lo: u64, hi: u64| {
            let lo = lo.max(s.paddr);
            let hi = hi.min(end);
            (hi > lo).then(|| PhysRange {
                start: lo,
                len: hi - lo,
                position: s.offset + (lo - s.paddr),
            })
        };
        match ram {
            Some(ram) => pieces.extend(ram.iter().filter_map(|r| clip(r.start, r.end))),
            None => pieces.extend(clip(s.paddr, end)),
        }
    }
    pieces.sort_by_key(|p| (p.start, std::cmp::Reverse(p.len)));
    let mut out: Vec<PhysRange> = Vec::with_capacity(pieces.len());
    let mut covered = 0u64;
    for mut p in pieces {
        let end = p.start + p.len;
        if !out.is_empty() && end <= covered {
            continue;
        }
        if !out.is_empty() && p.start < covered {
            let cut = covered - p.start;
            p.start += cut;
            p.position += cut;
            p.len -= cut;
        }
        covered = end;
        out.push(p);
    }
    out
}

/// A file or device read with `pread`: an ELF core in the `/proc/kcore`
/// format ([`FileSource::kcore`]) or a device addressed by physical
/// address such as `/dev/crash` ([`FileSource::crash`]).
pub struct FileSource {
    file: File,
    path: PathBuf,
    kind: &'static str,
    ranges: Vec<PhysRange>,
    asked: Vec<Range>,
}

fn open_file(path: &Path) -> Result<File, SourceError> {
    File::open(path).map_err(|source| SourceError::Io {
        path: path.to_owned(),
        source,
    })
}

impl FileSource {
    /// An ELF core in the kcore format; `ram` (from `/proc/iomem`) clips
    /// its segments to RAM.
    ///
    /// # Errors
    /// [`SourceError`] when it cannot be opened or parsed.
    pub fn kcore(path: &Path, ram: Option<&[Range]>) -> Result<Self, SourceError> {
        let file = open_file(path)?;
        let segments = load_segments(&file, path)?;
        Ok(Self {
            ranges: physical_ranges(&segments, ram),
            file,
            path: path.to_owned(),
            kind: "ELF core, kcore format",
            asked: ram.map(<[Range]>::to_vec).unwrap_or_default(),
        })
    }

    /// A device read at physical addresses, over the RAM ranges `ram`.
    ///
    /// # Errors
    /// [`SourceError`] when it cannot be opened.
    pub fn crash(path: &Path, ram: &[Range]) -> Result<Self, SourceError> {
        Ok(Self {
            file: open_file(path)?,
            path: path.to_owned(),
            kind: "physical address device",
            ranges: ram
                .iter()
                .filter(|r| r.end > r.start)
                .map(|r| PhysRange {
                    start: r.start,
                    len: r.end - r.start,
                    position: r.start,
                })
                .collect(),
            asked: ram.to_vec(),
        })
    }
}

impl PhysicalSource for FileSource {
    fn describe(&self) -> String {
        format!("{} ({})", self.path.display(), self.kind)
    }
    fn ranges(&self) -> &[PhysRange] {
        &self.ranges
    }
    fn read_at(&self, buf: &mut [u8], position: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, position)
    }
    fn asked(&self) -> &[Range] {
        &self.asked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(paddr: u64, filesz: u64, offset: u64) -> Segment {
        Segment {
            offset,
            vaddr: 0xffff_8880_0000_0000u64.wrapping_add(paddr),
            paddr,
            filesz,
        }
    }

    #[test]
    fn ranges_drop_unmapped_dedupe_and_clip() {
        let segments = [
            seg(0x10_0000, 0x10_0000, 0x1000), // direct map 1..2 MiB
            seg(u64::MAX, 0x5000, 0x20_0000),  // vmalloc: no paddr
            seg(0x10_8000, 0x2000, 0x30_0000), // kernel text, inside the above
            seg(0x1000, 0x9000, 0x40_0000),    // low RAM
            seg(0x1f_f000, 0x2000, 0x50_0000), // overlaps the end of the first
        ];
        let r = physical_ranges(&segments, None);
        assert_eq!(
            r,
            vec![
                PhysRange {
                    start: 0x1000,
                    len: 0x9000,
                    position: 0x40_0000
                },
                PhysRange {
                    start: 0x10_0000,
                    len: 0x10_0000,
                    position: 0x1000
                },
                PhysRange {
                    start: 0x20_0000,
                    len: 0x1000,
                    position: 0x50_1000
                },
            ]
        );
        let ram = [
            Range {
                start: 0x2000,
                end: 0x4000,
            },
            Range {
                start: 0x18_0000,
                end: 0x19_0000,
            },
        ];
        let r = physical_ranges(&segments, Some(&ram));
        assert_eq!(
            r,
            vec![
                PhysRange {
                    start: 0x2000,
                    len: 0x2000,
                    position: 0x40_1000
                },
                PhysRange {
                    start: 0x18_0000,
                    len: 0x1_0000,
                    position: 0x8_1000
                },
            ]
        );
    }

    #[test]
    fn uncovered_tails_and_holes() {
        let r = |start, end| Range { start, end };
        let p = |start, len| PhysRange {
            start,
            len,
            position: 0,
        };
        // 0x1000..0x9fc00 held as whole pages: the last 0xc00 bytes missing;
        // a second range with a hole in the middle and a third not held.
        let asked = [
            r(0x1000, 0x9_fc00),
            r(0x10_0000, 0x20_0000),
            r(0x30_0000, 0x30_1000),
        ];
        let got = [
            p(0x1000, 0x9_e000),
            p(0x10_0000, 0x8_0000),
            p(0x19_0000, 0x7_0000),
        ];
        assert_eq!(
            uncovered(&asked, &got),
            vec![
                r(0x9_f000, 0x9_fc00),
                r(0x18_0000, 0x19_0000),
                r(0x30_0000, 0x30_1000)
            ]
        );
        assert!(uncovered(&asked[..1], &[p(0, 0x10_0000)]).is_empty());
    }

    #[test]
    fn crash_source_reads_at_physical_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crash");
        let data: Vec<u8> = (0..0x3000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let src = FileSource::crash(
            &path,
            &[Range {
                start: 0x1000,
                end: 0x2000,
            }],
        )
        .unwrap();
        assert_eq!(
            src.ranges(),
            &[PhysRange {
                start: 0x1000,
                len: 0x1000,
                position: 0x1000
            }]
        );
        let mut buf = [0u8; 4];
        src.read_at(&mut buf, 0x1000).unwrap();
        assert_eq!(&buf, &data[0x1000..0x1004]);
    }

    #[test]
    fn not_elf_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let err = FileSource::kcore(&path, None).err().unwrap();
        assert!(err.to_string().contains("not an ELF file"), "{err}");
    }
}
