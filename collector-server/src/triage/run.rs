//! The triage commands' bodies (`findings`, `diff`, `report`), called by
//! the CLI with capture directories. Output goes to the caller: they
//! return what to print.

use std::path::{Path, PathBuf};

use ircap_proto::manifest::Manifest;

use super::baseline;
use super::diff::{Diff, diff};
use super::evidence::{Evidence, EvidenceError};
use super::{Finding, findings, write_findings};

/// Reads the capture in `dir`, runs every rule and writes
/// `<id>.findings.jsonl` beside it.
///
/// # Errors
/// [`EvidenceError`] when the capture cannot be read or the file written.
pub fn findings_of_dir(dir: &Path) -> Result<(Evidence, Vec<Finding>, PathBuf), EvidenceError> {
    let e = Evidence::from_dir(dir)?;
    let f = findings(&e);
    let path = write_findings(dir, &f)?;
    Ok((e, f, path))
}

/// Every capture directory beside `dir` with its manifest (only the
/// manifests are read).
fn siblings(dir: &Path) -> Vec<(PathBuf, Manifest)> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|p| {
            let m = Manifest::read(&p.join(ircap_proto::artifact_name::MANIFEST_FILE)).ok()?;
            Some((p, m))
        })
        .collect()
}

/// Why a diff could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// A capture could not be read.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// `--baseline` found nothing to compare with.
    #[error(
        "no baseline for {0}: no other capture of the same host {1} began before it (labelled baseline=true or not)"
    )]
    NoBaseline(String, &'static str),
}

/// `diff A B` of two capture directories.
///
/// # Errors
/// [`DiffError::Evidence`] when either cannot be read.
pub fn diff_dirs(a: &Path, b: &Path) -> Result<Diff, DiffError> {
    let eb = Evidence::from_dir(b)?;
    let ea = Evidence::from_dir(a)?;
    Ok(diff(&ea, &eb))
}

/// The baseline of the capture in `b` among the capture directories beside
/// it ([`baseline::beside`]).
///
/// # Errors
/// [`DiffError::Evidence`] when B's manifest cannot be read,
/// [`DiffError::NoBaseline`] when no capture qualifies.
pub fn baseline_beside(b: &Path) -> Result<(PathBuf, baseline::Rule), DiffError> {
    let mb = Manifest::read(&b.join(ircap_proto::artifact_name::MANIFEST_FILE))
        .map_err(EvidenceError::from)?;
    let candidates = siblings(b);
    baseline::beside(&mb, &candidates)
        .map(|(p, rule)| (p.clone(), rule))
        .ok_or_else(|| DiffError::NoBaseline(b.display().to_string(), "beside it"))
}

/// Writes the HTML report of the capture in `dir` to `out` (findings are
/// computed afresh and also written beside the capture).
///
/// # Errors
/// [`EvidenceError`] when the capture cannot be read or a file written.
pub fn report_of_dir(dir: &Path, out: &Path) -> Result<usize, EvidenceError> {
    let (e, f, _) = findings_of_dir(dir)?;
    let manifest = dir.join(ircap_proto::artifact_name::MANIFEST_FILE);
    let sha = std::fs::read(&manifest)
        .map(|b| ircap_proto::hashing::sha256_hex(&b))
        .unwrap_or_default();
    let page = super::report::render(&e, &f, &sha);
    std::fs::write(out, &page).map_err(|source| EvidenceError::Io {
        context: format!("writing {}", out.display()),
        source,
    })?;
    Ok(f.len())
}
