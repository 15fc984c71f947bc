//! YARA rules as ircap carries them: the rules' text (never a path on the
//! host), bounded in size, compiled by one engine (`boreal`, pure Rust) on
//! both sides. The collector compiles a request's rules before storing it,
//! so a rule the agent's engine would refuse never reaches an agent; the
//! agent compiles them again, as it checks everything a request carries.
//!
//! Includes are disabled: `include "/etc/shadow"` would make the compiler
//! read a file of the host (or of the collector).

use std::sync::Arc;

pub use boreal;

use sha2::{Digest as _, Sha256};

/// Default bytes scanned at most, memory and files together.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;
/// Default CPU time of the scan's thread.
pub const DEFAULT_CPU_BUDGET: std::time::Duration = std::time::Duration::from_secs(60);
/// Default bytes scanned of one region or file.
pub const DEFAULT_REGION_MAX: u64 = 1 << 30;

/// Largest rules text accepted, in bytes (a request carries it).
pub const MAX_RULES_BYTES: usize = 1 << 20;
/// Most rules in one rules text.
pub const MAX_RULES: usize = 10_000;

/// Why rules were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// Over [`MAX_RULES_BYTES`].
    #[error("YARA rules are {bytes} bytes; at most {max} bytes are accepted")]
    TooLarge {
        /// Size given.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The compiler refused them; its message, with line and column.
    #[error("YARA rules do not compile: {0}")]
    Compile(String),
    /// No rule at all.
    #[error("YARA rules text holds no rule")]
    Empty,
    /// Over [`MAX_RULES`].
    #[error("YARA rules text holds {0} rules; at most {MAX_RULES} are accepted")]
    TooMany(usize),
}

/// Compiled rules, cheap to clone.
#[derive(Clone)]
pub struct Rules {
    /// The compiled scanner.
    pub scanner: Arc<boreal::Scanner>,
    /// SHA-256 of the rules text.
    pub sha256: String,
    /// Size of the rules text.
    pub bytes: usize,
    /// Names of the rules, in order.
    pub names: Vec<String>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("sha256", &self.sha256)
            .field("bytes", &self.bytes)
            .field("rules", &self.names.len())
            .finish_non_exhaustive()
    }
}

/// Compiles `text` (named `name` in the compiler's messages).
///
/// # Errors
/// [`RulesError`] when the text is too large, holds no rule, or does not
/// compile (the compiler's message, `name:line:column: ...`).
pub fn compile(name: &str, text: &str) -> Result<Rules, RulesError> {
    if text.len() > MAX_RULES_BYTES {
        return Err(RulesError::TooLarge {
            bytes: text.len(),
            max: MAX_RULES_BYTES,
        });
    }
    let mut compiler = boreal::Compiler::new();
    compiler.set_params(
        boreal::compiler::CompilerParams::default()
            .disable_includes(true)
            .max_strings_per_rule(1_000),
    );
    compiler
        .add_rules_str(text)
        .map_err(|e| RulesError::Compile(e.to_string().replacen("mem:", &format!("{name}:"), 1)))?;
    let scanner = compiler.finalize();
    let names: Vec<String> = scanner.rules().map(|r| r.name.to_owned()).collect();
    if names.is_empty() {
        return Err(RulesError::Empty);
    }
    if names.len() > MAX_RULES {
        return Err(RulesError::TooMany(names.len()));
    }
    Ok(Rules {
        scanner: Arc::new(scanner),
        sha256: crate::hashing::to_hex(&Sha256::digest(text.as_bytes())),
        bytes: text.len(),
        names,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn compiles_and_names_rules() {
        let r = compile(
            "t.yar",
            "rule a { strings: $s = \"x\" condition: $s }\nrule b { condition: true }",
        )
        .unwrap();
        assert_eq!(r.names, ["a", "b"]);
        assert_eq!(r.sha256.len(), 64);
    }

    #[test]
    fn refuses_with_the_compilers_message() {
        let e = compile("bad.yar", "rule a { strings: $s = \"x\" condition: $t }").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("bad.yar:1:"), "{text}");
        assert!(text.contains("$t"), "{text}");
        assert!(compile("e.yar", "// nothing").is_err());
        let big = "a".repeat(MAX_RULES_BYTES + 1);
        assert!(matches!(
            compile("b.yar", &big).unwrap_err(),
            RulesError::TooLarge { .. }
        ));
    }

    #[test]
    fn includes_are_refused() {
        let e = compile(
            "i.yar",
            "include \"/etc/passwd\"\nrule a { condition: true }",
        )
        .unwrap_err();
        assert!(matches!(e, RulesError::Compile(_)), "{e}");
    }
}
