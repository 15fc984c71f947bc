//! Text for the analyst's terminal: the one implementation is
//! [`ircap_proto::terminal`], shared with the agent's own `verify` and
//! summaries (see its docs for what is escaped and why).

use std::io::Write;

pub use ircap_proto::terminal::{Table, escape, json};

/// One JSON line on stdout, safe on a terminal (host text in it); a
/// closed stdout is not an error.
pub fn print_json<T: serde::Serialize>(value: &T) {
    if let Some(json) = json(value) {
        let _ = writeln!(std::io::stdout().lock(), "{json}");
    }
}
