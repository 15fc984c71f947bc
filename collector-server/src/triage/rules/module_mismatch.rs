//! A loadable module in `/proc/modules` but not `/sys/module`, or the
//! reverse: rootkits unlink themselves from one list and forget the other.
//! The agent cross-checks the two and records where each module was seen.

use super::{Rule, Sink};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Severity, at};

pub const RULE: Rule = Rule {
    name: "module_mismatch",
    summary: "kernel module in /sys/module but not /proc/modules, or the reverse (a hidden module)",
    check,
};

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    for r in &e.tables.kernel_modules {
        let m = &r.rec;
        let (only, missing) = match (m.in_proc_modules, m.in_sys_module) {
            (true, Some(false)) => ("/proc/modules", "/sys/module"),
            (false, Some(true)) => ("/sys/module", "/proc/modules"),
            _ => continue,
        };
        sink.add(
            &m.name,
            format!("module {} is in {only} but not in {missing}", m.name),
            Severity::High,
            "T1014",
            "the kernel lists every loaded module in both; one missing from a list has been hidden",
            vec![at("kernel_modules", r.line).path(m.name.clone())],
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixture::{evidence, run};
    use super::*;

    #[test]
    fn a_module_hidden_from_proc_modules_is_found() {
        let e = evidence(&[(
            "kernel_modules",
            vec![
                json!({"name": "ext4", "in_proc_modules": true, "in_sys_module": true}),
                json!({"name": "reptile", "in_proc_modules": false, "in_sys_module": true}),
            ],
        )]);
        let f = run(check, &e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].pointers[0].line, 2);
        assert!(f[0].title.contains("/sys/module but not in /proc/modules"));
    }

    #[test]
    fn a_module_hidden_from_sys_module_is_found() {
        let e = evidence(&[(
            "kernel_modules",
            vec![
                json!({"name": "ext4", "in_proc_modules": true, "in_sys_module": true}),
                json!({"name": "diamorphine", "in_proc_modules": true, "in_sys_module": false}),
            ],
        )]);
        let f = run(check, &e);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].pointers[0].line, 2);
        assert_eq!(f[0].pointers[0].path.as_deref(), Some("diamorphine"));
        assert!(
            f[0].title
                .contains("diamorphine is in /proc/modules but not in /sys/module"),
            "{}",
            f[0].title
        );
    }

    #[test]
    fn modules_in_both_lists_or_unknown_sysfs_are_not_findings() {
        let e = evidence(&[(
            "kernel_modules",
            vec![
                json!({"name": "ext4", "in_proc_modules": true, "in_sys_module": true}),
                json!({"name": "xfs", "in_proc_modules": true, "in_sys_module": null}),
            ],
        )]);
        assert!(run(check, &e).is_empty());
    }
}
