//! The store simulator: sends a CSV export to a running shopstream as stores would, invoice by
//! invoice, from several concurrent stores, and measures what it saw.
//!
//! Rows are sent as they are in the file (CSV, in the file's own encoding and delimiter): the
//! server is the one that validates, so a file with bad rows shows exactly what stores would be
//! told. Lines of one invoice travel in one request, unless the invoice alone has more lines than the
//! batch size: then it is cut into pieces of at most that many lines (its numbered lines keep
//! their ids, so the pieces are stored exactly as one request would be), so no request grows past
//! twice the batch size and the server's request limits.
//!
//! Every row gets a `LineNo` of its own (unless the file has that column): its position among the
//! rows of its invoice, in file order, from 1, counted per invoice (memory grows with invoices,
//! not rows). So any export, grouped by invoice or not, replays exactly, exact duplicate rows
//! included, and a second replay of the same file adds nothing (docs/line-identity.md, rule 4).

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::model::DateOrder;

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Base URL of shopstream, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// A store's API key.
    pub key: String,
    /// Concurrent stores (connections).
    pub stores: usize,
    /// Lines per request (whole invoices are kept together).
    pub batch: usize,
    /// Overall lines per second; `None` sends as fast as the server acknowledges.
    pub rate: Option<f64>,
    pub date_order: DateOrder,
    /// Attempts per request on connection errors and 5xx before giving up on it.
    pub max_attempts: u32,
    /// Ask shopstream to validate only (`?dry_run=true`): nothing is written. Measures the HTTP and
    /// parsing ceiling with the same payloads.
    pub dry_run: bool,
}

/// What a replay saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    pub lines_sent: u64,
    /// Lines the server wrote now (new to it).
    pub lines_accepted: u64,
    /// Lines the server already held (a second replay of a file): written nowhere again.
    pub lines_duplicate: u64,
    pub lines_rejected: u64,
    /// Lines of requests that failed for good (connection errors, 4xx other than per-line
    /// rejections); they were not acknowledged.
    pub lines_failed: u64,
    pub requests: u64,
    pub retries: u64,
    /// 503 answers (backpressure) that were retried after their Retry-After.
    pub busy_answers: u64,
    pub seconds: f64,
    /// Lines acknowledged (accepted or already stored) per second.
    pub lines_per_second: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// The first few error messages, for the person running the replay.
    pub errors: Vec<String>,
}

/// One request's worth of rows: whole invoices.
struct Chunk {
    body: Bytes,
    lines: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read the CSV file: {0}")]
    Csv(#[from] csv::Error),
    #[error("cannot build a request body: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the CSV header has no InvoiceNo column (found {0:?}); the first row must name the columns"
    )]
    NoInvoiceColumn(Vec<String>),
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// Sends every row of `input` (a CSV file's bytes, as a reader) and waits for every answer.
/// `on_progress` is called with (bytes read, lines acknowledged) as the replay goes.
///
/// # Errors
/// When the CSV cannot be read at all or has no InvoiceNo column. Failed requests do not stop a
/// replay; they are counted in the summary.
pub async fn replay<R: Read + Send + 'static>(
    input: R,
    opts: ReplayOptions,
    on_progress: Arc<dyn Fn(u64, u64) + Send + Sync>,
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let (tx, rx) = mpsc::channel::<Chunk>(opts.stores * 2);
    let bytes_read = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader_bytes = bytes_read.clone();
    let batch = opts.batch.max(1);
    let chunker = tokio::task::spawn_blocking(move || chunk_csv(input, batch, tx, &reader_bytes));

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.stores)
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| ReplayError::Client(e.to_string()))?;
    let shared = Arc::new(Shared {
        summary: Mutex::new(ReplaySummary::default()),
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")),
        next_slot: Mutex::new(Instant::now()),
    });
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let endpoint = format!(
        "{}/v1/invoices?date_order={}{}",
        opts.url.trim_end_matches('/'),
        match opts.date_order {
            DateOrder::Mdy => "mdy",
            DateOrder::Dmy => "dmy",
            DateOrder::Auto => "auto",
        },
        if opts.dry_run { "&dry_run=true" } else { "" }
    );
    let mut stores = Vec::new();
    for _ in 0..opts.stores.max(1) {
        let (client, rx, shared, opts, endpoint, on_progress, bytes_read) = (
            client.clone(),
            rx.clone(),
            shared.clone(),
            opts.clone(),
            endpoint.clone(),
            on_progress.clone(),
            bytes_read.clone(),
        );
        stores.push(tokio::spawn(async move {
            loop {
                let chunk = { rx.lock().await.recv().await };
                let Some(chunk) = chunk else { break };
                send(&client, &endpoint, &opts, &shared, chunk).await;
                let acked = {
                    let s = shared.summary.lock().expect("summary lock");
                    s.lines_accepted + s.lines_duplicate
                };
                on_progress(bytes_read.load(std::sync::atomic::Ordering::Relaxed), acked);
            }
        }));
    }
    let chunked = chunker
        .await
        .map_err(|e| ReplayError::Client(format!("reader task failed: {e}")))?;
    for store in stores {
        let _ = store.await;
    }
    chunked?;
    let mut summary = shared.summary.lock().expect("summary lock").clone();
    let latency = shared.latency.lock().expect("latency lock");
    summary.seconds = started.elapsed().as_secs_f64();
    summary.lines_per_second =
        (summary.lines_accepted + summary.lines_duplicate) as f64 / summary.seconds.max(1e-9);
    if !latency.is_empty() {
        summary.latency_p50_ms = latency.value_at_quantile(0.50) as f64 / 1000.0;
        summary.latency_p99_ms = latency.value_at_quantile(0.99) as f64 / 1000.0;
        summary.latency_max_ms = latency.max() as f64 / 1000.0;
    }
    Ok(summary)
}

struct Shared {
    summary: Mutex<ReplaySummary>,
    /// Microseconds from send to acknowledgement of accepted requests.
    latency: Mutex<Histogram<u64>>,
    /// Rate limiting: the earliest time the next request may start.
    next_slot: Mutex<Instant>,
}

impl Shared {
    fn note_error(&self, message: String) {
        let mut s = self.summary.lock().expect("summary lock");
        if s.errors.len() < 10 {
            s.errors.push(message);
        }
    }
}

#[derive(serde::Deserialize)]
struct Answer {
    #[serde(default)]
    accepted: u64,
    #[serde(default)]
    duplicates: Option<AnswerDuplicates>,
    #[serde(default)]
    rejected: Vec<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(serde::Deserialize)]
struct AnswerDuplicates {
    count: u64,
}

async fn send(
    client: &reqwest::Client,
    endpoint: &str,
    opts: &ReplayOptions,
    shared: &Shared,
    chunk: Chunk,
) {
    if let Some(rate) = opts.rate.filter(|r| *r > 0.0) {
        let wait = {
            let mut next = shared.next_slot.lock().expect("rate lock");
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(chunk.lines as f64 / rate);
            start - now
        };
        tokio::time::sleep(wait).await;
    }
    shared.summary.lock().expect("summary lock").lines_sent += chunk.lines;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let sent_at = Instant::now();
        let result = client
            .post(endpoint)
            .bearer_auth(&opts.key)
            .header(reqwest::header::CONTENT_TYPE, "text/csv")
            .body(chunk.body.clone())
            .send()
            .await;
        {
            shared.summary.lock().expect("summary lock").requests += 1;
        }
        let retry_in = match result {
            Ok(response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let answer: Option<Answer> = response.json().await.ok();
                if status.is_success() || status.as_u16() == 422 {
                    let elapsed = sent_at.elapsed().as_micros() as u64;
                    let (accepted, rejected) = answer
                        .as_ref()
                        .map_or((0, 0), |a| (a.accepted, a.rejected.len() as u64));
                    let duplicate = answer
                        .as_ref()
                        .and_then(|a| a.duplicates.as_ref())
                        .map_or(0, |d| d.count);
                    if status.is_success() {
                        let _ = shared
                            .latency
                            .lock()
                            .expect("latency lock")
                            .record(elapsed.max(1));
                    }
                    let mut s = shared.summary.lock().expect("summary lock");
                    s.lines_accepted += accepted;
                    s.lines_duplicate += duplicate;
                    s.lines_rejected += rejected;
                    return;
                }
                if status.as_u16() == 503 || status.as_u16() == 429 {
                    shared.summary.lock().expect("summary lock").busy_answers += 1;
                    // Backpressure is not a failure: wait as told, however often.
                    attempt = attempt.saturating_sub(1);
                    Duration::from_secs(retry_after.unwrap_or(1))
                } else if status.is_server_error() && attempt < opts.max_attempts {
                    // Other 5xx answers (a proxy's 502 or 504, a 500) may pass, but not forever:
                    // they count against max_attempts like a failed connection.
                    backoff(attempt)
                } else {
                    let message = answer.and_then(|a| a.message).unwrap_or_default();
                    shared.note_error(format!("HTTP {status}: {message}"));
                    shared.summary.lock().expect("summary lock").lines_failed += chunk.lines;
                    return;
                }
            }
            Err(e) => {
                if attempt >= opts.max_attempts {
                    shared.note_error(format!("request failed after {attempt} attempts: {e}"));
                    shared.summary.lock().expect("summary lock").lines_failed += chunk.lines;
                    return;
                }
                backoff(attempt)
            }
        };
        shared.summary.lock().expect("summary lock").retries += 1;
        tokio::time::sleep(retry_in).await;
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((50u64 << attempt.min(7)).min(5_000))
}

/// Reads the CSV and cuts it into request bodies of whole invoices (consecutive rows with the
/// same InvoiceNo), each with the header row, numbering the rows of each invoice (`LineNo`) when
/// the file does not.
fn chunk_csv<R: Read>(
    input: R,
    batch: usize,
    tx: mpsc::Sender<Chunk>,
    bytes_read: &std::sync::atomic::AtomicU64,
) -> Result<(), ReplayError> {
    let mut input = std::io::BufReader::with_capacity(1 << 16, input);
    let delimiter = sniff_delimiter(&mut input)?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(input);
    let mut header = reader.byte_headers()?.clone();
    let column = |names: [&str; 2]| {
        header.iter().position(|h| {
            let h = String::from_utf8_lossy(h)
                .trim()
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase();
            names.contains(&h.as_str())
        })
    };
    let number_lines = column(["lineno", "line_no"]).is_none();
    let invoice_col = column(["invoiceno", "invoice_no"]).ok_or_else(|| {
        ReplayError::NoInvoiceColumn(
            header
                .iter()
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .collect(),
        )
    })?;
    let width = header.len();
    if number_lines {
        header.push_field(b"LineNo");
    }
    // Per invoice, the rows seen so far: the next row's LineNo is this + 1.
    let mut line_nos: std::collections::HashMap<Vec<u8>, u64> = std::collections::HashMap::new();
    let new_writer = || {
        let mut w = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .flexible(true)
            .from_writer(Vec::with_capacity(batch * 100));
        w.write_byte_record(&header).map(|_| w)
    };
    let mut writer = new_writer()?;
    let mut lines = 0u64;
    // Where the current invoice's rows begin in this chunk.
    let mut invoice_from = 0u64;
    let mut current: Vec<u8> = Vec::new();
    let mut record = csv::ByteRecord::new();
    while reader.read_byte_record(&mut record)? {
        let invoice = record.get(invoice_col).unwrap_or_default();
        let new_invoice = invoice != current.as_slice();
        if lines as usize >= batch && (new_invoice || (lines - invoice_from) as usize >= batch) {
            let body = writer.into_inner().map_err(|e| e.into_error())?;
            if tx
                .blocking_send(Chunk {
                    body: Bytes::from(body),
                    lines,
                })
                .is_err()
            {
                return Ok(());
            }
            writer = new_writer()?;
            lines = 0;
            invoice_from = 0;
        }
        if new_invoice {
            current = invoice.to_vec();
            invoice_from = lines;
        }
        if number_lines {
            let n = line_nos.entry(current.clone()).or_insert(0);
            *n += 1;
            let n = *n;
            while record.len() < width {
                record.push_field(b"");
            }
            record.push_field(n.to_string().as_bytes());
        }
        writer.write_byte_record(&record)?;
        lines += 1;
        bytes_read.store(
            record.position().map_or(0, |p| p.byte()),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    if lines > 0 {
        let body = writer.into_inner().map_err(|e| e.into_error())?;
        let _ = tx.blocking_send(Chunk {
            body: Bytes::from(body),
            lines,
        });
    }
    Ok(())
}

/// Comma, semicolon or tab: whichever the header line has most of.
fn sniff_delimiter<R: std::io::BufRead>(input: &mut R) -> Result<u8, ReplayError> {
    let buf = input.fill_buf().map_err(csv::Error::from)?;
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let count = |d: u8| line.iter().filter(|b| **b == d).count();
    Ok([b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| count(*d))
        .unwrap_or(b','))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_invoices_whole_and_carry_the_header() {
        let csv = "InvoiceNo,StockCode,Quantity\n1,A,1\n1,B,2\n1,C,3\n2,A,1\n3,A,1\n3,B,1\n";
        let (tx, mut rx) = mpsc::channel(16);
        let bytes = std::sync::atomic::AtomicU64::new(0);
        chunk_csv(csv.as_bytes(), 3, tx, &bytes).unwrap();
        let mut bodies = Vec::new();
        while let Ok(c) = rx.try_recv() {
            bodies.push((String::from_utf8(c.body.to_vec()).unwrap(), c.lines));
        }
        assert_eq!(bodies.len(), 2, "{bodies:?}");
        assert_eq!(bodies[0].1, 3);
        assert!(bodies[0]
            .0
            .starts_with("InvoiceNo,StockCode,Quantity,LineNo\n1,A,1,1\n1,B,2,2\n"));
        assert_eq!(bodies[1].1, 3);
        assert!(bodies[1].0.contains("2,A,1,1\n3,A,1,1\n3,B,1,2\n"));
    }

    #[test]
    fn an_invoice_larger_than_the_batch_is_cut_into_pieces_numbered_on() {
        let mut csv = "InvoiceNo,StockCode\n0,A\n".to_owned();
        for code in ["a", "b", "c", "d", "e", "f", "g"] {
            csv.push_str(&format!("1,{code}\n"));
        }
        csv.push_str("2,A\n");
        let (tx, mut rx) = mpsc::channel(16);
        let bytes = std::sync::atomic::AtomicU64::new(0);
        chunk_csv(csv.as_bytes(), 3, tx, &bytes).unwrap();
        let mut bodies = Vec::new();
        while let Ok(c) = rx.try_recv() {
            bodies.push((String::from_utf8(c.body.to_vec()).unwrap(), c.lines));
        }
        let header = "InvoiceNo,StockCode,LineNo\n";
        assert_eq!(
            bodies,
            [
                (format!("{header}0,A,1\n1,a,1\n1,b,2\n1,c,3\n"), 4),
                (format!("{header}1,d,4\n1,e,5\n1,f,6\n"), 3),
                (format!("{header}1,g,7\n2,A,1\n"), 2),
            ],
            "no request past twice the batch; the invoice's lines numbered 1 to 7 across them"
        );
    }

    #[test]
    fn rows_of_an_invoice_are_numbered_in_file_order_wherever_they_are() {
        // Invoice 1's rows are apart and one is an exact duplicate: each gets its own LineNo.
        let csv = "InvoiceNo,StockCode\n1,A\n2,A\n1,A\n1,B\n";
        let (tx, mut rx) = mpsc::channel(16);
        let bytes = std::sync::atomic::AtomicU64::new(0);
        chunk_csv(csv.as_bytes(), 100, tx, &bytes).unwrap();
        let body = rx.try_recv().unwrap().body;
        assert_eq!(
            &body[..],
            b"InvoiceNo,StockCode,LineNo\n1,A,1\n2,A,1\n1,A,2\n1,B,3\n"
        );
        // A file with its own line numbers is sent as it is.
        let (tx, mut rx) = mpsc::channel(16);
        chunk_csv("InvoiceNo,LineNo\n1,7\n".as_bytes(), 100, tx, &bytes).unwrap();
        assert_eq!(&rx.try_recv().unwrap().body[..], b"InvoiceNo,LineNo\n1,7\n");
    }

    #[test]
    fn semicolon_files_and_missing_invoice_column() {
        let csv = "InvoiceNo;StockCode\n1;\"A;B\"\n";
        let (tx, mut rx) = mpsc::channel(4);
        let bytes = std::sync::atomic::AtomicU64::new(0);
        chunk_csv(csv.as_bytes(), 10, tx, &bytes).unwrap();
        let body = rx.try_recv().unwrap().body;
        // The field with the delimiter in it stays quoted.
        assert_eq!(&body[..], b"InvoiceNo;StockCode;LineNo\n1;\"A;B\";1\n");
        let (tx, _rx) = mpsc::channel(4);
        let err = chunk_csv("Foo,Bar\n1,2\n".as_bytes(), 10, tx, &bytes).unwrap_err();
        assert!(err.to_string().contains("InvoiceNo"), "{err}");
    }
}
