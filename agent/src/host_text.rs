//! Lossless JSON for bytes from the host.
//!
//! Process names, arguments, paths and log lines are bytes, not text: they
//! may hold newlines, quotes or invalid UTF-8. Every such field is written
//! as a JSON string (serde_json escapes control characters and quotes, so
//! the line structure of JSON Lines can never break). When the bytes are
//! not valid UTF-8 the string holds a lossy rendering (U+FFFD for bad
//! bytes) **and** a sibling field named `<field>_b64` holds the exact bytes
//! in standard base64. So: if `<field>_b64` is absent, `<field>` is exact;
//! if present, decode it for the original bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A text rendering of host bytes plus, when needed, their exact base64.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostText {
    /// Exact when `b64` is `None`, lossy otherwise.
    pub text: String,
    /// The original bytes, base64, when they were not valid UTF-8.
    pub b64: Option<String>,
}

impl HostText {
    /// Renders `raw`.
    #[must_use]
    pub fn new(raw: &[u8]) -> Self {
        match std::str::from_utf8(raw) {
            Ok(text) => Self {
                text: text.to_owned(),
                b64: None,
            },
            Err(_) => Self {
                text: String::from_utf8_lossy(raw).into_owned(),
                b64: Some(STANDARD.encode(raw)),
            },
        }
    }
}

/// Renders a list of host byte strings (an argv, say): the lossy list, and
/// the exact list in base64 when any element is not valid UTF-8.
#[must_use]
pub fn text_list<'a>(
    items: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<String>, Option<Vec<String>>) {
    let items: Vec<&[u8]> = items.into_iter().collect();
    let exact = items.iter().all(|i| std::str::from_utf8(i).is_ok());
    let text = items
        .iter()
        .map(|i| String::from_utf8_lossy(i).into_owned())
        .collect();
    let b64 = (!exact).then(|| items.iter().map(|i| STANDARD.encode(i)).collect());
    (text, b64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_kept_as_is() {
        let t = HostText::new("a\nb\t\"c\"".as_bytes());
        assert_eq!(t.text, "a\nb\t\"c\"");
        assert_eq!(t.b64, None);
    }

    #[test]
    fn invalid_utf8_keeps_exact_bytes() {
        let raw = b"ev\xffil\n";
        let t = HostText::new(raw);
        assert_eq!(t.text, "ev\u{fffd}il\n");
        assert_eq!(STANDARD.decode(t.b64.unwrap()).unwrap(), raw);
    }

    #[test]
    fn lists_carry_b64_only_when_needed() {
        let (text, b64) = text_list([&b"a"[..], b"b"]);
        assert_eq!(text, ["a", "b"]);
        assert!(b64.is_none());
        let (_, b64) = text_list([&b"a"[..], b"\xfe"]);
        assert_eq!(b64.unwrap(), ["YQ==", "/g=="]);
    }
}
