//! The DynamoDB lease table of a Kinesis stream, as the Kinesis Client Library keeps it: what the
//! [lease coordinator](super::leases) and the [checkpoint store](super::checkpoints) share.
//!
//! One item per shard (hash key `ShardId`): `LeaseOwner` (absent: free), `LeaseCounter` (bumped
//! by every renewal), and per sink `Checkpoint_<sink>` (the sequence number zero-padded to 130
//! digits so that text order is number order), `CheckpointAt_<sink>` and `Pending_<sink>`
//! (`first-last`). Every write is conditional: renewals and checkpoints on still being the owner,
//! take-overs on the counter last seen, so two instances never both believe they own a shard.

use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use std::collections::HashMap;

use crate::aws::{describe, error_code};
use crate::stream::{CheckpointError, SequenceNumber, ShardId, SinkKind};

pub(super) type Item = HashMap<String, AttributeValue>;

pub(super) const OWNER: &str = "LeaseOwner";
pub(super) const COUNTER: &str = "LeaseCounter";

pub(super) fn checkpoint_attr(sink: SinkKind) -> String {
    format!("Checkpoint_{sink}")
}

pub(super) fn checkpoint_at_attr(sink: SinkKind) -> String {
    format!("CheckpointAt_{sink}")
}

pub(super) fn pending_attr(sink: SinkKind) -> String {
    format!("Pending_{sink}")
}

/// Kinesis sequence numbers have at most 129 digits; zero-padded to this width, DynamoDB's string
/// comparison orders them as numbers.
const SEQ_WIDTH: usize = 130;

/// Sequence numbers as fixed-width text, so DynamoDB's string comparison orders them. The shard
/// end is stored as `shard-end`, which sorts after every padded number (`s` > `9`).
pub(super) fn encode(seq: &SequenceNumber) -> String {
    if seq.is_shard_end() {
        seq.to_string()
    } else {
        format!("{:0>SEQ_WIDTH$}", seq.as_str())
    }
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn get_str<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(super) fn get_seq(item: &Item, name: &str) -> Result<Option<SequenceNumber>, CheckpointError> {
    get_str(item, name)
        .map(|v| {
            v.parse().map_err(|_| {
                CheckpointError(format!(
                    "lease attribute {name} holds {v:?}, not a sequence number"
                ))
            })
        })
        .transpose()
}

pub(super) fn is_conditional_failure<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(
    e: &aws_sdk_dynamodb::error::SdkError<E>,
) -> bool {
    error_code(e) == Some("ConditionalCheckFailedException")
}

/// The lease table as the coordinator and the checkpoint store both use it.
pub(super) struct LeaseTable {
    pub(super) client: aws_sdk_dynamodb::Client,
    pub(super) table: String,
    pub(super) owner: String,
}

impl LeaseTable {
    pub(super) fn error(&self, what: &str, e: impl std::error::Error + 'static) -> CheckpointError {
        CheckpointError(format!(
            "{what} on lease table {} failed: {}",
            self.table,
            describe(&e)
        ))
    }

    pub(super) fn lost(&self, shard: &str, owner: Option<&str>) -> CheckpointError {
        CheckpointError(format!(
            "lease on shard {shard} lost: it is now owned by {}, not {}; stop reading this shard",
            owner.unwrap_or("nobody"),
            self.owner
        ))
    }

    /// An UpdateItem of `shard`'s lease with `#o` (the owner attribute) and `:me` bound.
    pub(super) fn update(&self, shard: &str) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("ShardId", s(shard))
            .expression_attribute_names("#o", OWNER)
            .expression_attribute_values(":me", s(&self.owner))
    }

    /// Sends a conditional write: `true` when it was made, `false` when its condition failed.
    pub(super) async fn conditional(
        &self,
        what: &str,
        req: UpdateItemFluentBuilder,
    ) -> Result<bool, CheckpointError> {
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure(&e) => Ok(false),
            Err(e) => Err(self.error(what, e)),
        }
    }

    pub(super) async fn get(&self, shard: &ShardId) -> Result<Option<Item>, CheckpointError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("ShardId", s(&shard.0))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.error("GetItem", e))?;
        Ok(out.item().cloned())
    }

    pub(super) async fn scan(&self) -> Result<Vec<Item>, CheckpointError> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .into_paginator()
            .send();
        let mut items = Vec::new();
        while let Some(page) = pages.next().await {
            items.extend(
                page.map_err(|e| self.error("Scan", e))?
                    .items()
                    .iter()
                    .cloned(),
            );
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_sequence_numbers_sort_as_numbers() {
        let e = |v: &str| encode(&v.parse().unwrap());
        let kinesis = "49590338271490256608559692538361571095921575989136588898";
        let mut v = [
            e("10"),
            e("9"),
            e("shard-end"),
            e(kinesis),
            e("0"),
            e("100"),
        ];
        v.sort();
        assert_eq!(
            v,
            [
                e("0"),
                e("9"),
                e("10"),
                e("100"),
                e(kinesis),
                e("shard-end")
            ]
        );
        assert_eq!(e("42").len(), SEQ_WIDTH);
        assert_eq!(
            e("42").parse::<SequenceNumber>().unwrap(),
            SequenceNumber::from(42)
        );
        assert!(e("shard-end")
            .parse::<SequenceNumber>()
            .unwrap()
            .is_shard_end());
    }
}
