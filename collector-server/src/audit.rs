//! The access trail: one audit event per analyst call (list, show/manifest,
//! read/pull, audit listing, capture requests), stored before the answer
//! is sent.
//!
//! Why before: an event written after the answer can be lost to a crash
//! between the two, and then someone read evidence without a trace. Here
//! the handler writes the event — durable on return, see
//! [`crate::store::evidence::Evidence::append_audit`] — and only then
//! returns its answer; if the event cannot be written the call fails
//! (`unavailable`) and nothing is served. A refused or failed call (an
//! unknown capture id, the wrong role) is recorded too, with its outcome.
//!
//! Each event is its own write-once object, `audit/<day>/<uuidv7>.json`,
//! outside the captures' objects (the evidence is never touched): on the
//! file store a file created once and synced, on S3 an object with the
//! store's Object Lock retention. Event names are UUIDv7, so listing by
//! name is listing by time.
//!
//! The identity is the certificate's name *and* its SHA-256: two
//! certificates issued with one name are two keys, and the trail tells
//! them apart.

use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use crate::auth::{self, Identity, Role};
use crate::service::store_status;
use crate::store::Store;

/// Most events one listing returns (the newest kept): about 400 bytes
/// each, so a listing stays under 20 MB of memory.
pub const MAX_LISTED: usize = 50_000;

/// Metadata key of the analyst's case id on every call.
pub const CASE_HEADER: &str = "x-ircap-case";
/// Metadata key of the analyst's reason (UTF-8, binary metadata).
pub const REASON_HEADER: &str = "x-ircap-reason-bin";
pub use ircap_proto::request_args::{MAX_CASE_LEN, MAX_REASON_LEN, check_case, check_reason};

/// One analyst call, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When the call was answered (RFC 3339 UTC).
    pub time: String,
    /// Certificate identity of the caller.
    pub identity: String,
    /// Its role.
    pub role: String,
    /// SHA-256 of the caller's DER certificate.
    pub certificate_sha256: String,
    /// The call: `list_captures`, `get_manifest`, `read_artifact`,
    /// `list_audit`, `create_request`, `list_results`, `list_agents`,
    /// `approve_request`.
    pub call: String,
    /// The capture the call was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_id: Option<String>,
    /// The artifact read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// The capture request created or read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The case id the analyst gave (`--case`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<String>,
    /// The reason the analyst gave (`--reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes the answer carries (artifact bytes from the offset asked, the
    /// manifest's size; 0 for listings).
    pub bytes_served: u64,
    /// `ok`, or the gRPC code and message of the refusal.
    pub outcome: String,
}

/// The case and reason an analyst call carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseTag {
    /// Case id.
    pub case: Option<String>,
    /// Reason.
    pub reason: Option<String>,
}

/// The case and reason from a call's metadata.
///
/// # Errors
/// `invalid_argument` when either is malformed.
pub fn case_tag<T>(req: &Request<T>) -> Result<CaseTag, Status> {
    let md = req.metadata();
    let case = match md.get(CASE_HEADER) {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| Status::invalid_argument("case id is not text"))?;
            check_case(text).map_err(Status::invalid_argument)?;
            Some(text.to_owned())
        }
    };
    let reason = match md.get_bin(REASON_HEADER) {
        None => None,
        Some(v) => {
            let bytes = v
                .to_bytes()
                .map_err(|_| Status::invalid_argument("reason is not base64"))?;
            if bytes.len() > MAX_REASON_LEN {
                return Err(Status::invalid_argument(format!(
                    "reason is over {MAX_REASON_LEN} bytes"
                )));
            }
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| Status::invalid_argument("reason is not UTF-8"))?;
            check_reason(&text).map_err(Status::invalid_argument)?;
            Some(text)
        }
    };
    Ok(CaseTag { case, reason })
}

/// The caller's identity, whatever its role (TLS already verified the
/// certificate), so that a refused call is recorded under its name.
///
/// # Errors
/// `unauthenticated` / `permission_denied` when there is no usable
/// certificate identity: nobody to record.
pub fn caller<T>(req: &Request<T>) -> Result<Identity, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    auth::identity_from_chain(&certs).map_err(|e| Status::permission_denied(e.to_string()))
}

/// Refuses a caller without `role`.
///
/// # Errors
/// `permission_denied` naming both roles.
pub fn require(who: &Identity, role: Role) -> Result<(), Status> {
    if who.role == role {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{} holds the {} role; this call needs the {} role",
            who.name, who.role, role
        )))
    }
}

/// An event for `who` making `call`, to be filled in and recorded.
#[must_use]
pub fn event(who: &Identity, call: &str, tag: &CaseTag) -> AuditEvent {
    AuditEvent {
        time: String::new(),
        identity: who.name.clone(),
        role: who.role.to_string(),
        certificate_sha256: who.fingerprint_sha256.clone(),
        call: call.to_owned(),
        capture_id: None,
        artifact: None,
        request_id: None,
        case: tag.case.clone(),
        reason: tag.reason.clone(),
        bytes_served: 0,
        outcome: "ok".into(),
    }
}

/// The caller's identity and case, checked: the analyst role, and a case
/// id when `require_case`. The event records whatever was found, so a
/// refused call is recorded under the caller's name too.
///
/// # Errors
/// The outer error when there is no certificate identity at all (nobody
/// to record); the inner one when the call is refused.
pub fn admit<T>(
    request: &Request<T>,
    call: &str,
    require_case: bool,
) -> Result<(AuditEvent, Result<CaseTag, Status>), Status> {
    let who = caller(request)?;
    let tag = case_tag(request);
    let ev = event(&who, call, tag.as_ref().unwrap_or(&CaseTag::default()));
    let admitted = require(&who, Role::Analyst).and_then(|()| {
        let tag = tag?;
        if require_case && tag.case.is_none() {
            return Err(Status::failed_precondition(
                "this collector requires a case id on every analyst call: give --case",
            ));
        }
        Ok(tag)
    });
    Ok((ev, admitted))
}

/// Records `ev` with `result`'s outcome, then returns `result`: the
/// answer leaves only once its event is stored.
///
/// # Errors
/// `result`'s error, or `unavailable` when the event cannot be stored.
pub async fn answer<R>(
    store: &Store,
    mut ev: AuditEvent,
    result: Result<R, Status>,
) -> Result<R, Status> {
    ev.outcome = outcome(&result);
    if result.is_err() {
        ev.bytes_served = 0;
    }
    record(store, ev).await?;
    result
}

/// `ok`, or the refusal's code and message.
#[must_use]
pub fn outcome<T>(result: &Result<T, Status>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    }
}

/// Stores `event` (timestamped now); durable on return.
///
/// # Errors
/// `unavailable` when it cannot be stored: the call must then not be
/// answered.
pub async fn record(store: &Store, mut event: AuditEvent) -> Result<(), Status> {
    let now = time::OffsetDateTime::now_utc();
    event.time = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let day = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let name = uuid::Uuid::now_v7().to_string();
    let bytes = serde_json::to_vec(&event).map_err(|e| Status::internal(e.to_string()))?;
    store
        .append_audit(&day, &name, &bytes)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, call = event.call, identity = event.identity, "Audit event not stored; refusing the call");
            Status::unavailable(format!(
                "the access trail cannot be written, so the call is refused: {}",
                store_status(e).message()
            ))
        })
}

/// What [`list`] keeps.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this capture.
    pub capture_id: Option<String>,
    /// Only this identity.
    pub identity: Option<String>,
    /// Only at or after.
    pub since: Option<time::OffsetDateTime>,
    /// Only this case.
    pub case: Option<String>,
}

/// Stored events matching `filter`, oldest first.
///
/// # Errors
/// `unavailable`/`internal` when the store cannot be read.
pub async fn list(store: &Store, filter: &Filter) -> Result<Vec<AuditEvent>, Status> {
    let from_day = filter
        .since
        .map(|t| format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()));
    let raw = store
        .read_audit(from_day.as_deref(), MAX_LISTED)
        .await
        .map_err(store_status)?;
    let mut out = Vec::new();
    for bytes in raw {
        let Ok(e) = serde_json::from_slice::<AuditEvent>(&bytes) else {
            tracing::warn!("Unreadable audit event skipped");
            continue;
        };
        let at =
            time::OffsetDateTime::parse(&e.time, &time::format_description::well_known::Rfc3339)
                .ok();
        if filter
            .capture_id
            .as_ref()
            .is_some_and(|c| e.capture_id.as_ref() != Some(c))
            || filter.identity.as_ref().is_some_and(|i| &e.identity != i)
            || filter
                .case
                .as_ref()
                .is_some_and(|c| e.case.as_ref() != Some(c))
            || filter.since.is_some_and(|s| at.is_none_or(|t| t < s))
        {
            continue;
        }
        out.push(e);
    }
    Ok(out)
}

/// The events as a table for a terminal (host text escaped).
#[must_use]
pub fn table(events: &[AuditEvent]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24}  {:<12}  {:<16}  {:<16}  {:<12}  {:>10}  {:<14}  OUTCOME",
        "TIME", "IDENTITY", "CERT SHA-256", "CALL", "CASE", "BYTES", "CAPTURE/REQUEST"
    );
    for e in events {
        let esc = |s: &str| crate::render::escape(s).into_owned();
        let target = e
            .capture_id
            .as_deref()
            .or(e.request_id.as_deref())
            .unwrap_or("-");
        let mut target = esc(target);
        if let Some(a) = &e.artifact {
            target = format!("{target}/{}", esc(a));
        }
        let _ = writeln!(
            out,
            "{:<24}  {:<12}  {:<16}  {:<16}  {:<12}  {:>10}  {:<14}  {}",
            esc(&e.time),
            esc(&e.identity),
            e.certificate_sha256.get(..16).unwrap_or("-"),
            esc(&e.call),
            esc(e.case.as_deref().unwrap_or("-")),
            e.bytes_served,
            target,
            esc(&e.outcome)
        );
    }
    out
}
