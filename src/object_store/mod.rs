//! Object storage for the raw archive, dead letters and bulk-import sources: a local folder when
//! embedded, S3 on AWS.

pub mod local;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    /// S3's ETag, or a content hash for the local folder: changes when the content changes.
    pub etag: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    #[error("object {0} not found")]
    NotFound(String),
    #[error("object store error: {0}")]
    Backend(String),
}

/// A flat key space of immutable objects. Keys use `/` as separator.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes `body` under `key` atomically: a reader sees the old object or the new one, never a
    /// part. Writing the same key again replaces the object (this is what makes redelivered archive
    /// batches idempotent).
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectStoreError>;

    async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError>;

    /// Every object whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectStoreError>;

    async fn delete(&self, key: &str) -> Result<(), ObjectStoreError>;

    async fn health(&self) -> Result<(), ObjectStoreError>;
}
