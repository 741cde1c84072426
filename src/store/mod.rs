//! The stores the sinks write and the query API reads, beside [`crate::stream`] and
//! [`crate::object_store`]: one trait per kind of store, one file or folder per backend.
//!
//! - [`operational`]: invoices and customers' invoice lists for look-ups
//!   ([`OperationalStore`]): SQLite ([`operational::sqlite`]) or DynamoDB
//!   ([`operational::dynamodb`]).
//! - [`warehouse`]: the `sales` fact table for BI ([`Warehouse`]), and bulk loads of whole files
//!   recorded in an import ledger ([`warehouse::FileLoad`]): SQLite ([`warehouse::sqlite`]) or
//!   Kinesis Firehose into Redshift ([`warehouse::firehose`]).
//! - [`StoreError`]: the one error type of both, with the one retry rule
//!   ([`StoreError::is_retriable`]).
//! - `sum`: the 128-bit sums the stores keep and compute, which accepted lines cannot overflow.
//! - `row`: how the SQLite backends encode a line into SQL values, and why they key it by
//!   `(invoice_no, line_id)`.
//!
//! The actors that feed the stores from the stream are thin adapters in [`crate::actors`]; the
//! SQLite plumbing (pool, error classification) is [`crate::sqlite`].

mod error;
pub mod operational;
mod row;
mod sum;
pub mod warehouse;

pub use error::StoreError;
pub use operational::{Invoice, InvoiceSummary, OperationalStore};
pub use warehouse::{ProductRevenue, SalesSummary, Warehouse};

/// One stored line as `shopstream verify` reconciles it: its key, its day and its exact total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    pub invoice_no: String,
    pub line_id: String,
    /// The date of the line's invoice date (the store's local time, as sent).
    pub day: chrono::NaiveDate,
    /// quantity * unit price, exact.
    pub total: crate::model::Money,
}

/// Reads `(invoice_no, line_id, invoice_date, line_total)` rows of a SQLite table of lines (both
/// embedded stores keep these columns, dates as sortable text).
pub(crate) fn stored_lines_sql(
    conn: &rusqlite::Connection,
    path: &std::path::Path,
    table: &str,
) -> Result<Vec<StoredLine>, StoreError> {
    let fail = |e: rusqlite::Error| StoreError::sqlite(path, &e);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT invoice_no, line_id, invoice_date, line_total FROM {table}"
        ))
        .map_err(fail)?;
    let mut rows = stmt.query([]).map_err(fail)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(fail)? {
        let date: String = r.get(2).map_err(fail)?;
        let total: String = r.get(3).map_err(fail)?;
        let day = date
            .get(..10)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| StoreError::Backend(format!("{table}: bad invoice_date {date:?}")))?;
        let total = total
            .parse()
            .map_err(|e| StoreError::Backend(format!("{table}: bad line_total {total:?}: {e}")))?;
        out.push(StoredLine {
            invoice_no: r.get(0).map_err(fail)?,
            line_id: r.get(1).map_err(fail)?,
            day,
            total,
        });
    }
    Ok(out)
}
