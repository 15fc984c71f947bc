//! Validated capture options: what the command line asked for, in a form
//! that cannot be invalid once built.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

/// Default `--logs-since`.
pub const DEFAULT_LOGS_SINCE: &str = "7d";
/// Default `--logs-max-bytes`: 512 MiB of original log bytes.
pub const DEFAULT_LOGS_MAX_BYTES: u64 = 512 << 20;
/// Largest executable hashed in full (bigger ones are recorded as skipped).
pub const DEFAULT_EXE_HASH_MAX_BYTES: u64 = 512 << 20;

/// Everything one capture needs to know.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureOptions {
    /// Where the local capture goes (`None` when sent to a collector).
    pub output: Option<PathBuf>,
    /// The collector it is sent to, if any.
    pub collector: Option<String>,
    /// Whether logs are collected at all.
    pub logs: bool,
    /// Directories whose files are log evidence.
    pub logs_dirs: Vec<PathBuf>,
    /// `--logs-since` as given.
    pub logs_since: String,
    /// The absolute time it names.
    #[serde(skip)]
    pub logs_since_time: SystemTime,
    /// `--logs-since` resolved, RFC 3339.
    pub logs_since_resolved: String,
    /// Byte budget for original log bytes.
    pub logs_max_bytes: u64,
    /// Keep every environment value, not only the allow-list.
    pub full_environ: bool,
    /// Whether the agent lowered its priority.
    pub lower_priority: bool,
    /// Whether to ask EC2's instance metadata service for identity.
    pub imds: bool,
    /// Instance metadata endpoint (host:port).
    pub imds_endpoint: String,
    /// Largest executable hashed.
    pub exe_hash_max_bytes: u64,
    /// The SSM Run Command id this capture runs under (recorded in the
    /// manifest's `ssm_command_id`, not among the options).
    #[serde(skip)]
    pub ssm_command_id: Option<String>,
}

/// `/var/log` and the volatile journal in `/run/log/journal`.
#[must_use]
pub fn default_logs_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/var/log"), PathBuf::from("/run/log/journal")]
}

impl CaptureOptions {
    /// The defaults of `ircap-agent capture --output <output>` (logs since 7
    /// days, 512 MiB of logs, allow-listed environment, lowered priority,
    /// IMDS asked).
    #[must_use]
    pub fn with_defaults(output: PathBuf) -> Self {
        let output = Some(output);
        let since = SystemTime::now()
            .checked_sub(std::time::Duration::from_secs(7 * 86_400))
            .unwrap_or(std::time::UNIX_EPOCH);
        Self {
            output,
            collector: None,
            logs: true,
            logs_dirs: default_logs_dirs(),
            logs_since: DEFAULT_LOGS_SINCE.to_owned(),
            logs_since_time: since,
            logs_since_resolved: crate::timefmt::rfc3339(since),
            logs_max_bytes: DEFAULT_LOGS_MAX_BYTES,
            full_environ: false,
            lower_priority: true,
            imds: true,
            imds_endpoint: "169.254.169.254:80".to_owned(),
            exe_hash_max_bytes: DEFAULT_EXE_HASH_MAX_BYTES,
            ssm_command_id: None,
        }
    }
}

/// Why a byte size was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a byte size like 4096, 64K, 512M, 2G (binary units; KiB/MiB/GiB also accepted)"
)]
pub struct SizeError(String);

/// Parses `4096`, `64K`, `512M`, `2G`, `1T` (binary multiples; `KiB`,
/// `MB`, ... spellings accepted and also binary).
///
/// # Errors
/// [`SizeError`] for anything else.
pub fn parse_size(value: &str) -> Result<u64, SizeError> {
    let err = || SizeError(value.to_owned());
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let n: u64 = digits.parse().map_err(|_| err())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        for bad in ["", "M", "1.5G", "-1", "1Q", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
    }
}
