//! Settings of the stream, the sinks and their shared retry and backpressure policy.

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

use super::aws::{DynamoDbConfig, FirehoseConfig, KinesisConfig, S3Config};
use super::server::bad;
use super::ConfigError;

/// Where a stage keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// On this machine, under `data_dir`: no AWS, no server.
    Embedded,
    /// On AWS (or the local AWS-compatible servers): the stage's own AWS section
    /// (`[stream.kinesis]`, `[archive.s3]`, ...) and the shared `[aws]`.
    Aws,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub backend: Backend,
    /// Embedded: number of shards. Lines are placed by a hash of InvoiceNo.
    pub shards: u32,
    /// How long the stream keeps records. Embedded: records are removed once every sink has
    /// checkpointed past them and they are at least this old. Aws: the Kinesis stream's retention
    /// period (24 h unless raised), which Kinesis enforces whether sinks have read or not;
    /// `sinks.max_lag` must stay well inside it.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Embedded: how many appends may wait for the writer before ingest answers 503.
    pub max_pending_appends: usize,
    /// Embedded: how many bytes of records may wait for the writer before ingest answers 503.
    pub max_pending_bytes: usize,
    /// Aws: the Kinesis stream and its lease table.
    pub kinesis: KinesisConfig,
}

impl StreamConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=256).contains(&self.shards) {
            return Err(bad("stream.shards", "must be between 1 and 256"));
        }
        if self.max_pending_appends == 0 {
            return Err(bad("stream.max_pending_appends", "must be greater than 0"));
        }
        if self.max_pending_bytes == 0 {
            return Err(bad("stream.max_pending_bytes", "must be greater than 0"));
        }
        Ok(())
    }
}

/// Retry and backpressure shared by the three sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksConfig {
    /// Most records a shard reader takes from the stream in one read; unset, it depends on the
    /// stream (see [`SinksConfig::read_batch_for`]).
    pub read_batch_records: Option<usize>,
    /// How long a shard reader waits before polling an idle shard again.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// When any sink is this many stream records (one record carries the lines of one invoice
    /// from one request) behind the head of a shard, ingest answers 503 with Retry-After.
    pub backlog_high_water_records: u64,
    /// When any sink's oldest unprocessed record has been in the stream this long, ingest answers
    /// 503 with Retry-After and readiness says so: lines wait at the stores instead of in a
    /// stream that drops them after its retention. At most half of `stream.retention`, and at
    /// least twice `archive.flush_age`.
    #[serde(with = "humantime_serde")]
    pub max_lag: Duration,
    /// How often checkpoints are written while a sink is busy.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// How often the stream's shard list is read again (new shards after a reshard, released
    /// records).
    #[serde(with = "humantime_serde")]
    pub shard_refresh: Duration,
    /// Ids of the last this many lines each (sink, shard) worker read, kept to drop a line the
    /// stream holds twice (a client resent a request whose Kinesis puts partly succeeded); 0
    /// turns the dedup off. 16 bytes each when saved, about 64 in memory.
    pub dedup_window_lines: usize,
    /// Least time between two saves of a worker's dedup window (saved once the checkpoint reaches
    /// the unit it was copied after, and when the worker stops; a restart fills in the lines
    /// written since the last save from the stream).
    #[serde(with = "humantime_serde")]
    pub dedup_save_interval: Duration,
    /// How the sinks' threads stand below ingest for CPU: acknowledgements first, the sinks on
    /// what the cores have left (see [`crate::actors::priority`]).
    pub cpu_class: CpuClass,
    /// With `cpu_class = "nice"`: how many steps of CPU priority (Linux nice) the sinks' threads
    /// run below ingest, 0 to 19.
    pub nice: i32,
    pub retry: RetryConfig,
}

/// `sinks.cpu_class`: the scheduling class of the sinks' threads on Linux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuClass {
    /// `SCHED_IDLE`: only CPU no thread of the normal class wants.
    Idle,
    /// The normal class, `sinks.nice` steps below ingest.
    Nice,
}

/// Records per read when `sinks.read_batch_records` is unset, embedded. The two stores write
/// what a read brings in one transaction, so a larger read costs fewer commits and fewer pages
/// written again; but each sink holds what it read until written, so a read also bounds memory
/// while ingest outruns the sinks. 541,909 lines, 2 cores: peak RSS 287 MB at 500 and 173 MB at
/// 100 when each sink decoded its own copy; with the lines decoded once per record for the
/// sinks, 300 gives 160-162 MB and 13.2 us a line end to end against 15.1 us at 100
/// (docs/benchmarks.md).
pub const EMBEDDED_READ_BATCH_RECORDS: usize = 300;

/// The same on Kinesis: a shard allows 5 GetRecords calls a second and takes up to 1,000 records
/// a second, so a reader must take at least 200 a call to keep up with a full shard.
pub const KINESIS_READ_BATCH_RECORDS: usize = 500;

impl SinksConfig {
    /// The priority the sinks' threads take.
    pub fn priority(&self) -> crate::actors::priority::SinkPriority {
        use crate::actors::priority::SinkPriority;
        match self.cpu_class {
            CpuClass::Idle => SinkPriority::Idle,
            CpuClass::Nice => SinkPriority::Nice(self.nice),
        }
    }

    /// Records per read from a stream on `backend`: the setting, or the backend's default.
    pub fn read_batch_for(&self, backend: Backend) -> usize {
        self.read_batch_records.unwrap_or(match backend {
            Backend::Embedded => EMBEDDED_READ_BATCH_RECORDS,
            Backend::Aws => KINESIS_READ_BATCH_RECORDS,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.read_batch_records == Some(0) {
            return Err(bad("sinks.read_batch_records", "must be greater than 0"));
        }
        if !(0..=19).contains(&self.nice) {
            return Err(bad(
                "sinks.nice",
                "must be from 0 (the sinks at ingest's CPU priority) to 19 (the lowest)",
            ));
        }
        if self.backlog_high_water_records == 0 {
            return Err(bad(
                "sinks.backlog_high_water_records",
                "must be greater than 0",
            ));
        }
        self.retry.validate()
    }

    /// `max_lag` against the stream's retention: ingest must refuse lines well before a sink
    /// falls so far behind that the stream drops what it has not read. And against the archive's
    /// `flush_age`: the archive holds lines that long by design before it checkpoints them, so a
    /// lag limit near it would turn stores away while every sink works.
    pub fn validate_lag(
        &self,
        retention: Duration,
        archive_flush_age: Duration,
    ) -> Result<(), ConfigError> {
        if self.max_lag.is_zero() {
            return Err(bad("sinks.max_lag", "must be greater than 0"));
        }
        if self.max_lag > retention / 2 {
            return Err(bad(
                "sinks.max_lag",
                &format!(
                    "{} is not well inside stream.retention ({}): make it at most half of it",
                    humantime::format_duration(self.max_lag),
                    humantime::format_duration(retention)
                ),
            ));
        }
        if self.max_lag < archive_flush_age * 2 {
            return Err(bad(
                "sinks.max_lag",
                &format!(
                    "{} is less than twice archive.flush_age ({}), which the archive holds lines \
                     for before it writes them: raise sinks.max_lag (and stream.retention with it) \
                     or lower archive.flush_age",
                    humantime::format_duration(self.max_lag),
                    humantime::format_duration(archive_flush_age)
                ),
            ));
        }
        Ok(())
    }
}

/// Jittered exponential backoff for failing backend calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in a row of a call to the stream, the checkpoint store or the dead-letter store
    /// before the (sink, shard) worker restarts from its checkpoint. A sink's transient failures
    /// are retried without limit; only lines the backend refuses go to dead letters.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_attempts == 0 {
            return Err(bad("sinks.retry.max_attempts", "must be at least 1"));
        }
        if self.initial_backoff > self.max_backoff {
            return Err(bad(
                "sinks.retry.initial_backoff",
                "must not exceed sinks.retry.max_backoff",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    pub backend: Backend,
    /// Embedded: folder of the archive; relative paths are under `data_dir`.
    pub dir: PathBuf,
    /// Key prefix of archive objects (S3 and folder alike).
    pub prefix: String,
    /// Flush an archive object when about this many uncompressed bytes (its NDJSON, estimated
    /// from the lines' fields, whatever the stream's record format) are buffered for a shard...
    pub flush_bytes: usize,
    /// ...or when its oldest buffered line is this old.
    #[serde(with = "humantime_serde")]
    pub flush_age: Duration,
    /// Aws: the S3 bucket (shared with the dead letters when they are on aws too).
    pub s3: S3Config,
}

impl ArchiveConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.flush_bytes == 0 {
            return Err(bad("archive.flush_bytes", "must be greater than 0"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationalConfig {
    pub backend: Backend,
    /// Embedded: SQLite file; relative paths are under `data_dir`.
    pub path: PathBuf,
    /// Aws: the DynamoDB table and index.
    pub dynamodb: DynamoDbConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseConfig {
    pub backend: Backend,
    /// Embedded: SQLite file; relative paths are under `data_dir`.
    pub path: PathBuf,
    /// Aws: the Firehose delivery stream.
    pub firehose: FirehoseConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Aws: S3, in the archive's bucket (`archive.s3`) under `prefix`.
    pub backend: Backend,
    /// Embedded: folder; relative paths are under `data_dir`.
    pub dir: PathBuf,
    /// Key prefix of dead-letter objects.
    pub prefix: String,
}

impl DeadLetterConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}
