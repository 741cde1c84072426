//! What a shard actor needs of a sink: write one unit of lines, and say whether a failure is worth
//! retrying. The three sinks (archive, operational, warehouse) implement [`SinkWriter`] over their
//! backend traits; the actor holds the behaviour (batching, retry, checkpoints, dead letters).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

use crate::model::IngestedLine;
use crate::store::StoreError;
use crate::stream::{SequenceNumber, ShardId, SinkKind};

/// The lines of stream records `first..=last` of one shard, written as one unit.
#[derive(Debug)]
pub struct SinkUnit<'a> {
    pub shard: &'a ShardId,
    pub first: &'a SequenceNumber,
    pub last: &'a SequenceNumber,
    /// When the first record of the unit entered shopstream (the archive partitions by it).
    pub first_ingested_at: DateTime<Utc>,
    pub lines: &'a [&'a IngestedLine],
}

/// Why a write failed, and whether trying again can help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SinkFailure {
    /// The backend is down, busy, locked, throttling or out of disk: the same write may succeed
    /// later. A sink never gives up on these, however many attempts it takes (it lags, status and
    /// readiness show it, and ingest pushes back); only the rest (the backend refuses the line)
    /// go to dead letters.
    pub retriable: bool,
    pub message: String,
    /// A permanent failure of a call that does not say which of its lines caused it
    /// ([`StoreError::Invalid`]): see [`SinkFailure::whole_call`].
    pub whole_call: bool,
}

impl SinkFailure {
    pub fn retriable(message: impl Into<String>) -> Self {
        SinkFailure {
            retriable: true,
            message: message.into(),
            whole_call: false,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        SinkFailure {
            retriable: false,
            message: message.into(),
            whole_call: false,
        }
    }

    /// The backend refused a write call as invalid without naming a line. Written one line at a
    /// time, a line refused so on its own goes to dead letters; when every line of a unit of
    /// several is refused, the backend is the cause and the unit is retried as transient.
    pub fn whole_call(message: impl Into<String>) -> Self {
        SinkFailure {
            retriable: false,
            message: message.into(),
            whole_call: true,
        }
    }
}

/// A store's failure as the shard actor sees it: retriable exactly when
/// [`StoreError::is_retriable`] says so.
impl From<StoreError> for SinkFailure {
    fn from(e: StoreError) -> Self {
        SinkFailure {
            retriable: e.is_retriable(),
            whole_call: matches!(e, StoreError::Invalid(_)),
            message: e.to_string(),
        }
    }
}

/// How a sink groups records before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Write every read batch as it comes (the stores: small idempotent upserts).
    EveryRead,
    /// Buffer until this many bytes of lines or until the oldest buffered record is this old
    /// (the archive: fewer, larger objects).
    Buffered { max_bytes: usize, max_age: Duration },
}

#[async_trait]
pub trait SinkWriter: Send + Sync + 'static {
    fn kind(&self) -> SinkKind;

    fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy::EveryRead
    }

    /// True when a unit must be written again exactly as first cut after a crash (the archive
    /// names each object after its sequence range), so the actor announces each unit's range in the
    /// checkpoint store before writing it.
    fn exact_units(&self) -> bool {
        false
    }

    /// True when the lines of a unit that failed for good can be written one at a time, so that one
    /// bad line goes to dead letters and not its whole unit. False for the archive, whose unit is an
    /// object.
    fn per_line(&self) -> bool {
        true
    }

    /// Writes the unit; idempotent (a unit written twice is stored once).
    async fn write(&self, unit: &SinkUnit<'_>) -> Result<(), SinkFailure>;

    /// Whether the backend answers, with the reason when it does not (for readiness; it plays no
    /// part in whether a line is dead-lettered).
    async fn health(&self) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_failure_keeps_its_retry_rule_and_message() {
        let busy = SinkFailure::from(StoreError::Unavailable("database is locked".into()));
        assert!(busy.retriable);
        assert!(busy.message.contains("database is locked"));
        let rejected = SinkFailure::from(StoreError::Rejected {
            line_id: "0".repeat(32),
            reason: "price has 7 decimals".into(),
        });
        assert!(!rejected.retriable);
        assert!(rejected.message.contains("price has 7 decimals"));
        assert!(SinkFailure::from(StoreError::Backend("connection reset".into())).retriable);
    }
}
