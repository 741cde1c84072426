//! What the AWS backends share: SDK clients built from [`AwsConfig`](crate::config::AwsConfig),
//! the classification of SDK errors into "try again" and "give up", and the per-entry retry of
//! batch calls that report partial failures (PutRecords, BatchWriteItem, PutRecordBatch).
//!
//! The backends themselves live beside the trait they implement:
//! [`KinesisStream`](crate::stream::kinesis::KinesisStream),
//! [`S3ObjectStore`](crate::object_store::s3::S3ObjectStore),
//! [`DynamoOperationalStore`](crate::store::operational::dynamodb::DynamoOperationalStore),
//! [`FirehoseWarehouse`](crate::store::warehouse::firehose::FirehoseWarehouse) and
//! [`LeaseCoordinator`](crate::stream::kinesis::LeaseCoordinator).

mod clients;
mod errors;
mod retry;

pub use clients::{https_client, AwsClients};
pub use errors::{call_failure, describe, error_code, is_retriable_code, is_transient, SdkError};
pub use retry::{retry_entries, EntryOutcome, EntryRetry, PartialFailure};
