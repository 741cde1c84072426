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
//! - [`source`]: the [`Source`] trait and the local implementation; [`s3`]: the S3 one;
//!   [`parse_source`] picks one for a source named on the command line.
//! - [`options`]: what a run fills ([`Target`]) and how it treats rejects and changed files.
//! - [`load`]: the [`Importer`]: loading each file into each store, streamed, all or nothing,
//!   through the store traits. The ledger of loaded files and the per-file transaction belong
//!   to the warehouse ([`crate::store::warehouse::bulk`]).
//! - [`watch()`]: imports configured sources on an interval, for `shopstream serve`.
//!
//! Lines get the ids the stream path gives them (content plus occurrence, by the same parser), so
//! a line that arrived both ways is stored once.

mod error;
pub mod load;
pub mod options;
mod report;
pub mod s3;
pub mod source;
mod spec;
mod watch;

pub use error::ImportError;
pub use load::Importer;
pub use options::{ImportOptions, Target};
pub use report::{FileOutcome, FileReport, RunSummary};
pub use source::{LocalSource, Source, SourceFile};
pub use spec::parse_source;
pub use watch::watch;
