//! The operational writer: keeps invoices and customers' invoice lists current for look-ups.
//! Embedded backend: SQLite. AWS: DynamoDB.

pub mod sqlite;

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
    /// True when the same call may succeed later (the backend is busy, throttled or out of
    /// space); false when the data or the setup must change first. Retry loops ask this alone.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
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
    fn only_unavailable_is_retriable() {
        assert!(StoreError::Unavailable("database is locked".into()).is_retriable());
        let rejected = StoreError::Rejected {
            line_id: "0".repeat(32),
            reason: "price has 7 decimals".into(),
        };
        assert!(!rejected.is_retriable());
        assert!(!StoreError::Backend("malformed file".into()).is_retriable());
    }
}
