//! `ircap-collector agents`: the agents connected in daemon mode, with
//! what they claim about themselves shown as claimed.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use ircap_proto::v1::AgentInfo;

use super::ServerArgs;
use crate::render::{Table, json};

/// `agents`.
#[derive(Debug, Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// JSON Lines instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `agents`.
#[must_use]
pub fn run(args: AgentsArgs) -> ExitCode {
    super::run(&args.server, async {
        let mut client = args.server.connect()?;
        let agents = client.agents().await?;
        let mut out = std::io::stdout().lock();
        if args.json {
            for a in &agents {
                let _ = writeln!(out, "{}", json(&agent_json(a)).unwrap_or_default());
            }
        } else {
            let _ = write!(out, "{}", agents_table(&agents));
        }
        Ok(ExitCode::SUCCESS)
    })
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

/// Agents as a table (host text escaped).
#[must_use]
pub fn agents_table(agents: &[AgentInfo]) -> String {
    let mut rows = Table::new(&[
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
