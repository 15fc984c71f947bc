//! The collector's security boundary: who may upload (agents only, with an unexpired certificate from the
//! collector's CA, only into captures they opened), what is refused
//! (corrupted chunks, artifacts whose total digest or size is wrong,
//! oversized messages, hostile artifact names and capture ids, wrong
//! offsets, manifests that do not match the bytes received, a second
//! commit), what an upload cut off before its commit leaves behind, and how
//! it starts (TOML config file, a bad certificate path failing fast) and
//! reports health.
//!
//! Most cases talk gRPC to a collector served in this process
//! ([`InProcessCollector`]: the library's `serve`, as the binary runs it);
//! the ones about the binary itself (its config file and exit, a store in
//! its own mount namespace, SIGKILL mid-commit) start the process.

use std::error::Error;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ircap_collector::serve::ServeConfig;
use ircap_e2e::bomb::gzip_bomb;
use ircap_e2e::certs::{issue_agent_cert, issue_agent_cert_with};
use ircap_e2e::inproc::InProcessCollector;
use ircap_e2e::{Collector, Served, agent_capture, bin, client, pki};
use ircap_proto::manifest::{
    AgentInfo, ArtifactEntry, Encoding, FORMAT_VERSION, HostIdentity, Manifest,
};
use ircap_proto::v1::capture_upload_client::CaptureUploadClient;
use ircap_proto::v1::{
    ArtifactEnd, ArtifactHeader, Chunk, CommitCaptureRequest, OpenCaptureRequest, UploadAck,
    UploadMessage, upload_message,
};
use rcgen::ExtendedKeyUsagePurpose;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status, Streaming};

type TestResult = Result<(), Box<dyn Error>>;

/// A capture id in UUIDv7 shape.
const CAPTURE: &str = "01a20000-0000-7000-8000-000000000001";
/// A second capture id, for tests that need two.
const OTHER_CAPTURE: &str = "01a20000-0000-7000-8000-000000000002";
/// The artifact uploaded by the upload tests.
const ARTIFACT: &str = "t.jsonl.gz";
/// Longest any single call may take before the test fails instead of hanging.
const CALL: Duration = Duration::from_secs(30);

/// A PKI and a store in fresh temporary directories, and a collector on
/// them: served in this process, or (`Setup<Collector>`) the binary.
struct Setup<C = InProcessCollector> {
    tmp: tempfile::TempDir,
    collector: C,
}

/// A fresh temporary directory with a PKI (`pki/`) and an empty store
/// directory (`store/`).
fn dirs() -> Result<(tempfile::TempDir, std::path::PathBuf, std::path::PathBuf), Box<dyn Error>> {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store)?;
    Ok((tmp, pki_dir, store))
}

impl Setup {
    fn new() -> Result<Self, Box<dyn Error>> {
        Self::with(ServeConfig::default())
    }

    /// A collector in this process with `config` over the defaults.
    fn with(config: ServeConfig) -> Result<Self, Box<dyn Error>> {
        let (tmp, pki_dir, store) = dirs()?;
        let collector = InProcessCollector::builder(&pki_dir, &store)
            .config(config)
            .try_start()?;
        Ok(Self { tmp, collector })
    }

    /// What the collector logged so far.
    fn log(&self) -> String {
        self.collector.log()
    }
}

impl Setup<Collector> {
    /// The `ircap-collector serve` process, its stderr in
    /// `collector.log`.
    fn process() -> Result<Self, Box<dyn Error>> {
        let (tmp, pki_dir, store) = dirs()?;
        let collector = Collector::builder(&pki_dir, &store)
            .log(&tmp.path().join("collector.log"))
            .start();
        Ok(Self { tmp, collector })
    }
}

impl<C: Deref<Target = Served>> Setup<C> {
    fn pki(&self) -> &Path {
        &self.collector.pki
    }

    async fn client(&self, who: &str) -> CaptureUploadClient<Channel> {
        client(
            self.collector.addr,
            &self.pki().join("ca.pem"),
            Some((self.pki(), who)),
        )
        .await
    }
}

/// Kills a spawned process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn timed<T>(fut: impl Future<Output = T>) -> Result<T, Box<dyn Error>> {
    tokio::time::timeout(CALL, fut)
        .await
        .map_err(|_| format!("call did not finish within {CALL:?}").into())
}

fn sha256(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// The error of a call that must fail, or a test failure naming `what`.
fn expect_err<T>(result: Result<T, Status>, what: &str) -> Result<Status, Box<dyn Error>> {
    match result {
        Ok(_) => Err(format!("{what}: succeeded, but it must fail").into()),
        Err(status) => Ok(status),
    }
}

fn assert_code(status: &Status, code: Code, what: &str) {
    assert_eq!(
        status.code(),
        code,
        "{what}: {:?}: {}",
        status.code(),
        status.message()
    );
}

async fn open(
    c: &mut CaptureUploadClient<Channel>,
    capture_id: &str,
) -> Result<tonic::Response<ircap_proto::v1::OpenCaptureResponse>, Status> {
    c.open_capture(OpenCaptureRequest {
        capture_id: capture_id.to_owned(),
        hostname: "test-host".to_owned(),
    })
    .await
}

fn header(capture_id: &str, offset: u64) -> UploadMessage {
    named_header(capture_id, ARTIFACT, offset)
}

/// A header for artifact `name` (identity encoding).
fn named_header(capture_id: &str, name: &str, offset: u64) -> UploadMessage {
    UploadMessage {
        body: Some(upload_message::Body::Header(ArtifactHeader {
            capture_id: capture_id.to_owned(),
            name: name.to_owned(),
            encoding: "identity".to_owned(),
            offset,
        })),
    }
}

fn chunk(offset: u64, data: &[u8], sha256: Vec<u8>) -> UploadMessage {
    UploadMessage {
        body: Some(upload_message::Body::Chunk(Chunk {
            offset,
            data: data.to_vec().into(),
            sha256,
        })),
    }
}

fn end(data: &[u8]) -> UploadMessage {
    UploadMessage {
        body: Some(upload_message::Body::End(ArtifactEnd {
            size: data.len() as u64,
            sha256: sha256_hex(data),
            size_uncompressed: data.len() as u64,
            sha256_uncompressed: sha256_hex(data),
        })),
    }
}

/// An end for identity-encoded `data` that claims `size` and `sha256` as
/// the stored total; the content digest is the true one.
fn end_claiming(data: &[u8], size: u64, sha256: &str) -> UploadMessage {
    UploadMessage {
        body: Some(upload_message::Body::End(ArtifactEnd {
            size,
            sha256: sha256.to_owned(),
            size_uncompressed: data.len() as u64,
            sha256_uncompressed: sha256_hex(data),
        })),
    }
}

/// An interactive upload stream: messages go in through `tx`, acks come
/// back on `acks`.
struct Upload {
    tx: mpsc::Sender<UploadMessage>,
    acks: Streaming<UploadAck>,
}

impl Upload {
    /// Starts a stream with `first` already queued.
    async fn start(
        c: &mut CaptureUploadClient<Channel>,
        first: UploadMessage,
    ) -> Result<Result<Self, Status>, Box<dyn Error>> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await?;
        Ok(timed(c.upload_artifact(ReceiverStream::new(rx)))
            .await?
            .map(|r| Self {
                tx,
                acks: r.into_inner(),
            }))
    }

    async fn send(&self, msg: UploadMessage) -> TestResult {
        self.tx.send(msg).await?;
        Ok(())
    }

    /// The next ack; `Ok(None)` when the stream ended cleanly.
    async fn ack(&mut self) -> Result<Result<Option<UploadAck>, Status>, Box<dyn Error>> {
        timed(self.acks.message()).await
    }

    /// The next ack, which must be there.
    async fn expect_ack(&mut self, what: &str) -> Result<UploadAck, Box<dyn Error>> {
        match self.ack().await? {
            Ok(Some(ack)) => Ok(ack),
            Ok(None) => Err(format!("{what}: ack stream ended without an ack").into()),
            Err(s) => {
                Err(format!("{what}: ack stream failed: {:?}: {}", s.code(), s.message()).into())
            }
        }
    }

    /// The error the stream ends with (skipping acks before it).
    async fn expect_error(&mut self, what: &str) -> Result<Status, Box<dyn Error>> {
        loop {
            match self.ack().await? {
                Ok(Some(_)) => {}
                Ok(None) => return Err(format!("{what}: stream ended without an error").into()),
                Err(status) => return Ok(status),
            }
        }
    }
}

/// The error a stream starting with `first` fails with, whether the call
/// itself or its ack stream carries it.
async fn upload_fails(
    c: &mut CaptureUploadClient<Channel>,
    first: UploadMessage,
    what: &str,
) -> Result<Status, Box<dyn Error>> {
    match Upload::start(c, first).await? {
        Err(status) => Ok(status),
        Ok(mut up) => up.expect_error(what).await,
    }
}

/// Web-1 opens [`CAPTURE`]; a chunk with a wrong SHA-256 is refused with
/// DATA_LOSS and nothing of it is stored; a correct upload then finishes.
async fn corrupt_then_good_upload<C: Deref<Target = Served>>(s: &Setup<C>) -> TestResult {
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;
    let stored = s.collector.capture_dir("web-1", CAPTURE).join(ARTIFACT);

    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    let first = up.expect_ack("corrupt upload").await?;
    assert_eq!(first.durable_offset, 0);
    assert!(!first.finished);
    up.send(chunk(0, b"hello", sha256(b"hellp"))).await?;
    let status = up.expect_error("corrupt chunk").await?;
    assert_code(&status, Code::DataLoss, "corrupt chunk");
    drop(up);
    let len = std::fs::metadata(&stored).map_or(0, |m| m.len());
    assert_eq!(
        len,
        0,
        "{} holds bytes of a corrupt chunk",
        stored.display()
    );

    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("good upload").await?.durable_offset, 0);
    up.send(chunk(0, b"hello", sha256(b"hello"))).await?;
    let ack = up.expect_ack("good chunk").await?;
    assert_eq!(ack.durable_offset, 5);
    up.send(end(b"hello")).await?;
    let ack = up.expect_ack("artifact end").await?;
    assert!(ack.finished, "artifact not finished: {ack:?}");
    assert_eq!(ack.durable_offset, 5);
    assert_eq!(std::fs::read(&stored)?, b"hello");
    Ok(())
}

/// A manifest for [`CAPTURE`] listing [`ARTIFACT`] as `hello` with
/// `sha256_stored` as given.
fn manifest(sha256_stored: &str) -> Result<Vec<u8>, Box<dyn Error>> {
    let m = Manifest {
        format_version: FORMAT_VERSION,
        capture_id: CAPTURE.into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        ended_at: "2026-01-01T00:00:01Z".into(),
        status: ircap_proto::manifest::CaptureStatus::Complete,
        host: HostIdentity::default(),
        agent: AgentInfo::default(),
        options: serde_json::Value::Null,
        ssm_command_id: None,
        artifacts: vec![ArtifactEntry {
            name: ARTIFACT.into(),
            kind: "test".into(),
            content_type: "application/x-ndjson".into(),
            encoding: Encoding::Identity,
            size_stored: 5,
            size_uncompressed: 5,
            sha256_stored: sha256_stored.into(),
            sha256_uncompressed: sha256_hex(b"hello"),
            started_at: String::new(),
            ended_at: String::new(),
            record_count: None,
            error_count: 0,
            errors: vec![],
        }],
        error_count: 0,
        errors: vec![],
        collector_receipt: None,
        case: None,
    };
    Ok(serde_json::to_vec(&m)?)
}

fn commit_request(manifest_json: Vec<u8>) -> CommitCaptureRequest {
    CommitCaptureRequest {
        capture_id: CAPTURE.into(),
        manifest_json,
    }
}

/// DER of the first certificate in a PEM file.
fn first_cert_der(pem_path: &Path) -> Result<Vec<u8>, Box<dyn Error>> {
    let pem = std::fs::read_to_string(pem_path)?;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    assert!(!body.is_empty(), "no certificate in {}", pem_path.display());
    Ok(base64::engine::general_purpose::STANDARD.decode(body.trim())?)
}

/// A TLS channel to `addr` trusting `pki/ca.pem`, presenting `who`'s cert.
fn channel(addr: SocketAddr, pki: &Path, who: &str) -> Result<Channel, Box<dyn Error>> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.join("ca.pem"))?))
        .identity(Identity::from_pem(
            std::fs::read(pki.join(format!("{who}.pem")))?,
            std::fs::read(pki.join(format!("{who}.key")))?,
        ));
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_lazy())
}

/// Every path below `root` (not following symlinks), relative to it and
/// sorted.
fn tree(root: &Path) -> Result<Vec<String>, Box<dyn Error>> {
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            found.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
            if entry.file_type()?.is_dir() {
                todo.push(path);
            }
        }
    }
    // The collector's own heartbeat document (daemon mode), written by
    // every replica at start: `control/replicas/<uuid>` and nothing else
    // (the empty `control` directory itself is part of the expected tree).
    // Staging holds bytes of artifacts still arriving, below names the
    // artifact-name rule checked; tests look there themselves.
    found.retain(|p| !p.starts_with("staging/"));
    found.retain(|p| {
        let replica_doc = p.strip_prefix("control/replicas/").is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        });
        !(p == "control/replicas" || replica_doc)
    });
    found.sort();
    Ok(found)
}

/// The store layout [`tree`] must find when nothing but `captures` (as
/// `<agent>/<capture id>/<artifact>` paths, every level listed) and the
/// states of open captures were written.
fn expected_store(captures: &[&str], states: &[&str]) -> Vec<String> {
    let mut v = vec![
        // The file store's own temporary files (emptied at start).
        ".tmp".to_owned(),
        "captures".to_owned(),
        "control".to_owned(),
        "index".to_owned(),
        "staging".to_owned(),
        "state".to_owned(),
    ];
    v.extend(captures.iter().map(|p| format!("captures/{p}")));
    if !states.is_empty() {
        v.push("state/open".to_owned());
    }
    // An open capture: its state and its open marker.
    v.extend(states.iter().map(|id| format!("state/{id}.json")));
    v.extend(states.iter().map(|id| format!("state/open/{id}")));
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn analyst_certificate_cannot_upload() -> TestResult {
    let s = Setup::new()?;
    let mut c = s.client("alice").await;
    let status = expect_err(timed(open(&mut c, CAPTURE)).await?, "analyst open_capture")?;
    assert_code(&status, Code::PermissionDenied, "analyst open_capture");

    let url = s.collector.url();
    let pki_dir = s.pki().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        agent_capture(
            &url,
            &pki_dir,
            "alice",
            &["--no-logs", "--upload-attempts", "1"],
        )
    })
    .await?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "agent with an analyst certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["status"], "failed", "{summary}");
    assert!(
        summary["error"]
            .as_str()
            .is_some_and(|e| e.contains("PermissionDenied")),
        "error does not say PermissionDenied: {summary}"
    );
    let alice = s.collector.store.join("captures").join("alice");
    assert!(!alice.exists(), "{} exists", alice.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_from_another_ca_is_refused() -> TestResult {
    let s = Setup::new()?;
    let other = tempfile::tempdir()?;
    let other_pki = pki(&other.path().join("pki"));

    // Trusts the right CA (so the server is accepted) but presents web-1
    // from the other CA.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(
            s.pki().join("ca.pem"),
        )?))
        .identity(Identity::from_pem(
            std::fs::read(other_pki.join("web-1.pem"))?,
            std::fs::read(other_pki.join("web-1.key"))?,
        ));
    let ch = Endpoint::from_shared(s.collector.url())?
        .tls_config(tls)?
        .connect_lazy();
    let mut foreign = CaptureUploadClient::new(ch);
    let status = expect_err(
        timed(open(&mut foreign, CAPTURE)).await?,
        "open_capture with a foreign CA's certificate",
    )?;
    eprintln!(
        "foreign certificate refused: {:?}: {}",
        status.code(),
        status.message()
    );
    let web1 = s.collector.capture_dir("web-1", CAPTURE);
    assert!(!web1.exists(), "{} exists", web1.display());

    // The collector still serves its own agents.
    let mut good = s.client("web-1").await;
    let opened = timed(open(&mut good, CAPTURE)).await??.into_inner();
    assert!(!opened.complete);
    assert!(opened.artifacts.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_client_certificate_is_refused() -> TestResult {
    let s = Setup::new()?;
    let mut c = client(s.collector.addr, &s.pki().join("ca.pem"), None).await;
    let status = expect_err(
        timed(open(&mut c, CAPTURE)).await?,
        "open_capture without a client certificate",
    )?;
    eprintln!(
        "no certificate refused: {:?}: {}",
        status.code(),
        status.message()
    );
    let captures = s.collector.store.join("captures");
    let any = std::fs::read_dir(&captures).map_or(0, Iterator::count);
    assert_eq!(any, 0, "{} is not empty", captures.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_cannot_touch_another_agents_capture() -> TestResult {
    let s = Setup::new()?;
    let mut web1 = s.client("web-1").await;
    timed(open(&mut web1, CAPTURE)).await??;

    let mut web2 = s.client("web-2").await;
    let status = expect_err(
        timed(open(&mut web2, CAPTURE)).await?,
        "web-2 reopening web-1's capture",
    )?;
    assert_code(
        &status,
        Code::PermissionDenied,
        "web-2 reopening web-1's capture",
    );

    let status = upload_fails(
        &mut web2,
        header(CAPTURE, 0),
        "web-2 uploading into web-1's capture",
    )
    .await?;
    assert_code(
        &status,
        Code::PermissionDenied,
        "web-2 uploading into web-1's capture",
    );

    let status = expect_err(
        timed(web2.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?))).await?,
        "web-2 committing web-1's capture",
    )?;
    assert_code(
        &status,
        Code::PermissionDenied,
        "web-2 committing web-1's capture",
    );

    let web2_dir = s.collector.store.join("captures").join("web-2");
    assert!(!web2_dir.exists(), "{} exists", web2_dir.display());
    assert!(
        !s.collector
            .capture_dir("web-1", CAPTURE)
            .join(ARTIFACT)
            .exists()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_chunk_is_refused_and_nothing_is_stored() -> TestResult {
    let s = Setup::new()?;
    corrupt_then_good_upload(&s).await
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_requires_a_matching_manifest_and_happens_once() -> TestResult {
    let s = Setup::new()?;
    corrupt_then_good_upload(&s).await?;
    let dir = s.collector.capture_dir("web-1", CAPTURE);
    let mut c = s.client("web-1").await;

    let wrong = sha256_hex(b"hellp");
    let status = expect_err(
        timed(c.commit_capture(commit_request(manifest(&wrong)?))).await?,
        "commit with a wrong digest",
    )?;
    assert_code(
        &status,
        Code::FailedPrecondition,
        "commit with a wrong digest",
    );
    assert!(
        status.message().contains(ARTIFACT),
        "refusal does not name {ARTIFACT}: {}",
        status.message()
    );
    assert!(!dir.join("manifest.json").exists());

    let done = timed(c.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?)))
        .await??
        .into_inner();
    assert_eq!(done.status, "complete");
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let receipt = &stored["collector_receipt"];
    assert_eq!(receipt["peer_identity"], "web-1", "{stored}");
    let fingerprint = sha256_hex(&first_cert_der(&s.pki().join("web-1.pem"))?);
    assert_eq!(
        receipt["peer_certificate_sha256"], fingerprint,
        "receipt: {receipt}"
    );
    let returned: serde_json::Value = serde_json::from_str(&done.receipt_json)?;
    assert_eq!(&returned, receipt);

    ircap_e2e::assert_verifies(&dir);

    let status = expect_err(
        timed(c.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?))).await?,
        "second commit",
    )?;
    assert_code(&status, Code::AlreadyExists, "second commit");
    let reopened = timed(open(&mut c, CAPTURE)).await??.into_inner();
    assert!(reopened.complete);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn chunk_at_the_wrong_offset_is_refused() -> TestResult {
    let s = Setup::new()?;
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("header").await?.durable_offset, 0);
    up.send(chunk(3, b"hello", sha256(b"hello"))).await?;
    let status = up.expect_error("chunk at offset 3").await?;
    assert_code(&status, Code::FailedPrecondition, "chunk at offset 3");
    let stored = s.collector.capture_dir("web-1", CAPTURE).join(ARTIFACT);
    assert_eq!(std::fs::metadata(&stored).map_or(0, |m| m.len()), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_reads_a_config_file_and_fails_fast_on_a_bad_certificate() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store)?;
    let path_str = |p: &Path| -> Result<String, Box<dyn Error>> {
        Ok(p.to_str().ok_or("non-UTF-8 temp path")?.to_owned())
    };
    let config = tmp.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstore = {:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            format!("file://{}", path_str(&store)?),
            path_str(&pki_dir.join("ca.pem"))?,
            path_str(&pki_dir.join("server.pem"))?,
            path_str(&pki_dir.join("server.key"))?,
        ),
    )?;

    let mut child = Running(
        bin("ircap-collector")
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().ok_or("no stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = timed(line).await???;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("listening line {line:?}: {e}"))?;
    let addr: SocketAddr = v["listening"]
        .as_str()
        .ok_or_else(|| format!("no listening address in {line:?}"))?
        .parse()?;
    assert!(addr.ip().is_loopback());
    assert_ne!(addr.port(), 0);
    let mut c = client(addr, &pki_dir.join("ca.pem"), Some((&pki_dir, "web-1"))).await;
    timed(open(&mut c, CAPTURE)).await??;
    assert!(store.join("state").join(format!("{CAPTURE}.json")).exists());
    drop(child);

    // A certificate path that does not exist: a quick failure naming it.
    let mut bad = Running(
        bin("ircap-collector")
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(format!("file://{}", store.display()))
            .arg("--ca")
            .arg(pki_dir.join("ca.pem"))
            .args(["--cert", "/nonexistent/server.pem", "--key"])
            .arg(pki_dir.join("server.key"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = bad.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            return Err("serve with a missing certificate still running after 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    bad.0
        .stderr
        .take()
        .ok_or("no stderr")?
        .read_to_string(&mut stderr)?;
    let mut stdout = String::new();
    bad.0
        .stdout
        .take()
        .ok_or("no stdout")?
        .read_to_string(&mut stdout)?;
    assert!(!status.success(), "serve succeeded: {stderr}");
    assert!(
        stderr.contains("/nonexistent/server.pem"),
        "stderr does not name the certificate: {stderr}"
    );
    assert!(
        !stdout.contains("listening"),
        "it listened before failing: {stdout}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_service_reports_the_upload_service_serving() -> TestResult {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let s = Setup::new()?;
    let mut health = HealthClient::new(channel(s.collector.addr, s.pki(), "web-1")?);
    let reply = timed(health.check(HealthCheckRequest {
        service: "ircap.v1.CaptureUpload".into(),
    }))
    .await??
    .into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);

    let status = expect_err(
        timed(health.check(HealthCheckRequest {
            service: "no.such.Service".into(),
        }))
        .await?,
        "health of an unknown service",
    )?;
    assert_code(&status, Code::NotFound, "health of an unknown service");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_agent_certificate_is_refused() -> TestResult {
    let s = Setup::new()?;
    let issued = tempfile::tempdir()?;
    let now = OffsetDateTime::now_utc();
    issue_agent_cert(
        s.pki(),
        issued.path(),
        "old-1",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )?;
    // The same CA, profile and code, but current: proves the refusal is
    // about the dates, not a badly made certificate.
    issue_agent_cert(
        s.pki(),
        issued.path(),
        "new-1",
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )?;
    let ca = s.pki().join("ca.pem");

    let mut old = client(s.collector.addr, &ca, Some((issued.path(), "old-1"))).await;
    let status = expect_err(
        timed(open(&mut old, CAPTURE)).await?,
        "open_capture with an expired certificate",
    )?;
    eprintln!(
        "expired certificate refused: {:?}: {}",
        status.code(),
        status.message()
    );
    let old_dir = s.collector.store.join("captures").join("old-1");
    assert!(!old_dir.exists(), "{} exists", old_dir.display());

    let mut current = client(s.collector.addr, &ca, Some((issued.path(), "new-1"))).await;
    let opened = timed(open(&mut current, OTHER_CAPTURE))
        .await??
        .into_inner();
    assert!(!opened.complete);

    // Only the capture the current certificate opened: its state and its
    // open marker.
    let state_dir = s.collector.store.join("state");
    let states = tree(&state_dir)?;
    assert_eq!(
        states,
        vec![
            format!("{OTHER_CAPTURE}.json"),
            "open".to_owned(),
            format!("open/{OTHER_CAPTURE}"),
        ],
        "state files in {}",
        state_dir.display()
    );
    for name in &states {
        let path = state_dir.join(name);
        if path.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(path)?;
        assert!(!text.contains("old-1"), "{name} mentions old-1: {text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn artifact_with_a_wrong_total_digest_or_size_never_finishes() -> TestResult {
    /// The artifact whose end claims a wrong size.
    const SIZED: &str = "u.jsonl";
    let s = Setup::new()?;
    let dir = s.collector.capture_dir("web-1", CAPTURE);
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;

    let cases = [
        (
            ARTIFACT,
            end_claiming(b"hello", 5, &sha256_hex(b"hellp")),
            "an end claiming another SHA-256",
        ),
        (
            SIZED,
            end_claiming(b"hello", 6, &sha256_hex(b"hello")),
            "an end claiming another size",
        ),
    ];
    for (name, last, what) in cases {
        let mut up = Upload::start(&mut c, named_header(CAPTURE, name, 0)).await??;
        assert_eq!(up.expect_ack(what).await?.durable_offset, 0, "{what}");
        up.send(chunk(0, b"hello", sha256(b"hello"))).await?;
        let ack = up.expect_ack(what).await?;
        assert_eq!(ack.durable_offset, 5, "{what}");
        assert!(!ack.finished, "{what}");
        up.send(last).await?;
        let status = up.expect_error(what).await?;
        assert_code(&status, Code::DataLoss, what);
        assert!(
            status.message().contains(name),
            "{what}: refusal does not name {name}: {}",
            status.message()
        );
    }

    let reopened = timed(open(&mut c, CAPTURE)).await??.into_inner();
    assert!(
        reopened.artifacts.iter().all(|a| !a.finished),
        "an artifact with a wrong digest counts as finished: {:?}",
        reopened.artifacts
    );

    for (claimed, what) in [
        (sha256_hex(b"hello"), "commit listing the true digest"),
        (sha256_hex(b"hellp"), "commit listing the claimed digest"),
    ] {
        let status = expect_err(
            timed(c.commit_capture(commit_request(manifest(&claimed)?))).await?,
            what,
        )?;
        assert_code(&status, Code::FailedPrecondition, what);
        assert!(
            status.message().contains(ARTIFACT),
            "{what}: refusal does not name {ARTIFACT}: {}",
            status.message()
        );
    }
    assert!(
        !dir.join("manifest.json").exists(),
        "{} has a manifest",
        dir.display()
    );
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(
        s.collector
            .store
            .join("state")
            .join(format!("{CAPTURE}.json")),
    )?)?;
    assert_eq!(state["complete"], false, "{state}");
    assert_eq!(state["finished"], serde_json::json!({}), "{state}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn chunks_sent_without_waiting_and_a_stream_closed_without_its_end_are_stored() -> TestResult
{
    // The collector gathers chunks whose next message has arrived already
    // into one write; a stream that then ends without ArtifactEnd must
    // still have every chunk it sent stored, and resume after them.
    let s = Setup::new()?;
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("header").await?.durable_offset, 0);
    let data = b"0123456789abcdefghij";
    for (i, part) in data.chunks(5).enumerate() {
        up.send(chunk(5 * i as u64, part, sha256(part))).await?;
    }
    let Upload { tx, mut acks } = up;
    drop(tx);
    let mut last = 0;
    while let Some(ack) = timed(acks.message()).await?? {
        assert!(
            ack.durable_offset > last && ack.durable_offset <= 20,
            "acks not increasing: {ack:?} after {last}"
        );
        last = ack.durable_offset;
    }
    assert_eq!(last, 20, "the last ack is for every chunk sent");

    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("resume").await?.durable_offset, 20);
    up.send(end(data)).await?;
    assert!(up.expect_ack("end").await?.finished);
    let dir = s.collector.capture_dir("web-1", CAPTURE);
    assert_eq!(std::fs::read(dir.join(ARTIFACT))?, data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn capture_cut_off_before_its_commit_stays_incomplete() -> TestResult {
    let s = Setup::new()?;
    let dir = s.collector.capture_dir("web-1", CAPTURE);
    {
        let mut c = s.client("web-1").await;
        timed(open(&mut c, CAPTURE)).await??;
        let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
        assert_eq!(up.expect_ack("header").await?.durable_offset, 0);
        up.send(chunk(0, b"hello", sha256(b"hello"))).await?;
        assert_eq!(up.expect_ack("chunk").await?.durable_offset, 5);
        up.send(end(b"hello")).await?;
        let ack = up.expect_ack("artifact end").await?;
        assert!(ack.finished, "artifact not finished: {ack:?}");
        // The agent goes away here, without CommitCapture.
    }

    assert_eq!(std::fs::read(dir.join(ARTIFACT))?, b"hello");
    assert!(
        !dir.join("manifest.json").exists(),
        "{} has a manifest",
        dir.display()
    );
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(
        s.collector
            .store
            .join("state")
            .join(format!("{CAPTURE}.json")),
    )?)?;
    assert_eq!(state["complete"], false, "{state}");
    // A finished artifact is an entry of its own (a line of the capture's
    // log: record name, SHA-256 of the record, record), not rewritten into
    // the state file.
    let log = std::fs::read_to_string(
        s.collector
            .store
            .join("state")
            .join(format!("{CAPTURE}.finished.log")),
    )?;
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    let [line] = lines.as_slice() else {
        return Err(format!("one entry expected: {log:?}").into());
    };
    let mut fields = line.splitn(3, ' ');
    let (name, digest, record) = (fields.next(), fields.next(), fields.next());
    assert_eq!(
        name,
        Some(format!("{}.json", sha256_hex(ARTIFACT.as_bytes())).as_str()),
        "{line}"
    );
    let record = record.ok_or("entry without a record")?;
    assert_eq!(
        digest,
        Some(sha256_hex(record.as_bytes()).as_str()),
        "{line}"
    );
    let entry: serde_json::Value = serde_json::from_str(record)?;
    assert!(
        entry["name"] == ARTIFACT && entry["sha256"] == sha256_hex(b"hello"),
        "{entry}"
    );
    let index = s.collector.store.join("index");
    assert_eq!(tree(&index)?, Vec::<String>::new(), "{}", index.display());

    let verify = bin("ircap-collector").arg("verify").arg(&dir).output()?;
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert_eq!(
        verify.status.code(),
        Some(1),
        "verify {} without a manifest: {stderr}",
        dir.display()
    );
    assert!(
        stderr.contains("manifest"),
        "verify does not say the manifest is missing: {stderr}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_chunk_is_refused_and_nothing_is_written() -> TestResult {
    let s = Setup::new()?;
    let stored = s.collector.capture_dir("web-1", CAPTURE).join(ARTIFACT);
    // The client's own limit must not stop the message before the collector
    // sees it.
    let mut c = s.client("web-1").await.max_encoding_message_size(16 << 20);
    timed(open(&mut c, CAPTURE)).await??;

    // 6 MiB: over the collector's gRPC message limit (4 MiB + 64 KiB).
    let big = vec![0x5a_u8; 6 << 20];
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("header").await?.durable_offset, 0);
    up.send(chunk(0, &big, sha256(&big))).await?;
    let status = up.expect_error("6 MiB chunk").await?;
    eprintln!(
        "6 MiB chunk refused: {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(
        matches!(
            status.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::InvalidArgument
        ),
        "6 MiB chunk: {:?}: {}",
        status.code(),
        status.message()
    );
    drop(up);
    assert_eq!(
        std::fs::metadata(&stored).map_or(0, |m| m.len()),
        0,
        "{} holds bytes of an oversized message",
        stored.display()
    );

    // One byte over the largest chunk, yet within the message limit: the
    // collector's own chunk check.
    let over = vec![0x5a_u8; (4 << 20) + 1];
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("header").await?.durable_offset, 0);
    up.send(chunk(0, &over, sha256(&over))).await?;
    let status = up.expect_error("chunk of 4 MiB + 1").await?;
    assert_code(&status, Code::InvalidArgument, "chunk of 4 MiB + 1");
    drop(up);
    assert_eq!(
        std::fs::metadata(&stored).map_or(0, |m| m.len()),
        0,
        "{} holds bytes of an oversized chunk",
        stored.display()
    );

    // The collector still takes a normal upload on the same channel.
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("good upload").await?.durable_offset, 0);
    up.send(chunk(0, b"hello", sha256(b"hello"))).await?;
    assert_eq!(up.expect_ack("good chunk").await?.durable_offset, 5);
    up.send(end(b"hello")).await?;
    assert!(up.expect_ack("good end").await?.finished);
    assert_eq!(std::fs::read(&stored)?, b"hello");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_artifact_names_are_refused_and_nothing_escapes() -> TestResult {
    let s = Setup::new()?;
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;

    let hostile = [
        "../evil",
        "/etc/passwd",
        "a/../../b",
        "logs/../../x",
        "",
        "manifest.json",
        "..\\evil",
        "./x",
        "a//b",
        // Reserved: the manifest's temporary file, the manifest's path as
        // a directory, hidden (temporary) names.
        "manifest.tmp",
        "manifest.json/x",
        "manifest",
        ".evil",
        "logs/.evil",
    ];
    let mut accepted = Vec::new();
    for name in hostile {
        let what = format!("artifact name {name:?}");
        let status = match Upload::start(&mut c, named_header(CAPTURE, name, 0)).await? {
            Err(status) => status,
            Ok(mut up) => match up.ack().await? {
                Err(status) => status,
                Ok(None) => return Err(format!("{what}: stream ended without an error").into()),
                Ok(Some(ack)) => {
                    // Accepted: finish it, so the tree check below shows
                    // where it landed.
                    up.send(chunk(ack.durable_offset, b"evil", sha256(b"evil")))
                        .await?;
                    up.send(end(b"evil")).await?;
                    while let Ok(Some(_)) = up.ack().await? {}
                    accepted.push(name);
                    continue;
                }
            },
        };
        assert_code(&status, Code::InvalidArgument, &what);
    }

    // A plain name still works.
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("good upload").await?.durable_offset, 0);
    up.send(chunk(0, b"hello", sha256(b"hello"))).await?;
    assert_eq!(up.expect_ack("good chunk").await?.durable_offset, 5);
    up.send(end(b"hello")).await?;
    assert!(up.expect_ack("good end").await?.finished);
    drop(up);

    let store = &s.collector.store;
    let mut expected = expected_store(
        &[
            "web-1",
            &format!("web-1/{CAPTURE}"),
            &format!("web-1/{CAPTURE}/{ARTIFACT}"),
        ],
        &[CAPTURE],
    );
    // The log of finished-artifact entries (one line: the good one).
    expected.push(format!("state/{CAPTURE}.finished.log"));
    expected.sort();
    assert_eq!(tree(store)?, expected, "files in {}", store.display());
    let root = store.parent().ok_or("store has no parent")?;
    for path in tree(root)? {
        let file = Path::new(&path)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        assert!(
            ![
                "evil",
                "..\\evil",
                "passwd",
                "x",
                "b",
                ".evil",
                "manifest.tmp"
            ]
            .contains(&file.as_str()),
            "{path} exists under {}",
            root.display()
        );
    }
    assert!(accepted.is_empty(), "names accepted: {accepted:?}");

    // The capture still commits and verifies: nothing took the manifest's
    // place or made its path unusable.
    let done = timed(c.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?)))
        .await??
        .into_inner();
    assert_eq!(done.status, "complete");
    let dir = s.collector.capture_dir("web-1", CAPTURE);
    ircap_e2e::assert_verifies(&dir);
    Ok(())
}

/// The late-stream race: a stream opened before the commit and going on
/// after it can add nothing to the committed capture (neither a chunk nor
/// its end), a new stream is refused, and the capture still verifies
/// with exactly its manifest's artifacts.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_going_on_after_the_commit_cannot_change_the_capture() -> TestResult {
    let s = Setup::new()?;
    corrupt_then_good_upload(&s).await?;
    let mut c = s.client("web-1").await;

    // Two late streams, each with bytes acknowledged before the commit.
    let mut late = Upload::start(&mut c, named_header(CAPTURE, "late.bin", 0)).await??;
    assert_eq!(late.expect_ack("late header").await?.durable_offset, 0);
    late.send(chunk(0, b"lat", sha256(b"lat"))).await?;
    assert_eq!(late.expect_ack("late chunk").await?.durable_offset, 3);
    let mut ending = Upload::start(&mut c, named_header(CAPTURE, "late2.bin", 0)).await??;
    assert_eq!(ending.expect_ack("late2 header").await?.durable_offset, 0);
    ending.send(chunk(0, b"late", sha256(b"late"))).await?;
    assert_eq!(ending.expect_ack("late2 chunk").await?.durable_offset, 4);

    let done = timed(c.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?)))
        .await??
        .into_inner();
    assert_eq!(done.status, "complete");

    late.send(chunk(3, b"e", sha256(b"e"))).await?;
    let status = late.expect_error("chunk after the commit").await?;
    assert_code(&status, Code::AlreadyExists, "chunk after the commit");
    ending.send(end(b"late")).await?;
    let status = ending.expect_error("end after the commit").await?;
    assert_code(&status, Code::AlreadyExists, "end after the commit");
    let status = upload_fails(
        &mut c,
        named_header(CAPTURE, "late3.bin", 0),
        "new stream after the commit",
    )
    .await?;
    assert_code(&status, Code::AlreadyExists, "new stream after the commit");

    let dir = s.collector.capture_dir("web-1", CAPTURE);
    ircap_e2e::assert_verifies(&dir);
    let mut files = tree(&dir)?;
    files.sort();
    // The manifest, the signed receipt beside it, and the one artifact.
    assert_eq!(
        files,
        vec![
            "manifest.json".to_owned(),
            "manifest.receipt.json".to_owned(),
            "manifest.receipt.pem".to_owned(),
            "manifest.receipt.sig".to_owned(),
            ARTIFACT.to_owned()
        ]
    );
    // Their staged bytes are gone too: they were never evidence.
    let staging = s.collector.store.join("staging").join(CAPTURE);
    assert!(!staging.exists(), "{} left behind", staging.display());
    Ok(())
}

/// Every capture the index lists, as the analyst sees them.
async fn listed<C: Deref<Target = Served>>(
    s: &Setup<C>,
) -> Result<Vec<ircap_proto::v1::CaptureInfo>, Box<dyn Error>> {
    let mut q = ircap_proto::v1::capture_query_client::CaptureQueryClient::new(channel(
        s.collector.addr,
        s.pki(),
        "alice",
    )?);
    let mut stream = timed(q.list_captures(ircap_proto::v1::ListCapturesRequest::default()))
        .await??
        .into_inner();
    let mut out = Vec::new();
    while let Some(info) = timed(stream.message()).await?? {
        out.push(info);
    }
    Ok(out)
}

/// A collector killed after writing a capture's manifest but before its
/// index entry and complete state (simulated by removing them from a
/// committed capture, collector stopped): the restarted collector lists
/// the capture as complete, serves its manifest, and the agent's retried
/// commit is refused as already done.
#[tokio::test(flavor = "multi_thread")]
async fn a_commit_cut_short_after_the_manifest_is_finished_at_start() -> TestResult {
    let mut s = Setup::new()?;
    corrupt_then_good_upload(&s).await?;
    let mut c = s.client("web-1").await;
    timed(c.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?))).await??;
    assert_eq!(listed(&s).await?.len(), 1);

    let store = s.collector.store.clone();
    let pki_dir = s.pki().to_path_buf();
    let port = s.collector.addr.port();
    // Stop it (in the place of another, as `s` holds one), then undo what
    // a commit writes after the manifest.
    s.collector = InProcessCollector::start(&pki_dir, &store.join("other"));
    // The index record and the day segment it was merged into.
    std::fs::remove_dir_all(store.join("index"))?;
    std::fs::write(store.join("state/open").join(CAPTURE), b"")?;
    let state_path = store.join("state").join(format!("{CAPTURE}.json"));
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path)?)?;
    state["complete"] = serde_json::Value::Bool(false);
    std::fs::write(&state_path, serde_json::to_vec(&state)?)?;

    s.collector = InProcessCollector::builder(&pki_dir, &store)
        .port(port)
        .start();
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        let found = listed(&s).await?;
        if !found.is_empty() || Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(found.len(), 1, "listed after restart: {found:?}");
    assert_eq!(found[0].capture_id, CAPTURE);
    assert_eq!(found[0].status, "complete");
    assert!(s.collector.index_record(CAPTURE).is_some());
    // The repair writes the index before the state (the commit order), so
    // the listing can show the capture a moment before the state says so.
    let state = loop {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path)?)?;
        if state["complete"] == true || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state["complete"], true, "{state}");

    let mut c = s.client("web-1").await;
    let status = expect_err(
        timed(c.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?))).await?,
        "commit again after the repair",
    )?;
    assert_code(
        &status,
        Code::AlreadyExists,
        "commit again after the repair",
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn abusive_capture_ids_are_refused() -> TestResult {
    let s = Setup::new()?;
    let mut c = s.client("web-1").await;
    let longest = "a".repeat(64);
    let too_long = "a".repeat(65);
    let far_too_long = "a".repeat(200);
    let ids = [
        "../../x",
        "a/b",
        "",
        far_too_long.as_str(),
        too_long.as_str(),
        "..",
        "a\\b",
        "a b",
        "a\0b",
    ];
    for id in ids {
        let what = format!("capture id {id:?}");
        let status = expect_err(
            timed(open(&mut c, id)).await?,
            &format!("open_capture, {what}"),
        )?;
        assert_code(
            &status,
            Code::InvalidArgument,
            &format!("open_capture, {what}"),
        );

        let status =
            upload_fails(&mut c, header(id, 0), &format!("upload_artifact, {what}")).await?;
        assert_code(
            &status,
            Code::InvalidArgument,
            &format!("upload_artifact, {what}"),
        );

        let status = expect_err(
            timed(c.commit_capture(CommitCaptureRequest {
                capture_id: id.to_owned(),
                manifest_json: Vec::new(),
            }))
            .await?,
            &format!("commit_capture, {what}"),
        )?;
        assert_code(
            &status,
            Code::InvalidArgument,
            &format!("commit_capture, {what}"),
        );
    }

    // The longest id allowed is still accepted.
    timed(open(&mut c, &longest)).await??;

    let store = &s.collector.store;
    assert_eq!(
        tree(store)?,
        expected_store(&[], &[&longest]),
        "files in {}",
        store.display()
    );
    Ok(())
}

/// One agent's gzip bombs (three streams at once, again and again) are
/// each refused with INVALID_ARGUMENT naming the decode cap, and another
/// agent's OpenCapture stays fast while they run: decoding happens on a
/// bounded CPU pool, never on the threads that answer calls, and stops at
/// the cap instead of inflating 4 GiB per chunk.
#[tokio::test(flavor = "multi_thread")]
async fn gzip_bombs_are_refused_and_do_not_stall_other_agents() -> TestResult {
    let s = Setup::new()?;
    let bomb = bytes::Bytes::from(gzip_bomb(4 << 20)?);
    assert!(bomb.len() <= 4 << 20);
    let bomb_sha = sha256(&bomb);

    let stop = Instant::now() + Duration::from_secs(8);
    let mut bombers = Vec::new();
    for stream in 0..3u32 {
        let mut c = s.client("web-1").await;
        let (bomb, bomb_sha) = (bomb.clone(), bomb_sha.clone());
        bombers.push(tokio::spawn(async move {
            let mut refusals = Vec::new();
            let mut round = 0u32;
            let id = format!("01a20000-0000-7000-8000-b0b00000{stream:04}");
            let e = |e: Box<dyn Error>| e.to_string();
            timed(open(&mut c, &id))
                .await
                .map_err(e)?
                .map_err(|s| s.to_string())?;
            while Instant::now() < stop {
                round += 1;
                let header = UploadMessage {
                    body: Some(upload_message::Body::Header(ArtifactHeader {
                        capture_id: id.clone(),
                        name: format!("bomb-{round}.jsonl.gz"),
                        encoding: "gzip".into(),
                        offset: 0,
                    })),
                };
                // After a bomb, the identity's uploads are refused at the
                // start for a while: cheap, so this keeps trying.
                let mut up = match Upload::start(&mut c, header).await.map_err(e)? {
                    Ok(up) => up,
                    Err(status) => {
                        refusals.push(status);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                up.expect_ack("bomb header").await.map_err(e)?;
                up.send(UploadMessage {
                    body: Some(upload_message::Body::Chunk(Chunk {
                        offset: 0,
                        data: bomb.clone(),
                        sha256: bomb_sha.clone(),
                    })),
                })
                .await
                .map_err(e)?;
                refusals.push(up.expect_error("bomb chunk").await.map_err(e)?);
            }
            Ok::<_, String>(refusals)
        }));
    }

    // Meanwhile another agent opens captures.
    let mut web2 = s.client("web-2").await;
    timed(open(&mut web2, OTHER_CAPTURE)).await??; // connect once
    let mut latencies = Vec::new();
    while Instant::now() < stop {
        let t = Instant::now();
        timed(open(&mut web2, OTHER_CAPTURE)).await??;
        latencies.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut refused, mut held_off) = (0, 0);
    for b in bombers {
        for status in b.await?? {
            if status.code() == Code::ResourceExhausted {
                assert!(
                    status.message().contains("decoded past")
                        && status.metadata().get("grpc-retry-pushback-ms").is_some(),
                    "a penalty refusal names neither the bomb nor when to retry: {status:?}"
                );
                held_off += 1;
                continue;
            }
            assert_code(&status, Code::InvalidArgument, "gzip bomb");
            assert!(
                status.message().contains("decodes to more than"),
                "bomb refusal does not name the cap: {}",
                status.message()
            );
            refused += 1;
        }
    }
    // Each bomb puts the identity's uploads on hold, doubling: a few
    // bombs get decoded in 8 s, every other try is refused at the start.
    assert!(held_off > 0, "no upload was held off after a bomb");
    latencies.sort();
    let worst = latencies.last().copied().unwrap_or_default();
    let median = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    eprintln!(
        "{refused} bombs refused, {held_off} uploads held off; web-2 OpenCapture over {} calls: median {median:?}, worst {worst:?}",
        latencies.len()
    );
    assert!(refused >= 3, "only {refused} bombs refused");
    assert!(
        worst < Duration::from_secs(2),
        "OpenCapture took {worst:?} while bombs ran (median {median:?})"
    );
    Ok(())
}

/// One identity's open captures and concurrent upload streams are
/// bounded: past the limit it gets RESOURCE_EXHAUSTED with a
/// `grpc-retry-pushback-ms` hint, another identity is not affected, and a
/// stream that ends gives its place back.
#[tokio::test(flavor = "multi_thread")]
async fn open_captures_and_streams_per_agent_are_bounded() -> TestResult {
    let s = Setup::new()?;
    let mut c = s.client("web-1").await;
    let id = |i: u32| format!("01a20000-0000-7000-8000-c0c0{i:08}");
    for i in 0..16 {
        timed(open(&mut c, &id(i))).await??;
    }
    // Reopening one (a resume) is no new capture.
    timed(open(&mut c, &id(3))).await??;
    let status = expect_err(timed(open(&mut c, &id(16))).await?, "17th open capture")?;
    assert_code(&status, Code::ResourceExhausted, "17th open capture");
    let hint = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(hint.is_some_and(|ms| ms > 0), "no retry hint: {status:?}");
    let state = s
        .collector
        .store
        .join("state")
        .join(format!("{}.json", id(16)));
    assert!(
        !state.exists(),
        "a refused capture left {}",
        state.display()
    );
    let mut web2 = s.client("web-2").await;
    timed(open(&mut web2, OTHER_CAPTURE)).await??;

    // Eight streams at once, then the ninth is refused.
    let mut streams = Vec::new();
    for i in 0..8u32 {
        let mut up = Upload::start(&mut c, named_header(&id(0), &format!("a{i}.bin"), 0)).await??;
        up.expect_ack("stream header").await?;
        streams.push(up);
    }
    let status = upload_fails(&mut c, named_header(&id(0), "a8.bin", 0), "9th stream").await?;
    assert_code(&status, Code::ResourceExhausted, "9th stream");
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    // Web-2 streams meanwhile.
    let mut up = Upload::start(&mut web2, named_header(OTHER_CAPTURE, "x.bin", 0)).await??;
    up.expect_ack("web-2 stream").await?;
    drop(up);
    // One ends: its place is free again.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Upload::start(&mut c, named_header(&id(0), "a8.bin", 0)).await? {
            Ok(mut up) => match up.ack().await? {
                Ok(Some(_)) => break,
                Ok(None) => return Err("stream ended without an ack".into()),
                Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {}
                Err(s) => return Err(format!("after a stream ended: {s:?}").into()),
            },
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {}
            Err(s) => return Err(format!("after a stream ended: {s:?}").into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// An agent cannot pass off another agent's capture, or one of its own
/// opened before the request, as the result of a request: the collector
/// records the outcome as failed, naming why.
#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_naming_a_capture_the_agent_may_not_claim_is_refused() -> TestResult {
    use ircap_proto::v1::agent_control_client::AgentControlClient;
    use ircap_proto::v1::capture_requests_client::CaptureRequestsClient;
    use ircap_proto::v1::{
        AgentMessage, CaptureOutcome, CreateRequestRequest, Hello, ListResultsRequest, Target,
        agent_message, collector_message,
    };

    let s = Setup::new()?;
    // Web-1's committed capture, and one web-2 opened before any request.
    corrupt_then_good_upload(&s).await?;
    let mut web1 = s.client("web-1").await;
    timed(web1.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?))).await??;
    let mut web2 = s.client("web-2").await;
    timed(open(&mut web2, OTHER_CAPTURE)).await??;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (tx, rx) = mpsc::channel(8);
    tx.send(AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            session_id: "0190-claims".into(),
            hostname: "db-prod".into(),
            ..Hello::default()
        })),
    })
    .await?;
    let mut from_collector = timed(
        AgentControlClient::new(channel(s.collector.addr, s.pki(), "web-2")?)
            .attach(ReceiverStream::new(rx)),
    )
    .await??
    .into_inner();
    let mut requests = CaptureRequestsClient::new(channel(s.collector.addr, s.pki(), "alice")?);
    for (claimed, why) in [
        (CAPTURE, "belongs to another agent"),
        (OTHER_CAPTURE, "before the request"),
    ] {
        let created = timed(requests.create_request(CreateRequestRequest {
            target: Some(Target {
                host: "web-2".into(),
                ..Target::default()
            }),
            ..CreateRequestRequest::default()
        }))
        .await??
        .into_inner();
        let request_id = loop {
            match timed(from_collector.message()).await?? {
                Some(msg) => {
                    if let Some(collector_message::Body::Request(r)) = msg.body {
                        break r.request_id;
                    }
                }
                None => return Err("control stream ended".into()),
            }
        };
        assert_eq!(request_id, created.request_id);
        tx.send(AgentMessage {
            body: Some(agent_message::Body::Outcome(CaptureOutcome {
                request_id: request_id.clone(),
                capture_id: claimed.into(),
                status: "complete".into(),
                ..CaptureOutcome::default()
            })),
        })
        .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let result = loop {
            let mut results = timed(requests.list_results(ListResultsRequest {
                request_id: request_id.clone(),
            }))
            .await??
            .into_inner();
            let mut found = None;
            while let Some(r) = timed(results.message()).await?? {
                if r.agent == "web-2" && r.status != "delivered" && r.status != "running" {
                    found = Some(r);
                }
            }
            match found {
                Some(r) => break r,
                None if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => return Err("no final result recorded".into()),
            }
        };
        assert_eq!(result.status, "failed", "claiming {claimed}: {result:?}");
        assert!(result.error.contains(why), "claiming {claimed}: {result:?}");
    }
    drop(tx);
    Ok(())
}

/// Finished artifacts are recorded one appended line each (the state is
/// not rewritten per artifact) and all of them count: 500 small artifacts
/// in one capture all finish, the capture commits with every one of them
/// and verifies. Prints the time of the first and last 100 (reads of the
/// state still grow with the capture; see the README).
#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_artifacts_in_one_capture_are_recorded_and_verify() -> TestResult {
    const N: usize = 500;
    let s = Setup::new()?;
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;
    let mut per_artifact = Vec::with_capacity(N);
    let mut entries = Vec::with_capacity(N);
    let started = Instant::now();
    for i in 0..N {
        let t = Instant::now();
        let name = format!("a/{i:05}.bin");
        let data = format!("artifact {i}\n").into_bytes();
        let msgs = vec![
            named_header(CAPTURE, &name, 0),
            chunk(0, &data, sha256(&data)),
            end(&data),
        ];
        let mut acks = timed(c.upload_artifact(tokio_stream::iter(msgs)))
            .await??
            .into_inner();
        let mut finished = false;
        while let Some(ack) = timed(acks.message()).await?? {
            finished |= ack.finished;
        }
        assert!(finished, "{name} did not finish");
        per_artifact.push(t.elapsed());
        entries.push(ArtifactEntry {
            name,
            kind: "test".into(),
            content_type: "application/octet-stream".into(),
            encoding: Encoding::Identity,
            size_stored: data.len() as u64,
            size_uncompressed: data.len() as u64,
            sha256_stored: sha256_hex(&data),
            sha256_uncompressed: sha256_hex(&data),
            started_at: String::new(),
            ended_at: String::new(),
            record_count: None,
            error_count: 0,
            errors: vec![],
        });
    }
    let total = started.elapsed();
    let first: Duration = per_artifact.iter().take(100).sum();
    let last: Duration = per_artifact.iter().rev().take(100).sum();
    eprintln!("{N} artifacts in {total:?}: first 100 {first:?}, last 100 {last:?}");

    let m = Manifest {
        format_version: FORMAT_VERSION,
        capture_id: CAPTURE.into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        ended_at: "2026-01-01T00:00:01Z".into(),
        status: ircap_proto::manifest::CaptureStatus::default(),
        host: HostIdentity::default(),
        agent: AgentInfo::default(),
        options: serde_json::Value::Null,
        ssm_command_id: None,
        artifacts: entries,
        error_count: 0,
        errors: vec![],
        collector_receipt: None,
        case: None,
    };
    timed(c.commit_capture(commit_request(serde_json::to_vec(&m)?))).await??;
    let dir = s.collector.capture_dir("web-1", CAPTURE);
    ircap_e2e::assert_verifies(&dir);
    Ok(())
}

/// A certificate from the collector's CA with the agent identity URI but
/// not issued for client authentication (no extended key usage at all, or
/// serverAuth only) opens nothing.
#[tokio::test(flavor = "multi_thread")]
async fn agent_certificate_without_client_auth_usage_is_refused() -> TestResult {
    let s = Setup::new()?;
    let issued = tempfile::tempdir()?;
    let now = OffsetDateTime::now_utc();
    let valid = (
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    );
    issue_agent_cert_with(s.pki(), issued.path(), "noeku-1", valid, vec![])?;
    issue_agent_cert_with(
        s.pki(),
        issued.path(),
        "srv-1",
        valid,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )?;
    let ca = s.pki().join("ca.pem");
    let mut no_eku = client(s.collector.addr, &ca, Some((issued.path(), "noeku-1"))).await;
    let status = expect_err(timed(open(&mut no_eku, CAPTURE)).await?, "no EKU")?;
    assert_code(&status, Code::PermissionDenied, "no EKU");
    assert!(
        status.message().contains("clientAuth"),
        "{}",
        status.message()
    );
    let mut server_only = client(s.collector.addr, &ca, Some((issued.path(), "srv-1"))).await;
    let result = timed(open(&mut server_only, CAPTURE)).await?;
    assert!(
        result.is_err(),
        "a serverAuth-only certificate opened a capture"
    );
    let state = s.collector.store.join("state");
    assert_eq!(tree(&state)?, Vec::<String>::new(), "{}", state.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upload_never_committed_expires_after_the_ttl() -> TestResult {
    let s = Setup::with(ServeConfig {
        upload_ttl: Some("2s".into()),
        ..ServeConfig::default()
    })?;
    let store = s.collector.store.clone();
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    up.expect_ack("header").await?;
    up.send(chunk(0, b"hello", sha256(b"hello"))).await?;
    up.expect_ack("chunk").await?;
    up.send(end(b"hello")).await?;
    assert!(up.expect_ack("end").await?.finished);
    drop(up);
    // A second artifact broken off half way: its bytes sit in staging.
    let mut up = Upload::start(&mut c, named_header(CAPTURE, "half.bin", 0)).await??;
    up.expect_ack("header").await?;
    up.send(chunk(0, b"half", sha256(b"half"))).await?;
    up.expect_ack("chunk").await?;
    drop(up);
    let staging = store.join("staging").join(CAPTURE);
    assert!(staging.join("half.bin").is_file());

    // The state says `expired_at` before staging and the open marker are
    // removed; the log line comes after both, so wait for it too.
    let state_path = store.join("state").join(format!("{CAPTURE}.json"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let state = loop {
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path)?)?;
        let logged = s.log().contains("Expired an upload never committed");
        if (state.get("expired_at").is_some() && logged) || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(state["expired_at"].is_string(), "not expired: {state}");
    assert_eq!(state["complete"], false, "{state}");
    // What was verified is kept, and said so; unfinished bytes are gone.
    assert_eq!(state["finished"][ARTIFACT]["size"], 5, "{state}");
    assert_eq!(
        std::fs::read(s.collector.capture_dir("web-1", CAPTURE).join(ARTIFACT))?,
        b"hello"
    );
    assert!(!staging.exists(), "{} left behind", staging.display());
    assert!(!store.join("state/open").join(CAPTURE).exists());
    assert!(
        s.log().contains("Expired an upload never committed"),
        "{}",
        s.log()
    );

    // Nothing more goes into it.
    let status = expect_err(
        timed(c.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?))).await?,
        "commit after expiry",
    )?;
    assert_code(&status, Code::FailedPrecondition, "commit after expiry");
    assert!(status.message().contains("expired"), "{}", status.message());
    let status = upload_fails(
        &mut c,
        named_header(CAPTURE, "late.bin", 0),
        "upload after expiry",
    )
    .await?;
    assert_code(&status, Code::FailedPrecondition, "upload after expiry");
    let status = expect_err(timed(open(&mut c, CAPTURE)).await?, "open after expiry")?;
    assert_code(&status, Code::FailedPrecondition, "open after expiry");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_acks_is_dropped_after_the_ack_timeout() -> TestResult {
    let s = Setup::with(ServeConfig {
        ack_send_timeout: Some("3s".into()),
        ..ServeConfig::default()
    })?;
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;
    // A connection whose HTTP/2 window holds a few acks at most; nobody
    // reads them, while chunks keep coming.
    let pki = s.pki();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(pki.join("ca.pem"))?))
        .identity(Identity::from_pem(
            std::fs::read(pki.join("web-1.pem"))?,
            std::fs::read(pki.join("web-1.key"))?,
        ));
    let stalled_channel = Endpoint::from_shared(format!("https://{}", s.collector.addr))?
        .tls_config(tls)?
        .initial_stream_window_size(Some(64))
        .connect()
        .await?;
    let mut stalled = CaptureUploadClient::new(stalled_channel);
    let mut held = Vec::new();
    let mut feeders = tokio::task::JoinSet::new();
    for i in 0..ircap_collector::quota::MAX_STREAMS_PER_IDENTITY {
        let (tx, rx) = mpsc::channel(4);
        tx.send(named_header(CAPTURE, &format!("stall-{i}.bin"), 0))
            .await?;
        held.push(timed(stalled.upload_artifact(ReceiverStream::new(rx))).await??);
        feeders.spawn(async move {
            for offset in 0..100_000u64 {
                if tx.send(chunk(offset, b"x", sha256(b"x"))).await.is_err() {
                    break;
                }
            }
            tx
        });
    }
    // They hold every stream this identity may have...
    let status = upload_fails(&mut c, named_header(CAPTURE, "ninth.bin", 0), "ninth").await?;
    assert_code(&status, Code::ResourceExhausted, "a ninth stream");
    // ...until the collector gives up sending them acks, though the client
    // keeps its streams open and never reads.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Upload::start(&mut c, named_header(CAPTURE, "after.bin", 0)).await? {
            Ok(mut up) => match up.ack().await? {
                Ok(Some(_)) => break,
                Ok(None) => return Err("stream ended without an ack".into()),
                Err(s) if s.code() == Code::ResourceExhausted => {}
                Err(s) => return Err(format!("{:?}: {}", s.code(), s.message()).into()),
            },
            Err(s) if s.code() == Code::ResourceExhausted => {}
            Err(s) => return Err(format!("{:?}: {}", s.code(), s.message()).into()),
        }
        assert!(
            Instant::now() < deadline,
            "stalled streams still held after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(held.len(), ircap_collector::quota::MAX_STREAMS_PER_IDENTITY);
    feeders.abort_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_past_its_deadline_ends_and_resumes_where_it_was() -> TestResult {
    let s = Setup::with(ServeConfig {
        stream_deadline: Some("2s".into()),
        ..ServeConfig::default()
    })?;
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("header").await?.durable_offset, 0);
    let started = Instant::now();
    let mut offset = 0u64;
    let status = loop {
        if up
            .send(chunk(offset, b"slow", sha256(b"slow")))
            .await
            .is_err()
        {
            // The collector ended the stream: its status says why.
            break up.expect_error("past the deadline").await?;
        }
        match up.ack().await? {
            Ok(Some(ack)) => offset = ack.durable_offset,
            Ok(None) => return Err("stream ended cleanly".into()),
            Err(status) => break status,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no deadline after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_code(&status, Code::DeadlineExceeded, "past the stream deadline");
    assert!(
        status.message().contains("too long"),
        "{}",
        status.message()
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // What was acknowledged is durable: a new stream resumes from there.
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("resume").await?.durable_offset, offset);
    assert!(offset >= 4, "nothing was acknowledged");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_manifest_over_the_limit_is_refused_with_the_limit_named() -> TestResult {
    let s = Setup::new()?;
    corrupt_then_good_upload(&s).await?;
    let mut c = s.client("web-1").await;
    // A valid manifest, padded with whitespace past the limit (still under
    // the gRPC message limit, so this is the collector's own refusal).
    let mut big = manifest(&sha256_hex(b"hello"))?;
    big.resize(ircap_collector::quota::MAX_MANIFEST_BYTES + 1, b' ');
    let status = expect_err(
        timed(c.commit_capture(commit_request(big))).await?,
        "an oversized manifest",
    )?;
    assert_code(&status, Code::InvalidArgument, "an oversized manifest");
    assert!(status.message().contains("limit"), "{}", status.message());
    // Not committed: the right one still is.
    timed(c.commit_capture(commit_request(manifest(&sha256_hex(b"hello"))?))).await??;
    Ok(())
}

/// A host with more log files than a capture may hold: the agent keeps the
/// newest up to its limit (below the collector's artifact limit), records
/// the cut (capture partial, the count in the manifest's errors) and the
/// capture commits and verifies, long log paths included.
#[test]
fn more_log_files_than_the_artifact_limit_commit_with_the_cut_recorded() -> TestResult {
    // The agent's `collect::logs::MAX_KEPT`.
    const KEPT: usize = ircap_proto::manifest::MAX_ARTIFACTS - 500;
    const OVER: usize = 3;
    let s = Setup::new()?;
    let logs = s.tmp.path().join("logs");
    // Long paths: three 200-character directory levels, 200-character names.
    let deep = logs
        .join("d".repeat(200))
        .join("e".repeat(200))
        .join("f".repeat(200));
    std::fs::create_dir_all(&deep)?;
    for i in 0..KEPT + OVER {
        std::fs::write(
            deep.join(format!("{i:05}-{}.log", "l".repeat(200))),
            format!("line {i}\n"),
        )?;
    }
    let started = Instant::now();
    let out = agent_capture(
        &s.collector.url(),
        s.pki(),
        "web-1",
        &[
            "--artifacts",
            "logs",
            "--logs-dir",
            logs.to_str().ok_or("path")?,
            "--logs-since",
            "1d",
        ],
    );
    eprintln!(
        "{} log files captured in {:?}",
        KEPT + OVER,
        started.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "a partial capture: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = summary["capture_id"].as_str().ok_or("no capture id")?;
    let dir = s.collector.capture_dir("web-1", id);
    let m = Manifest::read(&dir.join("manifest.json"))?;
    assert_eq!(m.status, ircap_proto::manifest::CaptureStatus::Partial);
    let kept = m
        .artifacts
        .iter()
        .filter(|a| a.name.starts_with("logs/"))
        .count();
    assert_eq!(kept, KEPT);
    assert!(m.artifacts.len() <= ircap_proto::manifest::MAX_ARTIFACTS);
    let cut = m
        .errors
        .iter()
        .find(|e| e.source == "logs")
        .ok_or("the cut is not recorded")?;
    assert!(
        cut.message.contains(&format!("{OVER} log files left out")),
        "{}",
        cut.message
    );
    ircap_e2e::assert_verifies(&dir);
    Ok(())
}

/// One identity may hold a bounded number of connections: every call on
/// one more is refused with RESOURCE_EXHAUSTED and a retry hint, naming
/// the limit; other identities are not affected, and closing one makes
/// room.
#[tokio::test(flavor = "multi_thread")]
async fn connections_per_identity_are_bounded() -> TestResult {
    use ircap_collector::quota::MAX_CONNECTIONS_PER_IDENTITY;
    let s = Setup::new()?;
    let mut held = Vec::new();
    for i in 0..MAX_CONNECTIONS_PER_IDENTITY {
        // Each client is a channel of its own: its own connection.
        let mut c = s.client("web-1").await;
        timed(open(&mut c, &format!("conn-{i}"))).await??;
        held.push(c);
    }
    let mut extra = s.client("web-1").await;
    let status = expect_err(
        timed(open(&mut extra, "conn-extra")).await?,
        "a connection past the limit",
    )?;
    assert_code(
        &status,
        Code::ResourceExhausted,
        "a connection past the limit",
    );
    assert!(
        status
            .message()
            .contains(&format!("{MAX_CONNECTIONS_PER_IDENTITY} connections open")),
        "{}",
        status.message()
    );
    assert!(status.metadata().get("grpc-retry-pushback-ms").is_some());
    // The ones within the limit still work; another agent is not limited.
    timed(open(&mut held[0], "conn-0")).await??;
    let mut other = s.client("web-2").await;
    timed(open(&mut other, "conn-other")).await??;
    // Closing one makes room for a new connection.
    drop(extra);
    held.pop();
    let deadline = Instant::now() + CALL;
    loop {
        let mut again = s.client("web-1").await;
        match timed(open(&mut again, "conn-again")).await? {
            Ok(_) => break,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(format!("after a close: {s:?}").into()),
        }
    }
    assert!(s.log().contains("per-identity limit"), "{}", s.log());
    Ok(())
}

/// A file store whose file system fills up (a 2 MiB tmpfs mounted in the
/// collector's own mount namespace): the chunk that does not fit is
/// `UNAVAILABLE` naming the cause, nothing past the last acknowledged
/// offset is kept or acknowledged (a new stream resumes exactly there),
/// and the collector goes on serving what still fits.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_file_store_acknowledges_nothing_it_could_not_keep() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store)?;
    let log = std::fs::File::create(tmp.path().join("collector.log"))?;
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount -t tmpfs -o size=2m tmpfs "$0" && exec "$@""#,
    ])
    .arg(&store)
    .arg(ircap_e2e::build_dir().join("ircap-collector"))
    .stderr(log);
    let collector = Collector::builder(&pki_dir, &store).command(cmd).start();
    let s = Setup { tmp, collector };
    let mut c = s.client("web-1").await;
    timed(open(&mut c, CAPTURE)).await??;

    // 4 MiB in 1 MiB chunks: twice what the file system holds.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("header").await?.durable_offset, 0);
    let mut offset = 0u64;
    for part in data.chunks(1 << 20) {
        // The stream may already have failed: stop sending then.
        if up.send(chunk(offset, part, sha256(part))).await.is_err() {
            break;
        }
        offset += part.len() as u64;
    }
    let mut acked = 0;
    let status = loop {
        match up.ack().await? {
            Ok(Some(ack)) => acked = ack.durable_offset,
            Ok(None) => return Err("the stream ended without an error".into()),
            Err(status) => break status,
        }
    };
    assert_code(&status, Code::Unavailable, "a chunk past the free space");
    assert!(
        status.message().contains("No space left on device"),
        "{}",
        status.message()
    );
    assert!(
        acked < 2 << 20,
        "acknowledged {acked} bytes on a 2 MiB tmpfs"
    );
    drop(up);

    // A new stream resumes exactly at the last acknowledged offset: the
    // part of the chunk that found room was cut off again.
    let mut up = Upload::start(&mut c, header(CAPTURE, 0)).await??;
    assert_eq!(up.expect_ack("resume").await?.durable_offset, acked);
    drop(up);

    // What fits is still taken: a small artifact of another capture.
    timed(open(&mut c, OTHER_CAPTURE)).await??;
    let mut up = Upload::start(&mut c, header(OTHER_CAPTURE, 0)).await??;
    up.expect_ack("small header").await?;
    up.send(chunk(0, b"hello", sha256(b"hello"))).await?;
    assert_eq!(up.expect_ack("small chunk").await?.durable_offset, 5);
    up.send(end(b"hello")).await?;
    assert!(up.expect_ack("small end").await?.finished);
    Ok(())
}

/// Uploads `n` small identity artifacts into `capture`; returns their
/// manifest entries.
async fn upload_small(
    c: &mut CaptureUploadClient<Channel>,
    capture: &str,
    n: usize,
) -> Result<Vec<ArtifactEntry>, Box<dyn Error>> {
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("a/{i:05}.bin");
        let data = format!("artifact {i} of {capture}\n").into_bytes();
        let msgs = vec![
            named_header(capture, &name, 0),
            chunk(0, &data, sha256(&data)),
            end(&data),
        ];
        let mut acks = timed(c.upload_artifact(tokio_stream::iter(msgs)))
            .await??
            .into_inner();
        let mut finished = false;
        while let Some(ack) = timed(acks.message()).await?? {
            finished |= ack.finished;
        }
        if !finished {
            return Err(format!("{name} did not finish").into());
        }
        entries.push(ArtifactEntry {
            name,
            kind: "test".into(),
            content_type: "application/octet-stream".into(),
            encoding: Encoding::Identity,
            size_stored: data.len() as u64,
            size_uncompressed: data.len() as u64,
            sha256_stored: sha256_hex(&data),
            sha256_uncompressed: sha256_hex(&data),
            started_at: String::new(),
            ended_at: String::new(),
            record_count: None,
            error_count: 0,
            errors: vec![],
        });
    }
    Ok(entries)
}

fn manifest_of(capture: &str, artifacts: Vec<ArtifactEntry>) -> Result<Vec<u8>, Box<dyn Error>> {
    let m = Manifest {
        format_version: FORMAT_VERSION,
        capture_id: capture.into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        ended_at: "2026-01-01T00:00:01Z".into(),
        status: ircap_proto::manifest::CaptureStatus::default(),
        host: HostIdentity::default(),
        agent: AgentInfo::default(),
        options: serde_json::Value::Null,
        ssm_command_id: None,
        artifacts,
        error_count: 0,
        errors: vec![],
        collector_receipt: None,
        case: None,
    };
    Ok(serde_json::to_vec(&m)?)
}

/// The collector SIGKILLed while commits run (at 0 to 40 ms into each of
/// five, so some land before, inside and after the commit's writes): after
/// a restart every capture ends complete, listed and verifying, once the
/// agent retries its commit (`ALREADY_EXISTS` when the restart finished
/// it), and no capture is ever complete without its manifest.
#[tokio::test(flavor = "multi_thread")]
async fn collector_sigkilled_mid_commit_finishes_every_capture_after_restart() -> TestResult {
    let mut s = Setup::process()?;
    let store = s.collector.store.clone();
    let pki_dir = s.pki().to_path_buf();
    let port = s.collector.addr.port();
    let delays_ms = [0u64, 5, 10, 20, 40];
    for (round, delay) in delays_ms.iter().enumerate() {
        let id = format!("01a20000-0000-7000-8000-00000000010{round}");
        let mut c = s.client("web-1").await;
        timed(open(&mut c, &id)).await??;
        let entries = upload_small(&mut c, &id, 40).await?;
        let manifest = manifest_of(&id, entries)?;
        let request = CommitCaptureRequest {
            capture_id: id.clone(),
            manifest_json: manifest.clone(),
        };
        let commit = tokio::spawn(async move { c.commit_capture(request).await });
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        s.collector.child.kill()?;
        s.collector.child.wait()?;
        let answered = commit.await?.is_ok();
        let dir = s.collector.capture_dir("web-1", &id);
        let state_path = store.join("state").join(format!("{id}.json"));
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path)?)?;
        let has_manifest = dir.join("manifest.json").is_file();
        eprintln!(
            "killed {delay} ms into the commit: answered {answered}, manifest {has_manifest}, index {}, complete {}",
            s.collector.index_record(&id).is_some(),
            state["complete"]
        );
        assert!(
            has_manifest || state["complete"] != true,
            "complete without a manifest"
        );
        if answered {
            assert!(has_manifest, "a commit answered without its manifest");
        }

        s.collector = Collector::start(&pki_dir, &store, port);
        let mut c = s.client("web-1").await;
        let retried = timed(c.commit_capture(CommitCaptureRequest {
            capture_id: id.clone(),
            manifest_json: manifest,
        }))
        .await?;
        match retried {
            Ok(_) => {}
            Err(status) if status.code() == Code::AlreadyExists => {}
            Err(status) => return Err(format!("retried commit: {status:?}").into()),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = listed(&s).await?;
            if found
                .iter()
                .any(|f| f.capture_id == id && f.status == "complete")
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{id} not listed complete: {found:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ircap_e2e::assert_verifies(&dir);
    }
    Ok(())
}
