//! `ircap-collector`: thin entry point. serve, pki, verify.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ircap_collector::auth::Role;
use ircap_collector::render::escape;
use ircap_collector::serve::{self, S3Config, ServeConfig, Settings};
use ircap_collector::{analyst, analyst_requests, pki};
use ircap_proto::v1::ListCapturesRequest;

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
    List {
        #[command(flatten)]
        server: ServerArgs,
        /// Only captures uploaded with the certificate identity NAME (the
        /// identity the collector recorded, never a claimed hostname).
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Only captures whose manifest claims this hostname.
        #[arg(long, value_name = "HOSTNAME")]
        claimed_hostname: Option<String>,
        /// Only captures whose manifest claims this EC2 instance id.
        #[arg(long)]
        instance_id: Option<String>,
        /// Only captures started at or after this time: a duration back
        /// from now (`1h`, `7d`, `2w`) or an RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only captures started at or before this time (same forms).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Also list captures that were never committed.
        #[arg(long)]
        incomplete: bool,
        /// JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
        /// Only captures whose YARA scan matched (reads each capture's
        /// manifest and `yara_matches` table).
        #[arg(long)]
        yara_matched: bool,
    },
    /// Show a capture's manifest and chain of custody (analyst certificate).
    Show {
        #[command(flatten)]
        server: ServerArgs,
        /// Capture id.
        id: String,
        /// The manifest JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Download a capture, resuming a partial download, and verify every
    /// hash (exit 3 naming the file on a mismatch).
    Pull {
        #[command(flatten)]
        server: ServerArgs,
        /// Capture id.
        id: String,
        /// Directory that receives <id>/ [default: .].
        dir: Option<PathBuf>,
    },
    /// Approve a request that waits for a second analyst (serve
    /// --approvals); the requester cannot approve their own.
    Approve {
        #[command(flatten)]
        server: ServerArgs,
        /// The request id `request` printed.
        request_id: String,
    },
    /// The access trail: who listed, showed, pulled or requested what, and
    /// when (analyst certificate).
    Audit {
        #[command(flatten)]
        server: ServerArgs,
        /// Only events about this capture.
        #[arg(long, value_name = "ID")]
        capture: Option<String>,
        /// Only events by this certificate identity.
        #[arg(long, value_name = "NAME")]
        identity: Option<String>,
        /// Only events at or after this time (`1h`, `7d`, or RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only events carrying this case id.
        #[arg(long = "for-case", value_name = "CASE")]
        for_case: Option<String>,
        /// JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Ask connected agents (daemon mode) to capture now (analyst
    /// certificate); with --wait, print each agent's result as it finishes
    /// (exit 0 when every targeted agent completed, 1 otherwise).
    Request(Box<RequestArgs>),
    /// List agents connected in daemon mode (analyst certificate).
    Agents {
        #[command(flatten)]
        server: ServerArgs,
        /// JSON Lines instead of a table.
        #[arg(long)]
        json: bool,
    },
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
    Verify {
        /// The capture directory (the one holding manifest.json).
        dir: PathBuf,
        /// The ircap CA certificate (PEM): the receipt must be signed by a
        /// receipt certificate it issued; a capture without a signed
        /// receipt then fails.
        #[arg(long, value_name = "CA_PEM")]
        ca: Option<PathBuf>,
    },
}

/// `ircap-collector request`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(true).args(["host", "claimed_hostname", "instance_id", "labels", "all"])))]
struct RequestArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The agent whose certificate identity is NAME (never a hostname an
    /// agent claims).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Agents that claim this hostname in their hello (any agent can claim
    /// any hostname).
    #[arg(long, value_name = "HOSTNAME")]
    claimed_hostname: Option<String>,
    /// Agents that claim this EC2 instance id.
    #[arg(long)]
    instance_id: Option<String>,
    /// Agents with this label in their config (repeatable: every label must
    /// match; labels are claimed by the agent).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Every agent.
    #[arg(long, conflicts_with_all = ["host", "claimed_hostname", "instance_id", "labels"])]
    all: bool,
    /// Wait for every agent connected now that the target matches, and
    /// print each one's result as it finishes.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    timeout: String,
    /// Byte budget of each capture (64M, 1G); over it the capture fails.
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<String>,
    /// Time budget of each capture (90s, 10m); over it the capture fails.
    #[arg(long, value_name = "DURATION")]
    max_time: Option<String>,
    /// How long agents that connect later may still receive the request.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    ttl: String,
    /// What to capture.
    #[command(flatten, next_help_heading = "Capture")]
    spec: analyst_requests::SpecArgs,
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

/// How analyst commands reach the collector.
#[derive(Debug, Args)]
struct ServerArgs {
    /// Collector URL, https://HOST:PORT.
    #[arg(long, env = "IRCAP_SERVER")]
    server: String,
    /// CA certificate the collector's certificate must chain to.
    #[arg(long, env = "IRCAP_CA")]
    ca: PathBuf,
    /// Analyst certificate.
    #[arg(long, env = "IRCAP_CERT")]
    cert: PathBuf,
    /// Analyst key.
    #[arg(long, env = "IRCAP_KEY")]
    key: PathBuf,
    /// Case id this call is made for (e.g. IR-2026-041): recorded in the
    /// access trail, and in requests and the captures they produce.
    #[arg(long, env = "IRCAP_CASE", value_parser = parse_case)]
    case: Option<String>,
    /// Why (free text, recorded with the case id).
    #[arg(long, env = "IRCAP_REASON")]
    reason: Option<String>,
}

fn parse_case(text: &str) -> Result<String, String> {
    ircap_collector::audit::check_case(text).map(|()| text.to_owned())
}

impl ServerArgs {
    fn settings(&self) -> analyst::ServerSettings {
        analyst::set_case(self.case.clone(), self.reason.clone());
        analyst::ServerSettings {
            url: self.server.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
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

/// One JSON line on stdout, safe on a terminal (host text in it).
fn print_json<T: serde::Serialize>(value: &T) {
    if let Some(json) = ircap_collector::render::json(value) {
        let _ = writeln!(std::io::stdout().lock(), "{json}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    let result = match cli.command {
        Command::Serve(args) => run_serve(*args),
        Command::Reindex(args) => run_reindex(*args),
        Command::Pki(cmd) => run_pki(cmd),
        Command::Verify { dir, ca } => return run_verify(&dir, ca.as_deref()),
        Command::Symbols { capture, out } => ircap_collector::symbols::run(&capture, &out)
            .map(|summary| print_json(&summary))
            .map_err(anyhow::Error::from),
        cmd @ (Command::List { .. }
        | Command::Show { .. }
        | Command::Audit { .. }
        | Command::Pull { .. }) => {
            return run_analyst(cmd);
        }
        Command::Request(args) => return run_request(&args),
        Command::Approve { server, request_id } => return run_approve(&server, &request_id),
        Command::Agents { server, json } => return run_agents(&server, json),
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

fn run_analyst(cmd: Command) -> ExitCode {
    let settings = match &cmd {
        Command::List { server, .. }
        | Command::Show { server, .. }
        | Command::Audit { server, .. }
        | Command::Pull { server, .. } => Some(server.settings()),
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cmd {
            Command::List {
                server,
                host,
                claimed_hostname,
                instance_id,
                since,
                until,
                incomplete,
                json,
                yara_matched,
            } => {
                let since = analyst::query_time("--since", since.as_deref())?;
                let until = analyst::query_time("--until", until.as_deref())?;
                let mut client = analyst::connect(&server.settings())?;
                let captures = analyst::list(
                    &mut client,
                    ListCapturesRequest {
                        host: host.unwrap_or_default(),
                        claimed_hostname: claimed_hostname.unwrap_or_default(),
                        instance_id: instance_id.unwrap_or_default(),
                        since,
                        until,
                        include_incomplete: incomplete,
                        // `list --case X` lists that case's captures.
                        case_id: server.case.clone().unwrap_or_default(),
                    },
                )
                .await?;
                let mut yara = std::collections::BTreeMap::new();
                if yara_matched {
                    for c in captures.iter().filter(|c| c.status == "complete") {
                        let s = analyst::yara_summary(&mut client, &c.capture_id).await?;
                        if s.matches > 0 {
                            yara.insert(c.capture_id.clone(), s);
                        }
                    }
                }
                let captures: Vec<_> = captures
                    .into_iter()
                    .filter(|c| !yara_matched || yara.contains_key(&c.capture_id))
                    .collect();
                let mut out = std::io::stdout().lock();
                if json && yara_matched {
                    for c in &captures {
                        let mut line = capture_json(c);
                        line["yara"] =
                            serde_json::to_value(yara.get(&c.capture_id)).unwrap_or_default();
                        let _ = writeln!(
                            out,
                            "{}",
                            ircap_collector::render::json(&line).unwrap_or_default()
                        );
                    }
                } else if json {
                    for c in &captures {
                        let _ = writeln!(
                            out,
                            "{}",
                            ircap_collector::render::json(&capture_json(c)).unwrap_or_default()
                        );
                    }
                } else {
                    let _ = write!(out, "{}", analyst::list_table(&captures));
                }
                Ok(None)
            }
            Command::Audit {
                server,
                capture,
                identity,
                since,
                for_case,
                json,
            } => {
                let since = analyst::query_time("--since", since.as_deref())?;
                let mut client = analyst::connect(&server.settings())?;
                let events = analyst::audit(
                    &mut client,
                    ircap_proto::v1::ListAuditRequest {
                        capture_id: capture.unwrap_or_default(),
                        identity: identity.unwrap_or_default(),
                        since,
                        case_id: for_case.unwrap_or_default(),
                    },
                )
                .await?;
                let mut out = std::io::stdout().lock();
                if json {
                    for e in &events {
                        let _ = writeln!(
                            out,
                            "{}",
                            ircap_collector::render::json(e).unwrap_or_default()
                        );
                    }
                } else {
                    let _ = write!(out, "{}", ircap_collector::audit::table(&events));
                }
                Ok(None)
            }
            Command::Show { server, id, json } => {
                let mut client = analyst::connect(&server.settings())?;
                let (manifest, bytes) = analyst::manifest(&mut client, &id).await?;
                let mut out = std::io::stdout().lock();
                if json && std::io::IsTerminal::is_terminal(&out) {
                    // The same document, with terminal controls escaped.
                    let value: serde_json::Value = serde_json::from_slice(&bytes)
                        .map_err(|e| analyst::AnalystError::Rpc(e.to_string()))?;
                    let _ = writeln!(
                        out,
                        "{}",
                        ircap_collector::render::json(&value).unwrap_or_default()
                    );
                } else if json {
                    // Byte for byte the stored manifest, for machines.
                    let _ = out.write_all(&bytes);
                } else {
                    let found = analyst::findings(&mut client, &id).await?;
                    let _ = write!(out, "{}", analyst::show_text(&manifest));
                    let _ = write!(
                        out,
                        "\nfindings ({}, computed by the collector at commit)\n{}",
                        ircap_collector::triage::counts_text(&ircap_collector::triage::counts(
                            &found
                        )),
                        ircap_collector::triage::table(&found)
                    );
                    let history = analyst::audit(
                        &mut client,
                        ircap_proto::v1::ListAuditRequest {
                            capture_id: manifest.capture_id.clone(),
                            ..Default::default()
                        },
                    )
                    .await?;
                    let _ = write!(
                        out,
                        "\naccess history ({} events)\n{}",
                        history.len(),
                        ircap_collector::audit::table(&history)
                    );
                }
                Ok(None)
            }
            Command::Pull { server, id, dir } => {
                let mut client = analyst::connect(&server.settings())?;
                let dir = dir.unwrap_or_else(|| PathBuf::from("."));
                let done = analyst::pull(&mut client, &id, &dir).await?;
                Ok(Some(done))
            }
            _ => Ok(None),
        }
    });
    match result {
        Ok(Some(dir)) => {
            tracing::info!(dir = %dir.display(), "Capture pulled and verified");
            print_json(
                &serde_json::json!({ "status": "verified", "path": dir.display().to_string() }),
            );
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(analyst::AnalystError::Verify(report)) => {
            for p in &report.problems {
                tracing::error!("{}", escape(&p.to_string()));
            }
            print_json(&report);
            ExitCode::from(3)
        }
        Err(err) => analyst_failed(&err, settings.as_ref()),
    }
}

/// Logs an analyst command's failure in one escaped line (probing the
/// collector once when the error does not say why it could not be
/// reached); exit 2 for settings refused before anything was sent, 1
/// otherwise.
fn analyst_failed(
    err: &analyst::AnalystError,
    settings: Option<&analyst::ServerSettings>,
) -> ExitCode {
    let url = settings.map_or("", |s| s.url.as_str());
    let diagnosed = match (err, settings) {
        (analyst::AnalystError::Call(status), Some(s))
            if ircap_proto::explain::is_unexplained(status) =>
        {
            analyst_runtime().and_then(|rt| rt.block_on(ircap_proto::client::diagnose(s)))
        }
        _ => None,
    };
    let message = diagnosed.map_or_else(|| err.explain(url), |d| d.message);
    tracing::error!("{}", escape(&message));
    if matches!(err, analyst::AnalystError::Config(_)) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn analyst_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            None
        }
    }
}

/// Prints one `{"agent", "capture_id", "yara": {...}}` line per host that
/// stored a capture: matched or not, and the rules that matched.
async fn yara_lines(
    server: &analyst::ServerSettings,
    finals: &[(String, String)],
) -> Result<(), analyst::AnalystError> {
    let mut client = analyst::connect(server)?;
    for (agent, capture_id) in finals.iter().filter(|(_, id)| !id.is_empty()) {
        let s = analyst::yara_summary(&mut client, capture_id).await?;
        tracing::info!(
            agent = %escape(agent),
            capture_id = %escape(capture_id),
            matched = s.matches > 0,
            rules = %escape(&s.rules.join(",")),
            "YARA"
        );
        print_json(&serde_json::json!({
            "agent": agent,
            "capture_id": capture_id,
            "yara": {
                "matched": s.matches > 0,
                "matches": s.matches,
                "rules": s.rules,
                "cut": s.cut,
            },
        }));
    }
    Ok(())
}

fn run_request(args: &RequestArgs) -> ExitCode {
    let Some(runtime) = analyst_runtime() else {
        return ExitCode::from(1);
    };
    let result: Result<bool, analyst::AnalystError> = runtime.block_on(async move {
        let timeout = analyst_requests::parse_duration("--timeout", &args.timeout)?;
        let ttl = analyst_requests::parse_duration("--ttl", &args.ttl)?;
        let max_bytes = args
            .max_bytes
            .as_deref()
            .map(|t| analyst_requests::parse_size("--max-bytes", t))
            .transpose()?
            .unwrap_or(0);
        let max_time = args
            .max_time
            .as_deref()
            .map(|t| analyst_requests::parse_duration("--max-time", t))
            .transpose()?
            .map_or(0, |d| d.as_secs().max(1));
        let labels = analyst_requests::parse_labels(&args.labels)?;
        let spec = args.spec.to_spec()?;
        let mut client = analyst_requests::connect(&args.server.settings())?;
        let created = analyst_requests::create(
            &mut client,
            ircap_proto::v1::CreateRequestRequest {
                target: Some(ircap_proto::v1::Target {
                    host: args.host.clone().unwrap_or_default(),
                    claimed_hostname: args.claimed_hostname.clone().unwrap_or_default(),
                    instance_id: args.instance_id.clone().unwrap_or_default(),
                    labels: labels.into_iter().collect(),
                    all: args.all,
                }),
                spec: Some(spec),
                max_bytes,
                max_seconds: max_time,
                ttl_seconds: ttl.as_secs(),
            },
        )
        .await?;
        let request_id = created.request_id.clone();
        print_json(&serde_json::json!({
            "request_id": request_id,
            "status": created.status,
            "approval_classes": created.approval_classes,
            "approval_expires_at": created.approval_expires_at,
            "matched": created.matched.iter().map(analyst_requests::matched_json).collect::<Vec<_>>(),
        }));
        for a in created.matched.iter().filter(|a| {
            a.matched_by
                .iter()
                .any(|m| matches!(m.as_str(), "claimed hostname" | "claimed instance id" | "labels"))
        }) {
            tracing::warn!(
                agent = %escape(&a.agent),
                hostname = %escape(&a.hostname),
                matched_by = %escape(&a.matched_by.join(", ")),
                "Matched by what the agent claims, not by its certificate identity"
            );
        }
        if created.matched.is_empty() {
            tracing::warn!(request_id = %escape(&request_id), "No connected agent matches now; agents that connect before the request expires will receive it");
        }
        if !args.wait {
            return Ok(true);
        }
        let pending_until = ircap_collector::timefmt::after(ttl);
        let mut all_complete = true;
        let finals = std::cell::RefCell::new(Vec::new());
        let mut on_final = |r: &ircap_proto::v1::RequestResult| {
            all_complete &= r.status == "complete";
            finals.borrow_mut().push((r.agent.clone(), r.capture_id.clone()));
            tracing::info!(
                agent = %escape(&r.agent),
                hostname = %escape(&r.hostname),
                status = %escape(&r.status),
                capture_id = %escape(&r.capture_id),
                error = %escape(&r.error),
                "Agent finished"
            );
            print_json(&analyst_requests::result_json(r));
        };
        if created.matched.is_empty() {
            let answered =
                analyst_requests::wait_first(&mut client, &request_id, timeout, &mut on_final)
                    .await?;
            if args.spec.yara.is_some() {
                yara_lines(&args.server.settings(), &finals.take()).await?;
            }
            if !answered {
                print_json(&serde_json::json!({
                    "request_id": request_id,
                    "status": "pending",
                    "pending_until": pending_until,
                }));
                tracing::error!(
                    request_id = %escape(&request_id),
                    "No matching agent answered before --timeout; the request stays pending until {pending_until}: an agent that connects before then still receives it"
                );
            }
            return Ok(answered && all_complete);
        }
        let expected = created.matched.iter().map(|a| a.agent.clone()).collect();
        let missing =
            analyst_requests::wait(&mut client, &request_id, &expected, timeout, &mut on_final)
                .await?;
        if args.spec.yara.is_some() {
            yara_lines(&args.server.settings(), &finals.take()).await?;
        }
        for agent in &missing {
            print_json(&serde_json::json!({ "request_id": request_id, "agent": agent, "status": "timed_out" }));
            tracing::error!(agent = %escape(agent), "No result before --timeout");
        }
        Ok(all_complete && missing.is_empty())
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => analyst_failed(&err, Some(&args.server.settings())),
    }
}

fn run_agents(server: &ServerArgs, json: bool) -> ExitCode {
    let Some(runtime) = analyst_runtime() else {
        return ExitCode::from(1);
    };
    let result = runtime.block_on(async move {
        let mut client = analyst_requests::connect(&server.settings())?;
        analyst_requests::agents(&mut client).await
    });
    match result {
        Ok(agents) => {
            let mut out = std::io::stdout().lock();
            if json {
                for a in &agents {
                    let _ = writeln!(
                        out,
                        "{}",
                        ircap_collector::render::json(&analyst_requests::agent_json(a))
                            .unwrap_or_default()
                    );
                }
            } else {
                let _ = write!(out, "{}", analyst_requests::agents_table(&agents));
            }
            ExitCode::SUCCESS
        }
        Err(err) => analyst_failed(&err, Some(&server.settings())),
    }
}

fn capture_json(c: &ircap_proto::v1::CaptureInfo) -> serde_json::Value {
    serde_json::json!({
        "capture_id": c.capture_id,
        "agent": c.agent,
        "hostname": c.hostname,
        "instance_id": (!c.instance_id.is_empty()).then_some(&c.instance_id),
        "started_at": c.started_at,
        "ended_at": c.ended_at,
        "stored_bytes": c.stored_bytes,
        "artifacts": c.artifacts,
        "status": c.status,
        "committed_at": c.committed_at,
        "findings": c.findings,
        "case": c.case_id,
    })
}

fn run_approve(server: &ServerArgs, request_id: &str) -> ExitCode {
    let settings = server.settings();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let mut client = analyst_requests::connect(&settings)?;
        analyst_requests::approve(&mut client, request_id).await
    });
    match result {
        Ok(done) => {
            tracing::info!(
                request_id = done.request_id,
                requested_by = escape(&done.requested_by).as_ref(),
                "Request approved; it is delivered from now"
            );
            print_json(&serde_json::json!({
                "request_id": done.request_id,
                "status": "approved",
                "requested_by": done.requested_by,
                "approved_by": done.approved_by,
                "approved_at": done.approved_at,
                "expires_at": done.expires_at,
            }));
            ExitCode::SUCCESS
        }
        Err(err) => analyst_failed(&err, Some(&settings)),
    }
}

fn run_verify(dir: &std::path::Path, ca: Option<&std::path::Path>) -> ExitCode {
    let ca_pem = match ca.map(std::fs::read).transpose() {
        Ok(pem) => pem,
        Err(e) => {
            tracing::error!("--ca {}: {e}", ca.unwrap_or(dir).display());
            return ExitCode::from(1);
        }
    };
    match ircap_proto::verify_capture_with(dir, ca_pem.as_deref()) {
        Ok(report) => {
            for p in &report.problems {
                tracing::error!("{}", escape(&p.to_string()));
            }
            tracing::info!("{}", escape(&report.receipt.to_string()));
            print_json(&report);
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(err) => {
            tracing::error!("{}", escape(&err.to_string()));
            ExitCode::from(1)
        }
    }
}
