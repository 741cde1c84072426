//! Retention: records every sink has checkpointed, once older than `stream.retention`, are
//! deleted with their line claims (in the same transaction) and dedup keys, and old idempotency
//! keys with them.
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

/// Records removed per chunk, with their claims (a record is up to a few KB): an append in the
/// same group waits a fraction of a millisecond for it.
const RECORD_CHUNK: i64 = 20;

/// Dedup and idempotency keys (a few dozen bytes each) removed per chunk.
const KEY_CHUNK: i64 = 500;

/// After each chunk, retention rests this many times as long as the chunk took the writer: it is
/// background work, and appends keep the rest of the writer's time.
const IDLE_PER_BUSY: u32 = 6;

/// Deletes records of `shard` up to `upto` that arrived before `cutoff_ms`, with their dedup keys
/// and line claims, and idempotency keys started before `cutoff_ms`. Returns how many records.
///
/// Nothing here reads a record that stays, beyond the few a binary search looks at: the newest
/// record old enough is found by its sequence number ([`newest_before`]), and every delete is a
/// range of at most [`RECORD_CHUNK`] records (or [`KEY_CHUNK`] keys), however much is retained or
/// removed.
pub(super) async fn release(
    stream: &EmbeddedStream,
    shard: u32,
    upto: u64,
    cutoff_ms: i64,
) -> Result<u64, StreamError> {
    let table = records_table(shard);
    let upto = i64::try_from(upto).unwrap_or(i64::MAX);
    let newest_old: Option<i64> = stream
        .blocking({
            let table = table.clone();
            move |conn| newest_before(conn, &table, upto, cutoff_ms)
        })
        .await?;
    let bound = newest_old.unwrap_or(0);
    let removed = delete_records(stream, shard, &table, bound, cutoff_ms).await?;
    // Keys may outlive their records by one interrupted release: below the oldest record left,
    // every record is gone, so its keys may go too (when old enough).
    let oldest_left: Option<i64> = stream
        .blocking({
            let sql = format!("SELECT min(seq) FROM {table}");
            move |conn| conn.prepare_cached(&sql)?.query_row([], |row| row.get(0))
        })
        .await?;
    let bound = oldest_left.map_or(upto, |oldest| bound.max(oldest - 1).min(upto));
    // Dedup keys are kept as long as the records: a retry within the retention period is
    // recognised, one after it is appended again (and the sinks' line ids still hold). So are the
    // idempotency keys: the window in which a repeat is recognised is the stream's retention
    // (docs/line-identity.md). (The line claims go with their records, above.)
    delete_in_chunks(
        stream,
        "DELETE FROM record_keys WHERE key IN (
             SELECT key FROM record_keys
             WHERE shard = ?1 AND seq <= ?2 AND arrived_at_ms < ?3 LIMIT ?4
         )"
        .to_owned(),
        vec![i64::from(shard), bound, cutoff_ms, KEY_CHUNK],
        KEY_CHUNK,
    )
    .await?;
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

/// The newest record of `table`, up to `upto`, that arrived before `cutoff_ms`: a binary search
/// over the sequence numbers, a B-tree look-up per step. The writer gives records arrival times
/// that never go backwards (from the newest in the file, even when the wall clock does), so the
/// records old enough are a prefix of the table. (Should they not be, the deletes still check each
/// record's time: a newer record is never removed, an older one at worst waits for a later release.)
fn newest_before(
    conn: &rusqlite::Connection,
    table: &str,
    upto: i64,
    cutoff_ms: i64,
) -> rusqlite::Result<Option<i64>> {
    // The first record at or after `seq`: (its seq, its arrival time).
    let mut at_or_after = conn.prepare_cached(&format!(
        "SELECT seq, arrived_at_ms FROM {table} WHERE seq >= ?1 ORDER BY seq LIMIT 1"
    ))?;
    let mut probe = |seq: i64| -> rusqlite::Result<Option<(i64, i64)>> {
        at_or_after
            .query_row([seq], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()
    };
    let Some((first, arrived)) = probe(i64::MIN)? else {
        return Ok(None);
    };
    if first > upto || arrived >= cutoff_ms {
        return Ok(None);
    }
    let last: i64 = conn
        .prepare_cached(&format!("SELECT max(seq) FROM {table}"))?
        .query_row([], |row| row.get(0))?;
    // `old` is a record old enough; none at or past `young` is known to be.
    let (mut old, mut young) = (first, last.min(upto).saturating_add(1));
    while young - old > 1 {
        let mid = old + (young - old) / 2;
        match probe(mid)? {
            Some((seq, arrived)) if seq < young => {
                if arrived < cutoff_ms {
                    old = seq;
                } else {
                    young = seq;
                }
            }
            // No record from `mid` up to `young`.
            _ => young = mid,
        }
    }
    Ok(Some(old))
}

/// Deletes the records of `table` (shard `shard`) up to `bound` that arrived before `cutoff_ms`,
/// with their line claims, [`RECORD_CHUNK`] records a job ([`in_chunks`]). A record's claims are
/// the rows of its invoice (its partition key) at its place, so they go in the same transaction as
/// the record: no claim outlives its record.
async fn delete_records(
    stream: &EmbeddedStream,
    shard: u32,
    table: &str,
    bound: i64,
    cutoff_ms: i64,
) -> Result<u64, StreamError> {
    let select = format!(
        "SELECT seq, partition_key FROM {table}
         WHERE seq <= ?1 AND arrived_at_ms < ?2 ORDER BY seq LIMIT ?3"
    );
    let delete = format!("DELETE FROM {table} WHERE seq = ?1");
    let keep_last = format!(
        "UPDATE shards SET last_seq = (SELECT max(seq) FROM {table})
         WHERE shard = ?1 AND last_seq < (SELECT max(seq) FROM {table})"
    );
    in_chunks(stream, RECORD_CHUNK, move |conn| {
        let records: Vec<(i64, String)> = conn
            .prepare_cached(&select)?
            .query_map(params![bound, cutoff_ms, RECORD_CHUNK], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        // The shard's last number outlives its records: kept in `shards` before any goes (the
        // writer numbers on from the newest record, or from this once none is left).
        conn.prepare_cached(&keep_last)?.execute([shard])?;
        let mut claims = conn.prepare_cached(
            "DELETE FROM invoice_claims WHERE invoice_no = ?1 AND shard = ?2 AND seq = ?3",
        )?;
        let mut record = conn.prepare_cached(&delete)?;
        for (seq, invoice_no) in &records {
            claims.execute(params![invoice_no, shard, seq])?;
            record.execute([seq])?;
        }
        Ok(records.len())
    })
    .await
}

/// Runs the chunked delete `sql` (it removes at most `chunk` rows) as [`in_chunks`] does.
async fn delete_in_chunks(
    stream: &EmbeddedStream,
    sql: String,
    args: Vec<i64>,
    chunk: i64,
) -> Result<u64, StreamError> {
    in_chunks(stream, chunk, move |conn| {
        conn.prepare_cached(&sql)?.execute(params_from_iter(&args))
    })
    .await
}

/// Runs `delete` (it removes at most `chunk` rows and says how many) as a job of the writer until
/// a run removes fewer, resting [`IDLE_PER_BUSY`] times as long as each run took before the next.
async fn in_chunks(
    stream: &EmbeddedStream,
    chunk: i64,
    delete: impl Fn(&rusqlite::Connection) -> rusqlite::Result<usize> + Clone + Send + 'static,
) -> Result<u64, StreamError> {
    let mut removed = 0u64;
    loop {
        let (n, busy): (usize, Duration) = stream
            .write({
                let delete = delete.clone();
                move |conn| {
                    let started = Instant::now();
                    let n = delete(conn)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A records table holding `rows` (seq, arrival time).
    fn table(rows: &[(i64, i64)]) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE records_0000 (seq INTEGER PRIMARY KEY, partition_key TEXT NOT NULL,
                 data BLOB NOT NULL, arrived_at_ms INTEGER NOT NULL)",
        )
        .unwrap();
        for (seq, at) in rows {
            conn.execute(
                "INSERT INTO records_0000 VALUES (?1, 'k', x'00', ?2)",
                [seq, at],
            )
            .unwrap();
        }
        conn
    }

    /// The binary search finds the newest record that arrived before the cutoff, within `upto`,
    /// across gaps in the numbering, and nothing when no record is old enough.
    #[test]
    fn the_newest_old_record_is_found_by_its_sequence_number() {
        // Records 11..=60 (the first ten removed), arriving 100 ms apart, with a gap at 30..=39.
        let rows: Vec<(i64, i64)> = (11..=60)
            .filter(|s| !(30..40).contains(s))
            .map(|s| (s, s * 100))
            .collect();
        let conn = table(&rows);
        let newest = |upto, cutoff| newest_before(&conn, "records_0000", upto, cutoff).unwrap();
        for cutoff in [
            1_101, 1_550, 2_950, 3_000, 3_950, 4_001, 5_999, 6_001, 1_000_000,
        ] {
            for upto in [5, 11, 25, 35, 45, 60, i64::MAX] {
                let want = rows
                    .iter()
                    .filter(|&&(s, at)| s <= upto && at < cutoff)
                    .map(|&(s, _)| s)
                    .max();
                assert_eq!(newest(upto, cutoff), want, "upto {upto}, cutoff {cutoff}");
            }
        }
        assert_eq!(
            newest(i64::MAX, 1_100),
            None,
            "record 11 arrived at the cutoff"
        );
        let empty = table(&[]);
        assert_eq!(
            newest_before(&empty, "records_0000", i64::MAX, i64::MAX).unwrap(),
            None
        );
    }
}
