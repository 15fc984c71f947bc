//! A tainted kernel: out-of-tree, unsigned or force-loaded modules are how
//! kernel rootkits arrive (a proprietary driver taints too, hence the
//! severity follows the flags).

use super::{Rule, Sink};
use crate::triage::evidence::Evidence;
use crate::triage::finding::{Finding, Severity, at};

pub const RULE: Rule = Rule {
    name: "kernel_taint",
    summary: "kernel is tainted (high for unsigned, out-of-tree or force-loaded modules)",
    check,
};

/// Taint letters that a loaded module causes: forced load (F), forced
/// unload (R), out-of-tree (O), unsigned (E).
const MODULE_LETTERS: &[char] = &['F', 'R', 'O', 'E'];

fn check(e: &Evidence, out: &mut Vec<Finding>) {
    let mut sink = Sink::new(RULE.name, out);
    for r in &e.tables.kernel {
        let Some(value) = r.rec.tainted.filter(|&t| t != 0) else {
            continue;
        };
        let letters = r.rec.taint_letters.clone().unwrap_or_default();
        let by_module = letters.contains(MODULE_LETTERS);
        let mut pointers = vec![at("kernel", r.line).path(format!("tainted={value} {letters}"))];
        pointers.extend(
            e.tables
                .kernel_modules
                .iter()
                .filter(|m| m.rec.taint.as_deref().is_some_and(|t| !t.is_empty()))
                .take(16)
                .map(|m| at("kernel_modules", m.line).path(m.rec.name.clone())),
        );
        let flags = if r.rec.taint_flags.is_empty() {
            letters.clone()
        } else {
            r.rec.taint_flags.join(", ")
        };
        sink.add(
            &format!("tainted={value}"),
            format!("kernel is tainted: {flags}"),
            if by_module { Severity::High } else { Severity::Low },
            "T1547.006",
            if by_module {
                "an unsigned, out-of-tree or force-loaded module ran in the kernel; kernel rootkits taint it so"
            } else {
                "the kernel marked itself tainted; the flags say why"
            },
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
    fn an_unsigned_module_taint_is_high_and_points_at_the_module() {
        let e = evidence(&[
            (
                "kernel",
                vec![
                    json!({"tainted": 12288, "taint_letters": "OE", "taint_flags": ["out-of-tree module", "unsigned module"]}),
                ],
            ),
            (
                "kernel_modules",
                vec![
                    json!({"name": "ext4"}),
                    json!({"name": "diamorphine", "taint": "OE"}),
                ],
            ),
        ]);
        let f = run(check, &e);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::High);
        assert_eq!(f[0].pointers[1].line, 2);
        assert_eq!(f[0].pointers[1].path.as_deref(), Some("diamorphine"));
    }

    #[test]
    fn an_untainted_kernel_is_no_finding() {
        let e = evidence(&[("kernel", vec![json!({"tainted": 0, "taint_letters": ""})])]);
        assert!(run(check, &e).is_empty());
    }
}
