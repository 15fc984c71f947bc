//! Helpers for the agent's end-to-end tests: run the real binary, read
//! every table line by line with a strict JSON parser, plant processes.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use flate2::read::MultiGzDecoder;
use serde_json::Value;

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ircap-agent"))
}

/// A finished capture run.
pub struct Run {
    pub output: Output,
    pub summary: Value,
    pub dir: PathBuf,
}

impl Run {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn manifest(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("manifest.json")).unwrap()).unwrap()
    }

    /// Every record of `<name>.jsonl.gz`, each line parsed strictly.
    pub fn table(&self, name: &str) -> Vec<Value> {
        read_table(&self.dir.join(format!("{name}.jsonl.gz")))
    }
}

pub fn read_table(path: &Path) -> Vec<Value> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reader = BufReader::new(MultiGzDecoder::new(file));
    reader
        .split(b'\n')
        .enumerate()
        .map(|(i, line)| {
            let line = line.unwrap();
            serde_json::from_slice(&line)
                .unwrap_or_else(|e| panic!("{} line {}: not JSON: {e}", path.display(), i + 1))
        })
        .collect()
}

/// Runs `ircap-agent capture --output out --no-imds <extra>` and checks it
/// succeeded with a one-line JSON summary.
pub fn capture(out: &Path, extra: &[&str]) -> Run {
    let output = agent()
        .args(["capture", "--no-imds", "--output"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "capture failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "summary is one line: {stdout}");
    assert!(stdout.len() < 24 * 1024, "summary fits SSM output");
    let summary: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(summary["status"], "complete");
    let dir = PathBuf::from(summary["location"].as_str().unwrap());
    Run {
        output,
        summary,
        dir,
    }
}

/// Runs a capture expected to end partial (exit 4) and returns its run.
pub fn capture_partial(out: &Path, extra: &[&str]) -> Run {
    let output = agent()
        .args(["capture", "--no-imds", "--output"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["status"], "partial", "{summary}");
    let dir = PathBuf::from(summary["location"].as_str().unwrap());
    Run {
        output,
        summary,
        dir,
    }
}

/// Kills and reaps the child when dropped.
pub struct Planted(pub Child);

impl Planted {
    pub fn pid(&self) -> i64 {
        i64::from(self.0.id())
    }
}

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawns `cmd` with piped stdout and waits for its first line.
pub fn spawn_ready(mut cmd: Command) -> (Planted, String) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    let stdout = child.stdout.take().unwrap();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (Planted(child), line.trim().to_owned())
}

pub fn sha256_file(path: &Path) -> String {
    let mut data = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    ircap_proto::hashing::sha256_hex(&data)
}

pub fn b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// The record with `pid` in a table.
pub fn by_pid(rows: &[Value], pid: i64) -> Vec<&Value> {
    rows.iter()
        .filter(|r| r["pid"].as_i64() == Some(pid))
        .collect()
}

/// Waits until `/proc/<pid>/exe` points at something other than `not`
/// (the child has exec'd).
pub fn wait_exec(pid: i64, not: &str) {
    for _ in 0..200 {
        if let Ok(t) = std::fs::read_link(format!("/proc/{pid}/exe"))
            && !t.to_string_lossy().contains(not)
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
