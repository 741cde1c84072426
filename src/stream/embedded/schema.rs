//! The layout of `stream.sqlite` and how its connections are opened.
//!
//! Records live in one table per shard, `records_NNNN`, whose `seq` is the rowid: appends go to
//! the end of one B-tree and a read is a range scan. One small index on arrival time per table
//! lets retention find what is old enough without reading the records. The
//! shard count never changes for a file (the embedded log cannot be resharded), so a fixed set
//! of tables fits. `shards` holds each shard's last sequence number apart from the records, so
//! numbering survives the removal of every record by retention. `record_keys` holds the dedup key
//! of every record, `invoice_claims` the line ids claimed by ingest, a row per invoice and record
//! (written in the append's transaction; see `claims`), and `idempotency_keys` the
//! `Idempotency-Key`s of recent requests
//! with their answers (see `docs/line-identity.md`).

use super::super::StreamError;
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::time::Duration;

/// How long a connection waits for SQLite's write lock (held by the writer or a retention delete)
/// before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// WAL pages (4 KiB) after which the writer folds the WAL back into the database itself. A
/// larger WAL means fewer, larger checkpoints: at ~100 MB/s the default (1000 pages, 4 MB) would
/// checkpoint 25 times a second, each with its own fsync of the database file. This is the
/// backstop: the checkpointer thread ([`run_checkpointer`]) copies the WAL back long before, so
/// the writer, and the appends waiting on its commit, do not stop for a 64 MB checkpoint.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// How often the checkpointer thread copies what the WAL holds back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// After a checkpoint the WAL file is truncated to this size, so it does not keep its high-water
/// size on disk forever.
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// Page cache per connection, in KiB (negative values are KiB for SQLite). Appends go to the end
/// of each shard's table and reads scan what was just written, so a small cache does.
const CACHE_SIZE_KIB: i64 = -4_096;

pub(super) fn records_table(shard: u32) -> String {
    format!("records_{shard:04}")
}

/// Opens a connection with the settings every connection to the file shares: WAL, durable
/// commits (`synchronous=FULL` fsyncs the WAL on every commit, so an acknowledged append survives
/// power loss, not only a crash of the process), and a busy timeout.
pub(super) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "{} cannot use write-ahead logging (journal_mode is {mode}); put the data_dir on a local file system",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", CACHE_SIZE_KIB)?;
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)?;
    Ok(conn)
}

/// Copies the WAL back into the database every [`CHECKPOINT_EVERY`] on a connection of its own,
/// until `stop` is dropped. A passive checkpoint takes no lock that appends or reads wait for, and
/// leaves for next time what it cannot copy now; once everything is copied the writer starts the
/// WAL over. Without it the writer checkpointed within its commit every 64 MB of WAL, holding the
/// appends of that commit for as long (the ack latency's tail). If the thread cannot work, the
/// writer's own checkpoint ([`WAL_AUTOCHECKPOINT_PAGES`]) still bounds the WAL.
pub(super) fn run_checkpointer(path: &Path, stop: &std::sync::mpsc::Receiver<()>) {
    let conn = match connect(path) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "Cannot open a connection for the stream's checkpoints; the writer checkpoints within its commits instead.");
            return;
        }
    };
    let mut warned = false;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(file = %path.display(), error = %e, "A checkpoint of the stream's WAL failed; retrying.");
            }
            Err(_) => {}
        }
    }
}

/// Creates the tables if missing, records the shard count of a new file and checks it on an
/// existing one. Returns the last sequence number of each shard.
///
/// # Errors
/// A file made with another shard count: moving to it would move invoices between shards and
/// break their order, so this is refused with an error naming `stream.shards`.
pub(super) fn prepare(
    conn: &mut Connection,
    path: &Path,
    shards: u32,
) -> Result<Vec<u64>, StreamError> {
    let backend = |e: rusqlite::Error| {
        StreamError::Backend(format!(
            "cannot prepare the stream file {}: {e}",
            path.display()
        ))
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(backend)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS stream_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS shards (shard INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS record_keys (
             key           BLOB    PRIMARY KEY,
             shard         INTEGER NOT NULL,
             seq           INTEGER NOT NULL,
             arrived_at_ms INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS invoice_claims (
             invoice_no    TEXT    NOT NULL,
             shard         INTEGER NOT NULL,
             seq           INTEGER NOT NULL,
             store_id      TEXT    NOT NULL,
             line_ids      BLOB    NOT NULL,
             arrived_at_ms INTEGER NOT NULL,
             PRIMARY KEY (invoice_no, shard, seq)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS invoice_claims_by_arrival ON invoice_claims (arrived_at_ms);
         CREATE INDEX IF NOT EXISTS record_keys_by_shard_seq ON record_keys (shard, seq);
         CREATE TABLE IF NOT EXISTS idempotency_keys (
             store_id      TEXT    NOT NULL,
             key           TEXT    NOT NULL,
             fingerprint   TEXT    NOT NULL,
             status        INTEGER,
             answer        TEXT,
             started_at_ms INTEGER NOT NULL,
             PRIMARY KEY (store_id, key)
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS idempotency_keys_by_start ON idempotency_keys (started_at_ms);",
    )
    .map_err(backend)?;
    super::claims::migrate(&tx).map_err(backend)?;
    let recorded: Option<String> = tx
        .query_row(
            "SELECT value FROM stream_meta WHERE key = 'shards'",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(backend)?;
    match recorded {
        Some(value) if value != shards.to_string() => {
            return Err(StreamError::Backend(format!(
                "stream.shards is {shards} but the embedded stream {} was created with {value} shards; \
                 the embedded log cannot be resharded (records would move to other shards and lose \
                 their order): set stream.shards = {value}, or start with an empty data_dir",
                path.display()
            )));
        }
        Some(_) => {}
        None => {
            tx.execute(
                "INSERT INTO stream_meta (key, value) VALUES ('shards', ?1)",
                [shards.to_string()],
            )
            .map_err(backend)?;
        }
    }
    for shard in 0..shards {
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 seq           INTEGER PRIMARY KEY,
                 partition_key TEXT    NOT NULL,
                 data          BLOB    NOT NULL,
                 arrived_at_ms INTEGER NOT NULL
             );",
            records_table(shard)
        ))
        .map_err(backend)?;
        // Retention finds the newest record old enough to go by its arrival time.
        tx.execute_batch(&format!(
            "CREATE INDEX IF NOT EXISTS {table}_by_arrival ON {table} (arrived_at_ms);",
            table = records_table(shard)
        ))
        .map_err(backend)?;
        tx.execute(
            "INSERT OR IGNORE INTO shards (shard, last_seq) VALUES (?1, 0)",
            [shard],
        )
        .map_err(backend)?;
    }
    let mut last = vec![0u64; shards as usize];
    {
        let mut stmt = tx
            .prepare("SELECT shard, last_seq FROM shards")
            .map_err(backend)?;
        let rows = stmt
            .query_map([], |row| Ok((row.get::<_, u32>(0)?, row.get::<_, i64>(1)?)))
            .map_err(backend)?;
        for row in rows {
            let (shard, seq) = row.map_err(backend)?;
            if let Some(slot) = last.get_mut(shard as usize) {
                *slot = u64::try_from(seq).unwrap_or(0);
            }
        }
    }
    tx.commit().map_err(backend)?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `invoice_claims` rows of `invoice_no`: (shard, seq, store, ids' digits).
    fn claims_of(conn: &Connection, invoice_no: &str) -> Vec<(i64, i64, String, String)> {
        let mut stmt = conn
            .prepare(
                "SELECT shard, seq, store_id, CAST(line_ids AS TEXT) FROM invoice_claims
                 WHERE invoice_no = ?1 ORDER BY shard, seq",
            )
            .unwrap();
        stmt.query_map([invoice_no], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn has_table(conn: &Connection, name: &str) -> bool {
        conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = ?1",
            [name],
            |row| row.get(0),
        )
        .unwrap()
    }

    /// A stream file from before the claims were keyed by invoice (`line_ids`) keeps its claims.
    #[test]
    fn the_claims_of_a_file_keyed_by_id_move_to_invoice_claims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.sqlite");
        let mut conn = connect(&path).unwrap();
        conn.execute_batch(
            r#"CREATE TABLE line_ids (
                   line_id TEXT PRIMARY KEY, store_id TEXT NOT NULL, line TEXT NOT NULL,
                   shard INTEGER NOT NULL, seq INTEGER NOT NULL, arrived_at_ms INTEGER NOT NULL
               ) WITHOUT ROWID;
               INSERT INTO line_ids VALUES
                   ('0123456789abcdef0123456789abcdef', 'store-1',
                    '{"line_id":"0123456789abcdef0123456789abcdef","invoice_no":"536365"}', 0, 7, 1000);"#,
        )
        .unwrap();
        prepare(&mut conn, &path, 2).unwrap();
        assert_eq!(
            claims_of(&conn, "536365"),
            [(
                0,
                7,
                "store-1".into(),
                "0123456789abcdef0123456789abcdef".into()
            )]
        );
        assert!(!has_table(&conn, "line_ids"), "the old table is dropped");
        // Opening again is a no-op.
        prepare(&mut conn, &path, 2).unwrap();
        assert_eq!(claims_of(&conn, "536365").len(), 1);
    }

    /// A stream file with a claim row per line (`claimed_lines`) keeps its claims, a row per
    /// invoice and record.
    #[test]
    fn the_claims_of_a_file_with_a_row_per_line_move_to_a_row_per_invoice_and_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.sqlite");
        let mut conn = connect(&path).unwrap();
        let id = |d: char| d.to_string().repeat(32);
        conn.execute_batch(&format!(
            r#"CREATE TABLE claimed_lines (
                   invoice_no TEXT NOT NULL, line_id TEXT NOT NULL, store_id TEXT NOT NULL,
                   line TEXT NOT NULL, shard INTEGER NOT NULL, seq INTEGER NOT NULL,
                   arrived_at_ms INTEGER NOT NULL, PRIMARY KEY (invoice_no, line_id)
               ) WITHOUT ROWID;
               INSERT INTO claimed_lines VALUES
                   ('536365', '{a}', 'store-1', '', 0, 7, 1000),
                   ('536365', '{b}', 'store-1', '', 0, 7, 1000),
                   ('536365', '{c}', 'store-2', '', 1, 3, 1001),
                   ('536366', '{d}', 'store-1', '{{"legacy":"json"}}', 0, 7, 1000);"#,
            a = id('a'),
            b = id('b'),
            c = id('c'),
            d = id('d'),
        ))
        .unwrap();
        prepare(&mut conn, &path, 2).unwrap();
        assert_eq!(
            claims_of(&conn, "536365"),
            [
                (0, 7, "store-1".into(), id('a') + &id('b')),
                (1, 3, "store-2".into(), id('c')),
            ]
        );
        assert_eq!(
            claims_of(&conn, "536366"),
            [(0, 7, "store-1".into(), id('d'))]
        );
        assert!(
            !has_table(&conn, "claimed_lines"),
            "the old table is dropped"
        );
    }
}
