//! SQLite plumbing shared by the embedded backends.
//!
//! Every embedded store opens its file the same way ([`open_connection`]: WAL, `synchronous=FULL`,
//! a busy timeout), keeps one writer connection and a few readers ([`Database`]), and runs all
//! SQLite calls on tokio's blocking threads, because a SQLite call may wait for a lock or an fsync
//! and must never stall the async runtime that serves HTTP and drives the actors.
//!
//! It also holds the one encoding of an invoice line into SQL values ([`LineRow`]) and the
//! classification of SQLite errors ([`is_transient`], [`is_line_specific`]) that both stores map to
//! their own error types.
//!
//! # How the stores key a line
//!
//! Both stores keep a line once by `(invoice_no, line_id)`, not by its line id alone. A line id
//! is a hash over the line's invoice number and more (its content, or the client's line number:
//! [`LineId`](crate::model::LineId)), so it determines the invoice: the pair is unique exactly
//! when the id is, and the stores stay idempotent by line id. What the pair changes is where a
//! write lands. In an index ordered by a random hash every line of a batch goes to a different
//! B-tree page, and each commit rewrites, checksums into the WAL and fsyncs about one 4 KiB page
//! per line. Ordered by invoice number first, the lines of a batch sit together (invoice numbers
//! grow with time) and a commit writes a few pages per invoice: `cargo bench --bench stores`
//! measured 3.2x the operational store's and 2.3x the warehouse's insert rate
//! (`docs/benchmarks.md`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDateTime, SecondsFormat, Timelike, Utc};
use rusqlite::{ffi::ErrorCode, Connection, OpenFlags};
use tokio::sync::{Mutex, Semaphore};

use crate::model::{money_to_micros, IngestedLine, Money};

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
pub enum OpenError {
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
pub fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection, OpenError> {
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
pub struct TaskFailed {
    pub path: PathBuf,
    pub reason: String,
}

/// One SQLite file: one writer connection and a pool of readers, used from async code.
///
/// The writer sits behind an async mutex, so callers queue without holding a blocking thread
/// while they wait; only the caller that owns the writer occupies one.
pub struct Database {
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

impl Database {
    /// Opens the file (see [`open_connection`]), runs `schema` (idempotent DDL) on the writer, and
    /// opens the readers.
    ///
    /// # Errors
    /// [`OpenError`] when the file cannot be opened or the schema cannot be created.
    pub fn open(path: &Path, options: &SqliteOptions, schema: &str) -> Result<Self, OpenError> {
        let writer = open_connection(path, options.busy_timeout)?;
        writer
            .execute_batch(schema)
            .map_err(|source| OpenError::Sqlite {
                path: path.to_owned(),
                source,
            })?;
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

    fn failed(&self, reason: String) -> TaskFailed {
        TaskFailed {
            path: self.path.clone(),
            reason,
        }
    }
}

/// True for errors that may go away on their own: another connection holds the lock, or the disk
/// is full, read-only or failing. Retrying later is the right answer to these.
pub fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
        )
    )
}

/// True for errors caused by the values of one row (a constraint, a value too big), which retrying
/// cannot fix.
pub fn is_line_specific(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch)
    ) || matches!(e, rusqlite::Error::ToSqlConversionFailure(_))
}

/// The three outcomes every store's error type distinguishes, so one mapping from SQLite errors
/// serves them all.
pub trait StoreErrorKind: Sized {
    /// Retriable: busy, locked, disk full or read-only.
    fn unavailable(message: String) -> Self;
    /// One line cannot be stored, however often it is retried.
    fn rejected(line_id: String, reason: String) -> Self;
    /// Anything else: a bug, a damaged file.
    fn backend(message: String) -> Self;

    /// Maps the error of a statement on the file at `path` that concerned no line in particular.
    fn from_sqlite(path: &Path, e: &rusqlite::Error) -> Self {
        if is_transient(e) {
            Self::unavailable(format!(
                "{}: {e}; retry later (another connection holds the lock, or the disk is full or read-only)",
                path.display()
            ))
        } else {
            Self::backend(format!("{}: {e}", path.display()))
        }
    }

    /// Maps the error of writing the line `line_id`: its own fault when a constraint or a size
    /// limit refused it, otherwise as [`from_sqlite`](Self::from_sqlite).
    fn from_line(path: &Path, line_id: &str, e: &rusqlite::Error) -> Self {
        if is_line_specific(e) {
            Self::rejected(line_id.to_owned(), e.to_string())
        } else {
            Self::from_sqlite(path, e)
        }
    }

    fn from_open(e: &OpenError) -> Self {
        if e.is_transient() {
            Self::unavailable(e.to_string())
        } else {
            Self::backend(e.to_string())
        }
    }

    fn from_task(e: TaskFailed) -> Self {
        Self::backend(e.to_string())
    }
}

/// Encodes every line first, so that a line that cannot be stored is reported before anything is
/// written.
///
/// # Errors
/// `rejected` for the first line whose amounts or customer id cannot be stored exactly.
pub fn encode_lines<E: StoreErrorKind>(lines: &[IngestedLine]) -> Result<Vec<LineRow>, E> {
    lines
        .iter()
        .map(|l| LineRow::new(l).map_err(|reason| E::rejected(l.line.line_id.to_string(), reason)))
        .collect()
}

/// An invoice line as SQL values: money as exact text plus integer millionths, dates as sortable
/// text. Both stores write these columns under the same names.
#[derive(Debug, Clone)]
pub struct LineRow {
    pub line_id: String,
    pub invoice_no: String,
    pub stock_code: String,
    pub description: Option<String>,
    pub quantity: i64,
    /// [`date_text`] of the invoice date.
    pub invoice_date: String,
    pub unit_price: String,
    pub unit_price_micros: i64,
    pub line_total: String,
    pub line_total_micros: i64,
    pub customer_id: Option<i64>,
    pub country: String,
    pub is_cancellation: bool,
    pub store_id: String,
    /// RFC 3339 UTC, with as many fraction digits as needed to read back the same instant.
    pub ingested_at: String,
}

impl LineRow {
    /// Encodes a line.
    ///
    /// # Errors
    /// The reason, for the person reading the dead letter, when an amount is not a whole number of
    /// millionths that fits 64 bits, or the customer id does not fit SQLite's signed integers.
    pub fn new(l: &IngestedLine) -> Result<Self, String> {
        let line = &l.line;
        let micros = |what: &str, m: Money| {
            money_to_micros(m).ok_or_else(|| {
                format!("{what} {m} is not a whole number of millionths within ±9.2e12 and cannot be summed exactly")
            })
        };
        let line_total = Money::from(line.quantity)
            .checked_mul(line.unit_price)
            .ok_or_else(|| {
                format!(
                    "line total {} x {} overflows a decimal",
                    line.quantity, line.unit_price
                )
            })?;
        let customer_id = line
            .customer_id
            .map(|c| {
                i64::try_from(c).map_err(|_| format!("customer id {c} is larger than {}", i64::MAX))
            })
            .transpose()?;
        Ok(Self {
            line_id: line.line_id.as_str().to_owned(),
            invoice_no: line.invoice_no.clone(),
            stock_code: line.stock_code.clone(),
            description: line.description.clone(),
            quantity: line.quantity,
            invoice_date: date_text(line.invoice_date),
            unit_price: line.unit_price.to_string(),
            unit_price_micros: micros("unit price", line.unit_price)?,
            line_total: line_total.to_string(),
            line_total_micros: micros("line total", line_total)?,
            customer_id,
            country: line.country.clone(),
            is_cancellation: line.is_cancellation(),
            store_id: l.store_id.clone(),
            ingested_at: instant_text(l.ingested_at),
        })
    }
}

/// The named parameters a store's SQL may take from a [`LineRow`]: its field names.
const LINE_PARAMS: [&str; 15] = [
    ":line_id",
    ":invoice_no",
    ":stock_code",
    ":description",
    ":quantity",
    ":invoice_date",
    ":unit_price",
    ":unit_price_micros",
    ":line_total",
    ":line_total_micros",
    ":customer_id",
    ":country",
    ":is_cancellation",
    ":store_id",
    ":ingested_at",
];

/// Where one statement takes each of [`LINE_PARAMS`] (`None`: it does not), looked up once per
/// batch rather than by name for every line.
pub struct LineParams([Option<usize>; 15]);

impl LineParams {
    /// # Errors
    /// The SQLite error of looking a parameter up.
    pub fn of(stmt: &rusqlite::Statement<'_>) -> rusqlite::Result<Self> {
        let mut at = [None; 15];
        for (slot, name) in at.iter_mut().zip(LINE_PARAMS) {
            *slot = stmt.parameter_index(name)?;
        }
        Ok(LineParams(at))
    }
}

impl LineRow {
    /// Binds the row to the named parameters `:line_id`, `:invoice_no`, ... (the field names) that
    /// `stmt` has (found by [`LineParams::of`] on the same statement), so each store's SQL lists
    /// just the columns it keeps, and executes it. Returns the number of rows changed (0 when
    /// `INSERT OR IGNORE` found the line).
    ///
    /// # Errors
    /// The SQLite error of binding or executing.
    pub fn execute(
        &self,
        stmt: &mut rusqlite::Statement<'_>,
        params: &LineParams,
    ) -> rusqlite::Result<usize> {
        use rusqlite::ToSql;
        let values: [&dyn ToSql; 15] = [
            &self.line_id,
            &self.invoice_no,
            &self.stock_code,
            &self.description,
            &self.quantity,
            &self.invoice_date,
            &self.unit_price,
            &self.unit_price_micros,
            &self.line_total,
            &self.line_total_micros,
            &self.customer_id,
            &self.country,
            &self.is_cancellation,
            &self.store_id,
            &self.ingested_at,
        ];
        for (at, value) in params.0.iter().zip(values) {
            if let Some(i) = *at {
                stmt.raw_bind_parameter(i, value)?;
            }
        }
        stmt.raw_execute()
    }
}

/// `YYYY-MM-DD HH:MM:SS`, plus a fraction only when there is one: sorts as the dates do, and the
/// first ten characters are the day.
pub fn date_text(d: NaiveDateTime) -> String {
    if d.nanosecond() == 0 && (0..=9999).contains(&d.year()) {
        // The common case, without parsing a format string for every line.
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            d.year(),
            d.month(),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        )
    } else if d.nanosecond() == 0 {
        d.format("%Y-%m-%d %H:%M:%S").to_string()
    } else {
        d.format("%Y-%m-%d %H:%M:%S%.f").to_string()
    }
}

/// Reads back [`date_text`].
pub fn parse_date_text(s: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// RFC 3339 in UTC with the fraction digits the instant needs.
pub fn instant_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Reads back [`instant_text`].
pub fn parse_instant_text(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_text_matches_its_format_and_reads_back() {
        for (d, text) in [
            (
                NaiveDate::from_ymd_opt(2010, 12, 1)
                    .unwrap()
                    .and_hms_opt(8, 26, 0),
                "2010-12-01 08:26:00",
            ),
            (
                NaiveDate::from_ymd_opt(2011, 1, 9)
                    .unwrap()
                    .and_hms_milli_opt(23, 5, 7, 250),
                "2011-01-09 23:05:07.250",
            ),
            (
                NaiveDate::from_ymd_opt(12, 3, 4)
                    .unwrap()
                    .and_hms_opt(0, 0, 0),
                "0012-03-04 00:00:00",
            ),
        ] {
            let d = d.unwrap();
            assert_eq!(date_text(d), text);
            assert_eq!(parse_date_text(text), Some(d));
        }
        let far = NaiveDate::from_ymd_opt(12_345, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        assert_eq!(date_text(far), far.format("%Y-%m-%d %H:%M:%S").to_string());
    }
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn dates_round_trip_and_sort() {
        let d = NaiveDate::from_ymd_opt(2010, 12, 1)
            .unwrap()
            .and_hms_opt(8, 26, 0)
            .unwrap();
        assert_eq!(date_text(d), "2010-12-01 08:26:00");
        let later = d + chrono::Duration::milliseconds(500);
        assert_eq!(date_text(later), "2010-12-01 08:26:00.500");
        assert!(date_text(d) < date_text(later));
        assert_eq!(parse_date_text(&date_text(d)), Some(d));
        assert_eq!(parse_date_text(&date_text(later)), Some(later));
        let now = Utc::now();
        assert_eq!(parse_instant_text(&instant_text(now)), Some(now));
    }

    #[test]
    fn classifies_errors() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let constraint = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL),
            None,
        );
        assert!(is_transient(&busy) && is_transient(&full));
        assert!(!is_transient(&constraint) && is_line_specific(&constraint));
        assert!(!is_line_specific(&busy));
        assert!(!is_transient(&rusqlite::Error::QueryReturnedNoRows));
    }
}
