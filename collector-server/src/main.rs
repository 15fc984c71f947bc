//! `ircap-collector`. This release carries the offline `verify` command,
//! built on the same capture-format code as the agent; `serve`, `pki` and
//! the analyst commands arrive with the collector.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The ircap collector and analyst tool.
#[derive(Debug, Parser)]
#[command(name = "ircap-collector", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Recompute every hash of a capture directory against its manifest
    /// (exit 0 verified, 1 unreadable, 3 mismatch).
    Verify {
        /// The capture directory (the one holding manifest.json).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let Cli {
        command: Command::Verify { dir },
    } = Cli::parse();
    match ircap_proto::verify_capture(&dir) {
        Ok(report) => {
            for p in &report.problems {
                tracing::error!("{p}");
            }
            if let Ok(json) = serde_json::to_string(&report) {
                let _ = writeln!(std::io::stdout().lock(), "{json}");
            }
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
