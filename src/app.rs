//! Assembles shopstream from its settings: the backend of every stage, the pipeline of actors, and
//! the state the HTTP API shares. `serve`, `demo` and the tools that need a backend start here.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::actors::archive::Archiver;
use crate::actors::dead_letter::DeadLetters;
use crate::actors::operational::OperationalWriter;
use crate::actors::pipeline::{Pipeline, PipelineParts};
use crate::actors::progress::Progress;
use crate::actors::shard::dedup::DedupWindows;
use crate::actors::shard::ShardSinkSettings;
use crate::actors::sink::SinkWriter;
use crate::actors::warehouse::WarehouseForwarder;
use crate::config::{Backend, Settings};
use crate::object_store::ObjectStore;
use crate::store::{OperationalStore, Warehouse};
use crate::stream::line_index::LineIndex;
use crate::stream::shared_reads::{SharedReads, WINDOW_BYTES};
use crate::stream::{AllShards, CheckpointStore, ShardOwnership, Stream};

/// The backend of every stage.
#[derive(Clone)]
pub struct Backends {
    /// This instance's name: the lease owner on Kinesis (ECS task id or host and pid).
    pub instance: String,
    pub stream: Arc<dyn Stream>,
    /// Line ids and idempotency keys beside the stream (docs/line-identity.md).
    pub line_index: Arc<dyn LineIndex>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Which shards this instance reads: all embedded; on Kinesis, those whose lease it holds
    /// (several instances share one stream).
    pub ownership: Arc<dyn ShardOwnership>,
    pub archive: Arc<dyn ObjectStore>,
    pub operational: Arc<dyn OperationalStore>,
    pub warehouse: Arc<dyn Warehouse>,
    pub dead_letter: Arc<dyn ObjectStore>,
}

/// The stream, its line-id index, its checkpoint store and which of its shards this instance reads.
type StreamParts = (
    Arc<dyn Stream>,
    Arc<dyn LineIndex>,
    Arc<dyn CheckpointStore>,
    Arc<dyn ShardOwnership>,
);

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
        use crate::object_store::local::LocalObjectStore;
        use crate::object_store::s3::S3ObjectStore;
        use crate::store::operational::dynamodb::DynamoOperationalStore;
        use crate::store::operational::sqlite::SqliteOperationalStore;
        use crate::store::warehouse::firehose::FirehoseWarehouse;
        use crate::store::warehouse::sqlite::SqliteWarehouse;
        use crate::stream::embedded::EmbeddedStream;
        use crate::stream::kinesis::{DynamoLineIndex, KinesisStream, LeaseCoordinator};

        let uses_aws = [
            settings.stream.backend,
            settings.archive.backend,
            settings.operational.backend,
            settings.warehouse.backend,
            settings.dead_letter.backend,
        ]
        .contains(&Backend::Aws);
        let clients = if uses_aws {
            Some(crate::aws::AwsClients::from_config(&settings.aws).await)
        } else {
            None
        };
        let aws = || {
            clients
                .as_ref()
                .expect("clients exist when a stage uses aws")
        };
        if settings.uses_data_dir() {
            std::fs::create_dir_all(&settings.data_dir).with_context(|| {
                format!("cannot create data_dir {}", settings.data_dir.display())
            })?;
        }

        let instance = instance_name();
        let (stream, line_index, checkpoints, ownership): StreamParts =
            match settings.stream.backend {
                Backend::Embedded => {
                    let stream = EmbeddedStream::open(
                        &settings.data_dir.join("stream.sqlite"),
                        settings.stream.shards,
                        settings.stream.retention,
                        settings.stream.max_pending_appends,
                    )
                    .context("cannot open the embedded stream (stream.backend = \"embedded\")")?;
                    stream.set_max_pending_bytes(settings.stream.max_pending_bytes);
                    let checkpoints = stream.checkpoints();
                    let stream = Arc::new(stream);
                    (
                        stream.clone(),
                        stream,
                        Arc::new(checkpoints),
                        Arc::new(AllShards),
                    )
                }
                Backend::Aws => {
                    let kinesis = &settings.stream.kinesis;
                    let leases = LeaseCoordinator::from_config(aws(), kinesis, instance.clone());
                    let stream: Arc<dyn Stream> =
                        Arc::new(KinesisStream::from_config(aws(), &settings.aws, kinesis));
                    let line_index = Arc::new(DynamoLineIndex::new(
                        aws().dynamodb.clone(),
                        &kinesis.line_index_table,
                        stream.clone(),
                        kinesis.line_index_retention,
                        settings.server.request_timeout,
                    ));
                    (
                        stream,
                        line_index,
                        Arc::new(leases.checkpoints()),
                        Arc::new(leases),
                    )
                }
            };
        let objects = |backend: Backend,
                       dir: &Path,
                       key: &str|
         -> anyhow::Result<Arc<dyn ObjectStore>> {
            Ok(match backend {
                Backend::Embedded => Arc::new(
                    LocalObjectStore::new(data_path(settings, dir))
                        .with_context(|| format!("cannot open the folder of {key}"))?,
                ),
                // The dead letters share the archive's bucket.
                Backend::Aws => Arc::new(S3ObjectStore::from_config(aws(), &settings.archive.s3)),
            })
        };
        let archive = objects(
            settings.archive.backend,
            &settings.archive.dir,
            "archive.dir",
        )?;
        let dead_letter = objects(
            settings.dead_letter.backend,
            &settings.dead_letter.dir,
            "dead_letter.dir",
        )?;
        let operational: Arc<dyn OperationalStore> = match settings.operational.backend {
            Backend::Embedded => Arc::new(
                SqliteOperationalStore::open(&data_path(settings, &settings.operational.path))
                    .context("cannot open the operational store (operational.path)")?,
            ),
            Backend::Aws => Arc::new(DynamoOperationalStore::from_config(
                aws(),
                &settings.aws,
                &settings.operational.dynamodb,
            )),
        };
        let warehouse: Arc<dyn Warehouse> = match settings.warehouse.backend {
            Backend::Embedded => Arc::new(
                SqliteWarehouse::open(&data_path(settings, &settings.warehouse.path))
                    .context("cannot open the warehouse (warehouse.path)")?,
            ),
            Backend::Aws => Arc::new(FirehoseWarehouse::from_config(
                aws(),
                &settings.aws,
                &settings.warehouse.firehose,
            )),
        };
        Ok(Backends {
            instance,
            stream,
            line_index,
            checkpoints,
            ownership,
            archive,
            operational,
            warehouse,
            dead_letter,
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

/// The exclusive claim of one process on its `data_dir`: an advisory lock (`flock`) on the file
/// `data_dir/LOCK`, which holds the pid and command of the holder. Two processes appending to one
/// embedded stream number records over each other (`UNIQUE constraint failed`), so `serve`,
/// `demo` and `dead-letter redrive` take it and a second one exits naming the first. The
/// operating system releases it when the process ends, however it ends; the file itself stays.
/// `import` does not take it: it may load into the warehouse of a running `serve`, in short
/// transactions.
#[derive(Debug)]
pub struct DataDirLock {
    /// Held open: closing it releases the lock.
    _file: std::fs::File,
}

/// The name of the lock file in `data_dir`.
pub const DATA_DIR_LOCK_FILE: &str = "LOCK";

impl DataDirLock {
    /// Takes the lock for `command` when some stage keeps its data in `data_dir` (creating the
    /// folder); `None` when none does (every stage on AWS: nothing local to protect).
    ///
    /// # Errors
    /// Another process holds the lock (named with its pid and command), or the lock file cannot
    /// be created.
    pub fn acquire(settings: &Settings, command: &str) -> anyhow::Result<Option<DataDirLock>> {
        use std::io::{Read, Seek, Write};
        if !settings.uses_data_dir() {
            return Ok(None);
        }
        let dir = &settings.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
        let path = dir.join(DATA_DIR_LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        if !try_flock(&file).with_context(|| format!("cannot lock {}", path.display()))? {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.split_whitespace().collect::<Vec<_>>();
            let who = match holder.as_slice() {
                [pid, command, ..] => format!("`shopstream {command}` (pid {pid})"),
                [pid] => format!("pid {pid}"),
                [] => "another process".to_owned(),
            };
            anyhow::bail!(
                "data folder {} is in use by {who}: only one process may run the pipeline on \
                 a data folder; stop that one first, or give this one its own data_dir \
                 (--data-dir or SHOPSTREAM__DATA_DIR)",
                dir.display()
            );
        }
        let record = format!("{} {command}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(record.as_bytes()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write the lock file {}", path.display()))?;
        Ok(Some(DataDirLock { _file: file }))
    }
}

/// Takes an exclusive `flock(2)` on `file` without waiting: `Ok(false)` when another open file
/// description holds it. (`std::fs::File::try_lock` does the same from Rust 1.89 on, past this
/// crate's minimum version.)
fn try_flock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor `file` owns for the whole call; the lock ends when the
    // descriptor is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// This instance's name in the lease table: the ECS task (from its metadata URI) or host and pid.
fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "shopstream".to_owned());
    let task = std::env::var("ECS_CONTAINER_METADATA_URI_V4")
        .ok()
        .and_then(|uri| uri.rsplit('/').next().map(str::to_owned));
    match task {
        Some(task) => format!("{host}-{task}"),
        None => format!("{host}-{}", std::process::id()),
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
        // The workers of a shard share its reads (one read of each record for all three sinks).
        stream: Arc::new(SharedReads::new(backends.stream.clone(), WINDOW_BYTES)),
        checkpoints: backends.checkpoints.clone(),
        sinks,
        dead_letters: backends.dead_letters(settings),
        dedup: DedupWindows::new(backends.dead_letter.clone()),
        progress,
        ownership: backends.ownership.clone(),
        settings: ShardSinkSettings {
            read_batch_records: settings.sinks.read_batch_for(settings.stream.backend),
            poll_interval: settings.sinks.poll_interval,
            checkpoint_interval: settings.sinks.checkpoint_interval,
            retry: settings.sinks.retry.clone(),
            dedup_window_lines: settings.sinks.dedup_window_lines,
            dedup_save_interval: settings.sinks.dedup_save_interval,
        },
        shard_refresh: settings.sinks.shard_refresh,
        priority: settings.sinks.priority(),
    };
    Pipeline::start(parts)
        .await
        .context("cannot start the pipeline")
}
