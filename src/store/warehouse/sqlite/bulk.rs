//! A bulk load into the embedded warehouse, in short transactions: a `serve` writing the same
//! file (from another process, or this one's warehouse forwarder) gets the write lock between
//! them, so an import never stalls the stream's sink for the length of a file.
//!
//! 1. Start: the ledger decides; the file's ledger row is written marked unfinished (its change
//!    token prefixed with [`UNFINISHED`]), so its rows can carry its id; then an older version of
//!    the file (or an unfinished load of it) is taken out, a batch per transaction: the lines
//!    only it brought go, the lines the stream or another file brought too stay
//!    ([`ledger::remove_sales`]).
//! 2. Each batch of lines the caller hands over: one transaction.
//! 3. Commit: the ledger row gets its counts and the file's change token.
//!
//! Readers may see a file half loaded while it loads. A load dropped before its commit (too many
//! rejected rows, an unreadable file) removes its rows and its ledger row, so the file counts as
//! never loaded; a load cut short by a crash leaves its ledger row unfinished, and the next load
//! of the file, `--reload` or not, removes those rows before loading again.

use super::{insert_rows, ledger};
use crate::model::IngestedLine;
use crate::sqlite::{BlockingWriter, Database};
use crate::store::row::encode_lines;
use crate::store::warehouse::{
    BulkFile, FileLoad, FileLoadStart, LedgerSkip, LoadCounts, LoadedInto,
};
use crate::store::StoreError;

/// Prefix of the change token of a ledger row whose load has not committed.
pub(super) const UNFINISHED: &str = "unfinished:";

/// A file being loaded; see [`FileLoad`].
struct SqliteFileLoad {
    writer: BlockingWriter,
    file: BulkFile,
    /// The file's ledger row.
    id: i64,
    /// `source` of the file's rows in `sales`: its ledger entry.
    source: String,
    committed: bool,
}

/// Starts the load of `file`: the ledger decides, the ledger row is written unfinished, then (on
/// a reload, or after an unfinished load) the rows of the old content go.
///
/// # Errors
/// The store's error of the ledger statements or of a removal.
pub(super) async fn start(
    db: &Database,
    file: &BulkFile,
    reload: bool,
) -> Result<FileLoadStart, StoreError> {
    let f = file.clone();
    let path = db.path().to_owned();
    let started: Result<(i64, bool), LedgerSkip> = db
        .write(move |conn| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| StoreError::sqlite(&path, &e))?;
            ledger::create(&tx)?;
            let previous = ledger::lookup(&tx, &f.key, LoadedInto::Warehouse)?;
            let finished = previous
                .as_ref()
                .filter(|p| !p.change_token.starts_with(UNFINISHED));
            if let Some(skip) = LedgerSkip::check(finished, &f, reload) {
                // Dropping the transaction rolls back the ledger table's creation, if new.
                return Ok(Err(skip));
            }
            let unfinished = BulkFile {
                change_token: format!("{UNFINISHED}{}", f.change_token),
                ..f
            };
            let id = ledger::record(
                &tx,
                &unfinished,
                LoadedInto::Warehouse,
                &LoadCounts::default(),
                None,
            )?;
            tx.commit().map_err(|e| StoreError::sqlite(&path, &e))?;
            Ok::<_, StoreError>(Ok((id, previous.is_some())))
        })
        .await?;
    let (id, had_rows) = match started {
        Err(skip) => return Ok(FileLoadStart::Skipped(skip)),
        Ok(started) => started,
    };
    let load = SqliteFileLoad {
        writer: db.blocking_writer(),
        file: file.clone(),
        id,
        source: ledger::sales_source(id),
        committed: false,
    };
    if had_rows {
        let load = tokio::task::spawn_blocking(move || load.remove_rows().map(|()| load))
            .await
            .map_err(|e| StoreError::Backend(format!("removing a file's old rows failed: {e}")))?;
        return Ok(FileLoadStart::Loading(Box::new(load?)));
    }
    Ok(FileLoadStart::Loading(Box::new(load)))
}

impl SqliteFileLoad {
    /// Removes the rows carrying this file's ledger id, [`ledger::REMOVE_BATCH_ROWS`] a
    /// transaction. Blocking.
    fn remove_rows(&self) -> Result<(), StoreError> {
        while self.writer.transaction(StoreError::sqlite, |conn| {
            ledger::remove_sales(conn, self.id, ledger::REMOVE_BATCH_ROWS)
        })? > 0
        {}
        Ok(())
    }

    /// Takes back what an abandoned load wrote: its rows, then its ledger row. Blocking.
    fn abandon(&self) -> Result<(), StoreError> {
        self.remove_rows()?;
        self.writer
            .transaction(StoreError::sqlite, |conn| ledger::forget(conn, self.id))
    }
}

impl FileLoad for SqliteFileLoad {
    /// One transaction per call.
    ///
    /// # Errors
    /// [`StoreError::Rejected`] naming the first line whose amounts cannot be stored exactly,
    /// [`StoreError::Unavailable`] when the file is locked or the disk full.
    fn insert(&mut self, lines: &[IngestedLine]) -> Result<u64, StoreError> {
        if lines.is_empty() {
            return Ok(0);
        }
        let rows = encode_lines(lines)?;
        self.writer.transaction(StoreError::sqlite, |conn| {
            insert_rows(conn, &rows, &self.source)
        })
    }

    fn commit(
        mut self: Box<Self>,
        counts: &LoadCounts,
        reject_file: Option<&str>,
    ) -> Result<(), StoreError> {
        self.writer.transaction(StoreError::sqlite, |conn| {
            ledger::record(conn, &self.file, LoadedInto::Warehouse, counts, reject_file)
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for SqliteFileLoad {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // On a thread of its own: the writer is taken by blocking, which async code must not do,
        // and the caller may drop the load from either kind of code.
        let outcome = std::thread::scope(|s| s.spawn(|| self.abandon()).join());
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                file = %self.file.key.escape_debug(),
                error = %e,
                "Cannot take back the rows of an abandoned load; the next load of the file removes them."
            ),
            Err(_) => tracing::warn!(
                file = %self.file.key.escape_debug(),
                "Taking back the rows of an abandoned load panicked; the next load of the file removes them."
            ),
        }
    }
}
