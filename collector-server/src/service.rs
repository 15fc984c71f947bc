//! The `ircap.v1.CaptureUpload` service: the only place that builds
//! `tonic::Status`.
//!
//! Every call first reads the caller's identity from its verified client
//! certificate (never from a request field): only the `agent` role may
//! upload, and only into captures it opened itself. Chunks are checked
//! against their SHA-256 before they are stored; an artifact is finished
//! only when its stored and decoded digests match what the agent sent; a
//! capture is complete only when its manifest matches every finished
//! artifact, and once complete nothing more is added to it (see
//! [`crate::capture_lock`]).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ircap_proto::manifest::Manifest;
use ircap_proto::v1::capture_upload_server::CaptureUpload;
use ircap_proto::v1::{
    ArtifactProgress, CommitCaptureRequest, CommitCaptureResponse, OpenCaptureRequest,
    OpenCaptureResponse, UploadAck, UploadMessage, upload_message,
};
use ircap_proto::{ArtifactName, Digest};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Identity, Role};
use crate::capture_lock::{CaptureLock, CaptureLocks};
use crate::ingest::{ArtifactIngest, ClaimedEnd, CpuPool, IngestError, MAX_CHUNK};
use crate::metrics::{Metrics, StreamGauge, inc};
use crate::quota::{MAX_ARTIFACTS, MAX_MANIFEST_BYTES, Quotas, STREAM_DEADLINE, exhausted};
use crate::store::evidence::{Committed, StreamState};
use crate::store::repair::index_entry;
use crate::store::{CaptureState, FinishedArtifact, Store};
use crate::timefmt;

/// Largest gRPC message accepted (a chunk plus its envelope).
pub const MAX_MESSAGE: usize = MAX_CHUNK + (64 << 10);
/// How often the agent hears from the collector while an artifact is
/// being made final (well inside the agent's 60 s acknowledgement timeout).
const FINISH_KEEPALIVE: Duration = Duration::from_secs(10);
/// Longest silence inside an upload stream before it is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for room to send an acknowledgement: a client that stops
/// reading acks is dropped after this, whatever it keeps sending.
pub const ACK_SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The time limits of one upload stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Longest wait for room to send an acknowledgement.
    pub ack_send: Duration,
    /// Longest life of one stream.
    pub stream: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            ack_send: ACK_SEND_TIMEOUT,
            stream: STREAM_DEADLINE,
        }
    }
}

/// The upload service over a [`Store`].
pub struct UploadService {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// (capture id, artifact) pairs with a stream in progress.
    active: Arc<Mutex<HashSet<(String, String)>>>,
    /// One lock per capture in progress.
    locks: Arc<CaptureLocks>,
    /// Where digests and decoding run.
    pool: CpuPool,
    /// Limits per agent identity.
    quotas: Quotas,
    /// Time limits per stream.
    deadlines: Deadlines,
    /// Signs the receipt at commit, when the collector has a receipt key.
    receipt: Option<Arc<crate::receipt::ReceiptSigner>>,
}

impl UploadService {
    /// A service storing into `store`, counting into `metrics`.
    pub fn new(store: Arc<Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            metrics,
            active: Arc::default(),
            locks: Arc::default(),
            pool: CpuPool::default(),
            quotas: Quotas::default(),
            deadlines: Deadlines::default(),
            receipt: None,
        }
    }

    /// The same service signing a receipt for every commit.
    #[must_use]
    pub fn with_receipt_signer(
        mut self,
        signer: Option<Arc<crate::receipt::ReceiptSigner>>,
    ) -> Self {
        self.receipt = signer;
        self
    }

    /// The same service with other time limits.
    #[must_use]
    pub fn with_deadlines(mut self, deadlines: Deadlines) -> Self {
        self.deadlines = deadlines;
        self
    }

    /// The same service counting against `quotas` (shared with whoever
    /// seeds them from the store).
    #[must_use]
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }
}

pub(crate) use crate::status::store_status;
use crate::status::{ingest_status, pool_status};

/// The caller's identity, which must hold `role`.
pub(crate) fn caller_with_role<T>(req: &Request<T>, role: Role) -> Result<Identity, Status> {
    let id = crate::audit::caller(req)?;
    crate::audit::require(&id, role)?;
    Ok(id)
}

/// The caller's identity, which must hold the agent role.
fn agent_identity<T>(req: &Request<T>) -> Result<Identity, Status> {
    caller_with_role(req, Role::Agent)
}

pub(crate) fn check_capture_id(id: &str) -> Result<(), Status> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "capture id {id:?} is not 1-64 characters of [A-Za-z0-9-]"
        )))
    }
}

/// The capture's state, which must exist and belong to `who`.
async fn owned_state(
    store: &Store,
    capture_id: &str,
    who: &Identity,
) -> Result<CaptureState, Status> {
    check_capture_id(capture_id)?;
    let state = store
        .state(capture_id)
        .await
        .map_err(store_status)?
        .ok_or_else(|| Status::not_found(format!("capture {capture_id} was never opened")))?;
    check_owner(&state, who)?;
    Ok(state)
}

/// Refuses anyone but the capture's owner.
fn check_owner(state: &CaptureState, who: &Identity) -> Result<(), Status> {
    if state.owner == who.name {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "capture {} belongs to another agent",
            state.capture_id
        )))
    }
}

/// The refusal of anything more for a capture that expired.
fn expired_status(capture_id: &str) -> Status {
    Status::failed_precondition(format!(
        "capture {capture_id} expired, never committed: capture again under a new id"
    ))
}

/// The refusal of anything more for a committed capture.
fn committed_status(capture_id: &str) -> Status {
    Status::already_exists(format!(
        "capture {capture_id} is already complete: nothing more is accepted into it"
    ))
}

/// Where a stream's acknowledgements go, and how long a send may wait.
struct AckSender {
    tx: mpsc::Sender<Result<UploadAck, Status>>,
    timeout: Duration,
}

/// Sends `ack`, giving up when the client has not made room for it within
/// the ack-send timeout ([`ACK_SEND_TIMEOUT`] unless configured).
async fn send_ack(acks: &AckSender, ack: UploadAck) -> Result<(), Status> {
    match tokio::time::timeout(acks.timeout, acks.tx.send(Ok(ack))).await {
        Err(_) => Err(Status::deadline_exceeded(
            "the agent stopped reading acknowledgements",
        )),
        Ok(Err(_)) => Err(Status::cancelled("agent went away")),
        Ok(Ok(())) => Ok(()),
    }
}

/// Counts the bytes made durable since `before` and acknowledges them.
async fn ack_durable(
    acks: &AckSender,
    metrics: &Metrics,
    before: u64,
    durable: u64,
) -> Result<(), Status> {
    metrics
        .bytes_received
        .fetch_add(durable - before, std::sync::atomic::Ordering::Relaxed);
    send_ack(
        acks,
        UploadAck {
            durable_offset: durable,
            finished: false,
        },
    )
    .await
}

/// A chunk at least this large says the artifact is large (the agent
/// sends 1 MiB chunks; a small artifact is one smaller chunk): its part
/// buffer is reserved whole at once.
const LARGE_CHUNK: usize = 512 << 10;

/// Most bytes gathered into one append of a store without parts (see
/// the upload loop): the bytes held per stream beyond one chunk.
const GATHER_BYTES: usize = 1 << 20;

/// A part being appended in the background; its output is the new
/// durable length.
type PartWrite<'a> = std::pin::Pin<Box<dyn Future<Output = Result<u64, Status>> + Send + 'a>>;

/// Appends to an artifact of a capture that is not committed.
async fn append_open(
    lock: &CaptureLock,
    store: &Store,
    state: &CaptureState,
    name: &ArtifactName,
    offset: u64,
    data: Bytes,
    saved_state: &[u8],
) -> Result<u64, Status> {
    let committed = lock.committed.read().await;
    if *committed {
        return Err(committed_status(&state.capture_id));
    }
    store
        .append(state, name, offset, data, saved_state)
        .await
        .map_err(store_status)
}

/// Feeds `ingest` the stored bytes of `name` from where it stands up to
/// `upto`, read back from the store; returns it and where it stands (short
/// of `upto` when the store holds less).
async fn replay_stored(
    store: &Store,
    pool: &CpuPool,
    state: &CaptureState,
    name: &ArtifactName,
    mut ingest: ArtifactIngest,
    upto: u64,
) -> Result<(ArtifactIngest, u64), Status> {
    while ingest.received() < upto {
        let replayed = ingest.received();
        let len = (upto - replayed).min(MAX_CHUNK as u64);
        let bytes = store
            .read_range(state, name, replayed, len)
            .await
            .map_err(store_status)?;
        if bytes.is_empty() {
            break;
        }
        let (back, result) = pool
            .run(move || {
                let r = ingest.resume(&bytes);
                (ingest, r)
            })
            .await
            .map_err(|e| pool_status(&e))?;
        ingest = back;
        result
            .map_err(|e| Status::data_loss(format!("stored bytes of {name} do not verify: {e}")))?;
    }
    let at = ingest.received();
    Ok((ingest, at))
}

/// Checks a final artifact's content digest, left to this check when its
/// upload resumed from a saved digest state (see
/// [`ArtifactIngest::resume_saved`]): its stored bytes are read back once
/// and decoded, with the same caps, and must be what the agent claimed.
async fn check_deferred_content(
    store: &Store,
    pool: &CpuPool,
    state: &CaptureState,
    name: &ArtifactName,
    finished: &FinishedArtifact,
) -> Result<(), Status> {
    let check =
        ArtifactIngest::new(name.clone(), &finished.encoding).map_err(|e| ingest_status(&e))?;
    let (check, _) = replay_stored(store, pool, state, name, check, finished.size).await?;
    let claimed = ClaimedEnd {
        stored: Digest {
            sha256: finished.sha256.clone(),
            bytes: finished.size,
        },
        content: Digest {
            sha256: finished.sha256_uncompressed.clone(),
            bytes: finished.size_uncompressed,
        },
    };
    pool.run(move || check.end(&claimed))
        .await
        .map_err(|e| pool_status(&e))?
        .map_err(|e| ingest_status(&e))?;
    Ok(())
}

/// Removes an active-stream marker when the stream ends, however it ends.
struct ActiveGuard {
    set: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.key);
        }
    }
}

/// What one upload stream shares with the service.
struct StreamCtx {
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    active: Arc<Mutex<HashSet<(String, String)>>>,
    locks: Arc<CaptureLocks>,
    pool: CpuPool,
    /// To penalise an identity that sends a gzip bomb.
    quotas: Quotas,
}

type AckStream = Pin<Box<dyn Stream<Item = Result<UploadAck, Status>> + Send>>;

impl UploadService {
    async fn next(
        stream: &mut Streaming<UploadMessage>,
    ) -> Result<Option<upload_message::Body>, Status> {
        match tokio::time::timeout(IDLE_TIMEOUT, stream.message()).await {
            Err(_) => Err(Status::deadline_exceeded("upload stream idle for too long")),
            Ok(Err(status)) => Err(status),
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(msg))) => msg
                .body
                .map(Some)
                .ok_or_else(|| Status::invalid_argument("upload message without a body")),
        }
    }

    /// The next message if it has arrived already (`None`: not yet),
    /// without waiting.
    fn next_ready(
        stream: &mut Streaming<UploadMessage>,
    ) -> Result<Option<Option<upload_message::Body>>, Status> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match Pin::new(stream).poll_next(&mut cx) {
            std::task::Poll::Pending => Ok(None),
            std::task::Poll::Ready(None) => Ok(Some(None)),
            std::task::Poll::Ready(Some(Err(status))) => Err(status),
            std::task::Poll::Ready(Some(Ok(msg))) => msg
                .body
                .map(|body| Some(Some(body)))
                .ok_or_else(|| Status::invalid_argument("upload message without a body")),
        }
    }

    /// Runs one artifact stream; acks go to `acks`.
    async fn upload(
        ctx: StreamCtx,
        who: Identity,
        mut stream: Streaming<UploadMessage>,
        acks: &AckSender,
    ) -> Result<(), Status> {
        let StreamCtx {
            store,
            metrics,
            active,
            locks,
            pool,
            quotas,
        } = ctx;
        let who_name = who.name.clone();
        let Some(upload_message::Body::Header(header)) = Self::next(&mut stream).await? else {
            return Err(Status::invalid_argument(
                "an upload stream starts with an ArtifactHeader",
            ));
        };
        check_capture_id(&header.capture_id)?;
        // Taken before the state is read: a commit either happened before
        // (the state says complete) or sees this stream's lock.
        let lock = locks.get(&header.capture_id);
        let name = ArtifactName::parse(&header.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let StreamState {
            state,
            finished: done,
            count,
        } = store
            .stream_state(&header.capture_id, &name)
            .await
            .map_err(store_status)?
            .ok_or_else(|| {
                Status::not_found(format!("capture {} was never opened", header.capture_id))
            })?;
        check_owner(&state, &who)?;
        if let Some(done) = done {
            // Finished before (its final ack may have been lost): say so,
            // even when the capture is complete since.
            return send_ack(
                acks,
                UploadAck {
                    durable_offset: done.size,
                    finished: true,
                },
            )
            .await;
        }
        if state.complete {
            return Err(committed_status(&state.capture_id));
        }
        if state.expired_at.is_some() {
            return Err(expired_status(&state.capture_id));
        }
        if count >= MAX_ARTIFACTS {
            return Err(exhausted(
                format!(
                    "capture {} already holds {MAX_ARTIFACTS} artifacts",
                    state.capture_id
                ),
                None,
            ));
        }
        let key = (state.capture_id.clone(), name.to_string());
        let _guard = {
            let mut set = active
                .lock()
                .map_err(|_| Status::internal("active-stream table poisoned"))?;
            if !set.insert(key.clone()) {
                return Err(Status::aborted(format!(
                    "{name} is already being uploaded by another stream"
                )));
            }
            ActiveGuard {
                set: Arc::clone(&active),
                key,
            }
        };
        // Resuming: the running digests from what is stored, either read
        // back or (bytes that cannot be read back) from the saved state.
        let staged = store.staged(&state, &name).await.map_err(store_status)?;
        let (mut ingest, mut durable) = match staged.saved_state {
            Some(saved) if staged.len > 0 => {
                let ingest = ArtifactIngest::resume_saved(name.clone(), &header.encoding, &saved)
                    .map_err(|e| ingest_status(&e))?;
                if ingest.received() != staged.len {
                    return Err(Status::data_loss(format!(
                        "{name}: the saved digest state is at {} bytes, the store holds {}",
                        ingest.received(),
                        staged.len
                    )));
                }
                (ingest, staged.len)
            }
            _ => {
                let ingest = ArtifactIngest::new(name.clone(), &header.encoding)
                    .map_err(|e| ingest_status(&e))?;
                replay_stored(&store, &pool, &state, &name, ingest, staged.len).await?
            }
        };
        if durable > 0 {
            tracing::info!(capture_id = state.capture_id, artifact = %name, durable, "Resuming artifact");
        }
        send_ack(
            acks,
            UploadAck {
                durable_offset: durable,
                finished: false,
            },
        )
        .await?;

        // Bytes verified but not yet appended (the store's part size at
        // most, plus one chunk); acknowledged only once appended. One full
        // part is written in the background while the next one fills from
        // the stream: at most two parts held, and the acknowledgement of a
        // part still waits for its write. With a part size (S3), an
        // artifact smaller than a part (nearly every artifact of a triage
        // capture) is stored in one go with its end: one PUT.
        let part_size = store.part_size();
        let mut pending: Vec<u8> = Vec::new();
        let mut writing: Option<PartWrite<'_>> = None;
        // A message read already (see the gathering below).
        let mut ahead: Option<Option<upload_message::Body>> = None;
        loop {
            let message = match (ahead.take(), writing.as_mut()) {
                (Some(message), _) => message,
                (None, None) => Self::next(&mut stream).await?,
                (None, Some(write)) => tokio::select! {
                    written = write => {
                        writing = None;
                        let before = durable;
                        durable = written?;
                        ack_durable(acks, &metrics, before, durable).await?;
                        continue;
                    }
                    message = Self::next(&mut stream) => message?,
                },
            };
            match message {
                None => return Ok(()), // broken off: the partial artifact stays resumable
                Some(upload_message::Body::Header(_)) => {
                    return Err(Status::invalid_argument(
                        "a second ArtifactHeader in one stream",
                    ));
                }
                Some(upload_message::Body::Chunk(chunk)) => {
                    ingest
                        .check_chunk(chunk.offset, chunk.data.len())
                        .map_err(|e| ingest_status(&e))?;
                    // Digest and decode on the CPU pool, never here.
                    let data = chunk.data.clone();
                    let (back, result) = pool
                        .run(move || {
                            let r = ingest.chunk(chunk.offset, &chunk.data, &chunk.sha256);
                            (ingest, r)
                        })
                        .await
                        .map_err(|e| pool_status(&e))?;
                    ingest = back;
                    if let Err(e) = result {
                        match &e {
                            IngestError::ChunkDigest { offset, .. } => {
                                inc(&metrics.chunks_rejected);
                                tracing::warn!(capture_id = state.capture_id, artifact = %name, offset, "Chunk failed its SHA-256");
                            }
                            IngestError::DecodeCap { .. } => {
                                inc(&metrics.chunks_rejected);
                                quotas.penalize(&who_name);
                                tracing::warn!(capture_id = state.capture_id, artifact = %name, "Artifact refused: decoding passed a cap; the agent's uploads wait a while");
                            }
                            _ => {}
                        }
                        return Err(ingest_status(&e));
                    }
                    let before = durable;
                    if part_size == 0 {
                        // A store that takes any append (the file store):
                        // while the agent's next message has arrived
                        // already, nobody waits for this acknowledgement,
                        // so the bytes gather (up to GATHER_BYTES) and go
                        // in one append, or with the artifact's end in
                        // its one final write. Nothing is acknowledged
                        // before it is stored, and a client that waits for
                        // each acknowledgement gets each one as before.
                        if pending.len() + data.len() < GATHER_BYTES
                            && let Some(next) = Self::next_ready(&mut stream)?
                        {
                            // The stream's end (without an ArtifactEnd)
                            // comes after these bytes are stored.
                            let more = next.is_some();
                            ahead = Some(next);
                            if more {
                                pending.extend_from_slice(&data);
                                continue;
                            }
                        }
                        let piece = if pending.is_empty() {
                            data
                        } else {
                            pending.extend_from_slice(&data);
                            Bytes::from(std::mem::take(&mut pending))
                        };
                        // A store that reads its bytes back needs no state.
                        durable =
                            append_open(&lock, &store, &state, &name, durable, piece, &[]).await?;
                    } else {
                        if pending.capacity() == 0 && data.len() >= LARGE_CHUNK {
                            // A large artifact: its parts fill up.
                            pending.reserve(part_size);
                        }
                        pending.extend_from_slice(&data);
                        if pending.len() < part_size {
                            continue;
                        }
                        // The part before must be stored first: its end is
                        // where this one starts.
                        if let Some(write) = writing.take() {
                            durable = write.await?;
                            ack_durable(acks, &metrics, before, durable).await?;
                        }
                        let part = Bytes::from(std::mem::replace(
                            &mut pending,
                            Vec::with_capacity(part_size),
                        ));
                        let at = durable;
                        // The ingest has taken exactly the bytes up to the
                        // part's end: its state is saved with the part.
                        let saved = ingest.saved_state();
                        let (lock, store, state, name) = (&lock, &store, &state, &name);
                        writing = Some(Box::pin(async move {
                            append_open(lock, store, state, name, at, part, &saved).await
                        }));
                        continue;
                    }
                    ack_durable(acks, &metrics, before, durable).await?;
                }
                Some(upload_message::Body::End(end)) => {
                    let claimed = ClaimedEnd {
                        stored: Digest {
                            sha256: end.sha256.clone(),
                            bytes: end.size,
                        },
                        content: Digest {
                            sha256: end.sha256_uncompressed.clone(),
                            bytes: end.size_uncompressed,
                        },
                    };
                    let deferred = ingest.content_deferred();
                    let finished = pool
                        .run(move || ingest.end(&claimed))
                        .await
                        .map_err(|e| pool_status(&e))?
                        .map_err(|e| {
                            if matches!(e, IngestError::Mismatch { .. }) {
                                inc(&metrics.artifact_verification_failures);
                                tracing::warn!(capture_id = state.capture_id, artifact = %name, "Artifact digest mismatch");
                            }
                            ingest_status(&e)
                        })?;
                    if let Some(write) = writing.take() {
                        let before = durable;
                        durable = write.await?;
                        metrics
                            .bytes_received
                            .fetch_add(durable - before, std::sync::atomic::Ordering::Relaxed);
                    }
                    // The last piece is stored with the artifact's end.
                    let tail = Bytes::from(std::mem::take(&mut pending));
                    // From here to the record of the artifact, no commit
                    // of this capture can run in this process; the stored
                    // state is read again for one run by another replica.
                    let committed = lock.committed.read().await;
                    let now = if *committed {
                        None
                    } else {
                        store
                            .state_head(&state.capture_id)
                            .await
                            .map_err(store_status)?
                    };
                    match now {
                        Some(s) if s.expired_at.is_some() => {
                            return Err(expired_status(&state.capture_id));
                        }
                        Some(s) if !s.complete => {}
                        _ => return Err(committed_status(&state.capture_id)),
                    }
                    // Completing a large artifact in S3 (and reading it back
                    // when its content check was deferred) takes a while:
                    // keep the agent's acknowledgement timer alive.
                    {
                        let finish = async {
                            store
                                .finish_artifact(&state, &name, durable, tail.clone(), &finished)
                                .await
                                .map_err(store_status)?;
                            if deferred {
                                check_deferred_content(&store, &pool, &state, &name, &finished)
                                    .await
                                    .inspect_err(|_| {
                                        inc(&metrics.artifact_verification_failures);
                                        tracing::warn!(capture_id = state.capture_id, artifact = %name, "Resumed artifact's content does not verify");
                                    })?;
                            }
                            Ok::<(), Status>(())
                        };
                        tokio::pin!(finish);
                        loop {
                            tokio::select! {
                                r = &mut finish => break r?,
                                () = tokio::time::sleep(FINISH_KEEPALIVE) => {
                                    send_ack(acks, UploadAck {
                                        durable_offset: durable,
                                        finished: false,
                                    })
                                    .await?;
                                }
                            }
                        }
                    }
                    {
                        let _state = lock.state.lock().await;
                        store
                            .record_finished(&state, &name, &finished)
                            .await
                            .map_err(store_status)?;
                    }
                    drop(committed);
                    durable += tail.len() as u64;
                    metrics
                        .bytes_received
                        .fetch_add(tail.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    inc(&metrics.artifacts_verified);
                    return send_ack(
                        acks,
                        UploadAck {
                            durable_offset: durable,
                            finished: true,
                        },
                    )
                    .await;
                }
            }
        }
    }
}

/// Compares the manifest with what was received; returns every difference.
fn manifest_differences(manifest: &Manifest, state: &CaptureState) -> Vec<String> {
    let mut problems = Vec::new();
    let mut listed = HashSet::new();
    for a in &manifest.artifacts {
        listed.insert(a.name.as_str());
        let encoding = match a.encoding {
            ircap_proto::manifest::Encoding::Gzip => "gzip",
            ircap_proto::manifest::Encoding::Identity => "identity",
        };
        match state.finished.get(&a.name) {
            None => problems.push(format!(
                "{}: listed in the manifest but never received",
                a.name
            )),
            Some(f) => {
                if f.size != a.size_stored
                    || f.sha256 != a.sha256_stored
                    || f.size_uncompressed != a.size_uncompressed
                    || f.sha256_uncompressed != a.sha256_uncompressed
                    || f.encoding != encoding
                {
                    problems.push(format!(
                        "{}: manifest digests differ from the bytes received",
                        a.name
                    ));
                }
            }
        }
    }
    for name in state.finished.keys() {
        if !listed.contains(name.as_str()) {
            problems.push(format!("{name}: received but not listed in the manifest"));
        }
    }
    problems
}

#[tonic::async_trait]
impl CaptureUpload for UploadService {
    async fn open_capture(
        &self,
        request: Request<OpenCaptureRequest>,
    ) -> Result<Response<OpenCaptureResponse>, Status> {
        let who = agent_identity(&request)?;
        let req = request.into_inner();
        check_capture_id(&req.capture_id)?;
        if req.hostname.len() > 255 {
            return Err(Status::invalid_argument("hostname longer than 255 bytes"));
        }
        let lock = self.locks.get(&req.capture_id);
        let _state = lock.state.lock().await;
        let state = match self
            .store
            .state(&req.capture_id)
            .await
            .map_err(store_status)?
        {
            Some(s) if s.owner != who.name => {
                return Err(Status::permission_denied(format!(
                    "capture {} belongs to another agent",
                    req.capture_id
                )));
            }
            Some(s) if s.expired_at.is_some() && !s.complete => {
                return Err(expired_status(&s.capture_id));
            }
            Some(s) => {
                if !s.complete {
                    self.quotas.seed_open([(
                        who.name.clone(),
                        s.capture_id.clone(),
                        timefmt::age(&s.opened_at),
                    )]);
                }
                s
            }
            None => {
                self.quotas.open(&who.name, &req.capture_id)?;
                let s = CaptureState::opened(
                    &req.capture_id,
                    &who.name,
                    &req.hostname,
                    &timefmt::now(),
                );
                let stored = self.store.open(&s).await.map_err(store_status)?;
                if stored.owner != who.name {
                    // Another replica opened this id first, for someone else.
                    return Err(Status::permission_denied(format!(
                        "capture {} belongs to another agent",
                        req.capture_id
                    )));
                }
                tracing::info!(
                    capture_id = s.capture_id,
                    agent = who.name,
                    hostname = s.hostname,
                    "Capture opened"
                );
                stored
            }
        };
        Ok(Response::new(OpenCaptureResponse {
            artifacts: state
                .finished
                .iter()
                .map(|(name, f)| ArtifactProgress {
                    name: name.clone(),
                    durable_offset: f.size,
                    finished: true,
                })
                .collect(),
            complete: state.complete,
        }))
    }

    type UploadArtifactStream = AckStream;

    async fn upload_artifact(
        &self,
        request: Request<Streaming<UploadMessage>>,
    ) -> Result<Response<Self::UploadArtifactStream>, Status> {
        let who = agent_identity(&request)?;
        let permit = self.quotas.stream(&who.name)?;
        let stream = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let store = Arc::clone(&self.store);
        let metrics = Arc::clone(&self.metrics);
        let active = Arc::clone(&self.active);
        let locks = Arc::clone(&self.locks);
        let pool = self.pool.clone();
        let quotas = self.quotas.clone();
        let deadlines = self.deadlines;
        tokio::spawn(async move {
            let _gauge = StreamGauge::new(Arc::clone(&metrics));
            let _permit = permit;
            let ctx = StreamCtx {
                store,
                metrics: Arc::clone(&metrics),
                active,
                locks,
                pool,
                quotas,
            };
            let acks = AckSender {
                tx,
                timeout: deadlines.ack_send,
            };
            let upload = Self::upload(ctx, who, stream, &acks);
            let result = tokio::time::timeout(deadlines.stream, upload)
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(
                        "upload stream open for too long; resume on a new one",
                    ))
                });
            if let Err(status) = result {
                if status.code() == tonic::Code::Unavailable {
                    inc(&metrics.store_unavailable);
                }
                // Bounded too: a client that reads nothing gets nothing.
                let _ = tokio::time::timeout(acks.timeout, acks.tx.send(Err(status))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn commit_capture(
        &self,
        request: Request<CommitCaptureRequest>,
    ) -> Result<Response<CommitCaptureResponse>, Status> {
        let who = agent_identity(&request)?;
        let req = request.into_inner();
        check_capture_id(&req.capture_id)?;
        // Exclusive: every append and artifact record of this capture in
        // progress finishes first, and none starts until it is decided.
        let lock = self.locks.get(&req.capture_id);
        let mut committed = lock.committed.write().await;
        let state = owned_state(&self.store, &req.capture_id, &who).await?;
        if *committed || state.complete {
            return Err(Status::already_exists(format!(
                "capture {} is already complete",
                state.capture_id
            )));
        }
        if state.expired_at.is_some() {
            return Err(expired_status(&state.capture_id));
        }
        if req.manifest_json.len() > MAX_MANIFEST_BYTES {
            return Err(Status::invalid_argument(format!(
                "manifest is {} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes",
                req.manifest_json.len()
            )));
        }
        let mut manifest = Manifest::from_slice(&req.manifest_json, "uploaded manifest")
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if manifest.capture_id != state.capture_id {
            return Err(Status::invalid_argument("manifest is for another capture"));
        }
        let problems = manifest_differences(&manifest, &state);
        if !problems.is_empty() {
            inc(&self.metrics.captures_failed);
            tracing::warn!(
                capture_id = state.capture_id,
                problems = problems.len(),
                "Manifest does not match the upload"
            );
            return Err(Status::failed_precondition(format!(
                "capture not complete: {}",
                problems.join("; ")
            )));
        }
        let mut receipt = serde_json::json!({
            "collector_version": env!("CARGO_PKG_VERSION"),
            "opened_at": state.opened_at,
            "committed_at": timefmt::now(),
            "peer_identity": who.name,
            "peer_role": who.role,
            "peer_certificate_sha256": who.fingerprint_sha256,
            "peer_subject": who.subject,
            "reported_hostname": state.hostname,
            "verification": "verified",
            "verified": format!(
                "{} artifacts: every chunk SHA-256, and each artifact's stored and decoded SHA-256 and size, matched the manifest",
                manifest.artifacts.len()
            ),
        });
        if let Some(signer) = &self.receipt {
            receipt["signed_receipt"] = serde_json::json!({
                "file": ircap_proto::receipt::RECEIPT_FILE,
                "receipt_certificate_sha256": signer.cert_sha256(),
            });
        }
        manifest.agent.identity = Some(who.name.clone());
        manifest.collector_receipt = Some(receipt.clone());
        let mut bytes =
            serde_json::to_vec_pretty(&manifest).map_err(|e| Status::internal(e.to_string()))?;
        bytes.push(b'\n');
        // A manifest already there (another replica won the commit) keeps
        // its own receipt: never overwrite it with one for ours.
        let manifest_exists = self
            .store
            .find_manifest(&state)
            .await
            .map_err(store_status)?
            .is_some();
        if let (Some(signer), false) = (&self.receipt, manifest_exists) {
            let signed = signer
                .sign(&ircap_proto::receipt::Receipt::for_manifest(
                    &manifest,
                    &bytes,
                    ircap_proto::receipt::ReceiptAgent {
                        identity: who.name.clone(),
                        certificate_sha256: who.fingerprint_sha256.clone(),
                        subject: who.subject.clone(),
                        reported_hostname: state.hostname.clone(),
                    },
                    state.opened_at.clone(),
                    receipt["committed_at"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    ircap_proto::receipt::ReceiptCollector {
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        receipt_certificate_sha256: signer.cert_sha256().to_owned(),
                    },
                ))
                .map_err(Status::internal)?;
            self.store
                .put_receipt(&state, &signed.files())
                .await
                .map_err(store_status)?;
        }
        let mut index = index_entry(
            &manifest,
            &who.name,
            receipt["committed_at"].as_str().unwrap_or_default(),
        );
        index.findings = crate::triage::at_commit::triage(&self.store, &state, &manifest).await;
        let outcome = self
            .store
            .commit(&state, &bytes, &index)
            .await
            .map_err(store_status)?;
        if outcome == Committed::Lost {
            *committed = true;
            return Err(Status::already_exists(format!(
                "capture {} was committed by another collector replica",
                state.capture_id
            )));
        }
        *committed = true;
        drop(committed);
        self.quotas.close(&who.name, &state.capture_id);
        inc(&self.metrics.captures_completed);
        tracing::info!(
            capture_id = state.capture_id,
            agent = who.name,
            artifacts = manifest.artifacts.len(),
            "Capture complete"
        );
        Ok(Response::new(CommitCaptureResponse {
            status: "complete".into(),
            receipt_json: receipt.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::io::Write as _;

    use super::*;
    use crate::store::any::AnyBlob;
    use crate::store::evidence::Evidence;
    use crate::store::file::FileBlob;

    /// A resumed gzip artifact's content claim, checked from the final
    /// object after its upload resumed from a saved state: the agent's
    /// claim is the input, and a wrong one is refused (`DATA_LOSS`), not
    /// recorded.
    #[tokio::test]
    async fn a_deferred_content_check_refuses_a_wrong_content_claim() {
        let dir = tempfile::tempdir().unwrap();
        let store = Evidence::new(AnyBlob::File(FileBlob::open(dir.path()).unwrap()));
        let state = store
            .open(&CaptureState::opened(
                "deferred",
                "web-1",
                "web-1",
                "2026-01-01T00:00:00Z",
            ))
            .await
            .unwrap();
        let content = b"log line\n".repeat(10_000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&content).unwrap();
        let gz = gz.finish().unwrap();
        let name = ArtifactName::parse("logs/a.log.gz").unwrap();
        let hex = ircap_proto::hashing::sha256_hex;
        let finished = FinishedArtifact {
            encoding: "gzip".into(),
            size: gz.len() as u64,
            sha256: hex(&gz),
            size_uncompressed: content.len() as u64,
            sha256_uncompressed: hex(&content),
        };
        store
            .finish_artifact(&state, &name, 0, Bytes::from(gz), &finished)
            .await
            .unwrap();
        let pool = CpuPool::new(1);
        check_deferred_content(&store, &pool, &state, &name, &finished)
            .await
            .unwrap();
        let lying = FinishedArtifact {
            sha256_uncompressed: hex(b"something else"),
            ..finished
        };
        let refused = check_deferred_content(&store, &pool, &state, &name, &lying)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::DataLoss, "{refused}");
    }
}
