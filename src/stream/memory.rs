//! An in-memory stream for unit tests: shards of records given up front (or pushed), read as the
//! real backends read, with a count of the reads.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{
    Position, PutRecord, PutResult, ReadBatch, Record, SequenceNumber, ShardId, ShardInfo, Stream,
    StreamError,
};

#[derive(Default)]
struct MemoryShard {
    records: Vec<Record>,
    closed: bool,
}

#[derive(Default)]
pub struct MemoryStream {
    shards: Mutex<BTreeMap<ShardId, MemoryShard>>,
    reads: AtomicUsize,
}

impl MemoryStream {
    /// Shards (name, records, closed).
    pub fn with(shards: Vec<(&str, Vec<Record>, bool)>) -> Arc<MemoryStream> {
        let stream = MemoryStream::default();
        for (id, records, closed) in shards {
            stream
                .shards
                .lock()
                .unwrap()
                .insert(ShardId(id.into()), MemoryShard { records, closed });
        }
        Arc::new(stream)
    }

    /// Appends `record` to `shard`.
    pub fn push(&self, shard: &str, record: Record) {
        self.shards
            .lock()
            .unwrap()
            .get_mut(&ShardId(shard.into()))
            .unwrap()
            .records
            .push(record);
    }

    /// How many reads were made.
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Stream for MemoryStream {
    async fn put(&self, _records: Vec<PutRecord>) -> Result<Vec<PutResult>, StreamError> {
        Err(StreamError::Backend(
            "the memory stream takes no puts".into(),
        ))
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, StreamError> {
        Ok(Vec::new())
    }

    async fn read(
        &self,
        shard: &ShardId,
        from: Position,
        max_records: usize,
    ) -> Result<ReadBatch, StreamError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let shards = self.shards.lock().unwrap();
        let s = shards
            .get(shard)
            .ok_or_else(|| StreamError::UnknownShard(shard.clone()))?;
        let after: Vec<&Record> = s
            .records
            .iter()
            .filter(|r| match &from {
                Position::TrimHorizon => true,
                Position::After(seq) => r.sequence_number > *seq,
                Position::At(seq) => r.sequence_number >= *seq,
            })
            .collect();
        let records: Vec<Record> = after
            .iter()
            .take(max_records)
            .map(|r| (*r).clone())
            .collect();
        Ok(ReadBatch {
            shard_ended: s.closed && records.len() == after.len(),
            records,
            millis_behind_latest: None,
        })
    }

    async fn release(&self, _shard: &ShardId, _upto: &SequenceNumber) -> Result<u64, StreamError> {
        Ok(0)
    }

    async fn latest(&self, _shard: &ShardId) -> Result<Option<SequenceNumber>, StreamError> {
        Ok(None)
    }

    async fn health(&self) -> Result<(), StreamError> {
        Ok(())
    }
}
