//! `s3://BUCKET/PREFIX`: the blob layer in an S3 bucket (or an
//! S3-compatible store), shared by any number of collector replicas with
//! no other state. Keys are the evidence layer's (see
//! [`super::evidence`]) below `PREFIX/`; an artifact's staging objects are
//! `PREFIX/staging/<capture-id>/<artifact>/@<offset>`.
//!
//! Replicas agree through S3's conditional writes: final objects and
//! manifests are created with `If-None-Match: *` (a PUT, or the
//! `CompleteMultipartUpload`), so an existing one is never replaced; a
//! capture state is replaced with `If-Match` on the ETag read, so of two
//! replicas updating it one wins and the other reads it again. SeaweedFS
//! 4.48, the suite's server, honours both (412 Precondition Failed,
//! exactly one of 8 racing writers succeeds).
//!
//! How an artifact gets there: each evidence byte crosses from the
//! collector to S3 once, and is not read back on the way to its final key
//! (S3 has no append, multipart parts must be at least 5 MiB, and the
//! parts of an unfinished multipart upload cannot be read back):
//!
//! 1. The upload service hands the store [`PART_SIZE`] bytes at a time (the
//!    last piece may be smaller); each becomes one *staging object*
//!    `@<offset>.<sha256>`, PUT with `x-amz-checksum-sha256` (S3 refuses a
//!    mismatch). Only then is its end acknowledged to the agent as
//!    durable. The service writes one part in the background while the
//!    next one fills, and the agent's window (16 MiB + one chunk
//!    unacknowledged) covers both, so the upload does not stop for each
//!    part's PUT; acks lag by at most two parts. The SHA-256
//!    in the key is the collector's, over the bytes it sent.
//! 2. Staging objects are ordinary objects: a collector replica that
//!    picks up a resumed upload (after a crash of this one, or on another
//!    replica) finds the durable length by listing them and rebuilds its
//!    running digests by reading them back. That read is the resume path
//!    only.
//! 3. When the artifact ends and its digests match the agent's, the store
//!    makes the final object *inside S3*, with no bytes through the
//!    collector: a one-part artifact by `CopyObject` (S3 computes the
//!    SHA-256 of the copy, which must be the agent's; where a store
//!    ignores Object Lock headers on a copy, as SeaweedFS 4.48 does, the
//!    collector sets retention and legal hold on the copy itself before
//!    the artifact counts as finished), a larger one by a
//!    multipart upload whose parts are `UploadPartCopy`s of the staging
//!    objects. Each copied part's SHA-256, as S3 computes it, must be the
//!    one in the staging key; `CompleteMultipartUpload` carries those
//!    sums (S3 refuses a part that differs) and S3's composite checksum of
//!    the result (the SHA-256 of the part SHA-256s, `-N`) must be the
//!    collector's. Both are created with `If-None-Match: *`. Staging
//!    objects are then removed.
//!
//! Why server-side copies and not a multipart upload opened at the first
//! part (each part PUT straight into it, the running digests persisted
//! with the part list): the collector's running digests include, for a
//! gzip artifact (nearly all of them), the SHA-256 of the *decompressed*
//! bytes, and a gzip decoder's state (window, bit position) cannot be
//! saved. sha2 0.11 can serialize a hasher's state (RustCrypto hashes
//! PR 385; 0.10, which this workspace uses, cannot), but that covers only
//! the stored-bytes digest: a replica resuming such an upload would have
//! to read the parts back, and the parts of an unfinished multipart upload
//! cannot be read. Readable staging objects keep resume exact, and the
//! copies cost requests, not transfer: per 8 MiB part one PUT, one copy,
//! one DELETE (three requests instead of one), and S3 holds two copies of
//! an artifact until its staging objects are removed. SeaweedFS 4.48 (the
//! suite's server) does `UploadPartCopy` with SHA-256 part checksums,
//! refuses a `CompleteMultipartUpload` whose part checksum differs
//! (BadDigest), and honours `If-None-Match` on `CopyObject`.
//!
//! Memory per stream is two part buffers in the service (one being
//! written, one filling), whatever the artifact's size.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, ObjectLockEnabled,
    ObjectLockLegalHold, ObjectLockLegalHoldStatus, ObjectLockMode, ObjectLockRetention,
    ObjectLockRetentionMode, ServerSideEncryption, StorageClass,
};
use base64::Engine as _;
use serde::Deserialize;
use sha2::Digest as _;

use super::blob::{Blob, Class, Version};
use super::{FinishedArtifact, StoreError};

/// Bytes per staging object and multipart part (the last may be smaller).
/// At least S3's 5 MiB minimum, at most half the agent's window, so a
/// part fills while the one before it is written. With S3's 10,000
/// parts this allows artifacts up to 80 GiB.
pub const PART_SIZE: usize = 8 << 20;

/// `UploadPartCopy` requests of one assembly in flight at once.
const COPY_CONCURRENCY: usize = 4;

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

fn hex(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("{b:02x}")).collect()
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
/// (`PutObject`, `CopyObject`, `CreateMultipartUpload`, whose builders
/// share these setters but no trait): SSE-KMS for every object; Object
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

/// One durable staging object of an open artifact.
#[derive(Debug, Clone)]
struct StagedPart {
    key: String,
    offset: u64,
    len: u64,
    /// The SHA-256 the collector computed over the bytes it sent (and S3
    /// checked on the PUT), from the key; `None` for a key written before
    /// keys carried it.
    sha256: Option<Vec<u8>>,
}

/// Parses the tail of a staging key, `<offset>` or `<offset>.<sha256 hex>`.
fn parse_staging_tail(tail: &str) -> Option<(u64, Option<Vec<u8>>)> {
    let (offset, sum) = match tail.split_once('.') {
        Some((offset, sum)) => (offset, Some(unhex(sum)?)),
        None => (tail, None),
    };
    if sum.as_ref().is_some_and(|s| s.len() != 32) {
        return None;
    }
    Some((offset.parse().ok()?, sum))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `x-amz-copy-source` for an object: `bucket/key`, URL-encoded except `/`.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for b in format!("{bucket}/{key}").bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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

    /// Where the staging objects of the artifact staged under `staging`
    /// start (`@` never occurs in artifact names, so artifacts never share
    /// parts).
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
        let out = match req.send().await {
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

    /// The contiguous staging parts of an artifact, from offset 0.
    async fn staged_parts(&self, staging: &str) -> Result<Vec<StagedPart>, StoreError> {
        let prefix = self.staging_prefix(staging);
        let mut found: Vec<StagedPart> = self
            .list_keys(&prefix, false)
            .await?
            .into_iter()
            .filter_map(|(key, len)| {
                let (offset, sha256) = parse_staging_tail(key.strip_prefix(&prefix)?)?;
                Some(StagedPart {
                    key,
                    offset,
                    len,
                    sha256,
                })
            })
            .collect();
        // Two objects at one offset (two attempts that raced) hold the same
        // bytes of the agent's artifact: take the longer.
        found.sort_by(|a, b| a.offset.cmp(&b.offset).then(b.len.cmp(&a.len)));
        let mut parts = Vec::new();
        let mut end = 0;
        for part in found {
            // A part left by an abandoned attempt at another offset is not
            // part of the durable prefix.
            if part.offset == end && part.len > 0 {
                end += part.len;
                parts.push(part);
            }
        }
        Ok(parts)
    }

    /// The SHA-256 of each part's bytes as the collector sent them: from
    /// the key, else (a key written before keys carried it) the checksum S3
    /// stored with the staging object.
    async fn part_sums(&self, parts: &[StagedPart]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut out = Vec::with_capacity(parts.len());
        for part in parts {
            let sum = match &part.sha256 {
                Some(sum) => sum.clone(),
                None => self
                    .stored_checksum(&part.key)
                    .await?
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .ok_or_else(|| StoreError::Integrity {
                        context: format!("s3://{}/{}", self.opts.bucket, part.key),
                        message: "staging object has no SHA-256 checksum".into(),
                    })?,
            };
            out.push(sum);
        }
        Ok(out)
    }

    /// Checks an existing final object against the artifact (used when an
    /// artifact was made final but its state not yet saved, or another
    /// replica made it final): S3's checksum of it when that says the
    /// SHA-256 of the whole object (a single part), else by streaming it.
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

    /// Whether the object under `key` has `size` bytes and S3's checksum
    /// of the parts whose SHA-256s are `sums` (the whole object's SHA-256
    /// for one part, the composite `-N` for more): what an earlier attempt
    /// or another replica made of the same staging objects.
    async fn final_matches(
        &self,
        key: &str,
        sums: &[Vec<u8>],
        size: u64,
    ) -> Result<bool, StoreError> {
        let expected = match sums {
            [] => return Ok(false),
            [one] => b64(one),
            many => {
                let mut composite = sha2::Sha256::new();
                for sum in many {
                    composite.update(sum);
                }
                format!("{}-{}", b64(&composite.finalize()), many.len())
            }
        };
        if self.size(key).await? != Some(size) {
            return Ok(false);
        }
        Ok(self.stored_checksum(key).await?.as_deref() == Some(expected.as_str()))
    }

    /// Makes a one-part artifact final by a server-side `CopyObject` of its
    /// staging object, created only if no object has the key (`false`
    /// then). S3 computes the SHA-256 of the copy, which must be the
    /// agent's.
    async fn copy_single(
        &self,
        key: &str,
        part: &StagedPart,
        sum: &[u8],
        finished: &FinishedArtifact,
    ) -> Result<bool, StoreError> {
        let bucket = &self.opts.bucket;
        let ctx = || format!("s3://{bucket}/{key}");
        let agent = unhex(&finished.sha256).unwrap_or_default();
        if sum != agent.as_slice() {
            return Err(StoreError::Integrity {
                context: ctx(),
                message: format!(
                    "the staged bytes hash to {}, the agent's SHA-256 is {}",
                    hex(sum),
                    finished.sha256
                ),
            });
        }
        let req = self
            .client
            .copy_object()
            .bucket(bucket)
            .key(key)
            .copy_source(copy_source(bucket, &part.key))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .if_none_match("*");
        let req = with_settings!(self, req, Class::Evidence);
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) if precondition_failed(&e) => return Ok(false),
            Err(e) => return Err(backend(format!("cannot copy to {}", ctx()), e)),
        };
        let locking = self.opts.retention.is_some() || self.opts.legal_hold;
        let mut reported = out
            .copy_object_result()
            .and_then(|r| r.checksum_sha256())
            .map(str::to_owned);
        if reported.is_none() || locking {
            let head = self
                .client
                .head_object()
                .bucket(bucket)
                .key(key)
                .checksum_mode(ChecksumMode::Enabled)
                .send()
                .await
                .map_err(|e| backend(format!("cannot head {}", ctx()), e))?;
            if reported.is_none() {
                reported = head.checksum_sha256().map(str::to_owned);
            }
            self.lock_copy(
                key,
                head.object_lock_mode().is_some(),
                head.object_lock_legal_hold_status(),
            )
            .await?;
        }
        let expected = b64(sum);
        if reported.as_deref() == Some(expected.as_str()) {
            Ok(true)
        } else {
            Err(StoreError::Integrity {
                context: ctx(),
                message: format!(
                    "S3 reports checksum {reported:?} for the copy, the artifact's SHA-256 is {expected}"
                ),
            })
        }
    }

    /// Sets the Object Lock retention and legal hold of a copied evidence
    /// object when the copy did not (S3 applies the `CopyObject` headers;
    /// SeaweedFS 4.48 ignores them on a copy, though it honours them on
    /// `PutObject` and `CreateMultipartUpload`). Runs before the artifact
    /// is recorded as finished.
    async fn lock_copy(
        &self,
        key: &str,
        has_retention: bool,
        hold: Option<&ObjectLockLegalHoldStatus>,
    ) -> Result<(), StoreError> {
        let bucket = &self.opts.bucket;
        let ctx = || format!("cannot lock s3://{bucket}/{key}");
        if let Some((mode, until)) = self.retain_until()
            && !has_retention
        {
            let mode = match mode {
                ObjectLockMode::Compliance => ObjectLockRetentionMode::Compliance,
                _ => ObjectLockRetentionMode::Governance,
            };
            self.client
                .put_object_retention()
                .bucket(bucket)
                .key(key)
                .retention(
                    ObjectLockRetention::builder()
                        .mode(mode)
                        .retain_until_date(until)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| backend(ctx(), e))?;
        }
        if self.opts.legal_hold && hold != Some(&ObjectLockLegalHoldStatus::On) {
            self.client
                .put_object_legal_hold()
                .bucket(bucket)
                .key(key)
                .legal_hold(
                    ObjectLockLegalHold::builder()
                        .status(ObjectLockLegalHoldStatus::On)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| backend(ctx(), e))?;
        }
        Ok(())
    }

    /// Assembles the final object from `parts` by a multipart upload whose
    /// parts are server-side copies of the staging objects
    /// (`UploadPartCopy`), completed only if no object has the key
    /// (`false` then).
    async fn assemble_multipart(
        &self,
        key: &str,
        parts: &[StagedPart],
        sums: &[Vec<u8>],
    ) -> Result<bool, StoreError> {
        let bucket = &self.opts.bucket;
        let ctx = || format!("cannot assemble s3://{bucket}/{key}");
        let req = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        let req = with_settings!(self, req, Class::Evidence);
        let created = req.send().await.map_err(|e| backend(ctx(), e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = self.copy_parts(key, &upload_id, parts, sums).await;
        if !matches!(result, Ok(true)) {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn copy_parts(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[StagedPart],
        sums: &[Vec<u8>],
    ) -> Result<bool, StoreError> {
        let bucket = &self.opts.bucket;
        let ctx = || format!("cannot assemble s3://{bucket}/{key}");
        let mut composite = sha2::Sha256::new();
        for raw in sums {
            composite.update(raw);
        }
        // The copies run COPY_CONCURRENCY at a time (S3 copies inside the
        // store; one after another they left the store's CPUs idle while
        // the agent waited for the artifact's end).
        let mut completed = Vec::with_capacity(parts.len());
        let numbered: Vec<(i32, &StagedPart, &Vec<u8>)> = parts
            .iter()
            .zip(sums)
            .enumerate()
            .map(|(i, (part, raw))| {
                i32::try_from(i + 1)
                    .map(|n| (n, part, raw))
                    .map_err(|_| StoreError::Integrity {
                        context: ctx(),
                        message: "too many parts".into(),
                    })
            })
            .collect::<Result<_, _>>()?;
        for batch in numbered.chunks(COPY_CONCURRENCY) {
            let mut tasks = tokio::task::JoinSet::new();
            for &(number, part, raw) in batch {
                let (client, bucket, key, upload_id) = (
                    self.client.clone(),
                    bucket.clone(),
                    key.to_owned(),
                    upload_id.to_owned(),
                );
                let (part_key, sum) = (part.key.clone(), b64(raw));
                tasks.spawn(async move {
                    let out = client
                        .upload_part_copy()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(upload_id)
                        .part_number(number)
                        .copy_source(copy_source(&bucket, &part_key))
                        .send()
                        .await
                        .map_err(|e| backend(format!("cannot assemble s3://{bucket}/{key}"), e))?;
                    let result = out.copy_part_result();
                    // S3 computes the part's SHA-256 as it copies (the
                    // upload was created with that algorithm); it must be
                    // what the collector sent.
                    if let Some(reported) = result.and_then(|r| r.checksum_sha256())
                        && reported != sum
                    {
                        return Err(StoreError::Integrity {
                            context: part_key,
                            message: format!(
                                "S3 reports SHA-256 {reported} for the copied part, the collector sent {sum}"
                            ),
                        });
                    }
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(result.and_then(|r| r.e_tag()).map(str::to_owned))
                        .checksum_sha256(sum)
                        .build())
                });
            }
            while let Some(joined) = tasks.join_next().await {
                completed.push(joined.map_err(|e| StoreError::Backend {
                    context: ctx(),
                    message: e.to_string(),
                })??);
            }
        }
        completed.sort_by_key(|p| p.part_number());
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
            // A final object exists already: the caller checks it.
            Err(e) if precondition_failed(&e) => return Ok(false),
            Err(e) => return Err(backend(ctx(), e)),
        };
        let expected = b64(&composite.finalize());
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
        for (key, _) in self.list_keys(&prefix, false).await? {
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

    async fn staged_len(&self, staging: &str, final_key: &str) -> Result<u64, StoreError> {
        let parts = self.staged_parts(staging).await?;
        if let Some(last) = parts.last() {
            return Ok(last.offset + last.len);
        }
        // Assembled already (its staging objects removed).
        Ok(self.size(&self.key(final_key)).await?.unwrap_or(0))
    }

    async fn staged_read(
        &self,
        staging: &str,
        final_key: &str,
        is_final: bool,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let parts = if is_final {
            Vec::new()
        } else {
            self.staged_parts(staging).await?
        };
        if parts.is_empty() {
            return Ok(self
                .get_object(&self.key(final_key), Some((offset, len)))
                .await?
                .unwrap_or_default());
        }
        let mut out = Vec::new();
        let end = offset + len;
        for part in parts {
            let (start, stop) = (offset.max(part.offset), end.min(part.offset + part.len));
            if start >= stop {
                continue;
            }
            let bytes = self
                .get_required(&part.key, Some((start - part.offset, stop - start)))
                .await?;
            out.extend_from_slice(&bytes);
        }
        Ok(out)
    }

    async fn staged_append(
        &self,
        staging: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, StoreError> {
        let parts = self.staged_parts(staging).await?;
        let durable = parts.last().map_or(0, |p| p.offset + p.len);
        if durable != offset {
            return Err(StoreError::Offset {
                name: staging.to_owned(),
                durable,
                given: offset,
            });
        }
        if data.is_empty() {
            return Ok(offset);
        }
        // The key carries the SHA-256 of the bytes (S3 checks it on the
        // PUT), so that the promote checks what it copies against what the
        // collector hashed, without reading the bytes back.
        let sum = sha256(data);
        let key = format!("{}{offset:020}.{}", self.staging_prefix(staging), hex(&sum));
        self.put_summed(&key, data.to_vec(), &sum, Class::Control, Condition::None)
            .await?;
        Ok(offset + data.len() as u64)
    }

    async fn promote(
        &self,
        staging: &str,
        final_key: &str,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        let key = self.key(final_key);
        let parts = self.staged_parts(staging).await?;
        let staged: u64 = parts.iter().map(|p| p.len).sum();
        if parts.is_empty() && finished.size > 0 {
            // A retry after the staging objects were already removed.
            return self.verify_final(&key, finished).await;
        }
        if staged != finished.size {
            return Err(StoreError::Integrity {
                context: format!("s3://{}/{key}", self.opts.bucket),
                message: format!("{staged} bytes staged, the artifact has {}", finished.size),
            });
        }
        let sums = self.part_sums(&parts).await?;
        let created = match (parts.as_slice(), sums.as_slice()) {
            ([], _) => {
                let got = hex(&sha256(&[]));
                if got != finished.sha256 {
                    return Err(StoreError::Integrity {
                        context: format!("s3://{}/{key}", self.opts.bucket),
                        message: format!(
                            "no bytes staged (SHA-256 {got}), the agent's SHA-256 is {}",
                            finished.sha256
                        ),
                    });
                }
                self.put_object(&key, Vec::new(), Class::Evidence, Condition::Absent)
                    .await?
            }
            ([part], [sum]) => self.copy_single(&key, part, sum, finished).await?,
            _ => self.assemble_multipart(&key, &parts, &sums).await?,
        };
        if !created && !self.final_matches(&key, &sums, finished.size).await? {
            // A final object exists already (an interrupted earlier attempt,
            // or another replica) and S3's checksum of it is not the one of
            // these parts: it must still be these very bytes.
            self.verify_final(&key, finished).await?;
        }
        // Front to back: an interrupted cleanup never leaves a durable
        // prefix shorter than the final object.
        for part in parts {
            if let Err(e) = self
                .client
                .delete_object()
                .bucket(&self.opts.bucket)
                .key(&part.key)
                .send()
                .await
            {
                tracing::warn!(key = part.key, error = %DisplayErrorContext(&e), "Cannot remove a staging object");
                break;
            }
        }
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
    fn staging_keys_carry_offset_and_sha256_and_older_keys_still_parse() {
        let sum = sha256(b"abc");
        let tail = format!("{:020}.{}", 8u64 << 20, hex(&sum));
        assert_eq!(parse_staging_tail(&tail), Some((8 << 20, Some(sum))));
        assert_eq!(parse_staging_tail("00000000000000000000"), Some((0, None)));
        for bad in ["", "x", "1.zz", "1.abcd", "1.", "-1"] {
            assert_eq!(parse_staging_tail(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn copy_sources_are_url_encoded_except_slashes() {
        assert_eq!(
            copy_source("evidence", "ir/staging/c 1/a+b/@0.ff"),
            "evidence/ir/staging/c%201/a%2Bb/%400.ff"
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
