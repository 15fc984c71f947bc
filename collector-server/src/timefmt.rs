//! RFC 3339 UTC timestamps.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, RFC 3339 UTC.
#[must_use]
pub fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "unknown-time".to_owned())
}

/// The time `d` from now, RFC 3339 UTC.
#[must_use]
pub fn after(d: std::time::Duration) -> String {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| OffsetDateTime::now_utc().checked_add(d))
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "unknown-time".to_owned())
}

/// How long ago the RFC 3339 time `at` was (zero if it is unreadable or
/// in the future).
#[must_use]
pub fn age(at: &str) -> std::time::Duration {
    OffsetDateTime::parse(at, &Rfc3339)
        .ok()
        .and_then(|t| std::time::Duration::try_from(OffsetDateTime::now_utc() - t).ok())
        .unwrap_or_default()
}
