//! `shopstream replay FILE`: the store simulator.

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::DateOrder;
use crate::sim::replay::{replay, ReplayOptions, ReplaySummary};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// CSV file to send: any export the parser reads (UTF-8 or Latin-1; comma, semicolon or tab).
    /// Rows get a `LineNo` per invoice in file order unless the file has one, so any export
    /// replays exactly and a second replay adds nothing (docs/line-identity.md).
    pub file: PathBuf,
    /// shopstream's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// The store's API key (`Authorization: Bearer <key>`).
    #[arg(long, env = "SHOPSTREAM_KEY", default_value = "demo-key-change-me")]
    pub key: String,
    /// Concurrent stores (connections).
    #[arg(long, default_value_t = 4)]
    pub stores: usize,
    /// Lines per request, whole invoices kept together; an invoice with more lines than this
    /// is sent in pieces of at most this many (its numbered lines keep their ids).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Overall lines per second (default: as fast as shopstream acknowledges).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Day/month order of slash dates in the file.
    #[arg(long, value_enum, default_value = "mdy")]
    pub date_order: DateOrder,
    /// Attempts per request on connection errors and 5xx answers (503 backpressure is always
    /// retried after its Retry-After).
    #[arg(long, default_value_t = 10)]
    pub max_attempts: u32,
    /// Validate only: shopstream parses and answers but writes nothing (the HTTP ceiling).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON (for scripts).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let opts = ReplayOptions {
        url: args.url.clone(),
        key: args.key.clone(),
        stores: args.stores.max(1),
        batch: args.batch.max(1),
        rate: args.rate,
        date_order: args.date_order,
        max_attempts: args.max_attempts.max(1),
        dry_run: args.dry_run,
    };
    let bar = progress_bar(size, args.json);
    let bar_cb = bar.clone();
    let on_progress = Arc::new(move |bytes: u64, acked: u64| {
        bar_cb.set_position(bytes);
        bar_cb.set_message(format!("{acked} lines acknowledged"));
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime
        .block_on(replay(file, opts, on_progress))
        .with_context(|| format!("cannot replay {}", args.file.display()))?;
    bar.finish_and_clear();
    print_summary(&summary, &args.url, args.json)?;
    if summary.lines_failed > 0 {
        anyhow::bail!(
            "{} lines were not acknowledged (see the errors above); send the file again: line ids make that safe",
            summary.lines_failed
        );
    }
    Ok(())
}

fn progress_bar(size: u64, quiet: bool) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ({eta})",
        )
        .expect("valid template"),
    );
    bar
}

pub fn print_summary(summary: &ReplaySummary, url: &str, json: bool) -> anyhow::Result<()> {
    if json {
        out!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    out!("replayed to {url} in {:.2} s", summary.seconds);
    out!(
        "  lines: {} sent, {} accepted, {} already stored, {} rejected, {} not acknowledged",
        summary.lines_sent,
        summary.lines_accepted,
        summary.lines_duplicate,
        summary.lines_rejected,
        summary.lines_failed
    );
    out!(
        "  requests: {} ({} retries, {} busy answers honoured)",
        summary.requests,
        summary.retries,
        summary.busy_answers
    );
    out!(
        "  throughput: {:.0} lines/s acknowledged; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        summary.lines_per_second,
        summary.latency_p50_ms,
        summary.latency_p99_ms,
        summary.latency_max_ms
    );
    for e in &summary.errors {
        out!("  error: {e}");
    }
    Ok(())
}
