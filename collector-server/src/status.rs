//! The one place that turns ircap's errors into `tonic::Status`: the code
//! an agent or analyst sees, and whether it should retry.

use tonic::Status;

use crate::ingest::{IngestError, PoolError};
use crate::store::StoreError;

/// The status for a store failure (UNAVAILABLE: retry; DATA_LOSS:
/// integrity).
pub fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::Io { .. } => {
            tracing::warn!(error = %err, "Store unavailable");
            Status::unavailable(format!("store unavailable, retry: {err}"))
        }
        StoreError::Backend { .. } => {
            tracing::warn!(error = %err, "Store backend unavailable");
            Status::unavailable(format!("store unavailable, retry: {err}"))
        }
        StoreError::Refused { .. } => Status::failed_precondition(err.to_string()),
        StoreError::Integrity { .. } => {
            tracing::error!(error = %err, "Store integrity check failed");
            Status::data_loss(err.to_string())
        }
        StoreError::Corrupt { .. } => Status::internal(err.to_string()),
        StoreError::UnknownCapture(_) => Status::not_found(err.to_string()),
        StoreError::BadKey(_) => Status::invalid_argument(err.to_string()),
        StoreError::Offset { .. } => Status::failed_precondition(err.to_string()),
    }
}

/// The status for bytes an upload stream cannot take.
pub fn ingest_status(err: &IngestError) -> Status {
    let message = err.to_string();
    match err {
        IngestError::Encoding(_) | IngestError::ChunkTooLarge(_) => {
            Status::invalid_argument(message)
        }
        IngestError::Offset { .. } => Status::failed_precondition(message),
        // Not retryable: the same bytes would be refused again.
        IngestError::DecodeCap { .. } => Status::invalid_argument(message),
        IngestError::Gzip { .. }
        | IngestError::ChunkDigest { .. }
        | IngestError::Mismatch { .. }
        | IngestError::SavedState { .. } => Status::data_loss(message),
    }
}

/// The status when the CPU pool cannot run a job.
pub fn pool_status(err: &PoolError) -> Status {
    Status::unavailable(format!(
        "collector shutting down or overloaded, retry: {err}"
    ))
}
