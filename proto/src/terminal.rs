//! Text for a terminal: the analyst's, and the responder's running
//! `ircap-agent verify` or reading its summary.
//!
//! Almost everything the analyst commands print came from a host: the
//! hostname and instance id an agent claims, a manifest's kinds and
//! versions, artifact names, and collector messages that quote them. An
//! attacker who owns the host chooses those bytes, and a terminal obeys
//! escape sequences in them: `\x1b]0;...\x07` retitles the window,
//! `\x1b[...` recolours or moves the cursor, `\r` and `\n` forge table rows.
//! So every piece of host text goes through [`escape`] before it reaches
//! stdout or stderr in human form: each control character (C0, DEL, C1)
//! and each Unicode bidirectional override becomes a visible `\x..` or
//! `\u{..}` escape, and a backslash becomes `\\` so an escape cannot be
//! faked. [`Table`] escapes every cell. JSON lines go through [`json`], which
//! escapes C0 characters as JSON always does and, beyond that, DEL, C1 and
//! bidirectional overrides as `\uXXXX`: the same string to a parser, inert on
//! a terminal.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must not reach a terminal raw.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every control character, bidirectional override and
/// backslash made visible (see the module docs).
#[must_use]
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) => {
                let n = u32::from(c);
                if n < 0x80 {
                    let _ = write!(out, "\\x{n:02x}");
                } else {
                    let _ = write!(out, "\\u{{{n:x}}}");
                }
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether a JSON string must carry `c` as a `\uXXXX` escape (serde_json
/// already escapes C0).
fn needs_json_escape(c: char) -> bool {
    c != '\\' && needs_escape(c) && u32::from(c) >= 0x20
}

/// A serde_json formatter that escapes what [`needs_json_escape`] names.
struct SafeFormatter;

impl serde_json::ser::Formatter for SafeFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> std::io::Result<()>
    where
        W: ?Sized + std::io::Write,
    {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if needs_json_escape(c) {
                writer.write_all(fragment.get(start..i).unwrap_or_default().as_bytes())?;
                write!(writer, "\\u{:04x}", u32::from(c))?;
                start = i + c.len_utf8();
            }
        }
        writer.write_all(fragment.get(start..).unwrap_or_default().as_bytes())
    }
}

/// `value` as one line of JSON that is safe on a terminal (see the
/// module docs); `None` if it cannot be serialised.
#[must_use]
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Option<String> {
    let mut ser = serde_json::Serializer::with_formatter(Vec::new(), SafeFormatter);
    value.serialize(&mut ser).ok()?;
    String::from_utf8(ser.into_inner()).ok()
}

/// [`json`] of `value` as one line on stdout (the machine output of both
/// binaries); a closed stdout is not an error.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    use std::io::Write as _;
    if let Some(line) = json(value) {
        let _ = writeln!(std::io::stdout().lock(), "{line}");
    }
}

/// A table of text, columns padded to their widest cell, every cell
/// escaped.
#[derive(Debug, Clone)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    #[must_use]
    pub fn new(headings: &[&str]) -> Self {
        Self {
            rows: vec![headings.iter().map(|h| escape(h).into_owned()).collect()],
        }
    }

    /// Adds a row; cells are host text and are escaped.
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| escape(c.as_ref()).into_owned())
                .collect(),
        );
    }

    /// The table as lines of text, one per row, each ending in `\n`.
    #[must_use]
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, &w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// A writer for human log lines (`tracing`'s formatter writes one event
/// per call): every control character of the text except tab, the escape
/// that starts the formatter's own colours (it escapes that character in
/// fields itself) and the line's final newline is written as a visible
/// `\x..`, so host text quoted in a log message cannot return the cursor or
/// start a forged line.
pub struct SafeLines<W>(pub W);

impl<W: std::io::Write> std::io::Write for SafeLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            if (b < 0x20 && b != b'\t' && b != 0x1b) || b == 0x7f {
                let _ = write!(out, "\\x{b:02x}");
            } else {
                out.push(b);
            }
        }
        if body.len() < buf.len() {
            out.push(b'\n');
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HOSTILE: &str = "evil\x1b]0;PWNED\x07\x1b[31m...\r\nfake-row";

    #[test]
    fn control_characters_become_visible_escapes() {
        assert_eq!(
            escape(HOSTILE),
            "evil\\x1b]0;PWNED\\x07\\x1b[31m...\\x0d\\x0afake-row"
        );
        assert_eq!(escape("a\u{9b}b\u{202e}c\x7f"), "a\\u{9b}b\\u{202e}c\\x7f");
        assert_eq!(escape("C:\\x1b"), "C:\\\\x1b");
        assert!(matches!(escape("web-1.example"), Cow::Borrowed(_)));
        assert_eq!(escape("héllo"), "héllo");
    }

    #[test]
    fn json_lines_escape_terminal_controls_and_round_trip() {
        let text = format!("{HOSTILE}\u{9b}\u{202e}\x7f\\é");
        let line = json(&serde_json::json!({ "hostname": text })).unwrap();
        assert!(
            !line.contains(['\x1b', '\x07', '\r', '\n', '\u{9b}', '\u{202e}', '\x7f']),
            "{line:?}"
        );
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["hostname"], text);
    }

    #[test]
    fn a_log_line_keeps_one_line_and_its_colours() {
        use std::io::Write as _;
        let mut out = SafeLines(Vec::new());
        out.write_all(b"\x1b[31mERROR\x1b[0m evil\r\nfake-row\x07\tx\n")
            .unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "\x1b[31mERROR\x1b[0m evil\\x0d\\x0afake-row\\x07\tx\n"
        );
    }

    #[test]
    fn a_hostile_cell_stays_in_its_row() {
        let mut t = Table::new(&["HOST", "STATUS"]);
        t.row([HOSTILE, "complete"]);
        t.row(["web-1", "complete"]);
        let out = t.render();
        assert_eq!(out.lines().count(), 3, "{out}");
        assert!(!out.contains(['\x1b', '\x07', '\r']), "{out:?}");
        let widths: Vec<usize> = out
            .lines()
            .map(|l| l.find("complete").unwrap_or(0))
            .collect();
        assert_eq!(widths[1], widths[2], "{out}");
    }
}
