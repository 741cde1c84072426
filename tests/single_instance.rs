//! One process per data folder, and readiness that follows the appends: a second `serve` on a
//! folder in use exits naming the first (two writers on one embedded stream number records over
//! each other), and an instance whose appends fail says it is not ready, whatever the cause.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const LINE: &str = r#"{"InvoiceNo":"536365","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":6,"InvoiceDate":"2010-12-01T08:26:00","UnitPrice":2.55,"CustomerID":17850,"Country":"United Kingdom"}"#;

fn post(server: &Server, invoice: &str) -> (u16, serde_json::Value) {
    let res = client()
        .post(server.url("/v1/invoices"))
        .bearer_auth(DEMO_KEY)
        .header("content-type", "application/json")
        .body(LINE.replace("536365", invoice))
        .send()
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(serde_json::Value::Null))
}

fn ready(server: &Server) -> (u16, serde_json::Value) {
    let res = client().get(server.url("/health/ready")).send().unwrap();
    (res.status().as_u16(), res.json().unwrap())
}

/// Runs `shopstream ARGS` on `server`'s config and data folder to its end, failing if it starts
/// listening (a second server that did not refuse); returns its exit status and stderr.
fn run_second(server: &Server, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&server.config)
        .args(args)
        .env("SHOPSTREAM__DATA_DIR", &server.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdout ends when the process does; a line saying it listens means it did not refuse.
    for line in BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        if line.starts_with("shopstream listening") {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second process started on a data folder in use: {line}");
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_process_on_a_data_folder_in_use_exits_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = Server::start(&data, 0, "");
    let pid = first.pid().to_string();

    let (status, stderr) = run_second(&first, &["serve", "--port", "0"]);
    assert!(!status.success(), "second serve: {status}\n{stderr}");
    assert!(
        stderr.contains("is in use by `shopstream serve`")
            && stderr.contains(&format!("(pid {pid})")),
        "the refusal names the holder: {stderr}"
    );
    let (status, stderr) = run_second(&first, &["dead-letter", "redrive"]);
    assert!(!status.success(), "redrive: {status}\n{stderr}");
    assert!(stderr.contains(&format!("(pid {pid})")), "{stderr}");

    // The first one did not notice.
    for n in 0..20 {
        let (status, body) = post(&first, &format!("5{n:05}"));
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(ready(&first).0, 200);
    first.wait_caught_up(Duration::from_secs(30));

    // Once it is gone, the folder is free again, with what it stored.
    let (status, _) = first.terminate();
    assert!(status.success());
    let second = Server::start(&data, 0, "");
    let (status, body) = post(&second, "600000");
    assert_eq!(status, 200, "{body}");
    second.wait_caught_up(Duration::from_secs(30));
    let summary = second.get_json("/v1/sales/summary");
    assert_eq!(summary["lines"], 21, "{summary}");
}

#[test]
fn readiness_turns_false_while_appends_fail_and_back_when_they_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        0,
        "[server]\nbind = \"127.0.0.1\"\nport = 0\nrequest_timeout = \"2s\"\n",
    );
    assert_eq!(post(&server, "536365").0, 200);
    assert_eq!(ready(&server).0, 200);

    // Another connection holds the stream file's write lock: reads (the stream's health check)
    // still pass, appends cannot commit.
    let conn = rusqlite::Connection::open(server.data_dir.join("stream.sqlite")).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (status, body) = post(&server, "536366");
    assert_eq!(status, 503, "{body}");
    let (status, body) = ready(&server);
    assert_eq!(status, 503, "{body}");
    assert!(
        body["checks"]["stream"]
            .as_str()
            .unwrap()
            .starts_with("appends fail:"),
        "{body}"
    );

    conn.execute_batch("ROLLBACK").unwrap();
    drop(conn);
    let (status, body) = post(&server, "536367");
    assert_eq!(status, 200, "{body}");
    let (status, body) = ready(&server);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn an_import_into_the_warehouse_of_a_running_serve_commits_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let file = dir.path().join("bulk.csv");
    generate(&file, 60_000, &[]);

    let mut import = Command::new(BIN)
        .arg("--config")
        .arg(&server.config)
        .args(["import", "--json"])
        .arg(&file)
        .env("SHOPSTREAM__DATA_DIR", &server.data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, a reader sees the file's rows arrive batch by batch under its unfinished
    // ledger row (one transaction per file would show none, then all), and the server takes posts.
    let reader = rusqlite::Connection::open_with_flags(
        server.data_dir.join("warehouse.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    reader.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut partial_seen = false;
    let mut posted = 0u64;
    while import.try_wait().unwrap().is_none() {
        let unfinished: Option<i64> = reader
            .query_row(
                "SELECT (SELECT count(*) FROM sales WHERE source = 'import:' || id) FROM import_ledger
                 WHERE change_token LIKE 'unfinished:%'",
                [],
                |r| r.get(0),
            )
            .ok();
        partial_seen |= unfinished.is_some_and(|n| n > 0);
        if posted < 50 {
            let (status, body) = post(&server, &format!("7{posted:05}"));
            assert_eq!(status, 200, "{body}");
            posted += 1;
        }
    }
    let out = import.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        partial_seen,
        "no committed batch of the file was seen before the import ended"
    );
    server.wait_caught_up(Duration::from_secs(60));
    let summary = server.get_json("/v1/sales/summary");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let imported = report["rows_new"].as_u64().unwrap();
    assert!(imported > 50_000, "{report}");
    assert_eq!(summary["lines"], imported + posted, "{summary} {report}");
}
