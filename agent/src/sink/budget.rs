//! A byte and time budget around another sink, for captures requested in
//! daemon mode.
//!
//! Every byte written to any artifact counts against the byte budget, and
//! no artifact may be started or written after the deadline. The artifact
//! that goes over is refused and dropped unfinished (its bytes no longer
//! count), and so is every artifact that does not fit after it: the
//! capture records each with the limit, keeps what was stored, and is
//! committed as partial.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ircap_proto::manifest::Encoding;
use ircap_proto::{ArtifactName, Digest, Manifest};

use super::{ArtifactOut, CaptureSink, SinkError};

/// The limits of one capture.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Most stored bytes across all artifacts (`None`: no limit).
    pub max_bytes: Option<u64>,
    /// Longest the capture may take (`None`: no limit).
    pub max_time: Option<Duration>,
}

/// Why an artifact was refused: a limit of the budget.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OverBudget(String);

/// What a [`BudgetSink`] and its artifacts share.
struct Limits {
    max_bytes: Option<u64>,
    deadline: Option<Instant>,
    max_time: Option<Duration>,
    /// Bytes of the artifacts stored or being written.
    used: AtomicU64,
    /// A limit refused something: the artifacts refused are dropped.
    refused: AtomicBool,
}

impl Limits {
    fn refuse(&self, why: String) -> OverBudget {
        self.refused.store(true, Ordering::Relaxed);
        OverBudget(why)
    }

    fn check_time(&self) -> Result<(), OverBudget> {
        match (self.deadline, self.max_time) {
            (Some(deadline), Some(max)) if Instant::now() > deadline => {
                Err(self.refuse(format!("time budget of {}s exceeded", max.as_secs_f64())))
            }
            _ => Ok(()),
        }
    }

    /// Counts `bytes` more, or refuses them (uncounted).
    fn charge(&self, bytes: u64) -> Result<(), OverBudget> {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        match self.max_bytes {
            Some(max) if used > max => {
                self.used.fetch_sub(bytes, Ordering::Relaxed);
                Err(self.refuse(format!("byte budget of {max} bytes exceeded")))
            }
            _ => self.check_time(),
        }
    }
}

/// Enforces a [`Budget`] on the sink it wraps.
pub struct BudgetSink {
    inner: Box<dyn CaptureSink>,
    limits: Arc<Limits>,
}

impl BudgetSink {
    /// Wraps `inner`; the time budget starts now.
    #[must_use]
    pub fn new(inner: Box<dyn CaptureSink>, budget: Budget) -> Self {
        Self {
            inner,
            limits: Arc::new(Limits {
                max_bytes: budget.max_bytes,
                deadline: budget.max_time.map(|t| Instant::now() + t),
                max_time: budget.max_time,
                used: AtomicU64::new(0),
                refused: AtomicBool::new(false),
            }),
        }
    }
}

struct BudgetArtifact {
    inner: Option<Box<dyn ArtifactOut>>,
    limits: Arc<Limits>,
    /// Bytes counted for this artifact: given back if it is dropped.
    charged: u64,
}

impl BudgetArtifact {
    fn inner(&mut self) -> io::Result<&mut Box<dyn ArtifactOut>> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("artifact already closed"))
    }
}

impl io::Write for BudgetArtifact {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let len = data.len() as u64;
        self.limits.charge(len).map_err(io::Error::other)?;
        match self.inner()?.write(data) {
            Ok(n) => {
                self.charged += n as u64;
                // Written in part: only what was written counts.
                self.limits
                    .used
                    .fetch_sub(len.saturating_sub(n as u64), Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.limits.used.fetch_sub(len, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner()?.flush()
    }
}

impl Drop for BudgetArtifact {
    fn drop(&mut self) {
        if self.inner.is_some() {
            // Dropped unfinished: its bytes are not stored.
            self.limits.used.fetch_sub(self.charged, Ordering::Relaxed);
        }
    }
}

impl ArtifactOut for BudgetArtifact {
    fn close(mut self: Box<Self>, stored: &Digest, content: &Digest) -> Result<(), SinkError> {
        match self.inner.take() {
            Some(inner) => inner.close(stored, content),
            None => Err(SinkError::io(
                "cannot close an artifact",
                io::Error::other("already closed"),
            )),
        }
    }
}

impl CaptureSink for BudgetSink {
    fn create(
        &self,
        name: &ArtifactName,
        encoding: Encoding,
    ) -> Result<Box<dyn ArtifactOut>, SinkError> {
        self.limits
            .check_time()
            .map_err(|e| SinkError::io(format!("cannot start {name}"), io::Error::other(e)))?;
        Ok(Box::new(BudgetArtifact {
            inner: Some(self.inner.create(name, encoding)?),
            limits: Arc::clone(&self.limits),
            charged: 0,
        }))
    }

    fn commit(&self, manifest: &Manifest) -> Result<String, SinkError> {
        self.inner.commit(manifest)
    }

    fn abort(&self) {
        self.inner.abort();
    }

    /// An artifact the budget refused is dropped cleanly whatever the
    /// sink (a collector never sees its end, a directory deletes it); an
    /// error of the sink itself is the sink's to judge.
    fn drop_unfinished(&self) -> bool {
        self.limits.refused.load(Ordering::Relaxed) || self.inner.drop_unfinished()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write as _;

    use super::*;
    use crate::sink::dir::DirSink;

    fn name(n: &str) -> ArtifactName {
        ArtifactName::parse(n).unwrap()
    }

    #[test]
    fn bytes_over_the_budget_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = BudgetSink::new(
            Box::new(DirSink::create(tmp.path(), "c1").unwrap()),
            Budget {
                max_bytes: Some(10),
                max_time: None,
            },
        );
        let mut a = sink.create(&name("a.bin"), Encoding::Identity).unwrap();
        a.write_all(b"0123456789").unwrap();
        let err = a.write_all(b"x").unwrap_err();
        assert!(err.to_string().contains("byte budget of 10"), "{err}");
    }

    #[test]
    fn a_dropped_artifact_gives_its_bytes_back_and_smaller_ones_still_fit() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = BudgetSink::new(
            Box::new(DirSink::create(tmp.path(), "c3").unwrap()),
            Budget {
                max_bytes: Some(10),
                max_time: None,
            },
        );
        let mut big = sink.create(&name("big.bin"), Encoding::Identity).unwrap();
        big.write_all(b"01234567").unwrap();
        assert!(big.write_all(b"890").is_err());
        assert!(sink.limits.refused.load(Ordering::Relaxed));
        drop(big);
        assert!(!tmp.path().join(".c3.partial/big.bin").exists());
        let mut small = sink.create(&name("small.bin"), Encoding::Identity).unwrap();
        small.write_all(b"0123456789").unwrap();
        let digest = ircap_proto::HashingWriter::new(Vec::<u8>::new()).finish().1;
        small.close(&digest, &digest).unwrap();
    }

    #[test]
    fn nothing_starts_after_the_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let sink = BudgetSink::new(
            Box::new(DirSink::create(tmp.path(), "c2").unwrap()),
            Budget {
                max_bytes: None,
                max_time: Some(Duration::ZERO),
            },
        );
        std::thread::sleep(Duration::from_millis(5));
        let err = sink
            .create(&name("a.bin"), Encoding::Identity)
            .err()
            .unwrap();
        assert!(err.to_string().contains("time budget"), "{err}");
    }
}
