//! Loading one bulk file into one store: streamed through the ingest parser, one transaction per
//! file in the warehouse, rejected rows to a reject file, the ledger deciding what to skip.

use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::ledger::{self, LoadCounts};
use super::report::{FileOutcome, FileReport, RunSummary};
use super::source::{parse_source, Source, SourceFile, REJECTS_SUFFIX};
use super::ImportError;
use crate::actors::operational::sqlite::SqliteOperationalStore;
use crate::actors::operational::OperationalStore;
use crate::actors::warehouse::sqlite::{insert_tx, SqliteWarehouse, SOURCE_IMPORT};
use crate::actors::warehouse::WarehouseError;
use crate::model::csv::{CsvLines, RejectedRow};
use crate::model::{IngestedLine, LinePosition, ParseOptions};
use crate::sqlite::StoreErrorKind;

/// Lines handed to the store at a time: large enough that per-statement overhead vanishes, small
/// enough that memory stays flat whatever the file size.
const BATCH_LINES: usize = 2_048;

/// Rows between two updates of the progress message.
const PROGRESS_EVERY: u64 = 8_192;

/// Which store(s) an import fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The `sales` fact table (the usual case: bulk dumps are for analytics).
    #[default]
    Warehouse,
    /// The operational store only, so bulk-loaded invoices answer the query API.
    Operational,
    /// Both, the warehouse first.
    Both,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Warehouse => "warehouse",
            Target::Operational => "operational",
            Target::Both => "both",
        }
    }

    /// The single stores this target fills, in load order.
    fn stores(self) -> &'static [Target] {
        match self {
            Target::Warehouse => &[Target::Warehouse],
            Target::Operational => &[Target::Operational],
            Target::Both => &[Target::Warehouse, Target::Operational],
        }
    }
}

/// How an import run behaves.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub target: Target,
    /// Load files whose content changed since they were loaded, replacing their old rows.
    pub reload: bool,
    /// A file with more rejected rows than this share of its rows loads nothing.
    pub max_reject_ratio: f64,
    pub parse: ParseOptions,
    /// Folder of the reject files.
    pub reject_dir: PathBuf,
    /// Parse and count only: write nothing but the reject files.
    pub dry_run: bool,
}

/// Loads bulk files into the embedded stores. Cheap to share: the stores are behind `Arc`s.
pub struct Importer {
    warehouse: Arc<SqliteWarehouse>,
    operational: Option<Arc<SqliteOperationalStore>>,
    options: ImportOptions,
    /// For `s3://` sources; see [`Importer::with_s3`].
    s3: Option<aws_sdk_s3::Client>,
}

impl Importer {
    /// `operational` is needed when `options.target` includes it. The ledger always lives in the
    /// warehouse file, beside the rows it accounts for.
    ///
    /// # Errors
    /// [`ImportError::Source`] when the target needs the operational store and none is given.
    pub fn new(
        warehouse: Arc<SqliteWarehouse>,
        operational: Option<Arc<SqliteOperationalStore>>,
        options: ImportOptions,
    ) -> Result<Self, ImportError> {
        if options.target != Target::Warehouse && operational.is_none() && !options.dry_run {
            return Err(ImportError::Source {
                source_name: options.target.as_str().into(),
                reason: "this target needs the operational store, and none was opened".into(),
            });
        }
        Ok(Importer {
            warehouse,
            operational,
            options,
            s3: None,
        })
    }

    /// Lets the importer read `s3://bucket/prefix` sources with `client` (see
    /// [`super::s3::s3_client`]); without it they fail with a message.
    pub fn with_s3(mut self, client: aws_sdk_s3::Client) -> Self {
        self.s3 = Some(client);
        self
    }

    pub fn options(&self) -> &ImportOptions {
        &self.options
    }

    /// Imports every file of every source in `specs` (files, folders, globs), in key order. A
    /// source that cannot be listed and a file that fails are reported and the run goes on; the
    /// caller decides what a failure means (the CLI exits non-zero). Progress (bytes, rows) goes
    /// to `progress`; pass [`ProgressBar::hidden`] for none.
    pub async fn run(&self, specs: &[String], progress: &ProgressBar) -> RunSummary {
        let started = Instant::now();
        let mut reports = Vec::new();
        let mut work: Vec<(Arc<dyn Source>, SourceFile)> = Vec::new();
        for spec in specs {
            let listed = {
                let (spec, s3) = (spec.clone(), self.s3.clone());
                blocking(spec.clone(), move || {
                    let source: Arc<dyn Source> = Arc::from(parse_source(&spec, s3.as_ref())?);
                    let files = source.list()?;
                    Ok((source, files))
                })
                .await
            };
            match listed {
                Ok((source, files)) => {
                    work.extend(files.into_iter().map(|f| (Arc::clone(&source), f)));
                }
                Err(e) => {
                    let mut report =
                        FileReport::new(spec, self.options.target, FileOutcome::Failed);
                    report.error = Some(e.to_string());
                    report.emit();
                    reports.push(report);
                }
            }
        }
        let passes = if self.options.dry_run {
            1
        } else {
            self.options.target.stores().len() as u64
                + u64::from(self.options.target == Target::Operational)
        };
        progress.set_length(work.iter().map(|(_, f)| f.size).sum::<u64>() * passes);
        for (source, file) in work {
            reports.extend(self.import_file(source, file, progress).await);
        }
        RunSummary::new(reports, started.elapsed().as_secs_f64())
    }

    /// Imports one file into each store of the target: one report per store.
    pub async fn import_file(
        &self,
        source: Arc<dyn Source>,
        file: SourceFile,
        progress: &ProgressBar,
    ) -> Vec<FileReport> {
        let mut reports = Vec::new();
        if self.options.dry_run {
            let job = self.job(&source, &file, progress);
            let report = finish(
                &file,
                self.options.target,
                job.started,
                blocking(file.key.clone(), move || job.check()).await,
            );
            reports.push(report);
            return reports;
        }
        for &store in self.options.target.stores() {
            let job = self.job(&source, &file, progress);
            let started = job.started;
            let outcome = match store {
                Target::Warehouse => job.into_warehouse(&self.warehouse).await,
                _ => match &self.operational {
                    Some(op) => job.into_operational(&self.warehouse, op).await,
                    None => Err(ImportError::Source {
                        source_name: file.key.clone(),
                        reason: "the operational store is not open for this import".into(),
                    }),
                },
            };
            let report = finish(&file, store, started, outcome);
            report.emit();
            let failed = report.outcome == FileOutcome::Failed;
            reports.push(report);
            if failed {
                // With `both`, the operational store follows the warehouse: a file the warehouse
                // refused is not half-loaded elsewhere.
                break;
            }
        }
        reports
    }

    fn job(&self, source: &Arc<dyn Source>, file: &SourceFile, progress: &ProgressBar) -> Job {
        Job {
            source: Arc::clone(source),
            file: file.clone(),
            options: self.options.clone(),
            progress: progress.clone(),
            started: Instant::now(),
            ingested_at: Utc::now(),
        }
    }
}

/// What one load of one file into one store came to.
struct Loaded {
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
}

fn finish(
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
async fn blocking<T: Send + 'static>(
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
struct Job {
    source: Arc<dyn Source>,
    file: SourceFile,
    options: ImportOptions,
    progress: ProgressBar,
    started: Instant,
    ingested_at: DateTime<Utc>,
}

impl Job {
    /// `--dry-run`: parse, count, write the reject file.
    fn check(self) -> Result<Loaded, ImportError> {
        let mut rejects = RejectWriter::new(&self.options.reject_dir, &self.file);
        let counts = self.scan(Some(&mut rejects), |_| Ok(0))?;
        Ok(Loaded {
            outcome: FileOutcome::Checked,
            counts,
            reject_file: rejects.finish()?,
            note: None,
        })
    }

    /// The warehouse load: ledger decision, old rows out (on reload), new rows in, ledger row,
    /// all in one transaction on the warehouse's writer.
    async fn into_warehouse(self, warehouse: &SqliteWarehouse) -> Result<Loaded, ImportError> {
        // `transaction` commits on `Ok` and rolls back on `Err(WarehouseError)`; the import's own
        // reason for rolling back travels beside it.
        let failure: Arc<Mutex<Option<ImportError>>> = Arc::default();
        let failed = Arc::clone(&failure);
        let result = warehouse
            .transaction(move |tx| {
                self.warehouse_tx(tx).map_err(|e| match e {
                    ImportError::Warehouse(w) => w,
                    other => {
                        let rolled_back = WarehouseError::Backend(other.to_string());
                        *failed.lock().expect("not poisoned") = Some(other);
                        rolled_back
                    }
                })
            })
            .await;
        result.map_err(|e| {
            failure
                .lock()
                .expect("not poisoned")
                .take()
                .unwrap_or(ImportError::Warehouse(e))
        })
    }

    fn warehouse_tx(self, tx: &rusqlite::Transaction<'_>) -> Result<Loaded, ImportError> {
        let path = PathBuf::from(tx.path().unwrap_or("warehouse"));
        let sql =
            |e: rusqlite::Error| ImportError::Warehouse(WarehouseError::from_sqlite(&path, &e));
        tx.execute_batch(ledger::LEDGER_DDL).map_err(sql)?;
        let previous = ledger::lookup(tx, &self.file.key, Target::Warehouse).map_err(sql)?;
        if let Some(decision) = self.ledger_decision(previous.as_ref()) {
            return Ok(decision);
        }
        if let Some(old) = &previous {
            ledger::remove_sales(tx, old.id).map_err(sql)?;
        }
        let id = ledger::record(
            tx,
            &self.file,
            Target::Warehouse,
            &LoadCounts::default(),
            None,
        )
        .map_err(sql)?;
        let source = ledger::sales_source(id);
        let mut rejects = RejectWriter::new(&self.options.reject_dir, &self.file);
        let counts = self.scan(Some(&mut rejects), |batch| {
            Ok(insert_tx(tx, batch, &source)?)
        })?;
        let reject_file = rejects.finish()?;
        self.check_ratio(&counts, reject_file.as_deref())?;
        ledger::record(
            tx,
            &self.file,
            Target::Warehouse,
            &counts,
            reject_file.as_deref(),
        )
        .map_err(sql)?;
        Ok(Loaded {
            outcome: FileOutcome::Loaded,
            counts,
            reject_file,
            note: None,
        })
    }

    /// The operational load: a counting pass decides (only when the warehouse did not just do
    /// it), then lines are upserted by id in batches (idempotent, so a crash half-way is repaired
    /// by the next run), then the ledger row. On `--reload` the new lines replace those with the
    /// same id; lines the old content had and the new one lacks stay in the operational store
    /// (it has no per-file tag), unlike in the warehouse.
    async fn into_operational(
        self,
        warehouse: &SqliteWarehouse,
        store: &Arc<SqliteOperationalStore>,
    ) -> Result<Loaded, ImportError> {
        let file = self.file.clone();
        let previous = warehouse
            .transaction(move |tx| {
                let path = PathBuf::from(tx.path().unwrap_or("warehouse"));
                let sql = |e: rusqlite::Error| WarehouseError::from_sqlite(&path, &e);
                tx.execute_batch(ledger::LEDGER_DDL).map_err(sql)?;
                ledger::lookup(tx, &file.key, Target::Operational).map_err(sql)
            })
            .await?;
        if let Some(decision) = self.ledger_decision(previous.as_ref()) {
            return Ok(decision);
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
                runtime.block_on(store.upsert(batch))?;
                Ok(batch.len() as u64)
            })?;
            self.check_ratio(&counts, reject_file.as_deref())?;
            Ok((self.file, counts, reject_file))
        })
        .await?;
        let (f, c, r) = (file.clone(), counts.clone(), reject_file.clone());
        warehouse
            .transaction(move |tx| {
                let path = PathBuf::from(tx.path().unwrap_or("warehouse"));
                ledger::record(tx, &f, Target::Operational, &c, r.as_deref())
                    .map_err(|e| WarehouseError::from_sqlite(&path, &e))
            })
            .await?;
        Ok(Loaded {
            outcome: FileOutcome::Loaded,
            counts,
            reject_file,
            note: None,
        })
    }

    /// Skip or report a file the ledger knows; `None` means load it.
    fn ledger_decision(&self, previous: Option<&ledger::LedgerEntry>) -> Option<Loaded> {
        let previous = previous?;
        if previous.change_token == self.file.change_token {
            return Some(Loaded::only(FileOutcome::Skipped, None));
        }
        if self.options.reload {
            return None;
        }
        Some(Loaded::only(
            FileOutcome::Changed,
            Some(format!(
                "changed since it was loaded (size {} -> {} bytes); not loaded: pass --reload to replace its rows",
                previous.size, self.file.size
            )),
        ))
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
        for row in lines.by_ref() {
            match row {
                Ok(line) => {
                    batch.push(IngestedLine {
                        line,
                        store_id: SOURCE_IMPORT.to_owned(),
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

/// The reject file of one file: `line,reason,row` (the row as it was, re-quoted as CSV), created
/// at the first bad row. Its name carries the file's change token, so re-checking the same
/// content rewrites the same file and another version of the file gets its own.
struct RejectWriter {
    path: PathBuf,
    writer: Option<csv::Writer<BufWriter<File>>>,
}

impl RejectWriter {
    fn new(dir: &Path, file: &SourceFile) -> Self {
        let name: String = Path::new(&file.key)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "import".into())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let token: String = file
            .change_token
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        RejectWriter {
            path: std::path::absolute(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .join(format!("{name}-{token}{REJECTS_SUFFIX}")),
            writer: None,
        }
    }

    fn fail(&self, error: impl Into<io::Error>) -> ImportError {
        ImportError::RejectFile {
            path: self.path.clone(),
            error: error.into(),
        }
    }

    fn write(&mut self, rejected: &RejectedRow) -> Result<(), ImportError> {
        if self.writer.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| self.fail(e))?;
            }
            let file = File::create(&self.path).map_err(|e| self.fail(e))?;
            let mut writer = csv::Writer::from_writer(BufWriter::new(file));
            writer
                .write_record(["line", "reason", "row"])
                .map_err(|e| self.fail(e))?;
            self.writer = Some(writer);
        }
        let e = &rejected.error;
        let line = match e.position {
            LinePosition::Row(r) => r.to_string(),
            LinePosition::Index(i) => i.to_string(),
        };
        let reason = match e.field {
            Some(f) => format!("field {f}: {}", e.reason),
            None => e.reason.clone(),
        };
        let writer = self.writer.as_mut().expect("created above");
        writer
            .write_record([line.as_str(), reason.as_str(), rejected.raw.as_str()])
            .map_err(|e| ImportError::RejectFile {
                path: self.path.clone(),
                error: e.into(),
            })
    }

    /// Flushes the file; its path when any row was rejected.
    fn finish(self) -> Result<Option<String>, ImportError> {
        match self.writer {
            None => Ok(None),
            Some(mut w) => {
                w.flush().map_err(|e| ImportError::RejectFile {
                    path: self.path.clone(),
                    error: e,
                })?;
                Ok(Some(self.path.display().to_string()))
            }
        }
    }

    /// The path when an earlier pass over the same content wrote it.
    fn existing(self) -> Option<String> {
        self.path.is_file().then(|| self.path.display().to_string())
    }
}

impl ImportOptions {
    /// The options the settings give (`[import]`, reject folder under `data_dir`), without reload
    /// or dry run.
    pub fn from_settings(settings: &crate::config::Settings) -> Self {
        let import = &settings.import;
        ImportOptions {
            target: import.target,
            reload: false,
            max_reject_ratio: import.max_reject_ratio,
            parse: ParseOptions {
                date_order: import.date_order,
                delimiter: None,
            },
            reject_dir: settings.data_dir.join(&import.reject_dir),
            dry_run: false,
        }
    }
}

impl Importer {
    /// Opens the embedded stores the settings name (`warehouse.path`, and `operational.path`
    /// when the target needs it, relative to `data_dir`) and builds an importer over them.
    ///
    /// # Errors
    /// [`ImportError::Source`] when a needed store's backend is not `embedded` (bulk loads into
    /// Redshift or DynamoDB are not done by shopstream), the errors of opening the SQLite files.
    pub fn open(
        settings: &crate::config::Settings,
        options: ImportOptions,
    ) -> Result<Self, ImportError> {
        use crate::config::Backend;
        let not_embedded = |what: &str| ImportError::Source {
            source_name: options.target.as_str().into(),
            reason: format!(
                "imports load the embedded {what} only; set {what}.backend = \"embedded\""
            ),
        };
        if settings.warehouse.backend != Backend::Embedded {
            return Err(not_embedded("warehouse"));
        }
        let warehouse = SqliteWarehouse::open(&settings.data_dir.join(&settings.warehouse.path))?;
        let operational = if options.target == Target::Warehouse || options.dry_run {
            None
        } else {
            if settings.operational.backend != Backend::Embedded {
                return Err(not_embedded("operational"));
            }
            Some(Arc::new(SqliteOperationalStore::open(
                &settings.data_dir.join(&settings.operational.path),
            )?))
        };
        Importer::new(Arc::new(warehouse), operational, options)
    }
}
