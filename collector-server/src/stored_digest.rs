//! The SHA-256 of an artifact's stored bytes, as a running digest whose
//! state can be saved and restored: an S3 store keeps the state with each
//! part it puts into a multipart upload, so that a collector replica that
//! resumes the upload (after a crash of this one, or on another replica)
//! goes on hashing from where the saved part ends, without reading the
//! parts back (the parts of an unfinished multipart upload cannot be read).
//!
//! The state is sha2's own serialized hasher state (sha2 0.11,
//! `SerializableState`: the eight chaining words, the block count and the
//! partial block), preceded by the byte count, and versioned.

use ircap_proto::Digest;
use sha2_resumable::Digest as _;
use sha2_resumable::Sha256;
use sha2_resumable::digest::common::hazmat::{SerializableState, SerializedState};

/// The first byte of a saved state: its layout.
const VERSION: u8 = 1;

/// A saved state that cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("saved digest state is not valid: {0}")]
pub struct BadState(&'static str);

/// A running SHA-256 with its byte count.
#[derive(Clone)]
pub struct StoredDigest {
    hasher: Sha256,
    bytes: u64,
}

impl Default for StoredDigest {
    fn default() -> Self {
        Self {
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl StoredDigest {
    /// Takes the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.bytes += data.len() as u64;
    }

    /// Bytes taken so far.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The state to save (about a hundred bytes).
    #[must_use]
    pub fn save(&self) -> Vec<u8> {
        let state = self.hasher.serialize();
        let mut out = Vec::with_capacity(9 + state.len());
        out.push(VERSION);
        out.extend_from_slice(&self.bytes.to_be_bytes());
        out.extend_from_slice(&state);
        out
    }

    /// Restores a saved state.
    ///
    /// # Errors
    /// [`BadState`] when `saved` is not a state [`Self::save`] wrote.
    pub fn restore(saved: &[u8]) -> Result<Self, BadState> {
        let (version, rest) = saved.split_first().ok_or(BadState("empty"))?;
        if *version != VERSION {
            return Err(BadState("unknown version"));
        }
        let (count, state) = rest.split_first_chunk::<8>().ok_or(BadState("too short"))?;
        let state = SerializedState::<Sha256>::try_from(state).map_err(|_| BadState("length"))?;
        let hasher = Sha256::deserialize(&state).map_err(|_| BadState("hasher state"))?;
        Ok(Self {
            hasher,
            bytes: u64::from_be_bytes(*count),
        })
    }

    /// The digest of everything taken.
    #[must_use]
    pub fn finish(self) -> Digest {
        Digest {
            sha256: ircap_proto::hashing::to_hex(&self.hasher.finalize()),
            bytes: self.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_restored_state_goes_on_as_if_never_saved_at_any_split() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = ircap_proto::hashing::sha256_hex(&data);
        for split in [0, 1, 63, 64, 65, 4096, 9_999, 10_000] {
            let mut first = StoredDigest::default();
            first.update(&data[..split]);
            let mut resumed = StoredDigest::restore(&first.save()).unwrap();
            assert_eq!(resumed.bytes(), split as u64);
            resumed.update(&data[split..]);
            let d = resumed.finish();
            assert_eq!(d.sha256, whole, "split {split}");
            assert_eq!(d.bytes, data.len() as u64);
        }
    }

    #[test]
    fn damaged_states_are_refused_not_misread() {
        let mut d = StoredDigest::default();
        d.update(b"abc");
        let saved = d.save();
        assert!(StoredDigest::restore(&[]).is_err());
        assert!(StoredDigest::restore(&saved[..saved.len() - 1]).is_err());
        let mut longer = saved.clone();
        longer.push(0);
        assert!(StoredDigest::restore(&longer).is_err());
        let mut other = saved;
        other[0] = 9;
        assert!(StoredDigest::restore(&other).is_err());
    }
}
