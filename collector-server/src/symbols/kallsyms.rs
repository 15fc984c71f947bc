//! `/proc/kallsyms` lines: `<hex address> <type letter> <name>[\t[module]]`.

/// One kernel (not module) symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// Running address.
    pub address: u64,
    /// The type letter (`T`, `d`, `A`, ...).
    pub kind: char,
    /// Name.
    pub name: String,
}

/// The symbols of the kernel image itself, in file order: module symbols
/// (a `[module]` column) and malformed lines are skipped; names are decoded
/// lossily and longer than 512 bytes are dropped (the kernel's limit is
/// `KSYM_NAME_LEN`, 512).
#[must_use]
pub fn parse(text: &[u8]) -> Vec<Symbol> {
    text.split(|&b| b == b'\n')
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.contains(&b'\t') {
                return None;
            }
            let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
            let (addr, kind, name) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() || name.len() > 512 {
                return None;
            }
            let address = u64::from_str_radix(std::str::from_utf8(addr).ok()?, 16).ok()?;
            let [kind] = kind else { return None };
            Some(Symbol {
                address,
                kind: char::from(*kind),
                name: String::from_utf8_lossy(name).into_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_symbols_only() {
        let text = b"ffffffffaa200000 T _text\nffffffffc0a00000 t virtio_init\t[virtio]\n\nzz T bad\nffffffffab361900 D linux_banner\nffffffffab361900 DD x\n";
        let s = parse(text);
        assert_eq!(
            s,
            vec![
                Symbol {
                    address: 0xffff_ffff_aa20_0000,
                    kind: 'T',
                    name: "_text".into()
                },
                Symbol {
                    address: 0xffff_ffff_ab36_1900,
                    kind: 'D',
                    name: "linux_banner".into()
                },
            ]
        );
    }
}
