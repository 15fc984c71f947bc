//! The LiME format: a sequence of physical ranges, each a 32-byte header
//! followed by the range's bytes. Volatility 3 (`LimeLayer`), Rekall and
//! most memory tools open it.
//!
//! ```text
//! u32 magic 0x4C694D45 ("EMiL" on disk) | u32 version 1 |
//! u64 s_addr | u64 e_addr (inclusive) | u64 reserved (0)
//! ```
//! All little-endian.

/// Header magic.
pub const MAGIC: u32 = 0x4C69_4D45;
/// Header version.
pub const VERSION: u32 = 1;
/// Header size.
pub const HEADER_LEN: usize = 32;

/// The header of a range `[start, start + len)`; `len` must not be 0.
#[must_use]
pub fn header(start: u64, len: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let end = start.saturating_add(len.saturating_sub(1));
    for (slot, bytes) in h
        .chunks_exact_mut(4)
        .zip([MAGIC.to_le_bytes(), VERSION.to_le_bytes()])
    {
        slot.copy_from_slice(&bytes);
    }
    for (slot, v) in h.chunks_exact_mut(8).skip(1).zip([start, end, 0]) {
        slot.copy_from_slice(&v.to_le_bytes());
    }
    h
}

/// A parsed header: `(start, end inclusive)`, or `None` when the magic or
/// version is wrong.
#[must_use]
pub fn parse_header(h: &[u8]) -> Option<(u64, u64)> {
    let u32_at = |o: usize| Some(u32::from_le_bytes(h.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(h.get(o..o + 8)?.try_into().ok()?));
    if h.len() < HEADER_LEN || u32_at(0)? != MAGIC || u32_at(4)? != VERSION {
        return None;
    }
    Some((u64_at(8)?, u64_at(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = header(0x10_0000, 0x2000);
        assert_eq!(&h[..4], b"EMiL");
        assert_eq!(parse_header(&h), Some((0x10_0000, 0x10_1fff)));
        assert_eq!(&h[24..], &[0u8; 8]);
        assert_eq!(parse_header(&h[..31]), None);
        let mut bad = h;
        bad[4] = 2;
        assert_eq!(parse_header(&bad), None);
    }
}
