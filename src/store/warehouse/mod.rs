//! The warehouse: the `sales` fact table for BI. Embedded backend: SQLite ([`sqlite`]). AWS:
//! Kinesis Firehose delivering to Redshift ([`firehose`]). Bulk loads of whole files, with their
//! ledger: [`bulk`].

pub mod bulk;
pub mod firehose;
pub mod sqlite;

use async_trait::async_trait;
use chrono::NaiveDate;
use serde::Serialize;

pub use bulk::{
    BulkFile, FileLoad, FileLoadStart, LedgerEntry, LedgerSkip, LoadCounts, LoadedInto,
};

use super::StoreError;
use crate::model::{IngestedLine, Money};

/// The `sales` fact table of the embedded warehouse (the Redshift table has the same columns).
/// Shared by the warehouse forwarder and the bulk importer, which write the same rows.
///
/// A line is stored once by `(invoice_no, line_id)` (why not by the line id alone: the
/// `crate::store::row` module docs); the key's index also serves look-ups by invoice. Files
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
    /// The first day the figures cover, when the caller asked for a range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<NaiveDate>,
    /// The last day (inclusive) the figures cover, when the caller asked for a range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<NaiveDate>,
}

/// Invoice days a summary covers, both ends inclusive and either open. Days are the invoice's own
/// calendar day as the store sent it (no time zone is applied).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayRange {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

impl DayRange {
    /// Every day.
    pub const ALL: DayRange = DayRange {
        from: None,
        to: None,
    };

    pub fn is_all(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }

    /// The first and last day as `YYYY-MM-DD` text, open ends as text below and above any day.
    pub fn day_bounds(&self) -> (String, String) {
        (
            self.from
                .map_or_else(|| "0000-00-00".into(), |d| d.to_string()),
            self.to
                .map_or_else(|| "9999-99-99".into(), |d| d.to_string()),
        )
    }

    /// Bounds on `invoice_date` text (`YYYY-MM-DDTHH:MM:SS`): at or after the first, before the
    /// second (the day after `to`).
    pub fn date_bounds(&self) -> (String, String) {
        (
            self.from.map_or_else(|| "0000".into(), |d| d.to_string()),
            self.to
                .and_then(|d| d.succ_opt())
                .map_or_else(|| "9999-99-99".into(), |d| d.to_string()),
        )
    }
}

/// One customer's net purchases, for the dashboard's best customers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomerRevenue {
    pub customer_id: u64,
    pub invoices: u64,
    pub lines: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub revenue: Money,
}

/// One product's net sales, for the dashboard's best sellers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProductRevenue {
    pub stock_code: String,
    /// The latest description seen for the code (the dataset varies them slightly).
    pub description: Option<String>,
    /// Net units sold (128 bits, as the rollups keep it: see `crate::store::sum`).
    pub quantity: i128,
    #[serde(with = "rust_decimal::serde::str")]
    pub revenue: Money,
}

#[async_trait]
pub trait Warehouse: Send + Sync + 'static {
    /// Appends lines to the `sales` fact table; a line id already there is not added again. The
    /// lines are borrowed one by one, as [`OperationalStore::upsert`](crate::store::operational::OperationalStore::upsert) takes them.
    async fn insert(&self, lines: &[&IngestedLine]) -> Result<(), StoreError>;

    /// Aggregates over the fact table. Backends that cannot query (Firehose) answer `None`.
    async fn summary(&self) -> Result<Option<SalesSummary>, StoreError> {
        self.summary_in(DayRange::ALL).await
    }

    /// Aggregates over the lines of the days of `range`. Backends that cannot query (Firehose)
    /// answer `None`.
    async fn summary_in(&self, _range: DayRange) -> Result<Option<SalesSummary>, StoreError> {
        Ok(None)
    }

    /// The `limit` customers with the largest net revenue in `range`, largest first. Backends
    /// that cannot query answer `None`.
    async fn top_customers(
        &self,
        _range: DayRange,
        _limit: usize,
    ) -> Result<Option<Vec<CustomerRevenue>>, StoreError> {
        Ok(None)
    }

    async fn health(&self) -> Result<(), StoreError>;

    /// Every line of the fact table, for `shopstream verify`. Backends that cannot be read
    /// whole (Firehose) answer `None`, and verify says so instead of comparing them.
    async fn stored_lines(&self) -> Result<Option<Vec<crate::store::StoredLine>>, StoreError> {
        Ok(None)
    }

    /// Starts loading one bulk file, after the ledger's check ([`LedgerSkip::check`]) of what it
    /// remembers of `file`. On a reload, the lines only the old content brought are taken out
    /// before the new ones go in; a line the stream or another file brought too stays.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the load cannot start now (locked, disk full);
    /// [`StoreError::Backend`] from a backend that takes no bulk loads (Firehose), naming what to
    /// do instead.
    async fn load_file(&self, file: &BulkFile, reload: bool) -> Result<FileLoadStart, StoreError>;

    /// What the ledger remembers of `key` loaded into `into`.
    ///
    /// # Errors
    /// As [`load_file`](Self::load_file).
    async fn ledger_entry(
        &self,
        key: &str,
        into: LoadedInto,
    ) -> Result<Option<LedgerEntry>, StoreError>;

    /// Records in the ledger a load into another store (the operational store keeps no ledger of
    /// its own); a load into the warehouse records itself when it commits.
    ///
    /// # Errors
    /// As [`load_file`](Self::load_file).
    async fn record_load(
        &self,
        file: &BulkFile,
        into: LoadedInto,
        counts: &LoadCounts,
        reject_file: Option<&str>,
    ) -> Result<(), StoreError>;
}
