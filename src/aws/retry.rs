//! Per-entry retry of batch calls.
//!
//! PutRecords, BatchWriteItem and PutRecordBatch succeed as calls while failing some of their
//! entries (throttled, internal error). Sending the whole batch again would duplicate the entries
//! that did land (Kinesis, Firehose) or waste capacity; so only the failed entries are resent,
//! after a jittered exponential backoff, until every entry is in or one is definitively not.

use rand::Rng;
use std::future::Future;
use std::time::Duration;

/// Jittered exponential backoff ("full jitter": a random delay between zero and the exponential
/// cap), which spreads the retries of many writers instead of synchronising them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Attempts per entry, the first one included.
    pub max_attempts: u32,
}

impl Backoff {
    pub fn from_config(cfg: &crate::config::AwsConfig) -> Self {
        Backoff {
            initial: cfg.partial_retry_initial_backoff,
            max: cfg.partial_retry_max_backoff,
            max_attempts: cfg.partial_retry_max_attempts,
        }
    }

    /// The upper bound of the delay before attempt `attempt + 1` (`attempt` counts from 1).
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A random delay in `[0, cap(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let cap = self.cap(attempt);
        if cap.is_zero() {
            return cap;
        }
        rand::thread_rng().gen_range(Duration::ZERO..=cap)
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
/// when one still fails after `backoff.max_attempts`, [`PartialFailure::Call`] when a call fails
/// as a whole (the caller decides; the SDK has already retried transient call failures).
pub async fn retry_entries<T, R, E, F, Fut>(
    entries: Vec<T>,
    backoff: Backoff,
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
            if attempt >= backoff.max_attempts {
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
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
    }
    Ok(results.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick(max_attempts: u32) -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
            max_attempts,
        }
    }

    #[test]
    fn cap_doubles_up_to_max() {
        let b = quick(5);
        assert_eq!(b.cap(1), Duration::from_millis(1));
        assert_eq!(b.cap(2), Duration::from_millis(2));
        assert_eq!(b.cap(3), Duration::from_millis(4));
        assert_eq!(b.cap(40), Duration::from_millis(4));
        assert!(b.delay(3) <= Duration::from_millis(4));
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
