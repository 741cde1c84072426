//! Which SDK failures are worth retrying, and how to print them.

use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// The same type in every SDK crate (each re-exports the smithy runtime's `SdkError`).
pub type SdkError<E> = aws_sdk_kinesis::error::SdkError<E>;

/// Error codes (of any of the four services) that mean "too busy or briefly broken, try again".
const RETRIABLE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "LimitExceededException",
    "InternalFailure",
    "InternalServerError",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "SlowDown",
    "RequestTimeout",
    "TransactionInProgressException",
];

/// Whether a service (or per-entry) error code is transient.
pub fn is_retriable_code(code: &str) -> bool {
    RETRIABLE_CODES.contains(&code)
}

/// The service's error code, when the failure came from the service.
pub fn error_code<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// Whether the call may succeed when made again: connection failures, timeouts, unreadable
/// responses and throttling or internal errors of the service. (The SDK has already retried these
/// a few times itself; this tells the caller whether to report "unavailable" or "broken".)
pub fn is_transient<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            s.err().code().is_some_and(is_retriable_code) || s.raw().status().is_server_error()
        }
        _ => false,
    }
}

/// `what` failed on `resource`, in one sentence, and whether trying again may help.
pub fn call_failure<E>(what: &str, resource: &str, e: &SdkError<E>) -> (String, bool)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    (
        format!("{what} on {resource} failed: {}", describe(e)),
        is_transient(e),
    )
}

/// The whole error chain in one line: the SDK's own `Display` says only "service error", and
/// its `DisplayErrorContext` appends the `Debug` form of the raw response, which buries the
/// reason in a screenful of headers. Each level of the chain is shown once.
pub fn describe<E: std::error::Error + 'static>(e: &E) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !text.is_empty() && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_internal_errors_are_retriable() {
        assert!(is_retriable_code("ProvisionedThroughputExceededException"));
        assert!(is_retriable_code("InternalFailure"));
        assert!(is_retriable_code("SlowDown"));
    }

    #[test]
    fn client_errors_are_not() {
        assert!(!is_retriable_code("ValidationException"));
        assert!(!is_retriable_code("ResourceNotFoundException"));
        assert!(!is_retriable_code("ConditionalCheckFailedException"));
        assert!(!is_retriable_code("AccessDeniedException"));
    }

    #[test]
    fn describe_shows_each_level_once_and_no_debug_dump() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("service error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("Stream s not found."));
        assert_eq!(describe(&e), "service error: Stream s not found.");
    }
}
