//! Bulk files in S3 (`s3://bucket/prefix`): listed with ListObjectsV2, the ETag as change token,
//! size, ETag and LastModified as stamp, read with GetObject streamed chunk by chunk (never the
//! whole object in memory).

use std::io::{self, Read};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use bytes::Buf;
use tokio::runtime::Handle;

use super::source::{is_bulk_name, Source, SourceFile};
use super::ImportError;
use crate::config::AwsConfig;

/// An S3 client from the `[aws]` settings, set up as every AWS backend's is
/// ([`AwsClients`](crate::aws::AwsClients): region, endpoint override with path-style addressing,
/// credentials from the default provider chain).
pub async fn s3_client(aws: &AwsConfig) -> Client {
    crate::aws::AwsClients::from_config(aws).await.s3
}

/// The objects under `s3://bucket/prefix` whose names end in `.csv` or `.csv.gz`. Blocking like
/// every [`Source`]: it drives the async SDK on the runtime it was created in, so it must be
/// created inside a Tokio runtime and used from a blocking thread of it.
pub struct S3Source {
    client: Client,
    bucket: String,
    prefix: String,
    runtime: Handle,
}

pub use crate::config::{check_bucket_name, BUCKET_RULE};

impl S3Source {
    /// # Errors
    /// [`ImportError::Source`] when `spec` is not `s3://bucket[/prefix]` or no runtime is running.
    pub fn new(client: Client, spec: &str) -> Result<Self, ImportError> {
        let fail = |reason: &str| ImportError::Source {
            source_name: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = spec
            .strip_prefix("s3://")
            .ok_or_else(|| fail("is not an s3://bucket/prefix address"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(fail("names no bucket; write s3://bucket/prefix"));
        }
        check_bucket_name(bucket).map_err(|reason| fail(&reason))?;
        let runtime = Handle::try_current()
            .map_err(|_| fail("S3 sources need a Tokio runtime; this is a bug in the caller"))?;
        Ok(S3Source {
            client,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            runtime,
        })
    }

    fn fail(&self, reason: String) -> ImportError {
        ImportError::Source {
            source_name: format!("s3://{}/{}", self.bucket, self.prefix),
            reason,
        }
    }

    fn object_key<'a>(&self, file: &'a SourceFile) -> &'a str {
        let bucket_prefix = format!("s3://{}/", self.bucket);
        file.key
            .strip_prefix(bucket_prefix.as_str())
            .unwrap_or(&file.key)
    }
}

impl Source for S3Source {
    fn list(&self) -> Result<Vec<SourceFile>, ImportError> {
        self.runtime.block_on(async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .into_paginator()
                .send();
            let mut files = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| {
                    self.fail(format!(
                        "cannot be listed: {}; check the bucket name, aws.region, aws.endpoint_url and the credentials",
                        crate::aws::describe(&e)
                    ))
                })?;
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    if !is_bulk_name(key) {
                        continue;
                    }
                    let size = object.size().unwrap_or(0).max(0) as u64;
                    let e_tag = object.e_tag().unwrap_or("").trim_matches('"').to_owned();
                    let modified = object
                        .last_modified()
                        .map_or_else(String::new, |t| format!("{}.{:09}", t.secs(), t.subsec_nanos()));
                    files.push(SourceFile {
                        key: format!("s3://{}/{key}", self.bucket),
                        size,
                        stamp: format!("{size}:{e_tag}:{modified}"),
                        change_token: e_tag,
                    });
                }
            }
            files.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(files)
        })
    }

    /// Reads the object only while its ETag is still the listed token (`If-Match`), so the bytes
    /// loaded are the content the ledger records.
    fn open(&self, file: &SourceFile) -> Result<Box<dyn Read + Send>, ImportError> {
        let key = self.object_key(file).to_owned();
        let mut request = self.client.get_object().bucket(&self.bucket).key(&key);
        if !file.change_token.is_empty() {
            request = request.if_match(format!("\"{}\"", file.change_token));
        }
        let object = self.runtime.block_on(request.send()).map_err(|e| {
            self.fail(format!(
                "cannot read {key}: {} (a failed precondition means it changed since it was listed; import again)",
                crate::aws::describe(&e)
            ))
        })?;
        Ok(Box::new(ObjectReader {
            body: object.body,
            chunk: bytes::Bytes::new(),
            runtime: self.runtime.clone(),
        }))
    }
}

/// A GetObject body as a blocking [`Read`]: one network chunk in memory at a time.
struct ObjectReader {
    body: ByteStream,
    chunk: bytes::Bytes,
    runtime: Handle,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.chunk.has_remaining() {
            match self.runtime.block_on(self.body.next()) {
                None => return Ok(0),
                Some(Ok(chunk)) => self.chunk = chunk,
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.chunk.remaining());
        self.chunk.copy_to_slice(&mut buf[..n]);
        Ok(n)
    }
}
