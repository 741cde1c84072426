//! The whole pipeline with every stage on the AWS backends, against local servers on 127.0.0.1
//! (kinesalite for Kinesis, `moto_server` for the rest):
//! the real binary serves, the store simulator sends the real fixture, and what landed in
//! DynamoDB, S3 and the Firehose destination is read back with the SDK and compared to the file.

mod aws_common;
mod common;

use common::*;
use shopstream::store::operational::dynamodb::DynamoOperationalStore;
use shopstream::store::OperationalStore;
use std::path::Path;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_on_aws_stores_every_line_exactly_once() {
    let _heavy = heavy_test();
    // Kinesis on kinesalite: moto's Kinesis can lose records written by concurrent requests.
    let mut cfg = aws_common::on_kinesalite(aws_common::aws_config("pipeline"));
    cfg.stream.kinesis.lease_duration = Duration::from_secs(10);
    let clients = aws_common::init(&cfg).await;
    // The server talks to AWS through counting proxies (no faults): an independent meter for the
    // cost counters it exports.
    let kinesis_meter = aws_common::fault_proxy(&cfg.aws.kinesis_endpoint_url, &[]);
    let moto_meter = aws_common::fault_proxy(&cfg.aws.endpoint_url, &[]);
    let mut metered = cfg.clone();
    metered.aws.endpoint_url = moto_meter.endpoint.clone();
    metered.aws.kinesis_endpoint_url = kinesis_meter.endpoint.clone();
    let toml = aws_common::serve_toml(&metered);
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
            server.wait_caught_up_or(Duration::from_secs(120), aws_common::emulator_errors);
            (server, summary)
        }
    })
    .await
    .unwrap();
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");

    // DynamoDB: every line once, exact revenue.
    let store = DynamoOperationalStore::from_config(&clients, &cfg.aws, &cfg.operational.dynamodb);
    let (n, revenue) = store.totals().await.unwrap();
    assert_eq!(
        (n, revenue.normalize()),
        (expected.rows, expected.revenue.normalize())
    );

    aws_common::assert_s3_sinks_hold_each_line_once(
        &clients,
        &cfg,
        expected.rows,
        expected.revenue,
    )
    .await;

    // And the query API answers from DynamoDB.
    let url = server.url("/v1/invoices/536365");
    let invoice: serde_json::Value =
        tokio::task::spawn_blocking(move || client().get(url).send().unwrap().json().unwrap())
            .await
            .unwrap();
    assert_eq!(invoice["invoice_no"], "536365");
    assert!(!invoice["lines"].as_array().unwrap().is_empty());

    // Every reader exports Kinesis' MillisBehindLatest, per sink and shard.
    let url = server.url("/metrics");
    let metrics = tokio::task::spawn_blocking(move || client().get(url).send().unwrap().text())
        .await
        .unwrap()
        .unwrap();
    // The calls and billing units shopstream counts are the ones the meters saw.
    let meter = |proxy: &aws_common::Helper| {
        let url = format!("{}/__fault_proxy/stats", proxy.endpoint);
        move || {
            client()
                .get(url)
                .send()
                .unwrap()
                .json::<serde_json::Value>()
                .unwrap()
        }
    };
    let k = tokio::task::spawn_blocking(meter(&kinesis_meter))
        .await
        .unwrap();
    let m = tokio::task::spawn_blocking(meter(&moto_meter))
        .await
        .unwrap();
    let ops = |stats: &serde_json::Value, op: &str, what: &str| {
        stats["operations"][op][what].as_u64().unwrap_or(0)
    };
    let exported = |name: &str, labels: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("shopstream_{name}{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let calls = |service: &str, op: &str| {
        exported(
            "aws_calls_total",
            &format!("operation=\"{op}\",service=\"{service}\""),
        )
    };
    let units = |unit: &str| exported("aws_billed_units_total", &format!("unit=\"{unit}\""));
    let (put_records, batch_write, put_record_batch) = (
        "Kinesis_20131202.PutRecords",
        "DynamoDB_20120810.BatchWriteItem",
        "Firehose_20150804.PutRecordBatch",
    );
    let pairs = [
        (
            "PutRecords calls",
            calls("kinesis", "PutRecords"),
            ops(&k, put_records, "calls"),
        ),
        (
            "Kinesis payload units",
            units("kinesis_put_payload_units"),
            ops(&k, put_records, "payload_units"),
        ),
        (
            "BatchWriteItem calls",
            calls("dynamodb", "BatchWriteItem"),
            ops(&m, batch_write, "calls"),
        ),
        (
            "DynamoDB items",
            units("dynamodb_items_written"),
            ops(&m, batch_write, "entries"),
        ),
        (
            "PutRecordBatch calls",
            calls("firehose", "PutRecordBatch"),
            ops(&m, put_record_batch, "calls"),
        ),
        (
            "Firehose 5 KiB units",
            units("firehose_5kib_units"),
            ops(&m, put_record_batch, "billed_units_5k"),
        ),
        (
            "S3 PutObject",
            calls("s3", "PutObject"),
            m["s3"]["PutObject"]["requests"].as_u64().unwrap_or(0),
        ),
    ];
    for (what, ours, metered) in pairs {
        assert!(ours > 0, "{what}: nothing counted");
        assert_eq!(
            ours, metered,
            "{what}: exported {ours}, the meter saw {metered}"
        );
    }
    for sink in ["archive", "operational", "warehouse"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("shopstream_stream_millis_behind_latest{")
                    && l.contains(&format!("sink=\"{sink}\""))),
            "no MillisBehindLatest gauge for {sink}:\n{metrics}"
        );
    }
    drop(server);

    // An independent client (boto3) reads all three sinks back and compares them with the file.
    let report = tokio::task::spawn_blocking(move || aws_common::readback(&cfg, &[&file], &[]))
        .await
        .unwrap();
    println!("{report}");
}

/// Readiness names each AWS backend that cannot be used and why; a stream that does not exist
/// stops `serve` at start with a message that says what to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_names_the_missing_aws_resource() {
    let _heavy = heavy_test();
    let mut cfg = aws_common::on_kinesalite(aws_common::aws_config("ready"));
    cfg.stream.kinesis.lease_duration = Duration::from_secs(10);
    let toml = aws_common::serve_toml(&cfg);
    let dir = tempfile::tempdir().unwrap();

    // Nothing created yet: serve refuses to start and says how to fix it.
    let config = dir.path().join("ready.toml");
    std::fs::write(&config, &toml).unwrap();
    let out = tokio::task::spawn_blocking({
        let config = config.clone();
        let data = dir.path().join("none");
        move || {
            std::process::Command::new(BIN)
                .envs(AWS_TEST_ENV.iter().copied())
                .arg("--config")
                .arg(&config)
                .arg("serve")
                .arg("--data-dir")
                .arg(&data)
                .arg("--port")
                .arg("0")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&cfg.stream.kinesis.stream_name) && stderr.contains("aws init"),
        "{stderr}"
    );

    // Created, then the invoices table and the delivery stream go away.
    let clients = aws_common::init(&cfg).await;
    let server = tokio::task::spawn_blocking({
        let data = dir.path().join("data");
        move || Server::start(&data, 0, &toml)
    })
    .await
    .unwrap();
    let ready = |server: &Server| {
        let url = server.url("/health/ready");
        move || {
            let r = client().get(url).send().unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
        }
    };
    let (code, body) = tokio::task::spawn_blocking(ready(&server)).await.unwrap();
    assert_eq!(code, 200, "{body:#}");
    clients
        .dynamodb
        .delete_table()
        .table_name(&cfg.operational.dynamodb.invoices_table)
        .send()
        .await
        .unwrap();
    clients
        .firehose
        .delete_delivery_stream()
        .delivery_stream_name(&cfg.warehouse.firehose.delivery_stream)
        .send()
        .await
        .unwrap();
    let (code, body) = tokio::task::spawn_blocking(ready(&server)).await.unwrap();
    assert_eq!(code, 503, "{body:#}");
    let checks = &body["checks"];
    assert_eq!(checks["stream"], "ok", "{body:#}");
    assert_eq!(checks["archive"], "ok", "{body:#}");
    for (sink, name) in [
        ("operational", &cfg.operational.dynamodb.invoices_table),
        ("warehouse", &cfg.warehouse.firehose.delivery_stream),
    ] {
        let why = checks[sink].as_str().unwrap();
        assert!(
            why.contains(name.as_str()) && why.contains("does not exist"),
            "{sink}: {why}"
        );
    }
    drop(server);
}

/// A line DynamoDB refuses as invalid: the fault proxy answers `ValidationException` to every
/// BatchWriteItem that holds it, as DynamoDB answers a request with an invalid item, naming no
/// item. The operational writer finds the line by writing one at a time, dead-letters it with
/// the refusal, and stores every other line; the other sinks hold every line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_dynamodb_refuses_as_invalid_is_dead_lettered_alone() {
    let _heavy = heavy_test();
    let cfg = aws_common::aws_config("invalid_line");
    let clients = aws_common::init(&cfg).await;
    let proxy = aws_common::fault_proxy(
        &cfg.aws.endpoint_url,
        &["--invalid-if-contains", "POISON PILL"],
    );
    let toml = format!(
        r#"
[stream]
shards = 1
[operational]
backend = "aws"
[operational.dynamodb]
invoices_table = "{invoices}"
[sinks]
poll_interval = "50ms"
checkpoint_interval = "100ms"
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
partial_retry_initial_backoff = "10ms"
partial_retry_max_backoff = "200ms"
"#,
        invoices = cfg.operational.dynamodb.invoices_table,
        endpoint = proxy.endpoint,
    );
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/online-retail-sample-873-iso.csv");
    let file = dir.path().join("poisoned.csv");
    let mut csv = std::fs::read(&fixture).unwrap();
    csv.extend_from_slice(b"581587,22899,POISON PILL MUG,2,12/9/2011 12:50,2.10,12680,France\n");
    std::fs::write(&file, csv).unwrap();
    let expected = expected_from_csv(&file);

    let data = dir.path().join("data");
    let server = tokio::task::spawn_blocking({
        let (data, file) = (data.clone(), file.clone());
        move || {
            let server = Server::start(&data, 0, &toml);
            let summary = replay(&server.base, &file, &["--batch", "200"]);
            assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");
            server.wait_caught_up_or(Duration::from_secs(120), aws_common::emulator_errors);
            server
        }
    })
    .await
    .unwrap();

    // DynamoDB: every line but the poisoned one, exactly once.
    let store = DynamoOperationalStore::from_config(&clients, &cfg.aws, &cfg.operational.dynamodb);
    let (n, revenue) = store.totals().await.unwrap();
    let poison_total = rust_decimal::Decimal::new(420, 2);
    assert_eq!(
        (n, revenue.normalize()),
        (
            expected.rows - 1,
            (expected.revenue - poison_total).normalize()
        )
    );
    // One dead letter, the operational sink's, of that line, with DynamoDB's reason.
    let letters = dead_letters(&data);
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = &letters[0];
    assert_eq!(letter["sink"], "operational", "{letter:#}");
    assert_eq!(
        letter["line"]["description"], "POISON PILL MUG",
        "{letter:#}"
    );
    let reason = letter["reason"].as_str().unwrap();
    assert!(reason.contains("ValidationException"), "{reason}");
    // The warehouse holds every line, the poisoned one too.
    let url = server.url("/v1/sales/summary");
    let summary: serde_json::Value =
        tokio::task::spawn_blocking(move || client().get(url).send().unwrap().json().unwrap())
            .await
            .unwrap();
    assert_eq!(summary["lines"], expected.rows, "{summary:#}");
    drop(server);
}

/// The dead letters a server with the local dead-letter store wrote under `data`, parsed.
fn dead_letters(data: &Path) -> Vec<serde_json::Value> {
    fn walk(dir: &Path, out: &mut Vec<serde_json::Value>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push(serde_json::from_str(&text).unwrap());
            }
        }
    }
    let mut letters = Vec::new();
    walk(&data.join("dead-letter/dead-letter"), &mut letters);
    letters
}
