//! Settings of the AWS backends. Every key is documented in `config/default.toml` too.

use serde::Deserialize;
use std::time::Duration;

use super::server::bad;
use super::{Backend, ConfigError, Settings};

/// S3's smallest part of a multipart upload (every part but the last).
pub const S3_MIN_PART_BYTES: usize = 5 * 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// Region; empty means the default provider chain decides (AWS_REGION, profile, ECS).
    pub region: String,
    /// Endpoint override for every service (local AWS-compatible servers); empty for AWS itself.
    /// When set, S3 is addressed path-style and request checksums are sent only when required,
    /// which is what the local servers understand.
    pub endpoint_url: String,
    /// Per-service endpoint overrides; empty means `endpoint_url` (for example Kinesis on
    /// kinesalite while the other services are on moto_server).
    pub kinesis_endpoint_url: String,
    pub s3_endpoint_url: String,
    pub dynamodb_endpoint_url: String,
    pub firehose_endpoint_url: String,
    /// Kinesis data stream name.
    pub stream_name: String,
    /// Shards `shopstream aws init` gives a stream it creates (an existing stream is left alone).
    pub stream_shards: u32,
    /// S3 bucket of the raw archive and dead letters.
    pub bucket: String,
    /// Objects of at least this many bytes are written by multipart upload instead of one PUT.
    pub multipart_threshold_bytes: usize,
    /// Size of each multipart part (S3 needs at least 5 MiB for every part but the last).
    pub multipart_part_bytes: usize,
    /// DynamoDB table of invoice lines (partition key InvoiceNo, sort key LineId).
    pub invoices_table: String,
    /// Global secondary index of `invoices_table` for customer look-ups (CustomerID, InvoiceDate).
    pub customers_index: String,
    /// DynamoDB lease table of the Kinesis shard readers: lease owner and sink checkpoints per shard.
    pub leases_table: String,
    /// A lease whose counter has not moved for this long is taken over by another instance.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// Firehose delivery stream that loads the Redshift `sales` table.
    pub delivery_stream: String,
    /// IAM role Firehose assumes to write to S3, used only when `shopstream aws init` creates the
    /// delivery stream (local servers accept any ARN). Empty: init reports a missing delivery
    /// stream instead of creating it; production creates it from the templates in `deploy/`.
    pub firehose_role_arn: String,
    /// Key prefix of the objects a delivery stream created by `aws init` writes into `bucket`.
    pub firehose_prefix: String,
    /// Attempts per entry when a batch call (PutRecords, BatchWriteItem, PutRecordBatch) reports
    /// some entries failed; the failed ones alone are sent again.
    pub partial_retry_max_attempts: u32,
    /// First backoff before resending failed entries; doubles per attempt, fully jittered.
    #[serde(with = "humantime_serde")]
    pub partial_retry_initial_backoff: Duration,
    /// Longest backoff between attempts.
    #[serde(with = "humantime_serde")]
    pub partial_retry_max_backoff: Duration,
}

/// The AWS services shopstream calls, for per-service settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsService {
    Kinesis,
    S3,
    DynamoDb,
    Firehose,
}

impl AwsConfig {
    /// The endpoint override of `service`: its own key when set, else `endpoint_url`; empty
    /// means the service's AWS endpoint for the region.
    pub fn endpoint(&self, service: AwsService) -> &str {
        let own = match service {
            AwsService::Kinesis => &self.kinesis_endpoint_url,
            AwsService::S3 => &self.s3_endpoint_url,
            AwsService::DynamoDb => &self.dynamodb_endpoint_url,
            AwsService::Firehose => &self.firehose_endpoint_url,
        };
        if own.is_empty() {
            &self.endpoint_url
        } else {
            own
        }
    }

    pub fn validate(&self, all: &Settings) -> Result<(), ConfigError> {
        let uses_aws = all.stream.backend == Backend::Aws
            || all.archive.backend == Backend::Aws
            || all.operational.backend == Backend::Aws
            || all.warehouse.backend == Backend::Aws
            || all.dead_letter.backend == Backend::Aws;
        let need = |key: &'static str, value: &str| {
            if uses_aws && value.is_empty() {
                Err(ConfigError::BadValue {
                    key,
                    reason: "must be set when a stage uses the aws backend".into(),
                })
            } else {
                Ok(())
            }
        };
        if all.stream.backend == Backend::Aws {
            need("aws.stream_name", &self.stream_name)?;
            need("aws.leases_table", &self.leases_table)?;
        }
        if all.archive.backend == Backend::Aws || all.dead_letter.backend == Backend::Aws {
            need("aws.bucket", &self.bucket)?;
        }
        if all.operational.backend == Backend::Aws {
            need("aws.invoices_table", &self.invoices_table)?;
            need("aws.customers_index", &self.customers_index)?;
        }
        if all.warehouse.backend == Backend::Aws {
            need("aws.delivery_stream", &self.delivery_stream)?;
        }
        if !(1..=10_000).contains(&self.stream_shards) {
            return Err(bad("aws.stream_shards", "must be between 1 and 10000"));
        }
        if self.multipart_part_bytes < S3_MIN_PART_BYTES {
            return Err(bad(
                "aws.multipart_part_bytes",
                "must be at least 5242880 (5 MiB, S3's smallest part)",
            ));
        }
        if self.multipart_threshold_bytes < self.multipart_part_bytes {
            return Err(bad(
                "aws.multipart_threshold_bytes",
                "must be at least aws.multipart_part_bytes",
            ));
        }
        if self.lease_duration < Duration::from_millis(100) {
            return Err(bad("aws.lease_duration", "must be at least 100ms"));
        }
        // Leases are renewed once per shard refresh: a lease shorter than two refreshes would be
        // taken from a live instance between its renewals.
        if all.stream.backend == Backend::Aws && self.lease_duration < 2 * all.sinks.shard_refresh {
            return Err(bad(
                "aws.lease_duration",
                &format!(
                    "must be at least twice sinks.shard_refresh ({:?}), which is how often leases are renewed",
                    all.sinks.shard_refresh
                ),
            ));
        }
        for (key, url) in [
            ("aws.endpoint_url", &self.endpoint_url),
            ("aws.kinesis_endpoint_url", &self.kinesis_endpoint_url),
            ("aws.s3_endpoint_url", &self.s3_endpoint_url),
            ("aws.dynamodb_endpoint_url", &self.dynamodb_endpoint_url),
            ("aws.firehose_endpoint_url", &self.firehose_endpoint_url),
        ] {
            let plausible =
                url.is_empty() || url.starts_with("http://") || url.starts_with("https://");
            if !plausible {
                return Err(bad(
                    key,
                    "must be a URL starting with http:// or https:// (or empty for AWS itself)",
                ));
            }
        }
        if self.partial_retry_max_attempts == 0 {
            return Err(bad("aws.partial_retry_max_attempts", "must be at least 1"));
        }
        if self.partial_retry_initial_backoff > self.partial_retry_max_backoff {
            return Err(bad(
                "aws.partial_retry_initial_backoff",
                "must not exceed aws.partial_retry_max_backoff",
            ));
        }
        Ok(())
    }
}
