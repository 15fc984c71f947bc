//! The real-kernel lab: Debian's own kernel booted under QEMU with an
//! initramfs that holds the freshly built static agent and a scenario
//! script, so the agent reads a real `/proc/kcore`, real BTF and a real
//! lockdown refusal. Tests using it are named `lab_*`.
//!
//! - [`Kit::get`] (x86_64) and [`Kit::for_arch`] fetch
//!   `linux-image-<current>-<arch>` (the one `linux-image-<arch>` depends
//!   on) and `busybox-static` with `apt-get download` into `<target>/lab/`
//!   once, and unpack the kernel, busybox and the virtio/9p modules there;
//!   later runs reuse them. arm64 packages need `dpkg --add-architecture
//!   arm64` and `apt-get update` (`tests/run.sh` does both).
//! - [`Guest::boot`] packs an initramfs (busybox's `cpio -o -H newc`: the
//!   host has no cpio), boots `qemu-system-x86_64 -accel tcg,thread=multi
//!   -cpu max -nic none` (the nested KVM here cannot boot Debian's kernel),
//!   (`la57=off`: with 5-level paging, which Debian's kernel turns on
//!   when the CPU has it, Volatility 3 2.28 stacks the image but cannot
//!   translate a kernel address; EC2's x86 instances expose no LA57),
//!   shares a fresh host directory as `/out` over virtio-9p (an output
//!   tmpfs inside the guest would be captured back into the memory dump),
//!   and kills QEMU at a hard timeout. An [`Arch::Aarch64`] guest boots
//!   Debian's arm64 kernel under `qemu-system-aarch64 -M virt -cpu max`
//!   (TCG; `pauth-impdef=on`: emulating the architected pointer
//!   authentication hash is several times slower) with the aarch64 static
//!   agent.
//!
//! The guest's `/init` loads the modules in dependency order (read once
//! with `modinfo`; no depmod is needed for `insmod`), mounts proc, sys,
//! devtmpfs and securityfs, then runs the scenario with `/out/scenario.log`
//! as its output and writes `/out/rc` before powering off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::packaging::{repo_root, static_agent};

/// A guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `amd64`: `qemu-system-x86_64`, `-cpu max,la57=off`.
    X86_64,
    /// `arm64` (Graviton): `qemu-system-aarch64 -M virt`.
    Aarch64,
}

impl Arch {
    /// Debian's name (`amd64`, `arm64`).
    #[must_use]
    pub fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    /// Rust's and the static agent's name (`x86_64`, `aarch64`).
    #[must_use]
    pub fn rust(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        }
    }

    /// The QEMU binary.
    #[must_use]
    pub fn qemu(self) -> &'static str {
        match self {
            Self::X86_64 => "qemu-system-x86_64",
            Self::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// Machine and CPU arguments.
    fn machine(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &["-accel", "tcg,thread=multi", "-cpu", "max,la57=off"],
            Self::Aarch64 => &[
                "-M",
                "virt",
                "-accel",
                "tcg,thread=multi",
                "-cpu",
                "max,pauth-impdef=on",
            ],
        }
    }

    /// The serial console device.
    fn console(self) -> &'static str {
        match self {
            Self::X86_64 => "ttyS0",
            Self::Aarch64 => "ttyAMA0",
        }
    }

    /// The static agent for this architecture, built by
    /// `packaging/build-static.sh` (run here once when it is missing).
    ///
    /// # Panics
    /// When the build fails.
    #[must_use]
    pub fn static_agent(self) -> PathBuf {
        if self == Self::X86_64 {
            return static_agent();
        }
        static BUILD: OnceLock<()> = OnceLock::new();
        let path = repo_root().join(format!("dist/ircap-agent-{}-linux-musl", self.rust()));
        BUILD.get_or_init(|| {
            if !path.exists() {
                let status = Command::new("bash")
                    .arg(repo_root().join("packaging/build-static.sh"))
                    .env("IRCAP_TARGETS", self.rust())
                    .status()
                    .expect("bash");
                assert!(status.success(), "packaging/build-static.sh failed");
            }
        });
        assert!(path.exists(), "{} missing after the build", path.display());
        path
    }
}

/// Modules `/init` loads, in dependency order (those the kernel has built
/// in, per its `modules.builtin`, are skipped).
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
    /// The architecture.
    pub arch: Arch,
    /// `vmlinuz-<release>`.
    pub kernel: PathBuf,
    /// The kernel release (`6.1.0-57-amd64`).
    pub release: String,
    /// Static busybox.
    pub busybox: PathBuf,
    /// `<name>.ko` for each of [`MODULES`] not built in.
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
        Self::for_arch(Arch::X86_64)
    }

    /// The kit of `arch`, fetched and unpacked on first use.
    ///
    /// # Panics
    /// When `apt-get download` or unpacking fails.
    pub fn for_arch(arch: Arch) -> &'static Kit {
        static X86_64: OnceLock<Kit> = OnceLock::new();
        static AARCH64: OnceLock<Kit> = OnceLock::new();
        match arch {
            Arch::X86_64 => X86_64.get_or_init(|| Self::fetch(arch)),
            Arch::Aarch64 => AARCH64.get_or_init(|| Self::fetch(arch)),
        }
    }

    fn fetch(arch: Arch) -> Kit {
        let cache = target_dir().join("lab");
        let debs = cache.join("debs");
        std::fs::create_dir_all(&debs).unwrap();
        let deb_arch = arch.debian();
        // `linux-image-<arch>` names the current Debian 12 kernel package.
        let meta = format!("linux-image-{deb_arch}:{deb_arch}");
        let depends = run(Command::new("apt-cache").args(["depends", &meta]));
        let image = depends
            .lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .filter(|p| p.starts_with("linux-image-"))
            .map(|p| p.split(':').next().unwrap_or(p).to_owned())
            .unwrap_or_else(|| {
                panic!(
                    "apt-cache depends {meta} names no kernel (run dpkg --add-architecture \
                     {deb_arch} and apt-get update)"
                )
            });
        let release = image.trim_start_matches("linux-image-").to_owned();
        let unpacked = cache.join(format!("root-{release}"));
        let kernel = unpacked.join(format!("boot/vmlinuz-{release}"));
        let busybox = unpacked.join("bin/busybox");
        if !(kernel.exists() && busybox.exists()) {
            let is_deb = |name: &str, package: &str| {
                name.starts_with(&format!("{package}_"))
                    && name.ends_with(&format!("_{deb_arch}.deb"))
            };
            for package in [image.as_str(), "busybox-static"] {
                let have = std::fs::read_dir(&debs)
                    .unwrap()
                    .filter_map(Result::ok)
                    .any(|e| is_deb(&e.file_name().to_string_lossy(), package));
                if !have {
                    run(Command::new("apt-get")
                        .args(["download", "-q", &format!("{package}:{deb_arch}")])
                        .current_dir(&debs));
                }
            }
            let partial = cache.join(format!(".root-{release}.partial"));
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).unwrap();
            for deb in std::fs::read_dir(&debs).unwrap().filter_map(Result::ok) {
                let name = deb.file_name().to_string_lossy().into_owned();
                if is_deb(&name, &image) || is_deb(&name, "busybox-static") {
                    run(Command::new("dpkg-deb")
                        .arg("-x")
                        .arg(deb.path())
                        .arg(&partial));
                }
            }
            let _ = std::fs::remove_dir_all(&unpacked);
            std::fs::rename(&partial, &unpacked).unwrap();
        }
        let mod_dir = unpacked.join(format!("lib/modules/{release}"));
        let builtin = std::fs::read_to_string(mod_dir.join("modules.builtin")).unwrap_or_default();
        let is_builtin = |m: &str| {
            builtin
                .lines()
                .any(|l| l.rsplit('/').next() == Some(format!("{m}.ko").as_str()))
        };
        let modules = MODULES
            .iter()
            .filter(|m| !is_builtin(m))
            .map(|m| {
                find_module(&mod_dir.join("kernel"), m)
                    .unwrap_or_else(|| panic!("{m}.ko not in {image}"))
            })
            .collect();
        Kit {
            arch,
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
    /// The architecture (x86_64 unless set).
    pub arch: Arch,
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
            arch: Arch::X86_64,
        }
    }

    /// Boots it and waits for poweroff, or kills QEMU at the timeout.
    ///
    /// # Panics
    /// On a timeout or when QEMU cannot start.
    pub fn boot(&self) -> Booted {
        let kit = Kit::for_arch(self.arch);
        // The initramfs is packed by the host's own busybox.
        let packer = &Kit::get().busybox;
        let work = tempfile::tempdir().unwrap();
        let root = work.path().join("root");
        for dir in ["bin", "dev", "proc", "sys", "out", "tmp", "lib/mod"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy(&kit.busybox, root.join("bin/busybox")).unwrap();
        std::fs::copy(self.arch.static_agent(), root.join("bin/ircap-agent")).unwrap();
        for m in &kit.modules {
            std::fs::copy(m, root.join("lib/mod").join(m.file_name().unwrap())).unwrap();
        }
        let names: Vec<String> = kit
            .modules
            .iter()
            .map(|m| m.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        let init = INIT.replace("MODULES", &names.join(" "));
        write_exec(&root.join("init"), &init);
        write_exec(&root.join("scenario.sh"), &self.scenario);
        let initrd = work.path().join("initrd.cpio");
        let cpio = std::fs::File::create(&initrd).unwrap();
        let status = Command::new(packer)
            .args(["sh", "-c", "busybox find . | busybox cpio -o -H newc"])
            .env("PATH", packer.parent().unwrap())
            .current_dir(&root)
            .stdout(cpio)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "cpio failed");
        let mut out = tempfile::tempdir().unwrap();
        if std::env::var_os("IRCAP_LAB_KEEP").is_some() {
            out.disable_cleanup(true);
            eprintln!("lab: keeping {}", out.path().display());
        }
        let console = work.path().join("console.log");
        let mut append = vec![
            format!("console={}", self.arch.console()),
            "panic=-1".to_owned(),
            "quiet".to_owned(),
        ];
        append.extend(self.cmdline.iter().cloned());
        let t0 = Instant::now();
        let child = Command::new(self.arch.qemu())
            .args(self.arch.machine())
            .args(["-smp", "1"])
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
            .unwrap_or_else(|e| {
                panic!(
                    "{} (apt-get install qemu-system-x86 qemu-system-arm): {e}",
                    self.arch.qemu()
                )
            });
        wait_for_poweroff(child, &console, out, t0, self.timeout)
    }
}

/// Waits for a lab guest's QEMU to exit, or kills it at `timeout` (from
/// `t0`, when it was started) and panics with the console's tail and the
/// scenario log; then reads what the guest left: console, `rc`, boot time.
pub(crate) fn wait_for_poweroff(
    mut child: std::process::Child,
    console: &Path,
    out: tempfile::TempDir,
    t0: Instant,
    timeout: Duration,
) -> Booted {
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let console = std::fs::read_to_string(console).unwrap_or_default();
            let tail = console
                .char_indices()
                .rev()
                .nth(4000)
                .map_or(console.as_str(), |(i, _)| &console[i..]);
            panic!(
                "guest did not power off within {timeout:?}; console tail:\n{tail}\nscenario log:\n{}",
                std::fs::read_to_string(out.path().join("scenario.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = t0.elapsed();
    let console = std::fs::read_to_string(console).unwrap_or_default();
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

// --- Checks on what a guest left --------------------------------------------

/// Decompresses a gzip file to `dst`.
pub fn gunzip_to(src: &Path, dst: &Path) {
    let mut d = flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap());
    let mut out = std::fs::File::create(dst).unwrap();
    std::io::copy(&mut d, &mut out).unwrap();
}

/// A gzip file's content.
pub fn gunzip(src: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap())
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Top-level "System RAM" ranges of an iomem text, as (start, end
/// inclusive), narrowed to whole pages: `/proc/kcore` maps RAM by page, so
/// a range ending inside a page (0x9fbff on this guest) ends at the last
/// whole page there.
pub fn system_ram(iomem: &str) -> Vec<(u64, u64)> {
    system_ram_bytes(iomem)
        .into_iter()
        .map(|(s, e)| (s.next_multiple_of(4096), (e + 1) / 4096 * 4096 - 1))
        .collect()
}

/// Top-level "System RAM" ranges of an iomem text, (start, end
/// inclusive), exactly as listed.
pub fn system_ram_bytes(iomem: &str) -> Vec<(u64, u64)> {
    iomem
        .lines()
        .filter(|l| !l.starts_with(' ') && l.ends_with(" : System RAM"))
        .map(|l| {
            let (a, b) = l.split_once(" : ").unwrap().0.split_once('-').unwrap();
            (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            )
        })
        .collect()
}

/// LiME headers of a file: (start, end inclusive, offset of the data).
pub fn lime_ranges(path: &Path) -> Vec<(u64, u64, u64)> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len {
        let mut h = [0u8; 32];
        f.read_exact_at(&mut h, at).unwrap();
        assert_eq!(
            &h[0..4],
            &0x4C69_4D45u32.to_le_bytes(),
            "LiME magic at {at}"
        );
        assert_eq!(&h[4..8], &1u32.to_le_bytes(), "LiME version at {at}");
        assert_eq!(&h[24..32], &[0u8; 8], "reserved bytes at {at}");
        let s = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let e = u64::from_le_bytes(h[16..24].try_into().unwrap());
        assert!(e >= s, "range {s:#x}-{e:#x} at {at}");
        out.push((s, e, at + 32));
        at += 32 + (e - s + 1);
    }
    assert_eq!(at, len, "LiME ranges end exactly at the end of the file");
    out
}

/// True when `needle` occurs in the file (read in overlapping chunks).
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let mut keep = 0usize;
    loop {
        let n = f.read(&mut buf[keep..]).unwrap();
        if n == 0 {
            return false;
        }
        let end = keep + n;
        if buf[..end].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        keep = needle.len().min(end);
        buf.copy_within(end - keep..end, 0);
    }
}

pub fn vol_bin() -> PathBuf {
    let path = std::env::var_os("IRCAP_VOL").map_or_else(
        || PathBuf::from("/opt/ircap-ci/venv/bin/vol"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "Volatility 3 not found at {} (set IRCAP_VOL or run .ci/run, which installs it)",
        path.display()
    );
    path
}

/// Runs `vol -r json -f IMAGE [-s SYMBOLS] PLUGIN` with a fresh cache;
/// returns the rows.
pub fn vol(image: &Path, symbols: Option<&Path>, plugin: &str, cache: &Path) -> Vec<Value> {
    let mut cmd = Command::new(vol_bin());
    cmd.env("XDG_CACHE_HOME", cache).args(["-q", "-r", "json"]);
    if let Some(s) = symbols {
        cmd.arg("-s").arg(s);
    }
    let out = cmd.arg("-f").arg(image).arg(plugin).output().unwrap();
    assert!(
        out.status.success(),
        "vol {plugin} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "vol {plugin}: {e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A scratch directory, kept (and named on stderr) when `IRCAP_LAB_KEEP`
/// is set, for looking at an image after a failure.
pub fn work_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("IRCAP_LAB_KEEP").is_some() {
        dir.disable_cleanup(true);
        eprintln!("lab: keeping {}", dir.path().display());
    }
    dir
}

/// A capture's `manifest.json`.
pub fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// The row of a capture's `kernel_symbols.jsonl.gz`.
pub fn kernel_symbols_row(dir: &Path) -> Value {
    let rows = gunzip(&dir.join("kernel_symbols.jsonl.gz"));
    serde_json::from_slice(rows.split(|&b| b == b'\n').next().unwrap()).unwrap()
}

/// `ircap-collector verify DIR` passes (the suite's one such check).
pub use crate::assert_verifies as verify;
