//! The evidence layer: where captures live in a blob store, in which order
//! a commit writes them, and what a capture's state is. Written once for
//! every backend (see [`super::blob`] for what a backend must do).
//!
//! ```text
//! captures/<agent identity>/<capture-id>/<artifact>     finished, verified artifacts
//! captures/<agent identity>/<capture-id>/manifest.json  written on commit, create-only
//! staging/<capture-id>/<artifact>...                    bytes of an artifact still arriving
//! state/<capture-id>.json                               owner, status, artifacts folded in
//! state/<capture-id>.finished                           record set: one entry per artifact verified since
//! state/open/<capture-id>                               marker: opened, not yet committed or expired
//! index/records/<day>/<capture-id>.json                 one small record per committed capture
//! index/days/<day>.ndjson                                a day's records merged, for listing (see super::index)
//! control/<doc key>                                     control documents (requests, agents)
//! ```
//!
//! - A finished artifact is one record of its own in the capture's record
//!   set (O(1), however many came before, and two streams never overwrite
//!   each other's; named by the SHA-256 of the artifact name; an object
//!   each on S3, one log in the file store, see [`super::blob`]); reading
//!   a state merges the entries into it, and the commit folds them in.
//! - A capture is opened by creating its state (create-only, so two
//!   replicas opening one id agree on one owner), after its open marker.
//! - Commit order: manifest (create-only: of two replicas committing one
//!   capture exactly one manifest is stored, and a different one is
//!   refused as already committed), index entry, complete state (replaced
//!   only at the version read, again until it holds), then the open
//!   marker, the entries and staging are removed. The manifest is the
//!   truth: a crash anywhere leaves the open marker, and
//!   [`super::repair`] finishes the commit at start by looking at open
//!   markers only, never at every state.
//! - An open capture older than the upload TTL is expired
//!   ([`Evidence::expire`]): its state says `expired` (with what had been
//!   verified), its staging bytes and open marker are removed. Verified
//!   artifacts stay. A commit that stored its manifest wins over expiry.

use ircap_proto::ArtifactName;
use ircap_proto::artifact_name::MANIFEST_FILE;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use bytes::Bytes;

use super::blob::{Blob, Class, Staged, Version, get_many};
use super::{CaptureState, DocKey, FinishedArtifact, IndexEntry, StoreError};

/// Attempts at a conditional state update before giving up (each lost
/// race means another replica changed the state in between).
const STATE_RETRIES: usize = 16;

/// One finished-artifact entry.
#[derive(Serialize, Deserialize)]
struct FinishedEntry {
    name: String,
    #[serde(flatten)]
    finished: FinishedArtifact,
}

/// What a commit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// This manifest is the capture's (stored now, or by an earlier
    /// attempt with the same bytes).
    Stored,
    /// Another commit stored a different manifest first; nothing was
    /// written.
    Lost,
}

/// What the upload of one artifact needs to know of its capture, without
/// reading every other artifact's entry.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// The state (its `finished` holds only what is folded in).
    pub state: CaptureState,
    /// The artifact's own entry, if it finished.
    pub finished: Option<FinishedArtifact>,
    /// How many artifacts finished.
    pub count: usize,
}

/// Captures in a blob store (see the module docs).
#[derive(Debug, Clone)]
pub struct Evidence<B> {
    blob: B,
    counts: FinishedCounts,
}

/// How long a finished-artifact count learnt by listing is used before
/// it is listed again (artifacts another replica finished meanwhile are
/// then counted).
const COUNT_FRESH: std::time::Duration = std::time::Duration::from_secs(30);
/// Most captures whose counts are kept (the table is emptied past it).
const MAX_COUNTED: usize = 10_000;

/// The number of finished-artifact entries of each open capture, as this
/// replica last listed them plus what it recorded since: a stream start
/// reads it instead of listing every entry (one listing per artifact would
/// be quadratic in a capture's artifacts, and pages of LIST on S3). Only
/// the per-capture artifact limit reads it, and the manifest limit bounds
/// a capture anyway, so a count another replica has not seen yet for up
/// to [`COUNT_FRESH`] costs nothing.
#[derive(Debug, Clone, Default)]
struct FinishedCounts(
    std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<String, (usize, std::time::Instant)>>,
    >,
);

impl FinishedCounts {
    fn table(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (usize, std::time::Instant)>>
    {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The count of `id`, unless unknown or older than [`COUNT_FRESH`].
    fn fresh(&self, id: &str) -> Option<usize> {
        self.table()
            .get(id)
            .filter(|(_, at)| at.elapsed() < COUNT_FRESH)
            .map(|(n, _)| *n)
    }

    /// `id` has `n` entries, as listed now.
    fn listed(&self, id: &str, n: usize) {
        let mut t = self.table();
        if t.len() >= MAX_COUNTED && !t.contains_key(id) {
            t.clear();
        }
        t.insert(id.to_owned(), (n, std::time::Instant::now()));
    }

    /// One more entry of `id` was recorded here.
    fn recorded(&self, id: &str) {
        if let Some((n, _)) = self.table().get_mut(id) {
            *n += 1;
        }
    }

    fn forget(&self, id: &str) {
        self.table().remove(id);
    }
}

fn corrupt(context: impl Into<String>, e: &serde_json::Error) -> StoreError {
    StoreError::Corrupt {
        context: context.into(),
        message: e.to_string(),
    }
}

fn to_json<T: Serialize>(context: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| corrupt(context, &e))
}

impl<B: Blob> Evidence<B> {
    /// Captures in `blob`.
    #[must_use]
    pub fn new(blob: B) -> Self {
        Self {
            blob,
            counts: FinishedCounts::default(),
        }
    }

    /// The blob layer.
    #[must_use]
    pub fn blob(&self) -> &B {
        &self.blob
    }

    fn state_key(id: &str) -> String {
        format!("state/{id}.json")
    }

    /// The record set of a capture's finished-artifact entries.
    fn entries_set(id: &str) -> String {
        format!("state/{id}.finished")
    }

    /// The record name of artifact `name`'s entry.
    fn entry_name(name: &str) -> String {
        let digest: String = sha2::Sha256::digest(name.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{digest}.json")
    }

    fn open_key(id: &str) -> String {
        format!("state/open/{id}")
    }

    fn staging_dir(id: &str) -> String {
        format!("staging/{id}")
    }

    fn staging_key(state: &CaptureState, name: &ArtifactName) -> String {
        format!("{}/{name}", Self::staging_dir(&state.capture_id))
    }

    /// Key of a capture's evidence object `name` (artifact or manifest).
    #[must_use]
    pub fn evidence_key(state: &CaptureState, name: &str) -> String {
        format!("captures/{}/{}/{name}", state.owner, state.capture_id)
    }

    fn doc_key(key: &DocKey) -> String {
        format!("control/{key}")
    }

    fn parse_state(key: &str, bytes: &[u8]) -> Result<CaptureState, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| corrupt(key, &e))
    }

    /// The stored state without its entries merged, and its version.
    async fn state_doc(&self, id: &str) -> Result<Option<(CaptureState, Version)>, StoreError> {
        let key = Self::state_key(id);
        match self.blob.get_versioned(&key).await? {
            Some((bytes, v)) => Ok(Some((Self::parse_state(&key, &bytes)?, v))),
            None => Ok(None),
        }
    }

    /// Every finished-artifact entry of a capture.
    async fn entries(&self, id: &str) -> Result<Vec<FinishedEntry>, StoreError> {
        let set = Self::entries_set(id);
        let mut out = Vec::new();
        for bytes in self.blob.records(&set).await? {
            match serde_json::from_slice::<FinishedEntry>(&bytes) {
                Ok(entry) => out.push(entry),
                // Records are atomic, so this is not a torn write but a
                // foreign object: it records nothing.
                Err(e) => tracing::warn!(set, error = %e, "Skipped an unreadable entry"),
            }
        }
        Ok(out)
    }

    async fn merged(&self, mut state: CaptureState) -> Result<CaptureState, StoreError> {
        if !state.complete {
            for e in self.entries(&state.capture_id).await? {
                state.finished.insert(e.name, e.finished);
            }
        }
        Ok(state)
    }

    /// The state of `capture_id` with every finished artifact, if known.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds garbage.
    pub async fn state(&self, capture_id: &str) -> Result<Option<CaptureState>, StoreError> {
        match self.state_doc(capture_id).await? {
            Some((s, _)) => Ok(Some(self.merged(s).await?)),
            None => Ok(None),
        }
    }

    /// The stored state without its finished entries (whether it is open,
    /// complete or expired, and whose), in one read.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read or holds garbage.
    pub async fn state_head(&self, capture_id: &str) -> Result<Option<CaptureState>, StoreError> {
        Ok(self.state_doc(capture_id).await?.map(|(s, _)| s))
    }

    /// What an upload stream of artifact `name` needs: the state, that
    /// artifact's entry and the number of finished artifacts (one list,
    /// not one read per artifact).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn stream_state(
        &self,
        capture_id: &str,
        name: &ArtifactName,
    ) -> Result<Option<StreamState>, StoreError> {
        let Some((state, _)) = self.state_doc(capture_id).await? else {
            return Ok(None);
        };
        let mut finished = state.finished.get(name.as_str()).cloned();
        let mut count = state.finished.len();
        if !state.complete {
            count += match self.counts.fresh(capture_id) {
                Some(n) => n,
                None => {
                    let n = self
                        .blob
                        .record_count(&Self::entries_set(capture_id))
                        .await?;
                    self.counts.listed(capture_id, n);
                    n
                }
            };
            if finished.is_none() {
                let set = Self::entries_set(capture_id);
                if let Some(bytes) = self
                    .blob
                    .record(&set, &Self::entry_name(name.as_str()))
                    .await?
                {
                    let e: FinishedEntry =
                        serde_json::from_slice(&bytes).map_err(|e| corrupt(&set, &e))?;
                    finished = Some(e.finished);
                }
            }
        }
        Ok(Some(StreamState {
            state,
            finished,
            count,
        }))
    }

    /// Records a new capture, unless one with its id exists: returns the
    /// stored state either way (the caller checks its owner).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be written.
    pub async fn open(&self, state: &CaptureState) -> Result<CaptureState, StoreError> {
        let id = &state.capture_id;
        // The marker first: a crash before the state leaves a marker that
        // expiry removes, never a state nobody looks at.
        self.blob
            .put(&Self::open_key(id), Vec::new(), Class::Control)
            .await?;
        let bytes = to_json(id, state)?;
        if self
            .blob
            .put_if_absent(&Self::state_key(id), bytes, Class::Control)
            .await?
        {
            return Ok(state.clone());
        }
        let existing = self
            .state(id)
            .await?
            .ok_or_else(|| StoreError::UnknownCapture(id.clone()))?;
        if existing.complete {
            // Not open after all: keep the marker set to open captures.
            self.blob.delete(&Self::open_key(id)).await?;
        }
        Ok(existing)
    }

    /// Bytes of `name` held durably, and the digest state saved with them
    /// when they cannot be read back (see [`Staged`]).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn staged(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
    ) -> Result<Staged, StoreError> {
        self.blob
            .staged(
                &Self::staging_key(state, name),
                &Self::evidence_key(state, name.as_str()),
            )
            .await
    }

    /// Reads `len` bytes of `name` from `offset` (to rebuild hashes when an
    /// upload resumes, or to serve a pull).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn read_range(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let is_final = state.complete || state.finished.contains_key(name.as_str());
        self.blob
            .staged_read(
                &Self::staging_key(state, name),
                &Self::evidence_key(state, name.as_str()),
                is_final,
                offset,
                len,
            )
            .await
    }

    /// Smallest append the backend wants, except an artifact's last.
    #[must_use]
    pub fn part_size(&self) -> usize {
        self.blob.part_size()
    }

    /// Appends `data` (not the artifact's last piece) at `offset` (the
    /// durable length) with the collector's stored-bytes digest state at
    /// its end; returns the new durable length once the bytes are durable.
    ///
    /// # Errors
    /// [`StoreError::Offset`] when `offset` is not the durable length, or
    /// the store failed.
    pub async fn append(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        data: Bytes,
        saved_state: &[u8],
    ) -> Result<u64, StoreError> {
        self.blob
            .staged_append(
                &Self::staging_key(state, name),
                &Self::evidence_key(state, name.as_str()),
                offset,
                data,
                saved_state,
            )
            .await
    }

    /// Stores a verified artifact's last piece `tail` at `offset` (the
    /// durable length) and makes the artifact final (see
    /// [`Blob::promote`]).
    ///
    /// # Errors
    /// [`StoreError::Integrity`] when the stored bytes are not the agreed
    /// ones, or the store failed.
    pub async fn finish_artifact(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        tail: Bytes,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        self.blob
            .promote(
                &Self::staging_key(state, name),
                &Self::evidence_key(state, name.as_str()),
                offset,
                tail,
                finished,
            )
            .await
    }

    /// Records a verified, final artifact: one entry of its own.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be written.
    pub async fn record_finished(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        let set = Self::entries_set(&state.capture_id);
        let entry = FinishedEntry {
            name: name.to_string(),
            finished: finished.clone(),
        };
        self.blob
            .put_record(
                &set,
                &Self::entry_name(name.as_str()),
                to_json(&set, &entry)?,
            )
            .await?;
        self.counts.recorded(&state.capture_id);
        Ok(())
    }

    /// Replaces the state with `change` applied to a fresh read, at the
    /// version read, until that holds; returns the state written (`None`
    /// when `change` declined).
    async fn update_state(
        &self,
        id: &str,
        change: impl Fn(CaptureState) -> Option<CaptureState>,
    ) -> Result<Option<CaptureState>, StoreError> {
        let key = Self::state_key(id);
        for _ in 0..STATE_RETRIES {
            let (stored, version) = self
                .state_doc(id)
                .await?
                .ok_or_else(|| StoreError::UnknownCapture(id.to_owned()))?;
            let stored = self.merged(stored).await?;
            let Some(next) = change(stored) else {
                return Ok(None);
            };
            if self
                .blob
                .replace_if(&key, to_json(id, &next)?, &version)
                .await?
            {
                return Ok(Some(next));
            }
            tracing::debug!(capture_id = id, "State changed under us; reading it again");
        }
        Err(StoreError::Backend {
            context: key,
            message: format!("the state kept changing over {STATE_RETRIES} attempts"),
        })
    }

    /// Stores the verified manifest, adds the capture to the index and
    /// marks it complete (see the module docs for the order).
    ///
    /// # Errors
    /// [`StoreError`] when the store failed; the commit can be tried again.
    pub async fn commit(
        &self,
        state: &CaptureState,
        manifest_json: &[u8],
        index: &IndexEntry,
    ) -> Result<Committed, StoreError> {
        let id = &state.capture_id;
        let manifest_key = Self::evidence_key(state, MANIFEST_FILE);
        let mut attempts = 0;
        while !self
            .blob
            .put_if_absent(&manifest_key, manifest_json.to_vec(), Class::Evidence)
            .await?
        {
            match self.blob.get(&manifest_key).await? {
                Some(stored) if stored == manifest_json => break,
                Some(_) => return Ok(Committed::Lost),
                // Refused, yet there is none: a conflicting write that
                // failed too (S3 409). Try again.
                None if attempts < STATE_RETRIES => attempts += 1,
                None => {
                    return Err(StoreError::Backend {
                        context: manifest_key,
                        message: "the manifest could be neither created nor read".into(),
                    });
                }
            }
        }
        self.write_index_record(index).await?;
        self.update_state(id, |mut s| {
            if s.complete {
                return None;
            }
            s.complete = true;
            s.expired_at = None;
            Some(s)
        })
        .await?;
        self.close_open(id).await;
        Ok(Committed::Stored)
    }

    /// Stores the signed receipt's files beside where the manifest goes
    /// (evidence objects, so under the same retention). Called before
    /// [`Evidence::commit`]: a capture with a manifest then has its
    /// receipt too, whenever a crash cuts the commit short.
    ///
    /// # Errors
    /// [`StoreError`] when the store failed; the commit can be tried again.
    pub async fn put_receipt(
        &self,
        state: &CaptureState,
        files: &[(&str, &[u8])],
    ) -> Result<(), StoreError> {
        for (name, bytes) in files {
            self.blob
                .put(
                    &Self::evidence_key(state, name),
                    bytes.to_vec(),
                    Class::Evidence,
                )
                .await?;
        }
        Ok(())
    }

    /// The signed receipt's files of a committed capture, in
    /// [`ircap_proto::receipt::RECEIPT_FILES`] order; `None` when it has
    /// none (committed unsigned, or before signed receipts).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn read_receipt(
        &self,
        state: &CaptureState,
    ) -> Result<Option<[Vec<u8>; 3]>, StoreError> {
        let mut got = Vec::with_capacity(3);
        for name in ircap_proto::receipt::RECEIPT_FILES {
            match self.blob.get(&Self::evidence_key(state, name)).await? {
                Some(bytes) => got.push(bytes),
                None => return Ok(None),
            }
        }
        let [a, b, c]: [Vec<u8>; 3] = got.try_into().map_err(|_| StoreError::Corrupt {
            context: state.capture_id.clone(),
            message: "receipt files".into(),
        })?;
        Ok(Some([a, b, c]))
    }

    /// Removes what an open capture kept on the side (its marker last, so
    /// a crash leaves it to repair or expiry).
    pub async fn close_open(&self, id: &str) {
        self.counts.forget(id);
        for (what, r) in [
            (
                "entries",
                self.blob.delete_records(&Self::entries_set(id)).await,
            ),
            // Bytes of artifacts that never finished are not evidence.
            (
                "staging",
                self.blob.delete_tree(&Self::staging_dir(id)).await,
            ),
            ("open marker", self.blob.delete(&Self::open_key(id)).await),
        ] {
            if let Err(e) = r {
                tracing::warn!(capture_id = id, what, error = %e, "Cannot remove");
            }
        }
    }

    /// Expires `capture_id` if it is still open (not committed, no
    /// manifest): its state says `expired` at `now`, with every artifact
    /// verified so far; its staging and open marker are removed. Returns
    /// whether it expired.
    ///
    /// # Errors
    /// [`StoreError`] when the store failed.
    pub async fn expire(&self, capture_id: &str, now: &str) -> Result<bool, StoreError> {
        let Some((state, _)) = self.state_doc(capture_id).await? else {
            // A marker whose state was never written.
            self.blob.delete(&Self::open_key(capture_id)).await?;
            return Ok(false);
        };
        if state.complete || self.find_manifest(&state).await?.is_some() {
            return Ok(false);
        }
        let written = self
            .update_state(capture_id, |mut s| {
                if s.complete || s.expired_at.is_some() {
                    return None;
                }
                s.expired_at = Some(now.to_owned());
                Some(s)
            })
            .await?;
        if written.is_none() {
            return Ok(false);
        }
        // A commit that stored its manifest meanwhile wins; it rewrites
        // the state and removes what is left.
        if self.find_manifest(&state).await?.is_none() {
            self.close_open(capture_id).await;
        }
        Ok(true)
    }

    /// Ids of the captures opened and not yet committed or expired, at
    /// most `limit` (sorted; ids made of UUIDv7 sort oldest first).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be listed.
    pub async fn open_ids(&self, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut ids = self.blob.list("state/open").await?;
        ids.truncate(limit);
        Ok(ids)
    }

    /// The states of up to `limit` open captures.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn open_states(&self, limit: usize) -> Result<Vec<CaptureState>, StoreError> {
        let mut out = Vec::new();
        for id in self.open_ids(limit).await? {
            if let Some(s) = self.state(&id).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The committed manifest of a capture, if it has one.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn find_manifest(&self, state: &CaptureState) -> Result<Option<Vec<u8>>, StoreError> {
        self.blob
            .get(&Self::evidence_key(state, MANIFEST_FILE))
            .await
    }

    /// The committed manifest of a capture.
    ///
    /// # Errors
    /// [`StoreError`] when it is missing or the store cannot be read.
    pub async fn read_manifest(&self, state: &CaptureState) -> Result<Vec<u8>, StoreError> {
        let key = Self::evidence_key(state, MANIFEST_FILE);
        self.blob
            .get(&key)
            .await?
            .ok_or_else(|| StoreError::Backend {
                context: key,
                message: "the manifest is missing".into(),
            })
    }

    /// Appends one audit event under `audit/<day>/<name>.json`, write-once
    /// (never replaced) and durable on return; an evidence object, so S3
    /// gives it the store's Object Lock retention. Audit events never go
    /// into a capture's own objects.
    ///
    /// # Errors
    /// [`StoreError`] when it cannot be written, or one of that name
    /// exists already (names are fresh UUIDv7s: that is not expected).
    pub async fn append_audit(
        &self,
        day: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let key = format!("audit/{day}/{name}.json");
        if self
            .blob
            .put_if_absent(&key, bytes.to_vec(), Class::Evidence)
            .await?
        {
            Ok(())
        } else {
            Err(StoreError::Integrity {
                context: key,
                message: "an audit event of that name exists already".into(),
            })
        }
    }

    /// Audit events of days `from_day` (`YYYY-MM-DD`) on, oldest first by
    /// name (UUIDv7, so by time), at most `limit` (the newest kept).
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn read_audit(
        &self,
        from_day: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        for day in self.blob.list("audit").await? {
            if from_day.is_some_and(|f| day.as_str() < f) {
                continue;
            }
            for name in self.blob.list(&format!("audit/{day}")).await? {
                if name.ends_with(".json") {
                    keys.push(format!("audit/{day}/{name}"));
                }
            }
        }
        keys.sort();
        let skip = keys.len().saturating_sub(limit);
        let keys = keys.split_off(skip);
        Ok(get_many(&self.blob, &keys)
            .await?
            .into_iter()
            .filter_map(|(_, bytes)| bytes)
            .collect())
    }

    /// Writes (or replaces) a control document; durable on return.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be written.
    pub async fn put_doc(&self, key: &DocKey, bytes: &[u8]) -> Result<(), StoreError> {
        self.blob
            .put(&Self::doc_key(key), bytes.to_vec(), Class::Control)
            .await
    }

    /// A control document, if present.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be read.
    pub async fn get_doc(&self, key: &DocKey) -> Result<Option<Vec<u8>>, StoreError> {
        self.blob.get(&Self::doc_key(key)).await
    }

    /// Keys of the control documents directly under `prefix` (a key naming
    /// a "directory"), sorted. An absent prefix lists nothing.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be listed.
    pub async fn list_docs(&self, prefix: &DocKey) -> Result<Vec<DocKey>, StoreError> {
        Ok(self
            .blob
            .list(&Self::doc_key(prefix))
            .await?
            .into_iter()
            .filter_map(|name| DocKey::new(format!("{prefix}/{name}")).ok())
            .collect())
    }

    /// Removes a control document; removing an absent one is not an error.
    ///
    /// # Errors
    /// [`StoreError`] when the store cannot be written.
    pub async fn delete_doc(&self, key: &DocKey) -> Result<(), StoreError> {
        self.blob.delete(&Self::doc_key(key)).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::store::file::FileBlob;

    fn store(dir: &std::path::Path) -> Evidence<FileBlob> {
        Evidence::new(FileBlob::open(dir).unwrap())
    }

    fn opened(id: &str) -> CaptureState {
        CaptureState::opened(id, "web-1", "web-1", "2026-01-01T00:00:00Z")
    }

    fn artifact(size: u64) -> FinishedArtifact {
        FinishedArtifact {
            encoding: "identity".into(),
            size,
            sha256: format!("{size:064x}"),
            size_uncompressed: size,
            sha256_uncompressed: format!("{size:064x}"),
        }
    }

    fn index(id: &str) -> IndexEntry {
        IndexEntry {
            capture_id: id.into(),
            agent: "web-1".into(),
            hostname: "web-1".into(),
            instance_id: None,
            started_at: String::new(),
            ended_at: String::new(),
            stored_bytes: 0,
            artifacts: 0,
            committed_at: String::new(),
            findings: std::collections::BTreeMap::new(),
            case: None,
        }
    }

    #[tokio::test]
    async fn finished_artifacts_are_entries_folded_in_at_commit() {
        let dir = tempfile::tempdir().unwrap();
        let ev = store(dir.path());
        let s = ev.open(&opened("c1")).await.unwrap();
        // Concurrent records never lose one another.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..50u64 {
            let (ev, s) = (ev.clone(), s.clone());
            tasks.spawn(async move {
                let name = ArtifactName::parse(&format!("a/{i}.bin")).unwrap();
                ev.record_finished(&s, &name, &artifact(i)).await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        let name = ArtifactName::parse("a/7.bin").unwrap();
        let one = ev.stream_state("c1", &name).await.unwrap().unwrap();
        assert_eq!((one.count, one.finished), (50, Some(artifact(7))));
        assert_eq!(ev.state("c1").await.unwrap().unwrap().finished.len(), 50);
        assert_eq!(ev.open_ids(10).await.unwrap(), vec!["c1".to_owned()]);

        let got = ev.commit(&s, b"{}", &index("c1")).await.unwrap();
        assert_eq!(got, Committed::Stored);
        let done = ev.state("c1").await.unwrap().unwrap();
        assert!(done.complete);
        assert_eq!(done.finished.len(), 50);
        assert!(ev.open_ids(10).await.unwrap().is_empty());
        assert!(!dir.path().join("state/c1.finished").exists());
        assert_eq!(ev.list_index(None).await.unwrap(), vec![index("c1")]);
        // The same manifest again (a repair) is harmless.
        assert_eq!(
            ev.commit(&s, b"{}", &index("c1")).await.unwrap(),
            Committed::Stored
        );
    }

    #[tokio::test]
    async fn a_stream_start_counts_finished_artifacts_without_listing_them_again() {
        let dir = tempfile::tempdir().unwrap();
        let ev = store(dir.path());
        let s = ev.open(&opened("c2")).await.unwrap();
        let name = |i: u64| ArtifactName::parse(&format!("a/{i}.bin")).unwrap();
        assert_eq!(
            ev.stream_state("c2", &name(0))
                .await
                .unwrap()
                .unwrap()
                .count,
            0
        );
        for i in 0..5u64 {
            ev.record_finished(&s, &name(i), &artifact(i))
                .await
                .unwrap();
        }
        // Counted as recorded, not listed again: an entry written behind
        // this replica's back (another replica; here a record file of the
        // layout before record logs) is not seen yet...
        std::fs::create_dir_all(dir.path().join("state/c2.finished")).unwrap();
        std::fs::write(
            dir.path().join("state/c2.finished/elsewhere.json"),
            br#"{"name":"b","finished":{"encoding":"identity","size":1,"sha256":"","size_uncompressed":1,"sha256_uncompressed":""}}"#,
        )
        .unwrap();
        // (The file store's own cache would not see it either.)
        ev.blob().forget_cached();
        let st = ev.stream_state("c2", &name(9)).await.unwrap().unwrap();
        assert_eq!(st.count, 5);
        // ...and is once the count is listed again.
        ev.counts.forget("c2");
        let st = ev.stream_state("c2", &name(9)).await.unwrap().unwrap();
        assert_eq!(st.count, 6);
        // The artifact's own entry is always read, whatever the count says.
        let st = ev.stream_state("c2", &name(3)).await.unwrap().unwrap();
        assert_eq!(st.finished, Some(artifact(3)));
    }

    #[tokio::test]
    async fn of_two_racing_commits_exactly_one_manifest_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let ev = store(dir.path());
        for round in 0..20 {
            let id = format!("race-{round}");
            let s = ev.open(&opened(&id)).await.unwrap();
            let entry = index(&id);
            let (a, b) = tokio::join!(
                ev.commit(&s, b"{\"by\":\"a\"}", &entry),
                ev.commit(&s, b"{\"by\":\"b\"}", &entry),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            assert_ne!(a, b, "round {round}: both {a:?}");
            let stored = ev.read_manifest(&s).await.unwrap();
            let winner: &[u8] = if a == Committed::Stored {
                b"{\"by\":\"a\"}"
            } else {
                b"{\"by\":\"b\"}"
            };
            assert_eq!(stored, winner);
            assert!(ev.state(&id).await.unwrap().unwrap().complete);
        }
    }

    #[tokio::test]
    async fn an_expired_capture_keeps_its_verified_artifacts_and_loses_staging() {
        let dir = tempfile::tempdir().unwrap();
        let ev = store(dir.path());
        let s = ev.open(&opened("old")).await.unwrap();
        let done = ArtifactName::parse("done.bin").unwrap();
        let half = ArtifactName::parse("half.bin").unwrap();
        ev.finish_artifact(&s, &done, 0, Bytes::from_static(b"abc"), &artifact(3))
            .await
            .unwrap();
        ev.record_finished(&s, &done, &artifact(3)).await.unwrap();
        ev.append(&s, &half, 0, Bytes::from_static(b"xy"), &[])
            .await
            .unwrap();

        assert!(ev.expire("old", "2026-01-02T00:00:00Z").await.unwrap());
        let state = ev.state("old").await.unwrap().unwrap();
        assert_eq!(state.expired_at.as_deref(), Some("2026-01-02T00:00:00Z"));
        assert!(!state.complete);
        assert_eq!(state.finished.get("done.bin"), Some(&artifact(3)));
        assert!(dir.path().join("captures/web-1/old/done.bin").is_file());
        assert!(!dir.path().join("staging/old").exists());
        assert!(ev.open_ids(10).await.unwrap().is_empty());
        // Once is enough.
        assert!(!ev.expire("old", "2026-01-03T00:00:00Z").await.unwrap());
    }

    #[tokio::test]
    async fn control_documents_round_trip_and_list_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let ev = store(dir.path());
        let key = |k: &str| DocKey::new(k).unwrap();
        assert!(ev.list_docs(&key("requests")).await.unwrap().is_empty());
        assert_eq!(ev.get_doc(&key("requests/a")).await.unwrap(), None);
        ev.put_doc(&key("requests/b"), b"two").await.unwrap();
        ev.put_doc(&key("requests/a"), b"one").await.unwrap();
        ev.put_doc(&key("requests/a"), b"uno").await.unwrap();
        ev.put_doc(&key("agents/x"), b"agent").await.unwrap();
        assert_eq!(
            ev.list_docs(&key("requests")).await.unwrap(),
            vec![key("requests/a"), key("requests/b")]
        );
        assert_eq!(
            ev.get_doc(&key("requests/a")).await.unwrap().as_deref(),
            Some(&b"uno"[..])
        );
        ev.delete_doc(&key("requests/a")).await.unwrap();
        ev.delete_doc(&key("requests/a")).await.unwrap();
        assert_eq!(
            ev.list_docs(&key("requests")).await.unwrap(),
            vec![key("requests/b")]
        );
        // Control documents never land among captures.
        assert!(dir.path().join("control/agents/x").is_file());
    }
}
