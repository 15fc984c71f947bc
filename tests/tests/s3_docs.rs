//! The S3 store's control documents (capture requests, agent presence)
//! against a real S3 server: the contract the file store's unit test
//! checks, so that replicas sharing a bucket share them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ircap_collector::store::s3::{S3Options, S3Store};
use ircap_collector::store::{DocKey, Store};
use ircap_e2e::build_dir;
use ircap_e2e::s3::{ACCESS_KEY, S3Server, SECRET_KEY};

#[tokio::test]
async fn control_documents_round_trip_under_the_prefix() {
    let tmp = tempfile::Builder::new()
        .prefix("ircap-s3-docs-")
        .tempdir_in(build_dir())
        .unwrap();
    let server = S3Server::start(&tmp.path().join("weed"));
    server.create_bucket("docs", false);
    // SAFETY: the only test in this binary, before any other thread reads
    // the environment; the AWS chain reads the credentials from there.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let mut opts = S3Options::from_url("s3://docs/ir").unwrap();
    opts.endpoint = Some(server.endpoint());
    opts.path_style = true;
    opts.region = Some("us-east-1".into());
    let store = S3Store::connect(opts).await.unwrap();
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
