//! One SQLite file used from async code: opened with the pragmas every store relies on, one
//! writer connection and a pool of readers, each call on a blocking thread.

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
        Ok(Self {
            path: path.to_owned(),
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
        self.blocking(move || f(&mut conn)).await
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
        let mut conn = self.writer.blocking_lock();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| fail(&self.path, &e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| fail(&self.path, &e))?;
        Ok(out)
    }
}
