//! One capture, start to finish: collectors in order of volatility, then
//! the manifest, then the sink's commit.

mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use ircap_proto::manifest::{
    AgentInfo, CaptureError, CaptureStatus, FORMAT_VERSION, MAX_ERRORS_PER_ARTIFACT,
};
use ircap_proto::{ArtifactEntry, Manifest};
use serde::Serialize;

use crate::collect::{
    self, Roots, accounts::Accounts, connections, imds, kernel, kernel_symbols, logs, memory_maps,
    memory_regions, network_state, physical, processes, system, users, volatile_files,
};
use crate::options::CaptureOptions;
use crate::priority::Lowered;
use crate::sink::{CaptureSink, SinkError};
use crate::timefmt;
use steps::{Shared, Steps};

/// Artifacts a process-memory dump leaves for the log files after it
/// (the logs keep fewer only when there are more artifacts still).
const LOGS_SHARE: usize = 500;

/// A finished capture.
#[derive(Debug)]
pub struct Outcome {
    /// The committed manifest.
    pub manifest: Manifest,
    /// Where the sink put it.
    pub location: String,
    /// Wall time taken.
    pub duration_ms: u128,
    /// Steps abandoned by the watchdog: their threads may still be blocked
    /// in the kernel (a long-lived process should restart).
    pub abandoned: Vec<String>,
}

/// The short JSON summary printed on stdout (fits SSM's 24 KB output).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub capture_id: String,
    pub status: &'static str,
    pub location: String,
    pub hostname: String,
    pub instance_id: Option<String>,
    pub started_at: String,
    pub duration_ms: u128,
    pub artifacts: usize,
    pub bytes_stored: u64,
    pub records: BTreeMap<String, u64>,
    pub error_count: u64,
    pub errors_by_artifact: BTreeMap<String, u64>,
}

impl Outcome {
    /// The stdout summary.
    #[must_use]
    pub fn summary(&self) -> Summary {
        let m = &self.manifest;
        Summary {
            capture_id: m.capture_id.clone(),
            status: match m.status {
                CaptureStatus::Complete => "complete",
                CaptureStatus::Partial => "partial",
            },
            location: self.location.clone(),
            hostname: m.host.hostname.clone(),
            instance_id: m.host.instance_id.clone(),
            started_at: m.started_at.clone(),
            duration_ms: self.duration_ms,
            artifacts: m.artifacts.len(),
            bytes_stored: m.stored_bytes(),
            records: m
                .artifacts
                .iter()
                .filter_map(|a| a.record_count.map(|n| (a.kind.clone(), n)))
                .fold(BTreeMap::new(), |mut acc, (k, n)| {
                    *acc.entry(k).or_insert(0) += n;
                    acc
                }),
            error_count: m.error_count,
            errors_by_artifact: m
                .artifacts
                .iter()
                .filter(|a| a.error_count > 0)
                .map(|a| (a.name.clone(), a.error_count))
                .chain(
                    (!m.errors.is_empty()).then(|| ("capture".to_owned(), m.errors.len() as u64)),
                )
                .collect(),
        }
    }
}

/// Warns (and records) before a memory dump of up to `need` bytes into a
/// local output with less free space: the dump would fill it and be
/// dropped.
fn preflight(options: &CaptureOptions, what: &str, need: u64, errors: &mut Vec<CaptureError>) {
    let Some(dir) = &options.output else { return };
    let Ok(free) = crate::preflight::free_bytes(dir) else {
        return;
    };
    if need > free {
        let message = format!(
            "{what} may need up to {need} bytes but {} has {free} bytes free: it may not fit and would then be dropped",
            dir.display()
        );
        tracing::warn!("{message}");
        errors.push(CaptureError {
            source: "preflight".into(),
            message,
        });
    }
}

/// One artifact as a list.
fn one(entry: ArtifactEntry) -> Vec<ArtifactEntry> {
    vec![entry]
}

/// Keeps what a step stored. A step that could not store its artifacts
/// (the output filled up, or a request's budget refused them) is dropped,
/// when the sink can drop it cleanly, and recorded in `dropped` with the
/// artifact and the reason: the capture goes on and is committed as
/// partial. Otherwise the error ends the capture.
fn keep(
    sink: &dyn CaptureSink,
    step: &str,
    result: Result<Vec<ArtifactEntry>, SinkError>,
    artifacts: &mut Vec<ArtifactEntry>,
    dropped: &mut Vec<CaptureError>,
) -> Result<(), SinkError> {
    match result {
        Ok(entries) => {
            artifacts.extend(entries);
            Ok(())
        }
        Err(err @ SinkError::Io { .. }) if sink.drop_unfinished() => {
            tracing::warn!(step, "Artifact not stored, dropped: {err}");
            dropped.push(CaptureError {
                source: step.to_owned(),
                message: format!("not stored, dropped: {err}"),
            });
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// A new time-sortable capture id (UUIDv7).
#[must_use]
pub fn new_capture_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Runs one capture into `sink`. On a sink failure the sink is aborted, so
/// nothing half-written is left looking like a capture.
///
/// Each step runs under the watchdog of [`steps`]: a step stuck past its
/// share of `--deadline` is abandoned (its thread left blocked, see
/// [`Outcome::abandoned`]) and the capture is committed as partial.
///
/// # Errors
/// [`SinkError`] when the capture could not be stored.
pub fn run(
    capture_id: &str,
    options: &CaptureOptions,
    sink: Arc<dyn CaptureSink>,
    lowered: Option<&Lowered>,
) -> Result<Outcome, SinkError> {
    let result = run_inner(capture_id, options, Arc::clone(&sink), lowered);
    if result.is_err() {
        sink.abort();
    }
    result
}

/// How many steps `options` plans, for the watchdog's reserve.
fn planned_steps(options: &CaptureOptions) -> usize {
    let w = |n: &str| options.wants(n);
    [
        w("connections") || w("network_state"),
        w("connections") || w("processes") || w("memory_maps"),
        w("connections"),
        w("memory_maps"),
        w("network_state"),
        w("users"),
        w("kernel"),
        w("volatile_files"),
        true,
        options.memory_regions.is_some() && w("memory_regions"),
        options.yara.is_some(),
        options.physical_memory && w("physical_memory"),
        options.physical_memory && w("physical_memory"),
        w("logs"),
        w("journal"),
    ]
    .iter()
    .filter(|&&b| b)
    .count()
}

/// The host identity when the system step gave none: what can be read
/// without touching the file system.
fn fallback_host() -> ircap_proto::manifest::HostIdentity {
    ircap_proto::manifest::HostIdentity {
        hostname: system::hostname(),
        kernel_release: system::kernel().release,
        ..Default::default()
    }
}

#[allow(clippy::too_many_lines)]
fn run_inner(
    capture_id: &str,
    options: &CaptureOptions,
    sink: Arc<dyn CaptureSink>,
    lowered: Option<&Lowered>,
) -> Result<Outcome, SinkError> {
    let t0 = Instant::now();
    let started_at = timefmt::rfc3339(SystemTime::now());
    let clock_at_start = system::Clocks::now();
    let span = tracing::info_span!("capture", capture_id);
    let _guard = span.enter();

    // The metadata service may take its full timeout to answer "no"; ask it
    // while the host is being read.
    let imds_thread = options.imds.then(|| {
        let endpoint = options.imds_endpoint.clone();
        std::thread::spawn(move || imds::query(&endpoint))
    });

    let roots = Roots::host();
    let shared = Arc::new(Shared {
        sink: Arc::clone(&sink),
        options: options.clone(),
        accounts: Accounts::load(&roots.etc),
        clock: system::BootClock::read(),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
        blocking: if options.enter_remote_fs {
            collect::blocking_fs::BlockingMounts::default()
        } else {
            collect::blocking_fs::BlockingMounts::read(&roots.proc)
        },
        roots,
    });
    let roots = &shared.roots;
    let mut capture_errors: Vec<CaptureError> = Vec::new();
    let mut artifacts: Vec<ArtifactEntry> = Vec::new();
    // Artifacts dropped or cut, with the reason: the capture is partial.
    let mut dropped: Vec<CaptureError> = Vec::new();

    let pids: Arc<[i32]> = processes::list_pids(&roots.proc)
        .unwrap_or_else(|e| {
            capture_errors.push(CaptureError {
                source: "processes".into(),
                message: e.to_string(),
            });
            Vec::new()
        })
        .into();

    // Most volatile first: socket tables, then processes (whose fd pass
    // gives the socket owners), then memory maps.
    // The socket table is also the network state's listening summary, and
    // the process scan gives the socket owners and the maps' targets: each
    // is read when anything needs it, written when asked for.
    // Each step runs under the watchdog: past its share of `--deadline`
    // it is abandoned, and past the deadline no further step starts; each
    // one is recorded and the capture is partial.
    let mut steps = Steps::new(Arc::clone(&shared), t0, planned_steps(options));
    let wants = |name: &str| options.wants(name);
    let mut sockets = if wants("connections") || wants("network_state") {
        let pids = Arc::clone(&pids);
        steps
            .run("connections", move |ctx| {
                connections::snapshot(&ctx.roots.proc, &pids)
            })
            .map_err(|missed| {
                if wants("network_state") {
                    steps.skipped("network_state", "socket table", missed);
                }
            })
            .ok()
    } else {
        Some(connections::SocketSnapshot::default())
    };
    if let Some(sockets) = &sockets {
        tracing::debug!(
            sockets = sockets.records.len(),
            namespaces = sockets.namespaces.len(),
            "Read socket tables"
        );
    }
    let mut map_targets = None;
    if wants("connections") || wants("processes") || wants("memory_maps") {
        // Process records are written as they are read; what connections
        // and maps need of them is kept in a compact index.
        let pids = Arc::clone(&pids);
        let write = wants("processes");
        match steps.run("processes", move |ctx| processes::scan(ctx, &pids, write)) {
            Ok((index, table)) => {
                tracing::debug!(processes = index.records, "Read processes");
                if let Some(table) = table {
                    keep(
                        &*sink,
                        "processes",
                        table.map(one),
                        &mut artifacts,
                        &mut dropped,
                    )?;
                }
                if let Some(sockets) = &mut sockets {
                    connections::attach_owners(&mut sockets.records, &index, &shared.accounts);
                }
                map_targets = Some(index.map_targets);
            }
            Err(missed) => {
                if wants("memory_maps") {
                    steps.skipped("memory_maps", "processes", missed);
                }
            }
        }
    }
    let sockets = sockets.map(Arc::new);
    if wants("connections")
        && let Some(sockets) = &sockets
    {
        let sockets = Arc::clone(sockets);
        if let Ok(result) = steps.run("connections", move |ctx| connections::write(ctx, &sockets)) {
            keep(
                &*sink,
                "connections",
                result.map(one),
                &mut artifacts,
                &mut dropped,
            )?;
        }
    }
    if wants("memory_maps")
        && let Some(targets) = map_targets
        && let Ok(result) = steps.run("memory_maps", move |ctx| memory_maps::write(ctx, &targets))
    {
        keep(
            &*sink,
            "memory_maps",
            result.map(one),
            &mut artifacts,
            &mut dropped,
        )?;
    }
    if wants("network_state")
        && let Some(sockets) = &sockets
    {
        let sockets = Arc::clone(sockets);
        if let Ok(result) = steps.run("network_state", move |ctx| {
            network_state::write(ctx, &sockets)
        }) {
            keep(
                &*sink,
                "network_state",
                result,
                &mut artifacts,
                &mut dropped,
            )?;
        }
    }
    if wants("users")
        && let Ok(result) = steps.run("users", users::write)
    {
        keep(&*sink, "users", result, &mut artifacts, &mut dropped)?;
    }
    if wants("kernel")
        && let Ok(result) = steps.run("kernel", kernel::write)
    {
        keep(&*sink, "kernel", result, &mut artifacts, &mut dropped)?;
    }
    if wants("volatile_files")
        && let Ok(result) = steps.run("volatile_files", volatile_files::write)
    {
        keep(
            &*sink,
            "volatile_files",
            result,
            &mut artifacts,
            &mut dropped,
        )?;
    }

    let ec2 = match imds_thread {
        Some(handle) => handle.join().unwrap_or_else(|_| imds::Ec2Identity {
            status: "unavailable: lookup thread failed".into(),
            ..imds::Ec2Identity::default()
        }),
        None => imds::Ec2Identity::disabled(),
    };
    let priority = serde_json::json!({
        "requested": options.lower_priority,
        "nice": lowered.map(|l| l.nice.clone()),
        "io": lowered.map(|l| l.io.clone()),
    });
    let host = match steps.run("system", move |ctx| {
        system::write(ctx, clock_at_start, ec2, priority)
    }) {
        // The host's identity: a capture that cannot store it fails.
        Ok(result) => {
            let (system_entry, host) = result?;
            artifacts.push(system_entry);
            host
        }
        Err(_) => fallback_host(),
    };

    // Memory bytes after the quick volatile tables: those take about a
    // second in all, a memory dump can take minutes, and sockets, ARP
    // entries and logins would change meanwhile. Process regions (targeted,
    // smaller) before physical memory (everything).
    if options.memory_regions.is_some() && options.wants("memory_regions") {
        preflight(
            options,
            "memory_regions",
            options.memory_budget,
            &mut capture_errors,
        );
    }
    if options.physical_memory && options.wants("physical_memory") {
        let need = match (
            options.physical_memory_budget,
            physical::expected_bytes(roots),
        ) {
            (Some(budget), Some(ram)) => budget.min(ram),
            (budget, ram) => budget.or(ram).unwrap_or(0),
        };
        preflight(options, "physical_memory", need, &mut capture_errors);
    }
    // One artifact per dumped process and per kept log file, and a capture
    // may hold MAX_ARTIFACTS: memory may take what the artifacts so far
    // leave, less room for the logs after it; the logs take the rest.
    let room = |stored: usize, after: usize| {
        ircap_proto::manifest::MAX_ARTIFACTS.saturating_sub(stored + after)
    };
    let max_processes = room(
        artifacts.len() + steps.kept.len(),
        logs::AFTER_LOGS + LOGS_SHARE,
    );
    let yara_pids = Arc::clone(&pids);
    if options.memory_regions.is_some()
        && wants("memory_regions")
        && let Ok(result) = steps.run("memory_regions", move |ctx| {
            match &ctx.options.memory_regions {
                Some(selector) => memory_regions::write(ctx, selector, &pids, max_processes),
                None => Ok(Vec::new()),
            }
        })
    {
        keep(
            &*sink,
            "memory_regions",
            result,
            &mut artifacts,
            &mut dropped,
        )?;
    }
    if options.yara.is_some() {
        let pids = yara_pids;
        let max_dumps = room(
            artifacts.len() + steps.kept.len(),
            logs::AFTER_LOGS + LOGS_SHARE,
        );
        if let Ok(result) = steps.run("yara_matches", move |ctx| match &ctx.options.yara {
            Some(yara) => collect::yara::write(ctx, yara, &pids, max_dumps),
            None => Ok(Vec::new()),
        }) {
            keep(&*sink, "yara_matches", result, &mut artifacts, &mut dropped)?;
        }
    }
    if options.physical_memory && wants("physical_memory") {
        // The symbol sources that let the image be opened without a debug
        // package, read just before the memory they describe.
        if let Ok(result) = steps.run("kernel_symbols", kernel_symbols::write) {
            keep(
                &*sink,
                "kernel_symbols",
                result,
                &mut artifacts,
                &mut dropped,
            )?;
        }
        if let Ok((stored, errors)) = steps.run("physical_memory", |ctx| {
            let mut errors = Vec::new();
            let stored = physical::write(ctx, &mut errors);
            (stored, errors)
        }) {
            keep(
                &*sink,
                "physical_memory",
                stored,
                &mut artifacts,
                &mut dropped,
            )?;
            // Asked for explicitly and impossible here (no kcore, lockdown,
            // STRICT_DEVMEM): the capture does not hold what was asked.
            if let Some(why) = errors.iter().find(|e| e.source == "physical_memory") {
                dropped.push(CaptureError {
                    source: "physical_memory".into(),
                    message: format!("requested but not captured: {}", why.message),
                });
            }
            capture_errors.extend(errors);
        }
    }

    let max_logs = room(artifacts.len() + steps.kept.len(), logs::AFTER_LOGS);
    if wants("logs")
        && let Ok(result) = steps.run("logs", move |ctx| {
            logs::write(ctx, &ctx.options.logs_dirs, max_logs)
        })
    {
        keep(&*sink, "logs", result, &mut artifacts, &mut dropped)?;
    }
    if wants("journal")
        && let Ok(result) = steps.run("journal", |ctx| {
            collect::journal_table::write(ctx, &ctx.options.logs_dirs).map(|e| vec![e])
        })
    {
        keep(&*sink, "journal", result, &mut artifacts, &mut dropped)?;
    }
    dropped.extend(std::mem::take(&mut steps.dropped));
    // What abandoned steps had finished is whole and verified: kept.
    artifacts.extend(std::mem::take(&mut steps.kept));
    let abandoned: Vec<String> = steps.abandoned.iter().map(|e| e.source.clone()).collect();
    dropped.extend(std::mem::take(&mut steps.abandoned));
    for name in std::mem::take(&mut steps.cut) {
        dropped.push(CaptureError {
            source: name.to_owned(),
            message: format!(
                "not collected: the --deadline of {}s was reached",
                options.deadline.as_secs()
            ),
        });
    }
    if artifacts.is_empty() && !dropped.is_empty() {
        // Nothing at all could be stored: that is not a capture.
        let why = dropped
            .iter()
            .map(|d| d.message.clone())
            .next()
            .unwrap_or_default();
        return Err(SinkError::io(
            why,
            std::io::Error::other("no artifact could be stored"),
        ));
    }
    let status = if dropped.is_empty() {
        CaptureStatus::Complete
    } else {
        CaptureStatus::Partial
    };
    for d in &dropped {
        tracing::warn!(artifact = d.source, "Capture is partial: {}", d.message);
    }
    capture_errors.extend(dropped);
    let error_count =
        artifacts.iter().map(|a| a.error_count).sum::<u64>() + capture_errors.len() as u64;
    collect::dedupe_capture_errors(&mut capture_errors, MAX_ERRORS_PER_ARTIFACT);
    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        capture_id: capture_id.to_owned(),
        started_at,
        ended_at: timefmt::now(),
        status,
        host,
        agent: AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uid: nix::unistd::geteuid().as_raw(),
            lowered_priority: lowered.is_some_and(Lowered::fully),
            identity: None,
        },
        options: serde_json::to_value(options).unwrap_or_default(),
        ssm_command_id: options.ssm_command_id.clone(),
        artifacts,
        error_count,
        errors: capture_errors,
        collector_receipt: None,
        case: options.case.clone(),
    };
    // Error messages only: every artifact stays listed, or the commit
    // would not match what was uploaded.
    if manifest.fit_to_limit()? {
        tracing::warn!(
            limit = ircap_proto::manifest::MAX_MANIFEST_BYTES,
            "Error messages in the manifest were trimmed to fit the collector's limit"
        );
    }
    let location = sink.commit(&manifest)?;
    Ok(Outcome {
        manifest,
        location,
        duration_ms: t0.elapsed().as_millis(),
        abandoned,
    })
}
