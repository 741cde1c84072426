//! The embedded operational store: invoice lines in a SQLite file, indexed for the two look-ups
//! the query API serves (an invoice, a customer's invoices by date).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use rusqlite::{Connection, Row};

use super::{invoice_total, Invoice, InvoiceSummary, OperationalStore};
use crate::model::{IngestedLine, InvoiceLine, LineId, Money};
use crate::sqlite::{Database, Migration, SqliteOptions};
use crate::store::row::{
    date_text, encode_lines, parse_date_text, parse_instant_text, LineParams, LineRow,
};
use crate::store::sum::MoneySum;
use crate::store::StoreError;

/// One row per line, keyed by `(invoice_no, line_id)` (why that key and not the line id alone: the
/// `crate::store::row` module docs). A line is written once: the first version of a line id is
/// kept (`ON CONFLICT DO NOTHING`, as the warehouse's insert-or-ignore and DynamoDB's conditional
/// put; docs/line-identity.md, rule 7). The implicit rowid is the insertion order, so an
/// invoice's lines read back in the order they first arrived. The key's index also serves the
/// invoice look-up.
///
/// Files written before this key have `line_id TEXT PRIMARY KEY` and an `(invoice_no,
/// invoice_date)` index; opening one adds the key index, and both layouts take the same SQL.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS invoice_lines (
    line_id            TEXT NOT NULL,
    invoice_no         TEXT NOT NULL,
    stock_code         TEXT NOT NULL,
    description        TEXT,
    quantity           INTEGER NOT NULL,
    invoice_date       TEXT NOT NULL,
    unit_price         TEXT NOT NULL,
    unit_price_micros  INTEGER NOT NULL,
    line_total         TEXT NOT NULL,
    line_total_micros  INTEGER NOT NULL,
    customer_id        INTEGER,
    country            TEXT NOT NULL,
    is_cancellation    INTEGER NOT NULL,
    store_id           TEXT NOT NULL,
    ingested_at        TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS invoice_lines_key ON invoice_lines (invoice_no, line_id);
-- A customer's invoices, by date: a row per (customer, date, invoice) of the lines, not one per
-- line, so the write of a line adds no index entry of its own (an invoice has some twenty
-- lines). A quarter of the lines have no customer and are not here.
CREATE TABLE IF NOT EXISTS customer_invoices (
    customer_id   INTEGER NOT NULL,
    invoice_date  TEXT    NOT NULL,
    invoice_no    TEXT    NOT NULL,
    PRIMARY KEY (customer_id, invoice_date, invoice_no)
) WITHOUT ROWID;
";

/// Files written before 2026-12-07 found a customer's lines by an index of every line: its
/// entries move to `customer_invoices`, and it goes, in one transaction.
const MOVE_CUSTOMER_INDEX: Migration = Migration {
    needed: "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'invoice_lines_by_customer'",
    run: "
BEGIN IMMEDIATE;
INSERT OR IGNORE INTO customer_invoices (customer_id, invoice_date, invoice_no)
    SELECT customer_id, invoice_date, invoice_no FROM invoice_lines WHERE customer_id IS NOT NULL;
DROP INDEX invoice_lines_by_customer;
COMMIT;
",
    done: "Moved the customers' index of every line to a row per invoice (customer_invoices).",
};

const ADD_CUSTOMER_INVOICE: &str = "
INSERT OR IGNORE INTO customer_invoices (customer_id, invoice_date, invoice_no) VALUES (?1, ?2, ?3)";

const INSERT_FIRST: &str = "
INSERT INTO invoice_lines (line_id, invoice_no, stock_code, description, quantity, invoice_date,
    unit_price, unit_price_micros, line_total, line_total_micros, customer_id, country,
    is_cancellation, store_id, ingested_at)
VALUES (:line_id, :invoice_no, :stock_code, :description, :quantity, :invoice_date,
    :unit_price, :unit_price_micros, :line_total, :line_total_micros, :customer_id, :country,
    :is_cancellation, :store_id, :ingested_at)
ON CONFLICT (invoice_no, line_id) DO NOTHING";

const INVOICE_LINES: &str = "
SELECT line_id, invoice_no, stock_code, description, quantity, invoice_date, unit_price,
    customer_id, country, store_id, ingested_at
FROM invoice_lines WHERE invoice_no = ?1 ORDER BY invoice_date, rowid";

/// The lines of a customer in a date range, which [`customer_invoices_blocking`] folds into
/// invoices: their totals are added in 128 bits in Rust, because SQLite's `SUM()` of `i64`
/// millionths overflows after ten extreme lines (`crate::store::sum`). Bounds are text compared
/// against `date_text`; the defaults `''` and `'~'` sort before and after every date.
const CUSTOMER_LINES: &str = "
SELECT invoice_no, invoice_date, country, line_total_micros, is_cancellation
FROM invoice_lines
WHERE invoice_no IN (
        SELECT invoice_no FROM customer_invoices
        WHERE customer_id = ?1 AND invoice_date >= ?2 AND invoice_date < ?3)
    AND customer_id = ?1 AND invoice_date >= ?2 AND invoice_date < ?3";

/// Invoice lines in a SQLite file; see the crate's `docs/architecture.md` for the file layout.
///
/// Cheap to share: wrap it in an `Arc` and call it from any number of tasks. Writes queue for the
/// one writer connection; reads use a pool of readers and run while a write does.
pub struct SqliteOperationalStore {
    db: Database,
}

impl SqliteOperationalStore {
    /// Opens the store at `path` with the default options, creating the file, its folder and its
    /// tables when missing.
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
        let db = Database::open(path, options, SCHEMA, &[MOVE_CUSTOMER_INDEX])?;
        Ok(Self { db })
    }

    /// The same store behind the trait, as the actors and handlers share it.
    pub fn shared(self) -> Arc<dyn OperationalStore> {
        Arc::new(self)
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }
}

/// Writes `rows` in one transaction: all or none.
fn upsert_blocking(conn: &mut Connection, path: &Path, rows: &[LineRow]) -> Result<(), StoreError> {
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);
    let tx = conn.transaction().map_err(fail)?;
    {
        let mut stmt = tx.prepare_cached(INSERT_FIRST).map_err(fail)?;
        let params = LineParams::of(&stmt).map_err(fail)?;
        for row in rows {
            row.execute(&mut stmt, &params)
                .map_err(|e| StoreError::sqlite_line(path, row.line_id(), &e))?;
        }
    }
    {
        // Each (customer, date, invoice) once: the lines of an invoice come together.
        let mut add = tx.prepare_cached(ADD_CUSTOMER_INVOICE).map_err(fail)?;
        let mut last: Option<(i64, &str, &str)> = None;
        for row in rows {
            let Some(customer) = row.customer_id else {
                continue;
            };
            let key = (customer, row.invoice_date(), row.invoice_no());
            if last != Some(key) {
                add.execute(rusqlite::params![key.0, key.1, key.2])
                    .map_err(fail)?;
                last = Some(key);
            }
        }
    }
    tx.commit().map_err(fail)
}

/// Reads a line written by [`upsert_blocking`]; the columns are those of [`INVOICE_LINES`].
fn line_from_row(row: &Row<'_>) -> rusqlite::Result<IngestedLine> {
    let corrupt = |column: usize, what: &str, value: String| {
        rusqlite::Error::FromSqlConversionFailure(
            column,
            rusqlite::types::Type::Text,
            format!("invoice_lines holds {what} {value:?} that shopstream did not write").into(),
        )
    };
    let line_id: String = row.get(0)?;
    let date: String = row.get(5)?;
    let price: String = row.get(6)?;
    let ingested: String = row.get(10)?;
    let customer: Option<i64> = row.get(7)?;
    Ok(IngestedLine {
        line: InvoiceLine {
            line_id: LineId::parse(&line_id)
                .ok_or_else(|| corrupt(0, "line id", line_id.clone()))?,
            invoice_no: row.get::<_, String>(1)?.into(),
            stock_code: row.get::<_, String>(2)?.into(),
            description: row.get::<_, Option<String>>(3)?.map(Into::into),
            quantity: row.get(4)?,
            invoice_date: parse_date_text(&date).ok_or_else(|| corrupt(5, "date", date.clone()))?,
            unit_price: Money::from_str(&price).map_err(|_| corrupt(6, "price", price.clone()))?,
            customer_id: customer.map(|c| c as u64),
            country: row.get::<_, String>(8)?.into(),
        },
        store_id: row.get(9)?,
        ingested_at: parse_instant_text(&ingested)
            .ok_or_else(|| corrupt(10, "instant", ingested.clone()))?,
    })
}

fn invoice_blocking(conn: &Connection, invoice_no: &str) -> Result<Option<Invoice>, StoreError> {
    let path = Path::new(conn.path().unwrap_or("operational"));
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);
    let mut stmt = conn.prepare_cached(INVOICE_LINES).map_err(fail)?;
    let lines = stmt
        .query_map([invoice_no], line_from_row)
        .map_err(fail)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(fail)?;
    let Some(first) = lines.first() else {
        return Ok(None);
    };
    let first = &first.line;
    Ok(Some(Invoice {
        invoice_no: first.invoice_no.to_string(),
        invoice_date: first.invoice_date,
        customer_id: first.customer_id,
        country: first.country.to_string(),
        is_cancellation: first.is_cancellation(),
        total: invoice_total(&lines)?,
        lines,
    }))
}

/// One invoice of a customer while its lines are folded: the earliest date (as stored text), the
/// smallest country name, the line count, the total and whether any line is a cancellation, as
/// the `GROUP BY` this replaces computed them.
struct Fold {
    first_date: String,
    country: String,
    lines: u64,
    total: MoneySum,
    is_cancellation: bool,
}

fn customer_invoices_blocking(
    conn: &Connection,
    customer_id: i64,
    from: &str,
    to: &str,
) -> Result<Vec<InvoiceSummary>, StoreError> {
    let path = Path::new(conn.path().unwrap_or("operational"));
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);
    let mut stmt = conn.prepare_cached(CUSTOMER_LINES).map_err(fail)?;
    let mut rows = stmt
        .query(rusqlite::params![customer_id, from, to])
        .map_err(fail)?;
    let mut invoices: HashMap<String, Fold> = HashMap::new();
    while let Some(row) = rows.next().map_err(fail)? {
        let invoice_no: String = row.get(0).map_err(fail)?;
        let date: String = row.get(1).map_err(fail)?;
        let country: String = row.get(2).map_err(fail)?;
        let micros: i64 = row.get(3).map_err(fail)?;
        let is_cancellation: bool = row.get(4).map_err(fail)?;
        let fold = invoices.entry(invoice_no).or_insert_with(|| Fold {
            first_date: date.clone(),
            country: country.clone(),
            lines: 0,
            total: MoneySum::default(),
            is_cancellation: false,
        });
        fold.first_date = fold.first_date.clone().min(date);
        fold.country = fold.country.clone().min(country);
        fold.lines += 1;
        fold.total.add_micros(micros, "an invoice's total")?;
        fold.is_cancellation |= is_cancellation;
    }
    let mut list = invoices
        .into_iter()
        .map(|(invoice_no, fold)| {
            let invoice_date = parse_date_text(&fold.first_date).ok_or_else(|| {
                StoreError::Backend(format!(
                    "{}: invoice_lines holds date {:?} that shopstream did not write",
                    path.display(),
                    fold.first_date
                ))
            })?;
            Ok(InvoiceSummary {
                invoice_no,
                invoice_date,
                country: fold.country,
                line_count: fold.lines,
                total: fold.total.money("an invoice's total")?,
                is_cancellation: fold.is_cancellation,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    list.sort_by(|a, b| (a.invoice_date, &a.invoice_no).cmp(&(b.invoice_date, &b.invoice_no)));
    Ok(list)
}

#[async_trait]
impl OperationalStore for SqliteOperationalStore {
    /// One transaction per call: either every line is stored or none is.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] naming the first line whose amounts cannot be stored exactly (or
    /// that breaks a constraint), [`StoreError::Unavailable`] when the file is locked by another
    /// connection past the busy timeout or the disk is full or read-only.
    async fn upsert(&self, lines: &[&IngestedLine]) -> Result<(), StoreError> {
        if lines.is_empty() {
            return Ok(());
        }
        // Encoded here: a line that cannot be stored is refused before the write, and the
        // blocking task takes the encoded rows rather than a copy of the lines.
        let rows = encode_lines(lines)?;
        let path = self.db.path().to_owned();
        self.db
            .write(move |conn| upsert_blocking(conn, &path, &rows))
            .await
    }

    async fn invoice(&self, invoice_no: &str) -> Result<Option<Invoice>, StoreError> {
        let invoice_no = invoice_no.to_owned();
        self.db
            .read(move |conn| invoice_blocking(conn, &invoice_no))
            .await
    }

    async fn customer_invoices(
        &self,
        customer_id: u64,
        from: Option<NaiveDateTime>,
        to: Option<NaiveDateTime>,
    ) -> Result<Vec<InvoiceSummary>, StoreError> {
        // No line can carry a customer id beyond i64 (upsert rejects it), so it has no invoices.
        let Ok(customer_id) = i64::try_from(customer_id) else {
            return Ok(Vec::new());
        };
        let from = from.map(date_text).unwrap_or_default();
        let to = to.map(date_text).unwrap_or_else(|| "~".to_owned());
        self.db
            .read(move |conn| customer_invoices_blocking(conn, customer_id, &from, &to))
            .await
    }

    /// Exact: the integer millionths of every line, added in 128 bits in Rust (SQLite's `SUM()`
    /// of `i64`s overflows after ten extreme lines). Reads the whole table: for reconciliation
    /// and tests.
    async fn totals(&self) -> Result<(u64, Money), StoreError> {
        let path = self.db.path().to_owned();
        self.db
            .read(move |conn| {
                let fail = |e: rusqlite::Error| StoreError::sqlite(&path, &e);
                let mut stmt = conn
                    .prepare_cached("SELECT line_total_micros FROM invoice_lines")
                    .map_err(fail)?;
                let mut rows = stmt.query([]).map_err(fail)?;
                let (mut count, mut sum) = (0u64, MoneySum::default());
                while let Some(r) = rows.next().map_err(fail)? {
                    count += 1;
                    sum.add_micros(r.get(0).map_err(fail)?, "the total of all lines")?;
                }
                Ok((count, sum.money("the total of all lines")?))
            })
            .await
    }

    async fn stored_lines(&self) -> Result<Option<Vec<crate::store::StoredLine>>, StoreError> {
        let path = self.db.path().to_owned();
        self.db
            .read(move |conn| {
                crate::store::stored_lines_sql(conn, &path, "invoice_lines").map(Some)
            })
            .await
    }

    /// Checks that a reader can query the table.
    async fn health(&self) -> Result<(), StoreError> {
        self.db
            .check_readable("invoice_lines", StoreError::sqlite)
            .await
    }
}
