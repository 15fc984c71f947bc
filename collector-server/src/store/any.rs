//! The blob layer `serve` runs on, picked from the `--store` URL at
//! start-up (the [`Blob`] trait is not object safe, so an enum rather
//! than a box).

use bytes::Bytes;

use super::blob::{Blob, Class, Staged, Version};
use super::file::FileBlob;
use super::s3::S3Blob;
use super::{FinishedArtifact, StoreError};

/// `file://DIR` or `s3://BUCKET/PREFIX`.
#[derive(Debug, Clone)]
pub enum AnyBlob {
    /// A local directory.
    File(FileBlob),
    /// An S3 bucket.
    S3(S3Blob),
}

/// Calls the same method on whichever backend this is.
macro_rules! delegate {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBlob::File($b) => $call.await,
            AnyBlob::S3($b) => $call.await,
        }
    };
}

impl Blob for AnyBlob {
    fn part_size(&self) -> usize {
        match self {
            Self::File(b) => b.part_size(),
            Self::S3(b) => b.part_size(),
        }
    }

    async fn put_record(&self, set: &str, name: &str, record: Vec<u8>) -> Result<(), StoreError> {
        delegate!(self, b => b.put_record(set, name, record))
    }

    async fn record(&self, set: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, b => b.record(set, name))
    }

    async fn records(&self, set: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        delegate!(self, b => b.records(set))
    }

    async fn record_count(&self, set: &str) -> Result<usize, StoreError> {
        delegate!(self, b => b.record_count(set))
    }

    async fn delete_records(&self, set: &str) -> Result<(), StoreError> {
        delegate!(self, b => b.delete_records(set))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        delegate!(self, b => b.get(key))
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        delegate!(self, b => b.get_versioned(key))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        delegate!(self, b => b.exists(key))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, class: Class) -> Result<(), StoreError> {
        delegate!(self, b => b.put(key, bytes, class))
    }

    async fn put_if_absent(
        &self,
        key: &str,
        bytes: Vec<u8>,
        class: Class,
    ) -> Result<bool, StoreError> {
        delegate!(self, b => b.put_if_absent(key, bytes, class))
    }

    async fn replace_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: &Version,
    ) -> Result<bool, StoreError> {
        delegate!(self, b => b.replace_if(key, bytes, expected))
    }

    async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        delegate!(self, b => b.list(dir))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        delegate!(self, b => b.delete(key))
    }

    async fn delete_tree(&self, dir: &str) -> Result<(), StoreError> {
        delegate!(self, b => b.delete_tree(dir))
    }

    async fn staged(&self, staging: &str, final_key: &str) -> Result<Staged, StoreError> {
        delegate!(self, b => b.staged(staging, final_key))
    }

    async fn staged_read(
        &self,
        staging: &str,
        final_key: &str,
        is_final: bool,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        delegate!(self, b => b.staged_read(staging, final_key, is_final, offset, len))
    }

    async fn staged_append(
        &self,
        staging: &str,
        final_key: &str,
        offset: u64,
        data: Bytes,
        saved_state: &[u8],
    ) -> Result<u64, StoreError> {
        delegate!(self, b => b.staged_append(staging, final_key, offset, data, saved_state))
    }

    async fn promote(
        &self,
        staging: &str,
        final_key: &str,
        offset: u64,
        tail: Bytes,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        delegate!(self, b => b.promote(staging, final_key, offset, tail, finished))
    }
}
