//! The `network_state` artifacts (stub to be replaced).

use super::Context;
use crate::sink::SinkError;

/// Writes the `network_state` artifacts.
///
/// # Errors
/// [`SinkError`] when a table cannot be stored.
pub fn write(
    _ctx: &Context<'_>,
    _sockets: &super::connections::SocketSnapshot,
) -> Result<Vec<ircap_proto::ArtifactEntry>, SinkError> {
    Ok(Vec::new())
}
