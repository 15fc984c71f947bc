//! Timestamps: RFC 3339 UTC everywhere (parsing is `ircap_proto::units`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats a wall-clock time as RFC 3339 UTC with microseconds.
#[must_use]
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i128::from(d.as_secs()), d.subsec_nanos()),
        Err(e) => (-i128::from(e.duration().as_secs()), 0),
    };
    from_unix_nanos(secs * 1_000_000_000 + i128::from(nanos))
}

/// Formats seconds since the epoch as RFC 3339 UTC.
#[must_use]
pub fn from_unix_secs(secs: i64) -> String {
    from_unix_nanos(i128::from(secs) * 1_000_000_000)
}

/// Formats fractional seconds since the epoch as RFC 3339 UTC.
#[must_use]
pub fn from_unix_f64(secs: f64) -> String {
    // Truncation to nanoseconds is the intent.
    #[allow(clippy::cast_possible_truncation)]
    let nanos = (secs * 1e9) as i128;
    from_unix_nanos(nanos)
}

fn from_unix_nanos(nanos: i128) -> String {
    let micros = nanos - nanos.rem_euclid(1000);
    OffsetDateTime::from_unix_timestamp_nanos(micros)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("invalid-time({nanos}ns)"))
}

/// Now, RFC 3339 UTC.
#[must_use]
pub fn now() -> String {
    rfc3339(SystemTime::now())
}

pub use ircap_proto::units::{parse_duration, parse_since};

/// Serializes a duration as whole seconds (for the manifest's options).
///
/// # Errors
/// Whatever the serializer returns.
pub fn serialize_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc() {
        assert_eq!(from_unix_secs(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_micros(1_500_001)),
            "1970-01-01T00:00:01.500001Z"
        );
    }
}
