//! [`ObjectStore`] on a local folder: key `a/b/c.gz` is the file `<root>/a/b/c.gz`.
//!
//! `put` writes a temporary file beside the target, fsyncs it, renames it over the key and fsyncs
//! the folder, so a reader sees the old object or the new one, and an acknowledged object survives
//! power loss. Temporary files start with [`TEMP_PREFIX`]; `list` skips them and keys may not use
//! that prefix.
//!
//! ETags are BLAKE3 hashes of the content. Hashing every file on every `list` would read the whole
//! archive, so hashes are cached per key with the file's identity (size, modification time and, on
//! Unix, inode). `put` replaces a file by rename, which gives it a new inode, so a changed object
//! never matches a stale entry; a file changed in place by someone else is re-hashed once its size
//! or modification time moves. The cache holds at most [`ETAG_CACHE_BYTES`] (least recently used
//! entries go first), so a long-running archive does not grow it without end: an entry evicted
//! costs one re-hash of its file at the next `list`.

use super::{ObjectMeta, ObjectStore, ObjectStoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Names starting with this are work files of the store, never objects.
pub const TEMP_PREFIX: &str = ".tmp.";

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileIdentity {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileIdentity {
    fn of(meta: &Metadata) -> Self {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let inode = 0;
        FileIdentity {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }
}

/// What the ETag cache may hold, counted as key, hash and per-entry overhead: about 150,000
/// archive objects of typical key length.
pub const ETAG_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// ETags by key, least recently used evicted first once the entries pass a byte budget.
struct EtagCache {
    entries: lru::LruCache<String, (FileIdentity, String)>,
    bytes: usize,
    budget: usize,
}

impl EtagCache {
    fn new(budget: usize) -> Self {
        EtagCache {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
            budget,
        }
    }

    /// What one entry costs: its strings and the map's own share (pointers, the identity).
    fn cost(key: &str, etag: &str) -> usize {
        key.len() + etag.len() + std::mem::size_of::<(String, FileIdentity, String)>() + 32
    }

    fn get(&mut self, key: &str) -> Option<&(FileIdentity, String)> {
        self.entries.get(key)
    }

    fn insert(&mut self, key: String, identity: FileIdentity, etag: String) {
        self.bytes += Self::cost(&key, &etag);
        if let Some((old_key, (_, old_etag))) = self.entries.push(key, (identity, etag)) {
            self.bytes -= Self::cost(&old_key, &old_etag);
        }
        while self.bytes > self.budget {
            match self.entries.pop_lru() {
                Some((key, (_, etag))) => self.bytes -= Self::cost(&key, &etag),
                None => break,
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, etag)) = self.entries.pop(key) {
            self.bytes -= Self::cost(key, &etag);
        }
    }
}

/// Objects in a folder. Clones share the folder and the ETag cache.
#[derive(Clone)]
pub struct LocalObjectStore {
    root: Arc<PathBuf>,
    etags: Arc<Mutex<EtagCache>>,
    /// Makes temporary file names unique within the process (the pid covers other processes).
    temp_counter: Arc<AtomicU64>,
}

impl LocalObjectStore {
    /// A store on the folder `root`, created (with its parents) if missing.
    ///
    /// # Errors
    /// `Backend` when the folder cannot be created (the message names it).
    pub fn new(root: PathBuf) -> Result<Self, ObjectStoreError> {
        fs::create_dir_all(&root).map_err(|e| {
            ObjectStoreError::Backend(format!(
                "cannot create the object store folder {}: {e}; check the configured dir and data_dir",
                root.display()
            ))
        })?;
        Ok(LocalObjectStore {
            root: Arc::new(root),
            etags: Arc::new(Mutex::new(EtagCache::new(ETAG_CACHE_BYTES))),
            temp_counter: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The folder holding the objects.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`.
    ///
    /// # Errors
    /// `Backend` for a key that is empty, absolute, has an empty, `.` or `..` segment, a
    /// backslash or NUL, or a segment starting with [`TEMP_PREFIX`]: such keys would escape the
    /// folder or be confused with the store's own files.
    fn path_of(&self, key: &str) -> Result<PathBuf, ObjectStoreError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, EtagCache> {
        self.etags.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_blocking(&self, key: &str, path: &Path, body: &[u8]) -> io::Result<()> {
        let dir = path.parent().unwrap_or(&self.root);
        create_dirs_durably(&self.root, dir)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let temp = dir.join(format!(
            "{TEMP_PREFIX}{name}.{}.{}",
            std::process::id(),
            self.temp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = File::create(&temp)?;
            file.write_all(body)?;
            file.sync_all()?;
            fs::rename(&temp, path)?;
            sync_dir(dir)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written?;
        let etag = blake3::hash(body).to_hex().to_string();
        let identity = FileIdentity::of(&fs::metadata(path)?);
        self.cache().insert(key.to_owned(), identity, etag);
        Ok(())
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectStoreError> {
        // Walk only the deepest folder the prefix names in full.
        let start_key = prefix.rfind('/').map_or("", |i| &prefix[..i]);
        let start = if start_key.is_empty() {
            self.root.to_path_buf()
        } else {
            self.path_of(start_key)?
        };
        let mut files = Vec::new();
        walk(&start, start_key, &mut files).map_err(|e| {
            ObjectStoreError::Backend(format!(
                "cannot list {} under prefix {prefix:?}: {e}",
                self.root.display()
            ))
        })?;
        files.retain(|(key, _, _)| key.starts_with(prefix));
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files
            .into_iter()
            .map(|(key, path, meta)| {
                let etag = self.etag(&key, &path, &meta).map_err(|e| {
                    ObjectStoreError::Backend(format!("cannot hash object {key}: {e}"))
                })?;
                Ok(ObjectMeta {
                    key,
                    size: meta.len(),
                    etag,
                })
            })
            .collect()
    }

    fn etag(&self, key: &str, path: &Path, meta: &Metadata) -> io::Result<String> {
        let identity = FileIdentity::of(meta);
        if let Some((cached, etag)) = self.cache().get(key) {
            if *cached == identity {
                return Ok(etag.clone());
            }
        }
        let mut hasher = blake3::Hasher::new();
        io::copy(&mut File::open(path)?, &mut hasher)?;
        let etag = hasher.finalize().to_hex().to_string();
        self.cache().insert(key.to_owned(), identity, etag.clone());
        Ok(etag)
    }

    /// Runs blocking file work off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(LocalObjectStore) -> Result<T, ObjectStoreError> + Send + 'static,
    ) -> Result<T, ObjectStoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| ObjectStoreError::Backend(format!("an object store task failed: {e}")))?
    }
}

fn check_key(key: &str) -> Result<(), ObjectStoreError> {
    let invalid = |reason: &str| {
        Err(ObjectStoreError::Backend(format!(
            "invalid object key {key:?}: {reason}; keys are relative paths like raw/dt=2011-01-01/shard=shard-0000/1-20.ndjson.gz"
        )))
    };
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.starts_with('/') {
        return invalid("it is absolute (starts with /)");
    }
    if key.contains('\\') || key.contains('\0') {
        return invalid("it contains a backslash or NUL");
    }
    for segment in key.split('/') {
        match segment {
            "" => return invalid("it has an empty segment (// or a trailing /)"),
            "." | ".." => return invalid("it has a . or .. segment, which could leave the folder"),
            s if s.starts_with(TEMP_PREFIX) => {
                return invalid(
                    "a segment starts with .tmp., which the store uses for its work files",
                )
            }
            _ => {}
        }
    }
    Ok(())
}

/// Collects every object file under `dir` (whose key is `dir_key`) with its metadata.
fn walk(dir: &Path, dir_key: &str, out: &mut Vec<(String, PathBuf, Metadata)>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue; // not UTF-8: no key can name it
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let key = if dir_key.is_empty() {
            name
        } else {
            format!("{dir_key}/{name}")
        };
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(&entry.path(), &key, out)?;
        } else if meta.is_file() {
            out.push((key, entry.path(), meta));
        }
    }
    Ok(())
}

/// Creates `dir` (inside `root`) and any missing folder between them, fsyncing each new folder's
/// parent so the new entries survive power loss too.
fn create_dirs_durably(root: &Path, dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut current = root.to_path_buf();
    for part in dir.strip_prefix(root).unwrap_or(dir).components() {
        let parent = current.clone();
        current.push(part);
        match fs::create_dir(&current) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes a folder's entries (a rename, a new file) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    // Only Unix can open a folder to fsync it; elsewhere the rename is durable when the file
    // system says so.
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn is_not_found(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[async_trait]
impl ObjectStore for LocalObjectStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectStoreError> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        self.blocking(move |store| {
            store.put_blocking(&key, &path, &body).map_err(|e| {
                ObjectStoreError::Backend(format!(
                    "cannot write object {key} to {}: {e}",
                    path.display()
                ))
            })
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(body) => Ok(Bytes::from(body)),
            Err(e) if is_not_found(&e) => Err(ObjectStoreError::NotFound(key.to_owned())),
            Err(e) => Err(ObjectStoreError::Backend(format!(
                "cannot read object {key} from {}: {e}",
                path.display()
            ))),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectStoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |store| store.list_blocking(&prefix))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectStoreError> {
        let path = self.path_of(key)?;
        let key = key.to_owned();
        self.blocking(move |store| {
            let removed = match fs::remove_file(&path) {
                Ok(()) => path.parent().map_or(Ok(()), sync_dir),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(e),
            };
            store.cache().remove(&key);
            removed.map_err(|e| {
                ObjectStoreError::Backend(format!(
                    "cannot delete object {key} at {}: {e}",
                    path.display()
                ))
            })
        })
        .await
    }

    async fn health(&self) -> Result<(), ObjectStoreError> {
        self.blocking(|store| {
            let probe = store
                .root
                .join(format!("{TEMP_PREFIX}health-probe.{}", std::process::id()));
            File::create(&probe)
                .and_then(|mut f| f.write_all(b"probe"))
                .and_then(|()| fs::remove_file(&probe))
                .map_err(|e| {
                    ObjectStoreError::Backend(format!(
                        "the object store folder {} is not writable: {e}; check that it exists, is a folder, and that shopstream's user may write to it",
                        store.root.display()
                    ))
                })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalObjectStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalObjectStore::new(dir.path().join("archive")).unwrap();
        (dir, store)
    }

    const KEY: &str = "raw/dt=2011-01-01/shard=shard-0000/1-20.ndjson.gz";

    #[test]
    fn the_etag_cache_stays_within_its_bytes_and_keeps_the_recent_entries() {
        let identity = FileIdentity {
            len: 1,
            modified: None,
            inode: 1,
        };
        let one = EtagCache::cost(&format!("{KEY}.{:06}", 0), &"e".repeat(64));
        let mut cache = EtagCache::new(one * 100);
        for i in 0..10_000 {
            cache.insert(format!("{KEY}.{i:06}"), identity, "e".repeat(64));
            // Touching the first key keeps it in.
            assert!(cache.get(&format!("{KEY}.{:06}", 0)).is_some());
            assert!(cache.bytes <= one * 100, "{} bytes", cache.bytes);
        }
        assert_eq!(cache.entries.len(), 100);
        assert!(cache.get(&format!("{KEY}.{:06}", 9_999)).is_some());
        assert!(cache.get(&format!("{KEY}.{:06}", 5_000)).is_none());
        // Replacing and removing keep the count of bytes right.
        cache.insert(format!("{KEY}.{:06}", 9_999), identity, "f".repeat(64));
        assert_eq!(cache.bytes, one * 100);
        cache.remove(&format!("{KEY}.{:06}", 9_999));
        assert_eq!(cache.bytes, one * 99);
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        let (_dir, store) = store();
        store.put(KEY, Bytes::from_static(b"one")).await.unwrap();
        store
            .put(
                "raw/dt=2011-01-02/shard=shard-0001/21-40.ndjson.gz",
                Bytes::from_static(b"two!"),
            )
            .await
            .unwrap();
        store
            .put("dead-letter/x.json", Bytes::from_static(b"dl"))
            .await
            .unwrap();
        assert_eq!(store.get(KEY).await.unwrap(), Bytes::from_static(b"one"));

        let listed = store.list("raw/dt=2011-01").await.unwrap();
        let keys: Vec<_> = listed.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![KEY, "raw/dt=2011-01-02/shard=shard-0001/21-40.ndjson.gz"]
        );
        assert_eq!(listed[0].size, 3);
        assert_eq!(listed[0].etag, blake3::hash(b"one").to_hex().to_string());
        assert_eq!(store.list("").await.unwrap().len(), 3);
        assert!(store.list("nothing/here").await.unwrap().is_empty());

        store.delete(KEY).await.unwrap();
        assert!(matches!(store.get(KEY).await, Err(ObjectStoreError::NotFound(k)) if k == KEY));
        store
            .delete(KEY)
            .await
            .expect("deleting a missing key is fine");
        assert_eq!(store.list("raw/").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn overwriting_replaces_the_object_and_its_etag() {
        let (_dir, store) = store();
        store
            .put(KEY, Bytes::from_static(b"first version"))
            .await
            .unwrap();
        let before = store.list(KEY).await.unwrap();
        store.put(KEY, Bytes::from_static(b"second")).await.unwrap();
        let after = store.list(KEY).await.unwrap();
        assert_eq!(store.get(KEY).await.unwrap(), Bytes::from_static(b"second"));
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].size, 6);
        assert_ne!(before[0].etag, after[0].etag);

        // A file changed behind the store's back gets a fresh hash too.
        fs::write(store.root().join(KEY), b"edited by hand, longer").unwrap();
        let edited = store.list(KEY).await.unwrap();
        assert_eq!(
            edited[0].etag,
            blake3::hash(b"edited by hand, longer").to_hex().to_string()
        );
    }

    #[tokio::test]
    async fn a_put_never_shows_a_partial_object() {
        let (_dir, store) = store();
        let old = Bytes::from(vec![b'a'; 4 * 1024 * 1024]);
        let new = Bytes::from(vec![b'b'; 4 * 1024 * 1024]);
        store.put(KEY, old.clone()).await.unwrap();
        let writer = {
            let store = store.clone();
            let new = new.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    store.put(KEY, new.clone()).await.unwrap();
                }
            })
        };
        // Every read while the writer replaces the file sees one whole version.
        while !writer.is_finished() {
            let body = store.get(KEY).await.unwrap();
            assert!(
                body == old || body == new,
                "a read saw {} bytes of a mix",
                body.len()
            );
        }
        writer.await.unwrap();
        // Temporary files are gone and never listed.
        let dir = store.root().join("raw/dt=2011-01-01/shard=shard-0000");
        let names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["1-20.ndjson.gz"]);

        // A leftover temporary file (a crash mid-put) is not an object.
        let leftover = store.root().join("raw/.tmp.1-20.ndjson.gz.1.1");
        fs::write(&leftover, b"half").unwrap();
        assert_eq!(store.list("").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn keys_that_escape_the_folder_are_refused() {
        let (_dir, store) = store();
        for key in [
            "",
            "/etc/passwd",
            "../outside",
            "raw/../../outside",
            "raw//x",
            "raw/x/",
            "./x",
            "raw\\x",
            "raw/.tmp.x",
        ] {
            let err = store.put(key, Bytes::from_static(b"x")).await.unwrap_err();
            assert!(
                err.to_string().contains("invalid object key"),
                "{key:?}: {err}"
            );
            assert!(store.get(key).await.is_err(), "{key:?}");
            assert!(store.delete(key).await.is_err(), "{key:?}");
        }
        assert!(store.list("../").await.is_err());
    }

    #[tokio::test]
    async fn health_fails_when_the_folder_cannot_be_written() {
        let (_dir, store) = store();
        store.health().await.expect("a fresh folder is writable");
        // Root ignores permission bits, so make the folder unusable another way: replace it by
        // a file, so nothing can be created inside it.
        fs::remove_dir_all(store.root()).unwrap();
        fs::write(store.root(), b"not a folder").unwrap();
        let err = store.health().await.unwrap_err();
        assert!(err.to_string().contains("is not writable"), "{err}");
        assert!(err
            .to_string()
            .contains(&store.root().display().to_string()));
    }
}
