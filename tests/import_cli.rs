//! Black-box: the real `shopstream` binary imports folders and a full-size generated export,
//! reloads a file beside a running server, and its watcher waits for a file to hold still.

mod common;
mod import_support;

use common::{client, wait_progress_or, Server, DEMO_KEY};
use import_support::{expected, fixture, ledger_rows, sales};
use rust_decimal::Decimal;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::str::FromStr;
use std::time::Duration;

fn shopstream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(args)
        .env_remove("SHOPSTREAM_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn import_json(data: &Path, sources: &[&Path], extra: &[&str]) -> (bool, Value) {
    let data = data.display().to_string();
    let mut args = vec!["import", "--json", "--data-dir", data.as_str()];
    args.extend_from_slice(extra);
    let sources: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    args.extend(sources.iter().map(String::as_str));
    let out = shopstream(&args);
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), summary)
}

#[test]
fn a_folder_imports_once_and_reports_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let drops = dir.path().join("drops/2011/01");
    std::fs::create_dir_all(&drops).unwrap();
    for name in [
        "online-retail-sample-182.csv",
        "online-retail-sample-873-iso.csv",
    ] {
        std::fs::copy(fixture(name), drops.join(name)).unwrap();
    }
    let data = dir.path().join("data");
    let root = dir.path().join("drops");

    let (ok, first) = import_json(&data, &[&root], &[]);
    assert!(ok, "{first}");
    assert_eq!(first["loaded"], 2);
    assert_eq!(first["failed"], 0);
    assert_eq!(first["rows_loaded"], 179 + 873);
    assert_eq!(first["rows_rejected"], 4);
    let reject_file = first["reject_files"][0].as_str().unwrap();
    assert!(Path::new(reject_file).starts_with(data.join("import-rejects")));
    assert_eq!(
        std::fs::read_to_string(reject_file)
            .unwrap()
            .lines()
            .count(),
        5
    );
    let warehouse = data.join("warehouse.sqlite");
    let stored = sales(&warehouse);
    assert_eq!(stored.0, first["rows_new"].as_u64().unwrap());

    let (ok, second) = import_json(&data, &[&root], &[]);
    assert!(ok, "{second}");
    assert_eq!(
        (second["loaded"].as_u64(), second["skipped"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(sales(&warehouse), stored);

    // A failing file makes the exit code non-zero, after the summary.
    std::fs::write(drops.join("empty.csv"), "").unwrap();
    let (ok, third) = import_json(&data, &[&root], &[]);
    assert!(!ok);
    assert_eq!(
        (third["failed"].as_u64(), third["skipped"].as_u64()),
        (Some(1), Some(2))
    );
}

#[test]
fn the_full_size_latin1_export_loads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("online-retail-latin1.csv");
    let out = shopstream(&[
        "generate",
        "--encoding",
        "latin1",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rows, revenue) = expected(&file);
    assert_eq!(rows, 541_909);

    let data = dir.path().join("data");
    let (ok, summary) = import_json(&data, &[&file], &["--date-order", "mdy"]);
    assert!(ok, "{summary}");
    assert_eq!(summary["rows_loaded"], 541_909);
    assert_eq!(summary["rows_rejected"], 0);
    assert_eq!(sales(&data.join("warehouse.sqlite")), (rows, revenue));
}

const HEADER: &str =
    "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country";

/// Six lines of three invoices, each its own content (so each has occurrence 0 by either path).
const ROWS: [&str; 6] = [
    "581001,A1,RED MUG,2,12/9/11 10:00,1.25,12345,France",
    "581001,A2,BLUE MUG,3,12/9/11 10:00,2.50,12345,France",
    "581001,A3,GREEN MUG,1,12/9/11 10:00,4.10,12345,France",
    "581002,B1,TEA TOWEL,5,12/9/11 11:00,0.85,13001,United Kingdom",
    "581002,B2,SPOON,12,12/9/11 11:00,0.42,13001,United Kingdom",
    "581003,C1,LANTERN,7,12/10/11 12:00,3.39,17850,United Kingdom",
];

/// A CSV of `HEADER` and the rows of `ROWS` at `rows`.
fn csv_of(rows: &[usize]) -> String {
    let mut out = format!("{HEADER}\n");
    for &i in rows {
        out.push_str(ROWS[i]);
        out.push('\n');
    }
    out
}

/// Posts row `i` of `ROWS` to the ingest endpoint as the demo store; returns its line id.
fn post_row(server: &Server, i: usize) -> String {
    let res = client()
        .post(server.url("/v1/invoices"))
        .bearer_auth(DEMO_KEY)
        .header("content-type", "text/csv")
        .body(csv_of(&[i]))
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = res.json().unwrap();
    assert_eq!(body["accepted"], 1, "{body}");
    body["line_ids"][0].as_str().unwrap().to_owned()
}

/// Lines and revenue as `/v1/sales/summary` answers them: read from the rollups.
fn rollup_totals(server: &Server) -> (u64, Decimal) {
    let s = server.get_json("/v1/sales/summary");
    (
        s["lines"].as_u64().unwrap(),
        Decimal::from_str(s["revenue"].as_str().unwrap())
            .unwrap()
            .normalize(),
    )
}

/// How many rows of `sales` hold `line_id`.
fn copies(warehouse: &Path, line_id: &str) -> i64 {
    rusqlite::Connection::open(warehouse)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM sales WHERE line_id = ?1",
            [line_id],
            |r| r.get(0),
        )
        .unwrap()
}

/// `--reload` takes out only the lines the file alone brought: a line that also came by the
/// stream (before the import or after it) or from another file stays, once, and the rollups stay
/// those of the fact table.
#[test]
fn a_reload_keeps_lines_that_also_came_by_the_stream_or_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data, 0, "");
    let warehouse = data.join("warehouse.sqlite");
    let (file, other) = (dir.path().join("day.csv"), dir.path().join("other.csv"));

    // Row 1 comes by the stream first; the file brings rows 0..6; row 3 comes by the stream after
    // the import (the warehouse already holds it from the file); another file brings row 4 again.
    let streamed_before = post_row(&server, 1);
    server.wait_caught_up(Duration::from_secs(30));
    std::fs::write(&file, csv_of(&[0, 1, 2, 3, 4, 5])).unwrap();
    let (ok, first) = import_json(&data, &[&file], &[]);
    assert!(ok, "{first}");
    assert_eq!(
        (first["rows_loaded"].as_u64(), first["rows_new"].as_u64()),
        (Some(6), Some(5))
    );
    let streamed_after = post_row(&server, 3);
    server.wait_caught_up(Duration::from_secs(30));
    std::fs::write(&other, csv_of(&[4])).unwrap();
    let (ok, second) = import_json(&data, &[&other], &[]);
    assert!(ok, "{second}");
    assert_eq!(second["rows_new"], 0, "{second}");
    let all = expected(&file);
    assert_eq!(sales(&warehouse), all);
    assert_eq!(rollup_totals(&server), all);
    assert_eq!(copies(&warehouse, &streamed_after), 1);

    // The file loses rows 1, 3 and 4, which came some other way too: nothing changes.
    std::fs::write(&file, csv_of(&[0, 2, 5])).unwrap();
    let (ok, reload) = import_json(&data, &[&file], &["--reload"]);
    assert!(ok, "{reload}");
    assert_eq!(
        (reload["loaded"].as_u64(), reload["rows_loaded"].as_u64()),
        (Some(1), Some(3))
    );
    assert_eq!(sales(&warehouse), all, "{reload}");
    assert_eq!(rollup_totals(&server), all);
    for id in [&streamed_before, &streamed_after] {
        assert_eq!(copies(&warehouse, id), 1, "line {id}");
    }

    // Then it loses row 5, which only it brought: that line goes, and the rollups follow.
    std::fs::write(&file, csv_of(&[0, 2])).unwrap();
    let (ok, reload) = import_json(&data, &[&file], &["--reload"]);
    assert!(ok, "{reload}");
    let row5 = dir.path().join("row5.csv");
    std::fs::write(&row5, csv_of(&[5])).unwrap();
    let gone = expected(&row5);
    let left = (all.0 - gone.0, all.1 - gone.1);
    assert_eq!(sales(&warehouse), left);
    assert_eq!(rollup_totals(&server), left);

    // A line the stream brings later still lands once after all of this.
    post_row(&server, 5);
    server.wait_caught_up(Duration::from_secs(30));
    assert_eq!(sales(&warehouse), all);
    assert_eq!(rollup_totals(&server), all);
}

/// The watcher of `serve` leaves a file alone while it grows (a copy in progress) and loads it
/// whole once two scans saw the same size and modification time.
#[test]
fn the_watcher_waits_for_a_growing_file_to_hold_still() {
    let dir = tempfile::tempdir().unwrap();
    let drops = dir.path().join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        0,
        &format!(
            "[import]\nwatch = [{:?}]\ninterval = \"1s\"\n",
            drops.display().to_string()
        ),
    );
    let warehouse = data.join("warehouse.sqlite");
    let file = drops.join("growing.csv");
    std::fs::write(&file, format!("{HEADER}\n")).unwrap();
    // One row every 100 ms for 5 s: every two scans (1 s apart at least) see another size.
    let rows = 50;
    for i in 0..rows {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        writeln!(
            f,
            "{},S{i},ITEM {i},{},12/9/11 10:00,1.{i:02},12345,France",
            590_000 + i / 5,
            i + 1
        )
        .unwrap();
        drop(f);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            (sales(&warehouse).0, ledger_rows(&warehouse)),
            (0, 0),
            "a file still growing was loaded (after {} of {rows} rows); log:\n{}",
            i + 1,
            common::tail(&server.log(), 20)
        );
    }
    wait_progress_or(
        "the watcher to load the file once it held still",
        Duration::from_secs(20),
        || match ledger_rows(&warehouse) {
            0 => Err(sales(&warehouse).0),
            _ => Ok(()),
        },
        || common::tail(&server.log(), 40),
    );
    assert_eq!(sales(&warehouse), expected(&file));
    assert_eq!(sales(&warehouse).0, rows as u64);
}

/// The binary with `args`, killed (and the test failed) if it runs past `limit`.
fn shopstream_within(args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(args)
        .env_remove("SHOPSTREAM_CONFIG")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`shopstream {}` still ran after {limit:?}; stderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_folder_of_links_loops_fifos_and_odd_names_loads_its_regular_files_once() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let drops = dir.path().join("drops");
    std::fs::create_dir_all(drops.join("sub")).unwrap();
    std::fs::copy(
        fixture("online-retail-sample-182.csv"),
        drops.join("good.csv"),
    )
    .unwrap();
    // A name with a newline and an escape sequence in it.
    std::fs::write(drops.join("new\nline\u{1b}[31m.csv"), csv_of(&[0, 1])).unwrap();
    symlink(".", drops.join("loop")).unwrap();
    symlink("..", drops.join("sub/back")).unwrap();
    symlink("missing.csv", drops.join("gone.csv")).unwrap();
    symlink("/etc/passwd", drops.join("passwd.csv")).unwrap();
    let fifo = drops.join("pipe.csv");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());

    let data = dir.path().join("data");
    let (data_arg, drops_arg) = (data.display().to_string(), drops.display().to_string());
    let out = shopstream_within(
        &["import", "--data-dir", &data_arg, &drops_arg],
        Duration::from_secs(60),
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout {stdout}\nstderr {stderr}");
    // The two regular files, each once; every other entry skipped with a warning that names it.
    assert!(
        stdout.contains("2 loaded, 0 skipped, 0 changed, 0 failed"),
        "{stdout}"
    );
    assert!(stdout.contains(r"new\nline\u{1b}[31m.csv"), "{stdout}");
    assert!(
        !stdout.contains("new\nline") && !stdout.contains('\u{1b}'),
        "{stdout}"
    );
    for entry in ["loop", "sub/back", "gone.csv", "passwd.csv", "pipe.csv"] {
        assert!(stderr.contains(entry), "no warning names {entry}: {stderr}");
    }
    assert!(
        !stdout.contains("root:") && !stderr.contains("root:"),
        "{stdout}{stderr}"
    );
    assert_eq!(ledger_rows(&data.join("warehouse.sqlite")), 2);

    // Named explicitly, a FIFO is refused with a reason, at once.
    let fifo_arg = fifo.display().to_string();
    let out = shopstream_within(
        &["import", "--data-dir", &data_arg, &fifo_arg],
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("is not a regular file"), "{stdout}");
}
