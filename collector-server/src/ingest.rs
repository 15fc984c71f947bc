//! Verification of one artifact as its bytes arrive: the SHA-256 of the
//! stored bytes and, for gzip artifacts, of the decoded content, computed
//! with the same `HashingWriter` the agent used.

use std::io::{self, Write};

use flate2::write::MultiGzDecoder;
use ircap_proto::{Digest, HashingWriter};

/// Running digests of one artifact.
pub struct ArtifactVerifier {
    stored: HashingWriter<io::Sink>,
    content: Content,
}

enum Content {
    Gzip(Box<MultiGzDecoder<HashingWriter<io::Sink>>>),
    Identity,
}

/// Why an artifact's bytes do not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IngestError {
    /// Unknown encoding.
    #[error("unknown encoding {0:?} (expected gzip or identity)")]
    Encoding(String),
    /// The gzip stream is broken.
    #[error("stored bytes are not a valid gzip stream: {0}")]
    Gzip(String),
}

impl ArtifactVerifier {
    /// Starts verifying an artifact stored with `encoding`.
    ///
    /// # Errors
    /// [`IngestError::Encoding`] for an unknown encoding.
    pub fn new(encoding: &str) -> Result<Self, IngestError> {
        let content = match encoding {
            "gzip" => Content::Gzip(Box::new(MultiGzDecoder::new(
                HashingWriter::new(io::sink()),
            ))),
            "identity" => Content::Identity,
            other => return Err(IngestError::Encoding(other.to_owned())),
        };
        Ok(Self {
            stored: HashingWriter::new(io::sink()),
            content,
        })
    }

    /// Feeds the next stored bytes.
    ///
    /// # Errors
    /// [`IngestError::Gzip`] when the bytes break the gzip stream.
    pub fn update(&mut self, data: &[u8]) -> Result<(), IngestError> {
        // Writing to a sink cannot fail.
        let _ = self.stored.write_all(data);
        if let Content::Gzip(dec) = &mut self.content {
            dec.write_all(data)
                .map_err(|e| IngestError::Gzip(e.to_string()))?;
        }
        Ok(())
    }

    /// The stored and content digests.
    ///
    /// # Errors
    /// [`IngestError::Gzip`] when the gzip stream is truncated.
    pub fn finish(self) -> Result<(Digest, Digest), IngestError> {
        let (_, stored) = self.stored.finish();
        let content = match self.content {
            Content::Gzip(dec) => {
                let hashing = dec.finish().map_err(|e| IngestError::Gzip(e.to_string()))?;
                hashing.finish().1
            }
            Content::Identity => stored.clone(),
        };
        Ok((stored, content))
    }
}

#[cfg(test)]
mod tests {
    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    #[test]
    fn gzip_digests_match_the_writer_side_in_any_split() {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(&b"hello world\n".repeat(1000)).unwrap();
        let gz = enc.finish().unwrap();
        for split in [1, 7, 100, gz.len()] {
            let mut v = ArtifactVerifier::new("gzip").unwrap();
            for part in gz.chunks(split) {
                v.update(part).unwrap();
            }
            let (stored, content) = v.finish().unwrap();
            assert_eq!(stored.sha256, ircap_proto::hashing::sha256_hex(&gz));
            assert_eq!(
                content.sha256,
                ircap_proto::hashing::sha256_hex(&b"hello world\n".repeat(1000))
            );
        }
    }

    #[test]
    fn truncated_gzip_is_an_error_and_unknown_encoding_refused() {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(b"abc").unwrap();
        let gz = enc.finish().unwrap();
        let mut v = ArtifactVerifier::new("gzip").unwrap();
        v.update(&gz[..gz.len() - 4]).unwrap();
        assert!(v.finish().is_err());
        assert!(ArtifactVerifier::new("zip").is_err());
    }
}
