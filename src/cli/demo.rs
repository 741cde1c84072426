//! `shopstream demo`: the pipeline on embedded backends, a realistic dataset replayed through it,
//! and where to look.

use anyhow::Context;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::serve::{wait_for_signal, Running};
use crate::model::DateOrder;
use crate::sim::generate::{rows, write_csv, DateStyle, Encoding, GenerateOptions};
use crate::sim::replay::{replay, ReplayOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Lines of generated online-retail data to replay (the real dataset has 541,909).
    #[arg(long, default_value_t = 541_909)]
    pub lines: u64,
    /// Replay this CSV file instead of generated data.
    #[arg(long, value_name = "CSV")]
    pub file: Option<PathBuf>,
    /// Data folder (overrides `data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Port (overrides `server.port`; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Concurrent simulated stores.
    #[arg(long, default_value_t = 4)]
    pub stores: usize,
    /// Stop when the replay is in every sink instead of serving until Ctrl-C.
    #[arg(long)]
    pub exit: bool,
}

pub fn run(config: Option<&Path>, args: Args) -> anyhow::Result<()> {
    let mut settings = super::load_settings(config)?;
    if let Some(dir) = &args.data_dir {
        settings.data_dir = dir.clone();
    }
    if let Some(port) = args.port {
        settings.server.port = port;
    }
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create {}", settings.data_dir.display()))?;
    // The demo's own lines tell the story; the server's log goes to a file beside its data.
    let log_path = settings.data_dir.join("demo.log");
    let log_file = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    super::init_logging_into(&settings, Some(log_file));
    crate::metrics::init();
    out!(
        "the server's log: {} (warnings also show here; RUST_LOG=info shows everything)",
        log_path.display()
    );

    let file = match &args.file {
        Some(f) => f.clone(),
        None => {
            let path = settings
                .data_dir
                .join(format!("demo-online-retail-{}.csv", args.lines));
            if !path.is_file() {
                out!(
                    "generating {} lines of online-retail data into {} ...",
                    args.lines,
                    path.display()
                );
                let out = std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                let opts = GenerateOptions {
                    lines: args.lines,
                    ..GenerateOptions::default()
                };
                write_csv(
                    rows(&opts),
                    std::io::BufWriter::new(out),
                    Encoding::Utf8,
                    DateStyle::Uci,
                )
                .with_context(|| format!("cannot write {}", path.display()))?;
            }
            path
        }
    };

    actix_web::rt::System::new().block_on(async move {
        let running = Running::start(&settings).await?;
        let base = format!("http://{}", running.addrs[0]);
        let key = settings
            .auth
            .stores
            .values()
            .next()
            .cloned()
            .context("auth.stores has no store key to replay with")?;
        out!("replaying {} ...", file.display());
        let started = Instant::now();
        let input = std::fs::File::open(&file)
            .with_context(|| format!("cannot open {}", file.display()))?;
        let opts = ReplayOptions {
            url: base.clone(),
            key,
            stores: args.stores.max(1),
            batch: 500,
            rate: None,
            date_order: DateOrder::Mdy,
            max_attempts: 10,
            dry_run: false,
        };
        let quiet = !std::io::stderr().is_terminal();
        let on_progress: Arc<dyn Fn(u64, u64) + Send + Sync> = Arc::new(move |_, acked| {
            if !quiet && acked % 50_000 < 500 {
                eprint!("\r  {acked} lines acknowledged ");
            }
        });
        let summary = replay(input, opts, on_progress).await?;
        if !quiet {
            eprintln!();
        }
        super::replay::print_summary(&summary, &base, false)?;

        // Wait until every sink has every line (the archive flushes on size or age).
        let progress = running.state.progress.clone();
        let limit = Duration::from_secs(120);
        while !progress.caught_up() && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let in_all = started.elapsed();
        let (lines, revenue) = running
            .state
            .operational
            .totals()
            .await
            .context("cannot read the operational store's totals")?;
        out!();
        out!(
            "in every sink {:.2} s after the replay started: {lines} lines, revenue {}",
            in_all.as_secs_f64(),
            crate::model::pounds(revenue)
        );
        out!();
        // Reads take a reader key (auth.readers); the dashboard link carries it in its fragment,
        // which the browser never sends to the server, and the page drops from its address.
        let reader_key = settings.auth.readers.values().next();
        out!("where to look:");
        match reader_key {
            Some(key) => {
                out!("  dashboard         {base}/#key={key}");
                out!("  (reads need the reader key: curl -H 'Authorization: Bearer {key}' URL)");
            }
            None => out!("  dashboard         {base}/ (set a reader key: auth.readers)"),
        }
        out!("  an invoice        {base}/v1/invoices/536365");
        out!(
            "  a customer        {base}/v1/customers/17850/invoices?from=2010-12-01&to=2011-12-31"
        );
        out!("  sales summary     {base}/v1/sales/summary");
        out!("  pipeline status   {base}/v1/status");
        out!("  metrics           {base}/metrics");
        out!("  data folder       {}", settings.data_dir.display());
        out!("  send more         shopstream replay FILE --url {base}");
        if !args.exit {
            out!();
            out!("serving until Ctrl-C ...");
            let signal = wait_for_signal().await?;
            tracing::info!(signal, "Shutting down.");
        }
        running.stop(&settings).await;
        Ok(())
    })
}
