//! The `kernel_symbols` artifacts (taken with `--physical-memory`): what an
//! analyst needs to open the LiME image without the kernel's debug
//! package.
//!
//! - `kernel_symbols/vmlinux.btf.gz`: `/sys/kernel/btf/vmlinux` as it is,
//!   the kernel's own description of every type (struct layouts included);
//! - `kernel_symbols/kallsyms.gz`: `/proc/kallsyms`, every symbol and its
//!   running address. The kernel shows real addresses only to a reader
//!   whose credentials at `open()` allow it (`kptr_restrict`, CAP_SYSLOG);
//!   a file of zero addresses is kept and flagged, never "fixed";
//! - `kernel_symbols.jsonl.gz`: one row with the banner (`/proc/version`),
//!   `/proc/iomem`, whether kallsyms shows addresses, and the KASLR offsets
//!   when they can be derived.
//!
//! `ircap-collector symbols` turns BTF + kallsyms into a Volatility 3
//! symbol table. Each file is streamed through a bounded buffer; a file
//! that is missing or unreadable is an error row, and the capture goes on.

use std::io::Read;
use std::path::{Path, PathBuf};

use ircap_proto::{ArtifactEntry, ArtifactName};
use serde::Serialize;

use super::fsread;
use super::{Context, Roots};
use crate::artifact::{ArtifactStream, JsonlWriter, Store};
use crate::sink::SinkError;

/// Largest BTF or kallsyms file copied (the kernel's are 4-8 MiB).
const MAX_FILE: u64 = 256 << 20;
/// x86_64's link-time address of `_text` (`__START_KERNEL_map` +
/// `CONFIG_PHYSICAL_START`'s default 16 MiB): the running `_text` minus
/// this is the virtual KASLR offset.
const X86_64_TEXT_LINK: u64 = 0xffff_ffff_8100_0000;
/// x86_64's default physical load address (`CONFIG_PHYSICAL_START`).
const X86_64_PHYS_LINK: u64 = 0x100_0000;

/// The row of `kernel_symbols.jsonl.gz`.
#[derive(Debug, Serialize, Default)]
pub struct KernelSymbols {
    /// `/proc/version`, exactly (the kernel's `linux_banner`).
    pub banner: Option<String>,
    /// Size in bytes of the BTF copied.
    pub btf_bytes: Option<u64>,
    /// Symbol lines in the kallsyms copied.
    pub kallsyms_symbols: Option<u64>,
    /// False when kallsyms showed only zero addresses (`kptr_restrict`).
    pub kallsyms_addresses_visible: Option<bool>,
    /// False when kallsyms lists no data symbols (no `init_task`): a
    /// kernel built without `CONFIG_KALLSYMS_ALL`, such as Debian's arm64
    /// one, whose kallsyms cannot locate the task or module lists.
    pub kallsyms_data_symbols: Option<bool>,
    /// `/proc/sys/kernel/kptr_restrict` at the time.
    pub kptr_restrict: Option<String>,
    /// Running address of `_text`, hex.
    pub text_address: Option<String>,
    /// Running `_text` minus its link-time address (x86_64), hex.
    pub kaslr_virtual_offset: Option<String>,
    /// Physical start of "Kernel code" in `/proc/iomem`, hex.
    pub kernel_code_physical: Option<String>,
    /// That minus the default physical load address (x86_64), hex.
    pub kaslr_physical_offset: Option<String>,
    /// Why the KASLR offsets above are absent although `_text` was seen:
    /// they are derived from x86_64's fixed link addresses only.
    pub kaslr_not_derivable: Option<String>,
    /// `/proc/iomem` as read (its addresses are real only for root).
    pub iomem: Option<String>,
    /// x86_64: the kernel runs 5-level page tables (`la57` stays in
    /// `/proc/cpuinfo` flags only when it does).
    pub five_level_paging: Option<bool>,
}

/// True when the first `flags` line of a `/proc/cpuinfo` text lists `la57`.
#[must_use]
pub fn has_la57(cpuinfo: &str) -> Option<bool> {
    cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("flags")
                .and_then(|r| r.trim_start().strip_prefix(':'))
        })
        .map(|flags| flags.split_ascii_whitespace().any(|f| f == "la57"))
}

/// What a kallsyms copy showed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KallsymsScan {
    /// Lines seen.
    pub symbols: u64,
    /// Any non-zero address seen.
    pub addresses_visible: bool,
    /// Address of `_text`, when listed and non-zero.
    pub text: Option<u64>,
    /// `init_task` is listed: kallsyms holds data symbols, not only
    /// functions (the kernel has `CONFIG_KALLSYMS_ALL`).
    pub data_symbols: bool,
    /// Bytes of an unfinished last line carried to the next chunk.
    carry: Vec<u8>,
}

impl KallsymsScan {
    /// Feeds the next chunk of the file.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let (line, tail) = rest.split_at(nl);
            if self.carry.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.carry);
                whole.extend_from_slice(line);
                self.line(&whole);
            }
            rest = tail.get(1..).unwrap_or_default();
        }
        // A line longer than any real symbol line is not kept whole.
        if self.carry.len() + rest.len() <= 4096 {
            self.carry.extend_from_slice(rest);
        }
    }

    /// Ends the scan (a last line without a newline counts).
    pub fn finish(&mut self) {
        if !self.carry.is_empty() {
            let last = std::mem::take(&mut self.carry);
            self.line(&last);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
        let (Some(addr), Some(_kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        self.symbols += 1;
        if name == b"init_task" {
            self.data_symbols = true;
        }
        let Some(addr) = std::str::from_utf8(addr)
            .ok()
            .and_then(|a| u64::from_str_radix(a, 16).ok())
        else {
            return;
        };
        if addr != 0 {
            self.addresses_visible = true;
            if name == b"_text" && fields.next().is_none() && self.text.is_none() {
                self.text = Some(addr);
            }
        }
    }
}

/// Start of the first "Kernel code" range in `/proc/iomem` text.
#[must_use]
pub fn kernel_code_start(iomem: &str) -> Option<u64> {
    iomem.lines().find_map(|line| {
        let (range, name) = line.trim_start().split_once(" : ")?;
        (name.trim() == "Kernel code")
            .then(|| range.split_once('-'))
            .flatten()
            .and_then(|(start, _)| u64::from_str_radix(start, 16).ok())
            .filter(|&s| s != 0)
    })
}

/// Where the kernel's BTF is.
#[must_use]
pub fn btf_path(roots: &Roots) -> PathBuf {
    roots.sys.join("kernel/btf/vmlinux")
}

/// Where the kernel's symbol table is.
#[must_use]
pub fn kallsyms_path(roots: &Roots) -> PathBuf {
    roots.proc.join("kallsyms")
}

/// Whether `/proc/kallsyms`, opened with this process's credentials, shows
/// real addresses: reads until the first non-zero address (at most
/// [`MAX_FILE`]) with the same [`KallsymsScan`] the capture uses.
///
/// # Errors
/// Why the file could not be read.
pub fn kallsyms_addresses_visible(roots: &Roots) -> Result<bool, String> {
    let path = kallsyms_path(roots);
    let file = fsread::open_noatime(&path).map_err(|e| e.to_string())?;
    let mut file = file.take(MAX_FILE);
    let mut scan = KallsymsScan::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        scan.feed(buf.get(..n).unwrap_or_default());
        if scan.addresses_visible {
            return Ok(true);
        }
    }
    scan.finish();
    Ok(scan.addresses_visible)
}

/// Writes the three artifacts.
///
/// # Errors
/// [`SinkError`] when an artifact cannot be stored.
pub fn write(ctx: &Context<'_>) -> Result<Vec<ArtifactEntry>, SinkError> {
    let mut index = JsonlWriter::open(ctx.sink, "kernel_symbols", "kernel_symbols")?;
    let mut row = KernelSymbols::default();
    let mut out = Vec::new();

    let btf = btf_path(ctx.roots);
    match copy(ctx, &btf, "kernel_symbols/vmlinux.btf.gz", |_| {})? {
        Ok((entry, bytes)) => {
            row.btf_bytes = Some(bytes);
            out.push(entry);
        }
        Err(why) => index.error(format!(
            "{why} (kernel built without CONFIG_DEBUG_INFO_BTF?)"
        )),
    }

    let kallsyms = kallsyms_path(ctx.roots);
    let mut scan = KallsymsScan::default();
    match copy(ctx, &kallsyms, "kernel_symbols/kallsyms.gz", |c| {
        scan.feed(c);
    })? {
        Ok((entry, _)) => {
            scan.finish();
            row.kallsyms_symbols = Some(scan.symbols);
            row.kallsyms_addresses_visible = Some(scan.addresses_visible);
            row.kallsyms_data_symbols = Some(scan.data_symbols);
            if !scan.data_symbols {
                index.error(format!(
                    "{}: lists no data symbols such as init_task (kernel built without \
                     CONFIG_KALLSYMS_ALL): a symbol table from it cannot walk the task list; \
                     the kernel package's System.map has them",
                    kallsyms.display()
                ));
            }
            if !scan.addresses_visible {
                index.error(format!(
                    "{}: every address reads as zero (kptr_restrict or missing CAP_SYSLOG): \
                     symbols cannot be located in the memory image",
                    kallsyms.display()
                ));
            }
            out.push(entry);
        }
        Err(why) => index.error(why),
    }
    row.kptr_restrict = fsread::read_trimmed(&ctx.roots.proc.join("sys/kernel/kptr_restrict"));
    row.banner = fsread::read_small(&ctx.roots.proc.join("version"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| index.error(e.to_string()))
        .ok();
    row.iomem = fsread::read_small(&ctx.roots.proc.join("iomem"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| index.error(e.to_string()))
        .ok();

    row.text_address = scan.text.map(hex);
    let code = row.iomem.as_deref().and_then(kernel_code_start);
    row.kernel_code_physical = code.map(hex);
    if cfg!(target_arch = "x86_64") {
        row.kaslr_virtual_offset = scan
            .text
            .and_then(|t| t.checked_sub(X86_64_TEXT_LINK))
            .map(hex);
        row.kaslr_physical_offset = code.and_then(|c| c.checked_sub(X86_64_PHYS_LINK)).map(hex);
    } else {
        row.kaslr_not_derivable = Some(format!(
            "KASLR offsets are derived from x86_64's fixed link addresses only; on {} the \
             running _text and Kernel code addresses are recorded as they are (Volatility \
             finds the offset itself)",
            std::env::consts::ARCH
        ));
    }
    if cfg!(target_arch = "x86_64") {
        let cpuinfo = fsread::read_bounded(&ctx.roots.proc.join("cpuinfo"), 4 << 20)
            .map(|(b, _)| String::from_utf8_lossy(&b).into_owned());
        row.five_level_paging = cpuinfo.ok().as_deref().and_then(has_la57);
        if row.five_level_paging == Some(true) {
            index.error(
                "the kernel uses 5-level page tables (la57): Volatility 3 (2.28) stacks such an \
                 image but cannot translate kernel addresses",
            );
        }
    }
    index.write(&row)?;
    out.push(index.finish()?);
    Ok(out)
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// Copies `path` into artifact `name` (gzip), showing each chunk to
/// `inspect`. The inner error is why the file could not be read at all.
fn copy(
    ctx: &Context<'_>,
    path: &Path,
    name: &str,
    mut inspect: impl FnMut(&[u8]),
) -> Result<Result<(ArtifactEntry, u64), String>, SinkError> {
    let file = match fsread::open_regular(path, false) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let artifact = ArtifactName::parse(name)
        .map_err(|e| SinkError::io(format!("artifact name {name}"), std::io::Error::other(e)))?;
    let mut stream = ArtifactStream::open(
        ctx.sink,
        artifact,
        "kernel_symbols",
        "application/octet-stream",
        Store::Gzip(1),
    )?;
    let mut file = file;
    stream.copy_from(&mut (&mut file).take(MAX_FILE), path, &mut inspect)?;
    // One byte more than the cap means the file was cut.
    if stream.content_bytes() == MAX_FILE && file.read(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
        stream.errors.push(format!(
            "{}: longer than {MAX_FILE} bytes, truncated",
            path.display()
        ));
    }
    let bytes = stream.content_bytes();
    Ok(Ok((stream.finish(None)?, bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_scan_across_chunks() {
        let text = b"0000000000000000 A fixed_percpu_data\nffffffffaa200000 T _text\nffffffffc0a00000 t foo\t[virtio]\nffffffffab361900 D linux_banner";
        let mut scan = KallsymsScan::default();
        for chunk in text.chunks(7) {
            scan.feed(chunk);
        }
        scan.finish();
        assert_eq!(scan.symbols, 4);
        assert!(scan.addresses_visible);
        assert_eq!(scan.text, Some(0xffff_ffff_aa20_0000));
        assert!(!scan.data_symbols);
        scan.feed(b"ffffffffab610940 D init_task\n");
        assert!(scan.data_symbols);
    }

    #[test]
    fn hidden_addresses_are_seen() {
        let mut scan = KallsymsScan::default();
        scan.feed(b"0000000000000000 T _text\n0000000000000000 T _stext\n");
        scan.finish();
        assert_eq!(scan.symbols, 2);
        assert!(!scan.addresses_visible);
        assert_eq!(scan.text, None);
    }

    #[test]
    fn la57_from_cpuinfo() {
        assert_eq!(
            has_la57("processor\t: 0\nflags\t\t: fpu la57 pku\n"),
            Some(true)
        );
        assert_eq!(has_la57("flags\t\t: fpu la57x\n"), Some(false));
        assert_eq!(has_la57("processor : 0\n"), None);
    }

    #[test]
    fn kernel_code_from_iomem() {
        let iomem = "00001000-0009fbff : System RAM\n00100000-0ffdffff : System RAM\n  0ba00000-0c801d31 : Kernel code\n  0ca00000-0d2eafff : Kernel rodata\n";
        assert_eq!(kernel_code_start(iomem), Some(0xba0_0000));
        assert_eq!(kernel_code_start("00000000-00000000 : Kernel code\n"), None);
        assert_eq!(kernel_code_start("garbage\n : \n-"), None);
    }
}
