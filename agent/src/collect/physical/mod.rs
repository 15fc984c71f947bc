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

use super::Context;
use super::memory_regions::reader::{Gap, PAGE, hex};
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
}

/// Opens the source: `explicit` (an ELF core file, physical addresses
/// taken as they are) or the host's `/proc/kcore` then `/dev/crash`.
///
/// # Errors
/// A message saying why there is no source.
pub fn open_source(
    ctx: &Context<'_>,
    explicit: Option<&Path>,
) -> Result<Box<dyn PhysicalSource>, String> {
    if let Some(path) = explicit {
        return FileSource::kcore(path, None)
            .map(|s| Box::new(s) as Box<dyn PhysicalSource>)
            .map_err(|e| e.to_string());
    }
    let ram = iomem::parse_file(&ctx.roots.proc.join("iomem"));
    let kcore = ctx.roots.proc.join("kcore");
    let kcore_err = match FileSource::kcore(&kcore, ram.as_deref()) {
        Ok(s) => return Ok(Box::new(s)),
        Err(e) => explained(ctx, &kcore, &e),
    };
    let crash = Path::new("/dev/crash");
    let crash_err = match &ram {
        Some(ram) => match FileSource::crash(crash, ram) {
            Ok(s) => return Ok(Box::new(s)),
            Err(e) => explained(ctx, crash, &e),
        },
        None => format!(
            "{}: not used, /proc/iomem shows no System RAM ranges",
            crash.display()
        ),
    };
    Err(format!(
        "no physical memory source on this host ({kcore_err}; {crash_err})"
    ))
}

/// The error, followed by the kernel's reason when [`refusal`] knows it.
fn explained(ctx: &Context<'_>, path: &Path, err: &SourceError) -> String {
    let why = match err {
        SourceError::Io { source, .. } => refusal::explain(
            ctx.roots,
            path,
            source.kind(),
            nix::unistd::geteuid().as_raw(),
        ),
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
    let source = match open_source(ctx, ctx.options.physical_memory_source.as_deref()) {
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
        index.write(&RangeRecord {
            source: describe.clone(),
            start: hex(range.start),
            end_inclusive: hex(range.start + range.len - 1),
            size: range.len,
            lime_header_offset: header_offset,
            sha256,
            unreadable,
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
