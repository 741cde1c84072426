//! Which SQLite errors pass on their own and which one row causes: the classification every
//! embedded backend maps into its own error type.

use rusqlite::ffi::ErrorCode;

/// True for errors that may go away on their own: another connection holds the lock, or the disk
/// is full, read-only or failing. Retrying later is the right answer to these.
pub(crate) fn is_transient(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::ReadOnly
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
                | ErrorCode::FileLockingProtocolFailed
        )
    )
}

/// True for errors caused by the values of one row (a constraint, a value too big), which retrying
/// cannot fix.
pub(crate) fn is_line_specific(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch)
    ) || matches!(e, rusqlite::Error::ToSqlConversionFailure(_))
}

/// True for an integer overflow of a sum: SQLite's `SUM()` ("integer overflow"), or the `CHECK
/// (typeof(...) = 'integer')` with which rollups of files written before sums were 128-bit catch
/// one. Retrying gives the same result.
pub(crate) fn is_overflow(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(message)) => {
            message.contains("integer overflow")
                || (message.contains("CHECK constraint failed") && message.contains("= 'integer'"))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errors() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        );
        let constraint = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_NOTNULL),
            None,
        );
        assert!(is_transient(&busy) && is_transient(&full));
        assert!(!is_transient(&constraint) && is_line_specific(&constraint));
        assert!(!is_line_specific(&busy));
        assert!(!is_transient(&rusqlite::Error::QueryReturnedNoRows));
    }
}
