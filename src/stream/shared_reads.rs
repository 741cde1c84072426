//! One read of a shard for all of its sinks: [`SharedReads`] wraps the stream the (sink, shard)
//! workers read and keeps, per shard, a window of the records read last. The three workers of a
//! shard mostly read the same records within moments of each other; the first to ask for a record
//! past the window reads it from the stream (one read, for everyone), the others are served from
//! the window.
//!
//! Each worker keeps its own position, checkpoint and pace, as before: nothing waits for the
//! slowest. A worker whose position is not in the window (it fell behind by more than the window
//! holds, or restarted from an older checkpoint) reads the stream itself, as it always did, and
//! is served from the window again once it catches up into it. A worker ahead of the window (the
//! others are behind) moves the window to its position, so the window follows the fastest reader.
//!
//! On Kinesis this keeps a shard's GetRecords calls and bytes near one reader's instead of three
//! (a shard allows 5 calls and 2 MB a second to all its readers together), and the cached shard
//! iterator follows one position instead of three that evict each other; on the embedded log it
//! saves two of every three reads of `stream.sqlite`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{
    PutRecord, PutResult, ReadBatch, Record, SequenceNumber, ShardId, ShardInfo, Stream,
    StreamError,
};
use crate::stream::Position;

/// Bytes of records each shard's window holds at most (the oldest are dropped first).
pub const WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// A stream whose reads of a shard are shared by its readers; every other call goes to `inner`.
pub struct SharedReads {
    inner: Arc<dyn Stream>,
    window_bytes: usize,
    shards: Mutex<HashMap<ShardId, Arc<ShardWindow>>>,
}

/// The records of one shard read last: a contiguous run of the shard, from right after `after`
/// (`None`: from the oldest record the stream held when it was read).
#[derive(Default)]
struct Window {
    after: Option<SequenceNumber>,
    records: VecDeque<Record>,
    bytes: usize,
    /// Whether a read since the window started said the shard is closed and read to its end.
    ended: bool,
    millis_behind_latest: Option<u64>,
}

struct ShardWindow {
    window: Mutex<Window>,
    /// Held while reading the stream for the window, so that readers at the window's end wait for
    /// one read instead of making one each.
    fetch: tokio::sync::Mutex<()>,
}

/// What the window can do for a read.
enum Answer {
    /// Served from the window.
    Hit(ReadBatch),
    /// The position is the window's end: read the stream from it into the window.
    AtEnd(Position),
    /// The position is not in the window (before it, or the window is for another position):
    /// read the stream for this reader alone.
    Elsewhere,
}

impl Window {
    /// Whether the window holds the records right after `seq` (or would, once read further).
    fn covers(&self, seq: &SequenceNumber) -> bool {
        match (&self.after, self.records.front()) {
            (Some(after), _) => seq >= after,
            (None, Some(first)) => *seq >= first.sequence_number,
            (None, None) => false,
        }
    }

    fn last(&self) -> Option<&SequenceNumber> {
        self.records.back().map(|r| &r.sequence_number)
    }

    fn answer(&self, from: &Position, max_records: usize) -> Answer {
        let start = match from {
            Position::TrimHorizon if self.after.is_none() && !self.records.is_empty() => 0,
            Position::TrimHorizon => return Answer::Elsewhere,
            Position::At(_) => return Answer::Elsewhere,
            Position::After(seq) => {
                let beyond = self.last().is_none_or(|last| seq > last);
                if beyond {
                    // At the end of the window, or past it: the window moves to this reader.
                    return Answer::AtEnd(from.clone());
                }
                if !self.covers(seq) {
                    return Answer::Elsewhere;
                }
                self.records.partition_point(|r| r.sequence_number <= *seq)
            }
        };
        if start == self.records.len() {
            if self.ended {
                return Answer::Hit(ReadBatch {
                    records: Vec::new(),
                    shard_ended: true,
                    millis_behind_latest: self.millis_behind_latest,
                });
            }
            return Answer::AtEnd(match self.last() {
                Some(last) => Position::After(last.clone()),
                None => from.clone(),
            });
        }
        let end = (start + max_records.max(1)).min(self.records.len());
        Answer::Hit(ReadBatch {
            records: self.records.range(start..end).cloned().collect(),
            shard_ended: self.ended && end == self.records.len(),
            millis_behind_latest: self.millis_behind_latest,
        })
    }

    /// Adds what a read from `from` returned; a read from anywhere but the window's end starts
    /// the window over at `from`.
    fn add(&mut self, from: &Position, batch: &ReadBatch, max_bytes: usize) {
        let continues = match (from, self.last()) {
            (Position::After(seq), Some(last)) => seq == last,
            _ => false,
        };
        if !continues {
            *self = Window {
                after: match from {
                    Position::After(seq) => Some(seq.clone()),
                    _ => None,
                },
                ..Window::default()
            };
        }
        for r in &batch.records {
            self.bytes += r.data.len();
            self.records.push_back(r.clone());
        }
        self.ended = batch.shard_ended;
        self.millis_behind_latest = batch.millis_behind_latest;
        // Keep the newest records: the readers at the end are the ones served next.
        while self.bytes > max_bytes && self.records.len() > 1 {
            let Some(old) = self.records.pop_front() else {
                break;
            };
            self.bytes -= old.data.len();
            self.after = Some(old.sequence_number);
        }
    }
}

impl SharedReads {
    pub fn new(inner: Arc<dyn Stream>, window_bytes: usize) -> Self {
        SharedReads {
            inner,
            window_bytes,
            shards: Mutex::new(HashMap::new()),
        }
    }

    fn shard(&self, shard: &ShardId) -> Arc<ShardWindow> {
        let mut shards = self.shards.lock().expect("shared reads lock");
        shards
            .entry(shard.clone())
            .or_insert_with(|| {
                Arc::new(ShardWindow {
                    window: Mutex::new(Window::default()),
                    fetch: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }

    fn count(outcome: &str) {
        crate::metrics::STREAM_SHARED_READS
            .with_label_values(&[outcome])
            .inc();
    }
}

#[async_trait]
impl Stream for SharedReads {
    async fn put(&self, records: Vec<PutRecord>) -> Result<Vec<PutResult>, StreamError> {
        self.inner.put(records).await
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, StreamError> {
        self.inner.list_shards().await
    }

    async fn read(
        &self,
        shard: &ShardId,
        from: Position,
        max_records: usize,
    ) -> Result<ReadBatch, StreamError> {
        let entry = self.shard(shard);
        let mut fetching = None;
        loop {
            let answer = entry
                .window
                .lock()
                .expect("shared reads lock")
                .answer(&from, max_records);
            let at = match answer {
                Answer::Hit(batch) => {
                    Self::count("window");
                    return Ok(batch);
                }
                Answer::Elsewhere => {
                    Self::count("own");
                    return self.inner.read(shard, from, max_records).await;
                }
                Answer::AtEnd(at) => at,
            };
            if fetching.is_none() {
                // One read at a time for the window; then look again, as another reader may have
                // read these records while this one waited.
                fetching = Some(entry.fetch.lock().await);
                continue;
            }
            Self::count("stream");
            let batch = self.inner.read(shard, at.clone(), max_records).await?;
            let mut window = entry.window.lock().expect("shared reads lock");
            window.add(&at, &batch, self.window_bytes);
            return Ok(match window.answer(&from, max_records) {
                Answer::Hit(batch) => batch,
                // Nothing new: what the read returned (nothing after `at`, where `from` is).
                Answer::AtEnd(_) | Answer::Elsewhere => batch,
            });
        }
    }

    async fn release(&self, shard: &ShardId, upto: &SequenceNumber) -> Result<u64, StreamError> {
        self.inner.release(shard, upto).await
    }

    async fn latest(&self, shard: &ShardId) -> Result<Option<SequenceNumber>, StreamError> {
        self.inner.latest(shard).await
    }

    async fn first_arrival_after(
        &self,
        shard: &ShardId,
        after: Option<&SequenceNumber>,
    ) -> Result<Option<(SequenceNumber, DateTime<Utc>)>, StreamError> {
        self.inner.first_arrival_after(shard, after).await
    }

    fn nothing_new_until(
        &self,
        shard: &ShardId,
        after: Option<&SequenceNumber>,
    ) -> Option<std::time::Instant> {
        self.inner.nothing_new_until(shard, after)
    }

    async fn wait_for_records(
        &self,
        shard: &ShardId,
        after: Option<&SequenceNumber>,
        timeout: std::time::Duration,
    ) {
        let ready = after.is_some_and(|after| {
            let entry = self.shard(shard);
            let window = entry.window.lock().expect("shared reads lock");
            window.last().is_some_and(|last| last > after) && window.covers(after)
        });
        if !ready {
            self.inner.wait_for_records(shard, after, timeout).await;
        }
    }

    async fn health(&self) -> Result<(), StreamError> {
        self.inner.health().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::memory::MemoryStream;
    use bytes::Bytes;
    use proptest::prelude::*;

    /// One shard "s" of `n` records of 10 bytes each, numbered 1..=n.
    fn log(n: u64, closed: bool) -> Arc<MemoryStream> {
        let records = (1..=n)
            .map(|i| Record {
                sequence_number: SequenceNumber::from(i),
                partition_key: format!("inv-{i}"),
                data: Bytes::from(vec![b'x'; 10]),
                arrived_at: Utc::now(),
                decoded: Default::default(),
            })
            .collect();
        MemoryStream::with(vec![("s", records, closed)])
    }

    fn shard() -> ShardId {
        ShardId("s".into())
    }

    /// A reader's position and what it has read so far.
    #[derive(Default)]
    struct Reader {
        at: Option<SequenceNumber>,
        got: Vec<u64>,
        ended: bool,
    }

    impl Reader {
        async fn step(&mut self, stream: &SharedReads, max: usize) {
            let from = self
                .at
                .clone()
                .map_or(Position::TrimHorizon, Position::After);
            let batch = stream.read(&shard(), from, max).await.unwrap();
            for r in &batch.records {
                self.got.push(r.sequence_number.as_u64().unwrap());
                self.at = Some(r.sequence_number.clone());
            }
            self.ended |= batch.shard_ended;
        }
    }

    #[tokio::test]
    async fn readers_in_step_read_the_stream_once_between_them() {
        let log = log(100, true);
        let stream = SharedReads::new(log.clone(), WINDOW_BYTES);
        let mut readers: Vec<Reader> = (0..3).map(|_| Reader::default()).collect();
        for _ in 0..11 {
            for r in &mut readers {
                r.step(&stream, 10).await;
            }
        }
        let all: Vec<u64> = (1..=100).collect();
        for r in &readers {
            assert_eq!(r.got, all);
            assert!(r.ended);
        }
        // 10 reads of 10 records and one that finds the end (the first TrimHorizon read of each
        // reader but the first is served by the window only once it holds the start).
        let reads = log.reads();
        assert!(reads <= 13, "{reads} reads of the stream for three readers");
    }

    #[tokio::test]
    async fn a_reader_behind_the_window_reads_for_itself_and_loses_nothing() {
        let log = log(100, false);
        // Room for 5 records of 10 bytes.
        let stream = SharedReads::new(log.clone(), 50);
        let (mut fast, mut slow) = (Reader::default(), Reader::default());
        for _ in 0..10 {
            fast.step(&stream, 10).await;
        }
        for _ in 0..12 {
            slow.step(&stream, 10).await;
        }
        let all: Vec<u64> = (1..=100).collect();
        assert_eq!(fast.got, all);
        assert_eq!(slow.got, all);
        assert!(!fast.ended && !slow.ended);
    }

    proptest! {
        /// Whatever the interleaving, the batch sizes and the window's room, every reader reads
        /// every record once, in order, and learns that the closed shard ended.
        #[test]
        fn every_reader_reads_every_record_in_order(
            n in 0u64..60,
            room in 10usize..400,
            turns in proptest::collection::vec((0usize..3, 1usize..8), 1..200),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async {
                let log = log(n, true);
                let stream = SharedReads::new(log.clone(), room);
                let mut readers: Vec<Reader> = (0..3).map(|_| Reader::default()).collect();
                for (who, max) in turns {
                    readers[who].step(&stream, max).await;
                }
                // Then each reads to the end.
                for r in &mut readers {
                    for _ in 0..=n {
                        r.step(&stream, 7).await;
                    }
                }
                let all: Vec<u64> = (1..=n).collect();
                for r in &readers {
                    prop_assert_eq!(&r.got, &all);
                    prop_assert!(r.ended);
                }
                Ok(())
            })?;
        }
    }
}
