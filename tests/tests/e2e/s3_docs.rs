//! The S3 evidence layer against a real S3 server (SeaweedFS): its
//! control documents (capture requests, agent presence), the contract the
//! file store's unit test checks, so that replicas sharing a bucket share
//! them; and two replicas (two S3 clients on one bucket) racing on one
//! capture, where S3's conditional writes must make exactly one win; and
//! the capture index (`store::index`): replicas merging one day at once,
//! a damaged or deleted segment, what a listing costs at the wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use ircap_collector::store::blob::{Blob as _, Class};
use ircap_collector::store::evidence::{Committed, Evidence};
use ircap_collector::store::s3::{S3Blob, S3Options};
use ircap_collector::store::{CaptureState, DocKey, FinishedArtifact, IndexEntry};
use ircap_e2e::proxy::Proxy;
use ircap_e2e::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use ircap_e2e::{TestResult, build_dir};
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
    replica_at(&server.endpoint(), bucket).await
}

/// [`replica`] reaching S3 at `endpoint` (a proxy in front of it).
async fn replica_at(endpoint: &str, bucket: &str) -> Evidence<S3Blob> {
    set_credentials();
    let mut opts = S3Options::from_url(&format!("s3://{bucket}/ir")).unwrap();
    opts.endpoint = Some(endpoint.to_owned());
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
    CaptureState::opened(id, "web-1", "web-1", "2026-01-01T00:00:00Z")
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
    ev.finish_artifact(s, &name, 0, Bytes::copy_from_slice(bytes), &f)
        .await
        .unwrap();
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
        let listed = b.list_index(None).await.unwrap();
        assert!(listed.iter().any(|e| e.capture_id == id), "round {round}");
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

/// A SeaweedFS of its own with the bucket `idx`.
struct Setup {
    /// Declared first so it stops before its directory is removed.
    server: S3Server,
    _tmp: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("ircap-s3-index-")
            .tempdir_in(build_dir())
            .unwrap();
        let server = S3Server::start(&tmp.path().join("weed"));
        server.create_bucket("idx", false);
        Self { server, _tmp: tmp }
    }

    /// A replica reaching S3 at `endpoint`.
    async fn store(&self, endpoint: &str) -> Evidence<S3Blob> {
        replica_at(endpoint, "idx").await
    }

    fn cat(&self, key: &str) -> Vec<u8> {
        let out = self.server.boto(&["cat", "idx", &format!("ir/{key}")]);
        assert!(out.status.success(), "{key}");
        out.stdout
    }
}

/// Writes `n` records straight into `day` (a past day: it seals when
/// merged) as a commit on that day would have.
async fn plant(store: &Evidence<S3Blob>, day: &str, n: usize) {
    for i in 0..n {
        plant_one(store, day, i).await;
    }
}

async fn plant_one(store: &Evidence<S3Blob>, day: &str, i: usize) {
    let e = index(&format!("{day}-{i:05}"));
    let key = format!("index/records/{day}/{}.json", e.capture_id);
    store
        .blob()
        .put(&key, serde_json::to_vec(&e).unwrap(), Class::Control)
        .await
        .unwrap();
}

/// The records a segment holds, checked against its header.
fn segment_ids(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let mut lines = text.lines();
    let header: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let ids: Vec<String> = lines
        .map(|l| serde_json::from_str::<IndexEntry>(l).unwrap().capture_id)
        .collect();
    assert_eq!(
        header["records"].as_u64(),
        Some(ids.len() as u64),
        "{header}"
    );
    ids
}

const WRITERS: usize = 16;
const PER_WRITER: usize = 12;

fn today() -> String {
    let d = time::OffsetDateTime::now_utc().date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Two replicas, eight writers each, every writer merging today after
/// each record it writes: the conditional segment writes collide, the
/// losers read again, and the segment ends with every record (without
/// the conditions a merge that listed the records earlier overwrites a
/// later one's segment, and records merged before are lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_merging_one_day_at_once_lose_no_record() -> TestResult {
    let s = Setup::new();
    let replicas = [
        s.store(&s.server.endpoint()).await,
        s.store(&s.server.endpoint()).await,
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let store = replicas[w % 2].clone();
        tasks.spawn(async move {
            for i in 0..PER_WRITER {
                store
                    .write_index_record(&index(&format!("w{w}-{i:02}")))
                    .await
                    .unwrap();
                store.merge_day(&today(), false).await.unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r?;
    }
    let mut ids = segment_ids(&s.cat(&format!("index/days/{}.ndjson", today())));
    ids.sort();
    let mut want: Vec<String> = (0..WRITERS)
        .flat_map(|w| (0..PER_WRITER).map(move |i| format!("w{w}-{i:02}")))
        .collect();
    want.sort();
    assert_eq!(ids, want);
    let listed = replicas[1].list_index(None).await?;
    assert_eq!(listed.len(), WRITERS * PER_WRITER);
    Ok(())
}

/// A replica that read the segment before another merged a new record
/// into it cannot write its older view over it: its write is refused, it
/// merges again, and the record stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_merge_is_refused_and_merges_again() -> TestResult {
    let s = Setup::new();
    let (a, b) = (
        s.store(&s.server.endpoint()).await,
        s.store(&s.server.endpoint()).await,
    );
    let day = "2020-02-02";
    for (first, second) in [(0, 1), (2, 3)] {
        plant_one(&a, day, first).await;
        // A reads (the segment, absent the first time; then its version).
        let stale = a.prepare_merge(day, false).await?;
        plant_one(&b, day, second).await;
        let merged = b.merge_day(day, false).await?;
        assert_eq!(merged.len(), second + 1);
        assert!(
            a.write_merge(stale).await?.is_none(),
            "a stale merge was written"
        );
        assert_eq!(a.merge_day(day, false).await?.len(), second + 1);
        let ids = segment_ids(&s.cat(&format!("index/days/{day}.ndjson")));
        assert_eq!(ids.len(), second + 1, "{ids:?}");
    }
    Ok(())
}

/// A segment overwritten with garbage, one whose body no longer matches
/// its header, and one deleted: each is rebuilt from the day's records by
/// the next listing, which lists every capture meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_deleted_segment_is_rebuilt_from_the_records() -> TestResult {
    let s = Setup::new();
    let store = s.store(&s.server.endpoint()).await;
    let day = "2020-03-04";
    plant(&store, day, 30).await;
    assert_eq!(store.list_index(None).await?.len(), 30);
    let key = format!("index/days/{day}.ndjson");
    let good = s.cat(&key);
    assert_eq!(segment_ids(&good).len(), 30);

    let mut edited = String::from_utf8(good.clone())?;
    edited = edited.replacen("2020-03-04-00007", "2020-03-04-99999", 1);
    let damaged = [
        "{\"not\":\"an index\"}\n".to_owned(),
        edited,
        // A record dropped (header count and digest no longer match).
        String::from_utf8(good.clone())?
            .lines()
            .filter(|l| !l.contains("2020-03-04-00011"))
            .map(|l| format!("{l}\n"))
            .collect(),
    ];
    for bad in damaged {
        let _ = s
            .server
            .boto_json(&["put", "idx", &format!("ir/{key}"), &bad]);
        let listed = store.list_index(None).await?;
        assert_eq!(listed.len(), 30, "after writing {bad:.60}");
        assert!(listed.iter().all(|e| e.capture_id != "2020-03-04-99999"));
        assert_eq!(segment_ids(&s.cat(&key)).len(), 30);
    }
    let _ = s
        .server
        .boto_json(&["delete-prefix", "idx", &format!("ir/{key}")]);
    assert_eq!(store.list_index(None).await?.len(), 30);
    assert_eq!(segment_ids(&s.cat(&key)).len(), 30);
    Ok(())
}

/// Requests one listing sends, counted at the proxy.
async fn requests_of(proxy: &Proxy, store: &Evidence<S3Blob>, since: Option<&str>) -> Vec<String> {
    let before = proxy.requests().len();
    let since = since.map(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap()
    });
    let _ = store.list_index(since).await.unwrap();
    proxy.requests()[before..].to_vec()
}

/// Once its days are sealed, listing N captures costs one LIST and one GET
/// per day, whatever N; `--since` reads only the days it can match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_costs_one_get_per_day_not_per_capture() -> TestResult {
    let s = Setup::new();
    let upstream = s.server.endpoint().trim_start_matches("http://").parse()?;
    let proxy = Proxy::start(upstream);
    let store = s.store(&format!("http://{}", proxy.addr)).await;
    let days = ["2020-05-01", "2020-05-02", "2020-05-03"];
    for (d, n) in days.iter().zip([40, 150, 10]) {
        plant(&store, d, n).await;
    }
    // The first listing merges (and seals) each day: one GET per record.
    let first = requests_of(&proxy, &store, None).await;
    assert!(first.len() > 200, "{}", first.len());
    for (since, want_days) in [(None, 3), (Some("2020-05-03T12:00:00Z"), 2)] {
        let reqs = requests_of(&proxy, &store, since).await;
        let gets = reqs.iter().filter(|r| r.starts_with("GET ")).count();
        let segments = reqs.iter().filter(|r| r.contains("/index/days/")).count();
        assert_eq!(
            (reqs.len(), segments),
            (1 + want_days, want_days),
            "since {since:?}: {reqs:#?}"
        );
        assert_eq!(gets, reqs.len(), "{reqs:#?}");
        assert_eq!(store.list_index(None).await?.len(), 200);
    }
    Ok(())
}

/// A multipart artifact through two replicas: the parts one replica puts
/// are taken up by the other from their records (the durable length and
/// the digest state saved with the last part, no byte read back), and
/// the result is the artifact's bytes. Two different parts recorded under
/// one number (two streams of one artifact on two replicas, one with a
/// stale view) are refused at the end: no final object is made.
#[tokio::test]
async fn parts_resume_on_another_replica_and_two_different_parts_are_refused() -> TestResult {
    use ircap_collector::stored_digest::StoredDigest;

    let tmp = tempfile::Builder::new()
        .prefix("ircap-s3-parts-")
        .tempdir_in(build_dir())?;
    let server = S3Server::start(&tmp.path().join("weed"));
    server.create_bucket("parts", false);
    let (a, b) = (
        replica(&server, "parts").await,
        replica(&server, "parts").await,
    );
    let s = a.open(&opened("parts-1")).await?;
    const P: usize = 5 << 20;
    let bytes: Vec<u8> = (0..2 * P + 1000).map(|i| (i * 31 % 253) as u8).collect();
    let bytes = Bytes::from(bytes);
    let (p1, p2, tail) = (
        bytes.slice(..P),
        bytes.slice(P..2 * P),
        bytes.slice(2 * P..),
    );
    let mut digest = StoredDigest::default();
    let mut state_after = |part: &[u8]| {
        digest.update(part);
        digest.save()
    };
    let (st1, st2) = (state_after(&p1), state_after(&p2));
    let sum = ircap_proto::hashing::sha256_hex(&bytes);
    let finished = FinishedArtifact {
        encoding: "identity".into(),
        size: bytes.len() as u64,
        sha256: sum.clone(),
        size_uncompressed: bytes.len() as u64,
        sha256_uncompressed: sum.clone(),
    };

    let name = ArtifactName::parse("big.bin")?;
    assert_eq!(a.append(&s, &name, 0, p1.clone(), &st1).await?, P as u64);
    let staged = b.staged(&s, &name).await?;
    assert_eq!(
        (staged.len, staged.saved_state),
        (P as u64, Some(st1.clone()))
    );
    b.append(&s, &name, P as u64, p2.clone(), &st2).await?;
    assert_eq!(a.staged(&s, &name).await?.len, 2 * P as u64);
    b.finish_artifact(&s, &name, 2 * P as u64, tail.clone(), &finished)
        .await?;
    let stored = a.read_range(&s, &name, 0, bytes.len() as u64).await?;
    assert_eq!(ircap_proto::hashing::sha256_hex(&stored), sum);
    assert_eq!(b.staged(&s, &name).await?.saved_state, None);
    let key = format!("ir/{}", Evidence::<S3Blob>::evidence_key(&s, "big.bin"));
    let listed = server.boto_json(&["list", "parts", "ir/staging/"]);
    assert_eq!(listed, serde_json::json!([]), "records left: {listed}");

    let raced = ArtifactName::parse("raced.bin")?;
    a.append(&s, &raced, 0, p1, &st1).await?;
    b.staged(&s, &raced).await?; // b now expects part 2 at P
    b.append(&s, &raced, P as u64, p2.clone(), &st2).await?;
    // a still expects part 2 at P too: it puts different bytes as part 2.
    let other: Bytes = p2.iter().map(|x| x ^ 1).collect();
    a.append(&s, &raced, P as u64, other, &st2).await?;
    let err = b
        .finish_artifact(&s, &raced, 2 * P as u64, tail, &finished)
        .await
        .expect_err("two different parts 2 were completed");
    assert!(err.to_string().contains("part 2"), "{err}");
    let raced_key = Evidence::<S3Blob>::evidence_key(&s, "raced.bin");
    assert!(!a.blob().exists(&raced_key).await?, "{key}");
    Ok(())
}
