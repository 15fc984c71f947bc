//! setuid/setgid files and ELF executables under `/tmp`, `/var/tmp`,
//! `/dev/shm` and `/run/user`: a setuid copy of a shell is a classic
//! persistence trick, and dropped tools land in scratch space.

use super::{Rule, Sink};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Severity, at};

pub const RULE: Rule = Rule {
    name: "tmp_files",
    summary: "setuid/setgid file or ELF executable under /tmp, /var/tmp, /dev/shm, /run/user",
    check,
};

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    for r in &e.tables.volatile_files {
        let f = &r.rec;
        if f.file_type != "file" {
            continue;
        }
        let pointer = at("volatile_files", r.line).path(f.path.clone());
        let owner = f.user.clone().unwrap_or_else(|| f.uid.to_string());
        if f.setuid || f.setgid {
            let bit = if f.setuid { "setuid" } else { "setgid" };
            sink.add(
                &format!("suid/{}", f.path),
                format!("{bit} file {} (owner {owner}, mode {})", f.path, f.mode),
                Severity::High,
                "T1548.001",
                format!("a {bit} file in scratch space runs with its owner's rights for anyone"),
                vec![pointer],
            );
        } else if f.is_elf == Some(true) {
            sink.add(
                &format!("elf/{}", f.path),
                format!("ELF executable {} (owner {owner})", f.path),
                Severity::Medium,
                "T1105",
                "compiled programs have no business in scratch space; dropped tools land there",
                vec![pointer],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::fixture::{evidence, run};
    use super::*;

    #[test]
    fn setuid_and_elf_files_are_found() {
        let e = evidence(&[(
            "volatile_files",
            vec![
                json!({"path": "/tmp/notes.txt", "file_type": "file", "is_elf": false}),
                json!({"path": "/tmp/.sh", "file_type": "file", "setuid": true, "mode": "4755", "uid": 0, "is_elf": true}),
                json!({"path": "/dev/shm/x", "file_type": "file", "is_elf": true, "uid": 1000, "user": "eve"}),
            ],
        )]);
        let f = run(check, &e);
        assert_eq!(f.len(), 2, "{f:?}");
        assert_eq!((f[0].severity, f[0].pointers[0].line), (Severity::High, 2));
        assert_eq!(
            (f[1].severity, f[1].pointers[0].line),
            (Severity::Medium, 3)
        );
    }

    #[test]
    fn plain_files_and_setuid_directories_are_not_findings() {
        let e = evidence(&[(
            "volatile_files",
            vec![
                json!({"path": "/tmp/a.log", "file_type": "file", "is_elf": false}),
                json!({"path": "/tmp/d", "file_type": "directory", "setgid": true}),
            ],
        )]);
        assert!(run(check, &e).is_empty());
    }
}
