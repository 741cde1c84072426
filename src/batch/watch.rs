//! The watcher `shopstream serve` runs: imports the configured sources on an interval, so bulk
//! drops land in the warehouse without anyone running `shopstream import`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;

use super::report::FileOutcome;
use super::Importer;

/// Imports `sources` now and then every `interval` (from the end of one run to the start of the
/// next) until `shutdown` completes. Every file is logged and counted in the import metrics;
/// files already loaded are skipped quietly, so an idle tick costs a listing and a hash per file.
///
/// When `shutdown` completes during a run, the run is abandoned between awaits: a file whose
/// transaction had started still commits or rolls back whole on its blocking thread, and the next
/// start (or `shopstream import`) carries on from the ledger.
pub async fn watch(
    importer: Arc<Importer>,
    sources: Vec<String>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    if sources.is_empty() {
        return;
    }
    tokio::pin!(shutdown);
    tracing::info!(?sources, ?interval, "The import watcher is starting.");
    loop {
        let run = async {
            let summary = importer.run(&sources, &ProgressBar::hidden()).await;
            for f in &summary.files {
                match f.outcome {
                    FileOutcome::Skipped => {}
                    FileOutcome::Loaded | FileOutcome::Checked => tracing::info!(
                        file = %f.key,
                        target = f.target.as_str(),
                        rows = f.rows_loaded,
                        new = f.rows_new,
                        rejected = f.rows_rejected,
                        reject_file = f.reject_file.as_deref().unwrap_or(""),
                        "A bulk file was imported."
                    ),
                    FileOutcome::Changed | FileOutcome::Failed => tracing::warn!(
                        file = %f.key,
                        target = f.target.as_str(),
                        outcome = f.outcome.as_str(),
                        error = f.error.as_deref().unwrap_or(""),
                        "A bulk file was not imported."
                    ),
                }
            }
        };
        tokio::select! {
            () = run => {}
            () = &mut shutdown => break,
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = &mut shutdown => break,
        }
    }
    tracing::info!("The import watcher stopped.");
}
