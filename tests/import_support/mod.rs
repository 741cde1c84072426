//! Shared by the import tests: expected figures computed without shopstream's parser, and reads
//! of the warehouse file.

#![allow(dead_code)]

use rusqlite::Connection;
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Rows and revenue of a CSV export, read with the `csv` crate and `Decimal` on the raw fields:
/// a row counts when it has the header's number of fields and its quantity and price read as
/// numbers (the damaged export rows lose a field). Fields are decoded as UTF-8 or else Latin-1.
pub fn expected(path: &Path) -> (u64, Decimal) {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(path)
        .unwrap();
    let header = reader.byte_headers().unwrap().clone();
    let column = |name: &str| header.iter().position(|h| h == name.as_bytes()).unwrap();
    let (q, p, width) = (column("Quantity"), column("UnitPrice"), header.len());
    let text = |b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => b.iter().map(|&c| char::from(c)).collect(),
    };
    let (mut rows, mut revenue) = (0, Decimal::ZERO);
    for record in reader.byte_records() {
        let record = record.unwrap();
        if record.len() != width {
            continue;
        }
        let quantity = Decimal::from_str(&text(&record[q])).unwrap();
        let price = Decimal::from_str(&text(&record[p])).unwrap();
        rows += 1;
        revenue += quantity * price;
    }
    (rows, revenue)
}

/// Lines in `sales` and the exact sum of their totals.
pub fn sales(warehouse: &Path) -> (u64, Decimal) {
    let conn = Connection::open(warehouse).unwrap();
    let (n, micros): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(line_total_micros), 0) FROM sales",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    (n as u64, Decimal::new(micros, 6).normalize())
}

/// Ledger rows of the warehouse file, of loads that finished (a load in progress has its row,
/// its change token prefixed `unfinished:`).
pub fn ledger_rows(warehouse: &Path) -> u64 {
    let conn = Connection::open(warehouse).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM import_ledger WHERE change_token NOT LIKE 'unfinished:%'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap_or(0) as u64
}

/// `path` gzip-compressed to `to`.
pub fn gzip(path: &Path, to: &Path) {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(to).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&std::fs::read(path).unwrap()).unwrap();
    gz.finish().unwrap();
}
