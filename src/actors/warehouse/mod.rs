//! The warehouse forwarder: the `sales` fact table for BI. Embedded backend: SQLite. AWS: Kinesis
//! Firehose delivering to Redshift.

pub mod firehose;
pub mod forwarder;
pub mod sqlite;

use async_trait::async_trait;
use serde::Serialize;

use crate::model::{IngestedLine, Money};

/// The `sales` fact table of the embedded warehouse (the Redshift table has the same columns).
/// Shared by the warehouse forwarder and the bulk importer, which write the same rows.
///
/// A line is stored once by `(invoice_no, line_id)` (why not by the line id alone: the
/// `crate::sqlite` module docs); the key's index also serves look-ups by invoice. Files
/// written before it have `line_id TEXT PRIMARY KEY` and an `invoice_no` index; opening one adds
/// the key index, and `INSERT OR IGNORE` keeps a line once under either layout.
pub const SALES_DDL: &str = "
CREATE TABLE IF NOT EXISTS sales (
    line_id            TEXT NOT NULL,
    invoice_no         TEXT NOT NULL,
    stock_code         TEXT NOT NULL,
    description        TEXT,
    quantity           INTEGER NOT NULL,
    invoice_date       TEXT NOT NULL,
    unit_price         TEXT NOT NULL,
    line_total         TEXT NOT NULL,
    line_total_micros  INTEGER NOT NULL,
    customer_id        INTEGER,
    country            TEXT NOT NULL,
    is_cancellation    INTEGER NOT NULL,
    store_id           TEXT NOT NULL,
    ingested_at        TEXT NOT NULL,
    source             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sales_invoice_date ON sales (invoice_date);
CREATE UNIQUE INDEX IF NOT EXISTS sales_key ON sales (invoice_no, line_id);
";

#[derive(Debug, thiserror::Error)]
pub enum WarehouseError {
    #[error("warehouse temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("line {line_id} cannot be stored: {reason}")]
    Rejected { line_id: String, reason: String },
    #[error("warehouse error: {0}")]
    Backend(String),
}

/// Aggregates for the dashboard and for reconciliation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SalesSummary {
    pub lines: u64,
    pub invoices: u64,
    pub customers: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub revenue: Money,
    pub cancellation_lines: u64,
    /// Revenue by country, largest first.
    pub by_country: Vec<(String, Money)>,
    /// Revenue by day (`YYYY-MM-DD`), oldest first.
    pub by_day: Vec<(String, Money)>,
    /// Revenue by month (`YYYY-MM`), oldest first.
    pub by_month: Vec<(String, Money)>,
    /// The ten products with the largest net revenue (cancellations subtract), largest first.
    pub top_products: Vec<ProductRevenue>,
}

/// One product's net sales, for the dashboard's best sellers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductRevenue {
    pub stock_code: String,
    /// The latest description seen for the code (the dataset varies them slightly).
    pub description: Option<String>,
    /// Net units sold.
    pub quantity: i64,
    #[serde(with = "rust_decimal::serde::str")]
    pub revenue: Money,
}

impl WarehouseError {
    /// The one retry rule of this backend's errors (the sink actor asks it through
    /// `From<WarehouseError> for SinkFailure`): only a line the backend refuses for good (`Rejected`) is
    /// not retried. `Unavailable` is busy or throttled; `Backend` may be a broken connection or
    /// a wrong setting that an operator fixes. The actor bounds those retries: after
    /// `sinks.retry.max_attempts` it writes the unit line by line and dead-letters a line that
    /// still fails while the backend's health check passes.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, WarehouseError::Rejected { .. })
    }
}

#[async_trait]
pub trait Warehouse: Send + Sync + 'static {
    /// Appends lines to the `sales` fact table; a line id already there is not added again.
    async fn insert(&self, lines: &[IngestedLine]) -> Result<(), WarehouseError>;

    /// Aggregates over the fact table. Backends that cannot query (Firehose) answer `None`.
    async fn summary(&self) -> Result<Option<SalesSummary>, WarehouseError>;

    async fn health(&self) -> Result<(), WarehouseError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rejected_lines_are_not_retried() {
        assert!(WarehouseError::Unavailable("database is locked".into()).is_retriable());
        let rejected = WarehouseError::Rejected {
            line_id: "0".repeat(32),
            reason: "price has 7 decimals".into(),
        };
        assert!(!rejected.is_retriable());
        assert!(WarehouseError::Backend("connection reset".into()).is_retriable());
    }
}
