//! `ircap-agent serve` settings: the TOML file, then flags, validated into
//! [`DaemonSettings`] before anything connects (a bad path fails at once,
//! naming it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ircap_proto::client::MtlsSettings;
use serde::Deserialize;

use super::policy::{Policy, PolicyFile};
use crate::cli::ServeArgs;
use crate::protected::Protected;
use crate::timefmt;

/// Where the config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/ircap/agent.toml";
/// Default heartbeat interval.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// Default longest wait between reconnection attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Most labels an agent announces.
pub const MAX_LABELS: usize = 32;

/// The agent's config file (`/etc/ircap/agent.toml`). Every key is
/// optional here, but `collector`, `ca`, `cert` and `key` must come from the
/// file or the flags.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The collector, `https://HOST:PORT`.
    pub collector: Option<String>,
    /// CA certificate the collector's certificate must chain to (PEM).
    pub ca: Option<PathBuf>,
    /// This agent's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    pub key: Option<PathBuf>,
    /// Heartbeat interval, e.g. `30s`.
    pub heartbeat: Option<String>,
    /// Free-form labels, matched by `ircap-collector request --label k=v`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Enter network and user-space file systems (NFS, CIFS, FUSE, ...)
    /// during requested captures, as `capture --enter-remote-fs` does: for
    /// hosts whose logs or `/tmp` live on one. A read that then hangs is
    /// abandoned at its share of the deadline and the agent restarts after
    /// reporting. The host's choice; a request cannot ask for it.
    #[serde(default)]
    pub enter_remote_fs: bool,
    /// What remote capture requests may do on this host (see
    /// [`super::policy`]).
    #[serde(default)]
    pub policy: PolicyFile,
}

/// A setting that is missing or invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A required setting is absent.
    #[error("{0} is required (flag, environment or config file)")]
    Missing(&'static str),
    /// A value that cannot be used.
    #[error("{what}: {message}")]
    Invalid {
        /// Which setting.
        what: String,
        /// What is wrong.
        message: String,
    },
}

/// Validated daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonSettings {
    /// Collector URL and this agent's certificate.
    pub mtls: MtlsSettings,
    /// Labels announced in the hello.
    pub labels: BTreeMap<String, String>,
    /// How often to send a heartbeat.
    pub heartbeat: Duration,
    /// Longest wait between reconnection attempts.
    pub backoff_max: Duration,
    /// Instance metadata endpoint, or `None` when not asked.
    pub imds_endpoint: Option<String>,
    /// What remote requests may do.
    pub policy: Policy,
    /// The agent's key, certificates and config: never read by a capture.
    pub protected: Protected,
    /// Enter file systems that can block (config `enter_remote_fs`).
    pub enter_remote_fs: bool,
}

impl AgentConfig {
    /// Reads the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError::File`] naming the file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        toml::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// The file named by `--config`, or the default file when it exists.
    ///
    /// # Errors
    /// [`ConfigError::File`] when a named file (or an existing default
    /// file) cannot be read.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        match explicit {
            Some(path) => Self::from_file(path),
            None if Path::new(DEFAULT_CONFIG).exists() => {
                Self::from_file(Path::new(DEFAULT_CONFIG))
            }
            None => Ok(Self::default()),
        }
    }
}

fn check_label(key: &str, value: &str) -> Result<(), ConfigError> {
    let key_ok = !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !key_ok {
        return Err(ConfigError::Invalid {
            what: format!("label {key:?}"),
            message: "keys are 1-64 characters of A-Z a-z 0-9 . _ - /".into(),
        });
    }
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(ConfigError::Invalid {
            what: format!("label {key}"),
            message: "values are at most 256 bytes without control characters".into(),
        });
    }
    Ok(())
}

fn duration(what: &str, value: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => match timefmt::parse_duration(text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(ConfigError::Invalid {
                what: what.to_owned(),
                message: "must be more than zero".into(),
            }),
            Err(e) => Err(ConfigError::Invalid {
                what: what.to_owned(),
                message: e.to_string(),
            }),
        },
    }
}

impl DaemonSettings {
    /// Merges `file` and `args` (flags win) and validates the result: the
    /// certificates and key are read now, so a bad path fails before the
    /// first connection, naming the path.
    ///
    /// # Errors
    /// [`ConfigError`] for the first problem found.
    pub fn resolve(file: AgentConfig, args: &ServeArgs) -> Result<Self, ConfigError> {
        let config_path = args
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let policy =
            Policy::from_file(&file.policy, &config_path.display().to_string()).map_err(|e| {
                ConfigError::Invalid {
                    what: config_path.display().to_string(),
                    message: e.to_string(),
                }
            })?;
        let mtls = MtlsSettings {
            url: args
                .collector
                .clone()
                .or(file.collector)
                .ok_or(ConfigError::Missing("--collector (config `collector`)"))?,
            ca: args
                .ca
                .clone()
                .or(file.ca)
                .ok_or(ConfigError::Missing("--ca (config `ca`)"))?,
            cert: args
                .cert
                .clone()
                .or(file.cert)
                .ok_or(ConfigError::Missing("--cert (config `cert`)"))?,
            key: args
                .key
                .clone()
                .or(file.key)
                .ok_or(ConfigError::Missing("--key (config `key`)"))?,
        };
        // Reads every PEM file and checks the URL.
        mtls_channel_check(&mtls)?;
        let mut labels = file.labels;
        for pair in &args.labels {
            let (k, v) = pair.split_once('=').ok_or_else(|| ConfigError::Invalid {
                what: format!("--label {pair:?}"),
                message: "expected KEY=VALUE".into(),
            })?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        if labels.len() > MAX_LABELS {
            return Err(ConfigError::Invalid {
                what: "labels".into(),
                message: format!("at most {MAX_LABELS}"),
            });
        }
        for (k, v) in &labels {
            check_label(k, v)?;
        }
        let heartbeat = duration(
            "heartbeat",
            args.heartbeat.as_deref().or(file.heartbeat.as_deref()),
            DEFAULT_HEARTBEAT,
        )?;
        let backoff_max = duration(
            "--backoff-max",
            args.backoff_max.as_deref(),
            DEFAULT_BACKOFF_MAX,
        )?;
        let protected = Protected::of_agent(
            [&mtls.ca, &mtls.cert, &mtls.key].map(PathBuf::as_path),
            Some(&config_path),
        );
        Ok(Self {
            policy,
            protected,
            mtls,
            labels,
            heartbeat,
            backoff_max,
            imds_endpoint: (!args.no_imds).then(|| args.imds_endpoint.clone()),
            enter_remote_fs: file.enter_remote_fs,
        })
    }
}

/// Checks the files and URL the way a connection would, without
/// connecting.
fn mtls_channel_check(mtls: &MtlsSettings) -> Result<(), ConfigError> {
    ircap_proto::client::check_files(mtls).map_err(|e| ConfigError::Invalid {
        what: "collector connection".into(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_documented_file_parses_and_unknown_keys_are_refused() {
        let text = r#"
collector = "https://collector.example.internal:7443"
ca = "/etc/ircap/ca.pem"
cert = "/etc/ircap/agent.pem"
key = "/etc/ircap/agent.key"
[labels]
env = "prod"
"#;
        let cfg: AgentConfig = toml::from_str(text).unwrap();
        assert_eq!(cfg.labels.get("env").map(String::as_str), Some("prod"));
        assert!(toml::from_str::<AgentConfig>("colector = \"x\"").is_err());
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_label("env", "prod").is_ok());
        assert!(check_label("", "x").is_err());
        assert!(check_label("a b", "x").is_err());
        assert!(check_label("k", "a\nb").is_err());
    }
}
