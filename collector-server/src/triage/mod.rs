//! Analyst triage over one capture, offline: deterministic [`rules`] that
//! turn the tables into [`Finding`]s pointing at the exact rows, a
//! [`diff`] of two captures of one host, and a self-contained HTML
//! [`report`]. Nothing here touches the network or trusts the capture:
//! every table is read bounded ([`evidence`]) and every piece of host text
//! is escaped where it is shown.

pub mod at_commit;
pub mod baseline;
pub mod cli;
pub mod diff;
pub mod evidence;
pub mod finding;
pub mod report;
pub mod rules;
pub mod run;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use evidence::{Evidence, EvidenceError};
pub use finding::{Finding, Pointer, Severity};

/// Every rule's findings over `e`, in rule order.
#[must_use]
pub fn findings(e: &Evidence) -> Vec<Finding> {
    let mut out = Vec::new();
    for rule in rules::RULES {
        (rule.check)(e, &mut out);
    }
    out
}

/// Findings per severity name (only severities that occur).
#[must_use]
pub fn counts(findings: &[Finding]) -> BTreeMap<String, u64> {
    let mut by = BTreeMap::new();
    for f in findings {
        *by.entry(f.severity.as_str().to_owned()).or_insert(0) += 1;
    }
    by
}

/// Counts as `2 high, 1 medium` (most urgent first), or `-` for none.
#[must_use]
pub fn counts_text(counts: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = Severity::ALL
        .iter()
        .filter_map(|s| {
            counts
                .get(s.as_str())
                .map(|n| format!("{n} {}", s.as_str()))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

/// Findings as JSON Lines (one finding per line).
#[must_use]
pub fn to_jsonl(findings: &[Finding]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in findings {
        if let Ok(line) = serde_json::to_vec(f) {
            out.extend(line);
            out.push(b'\n');
        }
    }
    out
}

/// Where the findings of the capture in `dir` are written: beside it, as
/// `<id>.findings.jsonl`, never inside (a file inside would make `verify`
/// fail on an unexpected file).
#[must_use]
pub fn findings_path(dir: &Path) -> PathBuf {
    // `.` or `x/..` has no name of its own: resolve it first.
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "capture".into());
    dir.with_file_name(format!("{name}.findings.jsonl"))
}

/// Writes `findings` beside the capture in `dir` (see [`findings_path`]),
/// through a temporary file renamed into place.
///
/// # Errors
/// The I/O error, with the path.
pub fn write_findings(dir: &Path, findings: &[Finding]) -> Result<PathBuf, EvidenceError> {
    let path = findings_path(dir);
    let tmp = path.with_extension("jsonl.tmp");
    let io = |source| EvidenceError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&to_jsonl(findings)).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

/// Parses findings JSON Lines, skipping lines that are not findings.
#[must_use]
pub fn parse_jsonl(bytes: &[u8]) -> Vec<Finding> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// Findings as a table (every cell escaped).
#[must_use]
pub fn table(findings: &[Finding]) -> String {
    let mut t = crate::render::Table::new(&["SEVERITY", "MITRE", "FINDING", "WHERE"]);
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for f in sorted {
        let at = f
            .pointers
            .first()
            .map(|p| format!("{}:{}", p.artifact, p.line))
            .unwrap_or_default();
        t.row([f.severity.as_str(), &f.mitre, &f.title, &at]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    #[test]
    fn findings_go_beside_the_capture_whatever_path_names_it() {
        let tmp = std::env::temp_dir().join(format!("ircap-fp-{}", std::process::id()));
        let cap = tmp.join("0190-cap");
        let _ = std::fs::create_dir_all(&cap);
        assert_eq!(
            super::findings_path(&cap),
            tmp.join("0190-cap.findings.jsonl")
        );
        assert_eq!(
            super::findings_path(&cap.join("..").join("0190-cap")),
            tmp.join("0190-cap.findings.jsonl")
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
