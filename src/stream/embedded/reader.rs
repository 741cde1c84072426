//! Reads and retention deletes, on a small pool of connections used from blocking threads.
//!
//! In WAL mode readers never wait for the writer, so reads run beside appends. Retention deletes
//! do take SQLite's write lock; they delete in small chunks, each its own transaction under the
//! stream's write gate, so the writer waits for at most one chunk.

use super::schema::{connect, records_table};
use crate::stream::{Record, SequenceNumber, StreamError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

/// Connections kept open between calls; more may be opened under load and are closed after use.
const POOL_IDLE_MAX: usize = 4;

/// Records removed per retention transaction (a record is up to a few KB): an append waiting
/// behind one waits a fraction of a millisecond.
const RECORD_CHUNK: i64 = 20;

/// Key and line-id rows (a few dozen bytes each) removed per retention transaction.
const KEY_CHUNK: i64 = 500;

/// After each chunk, retention rests this many times as long as the chunk held the write gate:
/// it is background work, and appends keep the rest of the time and of the cores.
const IDLE_PER_BUSY: u32 = 6;

/// Chunks between two checkpoints of what retention logged.
const CHUNKS_PER_CHECKPOINT: u32 = 64;

pub(super) struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadPool {
    pub fn new(path: PathBuf) -> Self {
        ReadPool {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` on a pooled connection. Blocks: call it from `spawn_blocking`.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StreamError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            // Readers scan the newest records, which the writer just wrote: a small cache does.
            // The only writes here are retention deletes: a delete lost to a power cut is done
            // again, so they commit without a sync (the writer's next commit, synchronous=FULL,
            // syncs the log up to and past them), and they checkpoint outside the write gate
            // instead of on commit (see `delete_in_chunks`).
            None => connect(&self.path)
                .and_then(|c| {
                    c.pragma_update(None, "cache_size", -4_096)?;
                    c.pragma_update(None, "synchronous", "NORMAL")?;
                    c.pragma_update(None, "wal_autocheckpoint", 0)?;
                    Ok(c)
                })
                .map_err(|e| {
                    StreamError::Backend(format!(
                        "cannot open the stream file {}: {e}",
                        self.path.display()
                    ))
                })?,
        };
        let result = f(&conn).map_err(|e| {
            StreamError::Backend(format!(
                "cannot read the stream file {}: {e}",
                self.path.display()
            ))
        });
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_IDLE_MAX {
            idle.push(conn);
        }
        result
    }
}

/// Up to `max` records of `shard` with a sequence number above `after`, in order.
pub(super) fn read_records(
    conn: &Connection,
    shard: u32,
    after: u64,
    max: usize,
) -> rusqlite::Result<Vec<Record>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT seq, partition_key, data, arrived_at_ms FROM {} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        records_table(shard)
    ))?;
    let rows = stmt.query_map(
        params![after as i64, i64::try_from(max).unwrap_or(i64::MAX)],
        |row| {
            Ok(Record {
                sequence_number: SequenceNumber::from(row.get::<_, i64>(0)? as u64),
                partition_key: row.get(1)?,
                data: Bytes::copy_from_slice(row.get_ref(2)?.as_blob()?),
                arrived_at: millis_to_time(row.get(3)?),
                decoded: Default::default(),
            })
        },
    )?;
    rows.collect()
}

/// The sequence number and arrival time of the first record of `shard` above `after`.
pub(super) fn first_arrival_after(
    conn: &Connection,
    shard: u32,
    after: u64,
) -> rusqlite::Result<Option<(SequenceNumber, DateTime<Utc>)>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT seq, arrived_at_ms FROM {} WHERE seq > ?1 ORDER BY seq LIMIT 1",
        records_table(shard)
    ))?;
    stmt.query_row(params![after as i64], |row| {
        Ok((
            SequenceNumber::from(row.get::<_, i64>(0)? as u64),
            millis_to_time(row.get(1)?),
        ))
    })
    .optional()
}

/// Deletes records of `shard` up to `upto` that arrived before `cutoff_ms`, with their dedup keys
/// and line ids, and idempotency keys started before `cutoff_ms`. Returns how many records.
///
/// Nothing here reads a record that stays: the newest record old enough is found by the arrival
/// index, and every delete is a range of at most [`RECORD_CHUNK`] records (or [`KEY_CHUNK`]
/// keys) in its own transaction,
/// taken under `gate` (which the writer holds while it commits), so an append waits for one
/// chunk at most, however much is retained or removed.
pub(super) fn release_records(
    conn: &Connection,
    gate: &Mutex<()>,
    shard: u32,
    upto: u64,
    cutoff_ms: i64,
) -> rusqlite::Result<u64> {
    let table = records_table(shard);
    let upto = i64::try_from(upto).unwrap_or(i64::MAX);
    // Arrival times never go backwards within a file's writer, so everything up to the newest
    // old record is old too; `arrived_at_ms` is still checked in each delete.
    let newest_old: Option<i64> = conn
        .prepare_cached(&format!(
            "SELECT seq FROM {table} WHERE arrived_at_ms < ?1
             ORDER BY arrived_at_ms DESC, seq DESC LIMIT 1"
        ))?
        .query_row(params![cutoff_ms], |row| row.get(0))
        .optional()?;
    let bound = newest_old.map_or(0, |seq| seq.min(upto));
    let removed = delete_in_chunks(
        conn,
        gate,
        &format!(
            "DELETE FROM {table} WHERE seq IN (
                 SELECT seq FROM {table} WHERE seq <= ?1 AND arrived_at_ms < ?2 ORDER BY seq LIMIT ?3
             )"
        ),
        RECORD_CHUNK,
        params![bound, cutoff_ms, RECORD_CHUNK],
    )?;
    // Keys may outlive their records by one interrupted release: below the oldest record left,
    // every record is gone, so its keys may go too (when old enough).
    let oldest_left: Option<i64> = conn
        .prepare_cached(&format!("SELECT min(seq) FROM {table}"))?
        .query_row([], |row| row.get(0))?;
    let bound = oldest_left.map_or(upto, |oldest| bound.max(oldest - 1).min(upto));
    // Dedup keys and line ids are kept as long as the records: a retry within the retention
    // period is recognised, one after it is appended again (and the sinks' line ids still hold).
    // So are the idempotency keys: the window in which a repeat is recognised is the stream's
    // retention (docs/line-identity.md).
    for (table, key) in [
        ("record_keys", "key"),
        ("invoice_claims", "invoice_no, shard, seq"),
    ] {
        delete_in_chunks(
            conn,
            gate,
            &format!(
                "DELETE FROM {table} WHERE ({key}) IN (
                     SELECT {key} FROM {table}
                     WHERE shard = ?1 AND seq <= ?2 AND arrived_at_ms < ?3 LIMIT ?4
                 )"
            ),
            KEY_CHUNK,
            params![shard, bound, cutoff_ms, KEY_CHUNK],
        )?;
    }
    delete_in_chunks(
        conn,
        gate,
        "DELETE FROM idempotency_keys WHERE (store_id, key) IN (
             SELECT store_id, key FROM idempotency_keys WHERE started_at_ms < ?1 LIMIT ?2
         )",
        KEY_CHUNK,
        params![cutoff_ms, KEY_CHUNK],
    )?;
    Ok(removed)
}

/// Runs the chunked delete `sql` (it removes at most `chunk` rows) until a run removes fewer,
/// each run in its own transaction under `gate`, resting [`IDLE_PER_BUSY`] times as long as
/// the run took before the next.
fn delete_in_chunks(
    conn: &Connection,
    gate: &Mutex<()>,
    sql: &str,
    chunk: i64,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<u64> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut removed = 0u64;
    let mut runs = 0u32;
    loop {
        let (n, busy) = {
            let _writing = gate.lock().unwrap_or_else(|p| p.into_inner());
            let started = Instant::now();
            (stmt.execute(params)?, started.elapsed())
        };
        removed += n as u64;
        runs += 1;
        let done = (n as i64) < chunk;
        if done || runs % CHUNKS_PER_CHECKPOINT == 0 {
            // Copy what the deletes logged back into the file while appends go on (a passive
            // checkpoint takes no write lock and leaves what it cannot do now), so the pages
            // they freed neither pile up in the log nor fall to the writer's own checkpoint.
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        }
        if done {
            return Ok(removed);
        }
        std::thread::sleep(busy * IDLE_PER_BUSY);
    }
}

pub(super) fn millis_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}
