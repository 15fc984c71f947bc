//! `ircap-agent serve`: daemon mode.
//!
//! The agent keeps one **outbound** mutual-TLS gRPC stream to a collector
//! (`ircap.v1.AgentControl/Attach`; no port listens on the host): it
//! announces itself (hostname, instance id, labels, a per-process session
//! id), sends a heartbeat every [`DaemonSettings::heartbeat`], and runs the
//! capture requests it receives one at a time, reporting progress and the
//! outcome. When the stream breaks it reconnects with jittered exponential
//! backoff; a capture in progress carries on (it has its own upload
//! connection) and its outcome is sent once the agent is connected again.
//!
//! Idle, the agent is one thread parked in a current-thread tokio runtime,
//! woken by the heartbeat timer and HTTP/2 keepalives.

pub mod backoff;
pub mod config;
pub mod policy;
pub mod request;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ircap_proto::client::mtls_channel;
use ircap_proto::v1::agent_control_client::AgentControlClient;
use ircap_proto::v1::{
    AgentMessage, CaptureOutcome, CaptureRequest, Heartbeat, Hello, Progress, agent_message,
    collector_message,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use self::backoff::Backoff;
use self::config::DaemonSettings;
use self::request::{Outcome, Request};
use crate::priority::Lowered;
use crate::sink::budget::Budget;

/// Request ids remembered so that a request delivered twice (a lost answer,
/// a reconnect) is never run twice.
const REMEMBERED_REQUESTS: usize = 1024;
/// A connection that lasted this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The runtime could not start.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// What the capture thread reports.
enum Event {
    Started {
        request_id: String,
        capture_id: String,
    },
    Finished(Outcome),
    /// The watchdog of a request fired.
    Overdue(String),
}

/// Slack past a request's longest possible run before the daemon gives
/// up on a capture thread that is stuck in the kernel.
const WATCHDOG_GRACE: Duration = Duration::from_secs(60);

/// What outlives a connection.
struct State {
    settings: DaemonSettings,
    lowered: Option<Lowered>,
    hello: Hello,
    /// The request being captured.
    busy: Option<String>,
    /// Recent request ids with their outcome once known.
    seen: VecDeque<(String, Option<Outcome>)>,
    /// Messages not yet sent because the stream was down.
    outbox: Vec<AgentMessage>,
    /// A stuck capture was reported: exit once the report is sent.
    exit_after_report: bool,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
}

/// Runs until the process is stopped (SIGTERM/SIGINT): returns `Ok` then.
///
/// # Errors
/// [`DaemonError`] when the runtime cannot start.
pub fn run(settings: DaemonSettings, lowered: Option<Lowered>) -> Result<(), DaemonError> {
    let instance_id = settings
        .imds_endpoint
        .as_deref()
        .and_then(|endpoint| crate::collect::imds::query(endpoint).instance_id)
        .unwrap_or_default();
    let hello = Hello {
        session_id: uuid::Uuid::now_v7().to_string(),
        hostname: crate::collect::system::hostname(),
        instance_id,
        labels: settings.labels.clone().into_iter().collect(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        busy_request_id: String::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut state = State {
        settings,
        lowered,
        hello,
        busy: None,
        seen: VecDeque::new(),
        outbox: Vec::new(),
        exit_after_report: false,
        events_tx,
        events_rx,
    };
    rt.block_on(async move {
        tokio::select! {
            () = connect_forever(&mut state) => {}
            () = shutdown_signal() => tracing::info!("Stopping"),
        }
    });
    Ok(())
}

async fn connect_forever(state: &mut State) {
    let mut backoff = Backoff::new(Duration::from_millis(500), state.settings.backoff_max);
    tracing::info!(
        collector = state.settings.mtls.url,
        session_id = state.hello.session_id,
        hostname = state.hello.hostname,
        "Agent daemon started"
    );
    loop {
        let started = Instant::now();
        match session(state).await {
            Ok(()) => tracing::warn!("Collector closed the control stream"),
            Err(why) => tracing::warn!("Control stream lost: {why}"),
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        tracing::info!(wait_ms = wait.as_millis(), "Reconnecting");
        // Keep recording capture events while waiting.
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                Some(ev) = state.events_rx.recv() => {
                    let msg = state.on_event(ev);
                    state.outbox.push(msg);
                    if state.exit_after_report {
                        std::process::exit(1);
                    }
                }
            }
        }
    }
}

fn message(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

/// One connection: hello, then heartbeats, requests and capture events
/// until the stream breaks.
async fn session(state: &mut State) -> Result<(), String> {
    let channel = mtls_channel(&state.settings.mtls).map_err(|e| e.to_string())?;
    let mut client = AgentControlClient::new(channel);
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let hello = Hello {
        busy_request_id: state.busy.clone().unwrap_or_default(),
        ..state.hello.clone()
    };
    tx.try_send(message(agent_message::Body::Hello(hello)))
        .map_err(|e| e.to_string())?;
    let mut inbound = match client.attach(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            let probed = if ircap_proto::explain::is_unexplained(&status) {
                ircap_proto::client::diagnose(&state.settings.mtls).await
            } else {
                None
            };
            return Err(probed.map_or_else(
                || ircap_proto::explain::status(&status, &state.settings.mtls.url),
                |p| p.message,
            ));
        }
    };
    // Whatever could not be sent while disconnected goes first.
    for msg in std::mem::take(&mut state.outbox) {
        tx.send(msg).await.map_err(|e| e.to_string())?;
    }
    let mut heartbeat = tokio::time::interval(state.settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            msg = inbound.message() => {
                let msg = msg.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
                let Some(msg) = msg else { return Ok(()) };
                match msg.body {
                    Some(collector_message::Body::Welcome(w)) => {
                        if w.duplicate {
                            tracing::warn!(replica = w.replica_id, "Collector reports another live agent with this certificate identity");
                        }
                        tracing::info!(replica = w.replica_id, "Connected to the collector");
                    }
                    Some(collector_message::Body::Request(req)) => {
                        if let Some(reply) = state.on_request(req) {
                            tx.send(reply).await.map_err(|e| e.to_string())?;
                        }
                    }
                    Some(collector_message::Body::Ping(_)) | None => {}
                }
            }
            _ = heartbeat.tick() => {
                let hb = Heartbeat { busy_request_id: state.busy.clone().unwrap_or_default() };
                tx.send(message(agent_message::Body::Heartbeat(hb))).await.map_err(|e| e.to_string())?;
            }
            Some(ev) = state.events_rx.recv() => {
                let msg = state.on_event(ev);
                if let Err(e) = tx.send(msg).await {
                    state.outbox.push(e.0);
                    return Err("stream closed while reporting".into());
                }
                if state.exit_after_report {
                    // Give the stream a moment to carry the report.
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    std::process::exit(1);
                }
            }
        }
    }
}

impl State {
    /// A request from the collector: start it, or say why not.
    fn on_request(&mut self, req: CaptureRequest) -> Option<AgentMessage> {
        let id = req.request_id.clone();
        if let Some((_, known)) = self.seen.iter().find(|(r, _)| *r == id) {
            tracing::info!(
                request_id = id,
                "Request already received; not running it again"
            );
            // Repeat a known outcome (its first report may have been lost).
            return known.clone().map(|o| outcome_message(&o));
        }
        if let Some(current) = &self.busy {
            let refused = Outcome::refused(&id, format!("busy with request {current}"));
            return Some(outcome_message(&refused));
        }
        if self.seen.len() >= REMEMBERED_REQUESTS {
            self.seen.pop_front();
        }
        self.seen.push_back((id.clone(), None));
        self.busy = Some(id.clone());
        let request = Request {
            id,
            spec: req.spec.unwrap_or_default(),
            budget: Budget {
                max_bytes: (req.max_bytes > 0).then_some(req.max_bytes),
                max_time: (req.max_seconds > 0).then(|| Duration::from_secs(req.max_seconds)),
            },
        };
        let settings = self.settings.clone();
        let lowered = self.lowered.clone();
        let events = self.events_tx.clone();
        // A plain thread: the capture is synchronous and its upload sink
        // runs its own runtime.
        let spawned = std::thread::Builder::new()
            .name("ircap-capture".into())
            .spawn(move || {
                let started = |capture_id: &str| {
                    let _ = events.send(Event::Started {
                        request_id: request.id.clone(),
                        capture_id: capture_id.to_owned(),
                    });
                };
                let outcome = request::run(&request, &settings, lowered.as_ref(), &started);
                let _ = events.send(Event::Finished(outcome));
            });
        // Collection is bounded by its deadline and the upload by its own;
        // a capture thread still running past both is stuck in the kernel
        // (a hung file system): the daemon then reports the failure and
        // exits, so that systemd restarts it clean.
        let longest =
            self.settings.policy.max_deadline() + request::UPLOAD_DEADLINE + WATCHDOG_GRACE;
        let watchdog = self.events_tx.clone();
        let overdue_id = req.request_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(longest).await;
            let _ = watchdog.send(Event::Overdue(overdue_id));
        });
        if let Err(e) = spawned {
            self.busy = None;
            let failed = Outcome::refused(&req.request_id, format!("cannot start a thread: {e}"));
            return Some(outcome_message(&failed));
        }
        None
    }

    /// Turns a capture event into the message that reports it.
    fn on_event(&mut self, ev: Event) -> AgentMessage {
        match ev {
            Event::Started {
                request_id,
                capture_id,
            } => message(agent_message::Body::Progress(Progress {
                request_id,
                capture_id,
                stage: "started".into(),
            })),
            Event::Overdue(request_id) => {
                if self.busy.as_deref() == Some(request_id.as_str()) {
                    tracing::error!(
                        request_id,
                        "Capture thread stuck past every deadline; reporting failure and exiting"
                    );
                    self.exit_after_report = true;
                    let mut failed = Outcome::refused(
                        &request_id,
                        "capture stuck past its deadline (a read that never returned); the agent restarts".into(),
                    );
                    failed.status = "failed";
                    return outcome_message(&failed);
                }
                message(agent_message::Body::Heartbeat(Heartbeat {
                    busy_request_id: self.busy.clone().unwrap_or_default(),
                }))
            }
            Event::Finished(outcome) => {
                self.busy = None;
                if outcome.left_blocked {
                    // An abandoned step's thread is still blocked in the
                    // kernel; a fresh process holds nothing of it.
                    tracing::warn!(
                        request_id = outcome.request_id,
                        "A capture step was abandoned and its thread is still blocked; exiting after the report so that systemd restarts the agent clean"
                    );
                    self.exit_after_report = true;
                }
                if let Some(slot) = self.seen.iter_mut().find(|(r, _)| *r == outcome.request_id) {
                    slot.1 = Some(outcome.clone());
                }
                outcome_message(&outcome)
            }
        }
    }
}

fn outcome_message(o: &Outcome) -> AgentMessage {
    message(agent_message::Body::Outcome(CaptureOutcome {
        request_id: o.request_id.clone(),
        capture_id: o.capture_id.clone(),
        status: o.status.to_owned(),
        error: o.error.clone(),
        bytes_stored: o.bytes_stored,
        duration_ms: o.duration_ms,
    }))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
