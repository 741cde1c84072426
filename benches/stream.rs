//! Append throughput of the embedded stream: `cargo bench --bench stream`.
//!
//! For 1, 8 and 64 concurrent putters, each `put` carrying `RECORDS_PER_PUT` records of 3-6 KB
//! (the size of a `LineBatch` of ~20 lines), prints the median of 3 runs in records/s, lines/s
//! (20 lines a record) and MB/s, next to the disk's raw fsync rate, which bounds the commits per
//! second of a durable log. Environment: `BENCH_RECORDS` (records per run, default 20000),
//! `BENCH_DIR` (folder for the files, default the system temp folder).

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use shopstream::stream::embedded::EmbeddedStream;
use shopstream::stream::{PutRecord, Stream, StreamError};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RECORDS_PER_PUT: usize = 4;
const LINES_PER_RECORD: f64 = 20.0;
const RUNS: usize = 3;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(PathBuf::from(dir)).expect("BENCH_DIR is writable"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

/// Writes 4 KiB and fsyncs it, as fast as the disk allows, for one second.
fn fsyncs_per_second() -> f64 {
    let dir = bench_dir();
    let mut file = std::fs::File::create(dir.path().join("fsync-probe")).expect("probe file");
    let block = [7u8; 4096];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(1) {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fsync");
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// JSON-like payloads of 3-6 KB with invoice-number keys, made once so runs compare.
fn payloads() -> Vec<PutRecord> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    (0..1024)
        .map(|i| {
            let size = rng.gen_range(3_000..6_000);
            let mut data = String::with_capacity(size + 200);
            data.push_str(r#"{"store_id":"demo","lines":["#);
            while data.len() < size {
                data.push_str(&format!(
                    r#"{{"InvoiceNo":"{}","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":{},"InvoiceDate":"2010-12-01T08:26:00","UnitPrice":"2.55","CustomerID":17850,"Country":"United Kingdom"}},"#,
                    536_365 + i,
                    rng.gen_range(1..50)
                ));
            }
            data.push_str("]}");
            PutRecord {
                partition_key: (536_365 + i).to_string(),
                data: Bytes::from(data),
                dedup_key: None,
            }
        })
        .collect()
}

struct Run {
    records_per_s: f64,
    mb_per_s: f64,
    saturated: usize,
}

async fn run(putters: usize, total_records: usize, payloads: Arc<Vec<PutRecord>>) -> Run {
    let dir = bench_dir();
    let stream = EmbeddedStream::open(
        &dir.path().join("stream.sqlite"),
        4,
        Duration::from_secs(86_400),
        1024,
    )
    .expect("open the stream");
    let puts_left = Arc::new(AtomicUsize::new(total_records / RECORDS_PER_PUT));
    let started = Instant::now();
    let tasks: Vec<_> = (0..putters)
        .map(|p| {
            let (stream, payloads, puts_left) =
                (stream.clone(), payloads.clone(), puts_left.clone());
            tokio::spawn(async move {
                let (mut bytes, mut records, mut saturated) = (0usize, 0usize, 0usize);
                let mut next = p * 97;
                while puts_left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let batch: Vec<_> = (0..RECORDS_PER_PUT)
                        .map(|i| payloads[(next + i) % payloads.len()].clone())
                        .collect();
                    next += RECORDS_PER_PUT;
                    let size: usize = batch.iter().map(|r| r.data.len()).sum();
                    loop {
                        match stream.put(batch.clone()).await {
                            Ok(_) => break,
                            Err(StreamError::Saturated(_)) => {
                                saturated += 1;
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err(e) => panic!("put failed: {e}"),
                        }
                    }
                    bytes += size;
                    records += RECORDS_PER_PUT;
                }
                (bytes, records, saturated)
            })
        })
        .collect();
    let (mut bytes, mut records, mut saturated) = (0, 0, 0);
    for task in tasks {
        let (b, r, s) = task.await.expect("putter");
        bytes += b;
        records += r;
        saturated += s;
    }
    let secs = started.elapsed().as_secs_f64();
    Run {
        records_per_s: records as f64 / secs,
        mb_per_s: bytes as f64 / secs / 1e6,
        saturated,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let total_records: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let payloads = Arc::new(payloads());
    let mean_size =
        payloads.iter().map(|r| r.data.len()).sum::<usize>() as f64 / payloads.len() as f64;

    println!("embedded stream append benchmark");
    println!(
        "  {total_records} records a run, {RECORDS_PER_PUT} records a put, mean record {:.0} bytes, 4 shards, median of {RUNS} runs",
        mean_size
    );
    println!(
        "  disk ceiling: {:.0} fsyncs/s (4 KiB write + fdatasync)",
        fsyncs_per_second()
    );
    println!("  putters   records/s     lines/s      MB/s   saturated retries");
    for putters in [1, 8, 64] {
        let runs: Vec<Run> = (0..RUNS)
            .map(|_| runtime.block_on(run(putters, total_records, payloads.clone())))
            .collect();
        let records_per_s = median(runs.iter().map(|r| r.records_per_s).collect());
        let mb_per_s = median(runs.iter().map(|r| r.mb_per_s).collect());
        let saturated: usize = runs.iter().map(|r| r.saturated).sum();
        println!(
            "  {putters:>7} {records_per_s:>11.0} {:>11.0} {mb_per_s:>9.1} {saturated:>19}",
            records_per_s * LINES_PER_RECORD
        );
    }
}
