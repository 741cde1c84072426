//! The one error type of the operational store and the warehouse, whatever their backend, and its
//! one retry rule.

use std::path::Path;

use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::aws::{call_failure, error_code, SdkError};
use crate::sqlite::{is_line_specific, is_overflow, is_transient, OpenError, TaskFailed};

/// Why a store call failed, in the three cases callers treat differently.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Worth retrying: busy, locked, throttled, unreachable, disk full.
    #[error("store temporarily unavailable: {0}")]
    Unavailable(String),
    /// Not worth retrying: the line itself cannot be stored (amounts not exact in millionths, a
    /// DynamoDB item over 400 KB, a Firehose record over 1000 KiB).
    #[error("line {line_id} cannot be stored: {reason}")]
    Rejected { line_id: String, reason: String },
    /// Not worth retrying as it is: the backend refused a whole write call as invalid (DynamoDB's
    /// `ValidationException`, a Firehose entry refused with a non-retriable code) without naming
    /// the line that caused it. The sink writes the call's lines one at a time: a line refused so
    /// on its own goes to dead letters; when every line of a unit is refused, the backend is the
    /// cause (a table whose key schema does not match, say) and the unit is retried.
    #[error("the backend refused the write as invalid: {0}")]
    Invalid(String),
    /// Not worth retrying: a sum the store keeps or computes (a rollup, a summary, a total) is out
    /// of range. Validation bounds make this unreachable for accepted lines (`crate::store::sum`);
    /// should it happen, trying again gives the same answer, so it is never transient.
    #[error("a store sum is out of range: {0}")]
    Aggregate(String),
    /// Anything else: a broken connection, a wrong setting, a damaged file, a bug.
    #[error("store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// The one retry rule of the stores' errors (the sink actor asks it through
    /// `From<StoreError> for SinkFailure`): a line the backend refuses for good (`Rejected`) and
    /// a sum out of range (`Aggregate`, including SQLite's own "integer overflow") are not
    /// retried. `Unavailable` is busy or throttled; `Backend` may be a broken connection or
    /// a wrong setting that an operator fixes. The shard worker retries those for as long as they
    /// last and never dead-letters a line for them.
    pub fn is_retriable(&self) -> bool {
        !matches!(
            self,
            StoreError::Rejected { .. } | StoreError::Aggregate(_) | StoreError::Invalid(_)
        )
    }

    /// The failure of a write call to an AWS service: as [`aws_call`](Self::aws_call), except
    /// that a request the service refuses as invalid (`ValidationException`,
    /// `InvalidArgumentException`, `SerializationException`) is [`StoreError::Invalid`].
    pub(crate) fn aws_write<E>(what: &str, resource: &str, e: &SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match error_code(e) {
            Some("ValidationException" | "InvalidArgumentException" | "SerializationException") => {
                StoreError::Invalid(call_failure(what, resource, e).0)
            }
            _ => StoreError::aws_call(what, resource, e),
        }
    }

    /// The failure of a call to an AWS service (`what` on `resource`): `Unavailable` when trying
    /// again may help ([`crate::aws::is_transient`]), `Backend` otherwise.
    pub(crate) fn aws_call<E>(what: &str, resource: &str, e: &SdkError<E>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match call_failure(what, resource, e) {
            (message, true) => StoreError::Unavailable(message),
            (message, false) => StoreError::Backend(message),
        }
    }

    /// The failure of the call a health check makes to describe its resource: one that does not
    /// exist is a `Backend` error saying how to create it (`create`); the rest as
    /// [`aws_call`](Self::aws_call).
    pub(crate) fn aws_describe<E>(what: &str, resource: &str, e: &SdkError<E>, create: &str) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        if error_code(e) == Some("ResourceNotFoundException") {
            StoreError::Backend(format!("{resource} does not exist ({create})"))
        } else {
            StoreError::aws_call(what, resource, e)
        }
    }

    /// Maps the error of a SQLite statement on the file at `path` that concerned no line in
    /// particular.
    pub(crate) fn sqlite(path: &Path, e: &rusqlite::Error) -> Self {
        if is_overflow(e) {
            StoreError::Aggregate(format!("{}: {e}", path.display()))
        } else if is_transient(e) {
            StoreError::Unavailable(format!(
                "{}: {e}; retry later (another connection holds the lock, or the disk is full or read-only)",
                path.display()
            ))
        } else {
            StoreError::Backend(format!("{}: {e}", path.display()))
        }
    }

    /// Maps the SQLite error of writing the line `line_id`: its own fault when a constraint or a
    /// size limit refused it, otherwise as [`sqlite`](Self::sqlite).
    pub(crate) fn sqlite_line(path: &Path, line_id: &str, e: &rusqlite::Error) -> Self {
        if is_line_specific(e) && !is_overflow(e) {
            StoreError::Rejected {
                line_id: line_id.to_owned(),
                reason: e.to_string(),
            }
        } else {
            StoreError::sqlite(path, e)
        }
    }
}

impl From<OpenError> for StoreError {
    fn from(e: OpenError) -> Self {
        if e.is_transient() {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Backend(e.to_string())
        }
    }
}

impl From<TaskFailed> for StoreError {
    fn from(e: TaskFailed) -> Self {
        StoreError::Backend(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: std::os::raw::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn only_rejected_lines_are_not_retried() {
        assert!(StoreError::Unavailable("database is locked".into()).is_retriable());
        let rejected = StoreError::Rejected {
            line_id: "0".repeat(32),
            reason: "price has 7 decimals".into(),
        };
        assert!(!rejected.is_retriable());
        assert!(StoreError::Backend("connection reset".into()).is_retriable());
        assert!(!StoreError::Aggregate("revenue overflows".into()).is_retriable());
    }

    #[test]
    fn an_overflowing_sum_is_never_transient() {
        let path = Path::new("data/warehouse.sqlite");
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let e = conn
            .query_row(
                "SELECT SUM(x) FROM (SELECT 9223372036854775807 AS x UNION ALL SELECT 1)",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_err();
        for mapped in [
            StoreError::sqlite(path, &e),
            StoreError::sqlite_line(path, "abc", &e),
        ] {
            assert!(matches!(mapped, StoreError::Aggregate(_)), "{mapped}");
            assert!(!mapped.is_retriable());
        }
        // A rollup's CHECK (files written before sums were 128-bit) is an overflow too.
        let check = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_CHECK),
            Some("CHECK constraint failed: typeof(quantity) = 'integer'".into()),
        );
        assert!(matches!(
            StoreError::sqlite(path, &check),
            StoreError::Aggregate(_)
        ));
    }

    #[test]
    fn sqlite_errors_map_to_the_three_cases() {
        let path = Path::new("data/warehouse.sqlite");
        let busy = StoreError::sqlite(path, &sqlite_error(rusqlite::ffi::SQLITE_BUSY));
        assert!(matches!(busy, StoreError::Unavailable(_)), "{busy}");
        assert!(busy.to_string().contains("data/warehouse.sqlite"), "{busy}");
        let constraint = sqlite_error(rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL);
        assert!(matches!(
            StoreError::sqlite_line(path, "abc", &constraint),
            StoreError::Rejected { line_id, .. } if line_id == "abc"
        ));
        // Not about one line: a constraint outside a line's write is the backend's.
        assert!(matches!(
            StoreError::sqlite(path, &constraint),
            StoreError::Backend(_)
        ));
        assert!(matches!(
            StoreError::sqlite_line(path, "abc", &sqlite_error(rusqlite::ffi::SQLITE_FULL)),
            StoreError::Unavailable(_)
        ));
        let panicked = StoreError::from(TaskFailed {
            path: path.to_owned(),
            reason: "panicked".into(),
        });
        assert!(matches!(panicked, StoreError::Backend(_)) && panicked.is_retriable());
    }
}
