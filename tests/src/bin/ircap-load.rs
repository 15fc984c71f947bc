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
//! ircap-load [--bombers N] [--bomb-streams S] URL PKI AGENTS ARTIFACTS CONTENT_BYTES DEADLINE_SECS
//! ```
//!
//! `--bombers N` runs N hostile agents alongside (`PKI/bomb-<j>.pem`, from
//! `pki init --agent bomb-<j>`): each opens one capture and keeps S upload
//! streams (default 3, the attack issue 13 measured) sending gzip bombs,
//! one 4 MiB chunk decoding to about 4 GiB each ([`ircap_e2e::bomb`]),
//! until the normal agents are done. Every answer is tallied by status
//! code; a bomb chunk the collector acknowledges (a durable offset past 0)
//! is counted apart, as `bombs_acknowledged`, and must never happen.
//!
//! Stdout: one JSON object (captures, errors, captures/s, MB/s, p50/p99
//! seconds, first errors; with bombers, their tally). Nothing is written
//! to disk.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
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
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Largest chunk sent (the agent's).
const CHUNK: usize = 1 << 20;
/// Stored size of one bomb: the collector's largest chunk.
const BOMB_BYTES: usize = 4 << 20;
/// Upload streams per bomber unless `--bomb-streams` says otherwise.
const BOMB_STREAMS: usize = 3;
/// Longest a bomb may wait for its answer before it counts as an error.
const BOMB_ANSWER: Duration = Duration::from_secs(60);
/// How long bombers get to stop once the normal agents are done.
const BOMBERS_STOP: Duration = Duration::from_secs(30);

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

/// The hostile agents' side of a run.
struct Bombing {
    bombers: usize,
    streams: usize,
}

/// What one bomb upload came to.
enum Bombed {
    /// The collector refused it (on the call or the ack stream), perhaps
    /// with a retry hint.
    Refused(tonic::Code, Option<Duration>),
    /// The collector acknowledged bomb bytes as stored.
    Acknowledged(String),
    /// Anything else (transport error, no answer).
    Failed(String),
}

fn refused(s: &tonic::Status) -> Bombed {
    let pushback = s
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis);
    Bombed::Refused(s.code(), pushback)
}

/// One bomb: a header, then one chunk that decodes to GiB, and no end. The
/// sender is held until the answer so the stream stays open.
async fn bomb_once(
    c: &mut CaptureUploadClient<Channel>,
    capture_id: &str,
    name: String,
    bomb: &Bytes,
    sha256: &[u8],
) -> Bombed {
    let (tx, rx) = mpsc::channel(2);
    let header = UploadMessage {
        body: Some(upload_message::Body::Header(ArtifactHeader {
            capture_id: capture_id.to_owned(),
            name: name.clone(),
            encoding: "gzip".into(),
            offset: 0,
        })),
    };
    if let Err(e) = tx.send(header).await {
        return Bombed::Failed(e.to_string());
    }
    let mut acks = match c.upload_artifact(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return refused(&s),
    };
    match acks.message().await {
        Ok(Some(_)) => {}
        Ok(None) => return Bombed::Failed(format!("{name}: no first ack")),
        Err(s) => return refused(&s),
    }
    let chunk = UploadMessage {
        body: Some(upload_message::Body::Chunk(Chunk {
            offset: 0,
            data: bomb.clone(),
            sha256: sha256.to_vec(),
        })),
    };
    // A send failing means the collector closed the stream: its status
    // follows on the acks.
    let _ = tx.send(chunk).await;
    loop {
        match acks.message().await {
            Ok(Some(ack)) if ack.durable_offset > 0 || ack.finished => {
                return Bombed::Acknowledged(format!(
                    "{name}: acknowledged {} bytes (finished: {})",
                    ack.durable_offset, ack.finished
                ));
            }
            Ok(Some(_)) => {}
            Ok(None) => return Bombed::Failed(format!("{name}: stream ended, bomb not refused")),
            Err(s) => return refused(&s),
        }
    }
}

/// The bombers' answers.
#[derive(Default)]
struct Tally {
    /// Status code name -> bombs refused with it.
    refused: BTreeMap<String, u64>,
    acknowledged: u64,
    errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Self) {
        for (code, n) in other.refused {
            *self.refused.entry(code).or_default() += n;
        }
        self.acknowledged += other.acknowledged;
        self.errors.extend(other.errors);
    }
}

/// Sleeps `d`, or less if `stop` comes first.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        _ = stop.changed() => {}
    }
}

/// One bomber stream: bombs one after another until `stop`.
async fn bomb_stream(
    mut c: CaptureUploadClient<Channel>,
    capture_id: String,
    stream: usize,
    bomb: Bytes,
    sha256: Arc<[u8]>,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut round = 0u64;
    while !*stop.borrow() {
        round += 1;
        let name = format!("bomb/{stream}-{round}.jsonl.gz");
        let answer = tokio::time::timeout(
            BOMB_ANSWER,
            bomb_once(&mut c, &capture_id, name.clone(), &bomb, &sha256),
        );
        let outcome = tokio::select! {
            a = answer => a.unwrap_or_else(|_| {
                Bombed::Failed(format!("{name}: no answer within {BOMB_ANSWER:?}"))
            }),
            _ = stop.changed() => break,
        };
        match outcome {
            Bombed::Refused(code, pushback) => {
                *tally.refused.entry(format!("{code:?}")).or_default() += 1;
                if let Some(after) = pushback {
                    pause(after, &mut stop).await;
                }
            }
            Bombed::Acknowledged(e) => {
                tally.acknowledged += 1;
                tally.errors.push(e);
            }
            Bombed::Failed(e) => {
                tally.errors.push(e);
                pause(Duration::from_millis(200), &mut stop).await;
            }
        }
    }
    tally
}

/// One hostile agent: opens a capture, then `streams` bomb streams at once
/// on its connection until `stop`.
async fn bomber(
    url: String,
    pki: PathBuf,
    j: usize,
    streams: usize,
    bomb: Bytes,
    sha256: Arc<[u8]>,
    stop: watch::Receiver<bool>,
) -> Result<Tally, String> {
    let who = format!("bomb-{j}");
    let mut c = CaptureUploadClient::new(channel(&url, &pki, &who)?)
        .max_encoding_message_size(BOMB_BYTES + (1 << 20));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let capture_id = format!("bomb-{j}-{nanos}");
    c.open_capture(OpenCaptureRequest {
        capture_id: capture_id.clone(),
        hostname: who,
    })
    .await
    .map_err(|s| status("bomber open", &s))?;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..streams {
        tasks.spawn(bomb_stream(
            c.clone(),
            capture_id.clone(),
            k,
            bomb.clone(),
            Arc::clone(&sha256),
            stop.clone(),
        ));
    }
    let mut tally = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(t) => tally.add(t),
            Err(e) => tally.errors.push(e.to_string()),
        }
    }
    Ok(tally)
}

/// Splits the `--bombers`/`--bomb-streams` options from the positional
/// arguments.
fn options(args: &[String]) -> Result<(Bombing, Vec<String>), String> {
    let mut bombing = Bombing {
        bombers: 0,
        streams: BOMB_STREAMS,
    };
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let slot = match a.as_str() {
            "--bombers" => &mut bombing.bombers,
            "--bomb-streams" => &mut bombing.streams,
            _ => {
                rest.push(a.clone());
                continue;
            }
        };
        let v = it.next().ok_or_else(|| format!("{a} needs a number"))?;
        *slot = v.parse().map_err(|e| format!("{a} {v}: {e}"))?;
    }
    bombing.streams = bombing.streams.max(1);
    Ok((bombing, rest))
}

fn first_errors(errors: &[String]) -> Vec<String> {
    let mut first = errors.to_vec();
    first.sort();
    first.dedup();
    first.truncate(5);
    first
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).map_or(0.0, Duration::as_secs_f64)
}

async fn run(args: &[String]) -> Result<serde_json::Value, String> {
    let (bombing, args) = options(args)?;
    let [url, pki, agents, count, content_bytes, deadline] = args.as_slice() else {
        return Err("usage: ircap-load [--bombers N] [--bomb-streams S] URL PKI AGENTS ARTIFACTS CONTENT_BYTES DEADLINE_SECS".into());
    };
    let num = |s: &str| s.parse::<usize>().map_err(|e| format!("{s}: {e}"));
    let (agents, count, content_bytes) = (num(agents)?, num(count)?, num(content_bytes)?);
    let deadline = Duration::from_secs(num(deadline)? as u64);
    let arts = Arc::new(artifacts(count, content_bytes).map_err(|e| e.to_string())?);
    let stored: u64 = arts.iter().map(|a| a.entry.size_stored).sum();
    let bomb = if bombing.bombers > 0 {
        Bytes::from(ircap_e2e::bomb::gzip_bomb(BOMB_BYTES).map_err(|e| e.to_string())?)
    } else {
        Bytes::new()
    };
    let bomb_sha: Arc<[u8]> = sha2::Sha256::digest(&bomb).to_vec().into();
    let (stop_tx, stop) = watch::channel(false);
    let mut bombers = tokio::task::JoinSet::new();
    for j in 0..bombing.bombers {
        bombers.spawn(bomber(
            url.clone(),
            PathBuf::from(pki),
            j,
            bombing.streams,
            bomb.clone(),
            Arc::clone(&bomb_sha),
            stop.clone(),
        ));
    }
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
    // The normal agents are done: stop the bombers.
    let _ = stop_tx.send(true);
    let mut tally = Tally::default();
    let stopping = tokio::time::sleep(BOMBERS_STOP);
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            joined = bombers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(t))) => tally.add(t),
                Some(Ok(Err(e))) => tally.errors.push(e),
                Some(Err(e)) => tally.errors.push(e.to_string()),
            },
            () = &mut stopping => {
                tally.errors.extend((0..bombers.len()).map(|_| "bomber did not stop".to_owned()));
                bombers.abort_all();
                break;
            }
        }
    }
    done.sort();
    let secs = last.as_secs_f64().max(f64::EPSILON);
    let bombs_refused: u64 = tally.refused.values().sum();
    let codes: Vec<String> = tally
        .refused
        .iter()
        .map(|(code, n)| format!("{n} {code}"))
        .collect();
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
        "first_errors": first_errors(&errors),
        "bombers": bombing.bombers,
        "bomb_streams": if bombing.bombers > 0 { bombing.streams } else { 0 },
        "bomb_bytes": bomb.len(),
        "bombs_refused": bombs_refused,
        "bombs_refused_codes": codes.join(" + "),
        "bombs_by_code": tally.refused,
        "bombs_acknowledged": tally.acknowledged,
        "bomber_errors": tally.errors.len(),
        "bomber_first_errors": first_errors(&tally.errors),
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
