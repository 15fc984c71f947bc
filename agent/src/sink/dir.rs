//! The embedded default sink: a local directory.
//!
//! Artifacts go to `<root>/.<capture-id>.partial/`; `commit` writes
//! `manifest.json` there, syncs, and renames the directory to
//! `<root>/<capture-id>` in one step, so a capture directory without the
//! dot is always complete. `abort` deletes the partial directory.
//!
//! An artifact that could not be written (the disk filled up) deletes its
//! file when it is dropped unfinished, and `commit` deletes any file it
//! created that the manifest does not list, so what is committed always
//! verifies.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ircap_proto::artifact_name::MANIFEST_FILE;
use ircap_proto::manifest::Encoding;
use ircap_proto::{ArtifactName, Digest, Manifest};

use super::{ArtifactOut, CaptureSink, SinkError};

/// Writes one capture below a root directory.
pub struct DirSink {
    root: PathBuf,
    partial: PathBuf,
    final_dir: PathBuf,
    files: Mutex<Files>,
}

/// Files created.
#[derive(Default)]
struct Files {
    created: Vec<(ArtifactName, PathBuf)>,
}

fn files(f: &Mutex<Files>) -> std::sync::MutexGuard<'_, Files> {
    f.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DirSink {
    /// Prepares `<root>/.<capture_id>.partial`, creating `root` if needed.
    ///
    /// # Errors
    /// [`SinkError`] when the directories cannot be created (read-only file
    /// system, not a directory, permission) or the capture already exists.
    pub fn create(root: &Path, capture_id: &str) -> Result<Self, SinkError> {
        fs::create_dir_all(root).map_err(|e| {
            SinkError::io(
                format!("cannot create output directory {}", root.display()),
                e,
            )
        })?;
        let partial = root.join(format!(".{capture_id}.partial"));
        let final_dir = root.join(capture_id);
        if final_dir.exists() {
            return Err(SinkError::io(
                format!("capture directory {} already exists", final_dir.display()),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        fs::create_dir(&partial).map_err(|e| {
            SinkError::io(
                format!("cannot create capture directory {}", partial.display()),
                e,
            )
        })?;
        Ok(Self {
            root: root.to_path_buf(),
            partial,
            final_dir,
            files: Mutex::default(),
        })
    }

    /// Where the finished capture will be.
    #[must_use]
    pub fn final_dir(&self) -> &Path {
        &self.final_dir
    }
}

/// One artifact file; deleted when dropped before it was closed (a write
/// failed), so an unfinished artifact never takes space or looks stored.
struct FileOut {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl FileOut {
    fn writer(&mut self) -> io::Result<&mut BufWriter<File>> {
        self.writer
            .as_mut()
            .ok_or_else(|| io::Error::other("artifact already closed"))
    }
}

impl Write for FileOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer()?.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer()?.flush()
    }
}

impl Drop for FileOut {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            remove(&self.path);
        }
    }
}

impl ArtifactOut for FileOut {
    fn close(mut self: Box<Self>, _stored: &Digest, _content: &Digest) -> Result<(), SinkError> {
        let path = self.path.clone();
        let writer = self
            .writer()
            .map_err(|e| SinkError::io(format!("cannot write {}", path.display()), e))?;
        writer
            .flush()
            .and_then(|()| writer.get_ref().sync_all())
            .map_err(|e| SinkError::io(format!("cannot write {}", path.display()), e))?;
        // Closed: kept when dropped.
        self.writer = None;
        Ok(())
    }
}

fn sync_dir(path: &Path) -> Result<(), SinkError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| SinkError::io(format!("cannot sync directory {}", path.display()), e))
}

impl CaptureSink for DirSink {
    fn create(
        &self,
        name: &ArtifactName,
        _encoding: Encoding,
    ) -> Result<Box<dyn ArtifactOut>, SinkError> {
        let path = name.path_in(&self.partial);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .map_err(|e| SinkError::io(format!("cannot create {}", parent.display()), e))?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)
            .map_err(|e| SinkError::io(format!("cannot create {}", path.display()), e))?;
        files(&self.files)
            .created
            .push((name.clone(), path.clone()));
        Ok(Box::new(FileOut {
            path,
            writer: Some(BufWriter::with_capacity(1 << 18, file)),
        }))
    }

    fn commit(&self, manifest: &Manifest) -> Result<String, SinkError> {
        // Only what the manifest lists is committed.
        let created = std::mem::take(&mut files(&self.files).created);
        for (name, path) in created {
            if !manifest
                .artifacts
                .iter()
                .any(|a| a.name == name.to_string())
            {
                remove(&path);
            }
        }
        let path = self.partial.join(MANIFEST_FILE);
        let mut bytes = serde_json::to_vec_pretty(manifest)?;
        bytes.push(b'\n');
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(&path)?;
            file.write_all(&bytes)?;
            file.sync_all()
        };
        write().map_err(|e| SinkError::io(format!("cannot write {}", path.display()), e))?;
        sync_dir(&self.partial)?;
        fs::rename(&self.partial, &self.final_dir).map_err(|e| {
            SinkError::io(
                format!(
                    "cannot rename {} to {}",
                    self.partial.display(),
                    self.final_dir.display()
                ),
                e,
            )
        })?;
        sync_dir(&self.root)?;
        Ok(self.final_dir.display().to_string())
    }

    fn drop_unfinished(&self) -> bool {
        // Unfinished files delete themselves when dropped (`FileOut`).
        true
    }

    fn abort(&self) {
        if let Err(err) = fs::remove_dir_all(&self.partial)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.partial.display(), error = %err, "Could not remove the partial capture");
        }
    }
}

/// Deletes a file the capture will not list.
fn remove(path: &Path) {
    if let Err(err) = fs::remove_file(path)
        && err.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %err, "Could not remove a dropped artifact");
    }
}
