//! The shard actor: reads one shard of the stream for one sink, from that sink's own checkpoint,
//! and writes what it reads with retry, dead letters and checkpoints.
//!
//! One actor per (sink, shard) is what keeps the sinks independent: a slow or failing warehouse
//! lags on its own checkpoint while the archive and the operational store go on. Memory is bounded
//! by one read batch (plus, for the archive, one object's worth of lines); everything not yet
//! checkpointed stays in the durable stream, and ingest pushes back once a backlog passes the
//! high-water mark.

use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

use super::dead_letter::{DeadLetter, DeadLetters};
use super::progress::Progress;
use super::sink::{FlushPolicy, SinkFailure, SinkUnit, SinkWriter};
use crate::config::RetryConfig;
use crate::model::IngestedLine;
use crate::retry::Backoff;
use crate::stream::record::LineBatch;
use crate::stream::{
    CheckpointStore, Position, ReadBatch, Record, SequenceNumber, ShardId, Stream,
};

/// How a shard actor reads and retries.
#[derive(Debug, Clone)]
pub struct ShardSinkSettings {
    pub read_batch_records: usize,
    pub poll_interval: Duration,
    pub checkpoint_interval: Duration,
    pub retry: RetryConfig,
}

/// Why a run of the actor ended early. Today the only way is a stop request: every failure of the
/// stream, the checkpoint store or the sink is retried in place, so the supervisor's restart (see
/// [`ShardSink`]) is there for a run that ends with an error, which none does yet.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("stop requested while retrying")]
    Stopped,
}

/// Everything the actor's run loop needs, shared with it as one `Arc` so the loop is `'static`
/// and survives nothing of a failed run but what is durable.
pub struct ShardSinkParts {
    pub sink: Arc<dyn SinkWriter>,
    pub shard: ShardId,
    pub stream: Arc<dyn Stream>,
    pub checkpoints: Arc<dyn CheckpointStore>,
    pub dead_letters: DeadLetters,
    pub progress: Arc<Progress>,
    pub settings: ShardSinkSettings,
}

struct Shared {
    parts: ShardSinkParts,
    /// Set once by [`Shutdown`]: finish the unit at hand, checkpoint, and end.
    stop: watch::Sender<bool>,
    /// Set by the run loop when it has ended for good (stopped, or the shard is finished).
    finished: watch::Sender<bool>,
}

/// Reads one shard for one sink. Start it under [`actix::Supervisor`]: when a run fails the actor
/// stops itself and the supervisor starts it again from the durable checkpoint.
pub struct ShardSink {
    shared: Arc<Shared>,
    restarts: u32,
}

impl ShardSink {
    pub fn new(parts: ShardSinkParts) -> Self {
        ShardSink {
            shared: Arc::new(Shared {
                parts,
                stop: watch::channel(false).0,
                finished: watch::channel(false).0,
            }),
            restarts: 0,
        }
    }
}

impl Actor for ShardSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let shared = self.shared.clone();
        // A restart waits a little (growing with restarts in a row) so that a backend that fails
        // at once does not turn into a hot loop.
        let delay = if self.restarts == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(100u64.saturating_mul(1 << self.restarts.min(8)))
        };
        let run = async move {
            tokio::time::sleep(delay).await;
            run(&shared).await
        };
        ctx.spawn(run.into_actor(self).map(|result, act, ctx| match result {
            Ok(()) => {
                act.restarts = 0;
                act.shared.finished.send_replace(true);
            }
            Err(RunError::Stopped) if *act.shared.stop.borrow() => {
                act.shared.finished.send_replace(true);
            }
            Err(e) => {
                let p = &act.shared.parts;
                tracing::error!(sink = %p.sink.kind(), shard = %p.shard, error = %e, "The shard actor failed; its supervisor restarts it.");
                ctx.stop();
            }
        }));
    }
}

impl Supervised for ShardSink {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        self.restarts = self.restarts.saturating_add(1);
        crate::metrics::SINK_RESTARTS
            .with_label_values(&[self.shared.parts.sink.kind().as_str()])
            .inc();
    }
}

/// Asks the actor to write what it holds, checkpoint and end; answers when it has.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for ShardSink {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _ctx: &mut Self::Context) -> Self::Result {
        self.shared.stop.send_replace(true);
        let mut finished = self.shared.finished.subscribe();
        Box::pin(async move {
            let _ = finished.wait_for(|done| *done).await;
        })
    }
}

/// Records read but not yet written (always a contiguous range of one shard).
#[derive(Default)]
struct Unit {
    first: Option<SequenceNumber>,
    last: Option<SequenceNumber>,
    first_ingested_at: Option<chrono::DateTime<chrono::Utc>>,
    lines: Vec<IngestedLine>,
    bytes: usize,
    started: Option<Instant>,
}

impl Unit {
    fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    fn push(&mut self, seq: SequenceNumber, bytes: usize, batch: LineBatch) {
        self.first.get_or_insert_with(|| seq.clone());
        self.last = Some(seq);
        self.first_ingested_at.get_or_insert(batch.ingested_at);
        self.started.get_or_insert_with(Instant::now);
        self.bytes += bytes;
        self.lines.extend(batch.into_ingested());
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

async fn run(shared: &Shared) -> Result<(), RunError> {
    let p = &shared.parts;
    let kind = p.sink.kind();
    let policy = p.sink.flush_policy();
    let mut stop = shared.stop.subscribe();

    let mut checkpoint = retry_forever(shared, "load checkpoint", || {
        p.checkpoints.load(kind, &p.shard)
    })
    .await?;
    if let Some(c) = &checkpoint {
        p.progress.record_checkpoint(kind, &p.shard, c, 0);
    }
    if checkpoint
        .as_ref()
        .is_some_and(SequenceNumber::is_shard_end)
    {
        return Ok(());
    }

    // A unit announced before a crash is written again exactly as cut, so the archive object it
    // names is overwritten rather than duplicated under another range.
    if p.sink.exact_units() {
        let pending = retry_forever(shared, "load pending range", || {
            p.checkpoints.load_pending(kind, &p.shard)
        })
        .await?;
        if let Some((first, last)) = pending {
            if checkpoint.as_ref().is_none_or(|c| *c < first) {
                tracing::info!(sink = %kind, shard = %p.shard, first = %first, last = %last, "Rewriting the unit that was in flight before the restart.");
                let mut unit = Unit::default();
                let mut from = Position::At(first.clone());
                while unit.last.as_ref().is_none_or(|l| *l < last) {
                    let batch = read(shared, from.clone()).await?;
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
                        add_record(shared, &mut unit, record).await?;
                    }
                }
                if !unit.is_empty() {
                    unit.last = Some(last);
                    let mut written = None;
                    flush(shared, &mut unit, &mut written).await?;
                    save_written(shared, &mut written, &mut checkpoint).await?;
                }
            }
        }
    }

    let mut unit = Unit::default();
    // Written to the sink but not yet checkpointed: (last sequence number, lines).
    let mut written: Option<(SequenceNumber, u64)> = None;
    let mut last_saved = Instant::now();
    loop {
        if *stop.borrow() {
            flush(shared, &mut unit, &mut written).await?;
            save_written(shared, &mut written, &mut checkpoint).await?;
            return Ok(());
        }
        let from = match unit
            .last
            .as_ref()
            .or(written.as_ref().map(|w| &w.0))
            .or(checkpoint.as_ref())
        {
            Some(seq) => Position::After(seq.clone()),
            None => Position::TrimHorizon,
        };
        let batch = read(shared, from).await?;
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
            add_record(shared, &mut unit, record).await?;
        }
        let caught_up = got < p.settings.read_batch_records;
        if unit.due(policy) || (batch.shard_ended && caught_up) {
            flush(shared, &mut unit, &mut written).await?;
        }
        p.progress
            .record_buffered(kind, &p.shard, unit.lines.len() as u64);
        if written.is_some()
            && (p.sink.exact_units()
                || caught_up
                || last_saved.elapsed() >= p.settings.checkpoint_interval)
        {
            save_written(shared, &mut written, &mut checkpoint).await?;
            last_saved = Instant::now();
        }
        if batch.shard_ended && caught_up && unit.is_empty() && written.is_none() {
            // Logged before the shard-end checkpoint, which is what lets the pipeline start the
            // children: every child's "Started a shard actor." then comes after this line.
            tracing::info!(sink = %kind, shard = %p.shard, "The shard is closed and fully written.");
            save_checkpoint(shared, SequenceNumber::shard_end(), 0).await?;
            return Ok(());
        }
        if got == 0 {
            let wait = unit
                .time_left(policy)
                .map_or(p.settings.poll_interval, |t| {
                    t.min(p.settings.poll_interval)
                });
            let after = unit
                .last
                .clone()
                .or_else(|| written.as_ref().map(|w| w.0.clone()))
                .or_else(|| checkpoint.clone());
            tokio::select! {
                _ = p.stream.wait_for_records(&p.shard, after.as_ref(), wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Decodes one record into the unit; a record that is not a line batch goes to dead letters (it
/// can never be written, and must not wedge the shard).
async fn add_record(shared: &Shared, unit: &mut Unit, record: Record) -> Result<(), RunError> {
    let p = &shared.parts;
    match crate::stream::record::decode(&record.data) {
        Ok(batch) => unit.push(record.sequence_number, record.data.len(), batch),
        Err(e) => {
            let letter = DeadLetter {
                sink: p.sink.kind(),
                shard: p.shard.clone(),
                sequence_number: record.sequence_number.clone(),
                reason: format!("the stream record is not a line batch: {e}"),
                failed_at: chrono::Utc::now(),
                line: None,
                raw: Some(String::from_utf8_lossy(&record.data).into_owned()),
            };
            retry_forever(shared, "store dead letter", || p.dead_letters.put(&letter)).await?;
            unit.skip(record.sequence_number);
        }
    }
    Ok(())
}

async fn read(shared: &Shared, from: Position) -> Result<ReadBatch, RunError> {
    let p = &shared.parts;
    retry_forever(shared, "read stream", || {
        p.stream
            .read(&p.shard, from.clone(), p.settings.read_batch_records)
    })
    .await
}

/// Writes the unit (with retry and dead letters) and adds it to what awaits a checkpoint.
async fn flush(
    shared: &Shared,
    unit: &mut Unit,
    written: &mut Option<(SequenceNumber, u64)>,
) -> Result<(), RunError> {
    let p = &shared.parts;
    let kind = p.sink.kind();
    let (Some(first), Some(last)) = (unit.first.clone(), unit.last.clone()) else {
        return Ok(());
    };
    if p.sink.exact_units() {
        retry_forever(shared, "announce unit", || {
            p.checkpoints
                .save_pending(kind, &p.shard, Some((first.clone(), last.clone())))
        })
        .await?;
    }
    let started = Instant::now();
    let lines = std::mem::take(&mut unit.lines);
    if !lines.is_empty() {
        let to_write = SinkUnit {
            shard: &p.shard,
            first: &first,
            last: &last,
            first_ingested_at: unit.first_ingested_at.unwrap_or_else(chrono::Utc::now),
            lines: &lines,
        };
        write_unit(shared, &to_write).await?;
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
    let before = written.as_ref().map_or(0, |w| w.1);
    *written = Some((last, before + lines.len() as u64));
    *unit = Unit::default();
    Ok(())
}

/// Checkpoints what was written, if anything.
async fn save_written(
    shared: &Shared,
    written: &mut Option<(SequenceNumber, u64)>,
    checkpoint: &mut Option<SequenceNumber>,
) -> Result<(), RunError> {
    if let Some((seq, lines)) = written.take() {
        save_checkpoint(shared, seq.clone(), lines).await?;
        *checkpoint = Some(seq);
    }
    Ok(())
}

async fn save_checkpoint(shared: &Shared, seq: SequenceNumber, lines: u64) -> Result<(), RunError> {
    let p = &shared.parts;
    let kind = p.sink.kind();
    retry_forever(shared, "save checkpoint", || {
        p.checkpoints.save(kind, &p.shard, seq.clone())
    })
    .await?;
    p.progress.record_checkpoint(kind, &p.shard, &seq, lines);
    Ok(())
}

/// Writes a unit. A failure is retried with backoff; after `max_attempts`, or at once for a
/// permanent failure, the lines are written one at a time so that only the ones that fail for good
/// go to dead letters. The archive, whose unit is one object, keeps retrying retriable failures.
async fn write_unit(shared: &Shared, unit: &SinkUnit<'_>) -> Result<(), RunError> {
    let p = &shared.parts;
    let mut backoff = Backoff::new(&p.settings.retry);
    loop {
        let Err(f) = p.sink.write(unit).await else {
            return Ok(());
        };
        let exhausted = backoff.attempts() + 1 >= p.settings.retry.max_attempts;
        if p.sink.per_line() && (!f.retriable || exhausted) {
            if unit.lines.len() > 1 {
                tracing::warn!(sink = %p.sink.kind(), shard = %p.shard, error = %f, "A unit keeps failing; writing its lines one by one.");
            }
            return write_lines_one_by_one(shared, unit).await;
        }
        if !f.retriable {
            return dead_letter_all(shared, unit, &f).await;
        }
        wait_before_retry(shared, &mut backoff, &f).await?;
    }
}

/// Writes each line on its own. A line that fails permanently, or keeps failing while the backend
/// answers its health check (so the line, not the backend, is the problem), goes to dead letters;
/// while the backend is down the line is kept and retried, and the checkpoint stays where it is.
async fn write_lines_one_by_one(shared: &Shared, unit: &SinkUnit<'_>) -> Result<(), RunError> {
    let p = &shared.parts;
    for line in unit.lines {
        let single = SinkUnit {
            lines: std::slice::from_ref(line),
            ..*unit
        };
        let mut backoff = Backoff::new(&p.settings.retry);
        loop {
            let Err(f) = p.sink.write(&single).await else {
                break;
            };
            let exhausted = backoff.attempts() + 1 >= p.settings.retry.max_attempts;
            if !f.retriable {
                dead_letter_all(shared, &single, &f).await?;
                break;
            }
            if exhausted && p.sink.health().await.is_ok() {
                let failure = SinkFailure::permanent(format!(
                    "failed {} times while the backend answers health checks: {}",
                    backoff.attempts() + 1,
                    f.message
                ));
                dead_letter_all(shared, &single, &failure).await?;
                break;
            }
            wait_before_retry(shared, &mut backoff, &f).await?;
        }
    }
    Ok(())
}

async fn dead_letter_all(
    shared: &Shared,
    unit: &SinkUnit<'_>,
    failure: &SinkFailure,
) -> Result<(), RunError> {
    let p = &shared.parts;
    // The record a line came in is not tracked per line; the unit's first sequence number with the
    // line id makes the letter's key unique and findable.
    for line in unit.lines {
        let letter = DeadLetter {
            sink: p.sink.kind(),
            shard: p.shard.clone(),
            sequence_number: unit.first.clone(),
            reason: failure.message.clone(),
            failed_at: chrono::Utc::now(),
            line: Some(line.clone()),
            raw: None,
        };
        retry_forever(shared, "store dead letter", || p.dead_letters.put(&letter)).await?;
    }
    Ok(())
}

async fn wait_before_retry(
    shared: &Shared,
    backoff: &mut Backoff,
    failure: &SinkFailure,
) -> Result<(), RunError> {
    let p = &shared.parts;
    let kind = p.sink.kind();
    crate::metrics::SINK_RETRIES
        .with_label_values(&[kind.as_str()])
        .inc();
    p.progress
        .record_failing(kind, &p.shard, Some(failure.message.clone()));
    let delay = backoff.next_delay();
    tracing::warn!(sink = %kind, shard = %p.shard, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64, error = %failure, "A sink write failed; retrying.");
    sleep_unless_stopped(shared, delay).await
}

async fn sleep_unless_stopped(shared: &Shared, delay: Duration) -> Result<(), RunError> {
    let mut stop = shared.stop.subscribe();
    if *stop.borrow() {
        return Err(RunError::Stopped);
    }
    tokio::select! {
        _ = tokio::time::sleep(delay) => Ok(()),
        _ = stop.wait_for(|s| *s) => Err(RunError::Stopped),
    }
}

/// Retries a call to the stream, checkpoint or dead-letter store until it succeeds or a stop is
/// requested. These stores are the pipeline's own footing: without them nothing can move, and
/// giving up would only turn into a restart that tries the same again.
async fn retry_forever<T, E, F, Fut>(
    shared: &Shared,
    what: &str,
    mut call: F,
) -> Result<T, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let p = &shared.parts;
    let mut backoff = Backoff::new(&p.settings.retry);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let failure = SinkFailure::retriable(format!("{what}: {e}"));
                wait_before_retry(shared, &mut backoff, &failure).await?;
            }
        }
    }
}
