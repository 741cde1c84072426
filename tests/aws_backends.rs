//! The AWS backends against a real AWS-compatible server (moto) on 127.0.0.1, started by
//! `aws_common`. Run `scripts/aws-local.sh install` once to get `moto_server`.

mod aws_common;

use aws_common::{aws_config, clients};
use bytes::Bytes;
use shopstream::object_store::s3::S3ObjectStore;
use shopstream::object_store::{ObjectStore, ObjectStoreError};

async fn create_bucket(c: &shopstream::aws::AwsClients, bucket: &str) {
    c.s3.create_bucket().bucket(bucket).send().await.unwrap();
}

#[tokio::test]
async fn s3_put_get_list_delete_and_multipart() {
    let cfg = aws_config("s3_basic");
    let c = clients(&cfg).await;
    let store = S3ObjectStore::from_config(&c, &cfg);
    assert!(store.health().await.is_err(), "no bucket yet");
    create_bucket(&c, &cfg.bucket).await;
    store.health().await.unwrap();

    // More keys than one ListObjectsV2 page (1000) to exercise pagination.
    let keys: Vec<String> = (0..1005).map(|i| format!("raw/part-{i:05}")).collect();
    futures::future::try_join_all(
        keys.iter()
            .map(|k| store.put(k, Bytes::from(format!("body of {k}")))),
    )
    .await
    .unwrap();
    store
        .put("other/x", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let listed = store.list("raw/").await.unwrap();
    assert_eq!(
        listed.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
        keys
    );
    assert!(listed.iter().all(|o| !o.etag.is_empty() && o.size > 0));
    assert_eq!(
        store.get("raw/part-00007").await.unwrap(),
        Bytes::from("body of raw/part-00007")
    );

    // Replacing an object changes its ETag.
    let before = store.list("other/").await.unwrap();
    store
        .put("other/x", Bytes::from_static(b"y"))
        .await
        .unwrap();
    let after = store.list("other/").await.unwrap();
    assert_ne!(before[0].etag, after[0].etag);

    store.delete("raw/part-00007").await.unwrap();
    assert!(matches!(
        store.get("raw/part-00007").await,
        Err(ObjectStoreError::NotFound(k)) if k == "raw/part-00007"
    ));
    assert_eq!(store.list("raw/").await.unwrap().len(), 1004);

    // 13 MiB with a 6 MiB threshold and 5 MiB parts: three parts, read back byte for byte.
    let big: Vec<u8> = (0..13 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    store
        .put("big/object", Bytes::from(big.clone()))
        .await
        .unwrap();
    let back = store.get("big/object").await.unwrap();
    assert_eq!(back.len(), big.len());
    assert!(back == big);
    let meta = store.list("big/").await.unwrap();
    assert!(
        meta[0].etag.ends_with("-3"),
        "multipart ETag: {}",
        meta[0].etag
    );
}
