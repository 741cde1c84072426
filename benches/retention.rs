//! Append latency of the embedded stream while retention runs: `cargo bench --bench retention`.
//!
//! Fills a 4-shard stream with `BENCH_RETAINED_MB` (default 2048) MB of 3-6 KB records, then
//! measures the latency of single appends (one putter, one record a put, as fast as they are
//! answered) for `BENCH_SECONDS` (default 20) s each:
//!
//! 1. without retention running (the baseline);
//! 2. with `release` called on every shard in a loop while nothing is old enough to go (the steady
//!    state: the stream keeps `stream.retention` of records, and the pipeline asks every 10 s);
//! 3. after reopening with a retention of 0, with `release` deleting the older half of every
//!    shard (about `BENCH_RETAINED_MB` / 2 MB) while the appends run.
//!
//! Prints p50, p99 and max of each, and the p99 ratios to the baseline. `BENCH_DIR` picks the
//! folder (default the system temp folder; it needs twice `BENCH_RETAINED_MB` free).

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use shopstream::stream::embedded::{shard_id, EmbeddedStream};
use shopstream::stream::{PutRecord, SequenceNumber, Stream, StreamError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SHARDS: u32 = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(PathBuf::from(dir)).expect("BENCH_DIR is writable"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn payloads() -> Vec<PutRecord> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    (0..1024)
        .map(|i| {
            let size = rng.gen_range(3_000..6_000);
            let mut data = Vec::with_capacity(size);
            while data.len() < size {
                data.extend_from_slice(
                    format!(
                        "{{\"InvoiceNo\":\"{}\",\"Quantity\":{}}},",
                        536_365 + i,
                        rng.gen_range(1..50)
                    )
                    .as_bytes(),
                );
            }
            PutRecord {
                partition_key: (536_365 + i).to_string(),
                data: Bytes::from(data),
                dedup_key: None,
            }
        })
        .collect()
}

fn open(path: &Path, retention: Duration) -> EmbeddedStream {
    EmbeddedStream::open(path, SHARDS, retention, 1024).expect("open the stream")
}

/// Puts `batch`, waiting out a saturated queue; an append that fails otherwise (the write lock
/// not had within the busy timeout) is counted, not retried.
async fn put_retrying(stream: &EmbeddedStream, batch: Vec<PutRecord>) -> Result<(), StreamError> {
    loop {
        match stream.put(batch.clone()).await {
            Ok(_) => return Ok(()),
            Err(StreamError::Saturated(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
            Err(e) => return Err(e),
        }
    }
}

/// Writes about `mb` MB from 8 putters, 16 records a put.
async fn fill(stream: &EmbeddedStream, payloads: &Arc<Vec<PutRecord>>, mb: u64) {
    let bytes = Arc::new(AtomicU64::new(0));
    let target = mb * 1_000_000;
    let tasks: Vec<_> = (0..8)
        .map(|p| {
            let (stream, payloads, bytes) = (stream.clone(), payloads.clone(), bytes.clone());
            tokio::spawn(async move {
                let mut next = p * 131;
                while bytes.load(Ordering::Relaxed) < target {
                    let batch: Vec<_> = (0..16)
                        .map(|i| payloads[(next + i) % payloads.len()].clone())
                        .collect();
                    next += 16;
                    let size: u64 = batch.iter().map(|r| r.data.len() as u64).sum();
                    put_retrying(&stream, batch)
                        .await
                        .expect("put while filling");
                    bytes.fetch_add(size, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("filler");
    }
}

struct Latencies {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    appends: usize,
    /// Appends that failed (their latency is counted too).
    failed: usize,
}

/// Single appends, one at a time, for `seconds`; while `retention` (when given) runs `release`
/// on every shard up to `upto` in a loop. Returns the latencies and the records released.
async fn measure(
    stream: &EmbeddedStream,
    payloads: &Arc<Vec<PutRecord>>,
    seconds: u64,
    retention: Option<Vec<SequenceNumber>>,
) -> (Latencies, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let released = Arc::new(AtomicU64::new(0));
    let first_pass_ms = Arc::new(AtomicU64::new(0));
    let releaser = retention.map(|upto| {
        let (stream, stop, released) = (stream.clone(), stop.clone(), released.clone());
        let first_pass_ms = first_pass_ms.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                for (shard, upto) in upto.iter().enumerate() {
                    let n = stream
                        .release(&shard_id(shard as u32), upto)
                        .await
                        .expect("release");
                    released.fetch_add(n, Ordering::Relaxed);
                }
                if first_pass_ms.load(Ordering::Relaxed) == 0 {
                    first_pass_ms
                        .store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                }
                // The pipeline releases every shard once per shard refresh (10 s by
                // default); a pass a second keeps retention running for most of the phase.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    });
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    let started = Instant::now();
    let mut next = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let record = payloads[next % payloads.len()].clone();
        next += 1;
        let t = Instant::now();
        if let Err(e) = put_retrying(stream, vec![record]).await {
            failed += 1;
            first_error.get_or_insert(e.to_string());
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(r) = releaser {
        r.await.expect("releaser");
    }
    if released.load(Ordering::Relaxed) > 0 {
        let ms = first_pass_ms.load(Ordering::Relaxed);
        println!(
            "  (the first retention pass over every shard took {:.1} s)",
            ms as f64 / 1000.0
        );
    }
    if let Some(e) = first_error {
        println!("  ({failed} appends failed; the first: {e})");
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (
        Latencies {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: *latencies.last().unwrap(),
            appends: latencies.len(),
            failed,
        },
        released.load(Ordering::Relaxed),
    )
}

fn print(name: &str, l: &Latencies, base: Option<&Latencies>, released: u64) {
    let ratio = base.map_or(String::new(), |b| format!("{:.2}x", l.p99_ms / b.p99_ms));
    println!(
        "  {name:<44} {:>8} {:>7} {:>9.2} {:>9.2} {:>9.1} {:>10} {:>10}",
        l.appends, l.failed, l.p50_ms, l.p99_ms, l.max_ms, ratio, released
    );
}

fn main() {
    let mb = env_or("BENCH_RETAINED_MB", 2048);
    let seconds = env_or("BENCH_SECONDS", 20);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let payloads = Arc::new(payloads());
    let dir = bench_dir();
    let path = dir.path().join("stream.sqlite");

    runtime.block_on(async {
        let stream = open(&path, Duration::from_secs(3_600));
        let started = Instant::now();
        fill(&stream, &payloads, mb).await;
        let file_mb = std::fs::metadata(&path).map_or(0, |m| m.len()) / 1_000_000;
        println!(
            "embedded stream: append latency while retention runs; {mb} MB of records retained (file {file_mb} MB, filled in {:.0} s), {SHARDS} shards, {seconds} s a phase",
            started.elapsed().as_secs_f64()
        );
        println!(
            "  {:<44} {:>8} {:>7} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "phase", "appends", "failed", "p50 ms", "p99 ms", "max ms", "p99/base", "released"
        );
        let mut heads = Vec::new();
        for shard in 0..SHARDS {
            heads.push(stream.latest(&shard_id(shard)).await.unwrap().expect("records"));
        }
        let (base, _) = measure(&stream, &payloads, seconds, None).await;
        print("no retention running (baseline)", &base, None, 0);
        let (idle, released) = measure(&stream, &payloads, seconds, Some(heads.clone())).await;
        print("release looping, nothing old enough", &idle, Some(&base), released);
        drop(stream);

        // Reopened with a retention of 0: everything up to the checkpoints may go.
        let stream = open(&path, Duration::ZERO);
        let halves: Vec<SequenceNumber> = heads
            .iter()
            .map(|h| SequenceNumber::from(h.as_u64().unwrap() / 2))
            .collect();
        let (deleting, released) = measure(&stream, &payloads, seconds, Some(halves)).await;
        print("release deleting the older half", &deleting, Some(&base), released);
    });
}
