//! The hash-while-writing pipeline every artifact goes through.
//!
//! ```text
//! records -> [content hash] -> gzip -> [stored hash] -> sink
//! ```
//!
//! Both digests come from the same [`HashingWriter`] adapter the collector
//! uses on its side; nothing is ever hashed by reading a file back.

use std::io::{self, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use ircap_proto::manifest::{ArtifactEntry, Encoding, MAX_ERRORS_PER_ARTIFACT};
use ircap_proto::{ArtifactName, Digest, HashingWriter};
use serde::Serialize;

use crate::sink::{ArtifactOut, CaptureSink, SinkError};
use crate::timefmt;

/// MIME type of JSON Lines tables.
pub const JSONL: &str = "application/x-ndjson";

/// Errors met while collecting one artifact: all are counted, the first
/// [`MAX_ERRORS_PER_ARTIFACT`] are kept for the manifest.
#[derive(Debug, Default)]
pub struct ErrorLog {
    count: u64,
    kept: Vec<String>,
}

impl ErrorLog {
    /// Records one error.
    pub fn push(&mut self, message: impl Into<String>) {
        self.count += 1;
        if self.kept.len() < MAX_ERRORS_PER_ARTIFACT {
            self.kept.push(message.into());
        }
    }
}

type Gzip = HashingWriter<GzEncoder<HashingWriter<Box<dyn ArtifactOut>>>>;

enum Pipe {
    Gzip(Box<Gzip>),
    Identity(HashingWriter<Box<dyn ArtifactOut>>),
}

/// One artifact being written: bytes in, digests and a manifest entry out.
pub struct ArtifactStream {
    name: ArtifactName,
    kind: String,
    content_type: String,
    started_at: String,
    pipe: Pipe,
    /// Errors met while collecting this artifact.
    pub errors: ErrorLog,
}

/// How to store an artifact's bytes.
#[derive(Debug, Clone, Copy)]
pub enum Store {
    /// Gzip at this level.
    Gzip(u32),
    /// As they are (already-compressed evidence).
    Identity,
}

impl ArtifactStream {
    /// Opens `name` in `sink`.
    ///
    /// # Errors
    /// [`SinkError`] when the sink cannot create it.
    pub fn open(
        sink: &dyn CaptureSink,
        name: ArtifactName,
        kind: &str,
        content_type: &str,
        store: Store,
    ) -> Result<Self, SinkError> {
        let started_at = timefmt::now();
        let encoding = match store {
            Store::Gzip(_) => Encoding::Gzip,
            Store::Identity => Encoding::Identity,
        };
        let out = HashingWriter::new(sink.create(&name, encoding)?);
        let pipe = match store {
            Store::Gzip(level) => Pipe::Gzip(Box::new(HashingWriter::new(GzEncoder::new(
                out,
                Compression::new(level),
            )))),
            Store::Identity => Pipe::Identity(out),
        };
        Ok(Self {
            name,
            kind: kind.to_owned(),
            content_type: content_type.to_owned(),
            started_at,
            pipe,
            errors: ErrorLog::default(),
        })
    }

    /// Content bytes written so far.
    #[must_use]
    pub fn content_bytes(&self) -> u64 {
        match &self.pipe {
            Pipe::Gzip(w) => w.bytes(),
            Pipe::Identity(w) => w.bytes(),
        }
    }

    /// Writes content bytes.
    ///
    /// # Errors
    /// [`SinkError`] when the sink refuses them.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), SinkError> {
        let result = match &mut self.pipe {
            Pipe::Gzip(w) => w.write_all(bytes),
            Pipe::Identity(w) => w.write_all(bytes),
        };
        result.map_err(|e| SinkError::io(format!("cannot write {}", self.name), e))
    }

    /// Copies `reader` (a host file named `what`) into the artifact until
    /// its end, handing each chunk to `inspect` before it is written. A
    /// read error is recorded in the artifact (what was read is kept) and
    /// ends the copy; it is not an error of the capture.
    ///
    /// # Errors
    /// [`SinkError`] when the sink refuses the bytes.
    pub fn copy_from(
        &mut self,
        reader: &mut impl io::Read,
        what: &std::path::Path,
        mut inspect: impl FnMut(&[u8]),
    ) -> Result<(), SinkError> {
        let mut buf = vec![0u8; 1 << 18];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let message = format!(
                        "{}: read failed after {} bytes: {e}",
                        what.display(),
                        self.content_bytes()
                    );
                    self.errors.push(message);
                    return Ok(());
                }
            };
            let chunk = buf.get(..n).unwrap_or_default();
            inspect(chunk);
            self.write_all(chunk)?;
        }
    }

    /// Closes the artifact and returns its manifest entry.
    ///
    /// # Errors
    /// [`SinkError`] when the sink cannot make it durable.
    pub fn finish(self, record_count: Option<u64>) -> Result<ArtifactEntry, SinkError> {
        let name = self.name.to_string();
        let (out, content, stored, encoding) = match self.pipe {
            Pipe::Gzip(w) => {
                let (gz, content) = (*w).finish();
                let hashed = gz
                    .finish()
                    .map_err(|e| SinkError::io(format!("cannot finish {name}"), e))?;
                let (out, stored) = hashed.finish();
                (out, content, stored, Encoding::Gzip)
            }
            Pipe::Identity(w) => {
                let (out, digest) = w.finish();
                (out, digest.clone(), digest, Encoding::Identity)
            }
        };
        let entry = entry(
            name,
            self.kind,
            self.content_type,
            encoding,
            &stored,
            &content,
            self.started_at,
            record_count,
            self.errors,
        );
        let mut out = out;
        out.will_close_as(&entry);
        out.close(&stored, &content)?;
        Ok(entry)
    }
}

#[allow(clippy::too_many_arguments)]
fn entry(
    name: String,
    kind: String,
    content_type: String,
    encoding: Encoding,
    stored: &Digest,
    content: &Digest,
    started_at: String,
    record_count: Option<u64>,
    errors: ErrorLog,
) -> ArtifactEntry {
    ArtifactEntry {
        name,
        kind,
        content_type,
        encoding,
        size_stored: stored.bytes,
        size_uncompressed: content.bytes,
        sha256_stored: stored.sha256.clone(),
        sha256_uncompressed: content.sha256.clone(),
        started_at,
        ended_at: timefmt::now(),
        record_count,
        error_count: errors.count,
        errors: errors.kept,
    }
}

/// A JSON Lines table: one serialised record per line, gzip level 1 (the
/// benchmark showed level 6 costing more time than the tables are worth).
pub struct JsonlWriter {
    stream: ArtifactStream,
    line: Vec<u8>,
    records: u64,
}

impl JsonlWriter {
    /// Opens table `<name>.jsonl.gz` of `kind` in `sink`.
    ///
    /// # Errors
    /// [`SinkError`] when the sink cannot create it.
    pub fn open(sink: &dyn CaptureSink, name: &str, kind: &str) -> Result<Self, SinkError> {
        let artifact = ArtifactName::parse(&format!("{name}.jsonl.gz"))
            .map_err(|e| SinkError::io(format!("bad table name {name}"), io::Error::other(e)))?;
        Ok(Self {
            stream: ArtifactStream::open(sink, artifact, kind, JSONL, Store::Gzip(1))?,
            line: Vec::with_capacity(4096),
            records: 0,
        })
    }

    /// Appends one record.
    ///
    /// # Errors
    /// [`SinkError`] when the sink refuses the bytes.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<(), SinkError> {
        self.line.clear();
        if let Err(err) = serde_json::to_writer(&mut self.line, record) {
            // Only a Serialize impl that fails can get here; keep the
            // table valid and say what happened.
            self.stream
                .errors
                .push(format!("record not encodable: {err}"));
            return Ok(());
        }
        self.line.push(b'\n');
        self.stream.write_all(&self.line)?;
        self.records += 1;
        Ok(())
    }

    /// Appends records already serialised by a worker thread: `lines` holds
    /// `records` complete JSON lines, each ending in a newline.
    ///
    /// # Errors
    /// [`SinkError`] when the sink refuses the bytes.
    pub fn write_lines(&mut self, lines: &[u8], records: u64) -> Result<(), SinkError> {
        self.stream.write_all(lines)?;
        self.records += records;
        Ok(())
    }

    /// Records an error against this table.
    pub fn error(&mut self, message: impl Into<String>) {
        self.stream.errors.push(message);
    }

    /// Closes the table and returns its manifest entry.
    ///
    /// # Errors
    /// [`SinkError`] when the sink cannot make it durable.
    pub fn finish(self) -> Result<ArtifactEntry, SinkError> {
        let records = self.records;
        self.stream.finish(Some(records))
    }
}
