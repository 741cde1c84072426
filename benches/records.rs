//! What a stream record costs a line: encoding (on ingest's HTTP workers), decoding (on every
//! sink) and bytes (written, synced and copied back by the embedded log), for each format.
//!
//! ```text
//! cargo bench --bench records -- data.csv       (e.g. bench-out/retail-541909.csv)
//! SHOPSTREAM_BENCH_CSV=data.csv cargo bench --bench records
//! ```
//!
//! Without a file it uses the 873-line sample in `tests/fixtures`. The lines are grouped into
//! records as ingest groups a request's lines: 500 lines a request, a record per invoice.
//! Prints the median of 7 runs in nanoseconds a line, and bytes a line.

use shopstream::model::csv::parse_csv;
use shopstream::model::{InvoiceLine, ParseOptions};
use shopstream::stream::record::{decode, encode_indexed, RecordFormat};
use std::hint::black_box;
use std::time::Instant;

const RUNS: usize = 7;
const REQUEST_LINES: usize = 500;

/// The median over `RUNS` runs of `f`'s time, in nanoseconds a line of `lines`.
fn median_ns(lines: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e9 / lines as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[RUNS / 2]
}

fn main() {
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .or_else(|| std::env::var("SHOPSTREAM_BENCH_CSV").ok())
        .unwrap_or_else(|| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/online-retail-sample-873-iso.csv"
            )
            .to_owned()
        });
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let parsed = parse_csv(&body, &ParseOptions::default()).expect("a CSV of invoice lines");
    let lines: Vec<InvoiceLine> = parsed.lines;
    let requests: Vec<&[InvoiceLine]> = lines.chunks(REQUEST_LINES).collect();
    println!(
        "{} lines from {path}, {REQUEST_LINES} a request",
        lines.len()
    );
    println!(
        "{:<8} {:>12} {:>12} {:>12}",
        "format", "encode", "decode", "bytes"
    );
    for (name, format) in [
        ("binary", RecordFormat::Binary),
        ("json", RecordFormat::Json),
    ] {
        let encode = || -> Vec<Vec<u8>> {
            requests
                .iter()
                .flat_map(|request| encode_indexed(format, "store-1", request).expect("encodes"))
                .map(|(record, _)| record.data.to_vec())
                .collect()
        };
        let records = encode();
        let bytes: usize = records.iter().map(Vec::len).sum();
        let encode_ns = median_ns(lines.len(), || {
            black_box(encode());
        });
        let decode_ns = median_ns(lines.len(), || {
            for record in &records {
                black_box(decode(record).expect("decodes"));
            }
        });
        println!(
            "{name:<8} {encode_ns:>9.0} ns {decode_ns:>9.0} ns {:>9.1} B   (a line)",
            bytes as f64 / lines.len() as f64
        );
    }
}
