//! The S3 source against a real S3-compatible server: `moto_server` (PyPI `moto[server]`) started
//! on 127.0.0.1 on a free port by `aws_common`, driven through the real `shopstream import` binary.

mod aws_common;
mod common;
mod import_support;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use import_support::{expected, fixture, sales};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// The moto server of this test binary, with an S3 client of it and `shopstream import` run
/// against it.
struct Moto {
    endpoint: String,
}

impl Moto {
    fn start() -> Moto {
        Moto {
            endpoint: aws_common::moto().endpoint.clone(),
        }
    }

    fn client(&self) -> Client {
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("test", "test", None, None, "test"))
            .force_path_style(true)
            .http_client(shopstream::aws::https_client())
            .build();
        Client::from_conf(config)
    }

    fn import(&self, data: &Path, source: &str) -> (bool, Value) {
        let out = Command::new(env!("CARGO_BIN_EXE_shopstream"))
            .args([
                "import",
                "--json",
                "--data-dir",
                data.to_str().unwrap(),
                source,
            ])
            .env_remove("SHOPSTREAM_CONFIG")
            .env("SHOPSTREAM__AWS__ENDPOINT_URL", &self.endpoint)
            .env("SHOPSTREAM__AWS__REGION", "us-east-1")
            .envs(aws_common::ENV.iter().copied())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
        });
        (out.status.success(), summary)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_under_a_prefix_load_once_and_changes_are_seen() {
    let moto = Moto::start();
    let s3 = moto.client();
    s3.create_bucket().bucket("drops").send().await.unwrap();
    let plain = fixture("online-retail-sample-873-iso.csv");
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("sample.csv.gz");
    import_support::gzip(&fixture("online-retail-sample-182.csv"), &gz);
    let put = |key: &'static str, path: &Path| {
        let body = std::fs::read(path).unwrap();
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket("drops")
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await
                .unwrap();
        }
    };
    put("daily/2011-01-04.csv", &plain).await;
    put("daily/2011-01-05.csv.gz", &gz).await;
    put("daily/readme.txt", &plain).await;
    put("other/2011-01-04.csv", &plain).await;

    let data = dir.path().join("data");
    let source = "s3://drops/daily/";
    let (ok, first) = tokio::task::block_in_place(|| moto.import(&data, source));
    assert!(ok, "{first}");
    assert_eq!(first["loaded"], 2, "{first}");
    assert_eq!(first["files"][0]["key"], "s3://drops/daily/2011-01-04.csv");
    assert_eq!(first["rows_loaded"], 873 + 179);
    assert_eq!(first["rows_rejected"], 4);
    let warehouse = data.join("warehouse.sqlite");
    assert_eq!(sales(&warehouse).0, first["rows_new"].as_u64().unwrap());
    assert!(sales(&warehouse).0 >= expected(&plain).0);

    let (ok, again) = tokio::task::block_in_place(|| moto.import(&data, source));
    assert!(ok, "{again}");
    assert_eq!(again["skipped"], 2, "{again}");

    // A new version of an object has a new ETag: reported, not loaded.
    put(
        "daily/2011-01-04.csv",
        &fixture("online-retail-sample-182.csv"),
    )
    .await;
    let (ok, changed) = tokio::task::block_in_place(|| moto.import(&data, source));
    assert!(ok, "{changed}");
    assert_eq!(
        (changed["changed"].as_u64(), changed["skipped"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(sales(&warehouse).0, first["rows_new"].as_u64().unwrap());
}
