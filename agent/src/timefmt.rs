//! Timestamps: RFC 3339 UTC everywhere, and parsing of `--logs-since`.

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

/// Why a `--logs-since` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{value:?} is neither a duration like 90m, 1h, 7d, 2w nor an RFC 3339 time like 2026-11-20T00:00:00Z"
)]
pub struct SinceError {
    value: String,
}

/// Parses a duration such as `45s`, `30m`, `1h`, `7d`, `2w`.
///
/// # Errors
/// [`SinceError`] for anything else.
pub fn parse_duration(value: &str) -> Result<Duration, SinceError> {
    let err = || SinceError {
        value: value.to_owned(),
    };
    let trimmed = value.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(err)?;
    let (digits, unit) = trimmed.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(err()),
    };
    Ok(Duration::from_secs(
        n.checked_mul(unit_secs).ok_or_else(err)?,
    ))
}

/// Parses `1h`, `30m`, `7d`, `2w`, `45s` (relative to `now`) or an RFC 3339
/// time into the absolute time it names.
///
/// # Errors
/// [`SinceError`] for anything else.
pub fn parse_since(value: &str, now: SystemTime) -> Result<SystemTime, SinceError> {
    let err = || SinceError {
        value: value.to_owned(),
    };
    let trimmed = value.trim();
    if let Ok(t) = OffsetDateTime::parse(trimmed, &Rfc3339) {
        let nanos = t.unix_timestamp_nanos();
        let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| err())?;
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let back = parse_duration(trimmed)?;
    Ok(now.checked_sub(back).unwrap_or(UNIX_EPOCH))
}

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

    #[test]
    fn parses_durations_and_times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since("1h", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        assert_eq!(
            parse_since("7d", now).unwrap(),
            now - Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            parse_since("1970-01-02T00:00:00Z", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(86_400)
        );
        assert_eq!(
            parse_since("1970-01-02T01:00:00+01:00", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(86_400)
        );
        for bad in ["", "h", "10", "10y", "yesterday", "-1h"] {
            assert!(parse_since(bad, now).is_err(), "{bad} accepted");
        }
    }
}
