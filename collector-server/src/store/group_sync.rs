//! Group commit for the file store: writes become durable together.
//!
//! Every write the store acknowledges (an appended chunk, a temporary file
//! before its rename, a rename or link into a directory) must be on stable
//! storage first. Syncing each file and directory on its own costs one
//! journal commit per write, and concurrent uploads then queue behind each
//! other's syncs. Instead a writer finishes its writes and calls
//! [`GroupSync::durable`]: one `syncfs(2)` of the store's file system,
//! started after the call, covers every write made before it started, so
//! one sync serves every writer that arrived while the previous one ran.
//!
//! The rule that keeps acknowledgements honest: `durable` returns `Ok`
//! only when a `syncfs` that started after the caller's writes returned
//! without error, and an error in any sync since the caller arrived fails
//! it (Linux reports a writeback error to one `syncfs` only, so a later
//! success does not cover an earlier failure). `syncfs` reports writeback
//! errors since Linux 5.8.
//!
//! The cost: `syncfs` also flushes whatever else is dirty on that file
//! system, so the store belongs on a file system of its own.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::StoreError;

#[derive(Debug, Default)]
struct Generations {
    /// Syncs started so far (the number of the last one).
    started: u64,
    /// Whether one is running now.
    running: bool,
    /// Number of the last sync that failed (0: none), and why.
    last_failed: u64,
    last_error: String,
}

#[derive(Debug)]
struct Inner {
    /// Any descriptor on the store's file system (its root directory).
    fd: OwnedFd,
    gens: Mutex<Generations>,
    /// Number of the last sync finished.
    done: watch::Sender<u64>,
}

/// Shared `syncfs` of one file system (see the module docs).
#[derive(Debug, Clone)]
pub struct GroupSync {
    inner: Arc<Inner>,
    root: Arc<Path>,
}

impl GroupSync {
    /// Syncs the file system holding `root`.
    ///
    /// # Errors
    /// [`StoreError::Io`] when `root` cannot be opened.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let fd = std::fs::File::open(root)
            .map_err(|e| StoreError::io(format!("cannot open {}", root.display()), e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                fd: fd.into(),
                gens: Mutex::default(),
                done: watch::Sender::new(0),
            }),
            root: root.into(),
        })
    }

    fn gens(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.inner
            .gens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once every write this task made before the call is durable.
    ///
    /// # Errors
    /// [`StoreError::Io`] when a sync since the call failed.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let mut done = self.inner.done.subscribe();
        // A sync running now may have started before our writes: the next.
        let need = self.gens().started + 1;
        loop {
            if *done.borrow_and_update() >= need {
                break;
            }
            let lead = {
                let mut g = self.gens();
                if g.running {
                    None
                } else {
                    g.running = true;
                    g.started += 1;
                    Some(g.started)
                }
            };
            if let Some(number) = lead {
                // Detached: a caller that goes away must not leave the
                // sync marked running.
                let this = self.clone();
                tokio::spawn(async move { this.run(number).await });
            }
            if done.changed().await.is_err() {
                break;
            }
        }
        let g = self.gens();
        if g.last_failed >= need {
            return Err(StoreError::io(
                format!("cannot sync the file system of {}", self.root.display()),
                std::io::Error::other(g.last_error.clone()),
            ));
        }
        Ok(())
    }

    async fn run(&self, number: u64) {
        let inner = Arc::clone(&self.inner);
        let result = tokio::task::spawn_blocking(move || nix::unistd::syncfs(&inner.fd))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        {
            let mut g = self.gens();
            g.running = false;
            if let Err(e) = result {
                tracing::error!(store = %self.root.display(), error = e, "syncfs failed");
                g.last_failed = number;
                g.last_error = e;
            }
        }
        self.inner.done.send_replace(number);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_writers_share_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::open(dir.path()).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200 {
            let sync = sync.clone();
            let path = dir.path().join(format!("f{i}"));
            tasks.spawn(async move {
                tokio::fs::write(&path, b"x").await.unwrap();
                sync.durable().await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        let syncs = sync.gens().started;
        assert!(
            (1..200).contains(&syncs),
            "{syncs} syncs for 200 writers: not grouped"
        );
        // A writer arriving later gets a sync of its own.
        sync.durable().await.unwrap();
        assert_eq!(sync.gens().started, syncs + 1);
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_writer_waiting_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let sync = GroupSync::open(dir.path()).unwrap();
        {
            let mut g = sync.gens();
            // As if sync 1 ran and failed after a writer needing it arrived.
            g.last_failed = 1;
            g.last_error = "EIO".into();
        }
        let err = sync.durable().await.unwrap_err();
        assert!(err.to_string().contains("cannot sync"), "{err}");
        // Later writers need later syncs, which succeed.
        sync.durable().await.unwrap();
    }
}
