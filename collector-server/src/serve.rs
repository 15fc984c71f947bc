//! `ircap-collector serve`: settings from a TOML file, then environment,
//! then flags, validated before anything listens; a TLS 1.3 accept loop
//! that requires client certificates; the gRPC services; graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ircap_proto::v1::agent_control_server::AgentControlServer;
use ircap_proto::v1::capture_query_server::CaptureQueryServer;
use ircap_proto::v1::capture_requests_server::CaptureRequestsServer;
use ircap_proto::v1::capture_upload_server::CaptureUploadServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth;
use crate::control;
use crate::metrics::Metrics;
use crate::query::QueryService;
use crate::service::{MAX_MESSAGE, UploadService};
use crate::store::Store;
use crate::store::any::AnyBlob;
use crate::store::evidence::Evidence;
use crate::store::file::FileBlob;
use crate::store::s3::{Retention, RetentionMode, S3Blob, S3Options};

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight uploads get to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// `serve` settings as written in the TOML config file. Every field can
/// also come from the environment (`IRCAP_LISTEN`, `IRCAP_STORE`,
/// `IRCAP_CA`, `IRCAP_CERT`, `IRCAP_KEY`, `IRCAP_CRL`,
/// `IRCAP_METRICS_LISTEN`, `IRCAP_S3_*`, `AWS_ENDPOINT_URL_S3`) or a flag,
/// which win in that order. S3 credentials never come from here: they come
/// from the standard AWS chain (environment, profile, web identity, IMDSv2
/// instance role).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address to listen on, e.g. `0.0.0.0:7443`.
    pub listen: Option<String>,
    /// Store URL: `file:///var/lib/ircap` or `s3://BUCKET/PREFIX`.
    pub store: Option<String>,
    /// S3 store settings (used with an `s3://` store).
    #[serde(default)]
    pub s3: S3Config,
    /// CA certificate(s) that client certificates must chain to (PEM).
    pub ca: Option<PathBuf>,
    /// The server's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM).
    pub key: Option<PathBuf>,
    /// Certificate revocation list(s) (PEM), optional.
    pub crl: Option<PathBuf>,
    /// Plain-HTTP address for Prometheus `GET /metrics`, optional (keep it
    /// on a private interface).
    pub metrics_listen: Option<String>,
    /// How long an upload may stay uncommitted before its state and
    /// staging bytes are collected (`90s`, `30m`, `24h`, `1d`; default
    /// 24h).
    pub upload_ttl: Option<String>,
    /// Longest wait to send an upload acknowledgement to an agent that
    /// does not read them (default 30s).
    pub ack_send_timeout: Option<String>,
    /// Longest life of one upload stream (default 6h).
    pub stream_deadline: Option<String>,
    /// Private key that signs capture receipts (`receipt.key` from `pki
    /// init`); without it receipts are unsigned.
    pub receipt_key: Option<PathBuf>,
    /// Its certificate (`receipt.pem`), issued by the `ca` for document
    /// signing.
    pub receipt_cert: Option<PathBuf>,
    /// Refuse every analyst call (list, show, pull, request, audit) that
    /// carries no case id (`--case`).
    pub require_case: Option<bool>,
    /// Request classes that wait for a second analyst's approval:
    /// comma-separated `memory`, `physical`, `fleet`, `yara`.
    pub approvals: Option<String>,
    /// `fleet`: a request matching more than this many agents (default 5).
    pub approval_fleet_hosts: Option<usize>,
    /// How long a request may wait for approval (default 4h).
    pub approval_ttl: Option<String>,
}

impl ServeConfig {
    /// Reads a TOML config file.
    ///
    /// # Errors
    /// [`ServeError::Config`] naming the file.
    pub fn from_file(path: &Path) -> Result<Self, ServeError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ServeError::Config(format!("{}: {e}", path.display())))
    }

    /// Overlays `other`'s set fields onto `self`.
    #[must_use]
    pub fn overlay(self, other: Self) -> Self {
        Self {
            listen: other.listen.or(self.listen),
            store: other.store.or(self.store),
            s3: self.s3.overlay(other.s3),
            ca: other.ca.or(self.ca),
            cert: other.cert.or(self.cert),
            key: other.key.or(self.key),
            crl: other.crl.or(self.crl),
            metrics_listen: other.metrics_listen.or(self.metrics_listen),
            upload_ttl: other.upload_ttl.or(self.upload_ttl),
            ack_send_timeout: other.ack_send_timeout.or(self.ack_send_timeout),
            stream_deadline: other.stream_deadline.or(self.stream_deadline),
            receipt_key: other.receipt_key.or(self.receipt_key),
            receipt_cert: other.receipt_cert.or(self.receipt_cert),
            require_case: other.require_case.or(self.require_case),
            approvals: other.approvals.or(self.approvals),
            approval_fleet_hosts: other.approval_fleet_hosts.or(self.approval_fleet_hosts),
            approval_ttl: other.approval_ttl.or(self.approval_ttl),
        }
    }
}

/// The `[s3]` table of the config file (and the `--s3-*` flags).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Region; else the AWS chain's, else `us-east-1`.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible store, e.g. `http://127.0.0.1:8333`.
    pub endpoint: Option<String>,
    /// Path-style addressing (most S3-compatible stores need it).
    pub path_style: Option<bool>,
    /// Object Lock retention mode of evidence objects: `GOVERNANCE` or
    /// `COMPLIANCE` (needs `retention_days`).
    pub retention_mode: Option<String>,
    /// Object Lock retention period in days.
    pub retention_days: Option<u32>,
    /// Put a legal hold on evidence objects.
    pub legal_hold: Option<bool>,
    /// SSE-KMS key id or ARN.
    pub kms_key_id: Option<String>,
    /// Storage class of evidence objects, e.g. `STANDARD_IA`.
    pub storage_class: Option<String>,
}

impl S3Config {
    /// Overlays `other`'s set fields onto `self`.
    #[must_use]
    pub fn overlay(self, other: Self) -> Self {
        Self {
            region: other.region.or(self.region),
            endpoint: other.endpoint.or(self.endpoint),
            path_style: other.path_style.or(self.path_style),
            retention_mode: other.retention_mode.or(self.retention_mode),
            retention_days: other.retention_days.or(self.retention_days),
            legal_hold: other.legal_hold.or(self.legal_hold),
            kms_key_id: other.kms_key_id.or(self.kms_key_id),
            storage_class: other.storage_class.or(self.storage_class),
        }
    }

    /// Validated S3 options for `url`.
    ///
    /// # Errors
    /// [`ServeError::Config`] naming the bad setting.
    pub fn options(&self, url: &str) -> Result<S3Options, ServeError> {
        let mut opts =
            S3Options::from_url(url).map_err(|e| ServeError::Config(format!("--store {e}")))?;
        let retention = match (&self.retention_mode, self.retention_days) {
            (None, None) => None,
            (Some(mode), Some(days)) if days > 0 => Some(Retention {
                mode: mode
                    .parse::<RetentionMode>()
                    .map_err(|e| ServeError::Config(format!("--s3-retention-mode {e}")))?,
                days,
            }),
            _ => {
                return Err(ServeError::Config(
                    "--s3-retention-mode and --s3-retention-days (> 0) go together".into(),
                ));
            }
        };
        opts.region = self.region.clone();
        opts.endpoint = self.endpoint.clone();
        opts.path_style = self.path_style.unwrap_or(false);
        opts.retention = retention;
        opts.legal_hold = self.legal_hold.unwrap_or(false);
        opts.kms_key_id = self.kms_key_id.clone();
        opts.storage_class = self.storage_class.clone();
        Ok(opts)
    }
}

/// Where captures go.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// `file://DIR`.
    File(PathBuf),
    /// `s3://BUCKET/PREFIX`.
    S3(S3Options),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(dir) => write!(f, "file://{}", dir.display()),
            Self::S3(o) => write!(f, "s3://{}/{}", o.bucket, o.prefix),
        }
    }
}

/// Where `cfg` says the store is.
///
/// # Errors
/// [`ServeError::Config`] when the store setting is missing or invalid.
pub fn store_location(cfg: &ServeConfig) -> Result<StoreLocation, ServeError> {
    let store = cfg.store.clone().ok_or_else(|| {
        ServeError::Config(
            "--store (or IRCAP_STORE) is required, e.g. file:///var/lib/ircap".into(),
        )
    })?;
    let store = match store.strip_prefix("file://") {
        Some(dir) if dir.starts_with('/') => StoreLocation::File(PathBuf::from(dir)),
        Some(dir) if !dir.is_empty() => {
            return Err(ServeError::Config(format!(
                "--store {store:?}: the directory must be absolute (file:///{dir}); a relative path would be resolved against the working directory"
            )));
        }
        _ if store.starts_with("s3://") => StoreLocation::S3(cfg.s3.options(&store)?),
        _ => {
            return Err(ServeError::Config(format!(
                "--store {store:?}: expected file://DIR or s3://BUCKET/PREFIX"
            )));
        }
    };
    Ok(store)
}

/// Opens the store; an S3 store checks its bucket (reachable, Object Lock
/// enabled when retention is configured) so a bad bucket fails at start.
///
/// # Errors
/// [`ServeError::Store`] naming the directory or bucket.
pub async fn open_store(location: &StoreLocation) -> Result<Store, ServeError> {
    let blob = match location {
        StoreLocation::File(dir) => {
            // The layout's top directories, so an empty store shows it.
            for sub in ["captures", "staging", "state", "index", "control"] {
                let d = dir.join(sub);
                std::fs::create_dir_all(&d).map_err(|e| {
                    crate::store::StoreError::io(format!("cannot create {}", d.display()), e)
                })?;
            }
            AnyBlob::File(FileBlob::open(dir)?)
        }
        StoreLocation::S3(opts) => AnyBlob::S3(S3Blob::connect(opts.clone()).await?),
    };
    Ok(Evidence::new(blob))
}

/// Why the collector could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A missing or invalid setting.
    #[error("configuration: {0}")]
    Config(String),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] auth::AuthError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The files of the collector's TLS configuration.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA certificates clients are verified against.
    pub ca: PathBuf,
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
    /// CRLs, when revocation is checked.
    pub crl: Option<PathBuf>,
}

/// How often the CRL file is checked for a change.
pub const CRL_POLL: Duration = Duration::from_secs(2);

/// The TLS configuration new connections get; swapped when the CRL is
/// reloaded (connections already up keep theirs).
type LiveTls = Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>;

/// Reloads the CRL on SIGHUP and whenever its file changes (checked every
/// [`CRL_POLL`]); a CRL that does not load leaves the current one in force.
async fn reload_crl(files: TlsFiles, crl: PathBuf, live: LiveTls) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut seen = stamp(&crl);
    loop {
        let forced = tokio::select! {
            () = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            () = tokio::time::sleep(CRL_POLL) => false,
        };
        let now = stamp(&crl);
        if !forced && now == seen {
            continue;
        }
        seen = now;
        match auth::server_config(&files.ca, &files.cert, &files.key, Some(&crl)) {
            Ok(config) => {
                *live
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                tracing::info!(crl = %crl.display(), signal = forced, "CRL reloaded");
            }
            Err(e) => {
                tracing::warn!(crl = %crl.display(), error = %e, "Cannot reload the CRL; the one loaded stays in force");
            }
        }
    }
}

/// Validated settings: nothing here can be wrong any more.
pub struct Settings {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where captures go.
    pub store: StoreLocation,
    /// The TLS server configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// The files it was built from, to build it again when the CRL
    /// changes.
    pub tls_files: TlsFiles,
    /// Where to serve metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long an upload may stay uncommitted.
    pub upload_ttl: Duration,
    /// Time limits of an upload stream.
    pub deadlines: crate::service::Deadlines,
    /// Signs capture receipts, when a receipt key was given.
    pub receipt: Option<Arc<crate::receipt::ReceiptSigner>>,
    /// Refuse analyst calls without a case id.
    pub require_case: bool,
    /// Which requests wait for a second analyst.
    pub approvals: Option<crate::control::approvals::ApprovalPolicy>,
}

impl Settings {
    /// Validates a merged config: every path is loaded now, so a bad
    /// certificate path fails before anything listens, naming the path.
    ///
    /// # Errors
    /// [`ServeError`] for the first problem found.
    pub fn validate(cfg: &ServeConfig) -> Result<Self, ServeError> {
        let need = |v: &Option<PathBuf>, name: &str| {
            v.clone().ok_or_else(|| {
                ServeError::Config(format!(
                    "--{name} (or IRCAP_{}) is required",
                    name.to_uppercase()
                ))
            })
        };
        let listen_text = cfg
            .listen
            .clone()
            .unwrap_or_else(|| "127.0.0.1:7443".to_owned());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|e| ServeError::Config(format!("--listen {listen_text:?}: {e}")))?;
        let store = store_location(cfg)?;
        let tls_files = TlsFiles {
            ca: need(&cfg.ca, "ca")?,
            cert: need(&cfg.cert, "cert")?,
            key: need(&cfg.key, "key")?,
            crl: cfg.crl.clone(),
        };
        let tls = auth::server_config(
            &tls_files.ca,
            &tls_files.cert,
            &tls_files.key,
            tls_files.crl.as_deref(),
        )?;
        let metrics_listen = match &cfg.metrics_listen {
            Some(text) => Some(
                text.parse()
                    .map_err(|e| ServeError::Config(format!("--metrics-listen {text:?}: {e}")))?,
            ),
            None => None,
        };
        let duration = |v: &Option<String>, name: &str, default: Duration| match v {
            Some(text) => {
                let d = crate::analyst::parse_duration(name, text)
                    .map_err(|e| ServeError::Config(e.to_string()))?;
                if d.is_zero() {
                    return Err(ServeError::Config(format!("{name} must be more than 0")));
                }
                Ok(d)
            }
            None => Ok(default),
        };
        let upload_ttl = duration(
            &cfg.upload_ttl,
            "--upload-ttl",
            crate::store::repair::DEFAULT_UPLOAD_TTL,
        )?;
        let deadlines = crate::service::Deadlines {
            ack_send: duration(
                &cfg.ack_send_timeout,
                "--ack-send-timeout",
                crate::service::ACK_SEND_TIMEOUT,
            )?,
            stream: duration(
                &cfg.stream_deadline,
                "--stream-deadline",
                crate::quota::STREAM_DEADLINE,
            )?,
        };
        let receipt = match (&cfg.receipt_key, &cfg.receipt_cert) {
            (None, None) => None,
            (Some(key), Some(cert)) => {
                let ca = std::fs::read(&tls_files.ca).map_err(|e| {
                    ServeError::Config(format!("--ca {}: {e}", tls_files.ca.display()))
                })?;
                Some(Arc::new(
                    crate::receipt::ReceiptSigner::load(key, cert, &ca)
                        .map_err(|e| ServeError::Config(e.to_string()))?,
                ))
            }
            _ => {
                return Err(ServeError::Config(
                    "--receipt-key and --receipt-cert go together".into(),
                ));
            }
        };
        let approvals = match &cfg.approvals {
            None => None,
            Some(list) => Some(
                crate::control::approvals::ApprovalPolicy::parse(
                    list,
                    cfg.approval_fleet_hosts
                        .unwrap_or(crate::control::approvals::DEFAULT_FLEET_HOSTS),
                    duration(
                        &cfg.approval_ttl,
                        "--approval-ttl",
                        crate::control::approvals::DEFAULT_APPROVAL_TTL,
                    )?,
                )
                .map_err(ServeError::Config)?,
            ),
        };
        Ok(Self {
            approvals,
            require_case: cfg.require_case.unwrap_or(false),
            receipt,
            listen,
            store,
            tls: Arc::new(tls),
            tls_files,
            metrics_listen,
            upload_ttl,
            deadlines,
        })
    }
}

/// Binds the listener and returns it with its real address (port 0 picks
/// a free port).
///
/// # Errors
/// [`ServeError::Listen`].
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Listen {
        addr: addr.to_string(),
        source,
    })?;
    Ok((listener, local))
}

/// Looks at the open captures at start and then every quarter of the
/// upload TTL (at most every 10 minutes, at least every second): commits
/// cut short by a crash are finished, uploads older than the TTL expire.
/// In the background, so a large store does not delay start.
async fn sweep_open(store: Arc<Store>, quotas: crate::quota::Quotas, ttl: Duration) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    let mut first = true;
    loop {
        match crate::store::repair::sweep(&store, ttl).await {
            Ok(r) => {
                if !r.repaired.is_empty() {
                    tracing::warn!(captures = r.repaired.len(), "Repaired interrupted commits");
                }
                if first {
                    quotas.seed_open(
                        r.open
                            .into_iter()
                            .map(|(who, id, at)| (who, id, crate::timefmt::age(&at))),
                    );
                }
                for (who, id) in r.expired {
                    quotas.close(&who, &id);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot look at the open captures");
            }
        }
        first = false;
        tokio::time::sleep(every).await;
    }
}

/// How often a collector merges the index days that can still receive
/// records (see [`crate::store::index`]).
const INDEX_MERGE_EVERY: Duration = Duration::from_secs(60);

/// Keeps the capture index compact: moves entries of the flat layout into
/// day records at start, then merges the recent days every
/// [`INDEX_MERGE_EVERY`], so that a listing reads segments, not records.
async fn index_upkeep(store: Arc<Store>) {
    match store.migrate_flat_index().await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(entries = n, "Moved index entries into day records"),
        Err(e) => tracing::warn!(error = %e, "Cannot move the flat index entries"),
    }
    loop {
        if let Err(e) = store.merge_recent().await {
            tracing::warn!(error = %e, "Cannot merge the recent index days");
        }
        tokio::time::sleep(INDEX_MERGE_EVERY).await;
    }
}

/// Serves `store` until `shutdown` resolves, then lets in-flight calls
/// finish for up to [`SHUTDOWN_GRACE`].
///
/// # Errors
/// [`ServeError`] when the server fails.
pub async fn serve(
    settings: Settings,
    store: Store,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = Arc::new(store);
    let metrics = Arc::new(Metrics::default());
    if settings.receipt.is_none() {
        tracing::warn!(
            "Receipts are unsigned: give --receipt-key and --receipt-cert (receipt.key/receipt.pem from `pki init`) so a capture's receipt can be checked offline"
        );
    }
    // Commits cut short by a crash: finished in the background, so a large
    // store does not delay start.
    let quotas = crate::quota::Quotas::default();
    let repairing = tokio::spawn(sweep_open(
        Arc::clone(&store),
        quotas.clone(),
        settings.upload_ttl,
    ));
    let indexing = tokio::spawn(index_upkeep(Arc::clone(&store)));
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(crate::metrics::serve(l, Arc::clone(&metrics))));
    let live: LiveTls = Arc::new(std::sync::RwLock::new(Arc::clone(&settings.tls)));
    let crl_task = settings.tls_files.crl.clone().map(|crl| {
        tokio::spawn(reload_crl(
            settings.tls_files.clone(),
            crl,
            Arc::clone(&live),
        ))
    });
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let connections = crate::quota::Connections::default();
    let refuse_over_limit = {
        let connections = connections.clone();
        tonic::service::InterceptorLayer::new(move |req: tonic::Request<()>| {
            connections.check(req.remote_addr())?;
            Ok(req)
        })
    };
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(Arc::clone(
                &live
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ));
            let tx = tx.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let conn = Counted::admit(tls, &connections, peer);
                        let _ = tx.send(Ok::<_, std::io::Error>(conn)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CaptureUploadServer<UploadService>>()
        .await;
    health
        .set_serving::<CaptureQueryServer<QueryService>>()
        .await;
    let query = CaptureQueryServer::new(
        QueryService::new(Arc::clone(&store)).with_require_case(settings.require_case),
    )
    .max_encoding_message_size(MAX_MESSAGE);
    // Daemon mode: agent streams, analyst requests, delivery from the store.
    let replica = Arc::new(control::replica::Replica::new(
        Arc::clone(&store),
        control::poll_interval(),
    ));
    let delivery = tokio::spawn(Arc::clone(&replica).run());
    let agent_control = AgentControlServer::new(control::agent_stream::AgentControlService::new(
        Arc::clone(&replica),
    ));
    let requests = CaptureRequestsServer::new(
        control::requests::RequestService::new(Arc::clone(&replica))
            .with_require_case(settings.require_case)
            .with_approvals(settings.approvals.clone()),
    );
    let upload = CaptureUploadServer::new(
        UploadService::new(store, metrics)
            .with_quotas(quotas)
            .with_deadlines(settings.deadlines)
            .with_receipt_signer(settings.receipt.clone()),
    )
    .max_decoding_message_size(MAX_MESSAGE)
    .max_encoding_message_size(MAX_MESSAGE);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let closing = Arc::clone(&replica);
    let graceful = async move {
        shutdown.await;
        tracing::info!("Shutting down: finishing in-flight calls");
        // Agent streams never end by themselves: close them so they
        // reconnect elsewhere, and let uploads finish.
        closing.close_all();
        let _ = stop_tx.send(());
    };
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(crate::quota::MAX_STREAMS_PER_CONNECTION))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(refuse_over_limit)
        .add_service(health_service)
        .add_service(upload)
        .add_service(query)
        .add_service(agent_control)
        .add_service(requests)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), graceful);
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r.map_err(ServeError::from),
        () = async {
            let _ = stop_rx.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("In-flight calls did not finish in time; aborting them (they stay resumable)");
            Ok(())
        }
    };
    accept_loop.abort();
    repairing.abort();
    indexing.abort();
    if let Some(task) = crl_task {
        task.abort();
    }
    delivery.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    result
}

/// A client's TLS connection, counted against its certificate identity
/// while it is open ([`crate::quota::Connections`]).
struct Counted {
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    _permit: Option<crate::quota::ConnectionPermit>,
}

impl Counted {
    fn admit(
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        connections: &crate::quota::Connections,
        peer: SocketAddr,
    ) -> Self {
        // Without an identity every call is refused anyway: not counted.
        let who = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| auth::identity_from_chain(chain).ok());
        let permit = who.map(|who| {
            let permit = connections.admit(&who.name, peer);
            if permit.refused() {
                tracing::warn!(
                    %peer,
                    identity = who.name,
                    limit = crate::quota::MAX_CONNECTIONS_PER_IDENTITY,
                    "Connection past the per-identity limit: its calls are refused"
                );
            }
            permit
        });
        Self {
            tls,
            _permit: permit,
        }
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = <tokio_rustls::server::TlsStream<tokio::net::TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.tls.connect_info()
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called (inside the runtime), not when the future is first polled, so a
/// signal sent right after the "listening" line is never missed.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {}
            () = wait(int) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn s3_settings_come_from_the_config_table_and_flags_win() {
        let file: ServeConfig = toml::from_str(
            r#"
            store = "s3://evidence/ir"
            [s3]
            region = "eu-west-1"
            endpoint = "http://127.0.0.1:8333"
            path_style = true
            retention_mode = "governance"
            retention_days = 30
            kms_key_id = "alias/ircap"
            "#,
        )
        .unwrap();
        let flags = ServeConfig {
            s3: S3Config {
                retention_mode: Some("COMPLIANCE".into()),
                ..S3Config::default()
            },
            ..ServeConfig::default()
        };
        let cfg = file.overlay(flags);
        let opts = cfg.s3.options(cfg.store.as_deref().unwrap()).unwrap();
        assert_eq!(opts.bucket, "evidence");
        assert_eq!(opts.prefix, "ir");
        assert_eq!(opts.region.as_deref(), Some("eu-west-1"));
        assert!(opts.path_style);
        assert_eq!(
            opts.retention,
            Some(Retention {
                mode: RetentionMode::Compliance,
                days: 30
            })
        );
        assert_eq!(opts.kms_key_id.as_deref(), Some("alias/ircap"));
    }

    #[test]
    fn a_relative_file_store_is_refused() {
        for (store, wanted) in [
            (
                "file://var/lib/ircap",
                "must be absolute (file:///var/lib/ircap)",
            ),
            ("file://", "expected file://DIR"),
            ("/var/lib/ircap", "expected file://DIR"),
        ] {
            let cfg = ServeConfig {
                store: Some(store.into()),
                ..ServeConfig::default()
            };
            let err = match Settings::validate(&cfg) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{store} accepted"),
            };
            assert!(err.contains(wanted), "{store}: {err}");
        }
    }

    #[test]
    fn incomplete_or_unknown_s3_settings_are_refused() {
        let half = S3Config {
            retention_mode: Some("COMPLIANCE".into()),
            ..S3Config::default()
        };
        assert!(half.options("s3://evidence/ir").is_err());
        let bad_mode = S3Config {
            retention_mode: Some("FOREVER".into()),
            retention_days: Some(1),
            ..S3Config::default()
        };
        assert!(bad_mode.options("s3://evidence/ir").is_err());
        assert!(S3Config::default().options("s3://Bad_Bucket").is_err());
        assert!(toml::from_str::<ServeConfig>("[s3]\nsecret_access_key = \"x\"\n").is_err());
    }
}
