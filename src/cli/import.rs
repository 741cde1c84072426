//! `shopstream import`: loads bulk CSV dumps (files, folders, globs; `.csv` and `.csv.gz`) into
//! the embedded warehouse (and/or operational store), each file exactly once (see
//! [`crate::batch`]).

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

use crate::batch::s3::s3_client;
use crate::batch::{ImportOptions, Importer, Target};
use crate::model::DateOrder;

#[derive(Debug, clap::Args)]
#[command(
    about = "Load bulk CSV exports into the warehouse, each file exactly once",
    long_about = "Load bulk CSV exports (.csv, .csv.gz) into the embedded warehouse, each file \
                  exactly once: a ledger in the warehouse file skips files already loaded and \
                  reports files whose content changed. Bad rows go to a reject file with their \
                  reason. Exits non-zero when any file failed."
)]
pub struct Args {
    /// Files, folders (searched recursively for .csv and .csv.gz), globs such as
    /// 'drops/*.csv.gz', or s3://bucket/prefix (settings [aws]: region, endpoint_url).
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<String>,
    /// Which store(s) to fill; default `import.target`.
    #[arg(long, value_enum)]
    pub to: Option<Target>,
    /// Load files whose content changed since they were loaded, replacing the rows they loaded.
    #[arg(long)]
    pub reload: bool,
    /// A file with a larger share (0..1) of rejected rows loads nothing; default
    /// `import.max_reject_ratio`.
    #[arg(long, value_name = "R")]
    pub max_reject_ratio: Option<f64>,
    /// Day/month order of slash dates; default `import.date_order`.
    #[arg(long, value_enum)]
    pub date_order: Option<DateOrder>,
    /// Print the summary as JSON on stdout (for scripts) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Data folder (warehouse, operational store, reject files); default `data_dir`.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Parse and count every file, write the reject files, load nothing (checks a file; measures
    /// the parser alone).
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs `shopstream import`.
///
/// # Errors
/// Bad settings or arguments, a store that cannot be opened, and any file that failed (after the
/// summary is printed).
pub fn run(args: Args, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut settings = super::load_settings(config)?;
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    super::init_logging(&settings);
    let mut options = ImportOptions::from_settings(&settings);
    options.reload = args.reload;
    options.dry_run = args.dry_run;
    if let Some(to) = args.to {
        options.target = to;
    }
    if let Some(order) = args.date_order {
        options.parse.date_order = order;
    }
    if let Some(r) = args.max_reject_ratio {
        anyhow::ensure!(
            (0.0..=1.0).contains(&r),
            "--max-reject-ratio {r} is not between 0 and 1"
        );
        options.max_reject_ratio = r;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(async {
        let mut importer = Importer::open(&settings, options).context("cannot start the import")?;
        if args.sources.iter().any(|s| s.starts_with("s3://")) {
            importer = importer.with_s3(s3_client(&settings.aws).await);
        }
        let progress = progress_bar();
        let summary = importer.run(&args.sources, &progress).await;
        progress.finish_and_clear();
        anyhow::Ok(summary)
    })?;
    if args.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&summary).context("cannot encode the summary")?
        );
    } else {
        out!("{summary}");
    }
    anyhow::ensure!(
        summary.failed == 0,
        "{} of {} file(s) failed; see the summary above",
        summary.failed,
        summary.files.len()
    );
    Ok(())
}

/// Bytes and rows on stderr when a person is watching; hidden otherwise (logs, CI, pipes).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta} left) {msg}",
        )
        .expect("the progress template is valid")
        .progress_chars("=> "),
    );
    bar
}
