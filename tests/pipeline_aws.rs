//! The whole pipeline with every stage on the AWS backends, against `moto_server` on 127.0.0.1:
//! the real binary serves, the store simulator sends the real fixture, and what landed in
//! DynamoDB, S3 and the Firehose destination is read back with the SDK and compared to the file.

mod aws_common;
mod common;

use common::*;
use rust_decimal::Decimal;
use shopstream::actors::operational::dynamodb::DynamoOperationalStore;
use shopstream::actors::operational::OperationalStore;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// Every object under `prefix`: its bytes, gunzipped when the key says so.
async fn objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for obj in page.unwrap().contents() {
            let key = obj.key().unwrap();
            let body = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            let mut text = String::new();
            if key.ends_with(".gz") {
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut text)
                    .unwrap();
            } else {
                text = String::from_utf8(body.to_vec()).unwrap();
            }
            out.push(text);
        }
    }
    out
}

/// line id -> times seen, and the exact revenue, over NDJSON texts of lines.
fn count_lines(texts: &[String]) -> (HashMap<String, u32>, Decimal) {
    let mut ids = HashMap::new();
    let mut revenue = Decimal::ZERO;
    for line in texts.iter().flat_map(|t| t.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *ids.entry(v["line_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        let q = Decimal::from(v["quantity"].as_i64().unwrap());
        let p: Decimal = v["unit_price"]
            .as_str()
            .map(|s| s.parse().unwrap())
            .unwrap_or_else(|| v["unit_price"].to_string().parse().unwrap());
        revenue += q * p;
    }
    (ids, revenue.normalize())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_on_aws_stores_every_line_exactly_once() {
    let cfg = aws_common::aws_config("pipeline");
    let clients = aws_common::init(&cfg).await;
    let toml = format!(
        r#"
[stream]
backend = "aws"
[archive]
backend = "aws"
flush_age = "200ms"
[operational]
backend = "aws"
[warehouse]
backend = "aws"
[dead_letter]
backend = "aws"
[sinks]
poll_interval = "50ms"
checkpoint_interval = "100ms"
shard_refresh = "1s"
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
stream_name = "{stream}"
bucket = "{bucket}"
invoices_table = "{invoices}"
leases_table = "{leases}"
lease_duration = "10s"
delivery_stream = "{sales}"
"#,
        endpoint = cfg.endpoint_url,
        stream = cfg.stream_name,
        bucket = cfg.bucket,
        invoices = cfg.invoices_table,
        leases = cfg.leases_table,
        sales = cfg.delivery_stream,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/online-retail-sample-873-iso.csv");
    let expected = expected_from_csv(&file);

    let (server, summary) = tokio::task::spawn_blocking({
        let data = dir.path().join("data");
        let file = file.clone();
        move || {
            let server = Server::start(&data, 0, &toml);
            let summary = replay(&server.base, &file, &["--stores", "3", "--batch", "100"]);
            server.wait_caught_up(Duration::from_secs(120));
            (server, summary)
        }
    })
    .await
    .unwrap();
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");

    // DynamoDB: every line once, exact revenue.
    let store = DynamoOperationalStore::from_config(&clients, &cfg);
    let (n, revenue) = store.totals().await.unwrap();
    assert_eq!(
        (n, revenue.normalize()),
        (expected.rows, expected.revenue.normalize())
    );

    // S3 archive: every line once.
    let archived = objects(&clients.s3, &cfg.bucket, "raw/").await;
    let (ids, revenue) = count_lines(&archived);
    assert_eq!(ids.len() as u64, expected.rows);
    assert!(ids.values().all(|n| *n == 1), "a line is archived twice");
    assert_eq!(revenue, expected.revenue.normalize());

    // The Firehose destination (S3 here, Redshift in production): every line once.
    let delivered = objects(&clients.s3, &cfg.bucket, &cfg.firehose_prefix).await;
    let (ids, revenue) = count_lines(&delivered);
    assert_eq!(ids.len() as u64, expected.rows);
    assert!(ids.values().all(|n| *n == 1), "a line is delivered twice");
    assert_eq!(revenue, expected.revenue.normalize());

    // And the query API answers from DynamoDB.
    let url = server.url("/v1/invoices/536365");
    let invoice: serde_json::Value =
        tokio::task::spawn_blocking(move || client().get(url).send().unwrap().json().unwrap())
            .await
            .unwrap();
    assert_eq!(invoice["invoice_no"], "536365");
    assert!(!invoice["lines"].as_array().unwrap().is_empty());
    drop(server);
}
