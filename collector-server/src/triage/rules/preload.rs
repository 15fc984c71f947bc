//! `LD_PRELOAD` in a process's environment, and `/etc/ld.so.preload`:
//! both make the dynamic loader run a library inside every process it
//! starts (userland rootkits, credential stealers).

use super::{Rule, Sink, process_at, subject, user_processes};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Severity, at};

pub const RULE: Rule = Rule {
    name: "preload",
    summary: "LD_PRELOAD set in a process's environment, or a non-empty /etc/ld.so.preload",
    check,
};

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    for p in user_processes(e) {
        let Some(var) = p.rec.environ.iter().find(|v| v.name == "LD_PRELOAD") else {
            continue;
        };
        let value = var.value.as_deref().unwrap_or("(value not kept)");
        sink.add(
            &subject(&p.rec),
            format!("pid {} ({}) runs with LD_PRELOAD", p.rec.pid, p.rec.comm),
            Severity::High,
            "T1574.006",
            format!("the loader maps {value} into the process before its own libraries"),
            vec![process_at(p).path(value)],
        );
    }
    for c in &e.tables.network_config {
        let named = c.rec.path.ends_with("/ld.so.preload") || c.rec.path == "ld.so.preload";
        let content = c.rec.content.as_deref().unwrap_or("").trim();
        if named && !content.is_empty() {
            sink.add(
                "/etc/ld.so.preload",
                "/etc/ld.so.preload is not empty",
                Severity::High,
                "T1574.006",
                format!("every dynamically linked program on the host loads: {content}"),
                vec![at("network_config", c.line).path(c.rec.path.clone())],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixture::{evidence, process, run};
    use super::*;

    #[test]
    fn ld_preload_in_environment_and_preload_file_are_found() {
        let mut p = process(30, "sshd", "/usr/sbin/sshd");
        p["environ"] = json!([{"name": "PATH", "value": "/bin"}, {"name": "LD_PRELOAD", "value": "/tmp/x.so"}]);
        let e = evidence(&[
            ("processes", vec![process(1, "init", "/sbin/init"), p]),
            (
                "network_config",
                vec![
                    json!({"path": "/etc/hosts", "content": "127.0.0.1 localhost"}),
                    json!({"path": "/etc/ld.so.preload", "content": "/lib/libz.so.9\n"}),
                ],
            ),
        ]);
        let f = run(check, &e);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].pointers[0].line, 2);
        assert_eq!(f[0].pointers[0].path.as_deref(), Some("/tmp/x.so"));
        assert_eq!(f[1].pointers[0].artifact, "network_config.jsonl.gz");
        assert_eq!(f[1].pointers[0].line, 2);
    }

    #[test]
    fn no_preload_anywhere_is_no_finding() {
        let mut p = process(30, "bash", "/bin/bash");
        p["environ"] = json!([{"name": "LD_LIBRARY_PATH", "value": "/opt/lib"}]);
        let e = evidence(&[
            ("processes", vec![p]),
            (
                "network_config",
                vec![json!({"path": "/etc/ld.so.preload", "content": null, "error": "gone"})],
            ),
        ]);
        assert!(run(check, &e).is_empty());
    }
}
