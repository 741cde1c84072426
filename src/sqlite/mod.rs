//! SQLite plumbing for every embedded backend, whatever it stores.
//!
//! Every embedded store opens its file the same way ([`pool::open_connection`]: WAL,
//! `synchronous=FULL`, a busy timeout), keeps one writer connection and a few readers
//! ([`Database`]), and runs all SQLite calls on tokio's blocking threads, because a SQLite call may
//! wait for a lock or an fsync and must never stall the async runtime that serves HTTP and drives
//! the actors.
//!
//! - [`pool`]: opening a file, the writer and the readers, and short write transactions from
//!   blocking code ([`BlockingWriter`], for a bulk load's batches).
//! - [`error`]: which SQLite errors pass on their own and which one row causes.
//!
//! How the bundled SQLite is compiled is set in `.cargo/config.toml` (`LIBSQLITE3_FLAGS`): each
//! connection keeps its own page cache, with no lock shared by every connection of the process
//! (the test below checks that the build took the setting).
//!
//! What is stored and how (invoice lines as rows, the stores' error type) belongs to the store
//! layer: [`crate::store`].

pub(crate) mod error;
pub(crate) mod pool;

pub(crate) use error::{is_line_specific, is_overflow, is_transient};
pub use pool::SqliteOptions;
pub(crate) use pool::{BlockingWriter, Database, Migration, OpenError, TaskFailed};

#[cfg(test)]
mod tests {
    /// `.cargo/config.toml` builds SQLite without `SQLITE_ENABLE_MEMORY_MANAGEMENT` (one page
    /// cache group, and one lock, for all connections) and without counting allocations
    /// (`SQLITE_DEFAULT_MEMSTATUS=0`); a build that lost the setting (another `LIBSQLITE3_FLAGS`
    /// in the environment, a moved config file) fails here rather than being quietly slower.
    #[test]
    fn the_bundled_sqlite_is_built_with_its_page_caches_apart() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(options.iter().any(|o| o == "THREADSAFE=1"), "{options:?}");
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
    }
}
