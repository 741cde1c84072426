//! `POST /v1/invoices`: stores send invoice lines; the answer comes once the accepted lines are
//! durable in the stream.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::error::{ApiError, Rejection};
use super::line_identity::{append_new_lines, fingerprint, idempotency_key, Duplicates};
use super::AppState;
use crate::model::{parse_body, DateOrder, LineId, ParseOptions, RequestKey};
use crate::stream::line_index::{KeyState, LineClaim, StoredAnswer};
use crate::stream::{PutRecord, StreamError};

super::route_group! {
    post "/v1/invoices" => ingest,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IngestQuery {
    /// All or nothing: one bad line rejects the request and nothing is written.
    #[serde(default)]
    atomic: bool,
    /// Day/month order of slash dates in this request (default: `server.date_order`).
    #[serde(default)]
    date_order: Option<DateOrder>,
    /// Validate only: answer what would be accepted and rejected, write nothing.
    #[serde(default)]
    dry_run: bool,
}

#[derive(Debug, Serialize)]
struct Accepted {
    /// Lines new to shopstream, written now.
    accepted: usize,
    /// The ids of the lines that were not rejected (new and duplicates), in the order sent.
    line_ids: Vec<LineId>,
    /// Lines already stored (or sent twice in this request): written nowhere again.
    duplicates: Duplicates,
    rejected: Vec<Rejection>,
}

/// Bodies above this size are parsed on a blocking thread so one big upload does not hold up the
/// other requests of its worker.
const PARSE_INLINE_MAX_BYTES: usize = 256 * 1024;

async fn ingest(
    req: HttpRequest,
    payload: web::Payload,
    query: web::Query<IngestQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let store = state.authenticate(&req)?;
    // The headers are checked before a permit is taken: a body we cannot read costs nothing.
    let content_type = media_type(&req)?;
    let encoding = content_encoding(&req)?;
    let key = idempotency_key(&req)?;
    // The body arrives before the request takes a permit, within `server.body_timeout` and the
    // store's share of requests: a client that trickles its body holds up no other store.
    let _slot = state.bodies.enter(&store)?;
    let held = state.bodies.read(&req, payload).await?;
    let body = held.bytes.clone();
    // Admission: a bounded number of requests is parsed and appended at once; the rest are told
    // to come back, so memory stays bounded however hard stores push.
    let _permit = state.admit()?;
    if !query.dry_run {
        state.check_backpressure()?;
    }
    let Some(key) = key.filter(|_| !query.dry_run) else {
        let answer =
            ingest_body(&state, &store, None, body, content_type, encoding, &query).await?;
        return Ok(json_answer(200, answer));
    };
    // A request with an Idempotency-Key is answered once: a retry gets the first answer again.
    let keys = &state.line_index;
    let unavailable = |e: StreamError| ApiError::Unavailable(e.to_string());
    match keys
        .begin_key(&store, &key, &fingerprint(&req, &body))
        .await
        .map_err(unavailable)?
    {
        KeyState::Started => {}
        KeyState::Answered(answer) => {
            let mut response = json_answer(answer.status, answer.body);
            response.headers_mut().insert(
                header::HeaderName::from_static("idempotent-replayed"),
                header::HeaderValue::from_static("true"),
            );
            return Ok(response);
        }
        KeyState::InFlight => return Err(ApiError::KeyInFlight { key }),
        KeyState::Mismatch => return Err(ApiError::KeyReused { key }),
    }
    let answer = ingest_body(
        &state,
        &store,
        Some(&key),
        body,
        content_type,
        encoding,
        &query,
    )
    .await;
    match &answer {
        Ok(body) => {
            let stored = StoredAnswer {
                status: 200,
                body: body.clone(),
            };
            keys.finish_key(&store, &key, &stored)
                .await
                .map_err(unavailable)?;
        }
        // Nothing lasting was decided (busy, invalid, conflicting): the key may be used again.
        Err(_) => {
            if let Err(e) = keys.abandon_key(&store, &key).await {
                tracing::warn!(error = %e, "An Idempotency-Key of a failed request could not be released.");
            }
        }
    }
    answer.map(|body| json_answer(200, body))
}

fn json_answer(status: u16, body: String) -> HttpResponse {
    HttpResponse::build(
        actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::OK),
    )
    .content_type("application/json")
    .body(body)
}

/// Parses `body` and appends its new lines. Returns the JSON of the 200 answer, kept as a string
/// so that a request with an `Idempotency-Key` can store it.
async fn ingest_body(
    state: &AppState,
    store: &str,
    key: Option<&str>,
    body: Bytes,
    content_type: Option<&'static str>,
    encoding: Encoding,
    query: &IngestQuery,
) -> Result<String, ApiError> {
    let limit = state.limits.max_body_bytes;
    let opts = ParseOptions {
        date_order: query.date_order.unwrap_or(state.limits.date_order),
        request_key: key.map(|k| RequestKey::new(store, k)),
        ..ParseOptions::default()
    };
    // A small gzip body can inflate to `limit` bytes, so it is decoded off the worker too.
    let big = body.len() > PARSE_INLINE_MAX_BYTES || encoding == Encoding::Gzip;
    let parse = move || {
        let body = match encoding {
            Encoding::Identity => body,
            Encoding::Gzip => gunzip(&body, limit)?,
        };
        parse_body(&body, content_type, &opts).map_err(|e| ApiError::BadInput(e.to_string()))
    };
    let parsed = if big {
        web::block(parse)
            .await
            .map_err(|e| ApiError::Unavailable(format!("parser task failed: {e}")))?
    } else {
        parse()
    }?;

    let count = parsed.lines.len() + parsed.errors.len();
    if count > state.limits.max_lines_per_request {
        return Err(ApiError::TooManyLines {
            count,
            limit: state.limits.max_lines_per_request,
        });
    }
    for e in &parsed.errors {
        crate::metrics::LINES_REJECTED
            .with_label_values(&[store, e.field.unwrap_or("line")])
            .inc();
    }
    let mut rejected: Vec<Rejection> = parsed.errors.iter().map(Rejection::from).collect();
    if !rejected.is_empty() && (query.atomic || parsed.lines.is_empty()) {
        let message = if query.atomic {
            format!(
                "{} of {count} lines are invalid and atomic=true: nothing was written; fix them and send the request again",
                rejected.len()
            )
        } else {
            format!("all {count} lines are invalid: nothing was written")
        };
        return Err(ApiError::Rejected { message, rejected });
    }
    if parsed.lines.is_empty() {
        return Err(ApiError::BadInput(
            "the body holds no invoice lines: send a JSON object, a JSON array, NDJSON or CSV with a header row".into(),
        ));
    }

    if !query.dry_run {
        // Counted in valid lines, before anything is written: a refused request takes nothing.
        state.rate_limits.check(store, parsed.lines.len())?;
    }
    let outcome = append_new_lines(state, store, &parsed, query.atomic, query.dry_run).await?;
    if !query.dry_run {
        crate::metrics::LINES_ACCEPTED
            .with_label_values(&[store])
            .inc_by(outcome.accepted as u64);
    }
    for _ in &outcome.conflicts {
        crate::metrics::LINES_REJECTED
            .with_label_values(&[store, "line_id"])
            .inc();
    }
    rejected.extend(outcome.conflicts);
    serde_json::to_string(&Accepted {
        accepted: outcome.accepted,
        line_ids: outcome.line_ids,
        duplicates: outcome.duplicates,
        rejected,
    })
    .map_err(|e| ApiError::Unavailable(format!("cannot write the answer: {e}")))
}

/// The media types the ingest parses, as the 415 answer names them.
const ACCEPTED_TYPES: &str = "application/json, application/x-ndjson (or application/ndjson, application/jsonl), text/csv, or text/plain, application/octet-stream or application/x-www-form-urlencoded (sniffed)";

/// The request's `Content-Type` as the parser should see it: `None` (sniff the body) when it is
/// missing or a type that says nothing about the format (`text/plain`, `application/octet-stream`,
/// and `application/x-www-form-urlencoded`, which `curl -d @lines.csv` sends unless told
/// otherwise: a real client's default, not a claim about the body), the canonical name of a JSON, NDJSON or CSV type, and 415 otherwise
/// (an `image/png` body must not be parsed as JSON). Parameters such as `charset` are ignored.
fn media_type(req: &HttpRequest) -> Result<Option<&'static str>, ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return Ok(None);
    };
    let unsupported = |media_type: String| ApiError::UnsupportedMediaType {
        media_type,
        accepted: ACCEPTED_TYPES,
    };
    let value = value
        .to_str()
        .map_err(|_| unsupported(String::from_utf8_lossy(value.as_bytes()).into_owned()))?;
    let essence = value.split(';').next().unwrap_or("").trim();
    let is = |name: &str| essence.eq_ignore_ascii_case(name);
    if essence.is_empty()
        || is("text/plain")
        || is("application/octet-stream")
        || is("application/x-www-form-urlencoded")
    {
        Ok(None)
    } else if is("application/json") {
        Ok(Some("application/json"))
    } else if is("application/x-ndjson") || is("application/ndjson") || is("application/jsonl") {
        Ok(Some("application/x-ndjson"))
    } else if is("text/csv") {
        Ok(Some("text/csv"))
    } else {
        Err(unsupported(essence.to_owned()))
    }
}

/// The `Content-Encoding`s the ingest decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
}

/// The request's `Content-Encoding`: none or `identity`, `gzip` (or `x-gzip`); anything else,
/// including a chain of codings, is a 415.
fn content_encoding(req: &HttpRequest) -> Result<Encoding, ApiError> {
    let Some(value) = req.headers().get(header::CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let value = String::from_utf8_lossy(value.as_bytes());
    let coding = value.trim();
    if coding.is_empty() || coding.eq_ignore_ascii_case("identity") {
        Ok(Encoding::Identity)
    } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
        Ok(Encoding::Gzip)
    } else {
        Err(ApiError::UnsupportedEncoding {
            encoding: coding.to_owned(),
            accepted: "gzip, or no Content-Encoding (identity)",
        })
    }
}

/// Decompresses a gzip body, stopping as soon as the output passes `limit`: the limit holds for
/// what is parsed, so a small bomb that inflates to gigabytes costs at most `limit` + 1 bytes.
fn gunzip(body: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    use std::io::Read;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ApiError::BadInput(format!("the gzip body cannot be decoded: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(Bytes::from(out))
}

impl AppState {
    /// Appends records durably, claiming the line ids of `claims` (per record); a saturated
    /// stream is a 503 with Retry-After, so stores slow down instead of shopstream buffering in
    /// memory. `Ok(false)` when another request claimed some of the ids first: nothing was
    /// written, and the caller sorts its lines again.
    pub async fn append(
        &self,
        records: Vec<PutRecord>,
        claims: Vec<Vec<LineClaim<'_>>>,
    ) -> Result<bool, ApiError> {
        let started = Instant::now();
        let depth = self.inflight_appends.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::MAILBOX_DEPTH
            .with_label_values(&["stream_append"])
            .set(depth as i64);
        let result = tokio::time::timeout(
            self.limits.request_timeout,
            self.line_index.append(records, claims),
        )
        .await;
        self.appends.observe(&result);
        let depth = self.inflight_appends.fetch_sub(1, Ordering::Relaxed) - 1;
        crate::metrics::MAILBOX_DEPTH
            .with_label_values(&["stream_append"])
            .set(depth as i64);
        match result {
            Err(_) => Err(ApiError::Busy {
                reason: format!(
                    "the stream did not confirm the write within {:?}",
                    self.limits.request_timeout
                ),
                retry_after_secs: 1,
            }),
            Ok(Err(StreamError::LinesTaken(_))) => Ok(false),
            Ok(Err(StreamError::Saturated(reason))) => Err(ApiError::Busy {
                reason,
                retry_after_secs: 1,
            }),
            Ok(Err(StreamError::RecordTooLarge { size, max })) => Err(ApiError::BadInput(format!(
                "one line alone makes a stream record of {size} bytes, over the limit of {max}: shorten its description"
            ))),
            Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
            Ok(Ok(results)) => {
                for r in &results {
                    self.progress.record_latest(&r.shard_id, &r.sequence_number);
                }
                tracing::debug!(
                    records = results.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "Appended to the stream."
                );
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gunzip_holds_the_decompressed_size_to_the_limit() {
        let data = vec![b'x'; 1000];
        assert_eq!(gunzip(&gzip(&data), 1000).unwrap().len(), 1000);
        assert!(matches!(
            gunzip(&gzip(&data), 999),
            Err(ApiError::BodyTooLarge { limit: 999 })
        ));
        assert!(matches!(
            gunzip(b"not gzip", 1000),
            Err(ApiError::BadInput(_))
        ));
    }
}
