//! The batch path: bulk CSV dumps found, validated and loaded into the warehouse exactly once.
//!
//! ```text
//!  Source (folder | glob | file | s3://) ──list: key, size, change token──▶ ledger: new? same? changed?
//!        │ open (gzip decoded)                                               │
//!        ▼                                                                   ▼
//!  model::csv::CsvLines ──good lines──▶ one transaction per file: sales rows + ledger row
//!        └──────────bad rows──▶ reject file <data_dir>/import-rejects/<name>-<token>.csv
//! ```
//!
//! - [`source`]: the [`Source`] trait and the local implementation; [`s3`]: the S3 one.
//! - [`ledger`]: the `import_ledger` table and how a file's rows are found again.
//! - [`load`]: loading one file into one store, streamed, all or nothing.
//! - [`watch()`]: imports configured sources on an interval, for `shopstream serve`.
//!
//! Lines get the ids the stream path gives them (content plus occurrence, by the same parser), so
//! a line that arrived both ways is stored once.

mod error;
pub mod ledger;
pub mod load;
mod report;
pub mod s3;
pub mod source;
mod watch;

pub use error::ImportError;
pub use load::{ImportOptions, Importer, Target};
pub use report::{FileOutcome, FileReport, RunSummary};
pub use source::{parse_source, LocalSource, Source, SourceFile};
pub use watch::watch;
