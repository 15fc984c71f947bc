//! `ircap-collector`: thin entry point. serve, pki, verify.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ircap_collector::auth::Role;
use ircap_collector::pki;
use ircap_collector::serve::{self, ServeConfig, Settings};

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
    Serve(ServeArgs),
    /// Create or extend a certificate authority for a trial or small fleet.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Recompute every hash of a capture directory against its manifest
    /// (exit 0 verified, 1 unreadable, 3 mismatch).
    Verify {
        /// The capture directory (the one holding manifest.json).
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file (settings: listen, store, ca, cert, key, crl).
    #[arg(long, env = "IRCAP_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7443].
    #[arg(long, env = "IRCAP_LISTEN")]
    listen: Option<String>,
    /// Store URL, e.g. file:///var/lib/ircap.
    #[arg(long, env = "IRCAP_STORE")]
    store: Option<String>,
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
    /// Serve Prometheus metrics over plain HTTP here (e.g. 127.0.0.1:9464).
    #[arg(long, env = "IRCAP_METRICS_LISTEN")]
    metrics_listen: Option<String>,
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
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    if let Ok(json) = serde_json::to_string(value) {
        let _ = writeln!(std::io::stdout().lock(), "{json}");
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    let result = match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Pki(cmd) => run_pki(cmd),
        Command::Verify { dir } => return run_verify(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(1)
        }
    }
}

fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ServeConfig::from_file(path)?,
        None => ServeConfig::default(),
    };
    let cfg = file.overlay(ServeConfig {
        listen: args.listen,
        store: args.store,
        ca: args.ca,
        cert: args.cert,
        key: args.key,
        crl: args.crl,
        metrics_listen: args.metrics_listen,
    });
    let settings = Settings::validate(&cfg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (listener, addr) = serve::bind(settings.listen).await?;
        let metrics = match settings.metrics_listen {
            Some(m) => Some(serve::bind(m).await?),
            None => None,
        };
        let metrics_addr = metrics.as_ref().map(|(_, a)| a.to_string());
        tracing::info!(%addr, metrics = ?metrics_addr, store = %settings.store_dir.display(), "Collector listening");
        print_json(&serde_json::json!({ "listening": addr.to_string(), "metrics": metrics_addr }));
        serve::serve(settings, listener, metrics.map(|(l, _)| l), serve::shutdown_signal()).await?;
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
        PkiCommand::Revoke { ca_dir, crl, certs } => {
            print_json(&pki::revoke(&ca_dir, &certs, &crl)?)
        }
    }
    Ok(())
}

fn run_verify(dir: &std::path::Path) -> ExitCode {
    match ircap_proto::verify_capture(dir) {
        Ok(report) => {
            for p in &report.problems {
                tracing::error!("{p}");
            }
            print_json(&report);
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::from(1)
        }
    }
}
