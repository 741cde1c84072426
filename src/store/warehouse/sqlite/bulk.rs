//! A bulk load into the embedded warehouse: one write transaction per file, held while the caller
//! hands over the file's lines, holding the ledger decision, the removal of what an older version
//! of the file loaded, the new rows and the ledger row, all or nothing.

use super::{insert_rows, ledger};
use crate::model::IngestedLine;
use crate::sqlite::{Database, WriteTx};
use crate::store::row::encode_lines;
use crate::store::warehouse::{
    BulkFile, FileLoad, FileLoadStart, LedgerSkip, LoadCounts, LoadedInto,
};
use crate::store::StoreError;

/// A file being loaded; see [`FileLoad`].
struct SqliteFileLoad {
    tx: WriteTx,
    file: BulkFile,
    /// `source` of the file's rows in `sales`: its ledger entry.
    source: String,
}

/// Starts the load of `file`: the ledger decides, then (on a reload) the rows of the old content
/// go, and the file's ledger row is written with zero counts, so that its rows can carry its id.
///
/// # Errors
/// The store's error of starting the transaction or of the ledger statements.
pub(super) async fn start(
    db: &Database,
    file: &BulkFile,
    reload: bool,
) -> Result<FileLoadStart, StoreError> {
    let mut tx = db.begin(StoreError::sqlite).await?;
    let f = file.clone();
    let started: Result<i64, LedgerSkip> = tx
        .run(move |conn| {
            ledger::create(conn)?;
            let previous = ledger::lookup(conn, &f.key, LoadedInto::Warehouse)?;
            if let Some(skip) = LedgerSkip::check(previous.as_ref(), &f, reload) {
                return Ok(Err(skip));
            }
            if let Some(old) = &previous {
                ledger::remove_sales(conn, old.id)?;
            }
            let id = ledger::record(
                conn,
                &f,
                LoadedInto::Warehouse,
                &LoadCounts::default(),
                None,
            )?;
            Ok::<_, StoreError>(Ok(id))
        })
        .await?;
    Ok(match started {
        // Dropping the transaction rolls back the ledger table's creation, if it was new.
        Err(skip) => FileLoadStart::Skipped(skip),
        Ok(id) => FileLoadStart::Loading(Box::new(SqliteFileLoad {
            tx,
            file: file.clone(),
            source: ledger::sales_source(id),
        })),
    })
}

impl FileLoad for SqliteFileLoad {
    /// # Errors
    /// [`StoreError::Rejected`] naming the first line whose amounts cannot be stored exactly,
    /// [`StoreError::Unavailable`] when the file is locked or the disk full.
    fn insert(&mut self, lines: &[IngestedLine]) -> Result<u64, StoreError> {
        if lines.is_empty() {
            return Ok(0);
        }
        insert_rows(self.tx.connection()?, &encode_lines(lines)?, &self.source)
    }

    fn commit(
        self: Box<Self>,
        counts: &LoadCounts,
        reject_file: Option<&str>,
    ) -> Result<(), StoreError> {
        ledger::record(
            self.tx.connection()?,
            &self.file,
            LoadedInto::Warehouse,
            counts,
            reject_file,
        )?;
        self.tx.commit(StoreError::sqlite)
    }
}
