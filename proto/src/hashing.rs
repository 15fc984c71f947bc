//! Hash-while-streaming adapters.
//!
//! Every byte of a capture is hashed at the moment it passes through one of
//! these adapters, never by reading a file back later. The same adapter sits
//! on both sides of a transfer so that the two digests can be compared.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// The SHA-256 and length of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Number of bytes hashed.
    pub bytes: u64,
}

impl Digest {
    fn from_hasher(hasher: Sha256, bytes: u64) -> Self {
        Self {
            sha256: to_hex(&hasher.finalize()),
            bytes,
        }
    }
}

/// Lower-case hex of a byte slice.
#[must_use]
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

/// SHA-256 of an in-memory buffer, as lower-case hex.
#[must_use]
pub fn sha256_hex(data: &[u8]) -> String {
    to_hex(&Sha256::digest(data))
}

/// A writer that hashes and counts every byte the inner writer accepts.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Ends hashing and returns the inner writer with the digest of
    /// everything it accepted.
    pub fn finish(self) -> (W, Digest) {
        (self.inner, Digest::from_hasher(self.hasher, self.bytes))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let accepted = buf.get(..n).unwrap_or(buf);
        self.hasher.update(accepted);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts every byte read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Ends hashing and returns the digest of everything read.
    pub fn finish(self) -> Digest {
        Digest::from_hasher(self.hasher, self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(read) = buf.get(..n) {
            self.hasher.update(read);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Reads `reader` to its end, hashing everything, with a 256 KiB buffer.
///
/// # Errors
/// Any error of the reader.
pub fn hash_reader<R: Read>(reader: R) -> io::Result<Digest> {
    let mut hashing = HashingReader::new(reader);
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hashing.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_and_reader_agree_with_known_vector() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (inner, digest) = w.finish();
        assert_eq!(inner, b"abc");
        assert_eq!(
            digest.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest.bytes, 3);
        assert_eq!(hash_reader(&b"abc"[..]).unwrap(), digest);
        assert_eq!(sha256_hex(b"abc"), digest.sha256);
    }

    #[test]
    fn empty_stream_digest() {
        assert_eq!(
            hash_reader(&b""[..]).unwrap().sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
