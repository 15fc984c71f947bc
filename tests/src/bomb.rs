//! Gzip bombs for the collector's decode caps, shared by the hostile-client
//! test (`gzip_bombs_are_refused_and_do_not_stall_other_agents`) and the
//! load bench's bombers (`ircap-load --bombers`).
//!
//! A bomb is many copies of one gzip member: 16 MiB of zeros at level 9
//! compress to about 16 KiB (1028:1), and gzip allows members back to back,
//! so one 4 MiB chunk decodes to about 4 GiB. Repeating one member keeps
//! building the bomb cheap (one 16 MiB compression, then copies).

use std::io::{self, Write as _};

use flate2::Compression;
use flate2::write::GzEncoder;

/// Zero bytes one member decodes to.
pub const MEMBER_DECODED: u64 = 16 << 20;

/// One gzip member holding [`MEMBER_DECODED`] zeros at level 9.
///
/// # Errors
/// The encoder's I/O error (none in practice: it writes to memory).
pub fn gzip_bomb_member() -> io::Result<Vec<u8>> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..MEMBER_DECODED / (1 << 20) {
        enc.write_all(&zeros)?;
    }
    enc.finish()
}

/// A gzip bomb of at most `max_len` stored bytes (at least one member):
/// as many copies of [`gzip_bomb_member`] as fit, so `gzip_bomb(4 << 20)`
/// decodes to about 4 GiB.
///
/// # Errors
/// As [`gzip_bomb_member`].
pub fn gzip_bomb(max_len: usize) -> io::Result<Vec<u8>> {
    let member = gzip_bomb_member()?;
    let members = (max_len / member.len()).max(1);
    let mut bomb = Vec::with_capacity(member.len() * members);
    for _ in 0..members {
        bomb.extend_from_slice(&member);
    }
    Ok(bomb)
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// A member decodes to its 16 MiB of zeros at better than 1000:1, and a
    /// 4 MiB bomb is whole members filling the chunk (decoding the 4 GiB
    /// here would take too long; its members are the one checked).
    #[test]
    fn a_bomb_is_whole_members_of_16_mib_of_zeros() -> crate::TestResult {
        let member = gzip_bomb_member()?;
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(member.as_slice()).read_to_end(&mut decoded)?;
        assert_eq!(decoded.len() as u64, MEMBER_DECODED);
        assert!(decoded.iter().all(|&b| b == 0));
        assert!(
            member.len() as u64 * 1000 < MEMBER_DECODED,
            "{}",
            member.len()
        );

        let bomb = gzip_bomb(4 << 20)?;
        assert!(bomb.len() <= 4 << 20 && bomb.len() + member.len() > 4 << 20);
        assert_eq!(bomb.len() % member.len(), 0);
        assert!(bomb.chunks(member.len()).all(|m| m == member.as_slice()));
        let decoded_total = (bomb.len() / member.len()) as u64 * MEMBER_DECODED;
        assert!(decoded_total > 3 << 30, "{decoded_total}");
        Ok(())
    }
}
