//! The [`LineIndex`] of the Kinesis stream: a DynamoDB table (`stream.kinesis.line_index_table`,
//! hash key `Id`) with conditional writes, since Kinesis itself cannot refuse a record.
//!
//! - A line id is item `line#<id>` with `Store`, `Line` (the line as JSON), `State`
//!   (`committed`; `pending` in tables written by versions before 2026-12-06, which claimed
//!   each line with its own conditional PutItem), `Token` (the append that wrote it),
//!   `LandedShard`, `LandedSeq` (where its record landed) and `ExpiresAt` (the table's TTL).
//! - An append locks the invoices of its lines first: item `lock#<invoice>` with `Token` and
//!   `LockedUntil`, one conditional PutItem each (free, or its lock expired). Under the locks it
//!   looks its ids up again (a consistent BatchGetItem of 100): an id another request stored
//!   since the caller's look-up makes the append write nothing (`LinesTaken`, and ingest sorts
//!   again). Then PutRecords, then the lines' items in BatchWriteItems of 25, then the locks are
//!   deleted. Every line id belongs to one invoice, so two appends of one id never run at once.
//!   A lock lasts `server.request_timeout` plus a margin: ingest drops an append that takes
//!   longer, so an older lock belongs to an append that is gone (a crash, a timeout). A crash or
//!   timeout after PutRecords leaves its lines unwritten here: a retry of them appends them again
//!   (the client was never answered, so nothing acknowledged is lost), and the sinks keep each
//!   line once by its id.
//! - Calls per append: one PutItem and one DeleteItem per invoice, one BatchGetItem per 100 lines
//!   and one BatchWriteItem per 25, where one conditional PutItem and one UpdateItem per line
//!   were made before (about 0.15 calls a line instead of 2 with invoices of 20 lines).
//!   TransactWriteItems would make the claims in fewer calls still, but moto, the local server
//!   the tests and benchmarks run against, deep-copies the whole table for every item of a
//!   transaction.
//! - An `Idempotency-Key` is item `key#<store length>#<store>#<key>` with `Fingerprint`,
//!   `StartedAt`, and once answered `Status` and `Answer`. A committed line also has `LandedShard`
//!   and `LandedSeq`: where its record landed.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::lease_table::is_conditional_failure;
use crate::aws::describe;
use crate::model::LineId;
use crate::stream::line_index::{
    verdict, KeyState, LineClaim, LineIndex, LineKey, StoredAnswer, StoredLine, Verdict,
    KEY_IN_FLIGHT_ABANDONED_AFTER,
};
use crate::stream::{PutRecord, PutResult, Stream, StreamError};

/// BatchGetItem takes at most 100 keys.
const BATCH_GET_MAX: usize = 100;
/// Calls of one append in flight at once.
const CONCURRENCY: usize = 16;
/// BatchWriteItem takes at most 25 requests.
const BATCH_WRITE_MAX: usize = 25;
/// Attempts at writing the items a BatchWriteItem left unprocessed (throttled).
const UNPROCESSED_ATTEMPTS: u32 = 5;
/// Added to the lock's life for clocks of instances that disagree.
const LOCK_CLOCK_MARGIN: Duration = Duration::from_secs(2);

type Item = HashMap<String, AttributeValue>;

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn line_key(id: &LineId) -> String {
    format!("line#{id}")
}

fn lock_key(invoice_no: &str) -> String {
    format!("lock#{invoice_no}")
}

fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn request_key(store: &str, key: &str) -> String {
    format!("key#{}#{store}#{key}", store.len())
}

/// The line-id index and idempotency keys of the Kinesis stream.
pub struct DynamoLineIndex {
    client: aws_sdk_dynamodb::Client,
    table: String,
    stream: Arc<dyn Stream>,
    /// How long entries are kept (the TTL written on every item).
    retention: Duration,
    /// How long an invoice lock holds: longer than ingest lets an append run.
    lock_life: Duration,
}

impl DynamoLineIndex {
    /// `append_timeout`: how long ingest lets an append run before dropping it
    /// (`server.request_timeout`); an invoice lock lasts that long plus a margin.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        stream: Arc<dyn Stream>,
        retention: Duration,
        append_timeout: Duration,
    ) -> Self {
        DynamoLineIndex {
            client,
            table: table.into(),
            stream,
            retention,
            lock_life: append_timeout + LOCK_CLOCK_MARGIN,
        }
    }

    fn error(&self, what: &str, e: impl std::error::Error + 'static) -> StreamError {
        StreamError::Backend(format!(
            "{what} on the line-id table {} failed: {}; run `shopstream aws init` if it does not exist",
            self.table,
            describe(&e)
        ))
    }

    fn expires_at(&self) -> AttributeValue {
        n(chrono::Utc::now().timestamp() + self.retention.as_secs() as i64)
    }

    /// Locks `invoice` for `token`: `Ok(false)` when another append holds it.
    async fn lock(&self, invoice: &str, token: &str) -> Result<bool, StreamError> {
        crate::metrics::aws_call("dynamodb", "PutItem");
        let now = now_millis();
        let locked_until = now + i64::try_from(self.lock_life.as_millis()).unwrap_or(i64::MAX);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("Id", s(lock_key(invoice)))
            .item("Token", s(token))
            .item("LockedUntil", n(locked_until))
            .item("ExpiresAt", self.expires_at())
            .condition_expression("attribute_not_exists(Id) OR LockedUntil < :now")
            .expression_attribute_values(":now", n(now));
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(self.error("PutItem", e)),
        }
    }

    /// Locks every invoice of `invoices`: the ones locked, and the first error or the invoices
    /// another append holds.
    async fn lock_all(
        &self,
        invoices: Vec<String>,
        token: &str,
    ) -> (Vec<String>, Result<(), LockFailure>) {
        let results: Vec<(String, Result<bool, StreamError>)> = futures::stream::iter(invoices)
            .map(|invoice| async move {
                let r = self.lock(&invoice, token).await;
                (invoice, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut mine = Vec::new();
        let mut busy = Vec::new();
        let mut error = None;
        for (invoice, r) in results {
            match r {
                Ok(true) => mine.push(invoice),
                Ok(false) => busy.push(invoice),
                Err(e) => error = error.or(Some(e)),
            }
        }
        let outcome = match (error, busy.is_empty()) {
            (Some(e), _) => Err(LockFailure::Error(e)),
            (None, false) => Err(LockFailure::Busy(busy)),
            (None, true) => Ok(()),
        };
        (mine, outcome)
    }

    /// Deletes the locks `token` holds on `invoices`; a lock that expired and was taken since
    /// is left to its new holder.
    async fn unlock(&self, invoices: Vec<String>, token: &str) {
        let results: Vec<_> = futures::stream::iter(invoices)
            .map(|invoice| {
                crate::metrics::aws_call("dynamodb", "DeleteItem");
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key("Id", s(lock_key(&invoice)))
                    .condition_expression("#tok = :token")
                    .expression_attribute_names("#tok", "Token")
                    .expression_attribute_values(":token", s(token))
                    .send()
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for r in results {
            if let Err(e) = r {
                if !is_conditional_failure(&e) {
                    tracing::warn!(error = %describe(&e), "An invoice lock could not be deleted; it expires by itself.");
                }
            }
        }
    }

    /// The ids of `claims` that the index holds by now and that this append may not write:
    /// stored since the caller looked them up (a pending claim of the same store and content, an
    /// unacknowledged attempt of the same line, may be written again).
    async fn stored_meanwhile(
        &self,
        claims: &[&LineClaim<'_>],
    ) -> Result<Vec<LineId>, StreamError> {
        let keys: Vec<LineKey<'_>> = claims.iter().map(|c| LineKey::of(c.line)).collect();
        let stored = self.lookup(&keys).await?;
        let mut taken = Vec::new();
        for c in claims {
            let Some(entry) = stored.get(c.line_id()) else {
                continue;
            };
            if verdict(c.store_id, c.line, Some(entry)) != Verdict::New {
                taken.push(c.line_id().clone());
            }
        }
        Ok(taken)
    }

    /// Writes the items of the lines of `claims`, committed where their records `landed`, in
    /// BatchWriteItems of 25. A write that fails is logged: the records are durable, and a line
    /// the index does not hold is only appended again by a retry (the sinks keep it once).
    async fn commit(&self, claims: &[Vec<LineClaim<'_>>], landed: &[PutResult], token: &str) {
        // BatchWriteItem refuses a key twice in one request: the last claim of an id is written.
        let mut items: HashMap<&LineId, Item> = HashMap::new();
        for (claims, at) in claims.iter().zip(landed) {
            for c in claims {
                let item = HashMap::from([
                    ("Id".to_owned(), s(line_key(c.line_id()))),
                    ("Store".to_owned(), s(c.store_id)),
                    (
                        "Line".to_owned(),
                        s(serde_json::to_string(&c.line).expect("a line serializes")),
                    ),
                    ("State".to_owned(), s("committed")),
                    ("Token".to_owned(), s(token)),
                    ("LandedShard".to_owned(), s(&at.shard_id.0)),
                    ("LandedSeq".to_owned(), s(at.sequence_number.as_str())),
                    ("ExpiresAt".to_owned(), self.expires_at()),
                ]);
                items.insert(c.line_id(), item);
            }
        }
        let requests: Vec<WriteRequest> = items
            .into_values()
            .filter_map(|item| {
                let put = PutRequest::builder().set_item(Some(item)).build().ok()?;
                Some(WriteRequest::builder().put_request(put).build())
            })
            .collect();
        let batches: Vec<Vec<WriteRequest>> = requests
            .chunks(BATCH_WRITE_MAX)
            .map(<[_]>::to_vec)
            .collect();
        let results: Vec<Result<(), String>> = futures::stream::iter(batches)
            .map(|batch| self.batch_write(batch))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        for r in results {
            if let Err(e) = r {
                tracing::warn!(error = %e, "Line ids could not be written to the line-id table; a retry of those lines appends them again.");
            }
        }
    }

    /// One BatchWriteItem, resending the items it leaves unprocessed a few times.
    async fn batch_write(&self, mut batch: Vec<WriteRequest>) -> Result<(), String> {
        for attempt in 1..=UNPROCESSED_ATTEMPTS {
            crate::metrics::aws_call("dynamodb", "BatchWriteItem");
            crate::metrics::aws_billed("dynamodb_items_written", batch.len());
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, batch)
                .send()
                .await
                .map_err(|e| format!("BatchWriteItem on {}: {}", self.table, describe(&e)))?;
            batch = out
                .unprocessed_items()
                .and_then(|u| u.get(&self.table))
                .cloned()
                .unwrap_or_default();
            if batch.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
        }
        Err(format!(
            "{} items still unprocessed by {} after {UNPROCESSED_ATTEMPTS} attempts",
            batch.len(),
            self.table
        ))
    }
}

/// Why an append could not lock its invoices.
enum LockFailure {
    /// Other appends hold these invoices.
    Busy(Vec<String>),
    Error(StreamError),
}

#[async_trait]
impl LineIndex for DynamoLineIndex {
    async fn lookup(
        &self,
        lines: &[LineKey<'_>],
    ) -> Result<HashMap<LineId, StoredLine>, StreamError> {
        let mut out = HashMap::new();
        for chunk in lines.chunks(BATCH_GET_MAX) {
            let mut unique: Vec<&LineId> = chunk.iter().map(|l| l.line_id).collect();
            unique.sort();
            unique.dedup();
            let keys = unique
                .iter()
                .map(|id| HashMap::from([("Id".to_owned(), s(line_key(id)))]))
                .collect::<Vec<_>>();
            let mut request = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StreamError::Backend(format!("BatchGetItem request: {e}")))?,
            );
            while let Some(keys) = request.take() {
                let got = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, keys)
                    .send()
                    .await
                    .map_err(|e| self.error("BatchGetItem", e))?;
                for item in got
                    .responses()
                    .and_then(|r| r.get(&self.table))
                    .into_iter()
                    .flatten()
                {
                    let (Some(id), Some(store), Some(line)) =
                        (get(item, "Id"), get(item, "Store"), get(item, "Line"))
                    else {
                        continue;
                    };
                    let Some(id) = id.strip_prefix("line#").and_then(LineId::parse) else {
                        continue;
                    };
                    let pending = get(item, "State") == Some("pending");
                    out.insert(id, StoredLine::decode(store.to_owned(), line, pending)?);
                }
                request = got
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.table))
                    .filter(|k| !k.keys().is_empty())
                    .cloned();
            }
        }
        Ok(out)
    }

    async fn append(
        &self,
        records: Vec<PutRecord>,
        claims: Vec<Vec<LineClaim<'_>>>,
    ) -> Result<Vec<PutResult>, StreamError> {
        let token = format!("{:032x}", rand::random::<u128>());
        let all: Vec<&LineClaim<'_>> = claims.iter().flatten().collect();
        let mut invoices: Vec<String> = all.iter().map(|c| c.invoice_no().to_owned()).collect();
        invoices.sort();
        invoices.dedup();
        let (locked, outcome) = self.lock_all(invoices, &token).await;
        if let Err(failure) = outcome {
            self.unlock(locked, &token).await;
            return Err(match failure {
                LockFailure::Error(e) => e,
                LockFailure::Busy(busy) => StreamError::LinesTaken(
                    all.iter()
                        .filter(|c| busy.iter().any(|b| b == c.invoice_no()))
                        .map(|c| c.line_id().clone())
                        .collect(),
                ),
            });
        }
        let taken = match self.stored_meanwhile(&all).await {
            Ok(taken) => taken,
            Err(e) => {
                self.unlock(locked, &token).await;
                return Err(e);
            }
        };
        if !taken.is_empty() {
            self.unlock(locked, &token).await;
            return Err(StreamError::LinesTaken(taken));
        }
        let results = match self.stream.put(records).await {
            Ok(results) => results,
            Err(e) => {
                self.unlock(locked, &token).await;
                return Err(e);
            }
        };
        self.commit(&claims, &results, &token).await;
        self.unlock(locked, &token).await;
        Ok(results)
    }

    async fn begin_key(
        &self,
        store_id: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<KeyState, StreamError> {
        let id = request_key(store_id, key);
        let now = chrono::Utc::now().timestamp_millis();
        let abandoned_before = now - KEY_IN_FLIGHT_ABANDONED_AFTER.as_millis() as i64;
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("Id", s(&id))
            .item("Fingerprint", s(fingerprint))
            .item("StartedAt", n(now))
            .item("ExpiresAt", self.expires_at())
            .condition_expression(
                "attribute_not_exists(Id) OR (attribute_not_exists(#status) AND StartedAt < :abandoned)",
            )
            .expression_attribute_names("#status", "Status")
            .expression_attribute_values(":abandoned", n(abandoned_before));
        match put.send().await {
            Ok(_) => return Ok(KeyState::Started),
            Err(e) if is_conditional_failure(&e) => {}
            Err(e) => return Err(self.error("PutItem", e)),
        }
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("Id", s(&id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", e))?
            .item()
            .cloned()
            .unwrap_or_default();
        let status = item
            .get("Status")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u16>().ok());
        Ok(
            match (get(&item, "Fingerprint"), status, get(&item, "Answer")) {
                (Some(f), _, _) if f != fingerprint => KeyState::Mismatch,
                (_, Some(status), Some(body)) => KeyState::Answered(StoredAnswer {
                    status,
                    body: body.to_owned(),
                }),
                _ => KeyState::InFlight,
            },
        )
    }

    async fn finish_key(
        &self,
        store_id: &str,
        key: &str,
        answer: &StoredAnswer,
    ) -> Result<(), StreamError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("Id", s(request_key(store_id, key)))
            .update_expression("SET #status = :status, Answer = :answer")
            .expression_attribute_names("#status", "Status")
            .expression_attribute_values(":status", n(i64::from(answer.status)))
            .expression_attribute_values(":answer", s(&answer.body))
            .send()
            .await
            .map_err(|e| self.error("UpdateItem", e))?;
        Ok(())
    }

    async fn abandon_key(&self, store_id: &str, key: &str) -> Result<(), StreamError> {
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("Id", s(request_key(store_id, key)))
            .condition_expression("attribute_not_exists(#status)")
            .expression_attribute_names("#status", "Status")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(self.error("DeleteItem", e)),
        }
    }
}
