//! A process traced by another (`TracerPid`): debuggers do it, and so do
//! injectors and credential sniffers that attach with ptrace.

use super::{Rule, Sink, process_at, subject, user_processes};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Severity};

pub const RULE: Rule = Rule {
    name: "traced",
    summary: "process is traced by another process (ptrace: TracerPid)",
    check,
};

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    for p in user_processes(e) {
        let Some(tracer) = p.rec.tracer_pid.filter(|&t| t > 0) else {
            continue;
        };
        let mut pointers = vec![process_at(p)];
        let tracer_name = match e.process(tracer) {
            Some(t) => {
                pointers.push(process_at(t));
                t.rec.comm.clone()
            }
            None => "not recorded".into(),
        };
        sink.add(
            &subject(&p.rec),
            format!(
                "pid {} ({}) is traced by pid {tracer} ({tracer_name})",
                p.rec.pid, p.rec.comm
            ),
            Severity::Medium,
            "T1055.008",
            "a tracer can read and write the process's memory and registers",
            pointers,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{evidence, process, run};
    use super::*;

    #[test]
    fn a_traced_process_points_at_itself_and_its_tracer() {
        let mut victim = process(40, "sshd", "/usr/sbin/sshd");
        victim["tracer_pid"] = 41.into();
        let e = evidence(&[(
            "processes",
            vec![victim, process(41, "sniff", "/tmp/sniff")],
        )]);
        let f = run(check, &e);
        assert_eq!(f.len(), 1);
        assert!(f[0].title.contains("sniff"), "{}", f[0].title);
        let lines: Vec<u64> = f[0].pointers.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![1, 2]);
    }

    #[test]
    fn tracer_pid_zero_is_not_traced() {
        let mut p = process(40, "sshd", "/usr/sbin/sshd");
        p["tracer_pid"] = 0.into();
        assert!(run(check, &evidence(&[("processes", vec![p])])).is_empty());
    }
}
