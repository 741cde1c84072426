//! Which shards this instance reads: the pipeline asks its [`ShardOwnership`] and never learns
//! whether one process reads every shard (the embedded log) or instances share a Kinesis stream
//! by leases.

use async_trait::async_trait;

use super::{CheckpointError, ShardId, ShardInfo};

/// Decides which shards of the stream this instance reads.
#[async_trait]
pub trait ShardOwnership: Send + Sync + 'static {
    /// The shards of `shards` this instance reads from now on, in `shards` order. Called at start
    /// and on every shard refresh; a backend that leases shards renews and takes leases here.
    ///
    /// # Errors
    /// The ownership cannot be read or renewed; the caller keeps reading what it reads.
    async fn claim(&self, shards: &[ShardInfo]) -> Result<Vec<ShardId>, CheckpointError>;

    /// Gives up every shard at shutdown, after the last checkpoints, so others can take them at
    /// once. Returns how many were given up.
    ///
    /// # Errors
    /// The ownership cannot be written; others take the shards when they expire.
    async fn release_all(&self) -> Result<usize, CheckpointError>;
}

/// One reader process owns every shard (the embedded stream).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllShards;

#[async_trait]
impl ShardOwnership for AllShards {
    async fn claim(&self, shards: &[ShardInfo]) -> Result<Vec<ShardId>, CheckpointError> {
        Ok(shards.iter().map(|s| s.id.clone()).collect())
    }

    async fn release_all(&self) -> Result<usize, CheckpointError> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_embedded_reader_owns_every_shard() {
        let shards: Vec<ShardInfo> = ["shard-0000", "shard-0001"]
            .into_iter()
            .map(|id| ShardInfo {
                id: ShardId(id.into()),
                parents: vec![],
                closed: false,
            })
            .collect();
        let owned = AllShards.claim(&shards).await.unwrap();
        assert_eq!(owned, [shards[0].id.clone(), shards[1].id.clone()]);
        assert_eq!(AllShards.release_all().await.unwrap(), 0);
    }
}
