//! `ircap-collector`: the command tree, tracing and the serve, reindex
//! and pki entry points; each analyst command (list, show, pull, audit,
//! request, agents, approve, verify) is a file in
//! [`ircap_collector::analyst`], and findings, diff and report are in
//! [`ircap_collector::triage::cli`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ircap_collector::auth::Role;
use ircap_collector::render::print_json;
use ircap_collector::serve::{self, S3Config, ServeConfig, Settings};
use ircap_collector::{analyst, pki};

/// The ircap collector: receives captures over mutual-TLS gRPC, verifies
/// and stores them.
#[derive(Debug, Parser)]
#[command(name = "ircap-collector", version, about)]
struct Cli {
    /// Log filter for stderr (info, debug, ...).
    #[arg(long, global = true, env = "IRCAP_LOG", default_value = "info")]
    log: String,
    /// Structured JSON logs on stderr.
    #[arg(long, global = true, env = "IRCAP_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve agents over mutual-TLS gRPC.
    Serve(Box<ServeArgs>),
    /// Create or extend a certificate authority for a trial or small fleet.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Write a Volatility 3 symbol table (ISF) for a capture's memory
    /// image from its kernel_symbols (BTF + kallsyms): then
    /// `vol -f physical_memory.lime -s OUT linux.pslist`.
    Symbols {
        /// A capture directory (local, or pulled), verified first.
        capture: PathBuf,
        /// Directory that receives the table.
        #[arg(long)]
        out: PathBuf,
    },
    /// List captures (analyst certificate); with --case, only that
    /// case's captures.
    List(analyst::list::ListArgs),
    /// Show a capture's manifest and chain of custody (analyst certificate).
    Show(analyst::show::ShowArgs),
    /// Download a capture, resuming a partial download, and verify every
    /// hash (exit 3 naming the file on a mismatch).
    Pull(analyst::pull::PullArgs),
    /// Approve a request that waits for a second analyst (serve
    /// --approvals); the requester cannot approve their own.
    Approve(analyst::approve::ApproveArgs),
    /// The access trail: who listed, showed, pulled or requested what, and
    /// when (analyst certificate).
    Audit(analyst::audit::AuditArgs),
    /// Ask connected agents (daemon mode) to capture now (analyst
    /// certificate); with --wait, print each agent's result as it finishes
    /// (exit 0 when every targeted agent completed, 1 otherwise).
    Request(Box<analyst::request::RequestArgs>),
    /// List agents connected in daemon mode (analyst certificate).
    Agents(analyst::agents::AgentsArgs),
    /// Run the triage rules over a capture (findings with ATT&CK ids and
    /// pointers to the rows); writes <id>.findings.jsonl beside it.
    Findings(ircap_collector::triage::cli::FindingsArgs),
    /// What changed between two captures of one host (or, with
    /// --baseline, since the host's baseline capture).
    Diff(ircap_collector::triage::cli::DiffArgs),
    /// Write one self-contained HTML page about a capture.
    Report(ircap_collector::triage::cli::ReportArgs),
    /// Rebuild the capture index (what `list` reads) from the evidence in
    /// the store: every committed manifest. Takes serve's store settings
    /// (--store, --config, the S3 options); safe while collectors serve.
    Reindex(Box<ServeArgs>),
    /// Recompute every hash of a capture directory against its manifest,
    /// and check the collector's signed receipt (exit 0 verified, 1
    /// unreadable, 3 mismatch).
    Verify(analyst::verify::VerifyArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (settings: listen, store, ca, cert, key, crl).
    #[arg(long, env = "IRCAP_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7443].
    #[arg(long, env = "IRCAP_LISTEN")]
    listen: Option<String>,
    /// Store URL: file:///var/lib/ircap or s3://BUCKET/PREFIX.
    #[arg(long, env = "IRCAP_STORE")]
    store: Option<String>,
    /// S3 region (else the AWS chain's, else us-east-1).
    #[arg(long, env = "IRCAP_S3_REGION")]
    s3_region: Option<String>,
    /// Endpoint URL of an S3-compatible store.
    #[arg(long, env = "AWS_ENDPOINT_URL_S3")]
    s3_endpoint: Option<String>,
    /// Path-style S3 addressing (endpoint/bucket/key).
    #[arg(long, env = "IRCAP_S3_PATH_STYLE")]
    s3_path_style: bool,
    /// Object Lock retention mode of evidence objects: GOVERNANCE or COMPLIANCE.
    #[arg(long, env = "IRCAP_S3_RETENTION_MODE")]
    s3_retention_mode: Option<String>,
    /// Object Lock retention period in days.
    #[arg(long, env = "IRCAP_S3_RETENTION_DAYS")]
    s3_retention_days: Option<u32>,
    /// Put a legal hold on evidence objects.
    #[arg(long, env = "IRCAP_S3_LEGAL_HOLD")]
    s3_legal_hold: bool,
    /// SSE-KMS key id or ARN for every object.
    #[arg(long, env = "IRCAP_S3_KMS_KEY_ID")]
    s3_kms_key_id: Option<String>,
    /// Storage class of evidence objects, e.g. STANDARD_IA.
    #[arg(long, env = "IRCAP_S3_STORAGE_CLASS")]
    s3_storage_class: Option<String>,
    /// CA certificate client certificates must chain to.
    #[arg(long, env = "IRCAP_CA")]
    ca: Option<PathBuf>,
    /// Server certificate (PEM).
    #[arg(long, env = "IRCAP_CERT")]
    cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "IRCAP_KEY")]
    key: Option<PathBuf>,
    /// Certificate revocation list (PEM).
    #[arg(long, env = "IRCAP_CRL")]
    crl: Option<PathBuf>,
    /// Private key that signs each capture's receipt (receipt.key from
    /// `pki init`); without it receipts are unsigned.
    #[arg(long, env = "IRCAP_RECEIPT_KEY", requires = "receipt_cert")]
    receipt_key: Option<PathBuf>,
    /// The receipt key's certificate (receipt.pem), issued by --ca.
    #[arg(long, env = "IRCAP_RECEIPT_CERT", requires = "receipt_key")]
    receipt_cert: Option<PathBuf>,
    /// Refuse every analyst call (list, show, pull, request, audit) that
    /// carries no case id (--case).
    #[arg(long, env = "IRCAP_REQUIRE_CASE")]
    require_case: bool,
    /// Requests that wait in `pending` until a different analyst runs
    /// `approve`: comma-separated memory (process memory), physical
    /// (physical memory), fleet (more than --approval-fleet-hosts agents,
    /// or --all), yara.
    #[arg(long, env = "IRCAP_APPROVALS", value_name = "CLASSES")]
    approvals: Option<String>,
    /// fleet: a request matching more than N agents needs approval [default: 5].
    #[arg(long, value_name = "N")]
    approval_fleet_hosts: Option<usize>,
    /// How long a request may wait for approval [default: 4h].
    #[arg(long, value_name = "DURATION")]
    approval_ttl: Option<String>,
    /// Serve Prometheus metrics over plain HTTP here (e.g. 127.0.0.1:9464).
    #[arg(long, env = "IRCAP_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Collect uploads not committed after this long (90s, 30m, 24h, 1d;
    /// default 24h).
    #[arg(long, env = "IRCAP_UPLOAD_TTL")]
    upload_ttl: Option<String>,
    /// Drop an upload stream whose agent has not read an acknowledgement
    /// for this long (default 30s).
    #[arg(long, hide = true)]
    ack_send_timeout: Option<String>,
    /// Longest life of one upload stream (default 6h).
    #[arg(long, hide = true)]
    stream_deadline: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Write ca.pem/ca.key, server.pem/server.key and one certificate per
    /// agent and analyst into DIR.
    Init {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Agent identity (repeatable).
        #[arg(long = "agent")]
        agents: Vec<String>,
        /// Analyst identity (repeatable).
        #[arg(long = "analyst")]
        analysts: Vec<String>,
        /// Extra DNS name or IP for the server certificate (repeatable).
        #[arg(long = "server-name")]
        server_names: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Issue one more agent or analyst certificate from an existing CA.
    Issue {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// agent or analyst.
        #[arg(long)]
        role: Role,
        /// Identity name.
        name: String,
    },
    /// Issue a receipt-signing certificate (receipt.pem/receipt.key) from
    /// an existing CA, for a PKI made before signed receipts.
    Receipt {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a CRL revoking the given certificates.
    Revoke {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where to write the PEM CRL.
        #[arg(long)]
        crl: PathBuf,
        /// Certificates to revoke.
        certs: Vec<PathBuf>,
    },
}

fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| ircap_proto::terminal::SafeLines(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    let result = match cli.command {
        Command::Serve(args) => run_serve(*args),
        Command::Reindex(args) => run_reindex(*args),
        Command::Pki(cmd) => run_pki(cmd),
        Command::Verify(args) => return analyst::verify::run(&args),
        Command::Symbols { capture, out } => ircap_collector::symbols::run(&capture, &out)
            .map(|summary| print_json(&summary))
            .map_err(anyhow::Error::from),
        Command::List(args) => return analyst::list::run(args),
        Command::Show(args) => return analyst::show::run(args),
        Command::Audit(args) => return analyst::audit::run(args),
        Command::Pull(args) => return analyst::pull::run(args),
        Command::Request(args) => return analyst::request::run(*args),
        Command::Approve(args) => return analyst::approve::run(args),
        Command::Agents(args) => return analyst::agents::run(args),
        Command::Findings(args) => return ircap_collector::triage::cli::findings(&args),
        Command::Diff(args) => return ircap_collector::triage::cli::diff(&args),
        Command::Report(args) => return ircap_collector::triage::cli::report(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(refused_settings_code(&err))
        }
    }
}

/// Exit 2 for settings refused before anything was done (a `serve` setting
/// that cannot work, an S3 store whose bucket, credentials or Object Lock
/// S3 refuses at start-up, `pki init` over existing files without `--force`), as
/// the analyst commands do; 1 for everything else.
fn refused_settings_code(err: &anyhow::Error) -> u8 {
    let refused = matches!(
        err.downcast_ref::<serve::ServeError>(),
        Some(
            serve::ServeError::Config(_)
                | serve::ServeError::Store(ircap_collector::store::StoreError::Refused { .. })
        )
    ) || matches!(
        err.downcast_ref::<pki::PkiError>(),
        Some(pki::PkiError::Exists { .. })
    );
    if refused { 2 } else { 1 }
}

/// The config file overlaid with the flags and environment.
fn serve_config(args: ServeArgs) -> anyhow::Result<ServeConfig> {
    let file = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    Ok(file.overlay(ServeConfig {
        listen: args.listen,
        store: args.store,
        s3: S3Config {
            region: args.s3_region,
            endpoint: args.s3_endpoint,
            path_style: args.s3_path_style.then_some(true),
            retention_mode: args.s3_retention_mode,
            retention_days: args.s3_retention_days,
            legal_hold: args.s3_legal_hold.then_some(true),
            kms_key_id: args.s3_kms_key_id,
            storage_class: args.s3_storage_class,
        },
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        crl: args.crl,
        metrics_listen: args.metrics_listen,
        upload_ttl: args.upload_ttl,
        ack_send_timeout: args.ack_send_timeout,
        stream_deadline: args.stream_deadline,
        receipt_key: args.receipt_key,
        receipt_cert: args.receipt_cert,
        require_case: args.require_case.then_some(true),
        approvals: args.approvals,
        approval_fleet_hosts: args.approval_fleet_hosts,
        approval_ttl: args.approval_ttl,
    }))
}

fn run_reindex(args: ServeArgs) -> anyhow::Result<()> {
    let location = serve::store_location(&serve_config(args)?)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = serve::open_store(&location).await?;
        let report = store.reindex().await?;
        tracing::info!(captures = report.captures, days = report.days, skipped = report.skipped, store = %location, "Index rebuilt");
        print_json(&report);
        Ok(())
    })
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = serve_config(args)?;
    let settings = Settings::validate(&cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let store = serve::open_store(&settings.store).await?;
        let (listener, addr) = serve::bind(settings.listen).await?;
        let metrics = match settings.metrics_listen {
            Some(m) => Some(serve::bind(m).await?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(|(_, a)| a.to_string());
        tracing::info!(%addr, metrics = ?metrics_addr, store = %settings.store, "Collector listening");
        let shutdown = serve::shutdown_signal();
        print_json(&serde_json::json!({ "listening": addr.to_string(), "metrics": metrics_addr }));
        serve::serve(settings, store, listener, metrics.map(|(l, _)| l), shutdown).await?;
        Ok(())
    })
}

fn run_pki(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init {
            out,
            agents,
            analysts,
            server_names,
            force,
        } => print_json(&pki::init(&out, &agents, &analysts, &server_names, force)?),
        PkiCommand::Issue {
            ca_dir,
            out,
            role,
            name,
        } => print_json(&pki::issue(&out, &ca_dir, role, &name)?),
        PkiCommand::Receipt { ca_dir, out } => print_json(&pki::issue_receipt(&out, &ca_dir)?),
        PkiCommand::Revoke { ca_dir, crl, certs } => {
            print_json(&pki::revoke(&ca_dir, &certs, &crl)?)
        }
    }
    Ok(())
}
