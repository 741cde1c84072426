//! The watcher `shopstream serve` runs: imports the configured sources on an interval, so bulk
//! drops land in the warehouse without anyone running `shopstream import`.
//!
//! A file is loaded only once it holds still: when two consecutive scans saw the same stamp (size
//! and modification time; in S3 size, ETag and LastModified). A file still being copied or
//! uploaded changes between scans and waits, so it is never loaded in part. Marker files
//! (`.ready`, `_SUCCESS`) are not consulted: the rule asks nothing of whoever drops the files,
//! and costs one interval of delay. The stamp is checked again after the file is read
//! ([`super::Source::unchanged`]), for a writer that resumes just then.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use indicatif::ProgressBar;

use super::report::{FileOutcome, FileReport};
use super::source::printable;
use super::Importer;

/// Imports `sources` now and then every `interval` (from the end of one run to the start of the
/// next) until `shutdown` completes. A file is loaded on the scan after the one that first saw
/// its current stamp, so between one and two intervals after it stops changing. Every file
/// loaded, refused or failed is logged and counted in the import metrics. A file handled with its
/// current stamp (loaded, skipped by the ledger, reported changed) is not looked at again until
/// the stamp moves, so an idle tick costs a listing; a failed one is tried again on every scan
/// that finds it still.
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
    let mut scans = Scans::default();
    loop {
        let run = async {
            let (listed, failed) = importer.list(&sources).await;
            let still = scans.settled(listed);
            let mut reports = importer.load(still, &ProgressBar::hidden()).await;
            scans.handled(&reports);
            reports.extend(failed);
            log(&reports);
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

/// What the watcher remembers between scans.
#[derive(Default)]
struct Scans {
    /// Stamp of each file the last scan listed.
    last: HashMap<String, String>,
    /// Stamps of the files handed to the importer in the last scan.
    handed: HashMap<String, String>,
    /// Stamp each file had when it was last handled without a failure.
    done: HashMap<String, String>,
}

impl Scans {
    /// Of the files a scan listed, those to load now: the same stamp as in the last scan, and not
    /// handled with it already. Remembers this scan's stamps for the next.
    fn settled(&mut self, listed: Vec<super::load::Listed>) -> Vec<super::load::Listed> {
        let last = std::mem::take(&mut self.last);
        self.handed.clear();
        let mut still = Vec::new();
        for l in listed {
            let (key, stamp) = (&l.file.key, &l.file.stamp);
            self.last.insert(key.clone(), stamp.clone());
            if self.done.get(key) == Some(stamp) {
                continue;
            }
            if last.get(key) == Some(stamp) {
                self.handed.insert(key.clone(), stamp.clone());
                still.push(l);
            } else {
                tracing::debug!(
                    file = %printable(key),
                    "A bulk file is new or still changing; it is loaded once it holds still."
                );
            }
        }
        // Files gone from the sources are forgotten: a file dropped again is a new one.
        self.done.retain(|key, _| self.last.contains_key(key));
        still
    }

    /// Notes the files of `reports` that no store failed, with the stamp they were handed with.
    fn handled(&mut self, reports: &[FileReport]) {
        let failed: std::collections::HashSet<&str> = reports
            .iter()
            .filter(|r| r.outcome == FileOutcome::Failed)
            .map(|r| r.key.as_str())
            .collect();
        for (key, stamp) in self.handed.drain() {
            if !failed.contains(key.as_str()) {
                self.done.insert(key, stamp);
            }
        }
    }
}

fn log(reports: &[FileReport]) {
    for f in reports {
        match f.outcome {
            FileOutcome::Skipped => {}
            FileOutcome::Loaded | FileOutcome::Checked => tracing::info!(
                file = %printable(&f.key),
                target = f.target.as_str(),
                rows = f.rows_loaded,
                new = f.rows_new,
                rejected = f.rows_rejected,
                reject_file = f.reject_file.as_deref().unwrap_or(""),
                "A bulk file was imported."
            ),
            FileOutcome::Changed | FileOutcome::Failed => tracing::warn!(
                file = %printable(&f.key),
                target = f.target.as_str(),
                outcome = f.outcome.as_str(),
                error = f.error.as_deref().unwrap_or(""),
                "A bulk file was not imported."
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::load::Listed;
    use crate::batch::{LocalSource, SourceFile, Target};

    fn listed(files: &[(&str, &str)]) -> Vec<Listed> {
        let source: Arc<dyn crate::batch::Source> = Arc::new(LocalSource::new(".").unwrap());
        files
            .iter()
            .map(|(key, stamp)| Listed {
                source: Arc::clone(&source),
                file: SourceFile {
                    key: (*key).into(),
                    size: 0,
                    change_token: String::new(),
                    stamp: (*stamp).into(),
                },
            })
            .collect()
    }

    fn keys(l: &[Listed]) -> Vec<&str> {
        l.iter().map(|l| l.file.key.as_str()).collect()
    }

    #[test]
    fn a_file_loads_once_two_scans_saw_it_still_and_again_only_after_it_moves() {
        let mut scans = Scans::default();
        assert!(scans.settled(listed(&[("a", "1:1")])).is_empty());
        // Grew between scans: waits again.
        assert!(scans
            .settled(listed(&[("a", "2:2"), ("b", "1:1")]))
            .is_empty());
        let still = scans.settled(listed(&[("a", "2:2"), ("b", "1:1")]));
        assert_eq!(keys(&still), ["a", "b"]);
        // `b` failed: tried again on the next still scan; `a` is done until it moves.
        scans.handled(&[
            FileReport::new("a", Target::Warehouse, FileOutcome::Loaded),
            FileReport::new("b", Target::Warehouse, FileOutcome::Failed),
        ]);
        let still = scans.settled(listed(&[("a", "2:2"), ("b", "1:1")]));
        assert_eq!(keys(&still), ["b"]);
        scans.handled(&[FileReport::new("b", Target::Warehouse, FileOutcome::Loaded)]);
        assert!(scans
            .settled(listed(&[("a", "3:3"), ("b", "1:1")]))
            .is_empty());
        assert_eq!(
            keys(&scans.settled(listed(&[("a", "3:3"), ("b", "1:1")]))),
            ["a"]
        );
    }
}
