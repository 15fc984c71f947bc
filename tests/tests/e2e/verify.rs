//! A real capture by the agent, verified offline by both the agent and the
//! collector (one implementation of the format), then damaged in every way
//! an evidence file can be: each must fail verification, naming the file.

use std::path::{Path, PathBuf};
use std::process::Output;

use ircap_e2e::{bin, copy_dir};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn capture(out: &Path) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let output = bin("ircap-agent")
        .args([
            "capture",
            "--no-imds",
            "--logs-since",
            "3650d",
            "--logs-max-bytes",
            "256K",
            "--output",
        ])
        .arg(out)
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(PathBuf::from(
        summary["location"].as_str().unwrap_or_default(),
    ))
}

fn verify_both(dir: &Path) -> Result<[Output; 2], Box<dyn std::error::Error>> {
    let agent = bin("ircap-agent").arg("verify").arg(dir).output()?;
    let collector = bin("ircap-collector").arg("verify").arg(dir).output()?;
    Ok([agent, collector])
}

fn assert_fails_naming(dir: &Path, file: &str, what: &str) -> TestResult {
    for out in verify_both(dir)? {
        assert_eq!(out.status.code(), Some(3), "{what}: exit code");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(file),
            "{what}: stderr does not name {file}: {err}"
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let problems = report["problems"].as_array().cloned().unwrap_or_default();
        assert!(
            problems.iter().any(|p| p["file"] == file),
            "{what}: report does not name {file}: {report}"
        );
    }
    Ok(())
}

#[test]
fn agent_capture_verifies_and_every_kind_of_damage_is_named() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let good = capture(&tmp.path().join("out"))?;
    for out in verify_both(&good)? {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(good.join("manifest.json"))?)?;
    // Log files were captured as raw evidence under logs/.
    assert!(
        manifest["artifacts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["kind"] == "logs"
                && x["name"].as_str().is_some_and(|n| n.starts_with("logs/")))),
        "no raw log artifact"
    );

    let case = |name: &str| -> Result<PathBuf, Box<dyn std::error::Error>> {
        let dir = tmp.path().join(name);
        copy_dir(&good, &dir);
        Ok(dir)
    };

    // One flipped byte in a stored table.
    let flipped = case("flipped")?;
    let target = flipped.join("processes.jsonl.gz");
    let mut bytes = std::fs::read(&target)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&target, bytes)?;
    assert_fails_naming(&flipped, "processes.jsonl.gz", "flipped byte")?;

    // Bytes appended after a valid gzip stream.
    let appended = case("appended")?;
    let target = appended.join("connections.jsonl.gz");
    let mut bytes = std::fs::read(&target)?;
    bytes.extend_from_slice(b"extra");
    std::fs::write(&target, bytes)?;
    assert_fails_naming(&appended, "connections.jsonl.gz", "appended bytes")?;

    // A missing artifact.
    let missing = case("missing")?;
    std::fs::remove_file(missing.join("memory_maps.jsonl.gz"))?;
    assert_fails_naming(&missing, "memory_maps.jsonl.gz", "missing file")?;

    // An unexpected extra file, also in a subdirectory.
    let extra = case("extra")?;
    std::fs::write(extra.join("logs/planted.txt"), b"not evidence")?;
    assert_fails_naming(&extra, "logs/planted.txt", "extra file")?;

    // A manifest edited to point outside the capture.
    let escape = case("escape")?;
    let mut m = manifest.clone();
    m["artifacts"][0]["name"] = serde_json::Value::from("../../etc/passwd");
    std::fs::write(escape.join("manifest.json"), serde_json::to_vec(&m)?)?;
    assert_fails_naming(&escape, "../../etc/passwd", "escaping name")?;

    // No manifest at all: a different failure (exit 1), clearly worded.
    let bare = case("bare")?;
    std::fs::remove_file(bare.join("manifest.json"))?;
    for out in verify_both(&bare)? {
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("manifest"));
    }
    Ok(())
}
