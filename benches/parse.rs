//! Throughput of the parsers against parse-and-discard baselines.
//!
//! ```text
//! cargo bench --bench parse -- data.csv data.ndjson
//! SHOPSTREAM_BENCH_CSV=data.csv SHOPSTREAM_BENCH_NDJSON=data.ndjson cargo bench --bench parse
//! ```
//!
//! Prints the median of 5 runs in lines per second for `parse_csv`, `parse_json` on NDJSON and
//! `CsvLines` streaming from the file, beside the `csv` crate's `ByteRecord` iteration and
//! `serde_json` into `IgnoredAny` per line, which only tokenize: the ratio says what our checks,
//! decimals, dates and line ids cost on top.

use serde::de::IgnoredAny;
use shopstream::model::csv::{parse_csv, CsvLines};
use shopstream::model::json::parse_json;
use shopstream::model::ParseOptions;
use std::hint::black_box;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const RUNS: usize = 5;

/// Runs `f` (which returns how many lines it saw) `RUNS` times; the median lines per second.
fn median_rate(mut f: impl FnMut() -> usize) -> (usize, f64) {
    let mut rates: Vec<f64> = Vec::with_capacity(RUNS);
    let mut lines = 0;
    for _ in 0..RUNS {
        let start = Instant::now();
        lines = black_box(f());
        rates.push(lines as f64 / start.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    (lines, rates[RUNS / 2])
}

fn report(name: &str, (lines, rate): (usize, f64), baseline: Option<f64>) {
    let ratio = baseline.map_or(String::new(), |b| {
        format!("  ({:.2}x the baseline's time)", b / rate)
    });
    println!("{name:<40} {lines:>9} lines  {rate:>12.0} lines/s{ratio}");
}

fn paths() -> Option<(PathBuf, PathBuf)> {
    // `cargo bench` passes `--bench`; file paths are the other arguments.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let csv = args
        .first()
        .cloned()
        .or_else(|| std::env::var("SHOPSTREAM_BENCH_CSV").ok())?;
    let ndjson = args
        .get(1)
        .cloned()
        .or_else(|| std::env::var("SHOPSTREAM_BENCH_NDJSON").ok())?;
    Some((csv.into(), ndjson.into()))
}

fn main() -> ExitCode {
    let Some((csv_path, ndjson_path)) = paths() else {
        eprintln!("usage: cargo bench --bench parse -- FILE.csv FILE.ndjson (or set SHOPSTREAM_BENCH_CSV and SHOPSTREAM_BENCH_NDJSON)");
        return ExitCode::from(2);
    };
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| eprintln!("cannot read {}: {e}", p.display()));
    let (Ok(csv_body), Ok(ndjson_body)) = (read(&csv_path), read(&ndjson_path)) else {
        return ExitCode::FAILURE;
    };
    let opts = ParseOptions::default();
    println!(
        "{} ({} bytes), {} ({} bytes); median of {RUNS} runs",
        csv_path.display(),
        csv_body.len(),
        ndjson_path.display(),
        ndjson_body.len()
    );

    let csv_baseline = median_rate(|| {
        let mut reader = csv::ReaderBuilder::new().from_reader(csv_body.as_slice());
        let mut record = csv::ByteRecord::new();
        let mut n = 0;
        while reader.read_byte_record(&mut record).unwrap_or(false) {
            n += 1;
        }
        n
    });
    report("baseline: csv ByteRecord iteration", csv_baseline, None);
    let parsed = median_rate(|| match parse_csv(&csv_body, &opts) {
        Ok(p) => p.lines.len() + p.errors.len(),
        Err(e) => panic!("the CSV file does not parse: {e}"),
    });
    report("parse_csv", parsed, Some(csv_baseline.1));
    let streamed = median_rate(|| {
        let file = std::fs::File::open(&csv_path).expect("bench file opens");
        CsvLines::new(file, &opts).expect("header").count()
    });
    report(
        "CsvLines streaming from the file",
        streamed,
        Some(csv_baseline.1),
    );

    let json_baseline = median_rate(|| {
        ndjson_body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter(|l| serde_json::from_slice::<IgnoredAny>(l).is_ok())
            .count()
    });
    report(
        "baseline: serde_json IgnoredAny per line",
        json_baseline,
        None,
    );
    let parsed = median_rate(|| match parse_json(&ndjson_body, &opts) {
        Ok(p) => p.lines.len() + p.errors.len(),
        Err(e) => panic!("the NDJSON file does not parse: {e}"),
    });
    report("parse_json (NDJSON)", parsed, Some(json_baseline.1));
    ExitCode::SUCCESS
}
