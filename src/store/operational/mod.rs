//! The operational store: invoices and customers' invoice lists, kept current for look-ups.
//! Embedded backend: SQLite ([`sqlite`]). AWS: DynamoDB ([`dynamodb`]).

pub mod dynamodb;
pub mod sqlite;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use serde::Serialize;

use super::StoreError;
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

/// The exact sum of an invoice's line totals, added in 128 bits (`crate::store::sum`).
///
/// # Errors
/// [`StoreError::Aggregate`] when the sum is beyond an exact decimal (accepted lines never are).
pub(crate) fn invoice_total<L: std::borrow::Borrow<IngestedLine>>(
    lines: &[L],
) -> Result<Money, StoreError> {
    let mut sum = super::sum::MoneySum::default();
    for l in lines {
        sum.add_money(l.borrow().line.line_total(), "an invoice's total")?;
    }
    sum.money("an invoice's total")
}

#[async_trait]
pub trait OperationalStore: Send + Sync + 'static {
    /// Inserts or replaces lines by line id. Idempotent. The lines are borrowed one by one: a
    /// sink's unit holds them as the records they came in, shared with the other sinks.
    async fn upsert(&self, lines: &[&IngestedLine]) -> Result<(), StoreError>;

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

    /// Every stored line, for `shopstream verify`. Backends that cannot be read whole answer
    /// `None`, and verify says so instead of comparing them.
    async fn stored_lines(&self) -> Result<Option<Vec<crate::store::StoredLine>>, StoreError> {
        Ok(None)
    }

    async fn health(&self) -> Result<(), StoreError>;
}
