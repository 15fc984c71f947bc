//! Command-line interface of `ircap-agent`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::options::{
    DEFAULT_EXE_HASH_MAX_BYTES, DEFAULT_LOGS_MAX_BYTES, DEFAULT_LOGS_SINCE, DEFAULT_MEMORY_BUDGET,
    DEFAULT_MEMORY_PROCESS_BUDGET,
};

/// Exit codes, also listed in the README.
pub mod exit {
    /// Capture stored (collector errors, if any, are inside the manifest),
    /// or verification passed.
    pub const OK: u8 = 0;
    /// The capture could not be stored, or a capture could not be read.
    pub const FAILED: u8 = 1;
    /// Bad command line or option value.
    pub const USAGE: u8 = 2;
    /// Verification found a mismatched, missing or unexpected file.
    pub const VERIFY_MISMATCH: u8 = ircap_proto::verify::EXIT_MISMATCH;
    /// Capture stored, but partial: some artifact was dropped or cut (it
    /// could not be stored, a deadline cut it, or it was impossible here);
    /// the manifest's `errors` name each with its reason.
    pub const PARTIAL: u8 = 4;
}

/// Captures the volatile state of this Linux host for incident response.
#[derive(Debug, Parser)]
#[command(name = "ircap-agent", version, about, long_about = None)]
pub struct Cli {
    /// Log filter for stderr (e.g. info, debug, ircap_agent=trace).
    #[arg(long, global = true, env = "IRCAP_LOG", default_value = "info")]
    pub log: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The agent's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture this host now into a local directory.
    Capture(Box<CaptureArgs>),
    /// Recompute every hash of a capture directory against its manifest.
    Verify(VerifyArgs),
    /// Run as a service: keep one outbound stream to the collector and
    /// capture when an analyst asks (no listening port on this host).
    Serve(ServeArgs),
    /// Say what this host lets a capture take, and why not (lockdown,
    /// kcore, capabilities, free space, sizes): JSON on stdout, a table on
    /// a terminal. Reads only.
    Preflight(PreflightArgs),
}

/// `ircap-agent preflight`.
#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// The capture's output directory, to measure its free space (not
    /// created).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
}

/// `ircap-agent capture`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["output", "collector"])))]
pub struct CaptureArgs {
    /// Directory that receives `<capture-id>/` (created if missing).
    #[arg(long, short = 'o', value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Send the capture to this collector (`https://HOST:PORT`) over
    /// mutual TLS instead of writing it locally; nothing touches the disk.
    #[arg(long, value_name = "URL", env = "IRCAP_COLLECTOR", requires_all = ["ca", "cert", "key"])]
    pub collector: Option<String>,
    /// CA certificate the collector's certificate must chain to.
    #[arg(long, value_name = "PEM", env = "IRCAP_CA")]
    pub ca: Option<PathBuf>,
    /// This agent's client certificate.
    #[arg(long, value_name = "PEM", env = "IRCAP_CERT")]
    pub cert: Option<PathBuf>,
    /// This agent's private key.
    #[arg(long, value_name = "PEM", env = "IRCAP_KEY")]
    pub key: Option<PathBuf>,
    /// With --collector: also keep a local copy in DIR (for hosts whose
    /// network is unreliable); if the upload fails the local copy is still
    /// complete and the summary says so.
    #[arg(long, value_name = "DIR", requires = "collector")]
    pub spool: Option<PathBuf>,
    /// Give up uploading after this long in all (90s, 30m, 2h).
    #[arg(long, value_name = "DURATION", default_value = "30m")]
    pub upload_deadline: String,
    /// Attempts per upload step before giving up (reconnecting and resuming
    /// from the last acknowledged offset in between).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub upload_attempts: u32,
    /// Oldest logs to keep: a duration back from now (90m, 1h, 7d, 2w) or
    /// an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = DEFAULT_LOGS_SINCE)]
    pub logs_since: String,
    /// Budget of original log bytes (64M, 1G, ...); newest files first.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_LOGS_MAX_BYTES.to_string())]
    pub logs_max_bytes: String,
    /// Directory of log files to collect (repeatable); default /var/log and
    /// /run/log/journal.
    #[arg(long = "logs-dir", value_name = "DIR")]
    pub logs_dirs: Vec<PathBuf>,
    /// Skip logs and the journal table (same as `--skip logs,journal`).
    #[arg(long)]
    pub no_logs: bool,
    /// What to capture: triage (sockets, processes, maps, network, logins,
    /// kernel, system: about a second), standard (adds volatile files, logs
    /// and the journal table) or full (adds suspicious memory regions).
    #[arg(long, value_name = "PROFILE", default_value = "standard")]
    pub profile: String,
    /// Only these artifacts, comma-separated (system is always captured):
    /// connections, processes, memory_maps, network_state, users, kernel,
    /// volatile_files, system, memory_regions, physical_memory, logs.
    #[arg(long, value_name = "LIST")]
    pub artifacts: Option<String>,
    /// Leave these artifacts out, comma-separated.
    #[arg(long, value_name = "LIST")]
    pub skip: Option<String>,
    /// Abandon collection after this long (90s, 10m, 1h): a step still
    /// running is recorded as cut, what was captured is kept, and the
    /// capture is partial.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub deadline: String,
    /// Enter and read file systems that can block (FUSE, NFS, CIFS, 9p,
    /// ...): by default they are listed as mount points, never entered,
    /// since an unanswered one freezes every access. Local only: a remote
    /// request cannot ask for it.
    #[arg(long)]
    pub enter_remote_fs: bool,
    /// Keep every environment variable's value (values often hold secrets;
    /// by default only an allow-list of forensically useful ones is kept).
    #[arg(long)]
    pub full_environ: bool,
    /// Keep normal CPU and I/O priority instead of nice 10 / best-effort 7.
    #[arg(long)]
    pub no_lower_priority: bool,
    /// Do not ask the EC2 instance metadata service for identity.
    #[arg(long)]
    pub no_imds: bool,
    /// Instance metadata endpoint (host:port).
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "169.254.169.254:80",
        hide = true
    )]
    pub imds_endpoint: String,
    /// Largest executable to hash in full.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_EXE_HASH_MAX_BYTES.to_string())]
    pub exe_hash_max_bytes: String,
    /// Dump the bytes of process memory regions: pid=N[,N...] (every region
    /// of those processes), suspicious (anonymous-executable,
    /// writable+executable and deleted-file-backed regions of every
    /// process) or all.
    #[arg(long, value_name = "SELECTOR")]
    pub memory_regions: Option<String>,
    /// Process memory bytes stored in all (64M, 2G, ...).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MEMORY_BUDGET.to_string())]
    pub memory_budget: String,
    /// Process memory bytes stored per process.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MEMORY_PROCESS_BUDGET.to_string())]
    pub memory_process_budget: String,
    /// Dump physical memory in LiME format from /proc/kcore (or /dev/crash).
    #[arg(long)]
    pub physical_memory: bool,
    /// With --physical-memory: read this ELF core file (kcore format)
    /// instead of the host's /proc/kcore; its physical addresses are taken
    /// as they are (used by the tests, and to convert a saved kcore copy).
    #[arg(long, value_name = "PATH", requires = "physical_memory")]
    pub physical_memory_source: Option<PathBuf>,
    /// With --physical-memory: physical memory bytes stored at most
    /// (default: no limit).
    #[arg(long, value_name = "BYTES", requires = "physical_memory")]
    pub physical_memory_budget: Option<String>,
    /// Scan the memory of every process (or the `--memory-regions`
    /// selection) and the regular files under the volatile directories
    /// with these YARA rules; matches go to the `yara_matches` table.
    #[arg(long, value_name = "RULES_FILE")]
    pub yara: Option<PathBuf>,
    /// With --yara: also store the bytes of each matching memory region
    /// (`memory/yara-pid-<PID>.bin.gz`, within --memory-budget).
    #[arg(long, requires = "yara")]
    pub yara_dump: bool,
    /// With --yara: bytes scanned at most, memory and files together.
    #[arg(long, value_name = "BYTES", default_value_t = crate::options::DEFAULT_YARA_MAX_BYTES.to_string())]
    pub yara_max_bytes: String,
    /// With --yara: CPU time the scan may use (its own thread; 90s, 5m, 500ms).
    #[arg(long, value_name = "DURATION", default_value = crate::options::DEFAULT_YARA_CPU_BUDGET)]
    pub yara_cpu_budget: String,
    /// With --yara: bytes scanned at most of one memory region or file.
    #[arg(long, value_name = "BYTES", default_value_t = crate::options::DEFAULT_YARA_REGION_MAX.to_string())]
    pub yara_region_max: String,
    /// With --yara: scan the regular files under these directories instead
    /// of the volatile ones (/tmp, /var/tmp, /dev/shm, /run/user); repeatable.
    #[arg(long = "yara-dir", value_name = "DIR", requires = "yara")]
    pub yara_dirs: Vec<PathBuf>,
    /// The SSM Run Command id this capture runs under, recorded in the
    /// manifest (letters, digits and `-`, at most 64).
    #[arg(long, value_name = "ID", env = "AWS_SSM_COMMAND_ID", value_parser = parse_ssm_command_id)]
    pub ssm_command_id: Option<String>,
    /// The case this capture is for (e.g. IR-2026-041), recorded in the
    /// manifest's `case` and the collector's signed receipt.
    #[arg(long, value_name = "CASE", env = "IRCAP_CASE", value_parser = parse_case)]
    pub case: Option<String>,
    /// Why (recorded with the case; at most 1 KiB).
    #[arg(long, env = "IRCAP_REASON", requires = "case", value_parser = parse_reason)]
    pub reason: Option<String>,
    /// A label `KEY=VALUE` recorded on this capture, in its manifest's
    /// `options.labels` (repeatable, at most 16; keys A-Z a-z 0-9 . _ - /).
    /// `--capture-label baseline=true` marks the host's baseline, the
    /// capture `ircap-collector diff --baseline` compares with.
    #[arg(long = "capture-label", value_name = "KEY=VALUE")]
    pub capture_labels: Vec<String>,
}

/// `ircap-agent serve`. Settings come from the TOML file, then these
/// flags (and their environment variables), which win.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file [default: /etc/ircap/agent.toml; a missing default
    /// file is not an error].
    #[arg(long, value_name = "PATH", env = "IRCAP_AGENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// The collector (`https://HOST:PORT`).
    #[arg(long, value_name = "URL", env = "IRCAP_COLLECTOR")]
    pub collector: Option<String>,
    /// CA certificate the collector's certificate must chain to.
    #[arg(long, value_name = "PEM", env = "IRCAP_CA")]
    pub ca: Option<PathBuf>,
    /// This agent's client certificate.
    #[arg(long, value_name = "PEM", env = "IRCAP_CERT")]
    pub cert: Option<PathBuf>,
    /// This agent's private key.
    #[arg(long, value_name = "PEM", env = "IRCAP_KEY")]
    pub key: Option<PathBuf>,
    /// A label `KEY=VALUE` announced to the collector (repeatable; adds to
    /// and overrides the file's `[labels]`).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Do not ask the EC2 instance metadata service for the instance id.
    #[arg(long)]
    pub no_imds: bool,
    /// Instance metadata endpoint (host:port).
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "169.254.169.254:80",
        hide = true
    )]
    pub imds_endpoint: String,
    /// Heartbeat interval (config `heartbeat`; default 30s).
    #[arg(long, value_name = "DURATION", hide = true)]
    pub heartbeat: Option<String>,
    /// Longest wait between reconnection attempts (default 60s).
    #[arg(long, value_name = "DURATION", hide = true)]
    pub backoff_max: Option<String>,
}

fn parse_case(text: &str) -> Result<String, String> {
    ircap_proto::request_args::check_case(text).map(|()| text.to_owned())
}

fn parse_reason(text: &str) -> Result<String, String> {
    ircap_proto::request_args::check_reason(text).map(|()| text.to_owned())
}

/// An SSM command id is a UUID; accept any short id of letters, digits and
/// `-` (empty means none) so that nothing odd reaches the manifest.
fn parse_ssm_command_id(text: &str) -> Result<String, String> {
    if text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(text.to_owned())
    } else {
        Err("expected letters, digits and '-' (at most 64)".to_owned())
    }
}

/// `ircap-agent verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The capture directory (the one holding manifest.json).
    pub dir: PathBuf,
    /// The ircap CA certificate (PEM): the collector's receipt must be
    /// signed by a receipt certificate it issued; a capture without a
    /// signed receipt then fails.
    #[arg(long, value_name = "CA_PEM")]
    pub ca: Option<PathBuf>,
}
