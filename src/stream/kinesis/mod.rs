//! The stream on AWS: Kinesis Data Streams for the records, a DynamoDB lease table for which
//! instance reads which shard and for the sinks' checkpoints (KCL-like).

mod checkpoints;
mod lease_table;
mod leases;
mod line_index;
mod stream;

pub use checkpoints::DynamoCheckpoints;
pub use leases::LeaseCoordinator;
pub use line_index::DynamoLineIndex;
pub use stream::{parse_sequence_number, KinesisStream, MAX_GET_RECORDS_PER_SECOND};
