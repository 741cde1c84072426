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
