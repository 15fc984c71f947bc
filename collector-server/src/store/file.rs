//! `file://DIR`: the embedded default store's blob layer, a local
//! directory. A key is the path below `DIR` (the layout is the evidence
//! layer's, see [`super::evidence`]).
//!
//! Writes are atomic: a temporary file unique to the write, in `DIR/.tmp`
//! (outside every capture, so a crash never leaves one among a capture's
//! files; emptied when the store opens), made durable, then `rename` over the key, or a
//! hard link for `put_if_absent` (which the kernel refuses when the name
//! exists, so of two creators exactly one wins, across processes too),
//! made durable in turn.
//! `replace_if` compares the SHA-256 of the content read with the one
//! expected under a lock held by this process: one collector process per
//! directory (replicas share an S3 bucket, not a directory).
//!
//! A staged artifact is one file appended and made durable before its
//! bytes are acknowledged; `promote` renames it to its final key, durable
//! before it returns.
//!
//! A record set is one log file, `<set>.log`: `put_record` appends one
//! line (`O_APPEND`, so concurrent appends never interleave) and makes it
//! durable. A line is `<name> <SHA-256 of the record> <record>` and starts
//! with a newline of its own, so that one torn by a crash or a full disk
//! ends before the next and is skipped: its SHA-256 does not match. (A
//! file per record, created and deleted again at commit, was most of the
//! file system's work per artifact.) Records written one file each under
//! `<set>/` by earlier versions are read too.
//!
//! Capture states and record sets are also kept in a bounded read cache
//! ([`super::file_cache`]), which one process per directory makes exact.
//!
//! "Durable" is a group commit ([`GroupSync`]): one `syncfs` of the
//! store's file system, started after the write, shared by every write of
//! every upload that arrived meanwhile. No method returns (and so nothing
//! is acknowledged) before that sync has succeeded.

use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::blob::{Blob, Class, Staged, Version};
use super::file_cache::Shared;
use super::group_sync::GroupSync;
use super::{FinishedArtifact, StoreError};

/// A blob store in a local directory.
#[derive(Debug, Clone)]
pub struct FileBlob {
    root: PathBuf,
    /// Where temporary files are written (same file system as `root`).
    temp: PathBuf,
    replace_lock: Arc<tokio::sync::Mutex<()>>,
    sync: GroupSync,
    /// Capture states read or written lately ([`cached_object`]).
    objects: Shared<Vec<u8>>,
    /// Record sets read or written lately.
    sets: Shared<Records>,
}

/// A record set by record name.
type Records = BTreeMap<String, Vec<u8>>;

/// Largest object the cache holds.
const MAX_CACHED_OBJECT: usize = 16 << 10;

/// Whether `key` is an object the read cache holds: a capture's state,
/// read at the start and the end of every upload stream.
fn cached_object(key: &str) -> bool {
    key.strip_prefix("state/")
        .is_some_and(|rest| !rest.contains('/') && rest.ends_with(".json"))
}

impl FileBlob {
    /// Uses `root`, creating it, and removes temporary files an earlier
    /// process left (one collector process per directory).
    ///
    /// # Errors
    /// [`StoreError::Io`] when it cannot be created.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let temp = root.join(".tmp");
        removed(std::fs::remove_dir_all(&temp), &temp)?;
        std::fs::create_dir_all(&temp)
            .map_err(|e| StoreError::io(format!("cannot create {}", temp.display()), e))?;
        Ok(Self {
            root: root.to_path_buf(),
            temp,
            replace_lock: Arc::default(),
            sync: GroupSync::open(root)?,
            objects: Shared::default(),
            sets: Shared::default(),
        })
    }

    /// The directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }
}

fn version_of(bytes: &[u8]) -> Version {
    Version(
        sha2::Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Runs `job` (several file-system calls, std's blocking ones) on tokio's
/// blocking threads as one hand-off: each `tokio::fs` call is a hand-off
/// of its own, and under hundreds of concurrent uploads those thread
/// wake-ups, not the file system, were most of the collector's CPU.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|e| StoreError::io("file store task", std::io::Error::other(e)))?
}

async fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let path = path.to_path_buf();
    blocking(move || match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::io(format!("cannot read {}", path.display()), e)),
    })
    .await
}

fn create_parent_now(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::io(format!("cannot create {}", parent.display()), e))?;
    }
    Ok(())
}

/// Runs `op`, which creates `path`; when it finds `path`'s directory
/// missing, creates the directory and runs it again (one call where the
/// directory exists, which is nearly always).
fn with_parent<T>(path: &Path, mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    match op() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            op()
        }
        other => other,
    }
}

/// Writes `bytes` to a temporary file in `temp` (not yet durable);
/// returns the temporary file's path.
fn write_temp_now(temp: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    let tmp = temp.join(format!("{}.tmp", uuid::Uuid::now_v7().simple()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::io(format!("cannot write {}", tmp.display()), e));
    }
    Ok(tmp)
}

/// Writes `bytes` to a temporary file in `temp`, durable; returns the
/// temporary file's path.
async fn write_temp(sync: &GroupSync, temp: &Path, bytes: Vec<u8>) -> Result<PathBuf, StoreError> {
    let temp = temp.to_path_buf();
    let tmp = blocking(move || write_temp_now(&temp, &bytes)).await?;
    if let Err(e) = sync.durable().await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    Ok(tmp)
}

/// Replaces `path` atomically (durable temporary file, rename, durable).
async fn replace(
    sync: &GroupSync,
    temp: &Path,
    path: &Path,
    bytes: Vec<u8>,
) -> Result<(), StoreError> {
    let tmp = write_temp(sync, temp, bytes).await?;
    let target = path.to_path_buf();
    blocking(move || {
        with_parent(&target, || std::fs::rename(&tmp, &target)).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            StoreError::io(format!("cannot rename to {}", target.display()), e)
        })
    })
    .await?;
    sync.durable().await
}

/// Appends `data` to the staged file at `offset`, which must be its
/// length (not yet durable).
fn append_now(file: &Path, name: String, offset: u64, data: &[u8]) -> Result<(), StoreError> {
    let ctx = |what: &str| format!("cannot {what} {}", file.display());
    let mut f = with_parent(file, || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
    })
    .map_err(|e| StoreError::io(ctx("open"), e))?;
    let have = f
        .metadata()
        .map_err(|e| StoreError::io(ctx("stat"), e))?
        .len();
    if have != offset {
        return Err(StoreError::Offset {
            name,
            durable: have,
            given: offset,
        });
    }
    if let Err(e) = f.write_all(data) {
        cut_back(&f, file, offset);
        return Err(StoreError::io(ctx("append to"), e));
    }
    Ok(())
}

/// The result of removing `path`, one already gone counting as removed.
fn removed(result: std::io::Result<()>, path: &Path) -> Result<(), StoreError> {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::io(
            format!("cannot remove {}", path.display()),
            e,
        )),
        _ => Ok(()),
    }
}

/// Cuts a staged file back to `offset` after a failed append (part of the
/// bytes may be in it: a full disk), so its length stays what was
/// acknowledged.
fn cut_back(f: &std::fs::File, path: &Path, offset: u64) {
    if let Err(cut) = f.set_len(offset) {
        tracing::warn!(path = %path.display(), error = %cut, "Cannot cut an append that failed");
    }
}

/// The log file of record set `set` (see the module docs).
fn log_path(set: &Path) -> PathBuf {
    let mut name = set.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// One log line of `record` named `name` (with its leading newline).
fn log_line(name: &str, record: &[u8]) -> Result<Vec<u8>, StoreError> {
    if name.is_empty() || name.bytes().any(|b| b == b' ' || b == b'\n') || record.contains(&b'\n') {
        return Err(StoreError::Backend {
            context: name.to_owned(),
            message: "a record name has no space or newline, a record no newline".into(),
        });
    }
    let digest = version_of(record).0;
    let mut line = Vec::with_capacity(name.len() + digest.len() + record.len() + 3);
    line.push(b'\n');
    line.extend_from_slice(name.as_bytes());
    line.push(b' ');
    line.extend_from_slice(digest.as_bytes());
    line.push(b' ');
    line.extend_from_slice(record);
    line.push(b'\n');
    Ok(line)
}

/// The intact records of a log, in the order written, as (name, record);
/// torn lines are skipped.
fn log_records(log: &[u8]) -> Vec<(&str, &[u8])> {
    log.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| {
            let mut parts = line.splitn(3, |b| *b == b' ');
            let name = std::str::from_utf8(parts.next()?).ok()?;
            let digest = parts.next()?;
            let record = parts.next()?;
            if version_of(record).0.as_bytes() == digest {
                Some((name, record))
            } else {
                tracing::warn!(record = name, "Skipped a torn record line");
                None
            }
        })
        .collect()
}

/// Every record of set `set`, by name (the last of each): its log's, then
/// those of an earlier version's record files (read only if the log has
/// none of that name).
fn read_records_now(set: &Path) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    let mut out = BTreeMap::new();
    let log = log_path(set);
    match std::fs::read(&log) {
        Ok(bytes) => {
            for (name, record) in log_records(&bytes) {
                out.insert(name.to_owned(), record.to_vec());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(format!("cannot read {}", log.display()), e)),
    }
    let dir = match std::fs::read_dir(set) {
        Ok(dir) => dir,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io(format!("cannot list {}", set.display()), e)),
    };
    for entry in dir {
        let entry =
            entry.map_err(|e| StoreError::io(format!("cannot list {}", set.display()), e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') || out.contains_key(&name) {
            continue;
        }
        match std::fs::read(entry.path()) {
            Ok(bytes) => {
                out.insert(name, bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::io(
                    format!("cannot read {}", entry.path().display()),
                    e,
                ));
            }
        }
    }
    Ok(out)
}

impl FileBlob {
    /// `f` of the records of `set`, from the cache or else the disk.
    async fn with_records<T>(&self, set: &str, f: impl Fn(&Records) -> T) -> Result<T, StoreError> {
        let ticket = match self.sets.get(set, &f) {
            Ok(answer) => return Ok(answer),
            Err(ticket) => ticket,
        };
        let path = self.path(set);
        let records = blocking(move || read_records_now(&path)).await?;
        let answer = f(&records);
        self.sets.fill(set, ticket, records);
        Ok(answer)
    }

    /// Empties the read cache, as after a change behind its back.
    #[cfg(test)]
    pub fn forget_cached(&self) {
        self.objects.forget_all();
        self.sets.forget_all();
    }

    /// Appends `line` to the log file `log`, durable.
    async fn append_record(&self, log: PathBuf, line: Vec<u8>) -> Result<(), StoreError> {
        blocking(move || {
            with_parent(&log, || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
            })
            .and_then(|mut f| f.write_all(&line))
            .map_err(|e| StoreError::io(format!("cannot append to {}", log.display()), e))
        })
        .await?;
        self.sync.durable().await
    }

    /// Creates `key` unless it exists (`false`), durable.
    async fn create(&self, key: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        let path = self.path(key);
        let tmp = write_temp(&self.sync, &self.temp, bytes).await?;
        let target = path.clone();
        let linked = blocking(move || {
            let linked = with_parent(&target, || std::fs::hard_link(&tmp, &target));
            let _ = std::fs::remove_file(&tmp);
            Ok(linked)
        })
        .await?;
        match linked {
            Ok(()) => {
                self.sync.durable().await?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(StoreError::io(
                format!("cannot create {}", path.display()),
                e,
            )),
        }
    }

    /// Runs `write` of object `key`, telling the cache; `cached` is what
    /// the key holds after a write that returned `Ok(true)`.
    async fn write_object(
        &self,
        key: &str,
        cached: Option<Vec<u8>>,
        write: impl Future<Output = Result<bool, StoreError>>,
    ) -> Result<bool, StoreError> {
        if !cached_object(key) {
            return write.await;
        }
        let ticket = self.objects.begin_write(key, false);
        let result = write.await;
        match (&result, cached) {
            (Ok(true), Some(bytes)) if bytes.len() <= MAX_CACHED_OBJECT => {
                self.objects.end_write(key, ticket, |_| Some(bytes));
            }
            _ => self.objects.abandon_write(key, ticket),
        }
        result
    }
}

impl Blob for FileBlob {
    async fn put_record(&self, set: &str, name: &str, record: Vec<u8>) -> Result<(), StoreError> {
        let line = log_line(name, &record)?;
        let log = log_path(&self.path(set));
        let ticket = self.sets.begin_write(set, true);
        let appended = self.append_record(log, line).await;
        if appended.is_ok() {
            let name = name.to_owned();
            self.sets
                .end_write(set, ticket, move |cached: Option<Records>| {
                    cached.map(|mut records| {
                        records.insert(name, record);
                        records
                    })
                });
        } else {
            self.sets.abandon_write(set, ticket);
        }
        appended
    }

    async fn record(&self, set: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_records(set, |r| r.get(name).cloned()).await
    }

    async fn records(&self, set: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        self.with_records(set, |r| r.values().cloned().collect())
            .await
    }

    async fn record_count(&self, set: &str) -> Result<usize, StoreError> {
        self.with_records(set, BTreeMap::len).await
    }

    async fn delete_records(&self, set_key: &str) -> Result<(), StoreError> {
        let ticket = self.sets.begin_write(set_key, false);
        let set = self.path(set_key);
        let deleted = blocking(move || {
            let log = log_path(&set);
            removed(std::fs::remove_file(&log), &log)?;
            removed(std::fs::remove_dir_all(&set), &set)
        })
        .await;
        if deleted.is_ok() {
            self.sets
                .end_write(set_key, ticket, |_| Some(Records::new()));
        } else {
            self.sets.abandon_write(set_key, ticket);
        }
        deleted
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if !cached_object(key) {
            return read_opt(&self.path(key)).await;
        }
        let ticket = match self.objects.get(key, Clone::clone) {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(ticket) => ticket,
        };
        let got = read_opt(&self.path(key)).await?;
        if let Some(bytes) = &got
            && bytes.len() <= MAX_CACHED_OBJECT
        {
            self.objects.fill(key, ticket, bytes.clone());
        }
        Ok(got)
    }

    async fn get_versioned(&self, key: &str) -> Result<Option<(Vec<u8>, Version)>, StoreError> {
        Ok(self.get(key).await?.map(|b| {
            let v = version_of(&b);
            (b, v)
        }))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key);
        tokio::fs::try_exists(&path)
            .await
            .map_err(|e| StoreError::io(format!("cannot stat {}", path.display()), e))
    }

    async fn put(&self, key: &str, bytes: Vec<u8>, _class: Class) -> Result<(), StoreError> {
        let cached = cached_object(key).then(|| bytes.clone());
        let path = self.path(key);
        self.write_object(key, cached, async {
            replace(&self.sync, &self.temp, &path, bytes).await?;
            Ok(true)
        })
        .await?;
        Ok(())
    }

    async fn put_if_absent(
        &self,
        key: &str,
        bytes: Vec<u8>,
        _class: Class,
    ) -> Result<bool, StoreError> {
        let cached = cached_object(key).then(|| bytes.clone());
        self.write_object(key, cached, self.create(key, bytes))
            .await
    }

    async fn replace_if(
        &self,
        key: &str,
        bytes: Vec<u8>,
        expected: &Version,
    ) -> Result<bool, StoreError> {
        let _held = self.replace_lock.lock().await;
        match self.get(key).await? {
            Some(current) if version_of(&current) == *expected => {
                self.put(key, bytes, Class::Control).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let path = self.path(dir);
        let mut entries = match tokio::fs::read_dir(&path).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(format!("cannot list {}", path.display()), e)),
        };
        let mut names = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| StoreError::io(format!("cannot list {}", path.display()), e))?
        {
            // Temporary files of an interrupted write start with `.`.
            if let Some(name) = entry.file_name().to_str()
                && !name.starts_with('.')
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key);
        // Absent afterwards; not cached as such.
        self.write_object(key, None, async {
            removed(tokio::fs::remove_file(&path).await, &path)?;
            Ok(true)
        })
        .await?;
        Ok(())
    }

    async fn delete_tree(&self, dir: &str) -> Result<(), StoreError> {
        let path = self.path(dir);
        let result = removed(tokio::fs::remove_dir_all(&path).await, &path);
        // Whatever the caches hold under it goes (their keys are all under
        // `state/`), once it is gone: a read that went to the disk before
        // cannot fill them with what was removed.
        if dir.is_empty() || dir == "state" || dir.starts_with("state/") {
            self.objects.forget_all();
            self.sets.forget_all();
        }
        result
    }

    async fn staged(&self, staging: &str, final_key: &str) -> Result<Staged, StoreError> {
        let paths = [self.path(staging), self.path(final_key)];
        let len = blocking(move || {
            for path in paths {
                match std::fs::metadata(&path) {
                    Ok(md) => return Ok(md.len()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(StoreError::io(format!("cannot stat {}", path.display()), e));
                    }
                }
            }
            Ok(0)
        })
        .await?;
        Ok(Staged {
            len,
            saved_state: None,
        })
    }

    async fn staged_read(
        &self,
        staging: &str,
        final_key: &str,
        is_final: bool,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let staged = self.path(staging);
        let path = if !is_final && tokio::fs::try_exists(&staged).await.unwrap_or(false) {
            staged
        } else {
            self.path(final_key)
        };
        let ctx = || format!("cannot read {}", path.display());
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StoreError::io(ctx(), e))?;
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| StoreError::io(ctx(), e))?;
        let mut buf = Vec::with_capacity(usize::try_from(len.min(1 << 24)).unwrap_or(0));
        f.take(len)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| StoreError::io(ctx(), e))?;
        Ok(buf)
    }

    async fn staged_append(
        &self,
        staging: &str,
        _final_key: &str,
        offset: u64,
        data: Bytes,
        _saved_state: &[u8],
    ) -> Result<u64, StoreError> {
        let path = self.path(staging);
        let len = data.len() as u64;
        let (file, name) = (path.clone(), staging.to_owned());
        blocking(move || append_now(&file, name, offset, &data)).await?;
        if let Err(e) = self.sync.durable().await {
            let file = path.clone();
            let _ = blocking(move || {
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&file) {
                    cut_back(&f, &file, offset);
                }
                Ok(())
            })
            .await;
            return Err(e);
        }
        Ok(offset + len)
    }

    async fn promote(
        &self,
        staging_key: &str,
        final_key: &str,
        offset: u64,
        tail: Bytes,
        finished: &FinishedArtifact,
    ) -> Result<(), StoreError> {
        let staging = self.path(staging_key);
        let path = self.path(final_key);
        let (size, name) = (finished.size, staging_key.to_owned());
        // One hand-off and one sync: the sync after the rename covers the
        // tail's bytes too, and nothing is acknowledged before it.
        let moved = blocking(move || {
            let integrity = |message: String| StoreError::Integrity {
                context: path.display().to_string(),
                message,
            };
            if !tail.is_empty() {
                append_now(&staging, name, offset, &tail)?;
            }
            match std::fs::metadata(&staging) {
                Ok(md) if md.len() != size => {
                    return Err(integrity(format!(
                        "{} bytes staged, the artifact has {size}",
                        md.len()
                    )));
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Moved already by an interrupted earlier attempt, or an
                    // empty artifact that never had an append.
                    match std::fs::metadata(&path) {
                        Ok(md) if md.len() == size => return Ok(false),
                        Ok(md) => {
                            return Err(integrity(format!(
                                "{} bytes stored, the artifact has {size}",
                                md.len()
                            )));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && size == 0 => {
                            create_parent_now(&staging)?;
                            std::fs::File::create(&staging).map_err(|e| {
                                StoreError::io(format!("cannot create {}", staging.display()), e)
                            })?;
                        }
                        Err(e) => {
                            return Err(StoreError::io(
                                format!("cannot stat {}", path.display()),
                                e,
                            ));
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
            with_parent(&path, || std::fs::rename(&staging, &path)).map_err(|e| {
                StoreError::io(
                    format!("cannot move {} to {}", staging.display(), path.display()),
                    e,
                )
            })?;
            Ok(true)
        })
        .await?;
        if moved {
            self.sync.durable().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_record_log_keeps_every_record_and_skips_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(dir.path()).unwrap();
        // Concurrent writers never lose or mix one another's records.
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..64 {
            let blob = blob.clone();
            tasks.spawn(async move {
                let record = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i * 97));
                blob.put_record("s/c.finished", &format!("r{i}"), record.into_bytes())
                    .await
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(blob.record_count("s/c.finished").await.unwrap(), 64);
        let r7 = blob.record("s/c.finished", "r7").await.unwrap().unwrap();
        assert!(
            r7.starts_with(b"{\"n\":7,"),
            "{}",
            String::from_utf8_lossy(&r7)
        );
        // A later record of a name wins.
        blob.put_record("s/c.finished", "r7", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(
            blob.record("s/c.finished", "r7").await.unwrap().unwrap(),
            b"{}"
        );
        assert_eq!(blob.record_count("s/c.finished").await.unwrap(), 64);

        // A crash (or a full disk) cut a line short; the next record
        // after it is intact, the torn one is not there.
        let log = dir.path().join("s/c.finished.log");
        let torn = log_line("torn", b"{\"whole\":true}").unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&torn[..torn.len() - 5]).unwrap();
        blob.put_record("s/c.finished", "after", b"[1]".to_vec())
            .await
            .unwrap();
        assert_eq!(blob.record("s/c.finished", "torn").await.unwrap(), None);
        assert_eq!(
            blob.record("s/c.finished", "after").await.unwrap().unwrap(),
            b"[1]"
        );
        assert_eq!(blob.records("s/c.finished").await.unwrap().len(), 65);
        // Nothing that could break a line is taken.
        assert!(
            blob.put_record("s/c.finished", "a b", b"{}".to_vec())
                .await
                .is_err()
        );
        assert!(
            blob.put_record("s/c.finished", "n", b"{\n}".to_vec())
                .await
                .is_err()
        );

        // A record file of the layout before logs is read too, and
        // removed with the set (written behind the cache's back, as by
        // the collector before an upgrade).
        std::fs::create_dir_all(dir.path().join("s/c.finished")).unwrap();
        std::fs::write(dir.path().join("s/c.finished/old.json"), b"{\"old\":1}").unwrap();
        blob.forget_cached();
        assert_eq!(
            blob.record("s/c.finished", "old.json")
                .await
                .unwrap()
                .unwrap(),
            b"{\"old\":1}"
        );
        assert_eq!(blob.record_count("s/c.finished").await.unwrap(), 66);
        blob.delete_records("s/c.finished").await.unwrap();
        assert!(!log.exists());
        assert!(!dir.path().join("s/c.finished").exists());
        assert_eq!(blob.record_count("s/c.finished").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_failed_append_is_an_error_and_never_served_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(dir.path()).unwrap();
        blob.put_record("s/c.finished", "a", b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!(blob.record_count("s/c.finished").await.unwrap(), 1);
        // The log cannot be appended to (a directory took its name).
        let log = dir.path().join("s/c.finished.log");
        std::fs::remove_file(&log).unwrap();
        std::fs::create_dir(&log).unwrap();
        let err = blob
            .put_record("s/c.finished", "b", b"{}".to_vec())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("cannot append"), "{err}");
        // The cached set is dropped, not served with or without `b`: the
        // next read goes to the disk (and says what is wrong there).
        assert!(blob.record("s/c.finished", "b").await.is_err());
        std::fs::remove_dir(&log).unwrap();
        assert_eq!(blob.record("s/c.finished", "b").await.unwrap(), None);
        assert_eq!(blob.record_count("s/c.finished").await.unwrap(), 0);
    }

    #[tokio::test]
    async fn create_once_and_replace_only_the_version_read() {
        let dir = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(dir.path()).unwrap();
        assert!(
            blob.put_if_absent("a/b", b"1".to_vec(), Class::Control)
                .await
                .unwrap()
        );
        assert!(
            !blob
                .put_if_absent("a/b", b"2".to_vec(), Class::Control)
                .await
                .unwrap()
        );
        let (bytes, v) = blob.get_versioned("a/b").await.unwrap().unwrap();
        assert_eq!(bytes, b"1");
        assert!(blob.replace_if("a/b", b"3".to_vec(), &v).await.unwrap());
        assert!(!blob.replace_if("a/b", b"4".to_vec(), &v).await.unwrap());
        assert!(!blob.replace_if("a/none", b"4".to_vec(), &v).await.unwrap());
        assert_eq!(blob.get("a/b").await.unwrap().unwrap(), b"3");
        // No temporary file is left, and none is listed.
        assert_eq!(blob.list("a").await.unwrap(), vec!["b".to_owned()]);
        assert_eq!(std::fs::read_dir(dir.path().join("a")).unwrap().count(), 1);
    }
}
