//! The durable stream between ingest and the sinks.
//!
//! Ingest appends `LineBatch` records keyed by invoice number (the format is
//! encoded and decoded in `stream::record` only); shard readers read each shard in order from a
//! checkpointed sequence number. Two backends implement [`Stream`]: an embedded, SQLite-backed log
//! for one machine, and AWS Kinesis Data Streams. Which shards an instance reads is its
//! [`ShardOwnership`]: all of them embedded, those whose lease it holds on Kinesis.

pub mod embedded;
pub mod kinesis;
pub mod line_index;
#[cfg(test)]
pub(crate) mod memory;
mod ownership;
pub mod record;
pub mod shared_reads;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::fmt;

/// Largest record payload plus partition key, as Kinesis counts it (1 MiB).
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

mod sequence;

pub use ownership::{AllShards, ShardOwnership};
pub use sequence::{BadSequenceNumber, SequenceNumber};

/// A shard's name: `shard-0000` embedded, `shardId-000000000000` on Kinesis.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ShardId(pub String);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A record to append.
#[derive(Debug, Clone)]
pub struct PutRecord {
    /// The invoice number: all lines of an invoice land on one shard, in order.
    pub partition_key: String,
    /// A serialized `LineBatch` (see `stream::record`).
    pub data: Bytes,
    /// The identity of the record's content (a hash of its line ids). A backend that can check it
    /// (the embedded log) answers a record it already holds with where that one landed instead of
    /// appending it again, so a retried request adds nothing to the stream and hence nothing to
    /// any sink, the archive included. Kinesis cannot check it; its sinks rely on line ids alone.
    pub dedup_key: Option<[u8; 16]>,
}

impl PutRecord {
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        PutRecord {
            partition_key: partition_key.into(),
            data: data.into(),
            dedup_key: None,
        }
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutResult {
    pub shard_id: ShardId,
    pub sequence_number: SequenceNumber,
}

/// A record read back from a shard.
#[derive(Debug, Clone)]
pub struct Record {
    pub sequence_number: SequenceNumber,
    pub partition_key: String,
    pub data: Bytes,
    pub arrived_at: DateTime<Utc>,
    /// `data` decoded, shared by the clones of this record (the sinks that read a shard's shared
    /// read); a new record starts with an empty cell.
    pub decoded: record::DecodeOnce,
}

/// A shard and its lineage. After a reshard, a child is read only once its parents are finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: ShardId,
    pub parents: Vec<ShardId>,
    /// True once the shard takes no more writes (a resharded parent); reading it to the end is
    /// then possible and [`ReadBatch::shard_ended`] says when that end is reached.
    pub closed: bool,
}

/// Where to start reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// The oldest record still retained.
    TrimHorizon,
    /// The record right after this sequence number (the checkpoint).
    After(SequenceNumber),
    /// This record and the ones after it (rewriting a unit announced before a crash).
    At(SequenceNumber),
}

/// What one read returned.
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    pub records: Vec<Record>,
    /// True when the shard is closed and every record of it has been returned.
    pub shard_ended: bool,
    /// How far behind the newest record of the shard this read is, when the backend knows.
    pub millis_behind_latest: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The backend is overloaded (Kinesis throughput exceeded, the embedded writer's queue is full):
    /// the caller should slow down; ingest answers 503 with Retry-After.
    #[error("the stream is saturated: {0}")]
    Saturated(String),
    #[error(
        "a record of {size} bytes (partition key included) exceeds the {max}-byte record limit"
    )]
    RecordTooLarge { size: usize, max: usize },
    /// Another request claimed some of these line ids since they were looked up; nothing of the
    /// append was written (see `stream::line_index`).
    #[error("{} line ids were claimed by another request meanwhile", .0.len())]
    LinesTaken(Vec<crate::model::LineId>),
    #[error("unknown shard {0}")]
    UnknownShard(ShardId),
    #[error("stream backend error: {0}")]
    Backend(String),
}

impl StreamError {
    /// Whether trying the same call again later can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StreamError::Saturated(_) | StreamError::Backend(_))
    }
}

/// A durable, sharded, ordered log.
#[async_trait]
pub trait Stream: Send + Sync + 'static {
    /// Appends records durably. Returns one result per record, in order, only when every record is
    /// durable; a backend retries partial failures itself and fails the call only when a record is
    /// definitively not written.
    async fn put(&self, records: Vec<PutRecord>) -> Result<Vec<PutResult>, StreamError>;

    /// The shards to read, open and closed.
    async fn list_shards(&self) -> Result<Vec<ShardInfo>, StreamError>;

    /// Up to `max_records` records of `shard` from `from` on, in sequence order.
    async fn read(
        &self,
        shard: &ShardId,
        from: Position,
        max_records: usize,
    ) -> Result<ReadBatch, StreamError>;

    /// Lets the backend drop records of `shard` up to and including `upto` once they are older
    /// than its retention: called with the lowest checkpoint of all sinks. Returns how many
    /// records were removed. Kinesis enforces its own retention and removes nothing here.
    async fn release(&self, shard: &ShardId, upto: &SequenceNumber) -> Result<u64, StreamError>;

    /// The sequence number of the newest record of `shard`, or `None` when it holds none yet.
    /// Ingest uses it with the checkpoints to measure each sink's backlog.
    async fn latest(&self, shard: &ShardId) -> Result<Option<SequenceNumber>, StreamError>;

    /// The sequence number and arrival time of the first record of `shard` after `after` (after
    /// nothing: the oldest retained), or `None` when there is none: how long that record has
    /// waited is a sink's lag. A backend whose reads are rationed answers `None` (the default):
    /// Kinesis allows 5 GetRecords a second per shard, which the sinks need, and its lag comes
    /// with their reads instead (`ReadBatch::millis_behind_latest`).
    async fn first_arrival_after(
        &self,
        _shard: &ShardId,
        _after: Option<&SequenceNumber>,
    ) -> Result<Option<(SequenceNumber, DateTime<Utc>)>, StreamError> {
        Ok(None)
    }

    /// When a read of `shard` after `after` is known to find nothing new until some time, that
    /// time: a reader waiting for records need not look before it. Kinesis marks a caught-up
    /// shard's tip so for `stream.kinesis.idle_read_interval`; the default knows no such time.
    fn nothing_new_until(
        &self,
        _shard: &ShardId,
        _after: Option<&SequenceNumber>,
    ) -> Option<std::time::Instant> {
        None
    }

    /// Waits until `shard` may hold records after `after`, or until `timeout` passes, whichever
    /// comes first. A backend that can tell (the embedded log wakes readers on commit) returns
    /// early; the default just sleeps, which is right for Kinesis' polling model.
    async fn wait_for_records(
        &self,
        _shard: &ShardId,
        _after: Option<&SequenceNumber>,
        timeout: std::time::Duration,
    ) {
        tokio::time::sleep(timeout).await
    }

    /// Answers whether the backend is reachable and usable, with a reason when it is not.
    async fn health(&self) -> Result<(), StreamError>;
}

/// The three sinks the shard readers feed; each keeps its own checkpoint per shard. The command
/// line names them the same way (`--sink archive`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Archive,
    Operational,
    Warehouse,
}

impl SinkKind {
    pub const ALL: [SinkKind; 3] = [
        SinkKind::Archive,
        SinkKind::Operational,
        SinkKind::Warehouse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Archive => "archive",
            SinkKind::Operational => "operational",
            SinkKind::Warehouse => "warehouse",
        }
    }
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One sink's progress through one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub sink: SinkKind,
    pub shard: ShardId,
    /// Every record up to and including this one is written to the sink and acknowledged.
    pub sequence_number: SequenceNumber,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
#[error("checkpoint store error: {0}")]
pub struct CheckpointError(pub String);

/// Where sinks keep their checkpoints: SQLite beside the embedded stream, a DynamoDB lease table
/// beside Kinesis.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    async fn load(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<SequenceNumber>, CheckpointError>;

    /// Records that `sink` has durably written everything of `shard` up to `seq`. Never moves a
    /// checkpoint backwards.
    async fn save(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        seq: SequenceNumber,
    ) -> Result<(), CheckpointError>;

    async fn list(&self) -> Result<Vec<Checkpoint>, CheckpointError>;

    /// The range `(first, last)` of records a sink announced it is about to write as one unit and
    /// has not yet checkpointed, if any. The raw archiver names objects after their sequence range;
    /// after a crash it rewrites exactly the announced range, so a redelivered batch overwrites
    /// its object instead of landing again in a differently cut one.
    async fn load_pending(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<(SequenceNumber, SequenceNumber)>, CheckpointError>;

    /// Announces (`Some`) or clears (`None`) the pending range of `sink` on `shard`. A
    /// [`save`](CheckpointStore::save) that reaches the end of the range clears it too.
    async fn save_pending(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        range: Option<(SequenceNumber, SequenceNumber)>,
    ) -> Result<(), CheckpointError>;
}
