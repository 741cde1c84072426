//! Settings of the AWS backends. What every AWS client shares (region, endpoints, the retry of
//! partial batch failures) is `[aws]`; what one stage's backend needs sits with that stage:
//! `[stream.kinesis]`, `[archive.s3]` (also the dead letters' bucket), `[operational.dynamodb]`,
//! `[warehouse.firehose]`. Every key is documented in `config/default.toml` too.

use serde::Deserialize;
use std::time::Duration;

use super::server::bad;
use super::{Backend, ConfigError};

/// S3's smallest part of a multipart upload (every part but the last).
pub const S3_MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// The longest `stream.kinesis.idle_read_interval` accepted.
const MAX_IDLE_READ_INTERVAL: Duration = Duration::from_secs(60);

/// `[aws]`: what every AWS client shares.
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

    pub fn validate(&self) -> Result<(), ConfigError> {
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

/// A name a stage needs once its backend is `aws`.
fn need(backend: Backend, key: &'static str, value: &str) -> Result<(), ConfigError> {
    if backend == Backend::Aws && value.is_empty() {
        Err(bad(key, "must be set when a stage uses the aws backend"))
    } else {
        Ok(())
    }
}

/// `[stream.kinesis]`: the stream on Kinesis Data Streams and its DynamoDB lease table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisConfig {
    /// Kinesis data stream name.
    pub stream_name: String,
    /// Shards `shopstream aws init` gives a stream it creates (an existing stream is left alone).
    pub shards: u32,
    /// DynamoDB lease table of the Kinesis shard readers: lease owner and sink checkpoints per shard.
    pub leases_table: String,
    /// A lease whose counter has not moved for this long is taken over by another instance.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
    /// DynamoDB table of line ids and `Idempotency-Key`s (docs/line-identity.md).
    pub line_index_table: String,
    /// How long the line-id table keeps an entry (its TTL); keep it at least the Kinesis stream's
    /// retention period, so a redelivered or retried line is recognised as long as it can arrive.
    #[serde(with = "humantime_serde")]
    pub line_index_retention: Duration,
    /// After a read finds a shard caught up and empty, the next read of that shard's tip waits
    /// this long (0: the shard's limit of five reads a second).
    #[serde(with = "humantime_serde")]
    pub idle_read_interval: Duration,
}

impl KinesisConfig {
    /// `shard_refresh` is how often leases are renewed (`sinks.shard_refresh`).
    pub fn validate(&self, backend: Backend, shard_refresh: Duration) -> Result<(), ConfigError> {
        need(backend, "stream.kinesis.stream_name", &self.stream_name)?;
        need(backend, "stream.kinesis.leases_table", &self.leases_table)?;
        need(
            backend,
            "stream.kinesis.line_index_table",
            &self.line_index_table,
        )?;
        if self.line_index_retention < Duration::from_secs(24 * 3600) {
            return Err(bad(
                "stream.kinesis.line_index_retention",
                "must be at least 24h, the shortest retention of a Kinesis stream; keep it at least the stream's retention period",
            ));
        }
        if self.idle_read_interval > MAX_IDLE_READ_INTERVAL {
            return Err(bad(
                "stream.kinesis.idle_read_interval",
                "must be at most 1m: a new record waits up to this long before the sinks see it, and a shard iterator expires after 5 minutes",
            ));
        }
        if !(1..=10_000).contains(&self.shards) {
            return Err(bad("stream.kinesis.shards", "must be between 1 and 10000"));
        }
        if self.lease_duration < Duration::from_millis(100) {
            return Err(bad(
                "stream.kinesis.lease_duration",
                "must be at least 100ms",
            ));
        }
        // Leases are renewed once per shard refresh: a lease shorter than two refreshes would be
        // taken from a live instance between its renewals.
        if backend == Backend::Aws && self.lease_duration < 2 * shard_refresh {
            return Err(bad(
                "stream.kinesis.lease_duration",
                &format!(
                    "must be at least twice sinks.shard_refresh ({shard_refresh:?}), which is how often leases are renewed"
                ),
            ));
        }
        Ok(())
    }
}

/// `[archive.s3]`: the S3 bucket of the raw archive, and of the dead letters when they are on
/// `aws` too.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// S3 bucket of the raw archive and dead letters.
    pub bucket: String,
    /// Objects of at least this many bytes are written by multipart upload instead of one PUT.
    pub multipart_threshold_bytes: usize,
    /// Size of each multipart part (S3 needs at least 5 MiB for every part but the last).
    pub multipart_part_bytes: usize,
}

impl S3Config {
    /// `backend` is `aws` when the archive or the dead letters are on S3.
    pub fn validate(&self, backend: Backend) -> Result<(), ConfigError> {
        need(backend, "archive.s3.bucket", &self.bucket)?;
        if self.multipart_part_bytes < S3_MIN_PART_BYTES {
            return Err(bad(
                "archive.s3.multipart_part_bytes",
                "must be at least 5242880 (5 MiB, S3's smallest part)",
            ));
        }
        if self.multipart_threshold_bytes < self.multipart_part_bytes {
            return Err(bad(
                "archive.s3.multipart_threshold_bytes",
                "must be at least archive.s3.multipart_part_bytes",
            ));
        }
        Ok(())
    }
}

/// `[operational.dynamodb]`: the operational store on DynamoDB.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbConfig {
    /// DynamoDB table of invoice lines (partition key InvoiceNo, sort key LineId).
    pub invoices_table: String,
    /// Global secondary index of `invoices_table` for customer look-ups (CustomerID, InvoiceDate).
    pub customers_index: String,
}

impl DynamoDbConfig {
    pub fn validate(&self, backend: Backend) -> Result<(), ConfigError> {
        need(
            backend,
            "operational.dynamodb.invoices_table",
            &self.invoices_table,
        )?;
        need(
            backend,
            "operational.dynamodb.customers_index",
            &self.customers_index,
        )
    }
}

/// `[warehouse.firehose]`: the warehouse as a Firehose delivery stream into Redshift.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirehoseConfig {
    /// Firehose delivery stream that loads the Redshift `sales` table.
    pub delivery_stream: String,
    /// IAM role Firehose assumes to write to S3, used only when `shopstream aws init` creates the
    /// delivery stream (local servers accept any ARN). Empty: init reports a missing delivery
    /// stream instead of creating it; production creates it from the templates in `deploy/`.
    pub role_arn: String,
    /// Key prefix of the objects a delivery stream created by `aws init` writes into
    /// `archive.s3.bucket`.
    pub prefix: String,
}

impl FirehoseConfig {
    pub fn validate(&self, backend: Backend) -> Result<(), ConfigError> {
        need(
            backend,
            "warehouse.firehose.delivery_stream",
            &self.delivery_stream,
        )
    }
}

/// The rule every bucket name follows, quoted in the error for one that does not.
pub const BUCKET_RULE: &str = "a bucket name is 3 to 63 characters of lowercase letters, digits, \
     dots and hyphens, starting and ending with a letter or a digit (AWS's bucket naming rules)";

/// Checks a bucket name against AWS's naming rules before it goes into a request path: without
/// this, `s3://../../etc/passwd` would send `GET /../?list-type=2` to the endpoint.
///
/// # Errors
/// A sentence naming the bucket and [`BUCKET_RULE`] (or the rule about adjacent dots and IP
/// addresses) when it breaks one.
pub fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let bytes = bucket.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && edge_ok(bytes.first())
        && edge_ok(bytes.last());
    if !ok {
        return Err(format!(
            "bucket {bucket:?} is not a valid name: {BUCKET_RULE}"
        ));
    }
    if bucket.contains("..") || bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!(
            "bucket {bucket:?} is not a valid name: it may not hold two adjacent dots or be an IP address"
        ));
    }
    Ok(())
}
