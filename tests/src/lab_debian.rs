//! A real Debian 12 host for the lab: a rootfs built from Debian's packages
//! with `mmdebstrap`, booted on Debian's kernel ([`crate::lab::Kit`]) with
//! systemd as PID 1. Tests using it are named `lab_systemd*`.
//!
//! - [`Rootfs::get`] runs `mmdebstrap --variant=apt` with [`PACKAGES`] once,
//!   adds the lab's own unit (below) and masks the units a VM without
//!   network, tty or timers does not need, and packs it into an ext4 image
//!   with `mkfs.ext4 -d` (no loop mount). The image is cached as
//!   `<target>/lab/debian-<key>.img`, the key being a hash of everything
//!   that goes into it, so it is rebuilt only when that changes (about
//!   90 s and 160 MB of packages from deb.debian.org).
//! - [`boot`] packs a busybox initramfs that loads the virtio, ext4 and 9p
//!   modules, mounts the image (QEMU `snapshot=on`: the cached image is
//!   never written) as `/`, the test's input directory read-only at
//!   `/lab/in` and its output directory at `/lab/out` (virtio-9p), then
//!   `switch_root`s to `/sbin/init`. systemd boots to `multi-user.target`
//!   and starts `ircap-lab.service`, which runs `/lab/in/scenario.sh`
//!   (output `/lab/out/scenario.log`, status `/lab/out/rc`) and powers
//!   off. QEMU is killed at the timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::lab::{Booted, Kit};

/// Debian release of the rootfs.
pub const SUITE: &str = "bookworm";
/// The mirror `mmdebstrap` downloads from.
pub const MIRROR: &str = "http://deb.debian.org/debian";
/// Packages besides `--variant=apt` (Essential + apt): systemd as PID 1,
/// sshd and a client for real logins, `sshpass` for failed password
/// attempts, `nc` for a planted listener, `ss`/`ps`.
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "openssh-server",
    "sshpass",
    "netcat-openbsd",
    "procps",
    "iproute2",
];

/// Units a guest with no tty, network or timers does not need (masked to
/// cut boot time under TCG; `serial-getty@ttyS0` would wait 90 s for a
/// device unit no udev announces).
const MASKED: &[&str] = &[
    "serial-getty@.service",
    "getty@tty1.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "systemd-pstore.service",
];

/// The unit that runs the test's scenario once the system is up.
const LAB_UNIT: &str = "[Unit]
Description=ircap lab scenario (/lab/in/scenario.sh)
After=multi-user.target ssh.service

[Service]
Type=exec
ExecStart=/bin/sh -c '/bin/sh /lab/in/scenario.sh >/lab/out/scenario.log 2>&1; echo $? >/lab/out/rc; sync; systemctl poweroff --force'

[Install]
WantedBy=multi-user.target
";

/// Modules the initramfs loads, in dependency order, relative to
/// `lib/modules/<release>/kernel` (`depends=` of each read once from its
/// `.modinfo`).
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "drivers/block/virtio_blk",
    "drivers/char/hw_random/virtio-rng",
    "lib/crc16",
    "crypto/crc32c_generic",
    "fs/mbcache",
    "fs/jbd2/jbd2",
    "fs/ext4/ext4",
    "fs/netfs/netfs",
    "fs/fscache/fscache",
    "net/9p/9pnet",
    "net/9p/9pnet_virtio",
    "fs/9p/9p",
];

/// Size of the (sparse) root image: room for the captures the collector
/// stores in the guest.
const IMAGE_SIZE: &str = "2G";

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do insmod /lib/mod/$m.ko || echo "IRCAP-LAB: insmod $m failed"; done
mount -t ext4 /dev/vda /newroot || { echo "IRCAP-LAB: no root file system"; poweroff -f; }
mkdir -p /newroot/lab/in /newroot/lab/out
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=1048576 labin /newroot/lab/in || echo "IRCAP-LAB: no /lab/in"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 labout /newroot/lab/out || echo "IRCAP-LAB: no /lab/out"
echo "IRCAP-LAB-BOOTED $(cut -d' ' -f1 /proc/uptime)"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"#;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cached Debian root image.
#[derive(Debug)]
pub struct Rootfs {
    /// The ext4 image (never written: guests boot it with `snapshot=on`).
    pub image: PathBuf,
}

impl Rootfs {
    /// The image, built on first use (idempotent; one per test process).
    ///
    /// # Panics
    /// When `mmdebstrap` or `mkfs.ext4` fails.
    pub fn get() -> &'static Rootfs {
        static ROOTFS: OnceLock<Rootfs> = OnceLock::new();
        ROOTFS.get_or_init(Self::build)
    }

    /// The cache key: a hash of everything the image is made from.
    #[must_use]
    pub fn key() -> String {
        let mut h = Sha256::new();
        for part in [SUITE, MIRROR, LAB_UNIT, IMAGE_SIZE, "labhost"] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for p in PACKAGES.iter().chain(MASKED) {
            h.update(p.as_bytes());
            h.update([0]);
        }
        hex(&h.finalize()).chars().take(16).collect()
    }

    fn build() -> Rootfs {
        let cache = &Kit::get().cache;
        let image = cache.join(format!("debian-{SUITE}-{}.img", Self::key()));
        if image.exists() {
            return Rootfs { image };
        }
        let partial = cache.join(format!(".debian-{}.partial", Self::key()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).unwrap();
        let root = partial.join("root");
        let t0 = Instant::now();
        run(Command::new("mmdebstrap")
            .args(["--variant=apt", "--quiet"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .args([
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                SUITE,
            ])
            .arg(&root)
            .arg(MIRROR));
        customize(&root);
        let img = partial.join("disk.img");
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "labroot", "-d"])
            .arg(&root)
            .arg(&img)
            .arg(IMAGE_SIZE));
        std::fs::rename(&img, &image).unwrap();
        let _ = std::fs::remove_dir_all(&partial);
        eprintln!("lab: built {} in {:.0?}", image.display(), t0.elapsed());
        Rootfs { image }
    }
}

fn customize(root: &Path) {
    let system = root.join("etc/systemd/system");
    std::fs::write(root.join("etc/hostname"), "labhost\n").unwrap();
    std::fs::write(
        root.join("etc/hosts"),
        "127.0.0.1 localhost\n127.0.1.1 labhost\n",
    )
    .unwrap();
    let link = |target: &str, at: PathBuf| {
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(target, at).unwrap();
    };
    link(
        "/lib/systemd/system/multi-user.target",
        system.join("default.target"),
    );
    for unit in MASKED {
        link("/dev/null", system.join(unit));
    }
    std::fs::write(system.join("ircap-lab.service"), LAB_UNIT).unwrap();
    std::fs::create_dir_all(system.join("multi-user.target.wants")).unwrap();
    link(
        "/etc/systemd/system/ircap-lab.service",
        system.join("multi-user.target.wants/ircap-lab.service"),
    );
}

/// A Debian guest to boot.
#[derive(Debug)]
pub struct DebianGuest {
    /// RAM in MiB.
    pub memory_mb: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Hard limit for boot, scenario and poweroff.
    pub timeout: Duration,
    /// The directory the guest sees read-only as `/lab/in`; the scenario
    /// is `scenario.sh` in it.
    pub input: tempfile::TempDir,
}

impl DebianGuest {
    /// A guest running `scenario` (a `sh` script).
    #[must_use]
    pub fn new(scenario: &str) -> Self {
        let input = tempfile::tempdir().unwrap();
        std::fs::write(input.path().join("scenario.sh"), scenario).unwrap();
        Self {
            memory_mb: 1024,
            cpus: 1,
            timeout: Duration::from_secs(600),
            input,
        }
    }

    /// `/lab/in/<name>` on the host.
    #[must_use]
    pub fn input(&self, name: &str) -> PathBuf {
        self.input.path().join(name)
    }

    /// Boots the cached image and waits for poweroff, or kills QEMU at
    /// the timeout. `Booted::path` names files of `/lab/out`.
    ///
    /// # Panics
    /// On a timeout or when QEMU cannot start.
    pub fn boot(&self) -> Booted {
        let kit = Kit::get();
        let rootfs = Rootfs::get();
        let work = tempfile::tempdir().unwrap();
        let initrd = initramfs(kit, work.path());
        let mut out = tempfile::tempdir().unwrap();
        if std::env::var_os("IRCAP_LAB_KEEP").is_some() {
            out.disable_cleanup(true);
            eprintln!("lab: keeping {}", out.path().display());
        }
        let console = work.path().join("console.log");
        let t0 = Instant::now();
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg,thread=multi", "-cpu", "max,la57=off"])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-m", &self.memory_mb.to_string()])
            .args(["-nic", "none", "-display", "none", "-monitor", "none"])
            .arg("-no-reboot")
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&kit.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw,snapshot=on",
                rootfs.image.display()
            ))
            .args(["-device", "virtio-rng-pci"])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=labin,security_model=none,readonly=on",
                self.input.path().display()
            ))
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=labout,security_model=none",
                out.path().display()
            ))
            // The snapshot overlay goes to TMPDIR; keep it beside the
            // other temporary files.
            .env("TMPDIR", work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 (apt-get install qemu-system-x86)");
        crate::lab::wait_for_poweroff(child, &console, out, t0, self.timeout)
    }
}

/// The busybox initramfs that mounts the image and hands over to systemd.
fn initramfs(kit: &Kit, work: &Path) -> PathBuf {
    let root = work.join("initrd");
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib/mod"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy(&kit.busybox, root.join("bin/busybox")).unwrap();
    let modules = kit.cache.join(format!(
        "root-{}/lib/modules/{}/kernel",
        kit.release, kit.release
    ));
    let mut names = Vec::new();
    for m in MODULES {
        let src = modules.join(format!("{m}.ko"));
        let name = m.rsplit('/').next().unwrap_or(m);
        std::fs::copy(&src, root.join(format!("lib/mod/{name}.ko")))
            .unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        names.push(name);
    }
    let init = root.join("init");
    std::fs::write(&init, INIT.replace("MODULES", &names.join(" "))).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let initrd = work.join("initrd.cpio");
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
    initrd
}
