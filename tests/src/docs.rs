//! The README and `docs/*.md` as the tests read them: their `sh` blocks,
//! and the shell commands in those blocks, so documented commands are run
//! or checked as written and cannot go stale.

use std::path::{Path, PathBuf};

/// The repository's root directory.
#[must_use]
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The text of a document, by its path from the repository root
/// (`README.md`, `docs/analysis.md`).
///
/// # Panics
/// When the document cannot be read.
#[must_use]
pub fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document: `README.md` then `docs/*.md` in name order, as
/// `(path from the root, text)`.
///
/// # Panics
/// When `docs/` cannot be listed or a document read.
#[must_use]
pub fn all() -> Vec<(String, String)> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("docs"))
        .unwrap_or_else(|e| panic!("docs/: {e}"))
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    names.sort();
    names.insert(0, "README.md".to_owned());
    names
        .into_iter()
        .map(|n| {
            let text = read(&n);
            (n, text)
        })
        .collect()
}

/// The first `sh` block after `heading` in document `rel`.
///
/// # Panics
/// When the document has no such heading or no `sh` block after it.
#[must_use]
pub fn sh_block(rel: &str, heading: &str) -> String {
    read(rel)
        .split(heading)
        .nth(1)
        .and_then(|s| s.split("```sh").nth(1))
        .and_then(|s| s.split("```").next())
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("{rel} has no {heading:?} sh block"))
}

/// Every `sh` block of a document's text.
#[must_use]
pub fn sh_blocks(text: &str) -> Vec<String> {
    text.split("```sh")
        .skip(1)
        .filter_map(|s| s.split("```").next())
        .map(str::to_owned)
        .collect()
}

/// The shell commands of a block: continuation lines joined, comment and
/// blank lines dropped (a trailing `# comment` is kept: callers that
/// need it gone use [`strip_comment`]).
#[must_use]
pub fn block_commands(block: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// A command line without its trailing `  # comment`.
#[must_use]
pub fn strip_comment(command: &str) -> &str {
    command
        .find(" #")
        .map_or(command, |at| command[..at].trim_end())
}

/// The simple commands of a command line: split at `&&`, `||`, `|`, `;`
/// and `$(`, each trimmed.
#[must_use]
pub fn simple_commands(command: &str) -> Vec<String> {
    let mut out = vec![strip_comment(command).to_owned()];
    for sep in ["&&", "||", "$(", "|", ";"] {
        out = out
            .iter()
            .flat_map(|c| c.split(sep).map(|s| s.trim().to_owned()))
            .collect();
    }
    out.retain(|c| !c.is_empty());
    out
}
