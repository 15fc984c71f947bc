//! The S3 evidence layer against a real S3 server (SeaweedFS): its
//! control documents (capture requests, agent presence), the contract the
//! file store's unit test checks, so that replicas sharing a bucket share
//! them; and two replicas (two S3 clients on one bucket) racing on one
//! capture, where S3's conditional writes must make exactly one win.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use ircap_collector::store::evidence::{Committed, Evidence};
use ircap_collector::store::s3::{S3Blob, S3Options};
use ircap_collector::store::{CaptureState, DocKey, FinishedArtifact, IndexEntry};
use ircap_e2e::build_dir;
use ircap_e2e::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use ircap_proto::ArtifactName;
use sha2::Digest as _;

/// The AWS chain reads the credentials from the environment.
fn set_credentials() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: every test of this binary calls this before any AWS client
    // exists; `Once` makes the one write happen before every later read
    // (concurrent callers wait until it is done).
    ONCE.call_once(|| unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

/// A new S3 client (a collector replica's) on `bucket`, prefix `ir`.
async fn replica(server: &S3Server, bucket: &str) -> Evidence<S3Blob> {
    set_credentials();
    let mut opts = S3Options::from_url(&format!("s3://{bucket}/ir")).unwrap();
    opts.endpoint = Some(server.endpoint());
    opts.path_style = true;
    opts.region = Some("us-east-1".into());
    Evidence::new(S3Blob::connect(opts).await.unwrap())
}

#[tokio::test]
async fn control_documents_round_trip_under_the_prefix() {
    let tmp = tempfile::Builder::new()
        .prefix("ircap-s3-docs-")
        .tempdir_in(build_dir())
        .unwrap();
    let server = S3Server::start(&tmp.path().join("weed"));
    server.create_bucket("docs", false);
    let store = replica(&server, "docs").await;
    let key = |k: &str| DocKey::new(k).unwrap();

    assert!(store.list_docs(&key("requests")).await.unwrap().is_empty());
    assert_eq!(store.get_doc(&key("requests/a")).await.unwrap(), None);
    store.put_doc(&key("requests/b"), b"two").await.unwrap();
    store.put_doc(&key("requests/a"), b"one").await.unwrap();
    store.put_doc(&key("requests/a"), b"uno").await.unwrap();
    store
        .put_doc(&key("requests/sub/c"), b"deep")
        .await
        .unwrap();
    store.put_doc(&key("agents/x"), b"agent").await.unwrap();
    assert_eq!(
        store.list_docs(&key("requests")).await.unwrap(),
        vec![key("requests/a"), key("requests/b"), key("requests/sub")]
    );
    assert_eq!(
        store.get_doc(&key("requests/a")).await.unwrap().as_deref(),
        Some(&b"uno"[..])
    );
    store.delete_doc(&key("requests/a")).await.unwrap();
    store.delete_doc(&key("requests/a")).await.unwrap();
    assert_eq!(store.get_doc(&key("requests/a")).await.unwrap(), None);
    assert_eq!(
        store.list_docs(&key("requests/sub")).await.unwrap(),
        vec![key("requests/sub/c")]
    );
    // Control documents live under PREFIX/control/, away from evidence.
    let keys = server.boto_json(&["list", "docs", "ir/"]);
    let keys: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("ir/control/")),
        "{keys:?}"
    );
    assert!(keys.contains(&"ir/control/agents/x"), "{keys:?}");
}

fn opened(id: &str) -> CaptureState {
    CaptureState {
        capture_id: id.into(),
        owner: "web-1".into(),
        hostname: "web-1".into(),
        opened_at: "2026-01-01T00:00:00Z".into(),
        finished: BTreeMap::new(),
        complete: false,
        expired_at: None,
    }
}

fn index(id: &str) -> IndexEntry {
    IndexEntry {
        capture_id: id.into(),
        agent: "web-1".into(),
        hostname: "web-1".into(),
        instance_id: None,
        started_at: String::new(),
        ended_at: String::new(),
        stored_bytes: 0,
        artifacts: 0,
        committed_at: String::new(),
        findings: std::collections::BTreeMap::new(),
        case: None,
    }
}

/// Puts `bytes` as artifact `name` of `s` through `ev` and records it.
async fn finish(ev: &Evidence<S3Blob>, s: &CaptureState, name: &str, bytes: &[u8]) {
    let name = ArtifactName::parse(name).unwrap();
    let sum: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let f = FinishedArtifact {
        encoding: "identity".into(),
        size: bytes.len() as u64,
        sha256: sum.clone(),
        size_uncompressed: bytes.len() as u64,
        sha256_uncompressed: sum,
    };
    ev.append(s, &name, 0, bytes).await.unwrap();
    ev.finish_artifact(s, &name, &f).await.unwrap();
    ev.record_finished(s, &name, &f).await.unwrap();
}

#[tokio::test]
async fn two_replicas_racing_on_one_capture_never_lose_an_update_or_lie() {
    let tmp = tempfile::Builder::new()
        .prefix("ircap-s3-race-")
        .tempdir_in(build_dir())
        .unwrap();
    let server = S3Server::start(&tmp.path().join("weed"));
    server.create_bucket("race", false);
    let (a, b) = (
        replica(&server, "race").await,
        replica(&server, "race").await,
    );

    for round in 0..6 {
        let id = format!("race-{round}");
        // Both open the same id: one state, the first owner's.
        let mut other = opened(&id);
        other.owner = "web-2".into();
        let mine = opened(&id);
        let (sa, sb) = tokio::join!(a.open(&mine), b.open(&other));
        let (sa, sb) = (sa.unwrap(), sb.unwrap());
        assert_eq!(sa.owner, sb.owner, "round {round}: two owners");
        let s = sa;
        // Both record artifacts at once: none is lost.
        tokio::join!(
            async {
                for i in 0..4 {
                    finish(&a, &s, &format!("a{i}.bin"), format!("a{i}").as_bytes()).await;
                }
            },
            async {
                for i in 0..4 {
                    finish(&b, &s, &format!("b{i}.bin"), format!("b{i}").as_bytes()).await;
                }
            }
        );
        assert_eq!(a.state(&id).await.unwrap().unwrap().finished.len(), 8);

        // Both commit, with different manifests: exactly one is stored.
        let (ma, mb) = (
            format!("{{\"by\":\"a{round}\"}}"),
            format!("{{\"by\":\"b{round}\"}}"),
        );
        let entry = index(&id);
        let (ca, cb) = tokio::join!(
            a.commit(&s, ma.as_bytes(), &entry),
            b.commit(&s, mb.as_bytes(), &entry)
        );
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        assert_ne!(ca, cb, "round {round}: both {ca:?}");
        let winner = if ca == Committed::Stored { &ma } else { &mb };
        assert_eq!(&b.read_manifest(&s).await.unwrap(), winner.as_bytes());
        let done = b.state(&id).await.unwrap().unwrap();
        assert!(done.complete && done.expired_at.is_none(), "{done:?}");
        assert_eq!(done.finished.len(), 8, "round {round}: artifacts lost");
        assert!(b.has_index(&id).await.unwrap());
    }

    // Commit on one replica racing expiry on the other: complete with its
    // manifest, or expired without one, never complete without a manifest
    // nor expired with one.
    let mut outcomes = std::collections::BTreeSet::new();
    for round in 0..8 {
        let id = format!("expire-{round}");
        let s = a.open(&opened(&id)).await.unwrap();
        finish(&a, &s, "x.bin", b"x").await;
        let entry = index(&id);
        let (c, e) = tokio::join!(
            a.commit(&s, b"{}", &entry),
            b.expire(&id, "2026-01-02T00:00:00Z")
        );
        let (c, e) = (c.unwrap(), e.unwrap());
        let state = a.state(&id).await.unwrap().unwrap();
        let manifest = a.find_manifest(&state).await.unwrap();
        assert_eq!(c, Committed::Stored, "round {round}");
        assert!(manifest.is_some(), "round {round}");
        assert!(
            state.complete && state.expired_at.is_none(),
            "round {round}: a stored manifest but {state:?}"
        );
        assert!(a.open_ids(100).await.unwrap().iter().all(|i| *i != id));
        outcomes.insert(e);
    }
    // An expiry that ran first and lost the capture to the commit anyway
    // (the manifest is the truth), or found it committed.
    assert!(!outcomes.is_empty());
}
