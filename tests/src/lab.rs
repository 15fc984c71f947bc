//! The real-kernel lab: Debian's own kernel booted under QEMU with an
//! initramfs that holds the freshly built static agent and a scenario
//! script, so the agent reads a real `/proc/kcore`, real BTF and a real
//! lockdown refusal. Tests using it are named `lab_*`.
//!
//! - [`Kit::get`] fetches `linux-image-<current>-amd64` (the one
//!   `linux-image-amd64` depends on) and `busybox-static` with
//!   `apt-get download` into `<target>/lab/` once, and unpacks the kernel,
//!   busybox and the virtio/9p modules there; later runs reuse them.
//! - [`Guest::boot`] packs an initramfs (busybox's `cpio -o -H newc`: the
//!   host has no cpio), boots `qemu-system-x86_64 -accel tcg,thread=multi
//!   -cpu max -nic none` (the nested KVM here cannot boot Debian's kernel),
//!   (`la57=off`: with 5-level paging, which Debian's kernel turns on
//!   when the CPU has it, Volatility 3 2.28 stacks the image but cannot
//!   translate a kernel address; EC2's x86 instances expose no LA57),
//!   shares a fresh host directory as `/out` over virtio-9p (an output
//!   tmpfs inside the guest would be captured back into the memory dump),
//!   and kills QEMU at a hard timeout.
//!
//! The guest's `/init` loads the modules in dependency order (read once
//! with `modinfo`; no depmod is needed for `insmod`), mounts proc, sys,
//! devtmpfs and securityfs, then runs the scenario with `/out/scenario.log`
//! as its output and writes `/out/rc` before powering off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::packaging::{repo_root, static_agent};

/// Modules `/init` loads, in dependency order.
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "netfs",
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
];

/// The kernel, modules and busybox, unpacked from Debian's packages.
#[derive(Debug)]
pub struct Kit {
    /// `vmlinuz-<release>`.
    pub kernel: PathBuf,
    /// The kernel release (`6.1.0-57-amd64`).
    pub release: String,
    /// Static busybox.
    pub busybox: PathBuf,
    /// `<name>.ko` for each of [`MODULES`].
    pub modules: Vec<PathBuf>,
    /// The cache directory (`<target>/lab`).
    pub cache: PathBuf,
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Kit {
    /// The kit, fetched and unpacked on first use (idempotent; one per test
    /// process).
    ///
    /// # Panics
    /// When `apt-get download` or unpacking fails.
    pub fn get() -> &'static Kit {
        static KIT: OnceLock<Kit> = OnceLock::new();
        KIT.get_or_init(Self::fetch)
    }

    fn fetch() -> Kit {
        let cache = target_dir().join("lab");
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs).unwrap();
        // `linux-image-amd64` names the current Debian 12 kernel package.
        let depends = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
        let image = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .map(str::to_owned)
            .expect("apt-cache depends linux-image-amd64 names no kernel (run apt-get update)");
        let release = image.trim_start_matches("linux-image-").to_owned();
        let unpacked = cache.join(format!("root-{release}"));
        let kernel = unpacked.join(format!("boot/vmlinuz-{release}"));
        let busybox = unpacked.join("bin/busybox");
        if !(kernel.exists() && busybox.exists()) {
            for package in [image.as_str(), "busybox-static"] {
                let have = std::fs::read_dir(&debs)
                    .unwrap()
                    .filter_map(Result::ok)
                    .any(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(&format!("{package}_"))
                    });
                if !have {
                    run(Command::new("apt-get")
                        .args(["download", "-q", package])
                        .current_dir(&debs));
                }
            }
            let partial = cache.join(format!(".root-{release}.partial"));
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).unwrap();
            for deb in std::fs::read_dir(&debs).unwrap().filter_map(Result::ok) {
                let name = deb.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("{image}_")) || name.starts_with("busybox-static_") {
                    run(Command::new("dpkg-deb")
                        .arg("-x")
                        .arg(deb.path())
                        .arg(&partial));
                }
            }
            let _ = std::fs::remove_dir_all(&unpacked);
            std::fs::rename(&partial, &unpacked).unwrap();
        }
        let mod_root = unpacked.join(format!("lib/modules/{release}/kernel"));
        let modules = MODULES
            .iter()
            .map(|m| find_module(&mod_root, m).unwrap_or_else(|| panic!("{m}.ko not in {image}")))
            .collect();
        Kit {
            kernel,
            release,
            busybox,
            modules,
            cache,
        }
    }
}

fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_module(&path, name) {
                return Some(found);
            }
        } else if path
            .file_name()
            .is_some_and(|f| f == format!("{name}.ko").as_str())
        {
            return Some(path);
        }
    }
    None
}

/// A guest to boot.
#[derive(Debug, Clone)]
pub struct Guest {
    /// RAM in MiB.
    pub memory_mb: u32,
    /// Extra kernel command-line words (`nokaslr`, `lockdown=...`).
    pub cmdline: Vec<String>,
    /// The scenario, a busybox `sh` script run as root after boot; the
    /// agent is `/bin/ircap-agent`, results go to `/out`.
    pub scenario: String,
    /// Hard limit for the whole boot-run-poweroff.
    pub timeout: Duration,
}

/// What a boot left behind.
#[derive(Debug)]
pub struct Booted {
    /// The host directory the guest saw as `/out` (kept: a temp dir).
    pub out: tempfile::TempDir,
    /// The serial console.
    pub console: String,
    /// The scenario's exit status.
    pub rc: Option<i32>,
    /// Seconds from QEMU start to `/init` (the guest's uptime then).
    pub boot_secs: Option<f64>,
    /// Wall time from QEMU start to exit.
    pub elapsed: Duration,
}

impl Booted {
    /// `/out/<name>` on the host.
    #[must_use]
    pub fn path(&self, name: &str) -> PathBuf {
        self.out.path().join(name)
    }

    /// `/out/<name>` as text (empty when missing).
    #[must_use]
    pub fn text(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
for m in MODULES; do insmod /lib/mod/$m.ko || echo "IRCAP-LAB: insmod $m failed"; done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 out /out || echo "IRCAP-LAB: no /out"
echo "IRCAP-LAB-BOOTED $(cut -d' ' -f1 /proc/uptime)"
cd /
sh /scenario.sh >/out/scenario.log 2>&1
echo $? >/out/rc
sync
echo "IRCAP-LAB-DONE"
poweroff -f
"#;

impl Guest {
    /// A guest with `memory_mb` of RAM running `scenario`.
    #[must_use]
    pub fn new(memory_mb: u32, scenario: &str) -> Self {
        Self {
            memory_mb,
            cmdline: Vec::new(),
            scenario: scenario.to_owned(),
            timeout: Duration::from_secs(240),
        }
    }

    /// Boots it and waits for poweroff, or kills QEMU at the timeout.
    ///
    /// # Panics
    /// On a timeout or when QEMU cannot start.
    pub fn boot(&self) -> Booted {
        let kit = Kit::get();
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        for dir in ["bin", "dev", "proc", "sys", "out", "tmp", "lib/mod"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy(&kit.busybox, root.join("bin/busybox")).unwrap();
        std::fs::copy(static_agent(), root.join("bin/ircap-agent")).unwrap();
        for m in &kit.modules {
            std::fs::copy(m, root.join("lib/mod").join(m.file_name().unwrap())).unwrap();
        }
        let init = INIT.replace("MODULES", &MODULES.join(" "));
        write_exec(&root.join("init"), &init);
        write_exec(&root.join("scenario.sh"), &self.scenario);
        let initrd = work.path().join("initrd.cpio");
        let cpio = std::fs::File::create(&initrd).unwrap();
        let status = Command::new(&kit.busybox)
            .args(["sh", "-c", "busybox find . | busybox cpio -o -H newc"])
            .env("PATH", root.join("bin"))
            .current_dir(&root)
            .stdout(cpio)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "cpio failed");
        // busybox in the root is called by name above through PATH.
        let mut out = tempfile::tempdir().unwrap();
        if std::env::var_os("IRCAP_LAB_KEEP").is_some() {
            out.disable_cleanup(true);
            eprintln!("lab: keeping {}", out.path().display());
        }
        let console = work.path().join("console.log");
        let mut append = vec![
            "console=ttyS0".to_owned(),
            "panic=-1".to_owned(),
            "quiet".to_owned(),
        ];
        append.extend(self.cmdline.iter().cloned());
        let t0 = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                "max,la57=off",
                "-smp",
                "1",
            ])
            .args(["-m", &self.memory_mb.to_string()])
            .args([
                "-nic",
                "none",
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&kit.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append.join(" ")])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=out,security_model=none",
                out.path().display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 (apt-get install qemu-system-x86)");
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if t0.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                let console = std::fs::read_to_string(&console).unwrap_or_default();
                let tail: String = console
                    .chars()
                    .rev()
                    .take(3000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "guest did not power off within {:?}; console tail:\n{tail}\nscenario log:\n{}",
                    self.timeout,
                    std::fs::read_to_string(out.path().join("scenario.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let elapsed = t0.elapsed();
        let console = std::fs::read_to_string(&console).unwrap_or_default();
        assert!(
            status.success(),
            "qemu exited with {status}; console:\n{console}"
        );
        let boot_secs = console
            .lines()
            .find_map(|l| l.split("IRCAP-LAB-BOOTED ").nth(1))
            .and_then(|s| s.trim().parse().ok());
        let rc = std::fs::read_to_string(out.path().join("rc"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        Booted {
            out,
            console,
            rc,
            boot_secs,
            elapsed,
        }
    }
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The agent's capture directory under `/out/<sub>` (the one directory
/// whose name is not hidden).
///
/// # Panics
/// When there is not exactly one.
#[must_use]
pub fn capture_dir(booted: &Booted, sub: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(booted.path(sub))
        .unwrap_or_else(|e| panic!("{sub}: {e}\nscenario log:\n{}", booted.text("scenario.log")))
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}\n{}", booted.text("scenario.log"));
    dirs.into_iter().next().unwrap()
}
