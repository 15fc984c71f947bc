//! Container processes with `CAP_SYS_ADMIN` (and kin): a privileged
//! container can mount the host's disks and load modules, the usual way
//! out of a container.

use super::{Rule, Sink, process_at, subject, user_processes};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Severity};

pub const RULE: Rule = Rule {
    name: "container_caps",
    summary: "process in a container (cgroup container id) holding CAP_SYS_ADMIN, CAP_SYS_MODULE or CAP_SYS_PTRACE",
    check,
};

/// The capabilities that let a container process reach the host.
pub const ESCAPE_CAPS: &[&str] = &["CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE"];

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    for p in user_processes(e) {
        let Some(id) = p.rec.container_id.as_deref() else {
            continue;
        };
        let caps: Vec<&str> = p
            .rec
            .cap_effective_names
            .iter()
            .map(String::as_str)
            .filter(|c| ESCAPE_CAPS.contains(c))
            .collect();
        if caps.is_empty() {
            continue;
        }
        let short: String = id.chars().take(12).collect();
        sink.add(
            &subject(&p.rec),
            format!(
                "pid {} ({}) in container {short} holds {}",
                p.rec.pid,
                p.rec.comm,
                caps.join(", ")
            ),
            Severity::High,
            "T1611",
            "these capabilities let a container process reach the host (mount its disks, load modules, trace host processes)",
            vec![process_at(p).path(id)],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{evidence, process, run};
    use super::*;

    #[test]
    fn a_privileged_container_process_is_found() {
        let id = "ab".repeat(32);
        let mut p = process(100, "bash", "/bin/bash");
        p["container_id"] = id.clone().into();
        p["cap_effective_names"] = serde_json::json!(["CAP_CHOWN", "CAP_SYS_ADMIN"]);
        let e = evidence(&[("processes", vec![process(1, "init", "/sbin/init"), p])]);
        let f = run(check, &e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pointers[0].line, 2);
        assert!(f[0].title.contains("CAP_SYS_ADMIN"));
    }

    #[test]
    fn host_root_and_unprivileged_containers_are_not_findings() {
        let mut host = process(2, "sshd", "/usr/sbin/sshd");
        host["cap_effective_names"] = serde_json::json!(["CAP_SYS_ADMIN"]);
        let mut c = process(3, "nginx", "/usr/sbin/nginx");
        c["container_id"] = "cd".repeat(32).into();
        c["cap_effective_names"] = serde_json::json!(["CAP_NET_BIND_SERVICE"]);
        assert!(run(check, &evidence(&[("processes", vec![host, c])])).is_empty());
    }
}
