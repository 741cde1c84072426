//! The embedded warehouse: the `sales` fact table ([`SALES_DDL`]) in a SQLite file, plus small
//! rollup tables that keep [`Warehouse::summary`] fast however many lines the table holds
//! ([`rollup`], with sums that accepted lines cannot overflow), and the import ledger of bulk loads ([`ledger`], [`bulk`]).
//!
//! Every row enters `sales` through `insert_rows`, which updates the rollups in the same
//! transaction, so they never disagree with the fact table. A bulk load writes through it too
//! (with `source = 'import:<ledger id>'`), in short transactions per batch of lines, and records
//! the file in the ledger: see [`Warehouse::load_file`]. A row's `source` is whoever brought the
//! line first; `sales_other_sources` ([`ledger::OTHER_SOURCES_DDL`]) keeps who brought it again,
//! so a reload of a file takes out only the lines no one else brought.

mod bulk;
mod ledger;
mod rollup;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, Transaction};

use super::{
    BulkFile, CustomerRevenue, DayRange, FileLoadStart, LedgerEntry, LoadCounts, LoadedInto,
    SalesSummary, Warehouse, SALES_DDL,
};
use crate::model::IngestedLine;
use crate::sqlite::{Database, SqliteOptions};
use crate::store::row::{encode_lines, LineParams, LineRow};
use crate::store::StoreError;

/// `source` of the lines the warehouse forwarder writes from the stream.
pub const SOURCE_STREAM: &str = "stream";
/// `source` of the lines the bulk importer writes.
pub const SOURCE_IMPORT: &str = "import";

const INSERT_SALE: &str = "
INSERT OR IGNORE INTO sales (line_id, invoice_no, stock_code, description, quantity, invoice_date,
    unit_price, line_total, line_total_micros, customer_id, country, is_cancellation, store_id,
    ingested_at, source)
VALUES (:line_id, :invoice_no, :stock_code, :description, :quantity, :invoice_date,
    :unit_price, :line_total, :line_total_micros, :customer_id, :country, :is_cancellation,
    :store_id, :ingested_at, :source)";

/// Records that `:source` brought again a line `sales` already holds from another source (an
/// `INSERT OR IGNORE` of it changed nothing): a reload of either file then keeps the line.
const ADD_OTHER_SOURCE: &str = "
INSERT OR IGNORE INTO sales_other_sources (invoice_no, line_id, source)
SELECT invoice_no, line_id, ?3 FROM sales WHERE invoice_no = ?1 AND line_id = ?2 AND source <> ?3";

const ADD_INVOICE: &str =
    "INSERT OR IGNORE INTO sales_invoices (invoice_no, customer_id) VALUES (?1, ?2)";

/// The `sales` table in a SQLite file. Share it as `Arc<dyn Warehouse>`; writes queue for the one
/// writer connection, summaries use a pool of readers and run while a write does.
pub struct SqliteWarehouse {
    db: Database,
}

impl SqliteWarehouse {
    /// Opens the warehouse at `path` with the default options, creating the file, its folder and
    /// its tables when missing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the file is busy or the disk full or read-only,
    /// [`StoreError::Backend`] when it cannot be created or is not a shopstream database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &SqliteOptions::default())
    }

    /// [`open`](Self::open) with explicit options (busy timeout, number of readers).
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_with(path: &Path, options: &SqliteOptions) -> Result<Self, StoreError> {
        let schema = format!("{SALES_DDL}{}{}", ledger::OTHER_SOURCES_DDL, rollup::DDL);
        let db = Database::open(path, options, &schema, &[rollup::MIGRATION])?;
        Ok(Self { db })
    }

    /// The same warehouse behind the trait, as the actors and handlers share it.
    pub fn shared(self) -> Arc<dyn Warehouse> {
        Arc::new(self)
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// [`Warehouse::insert`] with the `source` column set to `source` (e.g. [`SOURCE_IMPORT`]).
    /// Returns how many lines were new.
    ///
    /// # Errors
    /// As [`Warehouse::insert`].
    pub async fn insert_with_source<L: std::borrow::Borrow<IngestedLine> + Sync>(
        &self,
        lines: &[L],
        source: &str,
    ) -> Result<u64, StoreError> {
        if lines.is_empty() {
            return Ok(0);
        }
        // Encoded here: a line that cannot be stored is refused before the write, and the
        // blocking task takes the encoded rows rather than a copy of the lines.
        let rows = encode_lines(lines)?;
        let source = source.to_owned();
        self.in_transaction(move |tx| insert_rows(tx, &rows, &source))
            .await
    }

    /// Runs `f` in one transaction on the writer connection, on a blocking thread, and commits
    /// when it returns `Ok` (a returned error or a panic rolls everything back).
    ///
    /// # Errors
    /// What `f` returns; [`StoreError::Unavailable`] when the transaction cannot start or commit
    /// because the file is locked past the busy timeout or the disk is full.
    async fn in_transaction<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let path = self.db.path().to_owned();
        self.db
            .write(move |conn| {
                let fail = |e: rusqlite::Error| StoreError::sqlite(&path, &e);
                let tx = conn.transaction().map_err(fail)?;
                let out = f(&tx)?;
                tx.commit().map_err(fail)?;
                Ok(out)
            })
            .await
    }
}

/// Adds encoded lines to `sales` (a line id already there is skipped, `source` noted in
/// `sales_other_sources` when it is not the row's) and to the rollups, within the caller's
/// transaction, and returns how many lines were new. Blocking: call it on a blocking
/// thread.
///
/// # Errors
/// [`StoreError::Rejected`] naming the first line that cannot be stored,
/// [`StoreError::Aggregate`] when a rollup would leave its range (accepted lines never do),
/// [`StoreError::Unavailable`] when the file is locked or the disk full; the caller's
/// transaction should then be rolled back.
fn insert_rows(tx: &Connection, rows: &[LineRow], source: &str) -> Result<u64, StoreError> {
    let path = Path::new(tx.path().unwrap_or("warehouse"));
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);

    let mut changes = rollup::Changes::default();
    let mut invoices: HashMap<&str, Option<i64>> = HashMap::new();
    let mut added = 0;
    {
        let mut stmt = tx.prepare_cached(INSERT_SALE).map_err(fail)?;
        let source_index = stmt
            .parameter_index(":source")
            .map_err(fail)?
            .expect("INSERT_SALE has a :source parameter");
        stmt.raw_bind_parameter(source_index, source)
            .map_err(fail)?;
        let params = LineParams::of(&stmt).map_err(fail)?;
        let mut again = tx.prepare_cached(ADD_OTHER_SOURCE).map_err(fail)?;
        for row in rows {
            let changed = row
                .execute(&mut stmt, &params)
                .map_err(|e| StoreError::sqlite_line(path, row.line_id(), &e))?;
            if changed == 0 {
                again
                    .execute(rusqlite::params![row.invoice_no(), row.line_id(), source])
                    .map_err(|e| StoreError::sqlite_line(path, row.line_id(), &e))?;
                continue;
            }
            added += 1;
            changes.line(
                1,
                &row.invoice_date()[..10],
                row.country(),
                row.stock_code(),
                row.description(),
                row.is_cancellation,
                row.quantity,
                row.line_total_micros,
            );
            invoices.entry(row.invoice_no()).or_insert(row.customer_id);
        }
    }
    changes.apply(tx, path)?;
    let mut stmt = tx.prepare_cached(ADD_INVOICE).map_err(fail)?;
    for (invoice_no, customer_id) in &invoices {
        stmt.execute(rusqlite::params![invoice_no, customer_id])
            .map_err(fail)?;
    }
    Ok(added)
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    /// One transaction per call, with `source = 'stream'`.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] naming the first line whose amounts cannot be stored exactly
    /// (nothing of the call is written), [`StoreError::Unavailable`] when the file is locked
    /// past the busy timeout or the disk is full or read-only.
    async fn insert(&self, lines: &[&IngestedLine]) -> Result<(), StoreError> {
        self.insert_with_source(lines, SOURCE_STREAM)
            .await
            .map(drop)
    }

    async fn stored_lines(&self) -> Result<Option<Vec<crate::store::StoredLine>>, StoreError> {
        let path = self.db.path().to_owned();
        self.db
            .read(move |conn| crate::store::stored_lines_sql(conn, &path, "sales").map(Some))
            .await
    }

    /// Read from the rollups: a few milliseconds whatever the size of `sales`. A range also
    /// reads the lines of its days from `sales` (invoices, customers and products have no
    /// rollup by day).
    async fn summary_in(&self, range: DayRange) -> Result<Option<SalesSummary>, StoreError> {
        let path = self.db.path().to_owned();
        self.db
            .read(move |conn| rollup::summary(conn, &path, range).map(Some))
            .await
    }

    /// Read from `sales`: a pass over the lines of `range` (every line when it is open).
    async fn top_customers(
        &self,
        range: DayRange,
        limit: usize,
    ) -> Result<Option<Vec<CustomerRevenue>>, StoreError> {
        let path = self.db.path().to_owned();
        self.db
            .read(move |conn| rollup::top_customers(conn, &path, range, limit).map(Some))
            .await
    }

    /// Checks that a reader can query the fact table.
    async fn health(&self) -> Result<(), StoreError> {
        self.db.check_readable("sales", StoreError::sqlite).await
    }

    /// Short transactions on the writer connection, one per batch the caller hands over, so the
    /// writes of the stream's forwarder (of this process or a `serve`) go in between; see
    /// `bulk`.
    async fn load_file(&self, file: &BulkFile, reload: bool) -> Result<FileLoadStart, StoreError> {
        bulk::start(&self.db, file, reload).await
    }

    async fn ledger_entry(
        &self,
        key: &str,
        into: LoadedInto,
    ) -> Result<Option<LedgerEntry>, StoreError> {
        let key = key.to_owned();
        self.in_transaction(move |tx| {
            ledger::create(tx)?;
            ledger::lookup(tx, &key, into)
        })
        .await
    }

    async fn record_load(
        &self,
        file: &BulkFile,
        into: LoadedInto,
        counts: &LoadCounts,
        reject_file: Option<&str>,
    ) -> Result<(), StoreError> {
        let (file, counts) = (file.clone(), counts.clone());
        let reject_file = reject_file.map(str::to_owned);
        self.in_transaction(move |tx| {
            ledger::record(tx, &file, into, &counts, reject_file.as_deref()).map(drop)
        })
        .await
    }
}
