//! The reject file of one imported file: every bad row, where it was and why.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use super::super::source::REJECTS_SUFFIX;
use super::super::ImportError;
use crate::model::csv::RejectedRow;
use crate::model::LinePosition;
use crate::store::warehouse::BulkFile;

/// The reject file of one file: `line,reason,row` (the row as it was, re-quoted as CSV), created
/// at the first bad row. Its name carries the file's change token, so re-checking the same
/// content rewrites the same file and another version of the file gets its own.
pub(super) struct RejectWriter {
    path: PathBuf,
    writer: Option<csv::Writer<BufWriter<File>>>,
}

impl RejectWriter {
    pub(super) fn new(dir: &Path, file: &BulkFile) -> Self {
        let name: String = Path::new(&file.key)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "import".into())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let token: String = file
            .change_token
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(12)
            .collect();
        RejectWriter {
            path: std::path::absolute(dir)
                .unwrap_or_else(|_| dir.to_path_buf())
                .join(format!("{name}-{token}{REJECTS_SUFFIX}")),
            writer: None,
        }
    }

    fn fail(&self, error: impl Into<io::Error>) -> ImportError {
        ImportError::RejectFile {
            path: self.path.clone(),
            error: error.into(),
        }
    }

    pub(super) fn write(&mut self, rejected: &RejectedRow) -> Result<(), ImportError> {
        if self.writer.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| self.fail(e))?;
            }
            let file = File::create(&self.path).map_err(|e| self.fail(e))?;
            let mut writer = csv::Writer::from_writer(BufWriter::new(file));
            writer
                .write_record(["line", "reason", "row"])
                .map_err(|e| self.fail(e))?;
            self.writer = Some(writer);
        }
        let e = &rejected.error;
        let line = match e.position {
            LinePosition::Row(r) => r.to_string(),
            LinePosition::Index(i) => i.to_string(),
        };
        let reason = match e.field {
            Some(f) => format!("field {f}: {}", e.reason),
            None => e.reason.clone(),
        };
        let writer = self.writer.as_mut().expect("created above");
        writer
            .write_record([line.as_str(), reason.as_str(), rejected.raw.as_str()])
            .map_err(|e| ImportError::RejectFile {
                path: self.path.clone(),
                error: e.into(),
            })
    }

    /// Flushes the file; its path when any row was rejected.
    pub(super) fn finish(self) -> Result<Option<String>, ImportError> {
        match self.writer {
            None => Ok(None),
            Some(mut w) => {
                w.flush().map_err(|e| ImportError::RejectFile {
                    path: self.path.clone(),
                    error: e,
                })?;
                Ok(Some(self.path.display().to_string()))
            }
        }
    }

    /// The path when an earlier pass over the same content wrote it.
    pub(super) fn existing(self) -> Option<String> {
        self.path.is_file().then(|| self.path.display().to_string())
    }
}
