//! Processes running a deleted executable, a memory-only one (memfd), or
//! one from a world-writable scratch directory.

use super::{Rule, Sink, process_at, subject, user_processes};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Severity};

pub const RULE: Rule = Rule {
    name: "exe_origin",
    summary: "process runs a deleted executable, a memfd (memory-only) one, or one under /tmp, /var/tmp, /dev/shm",
    check,
};

/// Scratch directories anyone can write to.
pub const SCRATCH: &[&str] = &["/tmp/", "/var/tmp/", "/dev/shm/"];

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    for p in user_processes(e) {
        let Some(exe) = p.rec.exe.as_deref() else {
            continue;
        };
        let pointer = process_at(p).path(exe);
        let who = format!("pid {} ({})", p.rec.pid, p.rec.comm);
        if exe.starts_with("/memfd:") {
            sink.add(
                &subject(&p.rec),
                format!("{who} runs from a memfd"),
                Severity::High,
                "T1620",
                "the executable exists only in memory (memfd_create + execve), a fileless-malware technique",
                vec![pointer],
            );
        } else if p.rec.exe_deleted {
            sink.add(
                &subject(&p.rec),
                format!("{who} runs a deleted executable"),
                Severity::High,
                "T1070.004",
                "the binary was unlinked after it started; its bytes survive only through /proc/PID/exe (exe_sha256 hashes them)",
                vec![pointer],
            );
        } else if SCRATCH.iter().any(|d| exe.starts_with(d)) {
            sink.add(
                &subject(&p.rec),
                format!("{who} runs from a scratch directory"),
                Severity::Medium,
                "T1105",
                "executables dropped in world-writable /tmp, /var/tmp or /dev/shm are typical of ingress tools",
                vec![pointer],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{evidence, process, run};
    use super::*;

    #[test]
    fn deleted_memfd_and_tmp_executables_are_found_with_their_rows() {
        let mut deleted = process(20, "gone", "/usr/local/bin/gone (deleted)");
        deleted["exe_deleted"] = true.into();
        let e = evidence(&[(
            "processes",
            vec![
                process(1, "systemd", "/usr/lib/systemd/systemd"),
                deleted,
                process(21, "x", "/memfd:payload (deleted)"),
                process(22, "y", "/dev/shm/.y"),
            ],
        )]);
        let f = run(check, &e);
        let got: Vec<(&str, u64, Option<i32>)> = f
            .iter()
            .map(|f| (f.mitre.as_str(), f.pointers[0].line, f.pointers[0].pid))
            .collect();
        assert_eq!(
            got,
            vec![
                ("T1070.004", 2, Some(20)),
                ("T1620", 3, Some(21)),
                ("T1105", 4, Some(22))
            ]
        );
        assert_eq!(f[1].id, "exe_origin:pid=21@121");
    }

    #[test]
    fn ordinary_executables_are_not_findings() {
        let e = evidence(&[(
            "processes",
            vec![
                process(1, "systemd", "/usr/lib/systemd/systemd"),
                process(2, "tmpfiles", "/usr/bin/tmp-helper"),
            ],
        )]);
        assert!(run(check, &e).is_empty());
    }
}
