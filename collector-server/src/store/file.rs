//! `file://DIR`: the embedded default store.
//!
//! ```text
//! DIR/captures/<agent identity>/<capture-id>/<artifacts>     evidence
//! DIR/captures/<agent identity>/<capture-id>/manifest.json   written last, on commit
//! DIR/state/<capture-id>.json                                owner and verified artifacts
//! DIR/index/<capture-id>.json                                one line per committed capture
//! DIR/control/<doc key>                                      control documents (requests, agents)
//! ```
//!
//! Appends are followed by `fdatasync` before they are acknowledged; state
//! and manifest files are replaced atomically (write, sync, rename).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use ircap_proto::ArtifactName;
use ircap_proto::artifact_name::MANIFEST_FILE;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{CaptureState, DocKey, IndexEntry, Store, StoreError};

/// A store in a local directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    /// Uses `root`, creating its directories.
    ///
    /// # Errors
    /// [`StoreError::Io`] when they cannot be created.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["captures", "state", "index", "control"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), e))?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Directory of one capture.
    #[must_use]
    pub fn capture_dir(&self, state: &CaptureState) -> PathBuf {
        self.root
            .join("captures")
            .join(&state.owner)
            .join(&state.capture_id)
    }

    fn doc_path(&self, key: &DocKey) -> PathBuf {
        self.root.join("control").join(key.as_str())
    }

    fn state_path(&self, capture_id: &str) -> PathBuf {
        self.root.join("state").join(format!("{capture_id}.json"))
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
async fn replace(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    replace_via(&path.with_extension("tmp"), path, bytes).await
}

/// [`replace`] through a given temporary file.
async fn replace_via(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let ctx = |what: &str| format!("cannot {what} {}", path.display());
    let mut f = tokio::fs::File::create(tmp)
        .await
        .map_err(|e| StoreError::io(ctx("create"), e))?;
    f.write_all(bytes)
        .await
        .map_err(|e| StoreError::io(ctx("write"), e))?;
    f.sync_all()
        .await
        .map_err(|e| StoreError::io(ctx("sync"), e))?;
    tokio::fs::rename(tmp, path)
        .await
        .map_err(|e| StoreError::io(ctx("rename"), e))
}

impl Store for FileStore {
    async fn state(&self, capture_id: &str) -> Result<Option<CaptureState>, StoreError> {
        let path = self.state_path(capture_id);
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt {
                        context: path.display().to_string(),
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    async fn save_state(&self, state: &CaptureState) -> Result<(), StoreError> {
        let dir = self.capture_dir(state);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), e))?;
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Corrupt {
            context: state.capture_id.clone(),
            message: e.to_string(),
        })?;
        replace(&self.state_path(&state.capture_id), &bytes).await
    }

    async fn durable_len(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
    ) -> Result<u64, StoreError> {
        let path = name.path_in(&self.capture_dir(state));
        match tokio::fs::metadata(&path).await {
            Ok(md) => Ok(md.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(StoreError::io(format!("cannot stat {}", path.display()), e)),
        }
    }

    async fn read_range(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let path = name.path_in(&self.capture_dir(state));
        let ctx = || format!("cannot read {}", path.display());
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StoreError::io(ctx(), e))?;
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| StoreError::io(ctx(), e))?;
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        f.take(len)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| StoreError::io(ctx(), e))?;
        Ok(buf)
    }

    async fn append(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        offset: u64,
        data: &[u8],
    ) -> Result<u64, StoreError> {
        let path = name.path_in(&self.capture_dir(state));
        let ctx = |what: &str| format!("cannot {what} {}", path.display());
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io(ctx("create directory for"), e))?;
        }
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| StoreError::io(ctx("open"), e))?;
        let len = f
            .metadata()
            .await
            .map_err(|e| StoreError::io(ctx("stat"), e))?
            .len();
        if len != offset {
            return Err(StoreError::Offset {
                name: name.to_string(),
                durable: len,
                given: offset,
            });
        }
        f.write_all(data)
            .await
            .map_err(|e| StoreError::io(ctx("append to"), e))?;
        f.sync_data()
            .await
            .map_err(|e| StoreError::io(ctx("sync"), e))?;
        Ok(offset + data.len() as u64)
    }

    async fn commit(
        &self,
        state: &CaptureState,
        manifest_json: &[u8],
        index: &IndexEntry,
    ) -> Result<(), StoreError> {
        let dir = self.capture_dir(state);
        replace(&dir.join(MANIFEST_FILE), manifest_json).await?;
        let mut done = state.clone();
        done.complete = true;
        self.save_state(&done).await?;
        let bytes = serde_json::to_vec(index).map_err(|e| StoreError::Corrupt {
            context: state.capture_id.clone(),
            message: e.to_string(),
        })?;
        replace(
            &self
                .root
                .join("index")
                .join(format!("{}.json", state.capture_id)),
            &bytes,
        )
        .await
    }

    async fn list_index(&self) -> Result<Vec<IndexEntry>, StoreError> {
        read_json_dir(&self.root.join("index")).await
    }

    async fn list_states(&self) -> Result<Vec<CaptureState>, StoreError> {
        read_json_dir(&self.root.join("state")).await
    }

    async fn read_manifest(&self, state: &CaptureState) -> Result<Vec<u8>, StoreError> {
        let path = self.capture_dir(state).join(MANIFEST_FILE);
        tokio::fs::read(&path)
            .await
            .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))
    }

    async fn put_doc(&self, key: &DocKey, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.doc_path(key);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::io(format!("cannot create {}", parent.display()), e))?;
        }
        // A hidden temporary name no key can have (keys never start with
        // `.`), unique per write so that concurrent writers never share it.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            name.unwrap_or_default(),
            uuid::Uuid::now_v7().simple()
        ));
        replace_via(&tmp, &path, bytes).await
    }

    async fn get_doc(&self, key: &DocKey) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.doc_path(key);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    async fn list_docs(&self, prefix: &DocKey) -> Result<Vec<DocKey>, StoreError> {
        let dir = self.doc_path(prefix);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(format!("cannot list {}", dir.display()), e)),
        };
        let mut keys = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| StoreError::io(format!("cannot list {}", dir.display()), e))?
        {
            let name = entry.file_name();
            // Temporary files of an interrupted write start with `.` and so
            // are not valid keys.
            let Some(name) = name.to_str() else {
                continue;
            };
            if let Ok(key) = DocKey::new(format!("{prefix}/{name}")) {
                keys.push(key);
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete_doc(&self, key: &DocKey) -> Result<(), StoreError> {
        let path = self.doc_path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(
                format!("cannot remove {}", path.display()),
                e,
            )),
        }
    }
}

/// Parses every `*.json` file of a directory (one small record each), on
/// one blocking thread: a thread hop per file would dominate at 100,000
/// captures.
async fn read_json_dir<T>(dir: &Path) -> Result<Vec<T>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || read_json_dir_blocking(&dir))
        .await
        .map_err(|e| StoreError::Corrupt {
            context: "index listing".into(),
            message: e.to_string(),
        })?
}

fn read_json_dir_blocking<T: serde::de::DeserializeOwned>(
    dir: &Path,
) -> Result<Vec<T>, StoreError> {
    let ctx = || format!("cannot list {}", dir.display());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(ctx(), e))? {
        let path = entry.map_err(|e| StoreError::io(ctx(), e))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| StoreError::io(format!("cannot read {}", path.display()), e))?;
        out.push(
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                context: path.display().to_string(),
                message: e.to_string(),
            })?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test]
    async fn control_documents_round_trip_and_list_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let key = |k: &str| DocKey::new(k).unwrap();
        assert!(store.list_docs(&key("requests")).await.unwrap().is_empty());
        assert_eq!(store.get_doc(&key("requests/a")).await.unwrap(), None);
        store.put_doc(&key("requests/b"), b"two").await.unwrap();
        store.put_doc(&key("requests/a"), b"one").await.unwrap();
        store.put_doc(&key("requests/a"), b"uno").await.unwrap();
        store.put_doc(&key("agents/x"), b"agent").await.unwrap();
        assert_eq!(
            store.list_docs(&key("requests")).await.unwrap(),
            vec![key("requests/a"), key("requests/b")]
        );
        assert_eq!(
            store.get_doc(&key("requests/a")).await.unwrap().as_deref(),
            Some(&b"uno"[..])
        );
        store.delete_doc(&key("requests/a")).await.unwrap();
        store.delete_doc(&key("requests/a")).await.unwrap();
        assert_eq!(
            store.list_docs(&key("requests")).await.unwrap(),
            vec![key("requests/b")]
        );
        // Control documents never land among captures.
        assert!(dir.path().join("control/agents/x").is_file());
    }
}
