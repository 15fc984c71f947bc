//! Finishing commits that a crash cut short, at start.
//!
//! A commit writes the manifest, then the index entry, then the complete
//! state (see the [`super`] contract). A collector killed between those
//! steps leaves a capture that is complete (its verified manifest is
//! stored) but has no index entry or whose state still says open. Older
//! collectors wrote the state before the index, so a complete state
//! without an index entry can exist too. Either way `list` would not show
//! a complete capture. [`repair`] finds such captures and writes what is
//! missing, from the stored manifest and its collector receipt.

use ircap_proto::manifest::Manifest;

use super::{CaptureState, IndexEntry, Store, StoreError};

/// What [`repair`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Captures whose commit was finished.
    pub repaired: Vec<String>,
    /// (owner, capture id, opened at) of every capture still open.
    pub open: Vec<(String, String, String)>,
}

/// The index entry of a committed capture, from its manifest.
#[must_use]
pub fn index_entry(manifest: &Manifest, agent: &str, committed_at: &str) -> IndexEntry {
    IndexEntry {
        capture_id: manifest.capture_id.clone(),
        agent: agent.to_owned(),
        hostname: manifest.host.hostname.clone(),
        instance_id: manifest.host.instance_id.clone(),
        started_at: manifest.started_at.clone(),
        ended_at: manifest.ended_at.clone(),
        stored_bytes: manifest.stored_bytes(),
        artifacts: u32::try_from(manifest.artifacts.len()).unwrap_or(u32::MAX),
        committed_at: committed_at.to_owned(),
        findings: std::collections::BTreeMap::new(),
    }
}

/// Finishes one capture's commit if it has a manifest but no index entry
/// or no complete state; returns whether it did.
///
/// # Errors
/// [`StoreError`] when the store cannot be read or written, or the stored
/// manifest is not one.
pub async fn repair_capture<S: Store>(store: &S, state: &CaptureState) -> Result<bool, StoreError> {
    if state.complete && store.has_index(&state.capture_id).await? {
        return Ok(false);
    }
    let Some(bytes) = store.find_manifest(state).await? else {
        return Ok(false);
    };
    let context = format!("manifest of capture {}", state.capture_id);
    let manifest = Manifest::from_slice(&bytes, &context).map_err(|e| StoreError::Corrupt {
        context: context.clone(),
        message: e.to_string(),
    })?;
    let committed_at = manifest
        .collector_receipt
        .as_ref()
        .and_then(|r| r["committed_at"].as_str())
        .unwrap_or(&state.opened_at)
        .to_owned();
    let index = index_entry(&manifest, &state.owner, &committed_at);
    // The same manifest again, then the index and the complete state.
    store.commit(state, &bytes, &index).await?;
    Ok(true)
}

/// Repairs every capture in the store (see the module docs).
///
/// # Errors
/// [`StoreError`] when the states cannot be listed; a capture that cannot
/// be repaired is logged and skipped.
pub async fn repair<S: Store>(store: &S) -> Result<RepairReport, StoreError> {
    let mut report = RepairReport::default();
    for state in store.list_states().await? {
        match repair_capture(store, &state).await {
            Ok(true) => {
                tracing::warn!(
                    capture_id = state.capture_id,
                    "Finished a commit cut short by a crash"
                );
                report.repaired.push(state.capture_id);
            }
            Ok(false) if !state.complete => {
                report
                    .open
                    .push((state.owner, state.capture_id, state.opened_at));
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(capture_id = state.capture_id, error = %e, "Cannot repair a capture");
            }
        }
    }
    Ok(report)
}
