//! A collector served from the `ircap_collector` library inside the test
//! process, the way `ircap-collector serve` serves one: the same
//! [`ServeConfig`] validated by [`Settings::validate`], the same
//! [`open_store`], [`bind`] and [`serve`], real certificates from the test
//! PKI, on `127.0.0.1` (port 0 unless given), on its own multi-thread
//! runtime on a thread of its own.
//!
//! For tests whose point is the gRPC protocol and the collector's
//! security boundary, not the binary: no process to start, no listening
//! line to wait for. Tests of the binary itself (flags, config file, exit
//! codes, signals, a mount namespace) start a [`crate::Collector`].
//!
//! What the collector logs goes to a buffer of its own
//! ([`InProcessCollector::log`]), not to the test's output: every thread
//! of its runtime gets a subscriber writing there, as the binary's writes
//! to stderr.
//!
//! It shares the process with the test: with a CRL configured it reloads
//! on a SIGHUP sent to the test process, and settings read from the
//! environment (`IRCAP_CONTROL_POLL_MS`) are the test process's.

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ircap_collector::serve::{ServeConfig, ServeError, Settings, bind, open_store, serve};

use crate::Served;

/// How long in-flight calls get to finish once a test collector is
/// dropped (the binary gives them [`ircap_collector::serve::SHUTDOWN_GRACE`];
/// a test has nothing to wait for).
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Longest wait for the server thread after the grace: its runtime's
/// blocking tasks (file syncs) are given up after this.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(2);

/// A collector served in this process; stopped (and its port freed) when
/// dropped. Where it listens and what it serves from are its
/// [`Served`] fields.
pub struct InProcessCollector {
    served: Served,
    log: Log,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl InProcessCollector {
    /// A collector to start, trusting `pki` (its `ca.pem`, `server.pem`
    /// and `server.key`) and storing in the directory `store`; receipts
    /// are signed with the PKI's `receipt.key` when it has one, as
    /// [`crate::Collector::builder`] does.
    #[must_use]
    pub fn builder(pki: &Path, store: &Path) -> InProcessBuilder {
        InProcessBuilder {
            store: store.to_path_buf(),
            pki: pki.to_path_buf(),
            port: 0,
            config: ServeConfig::default(),
        }
    }

    /// [`Self::builder`] with every other setting at its default.
    ///
    /// # Panics
    /// When the collector does not start.
    #[must_use]
    pub fn start(pki: &Path, store: &Path) -> Self {
        Self::builder(pki, store).start()
    }

    /// What the collector logged so far, one line per event, without
    /// colours (what the binary writes to stderr).
    #[must_use]
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.0.lock().unwrap_or_else(PoisonError::into_inner))
            .into_owned()
    }
}

impl Deref for InProcessCollector {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.served
    }
}

impl Drop for InProcessCollector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Bounded: `serve` is abandoned after STOP_GRACE and the runtime
        // after RUNTIME_SHUTDOWN.
        let result = self.thread.take().map(std::thread::JoinHandle::join);
        let failed = match result {
            Some(Ok(Err(e))) => Some(e.to_string()),
            Some(Err(_)) => Some("the server thread panicked".to_owned()),
            _ => None,
        };
        if let Some(why) = failed.as_ref() {
            eprintln!("in-process collector at {}: {why}", self.served.addr);
        }
        if failed.is_some() || std::thread::panicking() {
            eprintln!(
                "in-process collector at {} logged:\n{}",
                self.served.addr,
                self.log()
            );
        }
    }
}

/// How an [`InProcessCollector`] is started.
pub struct InProcessBuilder {
    store: PathBuf,
    pki: PathBuf,
    port: u16,
    config: ServeConfig,
}

impl InProcessBuilder {
    /// Listen on this loopback port (default 0: any free one).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Settings over the defaults, as the binary's flags or config file
    /// would give them (`upload_ttl: Some("2s".into())`, ...); the ones
    /// set here win over what the builder sets.
    #[must_use]
    pub fn config(mut self, config: ServeConfig) -> Self {
        self.config = self.config.overlay(config);
        self
    }

    /// Validates the settings, opens the store, binds and starts serving;
    /// returns once it listens.
    ///
    /// # Errors
    /// [`ServeError`] when the settings are invalid or the store or the
    /// listener cannot be opened.
    pub fn try_start(self) -> Result<InProcessCollector, ServeError> {
        let Self {
            store,
            pki,
            port,
            config,
        } = self;
        let receipt_key = pki.join("receipt.key");
        let signs = receipt_key.exists();
        let base = ServeConfig {
            listen: Some(format!("127.0.0.1:{port}")),
            store: Some(format!("file://{}", store.display())),
            ca: Some(pki.join("ca.pem")),
            cert: Some(pki.join("server.pem")),
            key: Some(pki.join("server.key")),
            receipt_key: signs.then_some(receipt_key),
            receipt_cert: signs.then(|| pki.join("receipt.pem")),
            ..ServeConfig::default()
        };
        let settings = Settings::validate(&base.overlay(config))?;

        let log = Log::default();
        let dispatch = log.dispatch();
        let on_start = dispatch.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("inproc-collector")
            .enable_all()
            // The subscriber stays the thread's default for its life.
            .on_thread_start(move || {
                std::mem::forget(tracing::dispatcher::set_default(&on_start));
            })
            .build()
            .map_err(|source| ServeError::Listen {
                addr: settings.listen.to_string(),
                source,
            })?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("inproc-collector".into())
            .spawn(move || {
                let _default = tracing::dispatcher::set_default(&dispatch);
                let result = runtime.block_on(run(settings, ready_tx, stop_rx));
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
                result
            })
            .map_err(|source| ServeError::Listen {
                addr: format!("127.0.0.1:{port}"),
                source,
            })?;
        match ready_rx.recv() {
            Ok((addr, metrics)) => Ok(InProcessCollector {
                served: Served {
                    addr,
                    metrics,
                    store,
                    pki,
                },
                log,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            // It failed before listening: its error is the thread's result.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(ServeError::Config(
                    "the in-process collector stopped before listening".into(),
                )),
            },
        }
    }

    /// [`Self::try_start`].
    ///
    /// # Panics
    /// When the collector does not start.
    #[must_use]
    pub fn start(self) -> InProcessCollector {
        self.try_start()
            .unwrap_or_else(|e| panic!("in-process collector: {e}"))
    }
}

/// What `run_serve` of the binary does once the settings are valid, with
/// `stop` for its shutdown signal and its listening address sent on
/// `ready`; `serve` is abandoned [`STOP_GRACE`] after `stop`.
async fn run(
    settings: Settings,
    ready: std::sync::mpsc::Sender<(SocketAddr, Option<SocketAddr>)>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), ServeError> {
    let store = open_store(&settings.store).await?;
    let (listener, addr) = bind(settings.listen).await?;
    let metrics = match settings.metrics_listen {
        Some(m) => Some(bind(m).await?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|(_, a)| *a);
    tracing::info!(%addr, metrics = ?metrics_addr, store = %settings.store, "Collector listening");
    let _ = ready.send((addr, metrics_addr));
    let stopping = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let stopping = Arc::clone(&stopping);
        async move {
            let _ = stop.await;
            stopping.notify_one();
        }
    };
    tokio::select! {
        r = serve(settings, store, listener, metrics.map(|(l, _)| l), shutdown) => r,
        () = async {
            stopping.notified().await;
            tokio::time::sleep(STOP_GRACE).await;
        } => Ok(()),
    }
}

/// The collector's log lines.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    /// A subscriber writing here at the binary's default level, without
    /// colours.
    fn dispatch(&self) -> tracing::Dispatch {
        let log = self.clone();
        tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::INFO)
                .with_ansi(false)
                .with_target(false)
                .with_writer(move || log.clone())
                .finish(),
        )
    }
}

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
