//! `ircap-load`: many simulated agents uploading at once to one collector,
//! for `packaging/bench/bench-load.sh` (a bench, not a test).
//!
//! Each simulated agent has its own certificate (`PKI/load-<i>.pem` and
//! `.key`, issued by `ircap-collector pki init --agent load-<i>`) and its
//! own TLS connection, and does what `ircap-agent capture` does on the
//! wire: `OpenCapture`, one upload stream per artifact (gzip, chunks with
//! their SHA-256, end with both digests), then `CommitCapture` with a
//! manifest listing them. All agents start together; the run stops by
//! itself at the deadline, counting what did not finish as errors.
//!
//! ```text
//! ircap-load URL PKI AGENTS ARTIFACTS CONTENT_BYTES DEADLINE_SECS
//! ```
//!
//! Stdout: one JSON object (captures, errors, captures/s, MB/s, p50/p99
//! seconds, first errors). Nothing is written to disk.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use ircap_proto::manifest::{
    AgentInfo, ArtifactEntry, CaptureStatus, Encoding, FORMAT_VERSION, HostIdentity, Manifest,
};
use ircap_proto::v1::capture_upload_client::CaptureUploadClient;
use ircap_proto::v1::{
    ArtifactEnd, ArtifactHeader, Chunk, CommitCaptureRequest, OpenCaptureRequest, UploadMessage,
    upload_message,
};
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Largest chunk sent (the agent's).
const CHUNK: usize = 1 << 20;

/// One artifact every simulated agent uploads.
struct Artifact {
    name: String,
    gz: Vec<u8>,
    entry: ArtifactEntry,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Log-like text: compresses about as well as the agent's tables.
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 80);
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    while out.len() < len {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let _ = writeln!(
            out,
            "{{\"pid\":{},\"comm\":\"worker-{}\",\"rss\":{},\"state\":\"S\"}}",
            x >> 48,
            (x >> 20) & 0xff,
            (x >> 8) & 0xffff_ffff
        );
    }
    out.truncate(len);
    out
}

fn artifacts(count: usize, content_bytes: usize) -> Result<Vec<Artifact>, std::io::Error> {
    (0..count)
        .map(|k| {
            let raw = content(k as u64, content_bytes);
            let mut gz = GzEncoder::new(Vec::new(), Compression::new(1));
            gz.write_all(&raw)?;
            let gz = gz.finish()?;
            let name = format!("bench/table-{k:02}.jsonl.gz");
            let entry = ArtifactEntry {
                name: name.clone(),
                kind: "bench".into(),
                content_type: "application/x-ndjson".into(),
                encoding: Encoding::Gzip,
                size_stored: gz.len() as u64,
                size_uncompressed: raw.len() as u64,
                sha256_stored: hex(&sha2::Sha256::digest(&gz)),
                sha256_uncompressed: hex(&sha2::Sha256::digest(&raw)),
                started_at: "2026-01-01T00:00:00Z".into(),
                ended_at: "2026-01-01T00:00:01Z".into(),
                record_count: None,
                error_count: 0,
                errors: Vec::new(),
            };
            Ok(Artifact { name, gz, entry })
        })
        .collect()
}

fn channel(url: &str, pki: &Path, who: &str) -> Result<Channel, String> {
    let read = |p: PathBuf| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(pki.join("ca.pem"))?))
        .identity(Identity::from_pem(
            read(pki.join(format!("{who}.pem")))?,
            read(pki.join(format!("{who}.key")))?,
        ));
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_lazy())
}

fn status(what: &str, s: &tonic::Status) -> String {
    format!("{what}: {:?}: {}", s.code(), s.message())
}

async fn upload(
    c: &mut CaptureUploadClient<Channel>,
    capture_id: &str,
    a: &Artifact,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(8);
    let header = UploadMessage {
        body: Some(upload_message::Body::Header(ArtifactHeader {
            capture_id: capture_id.to_owned(),
            name: a.name.clone(),
            encoding: "gzip".into(),
            offset: 0,
        })),
    };
    tx.send(header).await.map_err(|e| e.to_string())?;
    let mut acks = c
        .upload_artifact(ReceiverStream::new(rx))
        .await
        .map_err(|s| status("upload", &s))?
        .into_inner();
    // First ack: where to start (always 0 here).
    acks.message()
        .await
        .map_err(|s| status("first ack", &s))?
        .ok_or("no first ack")?;
    let mut offset = 0u64;
    for part in a.gz.chunks(CHUNK) {
        let msg = UploadMessage {
            body: Some(upload_message::Body::Chunk(Chunk {
                offset,
                data: part.to_vec().into(),
                sha256: sha2::Sha256::digest(part).to_vec(),
            })),
        };
        tx.send(msg).await.map_err(|e| e.to_string())?;
        offset += part.len() as u64;
    }
    let end = UploadMessage {
        body: Some(upload_message::Body::End(ArtifactEnd {
            size: a.entry.size_stored,
            sha256: a.entry.sha256_stored.clone(),
            size_uncompressed: a.entry.size_uncompressed,
            sha256_uncompressed: a.entry.sha256_uncompressed.clone(),
        })),
    };
    tx.send(end).await.map_err(|e| e.to_string())?;
    loop {
        match acks.message().await {
            Ok(Some(ack)) if ack.finished => return Ok(()),
            Ok(Some(_)) => {}
            Ok(None) => return Err(format!("{}: stream ended unfinished", a.name)),
            Err(s) => return Err(status(&a.name, &s)),
        }
    }
}

async fn one_capture(
    url: String,
    pki: PathBuf,
    i: usize,
    arts: Arc<Vec<Artifact>>,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let who = format!("load-{i}");
    let mut c =
        CaptureUploadClient::new(channel(&url, &pki, &who)?).max_encoding_message_size(8 << 20);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let capture_id = format!("load-{i}-{nanos}");
    c.open_capture(OpenCaptureRequest {
        capture_id: capture_id.clone(),
        hostname: who.clone(),
    })
    .await
    .map_err(|s| status("open", &s))?;
    for a in arts.iter() {
        upload(&mut c, &capture_id, a).await?;
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        capture_id: capture_id.clone(),
        started_at: "2026-01-01T00:00:00Z".into(),
        ended_at: "2026-01-01T00:00:01Z".into(),
        status: CaptureStatus::Complete,
        host: HostIdentity {
            hostname: who,
            ..HostIdentity::default()
        },
        agent: AgentInfo::default(),
        options: serde_json::Value::Null,
        ssm_command_id: None,
        artifacts: arts.iter().map(|a| a.entry.clone()).collect(),
        error_count: 0,
        errors: Vec::new(),
        collector_receipt: None,
        case: None,
    };
    c.commit_capture(CommitCaptureRequest {
        capture_id,
        manifest_json: manifest.to_json().map_err(|e| e.to_string())?,
    })
    .await
    .map_err(|s| status("commit", &s))?;
    Ok(t0.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).map_or(0.0, Duration::as_secs_f64)
}

async fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let [url, pki, agents, count, content_bytes, deadline] = args else {
        return Err(
            "usage: ircap-load URL PKI AGENTS ARTIFACTS CONTENT_BYTES DEADLINE_SECS".into(),
        );
    };
    let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
    let (agents, count, content_bytes) = (num(agents)?, num(count)?, num(content_bytes)?);
    let deadline = Duration::from_secs(num(deadline)? as u64);
    let arts = Arc::new(artifacts(count, content_bytes).map_err(|e| e.to_string())?);
    let stored: u64 = arts.iter().map(|a| a.entry.size_stored).sum();
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..agents {
        let (url, pki, arts) = (url.clone(), PathBuf::from(pki), Arc::clone(&arts));
        tasks.spawn(async move { one_capture(url, pki, i, arts).await });
    }
    let mut done = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut last = Duration::ZERO;
    let end = tokio::time::sleep(deadline);
    tokio::pin!(end);
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                None => break,
                Some(Ok(Ok(took))) => {
                    done.push(took);
                    last = t0.elapsed();
                }
                Some(Ok(Err(e))) => errors.push(e),
                Some(Err(e)) => errors.push(e.to_string()),
            },
            () = &mut end => {
                errors.extend((0..tasks.len()).map(|_| "deadline passed".to_owned()));
                tasks.abort_all();
                break;
            }
        }
    }
    done.sort();
    let secs = last.as_secs_f64().max(f64::EPSILON);
    let mut first_errors = errors.clone();
    first_errors.sort();
    first_errors.dedup();
    first_errors.truncate(5);
    Ok(serde_json::json!({
        "agents": agents,
        "artifacts_per_capture": count,
        "stored_bytes_per_capture": stored,
        "captures": done.len(),
        "errors": errors.len(),
        "seconds": secs,
        "captures_per_s": done.len() as f64 / secs,
        "mb_per_s": (done.len() as f64 * stored as f64) / secs / 1e6,
        "p50_s": percentile(&done, 0.50),
        "p99_s": percentile(&done, 0.99),
        "first_errors": first_errors,
    }))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ircap-load: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(&args)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ircap-load: {e}");
            ExitCode::from(2)
        }
    }
}
