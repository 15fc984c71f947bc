//! The `users` artifacts (stub to be replaced).

use super::Context;
use crate::sink::SinkError;

/// Writes the `users` artifacts.
///
/// # Errors
/// [`SinkError`] when a table cannot be stored.
pub fn write(_ctx: &Context<'_>) -> Result<Vec<ircap_proto::ArtifactEntry>, SinkError> {
    Ok(Vec::new())
}
