//! The line-identity rules (docs/line-identity.md) on the AWS backends, against local servers on
//! 127.0.0.1 (kinesalite for Kinesis, `moto_server` for DynamoDB, S3 and Firehose): the line-id
//! table refuses conflicts and repeats before PutRecords, and `Idempotency-Key`s are answered
//! once, across a restart.

mod aws_common;
mod common;

use common::*;
use std::time::Duration;

const STORES: &str = r#"
[auth.stores]
demo = "demo-key-change-me"
leeds = "leeds-secret-key"
"#;

fn line(invoice: &str, quantity: i64, line_no: Option<u64>) -> String {
    let no = line_no.map_or(String::new(), |n| format!(r#""LineNo":{n},"#));
    format!(
        r#"{{{no}"InvoiceNo":"{invoice}","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":{quantity},"InvoiceDate":"2010-12-01 08:26","UnitPrice":2.55,"CustomerID":17850,"Country":"United Kingdom"}}"#
    )
}

fn post(
    server: &Server,
    key: &str,
    idempotency_key: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value, bool) {
    let mut req = client()
        .post(server.url("/v1/invoices"))
        .bearer_auth(key)
        .header("Content-Type", "application/json")
        .body(body.to_owned());
    if let Some(k) = idempotency_key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let text = resp.text().unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"));
    (status, json, replayed)
}

/// (quantity, store) of every line of `invoice` in NDJSON texts.
fn lines_of(texts: &[String], invoice: &str) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = texts
        .iter()
        .flat_map(|t| t.lines())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["invoice_no"] == invoice)
        .map(|v| {
            (
                v["quantity"].as_i64().unwrap(),
                v["store_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_aws_conflicts_are_refused_and_keys_answer_once() {
    let _heavy = heavy_test();
    let mut cfg = aws_common::on_kinesalite(aws_common::aws_config("identity"));
    cfg.stream.kinesis.lease_duration = Duration::from_secs(10);
    let clients = aws_common::init(&cfg).await;
    let toml = format!("{}{STORES}", aws_common::serve_toml(&cfg));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let (server, first_keyed) = tokio::task::spawn_blocking({
        let (data, toml) = (data.clone(), toml.clone());
        move || {
            let server = Server::start(&data, 0, &toml);
            let (status, a, _) = post(&server, DEMO_KEY, None, &line("910010", 6, Some(1)));
            assert_eq!((status, &a["accepted"]), (200, &1.into()), "{a}");
            // A repeat: reported, not written again.
            let (status, a, _) = post(&server, DEMO_KEY, None, &line("910010", 6, Some(1)));
            assert_eq!((status, &a["accepted"]), (200, &0.into()), "{a}");
            assert_eq!(a["duplicates"]["count"], 1, "{a}");
            // Other content under the same number, and another store's same number: refused.
            let (status, c, _) = post(&server, DEMO_KEY, None, &line("910010", 4, Some(1)));
            assert_eq!(status, 409, "{c}");
            assert!(
                c["rejected"][0]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("Quantity: 6 -> 4"),
                "{c}"
            );
            let (status, l, _) = post(
                &server,
                "leeds-secret-key",
                None,
                &line("910010", 6, Some(1)),
            );
            assert_eq!(status, 409, "{l}");

            // Keys: two keys, two lines; a key again, the first answer; another body, 422.
            let scan = line("910011", 1, None);
            let (_, first, _) = post(&server, DEMO_KEY, Some("scan-1"), &scan);
            assert_eq!(first["accepted"], 1, "{first}");
            let (_, second, _) = post(&server, DEMO_KEY, Some("scan-2"), &scan);
            assert_eq!(second["accepted"], 1, "{second}");
            let (status, again, replayed) = post(&server, DEMO_KEY, Some("scan-1"), &scan);
            assert_eq!((status, replayed), (200, true));
            assert_eq!(again, first);
            let (status, other, _) =
                post(&server, DEMO_KEY, Some("scan-1"), &line("910011", 2, None));
            assert_eq!(status, 422, "{other}");
            server.wait_caught_up_or(Duration::from_secs(120), aws_common::emulator_errors);
            (server, first)
        }
    })
    .await
    .unwrap();

    // Every sink holds the first version once: DynamoDB (through the API), the S3 archive and
    // the Firehose destination.
    let url = server.url("/v1/invoices/910010");
    let invoice: serde_json::Value =
        tokio::task::spawn_blocking(move || client().get(url).send().unwrap().json().unwrap())
            .await
            .unwrap();
    let lines = invoice["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{invoice}");
    assert_eq!(
        (&lines[0]["quantity"], &lines[0]["store_id"]),
        (&6.into(), &"demo".into())
    );
    let archived = aws_common::objects(&clients.s3, &cfg.archive.s3.bucket, "raw/").await;
    let delivered = aws_common::objects(
        &clients.s3,
        &cfg.archive.s3.bucket,
        &cfg.warehouse.firehose.prefix,
    )
    .await;
    for texts in [&archived, &delivered] {
        assert_eq!(lines_of(texts, "910010"), [(6, "demo".to_owned())]);
        assert_eq!(lines_of(texts, "910011"), vec![(1, "demo".to_owned()); 2]);
    }

    // Keys live in DynamoDB: a new process answers a known key with its first answer.
    drop(server);
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&data, 0, &toml);
        let (status, again, replayed) =
            post(&server, DEMO_KEY, Some("scan-1"), &line("910011", 1, None));
        assert_eq!((status, replayed), (200, true));
        assert_eq!(again, first_keyed);
    })
    .await
    .unwrap();
}

/// Two appends of one invoice at once on the DynamoDB index: the second finds the invoice locked
/// and writes nothing (ingest would sort its lines again); once the first is done its lines are
/// in the index, and appending them again is refused as taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_is_appended_by_one_request_at_a_time() {
    use shopstream::stream::kinesis::{DynamoLineIndex, KinesisStream};
    use shopstream::stream::line_index::{LineClaim, LineIndex, LineKey};
    use shopstream::stream::{PutRecord, Stream, StreamError};
    use std::sync::Arc;

    let _heavy = heavy_test();
    let cfg = aws_common::on_kinesalite(aws_common::aws_config("invoice_lock"));
    let clients = aws_common::init(&cfg).await;
    // The first PutRecords is answered 3 s late: the first append holds its lock meanwhile.
    let proxy = aws_common::fault_proxy(
        &cfg.aws.kinesis_endpoint_url,
        &["--delay-puts", "1", "--delay-seconds", "3"],
    );
    let mut slow = cfg.clone();
    slow.aws.kinesis_endpoint_url = proxy.endpoint.clone();
    let slow_clients = aws_common::clients(&slow).await;
    let stream: Arc<dyn Stream> = Arc::new(KinesisStream::from_config(
        &slow_clients,
        &slow.aws,
        &slow.stream.kinesis,
    ));
    let index = Arc::new(DynamoLineIndex::new(
        clients.dynamodb.clone(),
        &cfg.stream.kinesis.line_index_table,
        stream,
        Duration::from_secs(3600),
        Duration::from_secs(30),
    ));
    let lines = std::sync::Arc::new(aws_common::lines("990077", Some(17850), 1, 3));
    let append = |what: &'static [u8]| {
        let (index, lines) = (index.clone(), lines.clone());
        async move {
            let claims: Vec<LineClaim<'_>> = lines
                .iter()
                .map(|l| LineClaim::new("demo", &l.line))
                .collect();
            index
                .append(vec![PutRecord::new("990077", what)], vec![claims])
                .await
        }
    };

    let first = tokio::spawn(append(b"first"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let second = append(b"second").await;
    assert!(
        matches!(&second, Err(StreamError::LinesTaken(ids)) if ids.len() == 3),
        "{second:?}"
    );
    first.await.unwrap().unwrap();

    let keys: Vec<LineKey<'_>> = lines.iter().map(|l| LineKey::of(&l.line)).collect();
    let stored = index.lookup(&keys).await.unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(stored.values().all(|s| !s.pending && s.store_id == "demo"));
    let third = append(b"third").await;
    assert!(
        matches!(&third, Err(StreamError::LinesTaken(ids)) if ids.len() == 3),
        "{third:?}"
    );
}
