//! What ingest decides about each line's identity (docs/line-identity.md): new lines are appended
//! with their ids claimed, repeats are reported as duplicates and written nowhere, conflicts are
//! refused with what differs; and requests with an `Idempotency-Key` are answered once.

use actix_web::http::header::HeaderName;
use actix_web::HttpRequest;
use serde::Serialize;
use std::collections::HashMap;

use super::error::{ApiError, Rejection};
use super::AppState;
use crate::model::{InvoiceLine, LineId, LineOrigin, LinePosition, Parsed};
use crate::stream::line_index::{verdict, LineClaim, LineKey, Verdict};
use crate::stream::record;

/// How many times an append is tried again when another request claimed some of its ids between
/// the look-up and the append (each try looks the lines up again, so it converges).
const MAX_CLAIM_ATTEMPTS: usize = 5;

/// The longest `Idempotency-Key` taken, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A line recognised as already stored, by its place in the request.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DuplicateAt {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<u64>,
}

impl From<LinePosition> for DuplicateAt {
    fn from(p: LinePosition) -> Self {
        match p {
            LinePosition::Index(i) => DuplicateAt {
                index: Some(i),
                row: None,
            },
            LinePosition::Row(r) => DuplicateAt {
                index: None,
                row: Some(r),
            },
        }
    }
}

/// The `duplicates` of an answer: lines already stored (or sent twice in the request), written
/// nowhere again.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Duplicates {
    pub count: usize,
    pub lines: Vec<DuplicateAt>,
}

/// What happened to the parsed lines of a request.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Lines appended now (or that would be, on a dry run).
    pub accepted: usize,
    /// The ids of the lines that were not refused, in the order sent.
    pub line_ids: Vec<LineId>,
    pub duplicates: Duplicates,
    /// Conflicting lines, refused.
    pub conflicts: Vec<Rejection>,
}

/// Sorts the lines of `parsed` into new, repeats and conflicts, and appends the new ones with
/// their ids claimed (unless `dry_run`).
///
/// # Errors
/// [`ApiError::Conflict`] when a line conflicts and the request is `atomic`, or every line
/// conflicts; the errors of the append otherwise.
pub(crate) async fn append_new_lines(
    state: &AppState,
    store: &str,
    parsed: &Parsed,
    atomic: bool,
    dry_run: bool,
) -> Result<Outcome, ApiError> {
    let keys: Vec<LineKey<'_>> = parsed.lines.iter().map(LineKey::of).collect();
    // Where the index's append refuses taken ids itself, the first try appends without a
    // look-up (every line taken as new); a refused append looks the lines up and sorts them.
    let mut look_up = dry_run || !state.line_index.optimistic_append();
    let tries = MAX_CLAIM_ATTEMPTS + usize::from(!look_up);
    for _ in 0..tries {
        let stored = if look_up {
            state
                .line_index
                .lookup(&keys)
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?
        } else {
            HashMap::new()
        };
        look_up = true;
        let mut outcome = Outcome::default();
        let mut new = Vec::new();
        // The first line of the request with each id, for a line sent twice in one request.
        let mut first: HashMap<&LineId, usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(parsed.lines.len(), Default::default());
        for (i, (line, origin)) in parsed.lines.iter().zip(&parsed.origins).enumerate() {
            let seen = match first.get(&line.line_id) {
                Some(&j) => verdict(store, line, Some(&stored_in_request(store, parsed, j))),
                None => verdict(store, line, stored.get(&line.line_id)),
            };
            first.entry(&line.line_id).or_insert(i);
            match seen {
                Verdict::New => {
                    new.push(i);
                    outcome.line_ids.push(line.line_id.clone());
                }
                Verdict::Repeat => {
                    outcome.duplicates.count += 1;
                    outcome.duplicates.lines.push(origin.position.into());
                    outcome.line_ids.push(line.line_id.clone());
                }
                Verdict::Conflict(differs) => {
                    outcome
                        .conflicts
                        .push(conflict(&line.invoice_no, origin, &differs))
                }
            }
        }
        if !outcome.conflicts.is_empty() && (atomic || outcome.conflicts.len() == keys.len()) {
            let message = if atomic {
                format!(
                    "{} of {} lines conflict with lines already stored and atomic=true: nothing was written",
                    outcome.conflicts.len(),
                    keys.len()
                )
            } else {
                format!(
                    "all {} lines conflict with lines already stored: nothing was written",
                    keys.len()
                )
            };
            return Err(ApiError::Conflict {
                message,
                rejected: outcome.conflicts,
            });
        }
        outcome.accepted = new.len();
        if dry_run || new.is_empty() {
            return Ok(outcome);
        }
        // The new lines, borrowed from the request: the records encode them and the claims point
        // at them, so no line is copied.
        let lines: Vec<&InvoiceLine> = new.iter().map(|&i| &parsed.lines[i]).collect();
        let encoded = record::encode_indexed(state.line_index.record_format(), store, &lines)
            .map_err(|e| ApiError::BadInput(e.to_string()))?;
        let mut records = Vec::with_capacity(encoded.len());
        let mut claims = Vec::with_capacity(encoded.len());
        for (record, indexes) in encoded {
            records.push(record);
            claims.push(
                indexes
                    .iter()
                    .map(|&i| LineClaim::new(store, lines[i]))
                    .collect::<Vec<_>>(),
            );
        }
        if state.append(records, claims).await? {
            return Ok(outcome);
        }
    }
    Err(ApiError::Busy {
        reason: format!(
            "other requests kept claiming the same line ids ({MAX_CLAIM_ATTEMPTS} tries)"
        ),
        retry_after_secs: 1,
    })
}

/// Line `j` of the request as if it were stored: what a later line with its id is told against.
fn stored_in_request(
    store: &str,
    parsed: &Parsed,
    j: usize,
) -> crate::stream::line_index::StoredLine {
    crate::stream::line_index::StoredLine {
        store_id: store.to_owned(),
        line: parsed.lines[j].clone(),
        pending: false,
    }
}

fn conflict(invoice_no: &str, origin: &LineOrigin, differs: &str) -> Rejection {
    let (field, line) = match origin.line_no {
        Some(n) => (Some("LineNo"), format!("line {n}")),
        None => (None, "this line (same content)".to_owned()),
    };
    Rejection::at(
        origin.position,
        field,
        format!(
            "invoice {invoice_no} {line} is already stored and differs ({differs}); the stored line \
             is kept: send a correction as a new line (or a cancellation invoice), and another \
             store's lines under invoice or line numbers of their own"
        ),
    )
}

/// The request's `Idempotency-Key`, if it sent one.
///
/// # Errors
/// `BadInput` for an empty key, one longer than [`MAX_IDEMPOTENCY_KEY_BYTES`] or one that is not
/// visible ASCII.
pub(crate) fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req
        .headers()
        .get(HeaderName::from_static("idempotency-key"))
    else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(|k| k.trim().trim_matches('"'))
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_BYTES
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::BadInput(format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters (a UUID is a good key)"
            ))
        })?;
    Ok(Some(key.to_owned()))
}

/// What makes two requests with one key "the same request": the query, the content type and
/// encoding, and the body's bytes.
pub(crate) fn fingerprint(req: &HttpRequest, body: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"shopstream.idempotency.v1\0");
    for part in [
        req.query_string().as_bytes(),
        req.headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes()),
        req.headers()
            .get(actix_web::http::header::CONTENT_ENCODING)
            .map_or(&b""[..], |v| v.as_bytes()),
        body,
    ] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().to_hex()[..32].to_owned()
}
