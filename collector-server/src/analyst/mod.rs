//! The analyst commands: `list`, `show`, `pull`, `audit`, `request`,
//! `agents`, `approve` over the same mutual TLS as agents, with an analyst
//! certificate, and `verify` of a capture directory on this machine.
//!
//! One file per command holds its flags, its `run` (what it asks, what it
//! prints, its exit code) and its rendering. Every call to the collector
//! goes through one [`AnalystClient`]; every line of host-supplied text
//! goes out through [`crate::render`], which escapes terminal controls.
//! Exit codes: 0 done, 1 failed, 2 settings refused before anything was
//! sent, 3 (`pull`, `verify`) a capture that does not verify.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::render::escape;

pub mod agents;
pub mod approve;
pub mod audit;
mod client;
pub mod list;
pub mod pull;
pub mod request;
pub mod show;
pub mod verify;

pub use client::{AnalystClient, AnalystError, ServerSettings, YaraSummary, is_final};

/// How analyst commands reach the collector.
#[derive(Debug, Args)]
pub struct ServerArgs {
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
    crate::audit::check_case(text).map(|()| text.to_owned())
}

impl ServerArgs {
    /// Where the collector is and which certificate to present.
    #[must_use]
    pub fn settings(&self) -> ServerSettings {
        ServerSettings {
            url: self.server.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// The client every call of this command goes through, tagged with
    /// `--case` and `--reason`.
    ///
    /// # Errors
    /// [`AnalystError::Config`] when a PEM file cannot be read or the URL
    /// is bad.
    pub fn connect(&self) -> Result<AnalystClient, AnalystError> {
        AnalystClient::connect(&self.settings(), self.case.clone(), self.reason.clone())
    }
}

/// A `--since`/`--until` value as the RFC 3339 text the collector's
/// query takes: a duration back from now (`1h`, `7d`) or an RFC 3339 time;
/// empty when the flag was not given.
///
/// # Errors
/// [`AnalystError::Config`] naming the option.
pub fn query_time(option: &str, value: Option<&str>) -> Result<String, AnalystError> {
    value.map_or(Ok(String::new()), |v| {
        ircap_proto::units::since_rfc3339(v, std::time::SystemTime::now())
            .map_err(|e| AnalystError::Config(format!("{option}: {e}")))
    })
}

/// Parses a duration flag (`90s`, `30m`, `2h`, `1d`) with the shared
/// parser, naming the option in the error.
///
/// # Errors
/// [`AnalystError::Config`] naming the option.
pub fn parse_duration(option: &str, text: &str) -> Result<Duration, AnalystError> {
    ircap_proto::units::parse_duration(text)
        .map_err(|e| AnalystError::Config(format!("{option}: {e}")))
}

/// Parses a size flag (`4096`, `64K`, `512M`, `2G`) with the shared
/// parser, naming the option in the error.
///
/// # Errors
/// [`AnalystError::Config`] naming the option.
pub fn parse_size(option: &str, text: &str) -> Result<u64, AnalystError> {
    ircap_proto::units::parse_size(text).map_err(|e| AnalystError::Config(format!("{option}: {e}")))
}

/// Runs a command's `work` on a current-thread runtime: its exit code, or
/// its failure logged by [`failed`].
fn run(
    server: &ServerArgs,
    work: impl Future<Output = Result<ExitCode, AnalystError>>,
) -> ExitCode {
    let Some(runtime) = runtime() else {
        return ExitCode::from(1);
    };
    runtime
        .block_on(work)
        .unwrap_or_else(|err| failed(&err, Some(&server.settings())))
}

/// Logs an analyst command's failure in one escaped line (probing the
/// collector once when the error does not say why it could not be
/// reached); exit 2 for settings refused before anything was sent, 1
/// otherwise.
fn failed(err: &AnalystError, settings: Option<&ServerSettings>) -> ExitCode {
    let url = settings.map_or("", |s| s.url.as_str());
    let diagnosed = match (err, settings) {
        (AnalystError::Call(status), Some(s)) if ircap_proto::explain::is_unexplained(status) => {
            runtime().and_then(|rt| rt.block_on(ircap_proto::client::diagnose(s)))
        }
        _ => None,
    };
    let message = diagnosed.map_or_else(|| err.explain(url), |d| d.message);
    tracing::error!("{}", escape(&message));
    if matches!(err, AnalystError::Config(_)) {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

fn runtime() -> Option<tokio::runtime::Runtime> {
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

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    #[allow(clippy::cast_precision_loss)]
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS.get(unit).unwrap_or(&"B"))
}
