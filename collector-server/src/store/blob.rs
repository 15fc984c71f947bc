//! The blob layer: what a backend (a local directory, an S3 bucket) must
//! do so that [`super::Evidence`] can keep captures in it. It knows
//! nothing of captures, states or commit order; the evidence layer writes
//! those once, above it.
//!
//! Keys are `/`-separated relative names built by the evidence layer from
//! checked parts (capture ids, certificate identities, artifact names,
//! [`super::DocKey`]s); no segment starts with `.`, which leaves those
//! names to a backend's own temporary files.
//!
//! The contract:
//!
//! - `put`, `put_if_absent` and `replace_if` are durable when they return
//!   and atomic: a reader sees the old bytes or the new, never a mix.
//! - `put_if_absent` creates the object only when no object has the key
//!   (S3 `If-None-Match: *`); of two racing writers exactly one gets
//!   `true`.
//! - `replace_if` replaces the object only when it is still at the
//!   [`Version`] read with `get_versioned` (S3 `If-Match` on the ETag); of
//!   two writers that read the same version exactly one gets `true`.
//! - An artifact's bytes arrive through the *staged* methods: appended at
//!   the durable length, then made final under its final key by
//!   `promote`, which takes the artifact's last piece, checks the size and
//!   SHA-256 the agent and the collector agreed on and never replaces a
//!   different final object. How staging works is the backend's business:
//!   a file appended and synced and then renamed, or the parts of an S3
//!   multipart upload of the final key itself, which cannot be read back
//!   until complete. Such a backend saves, with each append, the digest
//!   state the collector hands it, and `staged` returns it, so that a
//!   resumed upload goes on hashing without the earlier bytes.
//! - A *record set* holds small named records, each durable when
//!   `put_record` returns, none lost to a concurrent writer of another
//!   record (a later record of the same name wins). By default each record
//!   is an object of its own under the set's key (what S3 does); a backend
//!   may keep a set as one appended log instead (the file store: creating
//!   and deleting a file per record was most of its cost per artifact).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{FinishedArtifact, StoreError};

/// Objects read concurrently by [`get_many`].
const FETCH_CONCURRENCY: usize = 16;

/// The objects under `keys` (`None` for one that is gone), read
/// [`FETCH_CONCURRENCY`] at a time, in the order of `keys`.
///
/// # Errors
/// [`StoreError`] when one cannot be read.
pub(crate) async fn get_many<B: Blob>(
    blob: &B,
    keys: &[String],
) -> Result<Vec<(String, Option<Vec<u8>>)>, StoreError> {
    let mut out = Vec::with_capacity(keys.len());
    for batch in keys.chunks(FETCH_CONCURRENCY) {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, key) in batch.iter().enumerate() {
            let (blob, key) = (blob.clone(), key.clone());
            tasks.spawn(async move {
                let bytes = blob.get(&key).await?;
                Ok::<_, StoreError>((i, key, bytes))
            });
        }
        let mut got = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (i, key, bytes) = joined.map_err(|e| StoreError::Corrupt {
                context: "concurrent read".into(),
                message: e.to_string(),
            })??;
            got.insert(i, (key, bytes));
        }
        out.extend(got.into_values());
    }
    Ok(out)
}

/// Which settings an object gets: evidence objects get the backend's
/// retention, legal hold and storage class; control objects do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Artifacts and manifests.
    Evidence,
    /// States, index entries, control documents, staging.
    Control,
}

/// The version of an object as read (an S3 ETag; the SHA-256 of a file's
/// content), to replace it only if nobody else did since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

/// Where an artifact's staged bytes stand, for a resumed upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// Bytes held durably.
    pub len: u64,
    /// `None` when those bytes can be read back (`staged_read`); else
    /// the digest state saved with the last append, at `len`.
    pub saved_state: Option<Vec<u8>>,
}

/// A backend (see the module docs for the contract).
pub trait Blob: Clone + Send + Sync + 'static {
    /// The object under `key`, if there is one.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// The object and its version.
    fn get_versioned(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<(Vec<u8>, Version)>, StoreError>> + Send;

    /// Whether an object has the key.
    fn exists(&self, key: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Writes or replaces an object.
    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        class: Class,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Creates an object; `false` when one exists already.
    fn put_if_absent(
        &self,
        key: &str,
        bytes: Vec<u8>,
        class: Class,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Replaces an object still at `expected`; `false` when it changed (or
    /// is gone).
    fn replace_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: &Version,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Names directly under `dir` (objects and "directories"), sorted.
    fn list(&self, dir: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Removes an object; an absent one is not an error.
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes everything under `dir`.
    fn delete_tree(&self, dir: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Smallest append the backend wants, except an artifact's last (0:
    /// any size).
    fn part_size(&self) -> usize {
        0
    }

    /// Bytes of an artifact held durably: under `staging`, else (made
    /// final already) under `final_key`.
    fn staged(
        &self,
        staging: &str,
        final_key: &str,
    ) -> impl Future<Output = Result<Staged, StoreError>> + Send;

    /// `len` bytes of an artifact from `offset`: from its final object when
    /// `is_final`, else from staging (or the final object if staging is
    /// gone). A backend whose staged bytes cannot be read (see
    /// [`Staged::saved_state`]) reads the final object only.
    fn staged_read(
        &self,
        staging: &str,
        final_key: &str,
        is_final: bool,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    /// Appends `data` (not the artifact's last piece) at `offset`, which
    /// must be the durable length, with `saved_state`, the collector's
    /// digest state at the end of `data`; returns the new durable length
    /// once the bytes are durable.
    fn staged_append(
        &self,
        staging: &str,
        final_key: &str,
        offset: u64,
        data: Bytes,
        saved_state: &[u8],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Writes record `name` (a file name: no `/`, not starting with `.`)
    /// of the record set `set`, durable when it returns (see the module
    /// docs).
    fn put_record(
        &self,
        set: &str,
        name: &str,
        record: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move {
            self.put(&format!("{set}/{name}"), record, Class::Control)
                .await
        }
    }

    /// Record `name` of `set`, if written.
    fn record(
        &self,
        set: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send {
        async move { self.get(&format!("{set}/{name}")).await }
    }

    /// Every record of `set` (the last of each name), in no set order.
    fn records(&self, set: &str) -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send {
        async move {
            let keys: Vec<String> = self
                .list(set)
                .await?
                .into_iter()
                .map(|name| format!("{set}/{name}"))
                .collect();
            Ok(get_many(self, &keys)
                .await?
                .into_iter()
                .filter_map(|(_, bytes)| bytes)
                .collect())
        }
    }

    /// How many records (names) `set` holds.
    fn record_count(&self, set: &str) -> impl Future<Output = Result<usize, StoreError>> + Send {
        async move { Ok(self.list(set).await?.len()) }
    }

    /// Removes `set` and its records.
    fn delete_records(&self, set: &str) -> impl Future<Output = Result<(), StoreError>> + Send {
        async move { self.delete_tree(set).await }
    }

    /// Appends the artifact's last piece `tail` (may be empty) at
    /// `offset`, the durable length, and makes the artifact final under
    /// `final_key` after checking its size and SHA-256 against `finished`.
    /// Runs again harmlessly when an earlier attempt was interrupted (with
    /// what is left of the tail); refuses (integrity) when a different
    /// object holds the final key.
    fn promote(
        &self,
        staging: &str,
        final_key: &str,
        offset: u64,
        tail: Bytes,
        finished: &FinishedArtifact,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
