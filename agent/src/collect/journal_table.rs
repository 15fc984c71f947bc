//! The `journal` table: the entries of the systemd journal files under the
//! capture's log directories, one JSON object per line, read with the
//! pure-Rust `sdjournal` (no libsystemd, no `journalctl`). The raw journal
//! files stay in the `logs` artifacts; this is the same data as a table.
//!
//! Each row holds every field of the entry, as `journalctl -o json` names
//! them: `__REALTIME_TIMESTAMP` and `__MONOTONIC_TIMESTAMP` (microseconds,
//! as decimal strings), `_BOOT_ID` (32 hex digits) from the entry header,
//! `__SEQNUM`, then each field of the entry. A field is a string, or an
//! array of strings when the entry holds it more than once. Values are
//! lossless the way every table is ([`crate::host_text`]): when a value is
//! not valid UTF-8 the string is a lossy rendering and `<FIELD>_b64` holds
//! the exact bytes (journal field names are upper case, so the lower-case
//! suffix never collides with a real field).
//!
//! Bounds: entries older than `--logs-since` are not read; rows are written
//! newest first until the serialised rows reach `--logs-max-bytes` (the
//! table then says it was cut); journal directories on a file system that
//! can block are not entered; a file or entry that cannot be read is an
//! error of the table, never the end of the capture.

use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use ircap_proto::ArtifactEntry;
use sdjournal::{EntryRef, Journal, JournalConfig, SdJournalError};
use serde_json::{Map, Value};

use super::Context;
use super::blocking_fs::BlockingMounts;
use crate::artifact::JsonlWriter;
use crate::host_text::{HostText, text_list};
use crate::sink::SinkError;

/// Unreadable entries tolerated in a row before the table stops reading.
const MAX_CONSECUTIVE_ERRORS: usize = 64;

/// Journal directories to open for log roots `roots`: each root itself and
/// its `journal/` subdirectory (`/var/log` -> `/var/log/journal`), when
/// they exist and are not on a file system that can block.
/// `sdjournal` finds the files in each directory and in its machine-id
/// subdirectories.
#[must_use]
pub fn journal_dirs(
    roots: &[PathBuf],
    blocking: &BlockingMounts,
    errors: &mut Vec<String>,
) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for root in roots {
        for dir in [root.clone(), root.join("journal")] {
            if dirs.contains(&dir) || !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            if let Some(fs_type) = blocking.at(&dir) {
                errors.push(format!(
                    "{}: a {fs_type} mount, not entered (it can block)",
                    dir.display()
                ));
                continue;
            }
            dirs.push(dir);
        }
    }
    dirs
}

/// One row of the table.
#[must_use]
pub fn row(entry: &EntryRef) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert(
        "__REALTIME_TIMESTAMP".into(),
        entry.realtime_usec().to_string().into(),
    );
    obj.insert(
        "__MONOTONIC_TIMESTAMP".into(),
        entry.monotonic_usec().to_string().into(),
    );
    let boot: String = entry.boot_id().iter().map(|b| format!("{b:02x}")).collect();
    obj.insert("_BOOT_ID".into(), boot.into());
    obj.insert("__SEQNUM".into(), entry.seqnum().into());
    // Fields in entry order, repeated ones gathered.
    let mut fields: Vec<(&str, Vec<&[u8]>)> = Vec::new();
    for (name, value) in entry.iter_fields() {
        // The header's boot id is the one written above.
        if name == "_BOOT_ID" {
            continue;
        }
        match fields.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => fields.push((name, vec![value])),
        }
    }
    for (name, values) in fields {
        if let [one] = values.as_slice() {
            let t = HostText::new(one);
            obj.insert(name.to_owned(), t.text.into());
            if let Some(b64) = t.b64 {
                obj.insert(format!("{name}_b64"), b64.into());
            }
        } else {
            let (text, b64) = text_list(values);
            obj.insert(name.to_owned(), text.into());
            if let Some(b64) = b64 {
                obj.insert(format!("{name}_b64"), b64.into());
            }
        }
    }
    obj
}

/// Writes `journal.jsonl.gz` from the journal files under `roots`.
///
/// # Errors
/// [`SinkError`] only when the table cannot be stored.
pub fn write(ctx: &Context<'_>, roots: &[PathBuf]) -> Result<ArtifactEntry, SinkError> {
    let mut table = JsonlWriter::open(ctx.sink, "journal", "journal")?;
    let blocking = BlockingMounts::read(&ctx.roots.proc);
    let mut errors = Vec::new();
    let dirs = journal_dirs(roots, &blocking, &mut errors);
    for e in errors {
        table.error(e);
    }
    if dirs.is_empty() {
        return table.finish();
    }
    let journal = match Journal::open_dirs_with_config(&dirs, JournalConfig::default()) {
        Ok(j) => j,
        // No journal on this host: an empty table.
        Err(SdJournalError::NotFound) => return table.finish(),
        Err(e) => {
            table.error(format!("journal: {e}"));
            return table.finish();
        }
    };
    let since = ctx
        .options
        .logs_since_time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let mut query = journal.query();
    query.since_realtime(since).reverse(true);
    let entries = match query.iter() {
        Ok(it) => it,
        Err(e) => {
            table.error(format!("journal: {e}"));
            return table.finish();
        }
    };
    let budget = ctx.options.logs_max_bytes;
    let mut written = 0u64;
    let mut line = Vec::with_capacity(4096);
    let mut failed_in_row = 0;
    for item in entries {
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                table.error(format!("journal entry: {e}"));
                failed_in_row += 1;
                if failed_in_row >= MAX_CONSECUTIVE_ERRORS {
                    table.error(format!(
                        "{MAX_CONSECUTIVE_ERRORS} unreadable entries in a row: the older entries were not read"
                    ));
                    break;
                }
                continue;
            }
        };
        failed_in_row = 0;
        line.clear();
        if let Err(e) = serde_json::to_writer(&mut line, &row(&entry)) {
            table.error(format!("journal entry not encodable: {e}"));
            continue;
        }
        line.push(b'\n');
        let len = line.len() as u64;
        if written.saturating_add(len) > budget {
            table.error(format!(
                "cut at --logs-max-bytes ({budget} bytes): entries older than realtime {} not included",
                entry.realtime_usec()
            ));
            break;
        }
        table.write_lines(&line, 1)?;
        written += len;
    }
    table.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_dirs_takes_roots_and_their_journal_subdirectory() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let log = dir.path().join("log");
        let run = dir.path().join("run-journal");
        std::fs::create_dir_all(log.join("journal")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(&run).unwrap_or_else(|e| panic!("{e}"));
        let mut errors = Vec::new();
        let dirs = journal_dirs(
            &[log.clone(), run.clone(), dir.path().join("missing")],
            &BlockingMounts::default(),
            &mut errors,
        );
        assert_eq!(dirs, vec![log.clone(), log.join("journal"), run]);
        assert!(errors.is_empty());
    }
}
