//! The ingest's HTTP edges (issue 13, smaller things): the `Bearer` scheme in any case,
//! `Content-Type` checked (415 for types the ingest cannot parse), and `Content-Encoding: gzip`
//! decoded with the decompressed size held to `server.max_body_bytes` (415 for other codings).

mod common;

use common::*;
use flate2::write::GzEncoder;
use flate2::Compression;
use std::io::Write;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[server]
bind = "127.0.0.1"
port = 0
max_body_bytes = 1048576
request_timeout = "10s"
shutdown_deadline = "10s"
workers = 2
date_order = "mdy"

[auth.stores]
demo = "demo-key-change-me"
"#;

const KEY: &str = "demo-key-change-me";

const NDJSON: &str = concat!(
    r#"{"InvoiceNo":"536365","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":6,"InvoiceDate":"12\/1\/2010 8:26","UnitPrice":2.55,"CustomerID":17850.0,"Country":"United Kingdom"}"#,
    "\n",
    r#"{"InvoiceNo":"536365","StockCode":"71053","Description":"WHITE METAL LANTERN","Quantity":6,"InvoiceDate":"12\/1\/2010 8:26","UnitPrice":3.39,"CustomerID":17850.0,"Country":"United Kingdom"}"#,
    "\n",
);

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// POSTs `body` with the given headers; answers the status and the JSON body.
fn post(server: &Server, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, serde_json::Value) {
    let mut req = client().post(server.url("/v1/invoices")).body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(serde_json::Value::Null))
}

fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, CONFIG);
    (dir, server)
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let (_dir, server) = start();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} {KEY}");
        let (status, body) = post(
            &server,
            &[
                ("authorization", &auth),
                ("content-type", "application/x-ndjson"),
            ],
            NDJSON.into(),
        );
        assert_eq!(status, 200, "{scheme}: {body}");
        // The first request stores both lines; the same lines again are reported as duplicates.
        let taken =
            body["accepted"].as_u64().unwrap() + body["duplicates"]["count"].as_u64().unwrap();
        assert_eq!(taken, 2, "{scheme}: {body}");
    }
    let (status, _) = post(
        &server,
        &[("authorization", &format!("Basic {KEY}"))],
        NDJSON.into(),
    );
    assert_eq!(status, 401);
}

#[test]
fn content_types_the_ingest_cannot_parse_are_a_415() {
    let (_dir, server) = start();
    let auth = format!("Bearer {KEY}");
    let (status, body) = post(
        &server,
        &[("authorization", &auth), ("content-type", "image/png")],
        NDJSON.into(),
    );
    assert_eq!(status, 415, "{body}");
    assert_eq!(body["error"], "unsupported_media_type", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("image/png")
            && message.contains("application/json")
            && message.contains("text/csv"),
        "{message}"
    );
    // The accepted types, with parameters and in any case, and a missing type, still parse; so
    // do the types that say nothing about the format, curl's default for `-d` among them.
    for content_type in [
        Some("application/json; charset=utf-8"),
        Some("Application/X-NDJSON"),
        Some("application/ndjson"),
        Some("text/plain"),
        Some("application/octet-stream"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut headers = vec![("authorization", auth.as_str())];
        if let Some(t) = content_type {
            headers.push(("content-type", t));
        }
        let (status, body) = post(&server, &headers, NDJSON.into());
        assert_eq!(status, 200, "{content_type:?}: {body}");
    }
    let csv = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom\n";
    let (status, body) = post(
        &server,
        &[
            ("authorization", &auth),
            ("content-type", "text/csv; charset=utf-8"),
        ],
        csv.into(),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_gzip_body_is_decoded_and_its_lines_stored() {
    let (_dir, server) = start();
    let auth = format!("Bearer {KEY}");
    let (status, body) = post(
        &server,
        &[
            ("authorization", &auth),
            ("content-type", "application/x-ndjson"),
            ("content-encoding", "gzip"),
        ],
        gzip(NDJSON.as_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 2, "{body}");
    // `identity` is the body as sent.
    let (status, body) = post(
        &server,
        &[("authorization", &auth), ("content-encoding", "identity")],
        NDJSON.into(),
    );
    assert_eq!(status, 200, "{body}");
    server.wait_caught_up(Duration::from_secs(30));
    let summary: serde_json::Value = client()
        .get(server.url("/v1/sales/summary"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    // The identity post repeats the gzip one (same line ids): two lines stored, not four.
    assert_eq!(summary["lines"], 2, "{summary}");
}

#[test]
fn a_gzip_bomb_is_a_413_and_quick() {
    let (_dir, server) = start();
    // 64 MiB of zeros compress to about 64 KiB, well under the 1 MiB limit on what is sent.
    let bomb = gzip(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let started = Instant::now();
    let (status, body) = post(
        &server,
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/x-ndjson"),
            ("content-encoding", "gzip"),
        ],
        bomb,
    );
    let took = started.elapsed();
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "body_too_large", "{body}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // A body that is not gzip at all, declared as gzip, is a 400 that says so.
    let (status, body) = post(
        &server,
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-encoding", "gzip"),
        ],
        NDJSON.into(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["message"].as_str().unwrap().contains("gzip"), "{body}");
}

#[test]
fn content_encodings_other_than_gzip_are_a_415() {
    let (_dir, server) = start();
    for coding in ["br", "deflate", "gzip, br"] {
        let res = client()
            .post(server.url("/v1/invoices"))
            .bearer_auth(KEY)
            .header("content-encoding", coding)
            .body(NDJSON)
            .send()
            .unwrap();
        assert_eq!(res.status().as_u16(), 415, "{coding}");
        let accept = res
            .headers()
            .get("accept-encoding")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(accept.as_deref(), Some("gzip, identity"), "{coding}");
        let body: serde_json::Value = res.json().unwrap();
        assert_eq!(body["error"], "unsupported_encoding", "{body}");
        assert!(body["message"].as_str().unwrap().contains(coding), "{body}");
    }
}
