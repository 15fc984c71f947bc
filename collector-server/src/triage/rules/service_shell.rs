//! A shell or script interpreter whose parent is a network service: the
//! shape of a web shell or an exploited daemon spawning a command. The
//! parent counts as a network service when it holds a listening TCP
//! socket or carries a well-known server name; sshd (and its session
//! processes) is left out, since spawning shells is its job.

use std::collections::HashSet;

use super::{Rule, Sink, basename, process_at, subject, user_processes};
use crate::triage::evidence::{Evidence, Process};
use crate::triage::finding::{Finding, Severity};

pub const RULE: Rule = Rule {
    name: "service_shell",
    summary: "shell or interpreter whose parent is a network service (a listener or a known server; sshd aside)",
    check,
};

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "ash", "busybox", "python",
    "python2", "python3", "perl", "ruby", "php", "node", "lua", "socat", "nc", "ncat",
];

const SERVERS: &[&str] = &[
    "nginx",
    "apache2",
    "httpd",
    "lighttpd",
    "php-fpm",
    "java",
    "tomcat",
    "mysqld",
    "mariadbd",
    "postgres",
    "redis-server",
    "memcached",
    "named",
    "vsftpd",
    "proftpd",
    "exim4",
    "postfix",
    "dovecot",
    "smbd",
    "jenkins",
    "gunicorn",
    "uwsgi",
    "node",
    "caddy",
    "haproxy",
];

/// Whether `name` (a comm or an exe basename) is one of `list`, allowing
/// versioned names such as `python3.11` and `php-fpm8.2`.
fn named(name: &str, list: &[&str]) -> bool {
    list.iter().any(|n| {
        name == *n
            || name.strip_prefix(n).is_some_and(|rest| {
                rest.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == ':')
            })
    })
}

fn program(p: &Process) -> &str {
    p.exe
        .as_deref()
        .map(|e| basename(e.trim_end_matches(" (deleted)")))
        .filter(|b| !b.is_empty())
        .unwrap_or(&p.comm)
}

fn is_sshd(p: &Process) -> bool {
    p.comm.starts_with("sshd") || program(p).starts_with("sshd")
}

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let listening: HashSet<i32> = e
        .tables
        .connections
        .iter()
        .filter(|c| c.rec.state == "LISTEN" && c.rec.protocol.starts_with("tcp"))
        .flat_map(|c| c.rec.pids.iter().copied())
        .collect();
    let mut sink = Sink::new(RULE.name, out);
    for child in user_processes(e) {
        if !named(program(&child.rec), SHELLS) && !named(&child.rec.comm, SHELLS) {
            continue;
        }
        let Some(parent) = child.rec.ppid.and_then(|pp| e.process(pp)) else {
            continue;
        };
        if parent.rec.pid <= 1 || is_sshd(&parent.rec) || named(program(&parent.rec), SHELLS) {
            continue;
        }
        let listens = listening.contains(&parent.rec.pid);
        if !listens && !named(program(&parent.rec), SERVERS) && !named(&parent.rec.comm, SERVERS) {
            continue;
        }
        sink.add(
            &subject(&child.rec),
            format!(
                "{} (pid {}) was started by network service {} (pid {})",
                child.rec.comm, child.rec.pid, parent.rec.comm, parent.rec.pid
            ),
            Severity::High,
            "T1505.003",
            if listens {
                "a process that accepts network connections spawned a shell: a web shell or an exploited service"
            } else {
                "a server program spawned a shell: a web shell or an exploited service"
            },
            vec![process_at(child), process_at(parent)],
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixture::{evidence, process, run};
    use super::*;

    fn child(pid: i32, ppid: i32, exe: &str) -> serde_json::Value {
        let mut p = process(pid, basename(exe), exe);
        p["ppid"] = ppid.into();
        p
    }

    #[test]
    fn a_shell_under_a_listening_service_is_found() {
        let e = evidence(&[
            (
                "processes",
                vec![
                    process(1, "systemd", "/sbin/init"),
                    process(50, "myapp", "/opt/app/myapp"),
                    child(51, 50, "/usr/bin/dash"),
                    process(60, "nginx", "/usr/sbin/nginx"),
                    child(61, 60, "/usr/bin/python3.11"),
                ],
            ),
            (
                "connections",
                vec![
                    json!({"protocol": "tcp", "state": "LISTEN", "local_port": 8080, "pids": [50]}),
                ],
            ),
        ]);
        let f = run(check, &e);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].pointers[0].pid, Some(51));
        assert_eq!(f[0].pointers[1].pid, Some(50));
        assert_eq!(f[1].pointers[0].line, 5);
    }

    #[test]
    fn shells_under_sshd_or_a_terminal_are_not_findings() {
        let e = evidence(&[
            (
                "processes",
                vec![
                    process(70, "sshd", "/usr/sbin/sshd"),
                    child(71, 70, "/usr/bin/bash"),
                    process(80, "tmux: server", "/usr/bin/tmux"),
                    child(81, 80, "/usr/bin/zsh"),
                ],
            ),
            (
                "connections",
                vec![json!({"protocol": "tcp", "state": "LISTEN", "local_port": 22, "pids": [70]})],
            ),
        ]);
        assert!(run(check, &e).is_empty());
    }
}
