//! The [`LineIndex`] of the Kinesis stream: a DynamoDB table (`stream.kinesis.line_index_table`,
//! hash key `Id`) with conditional writes, since Kinesis itself cannot refuse a record.
//!
//! - A line id is item `line#<id>` with `Store`, `Line` (the line as JSON), `State` (`pending`
//!   or `committed`), `Token` (the append that claimed it) and `ExpiresAt` (the table's TTL).
//!   An append claims its new ids as `pending` (each PutItem conditional on the id being free,
//!   or pending with the same store and content: an earlier attempt of the same line that was
//!   never acknowledged), then PutRecords, then marks them `committed`. When a claim is refused
//!   or PutRecords fails, the append deletes its own pending claims, so nothing unacknowledged
//!   blocks a later request; a crash between the steps leaves a pending claim that the same
//!   content takes over (it is written again) and other content is refused by.
//! - An `Idempotency-Key` is item `key#<store length>#<store>#<key>` with `Fingerprint`,
//!   `StartedAt`, and once answered `Status` and `Answer`. A committed line also has `LandedShard`
//!   and `LandedSeq`: where its record landed.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::lease_table::is_conditional_failure;
use crate::aws::describe;
use crate::model::LineId;
use crate::stream::line_index::{
    KeyState, LineClaim, LineIndex, LineKey, StoredAnswer, StoredLine,
    KEY_IN_FLIGHT_ABANDONED_AFTER,
};
use crate::stream::{PutRecord, PutResult, Stream, StreamError};

/// BatchGetItem takes at most 100 keys.
const BATCH_GET_MAX: usize = 100;
/// Claims written at once.
const CLAIM_CONCURRENCY: usize = 16;

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
}

impl DynamoLineIndex {
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        stream: Arc<dyn Stream>,
        retention: Duration,
    ) -> Self {
        DynamoLineIndex {
            client,
            table: table.into(),
            stream,
            retention,
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

    /// Claims `claim` for `token`: `Ok(false)` when the id is taken.
    async fn claim(&self, claim: &LineClaim, token: &str) -> Result<bool, StreamError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item("Id", s(line_key(&claim.line_id)))
            .item("Store", s(&claim.store_id))
            .item("Line", s(&claim.line))
            .item("State", s("pending"))
            .item("Token", s(token))
            .item("ExpiresAt", self.expires_at())
            .condition_expression(
                "attribute_not_exists(Id) OR (#st = :pending AND #sto = :store AND #li = :line)",
            )
            .expression_attribute_names("#st", "State")
            .expression_attribute_names("#sto", "Store")
            .expression_attribute_names("#li", "Line")
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":store", s(&claim.store_id))
            .expression_attribute_values(":line", s(&claim.line));
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(self.error("PutItem", e)),
        }
    }

    /// Deletes the pending claims `token` made, so that nothing unacknowledged blocks an id.
    async fn release(&self, ids: Vec<LineId>, token: &str) {
        let results: Vec<_> = futures::stream::iter(ids)
            .map(|id: LineId| {
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key("Id", s(line_key(&id)))
                    .condition_expression("#st = :pending AND #tok = :token")
                    .expression_attribute_names("#st", "State")
                    .expression_attribute_names("#tok", "Token")
                    .expression_attribute_values(":pending", s("pending"))
                    .expression_attribute_values(":token", s(token))
                    .send()
            })
            .buffer_unordered(CLAIM_CONCURRENCY)
            .collect()
            .await;
        for r in results {
            if let Err(e) = r {
                if !is_conditional_failure(&e) {
                    tracing::warn!(error = %describe(&e), "A pending line-id claim could not be released; the same line takes it over.");
                }
            }
        }
    }
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
        claims: Vec<Vec<LineClaim>>,
    ) -> Result<Vec<PutResult>, StreamError> {
        let token = format!("{:032x}", rand::random::<u128>());
        let all: Vec<LineClaim> = claims.iter().flatten().cloned().collect();
        let claimed: Vec<(bool, LineId)> = futures::stream::iter(all)
            .map(|c: LineClaim| {
                let token = token.clone();
                async move { Ok::<_, StreamError>((self.claim(&c, &token).await?, c.line_id)) }
            })
            .buffer_unordered(CLAIM_CONCURRENCY)
            .try_collect()
            .await?;
        let (mine, taken): (Vec<_>, Vec<_>) = claimed.into_iter().partition(|(ok, _)| *ok);
        let mine: Vec<LineId> = mine.into_iter().map(|(_, id)| id).collect();
        if !taken.is_empty() {
            self.release(mine, &token).await;
            return Err(StreamError::LinesTaken(
                taken.into_iter().map(|(_, id)| id).collect(),
            ));
        }
        let results = match self.stream.put(records).await {
            Ok(results) => results,
            Err(e) => {
                self.release(mine, &token).await;
                return Err(e);
            }
        };
        let landed: Vec<(LineId, String, String)> = claims
            .iter()
            .zip(&results)
            .flat_map(|(claims, at)| {
                claims.iter().map(|c| {
                    (
                        c.line_id.clone(),
                        at.shard_id.0.clone(),
                        at.sequence_number.as_str().to_owned(),
                    )
                })
            })
            .collect();
        let committed: Vec<_> = futures::stream::iter(landed)
            .map(|(id, shard, seq): (LineId, String, String)| {
                self.client
                    .update_item()
                    .table_name(&self.table)
                    .key("Id", s(line_key(&id)))
                    .update_expression(
                        "SET #st = :committed, LandedShard = :shard, LandedSeq = :seq",
                    )
                    .condition_expression("#tok = :token")
                    .expression_attribute_names("#st", "State")
                    .expression_attribute_names("#tok", "Token")
                    .expression_attribute_values(":committed", s("committed"))
                    .expression_attribute_values(":shard", s(shard))
                    .expression_attribute_values(":seq", s(seq))
                    .expression_attribute_values(":token", s(&token))
                    .send()
            })
            .buffer_unordered(CLAIM_CONCURRENCY)
            .collect()
            .await;
        for r in committed {
            if let Err(e) = r {
                // The records are durable; a claim left pending only lets the same line be
                // written again by a retry (the sinks keep it once), never blocks or loses one.
                tracing::warn!(error = %describe(&e), "A line-id claim could not be marked committed.");
            }
        }
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
