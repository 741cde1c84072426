//! The embedded warehouse: the `sales` fact table ([`SALES_DDL`]) in a SQLite file, plus small
//! rollup tables that keep [`Warehouse::summary`] fast however many lines the table holds, and
//! the import ledger of bulk loads ([`ledger`], [`bulk`]).
//!
//! Every row enters `sales` through `insert_rows`, which updates the rollups in the same
//! transaction, so they never disagree with the fact table. A bulk load writes through it too
//! (with `source = 'import:<ledger id>'`), inside one transaction per file that also records the
//! file in the ledger: see [`Warehouse::load_file`].

mod bulk;
mod ledger;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, Transaction};

use super::{
    BulkFile, FileLoadStart, LedgerEntry, LoadCounts, LoadedInto, ProductRevenue, SalesSummary,
    Warehouse, SALES_DDL,
};
use crate::model::{micros_to_money, IngestedLine};
use crate::sqlite::{Database, SqliteOptions};
use crate::store::row::{encode_lines, LineParams, LineRow};
use crate::store::StoreError;

/// `source` of the lines the warehouse forwarder writes from the stream.
pub const SOURCE_STREAM: &str = "stream";
/// `source` of the lines the bulk importer writes.
pub const SOURCE_IMPORT: &str = "import";

/// Rollups of `sales`, maintained by `insert_rows`. A dashboard reads a few thousand rows of these
/// instead of scanning millions of lines. The `CHECK`s turn an integer overflow of a running sum
/// (which SQLite would silently turn into a float) into an error.
const ROLLUP_DDL: &str = "
CREATE TABLE IF NOT EXISTS sales_daily (
    day                 TEXT NOT NULL,
    country             TEXT NOT NULL,
    lines               INTEGER NOT NULL,
    cancellation_lines  INTEGER NOT NULL,
    revenue_micros      INTEGER NOT NULL CHECK (typeof(revenue_micros) = 'integer'),
    PRIMARY KEY (day, country)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sales_products (
    stock_code          TEXT PRIMARY KEY,
    description         TEXT,
    quantity            INTEGER NOT NULL CHECK (typeof(quantity) = 'integer'),
    lines               INTEGER NOT NULL,
    revenue_micros      INTEGER NOT NULL CHECK (typeof(revenue_micros) = 'integer')
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sales_invoices (
    invoice_no          TEXT PRIMARY KEY,
    customer_id         INTEGER
) WITHOUT ROWID;
";

/// Fills empty rollups from a `sales` table written without them (by an older version, or by
/// hand with [`SALES_DDL`] alone). Runs at open, in one transaction; a no-op once they are filled
/// (`sales_daily` is filled last, so it says whether the backfill happened).
const ROLLUP_BACKFILL: &str = "
BEGIN IMMEDIATE;
INSERT INTO sales_products
    SELECT stock_code, MAX(description), SUM(quantity), COUNT(*), SUM(line_total_micros)
    FROM sales WHERE NOT EXISTS (SELECT 1 FROM sales_daily) GROUP BY stock_code;
INSERT INTO sales_invoices
    SELECT invoice_no, MIN(customer_id)
    FROM sales WHERE NOT EXISTS (SELECT 1 FROM sales_daily) GROUP BY invoice_no;
INSERT INTO sales_daily
    SELECT substr(invoice_date, 1, 10), country, COUNT(*), SUM(is_cancellation),
        SUM(line_total_micros)
    FROM sales WHERE NOT EXISTS (SELECT 1 FROM sales_daily) GROUP BY 1, 2;
COMMIT;
";

const INSERT_SALE: &str = "
INSERT OR IGNORE INTO sales (line_id, invoice_no, stock_code, description, quantity, invoice_date,
    unit_price, line_total, line_total_micros, customer_id, country, is_cancellation, store_id,
    ingested_at, source)
VALUES (:line_id, :invoice_no, :stock_code, :description, :quantity, :invoice_date,
    :unit_price, :line_total, :line_total_micros, :customer_id, :country, :is_cancellation,
    :store_id, :ingested_at, :source)";

const ADD_DAILY: &str = "
INSERT INTO sales_daily (day, country, lines, cancellation_lines, revenue_micros)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (day, country) DO UPDATE SET
    lines = lines + excluded.lines,
    cancellation_lines = cancellation_lines + excluded.cancellation_lines,
    revenue_micros = revenue_micros + excluded.revenue_micros";

const ADD_PRODUCT: &str = "
INSERT INTO sales_products (stock_code, description, quantity, lines, revenue_micros)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (stock_code) DO UPDATE SET
    description = COALESCE(excluded.description, description),
    quantity = quantity + excluded.quantity,
    lines = lines + excluded.lines,
    revenue_micros = revenue_micros + excluded.revenue_micros";

const ADD_INVOICE: &str =
    "INSERT OR IGNORE INTO sales_invoices (invoice_no, customer_id) VALUES (?1, ?2)";

/// Products in [`SalesSummary::top_products`].
const TOP_PRODUCTS: i64 = 10;

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
        let schema = format!("{SALES_DDL}{ROLLUP_DDL}{ROLLUP_BACKFILL}");
        let db = Database::open(path, options, &schema)?;
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
    pub async fn insert_with_source(
        &self,
        lines: &[IngestedLine],
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

/// Running sums of one rollup key within one call.
#[derive(Default)]
struct Sums {
    lines: i64,
    cancellation_lines: i64,
    quantity: i64,
    revenue_micros: i64,
}

impl Sums {
    fn add(&mut self, row: &LineRow) -> Result<(), String> {
        self.lines += 1;
        self.cancellation_lines += i64::from(row.is_cancellation);
        self.quantity = self
            .quantity
            .checked_add(row.quantity)
            .ok_or("quantity sum overflows")?;
        self.revenue_micros = self
            .revenue_micros
            .checked_add(row.line_total_micros)
            .ok_or("revenue sum overflows")?;
        Ok(())
    }
}

/// Adds encoded lines to `sales` (a line id already there is skipped) and to the rollups, within
/// the caller's transaction, and returns how many lines were new. Blocking: call it on a blocking
/// thread.
///
/// # Errors
/// [`StoreError::Rejected`] naming the first line whose amounts cannot be summed exactly,
/// [`StoreError::Unavailable`] when the file is locked or the disk full; the caller's
/// transaction should then be rolled back.
fn insert_rows(tx: &Connection, rows: &[LineRow], source: &str) -> Result<u64, StoreError> {
    let path = Path::new(tx.path().unwrap_or("warehouse"));
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);

    let mut daily: HashMap<(&str, &str), Sums> = HashMap::new();
    let mut products: HashMap<&str, (Option<&str>, Sums)> = HashMap::new();
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
        for row in rows {
            let changed = row
                .execute(&mut stmt, &params)
                .map_err(|e| StoreError::sqlite_line(path, &row.line_id, &e))?;
            if changed == 0 {
                continue;
            }
            added += 1;
            let rejected = |reason: String| StoreError::Rejected {
                line_id: row.line_id.clone(),
                reason,
            };
            daily
                .entry((&row.invoice_date[..10], &row.country))
                .or_default()
                .add(row)
                .map_err(rejected)?;
            let product = products.entry(&row.stock_code).or_default();
            if row.description.is_some() {
                product.0 = row.description.as_deref();
            }
            product.1.add(row).map_err(rejected)?;
            invoices.entry(&row.invoice_no).or_insert(row.customer_id);
        }
    }
    let mut stmt = tx.prepare_cached(ADD_DAILY).map_err(fail)?;
    for ((day, country), s) in &daily {
        stmt.execute(rusqlite::params![
            day,
            country,
            s.lines,
            s.cancellation_lines,
            s.revenue_micros
        ])
        .map_err(fail)?;
    }
    let mut stmt = tx.prepare_cached(ADD_PRODUCT).map_err(fail)?;
    for (code, (description, s)) in &products {
        stmt.execute(rusqlite::params![
            code,
            description,
            s.quantity,
            s.lines,
            s.revenue_micros
        ])
        .map_err(fail)?;
    }
    let mut stmt = tx.prepare_cached(ADD_INVOICE).map_err(fail)?;
    for (invoice_no, customer_id) in &invoices {
        stmt.execute(rusqlite::params![invoice_no, customer_id])
            .map_err(fail)?;
    }
    Ok(added)
}

/// Reads every figure from one snapshot, so they agree with each other while sinks write.
fn summary_blocking(conn: &Connection) -> rusqlite::Result<SalesSummary> {
    let tx = conn.unchecked_transaction()?;
    let (lines, cancellation_lines, revenue) = tx.query_row(
        "SELECT COALESCE(SUM(lines), 0), COALESCE(SUM(cancellation_lines), 0),
            COALESCE(SUM(revenue_micros), 0)
         FROM sales_daily",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        },
    )?;
    let (invoices, customers) = tx.query_row(
        "SELECT COUNT(*), COUNT(DISTINCT customer_id) FROM sales_invoices",
        [],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
    )?;
    let revenue_by = |sql: &str| -> rusqlite::Result<Vec<(String, crate::model::Money)>> {
        let mut stmt = tx.prepare_cached(sql)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, micros_to_money(r.get(1)?))))?;
        rows.collect()
    };
    let by_country = revenue_by(
        "SELECT country, SUM(revenue_micros) AS revenue FROM sales_daily
         GROUP BY country ORDER BY revenue DESC, country",
    )?;
    let by_day =
        revenue_by("SELECT day, SUM(revenue_micros) FROM sales_daily GROUP BY day ORDER BY day")?;
    let by_month = revenue_by(
        "SELECT substr(day, 1, 7) AS month, SUM(revenue_micros) FROM sales_daily
         GROUP BY month ORDER BY month",
    )?;
    let top_products = {
        let mut stmt = tx.prepare_cached(
            "SELECT stock_code, description, quantity, revenue_micros FROM sales_products
             ORDER BY revenue_micros DESC, stock_code LIMIT ?1",
        )?;
        let rows = stmt.query_map([TOP_PRODUCTS], |r| {
            Ok(ProductRevenue {
                stock_code: r.get(0)?,
                description: r.get(1)?,
                quantity: r.get(2)?,
                revenue: micros_to_money(r.get(3)?),
            })
        })?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    Ok(SalesSummary {
        lines: lines as u64,
        invoices: invoices as u64,
        customers: customers as u64,
        revenue: micros_to_money(revenue),
        cancellation_lines: cancellation_lines as u64,
        by_country,
        by_day,
        by_month,
        top_products,
    })
}

#[async_trait]
impl Warehouse for SqliteWarehouse {
    /// One transaction per call, with `source = 'stream'`.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] naming the first line whose amounts cannot be stored exactly
    /// (nothing of the call is written), [`StoreError::Unavailable`] when the file is locked
    /// past the busy timeout or the disk is full or read-only.
    async fn insert(&self, lines: &[IngestedLine]) -> Result<(), StoreError> {
        self.insert_with_source(lines, SOURCE_STREAM)
            .await
            .map(drop)
    }

    /// Read from the rollups: a few milliseconds whatever the size of `sales`.
    async fn summary(&self) -> Result<Option<SalesSummary>, StoreError> {
        let path = self.db.path().to_owned();
        self.db
            .read(move |conn| {
                summary_blocking(conn)
                    .map(Some)
                    .map_err(|e| StoreError::sqlite(&path, &e))
            })
            .await
    }

    /// Checks that a reader can query the fact table.
    async fn health(&self) -> Result<(), StoreError> {
        self.db.check_readable("sales", StoreError::sqlite).await
    }

    /// One transaction per file on the writer connection, held while the caller hands over the
    /// lines; the writes of the stream's forwarder wait meanwhile.
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
