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
///
/// A folder or glob takes regular files only: symbolic links are not followed (a link to a folder
/// may loop, one to a file may point anywhere, e.g. `/etc/passwd`), and FIFOs, sockets, devices,
/// entries that cannot be read and names that are not UTF-8 are skipped with a warning (once per
/// entry and process, so a watcher scanning every few seconds does not repeat it), so one odd
/// entry never stops the rest. A file or link named explicitly is
/// taken (it must lead to a regular file).
#[derive(Debug, Clone)]
pub struct LocalSource {
    spec: String,
}

/// Entries already warned about ([`LocalSource::skip`]); forgotten when it holds this many.
const WARNED_MAX: usize = 10_000;
static WARNED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
    std::sync::LazyLock::new(Default::default);

impl LocalSource {
    /// # Errors
    /// [`ImportError::Source`] when `spec` is a malformed glob.
    pub fn new(spec: &str) -> Result<Self, ImportError> {
        if is_glob(spec) {
            glob::Pattern::new(spec).map_err(|e| ImportError::Source {
                source_name: printable(spec),
                reason: format!("is not a valid glob pattern: {e}"),
            })?;
        }
        Ok(Self {
            spec: spec.to_owned(),
        })
    }

    fn fail(&self, reason: String) -> ImportError {
        ImportError::Source {
            source_name: printable(&self.spec),
            reason,
        }
    }

    /// Logs, once per entry, that `path` is left out and why.
    fn skip(&self, path: &Path, why: &str) {
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        if warned.len() >= WARNED_MAX {
            warned.clear();
        }
        if warned.insert(path.to_path_buf()) {
            tracing::warn!(
                source = %printable(&self.spec),
                entry = %printable(&path.to_string_lossy()),
                "Skipped: {why}."
            );
        }
    }

    fn paths(&self) -> Result<Vec<PathBuf>, ImportError> {
        let mut out = Vec::new();
        if is_glob(&self.spec) {
            let matches = glob::glob(&self.spec).map_err(|e| self.fail(e.to_string()))?;
            for entry in matches {
                match entry {
                    Ok(path) => self.take(path, &mut out),
                    Err(e) => self.skip(e.path(), &format!("cannot be read ({})", e.error())),
                }
            }
        } else {
            let path = Path::new(&self.spec);
            match std::fs::metadata(path) {
                Ok(meta) if meta.is_dir() => self.walk(path, &mut out)?,
                // Named explicitly: taken whatever its extension, through a link too.
                Ok(meta) if meta.is_file() => out.push(path.to_path_buf()),
                Ok(_) => {
                    return Err(self.fail(
                        "is not a regular file or a folder (a FIFO, socket or device cannot be imported)".into(),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(self.fail(
                        "does not exist; give a file, a folder, a glob such as 'dumps/*.csv.gz', or s3://bucket/prefix".into(),
                    ))
                }
                Err(e) => return Err(self.fail(format!("cannot be read: {e}"))),
            }
        }
        Ok(out)
    }

    /// Adds `path`, found in a folder or by a glob, to `out` when it is a bulk file, or walks it
    /// when it is a folder; skips anything else (see [`LocalSource`]).
    fn take(&self, path: PathBuf, out: &mut Vec<PathBuf>) {
        let kind = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta.file_type(),
            Err(e) => return self.skip(&path, &format!("cannot be read ({e})")),
        };
        if kind.is_symlink() {
            self.skip(&path, "a symbolic link is not followed in a folder or glob; name it (or its target) explicitly to import it");
        } else if kind.is_dir() {
            if let Err(e) = self.walk(&path, out) {
                self.skip(&path, &format!("the folder cannot be listed ({e})"));
            }
        } else if !is_bulk_file(&path) {
            // Not a .csv or .csv.gz: not ours, silently.
        } else if !kind.is_file() {
            self.skip(&path, "not a regular file (a FIFO, socket or device)");
        } else if path.to_str().is_none() {
            self.skip(&path, "the name is not valid UTF-8; rename the file");
        } else {
            out.push(path);
        }
    }

    /// Every bulk file under `dir`, without following links. A folder that cannot be listed is
    /// an error when it is the source itself, and a warning below it.
    fn walk(&self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImportError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            self.fail(format!(
                "cannot list {}: {e}",
                printable(&dir.to_string_lossy())
            ))
        })?;
        for entry in entries {
            match entry {
                Ok(entry) => self.take(entry.path(), out),
                Err(e) => self.skip(dir, &format!("an entry cannot be read ({e})")),
            }
        }
        Ok(())
    }
}

/// `name` with control characters (a newline, an escape sequence) escaped, for messages and
/// summaries: a file name cannot forge or garble a line of output.
pub fn printable(name: &str) -> String {
    if !name.chars().any(char::is_control) {
        return name.to_owned();
    }
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Source for LocalSource {
    fn list(&self) -> Result<Vec<SourceFile>, ImportError> {
        let mut files = Vec::new();
        for path in self.paths()? {
            let absolute = std::path::absolute(&path)
                .map_err(|e| self.fail(format!("{}: {e}", printable(&path.to_string_lossy()))))?;
            let (size, stamp) = stamp(&absolute).map_err(|e| {
                self.fail(format!(
                    "cannot read {}: {e}",
                    printable(&absolute.to_string_lossy())
                ))
            })?;
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
            .map_err(|e| self.fail(format!("cannot read {}: {e}", printable(&file.key))))?;
        Ok(SourceFile {
            change_token,
            ..file
        })
    }

    fn unchanged(&self, file: &SourceFile) -> Result<bool, ImportError> {
        let (_, now) = stamp(Path::new(&file.key))
            .map_err(|e| self.fail(format!("cannot read {}: {e}", printable(&file.key))))?;
        Ok(now == file.stamp)
    }

    fn open(&self, file: &SourceFile) -> Result<Box<dyn Read + Send>, ImportError> {
        let f = File::open(&file.key)
            .map_err(|e| self.fail(format!("cannot open {}: {e}", printable(&file.key))))?;
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
