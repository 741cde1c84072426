//! Reads, on a small pool of connections used from blocking threads.
//!
//! In WAL mode readers never wait for the writer, so reads run beside appends. Nothing here
//! writes: every change to the file is the writer's (see `writer`).

use super::schema::{connect, records_table};
use crate::stream::{Record, SequenceNumber, StreamError};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::PathBuf;
use std::sync::Mutex;

/// Connections kept open between calls; more may be opened under load and are closed after use.
const POOL_IDLE_MAX: usize = 4;

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
            None => connect(&self.path)
                .and_then(|c| {
                    c.pragma_update(None, "cache_size", -4_096)?;
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

pub(super) fn millis_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}
