//! One capture step's door into the capture's sink, which the step's
//! watchdog can shut.
//!
//! A step stuck in the kernel (a read of a hung network or FUSE file
//! system) cannot be killed: its thread is left blocked and the capture
//! goes on without it. What that thread may do if it ever wakes must not
//! touch the capture any more, so every step writes through its own
//! [`StepSink`], and [`StepSink::abandon`] shuts it: from then on nothing is
//! created, written or closed through it. The artifact the step had open
//! is never closed, so the sink treats it as unfinished (a local directory
//! deletes it, a collector never sees its end) and the manifest does not
//! list it. The artifacts the step had already closed are whole and
//! verified by the sink: `abandon` hands back their manifest entries, so
//! that evidence is kept.
//!
//! Closing and abandoning take the same lock, so an artifact is either
//! closed and returned by `abandon`, or refused; `abandon` may therefore
//! wait for a close already under way (a flush and `fsync`, or a
//! collector's acknowledgement, both bounded by the sink).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ircap_proto::manifest::{ArtifactEntry, Encoding};
use ircap_proto::{ArtifactName, Digest, Manifest};

use super::{ArtifactOut, CaptureSink, SinkError};

/// What a [`StepSink`] and its artifacts share.
#[derive(Default)]
struct Door {
    shut: AtomicBool,
    /// Entries of the artifacts closed through this door.
    closed: Mutex<Vec<ArtifactEntry>>,
    /// Bytes written and artifacts created or closed through it: the
    /// step's progress as its watchdog sees it.
    progress: AtomicU64,
    /// Calls into the sink under way: a step waiting for the sink (a
    /// collector's acknowledgements, a reconnect) is not stuck on the host.
    in_sink: AtomicU32,
}

impl Door {
    /// Runs `call` into the sink, counted as under way, then adds `done`
    /// of what it returned to the progress.
    fn call_sink<T, E>(
        &self,
        call: impl FnOnce() -> Result<T, E>,
        done: impl Fn(&T) -> u64,
    ) -> Result<T, E> {
        self.in_sink.fetch_add(1, Ordering::SeqCst);
        let out = call();
        self.in_sink.fetch_sub(1, Ordering::SeqCst);
        if let Ok(v) = &out {
            self.progress.fetch_add(done(v).max(1), Ordering::SeqCst);
        }
        out
    }

    fn closed(&self) -> MutexGuard<'_, Vec<ArtifactEntry>> {
        self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_shut(&self) -> bool {
        self.shut.load(Ordering::SeqCst)
    }
}

/// Why a write through a shut door fails.
fn refused(step: &str) -> io::Error {
    io::Error::other(format!(
        "the {step} step was abandoned by its watchdog; nothing more of it is stored"
    ))
}

/// The sink one capture step writes through (see the module docs).
pub struct StepSink {
    step: &'static str,
    inner: Arc<dyn CaptureSink>,
    door: Arc<Door>,
}

impl StepSink {
    /// A door for `step` into `inner`.
    #[must_use]
    pub fn new(step: &'static str, inner: Arc<dyn CaptureSink>) -> Self {
        Self {
            step,
            inner,
            door: Arc::default(),
        }
    }

    /// A handle the watchdog keeps to shut this door from another thread.
    #[must_use]
    pub fn handle(&self) -> StepHandle {
        StepHandle {
            door: Arc::clone(&self.door),
        }
    }
}

/// Shuts a [`StepSink`] from the watchdog's thread.
pub struct StepHandle {
    door: Arc<Door>,
}

impl StepHandle {
    /// Shuts the door: nothing more is created, written or closed through
    /// it. Returns the entries of the artifacts the step closed before.
    #[must_use]
    pub fn abandon(&self) -> Vec<ArtifactEntry> {
        let mut closed = self.door.closed();
        self.door.shut.store(true, Ordering::SeqCst);
        std::mem::take(&mut *closed)
    }

    /// A count that grows whenever the step stores something through its
    /// door, and whether a call into the sink is under way right now.
    #[must_use]
    pub fn progress(&self) -> (u64, bool) {
        (
            self.door.progress.load(Ordering::SeqCst),
            self.door.in_sink.load(Ordering::SeqCst) > 0,
        )
    }
}

struct StepArtifact {
    step: &'static str,
    inner: Box<dyn ArtifactOut>,
    door: Arc<Door>,
    entry: Option<ArtifactEntry>,
}

impl io::Write for StepArtifact {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.door.is_shut() {
            return Err(refused(self.step));
        }
        let inner = &mut self.inner;
        self.door.call_sink(
            || inner.write(data),
            |n| u64::try_from(*n).unwrap_or(u64::MAX),
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.door.is_shut() {
            return Err(refused(self.step));
        }
        let inner = &mut self.inner;
        self.door.call_sink(|| inner.flush(), |()| 0)
    }
}

impl ArtifactOut for StepArtifact {
    fn close(self: Box<Self>, stored: &Digest, content: &Digest) -> Result<(), SinkError> {
        let Self {
            step,
            inner,
            door,
            entry,
        } = *self;
        let mut closed = door.closed();
        if door.is_shut() {
            // Dropped unclosed: the sink removes or abandons it.
            drop(inner);
            return Err(SinkError::io("cannot close an artifact", refused(step)));
        }
        door.call_sink(|| inner.close(stored, content), |()| 0)?;
        closed.extend(entry);
        Ok(())
    }

    fn will_close_as(&mut self, entry: &ArtifactEntry) {
        self.entry = Some(entry.clone());
    }
}

impl CaptureSink for StepSink {
    fn create(
        &self,
        name: &ArtifactName,
        encoding: Encoding,
    ) -> Result<Box<dyn ArtifactOut>, SinkError> {
        // Under the lock, so no file appears after the door is shut.
        let _closed = self.door.closed();
        if self.door.is_shut() {
            return Err(SinkError::io(
                format!("cannot start {name}"),
                refused(self.step),
            ));
        }
        let inner = self
            .door
            .call_sink(|| self.inner.create(name, encoding), |_| 0)?;
        Ok(Box::new(StepArtifact {
            step: self.step,
            inner,
            door: Arc::clone(&self.door),
            entry: None,
        }))
    }

    fn commit(&self, _manifest: &Manifest) -> Result<String, SinkError> {
        Err(SinkError::io(
            format!("the {} step", self.step),
            io::Error::other("a step does not commit the capture"),
        ))
    }

    fn abort(&self) {}

    fn drop_unfinished(&self) -> bool {
        self.inner.drop_unfinished()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;

    use super::*;
    use crate::artifact::JsonlWriter;
    use crate::sink::dir::DirSink;

    #[test]
    fn a_shut_door_keeps_what_was_closed_and_refuses_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Arc::new(DirSink::create(tmp.path(), "c1").unwrap());
        let step = StepSink::new("kernel", dir.clone());
        let handle = step.handle();
        let mut done = JsonlWriter::open(&step, "kernel", "kernel").unwrap();
        done.write(&serde_json::json!({"a": 1})).unwrap();
        let done = done.finish().unwrap();
        let mut open = step
            .create(
                &ArtifactName::parse("mounts.jsonl").unwrap(),
                Encoding::Identity,
            )
            .unwrap();
        open.write_all(b"{}\n").unwrap();

        let kept = handle.abandon();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].name, done.name);
        assert!(open.write_all(b"more").is_err());
        let digest = ircap_proto::HashingWriter::new(Vec::<u8>::new()).finish().1;
        assert!(open.close(&digest, &digest).is_err());
        let unfinished = tmp.path().join(".c1.partial/mounts.jsonl");
        assert!(!unfinished.exists(), "an abandoned artifact is removed");
        let err = step
            .create(
                &ArtifactName::parse("late.jsonl").unwrap(),
                Encoding::Identity,
            )
            .err()
            .unwrap();
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert!(!tmp.path().join(".c1.partial/late.jsonl").exists());
    }
}
