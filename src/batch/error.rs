//! Why an import of a file or a source failed.

use std::path::PathBuf;

use crate::model::InputError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("source {source_name}: {reason}")]
    Source { source_name: String, reason: String },
    #[error("{key}: {error}")]
    Input { key: String, error: InputError },
    /// The file ends early or cannot be decoded (a truncated `.gz`, a read error): nothing of it
    /// is loaded, because what follows the break is unknown.
    #[error(
        "{key}: {reason}; nothing of it was loaded: fix or re-export the file and import it again"
    )]
    Unreadable { key: String, reason: String },
    /// The file's size or modification time moved while it was read: what was read may be a
    /// copy in progress, so the load is not recorded.
    #[error(
        "{key}: changed while it was read (its size or modification time moved); it is not recorded as loaded: import it again once it is complete (the watcher does so once it holds still)"
    )]
    ChangedWhileRead { key: String },
    #[error("{key}: {rejected} of {rows} rows rejected, more than --max-reject-ratio {max_ratio}; nothing of it was loaded: see {reject_file} for every bad row and why")]
    TooManyRejects {
        key: String,
        rejected: u64,
        rows: u64,
        max_ratio: f64,
        reject_file: String,
    },
    #[error("cannot write the reject file {}: {error}; check the disk and import.reject_dir", path.display())]
    RejectFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the import of {key} stopped unexpectedly: {reason}")]
    Task { key: String, reason: String },
}
