//! Black-box tests of `shopstream verify` on the embedded backends: the real server takes a
//! generated file through replay, then verify reconciles the stream, the archive, the operational
//! store, the warehouse and the file; damaging one sink must make it exit 1 naming that sink and
//! the day.

mod common;

use common::*;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `shopstream verify` on the server's settings and data folder.
fn verify(server: &Server, args: &[&str]) -> Output {
    Command::new(BIN)
        .env("SHOPSTREAM__DATA_DIR", &server.data_dir)
        .arg("--config")
        .arg(&server.config)
        .arg("verify")
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `differs: ...` lines verify prints on stderr (the rest is progress).
fn differences(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| l.starts_with("differs: "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Any archive object, and the invoice days of the lines in it.
fn an_archive_object(dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".ndjson.gz") {
                let mut body = String::new();
                flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
                    .read_to_string(&mut body)
                    .unwrap();
                let mut days: Vec<String> = body
                    .lines()
                    .map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).unwrap();
                        v["invoice_date"].as_str().unwrap()[..10].to_owned()
                    })
                    .collect();
                days.sort();
                days.dedup();
                return (path, days);
            }
        }
    }
    panic!("no archive object under {}", dir.display());
}

#[test]
fn verify_agrees_after_replay_and_names_the_damaged_sink_and_day() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.csv");
    generate(&file, 3000, &[]);
    let expected = expected_from_csv(&file);
    let server = Server::start(&dir.path().join("data"), 0, "");
    let summary = replay(&server.base, &file, &["--stores", "3"]);
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");
    server.wait_caught_up(Duration::from_secs(60));

    // Everything agrees, and every column's total is the file's.
    let out = verify(&server, &["--input", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let total_cell = format!("{} / {}", expected.rows, expected.revenue.normalize());
    let total_row = stdout
        .lines()
        .find(|l| l.starts_with("total"))
        .unwrap_or_else(|| panic!("no total row:\n{stdout}"));
    assert_eq!(
        total_row.matches(&total_cell).count(),
        5,
        "stream, archive, operational, warehouse and input all hold {total_cell}: {total_row}"
    );
    assert!(stdout.contains("  ok"), "{stdout}");
    assert!(!stdout.contains("DIFFERS"), "{stdout}");

    let out = verify(&server, &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["agree"], true);
    let day0 = &report["days"][0];
    assert_eq!(day0["warehouse"]["digest"], day0["stream"]["digest"]);
    assert_eq!(report["total"]["warehouse"][0], expected.rows);
    // Per shard, the archive holds what the stream holds, and the shards add up to the day.
    for d in report["days"].as_array().unwrap() {
        assert_eq!(d["archive_shards"], d["stream_shards"], "{d:#}");
        let sum: u64 = d["stream_shards"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(sum, d["stream"]["lines"].as_u64().unwrap(), "{d:#}");
    }

    // One row gone from the warehouse: verify names the warehouse and that line's day.
    let db = server.data_dir.join("warehouse.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let date: String = conn
        .query_row(
            "SELECT invoice_date FROM sales ORDER BY invoice_no LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let day = date[..10].to_owned();
    conn.execute(
        "DELETE FROM sales WHERE rowid = (SELECT rowid FROM sales ORDER BY invoice_no LIMIT 1)",
        [],
    )
    .unwrap();
    drop(conn);
    let out = verify(&server, &["--input", file.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let diffs = differences(&stderr);
    let named = format!("warehouse {day}: 1 lines missing");
    assert!(diffs.contains(&named), "expected {named:?} in:\n{stderr}");
    assert!(
        diffs
            .lines()
            .all(|l| l.contains(&format!("warehouse {day}"))),
        "only the warehouse differs, on {day}:\n{diffs}"
    );
    let row = stdout.lines().find(|l| l.starts_with(&day)).unwrap();
    assert!(row.contains("DIFFERS"), "{row}");

    // An archive object gone: the archive is named too, on a day that object held.
    let (object, days) = an_archive_object(&server.data_dir.join("archive"));
    std::fs::remove_file(&object).unwrap();
    let out = verify(&server, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let diffs = differences(&stderr);
    assert!(
        days.iter()
            .any(|d| diffs.contains(&format!("archive {d}: "))),
        "expected the archive named on one of {days:?}:\n{stderr}"
    );
    assert!(
        !diffs.contains("operational"),
        "the operational store is intact:\n{diffs}"
    );
}

#[test]
fn verify_exits_2_when_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let missing = dir.path().join("no-such.csv");
    let out = verify(&server, &["--input", missing.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("--input"), "{stderr}");

    let out = Command::new(BIN)
        .env("SHOPSTREAM__DATA_DIR", dir.path().join("not-there"))
        .arg("verify")
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("data_dir"), "{stderr}");
}

/// The lines of `file` with the stock code of its first line, and that code.
fn lines_of_first_stock_code(file: &Path) -> (String, u64) {
    let mut reader = csv::Reader::from_path(file).unwrap();
    let col = reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "StockCode")
        .unwrap();
    let codes: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[col].to_owned())
        .collect();
    let n = codes.iter().filter(|c| **c == codes[0]).count() as u64;
    (codes[0].clone(), n)
}

/// Lines a sink dead-lettered are excused from it, and once retention has dropped the stream's
/// records the days are marked trimmed and the sinks are compared with each other: both times
/// verify agrees (exit 0) and says why.
#[test]
fn verify_excuses_dead_letters_and_marks_a_trimmed_stream() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("in.csv");
    generate(&file, 2000, &[]);
    let expected = expected_from_csv(&file);
    let (poison, poisoned) = lines_of_first_stock_code(&file);
    // Records leave the stream 8 s after every sink has them (max_lag must be at most half).
    let server = Server::start(
        &dir.path().join("data"),
        0,
        "[stream]\nretention = \"8s\"\n\n[sinks]\nmax_lag = \"4s\"\n",
    );
    // The warehouse refuses every line of one stock code, as a backend refuses an invalid line:
    // the warehouse forwarder dead-letters them and goes on.
    let conn = rusqlite::Connection::open(server.data_dir.join("warehouse.sqlite")).unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER test_poison BEFORE INSERT ON sales WHEN NEW.stock_code = '{poison}'
         BEGIN SELECT RAISE(ABORT, 'test poison line'); END"
    ))
    .unwrap();
    drop(conn);
    let summary = replay(&server.base, &file, &["--stores", "2"]);
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");
    server.wait_caught_up(Duration::from_secs(60));

    let report = |what: &str| {
        let out = verify(&server, &["--json", "--input", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{what}: {:?}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let dead_in = |r: &serde_json::Value, sink: &str| -> u64 {
        r["days"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| d["dead_letters"][sink].as_u64())
            .sum()
    };
    let r = report("dead letters");
    assert_eq!(dead_in(&r, "warehouse"), poisoned, "{r:#}");
    assert_eq!(dead_in(&r, "operational"), 0, "{r:#}");
    assert_eq!(
        r["total"]["warehouse"][0],
        expected.rows - poisoned,
        "{r:#}"
    );
    assert_eq!(r["total"]["operational"][0], expected.rows, "{r:#}");

    // Retention drops the records: wait (while it makes progress) until the stream is empty.
    let mut last = u64::MAX;
    let mut still = std::time::Instant::now();
    let r = loop {
        let r = report("trimming");
        let held = r["total"]["stream"][0].as_u64().unwrap();
        if held == 0 {
            break r;
        }
        if held < last {
            (last, still) = (held, std::time::Instant::now());
        }
        assert!(
            still.elapsed() < Duration::from_secs(60),
            "the stream has held {held} lines for 60 s past its 8 s retention: {r:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for d in r["days"].as_array().unwrap() {
        assert_eq!(d["stream_trimmed"], true, "{d:#}");
    }
    assert_eq!(r["agree"], true, "{r:#}");
    assert_eq!(r["total"]["archive"][0], expected.rows, "{r:#}");
    assert_eq!(dead_in(&r, "warehouse"), poisoned, "{r:#}");
}
