//! The `memory_regions` artifacts: the bytes of selected process memory
//! regions (`--memory-regions`), one artifact per process
//! (`memory/pid-<PID>.bin.gz`), plus the `memory_regions` index table.
//!
//! Each index row is one region as `/proc/PID/maps` showed it when its
//! process was dumped (the same fields and flags as the `memory_maps`
//! table), plus where its bytes are: `extents` (virtual range -> offset in
//! the process's artifact), `gaps` (virtual ranges not stored, with the
//! reason), `bytes_stored` and the SHA-256 of the stored bytes as read.
//! Gaps are left out of the bytes artifact, never zero-filled.
//!
//! The bytes are read with `pread` on `/proc/PID/mem` into one fixed
//! buffer ([`READ_SIZE`]) and go straight into the hashed gzip stream, so
//! memory use does not grow with what is dumped. Regions mapped without
//! read permission (guard pages, `PROT_NONE` reservations) are recorded as
//! one `no read permission` gap and not read: reading them through
//! `/proc/PID/mem` would fault in pages of reservations that can be
//! terabytes long.

pub mod reader;

use std::fs::File;

use ircap_proto::{ArtifactEntry, ArtifactName};
use serde::Serialize;

use super::Context;
use super::memory_maps::{self, Region};
use crate::artifact::{ArtifactStream, JsonlWriter, Store};
use crate::options::MemorySelector;
use crate::sink::SinkError;
use reader::{ByteSink, Extent, Gap};

/// Most selected regions dumped per process (each is kept in memory
/// while its process is dumped).
pub const MAX_SELECTED: usize = 16_384;
/// Size of each read from `/proc/PID/mem`.
pub const READ_SIZE: usize = 1 << 20;
/// MIME type of raw memory bytes.
pub const OCTETS: &str = "application/octet-stream";

/// One row of `memory_regions.jsonl.gz`.
#[derive(Debug, Serialize)]
pub struct RegionRecord {
    /// The region as `/proc/PID/maps` showed it.
    #[serde(flatten)]
    pub region: Region,
    /// The artifact holding this process's bytes (`None` when nothing of
    /// the process could be stored).
    pub artifact: Option<String>,
    /// Bytes of this region stored.
    pub bytes_stored: u64,
    /// SHA-256 of the bytes stored, in address order.
    pub sha256: Option<String>,
    /// Stored virtual ranges and where each starts in the artifact.
    pub extents: Vec<Extent>,
    /// Virtual ranges not stored, with the reason.
    pub gaps: Vec<Gap>,
}

/// Budgets left, in bytes.
struct Budget {
    total: u64,
    per_process: u64,
}

/// The pids to consider for `selector` among `pids` (never the agent).
fn candidate_pids(selector: &MemorySelector, pids: &[i32]) -> Vec<i32> {
    match selector {
        MemorySelector::Pids(wanted) => wanted.clone(),
        MemorySelector::Suspicious | MemorySelector::All => pids.to_vec(),
    }
}

/// Writes the bytes of the regions `selector` picks among the processes
/// `pids` (and the index table), at most `max_processes` artifacts of
/// process bytes: what the capture's artifact limit leaves (a process past
/// it is named in the index and the capture is partial).
///
/// # Errors
/// [`SinkError`] when an artifact cannot be stored; anything the host
/// refuses is recorded in the index table's errors.
pub fn write(
    ctx: &Context<'_>,
    selector: &MemorySelector,
    pids: &[i32],
    max_processes: usize,
) -> Result<Vec<ArtifactEntry>, SinkError> {
    let mut index = JsonlWriter::open(ctx.sink, "memory_regions", "memory_regions")?;
    let mut entries = Vec::new();
    let mut budget = Budget {
        total: ctx.options.memory_budget,
        per_process: ctx.options.memory_process_budget,
    };
    let mut buf = vec![0u8; READ_SIZE];
    let mut past_limit = 0usize;
    for pid in candidate_pids(selector, pids) {
        // Any of the agent's threads, not only its main pid.
        if super::own_task::is_agent(&ctx.roots.proc, pid) {
            if matches!(selector, MemorySelector::Pids(_)) {
                index.error(format!("pid {pid}: is the agent itself, not dumped"));
            }
            continue;
        }
        if budget.total == 0 {
            index.error(format!("pid {pid}: not dumped, --memory-budget spent"));
            continue;
        }
        if entries.len() >= max_processes {
            past_limit += 1;
            index.error(format!(
                "pid {pid}: not dumped, the capture's artifact limit leaves room for {max_processes} processes' memory"
            ));
            continue;
        }
        if let Some(entry) = dump_process(ctx, selector, pid, &mut budget, &mut buf, &mut index)? {
            entries.push(entry);
        }
    }
    if past_limit > 0 {
        ctx.dropped.push(
            "memory_regions",
            format!(
                "{past_limit} processes not dumped: the capture's artifact limit leaves room for {max_processes} processes' memory (each is named in the memory_regions errors)"
            ),
        );
    }
    entries.push(index.finish()?);
    Ok(entries)
}

/// The process name for index rows (empty when it is gone).
pub(crate) fn comm(ctx: &Context<'_>, pid: i32) -> String {
    let path = ctx.roots.proc.join(pid.to_string()).join("comm");
    super::fsread::read_small(&path)
        .map(|b| String::from_utf8_lossy(&b).trim_end().to_owned())
        .unwrap_or_default()
}

/// Counts the bytes going into a process's artifact.
pub(crate) struct Counted<'a>(pub(crate) &'a mut ArtifactStream);

impl ByteSink for Counted<'_> {
    fn offset(&self) -> u64 {
        self.0.content_bytes()
    }
    fn put(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        self.0.write_all(bytes)
    }
}

fn dump_process(
    ctx: &Context<'_>,
    selector: &MemorySelector,
    pid: i32,
    budget: &mut Budget,
    buf: &mut [u8],
    index: &mut JsonlWriter,
) -> Result<Option<ArtifactEntry>, SinkError> {
    let comm = comm(ctx, pid);
    // Only the selected regions are kept, and at most MAX_SELECTED.
    let mut selected: Vec<Region> = Vec::new();
    let mut over = 0u64;
    let streamed = memory_maps::stream_maps(ctx, pid, &comm, |r| {
        if selector.wants(&r) {
            if selected.len() < MAX_SELECTED {
                selected.push(r);
            } else {
                over += 1;
            }
        }
        Ok::<(), std::convert::Infallible>(())
    });
    let parse_errors = match streamed {
        Ok(Ok(errors)) => errors,
        Ok(Err(never)) => match never {},
        Err(e) if e.is_gone() => {
            index.error(format!("pid {pid}: exited before its memory could be read"));
            return Ok(None);
        }
        Err(e) => {
            index.error(format!("pid {pid}: {e}"));
            return Ok(None);
        }
    };
    for e in parse_errors {
        index.error(e);
    }
    if over > 0 {
        index.error(format!(
            "pid {pid}: {over} more selected regions than the {MAX_SELECTED} dumped per process; not dumped"
        ));
    }
    if selected.is_empty() {
        return Ok(None);
    }
    let mem_path = ctx.roots.proc.join(pid.to_string()).join("mem");
    let mem = match File::open(&mem_path) {
        Ok(f) => f,
        Err(e) => {
            index.error(format!(
                "pid {pid}: cannot open {}: {e}",
                mem_path.display()
            ));
            for region in selected {
                let (start, end) = region.bounds();
                let gap = Gap::new(start, end, format!("unreadable: {e}"));
                index.write(&record(region, None, Vec::new(), vec![gap], 0, None))?;
            }
            return Ok(None);
        }
    };
    let name = format!("memory/pid-{pid}.bin.gz");
    let artifact = ArtifactName::parse(&name)
        .map_err(|e| SinkError::io(format!("artifact name {name}"), std::io::Error::other(e)))?;
    let mut stream =
        ArtifactStream::open(ctx.sink, artifact, "memory_regions", OCTETS, Store::Gzip(1))?;
    tracing::info!(
        pid,
        comm,
        regions = selected.len(),
        "Dumping process memory"
    );
    let mut process_left = budget.per_process;
    let mut exited = false;
    for region in selected {
        let (start, end) = region.bounds();
        let limit = process_left.min(budget.total);
        let (stored, sha, extents, gaps) = if exited {
            (
                0,
                None,
                Vec::new(),
                vec![Gap::new(start, end, "process exited")],
            )
        } else if region.perms.as_bytes().first() != Some(&b'r') {
            (
                0,
                None,
                Vec::new(),
                vec![Gap::new(start, end, "no read permission")],
            )
        } else {
            let got = reader::read_region(&mem, start, end, limit, buf, &mut Counted(&mut stream))?;
            exited = got.exited;
            (got.stored, Some(got.sha256), got.extents, got.gaps)
        };
        process_left = process_left.saturating_sub(stored);
        budget.total = budget.total.saturating_sub(stored);
        index.write(&record(
            region,
            Some(name.clone()),
            extents,
            gaps,
            stored,
            sha,
        ))?;
    }
    if exited {
        stream
            .errors
            .push(format!("pid {pid}: exited while its memory was being read"));
        index.error(format!("pid {pid}: exited while its memory was being read"));
    }
    let entry = stream.finish(None)?;
    tracing::debug!(
        pid,
        bytes = entry.size_uncompressed,
        "Dumped process memory"
    );
    Ok(Some(entry))
}

fn record(
    region: Region,
    artifact: Option<String>,
    extents: Vec<Extent>,
    gaps: Vec<Gap>,
    bytes_stored: u64,
    sha256: Option<String>,
) -> RegionRecord {
    RegionRecord {
        region,
        artifact,
        bytes_stored,
        sha256,
        extents,
        gaps,
    }
}
