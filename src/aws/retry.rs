//! Per-entry retry of batch calls.
//!
//! PutRecords, BatchWriteItem and PutRecordBatch succeed as calls while failing some of their
//! entries (throttled, internal error). Sending the whole batch again would duplicate the entries
//! that did land (Kinesis, Firehose) or waste capacity; so only the failed entries are resent,
//! after a jittered exponential backoff, until every entry is in or one is definitively not.

use crate::actors::retry::Backoff;
use std::future::Future;

/// How the failed entries of a batch call are resent: after the shared jittered backoff of the
/// sink actors ([`Backoff`]), at most `max_attempts` times per entry (the first send included).
#[derive(Debug, Clone)]
pub struct EntryRetry {
    pub backoff: Backoff,
    pub max_attempts: u32,
}

impl EntryRetry {
    pub fn from_config(cfg: &crate::config::AwsConfig) -> Self {
        EntryRetry {
            backoff: Backoff::with_bounds(
                cfg.partial_retry_initial_backoff,
                cfg.partial_retry_max_backoff,
            ),
            max_attempts: cfg.partial_retry_max_attempts,
        }
    }
}

/// What the service said about one entry of a batch call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome<R> {
    /// Written; `R` is what the caller keeps (a sequence number, or `()`).
    Done(R),
    /// Failed for a reason that may pass (throttling, internal error): send it again.
    Retry(String),
    /// Failed for good (invalid, too large): stop.
    Reject(String),
}

/// Why [`retry_entries`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum PartialFailure<E> {
    /// The entry at `index` (of the caller's input) was refused for good.
    #[error("entry {index} was refused: {reason}")]
    Rejected { index: usize, reason: String },
    /// The entry at `index` still failed after every attempt.
    #[error("entry {index} still failed after {attempts} attempts: {reason}")]
    Exhausted {
        index: usize,
        attempts: u32,
        reason: String,
    },
    /// The batch call itself failed.
    #[error(transparent)]
    Call(E),
}

/// Sends `entries` with `send` and resends the failed ones until all are done. `send` gets the
/// entries still pending (in input order) and must answer one outcome per entry, in that order.
/// Returns one result per input entry, in input order.
///
/// # Errors
/// [`PartialFailure::Rejected`] when an entry is refused for good, [`PartialFailure::Exhausted`]
/// when one still fails after `retry.max_attempts`, [`PartialFailure::Call`] when a call fails
/// as a whole (the caller decides; the SDK has already retried transient call failures).
pub async fn retry_entries<T, R, E, F, Fut>(
    entries: Vec<T>,
    retry: EntryRetry,
    mut send: F,
) -> Result<Vec<R>, PartialFailure<E>>
where
    T: Clone,
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<Vec<EntryOutcome<R>>, E>>,
{
    let mut results: Vec<Option<R>> = (0..entries.len()).map(|_| None).collect();
    let mut pending: Vec<(usize, T)> = entries.into_iter().enumerate().collect();
    let mut attempt = 0;
    let mut backoff = retry.backoff;
    while !pending.is_empty() {
        attempt += 1;
        let outcomes = send(pending.iter().map(|(_, t)| t.clone()).collect())
            .await
            .map_err(PartialFailure::Call)?;
        debug_assert_eq!(outcomes.len(), pending.len(), "one outcome per entry");
        let mut still = Vec::new();
        let mut last_reason = String::new();
        for ((index, entry), outcome) in pending.into_iter().zip(outcomes) {
            match outcome {
                EntryOutcome::Done(r) => results[index] = Some(r),
                EntryOutcome::Reject(reason) => {
                    return Err(PartialFailure::Rejected { index, reason })
                }
                EntryOutcome::Retry(reason) => {
                    last_reason = reason;
                    still.push((index, entry));
                }
            }
        }
        pending = still;
        if let Some((index, _)) = pending.first() {
            if attempt >= retry.max_attempts {
                return Err(PartialFailure::Exhausted {
                    index: *index,
                    attempts: attempt,
                    reason: last_reason,
                });
            }
            tracing::debug!(
                failed = pending.len(),
                attempt,
                reason = %last_reason,
                "a batch call left entries unwritten; resending them"
            );
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
    Ok(results.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn quick(max_attempts: u32) -> EntryRetry {
        EntryRetry {
            backoff: Backoff::with_bounds(Duration::from_millis(1), Duration::from_millis(4)),
            max_attempts,
        }
    }

    #[tokio::test]
    async fn failed_entries_alone_are_resent_and_results_keep_input_order() {
        let mut calls: Vec<Vec<u32>> = Vec::new();
        let out = retry_entries(vec![1u32, 2, 3, 4], quick(5), |batch: Vec<u32>| {
            calls.push(batch.clone());
            let first_call = calls.len() == 1;
            async move {
                Ok::<_, ()>(
                    batch
                        .into_iter()
                        .map(|n| {
                            if first_call && n % 2 == 0 {
                                EntryOutcome::Retry("throttled".into())
                            } else {
                                EntryOutcome::Done(n * 10)
                            }
                        })
                        .collect(),
                )
            }
        })
        .await
        .unwrap();
        assert_eq!(out, vec![10, 20, 30, 40]);
        assert_eq!(calls, vec![vec![1, 2, 3, 4], vec![2, 4]]);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_on_rejection() {
        let err = retry_entries(vec![1u32], quick(3), |b: Vec<u32>| async move {
            Ok::<Vec<EntryOutcome<()>>, ()>(
                b.iter()
                    .map(|_| EntryOutcome::Retry("busy".into()))
                    .collect(),
            )
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, PartialFailure::Exhausted { attempts: 3, .. }),
            "{err:?}"
        );

        let err = retry_entries(vec![1u32, 2], quick(3), |b: Vec<u32>| async move {
            Ok::<Vec<EntryOutcome<()>>, ()>(
                b.iter()
                    .map(|n| match n {
                        2 => EntryOutcome::Reject("too large".into()),
                        _ => EntryOutcome::Done(()),
                    })
                    .collect(),
            )
        })
        .await
        .unwrap_err();
        assert!(
            matches!(err, PartialFailure::Rejected { index: 1, .. }),
            "{err:?}"
        );
    }
}
