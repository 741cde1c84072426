//! Supervision of the sink workers against the real binary: a backend that is busy for longer
//! than any bound on attempts is waited for, never dead-lettered around.

mod common;

use common::*;
use std::time::Duration;

/// `sinks.retry.max_attempts` of the test's server: each attempt at a locked SQLite file waits
/// out its 5 s busy timeout, so a small bound keeps the test short.
const MAX_ATTEMPTS: u64 = 2;

/// One shard, so every retry counted is one unit's (or one line's) retry.
const CONFIG: &str = "[stream]\nshards = 1\n\n[sinks.retry]\nmax_attempts = 2\n";

/// The value of a counter of `/metrics` for one sink (0 when not exported yet).
fn sink_counter(server: &Server, name: &str, sink: &str) -> u64 {
    let text = client()
        .get(server.url("/metrics"))
        .send()
        .and_then(|r| r.text())
        .unwrap_or_default();
    let prefix = format!("{name}{{sink=\"{sink}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Dead letters: files under the dead-letter store's `dead-letter/` prefix (the store keeps the
/// workers' dedup windows beside them).
fn dead_letter_files(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&data.join("dead-letter/dead-letter"), &mut files);
    files
}

#[test]
fn a_locked_warehouse_is_retried_past_max_attempts_and_dead_letters_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("locked.csv");
    generate(&file, 400, &["--seed", "12"]);
    let data = tmp.path().join("data");
    let server = Server::start(&data, 0, CONFIG);

    // Another process holds the warehouse's write lock (as a bulk import would) while lines come in.
    let lock = rusqlite::Connection::open(data.join("warehouse.sqlite")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let summary = replay(&server.base, &file, &[]);
    assert_eq!(summary["lines_accepted"], 400, "{summary:#}");

    // Held until the warehouse has retried well past max_attempts: the rule this replaces wrote
    // the unit line by line after max_attempts and dead-lettered a line after max_attempts more,
    // because the warehouse's health check (a read) passes while its writes are locked. Status
    // and readiness say what it is retrying.
    let client = client();
    let wanted_retries = 2 * MAX_ATTEMPTS + 2;
    wait_progress_or(
        "the warehouse to retry past max_attempts (retries, failing in status, readiness)",
        Duration::from_secs(60),
        || {
            let retries = sink_counter(&server, "shopstream_sink_retries_total", "warehouse");
            let status: serde_json::Value = client
                .get(server.url("/v1/status"))
                .send()
                .and_then(|r| r.json())
                .unwrap_or_default();
            let failing = status["shards"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["sink"] == "warehouse" && s["failing"].is_string());
            let ready = client.get(server.url("/health/ready")).send().unwrap();
            let ready_code = ready.status().as_u16();
            let ready: serde_json::Value = ready.json().unwrap_or_default();
            let named = ready["checks"]["warehouse"]
                .as_str()
                .is_some_and(|c| c.contains("failing"));
            if retries >= wanted_retries && failing && ready_code == 503 && named {
                return Ok(());
            }
            Err((retries, failing, ready_code, named))
        },
        || tail(&server.log(), 30),
    );
    assert!(
        dead_letter_files(&data).is_empty(),
        "a busy warehouse dead-lettered lines: {:?}",
        dead_letter_files(&data)
    );

    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    server.wait_caught_up(Duration::from_secs(60));
    let expected = expected_from_csv(&file);
    let (rows, revenue, dups) = sqlite_totals(&data.join("warehouse.sqlite"), "sales");
    assert_eq!(
        (rows, dups),
        (expected.rows, 0),
        "warehouse rows, duplicates"
    );
    assert_eq!(revenue, expected.revenue.normalize());
    assert!(
        dead_letter_files(&data).is_empty(),
        "dead letters after recovery: {:?}",
        dead_letter_files(&data)
    );
    assert_eq!(
        sink_counter(&server, "shopstream_dead_letters_total", "warehouse"),
        0
    );
    let ready = client.get(server.url("/health/ready")).send().unwrap();
    assert_eq!(ready.status(), 200, "ready again once the lock is gone");
}
