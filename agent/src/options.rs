//! Validated capture options: what the command line asked for, in a form
//! that cannot be invalid once built.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::cli::CaptureArgs;

/// Default `--logs-since`.
pub const DEFAULT_LOGS_SINCE: &str = "7d";
/// Default `--logs-max-bytes`: 512 MiB of original log bytes.
pub const DEFAULT_LOGS_MAX_BYTES: u64 = 512 << 20;
/// Largest executable hashed in full (bigger ones are recorded as skipped).
pub const DEFAULT_EXE_HASH_MAX_BYTES: u64 = 512 << 20;
/// Default `--memory-budget`: process memory bytes stored per capture.
pub const DEFAULT_MEMORY_BUDGET: u64 = 2 << 30;
/// Default `--memory-process-budget`: process memory bytes stored per process.
pub const DEFAULT_MEMORY_PROCESS_BUDGET: u64 = 1 << 30;
/// Default `--deadline`: collection is abandoned after this long.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
/// Default `--yara-max-bytes`: bytes scanned at most, memory and files.
pub const DEFAULT_YARA_MAX_BYTES: u64 = ircap_proto::yara::DEFAULT_MAX_BYTES;
/// Default `--yara-cpu-budget`: CPU time of the scan's thread
/// (`ircap_proto::yara::DEFAULT_CPU_BUDGET`).
pub const DEFAULT_YARA_CPU_BUDGET: &str = "60s";
/// Default `--yara-region-max`: bytes scanned of one region or file.
pub const DEFAULT_YARA_REGION_MAX: u64 = ircap_proto::yara::DEFAULT_REGION_MAX;

/// Everything one capture needs to know.
#[derive(Debug, Clone, Serialize)]
pub struct CaptureOptions {
    /// Where the local capture goes (`None` when sent to a collector).
    pub output: Option<PathBuf>,
    /// The collector it is sent to, if any.
    pub collector: Option<String>,
    /// The artifacts captured (names of `ircap_proto::request_args::ARTIFACTS`,
    /// in capture order).
    pub artifacts: Vec<&'static str>,
    /// The profile the selection started from.
    pub profile: String,
    /// Labels recorded on the capture (`--capture-label`, or a request's
    /// `capture_labels`), e.g. `baseline = "true"`; checked by
    /// `ircap_proto::request_args::check_capture_label`.
    pub labels: BTreeMap<String, String>,
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
    /// Enter file systems that can block (FUSE, NFS, ...) instead of only
    /// listing their mount points.
    pub enter_remote_fs: bool,
    /// Whether the agent lowered its priority.
    pub lower_priority: bool,
    /// Whether to ask EC2's instance metadata service for identity.
    pub imds: bool,
    /// Instance metadata endpoint (host:port).
    pub imds_endpoint: String,
    /// Largest executable hashed.
    pub exe_hash_max_bytes: u64,
    /// Which process memory regions to dump (`None`: none).
    pub memory_regions: Option<MemorySelector>,
    /// Process memory bytes stored in all.
    pub memory_budget: u64,
    /// Process memory bytes stored per process.
    pub memory_process_budget: u64,
    /// Whether to dump physical memory (LiME).
    pub physical_memory: bool,
    /// Read physical memory from this file (an ELF core such as
    /// `/proc/kcore`) instead of the host's own source.
    pub physical_memory_source: Option<PathBuf>,
    /// Physical memory bytes stored at most (`None`: no limit).
    pub physical_memory_budget: Option<u64>,
    /// Collection is abandoned after this long (what was captured is kept
    /// and the capture is partial).
    #[serde(serialize_with = "crate::timefmt::serialize_secs")]
    pub deadline: Duration,
    /// The SSM Run Command id this capture runs under (recorded in the
    /// manifest's `ssm_command_id`, not among the options).
    #[serde(skip)]
    pub ssm_command_id: Option<String>,
    /// The case this capture is for (recorded in the manifest's `case`,
    /// not among the options).
    #[serde(skip)]
    pub case: Option<ircap_proto::manifest::CaseRef>,
    /// Files no collector reads: the agent's own key, certificates and
    /// config.
    pub protected: crate::protected::Protected,
    /// The YARA scan (`--yara`, or a request's rules), if any.
    pub yara: Option<YaraOptions>,
}

/// What a YARA scan uses: the compiled rules and its budgets (recorded in
/// the manifest's options; the rules by size, hash and names).
#[derive(Debug, Clone, Serialize)]
pub struct YaraOptions {
    /// The rules file, or `request` for rules carried by a request.
    pub source: String,
    /// The compiled rules.
    #[serde(serialize_with = "serialize_rules")]
    pub rules: ircap_proto::yara::Rules,
    /// Store the bytes of matching memory regions.
    pub dump: bool,
    /// Bytes scanned at most, memory and files together.
    pub max_bytes: u64,
    /// CPU time of the scan's thread at most.
    #[serde(serialize_with = "serialize_secs_f64")]
    pub cpu_budget: Duration,
    /// Bytes scanned at most of one region or file.
    pub region_max: u64,
    /// Directories whose regular files are scanned (the volatile ones when
    /// empty).
    pub dirs: Vec<PathBuf>,
    /// Files never scanned, by (device, inode): the rules file.
    #[serde(skip)]
    pub exclude: Vec<(u64, u64)>,
}

fn serialize_secs_f64<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn serialize_rules<S: serde::Serializer>(
    rules: &ircap_proto::yara::Rules,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde_json::json!({
        "sha256": rules.sha256,
        "bytes": rules.bytes,
        "names": rules.names,
    })
    .serialize(serializer)
}

/// Which process memory regions `--memory-regions` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemorySelector {
    /// Every region of these processes.
    Pids(Vec<i32>),
    /// Anonymous-executable, writable+executable and deleted-file-backed
    /// regions of every process.
    Suspicious,
    /// Every region of every process.
    All,
}

/// Why a `--memory-regions` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a memory selector: use pid=N[,N...], suspicious or all")]
pub struct SelectorError(String);

impl MemorySelector {
    /// Parses `pid=N[,N...]`, `suspicious` or `all`.
    ///
    /// # Errors
    /// [`SelectorError`] for anything else (including pid 0 or negative).
    pub fn parse(value: &str) -> Result<Self, SelectorError> {
        let err = || SelectorError(value.to_owned());
        match value.trim() {
            "suspicious" => Ok(Self::Suspicious),
            "all" => Ok(Self::All),
            other => {
                let list = other.strip_prefix("pid=").ok_or_else(err)?;
                let pids = list
                    .split(',')
                    .map(|p| p.trim().parse::<i32>().ok().filter(|&n| n > 0))
                    .collect::<Option<Vec<i32>>>()
                    .ok_or_else(err)?;
                if pids.is_empty() {
                    return Err(err());
                }
                Ok(Self::Pids(pids))
            }
        }
    }

    /// Whether `region` of a process is selected.
    #[must_use]
    pub fn wants(&self, region: &crate::collect::memory_maps::Region) -> bool {
        match self {
            Self::Pids(pids) => pids.contains(&region.pid),
            Self::Suspicious => region.suspicious,
            Self::All => true,
        }
    }
}

impl std::fmt::Display for MemorySelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pids(pids) => {
                f.write_str("pid=")?;
                for (i, p) in pids.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            Self::Suspicious => f.write_str("suspicious"),
            Self::All => f.write_str("all"),
        }
    }
}

impl Serialize for MemorySelector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `/var/log` and the volatile journal in `/run/log/journal`.
#[must_use]
pub fn default_logs_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from("/var/log"), PathBuf::from("/run/log/journal")]
}

impl CaptureOptions {
    /// Whether artifact `name` is captured.
    #[must_use]
    pub fn wants(&self, name: &str) -> bool {
        self.artifacts.contains(&name)
    }

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
            artifacts: ircap_proto::request_args::STANDARD.to_vec(),
            profile: "standard".to_owned(),
            labels: BTreeMap::new(),
            logs_dirs: default_logs_dirs(),
            logs_since: DEFAULT_LOGS_SINCE.to_owned(),
            logs_since_time: since,
            logs_since_resolved: crate::timefmt::rfc3339(since),
            logs_max_bytes: DEFAULT_LOGS_MAX_BYTES,
            full_environ: false,
            enter_remote_fs: false,
            lower_priority: true,
            imds: true,
            imds_endpoint: "169.254.169.254:80".to_owned(),
            exe_hash_max_bytes: DEFAULT_EXE_HASH_MAX_BYTES,
            memory_regions: None,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            memory_process_budget: DEFAULT_MEMORY_PROCESS_BUDGET,
            physical_memory: false,
            physical_memory_source: None,
            physical_memory_budget: None,
            deadline: DEFAULT_DEADLINE,
            ssm_command_id: None,
            case: None,
            protected: crate::protected::Protected::default(),
            yara: None,
        }
    }
}

/// What a capture asks to collect: a profile, an explicit list, what to
/// leave out, and the explicit asks for memory.
#[derive(Debug, Clone, Default)]
pub struct Selection<'a> {
    /// `triage`, `standard` (empty: the default) or `full`.
    pub profile: &'a str,
    /// Only these (plus `system`); empty: the profile's.
    pub only: &'a [String],
    /// Leave these out.
    pub skip: &'a [String],
    /// A memory selector was given.
    pub memory_regions: bool,
    /// Physical memory was asked for.
    pub physical_memory: bool,
}

impl Selection<'_> {
    /// The artifacts captured, in capture order.
    ///
    /// # Errors
    /// [`SpecError`](ircap_proto::request_args::SpecError) for an unknown
    /// profile or artifact name, or for leaving out `system`.
    pub fn resolve(&self) -> Result<Vec<&'static str>, ircap_proto::request_args::SpecError> {
        use ircap_proto::request_args::{ALWAYS, ARTIFACTS, SpecError, profile_artifacts};
        let base = profile_artifacts(self.profile)
            .ok_or_else(|| SpecError::Profile(self.profile.into()))?;
        for (option, list) in [("--artifacts", self.only), ("--skip", self.skip)] {
            if let Some(name) = list.iter().find(|n| !ARTIFACTS.contains(&n.as_str())) {
                return Err(SpecError::Artifact {
                    option,
                    name: name.chars().take(200).collect(),
                });
            }
        }
        if let Some(name) = self.skip.iter().find(|n| ALWAYS.contains(&n.as_str())) {
            return Err(SpecError::Always(name.clone()));
        }
        Ok(ARTIFACTS
            .iter()
            .copied()
            .filter(|a| {
                let chosen = if self.only.is_empty() {
                    base.contains(a)
                } else {
                    self.only.iter().any(|o| o == a) || ALWAYS.contains(a)
                };
                let asked = (*a == "memory_regions" && self.memory_regions)
                    || (*a == "physical_memory" && self.physical_memory);
                (chosen || asked) && !self.skip.iter().any(|s| s == a)
            })
            .collect())
    }
}

/// An option value that was refused, naming the option.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// A time or duration.
    #[error("{option}: {source}")]
    Time {
        /// The option.
        option: &'static str,
        /// Why.
        #[source]
        source: ircap_proto::units::UnitError,
    },
    /// A byte size.
    #[error("{option}: {source}")]
    Size {
        /// The option.
        option: &'static str,
        /// Why.
        #[source]
        source: ircap_proto::units::UnitError,
    },
    /// A memory region selector.
    #[error("--memory-regions: {0}")]
    Selector(#[source] SelectorError),
    /// A deadline.
    #[error("--deadline {0:?}: expected a duration like 90s, 10m, 1h (more than zero)")]
    Deadline(String),
    /// The artifact selection.
    #[error("{0}")]
    Selection(#[source] ircap_proto::request_args::SpecError),
    /// A capture label.
    #[error("{0}")]
    Label(#[source] ircap_proto::request_args::SpecError),
    /// The YARA rules file.
    #[error("--yara {path}: {message}")]
    Yara {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
}

impl CaptureOptions {
    /// Validates the capture options of `ircap-agent capture` (also used
    /// for the arguments of a request received in daemon mode).
    ///
    /// # Errors
    /// [`OptionError`] naming the first invalid option.
    pub fn from_args(args: &CaptureArgs) -> Result<Self, OptionError> {
        let now = SystemTime::now();
        let since = crate::timefmt::parse_since(&args.logs_since, now).map_err(|source| {
            OptionError::Time {
                option: "--logs-since",
                source,
            }
        })?;
        let size = |option: &'static str, value: &str| {
            parse_size(value).map_err(|source| OptionError::Size { option, source })
        };
        let only = args
            .artifacts
            .as_deref()
            .map(ircap_proto::request_args::split_list)
            .unwrap_or_default();
        let mut skip = args
            .skip
            .as_deref()
            .map(ircap_proto::request_args::split_list)
            .unwrap_or_default();
        if args.no_logs {
            skip.push("logs".to_owned());
            skip.push("journal".to_owned());
        }
        let mut memory_regions = args
            .memory_regions
            .as_deref()
            .map(MemorySelector::parse)
            .transpose()
            .map_err(OptionError::Selector)?;
        let selection = Selection {
            profile: &args.profile,
            only: &only,
            skip: &skip,
            memory_regions: memory_regions.is_some(),
            physical_memory: args.physical_memory,
        };
        let artifacts = selection.resolve().map_err(OptionError::Selection)?;
        if artifacts.contains(&"memory_regions") && memory_regions.is_none() {
            memory_regions = Some(MemorySelector::Suspicious);
        }
        let deadline = crate::timefmt::parse_duration(&args.deadline)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| OptionError::Deadline(args.deadline.clone()))?;
        Ok(Self {
            output: args.output.clone(),
            collector: args.collector.clone(),
            physical_memory: artifacts.contains(&"physical_memory"),
            artifacts,
            profile: if args.profile.is_empty() {
                "standard".to_owned()
            } else {
                args.profile.clone()
            },
            deadline,
            labels: ircap_proto::request_args::parse_capture_labels(&args.capture_labels)
                .map_err(OptionError::Label)?,
            logs_dirs: if args.logs_dirs.is_empty() {
                default_logs_dirs()
            } else {
                args.logs_dirs.clone()
            },
            logs_since: args.logs_since.clone(),
            logs_since_time: since,
            logs_since_resolved: crate::timefmt::rfc3339(since),
            logs_max_bytes: size("--logs-max-bytes", &args.logs_max_bytes)?,
            full_environ: args.full_environ,
            enter_remote_fs: args.enter_remote_fs,
            lower_priority: !args.no_lower_priority,
            imds: !args.no_imds,
            imds_endpoint: args.imds_endpoint.clone(),
            exe_hash_max_bytes: size("--exe-hash-max-bytes", &args.exe_hash_max_bytes)?,
            memory_regions,
            memory_budget: size("--memory-budget", &args.memory_budget)?,
            memory_process_budget: size("--memory-process-budget", &args.memory_process_budget)?,
            physical_memory_source: args.physical_memory_source.clone(),
            physical_memory_budget: args
                .physical_memory_budget
                .as_deref()
                .map(|v| size("--physical-memory-budget", v))
                .transpose()?,
            ssm_command_id: args.ssm_command_id.clone().filter(|id| !id.is_empty()),
            case: args.case.clone().map(|id| ircap_proto::manifest::CaseRef {
                id,
                reason: args.reason.clone(),
                ..Default::default()
            }),
            protected: crate::protected::Protected::of_agent(
                [&args.key, &args.cert, &args.ca]
                    .into_iter()
                    .flatten()
                    .map(PathBuf::as_path),
                None,
            ),
            yara: yara_options(args, &size)?,
        })
    }
}

/// The YARA options of `args` (`None` without `--yara`).
fn yara_options(
    args: &CaptureArgs,
    size: &dyn Fn(&'static str, &str) -> Result<u64, OptionError>,
) -> Result<Option<YaraOptions>, OptionError> {
    let Some(path) = &args.yara else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let fail = |message: String| OptionError::Yara {
        path: shown.clone(),
        message,
    };
    let max = ircap_proto::yara::MAX_RULES_BYTES as u64;
    let (bytes, over) =
        crate::collect::fsread::read_bounded(path, max).map_err(|e| fail(e.to_string()))?;
    if over {
        return Err(fail(format!("larger than {max} bytes")));
    }
    let text = String::from_utf8(bytes).map_err(|_| fail("not UTF-8 text".into()))?;
    let exclude = std::fs::metadata(path)
        .map(|m| {
            use std::os::unix::fs::MetadataExt as _;
            vec![(m.dev(), m.ino())]
        })
        .unwrap_or_default();
    let rules = ircap_proto::yara::compile(&shown, &text).map_err(|e| fail(e.to_string()))?;
    // Milliseconds too: a budget small enough to cut a test scan.
    let cpu_budget = match args.yara_cpu_budget.strip_suffix("ms") {
        Some(ms) => ms.parse().ok().map(Duration::from_millis),
        None => None,
    };
    let cpu_budget = match cpu_budget {
        Some(d) => d,
        None => crate::timefmt::parse_duration(&args.yara_cpu_budget).map_err(|source| {
            OptionError::Time {
                option: "--yara-cpu-budget",
                source,
            }
        })?,
    };
    Ok(Some(YaraOptions {
        source: shown.clone(),
        rules,
        dump: args.yara_dump,
        max_bytes: size("--yara-max-bytes", &args.yara_max_bytes)?,
        cpu_budget,
        region_max: size("--yara-region-max", &args.yara_region_max)?,
        dirs: args.yara_dirs.clone(),
        exclude,
    }))
}

pub use ircap_proto::units::parse_size;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_selectors() {
        assert_eq!(
            MemorySelector::parse("pid=12,7").unwrap(),
            MemorySelector::Pids(vec![12, 7])
        );
        assert_eq!(
            MemorySelector::parse("suspicious").unwrap(),
            MemorySelector::Suspicious
        );
        assert_eq!(MemorySelector::parse("all").unwrap(), MemorySelector::All);
        assert_eq!(MemorySelector::Pids(vec![3, 4]).to_string(), "pid=3,4");
        for bad in [
            "", "pid=", "pid=0", "pid=-1", "pid=1,,2", "pid=x", "1234", "ALL",
        ] {
            assert!(MemorySelector::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
