//! Raw IP sockets: they see (or forge) packets below TCP/UDP, which is
//! how port-knocking backdoors wait for their magic packet. ping and DHCP
//! clients open them briefly; a long-lived one deserves a look.

use super::{Rule, Sink};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Severity, at};

pub const RULE: Rule = Rule {
    name: "raw_sockets",
    summary: "raw IP socket open (sees packets below TCP/UDP: port-knocking backdoors)",
    check,
};

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    for r in &e.tables.connections {
        let c = &r.rec;
        if !c.protocol.starts_with("raw") {
            continue;
        }
        let owners = if c.process_names.is_empty() {
            "no process".to_owned()
        } else {
            c.process_names.join(", ")
        };
        let proto = c.local_port.map_or_else(|| "?".into(), |p| p.to_string());
        let mut pointers =
            vec![at("connections", r.line).path(format!("{} protocol {proto}", c.protocol))];
        pointers.extend(
            c.pids
                .iter()
                .filter_map(|&pid| e.process(pid).map(|p| at("processes", p.line).pid(pid))),
        );
        sink.add(
            &format!("{}/{}/{proto}/{}", c.netns, c.protocol, c.pids.first().copied().unwrap_or(0)),
            format!("{} socket for IP protocol {proto} held by {owners}", c.protocol),
            Severity::Medium,
            "T1205.002",
            "a raw socket receives packets before any port filtering, as BPFDoor-style backdoors do",
            pointers,
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixture::{evidence, run};
    use super::*;

    #[test]
    fn a_raw_socket_is_found() {
        let e = evidence(&[(
            "connections",
            vec![
                json!({"protocol": "tcp", "state": "LISTEN", "local_port": 22}),
                json!({"protocol": "raw", "state": "UNCONN", "local_port": 1, "pids": [12], "process_names": ["knock"]}),
            ],
        )]);
        let f = run(check, &e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pointers[0].line, 2);
        assert!(f[0].title.contains("knock"));
    }

    #[test]
    fn tcp_udp_and_unix_sockets_are_not_raw() {
        let e = evidence(&[(
            "connections",
            vec![
                json!({"protocol": "udp", "state": "UNCONN"}),
                json!({"protocol": "unix", "state": "LISTEN", "path": "/run/x"}),
            ],
        )]);
        assert!(run(check, &e).is_empty());
    }
}
