//! The sinks' checkpoints in the Kinesis lease table (see [`lease_table`](super::lease_table)):
//! one attribute per sink on each shard's lease item, written only by the lease's owner.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, Utc};
use std::sync::Arc;

use super::lease_table::{
    checkpoint_at_attr, checkpoint_attr, encode, get_seq, get_str, is_conditional_failure,
    pending_attr, s, Item, LeaseTable, OWNER,
};
use crate::stream::{
    Checkpoint, CheckpointError, CheckpointStore, SequenceNumber, ShardId, SinkKind,
};

/// The sinks' checkpoints in the lease table. Writes are conditional on this instance owning the
/// shard's lease; a lost lease fails the write with an error that says so, and the reader of that
/// shard must stop (the new owner resumes from the last checkpoint).
#[derive(Clone)]
pub struct DynamoCheckpoints {
    inner: Arc<LeaseTable>,
}

impl DynamoCheckpoints {
    /// Made by [`LeaseCoordinator::checkpoints`](super::LeaseCoordinator::checkpoints), over the
    /// coordinator's table and owner.
    pub(super) fn new(inner: Arc<LeaseTable>) -> Self {
        DynamoCheckpoints { inner }
    }

    /// Why a conditional write failed: the lease is gone (error) or the checkpoint is already
    /// further (fine, `Ok(item)`).
    async fn explain(&self, shard: &ShardId) -> Result<Item, CheckpointError> {
        let item = self.inner.get(shard).await?.unwrap_or_default();
        match get_str(&item, OWNER) {
            Some(o) if o == self.inner.owner => Ok(item),
            other => Err(self.inner.lost(&shard.0, other)),
        }
    }
}

#[async_trait]
impl CheckpointStore for DynamoCheckpoints {
    async fn load(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<SequenceNumber>, CheckpointError> {
        match self.inner.get(shard).await? {
            Some(item) => get_seq(&item, &checkpoint_attr(sink)),
            None => Ok(None),
        }
    }

    /// # Errors
    /// The lease of `shard` is not this instance's (any more), or the table is unreachable.
    async fn save(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        seq: SequenceNumber,
    ) -> Result<(), CheckpointError> {
        let result = self
            .inner
            .update(&shard.0)
            .update_expression("SET #cp = :seq, #at = :now")
            .condition_expression("#o = :me AND (attribute_not_exists(#cp) OR #cp <= :seq)")
            .expression_attribute_names("#cp", checkpoint_attr(sink))
            .expression_attribute_names("#at", checkpoint_at_attr(sink))
            .expression_attribute_values(":seq", s(encode(&seq)))
            .expression_attribute_values(":now", s(Utc::now().to_rfc3339()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let item = match result {
            Ok(out) => out.attributes().cloned().unwrap_or_default(),
            // Owner still us: the checkpoint is already further, which is fine.
            Err(e) if is_conditional_failure(&e) => self.explain(shard).await?,
            Err(e) => return Err(self.inner.error("UpdateItem (checkpoint)", e)),
        };
        // A save that reaches the end of the announced range clears it.
        if let Some(pending) = get_str(&item, &pending_attr(sink)) {
            let last = pending
                .split_once('-')
                .and_then(|(_, l)| l.parse::<SequenceNumber>().ok());
            if last.is_some_and(|last| last <= seq) {
                let req = self
                    .inner
                    .update(&shard.0)
                    .update_expression("REMOVE #p")
                    .condition_expression("#o = :me AND #p = :old")
                    .expression_attribute_names("#p", pending_attr(sink))
                    .expression_attribute_values(":old", s(pending));
                // A lost race means a new range was announced meanwhile: it stays.
                self.inner
                    .conditional("UpdateItem (clear pending)", req)
                    .await?;
            }
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Checkpoint>, CheckpointError> {
        let mut out = Vec::new();
        for item in self.inner.scan().await? {
            let shard = ShardId(get_str(&item, "ShardId").unwrap_or_default().to_owned());
            for sink in SinkKind::ALL {
                if let Some(seq) = get_seq(&item, &checkpoint_attr(sink))? {
                    let updated_at = get_str(&item, &checkpoint_at_attr(sink))
                        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                        .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
                    out.push(Checkpoint {
                        sink,
                        shard: shard.clone(),
                        sequence_number: seq,
                        updated_at,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.shard, a.sink).cmp(&(&b.shard, b.sink)));
        Ok(out)
    }

    async fn load_pending(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<(SequenceNumber, SequenceNumber)>, CheckpointError> {
        let Some(item) = self.inner.get(shard).await? else {
            return Ok(None);
        };
        let Some(v) = get_str(&item, &pending_attr(sink)) else {
            return Ok(None);
        };
        let bad = || {
            CheckpointError(format!(
                "pending range {v:?} of shard {shard} is not `first-last`"
            ))
        };
        let (first, last) = v.split_once('-').ok_or_else(bad)?;
        Ok(Some((
            first.parse().map_err(|_| bad())?,
            last.parse().map_err(|_| bad())?,
        )))
    }

    /// # Errors
    /// The lease of `shard` is not this instance's (any more), or the table is unreachable.
    async fn save_pending(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        range: Option<(SequenceNumber, SequenceNumber)>,
    ) -> Result<(), CheckpointError> {
        let req = self
            .inner
            .update(&shard.0)
            .condition_expression("#o = :me")
            .expression_attribute_names("#p", pending_attr(sink));
        let req = match range {
            Some((first, last)) => req
                .update_expression("SET #p = :r")
                .expression_attribute_values(":r", s(format!("{first}-{last}"))),
            None => req.update_expression("REMOVE #p"),
        };
        if self
            .inner
            .conditional("UpdateItem (pending range)", req)
            .await?
        {
            Ok(())
        } else {
            self.explain(shard).await.map(|_| ())
        }
    }
}
