//! Listening sockets where they should not be: owned by a login user
//! (uid 1000 and up, not nobody), or in a network namespace other than
//! the host's (pid 1's), where `ss` on the host does not show them.

use super::{Rule, Sink};
use crate::triage::evidence::{Connection, Evidence};
use crate::triage::finding::{Finding, Pointer, Severity, at};

pub const RULE: Rule = Rule {
    name: "listeners",
    summary: "listening socket owned by a login user (uid >= 1000), or in a network namespace other than the host's",
    check,
};

/// A socket's local end as text.
pub fn endpoint(c: &Connection) -> String {
    match (&c.local_address, c.local_port, &c.path) {
        (_, _, Some(path)) => path.clone(),
        (Some(a), Some(p), _) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p), _) => format!("{a}:{p}"),
        _ => "?".into(),
    }
}

fn is_listening(c: &Connection) -> bool {
    c.protocol != "unix"
        && (c.state == "LISTEN" || (c.state == "UNCONN" && c.protocol.starts_with("udp")))
}

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let host = e.host_netns();
    let mut sink = Sink::new(RULE.name, out);
    for r in &e.tables.connections {
        let c = &r.rec;
        if !is_listening(c) {
            continue;
        }
        let place = format!("{} {}", c.protocol, endpoint(c));
        let owners = if c.process_names.is_empty() {
            "no process".to_owned()
        } else {
            c.process_names.join(", ")
        };
        let mut pointers = vec![at("connections", r.line).path(place.clone())];
        pointers.extend(c.pids.iter().filter_map(|&pid| {
            e.process(pid)
                .map(|p| Pointer::pid(at("processes", p.line), pid))
        }));
        let subject = format!("{}/{place}", c.netns);
        if let Some(uid) = c.uid.filter(|&u| u >= 1000 && u != 65534) {
            let user = c.user.clone().unwrap_or_else(|| uid.to_string());
            sink.add(
                &format!("user/{subject}"),
                format!("{place} listens as user {user} ({owners})"),
                Severity::Medium,
                "T1571",
                "services listen as root or a system account; a login user's listener is often a backdoor or tunnel",
                pointers.clone(),
            );
        }
        if host.is_some_and(|h| h != c.netns) {
            sink.add(
                &format!("netns/{subject}"),
                format!("{place} listens in network namespace {} ({owners})", c.netns),
                Severity::Medium,
                "T1564",
                "a listener outside the host's network namespace is invisible to ss/netstat on the host (containers do this too)",
                pointers,
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
    fn user_and_foreign_namespace_listeners_are_found() {
        let e = evidence(&[
            (
                "processes",
                vec![
                    process(1, "init", "/sbin/init"),
                    process(90, "nc", "/usr/bin/nc"),
                ],
            ),
            (
                "connections",
                vec![
                    json!({"netns": 4026531840_u64, "protocol": "tcp", "state": "LISTEN", "local_address": "0.0.0.0",
                           "local_port": 4444, "uid": 1001, "user": "eve", "pids": [90], "process_names": ["nc"]}),
                    json!({"netns": 4026532999_u64, "protocol": "tcp6", "state": "LISTEN", "local_address": "::",
                           "local_port": 8000, "uid": 0, "pids": [], "process_names": []}),
                ],
            ),
        ]);
        let f = run(check, &e);
        assert_eq!(f.len(), 2, "{f:?}");
        assert!(f[0].title.contains("eve"));
        assert_eq!(f[0].pointers[1].pid, Some(90));
        assert_eq!(f[0].pointers[1].line, 2);
        assert!(f[1].title.contains("4026532999"));
        assert_eq!(f[1].pointers[0].path.as_deref(), Some("tcp6 [::]:8000"));
    }

    #[test]
    fn root_listeners_in_the_host_namespace_and_clients_are_not_findings() {
        let e = evidence(&[
            ("processes", vec![process(1, "init", "/sbin/init")]),
            (
                "connections",
                vec![
                    json!({"netns": 4026531840_u64, "protocol": "tcp", "state": "LISTEN", "local_port": 22, "uid": 0}),
                    json!({"netns": 4026531840_u64, "protocol": "tcp", "state": "ESTABLISHED", "local_port": 5000, "uid": 1001}),
                ],
            ),
        ]);
        assert!(run(check, &e).is_empty());
    }
}
