//! `ircap-collector verify` on a capture written here with the shared
//! format code: exit 0 when intact, 3 naming the file when not.

use std::io::Write;
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use ircap_proto::HashingWriter;
use ircap_proto::manifest::{
    AgentInfo, ArtifactEntry, Encoding, FORMAT_VERSION, HostIdentity, Manifest,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn write_capture(dir: &std::path::Path) -> TestResult {
    std::fs::create_dir_all(dir)?;
    let content = HashingWriter::new(GzEncoder::new(
        HashingWriter::new(std::fs::File::create(dir.join("t.jsonl.gz"))?),
        Compression::default(),
    ));
    let mut content = content;
    content.write_all(b"{\"a\":1}\n")?;
    let (gz, content_digest) = content.finish();
    let (_, stored) = gz.finish()?.finish();
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        capture_id: "test".into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        ended_at: "2026-01-01T00:00:01Z".into(),
        status: ircap_proto::manifest::CaptureStatus::Complete,
        host: HostIdentity::default(),
        agent: AgentInfo::default(),
        options: serde_json::Value::Null,
        ssm_command_id: None,
        artifacts: vec![ArtifactEntry {
            name: "t.jsonl.gz".into(),
            kind: "test".into(),
            content_type: "application/x-ndjson".into(),
            encoding: Encoding::Gzip,
            size_stored: stored.bytes,
            size_uncompressed: content_digest.bytes,
            sha256_stored: stored.sha256,
            sha256_uncompressed: content_digest.sha256,
            started_at: String::new(),
            ended_at: String::new(),
            record_count: Some(1),
            error_count: 0,
            errors: vec![],
        }],
        error_count: 0,
        errors: vec![],
        collector_receipt: None,
        case: None,
    };
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    Ok(())
}

fn verify(dir: &std::path::Path) -> std::io::Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_ircap-collector"))
        .arg("verify")
        .arg(dir)
        .output()
}

#[test]
fn intact_capture_verifies_and_a_changed_byte_is_named() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cap");
    write_capture(&dir)?;
    let ok = verify(&dir)?;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let path = dir.join("t.jsonl.gz");
    let mut bytes = std::fs::read(&path)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes)?;
    let bad = verify(&dir)?;
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("t.jsonl.gz"));
    Ok(())
}

#[test]
fn missing_directory_is_a_clear_error() -> TestResult {
    let out = verify(std::path::Path::new("/nonexistent/capture"))?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/capture/manifest.json"));
    Ok(())
}
