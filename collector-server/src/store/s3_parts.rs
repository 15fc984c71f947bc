//! The records an S3 store keeps of an artifact's multipart upload while
//! it is open (see [`super::s3`]): where the upload is, and one small
//! object per part put into it. The parts of an unfinished upload cannot
//! be read or, on every S3-compatible store, listed with their checksums
//! (SeaweedFS 4.48's `ListParts` gives no checksums and lists a replaced
//! part twice), so these records are what a replica resumes from.
//!
//! Under an artifact's staging key:
//!
//! - `@upload`: the upload id and the final key it was created for, one
//!   per line.
//! - `@<part>.<offset>.<len>.<sha256>.<etag>` per part (part number as
//!   five digits, offset and length in decimal, the part's SHA-256 and its
//!   ETag in hex); the body is the collector's stored-bytes digest state
//!   at the part's end ([`crate::stored_digest`]). Everything needed to
//!   complete the upload is in the keys, so one listing gives it.
//!
//! `@` never occurs in artifact names, so these never collide with
//! another artifact's staging.

use ircap_proto::hashing::to_hex;

/// The tail of the upload record's key.
pub const UPLOAD: &str = "upload";

/// One part put into an artifact's multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    /// Part number, from 1.
    pub number: i32,
    /// Offset of the part's first byte in the artifact.
    pub offset: u64,
    /// Bytes in the part.
    pub len: u64,
    /// SHA-256 of the part's bytes (raw).
    pub sha256: Vec<u8>,
    /// The ETag S3 gave the part.
    pub etag: String,
}

impl PartRecord {
    /// Offset just past the part.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// The record's key tail (after the staging prefix `…/@`).
    #[must_use]
    pub fn tail(&self) -> String {
        format!(
            "{:05}.{}.{}.{}.{}",
            self.number,
            self.offset,
            self.len,
            to_hex(&self.sha256),
            to_hex(self.etag.as_bytes())
        )
    }

    /// Parses a key tail written by [`Self::tail`]; `None` for anything
    /// else.
    #[must_use]
    pub fn parse(tail: &str) -> Option<Self> {
        let mut fields = tail.split('.');
        let number = fields.next()?;
        if number.len() != 5 || !number.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number: i32 = number.parse().ok().filter(|n| *n >= 1)?;
        let offset = decimal(fields.next()?)?;
        let len = decimal(fields.next()?)?;
        let sha256 = unhex(fields.next()?).filter(|s| s.len() == 32)?;
        let etag = String::from_utf8(unhex(fields.next()?)?).ok()?;
        if fields.next().is_some() || len == 0 || etag.is_empty() {
            return None;
        }
        Some(Self {
            number,
            offset,
            len,
            sha256,
            etag,
        })
    }
}

fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Raw bytes of lower- or upper-case hex.
#[must_use]
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Why the recorded parts cannot be completed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// Two different parts are recorded under one number: two streams of
    /// the same artifact raced (on two replicas), and which bytes S3 holds
    /// for that part is not known.
    #[error("two different parts are recorded as part {0}")]
    Duplicate(i32),
}

/// The parts that make the durable prefix, in order: part 1 at offset 0,
/// each next part where the one before ends. A record past a gap (a part
/// recorded by an attempt that lost its place) is not part of it.
///
/// # Errors
/// [`ChainError::Duplicate`] when a number has two different records.
pub fn chain(mut records: Vec<PartRecord>) -> Result<Vec<PartRecord>, ChainError> {
    records.sort_by(|a, b| {
        a.number
            .cmp(&b.number)
            .then_with(|| a.tail().cmp(&b.tail()))
    });
    records.dedup();
    if let Some(pair) = records.windows(2).find(|w| w[0].number == w[1].number) {
        return Err(ChainError::Duplicate(pair[0].number));
    }
    let mut out: Vec<PartRecord> = Vec::with_capacity(records.len());
    for r in records {
        let (number, end) = out.last().map_or((1, 0), |p| (p.number + 1, p.end()));
        if r.number != number || r.offset != end {
            break;
        }
        out.push(r);
    }
    Ok(out)
}

/// The upload record's body.
#[must_use]
pub fn upload_body(upload_id: &str, final_key: &str) -> Vec<u8> {
    format!("{upload_id}\n{final_key}").into_bytes()
}

/// The upload id and final key from an upload record's body.
#[must_use]
pub fn parse_upload(body: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let (id, key) = text.split_once('\n')?;
    if id.is_empty() || key.is_empty() || key.contains('\n') {
        return None;
    }
    Some((id.to_owned(), key.to_owned()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sha2::Digest as _;

    use super::*;

    fn part(number: i32, offset: u64, len: u64, content: &[u8]) -> PartRecord {
        PartRecord {
            number,
            offset,
            len,
            sha256: sha2::Sha256::digest(content).to_vec(),
            etag: format!("\"etag-{number}\""),
        }
    }

    #[test]
    fn record_keys_round_trip_and_anything_else_is_refused() {
        let p = part(7, 48 << 20, 8 << 20, b"x");
        assert_eq!(PartRecord::parse(&p.tail()), Some(p.clone()));
        assert!(p.tail().starts_with("00007.50331648.8388608."));
        let good = p.tail();
        let sum = to_hex(&p.sha256);
        for bad in [
            String::new(),
            UPLOAD.to_owned(),
            "7.0.1.aa.bb".to_owned(),
            "00000.0.1.aa.bb".to_owned(),
            format!("00001.0.0.{sum}.41"),
            format!("00001.-1.5.{sum}.41"),
            format!("00001.0.5.{sum}."),
            "00001.0.5.abcd.41".to_owned(),
            format!("00001.0.5.{sum}.4"),
            format!("{good}.x"),
        ] {
            assert_eq!(PartRecord::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_chain_is_contiguous_from_zero_and_refuses_two_different_parts_as_one() {
        let (a, b, c) = (
            part(1, 0, 10, b"a"),
            part(2, 10, 10, b"b"),
            part(3, 20, 5, b"c"),
        );
        // Order and an identical duplicate (a retried record) do not matter.
        let got = chain(vec![c.clone(), a.clone(), b.clone(), a.clone()]).unwrap();
        assert_eq!(got, vec![a.clone(), b.clone(), c.clone()]);
        // A part past a gap, or not where the one before ends, is not held.
        assert_eq!(chain(vec![a.clone(), c.clone()]).unwrap(), vec![a.clone()]);
        let misplaced = part(2, 11, 10, b"b");
        assert_eq!(chain(vec![a.clone(), misplaced]).unwrap(), vec![a.clone()]);
        assert_eq!(chain(vec![b.clone()]).unwrap(), vec![]);
        // Two streams recorded different bytes as part 2.
        let other = part(2, 10, 10, b"other");
        assert_eq!(chain(vec![a, b, other, c]), Err(ChainError::Duplicate(2)));
    }

    #[test]
    fn upload_records_hold_the_id_and_the_key() {
        let body = upload_body("id-1.x_y", "ir/captures/web-1/c/big.log.gz");
        assert_eq!(
            parse_upload(&body),
            Some(("id-1.x_y".into(), "ir/captures/web-1/c/big.log.gz".into()))
        );
        for bad in [&b""[..], b"id", b"\nkey", b"id\n", b"id\nk\nx", b"\xff\nk"] {
            assert_eq!(parse_upload(bad), None);
        }
    }
}
