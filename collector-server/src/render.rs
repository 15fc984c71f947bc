//! Text for the analyst's terminal: the one implementation is
//! [`ircap_proto::terminal`], shared with the agent's own `verify` and
//! summaries (see its docs for what is escaped and why).

pub use ircap_proto::terminal::{Table, escape, json, print_json};
