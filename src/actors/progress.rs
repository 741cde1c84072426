//! Where every sink stands on every shard: the shared picture that ingest uses for backpressure,
//! `/v1/status` shows, and the backlog metrics export.

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::stream::{SequenceNumber, ShardId, SinkKind};

#[derive(Debug, Default)]
struct Entry {
    checkpoint: Option<SequenceNumber>,
    /// Since when records have been waiting without the checkpoint moving (None when caught up).
    behind_since: Option<Instant>,
    lines_written: u64,
    lines_buffered: u64,
    millis_behind_latest: Option<u64>,
    /// The sink is retrying a failing backend right now.
    failing: Option<String>,
    restarts: u64,
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
    /// Records of the shard not yet checkpointed by the sink (when the backend numbers densely).
    pub backlog_records: u64,
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
    /// The last [`Progress::max_backlog`] and when it was taken, for callers on hot paths.
    recent_max_backlog: Mutex<Option<(Instant, u64)>>,
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

    pub fn record_millis_behind(&self, sink: SinkKind, shard: &ShardId, millis: Option<u64>) {
        let mut sinks = self.sinks.lock().expect("progress lock");
        sinks
            .entry((sink, shard.clone()))
            .or_default()
            .millis_behind_latest = millis;
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

    /// Largest backlog, in records, of any sink on any shard.
    pub fn max_backlog(&self) -> u64 {
        self.snapshot()
            .iter()
            .map(|s| s.backlog_records)
            .max()
            .unwrap_or(0)
    }

    /// [`Progress::max_backlog`] as of at most `max_age` ago: ingest asks on every request, and a
    /// backlog worth refusing lines for does not appear within a fraction of a second.
    pub fn max_backlog_recent(&self, max_age: std::time::Duration) -> u64 {
        if let Some((at, backlog)) = *self.recent_max_backlog.lock().expect("progress lock") {
            if at.elapsed() <= max_age {
                return backlog;
            }
        }
        let backlog = self.max_backlog();
        *self.recent_max_backlog.lock().expect("progress lock") = Some((Instant::now(), backlog));
        backlog
    }

    /// True when every sink has checkpointed every shard up to the newest record seen.
    pub fn caught_up(&self) -> bool {
        self.snapshot().iter().all(|s| s.backlog_records == 0)
    }

    /// Every sink on every shard, updating the backlog gauges on the way.
    pub fn snapshot(&self) -> Vec<SinkShardStatus> {
        let latest = self.latest.lock().expect("progress lock").clone();
        let mut sinks = self.sinks.lock().expect("progress lock");
        let now = Instant::now();
        sinks
            .iter_mut()
            .map(|((sink, shard), e)| {
                let head = latest.get(shard);
                // Backlogs are counted where numbering is dense (the embedded log); Kinesis lag
                // shows in millis_behind_latest instead.
                let backlog = match (head, &e.checkpoint) {
                    (_, Some(c)) if c.is_shard_end() => 0,
                    // Sparse numbers (Kinesis) give no count: one record behind is all we know.
                    (Some(h), Some(c)) => h.distance_from(c).unwrap_or(u64::from(h > c)),
                    (Some(h), None) => h.as_u64().unwrap_or(1),
                    (None, _) => 0,
                };
                if backlog == 0 {
                    e.behind_since = None;
                } else if e.behind_since.is_none() {
                    e.behind_since = Some(now);
                }
                let age = e
                    .behind_since
                    .map_or(0, |t| now.duration_since(t).as_secs());
                let labels = [sink.as_str(), shard.0.as_str()];
                crate::metrics::SINK_BACKLOG_RECORDS
                    .with_label_values(&labels)
                    .set(i64::try_from(backlog).unwrap_or(i64::MAX));
                crate::metrics::SINK_CHECKPOINT_AGE
                    .with_label_values(&labels)
                    .set(i64::try_from(age).unwrap_or(i64::MAX));
                SinkShardStatus {
                    sink: *sink,
                    shard: shard.clone(),
                    checkpoint: e.checkpoint.as_ref().map(seq_text),
                    latest: head.map(seq_text),
                    backlog_records: backlog,
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
        assert_eq!(p.max_backlog_recent(Duration::from_secs(3600)), 5);
        p.record_latest(&s, &n(9));
        assert_eq!(p.max_backlog_recent(Duration::from_secs(3600)), 5);
        assert_eq!(p.max_backlog_recent(Duration::ZERO), 9);
        p.forget(SinkKind::Archive, &s);
        assert!(p.snapshot().is_empty());
    }
}
