//! Retention: records every sink has checkpointed, once older than `stream.retention`, are
//! deleted with their line claims and dedup keys, and old idempotency keys with them.
//!
//! The deletes are jobs of the stream's writer ([`EmbeddedStream::write`]), in small chunks: each
//! rides in one group commit with the appends of the moment, so an append never waits for more
//! than one chunk, and between chunks retention rests [`IDLE_PER_BUSY`] times as long as the
//! chunk took. What the deletes log goes back into the file with everything else, by the stream's
//! checkpointer thread.

use super::schema::records_table;
use super::EmbeddedStream;
use crate::stream::StreamError;
use rusqlite::{params, params_from_iter, OptionalExtension};
use std::time::{Duration, Instant};

/// Records removed per chunk (a record is up to a few KB): an append in the same group waits a
/// fraction of a millisecond for it.
const RECORD_CHUNK: i64 = 20;

/// Key and line-id rows (a few dozen bytes each) removed per chunk.
const KEY_CHUNK: i64 = 500;

/// After each chunk, retention rests this many times as long as the chunk took the writer: it is
/// background work, and appends keep the rest of the writer's time.
const IDLE_PER_BUSY: u32 = 6;

/// Deletes records of `shard` up to `upto` that arrived before `cutoff_ms`, with their dedup keys
/// and line ids, and idempotency keys started before `cutoff_ms`. Returns how many records.
///
/// Nothing here reads a record that stays: the newest record old enough is found by the arrival
/// index, and every delete is a range of at most [`RECORD_CHUNK`] records (or [`KEY_CHUNK`]
/// keys), however much is retained or removed.
pub(super) async fn release(
    stream: &EmbeddedStream,
    shard: u32,
    upto: u64,
    cutoff_ms: i64,
) -> Result<u64, StreamError> {
    let table = records_table(shard);
    let upto = i64::try_from(upto).unwrap_or(i64::MAX);
    // Arrival times never go backwards within a file's writer, so everything up to the newest
    // old record is old too; `arrived_at_ms` is still checked in each delete.
    let newest_old: Option<i64> = stream
        .blocking({
            let sql = format!(
                "SELECT seq FROM {table} WHERE arrived_at_ms < ?1
                 ORDER BY arrived_at_ms DESC, seq DESC LIMIT 1"
            );
            move |conn| {
                conn.prepare_cached(&sql)?
                    .query_row(params![cutoff_ms], |row| row.get(0))
                    .optional()
            }
        })
        .await?;
    let bound = newest_old.map_or(0, |seq| seq.min(upto));
    let removed = delete_in_chunks(
        stream,
        format!(
            "DELETE FROM {table} WHERE seq IN (
                 SELECT seq FROM {table} WHERE seq <= ?1 AND arrived_at_ms < ?2 ORDER BY seq LIMIT ?3
             )"
        ),
        vec![bound, cutoff_ms, RECORD_CHUNK],
        RECORD_CHUNK,
    )
    .await?;
    // Keys may outlive their records by one interrupted release: below the oldest record left,
    // every record is gone, so its keys may go too (when old enough).
    let oldest_left: Option<i64> = stream
        .blocking({
            let sql = format!("SELECT min(seq) FROM {table}");
            move |conn| conn.prepare_cached(&sql)?.query_row([], |row| row.get(0))
        })
        .await?;
    let bound = oldest_left.map_or(upto, |oldest| bound.max(oldest - 1).min(upto));
    // Dedup keys and line ids are kept as long as the records: a retry within the retention
    // period is recognised, one after it is appended again (and the sinks' line ids still hold).
    // So are the idempotency keys: the window in which a repeat is recognised is the stream's
    // retention (docs/line-identity.md).
    for (keys, key) in [
        ("record_keys", "key"),
        ("invoice_claims", "invoice_no, shard, seq"),
    ] {
        delete_in_chunks(
            stream,
            format!(
                "DELETE FROM {keys} WHERE ({key}) IN (
                     SELECT {key} FROM {keys}
                     WHERE shard = ?1 AND seq <= ?2 AND arrived_at_ms < ?3 LIMIT ?4
                 )"
            ),
            vec![i64::from(shard), bound, cutoff_ms, KEY_CHUNK],
            KEY_CHUNK,
        )
        .await?;
    }
    delete_in_chunks(
        stream,
        "DELETE FROM idempotency_keys WHERE (store_id, key) IN (
             SELECT store_id, key FROM idempotency_keys WHERE started_at_ms < ?1 LIMIT ?2
         )"
        .to_owned(),
        vec![cutoff_ms, KEY_CHUNK],
        KEY_CHUNK,
    )
    .await?;
    Ok(removed)
}

/// Runs the chunked delete `sql` (it removes at most `chunk` rows) on the writer until a run
/// removes fewer, resting [`IDLE_PER_BUSY`] times as long as each run took before the next.
async fn delete_in_chunks(
    stream: &EmbeddedStream,
    sql: String,
    args: Vec<i64>,
    chunk: i64,
) -> Result<u64, StreamError> {
    let mut removed = 0u64;
    loop {
        let (n, busy): (usize, Duration) = stream
            .write({
                let (sql, args) = (sql.clone(), args.clone());
                move |conn| {
                    let started = Instant::now();
                    let n = conn
                        .prepare_cached(&sql)?
                        .execute(params_from_iter(&args))?;
                    Ok((n, started.elapsed()))
                }
            })
            .await?;
        removed += n as u64;
        if (n as i64) < chunk {
            return Ok(removed);
        }
        tokio::time::sleep(busy * IDLE_PER_BUSY).await;
    }
}
