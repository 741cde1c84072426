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
use crate::sqlite::pool;
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a connection waits for a lock of the file before giving up. Only the writer writes
/// (see `writer`); readers wait only while the WAL is recovered after a crash.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of WAL after which the writer folds the WAL back into the database itself, within a
/// commit: the backstop, for when the checkpointer thread ([`run_checkpointer`]) cannot work. In a
/// commit, such a checkpoint held that commit's appends for 20 to 30 ms, and, since it cannot start
/// the WAL over while the sinks read, it ran again at every commit until it could: at 64 MB it set
/// the ack latency's tail under load.
const WAL_AUTOCHECKPOINT_BYTES: i64 = 256 * 1024 * 1024;

/// Bytes of WAL after which the checkpointer asks the writer to start the WAL over
/// ([`RestartWal`]). With 16 KiB pages each start over costs the writer little, and while the
/// WAL's file still grows (its first cycle after the file is opened) each commit's fsync also
/// writes the file's new size; at 32 MB that phase is half as long. Ack p99 at 200,000 lines/s
/// (2 cores, four rounds): 13.2 / 12.8 / 18.8 / 13.0 ms at 32 MB, 16.5 / 18.4 / 62.3 / 17.9 at
/// 64 MB, 25.3 / 34.9 / 22.6 / 31.6 at 128 MB (docs/benchmarks.md).
const RESTART_WAL_BYTES: i64 = 32 * 1024 * 1024;

/// How often the checkpointer thread copies what the WAL holds back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// How the writer waits for the readers still in the old WAL when it starts the WAL over: it looks
/// again every [`RESTART_POLL`], at most [`RESTART_POLLS`] times (5 ms), then leaves it to the
/// checkpointer's next request. (SQLite's own busy handler sleeps 1, 2, 5, 10 ms: a reader that
/// finishes in half a millisecond would cost appends a whole millisecond or more.)
const RESTART_POLL: Duration = Duration::from_micros(100);
const RESTART_POLLS: i32 = 50;

fn restart_busy(polls: i32) -> bool {
    if polls >= RESTART_POLLS {
        return false;
    }
    std::thread::sleep(RESTART_POLL);
    true
}

/// When the WAL starts over, its file is truncated to this size if larger, so it does not keep
/// the size of a backstop checkpoint ([`WAL_AUTOCHECKPOINT_BYTES`]) on disk forever. Above the
/// WAL's usual high water ([`RESTART_WAL_BYTES`] and what comes until the writer starts it over):
/// truncated each time (a limit of 64 MB when the WAL started over at 64 MB), the ack p99 at
/// 150,000 lines/s was 40.0 ms against 30.6 (medians of four runs, docs/benchmarks.md).
const JOURNAL_SIZE_LIMIT_BYTES: i64 = 128 * 1024 * 1024;

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
    // 16 KiB pages for a new file (`sqlite::pool::PAGE_SIZE`); the WAL sizes below are in bytes, so
    // they hold for a file from before with 4 KiB pages too.
    pool::set_new_file_page_size(&conn)?;
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
    pool::set_autocheckpoint_bytes(&conn, WAL_AUTOCHECKPOINT_BYTES)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT_BYTES)?;
    Ok(conn)
}

/// The checkpointer's request that the writer start the WAL over, shared by the two threads.
///
/// Under steady appends the WAL never starts over by itself: a checkpoint on another connection
/// never catches up with the writer, and readers (the sinks, all the time) hold on to it. So the WAL
/// would grow until the writer's own checkpoint ([`WAL_AUTOCHECKPOINT_BYTES`]). Instead, once the
/// WAL holds [`RESTART_WAL_BYTES`] and the checkpointer has copied it back, the writer, between
/// two commits, copies the little that came since and waits (at most 5 ms, [`RESTART_POLLS`]) for
/// the readers still in it: the next commit starts the WAL over, writing from the start of the
/// file again (which keeps its size: [`JOURNAL_SIZE_LIMIT_BYTES`]). The stall is a few
/// milliseconds once per [`RESTART_WAL_BYTES`] of WAL.
#[derive(Clone, Default)]
pub(super) struct RestartWal(Arc<AtomicBool>);

impl RestartWal {
    fn ask(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// On the writer, between commits: starts the WAL over if the checkpointer asked.
    pub fn run_if_asked(&self, conn: &Connection) {
        if !self.0.swap(false, Ordering::AcqRel) {
            return;
        }
        let restarted = conn.busy_handler(Some(restart_busy)).and_then(|()| {
            conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
                row.get::<_, i64>(0)
            })
        });
        if let Err(e) = conn.busy_timeout(BUSY_TIMEOUT) {
            tracing::warn!(error = %e, "Cannot reset the stream writer's busy timeout.");
        }
        match restarted {
            // 1: readers were still in the WAL after 5 ms; the checkpointer asks again.
            Ok(busy) => tracing::debug!(busy, "The stream writer checkpointed to restart the WAL."),
            Err(e) => {
                tracing::warn!(error = %e, "The stream writer could not checkpoint its WAL; it will try again.")
            }
        }
    }
}

/// Copies the WAL back into the database every [`CHECKPOINT_EVERY`] on a connection of its own,
/// until `stop` is dropped, and asks the writer to start the WAL over once it is large (see
/// [`RestartWal`]). A passive checkpoint takes no lock that appends or reads wait for, and leaves
/// for next time what it cannot copy now. If the thread cannot work, the writer's own checkpoint
/// ([`WAL_AUTOCHECKPOINT_BYTES`]) still bounds the WAL.
pub(super) fn run_checkpointer(
    path: &Path,
    stop: &std::sync::mpsc::Receiver<()>,
    restart: &RestartWal,
) {
    let conn = match connect(path) {
        Ok(conn) => conn,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "Cannot open a connection for the stream's checkpoints; the writer checkpoints within its commits instead.");
            return;
        }
    };
    let restart_frames = RESTART_WAL_BYTES / pool::page_size(&conn).unwrap_or(pool::PAGE_SIZE);
    let mut warned = false;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY)
    {
        // The row is (busy, frames in the WAL, frames copied back).
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
            row.get::<_, i64>(1)
        });
        match done {
            Ok(frames) => {
                warned = false;
                if frames >= restart_frames {
                    restart.ask();
                }
            }
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
         DROP INDEX IF EXISTS invoice_claims_by_arrival;
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
        // No index on the arrival time (a file of before 2026-12-08 had one): every commit
        // wrote a page of it per shard, for retention's one look-up a minute, which a binary
        // search over the sequence numbers answers as well (`retention`).
        tx.execute_batch(&format!(
            "DROP INDEX IF EXISTS {table}_by_arrival;",
            table = records_table(shard)
        ))
        .map_err(backend)?;
        tx.execute(
            "INSERT OR IGNORE INTO shards (shard, last_seq) VALUES (?1, 0)",
            [shard],
        )
        .map_err(backend)?;
    }
    // A shard's last sequence number is its newest record's; `shards.last_seq` keeps it only for
    // a shard whose records retention has removed (it writes it before each delete), so that
    // numbers are never used twice. (Written at every commit before 2026-12-08: a page of every
    // commit for a number the records table holds anyway.)
    let mut last = vec![0u64; shards as usize];
    for (shard, slot) in (0..shards).zip(&mut last) {
        let seq: i64 = tx
            .query_row(
                &format!(
                    "SELECT max(coalesce((SELECT max(seq) FROM {}), 0),
                                (SELECT last_seq FROM shards WHERE shard = ?1))",
                    records_table(shard)
                ),
                [shard],
                |row| row.get(0),
            )
            .map_err(backend)?;
        *slot = u64::try_from(seq).unwrap_or(0);
    }
    tx.commit().map_err(backend)?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asked by the checkpointer, the writer checkpoints between commits so that its next commit
    /// starts the WAL over (the file stops growing); unasked, or while a reader is still in the
    /// WAL after the wait, it does not.
    #[test]
    fn the_writer_starts_the_wal_over_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stream.sqlite");
        let wal = dir.path().join("stream.sqlite-wal");
        let size = || std::fs::metadata(&wal).unwrap().len();
        let writer = connect(&path).unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let write = |n: usize| {
            for _ in 0..n {
                writer
                    .execute("INSERT INTO t VALUES (zeroblob(8000))", [])
                    .unwrap();
            }
        };
        write(20);
        let restart = RestartWal::default();

        let before = size();
        restart.run_if_asked(&writer);
        write(5);
        assert!(size() > before, "unasked, the WAL goes on");

        // A reader in the WAL: the writer waits a little, then leaves the WAL as it is.
        let reader = connect(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .unwrap();
        let before = size();
        restart.ask();
        let started = std::time::Instant::now();
        restart.run_if_asked(&writer);
        assert!(started.elapsed() < Duration::from_secs(1));
        write(5);
        assert!(size() > before, "a reader keeps the WAL");
        reader.execute_batch("COMMIT").unwrap();

        let before = size();
        restart.ask();
        restart.run_if_asked(&writer);
        write(5);
        assert_eq!(
            size(),
            before,
            "the WAL started over: new frames overwrite its start"
        );
    }

    /// A new stream file gets [`pool::PAGE_SIZE`]; one made with SQLite's default 4 KiB pages keeps
    /// them, and its writer's backstop is counted in its own pages.
    #[test]
    fn a_new_stream_file_gets_16_kib_pages_and_an_older_file_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let pragma = |conn: &Connection, name: &str| -> i64 {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
                .unwrap()
        };
        let new = connect(&dir.path().join("new.sqlite")).unwrap();
        new.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        assert_eq!(pragma(&new, "page_size"), pool::PAGE_SIZE);
        assert_eq!(
            pragma(&new, "wal_autocheckpoint"),
            WAL_AUTOCHECKPOINT_BYTES / pool::PAGE_SIZE
        );

        let path = dir.path().join("old.sqlite");
        Connection::open(&path)
            .unwrap()
            .execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;
                 CREATE TABLE t (x BLOB); INSERT INTO t VALUES (x'00');",
            )
            .unwrap();
        let old = connect(&path).unwrap();
        old.execute("INSERT INTO t VALUES (x'01')", []).unwrap();
        assert_eq!(pragma(&old, "page_size"), 4096);
        assert_eq!(
            pragma(&old, "wal_autocheckpoint"),
            WAL_AUTOCHECKPOINT_BYTES / 4096
        );
        let rows: i64 = old
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2);
    }

    /// The claims of `invoice_no`: (shard, seq, store, the ids' hex digits one after another).
    /// A migrated row holds the ids' bytes after a leading 0x01 byte (`claims`).
    fn claims_of(conn: &Connection, invoice_no: &str) -> Vec<(i64, i64, String, String)> {
        let mut stmt = conn
            .prepare(
                "SELECT shard, seq, store_id, line_ids FROM invoice_claims
                 WHERE invoice_no = ?1 ORDER BY shard, seq",
            )
            .unwrap();
        stmt.query_map([invoice_no], |row| {
            let line_ids: Vec<u8> = row.get(3)?;
            let (tag, ids) = line_ids.split_first().expect("a claim holds ids");
            assert_eq!(*tag, 0x01, "a migrated claim holds the ids' bytes");
            let hex = ids.iter().map(|b| format!("{b:02x}")).collect();
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, hex))
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
