//! The one parser for what people type on either binary's command line:
//! byte sizes (`64K`, `512M`, `2G`), durations (`45s`, `30m`, `2h`, `7d`,
//! `2w`) and points in time (a duration back from now, or RFC 3339).
//!
//! Every flag that takes one of these, on the agent and on the collector,
//! goes through here, so `--since 1h` means the same thing everywhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Why a size, duration or time was refused; the message shows the value
/// and what would have been accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    /// Not a byte size.
    #[error(
        "{0:?} is not a byte size like 4096, 64K, 512M, 2G (binary units; KiB/MiB/GiB also accepted)"
    )]
    Size(String),
    /// Not a duration.
    #[error("{0:?} is not a duration like 90s, 30m, 2h, 7d, 2w (a bare number is seconds)")]
    Duration(String),
    /// Neither a duration nor a time.
    #[error(
        "{0:?} is neither a duration like 90m, 1h, 7d, 2w nor an RFC 3339 time like 2026-11-20T00:00:00Z"
    )]
    Time(String),
}

/// Splits `123abc` into `(123, "abc")`; `None` without leading digits.
fn number_and_unit(value: &str) -> Option<(u64, &str)> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    Some((digits.parse().ok()?, unit.trim()))
}

/// Parses `4096`, `64K`, `512M`, `2G`, `1T` (binary multiples; `KiB`,
/// `MB`, ... spellings accepted and also binary).
///
/// # Errors
/// [`UnitError::Size`] for anything else, or on overflow.
pub fn parse_size(value: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(value.to_owned());
    let (n, unit) = number_and_unit(value).ok_or_else(err)?;
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(err()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// Parses `45s`, `30m`, `1h`, `7d`, `2w`; a bare number is seconds.
///
/// # Errors
/// [`UnitError::Duration`] for anything else, or on overflow.
pub fn parse_duration(value: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(value.to_owned());
    let (n, unit) = number_and_unit(value).ok_or_else(err)?;
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(err()),
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(err)
}

/// Parses a point in time: an RFC 3339 time, or a duration with its unit
/// (`1h`, `7d`) meaning that long before `now`. A bare number is refused
/// here: seconds ago and a Unix time are both plausible readings.
///
/// # Errors
/// [`UnitError::Time`] for anything else.
pub fn parse_since(value: &str, now: SystemTime) -> Result<SystemTime, UnitError> {
    let err = || UnitError::Time(value.to_owned());
    let trimmed = value.trim();
    if let Ok(t) = OffsetDateTime::parse(trimmed, &Rfc3339) {
        let secs = u64::try_from(t.unix_timestamp()).map_err(|_| err())?;
        let nanos = t.nanosecond();
        return Ok(UNIX_EPOCH + Duration::new(secs, nanos));
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let back = parse_duration(trimmed).map_err(|_| err())?;
    Ok(now.checked_sub(back).unwrap_or(UNIX_EPOCH))
}

/// Like [`parse_since`], but returns the time as RFC 3339 UTC text (what
/// the collector's queries take on the wire).
///
/// # Errors
/// [`UnitError::Time`] for anything [`parse_since`] refuses.
pub fn since_rfc3339(value: &str, now: SystemTime) -> Result<String, UnitError> {
    let t = parse_since(value, now)?;
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).map_err(|_| UnitError::Time(value.to_owned()))?;
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| UnitError::Time(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size(" 1 T ").unwrap(), 1 << 40);
        for bad in ["", "K", "1Q", "-1", "99999999999999999999", "16777216T"] {
            assert_eq!(parse_size(bad), Err(UnitError::Size(bad.into())), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(
            parse_duration("2w").unwrap(),
            Duration::from_secs(1_209_600)
        );
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        for bad in ["", "h", "1y", "soon", "-1h", "99999999999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn times() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since("1h", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        assert_eq!(
            parse_since("1970-01-02T01:00:00+01:00", now).unwrap(),
            UNIX_EPOCH + Duration::from_secs(86_400)
        );
        assert_eq!(
            since_rfc3339("1d", now).unwrap(),
            "1970-01-11T13:46:40Z",
            "1,000,000 s minus a day"
        );
        for bad in ["", "h", "10", "10y", "yesterday", "-1h"] {
            let e = parse_since(bad, now).unwrap_err();
            assert!(e.to_string().contains("RFC 3339"), "{bad}: {e}");
        }
    }
}
