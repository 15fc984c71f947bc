//! One capture request received in daemon mode: its typed
//! [`CaptureSpec`] is turned into capture options by the host's
//! [`Policy`] (or refused, naming the policy line), and the capture runs
//! through the same code as `ircap-agent capture --collector`
//! ([`crate::capture::run`] into a [`GrpcSink`]), with the request's budget
//! around it. Where the capture goes, with which certificate, and which
//! files are never read are the daemon's settings, not the request's.

use std::time::{Instant, SystemTime};

use ircap_proto::v1::CaptureSpec;

use super::config::DaemonSettings;
use super::policy::Policy;
use crate::capture;
use crate::options::CaptureOptions;
use crate::priority::Lowered;
use crate::sink::budget::{Budget, BudgetSink};
use crate::sink::grpc::{CollectorSettings, GrpcSink};

/// Upload attempts per step of a requested capture.
pub const UPLOAD_ATTEMPTS: u32 = 8;
/// Longest a requested capture's upload may take in all.
pub const UPLOAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// What the agent was asked to do.
#[derive(Debug, Clone)]
pub struct Request {
    /// Request id, from the collector.
    pub id: String,
    /// What to capture.
    pub spec: CaptureSpec,
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
    /// Steps were abandoned by the watchdog: their threads may still be
    /// blocked in the kernel, so the daemon restarts after reporting.
    pub left_blocked: bool,
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
            left_blocked: false,
        }
    }
}

/// The capture options of `spec` under `policy`, with the daemon's own
/// settings for everything a request never chooses.
///
/// # Errors
/// The policy's refusal, as text naming the policy line.
pub fn options(
    spec: &CaptureSpec,
    policy: &Policy,
    settings: &DaemonSettings,
) -> Result<CaptureOptions, String> {
    let mut options = policy
        .options(spec, SystemTime::now())
        .map_err(|e| e.to_string())?;
    options.collector = Some(settings.mtls.url.clone());
    options.imds = settings.imds_endpoint.is_some();
    if let Some(endpoint) = &settings.imds_endpoint {
        options.imds_endpoint.clone_from(endpoint);
    }
    options.protected = settings.protected.clone();
    options.enter_remote_fs = settings.enter_remote_fs;
    Ok(options)
}

/// Runs `request` to the end. `started` is called with the capture id once
/// the capture is open on the collector. Never panics; every failure is
/// an [`Outcome`].
pub fn run(
    request: &Request,
    daemon: &DaemonSettings,
    lowered: Option<&Lowered>,
    started: &dyn Fn(&str),
) -> Outcome {
    let t0 = Instant::now();
    let options = match options(&request.spec, &daemon.policy, daemon) {
        Ok(o) => o,
        Err(why) => {
            tracing::warn!(request_id = request.id, "Request refused: {why}");
            return Outcome::refused(&request.id, why);
        }
    };
    // No upload retry starts after the time budget either.
    let deadline = request
        .budget
        .max_time
        .map_or(UPLOAD_DEADLINE, |t| t.min(UPLOAD_DEADLINE));
    let mtls = &daemon.mtls;
    let settings = CollectorSettings {
        url: mtls.url.clone(),
        ca: mtls.ca.clone(),
        cert: mtls.cert.clone(),
        key: mtls.key.clone(),
        attempts: UPLOAD_ATTEMPTS,
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
        left_blocked: false,
    };
    let remote = match GrpcSink::open(&settings, &capture_id, &hostname) {
        Ok(s) => s,
        Err(e) => return outcome("failed", e.to_string(), 0),
    };
    let sink = std::sync::Arc::new(BudgetSink::new(Box::new(remote), request.budget));
    started(&capture_id);
    tracing::info!(
        request_id = request.id,
        capture_id,
        "Requested capture started"
    );
    match capture::run(&capture_id, &options, sink, lowered) {
        Ok(done) => {
            let summary = done.summary();
            tracing::info!(
                request_id = request.id,
                capture_id,
                bytes = summary.bytes_stored,
                "Requested capture complete"
            );
            if summary.status == "partial" {
                let why = done
                    .manifest
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.source, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                Outcome {
                    left_blocked: !done.abandoned.is_empty(),
                    ..outcome("partial", why, summary.bytes_stored)
                }
            } else {
                outcome("complete", String::new(), summary.bytes_stored)
            }
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
