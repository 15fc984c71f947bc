//! `--spool DIR`: a local copy of everything sent to the collector, for
//! hosts whose network is unreliable.
//!
//! Every artifact is written to both sinks. If the collector fails at any
//! point, the upload stops (nothing more is sent) but the local copy goes
//! on; the capture is then committed locally and the result is
//! [`SinkError::NotDelivered`], naming where the complete local copy is.

use std::io::Write;
use std::sync::{Arc, Mutex};

use ircap_proto::manifest::Encoding;
use ircap_proto::{ArtifactName, Digest, Manifest};

use super::{ArtifactOut, CaptureSink, SinkError};

/// The first collector failure, shared by all artifacts of a capture.
type Failure = Arc<Mutex<Option<String>>>;

fn record(failure: &Failure, why: String) {
    tracing::warn!("Collector upload failed, continuing with the local spool only: {why}");
    if let Ok(mut slot) = failure.lock()
        && slot.is_none()
    {
        *slot = Some(why);
    }
}

fn failed(failure: &Failure) -> Option<String> {
    failure.lock().ok().and_then(|f| f.clone())
}

/// Writes to a local directory and a collector.
pub struct TeeSink {
    local: Box<dyn CaptureSink>,
    remote: Box<dyn CaptureSink>,
    failure: Failure,
}

impl TeeSink {
    /// Tees `local` (the spool) and `remote` (the collector).
    #[must_use]
    pub fn new(local: Box<dyn CaptureSink>, remote: Box<dyn CaptureSink>) -> Self {
        Self {
            local,
            remote,
            failure: Arc::default(),
        }
    }

    /// A tee whose collector could not even be opened: local only, and the
    /// result will say why nothing was delivered.
    #[must_use]
    pub fn local_only(
        local: Box<dyn CaptureSink>,
        remote: Box<dyn CaptureSink>,
        why: String,
    ) -> Self {
        let tee = Self::new(local, remote);
        record(&tee.failure, why);
        tee
    }
}

struct TeeOut {
    local: Box<dyn ArtifactOut>,
    remote: Option<Box<dyn ArtifactOut>>,
    failure: Failure,
}

impl Write for TeeOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.local.write_all(buf)?;
        if let Some(remote) = &mut self.remote
            && let Err(e) = remote.write_all(buf)
        {
            record(&self.failure, e.to_string());
            self.remote = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.local.flush()
    }
}

impl ArtifactOut for TeeOut {
    fn close(self: Box<Self>, stored: &Digest, content: &Digest) -> Result<(), SinkError> {
        let Self {
            local,
            remote,
            failure,
        } = *self;
        local.close(stored, content)?;
        if let Some(remote) = remote
            && let Err(e) = remote.close(stored, content)
        {
            record(&failure, e.to_string());
        }
        Ok(())
    }
}

impl CaptureSink for TeeSink {
    fn create(
        &self,
        name: &ArtifactName,
        encoding: Encoding,
    ) -> Result<Box<dyn ArtifactOut>, SinkError> {
        let local = self.local.create(name, encoding)?;
        let remote = if failed(&self.failure).is_none() {
            match self.remote.create(name, encoding) {
                Ok(r) => Some(r),
                Err(e) => {
                    record(&self.failure, e.to_string());
                    None
                }
            }
        } else {
            None
        };
        Ok(Box::new(TeeOut {
            local,
            remote,
            failure: Arc::clone(&self.failure),
        }))
    }

    fn commit(&self, manifest: &Manifest) -> Result<String, SinkError> {
        let local = self.local.commit(manifest)?;
        if let Some(reason) = failed(&self.failure) {
            return Err(SinkError::NotDelivered { local, reason });
        }
        match self.remote.commit(manifest) {
            Ok(remote) => Ok(format!("{remote} (spooled copy: {local})")),
            Err(e) => Err(SinkError::NotDelivered {
                local,
                reason: e.to_string(),
            }),
        }
    }

    fn abort(&self) {
        self.local.abort();
        self.remote.abort();
    }
}
