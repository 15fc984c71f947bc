//! The shape of a capture request ([`CaptureSpec`]): artifact and profile
//! names, and the checks a request must pass before anyone acts on it.
//!
//! A remote request is a typed message, not command-line arguments: it has
//! no field that names an output, a collector, a certificate or a source
//! file, so there is nothing to deny. [`check_spec`] only checks that a
//! spec is well formed (known names, bounded lists, absolute log
//! directories without `..`); the collector runs it before a request is
//! stored and the agent again before it looks at its host's `[policy]`,
//! which alone decides what the host allows.

use crate::v1::{CaptureSpec, MemorySelector, PidList, memory_selector};

/// Every artifact a capture can hold, in capture order. `system` is always
/// captured (it carries the host identity of the manifest).
pub const ARTIFACTS: &[&str] = &[
    "connections",
    "processes",
    "memory_maps",
    "network_state",
    "users",
    "kernel",
    "volatile_files",
    "system",
    "memory_regions",
    "physical_memory",
    "logs",
    "journal",
];

/// Artifacts that are always captured.
pub const ALWAYS: &[&str] = &["system"];

/// `triage`: the quick volatile tables (about a second on a busy host).
pub const TRIAGE: &[&str] = &[
    "connections",
    "processes",
    "memory_maps",
    "network_state",
    "users",
    "kernel",
    "system",
];
/// `standard` (the default): triage plus volatile files, logs and the
/// journal table.
pub const STANDARD: &[&str] = &[
    "connections",
    "processes",
    "memory_maps",
    "network_state",
    "users",
    "kernel",
    "volatile_files",
    "system",
    "logs",
    "journal",
];
/// `full`: standard plus the bytes of suspicious memory regions (unless
/// another selector is given).
pub const FULL: &[&str] = &[
    "connections",
    "processes",
    "memory_maps",
    "network_state",
    "users",
    "kernel",
    "volatile_files",
    "system",
    "memory_regions",
    "logs",
    "journal",
];

/// The profile names.
pub const PROFILES: &[&str] = &["triage", "standard", "full"];

/// Most entries in any list of a spec (artifacts, skip, log directories,
/// pids).
pub const MAX_LIST: usize = 64;
/// Longest string in a spec.
pub const MAX_TEXT: usize = 4096;
/// Most labels on one capture (`--capture-label`).
pub const MAX_CAPTURE_LABELS: usize = 16;
/// Longest capture label key.
pub const MAX_LABEL_KEY: usize = 64;
/// Longest capture label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 256;
/// The capture label that marks a host's baseline capture
/// (`--capture-label baseline=true`), the one `diff --baseline` prefers.
pub const BASELINE_LABEL: (&str, &str) = ("baseline", "true");

/// The artifacts of `profile` (empty = `standard`), or `None` when unknown.
#[must_use]
pub fn profile_artifacts(profile: &str) -> Option<&'static [&'static str]> {
    match profile {
        "" | "standard" => Some(STANDARD),
        "triage" => Some(TRIAGE),
        "full" => Some(FULL),
        _ => None,
    }
}

/// Why a spec is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// An unknown profile.
    #[error("profile {0:?} is unknown: use triage, standard or full")]
    Profile(String),
    /// An unknown artifact name.
    #[error("{option}: {name:?} is not an artifact (known: {known})", known = ARTIFACTS.join(", "))]
    Artifact {
        /// `--artifacts` or `--skip`.
        option: &'static str,
        /// The name.
        name: String,
    },
    /// An artifact that cannot be left out.
    #[error("--skip: {0} is always captured (it holds the manifest's host identity)")]
    Always(String),
    /// A list or string over its bound.
    #[error("{0}: at most {MAX_LIST} entries of at most {MAX_TEXT} bytes")]
    TooLong(&'static str),
    /// A log directory that is not a plain absolute path.
    #[error("--logs-dir {0:?}: must be an absolute path without `.` or `..` components")]
    LogsDir(String),
    /// A memory selector without processes, or with pid 0 or below.
    #[error("--memory-regions {0:?}: use pid=N[,N...], suspicious or all")]
    Selector(String),
    /// A capture label that is not `KEY=VALUE` within bounds.
    #[error(
        "--capture-label {0:?}: expected KEY=VALUE, the key 1-{MAX_LABEL_KEY} characters of A-Z a-z 0-9 . _ - /, the value at most {MAX_LABEL_VALUE} bytes without control characters (at most {MAX_CAPTURE_LABELS} labels)"
    )]
    CaptureLabel(String),
    /// YARA rules that are too large or do not compile.
    #[error("--yara: {0}")]
    Yara(#[source] crate::yara::RulesError),
    /// A YARA budget over the agent's default (a request may only lower
    /// them).
    #[error("{0}: a request may ask for at most the agent's default ({1})")]
    YaraBudget(&'static str, String),
    /// YARA options without rules.
    #[error("--yara-dump and the --yara budgets need --yara")]
    YaraWithoutRules,
    /// A case id or reason that breaks [`check_case`] / [`check_reason`].
    #[error("{0}")]
    Case(String),
}

/// Longest case id.
pub const MAX_CASE_LEN: usize = 64;
/// Longest case reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// Checks a case id: 1-64 of `[A-Za-z0-9._-]`.
///
/// # Errors
/// A message naming the rule.
pub fn check_case(case: &str) -> Result<(), String> {
    let ok = !case.is_empty()
        && case.len() <= MAX_CASE_LEN
        && case
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "case id {:?} is not 1-{MAX_CASE_LEN} characters of [A-Za-z0-9._-]",
            clip(case)
        ))
    }
}

/// Checks a case reason: at most 1 KiB of text without control characters.
///
/// # Errors
/// A message naming the rule.
pub fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() <= MAX_REASON_LEN && !reason.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(format!(
            "the reason must be at most {MAX_REASON_LEN} bytes without control characters"
        ))
    }
}

/// Checks that `spec` is well formed.
///
/// # Errors
/// [`SpecError`] naming the first problem.
pub fn check_spec(spec: &CaptureSpec) -> Result<(), SpecError> {
    if profile_artifacts(&spec.profile).is_none() {
        return Err(SpecError::Profile(clip(&spec.profile)));
    }
    for (option, list) in [("--artifacts", &spec.artifacts), ("--skip", &spec.skip)] {
        bounded(option, list)?;
        for name in list {
            if !ARTIFACTS.contains(&name.as_str()) {
                return Err(SpecError::Artifact {
                    option,
                    name: clip(name),
                });
            }
        }
    }
    if let Some(name) = spec.skip.iter().find(|n| ALWAYS.contains(&n.as_str())) {
        return Err(SpecError::Always(name.clone()));
    }
    bounded("--logs-dir", &spec.logs_dirs)?;
    if spec.logs_since.len() > MAX_TEXT {
        return Err(SpecError::TooLong("--logs-since"));
    }
    if let Some(dir) = spec.logs_dirs.iter().find(|d| !plain_absolute(d)) {
        return Err(SpecError::LogsDir(clip(dir)));
    }
    if spec.capture_labels.len() > MAX_CAPTURE_LABELS {
        return Err(SpecError::TooLong("--capture-label"));
    }
    for (key, value) in &spec.capture_labels {
        check_capture_label(key, value)?;
    }
    check_yara(spec)?;
    if !spec.case_id.is_empty() {
        check_case(&spec.case_id).map_err(SpecError::Case)?;
    }
    if !spec.case_reason.is_empty() {
        if spec.case_id.is_empty() {
            return Err(SpecError::Case("a reason needs a case id".into()));
        }
        check_reason(&spec.case_reason).map_err(SpecError::Case)?;
    }
    for who in [&spec.requested_by, &spec.approved_by] {
        if who.len() > MAX_CASE_LEN || who.chars().any(char::is_control) {
            return Err(SpecError::TooLong("requested_by/approved_by"));
        }
    }
    if let Some(sel) = &spec.memory_regions {
        match &sel.select {
            None => return Err(SpecError::Selector(String::new())),
            Some(memory_selector::Select::Pids(list)) => {
                if list.pids.is_empty() || list.pids.len() > MAX_LIST {
                    return Err(SpecError::Selector(selector_text(sel)));
                }
                if list.pids.iter().any(|&p| p <= 0) {
                    return Err(SpecError::Selector(selector_text(sel)));
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The YARA fields: rules that compile, budgets at most the defaults.
fn check_yara(spec: &CaptureSpec) -> Result<(), SpecError> {
    use crate::yara::{DEFAULT_CPU_BUDGET, DEFAULT_MAX_BYTES, DEFAULT_REGION_MAX};
    if spec.yara_rules.is_empty() {
        if spec.yara_dump
            || spec.yara_max_bytes > 0
            || spec.yara_cpu_budget_ms > 0
            || spec.yara_region_max > 0
        {
            return Err(SpecError::YaraWithoutRules);
        }
        return Ok(());
    }
    crate::yara::compile("request", &spec.yara_rules).map_err(SpecError::Yara)?;
    if spec.yara_max_bytes > DEFAULT_MAX_BYTES {
        return Err(SpecError::YaraBudget(
            "--yara-max-bytes",
            format!("{DEFAULT_MAX_BYTES} bytes"),
        ));
    }
    if u128::from(spec.yara_cpu_budget_ms) > DEFAULT_CPU_BUDGET.as_millis() {
        return Err(SpecError::YaraBudget(
            "--yara-cpu-budget",
            format!("{}s", DEFAULT_CPU_BUDGET.as_secs()),
        ));
    }
    if spec.yara_region_max > DEFAULT_REGION_MAX {
        return Err(SpecError::YaraBudget(
            "--yara-region-max",
            format!("{DEFAULT_REGION_MAX} bytes"),
        ));
    }
    Ok(())
}

fn bounded(option: &'static str, list: &[String]) -> Result<(), SpecError> {
    if list.len() > MAX_LIST || list.iter().any(|s| s.len() > MAX_TEXT) {
        return Err(SpecError::TooLong(option));
    }
    Ok(())
}

/// At most 200 characters of hostile text, for an error message.
fn clip(text: &str) -> String {
    text.chars().take(200).collect()
}

/// An absolute path whose components are all normal names.
#[must_use]
pub fn plain_absolute(path: &str) -> bool {
    use std::path::Component;
    let p = std::path::Path::new(path);
    p.is_absolute()
        && !path.contains('\0')
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && !path.split('/').any(|part| part == "." || part == "..")
}

/// Parses `pid=N[,N...]`, `suspicious` or `all`.
///
/// # Errors
/// [`SpecError::Selector`] for anything else.
pub fn parse_memory_selector(text: &str) -> Result<MemorySelector, SpecError> {
    let select = match text.trim() {
        "suspicious" => memory_selector::Select::Suspicious(true),
        "all" => memory_selector::Select::All(true),
        other => {
            let err = || SpecError::Selector(clip(text));
            let list = other.strip_prefix("pid=").ok_or_else(err)?;
            let pids = list
                .split(',')
                .map(|p| p.trim().parse::<i32>().ok().filter(|&n| n > 0))
                .collect::<Option<Vec<i32>>>()
                .filter(|p| !p.is_empty() && p.len() <= MAX_LIST)
                .ok_or_else(err)?;
            memory_selector::Select::Pids(PidList { pids })
        }
    };
    Ok(MemorySelector {
        select: Some(select),
    })
}

/// The selector as `ircap-agent capture --memory-regions` writes it.
#[must_use]
pub fn selector_text(sel: &MemorySelector) -> String {
    match &sel.select {
        Some(memory_selector::Select::Suspicious(_)) => "suspicious".into(),
        Some(memory_selector::Select::All(_)) => "all".into(),
        Some(memory_selector::Select::Pids(list)) => format!(
            "pid={}",
            list.pids
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => String::new(),
    }
}

/// Checks one capture label: the key 1-64 characters of `A-Z a-z 0-9 . _
/// - /` (the agents' own label rule), the value at most 256 bytes with no
/// control characters (it is recorded in the manifest and shown by
/// `show` and `report`, escaped, like any host text).
///
/// # Errors
/// [`SpecError::CaptureLabel`] naming the pair.
pub fn check_capture_label(key: &str, value: &str) -> Result<(), SpecError> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    let value_ok = value.len() <= MAX_LABEL_VALUE && !value.chars().any(char::is_control);
    if key_ok && value_ok {
        Ok(())
    } else {
        Err(SpecError::CaptureLabel(clip(&format!("{key}={value}"))))
    }
}

/// Parses repeated `KEY=VALUE` capture labels (a later key wins) and
/// checks each and their number.
///
/// # Errors
/// [`SpecError`] naming the first bad pair, or too many.
pub fn parse_capture_labels(
    pairs: &[String],
) -> Result<std::collections::BTreeMap<String, String>, SpecError> {
    let mut labels = std::collections::BTreeMap::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| SpecError::CaptureLabel(clip(pair)))?;
        check_capture_label(key, value)?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    if labels.len() > MAX_CAPTURE_LABELS {
        return Err(SpecError::TooLong("--capture-label"));
    }
    Ok(labels)
}

/// Splits `a,b,c` into names (empty entries dropped).
#[must_use]
pub fn split_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn well_formed_specs_pass_and_malformed_ones_are_named() {
        assert_eq!(check_spec(&CaptureSpec::default()), Ok(()));
        let ok = CaptureSpec {
            profile: "triage".into(),
            skip: vec!["logs".into()],
            logs_dirs: vec!["/var/log/nginx".into()],
            memory_regions: Some(parse_memory_selector("pid=4,5").unwrap()),
            ..CaptureSpec::default()
        };
        assert_eq!(check_spec(&ok), Ok(()));
        let bad = [
            CaptureSpec {
                profile: "everything".into(),
                ..CaptureSpec::default()
            },
            CaptureSpec {
                artifacts: vec!["shadow".into()],
                ..CaptureSpec::default()
            },
            CaptureSpec {
                skip: vec!["system".into()],
                ..CaptureSpec::default()
            },
            CaptureSpec {
                logs_dirs: vec!["var/log".into()],
                ..CaptureSpec::default()
            },
            CaptureSpec {
                logs_dirs: vec!["/var/log/../../etc/ircap".into()],
                ..CaptureSpec::default()
            },
            CaptureSpec {
                memory_regions: Some(MemorySelector {
                    select: Some(memory_selector::Select::Pids(PidList { pids: vec![0] })),
                }),
                ..CaptureSpec::default()
            },
            CaptureSpec {
                skip: vec!["logs".into(); MAX_LIST + 1],
                ..CaptureSpec::default()
            },
            CaptureSpec {
                capture_labels: [("bad key".into(), "x".into())].into(),
                ..CaptureSpec::default()
            },
            CaptureSpec {
                capture_labels: [("note".into(), "a\nb".into())].into(),
                ..CaptureSpec::default()
            },
            CaptureSpec {
                capture_labels: (0..=MAX_CAPTURE_LABELS)
                    .map(|i| (format!("k{i}"), String::new()))
                    .collect(),
                ..CaptureSpec::default()
            },
        ];
        for spec in bad {
            assert!(check_spec(&spec).is_err(), "{spec:?}");
        }
    }

    #[test]
    fn capture_labels_are_bounded() {
        let labels =
            parse_capture_labels(&["baseline=true".into(), "ticket=IR-42".into()]).unwrap();
        assert_eq!(labels.get("baseline").map(String::as_str), Some("true"));
        let ok = CaptureSpec {
            capture_labels: labels,
            ..CaptureSpec::default()
        };
        assert_eq!(check_spec(&ok), Ok(()));
        for bad in [
            "baseline",
            "=true",
            "a b=c",
            "k=\u{1b}[31m",
            &format!("{}=v", "k".repeat(MAX_LABEL_KEY + 1)),
            &format!("k={}", "v".repeat(MAX_LABEL_VALUE + 1)),
        ] {
            assert!(parse_capture_labels(&[bad.to_owned()]).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_CAPTURE_LABELS)
            .map(|i| format!("k{i}=v"))
            .collect();
        assert!(parse_capture_labels(&many).is_err());
    }

    #[test]
    fn selectors_round_trip() {
        for text in ["suspicious", "all", "pid=1,22"] {
            assert_eq!(selector_text(&parse_memory_selector(text).unwrap()), text);
        }
        for bad in ["", "pid=", "pid=0", "pid=-3", "ALL", "pid=1,,2"] {
            assert!(parse_memory_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn profiles_name_known_artifacts() {
        for p in PROFILES {
            let list = profile_artifacts(p).unwrap();
            assert!(list.iter().all(|a| ARTIFACTS.contains(a)));
            assert!(list.contains(&"system"));
        }
    }
}
