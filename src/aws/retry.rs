//! Per-entry retry of batch calls.
//!
//! PutRecords, BatchWriteItem and PutRecordBatch succeed as calls while failing some of their
//! entries (throttled, internal error). Sending the whole batch again would duplicate the entries
//! that did land (Kinesis, Firehose) or waste capacity; so only the failed entries are resent,
//! after a jittered exponential backoff, until every entry is in or one is definitively not.

use crate::retry::Backoff;
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
/// A call that fails as a whole before any entry is written is the caller's to handle (nothing
/// landed, so the caller may answer backpressure and its client resend safely; the SDK has already
/// retried transient failures). Once some entries are written, a call failure that `transient`
/// accepts is retried here like a failed entry: handing back a half-written batch as failed would
/// make the client resend the whole of it, and Kinesis and Firehose would store the written part
/// twice.
///
/// # Errors
/// [`PartialFailure::Rejected`] when an entry is refused for good, [`PartialFailure::Exhausted`]
/// when one still fails after `retry.max_attempts`, [`PartialFailure::Call`] when a call fails
/// as a whole and is not retried (as above).
pub async fn retry_entries<T, R, E, F, Fut>(
    entries: Vec<T>,
    retry: EntryRetry,
    transient: impl Fn(&E) -> bool,
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
        let outcomes = match send(pending.iter().map(|(_, t)| t.clone()).collect()).await {
            Ok(outcomes) => outcomes,
            Err(e) => {
                let some_written = results.iter().any(Option::is_some);
                if !(some_written && transient(&e) && attempt < retry.max_attempts) {
                    return Err(PartialFailure::Call(e));
                }
                tracing::debug!(
                    pending = pending.len(),
                    attempt,
                    "a batch call failed after part of the batch was written; sending the rest again"
                );
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
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
        let out = retry_entries(
            vec![1u32, 2, 3, 4],
            quick(5),
            |_: &()| true,
            |batch: Vec<u32>| {
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
            },
        )
        .await
        .unwrap();
        assert_eq!(out, vec![10, 20, 30, 40]);
        assert_eq!(calls, vec![vec![1, 2, 3, 4], vec![2, 4]]);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_on_rejection() {
        let err = retry_entries(
            vec![1u32],
            quick(3),
            |_: &()| true,
            |b: Vec<u32>| async move {
                Ok::<Vec<EntryOutcome<()>>, ()>(
                    b.iter()
                        .map(|_| EntryOutcome::Retry("busy".into()))
                        .collect(),
                )
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, PartialFailure::Exhausted { attempts: 3, .. }),
            "{err:?}"
        );

        let err = retry_entries(
            vec![1u32, 2],
            quick(3),
            |_: &()| true,
            |b: Vec<u32>| async move {
                Ok::<Vec<EntryOutcome<()>>, ()>(
                    b.iter()
                        .map(|n| match n {
                            2 => EntryOutcome::Reject("too large".into()),
                            _ => EntryOutcome::Done(()),
                        })
                        .collect(),
                )
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, PartialFailure::Rejected { index: 1, .. }),
            "{err:?}"
        );
    }

    /// A throttled call after part of a batch landed is retried (the client must not resend the
    /// written part); one before anything landed goes back to the caller, as does a call error
    /// that is not transient.
    #[tokio::test]
    async fn a_failed_call_is_retried_only_once_part_of_the_batch_is_written() {
        let mut calls = 0;
        let out = retry_entries(
            vec![1u32, 2],
            quick(5),
            |e: &&str| *e == "throttled",
            |b: Vec<u32>| {
                calls += 1;
                let call = calls;
                async move {
                    match call {
                        1 => Ok(b
                            .iter()
                            .map(|&n| match n {
                                1 => EntryOutcome::Done(n),
                                _ => EntryOutcome::Retry("internal".into()),
                            })
                            .collect()),
                        2 => Err("throttled"),
                        _ => Ok(b.iter().map(|&n| EntryOutcome::Done(n)).collect()),
                    }
                }
            },
        )
        .await
        .unwrap();
        assert_eq!((out, calls), (vec![1, 2], 3));

        let first_fails = retry_entries(
            vec![1u32],
            quick(5),
            |_: &&str| true,
            |_b: Vec<u32>| async move { Err::<Vec<EntryOutcome<u32>>, _>("throttled") },
        )
        .await;
        assert!(matches!(
            first_fails,
            Err(PartialFailure::Call("throttled"))
        ));

        let mut calls = 0;
        let not_transient = retry_entries(
            vec![1u32, 2],
            quick(5),
            |e: &&str| *e == "throttled",
            |b: Vec<u32>| {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        Ok(b.iter()
                            .map(|&n| match n {
                                1 => EntryOutcome::Done(n),
                                _ => EntryOutcome::Retry("internal".into()),
                            })
                            .collect())
                    } else {
                        Err("access denied")
                    }
                }
            },
        )
        .await;
        assert!(matches!(
            not_transient,
            Err(PartialFailure::Call("access denied"))
        ));
    }
}
