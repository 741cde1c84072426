//! The embedded stream: a durable, sharded, ordered log in one SQLite file, for one machine.
//!
//! - [`EmbeddedStream`] implements [`Stream`]: appends go through one writer thread that commits
//!   whole groups of `put`s at once (`writer`), reads run on a small pool of connections on
//!   blocking threads (`reader`). Every other change to the file (checkpoints, idempotency keys,
//!   retention's deletes) is a job of the same writer, so one connection alone writes the file.
//! - [`EmbeddedCheckpoints`] implements [`CheckpointStore`](crate::stream::CheckpointStore) in
//!   the same file, so a copy of `stream.sqlite` holds the log and every sink's progress together.

mod checkpoints;
mod claims;
mod line_index;
mod reader;
mod retention;
mod schema;
mod writer;

pub use checkpoints::EmbeddedCheckpoints;

use super::line_index::LineClaim;
use super::{
    Position, PutRecord, PutResult, ReadBatch, SequenceNumber, ShardId, ShardInfo, Stream,
    StreamError, MAX_RECORD_BYTES,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reader::ReadPool;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use writer::{AppendRequest, Job, QueuedBytes, Write, Writer};

/// The most bytes of records the append queue holds by default (`stream.max_pending_bytes`):
/// appends that timed out are dropped unwritten, and this bounds what waits meanwhile.
pub const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;

/// The shard a partition key belongs to: xxh3 (64-bit, seed 0) of the key's UTF-8 bytes, modulo
/// the shard count. xxh3's output is specified and platform independent, so a key keeps its shard
/// across versions and machines (as long as the shard count stays, which the file enforces).
/// The embedded log numbers records 1, 2, 3, ... in a `u64`; anything else is not one of its
/// sequence numbers.
fn embedded_seq(seq: &SequenceNumber) -> Result<u64, StreamError> {
    seq.as_u64().ok_or_else(|| {
        StreamError::Backend(format!(
            "{seq} is not a sequence number of the embedded stream (a checkpoint from another backend?)"
        ))
    })
}

pub fn shard_for_key(partition_key: &str, shards: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(partition_key.as_bytes()) % u64::from(shards.max(1))) as u32
}

/// The id of embedded shard number `shard`: `shard-0000`, `shard-0001`, ...
pub fn shard_id(shard: u32) -> ShardId {
    ShardId(format!("shard-{shard:04}"))
}

/// A handle to the embedded log; clones share one writer and one file.
///
/// One process opens a stream file at a time: the writer keeps each shard's next sequence number
/// in memory. A second writer on the same file would fail its appends on the records' primary key
/// (it cannot overwrite or renumber records), so the mistake surfaces as errors, never as loss.
#[derive(Clone)]
pub struct EmbeddedStream {
    inner: Arc<Inner>,
}

struct Inner {
    shard_ids: Arc<[ShardId]>,
    retention: Duration,
    /// `None` only while dropping: closing the queue is what stops the writer.
    queue: Option<SyncSender<Write>>,
    /// Bytes of records in the queue, and the most it may hold ([`MAX_PENDING_BYTES`] unless
    /// set otherwise).
    queued_bytes: Arc<AtomicUsize>,
    max_pending_bytes: AtomicUsize,
    heads: Arc<[watch::Sender<u64>]>,
    readers: Arc<ReadPool>,
    writer_alive: Arc<AtomicBool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Dropping it stops the checkpointer thread ([`schema::run_checkpointer`]).
    checkpointer_stop: Option<std::sync::mpsc::Sender<()>>,
    checkpointer: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    /// Closes the queue and waits for the writer to finish its current group and close the file,
    /// so the file can be opened again right after (tests, restarts within one process).
    fn drop(&mut self) {
        self.queue = None;
        let handle = self
            .writer
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        self.checkpointer_stop = None;
        if let Some(handle) = self.checkpointer.take() {
            let _ = handle.join();
        }
    }
}

impl EmbeddedStream {
    /// Opens (creating it and its folder if missing) the log at `path` with `shards` shards.
    /// Records older than `retention` may be removed by [`Stream::release`]; at most
    /// `max_pending_appends` `put` calls wait for the writer before `put` answers `Saturated`.
    ///
    /// # Errors
    /// `Backend` when the folder or file cannot be created or opened, when `shards` or
    /// `max_pending_appends` is 0, or when the file was created with another shard count (the
    /// message names `stream.shards`: the embedded log cannot be resharded).
    pub fn open(
        path: &Path,
        shards: u32,
        retention: Duration,
        max_pending_appends: usize,
    ) -> Result<EmbeddedStream, StreamError> {
        if shards == 0 {
            return Err(StreamError::Backend(
                "stream.shards must be at least 1".into(),
            ));
        }
        if max_pending_appends == 0 {
            return Err(StreamError::Backend(
                "stream.max_pending_appends must be at least 1".into(),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StreamError::Backend(format!(
                    "cannot create the folder {} for the stream: {e}; check data_dir",
                    dir.display()
                ))
            })?;
        }
        let mut conn = schema::connect(path).map_err(|e| {
            StreamError::Backend(format!(
                "cannot open the stream file {}: {e}; check data_dir",
                path.display()
            ))
        })?;
        let last = schema::prepare(&mut conn, path, shards)?;
        checkpoints::create_table(&conn).map_err(|e| {
            StreamError::Backend(format!(
                "cannot create the checkpoint table in {}: {e}",
                path.display()
            ))
        })?;

        let shard_ids: Arc<[ShardId]> = (0..shards).map(shard_id).collect();
        let heads: Arc<[watch::Sender<u64>]> =
            last.iter().map(|&seq| watch::Sender::new(seq)).collect();
        let writer_alive = Arc::new(AtomicBool::new(true));
        let (queue, pending) = sync_channel(max_pending_appends);
        let restart_wal = schema::RestartWal::default();
        let writer = Writer {
            conn,
            last,
            shard_ids: shard_ids.clone(),
            heads: heads.clone(),
            alive: writer_alive.clone(),
            restart_wal: restart_wal.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("stream-writer".into())
            .spawn(move || writer.run(pending))
            .map_err(|e| {
                StreamError::Backend(format!("cannot start the stream writer thread: {e}"))
            })?;
        let (checkpointer_stop, stop) = std::sync::mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("stream-checkpointer".into())
            .spawn({
                let path = path.to_path_buf();
                move || schema::run_checkpointer(&path, &stop, &restart_wal)
            })
            .map_err(|e| {
                StreamError::Backend(format!("cannot start the stream checkpointer thread: {e}"))
            })?;
        Ok(EmbeddedStream {
            inner: Arc::new(Inner {
                shard_ids,
                retention,
                queue: Some(queue),
                queued_bytes: Arc::new(AtomicUsize::new(0)),
                max_pending_bytes: AtomicUsize::new(MAX_PENDING_BYTES),
                heads,
                readers: Arc::new(ReadPool::new(path.to_path_buf())),
                writer_alive,
                writer: Mutex::new(Some(handle)),
                checkpointer_stop: Some(checkpointer_stop),
                checkpointer: Some(checkpointer),
            }),
        })
    }

    /// The checkpoint store in the same file: read on the stream's read connections, written by
    /// its writer (so it holds the stream open as long as it lives).
    pub fn checkpoints(&self) -> EmbeddedCheckpoints {
        EmbeddedCheckpoints::new(self.clone())
    }

    /// The number of the shard `shard` names.
    fn shard_index(&self, shard: &ShardId) -> Result<u32, StreamError> {
        shard
            .0
            .strip_prefix("shard-")
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| (n as usize) < self.inner.shard_ids.len() && shard_id(n) == *shard)
            .ok_or_else(|| StreamError::UnknownShard(shard.clone()))
    }

    fn head(&self, shard: u32) -> u64 {
        *self.inner.heads[shard as usize].borrow()
    }

    /// Runs `f` on the writer thread, in the transaction of its next group of appends, and
    /// answers once that has committed (see [`writer::Job`]). Every change to the file other
    /// than an append goes this way (the sinks' checkpoints, idempotency keys, retention), so the
    /// writer is the only connection that takes SQLite's write lock and never waits for it.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StreamError> {
        let (job, answer) = Job::new(f);
        let queue = self.queue()?;
        match queue.try_send(Write::Job(job)) {
            Ok(()) => {}
            // Unlike an append, a change is not refused when the queue is full: it waits for room.
            Err(TrySendError::Full(write)) => {
                let queue = queue.clone();
                tokio::task::spawn_blocking(move || queue.send(write))
                    .await
                    .map_err(|e| StreamError::Backend(format!("a stream write task failed: {e}")))?
                    .map_err(|_| writer_gone())?;
            }
            Err(TrySendError::Disconnected(_)) => return Err(writer_gone()),
        }
        answer.await.map_err(|_| {
            StreamError::Backend(
                "the embedded stream's writer could not begin a transaction for this change; see the log for its error"
                    .into(),
            )
        })?
    }

    /// The writer's queue, while the stream is open.
    fn queue(&self) -> Result<&SyncSender<Write>, StreamError> {
        self.inner
            .queue
            .as_ref()
            .ok_or_else(|| StreamError::Backend("the embedded stream is closed".into()))
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StreamError> {
        let readers = self.inner.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StreamError::Backend(format!("a stream read task failed: {e}")))?
    }
}

impl EmbeddedStream {
    /// Sets the most bytes of records the append queue holds (default [`MAX_PENDING_BYTES`]);
    /// an append that would pass it is answered `Saturated` (503 with Retry-After at ingest).
    pub fn set_max_pending_bytes(&self, bytes: usize) {
        self.inner
            .max_pending_bytes
            .store(bytes.max(1), Ordering::Relaxed);
    }

    /// Appends `records`, each claiming the line ids of `claims` at the same index (or none when
    /// `claims` is shorter), in one transaction.
    async fn append(
        &self,
        records: Vec<PutRecord>,
        claims: Vec<Vec<LineClaim<'_>>>,
    ) -> Result<Vec<PutResult>, StreamError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let shards = self.inner.shard_ids.len() as u32;
        for record in &records {
            let size = record.data.len() + record.partition_key.len();
            if size > MAX_RECORD_BYTES {
                return Err(StreamError::RecordTooLarge {
                    size,
                    max: MAX_RECORD_BYTES,
                });
            }
        }
        let record_shards = records
            .iter()
            .map(|r| shard_for_key(&r.partition_key, shards))
            .collect();
        let size: usize = records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum();
        let limit = self.inner.max_pending_bytes.load(Ordering::Relaxed);
        let Some(queued) = QueuedBytes::take(&self.inner.queued_bytes, size, limit) else {
            return Err(StreamError::Saturated(format!(
                "the embedded stream's append queue holds {} MiB of records already (its limit); retry shortly",
                limit / (1024 * 1024)
            )));
        };
        // Grouped here, on the caller's thread: the writer only looks them up and files them.
        let prepared = claims::Claims::prepare(&claims);
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest {
            records,
            shards: record_shards,
            claims: prepared,
            reply,
            _queued: queued,
        };
        match self.queue()?.try_send(Write::Append(request)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(StreamError::Saturated(
                    "the embedded stream's append queue is full (stream.max_pending_appends); retry shortly"
                        .into(),
                ))
            }
            Err(TrySendError::Disconnected(_)) => return Err(writer_gone()),
        }
        answer.await.map_err(|_| {
            StreamError::Backend(
                "the embedded stream's writer thread stopped before answering; the append may not be durable"
                    .into(),
            )
        })?
    }
}

#[async_trait]
impl Stream for EmbeddedStream {
    async fn put(&self, records: Vec<PutRecord>) -> Result<Vec<PutResult>, StreamError> {
        self.append(records, Vec::new()).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, StreamError> {
        Ok(self
            .inner
            .shard_ids
            .iter()
            .map(|id| ShardInfo {
                id: id.clone(),
                parents: Vec::new(),
                closed: false,
            })
            .collect())
    }

    async fn read(
        &self,
        shard: &ShardId,
        from: Position,
        max_records: usize,
    ) -> Result<ReadBatch, StreamError> {
        let index = self.shard_index(shard)?;
        let after = match &from {
            Position::TrimHorizon => 0,
            Position::After(seq) => embedded_seq(seq)?,
            Position::At(seq) => embedded_seq(seq)?.saturating_sub(1),
        };
        let head = self.head(index);
        // An idle shard is answered from memory: no blocking thread, no query.
        if after >= head || max_records == 0 {
            return Ok(ReadBatch {
                records: Vec::new(),
                shard_ended: false,
                millis_behind_latest: Some(0),
            });
        }
        let records = self
            .blocking(move |conn| reader::read_records(conn, index, after, max_records))
            .await?;
        let millis_behind_latest = match records.last() {
            Some(last) if last.sequence_number < SequenceNumber::from(head) => {
                let behind = chrono::Utc::now() - last.arrived_at;
                u64::try_from(behind.num_milliseconds()).unwrap_or(0)
            }
            _ => 0,
        };
        Ok(ReadBatch {
            records,
            shard_ended: false,
            millis_behind_latest: Some(millis_behind_latest),
        })
    }

    /// One row by primary key; an idle shard is answered from memory.
    async fn first_arrival_after(
        &self,
        shard: &ShardId,
        after: Option<&SequenceNumber>,
    ) -> Result<Option<(SequenceNumber, DateTime<Utc>)>, StreamError> {
        let index = self.shard_index(shard)?;
        let after = after.map(embedded_seq).transpose()?.unwrap_or(0);
        if after >= self.head(index) {
            return Ok(None);
        }
        self.blocking(move |conn| reader::first_arrival_after(conn, index, after))
            .await
    }

    async fn release(&self, shard: &ShardId, upto: &SequenceNumber) -> Result<u64, StreamError> {
        let index = self.shard_index(shard)?;
        let retention =
            chrono::Duration::from_std(self.inner.retention).unwrap_or(chrono::Duration::MAX);
        let cutoff_ms = chrono::Utc::now()
            .checked_sub_signed(retention)
            .map_or(i64::MIN, |t| t.timestamp_millis());
        let upto = embedded_seq(upto)?;
        retention::release(self, index, upto, cutoff_ms).await
    }

    async fn latest(&self, shard: &ShardId) -> Result<Option<SequenceNumber>, StreamError> {
        let index = self.shard_index(shard)?;
        Ok(match self.head(index) {
            0 => None,
            seq => Some(SequenceNumber::from(seq)),
        })
    }

    async fn wait_for_records(
        &self,
        shard: &ShardId,
        after: Option<&SequenceNumber>,
        timeout: Duration,
    ) {
        let Ok(index) = self.shard_index(shard) else {
            tokio::time::sleep(timeout).await;
            return;
        };
        let after = after.and_then(SequenceNumber::as_u64).unwrap_or(0);
        let mut head = self.inner.heads[index as usize].subscribe();
        // The sender lives as long as `self`, so `wait_for` ends only by a commit or the timeout.
        let _ = tokio::time::timeout(timeout, head.wait_for(|&seq| seq > after)).await;
    }

    async fn health(&self) -> Result<(), StreamError> {
        if !self.inner.writer_alive.load(Ordering::Acquire) {
            return Err(StreamError::Backend(
                "the embedded stream's writer thread has stopped; see the log for its error and restart"
                    .into(),
            ));
        }
        self.blocking(|conn| conn.query_row("SELECT count(*) FROM shards", [], |_| Ok(())))
            .await
    }
}

/// The error of a write whose writer thread is gone.
fn writer_gone() -> StreamError {
    StreamError::Backend(
        "the embedded stream's writer thread has stopped; see the log for its error".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<String>> {
        conn.prepare("SELECT key FROM idempotency_keys ORDER BY key")?
            .query_map([], |row| row.get(0))?
            .collect()
    }

    /// A change runs on the writer under a savepoint of its own: one that fails halfway leaves
    /// nothing behind and fails alone, while the changes and appends beside it land.
    #[tokio::test]
    async fn a_failing_change_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(
            &dir.path().join("stream.sqlite"),
            1,
            Duration::from_secs(3600),
            16,
        )
        .unwrap();
        let insert = |key: &'static str| {
            move |conn: &rusqlite::Connection| {
                conn.execute(
                    "INSERT INTO idempotency_keys (store_id, key, fingerprint, started_at_ms)
                     VALUES ('store-1', ?1, 'f', 0)",
                    [key],
                )
            }
        };
        let failing = stream.write(move |conn| {
            insert("half-done")(conn)?;
            conn.execute("INSERT INTO no_such_table VALUES (1)", [])
        });
        let working = stream.write(insert("done"));
        let append = stream.put(vec![PutRecord {
            partition_key: "536365".into(),
            data: bytes::Bytes::from_static(b"record"),
            dedup_key: None,
        }]);
        let (failing, working, append) = tokio::join!(failing, working, append);

        let error = failing.unwrap_err().to_string();
        assert!(error.contains("no_such_table"), "{error}");
        assert_eq!(working.unwrap(), 1);
        assert_eq!(append.unwrap().len(), 1);
        assert_eq!(stream.blocking(keys).await.unwrap(), vec!["done"]);
    }
}
