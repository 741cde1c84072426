//! Leases and checkpoints in a DynamoDB table, as the Kinesis Client Library keeps them.
//!
//! One item per shard (hash key `ShardId`): `LeaseOwner` (absent: free), `LeaseCounter` (bumped
//! by every renewal), and per sink `Checkpoint_<sink>` (the sequence number zero-padded to 39
//! digits so that text order is number order), `CheckpointAt_<sink>` and `Pending_<sink>`
//! (`first-last`). Every write is conditional: renewals and checkpoints on still being the owner,
//! take-overs on the counter last seen, so two instances never both believe they own a shard.
//!
//! Expiry is judged the KCL way, by each instance's own clock: a lease whose counter has not
//! moved for `lease_duration` since this instance first saw that value is expired. No clocks are
//! compared across machines.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, Utc};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::aws::{describe, error_code, AwsClients};
use crate::config::AwsConfig;
use crate::stream::{
    Checkpoint, CheckpointError, CheckpointStore, SequenceNumber, ShardId, ShardInfo, SinkKind,
};

type Item = HashMap<String, AttributeValue>;

const OWNER: &str = "LeaseOwner";
const COUNTER: &str = "LeaseCounter";

fn checkpoint_attr(sink: SinkKind) -> String {
    format!("Checkpoint_{sink}")
}

fn checkpoint_at_attr(sink: SinkKind) -> String {
    format!("CheckpointAt_{sink}")
}

fn pending_attr(sink: SinkKind) -> String {
    format!("Pending_{sink}")
}

/// Kinesis sequence numbers have at most 129 digits; zero-padded to this width, DynamoDB's string
/// comparison orders them as numbers.
const SEQ_WIDTH: usize = 130;

/// Sequence numbers as fixed-width text, so DynamoDB's string comparison orders them. The shard
/// end is stored as `shard-end`, which sorts after every padded number (`s` > `9`).
fn encode(seq: &SequenceNumber) -> String {
    if seq.is_shard_end() {
        seq.to_string()
    } else {
        format!("{:0>SEQ_WIDTH$}", seq.as_str())
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_str<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_seq(item: &Item, name: &str) -> Result<Option<SequenceNumber>, CheckpointError> {
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

fn is_conditional_failure<E: aws_smithy_types::error::metadata::ProvideErrorMetadata>(
    e: &aws_sdk_dynamodb::error::SdkError<E>,
) -> bool {
    error_code(e) == Some("ConditionalCheckFailedException")
}

/// A lease's owner and counter as last read, and when this instance first read those values.
type Observed = (Option<String>, u64, Instant);

/// What the coordinator and the checkpoint store share.
struct Inner {
    client: aws_sdk_dynamodb::Client,
    table: String,
    owner: String,
    lease_duration: Duration,
    /// Per shard: the owner and counter last seen, and when this instance first saw them.
    observed: Mutex<HashMap<String, Observed>>,
}

impl Inner {
    fn error(&self, what: &str, e: impl std::error::Error + 'static) -> CheckpointError {
        CheckpointError(format!(
            "{what} on lease table {} failed: {}",
            self.table,
            describe(&e)
        ))
    }

    fn lost(&self, shard: &str, owner: Option<&str>) -> CheckpointError {
        CheckpointError(format!(
            "lease on shard {shard} lost: it is now owned by {}, not {}; stop reading this shard",
            owner.unwrap_or("nobody"),
            self.owner
        ))
    }

    /// An UpdateItem of `shard`'s lease with `#o` (the owner attribute) and `:me` bound.
    fn update(&self, shard: &str) -> UpdateItemFluentBuilder {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("ShardId", s(shard))
            .expression_attribute_names("#o", OWNER)
            .expression_attribute_values(":me", s(&self.owner))
    }

    /// Sends a conditional write: `true` when it was made, `false` when its condition failed.
    async fn conditional(
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

    async fn get(&self, shard: &ShardId) -> Result<Option<Item>, CheckpointError> {
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

    async fn scan(&self) -> Result<Vec<Item>, CheckpointError> {
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

/// Hands out the shards of a Kinesis stream among the running instances, KCL-style.
#[derive(Clone)]
pub struct LeaseCoordinator {
    inner: Arc<Inner>,
}

impl LeaseCoordinator {
    /// `owner` names this instance (the ECS task id, or host and pid); it must differ between
    /// instances that run at the same time.
    pub fn new(
        client: aws_sdk_dynamodb::Client,
        table: impl Into<String>,
        owner: impl Into<String>,
        lease_duration: Duration,
    ) -> Self {
        LeaseCoordinator {
            inner: Arc::new(Inner {
                client,
                table: table.into(),
                owner: owner.into(),
                lease_duration,
                observed: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn from_config(clients: &AwsClients, cfg: &AwsConfig, owner: impl Into<String>) -> Self {
        Self::new(
            clients.dynamodb.clone(),
            cfg.leases_table.clone(),
            owner,
            cfg.lease_duration,
        )
    }

    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The checkpoint store of this instance: its writes succeed only on shards it owns.
    pub fn checkpoints(&self) -> DynamoCheckpoints {
        DynamoCheckpoints {
            inner: self.inner.clone(),
        }
    }

    /// Renews this instance's leases, then takes free or expired leases of `shards` (and, when
    /// still short, one lease from the most loaded other owner) up to a fair share: the shards
    /// not finished, divided by the live owners (those with a lease not expired, and this one).
    /// Call it every few seconds, well within the lease duration. Returns the shards this
    /// instance owns afterwards, in `shards` order.
    ///
    /// # Errors
    /// The lease table cannot be read or written (a lost race is not an error).
    pub async fn sync(&self, shards: &[ShardInfo]) -> Result<Vec<ShardId>, CheckpointError> {
        let me = &self.inner.owner;
        let wanted: HashSet<&str> = shards.iter().map(|s| s.id.0.as_str()).collect();
        let mut leases = self.leases_of(&wanted).await?;
        // Leases are created once per shard (new shards, after a reshard), not on every sync.
        let known: HashSet<String> = leases
            .iter()
            .filter_map(|l| get_str(l, "ShardId").map(str::to_owned))
            .collect();
        let new: Vec<&ShardInfo> = shards.iter().filter(|s| !known.contains(&s.id.0)).collect();
        if !new.is_empty() {
            for shard in new {
                self.create_lease(&shard.id).await?;
            }
            leases = self.leases_of(&wanted).await?;
        }
        let now = Instant::now();
        let mut mine: Vec<String> = Vec::new();
        // (shard, owner, counter, expired)
        let mut others: Vec<(String, Option<String>, u64, bool)> = Vec::new();
        {
            let mut observed = self.inner.observed.lock().expect("observed lock");
            for l in &leases {
                let id = get_str(l, "ShardId").unwrap_or_default().to_owned();
                let owner = get_str(l, OWNER).map(str::to_owned);
                let counter = l
                    .get(COUNTER)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let seen = observed
                    .entry(id.clone())
                    .or_insert((owner.clone(), counter, now));
                if seen.0 != owner || seen.1 != counter {
                    *seen = (owner.clone(), counter, now);
                }
                if owner.as_deref() == Some(me.as_str()) {
                    mine.push(id);
                } else if !finished(l) {
                    let expired =
                        owner.is_none() || now.duration_since(seen.2) >= self.inner.lease_duration;
                    others.push((id, owner, counter, expired));
                }
            }
        }
        let mut owned = Vec::new();
        for id in mine {
            if self.renew(&id).await? {
                owned.push(id);
            }
        }
        let live: HashSet<&str> = others
            .iter()
            .filter(|o| !o.3)
            .filter_map(|o| o.1.as_deref())
            .chain([me.as_str()])
            .collect();
        let active = leases.iter().filter(|l| !finished(l)).count();
        let target = active.div_ceil(live.len());
        for (id, owner, counter, _) in others.iter().filter(|o| o.3) {
            if owned.len() >= target {
                break;
            }
            if self.take(id, owner.as_deref(), *counter).await? {
                owned.push(id.clone());
            }
        }
        if owned.len() < target {
            self.steal_one(&others, target, &mut owned).await?;
        }
        Ok(shards
            .iter()
            .filter(|s| owned.contains(&s.id.0))
            .map(|s| s.id.clone())
            .collect())
    }

    /// The lease items of the shards in `wanted` (one Scan).
    async fn leases_of(&self, wanted: &HashSet<&str>) -> Result<Vec<Item>, CheckpointError> {
        Ok(self
            .inner
            .scan()
            .await?
            .into_iter()
            .filter(|l| get_str(l, "ShardId").is_some_and(|id| wanted.contains(id)))
            .collect())
    }

    /// Takes one lease from the owner holding the most, when it holds more than `target`: this
    /// is how a newly started instance gets its share from one that took everything.
    async fn steal_one(
        &self,
        others: &[(String, Option<String>, u64, bool)],
        target: usize,
        owned: &mut Vec<String>,
    ) -> Result<(), CheckpointError> {
        let mut load: HashMap<&str, usize> = HashMap::new();
        for o in others.iter().filter(|o| !o.3) {
            if let Some(owner) = o.1.as_deref() {
                *load.entry(owner).or_default() += 1;
            }
        }
        let Some((victim, count)) = load.into_iter().max_by_key(|(owner, c)| (*c, *owner)) else {
            return Ok(());
        };
        if count <= target {
            return Ok(());
        }
        if let Some((id, owner, counter, _)) =
            others.iter().find(|o| o.1.as_deref() == Some(victim))
        {
            if self.take(id, owner.as_deref(), *counter).await? {
                tracing::info!(shard = %id, from = victim, "took a lease to balance the shards");
                owned.push(id.clone());
            }
        }
        Ok(())
    }

    async fn create_lease(&self, shard: &ShardId) -> Result<(), CheckpointError> {
        let result = self
            .inner
            .client
            .put_item()
            .table_name(&self.inner.table)
            .item("ShardId", s(&shard.0))
            .item(COUNTER, n(0))
            .condition_expression("attribute_not_exists(ShardId)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_conditional_failure(&e) => Ok(()),
            Err(e) => Err(self.inner.error("PutItem (new lease)", e)),
        }
    }

    /// Bumps the counter of a lease this instance owns; false when it is no longer the owner.
    async fn renew(&self, shard: &str) -> Result<bool, CheckpointError> {
        let req = self
            .inner
            .update(shard)
            .update_expression("SET #c = #c + :one")
            .condition_expression("#o = :me")
            .expression_attribute_names("#c", COUNTER)
            .expression_attribute_values(":one", n(1));
        let renewed = self
            .inner
            .conditional("UpdateItem (renew lease)", req)
            .await?;
        if !renewed {
            tracing::warn!(shard, owner = %self.inner.owner, "lease lost to another instance");
        }
        Ok(renewed)
    }

    /// Takes a lease as last seen (`owner`, `counter`); false when someone moved it meanwhile.
    async fn take(
        &self,
        shard: &str,
        owner: Option<&str>,
        counter: u64,
    ) -> Result<bool, CheckpointError> {
        let req = self
            .inner
            .update(shard)
            .update_expression("SET #o = :me, #c = #c + :one")
            .expression_attribute_names("#c", COUNTER)
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":seen", n(counter));
        let req = match owner {
            None => req.condition_expression("#c = :seen AND attribute_not_exists(#o)"),
            Some(old) => req
                .condition_expression("#c = :seen AND #o = :old")
                .expression_attribute_values(":old", s(old)),
        };
        self.inner.conditional("UpdateItem (take lease)", req).await
    }

    /// Gives up every lease of this instance (graceful shutdown, after the last checkpoints), so
    /// others take the shards at once instead of after the lease duration. Returns how many.
    ///
    /// # Errors
    /// The lease table cannot be read or written.
    pub async fn release_all(&self) -> Result<usize, CheckpointError> {
        let mut released = 0;
        for l in self.inner.scan().await? {
            if get_str(&l, OWNER) != Some(self.inner.owner.as_str()) {
                continue;
            }
            let shard = get_str(&l, "ShardId").unwrap_or_default();
            let req = self
                .inner
                .update(shard)
                .update_expression("REMOVE #o")
                .condition_expression("#o = :me");
            if self
                .inner
                .conditional("UpdateItem (release lease)", req)
                .await?
            {
                released += 1;
            }
        }
        Ok(released)
    }
}

/// True when every sink has read the (closed) shard to its end: nobody needs its lease.
fn finished(lease: &Item) -> bool {
    SinkKind::ALL.iter().all(|&sink| {
        get_str(lease, &checkpoint_attr(sink))
            == Some(encode(&SequenceNumber::shard_end()).as_str())
    })
}

/// The sinks' checkpoints in the lease table. Writes are conditional on this instance owning the
/// shard's lease; a lost lease fails the write with an error that says so, and the reader of that
/// shard must stop (the new owner resumes from the last checkpoint).
#[derive(Clone)]
pub struct DynamoCheckpoints {
    inner: Arc<Inner>,
}

impl DynamoCheckpoints {
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
