//! The operational writer: keeps invoices and customers' invoice lists current for look-ups.
//! Embedded backend: SQLite. AWS: DynamoDB.

pub mod dynamodb;
pub mod sqlite;
pub mod writer;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use serde::Serialize;

use crate::model::{IngestedLine, Money};

/// An invoice as the query API serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    pub invoice_no: String,
    pub invoice_date: NaiveDateTime,
    pub customer_id: Option<u64>,
    pub country: String,
    pub is_cancellation: bool,
    /// Sum of the line totals, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Money,
    pub lines: Vec<IngestedLine>,
}

/// One invoice of a customer, without its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvoiceSummary {
    pub invoice_no: String,
    pub invoice_date: NaiveDateTime,
    pub country: String,
    pub line_count: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Money,
    pub is_cancellation: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: busy, throttled, unreachable.
    #[error("operational store temporarily unavailable: {0}")]
    Unavailable(String),
    /// Not worth retrying: the line itself cannot be stored (e.g. an item over 400 KB).
    #[error("line {line_id} cannot be stored: {reason}")]
    Rejected { line_id: String, reason: String },
    #[error("operational store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// The one retry rule of this backend's errors (the sink actor asks it through
    /// `From<StoreError> for SinkFailure`): only a line the backend refuses for good (`Rejected`) is
    /// not retried. `Unavailable` is busy or throttled; `Backend` may be a broken connection or
    /// a wrong setting that an operator fixes. The actor bounds those retries: after
    /// `sinks.retry.max_attempts` it writes the unit line by line and dead-letters a line that
    /// still fails while the backend's health check passes.
    pub fn is_retriable(&self) -> bool {
        !matches!(self, StoreError::Rejected { .. })
    }
}

#[async_trait]
pub trait OperationalStore: Send + Sync + 'static {
    /// Inserts or replaces lines by line id. Idempotent.
    async fn upsert(&self, lines: &[IngestedLine]) -> Result<(), StoreError>;

    async fn invoice(&self, invoice_no: &str) -> Result<Option<Invoice>, StoreError>;

    /// The customer's invoices with `from <= invoice_date < to`, oldest first.
    async fn customer_invoices(
        &self,
        customer_id: u64,
        from: Option<NaiveDateTime>,
        to: Option<NaiveDateTime>,
    ) -> Result<Vec<InvoiceSummary>, StoreError>;

    /// Count of stored lines and the exact sum of their totals (for reconciliation and tests).
    async fn totals(&self) -> Result<(u64, Money), StoreError>;

    async fn health(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rejected_lines_are_not_retried() {
        assert!(StoreError::Unavailable("database is locked".into()).is_retriable());
        let rejected = StoreError::Rejected {
            line_id: "0".repeat(32),
            reason: "price has 7 decimals".into(),
        };
        assert!(!rejected.is_retriable());
        assert!(StoreError::Backend("connection reset".into()).is_retriable());
    }
}
