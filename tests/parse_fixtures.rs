//! Every fixture parses to the lines it holds; the expected figures were computed independently
//! with Python's `csv` and `decimal` modules (see `tests/fixtures/README.md`).

use rust_decimal::Decimal;
use shopstream::model::csv::{parse_csv, CsvLines};
use shopstream::model::json::parse_json;
use shopstream::model::{InvoiceLine, LinePosition, ParseOptions, Parsed};
use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

struct Expected {
    lines: usize,
    cancellations: usize,
    missing_customers: usize,
    invoices: usize,
    revenue: &'static str,
}

fn assert_figures(lines: &[InvoiceLine], want: &Expected) {
    assert_eq!(lines.len(), want.lines);
    assert_eq!(
        lines.iter().filter(|l| l.is_cancellation()).count(),
        want.cancellations
    );
    assert_eq!(
        lines.iter().filter(|l| l.customer_id.is_none()).count(),
        want.missing_customers
    );
    let invoices: HashSet<&str> = lines.iter().map(|l| l.invoice_no.as_str()).collect();
    assert_eq!(invoices.len(), want.invoices);
    let revenue: Decimal = lines.iter().map(InvoiceLine::line_total).sum();
    assert_eq!(revenue, Decimal::from_str(want.revenue).expect("decimal"));
    let ids: HashSet<&str> = lines.iter().map(|l| l.line_id.as_str()).collect();
    assert_eq!(ids.len(), lines.len(), "every line has its own id");
}

const SAMPLE_182: Expected = Expected {
    lines: 179,
    cancellations: 1,
    missing_customers: 0,
    invoices: 23,
    revenue: "7753.62",
};

/// The rows of the 182 sample that lost a comma in the export.
const DAMAGED_ROWS: [u64; 4] = [121, 172, 175, 179];

fn assert_damaged_rows_rejected(parsed: &Parsed) {
    let rows: Vec<LinePosition> = parsed.errors.iter().map(|e| e.position).collect();
    assert_eq!(rows, DAMAGED_ROWS.map(LinePosition::Row).to_vec());
    for e in &parsed.errors {
        assert!(
            e.reason.starts_with("has 7 fields where the header has 8"),
            "{e}"
        );
    }
}

#[test]
fn sample_182_dataset_export() {
    let parsed = parse_csv(
        &fixture("online-retail-sample-182.csv"),
        &ParseOptions::default(),
    )
    .expect("parses");
    assert_damaged_rows_rejected(&parsed);
    assert_figures(&parsed.lines, &SAMPLE_182);
    let first = &parsed.lines[0];
    assert_eq!(first.invoice_date.to_string(), "2010-12-01 08:26:00");
    assert_eq!(first.customer_id, Some(17850));
    // The file has no trailing newline: its last row is still read.
    let last = parsed.lines.last().expect("lines");
    assert_eq!(
        (last.stock_code.as_str(), last.customer_id),
        ("21754", Some(16250))
    );
}

#[test]
fn sample_873_pandas_iso_export() {
    let parsed = parse_csv(
        &fixture("online-retail-sample-873-iso.csv"),
        &ParseOptions::default(),
    )
    .expect("parses");
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_figures(
        &parsed.lines,
        &Expected {
            lines: 873,
            cancellations: 9,
            missing_customers: 1,
            invoices: 59,
            revenue: "22770.70",
        },
    );
    let no_description = parsed
        .lines
        .iter()
        .filter(|l| l.description.is_none())
        .count();
    assert_eq!(no_description, 1);
    assert!(parsed
        .lines
        .iter()
        .any(|l| l.description.as_deref() == Some("RECORD FRAME 7\" SINGLE SIZE")));
}

#[test]
fn utf8_and_latin1_variants_give_the_same_lines() {
    let opts = ParseOptions::default();
    let utf8 =
        parse_csv(&fixture("online-retail-sample-182-accents-utf8.csv"), &opts).expect("utf-8");
    let latin1 = parse_csv(
        &fixture("online-retail-sample-182-accents-latin1.csv"),
        &opts,
    )
    .expect("latin-1");
    assert_damaged_rows_rejected(&utf8);
    assert_damaged_rows_rejected(&latin1);
    assert_eq!(utf8.lines, latin1.lines);
    assert_eq!(
        utf8.lines[0].description.as_deref(),
        Some("CAFÉ HEART, £2.55 T-LIGHT HOLDER")
    );
    assert_figures(&utf8.lines, &SAMPLE_182);
}

#[test]
fn streaming_gives_the_same_lines_and_the_rejected_rows() {
    for name in [
        "online-retail-sample-182.csv",
        "online-retail-sample-873-iso.csv",
    ] {
        let body = fixture(name);
        let whole = parse_csv(&body, &ParseOptions::default()).expect("parses");
        let mut lines = Vec::new();
        let mut rejected = Vec::new();
        for row in CsvLines::new(body.as_slice(), &ParseOptions::default()).expect("header") {
            match row {
                Ok(line) => lines.push(line),
                Err(r) => rejected.push(r),
            }
        }
        assert_eq!(lines, whole.lines, "{name}");
        assert_eq!(
            rejected.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
            whole.errors
        );
        if let Some(r) = rejected.first() {
            assert_eq!(
                r.raw,
                "536381,21175,GIN + TONIC DIET METAL   2,12/1/10 9:41,2.1,15311,United Kingdom"
            );
        }
    }
}

/// The 873 rows as a pandas client sends them with `df.iloc[i].to_json()`: numbers unquoted,
/// customer ids as floats, missing values as null, `/` escaped.
#[test]
fn sample_873_as_pandas_ndjson_gives_the_same_lines() {
    let body = fixture("online-retail-sample-873-iso.csv");
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let mut ndjson = String::new();
    for record in reader.records() {
        let r = record.expect("record");
        let text = |s: &str| {
            if s.is_empty() {
                "null".to_owned()
            } else {
                serde_json::to_string(s)
                    .expect("json string")
                    .replace('/', "\\/")
            }
        };
        let number = |s: &str| if s.is_empty() { "null" } else { s }.to_owned();
        ndjson.push_str(&format!(
            "{{\"InvoiceNo\":{},\"StockCode\":{},\"Description\":{},\"Quantity\":{},\"InvoiceDate\":{},\"UnitPrice\":{},\"CustomerID\":{},\"Country\":{}}}\n",
            text(&r[0]),
            text(&r[1]),
            text(&r[2]),
            number(&r[3]),
            text(&r[4]),
            number(&r[5]),
            number(&r[6]),
            text(&r[7]),
        ));
    }
    let from_json = parse_json(ndjson.as_bytes(), &ParseOptions::default()).expect("ndjson");
    let from_csv = parse_csv(&body, &ParseOptions::default()).expect("csv");
    assert!(from_json.errors.is_empty(), "{:?}", from_json.errors);
    assert_eq!(from_json.lines, from_csv.lines);
}
