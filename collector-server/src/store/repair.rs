//! Finishing commits that a crash cut short, and expiring uploads that
//! were abandoned: both look at open captures only (their open markers,
//! at most [`OPEN_SCAN_LIMIT`] per sweep), never at every state.
//!
//! A commit writes the manifest, then the index entry, then the complete
//! state, and removes the open marker last (see [`super::evidence`]). A
//! collector killed between those steps leaves a capture that is complete
//! (its verified manifest is stored) but has no index entry or whose
//! state still says open, and its marker. [`sweep`] finds such captures
//! and writes what is missing, from the stored manifest and its collector
//! receipt. An open capture without a manifest older than the upload TTL
//! is expired.

use ircap_proto::manifest::Manifest;

use std::time::Duration;

use super::{CaptureState, IndexEntry, Store, StoreError};

/// Open captures one sweep looks at (the oldest first). With the quota of
/// 16 open captures per agent per hour this covers hundreds of agents per
/// sweep; the rest wait for the next one.
pub const OPEN_SCAN_LIMIT: usize = 10_000;

/// How long an upload may stay uncommitted before it expires, unless
/// `serve` is told otherwise.
pub const DEFAULT_UPLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// What [`repair`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// Captures whose commit was finished.
    pub repaired: Vec<String>,
    /// (owner, capture id, opened at) of every capture still open.
    pub open: Vec<(String, String, String)>,
    /// (owner, capture id) of the captures expired, never committed.
    pub expired: Vec<(String, String)>,
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
        case: manifest
            .case
            .as_ref()
            .filter(|c| !c.id.is_empty())
            .map(|c| c.id.clone()),
    }
}

/// Finishes one capture's commit if it has a manifest but no index entry
/// or no complete state; returns whether it did.
///
/// # Errors
/// [`StoreError`] when the store cannot be read or written, or the stored
/// manifest is not one.
pub async fn repair_capture(store: &Store, state: &CaptureState) -> Result<bool, StoreError> {
    if state.complete {
        // The index record was written before the state said complete:
        // only the open marker and side files were left.
        store.close_open(&state.capture_id).await;
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

/// Repairs or expires every open capture (up to [`OPEN_SCAN_LIMIT`]; see
/// the module docs): a capture with a manifest has its commit finished, one
/// opened more than `ttl` ago without one expires.
///
/// # Errors
/// [`StoreError`] when the open captures cannot be listed; a capture that
/// cannot be repaired or expired is logged and skipped.
pub async fn sweep(store: &Store, ttl: Duration) -> Result<RepairReport, StoreError> {
    let mut report = RepairReport::default();
    for id in store.open_ids(OPEN_SCAN_LIMIT).await? {
        let state = match store.state(&id).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                // A marker whose state was never written: nothing to keep.
                if let Err(e) = store.expire(&id, &crate::timefmt::now()).await {
                    tracing::warn!(capture_id = id, error = %e, "Cannot remove a stale open marker");
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(capture_id = id, error = %e, "Cannot read an open capture");
                continue;
            }
        };
        match repair_capture(store, &state).await {
            Ok(true) => {
                tracing::warn!(
                    capture_id = state.capture_id,
                    "Finished a commit cut short by a crash"
                );
                report.repaired.push(state.capture_id);
            }
            Ok(false) if state.complete => {}
            Ok(false) if crate::timefmt::age(&state.opened_at) > ttl => {
                match store
                    .expire(&state.capture_id, &crate::timefmt::now())
                    .await
                {
                    Ok(true) => {
                        tracing::warn!(
                            capture_id = state.capture_id,
                            agent = state.owner,
                            opened_at = state.opened_at,
                            artifacts = state.finished.len(),
                            ttl_s = ttl.as_secs(),
                            "Expired an upload never committed: staging removed, verified artifacts kept"
                        );
                        report.expired.push((state.owner, state.capture_id));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(capture_id = state.capture_id, error = %e, "Cannot expire a capture");
                    }
                }
            }
            Ok(false) => {
                report
                    .open
                    .push((state.owner, state.capture_id, state.opened_at));
            }
            Err(e) => {
                tracing::warn!(capture_id = state.capture_id, error = %e, "Cannot repair a capture");
            }
        }
    }
    Ok(report)
}
