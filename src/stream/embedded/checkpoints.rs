//! Sink checkpoints in the stream's own SQLite file.
//!
//! The embedded log's sequence numbers are `u64`s, and a sink that finished a shard saves
//! [`SequenceNumber::shard_end`], which must order after all of them. They are stored as BLOBs of 16
//! big-endian bytes (the shard end as all ones): SQLite compares BLOBs with `memcmp`, and
//! big-endian bytes of equal length order exactly as the numbers do, so "never move backwards"
//! is one comparison inside the `UPSERT`, atomic with the write.

use super::EmbeddedStream;
use crate::stream::{
    Checkpoint, CheckpointError, CheckpointStore, SequenceNumber, ShardId, SinkKind, StreamError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

/// Creates the checkpoint table if missing.
pub(super) fn create_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS checkpoints (
             sink          TEXT NOT NULL,
             shard         TEXT NOT NULL,
             sequence      BLOB,          -- 16 bytes big-endian; NULL until the first save
             updated_at    TEXT NOT NULL, -- RFC 3339 UTC of the last advance
             pending_first BLOB,
             pending_last  BLOB,
             PRIMARY KEY (sink, shard)
         );",
    )
}

fn encode(seq: &SequenceNumber) -> Result<[u8; 16], CheckpointError> {
    if seq.is_shard_end() {
        return Ok(u128::MAX.to_be_bytes());
    }
    seq.as_u64()
        .map(|n| u128::from(n).to_be_bytes())
        .ok_or_else(|| {
            CheckpointError(format!(
                "{seq} is not a sequence number of the embedded stream"
            ))
        })
}

fn decode(bytes: &[u8]) -> Result<SequenceNumber, CheckpointError> {
    let bytes: [u8; 16] = bytes.try_into().map_err(|_| {
        CheckpointError(format!(
            "a stored sequence number has {} bytes instead of 16; the checkpoint table is damaged",
            bytes.len()
        ))
    })?;
    match u128::from_be_bytes(bytes) {
        u128::MAX => Ok(SequenceNumber::shard_end()),
        n => u64::try_from(n).map(SequenceNumber::from).map_err(|_| {
            CheckpointError(format!(
                "a stored sequence number ({n}) is out of range; the checkpoint table is damaged"
            ))
        }),
    }
}

fn sink_from_str(name: &str) -> Result<SinkKind, CheckpointError> {
    SinkKind::ALL
        .into_iter()
        .find(|s| s.as_str() == name)
        .ok_or_else(|| CheckpointError(format!("unknown sink {name:?} in the checkpoint table")))
}

/// [`CheckpointStore`] on the embedded stream's file. Reads use the stream's read connections;
/// every write is a job of the stream's writer, committed (`synchronous=FULL`) with the next group
/// of appends, so a saved checkpoint survives power loss and never holds up an append.
#[derive(Clone)]
pub struct EmbeddedCheckpoints {
    stream: EmbeddedStream,
}

impl EmbeddedCheckpoints {
    /// The checkpoints of `stream`'s file (its `checkpoints` table is made when the stream opens).
    pub(super) fn new(stream: EmbeddedStream) -> Self {
        EmbeddedCheckpoints { stream }
    }

    /// Runs `f` on a read connection on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, CheckpointError> + Send + 'static,
    ) -> Result<T, CheckpointError> {
        self.stream
            .blocking(move |conn| Ok(f(conn)))
            .await
            .map_err(stream_error)?
    }

    /// Runs `f` on the stream's writer; answers once it is durable.
    async fn write(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<usize> + Send + 'static,
    ) -> Result<(), CheckpointError> {
        self.stream.write(f).await.map(|_| ()).map_err(stream_error)
    }
}

fn stream_error(e: StreamError) -> CheckpointError {
    CheckpointError(format!("the checkpoint table cannot be used: {e}"))
}

fn sql_error(e: rusqlite::Error) -> CheckpointError {
    CheckpointError(format!("the checkpoint table cannot be used: {e}"))
}

#[async_trait]
impl CheckpointStore for EmbeddedCheckpoints {
    async fn load(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<SequenceNumber>, CheckpointError> {
        let shard = shard.0.clone();
        self.read(move |conn| {
            let stored: Option<Option<Vec<u8>>> = conn
                .prepare_cached("SELECT sequence FROM checkpoints WHERE sink = ?1 AND shard = ?2")
                .and_then(|mut stmt| {
                    stmt.query_row(params![sink.as_str(), shard], |row| row.get(0))
                        .optional()
                })
                .map_err(sql_error)?;
            stored.flatten().map(|b| decode(&b)).transpose()
        })
        .await
    }

    async fn save(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        seq: SequenceNumber,
    ) -> Result<(), CheckpointError> {
        let shard = shard.0.clone();
        let now = Utc::now().to_rfc3339();
        let seq = encode(&seq)?;
        self.write(move |conn| {
            // A lower value changes nothing; an equal one only clears a pending range it reaches
            // (updated_at says when the checkpoint last advanced, so it stays).
            conn.prepare_cached(
                "INSERT INTO checkpoints (sink, shard, sequence, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (sink, shard) DO UPDATE SET
                     updated_at = CASE WHEN sequence IS NULL OR excluded.sequence > sequence
                                       THEN excluded.updated_at ELSE updated_at END,
                     sequence = excluded.sequence,
                     pending_first = CASE WHEN pending_last <= excluded.sequence
                                          THEN NULL ELSE pending_first END,
                     pending_last = CASE WHEN pending_last <= excluded.sequence
                                         THEN NULL ELSE pending_last END
                 WHERE checkpoints.sequence IS NULL OR excluded.sequence >= checkpoints.sequence",
            )
            .and_then(|mut stmt| stmt.execute(params![sink.as_str(), shard, &seq[..], now]))
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Checkpoint>, CheckpointError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT sink, shard, sequence, updated_at FROM checkpoints
                     WHERE sequence IS NOT NULL ORDER BY sink, shard",
                )
                .map_err(sql_error)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Vec<u8>>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .map_err(sql_error)?;
            rows.map(|row| {
                let (sink, shard, seq, updated_at) = row.map_err(sql_error)?;
                Ok(Checkpoint {
                    sink: sink_from_str(&sink)?,
                    shard: ShardId(shard),
                    sequence_number: decode(&seq)?,
                    updated_at: DateTime::parse_from_rfc3339(&updated_at)
                        .map_err(|e| {
                            CheckpointError(format!(
                                "checkpoint updated_at {updated_at:?} is not RFC 3339: {e}"
                            ))
                        })?
                        .with_timezone(&Utc),
                })
            })
            .collect()
        })
        .await
    }

    async fn load_pending(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<(SequenceNumber, SequenceNumber)>, CheckpointError> {
        let shard = shard.0.clone();
        self.read(move |conn| {
            let stored: Option<(Option<Vec<u8>>, Option<Vec<u8>>)> = conn
                .prepare_cached(
                    "SELECT pending_first, pending_last FROM checkpoints WHERE sink = ?1 AND shard = ?2",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![sink.as_str(), shard], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()
                })
                .map_err(sql_error)?;
            match stored {
                Some((Some(first), Some(last))) => Ok(Some((decode(&first)?, decode(&last)?))),
                _ => Ok(None),
            }
        })
        .await
    }

    async fn save_pending(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        range: Option<(SequenceNumber, SequenceNumber)>,
    ) -> Result<(), CheckpointError> {
        let shard = shard.0.clone();
        let now = Utc::now().to_rfc3339();
        let (first, last) = match range {
            Some((first, last)) => (
                Some(encode(&first)?.to_vec()),
                Some(encode(&last)?.to_vec()),
            ),
            None => (None, None),
        };
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO checkpoints (sink, shard, updated_at, pending_first, pending_last)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sink, shard) DO UPDATE SET
                     pending_first = excluded.pending_first, pending_last = excluded.pending_last",
            )
            .and_then(|mut stmt| stmt.execute(params![sink.as_str(), shard, now, first, last]))
        })
        .await
    }
}
