//! One SQLite file used from async code: opened with the pragmas every store relies on, one
//! writer connection, a pool of readers and a connection that copies the WAL back after writes
//! (beside the writer, not within its commits), each call on a blocking thread.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tokio::sync::{Mutex, Semaphore};

use super::is_transient;

/// How an embedded store opens its file.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a statement waits for another connection's lock before it fails with
    /// `SQLITE_BUSY` (which the stores report as retriable).
    pub busy_timeout: Duration,
    /// Reader connections, so that queries run while a sink writes (WAL lets readers and the one
    /// writer proceed together).
    pub readers: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            readers: 4,
        }
    }
}

/// Statements each connection keeps prepared; the stores use a handful each.
const STATEMENT_CACHE: usize = 32;

/// Page cache of a reader connection, in KiB (negative: KiB for SQLite).
const READER_CACHE_KIB: i64 = -4_096;

/// Page size of a new SQLite file of shopstream's: a store's, or the embedded stream's. SQLite's
/// default is 4 KiB; with 16 KiB an insert splits and rewrites fewer B-tree pages, and a commit
/// writes fewer, larger WAL frames. The stores: in four alternating pairs of the pipeline bench
/// the sinks' blocking threads took 18% less CPU a line while catching up and the time to all
/// sinks was 8% shorter (medians). The stream, whose records of an invoice's lines (about 2.4 KB)
/// nearly filled a 4 KiB page: ack p99 at 150,000 lines/s 24.5-29.2 -> 11.3-25.4 ms, at half of
/// the durable rate 39.7 / 43.6 -> 19.9 / 23.3 ms (`docs/benchmarks.md`). A file keeps the page
/// size it was created with (changing it needs a `VACUUM` outside WAL mode), so files from before
/// keep 4 KiB pages; sizes that depend on it are set in bytes ([`set_autocheckpoint_bytes`]).
pub(crate) const PAGE_SIZE: i64 = 16_384;

/// Gives a new file [`PAGE_SIZE`]; a no-op on a file that exists. Must come before anything writes
/// the file's header (setting WAL mode does).
pub(crate) fn set_new_file_page_size(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "page_size", PAGE_SIZE)
}

/// The page size of the file `conn` is open on: [`PAGE_SIZE`], or an older file's own.
pub(crate) fn page_size(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA page_size", [], |row| row.get(0))
}

/// Sets the connection's own checkpoint (`wal_autocheckpoint`, counted in pages) at `bytes` of
/// WAL in the file's own pages, so that it means the same for a file from before.
pub(crate) fn set_autocheckpoint_bytes(conn: &Connection, bytes: i64) -> rusqlite::Result<()> {
    conn.pragma_update(None, "wal_autocheckpoint", bytes / page_size(conn)?)
}

/// WAL bytes after which the writer copies the WAL back into the database itself, within its
/// commit (SQLite's default is 1,000 pages, 4 MB at 4 KiB). The backstop: after writes (at most
/// every [`CHECKPOINT_EVERY`]) the WAL is copied back on a connection of its own
/// ([`Database::checkpoint_soon`]), outside the writer's turn.
const WRITER_AUTOCHECKPOINT_BYTES: i64 = 32 * 1024 * 1024;

/// The shortest time between two checkpoints after writes: a page that every write changes (the
/// top of an index, a rollup) is copied back once per checkpoint, so a checkpoint after every
/// write of a busy sink would copy it far more often than SQLite's own checkpoint every 1,000
/// pages did.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Page cache of the checkpoint connection, in KiB: it only copies pages from the WAL.
const CHECKPOINTER_CACHE_KIB: i64 = -1_024;

/// Why a SQLite file could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("cannot create the folder {path} for a SQLite file: {source}; check that the data_dir is writable")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the SQLite file {path}: {source}; check that the file is a shopstream database, is writable and that the disk has space")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

impl OpenError {
    /// True when opening may succeed later unchanged (busy file, disk full).
    pub fn is_transient(&self) -> bool {
        match self {
            OpenError::CreateDir { .. } => false,
            OpenError::Sqlite { source, .. } => is_transient(source),
        }
    }
}

/// Opens (and creates, with its folder) a SQLite file with the pragmas every store relies on:
///
/// - `journal_mode=WAL`: readers do not block the writer nor the writer the readers;
/// - `synchronous=FULL`: a commit is fsynced before it returns. Sinks checkpoint their stream
///   position once a write is acknowledged, so an acknowledged write must survive a power cut;
///   WAL's default `NORMAL` could lose the last commits.
/// - a busy timeout, so that a second process (an importer) briefly holding the lock is waited for.
///
/// # Errors
/// [`OpenError`] when the folder cannot be created or the file cannot be opened or set up.
pub(crate) fn open_connection(
    path: &Path,
    busy_timeout: Duration,
) -> Result<Connection, OpenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let setup = || -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(busy_timeout)?;
        set_new_file_page_size(&conn)?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "journal_mode stayed {mode} instead of WAL (is the file on a network share?)"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 16 MiB of page cache for the writer (readers shrink theirs): the hot part of the
        // indexes stays in memory, the rest comes from the OS page cache, which is not ours to
        // count against the process.
        conn.pragma_update(None, "cache_size", -16_000)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    };
    setup().map_err(|source| OpenError::Sqlite {
        path: path.to_owned(),
        source,
    })
}

/// A blocking SQLite task panicked; the store reports it as a backend error.
#[derive(Debug, thiserror::Error)]
#[error("a SQLite task on {path} failed: {reason}")]
pub(crate) struct TaskFailed {
    pub(crate) path: PathBuf,
    pub(crate) reason: String,
}

/// One SQLite file: one writer connection and a pool of readers, used from async code.
///
/// The writer sits behind an async mutex, so callers queue without holding a blocking thread
/// while they wait; only the caller that owns the writer occupies one.
pub(crate) struct Database {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<ReaderPool>,
    checkpointer: Arc<Checkpointer>,
}

/// A connection that copies the WAL back into the database after writes, so that the writer
/// does not (see [`Database::checkpoint_soon`]).
///
/// Left to SQLite, the writer copies the WAL back within the commit that takes it past 1,000
/// pages, while every write queued behind it waits: in a profile of the sinks catching up, a
/// tenth of the warehouse's turn as the writer was such copies, and the warehouse is the sink
/// that finishes last. A passive checkpoint on another connection runs beside the next write.
struct Checkpointer {
    path: PathBuf,
    /// Held while a checkpoint runs: one at a time.
    conn: StdMutex<Connection>,
    /// When the last checkpoint began: one every [`CHECKPOINT_EVERY`] at most.
    last: StdMutex<Option<std::time::Instant>>,
}

impl Checkpointer {
    /// Copies what the WAL holds back into the database, unless a checkpoint runs already (the
    /// next write asks again). Blocking.
    fn run_unless_running(&self) {
        let conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        // The row is (busy, frames in the WAL, frames copied back). A passive checkpoint takes no
        // lock that the writer or the readers wait for, and copies what it can.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(path = %self.path.display(), error = %e, "A checkpoint of the WAL failed; the next write tries again.");
        }
    }

    /// Whether a checkpoint is due: none began in the last [`CHECKPOINT_EVERY`].
    fn is_due(&self) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|at| at.elapsed() >= CHECKPOINT_EVERY)
    }
}

struct ReaderPool {
    idle: StdMutex<Vec<Connection>>,
    /// One permit per connection in `idle`: waiting for a reader is async.
    permits: Arc<Semaphore>,
}

/// A reader taken from the pool; it goes back on drop, even when the task using it panics.
struct PooledReader {
    conn: Option<Connection>,
    pool: Arc<ReaderPool>,
}

impl Drop for PooledReader {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

/// A change an older file needs when it is opened: `run` (SQL, in a transaction of its own) only
/// where `needed` (a query of one boolean) says so. Opening a file that needs none takes no write
/// lock, so a file another process holds locked still opens; its writes wait, as every write to
/// a locked file does.
pub(crate) struct Migration {
    pub needed: &'static str,
    pub run: &'static str,
    /// What it did, for the log.
    pub done: &'static str,
}

impl Database {
    /// Opens the file (see [`open_connection`]), runs `schema` (idempotent DDL: `CREATE ... IF NOT
    /// EXISTS`, which takes no write lock once done) and each of `migrations` that is needed on
    /// the writer, and opens the readers.
    ///
    /// # Errors
    /// [`OpenError`] when the file cannot be opened or the schema cannot be created.
    pub fn open(
        path: &Path,
        options: &SqliteOptions,
        schema: &str,
        migrations: &[Migration],
    ) -> Result<Self, OpenError> {
        let writer = open_connection(path, options.busy_timeout)?;
        let sqlite = |source| OpenError::Sqlite {
            path: path.to_owned(),
            source,
        };
        set_autocheckpoint_bytes(&writer, WRITER_AUTOCHECKPOINT_BYTES).map_err(sqlite)?;
        writer.execute_batch(schema).map_err(sqlite)?;
        for migration in migrations {
            let needed: bool = writer
                .query_row(migration.needed, [], |row| row.get(0))
                .map_err(sqlite)?;
            if needed {
                writer.execute_batch(migration.run).map_err(sqlite)?;
                tracing::info!(path = %path.display(), "{}", migration.done);
            }
        }
        let readers = (0..options.readers.max(1))
            .map(|_| {
                let conn = open_connection(path, options.busy_timeout)?;
                // A reader never writes; this makes a mistake fail loudly instead of contending
                // with the writer.
                conn.pragma_update(None, "query_only", true)
                    // Readers answer look-ups of a few pages; the writer's cache is the one
                    // that keeps index inserts fast. Small reader caches keep memory bounded.
                    .and_then(|()| conn.pragma_update(None, "cache_size", READER_CACHE_KIB))
                    .map_err(|source| OpenError::Sqlite {
                        path: path.to_owned(),
                        source,
                    })?;
                Ok(conn)
            })
            .collect::<Result<Vec<_>, OpenError>>()?;
        let checkpointer = open_connection(path, options.busy_timeout)?;
        checkpointer
            .pragma_update(None, "cache_size", CHECKPOINTER_CACHE_KIB)
            .map_err(sqlite)?;
        Ok(Self {
            path: path.to_owned(),
            checkpointer: Arc::new(Checkpointer {
                path: path.to_owned(),
                conn: StdMutex::new(checkpointer),
                last: StdMutex::new(None),
            }),
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(ReaderPool {
                permits: Arc::new(Semaphore::new(readers.len())),
                idle: StdMutex::new(readers),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the writer connection on a blocking thread, after the writes queued before.
    ///
    /// # Errors
    /// What `f` returns, or [`TaskFailed`] (converted into `E`) when `f` panicked.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<TaskFailed> + Send + 'static,
    {
        let mut conn = self.writer.clone().lock_owned().await;
        let written = self.blocking(move || f(&mut conn)).await;
        self.checkpoint_soon();
        written
    }

    /// Copies the WAL back into the database on the checkpoint connection, on a blocking thread of
    /// the caller's runtime (a sink's, at the sinks' priority), unless a checkpoint runs already
    /// or began less than [`CHECKPOINT_EVERY`] ago. Not waited for: the write that asked is done,
    /// and the next may begin while the copy runs.
    fn checkpoint_soon(&self) {
        if !self.checkpointer.is_due() {
            return;
        }
        let checkpointer = self.checkpointer.clone();
        tokio::task::spawn_blocking(move || checkpointer.run_unless_running());
    }

    /// Runs `f` with a reader connection on a blocking thread; reads run while a write does.
    ///
    /// # Errors
    /// What `f` returns, or [`TaskFailed`] (converted into `E`) when `f` panicked.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<TaskFailed> + Send + 'static,
    {
        let permit = self
            .readers
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| self.failed(e.to_string()))?;
        let pool = self.readers.clone();
        self.blocking(move || {
            let _permit = permit;
            let conn = pool.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let reader = PooledReader { conn, pool };
            let conn = reader
                .conn
                .as_ref()
                .expect("a reader permit always has an idle connection");
            f(conn)
        })
        .await
    }

    async fn blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce() -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<TaskFailed> + Send + 'static,
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(result) => result,
            Err(e) => Err(self.failed(e.to_string()).into()),
        }
    }

    /// Checks that a reader can query `table` (for a health check).
    ///
    /// # Errors
    /// The SQLite error (mapped by `fail`), or [`TaskFailed`] (converted into `E`).
    pub(crate) async fn check_readable<E, M>(&self, table: &'static str, fail: M) -> Result<(), E>
    where
        E: From<TaskFailed> + Send + 'static,
        M: FnOnce(&Path, &rusqlite::Error) -> E + Send + 'static,
    {
        let path = self.path.clone();
        self.read(move |conn| {
            conn.query_row(&format!("SELECT 1 FROM {table} LIMIT 1"), [], |_| Ok(()))
                .optional()
                .map(drop)
                .map_err(|e| fail(&path, &e))
        })
        .await
    }

    /// The writer connection for blocking code that writes in many short transactions (a bulk
    /// load, batch by batch), each taking the writer only for its own length so the writes
    /// queued by others go in between.
    pub(crate) fn blocking_writer(&self) -> BlockingWriter {
        BlockingWriter {
            writer: self.writer.clone(),
            path: self.path.clone(),
            checkpointer: self.checkpointer.clone(),
        }
    }

    fn failed(&self, reason: String) -> TaskFailed {
        TaskFailed {
            path: self.path.clone(),
            reason,
        }
    }
}

/// See [`Database::blocking_writer`].
pub(crate) struct BlockingWriter {
    writer: Arc<Mutex<Connection>>,
    path: PathBuf,
    checkpointer: Arc<Checkpointer>,
}

impl BlockingWriter {
    /// Runs `f` in one `BEGIN IMMEDIATE` transaction and commits when it returns `Ok` (an error
    /// or a panic rolls it back). Blocking: call it on a blocking thread, never from async code.
    ///
    /// # Errors
    /// What `f` returns, or the SQLite error of `BEGIN` or `COMMIT` (mapped by `fail`).
    pub(crate) fn transaction<T, E, M, F>(&self, fail: M, f: F) -> Result<T, E>
    where
        M: Fn(&Path, &rusqlite::Error) -> E,
        F: FnOnce(&Connection) -> Result<T, E>,
    {
        let out = {
            let mut conn = self.writer.blocking_lock();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| fail(&self.path, &e))?;
            let out = f(&tx)?;
            tx.commit().map_err(|e| fail(&self.path, &e))?;
            out
        };
        // Here, on this blocking thread, once the writer is free for the next batch.
        if self.checkpointer.is_due() {
            self.checkpointer.run_unless_running();
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(path: &Path, name: &str) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A new store file gets [`PAGE_SIZE`]; a file created with SQLite's default 4 KiB pages
    /// opens as it is, keeps them and its rows, and its writer's backstop is counted in its own
    /// pages.
    #[tokio::test]
    async fn a_new_file_gets_16_kib_pages_and_an_older_file_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let schema = "CREATE TABLE IF NOT EXISTS t (v TEXT NOT NULL);";

        let new = dir.path().join("new.sqlite");
        drop(Database::open(&new, &SqliteOptions::default(), schema, &[]).unwrap());
        assert_eq!(pragma(&new, "page_size"), PAGE_SIZE);

        let old = dir.path().join("old.sqlite");
        {
            let conn = Connection::open(&old).unwrap();
            conn.execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;
                 CREATE TABLE t (v TEXT NOT NULL); INSERT INTO t (v) VALUES ('before');",
            )
            .unwrap();
        }
        let db = Database::open(&old, &SqliteOptions::default(), schema, &[]).unwrap();
        let (rows, autocheckpoint) = db
            .write(|conn| -> Result<(i64, i64), TaskFailed> {
                conn.execute("INSERT INTO t (v) VALUES ('after')", [])
                    .unwrap();
                let rows = conn
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .unwrap();
                let pages = conn
                    .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                    .unwrap();
                Ok((rows, pages))
            })
            .await
            .unwrap();
        drop(db);
        assert_eq!(rows, 2);
        assert_eq!(autocheckpoint, WRITER_AUTOCHECKPOINT_BYTES / 4096);
        assert_eq!(pragma(&old, "page_size"), 4096);
    }

    /// After a write, the WAL is copied back into the database on the checkpoint connection (the
    /// writer's own checkpoint waits for 32 MB of WAL).
    #[tokio::test]
    async fn a_write_is_copied_back_into_the_database_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.sqlite");
        let db = Database::open(
            &path,
            &SqliteOptions::default(),
            "CREATE TABLE IF NOT EXISTS t (v BLOB NOT NULL);",
            &[],
        )
        .unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        // About 400 pages: far below the writer's own checkpoint.
        db.write(|conn| -> Result<(), TaskFailed> {
            let tx = conn.transaction().unwrap();
            for _ in 0..400 {
                tx.execute("INSERT INTO t (v) VALUES (zeroblob(4000))", [])
                    .unwrap();
            }
            tx.commit().unwrap();
            Ok(())
        })
        .await
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let size = std::fs::metadata(&path).unwrap().len();
            if size >= before + 1_500_000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the write stayed in the WAL: the database file is {size} bytes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reads see the rows.
        let rows: i64 = db
            .read(|conn| -> Result<i64, TaskFailed> {
                Ok(conn
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                    .unwrap())
            })
            .await
            .unwrap();
        assert_eq!(rows, 400);
    }
}
