//! Which instance reads which shard of a Kinesis stream: leases in the DynamoDB lease table,
//! handed out KCL-style (see [`lease_table`](super::lease_table) for the item layout).
//!
//! Expiry is judged the KCL way, by each instance's own clock: a lease whose counter has not
//! moved for `lease_duration` since this instance first saw that value is expired. No clocks are
//! compared across machines.

use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checkpoints::DynamoCheckpoints;
use super::lease_table::{
    checkpoint_attr, encode, get_str, is_conditional_failure, n, s, Item, LeaseTable, COUNTER,
    OWNER,
};
use crate::aws::AwsClients;
use crate::config::KinesisConfig;
use crate::stream::{
    CheckpointError, SequenceNumber, ShardId, ShardInfo, ShardOwnership, SinkKind,
};

/// A lease's owner and counter as last read, and when this instance first read those values.
type Observed = (Option<String>, u64, Instant);

/// Hands out the shards of a Kinesis stream among the running instances, KCL-style.
#[derive(Clone)]
pub struct LeaseCoordinator {
    inner: Arc<LeaseTable>,
    lease_duration: Duration,
    /// Per shard: the owner and counter last seen, and when this instance first saw them.
    observed: Arc<Mutex<HashMap<String, Observed>>>,
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
            inner: Arc::new(LeaseTable {
                client,
                table: table.into(),
                owner: owner.into(),
            }),
            lease_duration,
            observed: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn from_config(
        clients: &AwsClients,
        cfg: &KinesisConfig,
        owner: impl Into<String>,
    ) -> Self {
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
        DynamoCheckpoints::new(self.inner.clone())
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
        // (shard, finished): a finished shard this instance still holds counts for nothing.
        let mut mine: Vec<(String, bool)> = Vec::new();
        // (shard, owner, counter, expired)
        let mut others: Vec<(String, Option<String>, u64, bool)> = Vec::new();
        {
            let mut observed = self.observed.lock().expect("observed lock");
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
                    mine.push((id, finished(l)));
                } else if !finished(l) {
                    let expired =
                        owner.is_none() || now.duration_since(seen.2) >= self.lease_duration;
                    others.push((id, owner, counter, expired));
                }
            }
        }
        let mut owned = Vec::new();
        // The unfinished shards among `owned`: only these count toward the fair share, or a
        // finished parent held since before a split would keep one of its children unread.
        let mut working = 0;
        for (id, done) in mine {
            if self.renew(&id).await? {
                owned.push(id);
                working += usize::from(!done);
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
            if working >= target {
                break;
            }
            if self.take(id, owner.as_deref(), *counter).await? {
                owned.push(id.clone());
                working += 1;
            }
        }
        if working < target {
            self.steal_one(&others, target, &mut owned).await?;
        }
        crate::metrics::STREAM_LEASES_HELD.set(i64::try_from(owned.len()).unwrap_or(i64::MAX));
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
            crate::metrics::STREAM_LEASES_LOST.inc();
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
        crate::metrics::STREAM_LEASES_HELD.set(0);
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

#[async_trait]
impl ShardOwnership for LeaseCoordinator {
    async fn claim(&self, shards: &[ShardInfo]) -> Result<Vec<ShardId>, CheckpointError> {
        self.sync(shards).await
    }

    async fn release_all(&self) -> Result<usize, CheckpointError> {
        LeaseCoordinator::release_all(self).await
    }
}
