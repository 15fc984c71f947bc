//! Helpers for the cross-crate end-to-end tests in `tests/tests/`: find the
//! real `ircap-agent` and `ircap-collector` binaries that
//! `cargo test --workspace` built, make a PKI, run a collector on loopback
//! (a process, [`Collector`], or in the test process,
//! [`inproc::InProcessCollector`]), and talk to it with a raw gRPC client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bomb;
pub mod certs;
pub mod docs;
pub mod inproc;
pub mod lab;
pub mod lab_debian;
pub mod packaging;
pub mod proxy;
pub mod ssm;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use ircap_proto::v1::capture_upload_client::CaptureUploadClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub mod s3;

/// Test result type.
pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The workspace's build directory for the current profile
/// (`target/debug` when run by `cargo test`).
#[must_use]
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A command running one of the workspace binaries.
///
/// # Panics
/// When the binary was not built: run the tests with
/// `cargo test --workspace`, which builds every binary that has tests.
#[must_use]
pub fn bin(name: &str) -> Command {
    let path = build_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` so every binary is built",
        path.display()
    );
    Command::new(path)
}

/// Asserts that `ircap-collector verify DIR` passes, with its output on
/// failure.
///
/// # Panics
/// When the command cannot run or the capture does not verify.
pub fn assert_verifies(dir: &Path) {
    let out = bin("ircap-collector")
        .arg("verify")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "verify {} failed: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PKI made by `ircap-collector pki init` in `dir` with agents `web-1`,
/// `web-2` and analyst `alice`.
pub fn pki(dir: &Path) -> PathBuf {
    let out = bin("ircap-collector")
        .args(["pki", "init", "--out"])
        .arg(dir)
        .args(["--agent", "web-1", "--agent", "web-2", "--analyst", "alice"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

/// Where a test collector listens and what it serves from, whether it
/// runs as a process ([`Collector`]) or in the test process
/// ([`inproc::InProcessCollector`]); both dereference to it.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves metrics, when started with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    /// Its store directory.
    pub store: PathBuf,
    /// The PKI it trusts.
    pub pki: PathBuf,
}

/// A collector process on loopback; killed when dropped.
pub struct Collector {
    /// The process.
    pub child: Child,
    served: Served,
}

impl std::ops::Deref for Collector {
    type Target = Served;

    fn deref(&self) -> &Served {
        &self.served
    }
}

impl Collector {
    /// Starts `ircap-collector serve` on 127.0.0.1 (port 0 unless
    /// `port` is given) with a file store in `store`.
    pub fn start(pki: &Path, store: &Path, port: u16) -> Self {
        Self::builder(pki, store).port(port).start()
    }

    /// A collector to start, trusting `pki` (its `ca.pem`, `server.pem`
    /// and `server.key`) and storing in the directory `store`; every other
    /// setting is one of [`CollectorBuilder`]'s methods.
    #[must_use]
    pub fn builder(pki: &Path, store: &Path) -> CollectorBuilder {
        let mut cmd = bin("ircap-collector");
        cmd.stderr(Stdio::null());
        CollectorBuilder {
            cmd,
            url: format!("file://{}", store.display()),
            store: store.to_path_buf(),
            pki: pki.to_path_buf(),
            port: 0,
            args: Vec::new(),
        }
    }
}

impl Served {
    /// `https://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The stored directory of a capture uploaded by `agent`.
    #[must_use]
    pub fn capture_dir(&self, agent: &str, capture_id: &str) -> PathBuf {
        self.store.join("captures").join(agent).join(capture_id)
    }

    /// The index record of a committed capture in a file store
    /// (`index/records/<day>/<id>.json`), if there is one.
    #[must_use]
    pub fn index_record(&self, capture_id: &str) -> Option<PathBuf> {
        let days = std::fs::read_dir(self.store.join("index/records")).ok()?;
        days.filter_map(Result::ok)
            .map(|day| day.path().join(format!("{capture_id}.json")))
            .find(|p| p.is_file())
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a test [`Collector`] is started (from [`Collector::builder`]).
pub struct CollectorBuilder {
    cmd: Command,
    url: String,
    store: PathBuf,
    pki: PathBuf,
    port: u16,
    args: Vec<String>,
}

impl CollectorBuilder {
    /// Listen on this loopback port (default 0: any free one).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Extra `serve` arguments.
    #[must_use]
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// An environment variable of the collector process.
    #[must_use]
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Appends the collector's stderr to `path` (default: discarded).
    ///
    /// # Panics
    /// When the file cannot be opened.
    #[must_use]
    pub fn log(mut self, path: &Path) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.cmd.stderr(Stdio::from(file));
        self
    }

    /// Runs `cmd` instead of the bare binary: a wrapper (`unshare ...
    /// ircap-collector`) or a command with its environment and stderr set
    /// (an S3 store's credentials). `serve` and its arguments are appended.
    #[must_use]
    pub fn command(mut self, cmd: Command) -> Self {
        self.cmd = cmd;
        self
    }

    /// Serve this store URL (`s3://...`) instead of the file store; the
    /// directory given to the builder is still what [`Collector::store`]
    /// reports.
    #[must_use]
    pub fn store_url(mut self, url: &str) -> Self {
        url.clone_into(&mut self.url);
        self
    }

    /// Starts `serve` on 127.0.0.1 and waits for its listening line.
    ///
    /// # Panics
    /// When it does not print its listening line (e.g. it refused to start).
    #[must_use]
    pub fn start(self) -> Collector {
        let Self {
            mut cmd,
            url,
            store,
            pki,
            port,
            args,
        } = self;
        // Sign receipts with the PKI's receipt key, as `pki init` makes
        // one, unless the test brings its own or removed it.
        let receipt_key = pki.join("receipt.key");
        let mut receipt = Vec::new();
        if receipt_key.exists() && !args.iter().any(|a| a == "--receipt-key") {
            receipt.push("--receipt-key".into());
            receipt.push(receipt_key.into_os_string());
            receipt.push("--receipt-cert".into());
            receipt.push(pki.join("receipt.pem").into_os_string());
        }
        let mut child = cmd
            .arg("serve")
            .args(receipt)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--store", &url])
            .arg("--ca")
            .arg(pki.join("ca.pem"))
            .arg("--cert")
            .arg(pki.join("server.pem"))
            .arg("--key")
            .arg(pki.join("server.key"))
            .args(&args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("listening line");
        let addr = v["listening"].as_str().unwrap().parse().unwrap();
        let metrics = v["metrics"].as_str().map(|m| m.parse().unwrap());
        Collector {
            child,
            served: Served {
                addr,
                metrics,
                store,
                pki,
            },
        }
    }
}

/// A copy of directory `from` (a capture, say) at `to`, recursively.
///
/// # Panics
/// When a file cannot be read or written.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    for e in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// Every record of a stored `.jsonl.gz` table, parsed strictly.
///
/// # Panics
/// When the file cannot be read or a line is not JSON.
#[must_use]
pub fn table_rows(path: &Path) -> Vec<serde_json::Value> {
    use std::io::Read as _;
    let mut text = String::new();
    flate2::read::MultiGzDecoder::new(
        std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .read_to_string(&mut text)
    .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// The command `ircap-collector CMD --server URL ARGS` with analyst
/// `who`'s certificate from `pki`.
#[must_use]
pub fn analyst_command(url: &str, pki: &Path, who: &str, cmd: &str, args: &[&str]) -> Command {
    let mut c = bin("ircap-collector");
    c.arg(cmd)
        .args(["--server", url])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{who}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{who}.key")))
        .args(args);
    c
}

/// [`analyst_command`], run to completion.
///
/// # Panics
/// When the command cannot run.
#[must_use]
pub fn analyst(url: &str, pki: &Path, who: &str, cmd: &str, args: &[&str]) -> std::process::Output {
    analyst_command(url, pki, who, cmd, args).output().unwrap()
}

/// Every non-empty stdout line of a command, parsed as JSON.
///
/// # Panics
/// On a line that is not JSON, naming it.
#[must_use]
pub fn json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

/// An `ircap-agent serve` process; killed when dropped.
pub struct ServeAgent(pub Child);

impl ServeAgent {
    /// `ircap-agent serve` as `who` (certificates from `pki`, the default
    /// policy) against the collector at `url`, with a one-second
    /// heartbeat and backoff; its config is `<tmp>/<who>.toml`, its stderr
    /// `<tmp>/<who>.log`.
    ///
    /// # Panics
    /// When the config cannot be written or the agent cannot start.
    #[must_use]
    pub fn start(tmp: &Path, url: &str, pki: &Path, who: &str) -> Self {
        let config = tmp.join(format!("{who}.toml"));
        std::fs::write(
            &config,
            format!(
                "collector = \"{url}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nheartbeat = \"1s\"\n",
                pki.join("ca.pem").display(),
                pki.join(format!("{who}.pem")).display(),
                pki.join(format!("{who}.key")).display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(tmp.join(format!("{who}.log"))).unwrap();
        Self(
            bin("ircap-agent")
                .args(["serve", "--no-imds", "--backoff-max", "1s", "--config"])
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for ServeAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ircap-agent capture --no-imds --collector URL` with `who`'s
/// certificate from `pki`, plus `extra` arguments.
pub fn agent_capture(url: &str, pki: &Path, who: &str, extra: &[&str]) -> std::process::Output {
    bin("ircap-agent")
        .args(["capture", "--no-imds", "--collector", url])
        .arg("--ca")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{who}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{who}.key")))
        .args(extra)
        .output()
        .unwrap()
}

/// A raw gRPC client to the collector, presenting `who`'s certificate
/// (`None`: no client certificate at all) and trusting `ca_pem`.
pub async fn client(
    addr: SocketAddr,
    ca_pem: &Path,
    who: Option<(&Path, &str)>,
) -> CaptureUploadClient<Channel> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca_pem).unwrap()));
    if let Some((dir, name)) = who {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(dir.join(format!("{name}.pem"))).unwrap(),
            std::fs::read(dir.join(format!("{name}.key"))).unwrap(),
        ));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    CaptureUploadClient::new(channel)
}
