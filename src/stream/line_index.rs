//! The line-id index: which line ids the stream already holds, with the content and the store of
//! each, and the `Idempotency-Key`s of recent requests. Ingest consults it to tell every line new,
//! a repeat or a conflict, and claims the new lines' ids as it appends them; see
//! `docs/line-identity.md` for the rules.
//!
//! Two implementations: the embedded log claims ids in the same SQLite transaction as the append
//! (`stream::embedded`), and on AWS a DynamoDB table is written around PutRecords under a lock
//! per invoice (`stream::kinesis::line_index`).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use super::{PutRecord, PutResult, StreamError};
use crate::model::{InvoiceLine, LineId};

/// A new line's claim on its id, appended with the record that carries the line. It borrows the
/// request's parsed line: each backend copies what it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineClaim<'a> {
    /// The store that sent the line.
    pub store_id: &'a str,
    /// The line, so a later conflict can say what differs. The embedded log does not copy it
    /// into its claim (it reads the line back from the claim's record); DynamoDB keeps it in the
    /// line's item.
    pub line: &'a InvoiceLine,
}

impl<'a> LineClaim<'a> {
    pub fn new(store_id: &'a str, line: &'a InvoiceLine) -> Self {
        LineClaim { store_id, line }
    }

    pub fn line_id(&self) -> &'a LineId {
        &self.line.line_id
    }

    /// The line's invoice: with the id, the key under which the embedded log files the claim, so
    /// the claims of one invoice sit together (as in every sink).
    pub fn invoice_no(&self) -> &'a str {
        &self.line.invoice_no
    }
}

/// A line as the index looks it up: its invoice and its id. The embedded log keys its claims by
/// both (the key every sink keeps), DynamoDB by the id alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineKey<'a> {
    pub invoice_no: &'a str,
    pub line_id: &'a LineId,
}

impl<'a> LineKey<'a> {
    pub fn of(line: &'a InvoiceLine) -> Self {
        LineKey {
            invoice_no: &line.invoice_no,
            line_id: &line.line_id,
        }
    }
}

/// What the index holds for an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLine {
    pub store_id: String,
    pub line: InvoiceLine,
    /// Claimed by a request that has not yet seen its records durable: AWS tables written by
    /// versions before 2026-12-06 only (the embedded log claims and appends in one transaction,
    /// and the DynamoDB index now writes a line only once its record is durable).
    pub pending: bool,
}

impl StoredLine {
    /// # Errors
    /// The stored JSON is not a line (a damaged index entry).
    pub fn decode(store_id: String, line: &str, pending: bool) -> Result<Self, StreamError> {
        let line = serde_json::from_str(line).map_err(|e| {
            StreamError::Backend(format!("a line-id index entry cannot be read: {e}"))
        })?;
        Ok(StoredLine {
            store_id,
            line,
            pending,
        })
    }
}

/// How a line of a request relates to what the stream holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its id is not taken: it is appended.
    New,
    /// Its id is taken by the same content from the same store: nothing is written.
    Repeat,
    /// Its id is taken by other content or another store: refused, with what differs.
    Conflict(String),
}

/// Tells `line`, sent by `store_id`, against the index entry of its id (if any).
pub fn verdict(store_id: &str, line: &InvoiceLine, stored: Option<&StoredLine>) -> Verdict {
    let Some(stored) = stored else {
        return Verdict::New;
    };
    let mut differs = stored.line.differences(line);
    if stored.store_id != store_id {
        differs.insert(0, format!("store: {} -> {store_id}", stored.store_id));
    }
    if stored.line.invoice_no != line.invoice_no {
        differs.insert(
            0,
            format!(
                "InvoiceNo: {} -> {}",
                stored.line.invoice_no, line.invoice_no
            ),
        );
    }
    if differs.is_empty() {
        // A pending claim of the same content is an earlier attempt of this very line that was
        // never acknowledged: it is written again, so nothing unacknowledged is blocked.
        if stored.pending {
            Verdict::New
        } else {
            Verdict::Repeat
        }
    } else {
        Verdict::Conflict(differs.join(", "))
    }
}

/// The state of an `Idempotency-Key` when a request with it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// First use (or an earlier attempt that never finished and was abandoned): go ahead.
    Started,
    /// A request with this key and the same body was answered: this answer, again.
    Answered(StoredAnswer),
    /// A request with this key is still being processed.
    InFlight,
    /// The key was used with another body.
    Mismatch,
}

/// An answer kept for an `Idempotency-Key`: the HTTP status and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAnswer {
    pub status: u16,
    pub body: String,
}

/// A request with a key still marked in flight after this long is taken as abandoned (its
/// process crashed before answering) and may be taken over by a retry. Ingest answers within
/// `server.request_timeout` (seconds), so a live request is never this old.
pub const KEY_IN_FLIGHT_ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// The line-id index and the idempotency keys beside a stream.
#[async_trait]
pub trait LineIndex: Send + Sync + 'static {
    /// How ingest writes the records this index appends: JSON unless the stream is read by
    /// shopstream alone.
    fn record_format(&self) -> super::record::RecordFormat {
        super::record::RecordFormat::Json
    }

    /// Whether ingest may append a request's lines without looking them up first: `append`
    /// refuses any taken id itself ([`StreamError::LinesTaken`]), about as cheaply as `lookup`
    /// finds it, so the look-up is made only for a request it refused (a retry, a repeat).
    /// Lines not sent before, nearly all of them, then cost one pass over the index instead of
    /// two. (The Kinesis index looks up under its invoice locks too, but a refused append has
    /// taken and given back a lock per invoice: there the look-up first is cheaper for repeats.)
    fn optimistic_append(&self) -> bool {
        false
    }

    /// The entries of those of `lines` whose ids are taken.
    async fn lookup(
        &self,
        lines: &[LineKey<'_>],
    ) -> Result<HashMap<LineId, StoredLine>, StreamError>;

    /// Appends `records`, claiming `claims[i]` (the new lines of `records[i]`) as they become
    /// durable.
    ///
    /// # Errors
    /// [`StreamError::LinesTaken`] when another request claimed one of the ids since `lookup`:
    /// nothing of this call is appended, and the caller looks the lines up again.
    async fn append(
        &self,
        records: Vec<PutRecord>,
        claims: Vec<Vec<LineClaim<'_>>>,
    ) -> Result<Vec<PutResult>, StreamError>;

    /// Begins a request with `key` from `store_id` whose body hashes to `fingerprint`.
    async fn begin_key(
        &self,
        store_id: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<KeyState, StreamError>;

    /// Keeps `answer` for the key begun with [`begin_key`](Self::begin_key).
    async fn finish_key(
        &self,
        store_id: &str,
        key: &str,
        answer: &StoredAnswer,
    ) -> Result<(), StreamError>;

    /// Forgets a key whose request failed without a lasting answer (busy, invalid), so a retry
    /// runs again.
    async fn abandon_key(&self, store_id: &str, key: &str) -> Result<(), StreamError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use rust_decimal::Decimal;

    fn line(quantity: i64) -> InvoiceLine {
        InvoiceLine::new(
            "536365".into(),
            "85123A".into(),
            None,
            quantity,
            NaiveDate::from_ymd_opt(2010, 12, 1)
                .unwrap()
                .and_hms_opt(8, 26, 0)
                .unwrap(),
            Decimal::new(255, 2),
            None,
            "United Kingdom".into(),
            Some(1),
            0,
        )
    }

    fn stored(store: &str, quantity: i64, pending: bool) -> StoredLine {
        StoredLine {
            store_id: store.into(),
            line: line(quantity),
            pending,
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict("a", &line(6), None), Verdict::New);
        assert_eq!(
            verdict("a", &line(6), Some(&stored("a", 6, false))),
            Verdict::Repeat
        );
        assert_eq!(
            verdict("a", &line(6), Some(&stored("a", 6, true))),
            Verdict::New
        );
        assert_eq!(
            verdict("a", &line(4), Some(&stored("a", 6, false))),
            Verdict::Conflict("Quantity: 6 -> 4".into())
        );
        assert_eq!(
            verdict("b", &line(6), Some(&stored("a", 6, true))),
            Verdict::Conflict("store: a -> b".into())
        );
    }
}
