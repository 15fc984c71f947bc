//! The in-process collector the protocol tests use
//! ([`ircap_e2e::inproc::InProcessCollector`]): it serves real mTLS gRPC
//! from the library, its log is captured, a bad setting fails before it
//! listens, and dropping it stops it promptly and frees its port, even with
//! a client still connected.

use std::time::{Duration, Instant};

use ircap_collector::serve::ServeConfig;
use ircap_e2e::inproc::InProcessCollector;
use ircap_e2e::{TestResult, client, pki};
use ircap_proto::v1::OpenCaptureRequest;

#[tokio::test(flavor = "multi_thread")]
async fn an_in_process_collector_serves_logs_and_frees_its_port_when_dropped() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    let collector = InProcessCollector::start(&pki_dir, &store);
    let addr = collector.addr;
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    let mut c = client(addr, &pki_dir.join("ca.pem"), Some((&pki_dir, "web-1"))).await;
    let opened = tokio::time::timeout(
        Duration::from_secs(30),
        c.open_capture(OpenCaptureRequest {
            capture_id: "01a20000-0000-7000-8000-0000000000a1".into(),
            hostname: "test-host".into(),
        }),
    )
    .await??
    .into_inner();
    assert!(!opened.complete);
    assert!(
        collector
            .store
            .join("state/01a20000-0000-7000-8000-0000000000a1.json")
            .is_file()
    );
    assert!(
        collector.log().contains("Collector listening"),
        "{}",
        collector.log()
    );

    // `c` stays connected: the stop must not wait for it.
    let started = Instant::now();
    tokio::task::block_in_place(|| drop(collector));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "{addr} still accepts connections"
    );
    // The same port is free for the next one (a restart).
    let again = InProcessCollector::builder(&pki_dir, &store)
        .port(addr.port())
        .start();
    assert_eq!(again.addr, addr);
    drop(c);
    Ok(())
}

#[test]
fn an_in_process_collector_with_a_missing_certificate_fails_naming_it() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let result = InProcessCollector::builder(&pki_dir, &tmp.path().join("store"))
        .config(ServeConfig {
            cert: Some("/nonexistent/server.pem".into()),
            ..ServeConfig::default()
        })
        .try_start();
    match result {
        Ok(c) => Err(format!("started on {} without its certificate", c.addr).into()),
        Err(e) => {
            assert!(e.to_string().contains("/nonexistent/server.pem"), "{e}");
            Ok(())
        }
    }
}
