//! Daemon mode on the collector: agents keep an outbound stream open
//! ([`agent_stream`]), analysts create capture requests and follow them
//! ([`requests`]), and each replica delivers stored requests to the agents
//! connected to it ([`replica`]). All shared state is in the store's
//! control documents ([`docs`]), so replicas sharing a store share it.

pub mod agent_stream;
pub mod approvals;
pub mod docs;
pub mod replica;
pub mod requests;

use std::time::Duration;

/// The delivery poll interval: `IRCAP_CONTROL_POLL_MS` (milliseconds, for
/// tests and tuning), else [`replica::DEFAULT_POLL`].
#[must_use]
pub fn poll_interval() -> Duration {
    std::env::var("IRCAP_CONTROL_POLL_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(replica::DEFAULT_POLL, Duration::from_millis)
}
