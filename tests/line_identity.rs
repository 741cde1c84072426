//! The rules of docs/line-identity.md, black-box: the real binary over HTTP on the embedded
//! backends, the real store simulator, and read-back of the SQLite files and the archive folder.

mod common;

use common::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

const STORES: &str = r#"
[auth.stores]
demo = "demo-key-change-me"
leeds = "leeds-secret-key"
"#;
const LEEDS_KEY: &str = "leeds-secret-key";

/// Per invoice: (lines, exact revenue).
type PerInvoice = BTreeMap<String, (u64, Decimal)>;

/// What a CSV file holds per invoice, read without shopstream's parser.
fn expected_per_invoice(file: &Path) -> PerInvoice {
    let mut reader = csv::Reader::from_path(file).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (inv, q, p) = (col("InvoiceNo"), col("Quantity"), col("UnitPrice"));
    let mut out = PerInvoice::new();
    for rec in reader.records() {
        let rec = rec.unwrap();
        let e = out.entry(rec[inv].to_owned()).or_default();
        e.0 += 1;
        e.1 += Decimal::from(i64::from_str(&rec[q]).unwrap()) * Decimal::from_str(&rec[p]).unwrap();
    }
    normalized(out)
}

fn normalized(mut m: PerInvoice) -> PerInvoice {
    for v in m.values_mut() {
        v.1 = v.1.normalize();
    }
    m
}

fn sqlite_per_invoice(db: &Path, table: &str) -> PerInvoice {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "SELECT invoice_no, COUNT(*), SUM(line_total_micros) FROM {table} GROUP BY invoice_no"
        ))
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                Decimal::new(r.get(2)?, 6).normalize(),
            ))
        })
        .unwrap();
    rows.map(|r| {
        let (inv, n, rev) = r.unwrap();
        (inv, (n, rev))
    })
    .collect()
}

/// Every line of the archive folder, as JSON.
fn archived(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".ndjson.gz") {
                let mut text = String::new();
                flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
                    .read_to_string(&mut text)
                    .unwrap();
                out.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
            }
        }
    }
    out
}

fn archive_per_invoice(dir: &Path) -> PerInvoice {
    let mut out = PerInvoice::new();
    for v in archived(dir) {
        let e = out
            .entry(v["invoice_no"].as_str().unwrap().to_owned())
            .or_default();
        e.0 += 1;
        e.1 += Decimal::from(v["quantity"].as_i64().unwrap())
            * Decimal::from_str(v["unit_price"].as_str().unwrap()).unwrap();
    }
    normalized(out)
}

fn assert_every_sink_per_invoice(server: &Server, expected: &PerInvoice) {
    let dir = &server.data_dir;
    assert_eq!(
        &sqlite_per_invoice(&dir.join("operational.sqlite"), "invoice_lines"),
        expected,
        "operational store, per invoice"
    );
    assert_eq!(
        &sqlite_per_invoice(&dir.join("warehouse.sqlite"), "sales"),
        expected,
        "warehouse, per invoice"
    );
    assert_eq!(
        &archive_per_invoice(&dir.join("archive")),
        expected,
        "archive, per invoice"
    );
}

/// A generated export with exact duplicate rows added, its rows shuffled with a fixed seed, so
/// the copies of a row (and an invoice's rows) travel in different requests.
fn shuffled_export_with_duplicates(path: &Path, lines: u64) {
    let plain = path.with_extension("plain.csv");
    generate(&plain, lines, &["--seed", "21"]);
    let mut reader = csv::Reader::from_path(&plain).unwrap();
    let headers = reader.byte_headers().unwrap().clone();
    let mut rows: Vec<csv::ByteRecord> = reader.byte_records().map(Result::unwrap).collect();
    let copies: Vec<_> = rows.iter().step_by(37).cloned().collect();
    rows.extend(copies);
    rows.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(99));
    let mut w = csv::Writer::from_path(path).unwrap();
    w.write_byte_record(&headers).unwrap();
    for r in &rows {
        w.write_byte_record(r).unwrap();
    }
    w.flush().unwrap();
}

#[test]
fn a_shuffled_export_with_duplicate_rows_replays_exactly_and_twice_adds_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("shuffled.csv");
    shuffled_export_with_duplicates(&file, 3_000);
    let expected = expected_per_invoice(&file);
    let rows: u64 = expected.values().map(|(n, _)| n).sum();
    let server = Server::start(&tmp.path().join("data"), 0, "");

    let first = replay(&server.base, &file, &["--stores", "3", "--batch", "40"]);
    assert_eq!(first["lines_accepted"], rows, "{first:#}");
    assert_eq!(first["lines_duplicate"], 0, "{first:#}");
    server.wait_caught_up(Duration::from_secs(60));
    assert_every_sink_per_invoice(&server, &expected);

    let second = replay(&server.base, &file, &["--stores", "2", "--batch", "70"]);
    assert_eq!(second["lines_accepted"], 0, "{second:#}");
    assert_eq!(second["lines_duplicate"], rows, "{second:#}");
    server.wait_caught_up(Duration::from_secs(60));
    assert_every_sink_per_invoice(&server, &expected);
}

#[test]
fn kill_9_mid_replay_of_a_shuffled_export_is_still_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("shuffled.csv");
    shuffled_export_with_duplicates(&file, 20_000);
    let expected = expected_per_invoice(&file);
    let data = tmp.path().join("data");
    let port = free_port();
    let mut server = Server::start(&data, port, "");
    let replayer = {
        let (file, base) = (file.clone(), server.base.clone());
        std::thread::spawn(move || {
            replay(
                &base,
                &file,
                &[
                    "--stores",
                    "4",
                    "--batch",
                    "100",
                    "--rate",
                    "8000",
                    "--max-attempts",
                    "40",
                ],
            )
        })
    };
    // Kill once the replay is under way (some lines are durable), not after a fixed time.
    let client = client();
    wait_progress(
        "the replay to be under way",
        Duration::from_secs(60),
        || {
            let accepted = client
                .get(server.url("/metrics"))
                .send()
                .ok()
                .and_then(|r| r.text().ok())
                .is_some_and(|m| {
                    m.lines()
                        .any(|l| l.contains("lines_accepted_total{") && !l.ends_with(" 0"))
                });
            if accepted {
                Ok(())
            } else {
                Err(0)
            }
        },
    );
    server.kill9();
    let server = Server::start(&data, port, "");
    let summary = replayer.join().unwrap();
    assert_eq!(summary["lines_failed"], 0, "{summary:#}");
    assert!(
        summary["retries"].as_u64().unwrap() > 0,
        "the crash was not seen: {summary:#}"
    );
    server.wait_caught_up(Duration::from_secs(60));
    assert_every_sink_per_invoice(&server, &expected);
}

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
    query: &str,
) -> (u16, serde_json::Value, bool) {
    let mut req = client()
        .post(server.url(&format!("/v1/invoices{query}")))
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

/// Lines of `invoice` in each sink: (operational, warehouse, archive) as (quantity, store) pairs.
fn sink_lines(server: &Server, invoice: &str) -> [Vec<(i64, String)>; 3] {
    let dir = &server.data_dir;
    let sql = |db: &str, table: &str| -> Vec<(i64, String)> {
        let conn = rusqlite::Connection::open_with_flags(
            dir.join(db),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT quantity, store_id FROM {table} WHERE invoice_no = ?1 ORDER BY quantity"
            ))
            .unwrap();
        let rows = stmt
            .query_map([invoice], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        rows.map(Result::unwrap).collect()
    };
    let mut archive: Vec<(i64, String)> = archived(&dir.join("archive"))
        .into_iter()
        .filter(|v| v["invoice_no"] == invoice)
        .map(|v| {
            (
                v["quantity"].as_i64().unwrap(),
                v["store_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    archive.sort();
    [
        sql("operational.sqlite", "invoice_lines"),
        sql("warehouse.sqlite", "sales"),
        archive,
    ]
}

#[test]
fn repeats_are_reported_keys_make_lines_of_their_own_and_answer_once() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), 0, STORES);

    // Two identical single-line requests without a key: the second is a duplicate.
    let one = line("900001", 1, None);
    let (status, first, _) = post(&server, DEMO_KEY, None, &one, "");
    assert_eq!(
        (status, first["accepted"].as_u64()),
        (200, Some(1)),
        "{first}"
    );
    let (status, second, _) = post(&server, DEMO_KEY, None, &one, "");
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["accepted"], 0, "{second}");
    assert_eq!(second["duplicates"]["count"], 1, "{second}");
    assert_eq!(second["duplicates"]["lines"][0]["index"], 0, "{second}");
    assert_eq!(second["line_ids"], first["line_ids"]);

    // The same line twice in one request without a key is a different line (occurrence 1).
    let (_, both, _) = post(&server, DEMO_KEY, None, &format!("[{one},{one}]"), "");
    assert_eq!(both["accepted"], 1, "{both}");
    assert_eq!(both["duplicates"]["count"], 1, "{both}");

    // Two scans of one product sent with different keys: both are stored.
    let scan = line("900002", 1, None);
    for key in ["till-7-scan-1", "till-7-scan-2"] {
        let (status, a, replayed) = post(&server, DEMO_KEY, Some(key), &scan, "");
        assert_eq!(
            (status, &a["accepted"], replayed),
            (200, &1.into(), false),
            "{a}"
        );
    }
    // The same key again: the first answer again, nothing written.
    let (status, first, _) = post(&server, DEMO_KEY, Some("till-7-scan-3"), &scan, "");
    assert_eq!(status, 200);
    let (status, again, replayed) = post(&server, DEMO_KEY, Some("till-7-scan-3"), &scan, "");
    assert_eq!((status, replayed), (200, true));
    assert_eq!(again, first);
    // The same key with another body: 422, nothing written.
    let (status, other, _) = post(
        &server,
        DEMO_KEY,
        Some("till-7-scan-3"),
        &line("900002", 2, None),
        "",
    );
    assert_eq!(status, 422, "{other}");
    assert_eq!(other["error"], "idempotency_key_reused", "{other}");
    // A key is scoped per store: another store's same key is its own request.
    let (status, leeds, replayed) = post(
        &server,
        LEEDS_KEY,
        Some("till-7-scan-3"),
        &line("900003", 1, None),
        "",
    );
    assert_eq!(
        (status, &leeds["accepted"], replayed),
        (200, &1.into(), false),
        "{leeds}"
    );

    server.wait_caught_up(Duration::from_secs(30));
    let demo = |n: usize| vec![(1, "demo".to_owned()); n];
    assert_eq!(sink_lines(&server, "900001"), [demo(2), demo(2), demo(2)]);
    assert_eq!(sink_lines(&server, "900002"), [demo(3), demo(3), demo(3)]);

    // Keys survive a restart.
    let mut server = server;
    server.terminate();
    let server = Server::start(&server.data_dir.clone(), 0, STORES);
    let (status, after, replayed) = post(&server, DEMO_KEY, Some("till-7-scan-3"), &scan, "");
    assert_eq!((status, replayed), (200, true));
    assert_eq!(after, first);
}

#[test]
fn a_line_number_belongs_to_its_first_content_and_its_first_store() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), 0, STORES);

    let (status, a, _) = post(&server, DEMO_KEY, None, &line("900010", 6, Some(1)), "");
    assert_eq!((status, &a["accepted"]), (200, &1.into()), "{a}");
    // The same line number again, same content: a repeat.
    let (status, a, _) = post(&server, DEMO_KEY, None, &line("900010", 6, Some(1)), "");
    assert_eq!(
        (status, &a["accepted"], &a["duplicates"]["count"]),
        (200, &0.into(), &1.into()),
        "{a}"
    );

    // Other content under the same number: 409, naming the invoice, the line and what differs.
    let (status, c, _) = post(&server, DEMO_KEY, None, &line("900010", 4, Some(1)), "");
    assert_eq!(status, 409, "{c}");
    let reason = c["rejected"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("invoice 900010 line 1") && reason.contains("Quantity: 6 -> 4"),
        "{reason}"
    );
    // Mixed with a new line and not atomic: the new line is accepted, the conflict rejected.
    let body = format!(
        "[{},{}]",
        line("900010", 4, Some(1)),
        line("900010", 3, Some(2))
    );
    let (status, m, _) = post(&server, DEMO_KEY, None, &body, "");
    assert_eq!((status, &m["accepted"]), (200, &1.into()), "{m}");
    assert_eq!(m["rejected"][0]["index"], 0, "{m}");
    assert_eq!(m["rejected"][0]["field"], "LineNo", "{m}");
    // Atomic: nothing is written.
    let body = format!(
        "[{},{}]",
        line("900010", 4, Some(1)),
        line("900010", 9, Some(3))
    );
    let (status, _, _) = post(&server, DEMO_KEY, None, &body, "?atomic=true");
    assert_eq!(status, 409);
    // The same number twice in one request with other content: one line, one conflict.
    let body = format!(
        "[{},{}]",
        line("900011", 5, Some(1)),
        line("900011", 7, Some(1))
    );
    let (status, t, _) = post(&server, DEMO_KEY, None, &body, "");
    assert_eq!((status, &t["accepted"]), (200, &1.into()), "{t}");
    assert_eq!(t["rejected"][0]["index"], 1, "{t}");

    // Another store with the same invoice and line numbers: refused, the first store's line kept.
    let (status, l, _) = post(&server, LEEDS_KEY, None, &line("900010", 6, Some(1)), "");
    assert_eq!(status, 409, "{l}");
    assert!(
        l["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("store: demo -> leeds"),
        "{l}"
    );

    server.wait_caught_up(Duration::from_secs(30));
    let want = vec![(3, "demo".to_owned()), (6, "demo".to_owned())];
    assert_eq!(
        sink_lines(&server, "900010"),
        [want.clone(), want.clone(), want]
    );
    let want = vec![(5, "demo".to_owned())];
    assert_eq!(
        sink_lines(&server, "900011"),
        [want.clone(), want.clone(), want]
    );
}

/// A pandas-style client: every row of an export posted alone as `df.iloc[i].to_json()` would
/// write it, with an `Idempotency-Key` per row made of the file name and the row index, each row
/// sent twice (a retry). Exact duplicate rows of the export land as lines of their own.
#[test]
fn a_row_by_row_client_with_a_key_per_row_lands_an_export_with_duplicate_rows_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("rows.csv");
    shuffled_export_with_duplicates(&file, 120);
    let expected = expected_per_invoice(&file);
    let server = Server::start(&tmp.path().join("data"), 0, "");
    let script = r#"
import csv, json, sys, urllib.request
url, key, path = sys.argv[1:4]
name = path.rsplit('/', 1)[-1]
with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
for i, row in enumerate(rows):
    # What pandas' df.iloc[i].to_json() gives: numbers as numbers, CustomerID as a float.
    doc = dict(row)
    doc['Quantity'] = int(row['Quantity'])
    doc['UnitPrice'] = float(row['UnitPrice'])
    doc['CustomerID'] = float(row['CustomerID']) if row['CustomerID'] else None
    body = json.dumps(doc).encode()
    for attempt in range(2):
        req = urllib.request.Request(url, data=body, method='POST', headers={
            'Authorization': 'Bearer ' + key, 'Content-Type': 'application/json',
            'Idempotency-Key': '%s:%d' % (name, i)})
        with urllib.request.urlopen(req) as resp:
            answer = json.load(resp)
        assert answer['accepted'] == 1, answer
print(len(rows))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(server.url("/v1/invoices"))
        .arg(DEMO_KEY)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_caught_up(Duration::from_secs(30));
    assert_every_sink_per_invoice(&server, &expected);
}
