//! `shopstream verify` with every stage on the AWS backends (kinesalite for Kinesis, moto for
//! DynamoDB, S3 and Firehose): after a replay it reads the Kinesis shards, the S3 archive, a scan
//! of the invoices table and the Firehose output objects, and agrees with the file; an archive
//! object deleted from the bucket makes it exit 1 naming the archive.

mod aws_common;
mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `shopstream verify` on the server's settings, killed after two minutes (a read loop that
/// never ends on the emulators must fail the test, not hang it).
fn verify(server: &Server, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .envs(AWS_TEST_ENV.iter().copied())
        .env("SHOPSTREAM__DATA_DIR", &server.data_dir)
        .arg("--config")
        .arg(&server.config)
        .arg("verify")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("verify ran over two minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_every_aws_sink_and_names_a_damaged_archive() {
    let _heavy = heavy_test();
    let mut cfg = aws_common::on_kinesalite(aws_common::aws_config("verify"));
    cfg.stream.kinesis.lease_duration = Duration::from_secs(10);
    let clients = aws_common::init(&cfg).await;
    let toml = aws_common::serve_toml(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/online-retail-sample-873-iso.csv");
    let expected = expected_from_csv(&file);

    let (server, ok) = tokio::task::spawn_blocking({
        let data = dir.path().join("data");
        let file = file.clone();
        move || {
            let server = Server::start(&data, 0, &toml);
            let summary = replay(&server.base, &file, &["--stores", "3", "--batch", "100"]);
            assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");
            server.wait_caught_up_or(Duration::from_secs(120), aws_common::emulator_errors);
            let ok = verify(&server, &["--input", file.to_str().unwrap()]);
            (server, ok)
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&ok.stdout).into_owned(),
        String::from_utf8_lossy(&ok.stderr).into_owned(),
    );
    assert_eq!(ok.status.code(), Some(0), "{stdout}\n{stderr}");
    let total_cell = format!("{} / {}", expected.rows, expected.revenue.normalize());
    let total_row = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total row:\n{stdout}"));
    assert_eq!(
        total_row.matches(&total_cell).count(),
        5,
        "Kinesis, the S3 archive, DynamoDB, the Firehose output and the file all hold \
         {total_cell}: {total_row}"
    );

    // Per shard, the S3 archive holds what each Kinesis shard holds.
    let json = tokio::task::spawn_blocking({
        let config = server.config.clone();
        let data = server.data_dir.clone();
        move || {
            Command::new(BIN)
                .envs(AWS_TEST_ENV.iter().copied())
                .env("SHOPSTREAM__DATA_DIR", data)
                .arg("--config")
                .arg(config)
                .args(["verify", "--json"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(json.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let mut shards = std::collections::BTreeSet::new();
    for d in report["days"].as_array().unwrap() {
        assert_eq!(d["archive_shards"], d["stream_shards"], "{d:#}");
        shards.extend(d["stream_shards"].as_object().unwrap().keys().cloned());
    }
    assert!(shards.len() > 1, "lines on several shards: {shards:?}");

    // One archive object gone from the bucket.
    let listed = clients
        .s3
        .list_objects_v2()
        .bucket(&cfg.archive.s3.bucket)
        .prefix("raw/")
        .send()
        .await
        .unwrap();
    let key = listed.contents()[0].key().unwrap().to_owned();
    clients
        .s3
        .delete_object()
        .bucket(&cfg.archive.s3.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let bad = tokio::task::spawn_blocking(move || verify(&server, &[]))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    let diffs: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("differs: "))
        .collect();
    assert!(
        !diffs.is_empty() && diffs.iter().all(|l| l.starts_with("differs: archive ")),
        "only the archive differs after {key} was deleted:\n{stderr}"
    );
}
