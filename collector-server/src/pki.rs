//! PKI bootstrap (placeholder, being written).
