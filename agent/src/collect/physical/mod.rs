//! The `physical_memory` artifacts (`--physical-memory`): the host's
//! physical memory as one LiME file (`physical_memory.lime.gz`), one LiME
//! header per physical range, plus the `physical_memory` index table (one
//! row per range: physical start/end, where its header sits in the LiME
//! file, SHA-256 of its bytes, pages that could not be read).
//!
//! The source is `/proc/kcore` (clipped to the "System RAM" ranges of
//! `/proc/iomem` when the kernel shows them), else `/dev/crash`, else the
//! capture records that the host has none and goes on. The bytes stream
//! through a fixed buffer into the hashed gzip pipeline; nothing is held
//! whole. Pages that fail to read are written as zeros (a LiME range must
//! hold exactly its declared length) and listed in the index row.

pub mod iomem;
pub mod lime;
pub mod refusal;
pub mod source;

use std::path::Path;

use ircap_proto::manifest::CaptureError;
use ircap_proto::{ArtifactEntry, ArtifactName};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::memory_regions::reader::{Gap, PAGE, hex};
use super::{Context, Roots};
use crate::artifact::{ArtifactStream, JsonlWriter, Store};
use crate::sink::SinkError;
use source::{FileSource, PhysRange, PhysicalSource, SourceError};

/// Size of each read from the source.
const READ_SIZE: usize = 1 << 20;
/// MIME type of the LiME file.
pub const LIME: &str = "application/x-lime";

/// One row of `physical_memory.jsonl.gz`.
#[derive(Debug, Serialize)]
pub struct RangeRecord {
    /// Where the bytes came from.
    pub source: String,
    /// First physical address, hex.
    pub start: String,
    /// Last physical address (inclusive, as in the LiME header), hex.
    pub end_inclusive: String,
    /// Bytes in the range.
    pub size: u64,
    /// Offset of this range's LiME header in the LiME file.
    pub lime_header_offset: u64,
    /// SHA-256 of the range's bytes as written.
    pub sha256: String,
    /// Physical ranges that could not be read (written as zeros).
    pub unreadable: Vec<Gap>,
    /// The `/proc/iomem` System RAM range this range was cut from, as the
    /// kernel lists it (`None` when the source's ranges were taken as
    /// they are).
    pub system_ram: Option<SystemRam>,
    /// Parts of that System RAM range the source does not hold, so they
    /// are in no LiME range (on the first row of the System RAM range):
    /// `/proc/kcore` maps RAM by whole pages, so a range ending inside a
    /// page loses its tail (0x9f000-0x9fc00 on a typical PC).
    pub not_in_source: Vec<Gap>,
}

/// A System RAM range as `/proc/iomem` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SystemRam {
    /// First physical address, hex.
    pub start: String,
    /// Last physical address (inclusive), hex.
    pub end_inclusive: String,
}

/// Why a part of a System RAM range is in no LiME range.
const NOT_IN_SOURCE: &str = "not in the source (kcore maps RAM by whole pages): not captured";

/// Where a crash-style device (physical addresses as file positions) is
/// looked for.
pub const CRASH_DEVICE: &str = "/dev/crash";

/// The "System RAM" ranges of `<proc>/iomem`; `None` when unreadable or
/// shown without addresses (not root).
#[must_use]
pub fn system_ram(roots: &Roots) -> Option<Vec<iomem::Range>> {
    iomem::parse_file(&roots.proc.join("iomem"))
}

/// Bytes of physical memory a full dump holds: the System RAM of
/// `/proc/iomem`, else `MemTotal` (a little less: the kernel's own
/// reservations are not counted in it).
#[must_use]
pub fn expected_bytes(roots: &Roots) -> Option<u64> {
    system_ram(roots)
        .map(|ram| ram.iter().map(|r| r.end - r.start).sum())
        .or_else(|| super::system::mem_total_bytes(&roots.proc))
}

/// Opens `<proc>/kcore`, clipped to `ram`. The error says why it cannot
/// be used, in the kernel's terms when [`refusal`] knows them.
///
/// # Errors
/// That sentence.
pub fn open_kcore(roots: &Roots, ram: Option<&[iomem::Range]>) -> Result<FileSource, String> {
    let kcore = roots.proc.join("kcore");
    FileSource::kcore(&kcore, ram).map_err(|e| explained(roots, &kcore, &e))
}

/// Opens [`CRASH_DEVICE`] over the RAM ranges `ram` (needed: the device
/// has no index of its own).
///
/// # Errors
/// Why it cannot be used.
pub fn open_crash(roots: &Roots, ram: Option<&[iomem::Range]>) -> Result<FileSource, String> {
    let crash = Path::new(CRASH_DEVICE);
    match ram {
        Some(ram) => FileSource::crash(crash, ram).map_err(|e| explained(roots, crash, &e)),
        None => Err(format!(
            "{}: not used, /proc/iomem shows no System RAM ranges",
            crash.display()
        )),
    }
}

/// Opens the source: `explicit` (an ELF core file, physical addresses
/// taken as they are) or the host's `/proc/kcore` then `/dev/crash`.
///
/// # Errors
/// A message saying why there is no source.
pub fn open_source(
    roots: &Roots,
    explicit: Option<&Path>,
) -> Result<Box<dyn PhysicalSource>, String> {
    if let Some(path) = explicit {
        return FileSource::kcore(path, None)
            .map(|s| Box::new(s) as Box<dyn PhysicalSource>)
            .map_err(|e| e.to_string());
    }
    let ram = system_ram(roots);
    let kcore_err = match open_kcore(roots, ram.as_deref()) {
        Ok(s) => return Ok(Box::new(s)),
        Err(e) => e,
    };
    let crash_err = match open_crash(roots, ram.as_deref()) {
        Ok(s) => return Ok(Box::new(s)),
        Err(e) => e,
    };
    Err(format!(
        "no physical memory source on this host ({kcore_err}; {crash_err})"
    ))
}

/// The error, followed by the kernel's reason when [`refusal`] knows it.
fn explained(roots: &Roots, path: &Path, err: &SourceError) -> String {
    let why = match err {
        SourceError::Io { source, .. } => {
            refusal::explain(roots, path, source.kind(), nix::unistd::geteuid().as_raw())
        }
        SourceError::Format { .. } => None,
    };
    match why {
        Some(why) => format!("{err}: {why}"),
        None => err.to_string(),
    }
}

/// Writes the LiME file and its index. A host without a source gets an
/// index with an error and a capture-level error; the capture goes on.
///
/// # Errors
/// [`SinkError`] when an artifact cannot be stored.
pub fn write(
    ctx: &Context<'_>,
    capture_errors: &mut Vec<CaptureError>,
) -> Result<Vec<ArtifactEntry>, SinkError> {
    let mut index = JsonlWriter::open(ctx.sink, "physical_memory", "physical_memory")?;
    let source = match open_source(ctx.roots, ctx.options.physical_memory_source.as_deref()) {
        Ok(s) => s,
        Err(why) => {
            tracing::warn!("Physical memory not captured: {why}");
            index.error(why.clone());
            capture_errors.push(CaptureError {
                source: "physical_memory".into(),
                message: why,
            });
            return Ok(vec![index.finish()?]);
        }
    };
    if source.ranges().is_empty() {
        let why = format!("{}: holds no physical memory ranges", source.describe());
        index.error(why.clone());
        capture_errors.push(CaptureError {
            source: "physical_memory".into(),
            message: why,
        });
        return Ok(vec![index.finish()?]);
    }
    let name = ArtifactName::parse("physical_memory.lime.gz")
        .map_err(|e| SinkError::io("physical memory artifact name", std::io::Error::other(e)))?;
    let mut lime_out =
        ArtifactStream::open(ctx.sink, name, "physical_memory", LIME, Store::Gzip(1))?;
    let describe = source.describe();
    tracing::info!(
        source = describe,
        ranges = source.ranges().len(),
        "Dumping physical memory"
    );
    let asked = source.asked();
    let missing = source::uncovered(asked, source.ranges());
    let asked_of = |addr: u64| asked.iter().position(|r| r.start <= addr && addr < r.end);
    // System RAM the source holds nothing of: no row will carry it.
    for m in &missing {
        let holds_some = asked_of(m.start)
            .is_some_and(|i| source.ranges().iter().any(|r| asked_of(r.start) == Some(i)));
        if !holds_some {
            index.error(format!(
                "System RAM {}..{} {NOT_IN_SOURCE}",
                hex(m.start),
                hex(m.end)
            ));
        }
    }
    let mut described: Option<usize> = None;
    let mut left = ctx.options.physical_memory_budget.unwrap_or(u64::MAX);
    let mut buf = vec![0u8; READ_SIZE];
    for range in source.ranges() {
        if left == 0 {
            index.error(format!(
                "--physical-memory-budget spent: ranges from {} on not captured",
                hex(range.start)
            ));
            break;
        }
        let range = PhysRange {
            len: range.len.min(left),
            ..*range
        };
        let header_offset = lime_out.content_bytes();
        lime_out.write_all(&lime::header(range.start, range.len))?;
        let (sha256, unreadable) = copy_range(source.as_ref(), &range, &mut buf, &mut lime_out)?;
        left -= range.len;
        if !unreadable.is_empty() {
            index.error(format!(
                "{} unreadable range(s) in {}..{} written as zeros",
                unreadable.len(),
                hex(range.start),
                hex(range.start + range.len)
            ));
        }
        let ram = asked_of(range.start);
        let first_of_ram = ram.is_some() && ram != described;
        described = ram.or(described);
        let not_in_source = if first_of_ram {
            missing
                .iter()
                .filter(|m| asked_of(m.start) == ram)
                .map(|m| Gap::new(m.start, m.end, NOT_IN_SOURCE))
                .collect()
        } else {
            Vec::new()
        };
        index.write(&RangeRecord {
            source: describe.clone(),
            start: hex(range.start),
            end_inclusive: hex(range.start + range.len - 1),
            size: range.len,
            lime_header_offset: header_offset,
            sha256,
            unreadable,
            system_ram: ram.and_then(|i| asked.get(i)).map(|r| SystemRam {
                start: hex(r.start),
                end_inclusive: hex(r.end - 1),
            }),
            not_in_source,
        })?;
    }
    let lime_entry = lime_out.finish(None)?;
    Ok(vec![lime_entry, index.finish()?])
}

/// Streams one range; failed reads become zero pages and [`Gap`]s.
fn copy_range(
    source: &dyn PhysicalSource,
    range: &PhysRange,
    buf: &mut [u8],
    out: &mut ArtifactStream,
) -> Result<(String, Vec<Gap>), SinkError> {
    let mut hasher = Sha256::new();
    let mut gaps: Vec<(u64, u64)> = Vec::new();
    let mut done = 0u64;
    while done < range.len {
        let want = usize::try_from(range.len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let Some(chunk) = buf.get_mut(..want) else {
            break;
        };
        let got = match source.read_at(chunk, range.position + done) {
            Ok(n) if n > 0 => n,
            Ok(_) | Err(_) => {
                // Zero-fill up to the next page boundary and go on.
                let phys = range.start + done;
                let next = ((phys / PAGE) + 1) * PAGE;
                let n = (next - phys).min(range.len - done);
                let zeros = chunk
                    .get_mut(..usize::try_from(n).unwrap_or(0))
                    .unwrap_or_default();
                zeros.fill(0);
                match gaps.last_mut() {
                    Some((_, end)) if *end == phys => *end = phys + n,
                    _ => gaps.push((phys, phys + n)),
                }
                zeros.len()
            }
        };
        let bytes = chunk.get(..got).unwrap_or_default();
        hasher.update(bytes);
        out.write_all(bytes)?;
        done += got as u64;
    }
    let gaps = gaps
        .into_iter()
        .map(|(start, end)| Gap::new(start, end, "unreadable, written as zeros"))
        .collect();
    Ok((ircap_proto::hashing::to_hex(&hasher.finalize()), gaps))
}
