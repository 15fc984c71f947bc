//! `/proc/iomem`: which physical ranges are RAM.

use std::path::Path;

/// A physical range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First physical address.
    pub start: u64,
    /// End (exclusive).
    pub end: u64,
}

/// Top-level "System RAM" ranges of an `/proc/iomem` text. Without
/// `CAP_SYS_ADMIN` the kernel shows every address as 0: that yields no
/// ranges, which callers treat as "unknown".
#[must_use]
pub fn parse(text: &str) -> Vec<Range> {
    text.lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let (span, name) = l.split_once(" : ")?;
            if name.trim() != "System RAM" {
                return None;
            }
            let (lo, hi) = span.trim().split_once('-')?;
            let start = u64::from_str_radix(lo, 16).ok()?;
            let end = u64::from_str_radix(hi, 16).ok()?.checked_add(1)?;
            (end > start && end > 1).then_some(Range { start, end })
        })
        .collect()
}

/// [`parse`] of a file; `None` when it cannot be read or shows no RAM.
#[must_use]
pub fn parse_file(path: &Path) -> Option<Vec<Range>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse(&text)).filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_ram_only_top_level() {
        let text = "00000000-00000fff : Reserved\n\
                    00001000-0009fbff : System RAM\n\
                    00100000-bffdffff : System RAM\n\
                    \x20 01000000-01e00000 : Kernel code\n\
                    fee00000-fee00fff : Local APIC\n\
                    100000000-23fffffff : System RAM\n";
        assert_eq!(
            parse(text),
            vec![
                Range {
                    start: 0x1000,
                    end: 0x9_fc00
                },
                Range {
                    start: 0x10_0000,
                    end: 0xbffe_0000
                },
                Range {
                    start: 0x1_0000_0000,
                    end: 0x2_4000_0000
                },
            ]
        );
        // Unprivileged view: all zeros.
        assert!(parse("00000000-00000000 : System RAM\n").is_empty());
    }
}
