//! `ircap-agent`: thin entry point. Arguments -> options -> tracing ->
//! run -> exit code (see `cli::exit` and the README).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ircap_agent::cli::{CaptureArgs, Cli, Command, PreflightArgs, ServeArgs, VerifyArgs, exit};
use ircap_agent::daemon::{self, config::AgentConfig, config::DaemonSettings};
use ircap_agent::options::CaptureOptions;
use ircap_agent::sink::dir::DirSink;
use ircap_agent::sink::grpc::{CollectorSettings, GrpcSink};
use ircap_agent::sink::tee::TeeSink;
use ircap_agent::sink::{CaptureSink, SinkError};
use ircap_agent::{capture, priority, timefmt};
use ircap_proto::terminal::print_json;

/// musl's allocator hands memory back to the kernel on nearly every free
/// of a read buffer; mimalloc keeps it, halving the static agent's capture
/// time on a busy host (see agent/Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    fix_malloc_mmap_threshold();
    let cli = Cli::parse();
    init_tracing(&cli.log);
    let code = match cli.command {
        Command::Capture(args) => run_capture(&args),
        Command::Verify(args) => run_verify(&args),
        Command::Serve(args) => run_serve(&args),
        Command::Preflight(args) => run_preflight(&args),
    };
    ExitCode::from(code)
}

/// Keeps glibc's allocator from holding freed memory: once a large block
/// allocated by mmap is freed, glibc raises its mmap threshold, after which
/// each artifact's buffers (a 256 KiB writer, the gzip state) come from the
/// heap and fragment it. Measured with 2,500 log files: peak RSS 538 MiB
/// with the dynamic threshold, 13 MiB with it fixed at 128 KiB (its
/// default). The static (musl) agent's allocator returns such blocks
/// anyway; this is for glibc builds.
fn fix_malloc_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called first thing
    // in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ircap_proto::terminal::SafeLines(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// The local directory, the collector, or both (`--spool`), as asked.
fn open_sink(
    args: &CaptureArgs,
    capture_id: &str,
    deadline: Duration,
) -> Result<Box<dyn CaptureSink>, SinkError> {
    match (&args.collector, &args.output) {
        (Some(url), _) => {
            let settings = CollectorSettings {
                url: url.clone(),
                ca: args.ca.clone().unwrap_or_default(),
                cert: args.cert.clone().unwrap_or_default(),
                key: args.key.clone().unwrap_or_default(),
                attempts: args.upload_attempts,
                deadline,
            };
            let hostname = ircap_agent::collect::system::hostname();
            let remote = GrpcSink::open(&settings, capture_id, &hostname);
            match (&args.spool, remote) {
                (None, remote) => Ok(Box::new(remote?)),
                (Some(dir), Ok(remote)) => Ok(Box::new(TeeSink::new(
                    Box::new(DirSink::create(dir, capture_id)?),
                    Box::new(remote),
                ))),
                (Some(dir), Err(e)) => Ok(Box::new(TeeSink::local_only(
                    Box::new(DirSink::create(dir, capture_id)?),
                    Box::new(Unreachable),
                    e.to_string(),
                ))),
            }
        }
        (None, Some(dir)) => Ok(Box::new(DirSink::create(dir, capture_id)?)),
        (None, None) => Err(SinkError::Collector(
            "--output or --collector is required".into(),
        )),
    }
}

/// The collector side of a spool whose collector could not be opened.
struct Unreachable;

impl CaptureSink for Unreachable {
    fn create(
        &self,
        _: &ircap_proto::ArtifactName,
        _: ircap_proto::manifest::Encoding,
    ) -> Result<Box<dyn ircap_agent::sink::ArtifactOut>, SinkError> {
        Err(SinkError::Collector("unreachable".into()))
    }

    fn commit(&self, _: &ircap_proto::Manifest) -> Result<String, SinkError> {
        Err(SinkError::Collector("unreachable".into()))
    }

    fn abort(&self) {}
}

fn run_capture(args: &CaptureArgs) -> u8 {
    // Before any thread exists, so every worker inherits it.
    let lowered = (!args.no_lower_priority).then(priority::lower);
    if let Some(l) = &lowered
        && !l.fully()
    {
        tracing::warn!(nice = ?l.nice, io = ?l.io, "Could not fully lower priority");
    }
    let options = match CaptureOptions::from_args(args) {
        Ok(o) => o,
        Err(err) => {
            tracing::error!("Invalid option: {err}");
            return exit::USAGE;
        }
    };
    if let Some(url) = &args.collector
        && let Err(err) = ircap_proto::client::check_files(&ircap_proto::client::MtlsSettings {
            url: url.clone(),
            ca: args.ca.clone().unwrap_or_default(),
            cert: args.cert.clone().unwrap_or_default(),
            key: args.key.clone().unwrap_or_default(),
        })
    {
        tracing::error!("Invalid option: --collector: {err}");
        return exit::USAGE;
    }
    let deadline = match timefmt::parse_duration(&args.upload_deadline) {
        Ok(d) => d,
        Err(err) => {
            tracing::error!("Invalid option: --upload-deadline: {err}");
            return exit::USAGE;
        }
    };
    let capture_id = capture::new_capture_id();
    let sink = match open_sink(args, &capture_id, deadline) {
        Ok(s) => s,
        Err(err) => {
            tracing::error!("Cannot store the capture: {err}");
            print_json(&serde_json::json!({
                "capture_id": capture_id,
                "status": "failed",
                "error": err.to_string(),
            }));
            return exit::FAILED;
        }
    };
    tracing::info!(capture_id, "Capture started");
    match capture::run(&capture_id, &options, sink.into(), lowered.as_ref()) {
        Ok(outcome) => {
            let summary = outcome.summary();
            tracing::info!(
                capture_id,
                artifacts = summary.artifacts,
                bytes = summary.bytes_stored,
                errors = summary.error_count,
                duration_ms = summary.duration_ms,
                "Capture complete"
            );
            print_json(&summary);
            if summary.status == "partial" {
                tracing::warn!(
                    capture_id,
                    "Capture stored but PARTIAL: see the manifest's errors"
                );
                exit::PARTIAL
            } else {
                exit::OK
            }
        }
        Err(SinkError::NotDelivered { local, reason }) => {
            tracing::error!(
                capture_id,
                local,
                "Capture NOT delivered to the collector ({reason}); the complete capture is in the spool"
            );
            print_json(&serde_json::json!({
                "capture_id": capture_id,
                "status": "not_delivered",
                "location": local,
                "error": reason,
            }));
            exit::FAILED
        }
        Err(err) => {
            tracing::error!(capture_id, "Capture failed, nothing was kept: {err}");
            print_json(&serde_json::json!({
                "capture_id": capture_id,
                "status": "failed",
                "error": err.to_string(),
            }));
            exit::FAILED
        }
    }
}

fn run_verify(args: &VerifyArgs) -> u8 {
    ircap_proto::verify::run_verify_command(&args.dir, args.ca.as_deref())
}

fn run_preflight(args: &PreflightArgs) -> u8 {
    let report =
        ircap_agent::preflight::run(&ircap_agent::collect::Roots::host(), args.output.as_deref());
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let _ = std::io::stderr().write_all(ircap_agent::preflight::render(&report).as_bytes());
    }
    print_json(&report);
    exit::OK
}

fn run_serve(args: &ServeArgs) -> u8 {
    // Before any thread exists, so every capture thread inherits it.
    let lowered = priority::lower();
    if !lowered.fully() {
        tracing::warn!(nice = ?lowered.nice, io = ?lowered.io, "Could not fully lower priority");
    }
    let settings = match AgentConfig::load(args.config.as_deref())
        .and_then(|file| DaemonSettings::resolve(file, args))
    {
        Ok(s) => s,
        Err(err) => {
            tracing::error!("Invalid configuration: {err}");
            return exit::USAGE;
        }
    };
    match daemon::run(settings, Some(lowered)) {
        Ok(()) => exit::OK,
        Err(err) => {
            tracing::error!("{err}");
            exit::FAILED
        }
    }
}
