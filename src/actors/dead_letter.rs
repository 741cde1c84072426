//! Dead letters: lines a sink could not store after every attempt, kept with the reason so that
//! nothing is dropped silently and an operator can re-drive them (`shopstream dead-letter redrive`).

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::model::IngestedLine;
use crate::object_store::{ObjectMeta, ObjectStore, ObjectStoreError};
use crate::stream::{SequenceNumber, ShardId, SinkKind};

/// One dead letter, stored as one JSON object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    pub sink: SinkKind,
    pub shard: ShardId,
    /// The stream record the line came in (the first record of its unit).
    pub sequence_number: SequenceNumber,
    pub reason: String,
    pub failed_at: DateTime<Utc>,
    /// The line, when the record could be decoded.
    pub line: Option<IngestedLine>,
    /// The record's payload as text, when it could not be decoded into lines.
    pub raw: Option<String>,
}

/// The dead-letter store: objects under `<prefix>/<sink>/<shard>/`.
#[derive(Clone)]
pub struct DeadLetters {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl DeadLetters {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: impl Into<String>) -> Self {
        DeadLetters {
            store,
            prefix: prefix.into().trim_end_matches('/').to_owned(),
        }
    }

    /// The key of a dead letter. Deterministic, so a line dead-lettered twice (a redelivery after a
    /// crash) is one object.
    fn key(&self, letter: &DeadLetter) -> String {
        let id = match &letter.line {
            Some(l) => l.line.line_id.to_string(),
            None => "record".to_owned(),
        };
        format!(
            "{}/{}/{}/{:0>20}-{id}.json",
            self.prefix,
            letter.sink,
            letter.shard,
            letter.sequence_number.as_str()
        )
    }

    /// Stores a dead letter durably and counts it.
    ///
    /// # Errors
    /// When the dead-letter store itself fails; the caller must then not move its checkpoint.
    pub async fn put(&self, letter: &DeadLetter) -> Result<(), ObjectStoreError> {
        let body = serde_json::to_vec_pretty(letter)
            .map_err(|e| ObjectStoreError::Backend(format!("cannot encode dead letter: {e}")))?;
        self.store.put(&self.key(letter), Bytes::from(body)).await?;
        crate::metrics::DEAD_LETTERS
            .with_label_values(&[letter.sink.as_str()])
            .inc();
        tracing::warn!(
            sink = %letter.sink,
            shard = %letter.shard,
            sequence_number = %letter.sequence_number,
            reason = %letter.reason,
            "A line went to the dead-letter store."
        );
        Ok(())
    }

    /// Every dead letter of `sink` (all sinks when `None`), in key order.
    pub async fn list(&self, sink: Option<SinkKind>) -> Result<Vec<ObjectMeta>, ObjectStoreError> {
        let prefix = match sink {
            Some(s) => format!("{}/{s}/", self.prefix),
            None => format!("{}/", self.prefix),
        };
        self.store.list(&prefix).await
    }

    pub async fn get(&self, key: &str) -> Result<DeadLetter, ObjectStoreError> {
        let body = self.store.get(key).await?;
        serde_json::from_slice(&body)
            .map_err(|e| ObjectStoreError::Backend(format!("dead letter {key} is not valid: {e}")))
    }

    pub async fn delete(&self, key: &str) -> Result<(), ObjectStoreError> {
        self.store.delete(key).await
    }
}
