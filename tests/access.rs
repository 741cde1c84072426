//! Who may read and how fast stores may send, against the real binary: reader keys on every
//! read route (401 without one, 403 for a store key on figures that span every store), a store
//! key that sees only its own lines of an invoice, `auth.store_reads`, open health and metrics,
//! and per-store token buckets answered 429 with `Retry-After`, which `replay` honours.

mod common;

use common::*;
use std::time::Duration;

const STORES: &str = r#"
[auth.stores]
demo = "demo-key-change-me"
leeds = "leeds-secret-key"
york = "york-secret-key"
"#;

/// Lines of invoice 900001 as a CSV body, `n` of them, each a different product.
fn lines(invoice: &str, first_code: u32, n: u32) -> String {
    let mut body =
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
            .to_owned();
    for i in 0..n {
        body.push_str(&format!(
            "{invoice},{},THING {i},2,12/1/2010 8:26,1.25,17850,United Kingdom\n",
            first_code + i
        ));
    }
    body
}

fn post(server: &Server, key: &str, body: String) -> reqwest::blocking::Response {
    client()
        .post(server.url("/v1/invoices"))
        .bearer_auth(key)
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .unwrap()
}

fn get(server: &Server, key: Option<&str>, path: &str) -> (u16, serde_json::Value) {
    let mut req = anonymous_client().get(server.url(path));
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(serde_json::Value::Null))
}

const READ_ROUTES: [&str; 5] = [
    "/v1/invoices/900001",
    "/v1/customers/17850/invoices",
    "/v1/sales/summary",
    "/v1/sales/customers",
    "/v1/status",
];

#[test]
fn reads_need_a_reader_key_and_a_store_key_reads_only_its_own_lines() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, STORES);
    // Two stores send lines of one invoice; york also sends an invoice of its own.
    assert_eq!(
        post(&server, "leeds-secret-key", lines("900001", 10000, 2)).status(),
        200
    );
    assert_eq!(
        post(&server, "york-secret-key", lines("900001", 20000, 1)).status(),
        200
    );
    assert_eq!(
        post(&server, "york-secret-key", lines("900002", 30000, 1)).status(),
        200
    );
    server.wait_caught_up(Duration::from_secs(60));

    for route in READ_ROUTES {
        let (status, body) = get(&server, None, route);
        assert_eq!(status, 401, "{route} without a key: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("reader key"),
            "{route}: {body}"
        );
        let (status, _) = get(&server, Some("no-such-key-at-all"), route);
        assert_eq!(status, 401, "{route} with an unknown key");
        let (status, body) = get(&server, Some(READER_KEY), route);
        assert_eq!(status, 200, "{route} with the reader key: {body}");
    }
    for open in ["/health/live", "/health/ready", "/metrics", "/"] {
        let res = anonymous_client().get(server.url(open)).send().unwrap();
        assert_eq!(res.status().as_u16(), 200, "{open} stays open");
    }

    // The reader sees the whole invoice; each store the lines it sent, and their total.
    let (_, whole) = get(&server, Some(READER_KEY), "/v1/invoices/900001");
    assert_eq!(whole["lines"].as_array().unwrap().len(), 3, "{whole}");
    assert_eq!(whole["total"], "7.5");
    let (status, leeds) = get(&server, Some("leeds-secret-key"), "/v1/invoices/900001");
    assert_eq!(status, 200, "{leeds}");
    assert_eq!(leeds["lines"].as_array().unwrap().len(), 2, "{leeds}");
    assert_eq!(leeds["total"], "5");
    assert!(leeds["lines"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["store_id"] == "leeds"));
    let (_, york) = get(&server, Some("york-secret-key"), "/v1/invoices/900001");
    assert_eq!(york["lines"].as_array().unwrap().len(), 1, "{york}");
    // An invoice the store sent nothing of does not exist for it.
    let (status, body) = get(&server, Some("leeds-secret-key"), "/v1/invoices/900002");
    assert_eq!(status, 404, "{body}");
    // Figures that span every store need a reader key.
    for route in &READ_ROUTES[1..] {
        let (status, body) = get(&server, Some("leeds-secret-key"), route);
        assert_eq!(status, 403, "{route} with a store key: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("reader key"),
            "{route}: {body}"
        );
    }
    // A reader key cannot send lines.
    assert_eq!(
        post(&server, READER_KEY, lines("900003", 1, 1)).status(),
        401
    );
}

#[test]
fn store_reads_none_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let none = format!("{STORES}\n[auth]\nstore_reads = \"none\"\n");
    let server = Server::start(&dir.path().join("none"), 0, &none);
    assert_eq!(
        post(&server, "leeds-secret-key", lines("900001", 1, 1)).status(),
        200
    );
    server.wait_caught_up(Duration::from_secs(60));
    let (status, body) = get(&server, Some("leeds-secret-key"), "/v1/invoices/900001");
    assert_eq!(status, 403, "{body}");
    drop(server);

    let all = format!("{STORES}\n[auth]\nstore_reads = \"all\"\n");
    let server = Server::start(&dir.path().join("all"), 0, &all);
    assert_eq!(
        post(&server, "york-secret-key", lines("900001", 1, 1)).status(),
        200
    );
    server.wait_caught_up(Duration::from_secs(60));
    for route in READ_ROUTES {
        let (status, body) = get(&server, Some("leeds-secret-key"), route);
        assert_eq!(status, 200, "{route}: {body}");
    }
}

#[test]
fn a_store_over_its_rate_limit_gets_429_and_replay_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{STORES}
[server]
max_lines_per_request = 1000

[rate_limits]
lines_per_second = 2000
burst_lines = 1000

[rate_limits.stores.york]
lines_per_second = 1
burst_lines = 1000
"
    );
    let server = Server::start(&dir.path().join("data"), 0, &config);
    // york's bucket holds 1,000 lines and refills one a second.
    assert_eq!(
        post(&server, "york-secret-key", lines("900001", 1, 1000)).status(),
        200
    );
    let refused = post(&server, "york-secret-key", lines("900002", 1, 10));
    assert_eq!(refused.status().as_u16(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .expect("a 429 says when to come back")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (5..=11).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let body: serde_json::Value = refused.json().unwrap();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert!(body["message"].as_str().unwrap().contains("york"), "{body}");
    // Another store has its own bucket.
    assert_eq!(
        post(&server, "leeds-secret-key", lines("900003", 1, 100)).status(),
        200
    );
    // The refused lines were not taken.
    server.wait_caught_up(Duration::from_secs(60));
    let (_, summary) = get(&server, Some(READER_KEY), "/v1/sales/summary");
    assert_eq!(summary["lines"], 1100, "{summary}");

    // replay as the demo store, under the default limit (2,000 lines a second, 1,000 at once),
    // waits as told and loses nothing.
    let csv = dir.path().join("lines.csv");
    generate(&csv, 3_000, &["--seed", "5"]);
    let replayed = replay(&server.base, &csv, &["--batch", "500"]);
    assert_eq!(replayed["lines_accepted"], 3_000, "{replayed}");
    assert!(
        replayed["busy_answers"].as_u64().unwrap() > 0,
        "3,000 lines at more than 2,000 a second must meet the limit: {replayed}"
    );
}
