//! What this host lets remote capture requests do: the `[policy]` table of
//! `/etc/ircap/agent.toml`, owned by whoever administers the host, not by
//! whoever holds an analyst certificate.
//!
//! A request ([`CaptureSpec`]) is turned into capture options only through
//! [`Policy::options`]; anything the policy does not allow refuses the
//! whole request, naming the policy line, so an analyst learns what to ask
//! the host's owner for instead of getting a silently smaller capture.
//!
//! Defaults (no `[policy]` table): logs only under `/var/log` and
//! `/run/log/journal`; no physical memory; no full environment; process
//! memory only with the `suspicious` selector, at most 256 MiB in all;
//! at most 512 MiB of logs; a deadline of at most 30 minutes.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ircap_proto::request_args::{self, selector_text};
use ircap_proto::v1::{CaptureSpec, memory_selector};
use serde::Deserialize;

use crate::options::{
    CaptureOptions, DEFAULT_DEADLINE, DEFAULT_LOGS_MAX_BYTES, DEFAULT_LOGS_SINCE,
    DEFAULT_MEMORY_PROCESS_BUDGET, MemorySelector, Selection, parse_size,
};
use crate::timefmt;

/// Default `max_memory_budget`.
pub const DEFAULT_MAX_MEMORY_BUDGET: u64 = 256 << 20;
/// Default `max_deadline`.
pub const DEFAULT_MAX_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// `[policy]` as written in the file; every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Directories a request may name as log directories (and the
    /// default ones of a request that names none).
    pub log_roots: Option<Vec<PathBuf>>,
    /// Memory selectors a request may use: any of `suspicious`, `pid`,
    /// `all`.
    pub remote_memory_regions: Option<Vec<String>>,
    /// Whether a request may ask for physical memory.
    pub remote_physical_memory: Option<bool>,
    /// Whether a request may ask for every environment value.
    pub remote_full_environ: Option<bool>,
    /// Largest process memory budget a request may ask for.
    pub max_memory_budget: Option<String>,
    /// Largest physical memory budget (default: what `max_memory_budget`
    /// allows).
    pub max_physical_memory_budget: Option<String>,
    /// Largest log byte budget.
    pub max_logs_bytes: Option<String>,
    /// Longest deadline.
    pub max_deadline: Option<String>,
    /// Whether a request may carry YARA rules (default: yes; a row holds
    /// at most a 32-byte excerpt of what matched). Storing the matching
    /// regions' bytes (`yara_dump`) also needs `remote_memory_regions` to
    /// include `all`: a rule can match any region.
    pub remote_yara: Option<bool>,
}

/// The validated policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Where the policy came from (for refusals).
    pub source: String,
    log_roots: Vec<PathBuf>,
    memory_regions: Vec<String>,
    physical_memory: bool,
    full_environ: bool,
    max_memory_budget: u64,
    max_physical_memory_budget: u64,
    max_logs_bytes: u64,
    max_deadline: Duration,
    yara: bool,
}

/// A value of `[policy]` that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("[policy] {key}: {message}")]
pub struct PolicyError {
    key: &'static str,
    message: String,
}

/// Why a request was refused: the policy line and what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused by the host's policy ({file}): {asked}; {line}")]
pub struct Refusal {
    /// What the request asked for.
    pub asked: String,
    /// The policy line that forbids it, as it reads in the file.
    pub line: String,
    /// The file.
    pub file: String,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            source: "built-in default policy".into(),
            log_roots: crate::options::default_logs_dirs(),
            memory_regions: vec!["suspicious".into()],
            physical_memory: false,
            full_environ: false,
            max_memory_budget: DEFAULT_MAX_MEMORY_BUDGET,
            max_physical_memory_budget: DEFAULT_MAX_MEMORY_BUDGET,
            max_logs_bytes: DEFAULT_LOGS_MAX_BYTES,
            max_deadline: DEFAULT_MAX_DEADLINE,
            yara: true,
        }
    }
}

fn size(key: &'static str, v: Option<&String>, default: u64) -> Result<u64, PolicyError> {
    v.map_or(Ok(default), |t| {
        parse_size(t).map_err(|e| PolicyError {
            key,
            message: e.to_string(),
        })
    })
}

/// `key = value` as it reads in TOML.
fn line(key: &str, value: impl std::fmt::Debug) -> String {
    format!("[policy] {key} = {value:?}")
}

fn size_text(n: u64) -> String {
    let mut out = String::new();
    for (shift, unit) in [(30, "G"), (20, "M"), (10, "K")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            let _ = write!(out, "{}{unit}", n >> shift);
            return out;
        }
    }
    n.to_string()
}

impl Policy {
    /// Validates `file` (from `source`).
    ///
    /// # Errors
    /// [`PolicyError`] naming the key.
    pub fn from_file(file: &PolicyFile, source: &str) -> Result<Self, PolicyError> {
        let d = Self::default();
        let log_roots = match &file.log_roots {
            None => d.log_roots,
            Some(roots) => {
                if let Some(bad) = roots
                    .iter()
                    .find(|r| !request_args::plain_absolute(&r.to_string_lossy()))
                {
                    return Err(PolicyError {
                        key: "log_roots",
                        message: format!("{} is not a plain absolute path", bad.display()),
                    });
                }
                roots.clone()
            }
        };
        let memory_regions = file
            .remote_memory_regions
            .clone()
            .unwrap_or(d.memory_regions);
        if let Some(bad) = memory_regions
            .iter()
            .find(|k| !matches!(k.as_str(), "suspicious" | "pid" | "all"))
        {
            return Err(PolicyError {
                key: "remote_memory_regions",
                message: format!("{bad:?}: use suspicious, pid or all"),
            });
        }
        let max_memory_budget = size(
            "max_memory_budget",
            file.max_memory_budget.as_ref(),
            d.max_memory_budget,
        )?;
        let max_deadline = match &file.max_deadline {
            None => d.max_deadline,
            Some(t) => timefmt::parse_duration(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| PolicyError {
                    key: "max_deadline",
                    message: format!("{t:?} is not a duration like 10m"),
                })?,
        };
        Ok(Self {
            source: source.to_owned(),
            log_roots,
            memory_regions,
            physical_memory: file.remote_physical_memory.unwrap_or(d.physical_memory),
            full_environ: file.remote_full_environ.unwrap_or(d.full_environ),
            max_memory_budget,
            max_physical_memory_budget: size(
                "max_physical_memory_budget",
                file.max_physical_memory_budget.as_ref(),
                max_memory_budget,
            )?,
            max_logs_bytes: size(
                "max_logs_bytes",
                file.max_logs_bytes.as_ref(),
                d.max_logs_bytes,
            )?,
            max_deadline,
            yara: file.remote_yara.unwrap_or(d.yara),
        })
    }

    /// The longest deadline a request may have.
    #[must_use]
    pub fn max_deadline(&self) -> Duration {
        self.max_deadline
    }

    fn refuse(&self, asked: String, line: String) -> Refusal {
        Refusal {
            asked,
            line,
            file: self.source.clone(),
        }
    }

    /// Whether `dir` lies under an allowed log root (after resolving
    /// symlinks where the directory exists, so a link under `/var/log`
    /// cannot lead elsewhere).
    fn log_dir_allowed(&self, dir: &Path) -> Option<PathBuf> {
        let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        self.log_roots
            .iter()
            .any(|root| {
                let root_real = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
                dir.starts_with(root) && real.starts_with(&root_real)
            })
            .then_some(real)
    }

    /// The capture options of `spec` under this policy, starting from the
    /// agent's defaults.
    ///
    /// # Errors
    /// [`Refusal`] for a malformed spec or anything the policy forbids.
    pub fn options(&self, spec: &CaptureSpec, now: SystemTime) -> Result<CaptureOptions, Refusal> {
        let malformed = |e: String| Refusal {
            asked: e,
            line: "the request is malformed".into(),
            file: self.source.clone(),
        };
        request_args::check_spec(spec).map_err(|e| malformed(e.to_string()))?;
        let mut o = CaptureOptions::with_defaults(PathBuf::new());
        o.output = None;

        // Logs.
        if spec.logs_dirs.is_empty() {
            o.logs_dirs = self.log_roots.clone();
        } else {
            o.logs_dirs = Vec::new();
            for dir in &spec.logs_dirs {
                match self.log_dir_allowed(Path::new(dir)) {
                    Some(real) => o.logs_dirs.push(real),
                    None => {
                        return Err(self.refuse(
                            format!("--logs-dir {dir}"),
                            line("log_roots", &self.log_roots),
                        ));
                    }
                }
            }
        }
        if !spec.logs_since.is_empty() {
            o.logs_since_time = timefmt::parse_since(&spec.logs_since, now)
                .map_err(|e| malformed(format!("--logs-since: {e}")))?;
            o.logs_since.clone_from(&spec.logs_since);
        } else {
            o.logs_since = DEFAULT_LOGS_SINCE.to_owned();
        }
        o.logs_since_resolved = timefmt::rfc3339(o.logs_since_time);
        o.logs_max_bytes = self.budget(
            spec.logs_max_bytes,
            DEFAULT_LOGS_MAX_BYTES.min(self.max_logs_bytes),
            self.max_logs_bytes,
            "--logs-max-bytes",
            "max_logs_bytes",
        )?;

        // Environment.
        if spec.full_environ && !self.full_environ {
            return Err(self.refuse(
                "--full-environ".into(),
                line("remote_full_environ", self.full_environ),
            ));
        }
        o.full_environ = spec.full_environ;

        // Process memory.
        o.memory_regions = match spec.memory_regions.as_ref().and_then(|s| s.select.clone()) {
            None => None,
            Some(select) => {
                let (kind, selector) = match select {
                    memory_selector::Select::Suspicious(_) => {
                        ("suspicious", MemorySelector::Suspicious)
                    }
                    memory_selector::Select::All(_) => ("all", MemorySelector::All),
                    memory_selector::Select::Pids(list) => ("pid", MemorySelector::Pids(list.pids)),
                };
                if !self.memory_regions.iter().any(|k| k == kind) {
                    let text = spec.memory_regions.as_ref().map(selector_text);
                    return Err(self.refuse(
                        format!("--memory-regions {}", text.unwrap_or_default()),
                        line("remote_memory_regions", &self.memory_regions),
                    ));
                }
                Some(selector)
            }
        };
        o.memory_budget = self.budget(
            spec.memory_budget,
            self.max_memory_budget,
            self.max_memory_budget,
            "--memory-budget",
            "max_memory_budget",
        )?;
        o.memory_process_budget = self.budget(
            spec.memory_process_budget,
            DEFAULT_MEMORY_PROCESS_BUDGET.min(o.memory_budget),
            self.max_memory_budget,
            "--memory-process-budget",
            "max_memory_budget",
        )?;

        // Physical memory.
        if spec.physical_memory && !self.physical_memory {
            return Err(self.refuse(
                "--physical-memory".into(),
                line("remote_physical_memory", self.physical_memory),
            ));
        }
        o.physical_memory = spec.physical_memory;
        o.physical_memory_budget = Some(self.budget(
            spec.physical_memory_budget,
            self.max_physical_memory_budget,
            self.max_physical_memory_budget,
            "--physical-memory-budget",
            "max_physical_memory_budget",
        )?);

        // Deadline.
        o.deadline = if spec.deadline_seconds == 0 {
            DEFAULT_DEADLINE.min(self.max_deadline)
        } else {
            let asked = Duration::from_secs(spec.deadline_seconds);
            if asked > self.max_deadline {
                return Err(self.refuse(
                    format!("--deadline {}s", spec.deadline_seconds),
                    line("max_deadline", format!("{}s", self.max_deadline.as_secs())),
                ));
            }
            asked
        };

        // Artifacts.
        let selection = Selection {
            profile: &spec.profile,
            only: &spec.artifacts,
            skip: &spec.skip,
            memory_regions: o.memory_regions.is_some(),
            physical_memory: o.physical_memory,
        };
        o.artifacts = selection.resolve().map_err(|e| malformed(e.to_string()))?;
        o.profile = if spec.profile.is_empty() {
            "standard".into()
        } else {
            spec.profile.clone()
        };
        if o.wants("memory_regions") && o.memory_regions.is_none() {
            // A profile or list that names memory regions gets the
            // selector the default policy allows.
            if !self.memory_regions.iter().any(|k| k == "suspicious") {
                return Err(self.refuse(
                    "--memory-regions suspicious".into(),
                    line("remote_memory_regions", &self.memory_regions),
                ));
            }
            o.memory_regions = Some(MemorySelector::Suspicious);
        }
        if o.wants("physical_memory") && !self.physical_memory {
            return Err(self.refuse(
                "physical_memory".into(),
                line("remote_physical_memory", self.physical_memory),
            ));
        }
        o.physical_memory = o.wants("physical_memory");
        // YARA (the rules compiled by `check_spec` above; again here for
        // the scanner).
        if !spec.yara_rules.is_empty() {
            if !self.yara {
                return Err(self.refuse("--yara".into(), line("remote_yara", self.yara)));
            }
            if spec.yara_dump && !self.memory_regions.iter().any(|k| k == "all") {
                return Err(self.refuse(
                    "--yara-dump".into(),
                    line("remote_memory_regions", &self.memory_regions),
                ));
            }
            let rules = ircap_proto::yara::compile("request", &spec.yara_rules)
                .map_err(|e| malformed(e.to_string()))?;
            let or = |asked: u64, default: u64| if asked == 0 { default } else { asked };
            o.yara = Some(crate::options::YaraOptions {
                source: "request".into(),
                rules,
                dump: spec.yara_dump,
                max_bytes: or(spec.yara_max_bytes, ircap_proto::yara::DEFAULT_MAX_BYTES),
                cpu_budget: if spec.yara_cpu_budget_ms == 0 {
                    ircap_proto::yara::DEFAULT_CPU_BUDGET
                } else {
                    Duration::from_millis(spec.yara_cpu_budget_ms)
                },
                region_max: or(spec.yara_region_max, ircap_proto::yara::DEFAULT_REGION_MAX),
                dirs: Vec::new(),
                exclude: Vec::new(),
            });
        }
        // Labels only name the capture (checked for shape by `check_spec`
        // above); they widen nothing the policy governs.
        o.labels.clone_from(&spec.capture_labels);
        o.case = ircap_proto::manifest::CaseRef::from_spec(spec);
        Ok(o)
    }

    /// A requested budget (`0`: `default`), refused over `max`.
    fn budget(
        &self,
        asked: u64,
        default: u64,
        max: u64,
        option: &str,
        key: &str,
    ) -> Result<u64, Refusal> {
        if asked == 0 {
            Ok(default)
        } else if asked > max {
            Err(self.refuse(
                format!("{option} {}", size_text(asked)),
                line(key, size_text(max)),
            ))
        } else {
            Ok(asked)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ircap_proto::request_args::parse_memory_selector;

    use super::*;

    fn spec() -> CaptureSpec {
        CaptureSpec::default()
    }

    #[test]
    fn the_default_policy_refuses_what_the_issue_names() {
        let p = Policy::default();
        let now = SystemTime::now();
        let cases = [
            (
                CaptureSpec {
                    logs_dirs: vec!["/etc/ircap".into()],
                    ..spec()
                },
                "log_roots",
            ),
            (
                CaptureSpec {
                    full_environ: true,
                    ..spec()
                },
                "remote_full_environ = false",
            ),
            (
                CaptureSpec {
                    memory_regions: Some(parse_memory_selector("all").unwrap()),
                    ..spec()
                },
                "remote_memory_regions",
            ),
            (
                CaptureSpec {
                    memory_regions: Some(parse_memory_selector("pid=1").unwrap()),
                    ..spec()
                },
                "remote_memory_regions",
            ),
            (
                CaptureSpec {
                    physical_memory: true,
                    ..spec()
                },
                "remote_physical_memory = false",
            ),
            (
                CaptureSpec {
                    memory_regions: Some(parse_memory_selector("suspicious").unwrap()),
                    memory_budget: 1 << 30,
                    ..spec()
                },
                "max_memory_budget = \"256M\"",
            ),
            (
                CaptureSpec {
                    deadline_seconds: 86_400,
                    ..spec()
                },
                "max_deadline",
            ),
            (
                CaptureSpec {
                    profile: "full".into(),
                    physical_memory: true,
                    ..spec()
                },
                "remote_physical_memory",
            ),
        ];
        for (s, named) in cases {
            let err = p.options(&s, now).unwrap_err();
            assert!(err.to_string().contains(named), "{s:?}: {err}");
            assert!(err.to_string().contains("[policy]"), "{err}");
        }
    }

    #[test]
    fn yara_rules_are_allowed_by_default_and_refused_by_remote_yara_false() {
        let now = SystemTime::now();
        let rules = "rule r { strings: $a = \"x\" condition: $a }".to_owned();
        let ask = CaptureSpec {
            yara_rules: rules.clone(),
            yara_cpu_budget_ms: 1500,
            ..spec()
        };
        let o = Policy::default().options(&ask, now).unwrap();
        let y = o.yara.unwrap();
        assert_eq!(y.source, "request");
        assert_eq!(y.cpu_budget, Duration::from_millis(1500));
        assert_eq!(y.max_bytes, ircap_proto::yara::DEFAULT_MAX_BYTES);
        assert!(y.dirs.is_empty(), "a request never names directories");
        // Dumping what matched is as wide as dumping everything.
        let dump = CaptureSpec {
            yara_dump: true,
            ..ask.clone()
        };
        let err = Policy::default().options(&dump, now).unwrap_err();
        assert!(err.to_string().contains("remote_memory_regions"), "{err}");
        let off = Policy::from_file(
            &PolicyFile {
                remote_yara: Some(false),
                ..PolicyFile::default()
            },
            "t",
        )
        .unwrap();
        let err = off.options(&ask, now).unwrap_err();
        assert!(err.to_string().contains("remote_yara = false"), "{err}");
        // A budget over the default is malformed.
        let over = CaptureSpec {
            yara_cpu_budget_ms: 61_000,
            ..ask
        };
        let err = Policy::default().options(&over, now).unwrap_err();
        assert!(err.to_string().contains("--yara-cpu-budget"), "{err}");
    }

    #[test]
    fn what_the_default_policy_allows() {
        let p = Policy::default();
        let o = p
            .options(
                &CaptureSpec {
                    memory_regions: Some(parse_memory_selector("suspicious").unwrap()),
                    logs_dirs: vec!["/var/log".into()],
                    skip: vec!["volatile_files".into()],
                    ..spec()
                },
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(o.memory_regions, Some(MemorySelector::Suspicious));
        assert_eq!(o.memory_budget, DEFAULT_MAX_MEMORY_BUDGET);
        assert!(o.memory_process_budget <= o.memory_budget);
        assert!(!o.wants("volatile_files") && o.wants("memory_regions"));
        assert!(!o.full_environ && !o.physical_memory);
        assert_eq!(o.deadline, DEFAULT_DEADLINE);
        // A request naming no log directory reads the policy's roots.
        let o = p.options(&spec(), SystemTime::now()).unwrap();
        assert_eq!(o.logs_dirs, crate::options::default_logs_dirs());
        assert!(o.labels.is_empty());
    }

    #[test]
    fn capture_labels_are_recorded_and_malformed_ones_refused() {
        let p = Policy::default();
        let o = p
            .options(
                &CaptureSpec {
                    capture_labels: [("baseline".into(), "true".into())].into(),
                    ..spec()
                },
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(o.labels.get("baseline").map(String::as_str), Some("true"));
        let json = serde_json::to_value(&o).unwrap();
        assert_eq!(json["labels"]["baseline"], "true");
        let err = p
            .options(
                &CaptureSpec {
                    capture_labels: [("bad key".into(), "\u{7}".into())].into(),
                    ..spec()
                },
                SystemTime::now(),
            )
            .unwrap_err();
        assert!(err.to_string().contains("--capture-label"), "{err}");
    }

    #[test]
    fn a_symlink_under_a_log_root_cannot_lead_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("logs");
        std::fs::create_dir(&root).unwrap();
        let secret = dir.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        std::os::unix::fs::symlink(&secret, root.join("link")).unwrap();
        std::fs::create_dir(root.join("app")).unwrap();
        let file = PolicyFile {
            log_roots: Some(vec![root.clone()]),
            ..PolicyFile::default()
        };
        let p = Policy::from_file(&file, "test.toml").unwrap();
        let ask = |d: &Path| CaptureSpec {
            logs_dirs: vec![d.display().to_string()],
            ..spec()
        };
        assert!(
            p.options(&ask(&root.join("app")), SystemTime::now())
                .is_ok()
        );
        let err = p
            .options(&ask(&root.join("link")), SystemTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("test.toml"), "{err}");
    }

    #[test]
    fn a_host_may_allow_more() {
        let file: PolicyFile = toml::from_str(
            "remote_full_environ = true\nremote_memory_regions = [\"pid\", \"all\"]\nmax_memory_budget = \"1G\"\n",
        )
        .unwrap();
        let p = Policy::from_file(&file, "x").unwrap();
        let o = p
            .options(
                &CaptureSpec {
                    full_environ: true,
                    memory_regions: Some(parse_memory_selector("pid=7").unwrap()),
                    memory_budget: 1 << 30,
                    ..spec()
                },
                SystemTime::now(),
            )
            .unwrap();
        assert!(o.full_environ);
        assert_eq!(o.memory_regions, Some(MemorySelector::Pids(vec![7])));
        assert!(toml::from_str::<PolicyFile>("allow_everything = true").is_err());
        let bad: PolicyFile = toml::from_str("remote_memory_regions = [\"any\"]").unwrap();
        assert!(Policy::from_file(&bad, "x").is_err());
    }
}
