//! Loading bulk files into the stores: the [`Importer`] lists the sources and loads each file into
//! each store of the target ([`job`]: one file into one store, streamed), writing
//! its bad rows to a reject file ([`rejects`]). It talks to the stores through their traits
//! ([`Warehouse`], [`OperationalStore`]); the ledger and the per-file load are the
//! warehouse's ([`Warehouse::load_file`]).

mod job;
mod rejects;

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use indicatif::ProgressBar;

use super::options::{ImportOptions, Target};
use super::report::{FileOutcome, FileReport, RunSummary};
use super::source::{Source, SourceFile};
use super::spec::parse_source;
use super::ImportError;
use crate::store::operational::sqlite::SqliteOperationalStore;
use crate::store::warehouse::sqlite::SqliteWarehouse;
use crate::store::warehouse::LoadedInto;
use crate::store::{OperationalStore, Warehouse};
use job::{blocking, finish, Job};

/// A file as a source listed it, with the source that reads it.
pub(crate) struct Listed {
    pub(crate) source: Arc<dyn Source>,
    pub(crate) file: SourceFile,
}

/// Loads bulk files into the stores. Cheap to share: the stores are behind `Arc`s.
pub struct Importer {
    warehouse: Arc<dyn Warehouse>,
    operational: Option<Arc<dyn OperationalStore>>,
    options: ImportOptions,
    /// For `s3://` sources; see [`Importer::with_s3`].
    s3: Option<aws_sdk_s3::Client>,
}

impl Importer {
    /// `operational` is needed when `options.target` includes it. The ledger always lives in the
    /// warehouse, beside the rows it accounts for.
    ///
    /// # Errors
    /// [`ImportError::Source`] when the target needs the operational store and none is given.
    pub fn new(
        warehouse: Arc<dyn Warehouse>,
        operational: Option<Arc<dyn OperationalStore>>,
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
            Some(
                SqliteOperationalStore::open(&settings.data_dir.join(&settings.operational.path))?
                    .shared(),
            )
        };
        Importer::new(warehouse.shared(), operational, options)
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
        let (listed, mut reports) = self.list(specs).await;
        reports.extend(self.load(listed, progress).await);
        RunSummary::new(reports, started.elapsed().as_secs_f64())
    }

    /// The files of every source in `specs`, as listed (stamps, no change tokens yet), and a
    /// report for each source that could not be listed.
    pub(crate) async fn list(&self, specs: &[String]) -> (Vec<Listed>, Vec<FileReport>) {
        let mut reports = Vec::new();
        let mut listed = Vec::new();
        for spec in specs {
            let found = {
                let (spec, s3) = (spec.clone(), self.s3.clone());
                blocking(spec.clone(), move || {
                    let source: Arc<dyn Source> = Arc::from(parse_source(&spec, s3.as_ref())?);
                    let files = source.list()?;
                    Ok((source, files))
                })
                .await
            };
            match found {
                Ok((source, files)) => listed.extend(files.into_iter().map(|file| Listed {
                    source: Arc::clone(&source),
                    file,
                })),
                Err(e) => {
                    let mut report =
                        FileReport::new(spec, self.options.target, FileOutcome::Failed);
                    report.error = Some(e.to_string());
                    report.emit();
                    reports.push(report);
                }
            }
        }
        (listed, reports)
    }

    /// Imports listed files in order: the reports of each file into each store.
    pub(crate) async fn load(
        &self,
        listed: Vec<Listed>,
        progress: &ProgressBar,
    ) -> Vec<FileReport> {
        let passes = if self.options.dry_run {
            1
        } else {
            self.options.target.stores().len() as u64
                + u64::from(self.options.target == Target::Operational)
        };
        progress.set_length(listed.iter().map(|l| l.file.size).sum::<u64>() * passes);
        let mut reports = Vec::new();
        for Listed { source, file } in listed {
            reports.extend(self.import_file(source, file, progress).await);
        }
        reports
    }

    /// Imports one file into each store of the target: one report per store.
    pub async fn import_file(
        &self,
        source: Arc<dyn Source>,
        file: SourceFile,
        progress: &ProgressBar,
    ) -> Vec<FileReport> {
        let mut reports = Vec::new();
        let identified = {
            let source = Arc::clone(&source);
            let started = Instant::now();
            let listed = file.clone();
            blocking(file.key.clone(), move || source.identify(file))
                .await
                .map_err(|e| (listed, started, e))
        };
        let file = match identified {
            Ok(file) => file,
            Err((listed, started, e)) => {
                let report = finish(&listed, self.options.target, started, Err(e));
                report.emit();
                reports.push(report);
                return reports;
            }
        };
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
        for &into in self.options.target.stores() {
            let job = self.job(&source, &file, progress);
            let started = job.started;
            let outcome = match into {
                LoadedInto::Warehouse => job.into_warehouse(self.warehouse.as_ref()).await,
                LoadedInto::Operational => match &self.operational {
                    Some(op) => job.into_operational(self.warehouse.as_ref(), op).await,
                    None => Err(ImportError::Source {
                        source_name: file.key.clone(),
                        reason: "the operational store is not open for this import".into(),
                    }),
                },
            };
            let report = finish(&file, into.into(), started, outcome);
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
