//! The rules: one module each, each a function from the evidence to
//! findings. Rules are deterministic (same capture, same findings, same
//! order), read only the capture, and name the rows they relied on.

use super::evidence::{Evidence, Process, Row};
use super::finding::{Finding, Pointer, Sink, at};

pub mod container_caps;
pub mod exe_origin;
pub mod exec_memory;
pub mod kernel_taint;
pub mod listeners;
pub mod logins;
pub mod module_mismatch;
pub mod preload;
pub mod raw_sockets;
pub mod service_shell;
pub mod tmp_files;
pub mod traced;

/// One rule: its name (the prefix of its findings' ids), a line for the
/// README table, and its check.
pub struct Rule {
    /// Rule name.
    pub name: &'static str,
    /// What it looks for.
    pub summary: &'static str,
    /// The check.
    pub check: fn(&Evidence, &mut Vec<Finding>),
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every rule, in the order findings are reported.
pub const RULES: &[Rule] = &[
    exe_origin::RULE,
    exec_memory::RULE,
    preload::RULE,
    traced::RULE,
    service_shell::RULE,
    listeners::RULE,
    raw_sockets::RULE,
    kernel_taint::RULE,
    module_mismatch::RULE,
    tmp_files::RULE,
    logins::RULE,
    container_caps::RULE,
];

/// A process's stable subject for finding ids: pid and start ticks.
fn subject(p: &Process) -> String {
    format!("pid={}@{}", p.pid, p.start_ticks.unwrap_or(0))
}

/// A pointer to a process row.
fn process_at(p: &Row<Process>) -> Pointer {
    at("processes", p.line).pid(p.rec.pid)
}

/// The last path component.
fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Processes the rules look at: not kernel threads, not the agent.
fn user_processes(e: &Evidence) -> impl Iterator<Item = &Row<Process>> {
    e.tables
        .processes
        .iter()
        .filter(|p| !p.rec.kernel_thread && !p.rec.is_agent)
}

#[cfg(test)]
pub(crate) mod fixture {
    //! Captures built in memory from JSON records, read through the same
    //! loader as a real capture.

    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::io::{Read, Write};

    use super::super::evidence::{Evidence, Tables, artifact};
    use super::super::finding::Finding;

    /// A minimal manifest.
    pub fn manifest() -> ircap_proto::manifest::Manifest {
        serde_json::from_value(serde_json::json!({
            "format_version": 1, "capture_id": "0190-test", "started_at": "2026-12-01T10:00:00Z",
            "ended_at": "2026-12-01T10:00:01Z", "host": {"hostname": "web-1", "kernel_release": "6.1"},
            "agent": {"version": "0.1.0", "pid": 99, "uid": 0, "lowered_priority": true},
            "options": {}, "ssm_command_id": null, "artifacts": [], "error_count": 0, "errors": []
        }))
        .unwrap()
    }

    /// Evidence holding `tables` (name, records).
    pub fn evidence(tables: &[(&str, Vec<serde_json::Value>)]) -> Evidence {
        let mut blobs: HashMap<String, Vec<u8>> = HashMap::new();
        for (name, records) in tables {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            for r in records {
                writeln!(e, "{r}").unwrap();
            }
            blobs.insert(artifact(name), e.finish().unwrap());
        }
        let mut problems = Vec::new();
        let tables = Tables::load(
            |name| {
                Ok(blobs
                    .get(name)
                    .map(|b| Box::new(std::io::Cursor::new(b.clone())) as Box<dyn Read>))
            },
            &mut problems,
        );
        assert!(problems.is_empty(), "{problems:?}");
        Evidence::new(std::path::PathBuf::new(), manifest(), tables, problems)
    }

    /// The findings of `check` over `e`.
    pub fn run(check: fn(&Evidence, &mut Vec<Finding>), e: &Evidence) -> Vec<Finding> {
        let mut out = Vec::new();
        check(e, &mut out);
        out
    }

    /// A process record.
    pub fn process(pid: i32, comm: &str, exe: &str) -> serde_json::Value {
        serde_json::json!({"pid": pid, "ppid": 1, "comm": comm, "exe": exe, "start_ticks": 100 + pid,
                           "argv": [exe], "environ": [], "namespaces": {"net": 4026531840_u64}})
    }
}
