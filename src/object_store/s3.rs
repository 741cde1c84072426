//! The object store on S3: the raw archive and dead letters in `archive.s3.bucket`.

use async_trait::async_trait;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::{ObjectMeta, ObjectStore, ObjectStoreError};
use crate::aws::{describe, AwsClients};
use crate::config::S3Config;

/// Objects in one S3 bucket. Small objects go up in one PUT; large ones by multipart upload,
/// which S3 makes visible atomically on completion (and which this store aborts on any failure,
/// so no orphaned parts keep costing storage).
#[derive(Debug, Clone)]
pub struct S3ObjectStore {
    client: aws_sdk_s3::Client,
    bucket: String,
    multipart_threshold: usize,
    part_size: usize,
}

impl S3ObjectStore {
    /// `part_size` must be at least 5 MiB (S3 refuses smaller parts except the last);
    /// `S3Config::validate` checks the configured value.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        multipart_threshold: usize,
        part_size: usize,
    ) -> Self {
        S3ObjectStore {
            client,
            bucket: bucket.into(),
            multipart_threshold,
            part_size,
        }
    }

    pub fn from_config(clients: &AwsClients, cfg: &S3Config) -> Self {
        Self::new(
            clients.s3.clone(),
            cfg.bucket.clone(),
            cfg.multipart_threshold_bytes,
            cfg.multipart_part_bytes,
        )
    }

    fn backend(
        &self,
        what: &str,
        key: &str,
        e: impl std::error::Error + 'static,
    ) -> ObjectStoreError {
        ObjectStoreError::Backend(format!(
            "{what} s3://{}/{key} failed: {}",
            self.bucket,
            describe(&e)
        ))
    }

    async fn put_multipart(&self, key: &str, body: Bytes) -> Result<(), ObjectStoreError> {
        crate::metrics::aws_call("s3", "CreateMultipartUpload");
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.backend("starting a multipart upload of", key, e))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            ObjectStoreError::Backend(format!(
                "S3 started a multipart upload of s3://{}/{key} without an upload id",
                self.bucket
            ))
        })?;
        let result = self.upload_parts(key, upload_id, body).await;
        if result.is_err() {
            // Best effort: a failed abort leaves parts that the bucket's lifecycle rule
            // (AbortIncompleteMultipartUpload, see docs/aws.md) removes later.
            if let Err(e) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await
            {
                tracing::warn!(key, error = %describe(&e), "could not abort a failed multipart upload");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        body: Bytes,
    ) -> Result<(), ObjectStoreError> {
        let mut parts = Vec::new();
        let mut offset = 0;
        let mut number = 1;
        while offset < body.len() {
            let end = (offset + self.part_size).min(body.len());
            crate::metrics::aws_call("s3", "UploadPart");
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body.slice(offset..end)))
                .send()
                .await
                .map_err(|e| self.backend(&format!("uploading part {number} of"), key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .build(),
            );
            offset = end;
            number += 1;
        }
        let part_count = parts.len();
        crate::metrics::aws_call("s3", "CompleteMultipartUpload");
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(_) => Ok(()),
            // Some S3-compatible servers (moto) answer 200 with a body under another XML root
            // than S3's, which the SDK cannot parse. The upload is then complete: confirm it by
            // the object's size and multipart ETag rather than trusting the status alone.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {
                self.confirm_multipart(key, body.len(), part_count).await
            }
            Err(e) => Err(self.backend("completing the multipart upload of", key, e)),
        }
    }

    async fn confirm_multipart(
        &self,
        key: &str,
        len: usize,
        parts: usize,
    ) -> Result<(), ObjectStoreError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.backend("confirming the multipart upload of", key, e))?;
        let etag = head.e_tag().unwrap_or_default().trim_matches('"');
        if head.content_length() == Some(len as i64) && etag.ends_with(&format!("-{parts}")) {
            Ok(())
        } else {
            Err(ObjectStoreError::Backend(format!(
                "the multipart upload of s3://{}/{key} did not complete: the object has {:?} bytes \
                 and ETag {etag}, expected {len} bytes in {parts} parts",
                self.bucket,
                head.content_length()
            )))
        }
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectStoreError> {
        if body.len() >= self.multipart_threshold {
            return self.put_multipart(key, body).await;
        }
        crate::metrics::aws_call("s3", "PutObject");
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| self.backend("writing", key, e))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectStoreError> {
        let out = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Err(ObjectStoreError::NotFound(key.to_owned()))
            }
            Err(e) => return Err(self.backend("reading", key, e)),
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| self.backend("reading the body of", key, e))?;
        Ok(body.into_bytes())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectStoreError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.backend("listing", &format!("{prefix}*"), e))?;
            for o in page.contents() {
                objects.push(ObjectMeta {
                    key: o.key().unwrap_or_default().to_owned(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().unwrap_or_default().trim_matches('"').to_owned(),
                });
            }
        }
        // S3 lists in UTF-8 byte order already; sorting keeps the promise for any
        // S3-compatible server that does not.
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectStoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.backend("deleting", key, e))?;
        Ok(())
    }

    async fn health(&self) -> Result<(), ObjectStoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| {
                let reason = match e.raw_response().map(|r| r.status().as_u16()) {
                    Some(404) => "it does not exist (run `shopstream aws init`)".to_owned(),
                    Some(403) => {
                        "access is denied (check the task role's s3:ListBucket permission)"
                            .to_owned()
                    }
                    _ => describe(&e),
                };
                ObjectStoreError::Backend(format!("bucket {} is not usable: {reason}", self.bucket))
            })?;
        Ok(())
    }
}
