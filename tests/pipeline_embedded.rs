//! Black-box tests of the whole pipeline on the embedded backends: the real binary on an
//! ephemeral loopback port, the real store simulator, and read-back of the SQLite files and the
//! archive folder without going through shopstream.

mod common;

use common::*;
use rust_decimal::Decimal;
use std::path::Path;
use std::time::Duration;

/// The operational store's table of lines (see `store/operational/sqlite.rs`).
const OPERATIONAL_TABLE: &str = "invoice_lines";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Every accepted line is in the operational store, the warehouse and the archive exactly once,
/// with the same count and exactly the same revenue as the input file.
fn assert_every_sink_has(server: &Server, expected: &Expected) {
    let dir = &server.data_dir;
    let (op_n, op_rev, op_dups) = sqlite_totals(&dir.join("operational.sqlite"), OPERATIONAL_TABLE);
    let (wh_n, wh_rev, wh_dups) = sqlite_totals(&dir.join("warehouse.sqlite"), "sales");
    let (ids, ar_rev, ar_n) = archive_lines(&dir.join("archive"));
    let revenue = expected.revenue.normalize();
    assert_eq!(
        (op_n, wh_n, ar_n),
        (expected.rows, expected.rows, expected.rows),
        "line counts (operational, warehouse, archive)"
    );
    assert_eq!((op_dups, wh_dups), (0, 0), "duplicate line ids");
    assert_eq!(
        ids.len() as u64,
        expected.rows,
        "distinct lines in the archive"
    );
    assert!(ids.values().all(|n| *n == 1), "a line is archived twice");
    assert_eq!(op_rev, revenue, "operational revenue");
    assert_eq!(wh_rev, revenue, "warehouse revenue");
    assert_eq!(ar_rev, revenue, "archive revenue");
}

/// A server and the temporary folder of its data; the server stops before the folder goes.
struct Running {
    server: Server,
    _dir: tempfile::TempDir,
}

fn replay_and_check(file: &Path, extra_replay: &[&str]) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let summary = replay(&server.base, file, extra_replay);
    let expected = expected_from_csv(file);
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");
    assert_eq!(summary["lines_rejected"], expected.ragged, "{summary:#}");
    server.wait_caught_up(Duration::from_secs(60));
    assert_every_sink_has(&server, &expected);
    Running { server, _dir: dir }
}

#[test]
fn real_fixture_reaches_every_sink_exactly_once_and_answers_lookups() {
    let file = fixture("online-retail-sample-182.csv");
    let running = replay_and_check(&file, &["--stores", "3", "--batch", "20"]);
    let server = &running.server;
    let expected = expected_from_csv(&file);

    // The first invoice of the dataset, compared with the file itself.
    let client = client();
    let invoice: serde_json::Value = client
        .get(server.url("/v1/invoices/536365"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&file)
        .unwrap();
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .map(Result::unwrap)
        .filter(|r| &r[0] == "536365" && r.len() == 8)
        .collect();
    let total: Decimal = rows
        .iter()
        .map(|r| r[3].parse::<Decimal>().unwrap() * r[5].parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(invoice["lines"].as_array().unwrap().len(), rows.len());
    assert_eq!(
        invoice["total"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        total
    );
    assert_eq!(invoice["customer_id"], 17850);
    assert_eq!(invoice["country"], "United Kingdom");

    // The customer's invoices, all of them and within a range.
    let all: serde_json::Value = client
        .get(server.url("/v1/customers/17850/invoices"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let listed = all["invoices"].as_array().unwrap();
    assert!(!listed.is_empty());
    assert!(listed.iter().any(|i| i["invoice_no"] == "536365"));
    let none: serde_json::Value = client
        .get(server.url("/v1/customers/17850/invoices?from=2011-06-01&to=2011-07-01"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(none["invoices"].as_array().unwrap().len(), 0);

    // The warehouse summary agrees with the file.
    let summary: serde_json::Value = client
        .get(server.url("/v1/sales/summary"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(summary["lines"], expected.rows);
    assert_eq!(summary["invoices"], expected.invoices.len());
    assert_eq!(
        summary["revenue"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        expected.revenue
    );
}

/// Each of the server's threads, by thread name: (name, nice value, scheduling policy)
/// (`/proc/PID/task/*`).
#[cfg(target_os = "linux")]
fn thread_priorities(pid: u32) -> Vec<(String, i32, i32)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue; // the thread ended while we looked
        };
        // After the name in parentheses: state is field 3, nice field 19, policy field 41
        // (man 5 proc).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        threads.push((
            name.trim().to_owned(),
            fields[16].parse().unwrap(),
            fields[38].parse().unwrap(),
        ));
    }
    threads.sort();
    threads
}

/// Replays the small fixture into a server started with `config` until every sink caught up,
/// then reads its threads' priorities.
#[cfg(target_os = "linux")]
fn priorities_after_a_replay(config: &str) -> Vec<(String, i32, i32)> {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, config);
    let file = fixture("online-retail-sample-182.csv");
    let summary = replay(&server.base, &file, &["--stores", "3", "--batch", "20"]);
    assert_eq!(
        summary["lines_accepted"],
        expected_from_csv(&file).rows,
        "{summary:#}"
    );
    server.wait_caught_up(Duration::from_secs(60));
    thread_priorities(server.pid())
}

/// Of `threads`, the (nice, policy) of those whose name starts with `prefix`.
#[cfg(target_os = "linux")]
fn named(threads: &[(String, i32, i32)], prefix: &str) -> Vec<(i32, i32)> {
    threads
        .iter()
        .filter(|(name, ..)| name.starts_with(prefix))
        .map(|&(_, nice, policy)| (nice, policy))
        .collect()
}

/// Linux's scheduling policies, as `/proc/PID/task/TID/stat` shows them.
#[cfg(target_os = "linux")]
const SCHED_OTHER: i32 = 0;
#[cfg(target_os = "linux")]
const SCHED_IDLE: i32 = 5;

/// Checks that the sinks' threads (each sink's arbiter and the blocking threads where its writes
/// run) have the priority `sink` recognises from (nice, policy), while the HTTP workers and the
/// stream's writer keep the process's (nice 0, the normal class).
#[cfg(target_os = "linux")]
fn assert_only_the_sinks_run_lower(
    threads: &[(String, i32, i32)],
    sink: impl Fn(&(i32, i32)) -> bool,
) {
    let ingest = (0, SCHED_OTHER);
    assert_eq!(named(threads, "stream-writer"), [ingest], "{threads:?}");
    // actix's threads: the HTTP workers at ingest's priority, one arbiter per sink lower (named
    // apart, so that `top -H` tells them from the workers).
    let workers = named(threads, "actix-rt|system");
    assert!(!workers.is_empty(), "{threads:?}");
    assert!(workers.iter().all(|t| *t == ingest), "{threads:?}");
    let arbiters = named(threads, "sink-arbiter");
    assert_eq!(arbiters.len(), 3, "{threads:?}");
    assert!(arbiters.iter().all(&sink), "{threads:?}");
    let blocking = named(threads, "sink-blocking");
    assert!(
        !blocking.is_empty(),
        "the sinks wrote on no blocking thread: {threads:?}"
    );
    assert!(blocking.iter().all(sink), "{threads:?}");
}

/// By default the sinks' threads are in the `SCHED_IDLE` class, so an acknowledgement never
/// waits for a core behind a sink's batch.
#[cfg(target_os = "linux")]
#[test]
fn the_sinks_threads_run_in_the_idle_class_by_default() {
    let threads = priorities_after_a_replay("");
    assert_only_the_sinks_run_lower(&threads, |&(_, policy)| policy == SCHED_IDLE);
}

/// With `cpu_class = "nice"`, the sinks' threads stay in the normal class, `sinks.nice` steps
/// below ingest's CPU priority.
#[cfg(target_os = "linux")]
#[test]
fn the_sinks_threads_run_nice_steps_below_ingest_when_told() {
    let threads = priorities_after_a_replay("[sinks]\ncpu_class = \"nice\"\nnice = 7\n");
    assert_only_the_sinks_run_lower(&threads, |&t| t == (7, SCHED_OTHER));
}

#[test]
fn latin1_fixture_reaches_every_sink_exactly_once() {
    replay_and_check(&fixture("online-retail-sample-873-iso.csv"), &[]);
}

#[test]
fn generated_dataset_reaches_every_sink_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("generated.csv");
    generate(&file, 30_000, &["--seed", "7"]);
    let running = replay_and_check(&file, &["--stores", "8", "--batch", "300"]);
    let server = &running.server;
    // Sending the whole file again changes nothing anywhere: every line is reported as already
    // stored (docs/line-identity.md).
    let again = replay(&server.base, &file, &["--stores", "4"]);
    assert_eq!(again["lines_accepted"], 0, "{again:#}");
    assert_eq!(again["lines_duplicate"], 30_000, "{again:#}");
    server.wait_caught_up(Duration::from_secs(60));
    assert_every_sink_has(server, &expected_from_csv(&file));
}

#[test]
fn kill_9_mid_replay_loses_no_acknowledged_line_and_duplicates_none() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("crash.csv");
    generate(&file, 40_000, &["--seed", "11"]);
    let data = tmp.path().join("data");
    let port = free_port();
    let mut server = Server::start(&data, port, "");
    let base = server.base.clone();

    // The simulator keeps retrying what was not acknowledged while the server is down.
    let replayer = {
        let file = file.clone();
        std::thread::spawn(move || {
            replay(
                &base,
                &file,
                &[
                    "--stores",
                    "4",
                    "--batch",
                    "200",
                    "--rate",
                    "20000",
                    "--max-attempts",
                    "40",
                ],
            )
        })
    };
    std::thread::sleep(Duration::from_millis(700));
    server.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let server = Server::start(&data, port, "");
    let summary = replayer.join().unwrap();
    assert_eq!(summary["lines_failed"], 0, "{summary:#}");
    assert!(
        summary["retries"].as_u64().unwrap() > 0,
        "the crash was not seen: {summary:#}"
    );
    server.wait_caught_up(Duration::from_secs(60));
    assert_every_sink_has(&server, &expected_from_csv(&file));
}

#[test]
fn a_failing_sink_does_not_hold_up_the_others_and_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("outage.csv");
    generate(&file, 5_000, &["--seed", "3"]);
    let data = tmp.path().join("data");
    let server = Server::start(&data, 0, "");

    // The warehouse database is locked by another writer, and the archive folder is replaced by a
    // file, for as long as the replay takes and a while after.
    let lock = rusqlite::Connection::open(data.join("warehouse.sqlite")).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let archive = data.join("archive");
    let moved = data.join("archive.away");
    std::fs::rename(&archive, &moved).unwrap();
    std::fs::write(&archive, b"not a folder").unwrap();

    let summary = replay(&server.base, &file, &["--stores", "2"]);
    assert_eq!(summary["lines_accepted"], 5_000);

    // The operational store gets everything while the other two are down.
    let client = client();
    let look = || {
        let status: serde_json::Value = client
            .get(server.url("/v1/status"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let shards = status["shards"].as_array().unwrap();
        let backlog = |sink: &str| -> u64 {
            shards
                .iter()
                .filter(|s| s["sink"] == sink)
                .map(|s| s["backlog_records"].as_u64().unwrap())
                .sum()
        };
        // A failing sink says why once its first attempt has failed (the warehouse's waits out
        // SQLite's busy timeout first), so wait for that as well.
        let says_why = |sink: &str| {
            shards
                .iter()
                .any(|s| s["sink"] == sink && s["failing"].is_string())
        };
        let operational_done =
            backlog("operational") == 0 && shards.iter().any(|s| s["sink"] == "operational");
        if operational_done && says_why("warehouse") && says_why("archive") {
            return Ok(status);
        }
        Err((
            backlog("operational"),
            says_why("warehouse"),
            says_why("archive"),
        ))
    };
    let status = wait_progress_or(
        "the operational store to catch up and the failing sinks to say why (operational backlog, warehouse failing, archive failing)",
        Duration::from_secs(60),
        look,
        || tail(&server.log(), 30),
    );
    let backlog = |sink: &str| -> u64 {
        status["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["sink"] == sink)
            .map(|s| s["backlog_records"].as_u64().unwrap())
            .sum()
    };
    assert!(
        backlog("warehouse") > 0,
        "the warehouse was locked: {status:#}"
    );
    assert!(
        backlog("archive") > 0,
        "the archive was unusable: {status:#}"
    );
    let ready = client.get(server.url("/health/ready")).send().unwrap();
    assert_eq!(ready.status(), 503, "readiness shows the broken archive");

    // Recovery: the failed sinks catch up with nothing lost and nothing doubled.
    lock.execute_batch("ROLLBACK").unwrap();
    drop(lock);
    std::fs::remove_file(&archive).unwrap();
    std::fs::rename(&moved, &archive).unwrap();
    server.wait_caught_up(Duration::from_secs(60));
    assert_every_sink_has(&server, &expected_from_csv(&file));
    let ready = client.get(server.url("/health/ready")).send().unwrap();
    assert_eq!(ready.status(), 200);
}

#[test]
fn sigterm_flushes_every_sink_and_exits_zero_within_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("term.csv");
    generate(&file, 3_000, &["--seed", "5"]);
    let data = tmp.path().join("data");
    // A long archive flush age: only the shutdown flush can write the archive in time.
    let mut server = Server::start(&data, 0, "[archive]\nflush_age = \"7m\"\n");
    let summary = replay(&server.base, &file, &[]);
    assert_eq!(summary["lines_accepted"], 3_000);
    // The archive has read every line (and holds them, or has written some): what it holds is
    // what the shutdown flush must write. Lines not read yet would stay in the stream for the
    // next start, which the end of this test checks as well.
    wait_progress(
        "the archive to read every line",
        Duration::from_secs(60),
        || {
            let status: serde_json::Value = client()
                .get(server.url("/v1/status"))
                .send()
                .unwrap()
                .json()
                .unwrap();
            let read: u64 = status["shards"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["sink"] == "archive")
                .map(|s| {
                    s["lines_buffered"].as_u64().unwrap() + s["lines_written"].as_u64().unwrap()
                })
                .sum();
            if read == 3_000 {
                Ok(())
            } else {
                Err(read)
            }
        },
    );
    let (status, took) = server.terminate();
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    assert!(took < Duration::from_secs(25), "took {took:?}");
    let (ids, _, n) = archive_lines(&data.join("archive"));
    assert_eq!((ids.len(), n), (3_000, 3_000), "the archive was flushed");
    // Restarted, nothing is written twice.
    let server = Server::start(&data, 0, "");
    server.wait_caught_up(Duration::from_secs(30));
    assert_every_sink_has(&server, &expected_from_csv(&file));
}

#[test]
fn serve_watches_a_folder_and_loads_each_bulk_file_once() {
    let tmp = tempfile::tempdir().unwrap();
    let drop_box = tmp.path().join("drop");
    std::fs::create_dir_all(&drop_box).unwrap();
    let config = format!(
        "[import]\nwatch = [{:?}]\ninterval = \"1s\"\n",
        drop_box.display().to_string()
    );
    let server = Server::start(&tmp.path().join("data"), 0, &config);
    let file = drop_box.join("export.csv");
    std::fs::copy(fixture("online-retail-sample-873-iso.csv"), &file).unwrap();
    let expected = expected_from_csv(&file);
    let summary = || -> serde_json::Value {
        client()
            .get(server.url("/v1/sales/summary"))
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    wait_progress_or(
        "the watcher to load the file (lines in the warehouse)",
        Duration::from_secs(60),
        || match summary()["lines"].as_u64() {
            Some(n) if n == expected.rows => Ok(()),
            lines => Err(lines),
        },
        || tail(&server.log(), 30),
    );
    // Later rounds find the file in the ledger and load nothing again.
    std::thread::sleep(Duration::from_millis(2_500));
    let s = summary();
    assert_eq!(s["lines"], expected.rows);
    assert_eq!(
        s["revenue"].as_str().unwrap().parse::<Decimal>().unwrap(),
        expected.revenue
    );
}
