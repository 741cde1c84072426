//! Prometheus metrics: every series of shopstream is declared here, once, with its unit in its
//! name. Stages record through the typed handles below; `GET /metrics` renders [`REGISTRY`].

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub static REGISTRY: LazyLock<Registry> =
    LazyLock::new(|| Registry::new_custom(Some("shopstream".into()), None).expect("valid prefix"));

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn float_gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

fn seconds_buckets() -> Vec<f64> {
    // 100 µs .. ~52 s
    exponential_buckets(0.0001, 2.0, 20).expect("valid buckets")
}

fn size_buckets() -> Vec<f64> {
    // 1 .. ~1M
    exponential_buckets(1.0, 4.0, 11).expect("valid buckets")
}

// --- AWS ------------------------------------------------------------------------------------

pub static AWS_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "aws_calls_total",
        "AWS API calls the backends made, by service and operation (resends of failed entries \
         included; the SDK's own retries of a throttled call are not).",
        &["service", "operation"],
    )
});

pub static AWS_BILLED_UNITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "aws_billed_units_total",
        "What the batch writes are billed by: kinesis_put_payload_units (25 KiB steps of each \
         record, partition key included), firehose_5kib_units (5 KiB steps of each record), \
         dynamodb_items_written (BatchWriteItem puts).",
        &["unit"],
    )
});

/// Counts one AWS API call.
pub fn aws_call(service: &str, operation: &str) {
    AWS_CALLS.with_label_values(&[service, operation]).inc();
}

/// Counts the billing units of records of `sizes` bytes billed in steps of `step` bytes (every
/// record at least one step): Kinesis PUT payload units, Firehose 5 KiB units.
pub fn aws_billed_steps(unit: &str, sizes: impl Iterator<Item = usize>, step: usize) {
    aws_billed(unit, sizes.map(|n| n.div_ceil(step).max(1)).sum());
}

/// Counts `n` billing units of kind `unit` (see [`AWS_BILLED_UNITS`]).
pub fn aws_billed(unit: &str, n: usize) {
    AWS_BILLED_UNITS
        .with_label_values(&[unit])
        .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
}

// --- HTTP -----------------------------------------------------------------------------------

pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "http_requests_total",
        "HTTP requests answered, by route pattern and status code.",
        &["route", "status"],
    )
});

pub static HTTP_REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "http_request_duration_seconds",
        "Time to answer an HTTP request, by route pattern.",
        &["route"],
        seconds_buckets(),
    )
});

pub static LINES_ACCEPTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lines_accepted_total",
        "Invoice lines made durable in the stream, by store.",
        &["store"],
    )
});

pub static LINES_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "lines_rejected_total",
        "Invoice lines rejected by validation, by store and field.",
        &["store", "field"],
    )
});

// --- Stream ---------------------------------------------------------------------------------

pub static STREAM_APPEND_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "stream_append_duration_seconds",
        "Time for one append (a group of records) to become durable, by backend.",
        &["backend"],
        seconds_buckets(),
    )
});

pub static STREAM_APPEND_RECORDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "stream_append_batch_records",
        "Records written per durable append (group commit size), by backend.",
        &["backend"],
        size_buckets(),
    )
});

pub static STREAM_MILLIS_BEHIND_LATEST: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "stream_millis_behind_latest",
        "How far the last read of a shard was behind its newest record (Kinesis MillisBehindLatest).",
        &["sink", "shard"],
    )
});

pub static STREAM_SHARED_READS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "stream_shared_reads_total",
        "Reads of a shard by its sink workers, by where they were served from: window (the \
         records another worker of the shard just read), stream (read for every worker of the \
         shard), own (a worker outside the window, reading for itself).",
        &["outcome"],
    )
});

/// Unlabelled, so it reads 0 on every backend until a lease is lost (an alert can tell "none
/// lost" from "not exported").
pub static STREAM_APPENDS_ABANDONED: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::with_opts(Opts::new(
        "stream_appends_abandoned_total",
        "Embedded stream appends dropped unwritten because their request had given up (timed out \
         or disconnected) before the writer reached them; never acknowledged, so nothing is lost.",
    ))
    .expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
});

pub static STREAM_LEASES_LOST: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::with_opts(Opts::new(
        "stream_leases_lost_total",
        "Kinesis shard leases this instance held and found taken by another instance when it \
         renewed them (0 on the embedded stream, which has no leases).",
    ))
    .expect("valid metric");
    REGISTRY
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
});

pub static STREAM_LEASES_HELD: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::with_opts(Opts::new(
        "stream_leases_held",
        "Kinesis shard leases this instance holds after its last lease sync (0 on the embedded \
         stream, which has no leases).",
    ))
    .expect("valid metric");
    REGISTRY
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
});

// --- Sinks ----------------------------------------------------------------------------------

pub static SINK_BACKLOG_RECORDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "sink_backlog_records",
        "Stream records of a shard not yet checkpointed by a sink.",
        &["sink", "shard"],
    )
});

pub static SINK_LAG_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    float_gauge(
        "sink_lag_seconds",
        "How long the oldest record of a shard that a sink has not checkpointed has been in the stream (0 when caught up); ingest answers 503 past sinks.max_lag.",
        &["sink", "shard"],
    )
});

pub static SINK_CHECKPOINT_AGE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "sink_checkpoint_age_seconds",
        "Seconds since a sink last advanced its checkpoint on a shard while records were waiting (0 when caught up).",
        &["sink", "shard"],
    )
});

pub static SINK_LINES_WRITTEN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "sink_lines_written_total",
        "Lines written and acknowledged by a sink's backend.",
        &["sink"],
    )
});

pub static SINK_BATCH_LINES: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "sink_batch_lines",
        "Lines per backend write, by sink.",
        &["sink"],
        size_buckets(),
    )
});

pub static SINK_FLUSH_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "sink_flush_duration_seconds",
        "Time of one backend write (flush), by sink.",
        &["sink"],
        seconds_buckets(),
    )
});

pub static SINK_DUPLICATE_LINES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "sink_duplicate_lines_total",
        "Lines a sink worker dropped because it had read the same line id lately (a resent request), by sink.",
        &["sink"],
    )
});

pub static SINK_RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "sink_retries_total",
        "Backend calls retried after a failure, by sink.",
        &["sink"],
    )
});

pub static SINK_RESTARTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "sink_actor_restarts_total",
        "Sink actors restarted by their supervisor, by sink.",
        &["sink"],
    )
});

pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "dead_letter_lines_total",
        "Lines that failed every attempt and went to the dead-letter store, by sink.",
        &["sink"],
    )
});

pub static MAILBOX_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "actor_mailbox_depth",
        "Messages waiting in an actor's mailbox or queue, by actor.",
        &["actor"],
    )
});

// --- Process --------------------------------------------------------------------------------

/// The process's own figures (resident memory, CPU seconds, open files, threads), read from
/// /proc at each scrape, as `shopstream_process_*` (the registry's prefix applies to them too).
static PROCESS: LazyLock<()> = LazyLock::new(|| {
    #[cfg(target_os = "linux")]
    REGISTRY
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
});

// --- Batch path -----------------------------------------------------------------------------

pub static IMPORT_FILES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "import_files_total",
        "Bulk files seen by the importer, by outcome (loaded, skipped, changed, failed).",
        &["outcome"],
    )
});

pub static IMPORT_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "import_rows_total",
        "Rows of bulk files, by outcome (loaded, rejected).",
        &["outcome"],
    )
});

pub static IMPORT_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "import_file_duration_seconds",
        "Time to load one bulk file.",
        &[],
        seconds_buckets(),
    )
});

/// Touches every series so that `/metrics` lists them all from the start (a dashboard can tell
/// "zero" from "not exported").
pub fn init() {
    LazyLock::force(&AWS_CALLS);
    LazyLock::force(&AWS_BILLED_UNITS);
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_REQUEST_DURATION);
    LazyLock::force(&LINES_ACCEPTED);
    LazyLock::force(&LINES_REJECTED);
    LazyLock::force(&STREAM_APPEND_DURATION);
    LazyLock::force(&STREAM_APPEND_RECORDS);
    LazyLock::force(&STREAM_MILLIS_BEHIND_LATEST);
    LazyLock::force(&STREAM_SHARED_READS);
    LazyLock::force(&STREAM_LEASES_LOST);
    LazyLock::force(&STREAM_APPENDS_ABANDONED);
    LazyLock::force(&STREAM_LEASES_HELD);
    LazyLock::force(&SINK_BACKLOG_RECORDS);
    LazyLock::force(&SINK_LAG_SECONDS);
    LazyLock::force(&SINK_CHECKPOINT_AGE);
    LazyLock::force(&SINK_LINES_WRITTEN);
    LazyLock::force(&SINK_BATCH_LINES);
    LazyLock::force(&SINK_FLUSH_DURATION);
    LazyLock::force(&SINK_RETRIES);
    LazyLock::force(&SINK_RESTARTS);
    LazyLock::force(&SINK_DUPLICATE_LINES);
    LazyLock::force(&DEAD_LETTERS);
    LazyLock::force(&MAILBOX_DEPTH);
    LazyLock::force(&PROCESS);
    LazyLock::force(&IMPORT_FILES);
    LazyLock::force(&IMPORT_ROWS);
    LazyLock::force(&IMPORT_DURATION);
    // Counters that move only when something goes wrong start at 0 for every sink, so that
    // `increase()` in an alert sees the first dead letter or restart (a series born at 1 shows
    // no increase) and a dashboard can tell "none" from "not exported".
    for sink in crate::stream::SinkKind::ALL {
        for counter in [&*DEAD_LETTERS, &*SINK_RESTARTS, &*SINK_RETRIES] {
            counter.with_label_values(&[sink.as_str()]);
        }
    }
}

/// The Prometheus text exposition of every series.
pub fn render() -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut buf)
        .expect("text encoding does not fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}
