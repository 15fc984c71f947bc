//! The store `serve` runs on, picked from the `--store` URL at start-up
//! (the [`Store`] trait is not object safe, so an enum rather than a box).

use ircap_proto::ArtifactName;

use super::file::FileStore;
use super::s3::S3Store;
use super::{CaptureState, DocKey, FinishedArtifact, IndexEntry, Store, StoreError};

/// `file://DIR` or `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// A local directory.
    File(FileStore),
    /// An S3 bucket.
    S3(S3Store),
}

/// Calls the same method on whichever backend this is.
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            AnyStore::File($s) => $call.await,
            AnyStore::S3($s) => $call.await,
        }
    };
}

impl Store for AnyStore {
    fn part_size(&self) -> usize {
        match self {
            Self::File(s) => s.part_size(),
            Self::S3(s) => s.part_size(),
        }
    }

    async fn record_finished(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.record_finished(state, name, finished))
    }

    async fn find_manifest(&self, state: &CaptureState) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.find_manifest(state))
    }

    async fn has_index(&self, capture_id: &str) -> Result<bool, StoreError> {
        delegate!(self, s => s.has_index(capture_id))
    }

    async fn state(&self, capture_id: &str) -> Result<Option<CaptureState>, StoreError> {
        delegate!(self, s => s.state(capture_id))
    }

    async fn save_state(&self, state: &CaptureState) -> Result<(), StoreError> {
        delegate!(self, s => s.save_state(state))
    }

    async fn durable_len(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
    ) -> Result<u64, StoreError> {
        delegate!(self, s => s.durable_len(state, name))
    }

    async fn read_range(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        delegate!(self, s => s.read_range(state, name, offset, len))
    }

    async fn append(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, StoreError> {
        delegate!(self, s => s.append(state, name, offset, data))
    }

    async fn finish_artifact(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.finish_artifact(state, name, finished))
    }

    async fn commit(
        &self,
        state: &CaptureState,
        manifest_json: &[u8],
        index: &IndexEntry,
    ) -> Result<(), StoreError> {
        delegate!(self, s => s.commit(state, manifest_json, index))
    }

    async fn list_index(&self) -> Result<Vec<IndexEntry>, StoreError> {
        delegate!(self, s => s.list_index())
    }

    async fn list_states(&self) -> Result<Vec<CaptureState>, StoreError> {
        delegate!(self, s => s.list_states())
    }

    async fn read_manifest(&self, state: &CaptureState) -> Result<Vec<u8>, StoreError> {
        delegate!(self, s => s.read_manifest(state))
    }

    async fn put_doc(&self, key: &DocKey, bytes: &[u8]) -> Result<(), StoreError> {
        delegate!(self, s => s.put_doc(key, bytes))
    }

    async fn get_doc(&self, key: &DocKey) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, s => s.get_doc(key))
    }

    async fn list_docs(&self, prefix: &DocKey) -> Result<Vec<DocKey>, StoreError> {
        delegate!(self, s => s.list_docs(prefix))
    }

    async fn delete_doc(&self, key: &DocKey) -> Result<(), StoreError> {
        delegate!(self, s => s.delete_doc(key))
    }
}
