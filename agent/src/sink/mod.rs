//! Where a capture goes.
//!
//! A [`CaptureSink`] receives artifacts one stream at a time and finally the
//! manifest. The contract every sink keeps:
//!
//! - Nothing is presented as a capture before [`CaptureSink::commit`]
//!   succeeds: a local directory is written under a hidden `.partial` name
//!   and renamed at the end; a collector marks the capture complete only
//!   after it has checked the manifest.
//! - [`CaptureSink::abort`] removes or abandons whatever was written, so a
//!   failed capture never looks like a finished one.
//! - Artifact bytes are hashed by the caller before they reach the sink;
//!   the sink receives the stored-bytes digest when the artifact closes.
//! - A sink that can cleanly drop an artifact it failed to store (a local
//!   directory that filled up) says so in
//!   [`CaptureSink::drop_unfinished`]; the capture then records the
//!   artifact as dropped and goes on, and `commit` stores only what the
//!   manifest lists. A sink that cannot (a collector stream) keeps the old
//!   rule: any error ends the capture.

pub mod budget;
pub mod dir;
pub mod grpc;
pub mod step;
pub mod tee;

use std::io::Write;

use ircap_proto::manifest::{ArtifactEntry, Encoding};
use ircap_proto::{ArtifactName, Digest, Manifest};

/// Why a sink could not store something. Any sink error ends the capture.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the sink was doing, with the path.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The collector refused or could not be reached.
    #[error("collector: {0}")]
    Collector(String),
    /// Kept complete in the local spool but not delivered to the collector.
    #[error("not delivered to the collector ({reason}); the complete capture is kept in {local}")]
    NotDelivered {
        /// Where the local copy is.
        local: String,
        /// Why the collector did not get it.
        reason: String,
    },
    /// Serialising the manifest failed.
    #[error("cannot encode the manifest: {0}")]
    Manifest(#[from] serde_json::Error),
}

impl SinkError {
    /// Wraps an I/O error with its context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// One artifact being written.
pub trait ArtifactOut: Write + Send {
    /// Makes the artifact durable; `stored` is the digest of every byte
    /// written to it, `content` the digest of the decoded content.
    ///
    /// # Errors
    /// [`SinkError`] when the bytes cannot be made durable (or, for a
    /// collector, were not verified).
    fn close(self: Box<Self>, stored: &Digest, content: &Digest) -> Result<(), SinkError>;

    /// Told, just before [`ArtifactOut::close`], the manifest entry the
    /// artifact will have once closed (a step's door keeps it, see
    /// [`step`]). Nothing to do for most sinks.
    fn will_close_as(&mut self, _entry: &ArtifactEntry) {}
}

/// A destination for one capture (see the module docs for the contract).
pub trait CaptureSink: Send + Sync {
    /// Starts a new artifact.
    ///
    /// # Errors
    /// [`SinkError`] when it cannot be created.
    fn create(
        &self,
        name: &ArtifactName,
        encoding: Encoding,
    ) -> Result<Box<dyn ArtifactOut>, SinkError>;

    /// Stores the manifest and presents the capture as complete; returns
    /// where it is (a path or URL).
    ///
    /// # Errors
    /// [`SinkError`]; the capture is then not complete.
    fn commit(&self, manifest: &Manifest) -> Result<String, SinkError>;

    /// Removes or abandons what was written.
    fn abort(&self);

    /// Whether an artifact that failed to store has been dropped cleanly
    /// (its unfinished bytes removed, its space freed): true for a sink
    /// that can, false otherwise (the failure then ends the capture).
    fn drop_unfinished(&self) -> bool {
        false
    }
}
