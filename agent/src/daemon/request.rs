//! One capture request received in daemon mode, run through the same code
//! as `ircap-agent capture --collector`: the request's arguments are parsed
//! by the `capture` command's own clap parser, the capture goes through
//! [`crate::capture::run`] into a [`GrpcSink`], with the request's budget
//! around it.

use std::time::{Duration, Instant};

use clap::{Args as _, FromArgMatches as _};
use ircap_proto::client::MtlsSettings;

use crate::capture;
use crate::cli::CaptureArgs;
use crate::options::CaptureOptions;
use crate::priority::Lowered;
use crate::sink::budget::{Budget, BudgetSink};
use crate::sink::grpc::{CollectorSettings, GrpcSink};
use crate::timefmt;

/// What the agent was asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// Request id, from the collector.
    pub id: String,
    /// `ircap-agent capture` arguments.
    pub args: Vec<String>,
    /// The budget (`None` fields: no limit).
    pub budget: Budget,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The request.
    pub request_id: String,
    /// The capture id, when a capture was started.
    pub capture_id: String,
    /// `complete`, `failed` or `refused`.
    pub status: &'static str,
    /// Why it failed or was refused.
    pub error: String,
    /// Stored bytes of a complete capture.
    pub bytes_stored: u64,
    /// Wall time.
    pub duration_ms: u64,
}

impl Outcome {
    /// A request refused before any capture started.
    #[must_use]
    pub fn refused(request_id: &str, why: String) -> Self {
        Self {
            request_id: request_id.to_owned(),
            capture_id: String::new(),
            status: "refused",
            error: why,
            bytes_stored: 0,
            duration_ms: 0,
        }
    }
}

/// Why a request's arguments were refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A destination option.
    #[error(
        "{0} is not allowed in a request: captures go to the collector the agent is connected to, read from the host's own sources"
    )]
    Destination(String),
    /// The capture parser refused them.
    #[error("invalid capture arguments: {0}")]
    Parse(String),
}

/// A request's arguments, parsed.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The capture options.
    pub options: CaptureOptions,
    /// `--upload-deadline`.
    pub upload_deadline: Duration,
    /// `--upload-attempts`.
    pub upload_attempts: u32,
}

/// Parses `args` with the `ircap-agent capture` parser, refusing every
/// destination option.
///
/// # Errors
/// [`RequestError`] naming the problem.
pub fn parse_args(args: &[String]) -> Result<Parsed, RequestError> {
    if let Some(flag) = ircap_proto::request_args::refused_option(args) {
        return Err(RequestError::Destination(flag.to_owned()));
    }
    let command = CaptureArgs::augment_args(clap::Command::new("capture"))
        .mut_group("destination", |g| g.required(false))
        .no_binary_name(true);
    let matches = command
        .try_get_matches_from(args)
        .map_err(|e| RequestError::Parse(e.render().to_string().trim().to_owned()))?;
    let parsed =
        CaptureArgs::from_arg_matches(&matches).map_err(|e| RequestError::Parse(e.to_string()))?;
    let mut options =
        CaptureOptions::from_args(&parsed).map_err(|e| RequestError::Parse(e.to_string()))?;
    options.output = None;
    let upload_deadline = timefmt::parse_duration(&parsed.upload_deadline)
        .map_err(|e| RequestError::Parse(format!("--upload-deadline: {e}")))?;
    Ok(Parsed {
        options,
        upload_deadline,
        upload_attempts: parsed.upload_attempts,
    })
}

/// Runs `request` to the end. `started` is called with the capture id once
/// the capture is open on the collector. Never panics; every failure is
/// an [`Outcome`].
pub fn run(
    request: &Request,
    mtls: &MtlsSettings,
    lowered: Option<&Lowered>,
    started: &dyn Fn(&str),
) -> Outcome {
    let t0 = Instant::now();
    let Parsed {
        mut options,
        upload_deadline,
        upload_attempts,
    } = match parse_args(&request.args) {
        Ok(p) => p,
        Err(e) => return Outcome::refused(&request.id, e.to_string()),
    };
    options.collector = Some(mtls.url.clone());
    // No upload retry starts after the time budget either.
    let deadline = request
        .budget
        .max_time
        .map_or(upload_deadline, |t| t.min(upload_deadline));
    let settings = CollectorSettings {
        url: mtls.url.clone(),
        ca: mtls.ca.clone(),
        cert: mtls.cert.clone(),
        key: mtls.key.clone(),
        attempts: upload_attempts,
        deadline,
    };
    let capture_id = capture::new_capture_id();
    let hostname = crate::collect::system::hostname();
    let outcome = |status, error: String, bytes| Outcome {
        request_id: request.id.clone(),
        capture_id: capture_id.clone(),
        status,
        error,
        bytes_stored: bytes,
        duration_ms: u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    let remote = match GrpcSink::open(&settings, &capture_id, &hostname) {
        Ok(s) => s,
        Err(e) => return outcome("failed", e.to_string(), 0),
    };
    let sink = BudgetSink::new(Box::new(remote), request.budget);
    started(&capture_id);
    tracing::info!(
        request_id = request.id,
        capture_id,
        "Requested capture started"
    );
    match capture::run(&capture_id, &options, &sink, lowered) {
        Ok(done) => {
            let summary = done.summary();
            tracing::info!(
                request_id = request.id,
                capture_id,
                bytes = summary.bytes_stored,
                "Requested capture complete"
            );
            outcome("complete", String::new(), summary.bytes_stored)
        }
        Err(e) => {
            tracing::error!(
                request_id = request.id,
                capture_id,
                "Requested capture failed: {e}"
            );
            outcome("failed", e.to_string(), 0)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn capture_options_parse_like_the_capture_command() {
        let o = parse_args(&strings(&["--no-logs", "--logs-max-bytes", "64M"]))
            .unwrap()
            .options;
        assert!(!o.logs);
        assert_eq!(o.logs_max_bytes, 64 << 20);
        assert!(o.output.is_none());
        let o = parse_args(&[]).unwrap().options;
        assert!(o.logs);
    }

    #[test]
    fn destination_options_are_refused() {
        for bad in [
            &["--output", "/tmp/x"][..],
            &["-o/tmp/x"],
            &["--collector=https://evil:1"],
            &["--spool", "/x"],
            &["--key", "k"],
            &[
                "--physical-memory",
                "--physical-memory-source",
                "/etc/shadow",
            ],
            &["--imds-endpoint=http://10.0.0.1/"],
        ] {
            let err = parse_args(&strings(bad)).unwrap_err();
            assert!(
                matches!(err, RequestError::Destination(_)),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_option_named() {
        let err = parse_args(&strings(&["--logs-since", "yesterday"])).unwrap_err();
        assert!(err.to_string().contains("--logs-since"), "{err}");
        assert!(parse_args(&strings(&["--no-such-flag"])).is_err());
    }
}
