//! What a new user sees when a connection to the collector fails: one line
//! naming what was refused, by whom, and what to check, never tonic's bare
//! `transport error`; URLs that cannot work are refused before connecting
//! (exit 2). Real collector on loopback, real certificates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;

use ircap_e2e::certs::issue_agent_cert;
use ircap_e2e::{Collector, TestResult, bin, pki};
use time::OffsetDateTime;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `ircap-agent capture` to `url` with explicit CA, certificate and key.
fn agent(url: &str, ca: &Path, cert: &Path, key: &Path) -> Output {
    bin("ircap-agent")
        .args([
            "capture",
            "--no-imds",
            "--profile",
            "triage",
            "--upload-attempts",
            "2",
        ])
        .args(["--collector", url])
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap()
}

/// `ircap-collector list` to `url` with explicit files.
fn list(url: &str, ca: &Path, cert: &Path, key: &Path) -> Output {
    bin("ircap-collector")
        .args(["list", "--server", url])
        .arg("--ca")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap()
}

/// Exit `code`, and stderr has every one of `words` and no bare
/// `transport error`.
fn assert_says(out: &Output, code: i32, words: &[&str], what: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{what}: {err}");
    for w in words {
        assert!(err.contains(w), "{what}: {w:?} not in: {err}");
    }
    assert!(
        !err.contains("Unknown: transport error") && !err.contains("TLS settings: transport error"),
        "{what}: {err}"
    );
}

struct Setup {
    _tmp: tempfile::TempDir,
    pki: PathBuf,
    other: PathBuf,
    collector: Collector,
}

impl Setup {
    fn new(extra: &[&str]) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let ours = pki(&tmp.path().join("pki"));
        let other = pki(&tmp.path().join("other"));
        let collector = Collector::builder(&ours, &tmp.path().join("store"))
            .args(extra)
            .start();
        Self {
            _tmp: tmp,
            pki: ours,
            other,
            collector,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.pki.join(name)
    }
}

#[test]
fn refused_certificates_and_keys_are_named_on_the_agent() -> TestResult {
    let s = Setup::new(&[]);
    let url = s.collector.url();
    let ca = s.file("ca.pem");

    let out = agent(&url, &ca, &s.file("web-1.pem"), &s.file("web-1.key"));
    assert_says(&out, 0, &[], "the control case: matching files capture");

    let foreign = agent(
        &url,
        &ca,
        &s.other.join("web-1.pem"),
        &s.other.join("web-1.key"),
    );
    assert_says(
        &foreign,
        1,
        &[
            "refused this client's certificate",
            "not signed by the CA the collector trusts",
        ],
        "agent certificate of another CA",
    );

    let now = OffsetDateTime::now_utc();
    let issued = tempfile::tempdir()?;
    issue_agent_cert(
        &s.pki,
        issued.path(),
        "old-1",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )?;
    let expired = agent(
        &url,
        &ca,
        &issued.path().join("old-1.pem"),
        &issued.path().join("old-1.key"),
    );
    assert_says(&expired, 1, &["expired"], "expired agent certificate");

    let mismatched = agent(&url, &ca, &s.file("web-1.pem"), &s.file("web-2.key"));
    assert_says(
        &mismatched,
        2,
        &["does not belong to the certificate"],
        "key of another certificate",
    );

    let wrong_ca = agent(
        &url,
        &s.other.join("ca.pem"),
        &s.file("web-1.pem"),
        &s.file("web-1.key"),
    );
    assert_says(
        &wrong_ca,
        1,
        &["not signed by the CA in --ca", &url.replace("https://", "")],
        "--ca of another CA",
    );
    Ok(())
}

#[test]
fn a_revoked_agent_certificate_is_named_revoked() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_dir = pki(&tmp.path().join("pki"));
    let crl = pki_dir.join("crl.pem");
    let out = bin("ircap-collector")
        .args(["pki", "revoke", "--ca-dir"])
        .arg(&pki_dir)
        .arg("--crl")
        .arg(&crl)
        .arg(pki_dir.join("web-2.pem"))
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let collector = Collector::builder(&pki_dir, &tmp.path().join("store"))
        .args(&["--crl", crl.to_str().unwrap()])
        .start();
    let ca = pki_dir.join("ca.pem");
    let revoked = agent(
        &collector.url(),
        &ca,
        &pki_dir.join("web-2.pem"),
        &pki_dir.join("web-2.key"),
    );
    assert_says(&revoked, 1, &["revoked"], "revoked agent certificate");
    let fine = agent(
        &collector.url(),
        &ca,
        &pki_dir.join("web-1.pem"),
        &pki_dir.join("web-1.key"),
    );
    assert_says(&fine, 0, &[], "a certificate the CRL does not name");
    Ok(())
}

#[test]
fn urls_that_cannot_work_are_refused_or_named() -> TestResult {
    let s = Setup::new(&[]);
    let (ca, cert, key) = (s.file("ca.pem"), s.file("web-1.pem"), s.file("web-1.key"));
    let port = s.collector.addr.port();

    let no_scheme = agent(&format!("127.0.0.1:{port}"), &ca, &cert, &key);
    assert_says(
        &no_scheme,
        2,
        &["only https://"],
        "agent URL without a scheme",
    );

    // Nothing listens on port 1 of loopback.
    let refused = agent("https://127.0.0.1:1", &ca, &cert, &key);
    assert_says(
        &refused,
        1,
        &["127.0.0.1:1", "connection refused"],
        "nothing listening",
    );

    // No port: the default (443) is named, so the user sees which port was
    // tried (nothing listens on loopback's 443 here).
    let no_port = agent("https://127.0.0.1", &ca, &cert, &key);
    assert_says(
        &no_port,
        1,
        &["127.0.0.1:443", "connection refused"],
        "https URL without a port",
    );

    let dns = agent("https://no-such-host.invalid:7443", &ca, &cert, &key);
    assert_says(
        &dns,
        1,
        &["cannot resolve", "no-such-host.invalid"],
        "a host name that does not resolve",
    );

    let (alice, alice_key) = (s.file("alice.pem"), s.file("alice.key"));
    let out = list(&format!("127.0.0.1:{port}"), &ca, &alice, &alice_key);
    assert_says(&out, 2, &["only https://"], "list without a scheme");
    let out = list(
        &s.collector.url(),
        &s.other.join("ca.pem"),
        &alice,
        &alice_key,
    );
    assert_says(
        &out,
        1,
        &["not signed by the CA in --ca"],
        "list with another CA",
    );
    let out = list(&s.collector.url(), &ca, &alice, &alice_key);
    assert_says(&out, 0, &[], "the control case: list works");
    Ok(())
}

/// Collector settings that cannot work are refused with exit 2 before
/// anything is created: a relative `file://` store (which would land under
/// the working directory), and `pki init` over an existing CA without
/// `--force`.
#[test]
fn collector_settings_that_cannot_work_are_refused_with_exit_2() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let p = pki(&tmp.path().join("pki"));
    let cwd = tmp.path().join("cwd");
    std::fs::create_dir(&cwd)?;
    let out = bin("ircap-collector")
        .current_dir(&cwd)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "file://var/lib/ircap",
        ])
        .arg("--ca")
        .arg(p.join("ca.pem"))
        .arg("--cert")
        .arg(p.join("server.pem"))
        .arg("--key")
        .arg(p.join("server.key"))
        .output()?;
    assert_says(
        &out,
        2,
        &[
            "file://var/lib/ircap",
            "must be absolute",
            "file:///var/lib/ircap",
        ],
        "relative file store",
    );
    assert!(
        std::fs::read_dir(&cwd)?.next().is_none(),
        "the refused store created something under the working directory"
    );

    let ca_before = std::fs::read(p.join("ca.pem"))?;
    let again = bin("ircap-collector")
        .args(["pki", "init", "--out"])
        .arg(&p)
        .args(["--agent", "web-1"])
        .output()?;
    assert_says(
        &again,
        2,
        &["refusing to overwrite", "--force"],
        "pki init twice",
    );
    assert_eq!(
        std::fs::read(p.join("ca.pem"))?,
        ca_before,
        "the refused init changed the CA"
    );
    Ok(())
}

/// An `http://` collector URL is refused before connecting, with exit 2
/// and a line saying only `https://` is accepted: by the agent (nothing
/// listens at the URL, so a refusal after connecting would read
/// differently) and by `list` reading it from `IRCAP_SERVER`.
#[test]
fn an_http_collector_url_is_refused_with_exit_2_by_agent_and_list() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let p = pki(&tmp.path().join("pki"));
    let url = "http://127.0.0.1:1";
    let out = agent(
        url,
        &p.join("ca.pem"),
        &p.join("web-1.pem"),
        &p.join("web-1.key"),
    );
    assert_says(
        &out,
        2,
        &[url, "only https://"],
        "agent --collector http://",
    );
    assert!(out.stdout.is_empty(), "the agent printed a summary");

    let out = bin("ircap-collector")
        .arg("list")
        .env("IRCAP_SERVER", url)
        .env("IRCAP_CA", p.join("ca.pem"))
        .env("IRCAP_CERT", p.join("alice.pem"))
        .env("IRCAP_KEY", p.join("alice.key"))
        .output()?;
    assert_says(
        &out,
        2,
        &[url, "only https://"],
        "list with IRCAP_SERVER=http://",
    );
    Ok(())
}
