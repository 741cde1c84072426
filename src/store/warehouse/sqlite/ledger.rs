//! The import ledger in SQL: which bulk files were loaded, with which content, into which store.
//! It lives in the warehouse SQLite file, so a file's rows and its ledger row commit in one
//! transaction.
//!
//! Rows of the warehouse's `sales` table that an import wrote carry `source = 'import:<id>'`, the
//! id of the file's warehouse ledger row: the rows a file loaded can then be found (and replaced
//! on `--reload`) with a short, indexed key instead of the file's path on every row.
//!
//! A line is stored once, under the source that brought it first; a file or the stream bringing
//! it again is noted in `sales_other_sources`. A reload (or an abandoned load) takes out only the
//! lines whose one source is the file: a line someone else brought too stays, handed to one of
//! them, so the stream's lines and another file's lines survive any reload.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::rollup::Changes;
use super::SOURCE_IMPORT;
use crate::store::row::instant_text;
use crate::store::warehouse::{BulkFile, LedgerEntry, LoadCounts, LoadedInto};
use crate::store::StoreError;

/// The ledger table and the index that finds a file's rows in `sales`.
const LEDGER_DDL: &str = "
CREATE TABLE IF NOT EXISTS import_ledger (
    id             INTEGER PRIMARY KEY,
    source_key     TEXT NOT NULL,
    target         TEXT NOT NULL,      -- 'warehouse' or 'operational'
    size           INTEGER NOT NULL,
    change_token   TEXT NOT NULL,      -- BLAKE3 of a local file, ETag of an S3 object
    rows_loaded    INTEGER NOT NULL,   -- good rows of the file (some may have been there already)
    rows_new       INTEGER NOT NULL,   -- rows the store did not hold before
    rows_rejected  INTEGER NOT NULL,
    reject_file    TEXT,
    loaded_at      TEXT NOT NULL,      -- RFC 3339 UTC
    UNIQUE (source_key, target)
);
CREATE INDEX IF NOT EXISTS sales_source ON sales (source);
";

/// Who else brought a line of `sales` (a `source` value other than the row's own), created with
/// the warehouse: the stream's writes note themselves here when they find their line stored by an
/// import. Empty while no line arrives twice; the index on `source` finds a file's notes when it
/// is reloaded.
pub(super) const OTHER_SOURCES_DDL: &str = "
CREATE TABLE IF NOT EXISTS sales_other_sources (
    invoice_no  TEXT NOT NULL,
    line_id     TEXT NOT NULL,
    source      TEXT NOT NULL,
    UNIQUE (invoice_no, line_id, source)
);
CREATE INDEX IF NOT EXISTS sales_other_sources_source ON sales_other_sources (source);
";

/// `source` of the `sales` rows loaded from the file with ledger row `id`.
pub(super) fn sales_source(id: i64) -> String {
    format!("{SOURCE_IMPORT}:{id}")
}

/// The SQLite error of a ledger statement, as the store's error.
fn sql(conn: &Connection) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    |e| StoreError::sqlite(Path::new(conn.path().unwrap_or("warehouse")), &e)
}

/// Creates the ledger table (and the index that finds a file's rows) when missing. Not at open:
/// the index on `sales (source)` costs every insert, so a warehouse that never imports goes
/// without it.
///
/// # Errors
/// The SQLite error, as [`StoreError::sqlite`].
pub(super) fn create(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(LEDGER_DDL).map_err(sql(conn))
}

/// The ledger row of `key` for `into`, if the file was loaded before.
///
/// # Errors
/// The SQLite error, as [`StoreError::sqlite`].
pub(super) fn lookup(
    tx: &Connection,
    key: &str,
    into: LoadedInto,
) -> Result<Option<LedgerEntry>, StoreError> {
    tx.query_row(
        "SELECT id, size, change_token FROM import_ledger WHERE source_key = ?1 AND target = ?2",
        params![key, into.as_str()],
        |r| {
            Ok(LedgerEntry {
                id: r.get(0)?,
                size: r.get::<_, i64>(1)? as u64,
                change_token: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(sql(tx))
}

/// Writes the ledger row of a load (new or replacing the old one, keeping its id) and returns its
/// id. Called before the rows are inserted, so they can carry [`sales_source`] of it, and again
/// with the final counts; the enclosing transaction makes both visible at once.
///
/// # Errors
/// The SQLite error, as [`StoreError::sqlite`].
pub(super) fn record(
    tx: &Connection,
    file: &BulkFile,
    into: LoadedInto,
    counts: &LoadCounts,
    reject_file: Option<&str>,
) -> Result<i64, StoreError> {
    tx.query_row(
        "INSERT INTO import_ledger (source_key, target, size, change_token, rows_loaded, rows_new,
             rows_rejected, reject_file, loaded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (source_key, target) DO UPDATE SET
             size = excluded.size, change_token = excluded.change_token,
             rows_loaded = excluded.rows_loaded, rows_new = excluded.rows_new,
             rows_rejected = excluded.rows_rejected, reject_file = excluded.reject_file,
             loaded_at = excluded.loaded_at
         RETURNING id",
        params![
            file.key,
            into.as_str(),
            file.size as i64,
            file.change_token,
            counts.rows_loaded as i64,
            counts.rows_new as i64,
            counts.rows_rejected as i64,
            reject_file,
            instant_text(chrono::Utc::now()),
        ],
        |r| r.get(0),
    )
    .map_err(sql(tx))
}

/// Rows [`remove_sales`] takes out in one transaction: a few milliseconds of write lock.
pub(super) const REMOVE_BATCH_ROWS: i64 = 5_000;

/// Takes the file with ledger row `id` out of up to `limit` lines of `sales` in the caller's
/// transaction, and returns how many it handled: call it again until it returns 0.
///
/// - A line it brought first and someone else brought too (a row of `sales_other_sources`) stays
///   and passes to one of them (the smallest `source`); the rollups do not change.
/// - A line only it brought is removed, and taken out of the rollups (`sales_daily_sums`,
///   `sales_product_sums`, `sales_invoices`), so the dashboard figures stay those of the fact
///   table.
/// - Its notes of lines it brought again after someone else go.
///
/// # Errors
/// The SQLite error, as [`StoreError::sqlite`].
pub(super) fn remove_sales(tx: &Connection, id: i64, limit: i64) -> Result<u64, StoreError> {
    let source = sales_source(id);
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS reload_rows (row INTEGER PRIMARY KEY);
         CREATE TEMP TABLE IF NOT EXISTS reload_invoices (invoice_no TEXT PRIMARY KEY);
         DELETE FROM reload_rows; DELETE FROM reload_invoices;",
    )
    .map_err(sql(tx))?;
    tx.execute(
        "INSERT INTO reload_rows SELECT rowid FROM sales WHERE source = ?1 LIMIT ?2",
        params![source, limit],
    )
    .map_err(sql(tx))?;
    let handed_over = hand_over(tx, &source).map_err(sql(tx))?;
    // Summed in Rust, as the rollups are (`super::rollup`): a file's lines can add up past what
    // SQLite's `SUM()` holds.
    let mut changes = Changes::default();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT substr(invoice_date, 1, 10), country, stock_code, is_cancellation,
                     quantity, line_total_micros
                 FROM sales WHERE rowid IN (SELECT row FROM reload_rows)",
            )
            .map_err(sql(tx))?;
        let mut rows = stmt.query([]).map_err(sql(tx))?;
        while let Some(r) = rows.next().map_err(sql(tx))? {
            let get = || -> rusqlite::Result<_> {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, bool>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            };
            let (day, country, code, cancellation, quantity, micros) = get().map_err(sql(tx))?;
            changes.line(
                -1,
                &day,
                &country,
                &code,
                None,
                cancellation,
                quantity,
                micros,
            );
        }
    }
    changes.apply(tx, Path::new(tx.path().unwrap_or("warehouse")))?;
    let removed = remove_rows_sql(tx).map_err(sql(tx))?;
    let notes = tx
        .execute(
            "DELETE FROM sales_other_sources WHERE rowid IN
                 (SELECT rowid FROM sales_other_sources WHERE source = ?1 LIMIT ?2)",
            params![source, limit],
        )
        .map_err(sql(tx))?;
    Ok(handed_over + removed + notes as u64)
}

/// Of the rows in `reload_rows`, those someone else brought too pass to the smallest other
/// `source`, whose note goes, and leave `reload_rows`. Returns how many passed.
fn hand_over(tx: &Connection, source: &str) -> rusqlite::Result<u64> {
    let passed = tx.execute(
        "UPDATE sales SET source = (
             SELECT MIN(o.source) FROM sales_other_sources o
             WHERE o.invoice_no = sales.invoice_no AND o.line_id = sales.line_id)
         WHERE rowid IN (SELECT row FROM reload_rows)
             AND EXISTS (SELECT 1 FROM sales_other_sources o
                 WHERE o.invoice_no = sales.invoice_no AND o.line_id = sales.line_id)",
        [],
    )?;
    if passed == 0 {
        return Ok(0);
    }
    tx.execute(
        "DELETE FROM sales_other_sources WHERE (invoice_no, line_id, source) IN
             (SELECT invoice_no, line_id, source FROM sales
              WHERE rowid IN (SELECT row FROM reload_rows))",
        [],
    )?;
    tx.execute(
        "DELETE FROM reload_rows WHERE row IN
             (SELECT rowid FROM sales WHERE rowid IN (SELECT row FROM reload_rows)
                  AND source <> ?1)",
        [source],
    )?;
    Ok(passed as u64)
}

fn remove_rows_sql(tx: &Connection) -> rusqlite::Result<u64> {
    tx.execute(
        "INSERT OR IGNORE INTO reload_invoices
             SELECT invoice_no FROM sales WHERE rowid IN (SELECT row FROM reload_rows)",
        [],
    )?;
    let removed = tx.execute(
        "DELETE FROM sales WHERE rowid IN (SELECT row FROM reload_rows)",
        [],
    )?;
    tx.execute(
        "DELETE FROM sales_invoices WHERE invoice_no IN (SELECT invoice_no FROM reload_invoices)
             AND NOT EXISTS (SELECT 1 FROM sales WHERE sales.invoice_no = sales_invoices.invoice_no)",
        [],
    )?;
    tx.execute_batch("DELETE FROM reload_rows; DELETE FROM reload_invoices;")?;
    Ok(removed as u64)
}

/// Deletes the ledger row `id` (of a load that was abandoned before it committed).
///
/// # Errors
/// The SQLite error, as [`StoreError::sqlite`].
pub(super) fn forget(tx: &Connection, id: i64) -> Result<(), StoreError> {
    tx.execute("DELETE FROM import_ledger WHERE id = ?1", [id])
        .map(drop)
        .map_err(sql(tx))
}
