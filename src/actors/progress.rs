//! Where every sink stands on every shard: the shared picture that ingest uses for backpressure,
//! `/v1/status` shows, and the backlog and lag metrics export.
//!
//! Lag is time, so it means the same on every backend: how long the oldest record a sink has not
//! checkpointed has been in the stream. The embedded log tells it exactly (the arrival time of
//! that record, which the pipeline looks up every second and hands to
//! [`Progress::record_oldest_unprocessed`]); Kinesis tells how far each
//! read was behind the newest record (`MillisBehindLatest`), to which the time since that read
//! is added while the sink has not checkpointed after it (a sink stuck on a batch falls further
//! behind with every second, though it reads nothing). A count of records is given only where
//! the backend numbers records densely (the embedded log); Kinesis sequence numbers are sparse.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::stream::{SequenceNumber, ShardId, SinkKind};

#[derive(Debug, Default)]
struct Entry {
    checkpoint: Option<SequenceNumber>,
    /// Since when records have been waiting without the checkpoint moving (None when caught up).
    behind_since: Option<Instant>,
    lines_written: u64,
    lines_buffered: u64,
    millis_behind_latest: Option<u64>,
    /// When the last read that reported `millis_behind_latest` happened.
    read_at: Option<Instant>,
    /// When the checkpoint last moved.
    checkpointed_at: Option<Instant>,
    /// The first record after the checkpoint and when it arrived in the stream (sampled).
    oldest_unprocessed: Option<(SequenceNumber, DateTime<Utc>)>,
    /// The sink is retrying a failing backend right now.
    failing: Option<String>,
    restarts: u64,
}

impl Entry {
    /// Whether records of the shard whose newest known record is `head` wait for the sink, and
    /// how many where numbering is dense (the embedded log); Kinesis numbers are sparse, so there
    /// only whether any record waits is known.
    fn waiting(&self, head: Option<&SequenceNumber>) -> (bool, Option<u64>) {
        let (behind, count) = match (head, &self.checkpoint) {
            (_, Some(c)) if c.is_shard_end() => return (false, Some(0)),
            (Some(h), Some(c)) => (h > c, h.distance_from(c)),
            (Some(h), None) => (true, h.as_u64()),
            (None, _) => (false, Some(0)),
        };
        if behind {
            return (true, count);
        }
        // A read behind the newest record says records wait that this instance has not seen
        // (another instance appended them), but not how many.
        if self.millis_behind_latest.is_some_and(|m| m > 0) {
            return (true, None);
        }
        (false, Some(0))
    }

    /// How long the oldest record not yet checkpointed has been waiting, given whether any is.
    fn lag(&self, behind: bool, now: Instant, wall: DateTime<Utc>) -> Duration {
        if !behind {
            return Duration::ZERO;
        }
        if let Some((seq, arrived)) = &self.oldest_unprocessed {
            if self.checkpoint.as_ref().is_none_or(|c| c < seq) {
                return (wall - *arrived).to_std().unwrap_or(Duration::ZERO);
            }
        }
        if let (Some(millis), Some(read_at)) = (self.millis_behind_latest, self.read_at) {
            let since_read = match self.checkpointed_at {
                Some(at) if at >= read_at => Duration::ZERO,
                _ => now.duration_since(read_at),
            };
            return Duration::from_millis(millis) + since_read;
        }
        self.behind_since
            .map_or(Duration::ZERO, |t| now.duration_since(t))
    }
}

/// One row of [`Progress::snapshot`].
#[derive(Debug, Clone, Serialize)]
pub struct SinkShardStatus {
    pub sink: SinkKind,
    pub shard: ShardId,
    /// Last sequence number the sink has stored and checkpointed (`"end"` once a closed shard is
    /// done), as text: sequence numbers exceed what JSON numbers carry exactly.
    pub checkpoint: Option<String>,
    pub latest: Option<String>,
    /// Whether records of the shard wait for the sink.
    pub behind: bool,
    /// Records of the shard not yet checkpointed by the sink, where the backend numbers densely
    /// (the embedded log); `None` on Kinesis, whose lag shows in `lag_seconds`.
    pub backlog_records: Option<u64>,
    /// How long the oldest record the sink has not checkpointed has been in the stream (0 when
    /// caught up): the figure `sinks.max_lag` holds ingest to, on every backend.
    pub lag_seconds: f64,
    pub checkpoint_age_seconds: u64,
    pub lines_written: u64,
    /// Lines read from the shard and held, not yet written (the archive holds a unit until it is
    /// due by size or age).
    pub lines_buffered: u64,
    pub millis_behind_latest: Option<u64>,
    /// The error the sink is retrying, if it is failing now.
    pub failing: Option<String>,
    /// How often the (sink, shard) worker failed or panicked and was restarted from its
    /// checkpoint since this process started.
    pub restarts: u64,
}

#[derive(Debug, Default)]
pub struct Progress {
    sinks: Mutex<BTreeMap<(SinkKind, ShardId), Entry>>,
    latest: Mutex<BTreeMap<ShardId, SequenceNumber>>,
    /// The last [`Pressure`] and when it was taken, for callers on hot paths.
    recent_pressure: Mutex<Option<(Instant, Pressure)>>,
}

/// The sink furthest behind, by records and by time: what ingest's backpressure looks at.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pressure {
    /// Largest backlog in records (where counted) of any sink on any shard.
    pub max_backlog_records: u64,
    /// Largest lag of any sink on any shard, and which one.
    pub max_lag: Duration,
    pub max_lag_at: Option<(SinkKind, ShardId)>,
}

impl Progress {
    /// Makes `sink` on `shard` part of the picture before its actor has done anything, so a sink
    /// that has not started yet counts as behind, not as absent.
    pub fn register(&self, sink: SinkKind, shard: &ShardId) {
        let mut sinks = self.sinks.lock().expect("progress lock");
        sinks.entry((sink, shard.clone())).or_default();
    }

    /// Drops `sink` on `shard` from the picture and its gauges: another instance reads the shard
    /// now (its lease moved), so its backlog is no longer this instance's.
    pub fn forget(&self, sink: SinkKind, shard: &ShardId) {
        self.sinks
            .lock()
            .expect("progress lock")
            .remove(&(sink, shard.clone()));
        let labels = [sink.as_str(), shard.0.as_str()];
        for gauge in [
            &crate::metrics::SINK_BACKLOG_RECORDS,
            &crate::metrics::SINK_CHECKPOINT_AGE,
            &crate::metrics::STREAM_MILLIS_BEHIND_LATEST,
        ] {
            let _ = gauge.remove_label_values(&labels);
        }
        let _ = crate::metrics::SINK_LAG_SECONDS.remove_label_values(&labels);
    }

    /// The stream holds records of `shard` up to `seq` (from an append or a read).
    pub fn record_latest(&self, shard: &ShardId, seq: &SequenceNumber) {
        let mut latest = self.latest.lock().expect("progress lock");
        match latest.get_mut(shard) {
            Some(head) if *head >= *seq => {}
            Some(head) => *head = seq.clone(),
            None => {
                latest.insert(shard.clone(), seq.clone());
            }
        }
    }

    /// `sink` has stored and checkpointed `shard` up to `seq`, `lines` more lines than before.
    pub fn record_checkpoint(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        seq: &SequenceNumber,
        lines: u64,
    ) {
        let mut sinks = self.sinks.lock().expect("progress lock");
        let entry = sinks.entry((sink, shard.clone())).or_default();
        if entry.checkpoint.as_ref().is_none_or(|c| seq > c) {
            entry.checkpoint = Some(seq.clone());
            entry.behind_since = None;
            entry.checkpointed_at = Some(Instant::now());
        }
        entry.lines_written += lines;
        entry.failing = None;
    }

    /// `sink` holds `lines` lines of `shard` read and not yet written.
    pub fn record_buffered(&self, sink: SinkKind, shard: &ShardId, lines: u64) {
        let mut sinks = self.sinks.lock().expect("progress lock");
        sinks
            .entry((sink, shard.clone()))
            .or_default()
            .lines_buffered = lines;
    }

    /// A read of `shard` for `sink` was `millis` behind the shard's newest record.
    pub fn record_millis_behind(&self, sink: SinkKind, shard: &ShardId, millis: Option<u64>) {
        let mut sinks = self.sinks.lock().expect("progress lock");
        let entry = sinks.entry((sink, shard.clone())).or_default();
        entry.millis_behind_latest = millis;
        entry.read_at = millis.map(|_| Instant::now());
    }

    /// The first record of `shard` after `sink`'s checkpoint is `seq`, which arrived in the stream
    /// at `arrived_at` (see [`Progress::behind`] for which to sample).
    pub fn record_oldest_unprocessed(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        seq: SequenceNumber,
        arrived_at: DateTime<Utc>,
    ) {
        let mut sinks = self.sinks.lock().expect("progress lock");
        sinks
            .entry((sink, shard.clone()))
            .or_default()
            .oldest_unprocessed = Some((seq, arrived_at));
    }

    /// The sinks and shards that have records waiting, with their checkpoints: where the oldest
    /// unprocessed record is worth looking up.
    pub fn behind(&self) -> Vec<(SinkKind, ShardId, Option<SequenceNumber>)> {
        let latest = self.latest.lock().expect("progress lock").clone();
        let sinks = self.sinks.lock().expect("progress lock");
        sinks
            .iter()
            .filter(|((_, shard), e)| e.waiting(latest.get(shard)).0)
            .map(|((sink, shard), e)| (*sink, shard.clone(), e.checkpoint.clone()))
            .collect()
    }

    pub fn record_failing(&self, sink: SinkKind, shard: &ShardId, error: Option<String>) {
        let mut sinks = self.sinks.lock().expect("progress lock");
        sinks.entry((sink, shard.clone())).or_default().failing = error;
    }

    /// The worker of `sink` on `shard` failed and is being restarted from its checkpoint.
    pub fn record_restart(&self, sink: SinkKind, shard: &ShardId) {
        let mut sinks = self.sinks.lock().expect("progress lock");
        sinks.entry((sink, shard.clone())).or_default().restarts += 1;
    }

    /// The sink furthest behind, by records and by time.
    pub fn pressure(&self) -> Pressure {
        let mut pressure = Pressure::default();
        for s in self.snapshot() {
            pressure.max_backlog_records = pressure
                .max_backlog_records
                .max(s.backlog_records.unwrap_or(0));
            let lag = Duration::from_secs_f64(s.lag_seconds);
            if lag > pressure.max_lag {
                pressure.max_lag = lag;
                pressure.max_lag_at = Some((s.sink, s.shard));
            }
        }
        pressure
    }

    /// [`Progress::pressure`] as of at most `max_age` ago: ingest asks on every request, and a
    /// backlog worth refusing lines for does not appear within a fraction of a second.
    pub fn pressure_recent(&self, max_age: Duration) -> Pressure {
        if let Some((at, pressure)) = &*self.recent_pressure.lock().expect("progress lock") {
            if at.elapsed() <= max_age {
                return pressure.clone();
            }
        }
        let pressure = self.pressure();
        *self.recent_pressure.lock().expect("progress lock") =
            Some((Instant::now(), pressure.clone()));
        pressure
    }

    /// Largest backlog, in records (where counted), of any sink on any shard.
    pub fn max_backlog(&self) -> u64 {
        self.pressure().max_backlog_records
    }

    /// True when every sink has checkpointed every shard up to the newest record seen.
    pub fn caught_up(&self) -> bool {
        self.snapshot().iter().all(|s| !s.behind)
    }

    /// Every sink on every shard, updating the backlog gauges on the way.
    pub fn snapshot(&self) -> Vec<SinkShardStatus> {
        let latest = self.latest.lock().expect("progress lock").clone();
        let mut sinks = self.sinks.lock().expect("progress lock");
        let now = Instant::now();
        let wall = Utc::now();
        sinks
            .iter_mut()
            .map(|((sink, shard), e)| {
                let head = latest.get(shard);
                let (behind, backlog) = e.waiting(head);
                if !behind {
                    e.behind_since = None;
                } else if e.behind_since.is_none() {
                    e.behind_since = Some(now);
                }
                let lag = e.lag(behind, now, wall);
                let age = e
                    .behind_since
                    .map_or(0, |t| now.duration_since(t).as_secs());
                let labels = [sink.as_str(), shard.0.as_str()];
                if let Some(backlog) = backlog {
                    crate::metrics::SINK_BACKLOG_RECORDS
                        .with_label_values(&labels)
                        .set(i64::try_from(backlog).unwrap_or(i64::MAX));
                }
                crate::metrics::SINK_LAG_SECONDS
                    .with_label_values(&labels)
                    .set(lag.as_secs_f64());
                crate::metrics::SINK_CHECKPOINT_AGE
                    .with_label_values(&labels)
                    .set(i64::try_from(age).unwrap_or(i64::MAX));
                SinkShardStatus {
                    sink: *sink,
                    shard: shard.clone(),
                    checkpoint: e.checkpoint.as_ref().map(seq_text),
                    latest: head.map(seq_text),
                    behind,
                    backlog_records: backlog,
                    lag_seconds: (lag.as_secs_f64() * 1000.0).round() / 1000.0,
                    checkpoint_age_seconds: age,
                    lines_written: e.lines_written,
                    lines_buffered: e.lines_buffered,
                    millis_behind_latest: e.millis_behind_latest,
                    failing: e.failing.clone(),
                    restarts: e.restarts,
                }
            })
            .collect()
    }
}

fn seq_text(seq: &SequenceNumber) -> String {
    if seq.is_shard_end() {
        "end".to_owned()
    } else {
        seq.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_latest_minus_checkpoint() {
        let p = Progress::default();
        let s0 = ShardId("shard-0000".into());
        let n = SequenceNumber::from;
        p.record_latest(&s0, &n(10));
        p.record_checkpoint(SinkKind::Archive, &s0, &n(4), 40);
        p.record_checkpoint(SinkKind::Warehouse, &s0, &n(10), 100);
        assert_eq!(p.max_backlog(), 6);
        assert!(!p.caught_up());
        p.record_checkpoint(SinkKind::Archive, &s0, &n(10), 60);
        assert!(p.caught_up());
        // A checkpoint never goes back, and lines add up.
        p.record_checkpoint(SinkKind::Archive, &s0, &n(3), 0);
        let snap = p.snapshot();
        let archive = snap.iter().find(|s| s.sink == SinkKind::Archive).unwrap();
        assert_eq!(archive.checkpoint.as_deref(), Some("10"));
        assert_eq!(archive.lines_written, 100);
    }

    #[test]
    fn finished_shards_have_no_backlog() {
        let p = Progress::default();
        let s = ShardId("shard-0001".into());
        p.record_latest(&s, &SequenceNumber::from(7));
        p.record_checkpoint(SinkKind::Operational, &s, &SequenceNumber::shard_end(), 0);
        assert_eq!(p.max_backlog(), 0);
        assert_eq!(p.snapshot()[0].checkpoint.as_deref(), Some("end"));
    }

    #[test]
    fn the_recent_backlog_is_reused_within_its_age_and_forgotten_shards_leave() {
        use std::time::Duration;
        let p = Progress::default();
        let s = ShardId("shard-0002".into());
        let n = SequenceNumber::from;
        p.register(SinkKind::Archive, &s);
        p.record_latest(&s, &n(5));
        let recent = |age| p.pressure_recent(age).max_backlog_records;
        assert_eq!(recent(Duration::from_secs(3600)), 5);
        p.record_latest(&s, &n(9));
        assert_eq!(recent(Duration::from_secs(3600)), 5);
        assert_eq!(recent(Duration::ZERO), 9);
        p.forget(SinkKind::Archive, &s);
        assert!(p.snapshot().is_empty());
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_unprocessed_record() {
        let p = Progress::default();
        let s = ShardId("shard-0003".into());
        let n = SequenceNumber::from;
        p.record_latest(&s, &n(10));
        p.record_checkpoint(SinkKind::Warehouse, &s, &n(4), 4);
        let arrived = Utc::now() - chrono::Duration::seconds(120);
        p.record_oldest_unprocessed(SinkKind::Warehouse, &s, n(5), arrived);
        let snap = p.snapshot();
        assert!(snap[0].lag_seconds >= 120.0, "{snap:?}");
        assert_eq!(snap[0].backlog_records, Some(6));
        let pressure = p.pressure();
        assert!(pressure.max_lag >= Duration::from_secs(120));
        assert_eq!(pressure.max_lag_at, Some((SinkKind::Warehouse, s.clone())));
        // Past that record, its arrival says nothing any more; caught up, the lag is 0.
        p.record_checkpoint(SinkKind::Warehouse, &s, &n(10), 6);
        assert_eq!(p.snapshot()[0].lag_seconds, 0.0);
        assert!(p.caught_up());
    }

    #[test]
    fn kinesis_lag_is_millis_behind_plus_the_time_since_a_read_not_yet_checkpointed() {
        let p = Progress::default();
        let s = ShardId("shardId-000000000000".into());
        // Kinesis numbers: 56 digits, sparse; no record count can be given.
        let seq = |tail: &str| -> SequenceNumber {
            format!("49590338271490256608559692538361571095921575989136588{tail}")
                .parse()
                .unwrap()
        };
        p.record_latest(&s, &seq("898"));
        p.record_checkpoint(SinkKind::Archive, &s, &seq("001"), 1);
        p.record_millis_behind(SinkKind::Archive, &s, Some(90_000));
        let snap = p.snapshot();
        assert_eq!(snap[0].backlog_records, None);
        assert!(snap[0].behind);
        assert!(snap[0].lag_seconds >= 90.0, "{snap:?}");
        assert!(p.pressure().max_lag >= Duration::from_secs(90));
        // Caught up to the newest record: no lag, whatever the numbers' size.
        p.record_millis_behind(SinkKind::Archive, &s, Some(0));
        p.record_checkpoint(SinkKind::Archive, &s, &seq("898"), 5);
        assert_eq!(p.snapshot()[0].lag_seconds, 0.0);
        assert_eq!(p.snapshot()[0].backlog_records, Some(0));
        assert!(p.caught_up());
        // Records another instance appended: this one knows no newer head, but its read was
        // behind, and that is lag, though of no known number of records.
        p.record_millis_behind(SinkKind::Archive, &s, Some(30_000));
        let snap = p.snapshot();
        assert!(snap[0].behind && snap[0].lag_seconds >= 30.0, "{snap:?}");
        assert_eq!(snap[0].backlog_records, None);
        assert_eq!(
            p.behind(),
            [(SinkKind::Archive, s.clone(), Some(seq("898")))]
        );
    }
}
