//! `server.ops_port` against the real binary: with it set, `/metrics` answers on that port only
//! (404 on the main port, where a load balancer listens), health answers on both, the ops port
//! serves nothing else, and its metrics are the process's own (requests to either port count
//! there), and both ports close on SIGTERM. Without it, `/metrics` stays on the main port. An ops port equal to the main port
//! stops the start with the key named.

mod common;

use common::*;
use std::process::Command;

#[test]
fn metrics_move_to_the_ops_port_and_health_answers_on_both() {
    let dir = tempfile::tempdir().unwrap();
    let ops_port = free_port();
    let server = Server::start(
        &dir.path().join("data"),
        0,
        &format!("[server]\nops_port = {ops_port}\n"),
    );
    assert_ne!(server.port, ops_port);
    let ops = |path: &str| format!("http://127.0.0.1:{ops_port}{path}");
    let http = anonymous_client();
    let get = |url: String| {
        let response = http.get(&url).send().unwrap();
        (response.status().as_u16(), response.text().unwrap())
    };

    assert_eq!(
        get(server.url("/metrics")).0,
        404,
        "no /metrics on the main port"
    );
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(get(server.url(path)).0, 200, "{path} on the main port");
        assert_eq!(get(ops(path)).0, 200, "{path} on the ops port");
    }
    // The ops port serves nothing that reads sales data or takes lines.
    for path in ["/v1/status", "/v1/sales/summary", "/openapi.json", "/"] {
        assert_eq!(get(ops(path)).0, 404, "{path} on the ops port");
    }
    let post = http
        .post(ops("/v1/invoices"))
        .bearer_auth(DEMO_KEY)
        .body("x")
        .send()
        .unwrap();
    assert_eq!(post.status(), 404, "no ingest on the ops port");

    let (status, metrics) = get(ops("/metrics"));
    assert_eq!(status, 200);
    // The requests above to the main port are counted in what the ops port shows.
    let served = metrics
        .lines()
        .find(|l| {
            l.starts_with("shopstream_http_requests_total{")
                && l.contains("route=\"/health/live\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no count of /health/live in:\n{metrics}"));
    let count: f64 = served.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{served}");
    // The ops port's own answers are counted too: the scrape above shows in the next one.
    let (_, metrics) = get(ops("/metrics"));
    assert!(
        metrics.lines().any(|l| {
            l.starts_with("shopstream_http_requests_total{")
                && l.contains("route=\"/metrics\"")
                && l.contains("status=\"200\"")
        }),
        "the ops port's scrape is not counted:\n{metrics}"
    );

    // Both servers stop on SIGTERM, and the process exits cleanly.
    let mut server = server;
    let (status, took) = server.terminate();
    assert!(status.success(), "{status:?} after {took:?}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ops_port)).is_err(),
        "the ops port is closed"
    );
}

#[test]
fn without_an_ops_port_metrics_stay_on_the_main_port() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let response = anonymous_client()
        .get(server.url("/metrics"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response
        .text()
        .unwrap()
        .contains("# TYPE shopstream_process_resident_memory_bytes gauge"));
}

#[test]
fn an_ops_port_equal_to_the_main_port_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("ops.toml");
    std::fs::write(&config, format!("[server]\nops_port = {port}\n")).unwrap();
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--port")
        .arg(port.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("server.ops_port") && stderr.contains("a port of its own"),
        "{stderr}"
    );
}
