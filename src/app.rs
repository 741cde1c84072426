//! Assembles shopstream from its settings: the backend of every stage, the pipeline of actors, and
//! the state the HTTP API shares. `serve`, `demo` and the tools that need a backend start here.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::actors::archive::Archiver;
use crate::actors::dead_letter::DeadLetters;
use crate::actors::operational::writer::OperationalWriter;
use crate::actors::operational::OperationalStore;
use crate::actors::pipeline::{Pipeline, PipelineParts};
use crate::actors::progress::Progress;
use crate::actors::shard::ShardSinkSettings;
use crate::actors::sink::SinkWriter;
use crate::actors::warehouse::forwarder::WarehouseForwarder;
use crate::actors::warehouse::Warehouse;
use crate::config::{Backend, Settings};
use crate::object_store::ObjectStore;
use crate::stream::{CheckpointStore, Stream};

/// The backend of every stage.
#[derive(Clone)]
pub struct Backends {
    pub stream: Arc<dyn Stream>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub archive: Arc<dyn ObjectStore>,
    pub operational: Arc<dyn OperationalStore>,
    pub warehouse: Arc<dyn Warehouse>,
    pub dead_letter: Arc<dyn ObjectStore>,
}

/// A path from the settings: absolute as given, relative ones under `data_dir`.
pub fn data_path(settings: &Settings, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        settings.data_dir.join(p)
    }
}

impl Backends {
    /// Opens (and creates where missing) every stage's backend as the settings choose.
    ///
    /// # Errors
    /// A backend that cannot be opened, named with the setting that chose it.
    pub async fn open(settings: &Settings) -> anyhow::Result<Backends> {
        use crate::actors::operational::sqlite::SqliteOperationalStore;
        use crate::actors::warehouse::sqlite::SqliteWarehouse;
        use crate::object_store::local::LocalObjectStore;
        use crate::stream::embedded::EmbeddedStream;

        if [
            settings.stream.backend,
            settings.archive.backend,
            settings.operational.backend,
            settings.warehouse.backend,
            settings.dead_letter.backend,
        ]
        .contains(&Backend::Aws)
        {
            anyhow::bail!(
                "a stage is set to backend = \"aws\", which this build does not support yet; use \"embedded\""
            );
        }
        std::fs::create_dir_all(&settings.data_dir)
            .with_context(|| format!("cannot create data_dir {}", settings.data_dir.display()))?;
        let stream = EmbeddedStream::open(
            &settings.data_dir.join("stream.sqlite"),
            settings.stream.shards,
            settings.stream.retention,
            settings.stream.max_pending_appends,
        )
        .context("cannot open the embedded stream (stream.backend = \"embedded\")")?;
        let checkpoints: Arc<dyn CheckpointStore> = Arc::new(
            stream
                .checkpoints()
                .context("cannot open the checkpoints beside the embedded stream")?,
        );
        let archive = LocalObjectStore::new(data_path(settings, &settings.archive.dir))
            .context("cannot open the archive folder (archive.dir)")?;
        let dead_letter = LocalObjectStore::new(data_path(settings, &settings.dead_letter.dir))
            .context("cannot open the dead-letter folder (dead_letter.dir)")?;
        let operational =
            SqliteOperationalStore::open(&data_path(settings, &settings.operational.path))
                .context("cannot open the operational store (operational.path)")?;
        let warehouse = SqliteWarehouse::open(&data_path(settings, &settings.warehouse.path))
            .context("cannot open the warehouse (warehouse.path)")?;
        Ok(Backends {
            stream: Arc::new(stream),
            checkpoints,
            archive: Arc::new(archive),
            operational: Arc::new(operational),
            warehouse: Arc::new(warehouse),
            dead_letter: Arc::new(dead_letter),
        })
    }

    /// The three sinks over these backends.
    pub fn sinks(&self, settings: &Settings) -> Vec<Arc<dyn SinkWriter>> {
        vec![
            Arc::new(Archiver::new(
                self.archive.clone(),
                &settings.archive.prefix,
                settings.archive.flush_bytes,
                settings.archive.flush_age,
            )),
            Arc::new(OperationalWriter::new(self.operational.clone())),
            Arc::new(WarehouseForwarder::new(self.warehouse.clone())),
        ]
    }

    pub fn dead_letters(&self, settings: &Settings) -> DeadLetters {
        DeadLetters::new(
            self.dead_letter.clone(),
            settings.dead_letter.prefix.clone(),
        )
    }
}

/// Starts the pipeline of shard actors over `backends`.
///
/// # Errors
/// When the stream cannot list its shards.
pub async fn start_pipeline(
    settings: &Settings,
    backends: &Backends,
    sinks: Vec<Arc<dyn SinkWriter>>,
    progress: Arc<Progress>,
) -> anyhow::Result<Arc<Pipeline>> {
    let parts = PipelineParts {
        stream: backends.stream.clone(),
        checkpoints: backends.checkpoints.clone(),
        sinks,
        dead_letters: backends.dead_letters(settings),
        progress,
        settings: ShardSinkSettings {
            read_batch_records: settings.sinks.read_batch_records,
            poll_interval: settings.sinks.poll_interval,
            checkpoint_interval: settings.sinks.checkpoint_interval,
            retry: settings.sinks.retry.clone(),
        },
        shard_refresh: settings.sinks.shard_refresh,
    };
    Pipeline::start(parts)
        .await
        .context("cannot start the pipeline")
}
