//! Verification of one artifact as its bytes arrive, free of gRPC and of
//! the store: [`ArtifactIngest`] is the state machine of one upload stream
//! (resume from stored bytes, chunks, end), returning ircap's own
//! [`IngestError`]s; the service turns them into statuses in
//! [`crate::status`] and runs the CPU work on a [`CpuPool`].
//!
//! Digests are the SHA-256 of the stored bytes and, for gzip artifacts, of
//! the decoded content, computed with the same `HashingWriter` the agent
//! used.
//!
//! ## Caps on decoding
//!
//! A gzip artifact is decoded to hash its content, and deflate turns a few
//! MiB into GiB. So decoding is bounded per artifact:
//!
//! - **ratio**: the decoded bytes may not pass [`MAX_RATIO`] (600) times the
//!   stored bytes fed to the decoder so far, once past [`RATIO_FLOOR`]
//!   (16 MiB decoded). The ircap agent writes gzip level 1, which stays
//!   near 230:1 even on all-zero memory; level 9 on zeros reaches 1028:1.
//! - **size**: at most [`MAX_DECODED`] (1 TiB) decoded bytes per artifact.
//!
//! Input is fed to the decoder in 64 KiB slices and the cap is enforced
//! inside the decoder's output, so a bomb is refused after at most the
//! floor plus one slice's worth of work, never after decoding a whole chunk.

use std::io::{self, Write};
use std::sync::Arc;

use flate2::write::MultiGzDecoder;
use ircap_proto::{ArtifactName, Digest, HashingWriter};
use sha2::Digest as _;
use tokio::sync::Semaphore;

use crate::store::FinishedArtifact;
use crate::stored_digest::StoredDigest;

/// Largest chunk accepted.
pub const MAX_CHUNK: usize = 4 << 20;
/// Decoded bytes allowed per stored byte (see the module docs).
pub const MAX_RATIO: u64 = 600;
/// Decoded bytes always allowed before the ratio applies.
pub const RATIO_FLOOR: u64 = 16 << 20;
/// Decoded bytes allowed per artifact.
pub const MAX_DECODED: u64 = 1 << 40;
/// Stored bytes fed to the decoder at a time.
const SLICE: usize = 64 << 10;

/// Why an artifact's bytes are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// Unknown encoding.
    #[error("unknown encoding {0:?} (expected gzip or identity)")]
    Encoding(String),
    /// The gzip stream is broken.
    #[error("{name}: stored bytes are not a valid gzip stream: {message}")]
    Gzip {
        /// Artifact.
        name: String,
        /// The decoder's error.
        message: String,
    },
    /// A chunk not at the offset the collector holds.
    #[error("{name}: chunk at offset {given} but the collector holds {expected} bytes")]
    Offset {
        /// Artifact.
        name: String,
        /// Where the artifact stands.
        expected: u64,
        /// The chunk's offset.
        given: u64,
    },
    /// A chunk larger than [`MAX_CHUNK`].
    #[error("chunk of {0} bytes is larger than {MAX_CHUNK} bytes")]
    ChunkTooLarge(usize),
    /// A chunk whose bytes do not match its SHA-256.
    #[error(
        "{name}: chunk at offset {offset} does not match its SHA-256; nothing of it was stored"
    )]
    ChunkDigest {
        /// Artifact.
        name: String,
        /// The chunk's offset.
        offset: u64,
    },
    /// Decoding passed a cap (see the module docs).
    #[error(
        "{name}: refused, the gzip content decodes to more than {limit} bytes from {stored} stored bytes (caps: {MAX_RATIO}:1 past {RATIO_FLOOR} bytes, {MAX_DECODED} bytes per artifact)"
    )]
    DecodeCap {
        /// Artifact.
        name: String,
        /// The cap that was reached.
        limit: u64,
        /// Stored bytes fed to the decoder when it was reached.
        stored: u64,
    },
    /// A saved stored-bytes digest state that cannot be restored.
    #[error("{name}: cannot resume: {message}")]
    SavedState {
        /// Artifact.
        name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The end's sizes or digests differ from the bytes received.
    #[error("{name}: {detail}")]
    Mismatch {
        /// Artifact.
        name: String,
        /// Received versus claimed.
        detail: String,
    },
}

/// The decoder's output: counted against a cap, then hashed.
struct Capped {
    inner: HashingWriter<io::Sink>,
    limit: u64,
    tripped: bool,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.inner.bytes() + buf.len() as u64 > self.limit {
            self.tripped = true;
            return Err(io::Error::other("decode cap reached"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Content {
    Gzip(Box<MultiGzDecoder<Capped>>),
    Identity,
    /// A gzip artifact resumed from a saved stored-bytes digest without
    /// its earlier bytes: a gzip decoder's state cannot be saved, so the
    /// content digest is checked once the artifact is final (see
    /// [`ArtifactIngest::resume_saved`]).
    Deferred,
}

/// Running digests of one artifact.
pub struct ArtifactVerifier {
    stored: StoredDigest,
    content: Content,
}

impl ArtifactVerifier {
    /// Starts verifying an artifact stored with `encoding`.
    ///
    /// # Errors
    /// [`IngestError::Encoding`] for an unknown encoding.
    pub fn new(encoding: &str) -> Result<Self, IngestError> {
        let content = match encoding {
            "gzip" => Content::Gzip(Box::new(MultiGzDecoder::new(Capped {
                inner: HashingWriter::new(io::sink()),
                limit: RATIO_FLOOR,
                tripped: false,
            }))),
            "identity" => Content::Identity,
            other => return Err(IngestError::Encoding(other.to_owned())),
        };
        Ok(Self {
            stored: StoredDigest::default(),
            content,
        })
    }

    /// Feeds the next stored bytes of artifact `name`.
    ///
    /// # Errors
    /// [`IngestError::Gzip`] when the bytes break the gzip stream,
    /// [`IngestError::DecodeCap`] when decoding passes a cap.
    pub fn update(&mut self, name: &str, data: &[u8]) -> Result<(), IngestError> {
        for slice in data.chunks(SLICE) {
            self.stored.update(slice);
            if let Content::Gzip(dec) = &mut self.content {
                let fed = self.stored.bytes();
                let limit = fed
                    .saturating_mul(MAX_RATIO)
                    .clamp(RATIO_FLOOR, MAX_DECODED);
                dec.get_mut().limit = limit;
                if let Err(e) = dec.write_all(slice) {
                    if dec.get_mut().tripped {
                        return Err(IngestError::DecodeCap {
                            name: name.to_owned(),
                            limit,
                            stored: fed,
                        });
                    }
                    return Err(IngestError::Gzip {
                        name: name.to_owned(),
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The stored and content digests (no content digest when it was
    /// deferred).
    ///
    /// # Errors
    /// [`IngestError::Gzip`] when the gzip stream is truncated.
    pub fn finish(self, name: &str) -> Result<(Digest, Option<Digest>), IngestError> {
        let stored = self.stored.finish();
        let content = match self.content {
            Content::Gzip(dec) => {
                let capped = dec.finish().map_err(|e| IngestError::Gzip {
                    name: name.to_owned(),
                    message: e.to_string(),
                })?;
                Some(capped.inner.finish().1)
            }
            Content::Identity => Some(stored.clone()),
            Content::Deferred => None,
        };
        Ok((stored, content))
    }
}

/// What the agent claims at an artifact's end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedEnd {
    /// Stored bytes and their SHA-256 (hex).
    pub stored: Digest,
    /// Decoded bytes and their SHA-256 (hex).
    pub content: Digest,
}

/// One artifact's upload: where it stands and its running digests.
pub struct ArtifactIngest {
    name: ArtifactName,
    encoding: String,
    verifier: ArtifactVerifier,
    received: u64,
}

impl ArtifactIngest {
    /// Starts an artifact stored with `encoding`.
    ///
    /// # Errors
    /// [`IngestError::Encoding`] for an unknown encoding.
    pub fn new(name: ArtifactName, encoding: &str) -> Result<Self, IngestError> {
        Ok(Self {
            verifier: ArtifactVerifier::new(encoding)?,
            name,
            encoding: encoding.to_owned(),
            received: 0,
        })
    }

    /// Resumes an artifact whose first bytes are stored but cannot be read
    /// back, from the stored-bytes digest state saved with them
    /// ([`Self::saved_state`]). The content digest of a gzip artifact is
    /// then not computed here: [`Self::content_deferred`] says so, and the
    /// caller checks it from the final object.
    ///
    /// # Errors
    /// [`IngestError::Encoding`] for an unknown encoding,
    /// [`IngestError::SavedState`] for a state that cannot be restored.
    pub fn resume_saved(
        name: ArtifactName,
        encoding: &str,
        saved: &[u8],
    ) -> Result<Self, IngestError> {
        let mut verifier = ArtifactVerifier::new(encoding)?;
        verifier.stored = StoredDigest::restore(saved).map_err(|e| IngestError::SavedState {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        if matches!(verifier.content, Content::Gzip(_)) {
            verifier.content = Content::Deferred;
        }
        Ok(Self {
            received: verifier.stored.bytes(),
            verifier,
            name,
            encoding: encoding.to_owned(),
        })
    }

    /// The stored-bytes digest state at [`Self::received`], to save with
    /// the bytes (see [`Self::resume_saved`]).
    #[must_use]
    pub fn saved_state(&self) -> Vec<u8> {
        self.verifier.stored.save()
    }

    /// Whether the content digest is left to a check of the final object.
    #[must_use]
    pub fn content_deferred(&self) -> bool {
        matches!(self.verifier.content, Content::Deferred)
    }

    /// The artifact.
    #[must_use]
    pub fn name(&self) -> &ArtifactName {
        &self.name
    }

    /// Stored bytes taken so far (resumed and received).
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Takes bytes already stored durably (a resumed upload), in order.
    ///
    /// # Errors
    /// As [`ArtifactVerifier::update`].
    pub fn resume(&mut self, stored: &[u8]) -> Result<(), IngestError> {
        self.verifier.update(self.name.as_str(), stored)?;
        self.received += stored.len() as u64;
        Ok(())
    }

    /// Checks what can be checked of a chunk without reading its bytes.
    ///
    /// # Errors
    /// [`IngestError::Offset`] or [`IngestError::ChunkTooLarge`].
    pub fn check_chunk(&self, offset: u64, len: usize) -> Result<(), IngestError> {
        if offset != self.received {
            return Err(IngestError::Offset {
                name: self.name.to_string(),
                expected: self.received,
                given: offset,
            });
        }
        if len > MAX_CHUNK {
            return Err(IngestError::ChunkTooLarge(len));
        }
        Ok(())
    }

    /// Takes the next chunk: its SHA-256 must match, then its bytes go
    /// into the running digests (the CPU-heavy part).
    ///
    /// # Errors
    /// Those of [`Self::check_chunk`], [`IngestError::ChunkDigest`], and
    /// those of [`ArtifactVerifier::update`].
    pub fn chunk(&mut self, offset: u64, data: &[u8], sha256: &[u8]) -> Result<(), IngestError> {
        self.check_chunk(offset, data.len())?;
        if sha2::Sha256::digest(data).as_slice() != sha256 {
            return Err(IngestError::ChunkDigest {
                name: self.name.to_string(),
                offset,
            });
        }
        self.verifier.update(self.name.as_str(), data)?;
        self.received += data.len() as u64;
        Ok(())
    }

    /// Ends the artifact: the digests of what was received must be what
    /// the agent claims (the content digest too, unless it is deferred:
    /// then the claimed one is returned, to be checked by the caller).
    ///
    /// # Errors
    /// [`IngestError::Gzip`] for a truncated gzip stream,
    /// [`IngestError::Mismatch`] when a size or digest differs.
    pub fn end(self, claimed: &ClaimedEnd) -> Result<FinishedArtifact, IngestError> {
        let (stored, content) = self.verifier.finish(self.name.as_str())?;
        let content = content.unwrap_or_else(|| claimed.content.clone());
        if stored != claimed.stored || content != claimed.content {
            return Err(IngestError::Mismatch {
                name: self.name.to_string(),
                detail: format!(
                    "received {} bytes sha256 {} (content {} bytes sha256 {}), agent claims {} bytes sha256 {} (content {} bytes sha256 {})",
                    stored.bytes,
                    stored.sha256,
                    content.bytes,
                    content.sha256,
                    claimed.stored.bytes,
                    claimed.stored.sha256,
                    claimed.content.bytes,
                    claimed.content.sha256,
                ),
            });
        }
        Ok(FinishedArtifact {
            encoding: self.encoding,
            size: stored.bytes,
            sha256: stored.sha256,
            size_uncompressed: content.bytes,
            sha256_uncompressed: content.sha256,
        })
    }
}

/// A bounded pool for CPU work (hashing and decoding): at most as many
/// jobs at once as the machine has cores, on tokio's blocking threads, so
/// the async worker threads that serve every other call never decode.
/// Waiting jobs are served in arrival order.
#[derive(Debug, Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
}

/// The pool is gone (the runtime is shutting down) or a job panicked.
#[derive(Debug, thiserror::Error)]
#[error("CPU pool: {0}")]
pub struct PoolError(String);

impl Default for CpuPool {
    fn default() -> Self {
        Self::new(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
    }
}

impl CpuPool {
    /// A pool running up to `jobs` jobs at once (at least 1).
    #[must_use]
    pub fn new(jobs: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(jobs.max(1))),
        }
    }

    /// Runs `job` on the pool.
    ///
    /// # Errors
    /// [`PoolError`] when the pool is closed or the job panicked.
    pub async fn run<T, F>(&self, job: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| PoolError(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| PoolError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn gzip(data: &[u8], level: u32) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::new(level));
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn digest(data: &[u8]) -> Digest {
        Digest {
            sha256: ircap_proto::hashing::sha256_hex(data),
            bytes: data.len() as u64,
        }
    }

    #[test]
    fn gzip_digests_match_the_writer_side_in_any_split() {
        let gz = gzip(&b"hello world\n".repeat(1000), 1);
        for split in [1, 7, 100, gz.len()] {
            let mut v = ArtifactVerifier::new("gzip").unwrap();
            for part in gz.chunks(split) {
                v.update("a", part).unwrap();
            }
            let (stored, content) = v.finish("a").unwrap();
            assert_eq!(stored.sha256, ircap_proto::hashing::sha256_hex(&gz));
            assert_eq!(
                content.unwrap().sha256,
                ircap_proto::hashing::sha256_hex(&b"hello world\n".repeat(1000))
            );
        }
    }

    /// An upload resumed from a saved stored-bytes state (an S3 multipart
    /// upload whose parts cannot be read back) verifies the stored digest
    /// as if never interrupted; a gzip artifact's content digest is then
    /// deferred to the caller, an identity artifact's is not.
    #[test]
    fn a_resumed_saved_state_verifies_the_stored_digest_and_defers_gzip_content() {
        let content = b"resumed content\n".repeat(5000);
        let gz = gzip(&content, 1);
        let name = ArtifactName::parse("logs/a.gz").unwrap();
        let claimed = |stored: &[u8], content: &[u8]| ClaimedEnd {
            stored: digest(stored),
            content: digest(content),
        };
        for (encoding, stored) in [("gzip", &gz), ("identity", &content)] {
            let split = stored.len() / 3;
            let mut first = ArtifactIngest::new(name.clone(), encoding).unwrap();
            let sum = sha2::Sha256::digest(&stored[..split]);
            first.chunk(0, &stored[..split], &sum).unwrap();
            assert!(!first.content_deferred());
            let saved = first.saved_state();
            let resume = || {
                let mut r = ArtifactIngest::resume_saved(name.clone(), encoding, &saved).unwrap();
                assert_eq!(r.received(), split as u64);
                let rest = &stored[split..];
                r.chunk(split as u64, rest, &sha2::Sha256::digest(rest))
                    .unwrap();
                r
            };
            let r = resume();
            assert_eq!(r.content_deferred(), encoding == "gzip");
            let f = r.end(&claimed(stored, &content)).unwrap();
            assert_eq!(f.sha256, ircap_proto::hashing::sha256_hex(stored));
            // A wrong stored claim is still caught after the resume.
            let wrong = claimed(&stored[1..], &content);
            assert!(matches!(
                resume().end(&wrong),
                Err(IngestError::Mismatch { .. })
            ));
        }
        assert!(matches!(
            ArtifactIngest::resume_saved(name, "gzip", b"\x01junk"),
            Err(IngestError::SavedState { .. })
        ));
    }

    #[test]
    fn truncated_gzip_is_an_error_and_unknown_encoding_refused() {
        let gz = gzip(b"abc", 1);
        let mut v = ArtifactVerifier::new("gzip").unwrap();
        v.update("a", &gz[..gz.len() - 4]).unwrap();
        assert!(matches!(v.finish("a"), Err(IngestError::Gzip { .. })));
        assert!(ArtifactVerifier::new("zip").is_err());
    }

    /// What the agent sends for a mostly-zero memory region (gzip level 1)
    /// verifies; the same zeros at level 9 are refused as a bomb after
    /// little work.
    #[test]
    fn agent_gzip_of_zero_pages_passes_and_a_bomb_is_refused_early() {
        let zeros = vec![0u8; 256 << 20];
        let agent = gzip(&zeros, 1);
        let mut ingest =
            ArtifactIngest::new(ArtifactName::parse("memory/pid-1.bin").unwrap(), "gzip").unwrap();
        for (i, part) in agent.chunks(1 << 20).enumerate() {
            let offset = (i as u64) << 20;
            ingest
                .chunk(offset, part, &sha2::Sha256::digest(part))
                .unwrap();
        }
        let done = ingest
            .end(&ClaimedEnd {
                stored: digest(&agent),
                content: digest(&zeros),
            })
            .unwrap();
        assert_eq!(done.size_uncompressed, 256 << 20);

        let bomb = gzip(&zeros, 9);
        assert!(
            (zeros.len() / bomb.len()) as u64 > MAX_RATIO,
            "level 9 ratio {}",
            zeros.len() / bomb.len()
        );
        let mut ingest =
            ArtifactIngest::new(ArtifactName::parse("bomb.gz").unwrap(), "gzip").unwrap();
        let err = ingest
            .chunk(0, &bomb, &sha2::Sha256::digest(&bomb))
            .unwrap_err();
        let IngestError::DecodeCap { limit, .. } = err else {
            panic!("{err:?}");
        };
        assert!(limit <= RATIO_FLOOR + SLICE as u64 * MAX_RATIO, "{limit}");
    }

    #[test]
    fn chunks_out_of_order_oversized_or_corrupt_are_refused() {
        let mut ingest =
            ArtifactIngest::new(ArtifactName::parse("a.bin").unwrap(), "identity").unwrap();
        assert!(matches!(
            ingest.chunk(3, b"abc", &sha2::Sha256::digest(b"abc")),
            Err(IngestError::Offset {
                expected: 0,
                given: 3,
                ..
            })
        ));
        assert!(matches!(
            ingest.chunk(0, b"abc", &sha2::Sha256::digest(b"abd")),
            Err(IngestError::ChunkDigest { offset: 0, .. })
        ));
        assert_eq!(
            ingest.check_chunk(0, MAX_CHUNK + 1),
            Err(IngestError::ChunkTooLarge(MAX_CHUNK + 1))
        );
        ingest
            .chunk(0, b"abc", &sha2::Sha256::digest(b"abc"))
            .unwrap();
        assert_eq!(ingest.received(), 3);
        let wrong = ingest.end(&ClaimedEnd {
            stored: digest(b"abd"),
            content: digest(b"abd"),
        });
        assert!(matches!(wrong, Err(IngestError::Mismatch { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_runs_at_most_its_size_at_once() {
        let pool = CpuPool::new(2);
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let jobs: Vec<_> = (0..8)
            .map(|_| {
                let (pool, running, peak) = (pool.clone(), running.clone(), peak.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        use std::sync::atomic::Ordering::SeqCst;
                        let now = running.fetch_add(1, SeqCst) + 1;
                        peak.fetch_max(now, SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, SeqCst);
                    })
                    .await
                    .unwrap();
                })
            })
            .collect();
        for j in jobs {
            j.await.unwrap();
        }
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    mod properties {
        //! The ingest state machine under arbitrary input, bounded to a few
        //! seconds (64 cases each, small data).

        use proptest::prelude::*;

        use super::*;

        fn name() -> ArtifactName {
            ArtifactName::parse("p.bin").unwrap()
        }

        fn claimed(stored: &[u8], content: &[u8]) -> ClaimedEnd {
            ClaimedEnd {
                stored: digest(stored),
                content: digest(content),
            }
        }

        /// `data` cut at `cuts` (positions, any order, repeats allowed).
        fn split<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            at.push(0);
            at.push(data.len());
            at.sort_unstable();
            at.dedup();
            at.windows(2).map(|w| &data[w[0]..w[1]]).collect()
        }

        fn feed(ingest: &mut ArtifactIngest, parts: &[&[u8]]) -> Result<(), IngestError> {
            for part in parts {
                let offset = ingest.received();
                ingest.chunk(offset, part, &sha2::Sha256::digest(part))?;
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

            /// However the bytes are cut into chunks, and whatever prefix
            /// was stored before a resume, the digests are those of the
            /// bytes, for both encodings.
            #[test]
            fn any_split_and_resume_point_gives_the_same_digests(
                content in proptest::collection::vec(any::<u8>(), 0..4096),
                cuts in proptest::collection::vec(any::<usize>(), 0..8),
                resume_at in any::<usize>(),
                gz in any::<bool>(),
            ) {
                let (encoding, stored) = if gz {
                    ("gzip", gzip(&content, 1))
                } else {
                    ("identity", content.clone())
                };
                let at = resume_at % (stored.len() + 1);
                let mut ingest = ArtifactIngest::new(name(), encoding).unwrap();
                ingest.resume(&stored[..at]).unwrap();
                feed(&mut ingest, &split(&stored[at..], &cuts)).unwrap();
                prop_assert_eq!(ingest.received(), stored.len() as u64);
                let f = ingest.end(&claimed(&stored, &content)).unwrap();
                prop_assert_eq!(f.size, stored.len() as u64);
                prop_assert_eq!(f.size_uncompressed, content.len() as u64);
            }

            /// A chunk at any other offset, or whose bytes differ from its
            /// SHA-256, is refused and leaves the state where it was; an end
            /// claiming other digests never finishes.
            #[test]
            fn wrong_offsets_digests_and_claims_are_refused(
                data in proptest::collection::vec(any::<u8>(), 1..2048),
                skew in 1u64..1_000_000,
                flip in any::<usize>(),
                lie in any::<u8>(),
            ) {
                let mut ingest = ArtifactIngest::new(name(), "identity").unwrap();
                let sum = sha2::Sha256::digest(&data);
                let wrong_offset = ingest.chunk(skew, &data, &sum);
                let refused = matches!(wrong_offset, Err(IngestError::Offset { .. }));
                prop_assert!(refused, "wrong offset accepted");
                let mut bad = data.clone();
                let i = flip % bad.len();
                bad[i] ^= 0x01;
                let refused = matches!(
                    ingest.chunk(0, &bad, &sum),
                    Err(IngestError::ChunkDigest { .. })
                );
                prop_assert!(refused, "a changed chunk was accepted");
                prop_assert_eq!(ingest.received(), 0);
                ingest.chunk(0, &data, &sum).unwrap();
                let mut other = data.clone();
                let j = usize::from(lie) % other.len();
                other[j] ^= 0x80;
                let refused = matches!(
                    ingest.end(&claimed(&other, &other)),
                    Err(IngestError::Mismatch { .. })
                );
                prop_assert!(refused, "an end claiming other digests finished");
            }

            /// Arbitrary bytes claimed to be gzip never panic: they finish
            /// only if they are a whole gzip stream whose digests match.
            #[test]
            fn arbitrary_gzip_bytes_end_in_a_defined_outcome(
                junk in proptest::collection::vec(any::<u8>(), 0..2048),
                header in any::<bool>(),
            ) {
                let mut bytes = if header { vec![0x1f, 0x8b, 8, 0] } else { Vec::new() };
                bytes.extend_from_slice(&junk);
                let mut ingest = ArtifactIngest::new(name(), "gzip").unwrap();
                let fed = feed(&mut ingest, &[&bytes]);
                if fed.is_ok()
                    && let Ok(f) = ingest.end(&claimed(&bytes, &[]))
                {
                    // Finished only as exactly these bytes, decoding to nothing.
                    prop_assert_eq!(f.size, bytes.len() as u64);
                    prop_assert_eq!(f.size_uncompressed, 0);
                }
            }
        }
    }
}
