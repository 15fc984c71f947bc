//! `ircap-collector request`: ask connected agents (daemon mode) to
//! capture now, with a target, budgets and a capture spec; with `--wait`,
//! print each agent's result as it finishes (and, with `--yara`, what its
//! scan matched).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use ircap_proto::request_args::{self as spec_rules, split_list};
use ircap_proto::v1::{AgentInfo, CaptureSpec, CreateRequestRequest, RequestResult, Target};

use super::agents::agent_json;
use super::{AnalystClient, AnalystError, ServerArgs, parse_duration, parse_size};
use crate::render::{escape, print_json};

/// `request`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).multiple(true).args(["host", "claimed_hostname", "instance_id", "labels", "all"])))]
pub struct RequestArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The agent whose certificate identity is NAME (never a hostname an
    /// agent claims).
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Agents that claim this hostname in their hello (any agent can claim
    /// any hostname).
    #[arg(long, value_name = "HOSTNAME")]
    claimed_hostname: Option<String>,
    /// Agents that claim this EC2 instance id.
    #[arg(long)]
    instance_id: Option<String>,
    /// Agents with this label in their config (repeatable: every label must
    /// match; labels are claimed by the agent).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Every agent.
    #[arg(long, conflicts_with_all = ["host", "claimed_hostname", "instance_id", "labels"])]
    all: bool,
    /// Wait for every agent connected now that the target matches, and
    /// print each one's result as it finishes.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "30m", value_name = "DURATION")]
    timeout: String,
    /// Byte budget of each capture (64M, 1G); over it the capture fails.
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<String>,
    /// Time budget of each capture (90s, 10m); over it the capture fails.
    #[arg(long, value_name = "DURATION")]
    max_time: Option<String>,
    /// How long agents that connect later may still receive the request.
    #[arg(long, default_value = "1h", value_name = "DURATION")]
    ttl: String,
    /// What to capture.
    #[command(flatten, next_help_heading = "Capture")]
    spec: SpecArgs,
}

/// Runs `request`: exit 0 when every targeted agent completed (or, without
/// `--wait`, when the request was created), 1 otherwise.
#[must_use]
pub fn run(args: RequestArgs) -> ExitCode {
    super::run(&args.server, async {
        let done = request(&args).await?;
        Ok(if done {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}

async fn request(args: &RequestArgs) -> Result<bool, AnalystError> {
    let timeout = parse_duration("--timeout", &args.timeout)?;
    let ttl = parse_duration("--ttl", &args.ttl)?;
    let max_bytes = args
        .max_bytes
        .as_deref()
        .map(|t| parse_size("--max-bytes", t))
        .transpose()?
        .unwrap_or(0);
    let max_time = args
        .max_time
        .as_deref()
        .map(|t| parse_duration("--max-time", t))
        .transpose()?
        .map_or(0, |d| d.as_secs().max(1));
    let labels = parse_labels(&args.labels)?;
    let spec = args.spec.to_spec()?;
    let mut client = args.server.connect()?;
    let created = client
        .create_request(CreateRequestRequest {
            target: Some(Target {
                host: args.host.clone().unwrap_or_default(),
                claimed_hostname: args.claimed_hostname.clone().unwrap_or_default(),
                instance_id: args.instance_id.clone().unwrap_or_default(),
                labels: labels.into_iter().collect(),
                all: args.all,
            }),
            spec: Some(spec),
            max_bytes,
            max_seconds: max_time,
            ttl_seconds: ttl.as_secs(),
        })
        .await?;
    let request_id = created.request_id.clone();
    print_json(&serde_json::json!({
        "request_id": request_id,
        "status": created.status,
        "approval_classes": created.approval_classes,
        "approval_expires_at": created.approval_expires_at,
        "matched": created.matched.iter().map(matched_json).collect::<Vec<_>>(),
    }));
    for a in created.matched.iter().filter(|a| {
        a.matched_by.iter().any(|m| {
            matches!(
                m.as_str(),
                "claimed hostname" | "claimed instance id" | "labels"
            )
        })
    }) {
        tracing::warn!(
            agent = %escape(&a.agent),
            hostname = %escape(&a.hostname),
            matched_by = %escape(&a.matched_by.join(", ")),
            "Matched by what the agent claims, not by its certificate identity"
        );
    }
    if created.matched.is_empty() {
        tracing::warn!(request_id = %escape(&request_id), "No connected agent matches now; agents that connect before the request expires will receive it");
    }
    if !args.wait {
        return Ok(true);
    }
    let pending_until = crate::timefmt::after(ttl);
    let mut all_complete = true;
    let finals = std::cell::RefCell::new(Vec::new());
    let mut on_final = |r: &RequestResult| {
        all_complete &= r.status == "complete";
        finals
            .borrow_mut()
            .push((r.agent.clone(), r.capture_id.clone()));
        tracing::info!(
            agent = %escape(&r.agent),
            hostname = %escape(&r.hostname),
            status = %escape(&r.status),
            capture_id = %escape(&r.capture_id),
            error = %escape(&r.error),
            "Agent finished"
        );
        print_json(&result_json(r));
    };
    if created.matched.is_empty() {
        let answered = client
            .wait_first(&request_id, timeout, &mut on_final)
            .await?;
        if args.spec.yara.is_some() {
            yara_lines(&mut client, &finals.take()).await?;
        }
        if !answered {
            print_json(&serde_json::json!({
                "request_id": request_id,
                "status": "pending",
                "pending_until": pending_until,
            }));
            tracing::error!(
                request_id = %escape(&request_id),
                "No matching agent answered before --timeout; the request stays pending until {pending_until}: an agent that connects before then still receives it"
            );
        }
        return Ok(answered && all_complete);
    }
    let expected = created.matched.iter().map(|a| a.agent.clone()).collect();
    let missing = client
        .wait(&request_id, &expected, timeout, &mut on_final)
        .await?;
    if args.spec.yara.is_some() {
        yara_lines(&mut client, &finals.take()).await?;
    }
    for agent in &missing {
        print_json(
            &serde_json::json!({ "request_id": request_id, "agent": agent, "status": "timed_out" }),
        );
        tracing::error!(agent = %escape(agent), "No result before --timeout");
    }
    Ok(all_complete && missing.is_empty())
}

/// Prints one `{"agent", "capture_id", "yara": {...}}` line per host that
/// stored a capture: matched or not, and the rules that matched.
async fn yara_lines(
    client: &mut AnalystClient,
    finals: &[(String, String)],
) -> Result<(), AnalystError> {
    for (agent, capture_id) in finals.iter().filter(|(_, id)| !id.is_empty()) {
        let s = client.yara_summary(capture_id).await?;
        tracing::info!(
            agent = %escape(agent),
            capture_id = %escape(capture_id),
            matched = s.matches > 0,
            rules = %escape(&s.rules.join(",")),
            "YARA"
        );
        print_json(&serde_json::json!({
            "agent": agent,
            "capture_id": capture_id,
            "yara": {
                "matched": s.matches > 0,
                "matches": s.matches,
                "rules": s.rules,
                "cut": s.cut,
            },
        }));
    }
    Ok(())
}

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
