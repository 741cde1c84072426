//! The HTTP API's answers: authentication, limits, malformed bodies, partial and atomic
//! acceptance, idempotent retries, look-ups of unknown things, metrics and health.

mod common;

use common::*;
use std::time::Duration;

const LIMITS: &str = r#"
[server]
bind = "127.0.0.1"
port = 0
max_body_bytes = 20000
max_lines_per_request = 50
request_timeout = "10s"
shutdown_deadline = "10s"
workers = 2
date_order = "mdy"

[auth.stores]
demo = "demo-key-change-me"
leeds = "leeds-secret-key"
"#;

const GOOD: &str = r#"{"InvoiceNo":"536365","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":6,"InvoiceDate":"12\/1\/2010 8:26","UnitPrice":2.55,"CustomerID":17850.0,"Country":"United Kingdom"}"#;

fn post(
    server: &Server,
    key: Option<&str>,
    content_type: &str,
    body: impl Into<Vec<u8>>,
    query: &str,
) -> (u16, serde_json::Value) {
    let mut req = client()
        .post(server.url(&format!("/v1/invoices{query}")))
        .header("content-type", content_type)
        .body(body.into());
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let res = req.send().unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(serde_json::Value::Null))
}

fn warehouse_lines(server: &Server) -> u64 {
    server.wait_caught_up(Duration::from_secs(30));
    let s: serde_json::Value = client()
        .get(server.url("/v1/sales/summary"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    s["lines"].as_u64().unwrap()
}

#[test]
fn api_answers_with_the_right_status_and_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, LIMITS);
    let json = "application/json";

    // Authentication: no key, an unknown key.
    let (status, body) = post(&server, None, json, GOOD, "");
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("Bearer"),
        "{body}"
    );
    let (status, _) = post(&server, Some("not-a-key-at-all"), json, GOOD, "");
    assert_eq!(status, 401);

    // One good pandas-style row is accepted and answered with its line id.
    let (status, body) = post(&server, Some("leeds-secret-key"), json, GOOD, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1);
    let id = body["line_ids"][0].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    // The same request again is the same line, stored once.
    let (status, again) = post(&server, Some("leeds-secret-key"), json, GOOD, "");
    assert_eq!(status, 200);
    assert_eq!(again["line_ids"][0], id.as_str());
    // ... and the answer says so: nothing new, one duplicate (docs/line-identity.md).
    assert_eq!(again["accepted"], 0, "{again}");
    assert_eq!(again["duplicates"]["count"], 1, "{again}");
    assert_eq!(again["duplicates"]["lines"][0]["index"], 0, "{again}");
    assert_eq!(warehouse_lines(&server), 1);
    let invoice: serde_json::Value = client()
        .get(server.url("/v1/invoices/536365"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(invoice["lines"][0]["store_id"], "leeds");

    // Malformed bodies.
    for (body, what) in [
        ("", "empty"),
        (r#"[{"InvoiceNo":"536365","#, "truncated"),
        ("this is not json", "not json"),
    ] {
        let (status, answer) = post(&server, Some(DEMO_KEY), json, body, "");
        assert_eq!(status, 400, "{what}: {answer}");
        assert!(!answer["message"].as_str().unwrap().is_empty(), "{what}");
    }
    let (status, answer) = post(
        &server,
        Some(DEMO_KEY),
        "text/csv",
        "InvoiceNo,StockCode,Quantity\n1,A,1\n",
        "",
    );
    assert_eq!(status, 400);
    assert!(
        answer["message"].as_str().unwrap().contains("UnitPrice"),
        "{answer}"
    );

    // A bad line among good ones: the good ones go in, the bad one is named with field and reason.
    let mixed = format!(
        "[{}, {}]",
        GOOD.replace("536365", "536366"),
        GOOD.replace("\"Quantity\":6", "\"Quantity\":\"six\"")
            .replace("85123A", "71053")
    );
    let (status, answer) = post(&server, Some(DEMO_KEY), json, mixed.clone(), "");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1);
    assert_eq!(answer["rejected"][0]["index"], 1);
    assert_eq!(answer["rejected"][0]["field"], "Quantity");
    // atomic=true: nothing of it is written.
    let atomic = mixed
        .replace("536366", "536999")
        .replace("536365", "536999");
    let (status, answer) = post(&server, Some(DEMO_KEY), json, atomic, "?atomic=true");
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["rejected"][0]["field"], "Quantity");
    let missing = client()
        .get(server.url("/v1/invoices/536999"))
        .send()
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().unwrap().contains("536999"));

    // Limits: too many lines, too large a body.
    let many: Vec<String> = (0..51)
        .map(|i| GOOD.replace("\"Quantity\":6", &format!("\"Quantity\":{}", i + 1)))
        .collect();
    let (status, answer) = post(
        &server,
        Some(DEMO_KEY),
        json,
        format!("[{}]", many.join(",")),
        "",
    );
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("50"),
        "{answer}"
    );
    let (status, answer) = post(&server, Some(DEMO_KEY), json, vec![b' '; 30_000], "");
    assert_eq!(status, 413, "{answer}");

    // Look-ups: unknown and malformed.
    let c = client();
    assert_eq!(
        c.get(server.url("/v1/invoices/999999"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(server.url("/v1/customers/abc/invoices"))
            .send()
            .unwrap()
            .status(),
        400
    );
    let bad_date = c
        .get(server.url("/v1/customers/17850/invoices?from=yesterday"))
        .send()
        .unwrap();
    assert_eq!(bad_date.status(), 400);
    assert!(bad_date.text().unwrap().contains("YYYY-MM-DD"));

    // Operations.
    assert_eq!(
        c.get(server.url("/health/live")).send().unwrap().status(),
        200
    );
    let ready = c.get(server.url("/health/ready")).send().unwrap();
    assert_eq!(ready.status(), 200);
    let page = c.get(server.url("/")).send().unwrap().text().unwrap();
    assert!(page.contains("shopstream"));
}

#[test]
fn metrics_pass_promtool_and_count_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let (status, _) = post(&server, Some(DEMO_KEY), "application/json", GOOD, "");
    assert_eq!(status, 200);
    let (status, _) = post(&server, None, "application/json", GOOD, "");
    assert_eq!(status, 401);
    server.wait_caught_up(Duration::from_secs(30));
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for series in [
        "shopstream_http_requests_total{route=\"/v1/invoices\",status=\"200\"} 1",
        "shopstream_http_requests_total{route=\"/v1/invoices\",status=\"401\"} 1",
        "shopstream_lines_accepted_total{store=\"demo\"} 1",
        "shopstream_sink_lines_written_total{sink=\"warehouse\"} 1",
        "shopstream_sink_backlog_records{",
        "shopstream_stream_append_duration_seconds_bucket",
        "shopstream_sink_flush_duration_seconds_bucket",
    ] {
        assert!(text.contains(series), "missing {series} in\n{text}");
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (bash scripts/testing/setup-test-deps.sh installs it)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
