//! Sending a capture to a collector over mutual-TLS gRPC.
//!
//! Each artifact is one `UploadArtifact` stream of 1 MiB chunks, each with
//! its offset and SHA-256. Chunks stay in memory until the collector
//! acknowledges them as durable (at most [`WINDOW`] bytes in flight, so
//! memory is bounded whatever the artifact size). When the connection
//! breaks, the sink reconnects with backoff, the collector says which
//! offset it holds, and the upload resumes from there. The capture is
//! complete only when `CommitCapture` accepts the manifest.

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ircap_proto::client::{MtlsSettings, mtls_channel};
use ircap_proto::manifest::Encoding;
use ircap_proto::v1::capture_upload_client::CaptureUploadClient;
use ircap_proto::v1::{
    ArtifactEnd, ArtifactHeader, Chunk, CommitCaptureRequest, OpenCaptureRequest, UploadAck,
    UploadMessage, upload_message,
};
use ircap_proto::{ArtifactName, Digest, Manifest};
use sha2::Digest as _;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::{ArtifactOut, CaptureSink, SinkError};

/// Chunk size.
pub const CHUNK: usize = 1 << 20;
/// Most unacknowledged bytes kept in memory per artifact: two of the S3
/// store's 8 MiB parts, so that the agent streams the next part while the
/// collector writes the last one (an S3 collector acknowledges a part once
/// S3 has it; with one part of window every part write stalled the upload).
pub const WINDOW: usize = 16 * CHUNK;
/// Deadline for unary calls and for each acknowledgement.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest gRPC message: a chunk, or the manifest at commit (which may be
/// larger), plus its envelope.
const MAX_MESSAGE: usize = max(CHUNK, ircap_proto::manifest::MAX_MANIFEST_BYTES) + (64 << 10);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Where and how to reach the collector.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    /// `https://host:port`.
    pub url: String,
    /// CA certificate the collector's certificate must chain to.
    pub ca: PathBuf,
    /// This agent's certificate.
    pub cert: PathBuf,
    /// This agent's key.
    pub key: PathBuf,
    /// Attempts per operation before giving up (reconnecting in between).
    pub attempts: u32,
    /// No retry starts after this long since the capture was opened.
    pub deadline: Duration,
}

/// Builds the mutual-TLS channel (connected lazily, reconnecting on use).
///
/// # Errors
/// [`SinkError`] when a PEM file cannot be read or the URL is invalid.
pub fn channel(settings: &CollectorSettings) -> Result<Channel, SinkError> {
    mtls_channel(&settings.mtls()).map_err(|e| SinkError::Collector(e.to_string()))
}

impl CollectorSettings {
    /// The connection part of the settings.
    #[must_use]
    pub fn mtls(&self) -> MtlsSettings {
        MtlsSettings {
            url: self.url.clone(),
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

/// Statuses worth retrying after a reconnect (not a certificate the
/// collector or the agent refused: that fails the same way every time).
fn retryable(status: &Status) -> bool {
    !ircap_proto::explain::is_certificate_refusal(status)
        && matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Internal
        )
}

/// One line naming why a call failed (a TLS alert, a refused
/// certificate, DNS), not tonic's bare `transport error`.
fn describe(status: &Status) -> String {
    ircap_proto::explain::status(status, "")
}

/// The collector's retry hint on a `RESOURCE_EXHAUSTED` (its quota on
/// streams or open captures), from the standard `grpc-retry-pushback-ms`
/// metadata. `None`: not busy, or a limit that waiting does not lift.
fn pushback(status: &Status) -> Option<Duration> {
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let ms: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms.min(300_000)))
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(5)))
}

/// The wait before another attempt: the collector's hint or the backoff,
/// whichever is longer, plus up to half of it again at random, so that a
/// fleet refused at once does not come back at once.
fn retry_delay(attempt: u32, hint: Option<Duration>) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let base = hint.unwrap_or_default().max(backoff(attempt));
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(attempt);
    let half = u64::try_from(base.as_millis() / 2)
        .unwrap_or(u64::MAX)
        .max(1);
    base + Duration::from_millis(h.finish() % half)
}

/// A capture being sent to a collector.
pub struct GrpcSink {
    inner: Arc<Inner>,
}

/// What every artifact stream of a capture shares.
struct Inner {
    rt: Runtime,
    client: CaptureUploadClient<Channel>,
    capture_id: String,
    mtls: MtlsSettings,
    attempts: u32,
    deadline: Instant,
}

impl GrpcSink {
    /// Connects and opens the capture on the collector.
    ///
    /// # Errors
    /// [`SinkError`] when the collector refuses or stays unreachable.
    pub fn open(
        settings: &CollectorSettings,
        capture_id: &str,
        hostname: &str,
    ) -> Result<Self, SinkError> {
        // One background worker keeps the HTTP/2 connection (pings, flow
        // control, queued chunks) moving while the capture thread collects.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ircap-upload")
            .enable_all()
            .build()
            .map_err(|e| SinkError::io("cannot start the network runtime", e))?;
        let channel = {
            let _guard = rt.enter();
            channel(settings)?
        };
        let client = CaptureUploadClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let sink = Inner {
            rt,
            client,
            capture_id: capture_id.to_owned(),
            mtls: settings.mtls(),
            attempts: settings.attempts.max(1),
            deadline: Instant::now() + settings.deadline,
        };
        let req = OpenCaptureRequest {
            capture_id: capture_id.to_owned(),
            hostname: hostname.to_owned(),
        };
        sink.unary("open the capture", |mut c| {
            let req = req.clone();
            async move {
                let mut r = tonic::Request::new(req);
                r.set_timeout(CALL_TIMEOUT);
                c.open_capture(r).await.map(|_| ())
            }
        })?;
        Ok(Self {
            inner: Arc::new(sink),
        })
    }
}

impl Inner {
    /// Whether another attempt may start after `attempt` failed.
    fn may_retry(&self, attempt: u32, hint: Option<Duration>) -> bool {
        attempt + 1 < self.attempts
            && Instant::now() + hint.unwrap_or_default().max(backoff(attempt)) < self.deadline
    }

    /// Runs a unary call with retries.
    fn unary<F, Fut, T>(&self, what: &str, call: F) -> Result<T, SinkError>
    where
        F: Fn(CaptureUploadClient<Channel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempt = 0;
        loop {
            match self.rt.block_on(call(self.client.clone())) {
                Ok(v) => return Ok(v),
                Err(status) => {
                    // A connection that failed without saying why: ask the
                    // collector once with a bare handshake, and stop at
                    // once if it refuses our certificate.
                    let why = if ircap_proto::explain::is_unexplained(&status) {
                        self.rt.block_on(ircap_proto::client::diagnose(&self.mtls))
                    } else {
                        None
                    };
                    let hint = pushback(&status);
                    let refused = why.as_ref().is_some_and(|w| w.certificate_refused);
                    let message = why.map_or_else(
                        || ircap_proto::explain::status(&status, &self.mtls.url),
                        |w| w.message,
                    );
                    if !refused
                        && (retryable(&status) || hint.is_some())
                        && self.may_retry(attempt, hint)
                    {
                        tracing::warn!(attempt, error = %message, "Collector call failed, retrying: {what}");
                        std::thread::sleep(retry_delay(attempt, hint));
                        attempt += 1;
                    } else {
                        return Err(SinkError::Collector(format!("cannot {what}: {message}")));
                    }
                }
            }
        }
    }
}

/// An open `UploadArtifact` stream.
struct Stream {
    tx: mpsc::Sender<UploadMessage>,
    acks: Streaming<UploadAck>,
}

struct GrpcArtifact {
    sink: Arc<Inner>,
    name: String,
    encoding: &'static str,
    /// Bytes not yet sent.
    buf: Vec<u8>,
    /// Sent, not yet acknowledged: (offset, bytes).
    retained: VecDeque<(u64, Bytes)>,
    /// Offset up to which the collector holds the bytes durably.
    acked: u64,
    /// Offset of the next byte to send.
    sent: u64,
    stream: Option<Stream>,
    /// The collector said it holds the whole artifact, verified (a
    /// reconnect after a lost final acknowledgement).
    finished: bool,
}

/// Why one stream attempt stopped.
enum Broken {
    /// Try again on a new stream.
    Retry(String),
    /// The collector is busy: try again after at least this long.
    Busy(String, Duration),
    /// Give up.
    Fatal(String),
}

impl From<Status> for Broken {
    fn from(s: Status) -> Self {
        if let Some(after) = pushback(&s) {
            Self::Busy(describe(&s), after)
        } else if retryable(&s) {
            Self::Retry(describe(&s))
        } else {
            Self::Fatal(describe(&s))
        }
    }
}

impl GrpcArtifact {
    fn retained_bytes(&self) -> usize {
        self.retained.iter().map(|(_, b)| b.len()).sum()
    }

    /// Opens a stream and resends everything the collector does not hold.
    fn start_stream(&mut self) -> Result<(), Broken> {
        let (tx, rx) = mpsc::channel(WINDOW / CHUNK + 4);
        let header = UploadMessage {
            body: Some(upload_message::Body::Header(ArtifactHeader {
                capture_id: self.sink.capture_id.clone(),
                name: self.name.clone(),
                encoding: self.encoding.to_owned(),
                offset: self.acked,
            })),
        };
        tx.try_send(header)
            .map_err(|_| Broken::Retry("upload channel closed".into()))?;
        let mut client = self.sink.client.clone();
        let rt = &self.sink.rt;
        let mut acks = rt
            .block_on(client.upload_artifact(ReceiverStream::new(rx)))
            .map_err(Broken::from)?
            .into_inner();
        let first = rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, acks.message()).await })
            .map_err(|_| Broken::Retry("no answer to the artifact header".into()))?
            .map_err(Broken::from)?
            .ok_or_else(|| {
                Broken::Retry("stream closed before the first acknowledgement".into())
            })?;
        let held = first.durable_offset;
        if held < self.acked || held > self.sent {
            return Err(Broken::Fatal(format!(
                "{}: collector holds {held} bytes, but {} were acknowledged and {} sent",
                self.name, self.acked, self.sent
            )));
        }
        self.acked = held;
        self.drop_acknowledged();
        if first.finished {
            // Finished on an earlier stream whose last acknowledgement was
            // lost: nothing more to send, and no stream is kept.
            self.finished = true;
            return Ok(());
        }
        self.stream = Some(Stream { tx, acks });
        // Resend what was sent but not stored, from the collector's offset.
        let pending: Vec<(u64, Bytes)> = self.retained.iter().cloned().collect();
        for (offset, bytes) in pending {
            let skip = usize::try_from(held.saturating_sub(offset)).unwrap_or(usize::MAX);
            if skip < bytes.len() {
                self.send_message(chunk_message(offset + skip as u64, bytes.slice(skip..)))?;
            }
        }
        Ok(())
    }

    fn drop_acknowledged(&mut self) {
        while let Some((offset, bytes)) = self.retained.front() {
            if offset + bytes.len() as u64 <= self.acked {
                self.retained.pop_front();
            } else {
                break;
            }
        }
    }

    fn send_message(&mut self, msg: UploadMessage) -> Result<(), Broken> {
        let stream = self
            .stream
            .as_ref()
            .ok_or_else(|| Broken::Retry("no stream".into()))?;
        self.sink
            .rt
            .block_on(stream.tx.send(msg))
            .map_err(|_| Broken::Retry("stream closed while sending".into()))
    }

    /// Waits for one acknowledgement.
    fn wait_ack(&mut self) -> Result<UploadAck, Broken> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Broken::Retry("no stream".into()))?;
        let ack = self
            .sink
            .rt
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, stream.acks.message()).await })
            .map_err(|_| Broken::Retry("no acknowledgement in time".into()))?
            .map_err(Broken::from)?
            .ok_or_else(|| Broken::Retry("stream closed by the collector".into()))?;
        self.acked = self.acked.max(ack.durable_offset);
        self.drop_acknowledged();
        Ok(ack)
    }

    /// Runs `step` on a live stream, reconnecting and resuming on breaks.
    fn with_retries(
        &mut self,
        what: &str,
        mut step: impl FnMut(&mut Self) -> Result<bool, Broken>,
    ) -> Result<(), SinkError> {
        let mut attempt = 0;
        loop {
            let result = if self.stream.is_none() && !self.finished {
                self.start_stream().and_then(|()| step(self))
            } else {
                step(self)
            };
            let (why, hint) = match result {
                Ok(true) => return Ok(()),
                Ok(false) => continue,
                Err(Broken::Retry(why)) => (why, None),
                Err(Broken::Busy(why, after)) => (why, Some(after)),
                Err(Broken::Fatal(why)) => {
                    self.stream = None;
                    return Err(SinkError::Collector(format!(
                        "{}: cannot {what}: {why}",
                        self.name
                    )));
                }
            };
            match why {
                why if self.sink.may_retry(attempt, hint) => {
                    tracing::warn!(
                        artifact = self.name,
                        attempt,
                        acked = self.acked,
                        "Upload interrupted ({why}); resuming"
                    );
                    self.stream = None;
                    std::thread::sleep(retry_delay(attempt, hint));
                    attempt += 1;
                }
                why => {
                    self.stream = None;
                    return Err(SinkError::Collector(format!(
                        "{}: cannot {what}: {why}",
                        self.name
                    )));
                }
            }
        }
    }

    /// Sends the buffered bytes as one chunk, keeping the window bounded.
    fn flush_chunk(&mut self) -> Result<(), SinkError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        let offset = self.sent;
        self.sent += data.len() as u64;
        // Shared, not copied: the retained chunk and the message are one buffer.
        self.retained.push_back((offset, data.clone()));
        // Without a live stream, start_stream sends every retained chunk,
        // this one included.
        let mut need_send = self.stream.is_some();
        self.with_retries("send a chunk", |me| {
            if need_send {
                need_send = false;
                me.send_message(chunk_message(offset, data.clone()))?;
            }
            while me.retained_bytes() > WINDOW {
                me.wait_ack()?;
            }
            Ok(true)
        })
    }
}

fn chunk_message(offset: u64, data: Bytes) -> UploadMessage {
    UploadMessage {
        body: Some(upload_message::Body::Chunk(Chunk {
            offset,
            sha256: sha2::Sha256::digest(&data).to_vec(),
            data,
        })),
    }
}

impl io::Write for GrpcArtifact {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let take = room.min(data.len());
        self.buf
            .extend_from_slice(data.get(..take).unwrap_or_default());
        if self.buf.len() >= CHUNK {
            self.flush_chunk().map_err(io::Error::other)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ArtifactOut for GrpcArtifact {
    fn close(mut self: Box<Self>, stored: &Digest, content: &Digest) -> Result<(), SinkError> {
        self.flush_chunk()?;
        if self.stream.is_none() && self.sent == 0 {
            // An empty artifact still needs its stream.
            self.with_retries("open the stream", |_| Ok(true))?;
        }
        let end = UploadMessage {
            body: Some(upload_message::Body::End(ArtifactEnd {
                size: stored.bytes,
                sha256: stored.sha256.clone(),
                size_uncompressed: content.bytes,
                sha256_uncompressed: content.sha256.clone(),
            })),
        };
        let mut end_sent = false;
        self.with_retries("finish", |me| {
            if me.finished {
                return Ok(true);
            }
            if !end_sent {
                me.send_message(end.clone())?;
                end_sent = true;
            }
            loop {
                match me.wait_ack() {
                    Ok(ack) if ack.finished => return Ok(true),
                    Ok(_) => {}
                    Err(e) => {
                        end_sent = false;
                        return Err(e);
                    }
                }
            }
        })
    }
}

impl CaptureSink for GrpcSink {
    fn create(
        &self,
        name: &ArtifactName,
        encoding: Encoding,
    ) -> Result<Box<dyn ArtifactOut>, SinkError> {
        Ok(Box::new(GrpcArtifact {
            sink: Arc::clone(&self.inner),
            name: name.to_string(),
            encoding: match encoding {
                Encoding::Gzip => "gzip",
                Encoding::Identity => "identity",
            },
            buf: Vec::with_capacity(CHUNK),
            retained: VecDeque::new(),
            acked: 0,
            sent: 0,
            stream: None,
            finished: false,
        }))
    }

    fn commit(&self, manifest: &Manifest) -> Result<String, SinkError> {
        let inner = &self.inner;
        let bytes = manifest.to_json()?;
        let req = CommitCaptureRequest {
            capture_id: inner.capture_id.clone(),
            manifest_json: bytes,
        };
        let committed = inner.unary("commit the capture", |mut c| {
            let req = req.clone();
            async move {
                let mut r = tonic::Request::new(req);
                r.set_timeout(CALL_TIMEOUT);
                match c.commit_capture(r).await {
                    Ok(_) => Ok(true),
                    // A retry after a lost answer: it was committed.
                    Err(s) if s.code() == Code::AlreadyExists => Ok(false),
                    Err(s) => Err(s),
                }
            }
        })?;
        if !committed {
            tracing::info!(
                capture_id = self.inner.capture_id,
                "Collector already had the capture committed"
            );
        }
        Ok(format!(
            "{}/captures/{}",
            self.inner.mtls.url.trim_end_matches('/'),
            self.inner.capture_id
        ))
    }

    fn abort(&self) {
        tracing::warn!(
            capture_id = self.inner.capture_id,
            "Capture abandoned; the collector keeps it incomplete"
        );
    }
}
