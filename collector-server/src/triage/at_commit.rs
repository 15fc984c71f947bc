//! Findings computed by the collector when it commits a capture, so that
//! `list` can show counts by severity and `show` the findings without a
//! pull. The tables are read back from the store (bounded by
//! [`MAX_TABLE_BYTES`] each), the rules run on a blocking thread, and the
//! findings are kept as the control document `findings/<id>.jsonl`.
//! Nothing here can fail a commit: a capture whose tables cannot be read
//! or triaged is committed without findings, and a warning says why.

use std::collections::BTreeMap;
use std::io::Read;

use ircap_proto::ArtifactName;
use ircap_proto::manifest::Manifest;

use super::evidence::{Evidence, TABLES, Tables, artifact};
use crate::store::{CaptureState, DocKey, Store};

/// Largest stored table read for triage at commit.
pub const MAX_TABLE_BYTES: u64 = 64 << 20;

/// Most stored bytes of all tables held at once for triage at commit.
pub const MAX_TOTAL_BYTES: u64 = 128 << 20;

/// Longest a commit waits for its triage; the findings are then left out
/// of the index (the analyst's `findings` computes them from a pull).
pub const TRIAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// One triage at a time in the whole collector: a fleet committing at
/// once, or one agent's large tables, can neither stall other commits
/// (a commit that finds the slot taken goes on without findings) nor hold
/// more than [`MAX_TOTAL_BYTES`] of tables in memory.
static SLOT: std::sync::LazyLock<std::sync::Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(tokio::sync::Semaphore::new(1)));

/// The control document holding capture `id`'s findings.
///
/// # Errors
/// When `id` cannot be part of a key (the service checked it already).
pub fn doc_key(id: &str) -> Result<DocKey, crate::store::StoreError> {
    DocKey::new(format!("findings/{id}.jsonl"))
}

/// Runs the rules over the committed-to-be capture and stores the
/// findings; returns the counts by severity (empty when triage failed).
pub async fn triage(
    store: &Store,
    state: &CaptureState,
    manifest: &Manifest,
) -> BTreeMap<String, u64> {
    let started = std::time::Instant::now();
    let Ok(slot) = std::sync::Arc::clone(&SLOT).try_acquire_owned() else {
        tracing::info!(
            capture_id = state.capture_id,
            "Triage at commit skipped: another capture is being triaged (`ircap-collector findings` computes them from a pull)"
        );
        return BTreeMap::new();
    };
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut held: u64 = 0;
    let mut problems = Vec::new();
    for table in TABLES {
        let name = artifact(table);
        let Some(entry) = manifest.artifacts.iter().find(|a| a.name == name) else {
            continue;
        };
        if entry.size_stored > MAX_TABLE_BYTES || held + entry.size_stored > MAX_TOTAL_BYTES {
            problems.push(format!(
                "{name}: {} bytes, over the triage limit",
                entry.size_stored
            ));
            continue;
        }
        held += entry.size_stored;
        let Ok(artifact_name) = ArtifactName::parse(&name) else {
            continue;
        };
        match store
            .read_range(state, &artifact_name, 0, entry.size_stored)
            .await
        {
            Ok(bytes) => {
                blobs.insert(name, bytes);
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    let manifest = manifest.clone();
    let ran = tokio::task::spawn_blocking(move || {
        // Held until the rules finish, even when the commit stopped
        // waiting for them.
        let _slot = slot;
        let tables = Tables::load(
            |name| {
                Ok(blobs
                    .remove(name)
                    .map(|b| Box::new(std::io::Cursor::new(b)) as Box<dyn Read>))
            },
            &mut problems,
        );
        let e = Evidence::new(std::path::PathBuf::new(), manifest, tables, problems);
        let found = super::findings(&e);
        (found, e.problems)
    });
    let Ok(Ok((found, problems))) = tokio::time::timeout(TRIAGE_DEADLINE, ran).await else {
        tracing::warn!(
            capture_id = state.capture_id,
            "Triage at commit failed or took longer than {TRIAGE_DEADLINE:?}; committed without findings"
        );
        return BTreeMap::new();
    };
    if !problems.is_empty() {
        tracing::warn!(
            capture_id = state.capture_id,
            problems = problems.len(),
            "Triage at commit skipped unreadable records"
        );
    }
    let stored = match doc_key(&state.capture_id) {
        Ok(key) => store.put_doc(&key, &super::to_jsonl(&found)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = stored {
        tracing::warn!(capture_id = state.capture_id, error = %e, "Findings not stored");
        return BTreeMap::new();
    }
    let counts = super::counts(&found);
    tracing::info!(
        capture_id = state.capture_id,
        findings = found.len(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "Capture triaged"
    );
    counts
}

/// The stored findings of capture `id`, if any.
pub async fn stored(store: &Store, id: &str) -> Option<Vec<u8>> {
    store.get_doc(&doc_key(id).ok()?).await.ok().flatten()
}
