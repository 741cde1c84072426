//! The stream on AWS: Kinesis Data Streams for the records, a DynamoDB lease table for which
//! instance reads which shard and for the sinks' checkpoints (KCL-like).

mod leases;
mod stream;

pub use leases::{DynamoCheckpoints, LeaseCoordinator};
pub use stream::{parse_sequence_number, KinesisStream, MAX_GET_RECORDS_PER_SECOND};
