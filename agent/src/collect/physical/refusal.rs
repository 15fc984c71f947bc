//! Why a host refuses its physical memory, in the kernel's own terms, so
//! the manifest says "lockdown", "no kcore" or "not root" instead of a
//! bare errno.
//!
//! Lockdown is read from securityfs (`/sys/kernel/security/lockdown`,
//! the selected mode in brackets) and, when securityfs is not mounted,
//! from a `lockdown=` on the kernel command line. Under `confidentiality`
//! the kernel refuses `/proc/kcore` (and `/dev/mem`, `/dev/crash` reads of
//! kernel memory) to every process, root included.

use std::io::ErrorKind;
use std::path::Path;

use super::super::{Roots, fsread};

/// The selected lockdown mode (`none`, `integrity`, `confidentiality`),
/// when the host shows it.
#[must_use]
pub fn lockdown_mode(roots: &Roots) -> Option<String> {
    let from_securityfs = fsread::read_trimmed(&roots.sys.join("kernel/security/lockdown"))
        .and_then(|text| selected(&text));
    from_securityfs.or_else(|| {
        fsread::read_trimmed(&roots.proc.join("cmdline")).and_then(|cmdline| {
            cmdline
                .split_ascii_whitespace()
                .find_map(|arg| arg.strip_prefix("lockdown="))
                .map(str::to_owned)
        })
    })
}

/// The bracketed word of a securityfs choice list
/// (`none integrity [confidentiality]`).
fn selected(text: &str) -> Option<String> {
    super::super::kernel::parse_lockdown(text).filter(|w| !w.is_empty())
}

/// Why opening `path` (kcore or a crash device) failed with `kind`, as one
/// sentence to append to the I/O error; `None` when nothing more is known.
#[must_use]
pub fn explain(roots: &Roots, path: &Path, kind: ErrorKind, euid: u32) -> Option<String> {
    let lockdown = lockdown_mode(roots);
    match kind {
        ErrorKind::PermissionDenied => match lockdown.as_deref() {
            Some("confidentiality") => Some(format!(
                "kernel lockdown is in confidentiality mode, which refuses {} to every \
                 process, root included (kernel_lockdown(7)); boot without lockdown=confidentiality \
                 (or with Secure Boot's lockdown lifted) to capture physical memory",
                path.display()
            )),
            _ if euid != 0 => Some(format!(
                "{} needs root (CAP_SYS_RAWIO); the agent runs as uid {euid}",
                path.display()
            )),
            Some(mode) => Some(format!(
                "refused although lockdown is {mode:?} and the agent is root \
                 (an LSM such as SELinux or AppArmor may deny it)"
            )),
            None => None,
        },
        ErrorKind::NotFound if path.ends_with("kcore") => {
            Some("the kernel has no /proc/kcore (built without CONFIG_PROC_KCORE)".to_owned())
        }
        ErrorKind::NotFound => Some(format!(
            "no {} (the crash driver is not loaded; /dev/mem is never used: STRICT_DEVMEM \
             limits it to the first megabyte)",
            path.display()
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots(dir: &Path) -> Roots {
        Roots {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
            ..Roots::host()
        }
    }

    #[test]
    fn lockdown_from_securityfs_then_cmdline() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let r = roots(tmp.path());
        std::fs::create_dir_all(r.proc.clone())?;
        std::fs::write(
            r.proc.join("cmdline"),
            "console=ttyS0 lockdown=integrity quiet\n",
        )?;
        assert_eq!(lockdown_mode(&r).as_deref(), Some("integrity"));
        std::fs::create_dir_all(r.sys.join("kernel/security"))?;
        std::fs::write(
            r.sys.join("kernel/security/lockdown"),
            "none integrity [confidentiality]\n",
        )?;
        assert_eq!(lockdown_mode(&r).as_deref(), Some("confidentiality"));
        let why = explain(&r, Path::new("/proc/kcore"), ErrorKind::PermissionDenied, 0)
            .ok_or("no explanation")?;
        assert!(why.contains("lockdown is in confidentiality mode"), "{why}");
        Ok(())
    }

    #[test]
    fn other_reasons() {
        let r = roots(Path::new("/nonexistent"));
        let why = explain(
            &r,
            Path::new("/proc/kcore"),
            ErrorKind::PermissionDenied,
            1000,
        );
        assert!(why.is_some_and(|w| w.contains("needs root")));
        let why = explain(&r, Path::new("/proc/kcore"), ErrorKind::NotFound, 0);
        assert!(why.is_some_and(|w| w.contains("CONFIG_PROC_KCORE")));
        assert_eq!(selected("[none] integrity").as_deref(), Some("none"));
        assert_eq!(selected("[] x"), None);
    }
}
