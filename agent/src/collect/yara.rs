//! The `yara_matches` table: YARA rules (`--yara`, or a request's rules)
//! run over the memory of every process (or the `--memory-regions`
//! selection) and over the regular files under the volatile directories.
//!
//! One row per rule matched in one memory region or one file: the rule's
//! name, namespace, tags and metadata; the pid and process name and the
//! region (addresses, permissions, path), or the file's path; the SHA-256
//! of the bytes scanned; each matched string with its offset in the region
//! (and virtual address) or file, its length and a hex excerpt of at most
//! [`EXCERPT`] bytes. With `--yara-dump` the matching regions' bytes are
//! also stored (`memory/yara-pid-<PID>.bin.gz`, extents as in the
//! `memory_regions` index), within `--memory-budget`.
//!
//! Memory stays bounded: a region is read through `/proc/PID/mem` with
//! the same reader as `memory_regions` (unreadable pages are skipped) and
//! scanned in chunks of [`CHUNK`] bytes, each overlapping the previous by
//! [`OVERLAP`] bytes so a string of up to that length across a chunk
//! boundary is still found once. Each chunk is evaluated on its own: a
//! condition over strings more than a chunk apart, `filesize` or
//! `uint32(0)` see the chunk, not the region (YARA's own process scan
//! evaluates per region and has the same kind of limit across regions).
//!
//! Budgets: bytes scanned in all (`--yara-max-bytes`), bytes of one region
//! or file (`--yara-region-max`), and the CPU time of the scanning thread
//! (`--yara-cpu-budget`, also the engine's timeout of each chunk), on top
//! of the agent's lowered priority. A budget that cuts the scan short is
//! recorded (the table's errors and the manifest's: the capture is
//! partial), never silent; a region longer than `--yara-region-max` is
//! scanned in part and its row says `truncated`.
//!
//! Never scanned: the agent itself (any of its threads; the compiled rules
//! are in its memory and would match themselves), the rules file, and the
//! capture's own output directory.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Duration;

use ircap_proto::yara::boreal;
use ircap_proto::{ArtifactEntry, ArtifactName};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::Context;
use super::memory_maps::{self, Region};
use super::memory_regions::reader::{self, ByteSink, Extent};
use super::memory_regions::{Counted, OCTETS, READ_SIZE};
use super::volatile_files;
use crate::artifact::{ArtifactStream, JsonlWriter, Store};
use crate::options::{MemorySelector, YaraOptions};
use crate::sink::SinkError;

/// Bytes scanned at once.
pub const CHUNK: usize = 16 << 20;
/// Bytes each chunk repeats of the one before.
pub const OVERLAP: usize = 64 << 10;
/// Matched bytes kept as a hex excerpt.
pub const EXCERPT: usize = 32;
/// Matched strings listed per row (the rest are counted).
pub const MAX_STRINGS_PER_ROW: usize = 64;
/// Rows written in all (the rest are counted in the table's errors).
pub const MAX_ROWS: u64 = 100_000;
/// Regions of one process scanned at most.
pub const MAX_REGIONS: usize = 16_384;
/// Files scanned at most.
pub const MAX_FILES: usize = 100_000;

/// One matched string.
#[derive(Debug, Clone, Serialize)]
pub struct StringHit {
    /// The string's identifier (`$a`).
    pub id: String,
    /// Offset in the region (from its start address) or in the file.
    pub offset: u64,
    /// Virtual address, hex (memory only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Length of the match.
    pub length: u64,
    /// The first matched bytes (at most [`EXCERPT`]), hex.
    pub excerpt_hex: String,
    /// The xor key of a `xor` string's match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xor_key: Option<u8>,
}

/// The region a memory row is about.
#[derive(Debug, Clone, Serialize)]
pub struct RegionRef {
    /// Start address, hex.
    pub start: String,
    /// End address (exclusive), hex.
    pub end: String,
    /// `rwxp` flags.
    pub perms: String,
    /// Backing path or pseudo-name.
    pub path: Option<String>,
}

/// Where a matching region's bytes were stored (`--yara-dump`).
#[derive(Debug, Clone, Serialize)]
pub struct DumpRef {
    /// The artifact.
    pub artifact: String,
    /// Stored virtual ranges and their offsets in the artifact.
    pub extents: Vec<Extent>,
    /// SHA-256 of the stored bytes (read again for the dump: memory may
    /// have changed since the scan).
    pub sha256: String,
}

/// One row of `yara_matches.jsonl.gz`.
#[derive(Debug, Clone, Serialize)]
pub struct MatchRecord {
    /// Rule name.
    pub rule: String,
    /// Rule namespace.
    pub namespace: String,
    /// Rule tags.
    pub tags: Vec<String>,
    /// Rule metadata.
    pub meta: BTreeMap<String, serde_json::Value>,
    /// `memory` or `file`.
    pub target: &'static str,
    /// Process (memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Process name (memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// The region (memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<RegionRef>,
    /// The file (file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// SHA-256 of the bytes scanned of the region or file.
    pub sha256: String,
    /// Bytes scanned of the region or file.
    pub bytes_scanned: u64,
    /// The region or file was longer than what was scanned.
    pub truncated: bool,
    /// Matched strings (at most [`MAX_STRINGS_PER_ROW`]).
    pub strings: Vec<StringHit>,
    /// Matched strings not listed.
    pub strings_omitted: u64,
    /// The region's stored bytes (`--yara-dump`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dump: Option<DumpRef>,
}

/// What is left of the budgets, and why the scan stopped if it did.
struct Budget {
    bytes_left: u64,
    cpu_limit: Duration,
    cpu_start: Duration,
    stopped: Option<String>,
    truncated: u64,
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

impl Budget {
    fn cpu_used(&self) -> Duration {
        thread_cpu().saturating_sub(self.cpu_start)
    }

    fn cpu_left(&self) -> Duration {
        self.cpu_limit.saturating_sub(self.cpu_used())
    }

    fn stop(&mut self, why: String) {
        if self.stopped.is_none() {
            self.stopped = Some(why);
        }
    }
}

/// A rule matched in the bytes fed so far.
struct Hit {
    rule: String,
    namespace: String,
    tags: Vec<String>,
    meta: BTreeMap<String, serde_json::Value>,
    /// (string id, stream offset, length, excerpt, xor key)
    strings: Vec<(String, u64, u64, String, Option<u8>)>,
    omitted: u64,
}

/// Scans the bytes of one region or file as they arrive, [`CHUNK`] at a
/// time with [`OVERLAP`], hashing them.
struct ChunkScanner<'a> {
    scanner: &'a boreal::Scanner,
    budget: &'a mut Budget,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
    /// Bytes received.
    received: u64,
    /// Bytes in `buf` not yet scanned.
    fresh: bool,
    hasher: Sha256,
    hits: Vec<Hit>,
    seen: HashSet<(usize, String, u64)>,
}

/// Why `put` refused bytes: a budget stopped the scan.
fn budget_error() -> SinkError {
    SinkError::io("yara scan", std::io::Error::other("stopped by its budget"))
}

impl<'a> ChunkScanner<'a> {
    fn new(scanner: &'a boreal::Scanner, budget: &'a mut Budget) -> Self {
        Self {
            scanner,
            budget,
            buf: Vec::new(),
            buf_start: 0,
            received: 0,
            fresh: false,
            hasher: Sha256::new(),
            hits: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Scans `buf`; false when a budget stopped it.
    fn scan(&mut self) -> bool {
        self.fresh = false;
        if self.budget.stopped.is_some() {
            return false;
        }
        let left = self.budget.cpu_left();
        if left.is_zero() {
            self.budget.stop(format!(
                "CPU budget of {:.3}s spent",
                self.budget.cpu_limit.as_secs_f64()
            ));
            return false;
        }
        let mut scanner = self.scanner.clone();
        scanner.set_scan_params(
            boreal::scanner::ScanParams::default()
                .compute_full_matches(true)
                .match_max_length(EXCERPT)
                .string_max_nb_matches(u32::try_from(MAX_STRINGS_PER_ROW).unwrap_or(64))
                .timeout_duration(Some(left)),
        );
        let (result, timed_out) = match scanner.scan_mem(&self.buf) {
            Ok(r) => (r, false),
            Err((err, r)) => (r, matches!(err, boreal::scanner::ScanError::Timeout)),
        };
        for rule in result.rules {
            let idx = match self
                .hits
                .iter()
                .position(|h| h.rule == rule.name && h.namespace == rule.namespace)
            {
                Some(i) => i,
                None => {
                    self.hits.push(Hit {
                        rule: rule.name.to_owned(),
                        namespace: rule.namespace.to_owned(),
                        tags: rule
                            .tags
                            .iter()
                            .map(|t| scanner.get_string_symbol(*t).to_owned())
                            .collect(),
                        meta: rule
                            .metadatas
                            .iter()
                            .map(|m| {
                                let value = match m.value {
                                    boreal::MetadataValue::Bytes(b) => serde_json::Value::from(
                                        String::from_utf8_lossy(scanner.get_bytes_symbol(b))
                                            .into_owned(),
                                    ),
                                    boreal::MetadataValue::Integer(i) => i.into(),
                                    boreal::MetadataValue::Boolean(b) => b.into(),
                                };
                                (scanner.get_string_symbol(m.name).to_owned(), value)
                            })
                            .collect(),
                        strings: Vec::new(),
                        omitted: 0,
                    });
                    self.hits.len() - 1
                }
            };
            let Some(hit) = self.hits.get_mut(idx) else {
                continue;
            };
            for s in rule.matches {
                for m in s.matches {
                    let at = self.buf_start + m.offset as u64;
                    if !self.seen.insert((idx, s.name.to_owned(), at)) {
                        continue;
                    }
                    if hit.strings.len() < MAX_STRINGS_PER_ROW {
                        let excerpt = m.data.get(..m.data.len().min(EXCERPT)).unwrap_or_default();
                        hit.strings.push((
                            format!("${}", s.name),
                            at,
                            m.length as u64,
                            ircap_proto::hashing::to_hex(excerpt),
                            s.has_xor_modifier.then_some(m.xor_key),
                        ));
                    } else {
                        hit.omitted += 1;
                    }
                }
            }
        }
        if timed_out {
            self.budget.stop(format!(
                "CPU budget of {:.3}s spent (a chunk's scan timed out)",
                self.budget.cpu_limit.as_secs_f64()
            ));
            return false;
        }
        true
    }

    /// Scans what is left; the hits and the SHA-256 of all bytes fed.
    fn finish(mut self) -> (Vec<Hit>, String, u64) {
        if self.fresh {
            self.scan();
        }
        let sha = ircap_proto::hashing::to_hex(&self.hasher.finalize());
        (self.hits, sha, self.received)
    }
}

impl ByteSink for ChunkScanner<'_> {
    fn offset(&self) -> u64 {
        self.received
    }

    fn put(&mut self, mut bytes: &[u8]) -> Result<(), SinkError> {
        if self.budget.stopped.is_some() {
            return Err(budget_error());
        }
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
        while !bytes.is_empty() {
            let room = CHUNK.saturating_sub(self.buf.len());
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            self.fresh = true;
            bytes = later;
            if self.buf.len() >= CHUNK {
                if !self.scan() {
                    return Err(budget_error());
                }
                let keep_from = self.buf.len() - OVERLAP;
                self.buf.drain(..keep_from);
                self.buf_start += keep_from as u64;
            }
        }
        Ok(())
    }
}

fn parse_hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
}

/// The virtual address of stream offset `at` through `extents`.
fn address_of(extents: &[Extent], at: u64) -> Option<u64> {
    extents.iter().find_map(|e| {
        let (start, end) = (parse_hex(&e.start), parse_hex(&e.end));
        let off = at.checked_sub(e.artifact_offset)?;
        (off < end - start).then_some(start + off)
    })
}

/// Writes the `yara_matches` table (and the dumps of matching regions, of
/// at most `max_dumps` processes: what the capture's artifact limit
/// leaves; a process past it keeps its rows, without bytes, and the
/// capture is partial).
///
/// # Errors
/// [`SinkError`] when an artifact cannot be stored.
pub fn write(
    ctx: &Context<'_>,
    yara: &YaraOptions,
    pids: &[i32],
    max_dumps: usize,
) -> Result<Vec<ArtifactEntry>, SinkError> {
    let began = std::time::Instant::now();
    let mut table = JsonlWriter::open(ctx.sink, "yara_matches", "yara_matches")?;
    let mut entries = Vec::new();
    let mut budget = Budget {
        bytes_left: yara.max_bytes,
        cpu_limit: yara.cpu_budget,
        cpu_start: thread_cpu(),
        stopped: None,
        truncated: 0,
    };
    let mut rows = Rows {
        written: 0,
        over: 0,
    };
    let mut dump_left = (ctx.options.memory_budget, ctx.options.memory_process_budget);
    let mut buf = vec![0u8; READ_SIZE];
    let candidates: Vec<i32> = match &ctx.options.memory_regions {
        Some(MemorySelector::Pids(wanted)) => wanted.clone(),
        _ => pids.to_vec(),
    };
    let mut not_scanned = 0u64;
    let mut not_dumped = 0usize;
    let mut processes = 0u64;
    for pid in candidates {
        if super::own_task::is_agent(&ctx.roots.proc, pid) {
            continue;
        }
        if budget.stopped.is_some() {
            not_scanned += 1;
            continue;
        }
        processes += 1;
        let found = scan_process(ctx, yara, pid, &mut budget, &mut buf, &mut table)?;
        if found.is_empty() {
            continue;
        }
        let found = if yara.dump && entries.len() < max_dumps {
            dump_regions(ctx, pid, found, &mut dump_left, &mut buf, &mut entries)?
        } else {
            if yara.dump {
                not_dumped += 1;
                table.error(format!(
                    "pid {pid}: matching regions not dumped, the capture's artifact limit leaves room for {max_dumps} processes' dumps"
                ));
            }
            found
        };
        for row in found {
            rows.write(&mut table, &row)?;
        }
    }
    if not_dumped > 0 {
        ctx.dropped.push(
            "yara_matches",
            format!(
                "{not_dumped} matching processes not dumped: the capture's artifact limit leaves room for {max_dumps} (their matches are in the table)"
            ),
        );
    }
    if not_scanned > 0 {
        table.error(format!(
            "{not_scanned} process(es) not scanned: {}",
            budget.stopped.clone().unwrap_or_default()
        ));
    }
    let files = scan_files(ctx, yara, &mut budget, &mut buf, &mut table, &mut rows)?;
    if rows.over > 0 {
        table.error(format!(
            "{} more matching rows than the {MAX_ROWS} written; not written",
            rows.over
        ));
    }
    // A region or file past --yara-region-max is scanned in part: said in
    // its row (`truncated`) and the table's errors. Hosts commonly have
    // such regions (heaps of JVMs and databases), so it does not make
    // every capture partial; a budget that leaves processes or files
    // unscanned does.
    if budget.truncated > 0 {
        table.error(format!(
            "{} region(s) or file(s) longer than --yara-region-max ({} bytes) scanned in part (rows say truncated)",
            budget.truncated, yara.region_max
        ));
    }
    let mut cuts = Vec::new();
    if let Some(why) = &budget.stopped {
        cuts.push(why.clone());
    }
    let used = budget.cpu_used();
    tracing::info!(
        processes,
        files,
        matches = rows.written,
        bytes = yara.max_bytes.saturating_sub(budget.bytes_left),
        cpu_ms = used.as_millis(),
        wall_ms = began.elapsed().as_millis(),
        "YARA scan done"
    );
    if !cuts.is_empty() {
        let message = format!("YARA scan cut: {}", cuts.join("; "));
        table.error(message.clone());
        ctx.dropped.push("yara_matches", message);
    }
    entries.push(table.finish()?);
    Ok(entries)
}

/// Rows written, bounded by [`MAX_ROWS`].
struct Rows {
    written: u64,
    over: u64,
}

impl Rows {
    fn write(&mut self, table: &mut JsonlWriter, row: &MatchRecord) -> Result<(), SinkError> {
        if self.written >= MAX_ROWS {
            self.over += 1;
            return Ok(());
        }
        self.written += 1;
        table.write(row)
    }
}

/// Scans the readable regions of `pid` (the `--memory-regions` selection
/// when there is one); one row per rule per matching region.
fn scan_process(
    ctx: &Context<'_>,
    yara: &YaraOptions,
    pid: i32,
    budget: &mut Budget,
    buf: &mut [u8],
    table: &mut JsonlWriter,
) -> Result<Vec<MatchRecord>, SinkError> {
    let comm = super::memory_regions::comm(ctx, pid);
    let mut regions: Vec<Region> = Vec::new();
    let selector = ctx.options.memory_regions.as_ref();
    let streamed = memory_maps::stream_maps(ctx, pid, &comm, |r| {
        if selector.is_none_or(|s| s.wants(&r))
            && r.perms.starts_with('r')
            && regions.len() < MAX_REGIONS
        {
            regions.push(r);
        }
        Ok::<(), std::convert::Infallible>(())
    });
    match streamed {
        Ok(Ok(_)) => {}
        Ok(Err(never)) => match never {},
        Err(e) if e.is_gone() => return Ok(Vec::new()),
        Err(e) => {
            table.error(format!("pid {pid}: {e}"));
            return Ok(Vec::new());
        }
    }
    if regions.is_empty() {
        return Ok(Vec::new());
    }
    let mem_path = ctx.roots.proc.join(pid.to_string()).join("mem");
    let mem = match File::open(&mem_path) {
        Ok(f) => f,
        Err(e) => {
            table.error(format!(
                "pid {pid}: cannot open {}: {e}",
                mem_path.display()
            ));
            return Ok(Vec::new());
        }
    };
    let mut rows = Vec::new();
    for region in regions {
        if budget.stopped.is_some() {
            break;
        }
        if budget.bytes_left == 0 {
            budget.stop(format!(
                "--yara-max-bytes of {} bytes scanned",
                yara.max_bytes
            ));
            break;
        }
        let (start, end) = region.bounds();
        let limit = yara.region_max.min(budget.bytes_left);
        let mut scan = ChunkScanner::new(&yara.rules.scanner, budget);
        let read = reader::read_region(&mem, start, end, limit, buf, &mut scan);
        let (hits, sha, scanned) = scan.finish();
        budget.bytes_left = budget.bytes_left.saturating_sub(scanned);
        let extents = match read {
            Ok(got) => {
                if got.gaps.iter().any(|g| g.reason == "budget") {
                    if limit == yara.region_max {
                        budget.truncated += 1;
                    } else {
                        budget.stop(format!(
                            "--yara-max-bytes of {} bytes scanned",
                            yara.max_bytes
                        ));
                    }
                }
                got.extents
            }
            // Only the budget refuses bytes; what was read is mapped by
            // the one extent that can be open: from the region's start.
            Err(_) if budget.stopped.is_some() => Vec::new(),
            Err(e) => return Err(e),
        };
        for hit in hits {
            let strings = hit
                .strings
                .into_iter()
                .map(|(id, at, length, excerpt_hex, xor_key)| {
                    let addr = if extents.is_empty() {
                        Some(start + at)
                    } else {
                        address_of(&extents, at)
                    };
                    StringHit {
                        id,
                        offset: addr.map_or(at, |a| a - start),
                        address: addr.map(reader::hex),
                        length,
                        excerpt_hex,
                        xor_key,
                    }
                })
                .collect();
            rows.push(MatchRecord {
                rule: hit.rule,
                namespace: hit.namespace,
                tags: hit.tags,
                meta: hit.meta,
                target: "memory",
                pid: Some(pid),
                process: Some(comm.clone()),
                region: Some(RegionRef {
                    start: region.start.clone(),
                    end: region.end.clone(),
                    perms: region.perms.clone(),
                    path: region.path.clone(),
                }),
                path: None,
                sha256: sha.clone(),
                bytes_scanned: scanned,
                truncated: scanned < region.size,
                strings,
                strings_omitted: hit.omitted,
                dump: None,
            });
        }
    }
    Ok(rows)
}

/// Stores the bytes of the regions `rows` matched in (each once) and
/// points the rows at them.
fn dump_regions(
    ctx: &Context<'_>,
    pid: i32,
    mut rows: Vec<MatchRecord>,
    left: &mut (u64, u64),
    buf: &mut [u8],
    entries: &mut Vec<ArtifactEntry>,
) -> Result<Vec<MatchRecord>, SinkError> {
    let name = format!("memory/yara-pid-{pid}.bin.gz");
    let artifact = ArtifactName::parse(&name)
        .map_err(|e| SinkError::io(format!("artifact name {name}"), std::io::Error::other(e)))?;
    let Ok(mem) = File::open(ctx.roots.proc.join(pid.to_string()).join("mem")) else {
        return Ok(rows);
    };
    let mut stream = ArtifactStream::open(ctx.sink, artifact, "yara_dump", OCTETS, Store::Gzip(1))?;
    let mut process_left = left.1;
    let mut done: BTreeMap<String, DumpRef> = BTreeMap::new();
    for row in &mut rows {
        let Some(region) = &row.region else { continue };
        if let Some(d) = done.get(&region.start) {
            row.dump = Some(d.clone());
            continue;
        }
        let limit = process_left.min(left.0);
        if limit == 0 {
            stream.errors.push(format!(
                "pid {pid}: region {} not dumped, --memory-budget spent",
                region.start
            ));
            continue;
        }
        let got = reader::read_region(
            &mem,
            parse_hex(&region.start),
            parse_hex(&region.end),
            limit,
            buf,
            &mut Counted(&mut stream),
        )?;
        process_left = process_left.saturating_sub(got.stored);
        left.0 = left.0.saturating_sub(got.stored);
        let d = DumpRef {
            artifact: name.clone(),
            extents: got.extents,
            sha256: got.sha256,
        };
        done.insert(region.start.clone(), d.clone());
        row.dump = Some(d);
    }
    entries.push(stream.finish(None)?);
    Ok(rows)
}

/// `major:minor` back to a device number.
fn parse_device(s: &str) -> Option<u64> {
    let (major, minor) = s.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Scans the regular files under the volatile directories (or
/// `--yara-dir`); returns how many were scanned.
fn scan_files(
    ctx: &Context<'_>,
    yara: &YaraOptions,
    budget: &mut Budget,
    buf: &mut [u8],
    table: &mut JsonlWriter,
    rows: &mut Rows,
) -> Result<u64, SinkError> {
    let dirs = if yara.dirs.is_empty() {
        volatile_files::host_dirs(ctx.roots)
    } else {
        yara.dirs.clone()
    };
    let limits = volatile_files::Limits {
        protected: ctx.options.protected.clone(),
        blocking: ctx.blocking.clone(),
        threads: ctx.threads,
        ..volatile_files::Limits::default()
    };
    let output = ctx.options.output.as_deref();
    let mut files: Vec<(PathBuf, u64, u64, u64)> = Vec::new();
    let mut over = 0u64;
    let _ = volatile_files::collect_dirs::<std::convert::Infallible>(
        &dirs,
        ctx.accounts,
        &limits,
        &mut |item| {
            match item {
                Ok(r) if r.file_type == "file" && r.size > 0 && r.path_b64.is_none() => {
                    let path = PathBuf::from(&r.path);
                    let own = output.is_some_and(|o| path.starts_with(o))
                        || parse_device(&r.device)
                            .is_some_and(|d| yara.exclude.contains(&(d, r.inode)));
                    if own {
                        return Ok(());
                    }
                    if files.len() < MAX_FILES {
                        if let Some(dev) = parse_device(&r.device) {
                            files.push((path, dev, r.inode, r.size));
                        }
                    } else {
                        over += 1;
                    }
                }
                Ok(_) => {}
                Err(message) => table.error(message),
            }
            Ok(())
        },
    );
    if over > 0 {
        table.error(format!(
            "{over} more files than the {MAX_FILES} scanned; not scanned"
        ));
    }
    let mut scanned = 0u64;
    let mut skipped = 0u64;
    for (path, dev, ino, size) in files {
        if budget.stopped.is_none() && budget.bytes_left == 0 {
            budget.stop(format!(
                "--yara-max-bytes of {} bytes scanned",
                yara.max_bytes
            ));
        }
        if budget.stopped.is_some() {
            skipped += 1;
            continue;
        }
        let file = match super::fsread::open_listed(&path, dev, ino, &ctx.options.protected) {
            Ok(f) => f,
            Err(e) => {
                if !e.is_gone() {
                    table.error(e.to_string());
                }
                continue;
            }
        };
        scanned += 1;
        let limit = size.min(yara.region_max).min(budget.bytes_left);
        let mut scan = ChunkScanner::new(&yara.rules.scanner, budget);
        let mut at = 0u64;
        let mut failed = None;
        while at < limit {
            let want = usize::try_from(limit - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let Some(chunk) = buf.get_mut(..want) else {
                break;
            };
            match file.read_at(chunk, at) {
                Ok(0) => break,
                Ok(n) => {
                    if scan.put(chunk.get(..n).unwrap_or_default()).is_err() {
                        break;
                    }
                    at += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let (hits, sha, got) = scan.finish();
        budget.bytes_left = budget.bytes_left.saturating_sub(got);
        if let Some(e) = failed {
            table.error(format!(
                "{}: read failed after {at} bytes: {e}",
                path.display()
            ));
        }
        if got < size && budget.stopped.is_none() {
            if limit == yara.region_max.min(size) && size > yara.region_max {
                budget.truncated += 1;
            } else if limit < size {
                budget.stop(format!(
                    "--yara-max-bytes of {} bytes scanned",
                    yara.max_bytes
                ));
            }
        }
        for hit in hits {
            rows.write(
                table,
                &MatchRecord {
                    rule: hit.rule,
                    namespace: hit.namespace,
                    tags: hit.tags,
                    meta: hit.meta,
                    target: "file",
                    pid: None,
                    process: None,
                    region: None,
                    path: Some(path.display().to_string()),
                    sha256: sha.clone(),
                    bytes_scanned: got,
                    truncated: got < size,
                    strings: hit
                        .strings
                        .into_iter()
                        .map(|(id, at, length, excerpt_hex, xor_key)| StringHit {
                            id,
                            offset: at,
                            address: None,
                            length,
                            excerpt_hex,
                            xor_key,
                        })
                        .collect(),
                    strings_omitted: hit.omitted,
                    dump: None,
                },
            )?;
        }
    }
    if skipped > 0 {
        table.error(format!(
            "{skipped} file(s) not scanned: {}",
            budget.stopped.clone().unwrap_or_default()
        ));
    }
    Ok(scanned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn budget() -> Budget {
        Budget {
            bytes_left: u64::MAX,
            cpu_limit: Duration::from_secs(60),
            cpu_start: thread_cpu(),
            stopped: None,
            truncated: 0,
        }
    }

    #[test]
    fn a_string_across_a_chunk_boundary_is_found_once() {
        let rules = ircap_proto::yara::compile(
            "t",
            "rule r { strings: $a = \"NEEDLE_ACROSS\" condition: $a }",
        )
        .unwrap();
        let mut data = vec![0u8; CHUNK + 100];
        let at = CHUNK - 5;
        data[at..at + 13].copy_from_slice(b"NEEDLE_ACROSS");
        let mut b = budget();
        let mut scan = ChunkScanner::new(&rules.scanner, &mut b);
        for piece in data.chunks(1 << 20) {
            scan.put(piece).unwrap();
        }
        let (hits, sha, n) = scan.finish();
        assert_eq!(n, data.len() as u64);
        assert_eq!(sha, ircap_proto::hashing::sha256_hex(&data));
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].strings.len(), 1, "found once");
        assert_eq!(hits[0].strings[0].1, at as u64);
        assert_eq!(
            hits[0].strings[0].3,
            ircap_proto::hashing::to_hex(b"NEEDLE_ACROSS")
        );
    }

    #[test]
    fn a_spent_cpu_budget_stops_the_scan() {
        let rules = ircap_proto::yara::compile("t", "rule r { strings: $a = \"x\" condition: $a }")
            .unwrap();
        let mut b = budget();
        b.cpu_limit = Duration::ZERO;
        let mut scan = ChunkScanner::new(&rules.scanner, &mut b);
        let data = vec![b'x'; CHUNK + 1];
        assert!(scan.put(&data).is_err());
        let (hits, _, _) = scan.finish();
        assert!(hits.is_empty());
        assert!(b.stopped.unwrap().contains("CPU budget"));
    }
}
