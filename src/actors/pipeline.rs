//! Starts a supervised [`ShardSink`] for every (sink, shard), keeps the set current as shards
//! appear (a reshard), releases stream records every sink has stored, and stops everything in order.

use actix::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

use super::dead_letter::DeadLetters;
use super::priority;
use super::progress::Progress;
use super::shard::dedup::DedupWindows;
use super::shard::{ShardSink, ShardSinkParts, ShardSinkSettings, Shutdown};
use super::sink::SinkWriter;
use crate::stream::{CheckpointStore, ShardId, ShardInfo, ShardOwnership, SinkKind, Stream};

/// What the pipeline runs on.
pub struct PipelineParts {
    pub stream: Arc<dyn Stream>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub sinks: Vec<Arc<dyn SinkWriter>>,
    pub dead_letters: DeadLetters,
    /// Where each worker keeps its window of recent line ids (consumer-side dedup).
    pub dedup: DedupWindows,
    pub progress: Arc<Progress>,
    pub settings: ShardSinkSettings,
    /// How often the shard list is read again (new shards after a reshard).
    pub shard_refresh: Duration,
    /// Which shards this instance reads (all of them, or those whose lease it holds).
    pub ownership: Arc<dyn ShardOwnership>,
    /// Where the sinks' threads stand for CPU against ingest (see [`super::priority`]).
    pub priority: priority::SinkPriority,
}

pub struct Pipeline {
    parts: PipelineParts,
    /// One arbiter (thread) per sink, so that decoding and batching of one sink never waits for
    /// another's; at `PipelineParts::priority`, below ingest's.
    arbiters: BTreeMap<SinkKind, Arbiter>,
    actors: Mutex<BTreeMap<(SinkKind, ShardId), Addr<ShardSink>>>,
    /// The shard list as last read: leases are renewed from it while ListShards fails, so a
    /// throttled listing never lets this instance's leases expire.
    known_shards: Mutex<Vec<ShardInfo>>,
    /// Whether a release of stored records is running: one at a time, beside the maintenance
    /// loop (a release that catches up on a large backlog takes seconds).
    releasing: Arc<std::sync::atomic::AtomicBool>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Pipeline {
    /// Starts the actors of every readable shard and the maintenance loop.
    ///
    /// # Errors
    /// When the stream cannot list its shards at start (the backend is down or misconfigured).
    pub async fn start(parts: PipelineParts) -> Result<Arc<Pipeline>, crate::stream::StreamError> {
        let arbiters = parts
            .sinks
            .iter()
            .map(|s| (s.kind(), priority::arbiter_with_priority(parts.priority)))
            .collect();
        let pipeline = Arc::new(Pipeline {
            parts,
            arbiters,
            actors: Mutex::new(BTreeMap::new()),
            known_shards: Mutex::new(Vec::new()),
            releasing: Arc::default(),
            stop: tokio::sync::watch::channel(false).0,
        });
        let shards = pipeline.parts.stream.list_shards().await?;
        pipeline.known_shards.lock().await.clone_from(&shards);
        // Where each shard's head is now, so the backlogs are right before the first read.
        for shard in &shards {
            if let Some(head) = pipeline.parts.stream.latest(&shard.id).await? {
                pipeline.parts.progress.record_latest(&shard.id, &head);
            }
        }
        pipeline.start_ready_shards(&shards).await;
        let maintenance = pipeline.clone();
        actix::spawn(async move { maintenance.maintain().await });
        Ok(pipeline)
    }

    pub fn progress(&self) -> &Arc<Progress> {
        &self.parts.progress
    }

    /// Starts the actors of shards that have none yet and may be read: a child of a reshard only
    /// once every parent is fully written by that sink (its checkpoint is the shard end), so that
    /// lines of one invoice never overtake each other.
    async fn start_ready_shards(&self, shards: &[ShardInfo]) {
        let known: BTreeSet<&ShardId> = shards.iter().map(|s| &s.id).collect();
        let owned = self.owned_shards(shards).await;
        let mut actors = self.actors.lock().await;
        // Shards this instance no longer owns (their lease went to another instance): stop
        // reading them (their checkpoints would be refused anyway).
        let lost: Vec<(SinkKind, ShardId)> = actors
            .keys()
            .filter(|(_, shard)| !owned.contains(shard))
            .cloned()
            .collect();
        for key in lost {
            if let Some(addr) = actors.remove(&key) {
                tracing::info!(sink = %key.0, shard = %key.1, "The shard is no longer this instance's (its lease is gone); stopping its actor.");
                addr.do_send(Shutdown);
                self.parts.progress.forget(key.0, &key.1);
            }
        }
        for sink in &self.parts.sinks {
            let kind = sink.kind();
            for shard in shards {
                if !owned.contains(&shard.id) || actors.contains_key(&(kind, shard.id.clone())) {
                    continue;
                }
                if !self.parents_done(kind, shard, &known).await {
                    continue;
                }
                self.parts.progress.register(kind, &shard.id);
                let parts = ShardSinkParts {
                    sink: sink.clone(),
                    shard: shard.id.clone(),
                    // The worker checks these again itself before it reads.
                    parents: shard
                        .parents
                        .iter()
                        .filter(|p| known.contains(p))
                        .cloned()
                        .collect(),
                    stream: self.parts.stream.clone(),
                    checkpoints: self.parts.checkpoints.clone(),
                    dead_letters: self.parts.dead_letters.clone(),
                    dedup: self.parts.dedup.clone(),
                    progress: self.parts.progress.clone(),
                    settings: self.parts.settings.clone(),
                };
                let arbiter = &self.arbiters[&kind];
                let addr =
                    Supervisor::start_in_arbiter(&arbiter.handle(), move |_| ShardSink::new(parts));
                tracing::info!(sink = %kind, shard = %shard.id, "Started a shard actor.");
                actors.insert((kind, shard.id.clone()), addr);
            }
        }
    }

    /// The shards this instance reads, as its ownership says; when that cannot be renewed, the
    /// shards it reads already.
    async fn owned_shards(&self, shards: &[ShardInfo]) -> BTreeSet<ShardId> {
        match self.parts.ownership.claim(shards).await {
            Ok(owned) => owned.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "Cannot claim shards (renew or take leases); keeping the shards as they are.");
                self.actors
                    .lock()
                    .await
                    .keys()
                    .map(|(_, s)| s.clone())
                    .collect()
            }
        }
    }

    async fn parents_done(
        &self,
        sink: SinkKind,
        shard: &ShardInfo,
        known: &BTreeSet<&ShardId>,
    ) -> bool {
        for parent in &shard.parents {
            // A parent gone from the listing has aged out of the stream: nothing is left to read.
            if !known.contains(parent) {
                continue;
            }
            match self.parts.checkpoints.load(sink, parent).await {
                Ok(Some(c)) if c.is_shard_end() => {}
                _ => return false,
            }
        }
        true
    }

    /// Every second: measure each sink's lag and refresh the backlog gauges; every
    /// `shard_refresh`: look for new shards and release what every sink has stored.
    async fn maintain(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_refresh = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            self.sample_lag().await;
            self.parts.progress.snapshot();
            if last_refresh.elapsed() < self.parts.shard_refresh {
                continue;
            }
            last_refresh = tokio::time::Instant::now();
            match self.parts.stream.list_shards().await {
                Ok(shards) => {
                    self.known_shards.lock().await.clone_from(&shards);
                    self.start_ready_shards(&shards).await;
                    self.spawn_release(shards);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot list the stream's shards; renewing the leases of the shards last listed, and trying again later.");
                    let known = self.known_shards.lock().await.clone();
                    // Renewing is the point; the shards read stay as they are until a listing
                    // succeeds (or a lease turns out lost, which stops that shard's reader).
                    self.start_ready_shards(&known).await;
                }
            }
        }
    }

    /// Runs [`Self::release_stored`] in its own task unless one still runs.
    fn spawn_release(self: &Arc<Self>, shards: Vec<ShardInfo>) {
        use std::sync::atomic::Ordering;
        if self.releasing.swap(true, Ordering::AcqRel) {
            return;
        }
        let pipeline = self.clone();
        actix::spawn(async move {
            pipeline.release_stored(&shards).await;
            pipeline.releasing.store(false, Ordering::Release);
        });
    }

    /// Tells [`Progress`] when the first record after each waiting sink's checkpoint arrived,
    /// where the stream can say so cheaply (the embedded log: one row by key); that record's age
    /// is the sink's lag. Sinks at one checkpoint of a shard share the look-up.
    async fn sample_lag(&self) {
        let progress = &self.parts.progress;
        let mut found = BTreeMap::new();
        for (sink, shard, checkpoint) in progress.behind() {
            let key = (shard, checkpoint);
            if !found.contains_key(&key) {
                let first = match self
                    .parts
                    .stream
                    .first_arrival_after(&key.0, key.1.as_ref())
                    .await
                {
                    Ok(first) => first,
                    Err(e) => {
                        tracing::debug!(shard = %key.0, error = %e, "Cannot look up the oldest record waiting for a sink.");
                        None
                    }
                };
                found.insert(key.clone(), first);
            }
            if let Some(Some((seq, arrived_at))) = found.get(&key) {
                progress.record_oldest_unprocessed(sink, &key.0, seq.clone(), *arrived_at);
            }
        }
    }

    /// Lets the stream drop records that every sink has checkpointed (it keeps them for its
    /// retention period as well).
    async fn release_stored(&self, shards: &[ShardInfo]) {
        for shard in shards {
            let mut lowest = None;
            for sink in &self.parts.sinks {
                match self.parts.checkpoints.load(sink.kind(), &shard.id).await {
                    Ok(Some(c)) => {
                        if lowest.as_ref().is_none_or(|l| c < *l) {
                            lowest = Some(c);
                        }
                    }
                    _ => {
                        lowest = None;
                        break;
                    }
                }
            }
            let Some(upto) = lowest.filter(|c| !c.is_shard_end()) else {
                continue;
            };
            match self.parts.stream.release(&shard.id, &upto).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(shard = %shard.id, removed = n, "Released stored records.")
                }
                Err(e) => {
                    tracing::warn!(shard = %shard.id, error = %e, "Cannot release stored records.")
                }
            }
        }
    }

    /// Asks every actor to write what it holds and checkpoint; waits at most `deadline`.
    /// Returns false when the deadline passed first (what was not checkpointed is read again
    /// after the restart; the sinks are idempotent).
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        let started = tokio::time::Instant::now();
        self.stop.send_replace(true);
        let actors: Vec<_> = self.actors.lock().await.values().cloned().collect();
        let all = futures::future::join_all(actors.iter().map(|a| a.send(Shutdown)));
        let done = tokio::time::timeout(deadline, all).await.is_ok();
        // Only after the last checkpoints: others may then take the shards at once instead of
        // after the lease duration. Within what is left of the deadline; past it the leases
        // simply expire.
        let left = deadline.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, self.parts.ownership.release_all()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot give up this instance's shards; others take them when their leases expire.");
            }
            Err(_) => {
                tracing::warn!("No time left in the shutdown deadline to give up this instance's shards; others take them when their leases expire.");
            }
        }
        for arbiter in self.arbiters.values() {
            arbiter.stop();
        }
        done
    }
}
