//! The core of a shard worker, as a plain type: [`ShardLoop`] reads one shard for one sink from
//! that sink's checkpoint and writes what it reads, with retry, dead letters and checkpoints. It
//! knows nothing of actix; the actor ([`super::ShardSink`]) runs it and restarts it when a run
//! fails, and the unit tests drive it against in-memory fakes of its traits.

use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use bytes::Bytes;

use super::dedup::{DedupWindows, LineWindow, SavedWindow};
use crate::actors::dead_letter::{DeadLetter, DeadLetters};
use crate::actors::progress::Progress;
use crate::actors::sink::{FlushPolicy, SinkFailure, SinkUnit, SinkWriter};
use crate::config::RetryConfig;
use crate::model::IngestedLine;
use crate::retry::Backoff;
use crate::stream::record::DecodedLines;
use crate::stream::{
    CheckpointStore, Position, ReadBatch, Record, SequenceNumber, ShardId, SinkKind, Stream,
};

/// How a shard worker reads and retries.
#[derive(Debug, Clone)]
pub struct ShardSinkSettings {
    pub read_batch_records: usize,
    pub poll_interval: Duration,
    pub checkpoint_interval: Duration,
    pub retry: RetryConfig,
    /// Line ids kept per (sink, shard) to drop duplicates (0: no dedup); see [`super::dedup`].
    pub dedup_window_lines: usize,
    /// Least time between two saves of the dedup window.
    pub dedup_save_interval: Duration,
}

/// Everything a worker needs, shared as one `Arc` by every run of it: a restart keeps nothing of
/// a failed run but what is durable.
pub struct ShardSinkParts {
    pub sink: Arc<dyn SinkWriter>,
    pub shard: ShardId,
    /// The shards this one was split or merged from that the stream still lists: the worker reads
    /// nothing before the sink's checkpoint of each is the shard end.
    pub parents: Vec<ShardId>,
    pub stream: Arc<dyn Stream>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub dead_letters: DeadLetters,
    pub dedup: DedupWindows,
    pub progress: Arc<Progress>,
    pub settings: ShardSinkSettings,
}

/// Why a run of the worker ended before its shard was finished.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A stop was requested (shutdown, or the shard's lease moved).
    #[error("stop requested")]
    Stopped,
    /// The stream, the checkpoint store or the dead-letter store failed `sinks.retry.max_attempts`
    /// times in a row. The worker restarts from its durable checkpoint.
    #[error("{what} failed {attempts} times in a row: {message}")]
    Footing {
        what: &'static str,
        attempts: u32,
        message: String,
    },
    /// The run panicked outside a sink write (a sink write's panic dead-letters its line instead).
    #[error("panicked: {0}")]
    Panicked(String),
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// What one [`ShardLoop::step`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// There may be more to read.
    Continue,
    /// The shard is closed and fully written, or a stop was honoured after a final checkpoint.
    Finished,
}

/// Records read but not yet written (always a contiguous range of one shard).
#[derive(Default)]
struct Unit {
    first: Option<SequenceNumber>,
    last: Option<SequenceNumber>,
    first_ingested_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The lines, a record at a time: decoded once for the shard's workers and shared with the
    /// others while they hold the same records (see [`DecodeOnce`](crate::stream::record::DecodeOnce)).
    records: Vec<Arc<DecodedLines>>,
    /// How many lines `records` hold.
    lines: usize,
    bytes: usize,
    started: Option<Instant>,
}

impl Unit {
    fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    fn push(&mut self, seq: SequenceNumber, decoded: Arc<DecodedLines>) {
        self.first.get_or_insert_with(|| seq.clone());
        self.last = Some(seq);
        self.first_ingested_at.get_or_insert(decoded.ingested_at);
        self.started.get_or_insert_with(Instant::now);
        self.bytes += decoded.ndjson_bytes;
        self.lines += decoded.lines.len();
        self.records.push(decoded);
    }

    /// A record whose lines went to dead letters still moves the range on.
    fn skip(&mut self, seq: SequenceNumber) {
        self.first.get_or_insert_with(|| seq.clone());
        self.last = Some(seq);
        self.started.get_or_insert_with(Instant::now);
    }

    fn due(&self, policy: FlushPolicy) -> bool {
        match policy {
            FlushPolicy::EveryRead => !self.is_empty(),
            FlushPolicy::Buffered { max_bytes, max_age } => {
                !self.is_empty()
                    && (self.bytes >= max_bytes
                        || self.started.is_some_and(|t| t.elapsed() >= max_age))
            }
        }
    }

    fn time_left(&self, policy: FlushPolicy) -> Option<Duration> {
        match (policy, self.started) {
            (FlushPolicy::Buffered { max_age, .. }, Some(t)) => {
                Some(max_age.saturating_sub(t.elapsed()))
            }
            _ => None,
        }
    }
}

/// One run of a (sink, shard) worker: [`ShardLoop::run`] = wait for the parents, load the
/// checkpoint, rewrite an announced unit, then [`ShardLoop::step`] until the shard is finished or
/// a stop is honoured.
pub struct ShardLoop {
    parts: Arc<ShardSinkParts>,
    stop: watch::Receiver<bool>,
    /// The durable checkpoint as this run knows it.
    checkpoint: Option<SequenceNumber>,
    unit: Unit,
    /// Written to the sink but not yet checkpointed: (last sequence number, lines).
    written: Option<(SequenceNumber, u64)>,
    last_saved: Instant,
    /// Whether this run saved a checkpoint: a run that moved on before failing restarts without
    /// the delay of one that fails at once.
    progressed: bool,
    /// Ids of the lines read lately, to drop a line the stream holds twice.
    window: LineWindow,
    /// When this run last saved the window (`None`: not yet, a save is due).
    window_saved: Option<Instant>,
    /// The window as it was right after a unit was written, with that unit's last sequence
    /// number: saved once the checkpoint reaches it (see [`super::dedup`]).
    window_snapshot: Option<(SequenceNumber, Bytes)>,
}

impl ShardLoop {
    pub fn new(parts: Arc<ShardSinkParts>, stop: watch::Receiver<bool>) -> Self {
        ShardLoop {
            parts,
            stop,
            checkpoint: None,
            unit: Unit::default(),
            written: None,
            last_saved: Instant::now(),
            progressed: false,
            window: LineWindow::default(),
            window_saved: None,
            window_snapshot: None,
        }
    }

    pub fn progressed(&self) -> bool {
        self.progressed
    }

    fn kind(&self) -> SinkKind {
        self.parts.sink.kind()
    }

    /// Runs to the end of the shard or to a stop.
    ///
    /// # Errors
    /// [`RunError::Stopped`] when a stop came while retrying, [`RunError::Footing`] when the
    /// stream or a store of the pipeline's own keeps failing. A sink's failures never end a run:
    /// transient ones are retried for as long as they last, permanent ones and panics dead-letter
    /// their lines.
    pub async fn run(&mut self) -> Result<(), RunError> {
        self.wait_for_parents().await?;
        if self.start().await? == Step::Finished {
            return Ok(());
        }
        while self.step().await? == Step::Continue {}
        Ok(())
    }

    /// Waits until the sink has written every parent shard to its end, so that lines of one
    /// invoice never overtake each other across a reshard.
    async fn wait_for_parents(&self) -> Result<(), RunError> {
        let p = &self.parts;
        for parent in &p.parents {
            loop {
                let c = self
                    .retry_bounded("load parent checkpoint", || {
                        p.checkpoints.load(self.kind(), parent)
                    })
                    .await?;
                if c.is_some_and(|c| c.is_shard_end()) {
                    break;
                }
                self.sleep_unless_stopped(p.settings.poll_interval).await?;
            }
        }
        Ok(())
    }

    /// Loads the checkpoint and rewrites a unit announced before a crash; `Finished` when the
    /// shard was finished already.
    async fn start(&mut self) -> Result<Step, RunError> {
        let p = self.parts.clone();
        let kind = self.kind();
        self.checkpoint = self
            .retry_bounded("load checkpoint", || p.checkpoints.load(kind, &p.shard))
            .await?;
        if let Some(c) = &self.checkpoint {
            p.progress.record_checkpoint(kind, &p.shard, c, 0);
            if c.is_shard_end() {
                return Ok(Step::Finished);
            }
        }
        self.load_window().await?;
        // A unit announced before a crash is written again exactly as cut, so the archive object
        // it names is overwritten rather than duplicated under another range.
        if !p.sink.exact_units() {
            return Ok(Step::Continue);
        }
        let pending = self
            .retry_bounded("load pending range", || {
                p.checkpoints.load_pending(kind, &p.shard)
            })
            .await?;
        let Some((first, last)) = pending else {
            return Ok(Step::Continue);
        };
        if self.checkpoint.as_ref().is_some_and(|c| *c >= first) {
            return Ok(Step::Continue);
        }
        tracing::info!(sink = %kind, shard = %p.shard, first = %first, last = %last, "Rewriting the unit that was in flight before the restart.");
        let mut from = Position::At(first.clone());
        while self.unit.last.as_ref().is_none_or(|l| *l < last) {
            let batch = self.read(from.clone()).await?;
            if batch.records.is_empty() {
                // The records are gone (retention): write what is left of the range.
                break;
            }
            for record in batch
                .records
                .into_iter()
                .take_while(|r| r.sequence_number <= last)
            {
                from = Position::After(record.sequence_number.clone());
                self.add_record(record).await?;
            }
        }
        if !self.unit.is_empty() {
            self.unit.last = Some(last);
            self.flush().await?;
            self.save_written().await?;
        }
        Ok(Step::Continue)
    }

    /// One turn: read a batch, write the unit when it is due, checkpoint what was written, and
    /// wait for records when there were none.
    pub async fn step(&mut self) -> Result<Step, RunError> {
        let p = self.parts.clone();
        let kind = self.kind();
        let policy = p.sink.flush_policy();
        if *self.stop.borrow() {
            self.flush().await?;
            self.save_written().await?;
            self.save_window(true).await?;
            return Ok(Step::Finished);
        }
        let batch = self.read(self.read_from()).await?;
        p.progress
            .record_millis_behind(kind, &p.shard, batch.millis_behind_latest);
        if let Some(ms) = batch.millis_behind_latest {
            crate::metrics::STREAM_MILLIS_BEHIND_LATEST
                .with_label_values(&[kind.as_str(), p.shard.0.as_str()])
                .set(i64::try_from(ms).unwrap_or(i64::MAX));
        }
        let got = batch.records.len();
        if let Some(r) = batch.records.last() {
            p.progress.record_latest(&p.shard, &r.sequence_number);
        }
        for record in batch.records {
            self.add_record(record).await?;
        }
        let caught_up = got < p.settings.read_batch_records;
        if self.unit.due(policy) || (batch.shard_ended && caught_up) {
            self.flush().await?;
        }
        p.progress
            .record_buffered(kind, &p.shard, self.unit.lines as u64);
        if self.written.is_some()
            && (p.sink.exact_units()
                || caught_up
                || self.last_saved.elapsed() >= p.settings.checkpoint_interval)
        {
            self.save_written().await?;
        }
        if batch.shard_ended && caught_up && self.unit.is_empty() && self.written.is_none() {
            // Logged before the shard-end checkpoint, which is what lets the pipeline start the
            // children: every child's "Started a shard actor." then comes after this line.
            tracing::info!(sink = %kind, shard = %p.shard, "The shard is closed and fully written.");
            self.save_checkpoint(SequenceNumber::shard_end(), 0).await?;
            return Ok(Step::Finished);
        }
        if got == 0 {
            let after = self.newest_read();
            // Look again after the poll interval, or later where the stream knows nothing new
            // can be read before (an idle Kinesis shard), and in time to flush a unit due.
            let poll = p.stream.nothing_new_until(&p.shard, after.as_ref()).map_or(
                p.settings.poll_interval,
                |t| {
                    t.saturating_duration_since(Instant::now())
                        .max(p.settings.poll_interval)
                },
            );
            let wait = self.unit.time_left(policy).map_or(poll, |t| t.min(poll));
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = p.stream.wait_for_records(&p.shard, after.as_ref(), wait) => {}
                _ = stop.changed() => {}
            }
        }
        Ok(Step::Continue)
    }

    /// The newest record this run has read, written or checkpointed.
    fn newest_read(&self) -> Option<SequenceNumber> {
        self.unit
            .last
            .clone()
            .or_else(|| self.written.as_ref().map(|w| w.0.clone()))
            .or_else(|| self.checkpoint.clone())
    }

    fn read_from(&self) -> Position {
        match self.newest_read() {
            Some(seq) => Position::After(seq),
            None => Position::TrimHorizon,
        }
    }

    /// Takes one record's lines into the unit (decoded once for the shard's workers, see
    /// [`DecodeOnce`](crate::stream::record::DecodeOnce)); a record that is not a line batch goes
    /// to dead letters (it can never be written, and must not wedge the shard).
    async fn add_record(&mut self, record: Record) -> Result<(), RunError> {
        match record.decoded.lines(&record.data) {
            Ok(decoded) => {
                // Indexes of the lines this worker's window has seen lately (usually none).
                let seen: Vec<usize> = decoded
                    .lines
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| !self.window.insert(&l.line.line_id))
                    .map(|(i, _)| i)
                    .collect();
                let decoded = if seen.is_empty() {
                    decoded
                } else {
                    tracing::info!(sink = %self.kind(), shard = %self.parts.shard, sequence_number = %record.sequence_number, lines = seen.len(), "Dropped lines this worker read lately (a resent request).");
                    crate::metrics::SINK_DUPLICATE_LINES
                        .with_label_values(&[self.kind().as_str()])
                        .inc_by(seen.len() as u64);
                    // This worker's own copy of the rest: the shared lines stay whole for the
                    // other sinks, whose windows decide for themselves.
                    let kept: Vec<IngestedLine> = decoded
                        .lines
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| seen.binary_search(i).is_err())
                        .map(|(_, l)| l.clone())
                        .collect();
                    Arc::new(DecodedLines::new(decoded.ingested_at, kept))
                };
                self.unit.push(record.sequence_number, decoded);
            }
            Err(e) => {
                let letter = DeadLetter {
                    sink: self.kind(),
                    shard: self.parts.shard.clone(),
                    sequence_number: record.sequence_number.clone(),
                    reason: format!("the stream record is not a line batch: {e}"),
                    failed_at: chrono::Utc::now(),
                    line: None,
                    raw: Some(String::from_utf8_lossy(&record.data).into_owned()),
                };
                self.put_dead_letter(&letter).await?;
                self.unit.skip(record.sequence_number);
            }
        }
        Ok(())
    }

    async fn read(&self, from: Position) -> Result<ReadBatch, RunError> {
        let p = &self.parts;
        self.retry_bounded("read stream", || {
            p.stream
                .read(&p.shard, from.clone(), p.settings.read_batch_records)
        })
        .await
    }

    /// Writes the unit (with retry and dead letters) and adds it to what awaits a checkpoint.
    async fn flush(&mut self) -> Result<(), RunError> {
        let p = self.parts.clone();
        let kind = self.kind();
        let (Some(first), Some(last)) = (self.unit.first.clone(), self.unit.last.clone()) else {
            return Ok(());
        };
        if p.sink.exact_units() {
            self.retry_bounded("announce unit", || {
                p.checkpoints
                    .save_pending(kind, &p.shard, Some((first.clone(), last.clone())))
            })
            .await?;
        }
        let started = Instant::now();
        let records = std::mem::take(&mut self.unit.records);
        let lines: Vec<&IngestedLine> = records.iter().flat_map(|r| &r.lines).collect();
        if !lines.is_empty() {
            let to_write = SinkUnit {
                shard: &p.shard,
                first: &first,
                last: &last,
                first_ingested_at: self.unit.first_ingested_at.unwrap_or_else(chrono::Utc::now),
                lines: &lines,
            };
            self.write_unit(&to_write).await?;
            crate::metrics::SINK_FLUSH_DURATION
                .with_label_values(&[kind.as_str()])
                .observe(started.elapsed().as_secs_f64());
            crate::metrics::SINK_BATCH_LINES
                .with_label_values(&[kind.as_str()])
                .observe(lines.len() as f64);
            crate::metrics::SINK_LINES_WRITTEN
                .with_label_values(&[kind.as_str()])
                .inc_by(lines.len() as u64);
        }
        self.snapshot_window(&last);
        let before = self.written.as_ref().map_or(0, |w| w.1);
        self.written = Some((last, before + lines.len() as u64));
        self.unit = Unit::default();
        Ok(())
    }

    /// Checkpoints what was written, if anything, and then the dedup window when it is due.
    async fn save_written(&mut self) -> Result<(), RunError> {
        if let Some((seq, lines)) = self.written.clone() {
            self.save_checkpoint(seq.clone(), lines).await?;
            self.written = None;
            self.checkpoint = Some(seq);
            self.save_window(false).await?;
        }
        Ok(())
    }

    /// Loads the window saved with an earlier checkpoint and adds the lines between what it
    /// covers and the checkpoint (written before a crash that came between two saves). A window
    /// that is unreadable, or covers records past the checkpoint, is dropped: a window only ever
    /// dedups, so starting empty loses nothing.
    async fn load_window(&mut self) -> Result<(), RunError> {
        let p = self.parts.clone();
        let kind = self.kind();
        let capacity = p.settings.dedup_window_lines;
        self.window = LineWindow::new(capacity);
        self.window_saved = None;
        self.window_snapshot = None;
        if capacity == 0 {
            return Ok(());
        }
        let saved = self
            .retry_bounded("load dedup window", || p.dedup.load(kind, &p.shard))
            .await?;
        let Some(bytes) = saved else {
            return Ok(());
        };
        let saved = match SavedWindow::decode(capacity, &bytes) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::warn!(sink = %kind, shard = %p.shard, error = %e, "The saved dedup window is not readable; starting with an empty one.");
                return Ok(());
            }
        };
        match (saved.covers, self.checkpoint.clone()) {
            // Saved by a version that did not record what it covers: at rest, so at or before
            // the checkpoint.
            (None, _) => self.window = saved.window,
            (Some(covers), Some(checkpoint)) if covers <= checkpoint => {
                self.window = saved.window;
                if covers < checkpoint {
                    self.catch_up_window(covers, &checkpoint).await?;
                }
            }
            (Some(covers), checkpoint) => {
                tracing::warn!(sink = %kind, shard = %p.shard, covers = %covers, checkpoint = ?checkpoint, "The saved dedup window covers records past the checkpoint; starting with an empty one.");
            }
        }
        Ok(())
    }

    /// Adds to the window the lines of the records after `covers` up to `checkpoint`: they were
    /// written before the restart, and a copy of them read later must be dropped.
    async fn catch_up_window(
        &mut self,
        covers: SequenceNumber,
        checkpoint: &SequenceNumber,
    ) -> Result<(), RunError> {
        let mut from = Position::After(covers.clone());
        let (mut records, mut lines) = (0_u64, 0_u64);
        'read: loop {
            let batch = self.read(from.clone()).await?;
            if batch.records.is_empty() {
                break;
            }
            for record in batch.records {
                if record.sequence_number > *checkpoint {
                    break 'read;
                }
                from = Position::After(record.sequence_number.clone());
                records += 1;
                // A record that is not a line batch was dead-lettered when it was first read.
                if let Ok(b) = crate::stream::record::decode(&record.data) {
                    for l in &b.lines {
                        self.window.insert(&l.line_id);
                        lines += 1;
                    }
                }
            }
        }
        tracing::info!(sink = %self.kind(), shard = %self.parts.shard, covers = %covers, checkpoint = %checkpoint, records, lines, "Read back the lines written since the dedup window was saved.");
        Ok(())
    }

    fn window_due(&self) -> bool {
        self.window_saved
            .is_none_or(|t| t.elapsed() >= self.parts.settings.dedup_save_interval)
    }

    /// Right after a unit up to `last` was written the window holds no line past it: keeps a copy
    /// to save when the checkpoint gets there, if a save is due and no copy waits already.
    fn snapshot_window(&mut self, last: &SequenceNumber) {
        if self.window.is_enabled()
            && self.window.is_dirty()
            && self.window_snapshot.is_none()
            && self.window_due()
        {
            self.copy_window(last);
        }
    }

    /// Keeps a copy of the window, as it is, covering the records up to `covers`.
    fn copy_window(&mut self, covers: &SequenceNumber) {
        let encoded = SavedWindow::encode(covers, &self.window);
        self.window_snapshot = Some((covers.clone(), Bytes::from(encoded)));
        self.window.mark_saved();
    }

    /// Saves the window copy whose records the checkpoint has reached. At rest (nothing read past
    /// the checkpoint) the window itself is copied first, when a save is due (or `force`).
    async fn save_window(&mut self, force: bool) -> Result<(), RunError> {
        if !self.window.is_enabled() {
            return Ok(());
        }
        let at_rest = self.unit.is_empty() && self.written.is_none();
        if at_rest && self.window.is_dirty() && (force || self.window_due()) {
            if let Some(checkpoint) = self.checkpoint.clone() {
                self.copy_window(&checkpoint);
            }
        }
        let reached = match (&self.window_snapshot, &self.checkpoint) {
            (Some((covers, _)), Some(checkpoint)) => covers <= checkpoint,
            _ => false,
        };
        if !reached {
            return Ok(());
        }
        let Some((_, encoded)) = self.window_snapshot.take() else {
            return Ok(());
        };
        let p = self.parts.clone();
        let kind = self.kind();
        self.retry_bounded("save dedup window", || {
            p.dedup.save(kind, &p.shard, encoded.clone())
        })
        .await?;
        self.window_saved = Some(Instant::now());
        Ok(())
    }

    async fn save_checkpoint(&mut self, seq: SequenceNumber, lines: u64) -> Result<(), RunError> {
        let p = self.parts.clone();
        let kind = self.kind();
        self.retry_bounded("save checkpoint", || {
            p.checkpoints.save(kind, &p.shard, seq.clone())
        })
        .await?;
        p.progress.record_checkpoint(kind, &p.shard, &seq, lines);
        self.last_saved = Instant::now();
        self.progressed = true;
        Ok(())
    }

    /// Calls the sink's write; a panic inside it becomes a permanent failure carrying the panic's
    /// message, so that it dead-letters the line that causes it instead of stopping the worker.
    async fn write_caught(&self, unit: &SinkUnit<'_>) -> Result<(), SinkFailure> {
        match AssertUnwindSafe(self.parts.sink.write(unit))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(payload) => Err(SinkFailure::permanent(format!(
                "the {} sink panicked writing it: {}",
                self.kind(),
                panic_message(payload.as_ref())
            ))),
        }
    }

    /// Writes a unit. A retriable failure (the backend is down, busy, throttled, locked, or its
    /// disk is full) is retried with capped backoff for as long as it lasts: the sink lags, and
    /// `/v1/status` and readiness show what it retries. A permanent failure (the backend refuses a
    /// line, or the write panicked) has the lines written one at a time so that only the ones that
    /// fail permanently go to dead letters; the archive, whose unit is one object, dead-letters
    /// the unit. When every line of a unit of several is refused by a call that names no line
    /// ([`SinkFailure::whole_call`]), the backend is the cause, not the lines: the unit is
    /// retried as transient and nothing is dead-lettered.
    async fn write_unit(&self, unit: &SinkUnit<'_>) -> Result<(), RunError> {
        let mut backoff = Backoff::new(&self.parts.settings.retry);
        loop {
            let Err(f) = self.write_caught(unit).await else {
                return Ok(());
            };
            if f.retriable {
                self.wait_before_retry(&mut backoff, &f).await?;
                continue;
            }
            if !self.parts.sink.per_line() || unit.lines.len() == 1 {
                return self.dead_letter_all(unit, &f).await;
            }
            tracing::warn!(sink = %self.kind(), shard = %self.parts.shard, error = %f, "A unit was refused; writing its lines one by one.");
            let refused = self.write_lines_one_by_one(unit).await?;
            if refused.len() == unit.lines.len() && refused.iter().all(|(_, f)| f.whole_call) {
                let f = SinkFailure::retriable(format!(
                    "each of the {} lines of a unit was refused as invalid, also on its own: the \
                     backend's settings, not the lines, are the likely cause (check the table or \
                     delivery stream); retrying. The first refusal: {}",
                    refused.len(),
                    refused[0].1.message
                ));
                self.wait_before_retry(&mut backoff, &f).await?;
                continue;
            }
            for (line, f) in &refused {
                let single = SinkUnit {
                    lines: std::slice::from_ref(*line),
                    ..*unit
                };
                self.dead_letter_all(&single, f).await?;
            }
            return Ok(());
        }
    }

    /// Writes each line on its own, retrying a transient failure until it passes; returns the
    /// lines refused for good (or whose write panics), with why.
    async fn write_lines_one_by_one<'u>(
        &self,
        unit: &SinkUnit<'u>,
    ) -> Result<Vec<(&'u &'u IngestedLine, SinkFailure)>, RunError> {
        let mut refused = Vec::new();
        for line in unit.lines {
            let single = SinkUnit {
                lines: std::slice::from_ref(line),
                ..*unit
            };
            let mut backoff = Backoff::new(&self.parts.settings.retry);
            loop {
                match self.write_caught(&single).await {
                    Ok(()) => break,
                    Err(f) if f.retriable => self.wait_before_retry(&mut backoff, &f).await?,
                    Err(f) => {
                        refused.push((line, f));
                        break;
                    }
                }
            }
        }
        Ok(refused)
    }

    async fn dead_letter_all(
        &self,
        unit: &SinkUnit<'_>,
        failure: &SinkFailure,
    ) -> Result<(), RunError> {
        // The record a line came in is not tracked per line; the unit's first sequence number
        // with the line id makes the letter's key unique and findable.
        for line in unit.lines {
            let letter = DeadLetter {
                sink: self.kind(),
                shard: self.parts.shard.clone(),
                sequence_number: unit.first.clone(),
                reason: failure.message.clone(),
                failed_at: chrono::Utc::now(),
                line: Some((*line).clone()),
                raw: None,
            };
            self.put_dead_letter(&letter).await?;
        }
        Ok(())
    }

    async fn put_dead_letter(&self, letter: &DeadLetter) -> Result<(), RunError> {
        self.retry_bounded("store dead letter", || self.parts.dead_letters.put(letter))
            .await
    }

    async fn wait_before_retry(
        &self,
        backoff: &mut Backoff,
        failure: &SinkFailure,
    ) -> Result<(), RunError> {
        let p = &self.parts;
        let kind = self.kind();
        crate::metrics::SINK_RETRIES
            .with_label_values(&[kind.as_str()])
            .inc();
        p.progress
            .record_failing(kind, &p.shard, Some(failure.message.clone()));
        let delay = backoff.next_delay();
        tracing::warn!(sink = %kind, shard = %p.shard, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64, error = %failure, "A call failed; retrying.");
        self.sleep_unless_stopped(delay).await
    }

    async fn sleep_unless_stopped(&self, delay: Duration) -> Result<(), RunError> {
        let mut stop = self.stop.clone();
        if *stop.borrow() {
            return Err(RunError::Stopped);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = stop.wait_for(|s| *s) => Err(RunError::Stopped),
        }
    }

    /// Calls the stream, the checkpoint store or the dead-letter store (the pipeline's own
    /// footing), retrying with backoff; after `sinks.retry.max_attempts` failures in a row the run
    /// ends with [`RunError::Footing`] and the worker restarts from its durable checkpoint.
    async fn retry_bounded<T, E, F, Fut>(
        &self,
        what: &'static str,
        mut call: F,
    ) -> Result<T, RunError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let mut backoff = Backoff::new(&self.parts.settings.retry);
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let attempts = backoff.attempts() + 1;
                    if attempts >= self.parts.settings.retry.max_attempts {
                        return Err(RunError::Footing {
                            what,
                            attempts,
                            message: e.to_string(),
                        });
                    }
                    let failure = SinkFailure::retriable(format!("{what}: {e}"));
                    self.wait_before_retry(&mut backoff, &failure).await?;
                }
            }
        }
    }
}
