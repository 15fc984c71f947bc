//! `s3://BUCKET/PREFIX`: the blob layer in an S3 bucket (or an
//! S3-compatible store), shared by any number of collector replicas with
//! no other state. Keys are the evidence layer's (see
//! [`super::evidence`]) below `PREFIX/`; an open artifact's upload records
//! are under `PREFIX/staging/<capture-id>/<artifact>/@` (see
//! [`super::s3_parts`]).
//!
//! Replicas agree through S3's conditional writes: final objects and
//! manifests are created with `If-None-Match: *` (a PUT, or the
//! `CompleteMultipartUpload`), so an existing one is never replaced; a
//! capture state is replaced with `If-Match` on the ETag read, so of two
//! replicas updating it one wins and the other reads it again. SeaweedFS
//! 4.48, the suite's server, honours both (412 Precondition Failed,
//! exactly one of 8 racing writers succeeds).
//!
//! How an artifact gets there, each evidence byte crossing from the
//! collector to S3 once and never read back on the way:
//!
//! - **A small artifact** (smaller than [`PART_SIZE`], nearly all of a
//!   triage capture) is one `PutObject` of its final key, with its
//!   SHA-256 (S3 refuses a mismatch; it must be the agent's), created only
//!   if the key is free.
//! - **A larger one** is a multipart upload of its final key, opened with
//!   its first part. The upload service hands the store [`PART_SIZE`]
//!   bytes or more at a time (the last piece may be smaller); each is an
//!   `UploadPart` with its SHA-256, and then a small *part record* is
//!   written whose key holds the part's number, offset, length, SHA-256
//!   and ETag, and whose body is the collector's stored-bytes digest state
//!   at the part's end ([`crate::stored_digest`]). Only then is the part's
//!   end acknowledged to the agent as durable. The service writes one part
//!   in the background while the next one fills, and the agent's window
//!   (16 MiB + one chunk unacknowledged) covers both, so the upload does
//!   not stop for each part's PUT.
//! - At the artifact's end, when its digests match the agent's, the last
//!   piece is the last part and `CompleteMultipartUpload` lists every part
//!   with its SHA-256 (S3 refuses a part that differs) and
//!   `If-None-Match: *`; S3's composite checksum of the result (the SHA-256
//!   of the part SHA-256s, `-N`) must be the collector's. The records are
//!   then removed.
//!
//! **Resuming.** The parts of an unfinished multipart upload cannot be
//! read back, and not every S3-compatible store lists them with their
//! checksums (SeaweedFS 4.48 does not), so a replica that picks up a
//! resumed upload (after a crash of this one, or on another replica) lists
//! the part records: the durable length is where the last contiguous part
//! ends, and the running SHA-256 of the stored bytes goes on from the
//! state saved with it, with no byte read. A gzip decoder's state cannot
//! be saved, though, so for a resumed gzip artifact the content digest
//! (of the decoded bytes) is checked once the object is final, by reading
//! it back once: the resume path only, and the artifact is recorded as
//! finished only if it verifies. Two streams of one artifact on two
//! replicas at once leave two different records of one part, which
//! completing refuses (integrity): the capture fails rather than be
//! complete with bytes nobody verified.
//!
//! **Costs.** Per part, one `UploadPart` and one small `PutObject`; per
//! artifact, one `CreateMultipartUpload`, one `CompleteMultipartUpload`,
//! one listing and the records' deletes. An abandoned artifact's upload is
//! aborted when its capture expires; a bucket lifecycle rule
//! (`AbortIncompleteMultipartUpload`) is the backstop.
//!
//! Memory per stream is two part buffers in the service (one being
//! written, one filling), whatever the artifact's size.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, ObjectLockEnabled,
    ObjectLockLegalHoldStatus, ObjectLockMode, ServerSideEncryption, StorageClass,
};
use base64::Engine as _;
use bytes::Bytes;
use ircap_proto::hashing::to_hex as hex;
use serde::Deserialize;
use sha2::Digest as _;

use super::blob::{Blob, Class, Staged, Version};
use super::s3_parts::{self, PartRecord, unhex};
use super::{FinishedArtifact, StoreError};

/// Smallest multipart part (the last may be smaller). At least S3's 5 MiB
/// minimum, at most half the agent's window, so a part fills while the
/// one before it is written. With S3's [`MAX_PARTS`] this allows
/// artifacts up to 80 GiB.
pub const PART_SIZE: usize = 8 << 20;

/// S3's most parts in one multipart upload.
const MAX_PARTS: i32 = 10_000;

/// Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RetentionMode {
    /// Users with `s3:BypassGovernanceRetention` can still delete.
    Governance,
    /// Nobody can delete or shorten retention until it expires.
    Compliance,
}

impl std::str::FromStr for RetentionMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "GOVERNANCE" => Ok(Self::Governance),
            "COMPLIANCE" => Ok(Self::Compliance),
            _ => Err(format!("{s:?} is not GOVERNANCE or COMPLIANCE")),
        }
    }
}

/// Object Lock retention applied to every evidence object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The mode.
    pub mode: RetentionMode,
    /// Days from the object's upload.
    pub days: u32,
}

/// Validated settings of an S3 store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// Region; else the AWS chain's (env, profile, IMDS), else `us-east-1`.
    pub region: Option<String>,
    /// Custom endpoint for S3-compatible stores.
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`).
    pub path_style: bool,
    /// Object Lock retention of evidence objects.
    pub retention: Option<Retention>,
    /// Legal hold on evidence objects.
    pub legal_hold: bool,
    /// SSE-KMS key id or ARN for every object.
    pub kms_key_id: Option<String>,
    /// Storage class of evidence objects (e.g. `STANDARD_IA`).
    pub storage_class: Option<String>,
}

impl S3Options {
    /// Parses `s3://BUCKET[/PREFIX]` (other settings default).
    ///
    /// # Errors
    /// A message naming the URL when it is not of that form.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
        if !bucket_ok {
            return Err(format!(
                "{url:?}: bucket {bucket:?} is not 3-63 characters of [a-z0-9.-]"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|s| s.is_empty() && !prefix.is_empty())
        {
            return Err(format!("{url:?}: empty segment in the prefix"));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            ..Self::default()
        })
    }
}

/// The blob layer in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Blob {
    client: Client,
    opts: Arc<S3Options>,
    open_uploads: OpenUploads,
}

/// Wraps an SDK error with context; the service answers UNAVAILABLE so
/// that agents retry.
fn backend<E>(context: impl Into<String>, err: SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static + ProvideErrorMetadata,
{
    StoreError::Backend {
        context: context.into(),
        message: sdk_message(&err),
    }
}

/// [`backend`], except that an answer of the service itself below HTTP
/// 500 (access denied, no such bucket, wrong region) is the settings
/// refused, not an outage: [`StoreError::Refused`].
fn refused<E>(context: impl Into<String>, err: SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static + ProvideErrorMetadata,
{
    let answered = matches!(&err, SdkError::ServiceError(se) if se.raw().status().as_u16() < 500);
    match backend(context, err) {
        StoreError::Backend { context, message } if answered => {
            StoreError::Refused { context, message }
        }
        other => other,
    }
}

/// Longest SDK error text kept in a message (the SDK's own rendering of
/// an unparsed response runs to kilobytes).
const MAX_SDK_MESSAGE: usize = 300;

/// One line for an SDK error: the HTTP status, S3's error code and
/// message, and what to check for the statuses a new setup meets.
fn sdk_message<E>(err: &SdkError<E>) -> String
where
    E: std::error::Error + Send + Sync + 'static + ProvideErrorMetadata,
{
    let text = match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let detail = [err.code(), err.message()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": ");
            let hint = match status {
                401 | 403 => {
                    " (access denied: check the access key and secret — AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the profile or the instance role — and the bucket policy)"
                }
                404 => " (no such bucket or key: check the bucket name and --s3-endpoint)",
                301 | 400 => " (check --s3-region: the bucket may be in another region)",
                _ => "",
            };
            if detail.is_empty() {
                format!("HTTP {status}{hint}")
            } else {
                format!("HTTP {status}: {detail}{hint}")
            }
        }
        SdkError::TimeoutError(_) => "no answer from S3 in time".to_owned(),
        SdkError::DispatchFailure(_) => {
            format!("cannot reach the S3 endpoint: {}", DisplayErrorContext(err))
        }
        _ => DisplayErrorContext(err).to_string(),
    };
    if text.len() > MAX_SDK_MESSAGE {
        let cut = (0..=MAX_SDK_MESSAGE)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}...", &text[..cut])
    } else {
        text
    }
}

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(bytes).to_vec()
}

/// The condition of a PUT.
#[derive(Debug, Clone, Copy)]
enum Condition<'a> {
    /// None: create or replace.
    None,
    /// `If-None-Match: *`: create only.
    Absent,
    /// `If-Match: ETAG`: replace only that version.
    Matches(&'a str),
}

/// Applies the store's settings to a request that creates an object
/// (`PutObject`, `CreateMultipartUpload`, whose builders share these
/// setters but no trait): SSE-KMS for every object; Object
/// Lock retention, legal hold and storage class for evidence.
macro_rules! with_settings {
    ($store:expr, $req:expr, $class:expr) => {{
        let mut req = $req;
        if let Some(kms) = &$store.opts.kms_key_id {
            req = req
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(kms);
        }
        if $class == Class::Evidence {
            if let Some((mode, until)) = $store.retain_until() {
                req = req
                    .object_lock_mode(mode)
                    .object_lock_retain_until_date(until);
            }
            if $store.opts.legal_hold {
                req = req.object_lock_legal_hold_status(ObjectLockLegalHoldStatus::On);
            }
            if let Some(class) = &$store.opts.storage_class {
                req = req.storage_class(StorageClass::from(class.as_str()));
            }
        }
        req
    }};
}

/// What is recorded of an artifact's multipart upload (see
/// [`s3_parts`]).
#[derive(Debug)]
struct Recorded {
    /// The upload id and the full key it was created for.
    upload: Option<(String, String)>,
    /// The parts of the durable prefix, in order.
    parts: Vec<PartRecord>,
}

/// Where an open upload's next part goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Open {
    upload_id: String,
    next: i32,
    end: u64,
}

/// Open uploads kept in memory at most (forgotten beyond: they are read
/// from their records again).
const MAX_OPEN_UPLOADS: usize = 4096;

/// Where this replica's open uploads stand, so that an append does not
/// list the records first. A stream that starts reads the records again
/// ([`Blob::staged`]), so another replica's appends are never missed; two
/// streams of one artifact on two replicas at once leave two different
/// records of one part, which completing refuses.
#[derive(Debug, Clone, Default)]
struct OpenUploads(Arc<std::sync::Mutex<HashMap<String, Open>>>);

impl OpenUploads {
    fn get(&self, staging: &str) -> Option<Open> {
        self.0.lock().ok()?.get(staging).cloned()
    }

    fn insert(&self, staging: &str, open: Open) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= MAX_OPEN_UPLOADS {
                map.clear();
            }
            map.insert(staging.to_owned(), open);
        }
    }

    fn remove(&self, staging: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(staging);
        }
    }
}

/// S3's composite checksum of parts with SHA-256s `sums`, without the
/// `-N`: the SHA-256 of the concatenated part SHA-256s, base64.
fn composite(sums: &[Vec<u8>]) -> String {
    let mut h = sha2::Sha256::new();
    for s in sums {
        h.update(s);
    }
    b64(&h.finalize())
}

impl S3Blob {
    /// Builds the client from the standard AWS chain (env, profile, web
    /// identity, IMDSv2) and checks the bucket: reachable, and Object Lock
    /// enabled when retention or legal hold is configured.
    ///
    /// # Errors
    /// [`StoreError::Backend`] naming the bucket and the problem.
    pub async fn connect(opts: S3Options) -> Result<Self, StoreError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        match (&opts.region, &opts.endpoint) {
            (Some(region), _) => {
                loader = loader.region(aws_config::Region::new(region.clone()));
            }
            // An S3-compatible server: no region to look up (the SDK would
            // ask the EC2 metadata service and warn at length off EC2).
            (None, endpoint)
                if (endpoint.is_some()
                    || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some()
                    || std::env::var_os("AWS_ENDPOINT_URL").is_some())
                    && std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none() =>
            {
                loader = loader.region(aws_config::Region::new("us-east-1"));
            }
            (None, _) => {}
        }
        let sdk = loader.load().await;
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(opts.path_style);
        if sdk.region().is_none() {
            conf = conf.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &opts.endpoint {
            conf = conf.endpoint_url(endpoint);
        }
        let store = Self {
            client: Client::from_conf(conf.build()),
            opts: Arc::new(opts),
            open_uploads: OpenUploads::default(),
        };
        store.check_bucket().await?;
        Ok(store)
    }

    async fn check_bucket(&self) -> Result<(), StoreError> {
        let bucket = &self.opts.bucket;
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| refused(format!("bucket {bucket} is not reachable"), e))?;
        if self.opts.retention.is_some() || self.opts.legal_hold {
            let lock = self
                .client
                .get_object_lock_configuration()
                .bucket(bucket)
                .send()
                .await
                .map_err(|e| {
                    refused(
                        format!("retention is configured but bucket {bucket} has no Object Lock configuration (create it with Object Lock enabled)"),
                        e,
                    )
                })?;
            let enabled = lock
                .object_lock_configuration()
                .and_then(|c| c.object_lock_enabled())
                == Some(&ObjectLockEnabled::Enabled);
            if !enabled {
                return Err(StoreError::Refused {
                    context: format!("bucket {bucket}"),
                    message: "retention is configured but Object Lock is not enabled on the bucket"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// The full key of `rest` under the prefix.
    #[must_use]
    pub fn key(&self, rest: &str) -> String {
        if self.opts.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.opts.prefix)
        }
    }

    /// Where the upload records of the artifact staged under `staging`
    /// start (`@` never occurs in artifact names, so artifacts never share
    /// records).
    fn staging_prefix(&self, staging: &str) -> String {
        self.key(&format!("{staging}/@"))
    }

    fn retain_until(&self) -> Option<(ObjectLockMode, DateTime)> {
        let r = self.opts.retention?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let until = now.saturating_add(u64::from(r.days) * 86_400);
        let mode = match r.mode {
            RetentionMode::Governance => ObjectLockMode::Governance,
            RetentionMode::Compliance => ObjectLockMode::Compliance,
        };
        Some((
            mode,
            DateTime::from_secs(i64::try_from(until).unwrap_or(i64::MAX)),
        ))
    }

    /// PUTs a whole object (full key) with its SHA-256 (S3 refuses a
    /// mismatch) and checks the checksum S3 reports. Evidence objects get
    /// the Object Lock, legal hold and storage class settings. Returns
    /// `false` when `condition` did not hold.
    async fn put_object(
        &self,
        key: &str,
        bytes: Vec<u8>,
        class: Class,
        condition: Condition<'_>,
    ) -> Result<bool, StoreError> {
        let sum = sha256(&bytes);
        self.put_summed(key, bytes, &sum, class, condition).await
    }

    /// [`Self::put_object`] with the SHA-256 of `bytes` computed already.
    async fn put_summed(
        &self,
        key: &str,
        bytes: Vec<u8>,
        raw_sum: &[u8],
        class: Class,
        condition: Condition<'_>,
    ) -> Result<bool, StoreError> {
        let sum = b64(raw_sum);
        let mut req = self
            .client
            .put_object()
            .bucket(&self.opts.bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&sum)
            .body(ByteStream::from(bytes));
        match condition {
            Condition::None => {}
            Condition::Absent => req = req.if_none_match("*"),
            Condition::Matches(etag) => req = req.if_match(etag),
        }
        req = with_settings!(self, req, class);
        // As for parts: the signed checksum header is the integrity check.
        let out = match req.customize().disable_payload_signing().send().await {
            Ok(out) => out,
            Err(e) if !matches!(condition, Condition::None) && precondition_failed(&e) => {
                return Ok(false);
            }
            Err(e) => {
                return Err(backend(
                    format!("cannot put s3://{}/{key}", self.opts.bucket),
                    e,
                ));
            }
        };
        match out.checksum_sha256() {
            Some(reported) if reported != sum => Err(StoreError::Integrity {
                context: format!("s3://{}/{key}", self.opts.bucket),
                message: format!("S3 reports SHA-256 {reported}, the collector sent {sum}"),
            }),
            _ => Ok(true),
        }
    }

    /// GETs an object (full key, or `range` of it), `None` when it does
    /// not exist.
    async fn get_object(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut req = self.client.get_object().bucket(&self.opts.bucket).key(key);
        if let Some((offset, len)) = range {
            if len == 0 {
                return Ok(Some(Vec::new()));
            }
            req = req.range(format!("bytes={offset}-{}", offset + len - 1));
        }
        let ctx = || format!("cannot get s3://{}/{key}", self.opts.bucket);
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(backend(ctx(), e)),
        };
        let body = out.body.collect().await.map_err(|e| StoreError::Backend {
            context: ctx(),
            message: e.to_string(),
        })?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn get_required(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Vec<u8>, StoreError> {
        self.get_object(key, range)
            .await?
            .ok_or_else(|| StoreError::Backend {
                context: format!("s3://{}/{key}", self.opts.bucket),
                message: "object is missing".into(),
            })
    }

    /// Size of an object, `None` when it does not exist.
    async fn size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.opts.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.content_length()
                    .and_then(|l| u64::try_from(l).ok())
                    .unwrap_or(0),
            )),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(backend(
                format!("cannot head s3://{}/{key}", self.opts.bucket),
                e,
            )),
        }
    }

    /// Keys (with sizes) under `prefix`; with `delimiter` `/` also the
    /// "directories" directly below it (size 0, without the trailing `/`).
    async fn list_keys(
        &self,
        prefix: &str,
        delimiter: bool,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.opts.bucket)
                .prefix(prefix)
                .set_continuation_token(token.take());
            if delimiter {
                req = req.delimiter("/");
            }
            let page = req.send().await.map_err(|e| {
                backend(format!("cannot list s3://{}/{prefix}", self.opts.bucket), e)
            })?;
            for obj in page.contents() {
                if let Some(key) = obj.key() {
                    let size = obj.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
                    out.push((key.to_owned(), size));
                }
            }
            for dir in page.common_prefixes() {
                if let Some(p) = dir.prefix() {
                    out.push((p.trim_end_matches('/').to_owned(), 0));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Checks an existing final object against the artifact (used when an
    /// artifact was made final but its state not yet saved, or another
    /// replica made it final): S3's checksum of it when that says the
    /// SHA-256 of the whole object (a single PUT), else by streaming it.
    async fn verify_final(&self, key: &str, finished: &FinishedArtifact) -> Result<(), StoreError> {
        let ctx = || format!("s3://{}/{key}", self.opts.bucket);
        if let (Some(size), Some(sum)) = (self.size(key).await?, self.stored_checksum(key).await?)
            && !sum.contains('-')
        {
            let want = unhex(&finished.sha256).map(|raw| b64(&raw));
            if size == finished.size && want.as_deref() == Some(sum.as_str()) {
                return Ok(());
            }
            return Err(StoreError::Integrity {
                context: ctx(),
                message: format!(
                    "stored object is {size} bytes with S3 checksum {sum}, expected {} bytes sha256 {}",
                    finished.size, finished.sha256
                ),
            });
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| backend(ctx(), e))?;
        let mut body = out.body;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| StoreError::Backend {
            context: ctx(),
            message: e.to_string(),
        })? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        let got = hex(&hasher.finalize());
        if size != finished.size || got != finished.sha256 {
            return Err(StoreError::Integrity {
                context: ctx(),
                message: format!(
                    "stored object is {size} bytes sha256 {got}, expected {} bytes sha256 {}",
                    finished.size, finished.sha256
                ),
            });
        }
        Ok(())
    }

    /// Whether the object under `key` has `size` bytes and S3's composite
    /// checksum of a multipart upload whose parts have the SHA-256s `sums`
    /// (the SHA-256 of the part SHA-256s, `-N`): what an earlier attempt
    /// or another replica completed from the same parts.
    async fn final_matches(
        &self,
        key: &str,
        sums: &[Vec<u8>],
        size: u64,
    ) -> Result<bool, StoreError> {
        if self.size(key).await? != Some(size) {
            return Ok(false);
        }
        let expected = composite(sums);
        Ok(self
            .stored_checksum(key)
            .await?
            .is_some_and(|c| c.split('-').next() == Some(expected.as_str())))
    }

    /// Full key of a part's record.
    fn key_of_part(&self, staging: &str, part: &PartRecord) -> String {
        format!("{}{}", self.staging_prefix(staging), part.tail())
    }

    /// Full key of an artifact's upload record.
    fn upload_record(&self, staging: &str) -> String {
        format!("{}{}", self.staging_prefix(staging), s3_parts::UPLOAD)
    }

    /// What is recorded of an artifact's multipart upload: its id (with
    /// the full key it was created for) and the parts of the durable
    /// prefix.
    async fn recorded(&self, staging: &str) -> Result<Recorded, StoreError> {
        let prefix = self.staging_prefix(staging);
        let mut parts = Vec::new();
        let mut has_upload = false;
        for (key, _) in self.list_keys(&prefix, false).await? {
            match key.strip_prefix(&prefix) {
                Some(s3_parts::UPLOAD) => has_upload = true,
                Some(tail) => parts.extend(PartRecord::parse(tail)),
                None => {}
            }
        }
        let upload = if has_upload {
            let key = self.upload_record(staging);
            let body = self.get_required(&key, None).await?;
            Some(
                s3_parts::parse_upload(&body).ok_or_else(|| StoreError::Corrupt {
                    context: format!("s3://{}/{key}", self.opts.bucket),
                    message: "not an upload record".into(),
                })?,
            )
        } else {
            None
        };
        let parts = s3_parts::chain(parts).map_err(|e| StoreError::Integrity {
            context: format!("s3://{}/{prefix}", self.opts.bucket),
            message: e.to_string(),
        })?;
        if !parts.is_empty() && upload.is_none() {
            return Err(StoreError::Corrupt {
                context: format!("s3://{}/{prefix}", self.opts.bucket),
                message: "parts are recorded but no upload".into(),
            });
        }
        Ok(Recorded { upload, parts })
    }

    /// Where the next part of the artifact staged under `staging` goes:
    /// from this replica's memory of its last append, else from the
    /// records; a new multipart upload of `key` (full key) when the
    /// artifact has none and `offset` is 0.
    async fn next_part(&self, staging: &str, key: &str, offset: u64) -> Result<Open, StoreError> {
        if let Some(open) = self.open_uploads.get(staging)
            && open.end == offset
        {
            return Ok(open);
        }
        let rec = self.recorded(staging).await?;
        let end = rec.parts.last().map_or(0, PartRecord::end);
        if end != offset {
            return Err(StoreError::Offset {
                name: staging.to_owned(),
                durable: end,
                given: offset,
            });
        }
        let next = rec.parts.last().map_or(1, |p| p.number + 1);
        let upload_id = match rec.upload {
            Some((id, _)) => id,
            None => self.create_upload(staging, key).await?,
        };
        Ok(Open {
            upload_id,
            next,
            end,
        })
    }

    /// Creates the multipart upload of `key` (full key) and its record;
    /// when another attempt recorded one first, uses that one.
    async fn create_upload(&self, staging: &str, key: &str) -> Result<String, StoreError> {
        let bucket = &self.opts.bucket;
        let req = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        let req = with_settings!(self, req, Class::Evidence);
        let created = req
            .send()
            .await
            .map_err(|e| backend(format!("cannot start an upload of s3://{bucket}/{key}"), e))?;
        let id = created
            .upload_id()
            .filter(|id| !id.is_empty() && !id.contains('\n'))
            .ok_or_else(|| StoreError::Backend {
                context: format!("s3://{bucket}/{key}"),
                message: "CreateMultipartUpload gave no usable upload id".into(),
            })?
            .to_owned();
        let record = self.upload_record(staging);
        if self
            .put_object(
                &record,
                s3_parts::upload_body(&id, key),
                Class::Control,
                Condition::Absent,
            )
            .await?
        {
            return Ok(id);
        }
        self.abort_upload(key, &id).await;
        let body = self.get_required(&record, None).await?;
        s3_parts::parse_upload(&body)
            .map(|(id, _)| id)
            .ok_or_else(|| StoreError::Corrupt {
                context: format!("s3://{bucket}/{record}"),
                message: "not an upload record".into(),
            })
    }

    /// Aborts a multipart upload (its parts are dropped); a failure is
    /// logged (a bucket lifecycle rule aborts what is left over).
    async fn abort_upload(&self, key: &str, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.opts.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(key, error = %DisplayErrorContext(&e), "Cannot abort a multipart upload");
        }
    }

    /// PUTs one part with its SHA-256 (S3 refuses a mismatch); returns its
    /// ETag.
    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        data: Bytes,
        raw_sum: &[u8],
    ) -> Result<String, StoreError> {
        let bucket = &self.opts.bucket;
        let ctx = || format!("cannot put part {number} of s3://{bucket}/{key}");
        let sum = b64(raw_sum);
        let out = self
            .client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(&sum)
            .body(ByteStream::from(data))
            // Integrity is the checksum header, which is signed and which
            // S3 checks against the body: hashing the body a second time
            // for the signature would cost both sides a SHA-256 pass.
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| backend(ctx(), e))?;
        if let Some(reported) = out.checksum_sha256()
            && reported != sum
        {
            return Err(StoreError::Integrity {
                context: format!("part {number} of s3://{bucket}/{key}"),
                message: format!("S3 reports SHA-256 {reported}, the collector sent {sum}"),
            });
        }
        out.e_tag()
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Backend {
                context: ctx(),
                message: "UploadPart gave no ETag".into(),
            })
    }

    /// Completes a multipart upload from `parts`, only if no object has the
    /// key (`false` then, or when the upload is gone: completed already).
    /// Each part's SHA-256 goes with it (S3 refuses a part that differs)
    /// and S3's composite checksum of the result must be the collector's.
    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[PartRecord],
    ) -> Result<bool, StoreError> {
        let bucket = &self.opts.bucket;
        let ctx = || format!("cannot complete s3://{bucket}/{key}");
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .e_tag(&p.etag)
                    .checksum_sha256(b64(&p.sha256))
                    .build()
            })
            .collect();
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .if_none_match("*")
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            // A final object exists already, or this upload was completed
            // by an earlier attempt: the caller checks the object.
            Err(e) if precondition_failed(&e) => return Ok(false),
            Err(e) => return Err(backend(ctx(), e)),
        };
        let sums: Vec<Vec<u8>> = parts.iter().map(|p| p.sha256.clone()).collect();
        let expected = composite(&sums);
        let reported = match out.checksum_sha256() {
            Some(r) => Some(r.to_owned()),
            None => self.stored_checksum(key).await?,
        };
        match reported {
            Some(r) if r.split('-').next() == Some(expected.as_str()) => Ok(true),
            other => Err(StoreError::Integrity {
                context: format!("s3://{bucket}/{key}"),
                message: format!(
                    "S3 reports checksum {other:?}, expected the SHA-256 of the part SHA-256s {expected}-{}",
                    parts.len()
                ),
            }),
        }
    }

    /// Removes an artifact's upload records (after its upload completed).
    async fn forget_upload(&self, staging: &str) {
        self.open_uploads.remove(staging);
        let prefix = self.staging_prefix(staging);
        let removed = match self.list_keys(&prefix, false).await {
            Ok(keys) => self.delete_keys(keys).await,
            Err(e) => Err(e),
        };
        if let Err(e) = removed {
            tracing::warn!(prefix, error = %e, "Cannot remove upload records");
        }
    }

    /// Deletes `keys` (full keys, as listed), front to back; stops at the
    /// first failure.
    async fn delete_keys(&self, keys: Vec<(String, u64)>) -> Result<(), StoreError> {
        for (key, _) in keys {
            self.client
                .delete_object()
                .bucket(&self.opts.bucket)
                .key(&key)
                .send()
                .await
                .map_err(|e| {
                    backend(format!("cannot delete s3://{}/{key}", self.opts.bucket), e)
                })?;
        }
        Ok(())
    }

    /// The SHA-256 checksum S3 stored for an object (HeadObject, checksum
    /// mode enabled).
    async fn stored_checksum(&self, key: &str) -> Result<Option<String>, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.opts.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| backend(format!("cannot head s3://{}/{key}", self.opts.bucket), e))?;
        Ok(out.checksum_sha256().map(str::to_owned))
    }
}

/// Whether an S3 error says a condition (`If-None-Match`, `If-Match`) did
/// not hold: 412, or 409 for a conditional write racing another, or 404
/// for `If-Match` on a key that is gone.
fn precondition_failed<E>(err: &SdkError<E>) -> bool {
    err.raw_response()
        .is_some_and(|r| matches!(r.status().as_u16(), 404 | 409 | 412))
}

impl Blob for S3Blob {
    fn part_size(&self) -> usize {
        PART_SIZE
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_object(&self.key(key), None).await
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        let key = self.key(key);
        let ctx = || format!("cannot get s3://{}/{key}", self.opts.bucket);
        let out = match self
            .client
            .get_object()
            .bucket(&self.opts.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(backend(ctx(), e)),
        };
        let etag = out.e_tag().unwrap_or_default().to_owned();
        let body = out.body.collect().await.map_err(|e| StoreError::Backend {
            context: ctx(),
            message: e.to_string(),
        })?;
        Ok(Some((body.into_bytes().to_vec(), Version(etag))))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.size(&self.key(key)).await?.is_some())
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, class: Class) -> Result<(), StoreError> {
        self.put_object(&self.key(key), bytes, class, Condition::None)
            .await
            .map(|_| ())
    }

    async fn put_if_absent(
        &self,
        key: &str,
        bytes: Vec<u8>,
        class: Class,
    ) -> Result<bool, StoreError> {
        self.put_object(&self.key(key), bytes, class, Condition::Absent)
            .await
    }

    async fn replace_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: &Version,
    ) -> Result<bool, StoreError> {
        self.put_object(
            &self.key(key),
            bytes,
            Class::Control,
            Condition::Matches(&expected.0),
        )
        .await
    }

    async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let prefix = format!("{}/", self.key(dir));
        let mut names: Vec<String> = self
            .list_keys(&prefix, true)
            .await?
            .into_iter()
            .filter_map(|(k, _)| Some(k.strip_prefix(&prefix)?.to_owned()))
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = self.key(key);
        self.client
            .delete_object()
            .bucket(&self.opts.bucket)
            .key(&k)
            .send()
            .await
            .map_err(|e| backend(format!("cannot delete s3://{}/{k}", self.opts.bucket), e))?;
        Ok(())
    }

    async fn delete_tree(&self, dir: &str) -> Result<(), StoreError> {
        let prefix = format!("{}/", self.key(dir));
        let keys = self.list_keys(&prefix, false).await?;
        // An abandoned artifact's multipart upload goes with its records.
        let marker = format!("/@{}", s3_parts::UPLOAD);
        for (key, _) in keys.iter().filter(|(k, _)| k.ends_with(&marker)) {
            if let Some((id, upload_key)) = self
                .get_object(key, None)
                .await?
                .and_then(|body| s3_parts::parse_upload(&body))
            {
                self.abort_upload(&upload_key, &id).await;
            }
        }
        self.delete_keys(keys).await
    }

    async fn staged(&self, staging: &str, final_key: &str) -> Result<Staged, StoreError> {
        let rec = self.recorded(staging).await?;
        if let (Some(last), Some((upload_id, _))) = (rec.parts.last(), &rec.upload) {
            // The bytes are parts of an unfinished upload: no read back,
            // the digest state saved with the last part instead.
            let saved = self
                .get_required(&self.key_of_part(staging, last), None)
                .await?;
            self.open_uploads.insert(
                staging,
                Open {
                    upload_id: upload_id.clone(),
                    next: last.number + 1,
                    end: last.end(),
                },
            );
            return Ok(Staged {
                len: last.end(),
                saved_state: Some(saved),
            });
        }
        // Nothing staged yet, or made final already.
        let len = self.size(&self.key(final_key)).await?.unwrap_or(0);
        Ok(Staged {
            len,
            saved_state: None,
        })
    }

    async fn staged_read(
        &self,
        _staging: &str,
        final_key: &str,
        _is_final: bool,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        // Staged bytes are parts of an unfinished upload, which S3 cannot
        // read: only a final object is read.
        self.get_required(&self.key(final_key), Some((offset, len)))
            .await
    }

    async fn staged_append(
        &self,
        staging: &str,
        final_key: &str,
        offset: u64,
        data: Bytes,
        saved_state: &[u8],
    ) -> Result<u64, StoreError> {
        if data.is_empty() {
            return Ok(offset);
        }
        let key = self.key(final_key);
        let open = self.next_part(staging, &key, offset).await?;
        if open.next >= MAX_PARTS {
            // The last part is kept for the artifact's end.
            return Err(StoreError::Integrity {
                context: format!("s3://{}/{key}", self.opts.bucket),
                message: format!(
                    "the artifact passes {offset} bytes: an S3 upload holds at most {MAX_PARTS} parts"
                ),
            });
        }
        let sum = sha256(&data);
        let len = data.len() as u64;
        let etag = self
            .upload_part(&key, &open.upload_id, open.next, data, &sum)
            .await?;
        let record = PartRecord {
            number: open.next,
            offset,
            len,
            sha256: sum,
            etag,
        };
        // The record makes the part durable for a resumed upload. An
        // identical record exists when an earlier attempt of this very
        // part got as far: then it is durable already.
        let record_key = self.key_of_part(staging, &record);
        if !self
            .put_object(
                &record_key,
                saved_state.to_vec(),
                Class::Control,
                Condition::Absent,
            )
            .await?
        {
            tracing::debug!(key = record_key, "Part recorded already");
        }
        let end = record.end();
        self.open_uploads.insert(
            staging,
            Open {
                upload_id: open.upload_id,
                next: open.next + 1,
                end,
            },
        );
        Ok(end)
    }

    async fn promote(
        &self,
        staging: &str,
        final_key: &str,
        offset: u64,
        tail: Bytes,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        let key = self.key(final_key);
        let integrity = |message: String| StoreError::Integrity {
            context: format!("s3://{}/{key}", self.opts.bucket),
            message,
        };
        let rec = self.recorded(staging).await?;
        let Some(last) = rec.parts.last() else {
            // No part was put: the whole artifact is `tail`, one PUT with
            // its SHA-256 (S3 checks it), created only if the key is free.
            if offset == 0 && tail.len() as u64 == finished.size {
                let sum = sha256(&tail);
                if hex(&sum) != finished.sha256 {
                    return Err(integrity(format!(
                        "the bytes hash to {}, the agent's SHA-256 is {}",
                        hex(&sum),
                        finished.sha256
                    )));
                }
                if !self
                    .put_summed(
                        &key,
                        tail.to_vec(),
                        &sum,
                        Class::Evidence,
                        Condition::Absent,
                    )
                    .await?
                {
                    self.verify_final(&key, finished).await?;
                }
            } else if tail.is_empty() && offset == finished.size {
                // Made final by an earlier attempt.
                self.verify_final(&key, finished).await?;
            } else {
                return Err(StoreError::Offset {
                    name: staging.to_owned(),
                    durable: 0,
                    given: offset,
                });
            }
            // An upload an earlier attempt opened: its parts go, and its
            // record (nothing to remove otherwise).
            if let Some((upload_id, upload_key)) = &rec.upload {
                self.abort_upload(upload_key, upload_id).await;
                self.forget_upload(staging).await;
            } else {
                self.open_uploads.remove(staging);
            }
            return Ok(());
        };
        if last.end() != offset {
            return Err(StoreError::Offset {
                name: staging.to_owned(),
                durable: last.end(),
                given: offset,
            });
        }
        let Some((upload_id, upload_key)) = &rec.upload else {
            return Err(integrity("parts are recorded but no upload".into()));
        };
        if *upload_key != key {
            return Err(integrity(format!(
                "the recorded upload is of {upload_key}, not of this artifact"
            )));
        }
        let mut parts = rec.parts.clone();
        if !tail.is_empty() {
            let number = last.number + 1;
            let sum = sha256(&tail);
            let len = tail.len() as u64;
            let etag = self
                .upload_part(&key, upload_id, number, tail, &sum)
                .await?;
            parts.push(PartRecord {
                number,
                offset,
                len,
                sha256: sum,
                etag,
            });
        }
        let size = parts.last().map_or(0, PartRecord::end);
        if size != finished.size {
            return Err(integrity(format!(
                "{size} bytes stored, the artifact has {}",
                finished.size
            )));
        }
        if !self.complete_upload(&key, upload_id, &parts).await? {
            // Completed by an earlier attempt or another replica, or a
            // different object holds the key: it must be these very bytes.
            let sums: Vec<Vec<u8>> = parts.iter().map(|p| p.sha256.clone()).collect();
            if !self.final_matches(&key, &sums, size).await? {
                self.verify_final(&key, finished).await?;
            }
        }
        self.forget_upload(staging).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn store_urls_parse_into_bucket_and_prefix() {
        let o = S3Options::from_url("s3://evidence-bucket/ir/captures/").unwrap();
        assert_eq!(
            (o.bucket.as_str(), o.prefix.as_str()),
            ("evidence-bucket", "ir/captures")
        );
        let o = S3Options::from_url("s3://evidence-bucket").unwrap();
        assert_eq!(o.prefix, "");
        for bad in [
            "s3://",
            "s3://A_B/x",
            "file:///x",
            "s3://ab",
            "s3://bucket/a//b",
        ] {
            assert!(S3Options::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retention_modes_parse_case_insensitively() {
        assert_eq!("compliance".parse(), Ok(RetentionMode::Compliance));
        assert_eq!("GOVERNANCE".parse(), Ok(RetentionMode::Governance));
        assert!("forever".parse::<RetentionMode>().is_err());
    }

    #[test]
    fn the_composite_checksum_is_the_sha256_of_the_part_sha256s() {
        // As SeaweedFS 4.48 reported it for parts "a"x8MiB twice and "tail".
        let a = sha256(&vec![b'a'; 8 << 20]);
        let sums = [a.clone(), a, sha256(b"tail")];
        assert_eq!(
            composite(&sums),
            "rby8z2KqbNhIwONoT7jfVA9NkKHB7h50DW/c6j/l0rY="
        );
    }

    #[test]
    fn digests_are_hex_for_manifests_and_base64_for_s3() {
        let raw = sha256(b"abc");
        assert_eq!(
            hex(&raw),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(b64(&raw), "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
    }
}
