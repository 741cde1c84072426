//! The one place where errors become HTTP answers: a status code and a JSON body that tells the
//! client what happened and what to do.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::model::{LineError, LinePosition};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "missing or unknown API key: send `Authorization: Bearer <key>` with the key of your store"
    )]
    Unauthorized,
    #[error(
        "missing or unknown API key: reads need `Authorization: Bearer <key>` with a reader key (auth.readers)"
    )]
    ReaderUnauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// A store over its rate limit (`rate_limits`): 429, unlike the 503 of a busy server.
    #[error("store {store:?} is over its rate limit of {} lines a second (burst {}): these {lines} lines were not taken; retry after {retry_after_secs} s", rate.lines_per_second, rate.burst_lines)]
    RateLimited {
        store: String,
        lines: usize,
        rate: crate::config::StoreRate,
        retry_after_secs: u64,
    },
    #[error("the body is larger than {limit} bytes; split it into several requests")]
    BodyTooLarge { limit: usize },
    /// The body did not arrive whole within `server.body_timeout`.
    #[error("the request body did not arrive within {} (server.body_timeout); send the body at once after the headers, or split it into smaller requests", humantime::format_duration(*timeout))]
    BodyTimeout { timeout: std::time::Duration },
    #[error("the request has {count} lines, more than the limit of {limit}; split it into several requests")]
    TooManyLines { count: usize, limit: usize },
    #[error("{0}")]
    BadInput(String),
    /// A `Content-Type` the ingest cannot parse.
    #[error("unsupported Content-Type `{media_type}`: send {accepted}, or no Content-Type to have the body sniffed")]
    UnsupportedMediaType {
        media_type: String,
        accepted: &'static str,
    },
    /// A `Content-Encoding` the ingest cannot decode.
    #[error("unsupported Content-Encoding `{encoding}`: send {accepted}")]
    UnsupportedEncoding {
        encoding: String,
        accepted: &'static str,
    },
    #[error("{message}")]
    Rejected {
        message: String,
        rejected: Vec<Rejection>,
    },
    /// Lines whose ids are taken by other content or another store (docs/line-identity.md): the
    /// request was atomic, or every line conflicts. Nothing was written.
    #[error("{message}")]
    Conflict {
        message: String,
        rejected: Vec<Rejection>,
    },
    /// A request with the same `Idempotency-Key` is still being processed.
    #[error("a request with Idempotency-Key `{key}` is still being processed; retry once it is answered")]
    KeyInFlight { key: String },
    /// The `Idempotency-Key` was used before with another body.
    #[error("Idempotency-Key `{key}` was used before with a different body; a key names one request: send a new key for new lines")]
    KeyReused { key: String },
    #[error("{what} not found")]
    NotFound { what: String },
    /// A route's path with a method it does not take; `allowed` is the one it takes (`get`).
    #[error("this path takes {} only (see /openapi.json)", allowed.to_ascii_uppercase())]
    MethodNotAllowed { allowed: &'static str },
    #[error("shopstream is busy ({reason}); retry after {retry_after_secs} s")]
    Busy {
        reason: String,
        retry_after_secs: u64,
    },
    #[error("a backend is unavailable: {0}; retry later (line ids make retries safe)")]
    Unavailable(String),
    /// A store answered with a fault that trying again cannot fix (a sum out of range): no
    /// `Retry-After`, and 500 rather than 503, so that clients and probes do not retry it.
    #[error("{0}; retrying will not help: report it to the operator")]
    StoreFault(String),
}

/// A store's failure as the API answers it: [`StoreError::Aggregate`] is never transient, every
/// other failure is answered as unavailable (retry later).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Aggregate(_) => ApiError::StoreFault(e.to_string()),
            e => ApiError::Unavailable(e.to_string()),
        }
    }
}

/// One rejected line in an answer.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// 0-based index of the line in a JSON array or NDJSON body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Row number of a CSV body as an editor shows it (the header is row 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<u64>,
    pub field: Option<&'static str>,
    pub value: Option<String>,
    pub reason: String,
}

impl Rejection {
    /// A rejection of the line at `position` for `reason` (not of one field).
    pub fn at(position: LinePosition, field: Option<&'static str>, reason: String) -> Self {
        let (index, row) = match position {
            LinePosition::Index(i) => (Some(i), None),
            LinePosition::Row(r) => (None, Some(r)),
        };
        Rejection {
            index,
            row,
            field,
            value: None,
            reason,
        }
    }
}

impl From<&LineError> for Rejection {
    fn from(e: &LineError) -> Self {
        let (index, row) = match e.position {
            LinePosition::Index(i) => (Some(i), None),
            LinePosition::Row(r) => (None, Some(r)),
        };
        Rejection {
            index,
            row,
            field: e.field,
            value: e.value.clone(),
            reason: e.reason.clone(),
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected: Option<&'a [Rejection]>,
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized | ApiError::ReaderUnauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::TooManyLines { .. } => "too_many_lines",
            ApiError::BadInput(_) => "bad_input",
            ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
            ApiError::UnsupportedEncoding { .. } => "unsupported_encoding",
            ApiError::Rejected { .. } => "rejected",
            ApiError::Conflict { .. } => "conflict",
            ApiError::KeyInFlight { .. } => "idempotency_key_in_flight",
            ApiError::KeyReused { .. } => "idempotency_key_reused",
            ApiError::NotFound { .. } => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Busy { .. } => "busy",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::StoreFault(_) => "store_fault",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized | ApiError::ReaderUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyTooLarge { .. } | ApiError::TooManyLines { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::BadInput(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType { .. } | ApiError::UnsupportedEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::Rejected { .. } | ApiError::KeyReused { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Conflict { .. } | ApiError::KeyInFlight { .. } => StatusCode::CONFLICT,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Busy { .. } | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StoreFault(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Busy {
                retry_after_secs, ..
            }
            | ApiError::RateLimited {
                retry_after_secs, ..
            } => {
                response.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::Unavailable(_) => {
                response.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::Unauthorized | ApiError::ReaderUnauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            // RFC 9110 section 15.5.6: a 405 names the methods the path takes.
            ApiError::MethodNotAllowed { allowed } => {
                response.insert_header((header::ALLOW, allowed.to_ascii_uppercase()));
            }
            // RFC 7694: a 415 for a content coding says which codings are accepted.
            ApiError::UnsupportedEncoding { .. } => {
                response.insert_header((header::ACCEPT_ENCODING, "gzip, identity"));
            }
            _ => {}
        }
        let rejected = match self {
            ApiError::Rejected { rejected, .. } | ApiError::Conflict { rejected, .. } => {
                Some(rejected.as_slice())
            }
            _ => None,
        };
        response.json(Body {
            error: self.code(),
            message: self.to_string(),
            rejected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sum_out_of_range_is_a_500_without_retry_after() {
        let fault = ApiError::from(StoreError::Aggregate("revenue overflows".into()));
        assert_eq!(fault.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(fault
            .error_response()
            .headers()
            .get(header::RETRY_AFTER)
            .is_none());
        let busy = ApiError::from(StoreError::Unavailable("database is locked".into()));
        assert_eq!(busy.status_code(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
