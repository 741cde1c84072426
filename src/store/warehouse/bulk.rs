//! Bulk loads into the warehouse: whole files, each recorded in an import ledger that says which
//! content of which file was loaded into which store, so that a file is loaded once and a changed
//! one is noticed.
//!
//! A load starts with [`Warehouse::load_file`](super::Warehouse::load_file), which consults the
//! ledger and either declines ([`LedgerSkip`]) or opens a [`FileLoad`]: the caller hands it the
//! file's lines in batches as it reads them, then commits with the final counts. Nothing of the
//! file is visible until the commit, and a load dropped before it leaves nothing behind.

use super::StoreError;
use crate::model::IngestedLine;

/// A bulk file as the ledger identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkFile {
    /// Identifies the file across runs (the ledger's key): an absolute path, or `s3://bucket/key`.
    pub key: String,
    /// Size in bytes as stored (compressed for `.csv.gz`), for progress.
    pub size: u64,
    /// Changes whenever the content does: the ledger compares it to decide skip or changed.
    pub change_token: String,
    /// How the source saw the file when it listed it (size and modification time; in S3 size,
    /// ETag and LastModified): the import watcher loads a file once two scans saw the same
    /// stamp, and a file whose stamp moved while it was read is not recorded as loaded. The
    /// ledger does not keep it.
    pub stamp: String,
}

impl BulkFile {
    /// True for `.csv.gz` files, which are read through a gzip decoder.
    pub fn is_gzip(&self) -> bool {
        self.key.to_ascii_lowercase().ends_with(".gz")
    }
}

/// The store a bulk load filled, as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadedInto {
    Warehouse,
    Operational,
}

impl LoadedInto {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadedInto::Warehouse => "warehouse",
            LoadedInto::Operational => "operational",
        }
    }
}

/// What the ledger remembers of a loaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: i64,
    pub size: u64,
    pub change_token: String,
}

/// Counts of one load, written to the ledger when it commits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadCounts {
    /// Good rows of the file (some may have been stored already).
    pub rows_loaded: u64,
    /// Of those, rows the store did not hold before.
    pub rows_new: u64,
    pub rows_rejected: u64,
}

/// Why the ledger declines to load a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerSkip {
    /// This content of the file was loaded before.
    Unchanged,
    /// Other content of the file was loaded before, of `loaded_size` bytes, and it is not to be
    /// reloaded.
    Changed { loaded_size: u64 },
}

impl LedgerSkip {
    /// The ledger's one rule: a file it does not know is loaded; the same content is skipped;
    /// changed content is loaded (replacing what the old content loaded) only when `reload`.
    pub fn check(previous: Option<&LedgerEntry>, file: &BulkFile, reload: bool) -> Option<Self> {
        let previous = previous?;
        if previous.change_token == file.change_token {
            Some(LedgerSkip::Unchanged)
        } else if reload {
            None
        } else {
            Some(LedgerSkip::Changed {
                loaded_size: previous.size,
            })
        }
    }
}

/// How [`Warehouse::load_file`](super::Warehouse::load_file) starts.
pub enum FileLoadStart {
    /// The load is open: hand it the lines, then commit.
    Loading(Box<dyn FileLoad>),
    /// The ledger declines the file; nothing was written.
    Skipped(LedgerSkip),
}

/// One file being loaded into the warehouse: its rows (tagged with its ledger entry, so that a
/// reload finds them), then its ledger entry's final counts. A backend may write them in several
/// transactions (the embedded warehouse does, so the stream's writes go in between); dropping the
/// load before [`commit`](Self::commit) takes back what it wrote, which is how a caller abandons a
/// file (too many rejected rows, an unreadable file).
///
/// Blocking: call it on a blocking thread, the one that reads the file. (Handing each batch to
/// another thread made the embedded warehouse's bulk load slower on a busy machine.)
pub trait FileLoad: Send {
    /// Adds lines to the fact table; a line id already there is not added again. Returns how
    /// many lines were new.
    ///
    /// # Errors
    /// As [`Warehouse::insert`](super::Warehouse::insert); the load should then be dropped.
    fn insert(&mut self, lines: &[IngestedLine]) -> Result<u64, StoreError>;

    /// Records the load in the ledger with its final `counts` and reject file, and commits.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the commit cannot happen now (locked, disk full);
    /// nothing of the file is stored then.
    fn commit(
        self: Box<Self>,
        counts: &LoadCounts,
        reject_file: Option<&str>,
    ) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(token: &str) -> BulkFile {
        BulkFile {
            key: "/drop/a.csv".into(),
            size: 20,
            change_token: token.into(),
            stamp: String::new(),
        }
    }

    #[test]
    fn the_ledger_loads_new_files_skips_known_ones_and_reloads_on_request() {
        let loaded = LedgerEntry {
            id: 1,
            size: 10,
            change_token: "old".into(),
        };
        assert_eq!(LedgerSkip::check(None, &file("new"), false), None);
        assert_eq!(
            LedgerSkip::check(Some(&loaded), &file("old"), true),
            Some(LedgerSkip::Unchanged)
        );
        assert_eq!(
            LedgerSkip::check(Some(&loaded), &file("new"), false),
            Some(LedgerSkip::Changed { loaded_size: 10 })
        );
        assert_eq!(LedgerSkip::check(Some(&loaded), &file("new"), true), None);
    }
}
