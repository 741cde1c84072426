//! One load of one file into one store: the file read through the ingest parser in batches
//! handed to the store, bad rows to the reject file, the ledger deciding what to skip.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;

use super::super::options::{ImportOptions, Target};
use super::super::report::{FileOutcome, FileReport};
use super::super::source::{Source, SourceFile};
use super::super::ImportError;
use super::rejects::RejectWriter;
use crate::model::csv::CsvLines;
use crate::model::IngestedLine;
use crate::store::warehouse::{FileLoadStart, LedgerSkip, LoadCounts, LoadedInto};
use crate::store::{OperationalStore, Warehouse};

/// Lines handed to the store at a time: large enough that per-statement overhead vanishes, small
/// enough that memory stays flat whatever the file size.
const BATCH_LINES: usize = 2_048;

/// Rows between two updates of the progress message.
const PROGRESS_EVERY: u64 = 8_192;

/// `store_id` of the lines an import loads (stores send theirs; a bulk file has none).
pub(crate) const IMPORT_STORE_ID: &str = "import";

/// What one load of one file into one store came to.
pub(super) struct Loaded {
    outcome: FileOutcome,
    counts: LoadCounts,
    reject_file: Option<String>,
    note: Option<String>,
}

impl Loaded {
    fn only(outcome: FileOutcome, note: Option<String>) -> Self {
        Loaded {
            outcome,
            counts: LoadCounts::default(),
            reject_file: None,
            note,
        }
    }

    /// A file the ledger declined.
    fn skipped(skip: LedgerSkip, file: &SourceFile) -> Self {
        match skip {
            LedgerSkip::Unchanged => Loaded::only(FileOutcome::Skipped, None),
            LedgerSkip::Changed { loaded_size } => Loaded::only(
                FileOutcome::Changed,
                Some(format!(
                    "changed since it was loaded (size {loaded_size} -> {} bytes); not loaded: pass --reload to replace its rows",
                    file.size
                )),
            ),
        }
    }
}

/// The report of one load.
pub(super) fn finish(
    file: &SourceFile,
    store: Target,
    started: Instant,
    outcome: Result<Loaded, ImportError>,
) -> FileReport {
    let mut report = FileReport::new(&file.key, store, FileOutcome::Failed);
    report.bytes = file.size;
    report.seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(l) => {
            report.outcome = l.outcome;
            report.rows_loaded = l.counts.rows_loaded;
            report.rows_new = l.counts.rows_new;
            report.rows_rejected = l.counts.rows_rejected;
            report.reject_file = l.reject_file;
            report.error = l.note;
        }
        Err(e) => {
            if let ImportError::TooManyRejects {
                reject_file,
                rejected,
                ..
            } = &e
            {
                report.reject_file = Some(reject_file.clone());
                report.rows_rejected = *rejected;
            }
            report.error = Some(e.to_string());
        }
    }
    report
}

/// Runs blocking work (file reading, SQLite) off the async runtime.
pub(super) async fn blocking<T: Send + 'static>(
    key: String,
    f: impl FnOnce() -> Result<T, ImportError> + Send + 'static,
) -> Result<T, ImportError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ImportError::Task {
            key,
            reason: e.to_string(),
        })
    })
}

/// Everything one load of one file needs, movable to a blocking thread.
pub(super) struct Job {
    pub(super) source: Arc<dyn Source>,
    pub(super) file: SourceFile,
    pub(super) options: ImportOptions,
    pub(super) progress: ProgressBar,
    pub(super) started: Instant,
    pub(super) ingested_at: DateTime<Utc>,
}

impl Job {
    /// `--dry-run`: parse, count, write the reject file.
    pub(super) fn check(self) -> Result<Loaded, ImportError> {
        let mut rejects = RejectWriter::new(&self.options.reject_dir, &self.file);
        let counts = self.scan(Some(&mut rejects), |_| Ok(0))?;
        Ok(Loaded {
            outcome: FileOutcome::Checked,
            counts,
            reject_file: rejects.finish()?,
            note: None,
        })
    }

    /// The warehouse load: the ledger's decision, old rows out (on reload), new rows in, ledger
    /// row, in one load that commits at the end ([`Warehouse::load_file`]). A failure here
    /// (an unreadable file, too many rejects) drops the load, which takes back what it wrote.
    pub(super) async fn into_warehouse(
        self,
        warehouse: &dyn Warehouse,
    ) -> Result<Loaded, ImportError> {
        let mut load = match warehouse.load_file(&self.file, self.options.reload).await? {
            FileLoadStart::Skipped(skip) => return Ok(Loaded::skipped(skip, &self.file)),
            FileLoadStart::Loading(load) => load,
        };
        blocking(self.file.key.clone(), move || {
            let mut rejects = RejectWriter::new(&self.options.reject_dir, &self.file);
            let counts = self.scan(Some(&mut rejects), |batch| Ok(load.insert(batch)?))?;
            let reject_file = rejects.finish()?;
            self.check_ratio(&counts, reject_file.as_deref())?;
            // Dropping the load on an error takes back what it wrote.
            self.check_unchanged()?;
            load.commit(&counts, reject_file.as_deref())?;
            Ok(Loaded {
                outcome: FileOutcome::Loaded,
                counts,
                reject_file,
                note: None,
            })
        })
        .await
    }

    /// The operational load: a counting pass decides (only when the warehouse did not just do
    /// it), then lines are upserted by id in batches (idempotent, so a crash half-way is repaired
    /// by the next run), then the ledger row. On `--reload` the new lines replace those with the
    /// same id; lines the old content had and the new one lacks stay in the operational store
    /// (it has no per-file tag), unlike in the warehouse.
    pub(super) async fn into_operational(
        self,
        warehouse: &dyn Warehouse,
        store: &Arc<dyn OperationalStore>,
    ) -> Result<Loaded, ImportError> {
        let previous = warehouse
            .ledger_entry(&self.file.key, LoadedInto::Operational)
            .await?;
        if let Some(skip) = LedgerSkip::check(previous.as_ref(), &self.file, self.options.reload) {
            return Ok(Loaded::skipped(skip, &self.file));
        }
        let key = self.file.key.clone();
        let store = Arc::clone(store);
        let runtime = tokio::runtime::Handle::current();
        let (file, counts, reject_file) = blocking(key, move || {
            let after_warehouse = self.options.target == Target::Both;
            let reject_file = if after_warehouse {
                // The warehouse pass wrote the reject file and checked the ratio.
                RejectWriter::new(&self.options.reject_dir, &self.file).existing()
            } else {
                let mut rejects = RejectWriter::new(&self.options.reject_dir, &self.file);
                let counts = self.scan(Some(&mut rejects), |_| Ok(0))?;
                let reject_file = rejects.finish()?;
                self.check_ratio(&counts, reject_file.as_deref())?;
                reject_file
            };
            let counts = self.scan(None, |batch| {
                let lines: Vec<&IngestedLine> = batch.iter().collect();
                runtime.block_on(store.upsert(&lines))?;
                Ok(batch.len() as u64)
            })?;
            self.check_ratio(&counts, reject_file.as_deref())?;
            // The upserts stay (they are lines of the file, by id); the ledger row is not written.
            self.check_unchanged()?;
            Ok((self.file, counts, reject_file))
        })
        .await?;
        warehouse
            .record_load(
                &file,
                LoadedInto::Operational,
                &counts,
                reject_file.as_deref(),
            )
            .await?;
        Ok(Loaded {
            outcome: FileOutcome::Loaded,
            counts,
            reject_file,
            note: None,
        })
    }

    /// Fails when the file moved since it was listed ([`Source::unchanged`]). Blocking.
    fn check_unchanged(&self) -> Result<(), ImportError> {
        if self.source.unchanged(&self.file)? {
            Ok(())
        } else {
            Err(ImportError::ChangedWhileRead {
                key: self.file.key.clone(),
            })
        }
    }

    fn check_ratio(
        &self,
        counts: &LoadCounts,
        reject_file: Option<&str>,
    ) -> Result<(), ImportError> {
        let rows = counts.rows_loaded + counts.rows_rejected;
        if rows > 0 && counts.rows_rejected as f64 / rows as f64 > self.options.max_reject_ratio {
            return Err(ImportError::TooManyRejects {
                key: self.file.key.clone(),
                rejected: counts.rows_rejected,
                rows,
                max_ratio: self.options.max_reject_ratio,
                reject_file: reject_file.unwrap_or("(none)").to_owned(),
            });
        }
        Ok(())
    }

    /// Reads the file through the ingest parser, handing good lines to `sink` in batches (it
    /// returns how many were new) and bad rows to `rejects`.
    fn scan(
        &self,
        mut rejects: Option<&mut RejectWriter>,
        mut sink: impl FnMut(&[IngestedLine]) -> Result<u64, ImportError>,
    ) -> Result<LoadCounts, ImportError> {
        let key = &self.file.key;
        let reader = Counting {
            inner: self.source.open(&self.file)?,
            progress: self.progress.clone(),
        };
        let reader: Box<dyn Read + Send> = if self.file.is_gzip() {
            Box::new(flate2::read::MultiGzDecoder::new(
                io::BufReader::with_capacity(1 << 16, reader),
            ))
        } else {
            Box::new(reader)
        };
        let mut lines =
            CsvLines::new(reader, &self.options.parse).map_err(|error| ImportError::Input {
                key: key.clone(),
                error,
            })?;
        let mut counts = LoadCounts::default();
        let mut batch = Vec::with_capacity(BATCH_LINES);
        let store_id: std::sync::Arc<str> = IMPORT_STORE_ID.into();
        for row in lines.by_ref() {
            match row {
                Ok(line) => {
                    batch.push(IngestedLine {
                        line,
                        store_id: store_id.clone(),
                        ingested_at: self.ingested_at,
                    });
                    if batch.len() == BATCH_LINES {
                        counts.rows_new += sink(&batch)?;
                        counts.rows_loaded += batch.len() as u64;
                        batch.clear();
                    }
                }
                Err(rejected) => {
                    counts.rows_rejected += 1;
                    if let Some(rejects) = rejects.as_deref_mut() {
                        rejects.write(&rejected)?;
                    }
                }
            }
            let rows = counts.rows_loaded + batch.len() as u64 + counts.rows_rejected;
            if rows % PROGRESS_EVERY == 0 {
                self.progress.set_message(format!("{rows} rows"));
            }
        }
        if let Some(reason) = lines.read_error() {
            return Err(ImportError::Unreadable {
                key: key.clone(),
                reason: reason.to_owned(),
            });
        }
        if !batch.is_empty() {
            counts.rows_new += sink(&batch)?;
            counts.rows_loaded += batch.len() as u64;
        }
        Ok(counts)
    }
}

/// Advances the progress bar by the bytes read from the source (compressed bytes for `.gz`, so
/// the bar's length is the files' sizes).
struct Counting {
    inner: Box<dyn Read + Send>,
    progress: ProgressBar,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}
