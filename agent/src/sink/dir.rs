//! The embedded default sink: a local directory.
//!
//! Artifacts go to `<root>/.<capture-id>.partial/`; `commit` writes
//! `manifest.json` there, syncs, and renames the directory to
//! `<root>/<capture-id>` in one step, so a capture directory without the
//! dot is always complete. `abort` deletes the partial directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ircap_proto::artifact_name::MANIFEST_FILE;
use ircap_proto::manifest::Encoding;
use ircap_proto::{ArtifactName, Digest, Manifest};

use super::{ArtifactOut, CaptureSink, SinkError};

/// Writes one capture below a root directory.
pub struct DirSink {
    root: PathBuf,
    partial: PathBuf,
    final_dir: PathBuf,
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
        })
    }

    /// Where the finished capture will be.
    #[must_use]
    pub fn final_dir(&self) -> &Path {
        &self.final_dir
    }
}

struct FileOut {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl Write for FileOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl ArtifactOut for FileOut {
    fn close(self: Box<Self>, _stored: &Digest, _content: &Digest) -> Result<(), SinkError> {
        let path = self.path;
        let file = self.writer.into_inner().map_err(|e| {
            SinkError::io(format!("cannot write {}", path.display()), e.into_error())
        })?;
        file.sync_all()
            .map_err(|e| SinkError::io(format!("cannot sync {}", path.display()), e))
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
        Ok(Box::new(FileOut {
            path,
            writer: BufWriter::with_capacity(1 << 18, file),
        }))
    }

    fn commit(&self, manifest: &Manifest) -> Result<String, SinkError> {
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

    fn abort(&self) {
        if let Err(err) = fs::remove_dir_all(&self.partial)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.partial.display(), error = %err, "Could not remove the partial capture");
        }
    }
}
