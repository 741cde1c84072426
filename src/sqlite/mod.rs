//! SQLite plumbing for every embedded backend, whatever it stores.
//!
//! Every embedded store opens its file the same way ([`pool::open_connection`]: WAL,
//! `synchronous=FULL`, a busy timeout), keeps one writer connection and a few readers
//! ([`Database`]), and runs all SQLite calls on tokio's blocking threads, because a SQLite call may
//! wait for a lock or an fsync and must never stall the async runtime that serves HTTP and drives
//! the actors.
//!
//! - [`pool`]: opening a file, the writer and the readers, and short write transactions from
//!   blocking code ([`BlockingWriter`], for a bulk load's batches).
//! - [`error`]: which SQLite errors pass on their own and which one row causes.
//!
//! What is stored and how (invoice lines as rows, the stores' error type) belongs to the store
//! layer: [`crate::store`].

pub(crate) mod error;
pub(crate) mod pool;

pub(crate) use error::{is_line_specific, is_overflow, is_transient};
pub use pool::SqliteOptions;
pub(crate) use pool::{BlockingWriter, Database, OpenError, TaskFailed};
