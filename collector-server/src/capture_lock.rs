//! One lock per capture, so that a committed capture cannot change.
//!
//! Upload streams for one capture run concurrently with each other and
//! with its commit. Each store operation that adds bytes to a capture
//! (an append, making an artifact final, recording it as finished) holds
//! the capture's lock *shared* and first checks that the capture is not
//! committed; the commit holds it *exclusively* while it compares the
//! manifest with the finished artifacts and writes the manifest, then
//! marks the capture committed. So a stream opened before the commit and
//! still running after it is refused at its next step instead of adding
//! an artifact to a capture already presented as complete.
//!
//! The lock also serialises the read-modify-write of one capture's state
//! (opening, recording finished artifacts) without making different
//! captures wait for each other.
//!
//! Locks live in this process only. A capture id's entry is dropped when
//! no stream or commit holds it; the committed flag is then found again in
//! the stored state, which every holder reads after taking the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::{Mutex as AsyncMutex, RwLock};

/// The lock of one capture.
#[derive(Debug, Default)]
pub struct CaptureLock {
    /// `true` once this process committed the capture. Shared: adding to
    /// the capture; exclusive: committing it.
    pub committed: RwLock<bool>,
    /// Serialises read-modify-write of the capture's stored state.
    pub state: AsyncMutex<()>,
}

/// The locks of every capture some stream or commit is working on.
#[derive(Debug, Default)]
pub struct CaptureLocks {
    map: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    locks: HashMap<String, Weak<CaptureLock>>,
    /// Size at which forgotten entries are next swept (twice the live
    /// entries after the last sweep): amortised O(1) per lookup.
    sweep_at: usize,
}

impl CaptureLocks {
    /// The lock of `capture_id`, shared with every other current holder.
    pub fn get(&self, capture_id: &str) -> Arc<CaptureLock> {
        let mut table = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = table.locks.get(capture_id).and_then(Weak::upgrade) {
            return lock;
        }
        // Forget captures nobody holds any more, so the table stays about
        // as small as the set of captures in progress.
        if table.locks.len() >= table.sweep_at.max(64) {
            table.locks.retain(|_, weak| weak.strong_count() > 0);
            table.sweep_at = table.locks.len() * 2;
        }
        let lock = Arc::new(CaptureLock::default());
        table
            .locks
            .insert(capture_id.to_owned(), Arc::downgrade(&lock));
        lock
    }

    /// Captures with a live lock (for tests and metrics).
    pub fn live(&self) -> usize {
        let table = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .locks
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn holders_share_one_lock_and_unheld_locks_are_forgotten() {
        let locks = CaptureLocks::default();
        let a = locks.get("a");
        let a2 = locks.get("a");
        assert!(Arc::ptr_eq(&a, &a2));
        *a.committed.write().await = true;
        assert!(*a2.committed.read().await);
        drop((a, a2));
        assert_eq!(locks.live(), 0);
        for i in 0..200 {
            let _held = locks.get(&format!("c{i}"));
        }
        assert!(locks.map.lock().unwrap().locks.len() <= 64);
        // A fresh lock knows nothing; holders read the stored state.
        assert!(!*locks.get("a").committed.read().await);
    }
}
