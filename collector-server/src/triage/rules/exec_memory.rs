//! Anonymous-executable and writable+executable memory: where injected
//! code and shellcode live. The kernel's own mappings (`[vdso]`, ...) are
//! not anonymous-executable (the agent flags them `kernel_provided`); a
//! writable+executable one still is a finding.

use std::collections::BTreeMap;

use super::{Rule, Sink};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Pointer, Severity, at};

pub const RULE: Rule = Rule {
    name: "exec_memory",
    summary: "process has anonymous-executable or writable+executable memory (not the kernel's [vdso] and kin)",
    check,
};

/// Pointers listed per process; the count says how many in all.
const POINTERS: usize = 8;

#[derive(Default)]
struct PerProcess {
    comm: String,
    write_exec: usize,
    anon_exec: usize,
    pointers: Vec<Pointer>,
}

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let agent = e.manifest.agent.pid;
    let mut by_pid: BTreeMap<i32, PerProcess> = BTreeMap::new();
    for r in &e.tables.memory_maps {
        let m = &r.rec;
        let anon_exec = m.anon_exec && !m.kernel_provided;
        if !(anon_exec || m.write_exec) || u32::try_from(m.pid).is_ok_and(|p| p == agent) {
            continue;
        }
        let entry = by_pid.entry(m.pid).or_default();
        entry.comm.clone_from(&m.comm);
        entry.write_exec += usize::from(m.write_exec);
        entry.anon_exec += usize::from(anon_exec);
        if entry.pointers.len() < POINTERS {
            let place = format!(
                "{}-{} {}{}",
                m.start,
                m.end,
                m.perms,
                m.path
                    .as_deref()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default()
            );
            entry
                .pointers
                .push(at("memory_maps", r.line).pid(m.pid).path(place));
        }
    }
    let mut sink = Sink::new(RULE.name, out);
    for (pid, p) in by_pid {
        let (title, severity, mitre, why) = if p.write_exec > 0 {
            (
                format!(
                    "pid {pid} ({}) has {} writable+executable region(s)",
                    p.comm, p.write_exec
                ),
                Severity::High,
                "T1055",
                "memory both writable and executable lets code be written then run, as injected shellcode needs (JIT runtimes also do this)",
            )
        } else {
            (
                format!(
                    "pid {pid} ({}) has {} anonymous executable region(s)",
                    p.comm, p.anon_exec
                ),
                Severity::Medium,
                "T1055",
                "executable memory backed by no file holds code that is on no disk",
            )
        };
        let start = e.process(pid).and_then(|r| r.rec.start_ticks).unwrap_or(0);
        sink.add(
            &format!("pid={pid}@{start}"),
            title,
            severity,
            mitre,
            why,
            p.pointers,
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixture::{evidence, run};
    use super::*;

    fn region(
        pid: i32,
        perms: &str,
        path: Option<&str>,
        anon_exec: bool,
        kernel: bool,
    ) -> serde_json::Value {
        json!({"pid": pid, "comm": "c", "start": "7f00", "end": "7f10", "perms": perms, "path": path,
               "anonymous": path.is_none(), "kernel_provided": kernel, "anon_exec": anon_exec,
               "write_exec": perms.starts_with("rwx")})
    }

    #[test]
    fn rwx_and_anon_exec_regions_are_found_per_process() {
        let e = evidence(&[(
            "memory_maps",
            vec![
                region(5, "r-xp", Some("/usr/bin/cat"), false, false),
                region(7, "rwxp", None, true, false),
                region(7, "rwxp", None, true, false),
                region(8, "r-xp", None, true, false),
            ],
        )]);
        let f = run(check, &e);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!(f[0].severity, Severity::High);
        assert_eq!(
            f[0].pointers.iter().map(|p| p.line).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(f[0].pointers[0].pid, Some(7));
        assert_eq!(f[1].severity, Severity::Medium);
        assert_eq!(f[1].pointers[0].line, 4);
    }

    #[test]
    fn the_kernels_vdso_and_file_backed_code_are_not_findings() {
        let e = evidence(&[(
            "memory_maps",
            vec![
                region(5, "r-xp", Some("[vdso]"), false, true),
                region(5, "r-xp", Some("/usr/lib/libc.so.6"), false, false),
                region(5, "rw-p", None, false, false),
            ],
        )]);
        assert!(run(check, &e).is_empty());
    }
}
