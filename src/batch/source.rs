//! Where bulk files come from: a [`Source`] lists files (key, size, stamp), gives a file its change
//! token when it is about to be loaded, and opens one as a streaming [`Read`]. [`LocalSource`]
//! serves a file, a folder (recursively) or a glob.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::ImportError;

/// How reject files end (see [`super::load`]); folders and globs skip them.
pub const REJECTS_SUFFIX: &str = ".rejects.csv";

/// A bulk file as a source lists it: the warehouse's ledger identity of a file (key, size, change
/// token) and its stamp, under the name the batch path gives it.
pub use crate::store::warehouse::BulkFile as SourceFile;

/// A place bulk files are found. Blocking: call it on a blocking thread.
pub trait Source: Send + Sync {
    /// Every `.csv` and `.csv.gz` file the source holds now, sorted by key, with its stamp. Cheap
    /// (no file is read): the change token may be left empty for [`identify`](Self::identify).
    ///
    /// # Errors
    /// [`ImportError::Source`] when the source cannot be listed or a file cannot be read.
    fn list(&self) -> Result<Vec<SourceFile>, ImportError>;

    /// `file` with its change token, just before it is loaded. The default keeps the listed one.
    ///
    /// # Errors
    /// [`ImportError::Source`] when the file cannot be read.
    fn identify(&self, file: SourceFile) -> Result<SourceFile, ImportError> {
        Ok(file)
    }

    /// Whether `file`, read since it was listed, still has its listed stamp: if not, what was read
    /// may be a copy in progress, and it must not be recorded as loaded. The default answers yes,
    /// for a source whose reads are of the listed content only (S3's `If-Match`).
    ///
    /// # Errors
    /// [`ImportError::Source`] when the file cannot be looked at.
    fn unchanged(&self, _file: &SourceFile) -> Result<bool, ImportError> {
        Ok(true)
    }

    /// The raw bytes of `file` as stored (still compressed for `.csv.gz`).
    ///
    /// # Errors
    /// [`ImportError::Source`] when the file cannot be opened.
    fn open(&self, file: &SourceFile) -> Result<Box<dyn Read + Send>, ImportError>;

    /// [`open`](Self::open), decompressed when the file is gzip.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    fn open_decoded(&self, file: &SourceFile) -> Result<Box<dyn Read + Send>, ImportError> {
        let raw = self.open(file)?;
        Ok(if file.is_gzip() {
            Box::new(MultiGzDecoder::new(BufReader::with_capacity(1 << 16, raw)))
        } else {
            raw
        })
    }
}

/// Files on this machine. The stamp is the size and modification time (to the nanosecond), which
/// a listing reads without opening the file. The change token is the BLAKE3 hash of the file's
/// bytes, computed just before the file is loaded ([`Source::identify`]): a modification that
/// keeps size and time (a restored backup, a rewrite within the same second) is still seen, at
/// the cost of reading the file once more (BLAKE3 runs at several GB/s, far faster than parsing).
#[derive(Debug, Clone)]
pub struct LocalSource {
    spec: String,
}

impl LocalSource {
    /// # Errors
    /// [`ImportError::Source`] when `spec` is a malformed glob.
    pub fn new(spec: &str) -> Result<Self, ImportError> {
        if is_glob(spec) {
            glob::Pattern::new(spec).map_err(|e| ImportError::Source {
                source_name: spec.to_owned(),
                reason: format!("is not a valid glob pattern: {e}"),
            })?;
        }
        Ok(Self {
            spec: spec.to_owned(),
        })
    }

    fn fail(&self, reason: String) -> ImportError {
        ImportError::Source {
            source_name: self.spec.clone(),
            reason,
        }
    }

    fn paths(&self) -> Result<Vec<PathBuf>, ImportError> {
        let mut out = Vec::new();
        if is_glob(&self.spec) {
            let matches = glob::glob(&self.spec).map_err(|e| self.fail(e.to_string()))?;
            for entry in matches {
                let path = entry.map_err(|e| self.fail(e.to_string()))?;
                if path.is_dir() {
                    walk(&path, &mut out).map_err(|e| self.fail(e.to_string()))?;
                } else if is_bulk_file(&path) {
                    out.push(path);
                }
            }
        } else {
            let path = Path::new(&self.spec);
            if path.is_dir() {
                walk(path, &mut out).map_err(|e| self.fail(e.to_string()))?;
            } else if path.is_file() {
                // Named explicitly: taken whatever its extension.
                out.push(path.to_path_buf());
            } else {
                return Err(self.fail(
                    "does not exist; give a file, a folder, a glob such as 'dumps/*.csv.gz', or s3://bucket/prefix".into(),
                ));
            }
        }
        Ok(out)
    }
}

impl Source for LocalSource {
    fn list(&self) -> Result<Vec<SourceFile>, ImportError> {
        let mut files = Vec::new();
        for path in self.paths()? {
            let absolute = std::path::absolute(&path)
                .map_err(|e| self.fail(format!("{}: {e}", path.display())))?;
            let (size, stamp) = stamp(&absolute)
                .map_err(|e| self.fail(format!("cannot read {}: {e}", absolute.display())))?;
            files.push(SourceFile {
                key: absolute.display().to_string(),
                size,
                change_token: String::new(),
                stamp,
            });
        }
        files.sort_by(|a, b| a.key.cmp(&b.key));
        files.dedup_by(|a, b| a.key == b.key);
        Ok(files)
    }

    fn identify(&self, file: SourceFile) -> Result<SourceFile, ImportError> {
        let change_token = hash_file(Path::new(&file.key))
            .map_err(|e| self.fail(format!("cannot read {}: {e}", file.key)))?;
        Ok(SourceFile {
            change_token,
            ..file
        })
    }

    fn unchanged(&self, file: &SourceFile) -> Result<bool, ImportError> {
        let (_, now) = stamp(Path::new(&file.key))
            .map_err(|e| self.fail(format!("cannot read {}: {e}", file.key)))?;
        Ok(now == file.stamp)
    }

    fn open(&self, file: &SourceFile) -> Result<Box<dyn Read + Send>, ImportError> {
        let f = File::open(&file.key)
            .map_err(|e| self.fail(format!("cannot open {}: {e}", file.key)))?;
        Ok(Box::new(BufReader::with_capacity(1 << 16, f)))
    }
}

fn is_glob(spec: &str) -> bool {
    spec.contains(['*', '?', '['])
}

/// `.csv` or `.csv.gz`, any case: what a folder or glob contributes. Reject files
/// (`*.rejects.csv`) are left out, so a data folder inside a watched folder is not imported.
fn is_bulk_file(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| is_bulk_name(&n.to_string_lossy()))
}

/// [`is_bulk_file`] on a name or object key.
pub(crate) fn is_bulk_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    (name.ends_with(".csv") || name.ends_with(".csv.gz")) && !name.ends_with(REJECTS_SUFFIX)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_bulk_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Size and stamp (`<size>:<mtime in ns since 1970>`) of a file, from its metadata.
fn stamp(path: &Path) -> io::Result<(u64, String)> {
    let meta = std::fs::metadata(path)?;
    let mtime = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Ok((meta.len(), format!("{}:{mtime}", meta.len())))
}

/// BLAKE3 hex of a file's bytes.
fn hash_file(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_recurse_globs_match_and_tokens_and_stamps_follow_content() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(dir.path().join("one.csv"), "x").unwrap();
        std::fs::write(nested.join("two.CSV.gz"), "y").unwrap();
        std::fs::write(nested.join("notes.txt"), "z").unwrap();
        std::fs::write(nested.join("x.csv-0a1b.rejects.csv"), "z").unwrap();

        let all = LocalSource::new(dir.path().to_str().unwrap())
            .unwrap()
            .list()
            .unwrap();
        assert_eq!(all.len(), 2);
        assert!(all
            .iter()
            .any(|f| f.is_gzip() && f.key.ends_with("two.CSV.gz")));

        let glob = format!("{}/*.csv", dir.path().display());
        let one = LocalSource::new(&glob).unwrap().list().unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].size, 1);

        let source = LocalSource::new(&glob).unwrap();
        let first = source.identify(one[0].clone()).unwrap();
        assert!(source.unchanged(&first).unwrap());
        std::fs::write(dir.path().join("one.csv"), "wv").unwrap();
        let again = source.list().unwrap();
        assert_ne!(again[0].stamp, first.stamp);
        assert!(!source.unchanged(&first).unwrap());
        let again = source.identify(again[0].clone()).unwrap();
        assert_ne!(again.change_token, first.change_token);

        assert!(
            LocalSource::new(dir.path().join("missing").to_str().unwrap())
                .unwrap()
                .list()
                .is_err()
        );
    }
}
