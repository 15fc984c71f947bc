//! Chain of custody against real binaries and certificates on loopback:
//! the collector's signed receipt verifies offline (with `verify --ca`
//! and with the openssl commands of `docs/custody.md`), a flipped byte in
//! the receipt or the manifest fails naming the file, a receipt signed by
//! another CA's key is refused, and captures without a receipt say so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;

use ircap_e2e::{Collector, TestResult, agent_capture, bin, copy_dir, json_lines, pki};

const RECEIPT: &str = "manifest.receipt.json";
const SIG: &str = "manifest.receipt.sig";
const CERT: &str = "manifest.receipt.pem";

/// A capture by `web-1` into `collector`; its stored directory.
fn capture(collector: &Collector) -> PathBuf {
    let out = agent_capture(&collector.url(), &collector.pki, "web-1", &["--no-logs"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["status"], "complete", "{s}");
    collector.capture_dir("web-1", s["capture_id"].as_str().unwrap())
}

/// `ircap-collector verify DIR [--ca CA]`.
fn verify(dir: &Path, ca: Option<&Path>) -> Output {
    let mut cmd = bin("ircap-collector");
    cmd.arg("verify").arg(dir);
    if let Some(ca) = ca {
        cmd.arg("--ca").arg(ca);
    }
    cmd.output().unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Replaces the first `from` in `file` with `to` (same length: one byte).
fn flip(file: &Path, from: &str, to: &str) {
    let content = std::fs::read_to_string(file).unwrap();
    assert!(content.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, content.replacen(from, to, 1)).unwrap();
}

#[test]
fn receipt_verifies_offline_and_a_flipped_byte_is_named() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = Collector::start(&pki, &tmp.path().join("store"), 0);
    let stored = capture(&collector);
    let ca = pki.join("ca.pem");
    for file in [RECEIPT, SIG, CERT] {
        assert!(stored.join(file).is_file(), "{file} not stored");
    }

    // The stored capture verifies, and says who it came from.
    let out = verify(&stored, Some(&ca));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&out);
    assert_eq!(r["receipt"]["status"], "signed", "{r}");
    assert_eq!(r["receipt"]["agent"], "web-1");
    assert_eq!(r["receipt"]["chain"], "verified");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored.join("manifest.json"))?)?;
    assert_eq!(
        r["receipt"]["agent_certificate_sha256"],
        manifest["collector_receipt"]["peer_certificate_sha256"]
    );
    assert!(
        text(&out).contains("received from agent web-1"),
        "{}",
        text(&out)
    );
    // The agent's verify is the same check.
    let agent = bin("ircap-agent")
        .arg("verify")
        .arg(&stored)
        .arg("--ca")
        .arg(&ca)
        .output()?;
    assert_eq!(agent.status.code(), Some(0), "{}", text(&agent));
    assert_eq!(report(&agent)["receipt"]["status"], "signed");

    // Pulled, it arrives with its receipt and verifies offline.
    let pulled = tmp.path().join("pulled");
    std::fs::create_dir_all(&pulled)?;
    let id = stored.file_name().unwrap().to_str().unwrap();
    let out = bin("ircap-collector")
        .arg("pull")
        .args(["--server", &collector.url()])
        .arg("--ca")
        .arg(&ca)
        .arg("--cert")
        .arg(pki.join("alice.pem"))
        .arg("--key")
        .arg(pki.join("alice.key"))
        .arg(id)
        .arg(&pulled)
        .output()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = verify(&pulled.join(id), Some(&ca));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report(&out)["receipt"]["status"], "signed");

    // One byte of the receipt flipped: fails naming the receipt.
    let bad = tmp.path().join("bad-receipt");
    copy_dir(&stored, &bad);
    flip(&bad.join(RECEIPT), "\"web-1\"", "\"web-2\"");
    for ca in [Some(ca.as_path()), None] {
        let out = verify(&bad, ca);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        let problems = &report(&out)["problems"];
        assert_eq!(problems[0]["file"], RECEIPT, "{problems}");
        assert!(text(&out).contains("does not verify"), "{}", text(&out));
    }

    // One byte of the manifest flipped (still valid JSON): fails naming it.
    let bad = tmp.path().join("bad-manifest");
    copy_dir(&stored, &bad);
    flip(&bad.join("manifest.json"), "every chunk", "every chunK");
    let out = verify(&bad, Some(&ca));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let problems = report(&out)["problems"].clone();
    assert_eq!(problems.as_array().map(Vec::len), Some(1), "{problems}");
    assert_eq!(problems[0]["file"], "manifest.json", "{problems}");
    assert!(
        text(&out).contains("does not match the signed receipt"),
        "{}",
        text(&out)
    );

    // The signature file damaged: fails too.
    let bad = tmp.path().join("bad-sig");
    copy_dir(&stored, &bad);
    let mut sig = std::fs::read(bad.join(SIG))?;
    let last = sig.len() - 1;
    sig[last] ^= 1;
    std::fs::write(bad.join(SIG), sig)?;
    let out = verify(&bad, Some(&ca));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    Ok(())
}

#[test]
fn a_receipt_signed_by_another_ca_is_refused() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki_a = pki(&tmp.path().join("a"));
    let pki_b = pki(&tmp.path().join("b"));
    // The collector refuses to start with a receipt key of another CA.
    let refused = bin("ircap-collector")
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("file://{}", tmp.path().join("s").display()))
        .arg("--ca")
        .arg(pki_a.join("ca.pem"))
        .arg("--cert")
        .arg(pki_a.join("server.pem"))
        .arg("--key")
        .arg(pki_a.join("server.key"))
        .arg("--receipt-key")
        .arg(pki_b.join("receipt.key"))
        .arg("--receipt-cert")
        .arg(pki_b.join("receipt.pem"))
        .output()?;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("document signing"),
        "{}",
        text(&refused)
    );
    // Nor will it sign with an agent's key (clientAuth, not document signing).
    let refused = bin("ircap-collector")
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--store")
        .arg(format!("file://{}", tmp.path().join("s").display()))
        .arg("--ca")
        .arg(pki_a.join("ca.pem"))
        .arg("--cert")
        .arg(pki_a.join("server.pem"))
        .arg("--key")
        .arg(pki_a.join("server.key"))
        .arg("--receipt-key")
        .arg(pki_a.join("web-1.key"))
        .arg("--receipt-cert")
        .arg(pki_a.join("web-1.pem"))
        .output()?;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));

    // A capture whose receipt was re-signed with CA B's receipt key.
    let collector = Collector::start(&pki_a, &tmp.path().join("store"), 0);
    let stored = capture(&collector);
    let forged = tmp.path().join("forged");
    copy_dir(&stored, &forged);
    let signed = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(pki_b.join("receipt.key"))
        .arg("-out")
        .arg(forged.join(SIG))
        .arg(forged.join(RECEIPT))
        .output()?;
    assert!(signed.status.success(), "{}", text(&signed));
    std::fs::copy(pki_b.join("receipt.pem"), forged.join(CERT))?;
    // Intact, but not signed by CA A: refused naming the certificate.
    let out = verify(&forged, Some(&pki_a.join("ca.pem")));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(report(&out)["problems"][0]["file"], CERT, "{}", text(&out));
    // Without a CA the signature holds, and the report says the signer
    // was not checked; with CA B it verifies.
    let out = verify(&forged, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report(&out)["receipt"]["chain"], "not_checked");
    let out = verify(&forged, Some(&pki_b.join("ca.pem")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    Ok(())
}

#[test]
fn a_capture_without_a_signed_receipt_says_so() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    // A collector without a receipt key, as before signed receipts.
    std::fs::remove_file(pki.join("receipt.key"))?;
    let collector = Collector::start(&pki, &tmp.path().join("store"), 0);
    let stored = capture(&collector);
    assert!(!stored.join(RECEIPT).exists());
    let out = verify(&stored, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = report(&out);
    assert_eq!(r["receipt"]["status"], "unsigned", "{r}");
    assert!(
        text(&out).contains("receipt: unsigned (received by collector"),
        "{}",
        text(&out)
    );
    // Asked who signed, a missing receipt is a failure.
    let out = verify(&stored, Some(&pki.join("ca.pem")));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(report(&out)["problems"][0]["file"], RECEIPT);
    // A local capture: unsigned, not received by any collector.
    let local = tmp.path().join("local");
    let out = bin("ircap-agent")
        .args(["capture", "--no-imds", "--no-logs", "--output"])
        .arg(&local)
        .output()?;
    assert!(out.status.success(), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let dir = PathBuf::from(s["location"].as_str().unwrap_or_default());
    let out = bin("ircap-agent").arg("verify").arg(&dir).output()?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report(&out)["receipt"]["status"], "unsigned");
    Ok(())
}

/// Something done to a copied capture directory.
type Damage<'a> = dyn Fn(&Path) + 'a;

/// The shell block between the openssl-check markers of docs/custody.md.
fn documented_openssl_check() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/custody.md"))
            .unwrap();
    let start = doc.find("<!-- openssl-check:begin -->").unwrap();
    let end = doc.find("<!-- openssl-check:end -->").unwrap();
    let block = &doc[start..end];
    let code = block.split("```sh\n").nth(1).unwrap();
    code.split("```").next().unwrap().to_owned()
}

fn run_documented(dir: &Path, ca: &Path) -> Output {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(documented_openssl_check())
        .env("CA", ca)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn openssl_checks_the_receipt_as_documented() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let other = ircap_e2e::pki(&tmp.path().join("other"));
    let collector = Collector::start(&pki, &tmp.path().join("store"), 0);
    let stored = capture(&collector);
    let ca = pki.join("ca.pem");

    let out = run_documented(&stored, &ca);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("manifest.receipt.pem: OK"), "{said}");
    assert!(said.contains("Verified OK"), "{said}");
    assert!(said.contains("every artifact matches"), "{said}");

    // Each kind of damage makes the documented check fail.
    let cases: [(&str, &Damage<'_>); 4] = [
        ("receipt", &|d| {
            flip(&d.join(RECEIPT), "\"web-1\"", "\"web-2\"")
        }),
        ("manifest", &|d| {
            flip(&d.join("manifest.json"), "every chunk", "every chunK");
        }),
        ("artifact", &|d| {
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(d.join("manifest.json")).unwrap()).unwrap();
            let path = d.join(m["artifacts"][0]["name"].as_str().unwrap());
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[20] ^= 1;
            std::fs::write(path, bytes).unwrap();
        }),
        ("other CA", &|d| {
            std::fs::copy(other.join("receipt.pem"), d.join(CERT)).unwrap();
        }),
    ];
    for (what, damage) in cases {
        let dir = tmp.path().join(format!("bad-{}", what.replace(' ', "-")));
        copy_dir(&stored, &dir);
        damage(&dir);
        let out = run_documented(&dir, &ca);
        assert!(!out.status.success(), "{what}: {}", text(&out));
    }
    Ok(())
}

/// Every audit event file in a file store, parsed, oldest first.
fn audit_events(store: &Path) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    let Ok(days) = std::fs::read_dir(store.join("audit")) else {
        return Vec::new();
    };
    for day in days {
        for f in std::fs::read_dir(day.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "json") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// SHA-256 of a PEM certificate's DER, as openssl computes it.
fn cert_sha256(pem: &Path) -> String {
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg("openssl x509 -in \"$1\" -outform DER | sha256sum | cut -d' ' -f1")
        .arg("-")
        .arg(pem)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `ircap-collector CMD` against `collector` as `who` with `args`.
fn analyst(collector: &Collector, who: &str, cmd: &str, args: &[&str]) -> Output {
    ircap_e2e::analyst(&collector.url(), &collector.pki, who, cmd, args)
}

/// The events added since `before` events were stored.
fn new_events(store: &Path, before: usize) -> Vec<serde_json::Value> {
    audit_events(store).split_off(before)
}

#[test]
fn every_analyst_call_is_one_audit_event() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let out = bin("ircap-collector")
        .args(["pki", "issue", "--role", "analyst", "--ca-dir"])
        .arg(&pki)
        .arg("--out")
        .arg(&pki)
        .arg("bob")
        .output()?;
    assert!(out.status.success(), "{}", text(&out));
    let store = tmp.path().join("store");
    let collector = Collector::start(&pki, &store, 0);
    let stored = capture(&collector);
    let id = stored.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        audit_events(&store).is_empty(),
        "uploads are not analyst calls"
    );
    let alice = cert_sha256(&pki.join("alice.pem"));
    let bob = cert_sha256(&pki.join("bob.pem"));
    assert_eq!(alice.len(), 64);

    // list, with a case and reason: one event.
    let out = analyst(
        &collector,
        "alice",
        "list",
        &[
            "--json",
            "--case",
            "IR-2026-041",
            "--reason",
            "triage of web-1 — täglich",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = new_events(&store, 0);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["call"], "list_captures");
    assert_eq!(got[0]["identity"], "alice");
    assert_eq!(got[0]["certificate_sha256"], alice.as_str());
    assert_eq!(got[0]["case"], "IR-2026-041");
    assert_eq!(got[0]["reason"], "triage of web-1 — täglich");
    assert_eq!(got[0]["outcome"], "ok");

    // show --json by bob: one event, with the manifest's size.
    let out = analyst(&collector, "bob", "show", &["--json", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = new_events(&store, 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["call"], "get_manifest");
    assert_eq!(got[0]["identity"], "bob");
    assert_eq!(got[0]["certificate_sha256"], bob.as_str());
    assert_eq!(got[0]["capture_id"], id.as_str());
    assert_eq!(
        got[0]["bytes_served"].as_u64(),
        Some(std::fs::metadata(stored.join("manifest.json"))?.len())
    );

    // pull: one manifest read and one read per non-empty artifact, whose
    // bytes add up to the capture's.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored.join("manifest.json"))?)?;
    let artifacts: Vec<&serde_json::Value> = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["size_stored"].as_u64() != Some(0))
        .collect();
    let total: u64 = artifacts
        .iter()
        .map(|a| a["size_stored"].as_u64().unwrap())
        .sum();
    let dir = tmp.path().join("pulled");
    std::fs::create_dir_all(&dir)?;
    let out = analyst(&collector, "alice", "pull", &[&id, dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = new_events(&store, 2);
    assert_eq!(got.len(), 1 + artifacts.len(), "{got:?}");
    assert_eq!(got[0]["call"], "get_manifest");
    let reads: Vec<&serde_json::Value> = got[1..].iter().collect();
    assert!(reads.iter().all(|e| e["call"] == "read_artifact"
        && e["identity"] == "alice"
        && e["capture_id"] == id.as_str()));
    let served: u64 = reads
        .iter()
        .map(|e| e["bytes_served"].as_u64().unwrap())
        .sum();
    assert_eq!(served, total);

    // A failed pull of an unknown id: one event, saying so.
    let unknown = "01a20000-0000-7000-8000-00000000dead";
    let out = analyst(
        &collector,
        "alice",
        "pull",
        &[unknown, dir.to_str().unwrap()],
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let before = 3 + artifacts.len();
    let got = new_events(&store, before);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["capture_id"], unknown);
    assert!(
        got[0]["outcome"].as_str().unwrap().starts_with("NotFound"),
        "{got:?}"
    );
    assert_eq!(got[0]["bytes_served"], 0);

    // An agent certificate calling list: refused, and recorded as such.
    let out = analyst(&collector, "web-1", "list", &[]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let got = new_events(&store, before + 1);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["identity"], "web-1");
    assert_eq!(got[0]["role"], "agent");
    assert!(
        got[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("PermissionDenied"),
        "{got:?}"
    );

    // `audit` lists them (and is itself recorded); filters work.
    let out = analyst(&collector, "bob", "audit", &["--json", "--capture", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let listed: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2 + artifacts.len(), "{listed:?}");
    assert!(listed.iter().all(|e| e["capture_id"] == id.as_str()));
    let out = analyst(&collector, "bob", "audit", &["--json", "--identity", "bob"]);
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    // show and the first audit listing (a listing is recorded once
    // answered, so it is not in its own answer).
    assert_eq!(listed, 2, "{}", text(&out));
    let out = analyst(
        &collector,
        "alice",
        "audit",
        &["--json", "--for-case", "IR-2026-041"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert_eq!(audit_events(&store).len(), before + 5);

    // `show` prints the capture's access history.
    let out = analyst(&collector, "alice", "show", &[&id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("access history"), "{shown}");
    assert!(shown.contains("read_artifact"), "{shown}");
    // The evidence itself is untouched by all of it.
    let out = verify(&stored, Some(&pki.join("ca.pem")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    Ok(())
}

#[test]
fn a_collector_killed_right_after_an_answer_keeps_its_event() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    for round in 0..5 {
        let mut collector = Collector::start(&pki, &store, 0);
        let out = analyst(&collector, "alice", "list", &["--json", "--case", "IR-9"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        // SIGKILL the moment the answer is in: no shutdown, no flush.
        collector.child.kill()?;
        collector.child.wait()?;
        let events = audit_events(&store);
        assert_eq!(events.len(), round + 1, "round {round}: {events:?}");
        assert_eq!(events[round]["call"], "list_captures");
    }
    // A new collector on the store lists them all.
    let collector = Collector::start(&pki, &store, 0);
    let out = analyst(
        &collector,
        "alice",
        "audit",
        &["--json", "--for-case", "IR-9"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);
    Ok(())
}

#[test]
fn a_call_whose_audit_event_cannot_be_stored_serves_nothing() -> TestResult {
    // The store's audit directory is a plain file: no event can be
    // written, so no analyst call may be answered (an access nobody could
    // see later), while the agents' uploads go on.
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store)?;
    std::fs::write(store.join("audit"), b"not a directory")?;
    let collector = Collector::start(&pki, &store, 0);
    let stored = capture(&collector);
    let id = stored.file_name().unwrap().to_str().unwrap().to_owned();
    let list = analyst(&collector, "alice", "list", &["--json"]);
    assert_eq!(list.status.code(), Some(1), "{}", text(&list));
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&id),
        "{}",
        text(&list)
    );
    let pulled = tmp.path().join("pulled");
    let pull = analyst(
        &collector,
        "alice",
        "pull",
        &[&id, pulled.to_str().unwrap()],
    );
    assert_eq!(pull.status.code(), Some(1), "{}", text(&pull));
    assert!(!pulled.join(&id).exists(), "pulled without an audit event");
    Ok(())
}

#[test]
fn require_case_refuses_calls_without_one() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let store = tmp.path().join("store");
    let collector = Collector::builder(&pki, &store)
        .args(&["--require-case"])
        .start();
    let out = analyst(&collector, "alice", "list", &["--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("requires a case id"), "{}", text(&out));
    let out = analyst(&collector, "alice", "request", &["--all"]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("requires a case id"), "{}", text(&out));
    let out = analyst(&collector, "alice", "list", &["--json", "--case", "IR-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A malformed case id is refused before anything is sent.
    let out = analyst(&collector, "alice", "list", &["--case", "no spaces"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let events = audit_events(&store);
    let outcomes: Vec<&str> = events
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        outcomes[0].starts_with("FailedPrecondition"),
        "{outcomes:?}"
    );
    assert_eq!(events[1]["call"], "create_request");
    assert!(
        outcomes[1].starts_with("FailedPrecondition"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], "ok");
    Ok(())
}

/// Kills a spawned agent daemon when dropped.
/// `ircap-agent serve` as `who` against `collector`.
fn daemon(tmp: &Path, collector: &Collector, who: &str) -> ircap_e2e::ServeAgent {
    ircap_e2e::ServeAgent::start(tmp, &collector.url(), &collector.pki, who)
}

/// Issues analyst `name` from `pki`'s CA into `out`.
fn issue_analyst(pki: &Path, out: &Path, name: &str) {
    let done = bin("ircap-collector")
        .args(["pki", "issue", "--role", "analyst", "--ca-dir"])
        .arg(pki)
        .arg("--out")
        .arg(out)
        .arg(name)
        .output()
        .unwrap();
    assert!(done.status.success(), "{}", text(&done));
}

#[test]
fn an_approval_class_request_waits_for_another_analyst() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    issue_analyst(&pki, &pki, "bob");
    // A second certificate for alice: the same person, another key.
    let second = tmp.path().join("second");
    issue_analyst(&pki, &second, "alice");
    std::fs::copy(second.join("alice.pem"), pki.join("alice2.pem"))?;
    std::fs::copy(second.join("alice.key"), pki.join("alice2.key"))?;
    let store = tmp.path().join("store");
    let collector = Collector::builder(&pki, &store)
        .args(&["--approvals", "fleet,memory", "--approval-fleet-hosts", "0"])
        .start();
    let _agent = daemon(tmp.path(), &collector, "web-1");
    let start = std::time::Instant::now();
    loop {
        let out = analyst(&collector, "alice", "agents", &["--json"]);
        if json_lines(&out).iter().any(|a| a["agent"] == "web-1") {
            break;
        }
        assert!(start.elapsed().as_secs() < 30, "web-1 never connected");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let out = analyst(
        &collector,
        "alice",
        "request",
        &[
            "--host",
            "web-1",
            "--profile",
            "triage",
            "--case",
            "IR-7",
            "--reason",
            "beacon",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let created = json_lines(&out).remove(0);
    assert_eq!(created["status"], "pending", "{created}");
    assert_eq!(created["approval_classes"], serde_json::json!(["fleet"]));
    let id = created["request_id"].as_str().unwrap().to_owned();

    // Not delivered while pending.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let out = analyst(&collector, "alice", "list", &["--json"]);
    assert_eq!(json_lines(&out).len(), 0, "{}", text(&out));

    // The requester cannot approve it, with either of her certificates.
    for who in ["alice", "alice2"] {
        let out = analyst(&collector, who, "approve", &[&id]);
        assert_ne!(out.status.code(), Some(0), "{who}: {}", text(&out));
        assert!(
            text(&out).contains("cannot approve"),
            "{who}: {}",
            text(&out)
        );
    }
    let out = analyst(&collector, "alice", "list", &["--json"]);
    assert_eq!(json_lines(&out).len(), 0, "{}", text(&out));

    // Bob approves: delivered, and both names are in the manifest.
    let out = analyst(&collector, "bob", "approve", &[&id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let approved = json_lines(&out).remove(0);
    assert_eq!(approved["requested_by"], "alice");
    assert_eq!(approved["approved_by"], "bob");
    // Only once.
    let out = analyst(&collector, "bob", "approve", &[&id]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let start = std::time::Instant::now();
    let capture = loop {
        let out = analyst(&collector, "alice", "list", &["--json", "--case", "IR-7"]);
        if let Some(c) = json_lines(&out).into_iter().next() {
            break c;
        }
        assert!(start.elapsed().as_secs() < 90, "never delivered");
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    assert_eq!(capture["case"], "IR-7");
    let capture_id = capture["capture_id"].as_str().unwrap();
    let out = analyst(&collector, "alice", "list", &["--json", "--case", "IR-8"]);
    assert_eq!(json_lines(&out).len(), 0);
    let stored = collector.capture_dir("web-1", capture_id);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored.join("manifest.json"))?)?;
    assert_eq!(manifest["case"]["id"], "IR-7", "{}", manifest["case"]);
    assert_eq!(manifest["case"]["reason"], "beacon");
    assert_eq!(manifest["case"]["requested_by"], "alice");
    assert_eq!(manifest["case"]["approved_by"], "bob");
    // The signed receipt names the case too.
    let out = verify(&stored, Some(&pki.join("ca.pem")));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(report(&out)["receipt"]["case"], "IR-7");

    // The trail has the request, both refusals and the approval.
    let events = audit_events(&store);
    let about: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["request_id"] == id.as_str())
        .collect();
    let summary: Vec<(String, String, bool)> = about
        .iter()
        .map(|e| {
            (
                e["call"].as_str().unwrap().to_owned(),
                e["identity"].as_str().unwrap().to_owned(),
                e["outcome"] == "ok",
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("create_request".into(), "alice".into(), true),
            ("approve_request".into(), "alice".into(), false),
            ("approve_request".into(), "alice".into(), false),
            ("approve_request".into(), "bob".into(), true),
            ("approve_request".into(), "bob".into(), false),
        ]
    );
    assert_eq!(about[0]["case"], "IR-7");
    // The two alice certificates are told apart by their SHA-256.
    assert_ne!(
        about[1]["certificate_sha256"],
        about[2]["certificate_sha256"]
    );
    Ok(())
}

#[test]
fn an_unapproved_request_expires() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    issue_analyst(&pki, &pki, "bob");
    let collector = Collector::builder(&pki, &tmp.path().join("store"))
        .args(&["--approvals", "fleet", "--approval-ttl", "1s"])
        .start();
    let out = analyst(&collector, "alice", "request", &["--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let created = json_lines(&out).remove(0);
    assert_eq!(created["status"], "pending", "{created}");
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let id = created["request_id"].as_str().unwrap();
    let out = analyst(&collector, "bob", "approve", &[id]);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("expired unapproved"), "{}", text(&out));
    // A request outside the classes goes out at once.
    let out = analyst(&collector, "alice", "request", &["--host", "web-1"]);
    assert_eq!(json_lines(&out).remove(0)["status"], "created");
    Ok(())
}

#[test]
fn a_local_capture_records_its_case() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let pki = pki(&tmp.path().join("pki"));
    let collector = Collector::start(&pki, &tmp.path().join("store"), 0);
    let out = agent_capture(
        &collector.url(),
        &pki,
        "web-1",
        &[
            "--no-logs",
            "--case",
            "IR-2026-041",
            "--reason",
            "suspicious cron",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let stored = collector.capture_dir("web-1", s["capture_id"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stored.join("manifest.json"))?)?;
    assert_eq!(manifest["case"]["id"], "IR-2026-041");
    assert_eq!(manifest["case"]["reason"], "suspicious cron");
    let out = analyst(
        &collector,
        "alice",
        "list",
        &["--json", "--case", "IR-2026-041"],
    );
    assert_eq!(json_lines(&out).len(), 1, "{}", text(&out));
    // A malformed case never reaches a manifest.
    let out = agent_capture(&collector.url(), &pki, "web-1", &["--case", "../x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    Ok(())
}
