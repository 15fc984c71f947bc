//! Collectors driven through the library against real files and processes
//! on this host, where the binary cannot aim them at a fixture.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use ircap_agent::collect::accounts::Accounts;
use ircap_agent::collect::system::BootClock;
use ircap_agent::collect::{Context, Roots, logs, processes};
use ircap_agent::options::CaptureOptions;
use ircap_agent::sink::CaptureSink;
use ircap_agent::sink::dir::DirSink;
use ircap_proto::manifest::{FORMAT_VERSION, Manifest};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn set_mtime(path: &Path, t: SystemTime) -> std::io::Result<()> {
    File::options().write(true).open(path)?.set_modified(t)
}

fn manifest_for(artifacts: Vec<ircap_proto::ArtifactEntry>) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        capture_id: "logs-test".into(),
        started_at: String::new(),
        ended_at: String::new(),
        status: ircap_proto::manifest::CaptureStatus::Complete,
        host: Default::default(),
        agent: Default::default(),
        options: serde_json::Value::Null,
        ssm_command_id: None,
        error_count: artifacts.iter().map(|a| a.error_count).sum(),
        artifacts,
        errors: vec![],
        collector_receipt: None,
        case: None,
    }
}

#[test]
fn logs_keep_original_bytes_within_since_and_budget() -> TestResult {
    let fx = tempfile::tempdir()?;
    let log_dir = fx.path().join("var/log");
    std::fs::create_dir_all(log_dir.join("nested"))?;
    let now = SystemTime::now();

    // A current text log with binary junk and a hostile line.
    let mut auth = b"Nov 23 sshd[1]: Accepted publickey for root\n".repeat(60);
    auth.extend_from_slice(b"\x00\xff\x1b[2J\"\n");
    std::fs::write(log_dir.join("auth.log"), &auth)?;
    // An already-compressed rotated log.
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(b"rotated syslog line\n")?;
    let gz = gz.finish()?;
    std::fs::write(log_dir.join("nested/syslog.2.gz"), &gz)?;
    // An older, bigger log that only partly fits the budget.
    let big: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(log_dir.join("big.log"), &big)?;
    set_mtime(&log_dir.join("big.log"), now - Duration::from_secs(3600))?;
    // A log older than --logs-since.
    std::fs::write(log_dir.join("old.log"), b"ancient")?;
    set_mtime(
        &log_dir.join("old.log"),
        now - Duration::from_secs(30 * 86_400),
    )?;

    let out = tempfile::tempdir()?;
    let sink = DirSink::create(out.path(), "logs-test")?;
    let mut options = CaptureOptions::with_defaults(out.path().to_path_buf());
    options.logs_since_time = now - Duration::from_secs(7 * 86_400);
    options.logs_max_bytes = auth.len() as u64 + gz.len() as u64 + 1000;
    let roots = Roots::host();
    let accounts = Accounts::default();
    let clock = BootClock::read();
    let ctx = Context {
        sink: &sink,
        options: &options,
        roots: &roots,
        accounts: &accounts,
        clock: &clock,
        threads: 2,
        blocking: Default::default(),
        dropped: Default::default(),
    };
    let entries = logs::write(
        &ctx,
        &[log_dir.clone(), fx.path().join("no-such-dir")],
        logs::MAX_KEPT,
    )?;
    sink.commit(&manifest_for(entries.clone()))?;
    let cap = out.path().join("logs-test");
    let report = ircap_proto::verify_capture(&cap)?;
    assert!(report.is_ok(), "{:?}", report.problems);

    let index: Vec<serde_json::Value> = {
        let mut text = String::new();
        MultiGzDecoder::new(File::open(cap.join("log_files.jsonl.gz"))?)
            .read_to_string(&mut text)?;
        text.lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?
    };
    let row = |name: &str| {
        index
            .iter()
            .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with(name)))
            .cloned()
            .unwrap_or_default()
    };
    let read_artifact = |r: &serde_json::Value| -> std::io::Result<Vec<u8>> {
        let path = cap.join(r["artifact"].as_str().unwrap_or("missing"));
        std::fs::read(path)
    };

    // Plain text: gzip of the exact original bytes.
    let a = row("auth.log");
    assert_eq!(a["included"], true);
    let mut decoded = Vec::new();
    MultiGzDecoder::new(&read_artifact(&a)?[..]).read_to_end(&mut decoded)?;
    assert_eq!(decoded, auth);
    assert_eq!(
        a["sha256"].as_str(),
        Some(ircap_proto::hashing::sha256_hex(&auth).as_str())
    );

    // Compressed on the host: stored byte for byte.
    let s = row("syslog.2.gz");
    assert_eq!(s["compression"], "gzip");
    assert_eq!(read_artifact(&s)?, gz);

    // Over budget: its newest 1000 bytes.
    let b = row("big.log");
    assert_eq!(b["kept_from_offset"], 9000);
    let mut tail = Vec::new();
    MultiGzDecoder::new(&read_artifact(&b)?[..]).read_to_end(&mut tail)?;
    assert_eq!(tail, big[9000..]);

    // Too old: listed, not kept.
    let o = row("old.log");
    assert_eq!(o["included"], false);
    assert_eq!(o["reason"], "modified before --logs-since");
    assert!(o["artifact"].is_null());
    Ok(())
}

#[test]
fn a_process_that_exited_is_reported_gone_not_read() -> TestResult {
    let out = tempfile::tempdir()?;
    let sink = DirSink::create(out.path(), "gone")?;
    let options = CaptureOptions::with_defaults(PathBuf::from(out.path()));
    let roots = Roots::host();
    let accounts = Accounts::load(&roots.etc);
    let clock = BootClock::read();
    let ctx = Context {
        sink: &sink,
        options: &options,
        roots: &roots,
        accounts: &accounts,
        clock: &clock,
        threads: 1,
        blocking: Default::default(),
        dropped: Default::default(),
    };
    let mut child = std::process::Command::new("true").spawn()?;
    let pid = i32::try_from(child.id())?;
    child.wait()?;
    let err = processes::read_process(&ctx, pid).expect_err("exited process read");
    assert!(err.is_gone(), "{err}");

    // The scan of a list holding it records it and carries on.
    let me = i32::try_from(std::process::id())?;
    let (index, table) = processes::scan(&ctx, &[me, pid], true);
    assert_eq!(index.records, 1);
    assert_eq!(index.map_targets.len(), 1);
    assert_eq!(index.map_targets[0].0, me);
    let entry = table.expect("table asked for")?;
    assert_eq!(entry.record_count, Some(1));
    assert!(
        entry
            .errors
            .contains(&format!("pid {pid} exited before it could be read")),
        "{:?}",
        entry.errors
    );
    Ok(())
}

#[test]
fn process_memory_stops_at_the_artifacts_the_capture_has_room_for() -> TestResult {
    // Three real processes asked for by pid, room for two artifacts: two
    // are dumped, the third is named as not dumped and the capture is
    // partial (what the collector's artifact limit would otherwise refuse
    // at commit).
    let mut kids: Vec<std::process::Child> = (0..3)
        .map(|_| std::process::Command::new("sleep").arg("600").spawn())
        .collect::<Result<_, _>>()?;
    let pids: Vec<i32> = kids.iter().map(|k| k.id() as i32).collect();
    let out = tempfile::tempdir()?;
    let sink = DirSink::create(out.path(), "mem-test")?;
    let mut options = CaptureOptions::with_defaults(out.path().to_path_buf());
    options.memory_process_budget = 64 << 10;
    let roots = Roots::host();
    let accounts = Accounts::default();
    let clock = BootClock::read();
    let ctx = Context {
        sink: &sink,
        options: &options,
        roots: &roots,
        accounts: &accounts,
        clock: &clock,
        threads: 2,
        blocking: Default::default(),
        dropped: Default::default(),
    };
    let selector = ircap_agent::options::MemorySelector::Pids(pids.clone());
    let entries = ircap_agent::collect::memory_regions::write(&ctx, &selector, &[], 2)?;
    for k in &mut kids {
        let _ = k.kill();
        let _ = k.wait();
    }
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("memory/pid-{}.bin.gz", pids[0]).as_str(),
            format!("memory/pid-{}.bin.gz", pids[1]).as_str(),
            "memory_regions.jsonl.gz"
        ]
    );
    let index = entries.last().ok_or("no index")?;
    assert!(
        index.errors.iter().any(|e| e.contains(&format!(
            "pid {}: not dumped, the capture's artifact limit",
            pids[2]
        ))),
        "{:?}",
        index.errors
    );
    let dropped = ctx.dropped.take();
    assert!(
        dropped.iter().any(
            |d| d.source == "memory_regions" && d.message.starts_with("1 processes not dumped")
        ),
        "{dropped:?}"
    );
    sink.commit(&manifest_for(entries))?;
    let report = ircap_proto::verify_capture(&out.path().join("mem-test"))?;
    assert!(report.is_ok(), "{:?}", report.problems);
    Ok(())
}
