//! `ircap-collector symbols CAPTURE_DIR --out DIR`: a Volatility 3 symbol
//! table for a capture's memory image, made from what the agent took with
//! `--physical-memory` (the `kernel_symbols` artifacts), so the image opens
//! without the kernel's debug package (Debian's is 859 MB).
//!
//! The capture is verified first: a table is only ever built from bytes
//! whose hashes match the manifest. The output is one gzipped ISF file
//! (Volatility reads `.json.gz` as it reads `.json.xz`, and gzip needs no
//! new dependency); `vol -s DIR` finds it by the banner it holds.

pub mod btf;
pub mod isf;
pub mod kallsyms;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use ircap_proto::{ArtifactName, Manifest};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Largest decompressed BTF or kallsyms accepted (the kernel's are
/// 4-8 MiB; the agent stores at most 256 MiB).
const MAX_INPUT: u64 = 256 << 20;
/// BTF artifact name.
pub const BTF_ARTIFACT: &str = "kernel_symbols/vmlinux.btf.gz";
/// kallsyms artifact name.
pub const KALLSYMS_ARTIFACT: &str = "kernel_symbols/kallsyms.gz";
/// The index row with the banner.
pub const INDEX_ARTIFACT: &str = "kernel_symbols.jsonl.gz";

/// Why no symbol table was written.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    /// The capture does not verify (or cannot be read).
    #[error("{path}: capture does not verify: {why}")]
    Unverified {
        /// Capture directory.
        path: String,
        /// The problems.
        why: String,
    },
    /// An artifact the table needs is not in the capture.
    #[error(
        "{path}: no {name} in the capture (was it taken with --physical-memory by an agent that records kernel_symbols?)"
    )]
    Missing {
        /// Capture directory.
        path: String,
        /// The artifact.
        name: &'static str,
    },
    /// An input is unusable.
    #[error("{name}: {why}")]
    Input {
        /// The artifact.
        name: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Writing the table failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What was written (printed as JSON on stdout).
#[derive(Debug, Serialize)]
pub struct Summary {
    /// The symbol table file.
    pub isf: PathBuf,
    /// The kernel banner it matches.
    pub banner: String,
    /// Types in the BTF.
    pub btf_types: usize,
    /// What the table holds.
    pub counts: std::collections::BTreeMap<&'static str, usize>,
    /// Virtual KASLR shift taken out of the kallsyms addresses, hex.
    pub kaslr_shift: String,
    /// SHA-256 of the BTF used.
    pub btf_sha256: String,
    /// SHA-256 of the kallsyms used.
    pub kallsyms_sha256: String,
}

/// Builds the table for the capture in `capture` into `out`.
///
/// # Errors
/// [`SymbolsError`] when the capture does not verify, lacks the symbol
/// artifacts, or the table cannot be written.
pub fn run(capture: &Path, out: &Path) -> Result<Summary, SymbolsError> {
    let path = capture.display().to_string();
    let report = ircap_proto::verify_capture(capture).map_err(|e| SymbolsError::Unverified {
        path: path.clone(),
        why: e.to_string(),
    })?;
    if !report.is_ok() {
        return Err(SymbolsError::Unverified {
            path,
            why: report
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    let manifest = Manifest::read(&capture.join(ircap_proto::artifact_name::MANIFEST_FILE))
        .map_err(|e| SymbolsError::Unverified {
            path: path.clone(),
            why: e.to_string(),
        })?;
    let load = |name: &'static str| -> Result<Vec<u8>, SymbolsError> {
        if !manifest.artifacts.iter().any(|a| a.name == name) {
            return Err(SymbolsError::Missing {
                path: path.clone(),
                name,
            });
        }
        let file = ArtifactName::parse(name)
            .map_err(|e| SymbolsError::Input {
                name,
                why: e.to_string(),
            })?
            .path_in(capture);
        gunzip(&file).map_err(|why| SymbolsError::Input { name, why })
    };
    let btf_bytes = load(BTF_ARTIFACT)?;
    let kallsyms_bytes = load(KALLSYMS_ARTIFACT)?;
    let banner = banner_of(&load(INDEX_ARTIFACT)?).ok_or(SymbolsError::Input {
        name: INDEX_ARTIFACT,
        why: "no banner recorded".into(),
    })?;

    let btf = btf::Btf::parse(&btf_bytes).map_err(|e| SymbolsError::Input {
        name: BTF_ARTIFACT,
        why: e.to_string(),
    })?;
    let (symbols, kaslr_shift) = unshift(kallsyms::parse(&kallsyms_bytes));
    if !symbols
        .iter()
        .any(|s| s.name == "init_task" && s.address != 0)
    {
        return Err(SymbolsError::Input {
            name: KALLSYMS_ARTIFACT,
            why: "no address for init_task: the kernel hid its addresses (kptr_restrict)".into(),
        });
    }
    let btf_sha256 = ircap_proto::hashing::to_hex(&Sha256::digest(&btf_bytes));
    let kallsyms_sha256 = ircap_proto::hashing::to_hex(&Sha256::digest(&kallsyms_bytes));
    let (table, counts) = isf::build(
        &btf,
        &symbols,
        banner.as_bytes(),
        env!("CARGO_PKG_VERSION"),
        &kallsyms_sha256,
    );
    let file = out.join(format!(
        "linux-{}-{}.json.gz",
        file_safe(release_of(&banner)),
        btf_sha256.get(..12).unwrap_or("0")
    ));
    write_gz(out, &file, &table)?;
    Ok(Summary {
        isf: file,
        banner,
        btf_types: btf.len(),
        counts: isf::describe(&counts),
        kaslr_shift: format!("{kaslr_shift:#x}"),
        btf_sha256,
        kallsyms_sha256,
    })
}

/// x86_64's link-time `_text` and the start of its kernel image mapping.
const X86_64_TEXT_LINK: u64 = 0xffff_ffff_8100_0000;
const X86_64_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// Takes the KASLR shift out of the kernel image's addresses, so the table
/// holds link-time addresses like one made from the debug package:
/// Volatility adds the shift it finds in the image (VMCOREINFO's
/// `KERNELOFFSET`, or `init_task`), and would add it twice otherwise.
/// Per-CPU offsets and other addresses outside the image stay as they are.
fn unshift(mut symbols: Vec<kallsyms::Symbol>) -> (Vec<kallsyms::Symbol>, u64) {
    let shift = symbols
        .iter()
        .find(|s| s.name == "_text")
        .map(|s| s.address)
        .filter(|&t| t >= X86_64_TEXT_LINK)
        .map_or(0, |t| t - X86_64_TEXT_LINK);
    if shift > 0 {
        for s in &mut symbols {
            if s.address >= X86_64_KERNEL_MAP.saturating_add(shift) {
                s.address -= shift;
            }
        }
    }
    (symbols, shift)
}

fn gunzip(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    GzDecoder::new(file)
        .take(MAX_INPUT + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if out.len() as u64 > MAX_INPUT {
        return Err(format!("{}: larger than {MAX_INPUT} bytes", path.display()));
    }
    Ok(out)
}

/// The banner from the `kernel_symbols` index's row.
fn banner_of(index: &[u8]) -> Option<String> {
    index
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .find_map(|row| row.get("banner")?.as_str().map(str::to_owned))
}

/// `6.1.0-57-amd64` from `Linux version 6.1.0-57-amd64 (...)`.
fn release_of(banner: &str) -> &str {
    banner
        .strip_prefix("Linux version ")
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .unwrap_or("unknown")
}

/// A host-chosen string made safe for a file name (at most 64 bytes).
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

/// Writes `value` as gzipped JSON to `file` (through a temporary name, so
/// a failed write never leaves a table Volatility would pick up).
fn write_gz(dir: &Path, file: &Path, value: &serde_json::Value) -> Result<(), SymbolsError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| SymbolsError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = file.with_extension("tmp");
    let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut gz =
        flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::new(6));
    serde_json::to_writer(&mut gz, value).map_err(|e| SymbolsError::Io {
        path: tmp.display().to_string(),
        source: e.into(),
    })?;
    let mut buf = gz.finish().map_err(io(&tmp))?;
    buf.flush().map_err(io(&tmp))?;
    drop(buf);
    std::fs::rename(&tmp, file).map_err(io(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_hostile_banners() {
        assert_eq!(
            release_of("Linux version 6.1.0-57-amd64 (x) #1"),
            "6.1.0-57-amd64"
        );
        assert_eq!(
            file_safe(release_of("Linux version ../../etc/x y")),
            ".._.._etc_x"
        );
        assert_eq!(release_of("garbage"), "unknown");
        let index = b"{\"banner\":\"Linux version 6.1\\n\"}\n";
        assert_eq!(banner_of(index).as_deref(), Some("Linux version 6.1\n"));
    }

    #[test]
    fn kaslr_shift_is_taken_out_of_image_addresses() {
        let sym = |address, name: &str| kallsyms::Symbol {
            address,
            kind: 'T',
            name: name.into(),
        };
        let (out, shift) = unshift(vec![
            sym(0x1000, "cpu_debug_store"),
            sym(0xffff_ffff_aa20_0000, "_text"),
            sym(0xffff_ffff_abc1_aa40, "init_task"),
        ]);
        assert_eq!(shift, 0x2920_0000);
        assert_eq!(out[0].address, 0x1000);
        assert_eq!(out[1].address, 0xffff_ffff_8100_0000);
        assert_eq!(out[2].address, 0xffff_ffff_82a1_aa40);
    }

    #[test]
    fn a_capture_without_symbols_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let err = run(tmp.path(), &tmp.path().join("out"))
            .err()
            .ok_or("no error")?;
        assert!(err.to_string().contains("does not verify"), "{err}");
        Ok(())
    }
}
