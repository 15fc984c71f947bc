//! The client side of `ircap-collector request` and `ircap-collector
//! agents`, over the same analyst mutual TLS as `list`, `show` and `pull`.

use std::collections::BTreeMap;

use ircap_proto::request_args::{self as spec_rules, split_list};
use ircap_proto::v1::{AgentInfo, CaptureSpec, RequestResult};

use crate::analyst::{AnalystError, parse_duration, parse_size};

/// Parses `KEY=VALUE` labels.
///
/// # Errors
/// [`AnalystError::Config`] for a pair without `=`.
pub fn parse_labels(pairs: &[String]) -> Result<BTreeMap<String, String>, AnalystError> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| AnalystError::Config(format!("--label {p:?}: expected KEY=VALUE")))
        })
        .collect()
}

/// What each targeted agent captures: typed options, sent as a
/// `CaptureSpec`. Each agent checks them against its host's `[policy]`
/// (`/etc/ircap/agent.toml`) and refuses, naming the policy line, what the
/// host does not allow.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SpecArgs {
    /// triage (sockets, processes, maps, network, logins, kernel),
    /// standard (adds volatile files, logs and the journal table; the
    /// default) or full (adds suspicious memory regions).
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Only these artifacts, comma-separated (e.g. processes,connections).
    #[arg(long, value_name = "LIST")]
    pub artifacts: Option<String>,
    /// Leave these artifacts out, comma-separated (e.g. logs,volatile_files).
    #[arg(long, value_name = "LIST")]
    pub skip: Option<String>,
    /// Oldest logs kept: a duration back from now (90m, 7d) or RFC 3339.
    #[arg(long, value_name = "WHEN")]
    pub logs_since: Option<String>,
    /// Log bytes kept at most (64M, 1G).
    #[arg(long, value_name = "BYTES")]
    pub logs_max_bytes: Option<String>,
    /// Log directory instead of the defaults (repeatable); must lie under
    /// the host policy's `log_roots`.
    #[arg(long = "logs-dir", value_name = "DIR")]
    pub logs_dirs: Vec<String>,
    /// Keep every environment value (refused unless the host allows it).
    #[arg(long)]
    pub full_environ: bool,
    /// Process memory to dump: suspicious, all or pid=N[,N...] (the
    /// default host policy allows only suspicious).
    #[arg(long, value_name = "SELECTOR")]
    pub memory_regions: Option<String>,
    /// Process memory bytes stored in all (default: the policy's maximum).
    #[arg(long, value_name = "BYTES")]
    pub memory_budget: Option<String>,
    /// Process memory bytes stored per process.
    #[arg(long, value_name = "BYTES")]
    pub memory_process_budget: Option<String>,
    /// Dump physical memory (refused unless the host allows it).
    #[arg(long)]
    pub physical_memory: bool,
    /// Physical memory bytes stored at most.
    #[arg(long, value_name = "BYTES")]
    pub physical_memory_budget: Option<String>,
    /// Abandon collection after this long (default: the agent's, 10m).
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<String>,
    /// A label `KEY=VALUE` recorded on each resulting capture, in its
    /// manifest (repeatable, at most 16). `--capture-label baseline=true`
    /// marks the host's baseline for `diff --baseline`. Not targeting:
    /// `--label` picks agents by their own labels.
    #[arg(long = "capture-label", value_name = "KEY=VALUE")]
    pub capture_labels: Vec<String>,
    /// Scan process memory and volatile files with the YARA rules of this
    /// local file (its text is sent, compiled here and by the collector
    /// first: a rule that does not compile reaches no agent).
    #[arg(long, value_name = "RULES_FILE")]
    pub yara: Option<std::path::PathBuf>,
    /// With --yara: also store the matching regions' bytes (the host
    /// policy must allow remote_memory_regions "all").
    #[arg(long, requires = "yara")]
    pub yara_dump: bool,
    /// With --yara: bytes scanned at most (default and maximum: 16G).
    #[arg(long, value_name = "BYTES", requires = "yara")]
    pub yara_max_bytes: Option<String>,
    /// With --yara: CPU time of the scan at most (default and maximum: 60s).
    #[arg(long, value_name = "DURATION", requires = "yara")]
    pub yara_cpu_budget: Option<String>,
}

impl SpecArgs {
    /// The text of the `--yara` file (empty without it), bounded.
    fn yara_rules(&self) -> Result<String, AnalystError> {
        let Some(path) = &self.yara else {
            return Ok(String::new());
        };
        let max = ircap_proto::yara::MAX_RULES_BYTES;
        let fail = |m: String| AnalystError::Config(format!("--yara {}: {m}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
        if meta.len() > max as u64 {
            return Err(fail(format!(
                "{} bytes; at most {max} bytes are accepted",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        // Compiled here too, so the message names the file.
        ircap_proto::yara::compile(&path.display().to_string(), &text)
            .map_err(|e| fail(e.to_string()))?;
        Ok(text)
    }

    /// The spec these flags ask for, checked for shape.
    ///
    /// # Errors
    /// [`AnalystError::Config`] naming the flag.
    pub fn to_spec(&self) -> Result<CaptureSpec, AnalystError> {
        let size = |option: &str, v: &Option<String>| {
            v.as_deref()
                .map(|t| parse_size(option, t))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let spec = CaptureSpec {
            profile: self.profile.clone().unwrap_or_default(),
            artifacts: self
                .artifacts
                .as_deref()
                .map(split_list)
                .unwrap_or_default(),
            skip: self.skip.as_deref().map(split_list).unwrap_or_default(),
            logs_since: self.logs_since.clone().unwrap_or_default(),
            logs_max_bytes: size("--logs-max-bytes", &self.logs_max_bytes)?,
            logs_dirs: self.logs_dirs.clone(),
            full_environ: self.full_environ,
            memory_regions: self
                .memory_regions
                .as_deref()
                .map(spec_rules::parse_memory_selector)
                .transpose()
                .map_err(|e| AnalystError::Config(e.to_string()))?,
            memory_budget: size("--memory-budget", &self.memory_budget)?,
            memory_process_budget: size("--memory-process-budget", &self.memory_process_budget)?,
            physical_memory: self.physical_memory,
            physical_memory_budget: size("--physical-memory-budget", &self.physical_memory_budget)?,
            deadline_seconds: self
                .deadline
                .as_deref()
                .map(|t| parse_duration("--deadline", t))
                .transpose()?
                .map_or(0, |d| d.as_secs().max(1)),
            capture_labels: spec_rules::parse_capture_labels(&self.capture_labels)
                .map_err(|e| AnalystError::Config(e.to_string()))?,
            yara_rules: self.yara_rules()?,
            yara_dump: self.yara_dump,
            yara_max_bytes: size("--yara-max-bytes", &self.yara_max_bytes)?,
            yara_cpu_budget_ms: self
                .yara_cpu_budget
                .as_deref()
                .map(|t| parse_duration("--yara-cpu-budget", t))
                .transpose()?
                .map_or(0, |d| {
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
                }),
            yara_region_max: 0,
            // The case travels as call metadata; the collector copies it in.
            ..CaptureSpec::default()
        };
        spec_rules::check_spec(&spec).map_err(|e| AnalystError::Config(e.to_string()))?;
        Ok(spec)
    }
}

/// One agent as a JSON object.
#[must_use]
pub fn agent_json(a: &AgentInfo) -> serde_json::Value {
    let labels: BTreeMap<&String, &String> = a.labels.iter().collect();
    serde_json::json!({
        "agent": a.agent,
        "hostname": a.hostname,
        "instance_id": (!a.instance_id.is_empty()).then_some(&a.instance_id),
        "labels": labels,
        "session_id": a.session_id,
        "replica_id": a.replica_id,
        "connected_at": a.connected_at,
        "last_seen": a.last_seen,
        "duplicate": a.duplicate,
        "busy_request_id": (!a.busy_request_id.is_empty()).then_some(&a.busy_request_id),
        "agent_version": a.agent_version,
    })
}

/// One agent a request matched, as a JSON object: [`agent_json`] plus
/// `matched_by` (what matched it: "identity", "claimed hostname",
/// "claimed instance id", "labels" or "all", joined with ", " when the
/// target gave several) and `by_claim` (whether something the agent says
/// about itself, not only its certificate, decided the match).
#[must_use]
pub fn matched_json(a: &AgentInfo) -> serde_json::Value {
    let mut v = agent_json(a);
    let by_claim = a.matched_by.iter().any(|m| {
        matches!(
            m.as_str(),
            "claimed hostname" | "claimed instance id" | "labels"
        )
    });
    if let Some(o) = v.as_object_mut() {
        o.insert("matched_by".into(), a.matched_by.join(", ").into());
        o.insert("by_claim".into(), by_claim.into());
    }
    v
}

/// One result as a JSON object.
#[must_use]
pub fn result_json(r: &RequestResult) -> serde_json::Value {
    serde_json::json!({
        "request_id": r.request_id,
        "agent": r.agent,
        "hostname": r.hostname,
        "status": r.status,
        "capture_id": (!r.capture_id.is_empty()).then_some(&r.capture_id),
        "error": (!r.error.is_empty()).then_some(&r.error),
        "bytes_stored": r.bytes_stored,
        "updated_at": r.updated_at,
    })
}

/// Agents as a table (host text escaped).
#[must_use]
pub fn agents_table(agents: &[AgentInfo]) -> String {
    let mut rows = crate::render::Table::new(&[
        "AGENT",
        "HOST (claimed)",
        "INSTANCE (claimed)",
        "LABELS",
        "LAST SEEN",
        "STATE",
    ]);
    for a in agents {
        let labels: BTreeMap<&String, &String> = a.labels.iter().collect();
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut state = if a.busy_request_id.is_empty() {
            "idle".to_owned()
        } else {
            format!("capturing {}", a.busy_request_id)
        };
        if a.duplicate {
            state.push_str(" DUPLICATE-IDENTITY");
        }
        rows.row([
            a.agent.clone(),
            a.hostname.clone(),
            if a.instance_id.is_empty() {
                "-".into()
            } else {
                a.instance_id.clone()
            },
            if labels.is_empty() {
                "-".into()
            } else {
                labels
            },
            a.last_seen.clone(),
            state,
        ]);
    }
    rows.render()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_sizes_labels() {
        assert_eq!(parse_duration("x", "90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("x", "90").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("x", "2h").unwrap(),
            Duration::from_secs(7200)
        );
        assert!(parse_duration("x", "soon").is_err());
        assert_eq!(parse_size("x", "64K").unwrap(), 65536);
        assert!(parse_size("x", "1Q").is_err());
        assert_eq!(parse_labels(&["env=prod".into()]).unwrap()["env"], "prod");
        assert!(parse_labels(&["env".into()]).is_err());
    }
}
