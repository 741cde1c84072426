//! A client's resend on Kinesis: the stream cannot deduplicate, so a request whose PutRecords
//! landed but was answered too late (503 at the request timeout) puts its lines in the stream
//! twice when the client sends it again. Against kinesalite and moto on 127.0.0.1, through the
//! fault proxy holding PutRecords answers past the request timeout: the resend is answered as
//! duplicates (the line-id index, docs/line-identity.md) or, while the first claims are still
//! pending, put again and dropped by the workers' dedup windows; every sink ends with each line id
//! once either way.

mod aws_common;
mod common;

use common::*;
use std::path::Path;
use std::time::Duration;

/// The value of a counter of `/metrics` for one sink (0 when not exported yet).
fn sink_counter(metrics: &str, name: &str, sink: &str) -> u64 {
    let prefix = format!("{name}{{sink=\"{sink}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_of_a_resent_request_reach_every_sink_once() {
    let _heavy = heavy_test();
    let mut cfg = aws_common::on_kinesalite(aws_common::aws_config("resend"));
    cfg.stream.kinesis.lease_duration = Duration::from_secs(10);
    let clients = aws_common::init(&cfg).await;
    // The first PutRecords calls land at once but are answered after the request timeout.
    let proxy = aws_common::fault_proxy(
        &cfg.aws.kinesis_endpoint_url,
        &["--delay-puts", "3", "--delay-seconds", "4"],
    );
    let mut served = cfg.clone();
    served.aws.kinesis_endpoint_url = proxy.endpoint.clone();
    let toml = format!(
        "{}\n[server]\nrequest_timeout = \"1500ms\"\n",
        aws_common::serve_toml(&served)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/online-retail-sample-873-iso.csv");
    let expected = expected_from_csv(&file);

    let (server, summary, metrics, proxy_stats) = tokio::task::spawn_blocking({
        let data = dir.path().join("data");
        let file = file.clone();
        let proxy = proxy.endpoint.clone();
        move || {
            let server = Server::start(&data, 0, &toml);
            let summary = replay(&server.base, &file, &["--stores", "1", "--batch", "100"]);
            server.wait_caught_up_or(Duration::from_secs(120), aws_common::emulator_errors);
            let metrics = client()
                .get(server.url("/metrics"))
                .send()
                .unwrap()
                .text()
                .unwrap();
            let proxy_stats: serde_json::Value = client()
                .get(format!("{proxy}/__fault_proxy/stats"))
                .send()
                .unwrap()
                .json()
                .unwrap();
            (server, summary, metrics, proxy_stats)
        }
    })
    .await
    .unwrap();
    // The resent lines are either answered as duplicates (the first PutRecords landed and its
    // lines were written to the index) or put again (the first append was dropped at the request
    // timeout before writing them, and its invoice locks expired): every line is accounted for,
    // and the resends happened.
    let accepted = summary["lines_accepted"].as_u64().unwrap();
    let duplicate = summary["lines_duplicate"].as_u64().unwrap();
    assert_eq!(accepted + duplicate, expected.rows, "{summary:#}");
    assert!(
        summary["busy_answers"].as_u64().unwrap() > 0 && summary["retries"].as_u64().unwrap() > 0,
        "no request timed out and was sent again, so this test shows nothing: {summary:#}"
    );
    let delayed = proxy_stats["operations"]["Kinesis_20131202.PutRecords"]["delayed"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        delayed > 0,
        "the proxy held no PutRecords answer: {proxy_stats:#}"
    );
    // Second copies that did reach the stream are dropped by every worker alike.
    let dropped: Vec<u64> = ["archive", "operational", "warehouse"]
        .iter()
        .map(|sink| sink_counter(&metrics, "shopstream_sink_duplicate_lines_total", sink))
        .collect();
    println!(
        "{summary:#}
second copies dropped by the workers (archive, operational, warehouse): {dropped:?}"
    );
    assert!(
        dropped.iter().all(|d| *d == dropped[0]),
        "the sinks read the same records, so they drop the same copies: {dropped:?}"
    );

    aws_common::assert_s3_sinks_hold_each_line_once(
        &clients,
        &cfg,
        expected.rows,
        expected.revenue,
    )
    .await;
    drop(server);
}
