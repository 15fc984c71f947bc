//! The ircap capture format, shared by the agent, the collector and the
//! analyst commands so that there is exactly one implementation of it.
//!
//! - [`manifest`]: the `manifest.json` that describes one capture.
//! - [`hashing`]: the hash-while-streaming adapters (SHA-256 plus byte count)
//!   used wherever capture bytes are produced, sent or received.
//! - [`verify`]: offline verification of a capture directory.
//! - [`artifact_name`]: the rule for what an artifact may be called, so a
//!   hostile manifest can never address a file outside its capture.

pub mod artifact_name;
pub mod hashing;
pub mod manifest;
pub mod verify;

pub use artifact_name::{ArtifactName, ArtifactNameError};
pub use hashing::{Digest, HashingReader, HashingWriter};
pub use manifest::{ArtifactEntry, Manifest, ManifestError};
pub use verify::{Problem, VerifyError, VerifyReport, verify_capture};
