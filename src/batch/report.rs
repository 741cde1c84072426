//! What an import did, per file and in total, for people (`Display`) and machines (`Serialize`).

use serde::Serialize;
use std::fmt;

use super::source::printable;
use super::Target;
use crate::metrics::{IMPORT_DURATION, IMPORT_FILES, IMPORT_ROWS};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileOutcome {
    /// Loaded now (first time, or replaced with `--reload`).
    Loaded,
    /// Already loaded with the same content: nothing to do.
    Skipped,
    /// Loaded before with other content: reported, not loaded (use `--reload`).
    Changed,
    /// Could not be loaded; nothing of it was written. See `error`.
    Failed,
    /// `--dry-run`: parsed and counted, nothing written.
    Checked,
}

impl FileOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            FileOutcome::Loaded => "loaded",
            FileOutcome::Skipped => "skipped",
            FileOutcome::Changed => "changed",
            FileOutcome::Failed => "failed",
            FileOutcome::Checked => "checked",
        }
    }
}

/// One file into one store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileReport {
    /// The file's key (absolute path), or the source as given when it could not be listed.
    pub key: String,
    pub target: Target,
    pub outcome: FileOutcome,
    /// Good rows of the file (for `loaded` and `checked`).
    pub rows_loaded: u64,
    /// Of those, rows the store did not hold yet (the others came by the stream or another file).
    pub rows_new: u64,
    pub rows_rejected: u64,
    /// Where the rejected rows are, when there were any.
    pub reject_file: Option<String>,
    pub bytes: u64,
    pub seconds: f64,
    /// Why the file failed or what changed.
    pub error: Option<String>,
}

impl FileReport {
    pub(crate) fn new(key: &str, target: Target, outcome: FileOutcome) -> Self {
        FileReport {
            key: key.to_owned(),
            target,
            outcome,
            rows_loaded: 0,
            rows_new: 0,
            rows_rejected: 0,
            reject_file: None,
            bytes: 0,
            seconds: 0.0,
            error: None,
        }
    }

    /// Updates the import metrics with this report (once per report).
    pub(crate) fn emit(&self) {
        IMPORT_FILES
            .with_label_values(&[self.outcome.as_str()])
            .inc();
        if self.outcome == FileOutcome::Loaded {
            IMPORT_ROWS
                .with_label_values(&["loaded"])
                .inc_by(self.rows_loaded);
            IMPORT_ROWS
                .with_label_values(&["rejected"])
                .inc_by(self.rows_rejected);
            IMPORT_DURATION.with_label_values(&[]).observe(self.seconds);
        }
    }
}

/// Every file of a run and the totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunSummary {
    pub files: Vec<FileReport>,
    pub loaded: u64,
    pub skipped: u64,
    pub changed: u64,
    pub failed: u64,
    pub checked: u64,
    pub rows_loaded: u64,
    pub rows_new: u64,
    pub rows_rejected: u64,
    pub reject_files: Vec<String>,
    pub seconds: f64,
    /// Good rows per second over the run (rows of loaded and checked files).
    pub rows_per_second: f64,
}

impl RunSummary {
    /// Totals over `files`, which took `seconds`.
    pub fn new(files: Vec<FileReport>, seconds: f64) -> Self {
        let mut s = RunSummary {
            seconds,
            ..RunSummary::default()
        };
        for f in &files {
            match f.outcome {
                FileOutcome::Loaded => s.loaded += 1,
                FileOutcome::Skipped => s.skipped += 1,
                FileOutcome::Changed => s.changed += 1,
                FileOutcome::Failed => s.failed += 1,
                FileOutcome::Checked => s.checked += 1,
            }
            if matches!(f.outcome, FileOutcome::Loaded | FileOutcome::Checked) {
                s.rows_loaded += f.rows_loaded;
                s.rows_new += f.rows_new;
            }
            s.rows_rejected += f.rows_rejected;
            if let Some(r) = &f.reject_file {
                if !s.reject_files.contains(r) {
                    s.reject_files.push(r.clone());
                }
            }
        }
        s.rows_per_second = if seconds > 0.0 {
            (s.rows_loaded as f64 / seconds).round()
        } else {
            0.0
        };
        s.files = files;
        s
    }
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.files {
            write!(
                f,
                "{:<8} {:<11} {}",
                r.outcome.as_str(),
                r.target.as_str(),
                printable(&r.key)
            )?;
            if matches!(r.outcome, FileOutcome::Loaded | FileOutcome::Checked) {
                write!(
                    f,
                    ": {} rows ({} new), {} rejected, {:.1} s",
                    r.rows_loaded, r.rows_new, r.rows_rejected, r.seconds
                )?;
            }
            if let Some(e) = &r.error {
                write!(f, ": {}", printable(e))?;
            }
            if let Some(rej) = &r.reject_file {
                write!(f, "\n         rejected rows: {rej}")?;
            }
            writeln!(f)?;
        }
        write!(
            f,
            "{} loaded, {} skipped, {} changed, {} failed{}; {} rows loaded ({} new), {} rejected; {:.1} s, {} rows/s",
            self.loaded,
            self.skipped,
            self.changed,
            self.failed,
            if self.checked > 0 {
                format!(", {} checked", self.checked)
            } else {
                String::new()
            },
            self.rows_loaded,
            self.rows_new,
            self.rows_rejected,
            self.seconds,
            self.rows_per_second
        )
    }
}
