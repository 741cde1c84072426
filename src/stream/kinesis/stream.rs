//! [`KinesisStream`]: PutRecords with per-entry retry, GetRecords with cached shard iterators.

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType, StreamStatus};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::aws::{
    describe, error_code, is_retriable_code, retry_entries, AwsClients, EntryOutcome, EntryRetry,
    PartialFailure,
};
use crate::config::{AwsConfig, KinesisConfig};
use crate::stream::Position;
use crate::stream::{
    PutRecord, PutResult, ReadBatch, Record, SequenceNumber, ShardId, ShardInfo, Stream,
    StreamError, MAX_RECORD_BYTES,
};

/// PutRecords limits: records and bytes (data plus partition keys) per request.
pub const MAX_PUT_RECORDS: usize = 500;
pub const MAX_PUT_BYTES: usize = 5 * 1024 * 1024;
/// Kinesis bills writes in PUT payload units: each record in steps of this size, its partition
/// key included.
const PUT_PAYLOAD_UNIT_BYTES: usize = 25 * 1024;
/// GetRecords calls a shard allows per second.
pub const MAX_GET_RECORDS_PER_SECOND: u32 = 5;
/// Most records one GetRecords returns.
const MAX_GET_RECORDS: usize = 10_000;

/// Kinesis sequence numbers are decimal strings of up to 129 digits.
///
/// # Errors
/// `Backend` when the string is not a decimal number.
pub fn parse_sequence_number(s: &str) -> Result<SequenceNumber, StreamError> {
    s.parse()
        .map_err(|_| StreamError::Backend(format!("sequence number {s:?} is not a decimal number")))
}

/// A shard iterator kept for the position it continues from, so that consecutive reads of a
/// shard cost one GetRecords call each instead of two.
struct CachedIterator {
    from: Position,
    iterator: String,
    /// Set when the read that gave this iterator found the shard caught up and empty: until
    /// then, a read from `from` answers "nothing new" without calling GetRecords.
    idle_until: Option<Instant>,
}

/// The stream on Kinesis Data Streams.
pub struct KinesisStream {
    client: aws_sdk_kinesis::Client,
    stream_name: String,
    retry: EntryRetry,
    iterators: Mutex<HashMap<ShardId, CachedIterator>>,
    /// Earliest time of the next GetRecords call per shard: the per-shard rate limiter.
    next_read: Mutex<HashMap<ShardId, Instant>>,
    /// How long a read of a caught-up shard's tip waits before it asks Kinesis again
    /// (`stream.kinesis.idle_read_interval`).
    idle_read_interval: Duration,
}

impl KinesisStream {
    pub fn new(
        client: aws_sdk_kinesis::Client,
        stream_name: impl Into<String>,
        retry: EntryRetry,
        idle_read_interval: Duration,
    ) -> Self {
        KinesisStream {
            client,
            stream_name: stream_name.into(),
            retry,
            iterators: Mutex::new(HashMap::new()),
            next_read: Mutex::new(HashMap::new()),
            idle_read_interval,
        }
    }

    pub fn from_config(clients: &AwsClients, aws: &AwsConfig, cfg: &KinesisConfig) -> Self {
        Self::new(
            clients.kinesis.clone(),
            cfg.stream_name.clone(),
            EntryRetry::from_config(aws),
            cfg.idle_read_interval,
        )
    }

    fn call_error<E>(&self, what: &str, e: aws_sdk_kinesis::error::SdkError<E>) -> StreamError
    where
        E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    {
        let msg = format!(
            "{what} on stream {} failed: {}",
            self.stream_name,
            describe(&e)
        );
        match error_code(&e) {
            Some("ProvisionedThroughputExceededException" | "LimitExceededException") => {
                StreamError::Saturated(msg)
            }
            Some("ResourceNotFoundException") => self.missing_stream(),
            // Backend errors are retriable by the caller (`StreamError::is_retriable`).
            _ => StreamError::Backend(msg),
        }
    }

    fn missing_stream(&self) -> StreamError {
        StreamError::Backend(format!(
            "stream {} does not exist: run `shopstream aws init`, or check stream.kinesis.stream_name, \
             aws.region and the Kinesis endpoint",
            self.stream_name
        ))
    }

    /// Waits for this shard's next GetRecords slot (one per 200 ms) and reserves it.
    async fn pace(&self, shard: &ShardId) {
        let interval = Duration::from_secs(1) / MAX_GET_RECORDS_PER_SECOND;
        let slot = {
            let mut next = self.next_read.lock().expect("rate limiter lock");
            let now = Instant::now();
            let slot = next.get(shard).copied().unwrap_or(now).max(now);
            next.insert(shard.clone(), slot + interval);
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }

    async fn new_iterator(&self, shard: &ShardId, from: Position) -> Result<String, StreamError> {
        let mut req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream_name)
            .shard_id(&shard.0);
        req = match from {
            Position::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Position::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.to_string()),
            Position::At(seq) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq.to_string()),
        };
        let out = req.send().await.map_err(|e| {
            if error_code(&e) == Some("ResourceNotFoundException") {
                StreamError::UnknownShard(shard.clone())
            } else {
                self.call_error("GetShardIterator", e)
            }
        })?;
        out.shard_iterator().map(str::to_owned).ok_or_else(|| {
            StreamError::Backend(format!(
                "GetShardIterator gave no iterator for shard {shard}"
            ))
        })
    }

    /// One PutRecords of at most 500 records and 5 MiB, resending failed entries.
    async fn put_batch(&self, batch: Vec<PutRecord>) -> Result<Vec<PutResult>, StreamError> {
        let result = retry_entries(
            batch,
            self.retry.clone(),
            StreamError::is_retriable,
            |pending: Vec<PutRecord>| async move {
                crate::metrics::aws_call("kinesis", "PutRecords");
                crate::metrics::aws_billed_steps(
                    "kinesis_put_payload_units",
                    pending.iter().map(|r| r.data.len() + r.partition_key.len()),
                    PUT_PAYLOAD_UNIT_BYTES,
                );
                let entries = pending
                    .into_iter()
                    .map(|r| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(r.partition_key)
                            .data(Blob::new(r.data.to_vec()))
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StreamError::Backend(format!("building a record: {e}")))?;
                let out = self
                    .client
                    .put_records()
                    .stream_name(&self.stream_name)
                    .set_records(Some(entries))
                    .send()
                    .await
                    .map_err(|e| self.call_error("PutRecords", e))?;
                out.records()
                    .iter()
                    .map(
                        |r| match (r.error_code(), r.shard_id(), r.sequence_number()) {
                            (None, Some(shard), Some(seq)) => Ok(EntryOutcome::Done(PutResult {
                                shard_id: ShardId(shard.to_owned()),
                                sequence_number: parse_sequence_number(seq)?,
                            })),
                            (Some(code), _, _) => {
                                let reason =
                                    format!("{code}: {}", r.error_message().unwrap_or_default());
                                Ok(if is_retriable_code(code) {
                                    EntryOutcome::Retry(reason)
                                } else {
                                    EntryOutcome::Reject(reason)
                                })
                            }
                            _ => Ok(EntryOutcome::Reject(
                                "no error and no sequence number".into(),
                            )),
                        },
                    )
                    .collect()
            },
        )
        .await;
        result.map_err(|e| match e {
            PartialFailure::Call(e) => e,
            e @ PartialFailure::Exhausted { .. } => {
                StreamError::Saturated(format!("stream {}: {e}", self.stream_name))
            }
            e @ PartialFailure::Rejected { .. } => {
                StreamError::Backend(format!("stream {}: {e}", self.stream_name))
            }
        })
    }
}

/// Splits records into PutRecords requests within the count and byte limits, in order.
fn batches(records: Vec<PutRecord>) -> Result<Vec<Vec<PutRecord>>, StreamError> {
    let mut out: Vec<Vec<PutRecord>> = Vec::new();
    let mut bytes = 0;
    for r in records {
        let size = r.data.len() + r.partition_key.len();
        if size > MAX_RECORD_BYTES {
            return Err(StreamError::RecordTooLarge {
                size,
                max: MAX_RECORD_BYTES,
            });
        }
        match out.last_mut() {
            Some(b) if b.len() < MAX_PUT_RECORDS && bytes + size <= MAX_PUT_BYTES => {
                bytes += size;
                b.push(r);
            }
            _ => {
                bytes = size;
                out.push(vec![r]);
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl Stream for KinesisStream {
    /// # Errors
    /// `RecordTooLarge` before anything is sent; `Saturated` when throughput errors outlast the
    /// retries (ingest answers 503); `Backend` for a record Kinesis refuses for good. Records of
    /// earlier requests of the same call may then be written: the line ids absorb the resend.
    async fn put(&self, records: Vec<PutRecord>) -> Result<Vec<PutResult>, StreamError> {
        let mut results = Vec::with_capacity(records.len());
        for batch in batches(records)? {
            results.extend(self.put_batch(batch).await?);
        }
        Ok(results)
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, StreamError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // ListShards takes the stream name or a token, never both.
            let req = match &token {
                None => self.client.list_shards().stream_name(&self.stream_name),
                Some(t) => self.client.list_shards().next_token(t),
            };
            let out = req
                .send()
                .await
                .map_err(|e| self.call_error("ListShards", e))?;
            for s in out.shards() {
                shards.push(ShardInfo {
                    id: ShardId(s.shard_id().to_owned()),
                    parents: [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                        .into_iter()
                        .flatten()
                        .map(|p| ShardId(p.to_owned()))
                        .collect(),
                    closed: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                });
            }
            match out.next_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        Ok(shards)
    }

    /// Reads with the iterator cached for `from` when there is one (the previous read's next
    /// iterator), otherwise a new one. An expired iterator (they live 5 minutes: a sink outage
    /// lasts longer) is replaced by one at `from` and the read made again.
    async fn read(
        &self,
        shard: &ShardId,
        from: Position,
        max_records: usize,
    ) -> Result<ReadBatch, StreamError> {
        let cached = {
            let mut its = self.iterators.lock().expect("iterator cache lock");
            match its.remove(shard).filter(|c| c.from == from) {
                // The tip was read less than `idle_read_interval` ago and was empty: say so
                // again without a call. A caught-up shard is then read about once per interval
                // instead of five times a second (each call costs CPU here and takes one of
                // the shard's five reads a second that a catching-up reader would use).
                Some(c) if c.idle_until.is_some_and(|t| Instant::now() < t) => {
                    its.insert(shard.clone(), c);
                    return Ok(ReadBatch {
                        records: Vec::new(),
                        shard_ended: false,
                        millis_behind_latest: Some(0),
                    });
                }
                c => c.map(|c| c.iterator),
            }
        };
        let mut iterator = match cached {
            Some(it) => it,
            None => self.new_iterator(shard, from.clone()).await?,
        };
        let limit = max_records.clamp(1, MAX_GET_RECORDS) as i32;
        let mut refreshed = false;
        let out = loop {
            self.pace(shard).await;
            crate::metrics::aws_call("kinesis", "GetRecords");
            match self
                .client
                .get_records()
                .shard_iterator(&iterator)
                .limit(limit)
                .send()
                .await
            {
                Ok(out) => break out,
                Err(e) if !refreshed && error_code(&e) == Some("ExpiredIteratorException") => {
                    tracing::info!(shard = %shard, "shard iterator expired; getting a new one");
                    iterator = self.new_iterator(shard, from.clone()).await?;
                    refreshed = true;
                }
                Err(e) => return Err(self.call_error("GetRecords", e)),
            }
        };
        let mut records = Vec::with_capacity(out.records().len());
        for r in out.records() {
            records.push(Record {
                sequence_number: parse_sequence_number(r.sequence_number())?,
                partition_key: r.partition_key().unwrap_or_default().to_owned(),
                data: bytes::Bytes::copy_from_slice(r.data().as_ref()),
                arrived_at: r
                    .approximate_arrival_timestamp()
                    .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.to_millis().ok()?))
                    .unwrap_or_else(Utc::now),
                decoded: Default::default(),
            });
        }
        let next_from = records
            .last()
            .map_or(from, |r| Position::After(r.sequence_number.clone()));
        let millis_behind_latest = out.millis_behind_latest().map(|m| m.max(0) as u64);
        // Empty and at the tip (an empty answer further behind only means the iterator passed
        // a stretch without records, and the next read goes on at once).
        let idle = records.is_empty() && millis_behind_latest.is_none_or(|m| m == 0);
        let shard_ended = match out.next_shard_iterator() {
            Some(next) => {
                self.iterators.lock().expect("iterator cache lock").insert(
                    shard.clone(),
                    CachedIterator {
                        from: next_from,
                        iterator: next.to_owned(),
                        idle_until: (idle && !self.idle_read_interval.is_zero())
                            .then(|| Instant::now() + self.idle_read_interval),
                    },
                );
                false
            }
            // Kinesis gives no next iterator once a closed shard is read to its end.
            None => true,
        };
        Ok(ReadBatch {
            records,
            shard_ended,
            millis_behind_latest,
        })
    }

    /// The idle mark of the cached iterator, when it continues right after `after`.
    fn nothing_new_until(
        &self,
        shard: &ShardId,
        after: Option<&SequenceNumber>,
    ) -> Option<Instant> {
        let its = self.iterators.lock().expect("iterator cache lock");
        its.get(shard)
            .filter(|c| match (&c.from, after) {
                (Position::After(from), Some(after)) => from == after,
                (Position::TrimHorizon, None) => true,
                _ => false,
            })
            .and_then(|c| c.idle_until)
            .filter(|t| *t > Instant::now())
    }

    /// Kinesis keeps records for its own retention period; nothing to release.
    async fn release(&self, _shard: &ShardId, _upto: &SequenceNumber) -> Result<u64, StreamError> {
        Ok(0)
    }

    /// Always `None`: Kinesis has no cheap "newest sequence number" call (reading the tip takes a
    /// LATEST iterator and GetRecords, which count against the shard's 5 reads/s). A reader's
    /// backlog on Kinesis is `ReadBatch::millis_behind_latest`, and Kinesis throttles writers
    /// itself (`Saturated` from `put`).
    async fn latest(&self, _shard: &ShardId) -> Result<Option<SequenceNumber>, StreamError> {
        Ok(None)
    }

    async fn health(&self) -> Result<(), StreamError> {
        let out = self
            .client
            .describe_stream_summary()
            .stream_name(&self.stream_name)
            .send()
            .await
            .map_err(|e| self.call_error("DescribeStreamSummary", e))?;
        match out.stream_description_summary().map(|s| s.stream_status()) {
            Some(StreamStatus::Active | StreamStatus::Updating) => Ok(()),
            other => Err(StreamError::Backend(format!(
                "stream {} is {other:?}, not ACTIVE",
                self.stream_name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, size: usize) -> PutRecord {
        PutRecord {
            partition_key: key.into(),
            data: bytes::Bytes::from(vec![b'x'; size]),
            dedup_key: None,
        }
    }

    #[test]
    fn sequence_numbers_parse_beyond_128_bits() {
        assert_eq!(
            parse_sequence_number("42").unwrap(),
            SequenceNumber::from(42)
        );
        let real = "49590338271490256608559692538361571095921575989136588898";
        assert_eq!(parse_sequence_number(real).unwrap().as_str(), real);
        assert!(parse_sequence_number("abc").is_err());
    }

    #[test]
    fn batches_respect_count_bytes_and_partition_keys() {
        let b = batches((0..1201).map(|i| rec(&i.to_string(), 10)).collect()).unwrap();
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [500, 500, 201]);
        // Six records of 1 MiB minus their key: five fit 5 MiB, the sixth opens a request.
        let b = batches((0..6).map(|_| rec("k", MAX_RECORD_BYTES - 1)).collect()).unwrap();
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [5, 1]);
        // The partition key counts toward the record limit.
        assert!(matches!(
            batches(vec![rec("kk", MAX_RECORD_BYTES - 1)]),
            Err(StreamError::RecordTooLarge { size, .. }) if size == MAX_RECORD_BYTES + 1
        ));
    }
}
