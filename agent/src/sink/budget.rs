//! A byte and time budget around another sink, for captures requested in
//! daemon mode.
//!
//! Every byte written to any artifact counts against the byte budget, and
//! no artifact may be started or written after the deadline. Going over
//! either is a sink error, so the capture is aborted like any other failed
//! capture: it is never committed and never looks complete.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// What a [`BudgetSink`] and its artifacts share.
struct Limits {
    max_bytes: Option<u64>,
    deadline: Option<Instant>,
    max_time: Option<Duration>,
    used: AtomicU64,
}

impl Limits {
    fn check_time(&self) -> Result<(), String> {
        match (self.deadline, self.max_time) {
            (Some(deadline), Some(max)) if Instant::now() > deadline => {
                Err(format!("time budget of {}s exceeded", max.as_secs_f64()))
            }
            _ => Ok(()),
        }
    }

    fn charge(&self, bytes: u64) -> Result<(), String> {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        match self.max_bytes {
            Some(max) if used > max => Err(format!("byte budget of {max} bytes exceeded")),
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
            }),
        }
    }
}

struct BudgetArtifact {
    inner: Box<dyn ArtifactOut>,
    limits: Arc<Limits>,
}

impl io::Write for BudgetArtifact {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.limits
            .charge(data.len() as u64)
            .map_err(io::Error::other)?;
        self.inner.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ArtifactOut for BudgetArtifact {
    fn close(self: Box<Self>, stored: &Digest, content: &Digest) -> Result<(), SinkError> {
        self.inner.close(stored, content)
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
            inner: self.inner.create(name, encoding)?,
            limits: Arc::clone(&self.limits),
        }))
    }

    fn commit(&self, manifest: &Manifest) -> Result<String, SinkError> {
        self.inner.commit(manifest)
    }

    fn abort(&self) {
        self.inner.abort();
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
