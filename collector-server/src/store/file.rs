//! `file://DIR`: the embedded default store.
//!
//! ```text
//! DIR/captures/<agent identity>/<capture-id>/<artifacts>     finished, verified artifacts
//! DIR/captures/<agent identity>/<capture-id>/manifest.json   written on commit
//! DIR/staging/<capture-id>/<artifact>                        bytes of an artifact still arriving
//! DIR/state/<capture-id>.json                                owner and verified artifacts
//! DIR/state/<capture-id>.finished.jsonl                      artifacts verified since, one line each
//! DIR/index/<capture-id>.json                                one line per committed capture
//! DIR/control/<doc key>                                      control documents (requests, agents)
//! ```
//!
//! Appends go to the artifact's staging file and are followed by
//! `fdatasync` before they are acknowledged. A verified artifact is renamed
//! into the capture directory (and that directory synced), so a capture
//! directory only ever holds finished artifacts and the manifest: bytes of
//! an upload that never finished cannot appear in a committed capture.
//! A finished artifact is one appended, synced line of the capture's
//! `.finished.jsonl` (O(1), however many artifacts came before); reading a
//! state merges those lines, skipping a torn last line, and the commit
//! folds them into the state file. State, index and manifest files are
//! replaced atomically (write a hidden
//! temporary file, sync, rename); temporary names start with `.`, which no
//! artifact name may.
//!
//! Commit order: manifest, index, then state. The manifest is what makes a
//! capture complete; a crash after it leaves an index entry or a state to
//! finish, never a complete capture that `list` does not show (and
//! [`super::repair`] finishes such commits at start).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use ircap_proto::ArtifactName;
use ircap_proto::artifact_name::MANIFEST_FILE;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{CaptureState, DocKey, FinishedArtifact, IndexEntry, Store, StoreError};

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
        for sub in ["captures", "staging", "state", "index", "control"] {
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

    fn finished_log(&self, capture_id: &str) -> PathBuf {
        self.root
            .join("state")
            .join(format!("{capture_id}.finished.jsonl"))
    }

    /// Adds the artifacts of the capture's finished log to `state`.
    async fn merge_finished(&self, state: &mut CaptureState) -> Result<(), StoreError> {
        let path = self.finished_log(&state.capture_id);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(format!("cannot read {}", path.display()), e)),
        };
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<FinishedLine>(line) {
                Ok(l) => {
                    state.finished.insert(l.name, l.finished);
                }
                // A line cut short by a crash: that artifact was never
                // acknowledged as finished.
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "Skipped a torn line"),
            }
        }
        Ok(())
    }

    fn index_path(&self, capture_id: &str) -> PathBuf {
        self.root.join("index").join(format!("{capture_id}.json"))
    }

    /// Where the bytes of an unfinished artifact accumulate.
    fn staging_path(&self, state: &CaptureState, name: &ArtifactName) -> PathBuf {
        name.path_in(&self.root.join("staging").join(&state.capture_id))
    }

    /// The staging file of `name` if there is one, else its final file.
    async fn current_path(&self, state: &CaptureState, name: &ArtifactName) -> PathBuf {
        let staging = self.staging_path(state, name);
        if tokio::fs::try_exists(&staging).await.unwrap_or(false) {
            staging
        } else {
            name.path_in(&self.capture_dir(state))
        }
    }
}

/// One line of a capture's finished log.
#[derive(serde::Serialize, serde::Deserialize)]
struct FinishedLine {
    name: String,
    #[serde(flatten)]
    finished: FinishedArtifact,
}

/// Syncs a directory, so that a rename into it is durable.
async fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let ctx = || format!("cannot sync directory {}", dir.display());
    tokio::fs::File::open(dir)
        .await
        .map_err(|e| StoreError::io(ctx(), e))?
        .sync_all()
        .await
        .map_err(|e| StoreError::io(ctx(), e))
}

/// Writes `bytes` to `path` atomically: a hidden temporary file unique to
/// this write (no key or artifact name starts with `.`, and concurrent
/// writers never share it), fsync, rename.
async fn replace(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.unwrap_or_default(),
        uuid::Uuid::now_v7().simple()
    ));
    let ctx = |what: &str| format!("cannot {what} {}", path.display());
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| StoreError::io(ctx("create"), e))?;
    f.write_all(bytes)
        .await
        .map_err(|e| StoreError::io(ctx("write"), e))?;
    f.sync_all()
        .await
        .map_err(|e| StoreError::io(ctx("sync"), e))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| StoreError::io(ctx("rename"), e))
}

impl Store for FileStore {
    async fn state(&self, capture_id: &str) -> Result<Option<CaptureState>, StoreError> {
        let path = self.state_path(capture_id);
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let mut state: CaptureState =
                    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                        context: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                self.merge_finished(&mut state).await?;
                Ok(Some(state))
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
        let path = self.current_path(state, name).await;
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
        let path = self.current_path(state, name).await;
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
        let path = self.staging_path(state, name);
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

    async fn record_finished(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        let path = self.finished_log(&state.capture_id);
        let ctx = |what: &str| format!("cannot {what} {}", path.display());
        let mut line = serde_json::to_vec(&FinishedLine {
            name: name.to_string(),
            finished: finished.clone(),
        })
        .map_err(|e| StoreError::Corrupt {
            context: path.display().to_string(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| StoreError::io(ctx("open"), e))?;
        f.write_all(&line)
            .await
            .map_err(|e| StoreError::io(ctx("append to"), e))?;
        f.sync_data()
            .await
            .map_err(|e| StoreError::io(ctx("sync"), e))
    }

    async fn finish_artifact(
        &self,
        state: &CaptureState,
        name: &ArtifactName,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        let staging = self.staging_path(state, name);
        let path = name.path_in(&self.capture_dir(state));
        let integrity = |message: String| StoreError::Integrity {
            context: path.display().to_string(),
            message,
        };
        match tokio::fs::metadata(&staging).await {
            Ok(md) if md.len() != finished.size => {
                return Err(integrity(format!(
                    "{} bytes staged, the artifact has {}",
                    md.len(),
                    finished.size
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Moved already by an interrupted earlier attempt, or an
                // empty artifact that never had an append.
                match tokio::fs::metadata(&path).await {
                    Ok(md) if md.len() == finished.size => return Ok(()),
                    Ok(md) => {
                        return Err(integrity(format!(
                            "{} bytes stored, the artifact has {}",
                            md.len(),
                            finished.size
                        )));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && finished.size == 0 => {
                        if let Some(parent) = staging.parent() {
                            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                                StoreError::io(format!("cannot create {}", parent.display()), e)
                            })?;
                        }
                        tokio::fs::File::create(&staging).await.map_err(|e| {
                            StoreError::io(format!("cannot create {}", staging.display()), e)
                        })?;
                    }
                    Err(e) => {
                        return Err(StoreError::io(format!("cannot stat {}", path.display()), e));
                    }
                }
            }
            Err(e) => {
                return Err(StoreError::io(
                    format!("cannot stat {}", staging.display()),
                    e,
                ));
            }
        }
        let parent = path.parent().unwrap_or(&path).to_path_buf();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| StoreError::io(format!("cannot create {}", parent.display()), e))?;
        tokio::fs::rename(&staging, &path).await.map_err(|e| {
            StoreError::io(
                format!("cannot move {} to {}", staging.display(), path.display()),
                e,
            )
        })?;
        sync_dir(&parent).await
    }

    async fn commit(
        &self,
        state: &CaptureState,
        manifest_json: &[u8],
        index: &IndexEntry,
    ) -> Result<(), StoreError> {
        let dir = self.capture_dir(state);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io(format!("cannot create {}", dir.display()), e))?;
        replace(&dir.join(MANIFEST_FILE), manifest_json).await?;
        let bytes = serde_json::to_vec(index).map_err(|e| StoreError::Corrupt {
            context: state.capture_id.clone(),
            message: e.to_string(),
        })?;
        replace(&self.index_path(&state.capture_id), &bytes).await?;
        let mut done = state.clone();
        done.complete = true;
        self.merge_finished(&mut done).await?;
        self.save_state(&done).await?;
        // Folded into the state file now.
        let log = self.finished_log(&state.capture_id);
        if let Err(e) = tokio::fs::remove_file(&log).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %log.display(), error = %e, "Cannot remove the finished log");
        }
        // Bytes of artifacts that never finished are not evidence.
        let staging = self.root.join("staging").join(&state.capture_id);
        if let Err(e) = tokio::fs::remove_dir_all(&staging).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %staging.display(), error = %e, "Cannot remove staging files");
        }
        Ok(())
    }

    async fn find_manifest(&self, state: &CaptureState) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.capture_dir(state).join(MANIFEST_FILE);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(format!("cannot read {}", path.display()), e)),
        }
    }

    async fn has_index(&self, capture_id: &str) -> Result<bool, StoreError> {
        let path = self.index_path(capture_id);
        tokio::fs::try_exists(&path)
            .await
            .map_err(|e| StoreError::io(format!("cannot stat {}", path.display()), e))
    }

    async fn list_index(&self) -> Result<Vec<IndexEntry>, StoreError> {
        read_json_dir(&self.root.join("index")).await
    }

    async fn list_states(&self) -> Result<Vec<CaptureState>, StoreError> {
        let mut states: Vec<CaptureState> = read_json_dir(&self.root.join("state")).await?;
        for s in states.iter_mut().filter(|s| !s.complete) {
            self.merge_finished(s).await?;
        }
        Ok(states)
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
        replace(&path, bytes).await
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
