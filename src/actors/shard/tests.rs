//! The shard worker against in-memory fakes of the stream, the checkpoint store and a sink: what
//! each step does when the sink refuses a line, panics, or is down for a while, when a checkpoint
//! write fails, and across a reshard.

use async_trait::async_trait;
use chrono::NaiveDate;
use rust_decimal::Decimal;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

use super::core::{RunError, ShardLoop, ShardSinkParts, ShardSinkSettings};
use super::dedup::DedupWindows;
use crate::actors::dead_letter::{DeadLetter, DeadLetters};
use crate::actors::progress::Progress;
use crate::actors::sink::{SinkFailure, SinkUnit, SinkWriter};
use crate::config::RetryConfig;
use crate::model::InvoiceLine;
use crate::object_store::local::LocalObjectStore;
use crate::stream::memory::MemoryStream;
use crate::stream::{CheckpointError, CheckpointStore, Record, SequenceNumber, ShardId, SinkKind};

const MAX_ATTEMPTS: u32 = 3;

/// What happened, in order, across the fakes of one test.
type Events = Arc<Mutex<Vec<String>>>;

fn line(stock_code: &str) -> InvoiceLine {
    InvoiceLine::new(
        "536365".into(),
        stock_code.into(),
        None,
        6,
        NaiveDate::from_ymd_opt(2010, 12, 1)
            .unwrap()
            .and_hms_opt(8, 26, 0)
            .unwrap(),
        Decimal::new(255, 2),
        Some(17850),
        "United Kingdom".into(),
        None,
        0,
    )
}

/// One stream record holding lines with these stock codes.
fn record(seq: u64, stock_codes: &[&str]) -> Record {
    let lines: Vec<InvoiceLine> = stock_codes.iter().map(|c| line(c)).collect();
    let mut encoded = crate::stream::record::encode_indexed(
        crate::stream::record::RecordFormat::Binary,
        "store-1",
        &lines,
    )
    .unwrap();
    assert_eq!(encoded.len(), 1);
    Record {
        sequence_number: SequenceNumber::from(seq),
        partition_key: "536365".into(),
        data: encoded.remove(0).0.data,
        arrived_at: chrono::Utc::now(),
        decoded: Default::default(),
    }
}

#[derive(Default)]
struct FakeCheckpoints {
    saved: Mutex<BTreeMap<(SinkKind, ShardId), SequenceNumber>>,
    pending: Mutex<BTreeMap<(SinkKind, ShardId), (SequenceNumber, SequenceNumber)>>,
    /// The next this many saves fail.
    failing_saves: AtomicU32,
    /// The next this many loads panic.
    panicking_loads: AtomicU32,
    events: Events,
}

impl FakeCheckpoints {
    fn get(&self, sink: SinkKind, shard: &str) -> Option<SequenceNumber> {
        self.saved
            .lock()
            .unwrap()
            .get(&(sink, ShardId(shard.into())))
            .cloned()
    }
}

/// Takes one from `counter` when it is above zero; true when it did.
fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl CheckpointStore for FakeCheckpoints {
    async fn load(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<SequenceNumber>, CheckpointError> {
        if take_one(&self.panicking_loads) {
            panic!("the checkpoint store's load panicked");
        }
        Ok(self
            .saved
            .lock()
            .unwrap()
            .get(&(sink, shard.clone()))
            .cloned())
    }

    async fn save(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        seq: SequenceNumber,
    ) -> Result<(), CheckpointError> {
        if take_one(&self.failing_saves) {
            return Err(CheckpointError("the table is throttled".into()));
        }
        self.events
            .lock()
            .unwrap()
            .push(format!("checkpoint {shard} {seq}"));
        self.saved
            .lock()
            .unwrap()
            .insert((sink, shard.clone()), seq);
        Ok(())
    }

    async fn list(&self) -> Result<Vec<crate::stream::Checkpoint>, CheckpointError> {
        Ok(Vec::new())
    }

    async fn load_pending(
        &self,
        sink: SinkKind,
        shard: &ShardId,
    ) -> Result<Option<(SequenceNumber, SequenceNumber)>, CheckpointError> {
        Ok(self
            .pending
            .lock()
            .unwrap()
            .get(&(sink, shard.clone()))
            .cloned())
    }

    async fn save_pending(
        &self,
        sink: SinkKind,
        shard: &ShardId,
        range: Option<(SequenceNumber, SequenceNumber)>,
    ) -> Result<(), CheckpointError> {
        let mut pending = self.pending.lock().unwrap();
        match range {
            Some(r) => pending.insert((sink, shard.clone()), r),
            None => pending.remove(&(sink, shard.clone())),
        };
        Ok(())
    }
}

/// A warehouse-like sink that stores by line id (a unit written twice is stored once).
#[derive(Default)]
struct FakeSink {
    /// Line ids stored, with how often each was written.
    stored: Mutex<BTreeMap<String, u32>>,
    /// Stock codes the backend refuses for good.
    refused: BTreeSet<String>,
    /// A stock code whose write panics (an arithmetic overflow in a writer, say).
    panics_on: Option<String>,
    /// Stock codes whose write call the backend refuses as a whole, naming no line (DynamoDB's
    /// ValidationException for a BatchWriteItem).
    invalid: Mutex<BTreeSet<String>>,
    /// The next this many writes fail as transient (throttled, locked).
    transient_failures: AtomicU32,
    events: Events,
}

impl FakeSink {
    fn stored_codes(&self, stream_lines: &[(&str, u64)]) -> Vec<String> {
        let stored = self.stored.lock().unwrap();
        stream_lines
            .iter()
            .filter(|(code, _)| stored.contains_key(&line(code).line_id.to_string()))
            .map(|(code, _)| (*code).to_owned())
            .collect()
    }
}

#[async_trait]
impl SinkWriter for FakeSink {
    fn kind(&self) -> SinkKind {
        SinkKind::Warehouse
    }

    async fn write(&self, unit: &SinkUnit<'_>) -> Result<(), SinkFailure> {
        if take_one(&self.transient_failures) {
            return Err(SinkFailure::retriable("database is locked"));
        }
        if unit.lines.iter().any(|l| {
            self.invalid
                .lock()
                .unwrap()
                .contains(l.line.stock_code.as_str())
        }) {
            return Err(SinkFailure::whole_call(
                "BatchWriteItem failed: ValidationException: One or more parameter values were invalid",
            ));
        }
        for l in unit.lines {
            if self.panics_on.as_deref() == Some(l.line.stock_code.as_str()) {
                panic!("attempt to multiply with overflow");
            }
            if self.refused.contains(l.line.stock_code.as_str()) {
                return Err(SinkFailure::permanent(format!(
                    "line {} cannot be stored: price has 7 decimals",
                    l.line.line_id
                )));
            }
        }
        let mut stored = self.stored.lock().unwrap();
        for l in unit.lines {
            *stored.entry(l.line.line_id.to_string()).or_default() += 1;
        }
        self.events
            .lock()
            .unwrap()
            .push(format!("write {} {}", unit.shard, unit.lines.len()));
        Ok(())
    }

    async fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

struct Fixture {
    stream: Arc<MemoryStream>,
    checkpoints: Arc<FakeCheckpoints>,
    sink: Arc<FakeSink>,
    dead_letters: DeadLetters,
    dedup: DedupWindows,
    progress: Arc<Progress>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(stream: Arc<MemoryStream>, sink: FakeSink) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalObjectStore::new(dir.path().join("dead")).unwrap());
        let events = sink.events.clone();
        Fixture {
            stream,
            checkpoints: Arc::new(FakeCheckpoints {
                events,
                ..FakeCheckpoints::default()
            }),
            sink: Arc::new(sink),
            dead_letters: DeadLetters::new(store.clone(), "dead-letters"),
            dedup: DedupWindows::new(store),
            progress: Arc::new(Progress::default()),
            _dir: dir,
        }
    }

    fn parts(&self, shard: &str, parents: &[&str]) -> Arc<ShardSinkParts> {
        Arc::new(ShardSinkParts {
            sink: self.sink.clone(),
            shard: ShardId(shard.into()),
            parents: parents.iter().map(|p| ShardId((*p).into())).collect(),
            stream: self.stream.clone(),
            checkpoints: self.checkpoints.clone(),
            dead_letters: self.dead_letters.clone(),
            dedup: self.dedup.clone(),
            progress: self.progress.clone(),
            settings: ShardSinkSettings {
                read_batch_records: 2,
                poll_interval: Duration::from_millis(5),
                checkpoint_interval: Duration::ZERO,
                retry: RetryConfig {
                    max_attempts: MAX_ATTEMPTS,
                    initial_backoff: Duration::from_millis(1),
                    max_backoff: Duration::from_millis(5),
                },
                dedup_window_lines: 100,
                dedup_save_interval: Duration::ZERO,
            },
        })
    }

    async fn run(&self, shard: &str, parents: &[&str]) -> Result<(), RunError> {
        let (_stop_tx, stop) = watch::channel(false);
        ShardLoop::new(self.parts(shard, parents), stop).run().await
    }

    /// Whether the sink's checkpoint of `shard` is the shard end.
    fn finished(&self, shard: &str) -> bool {
        self.checkpoints
            .get(SinkKind::Warehouse, shard)
            .is_some_and(|c| c.is_shard_end())
    }

    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut letters = Vec::new();
        for meta in self.dead_letters.list(None).await.unwrap() {
            letters.push(self.dead_letters.get(&meta.key).await.unwrap());
        }
        letters
    }
}

/// One closed shard "s0" with three records of lines A..E.
fn closed_shard() -> Arc<MemoryStream> {
    MemoryStream::with(vec![(
        "s0",
        vec![
            record(1, &["A", "B"]),
            record(2, &["C", "D"]),
            record(3, &["E"]),
        ],
        true,
    )])
}

const ALL: [(&str, u64); 5] = [("A", 1), ("B", 1), ("C", 2), ("D", 2), ("E", 3)];

#[tokio::test]
async fn a_closed_shard_is_written_whole_and_checkpointed_to_its_end() {
    let f = Fixture::new(closed_shard(), FakeSink::default());
    f.run("s0", &[]).await.unwrap();
    assert_eq!(f.sink.stored_codes(&ALL), ["A", "B", "C", "D", "E"]);
    assert!(f.finished("s0"));
    assert!(f.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_refused_line_goes_to_dead_letters_and_the_rest_of_its_unit_is_written() {
    let sink = FakeSink {
        refused: BTreeSet::from(["C".to_owned()]),
        ..FakeSink::default()
    };
    assert_only_c_is_dead_lettered(sink, "price has 7 decimals").await;
}

/// Runs the closed shard into `sink`, which refuses line C alone: C goes to dead letters with a
/// reason holding `reason`, the rest is stored, and the shard is finished.
async fn assert_only_c_is_dead_lettered(sink: FakeSink, reason: &str) {
    let f = Fixture::new(closed_shard(), sink);
    f.run("s0", &[]).await.unwrap();
    assert_eq!(f.sink.stored_codes(&ALL), ["A", "B", "D", "E"]);
    let letters = f.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].line.as_ref().unwrap().line.stock_code, "C");
    assert!(letters[0].reason.contains(reason), "{letters:?}");
    assert!(f.finished("s0"));
}

#[tokio::test]
async fn a_panicking_write_dead_letters_its_line_with_the_panic_message_and_goes_on() {
    let sink = FakeSink {
        panics_on: Some("D".to_owned()),
        ..FakeSink::default()
    };
    let f = Fixture::new(closed_shard(), sink);
    f.run("s0", &[]).await.unwrap();
    assert_eq!(f.sink.stored_codes(&ALL), ["A", "B", "C", "E"]);
    let letters = f.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].line.as_ref().unwrap().line.stock_code, "D");
    assert!(
        letters[0].reason.contains("panicked") && letters[0].reason.contains("overflow"),
        "{letters:?}"
    );
    assert!(f.finished("s0"));
}

#[tokio::test]
async fn transient_failures_are_retried_past_max_attempts_and_never_dead_letter() {
    let sink = FakeSink {
        transient_failures: AtomicU32::new(MAX_ATTEMPTS * 4),
        ..FakeSink::default()
    };
    let f = Fixture::new(closed_shard(), sink);
    f.run("s0", &[]).await.unwrap();
    assert_eq!(f.sink.transient_failures.load(Ordering::SeqCst), 0);
    assert_eq!(f.sink.stored_codes(&ALL), ["A", "B", "C", "D", "E"]);
    assert!(f.dead_letters().await.is_empty());
    // Once it writes again, the status no longer says it is failing.
    assert!(f.progress.snapshot().iter().all(|s| s.failing.is_none()));
}

#[tokio::test]
async fn a_failing_checkpoint_write_ends_the_run_and_the_next_run_resumes_from_the_checkpoint() {
    let f = Fixture::new(closed_shard(), FakeSink::default());
    let (_stop_tx, stop) = watch::channel(false);
    let mut first = ShardLoop::new(f.parts("s0", &[]), stop.clone());
    // The first save (after records 1..2) fails every attempt.
    f.checkpoints
        .failing_saves
        .store(MAX_ATTEMPTS, Ordering::SeqCst);
    let e = first.run().await.unwrap_err();
    assert!(
        matches!(
            e,
            RunError::Footing {
                what: "save checkpoint",
                attempts: MAX_ATTEMPTS,
                ..
            }
        ),
        "{e}"
    );
    assert!(!first.progressed());
    assert_eq!(f.checkpoints.get(SinkKind::Warehouse, "s0"), None);
    // The lines of the first unit were written but not checkpointed: the next run writes them
    // again (the sink is idempotent) and finishes the shard.
    let mut second = ShardLoop::new(f.parts("s0", &[]), stop);
    second.run().await.unwrap();
    assert!(second.progressed());
    assert_eq!(f.sink.stored_codes(&ALL), ["A", "B", "C", "D", "E"]);
    assert_eq!(
        f.sink.stored.lock().unwrap()[&line("A").line_id.to_string()],
        2
    );
    assert!(f.finished("s0"));
    assert!(f.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_child_shard_is_read_only_after_its_parent_is_finished() {
    let stream = MemoryStream::with(vec![
        ("parent", vec![record(1, &["A"]), record(2, &["B"])], true),
        ("child", vec![record(3, &["C"])], false),
    ]);
    let f = Arc::new(Fixture::new(stream, FakeSink::default()));
    let (stop_tx, stop) = watch::channel(false);
    // The child's worker starts first and must wait.
    let child = {
        let parts = f.parts("child", &["parent"]);
        tokio::spawn(async move { ShardLoop::new(parts, stop).run().await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(f.sink.events.lock().unwrap().is_empty());
    f.run("parent", &[]).await.unwrap();
    // Wait for the child's write, then stop it.
    while !f
        .sink
        .events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e == "checkpoint child 3")
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop_tx.send_replace(true);
    child.await.unwrap().unwrap();
    let events = f.sink.events.lock().unwrap().clone();
    let parent_end = events
        .iter()
        .position(|e| *e == format!("checkpoint parent {}", SequenceNumber::shard_end()))
        .unwrap();
    let child_write = events.iter().position(|e| e == "write child 1").unwrap();
    assert!(parent_end < child_write, "{events:?}");
}

#[tokio::test]
async fn a_line_the_stream_holds_twice_is_written_once() {
    // Record 3 is a client's resend of record 1 (Kinesis took both).
    let stream = MemoryStream::with(vec![(
        "s0",
        vec![
            record(1, &["A", "B"]),
            record(2, &["C"]),
            record(3, &["A", "B"]),
            // Part of a record seen lately: only the new line is written.
            record(4, &["B", "D"]),
        ],
        true,
    )]);
    let f = Fixture::new(stream, FakeSink::default());
    f.run("s0", &[]).await.unwrap();
    let stored = f.sink.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 4, "{stored:?}");
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
    assert!(f.finished("s0"));
}

#[tokio::test]
async fn the_dedup_window_is_saved_with_the_checkpoint_and_survives_a_restart() {
    let stream = MemoryStream::with(vec![("s0", vec![record(1, &["A", "B"])], false)]);
    let f = Arc::new(Fixture::new(stream, FakeSink::default()));
    let run_until_checkpoint = |seq: u64| {
        let f = f.clone();
        async move {
            let (stop_tx, stop) = watch::channel(false);
            let parts = f.parts("s0", &[]);
            let worker = tokio::spawn(async move { ShardLoop::new(parts, stop).run().await });
            while f.checkpoints.get(SinkKind::Warehouse, "s0") != Some(SequenceNumber::from(seq)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop_tx.send_replace(true);
            worker.await.unwrap().unwrap();
        }
    };
    run_until_checkpoint(1).await;
    // The resend arrives after the restart, with a new line.
    f.stream.push("s0", record(2, &["A", "C"]));
    run_until_checkpoint(2).await;
    let stored = f.sink.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 3);
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
}

/// DynamoDB refuses a BatchWriteItem as invalid without naming the item: the worker finds the
/// line by writing one at a time, dead-letters it with the refusal, and writes the rest.
#[tokio::test]
async fn a_call_refused_as_invalid_dead_letters_only_the_line_that_causes_it() {
    let sink = FakeSink::default();
    sink.invalid.lock().unwrap().insert("C".to_owned());
    assert_only_c_is_dead_lettered(sink, "ValidationException").await;
}

/// When every line of a unit is refused as invalid, also on its own, the backend is the cause (a
/// table with the wrong key schema): nothing is dead-lettered, the unit is retried, and once the
/// backend is fixed every line is stored.
#[tokio::test]
async fn a_backend_that_refuses_every_line_as_invalid_is_retried_not_dead_lettered() {
    let sink = FakeSink::default();
    sink.invalid
        .lock()
        .unwrap()
        .extend(["A", "B", "C", "D"].map(String::from));
    let f = Arc::new(Fixture::new(closed_shard(), sink));
    f.progress
        .register(SinkKind::Warehouse, &ShardId("s0".into()));
    let worker = tokio::spawn({
        let f = f.clone();
        async move { f.run("s0", &[]).await }
    });
    // Retried past max_attempts, the unit still waits and nothing is dead-lettered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!worker.is_finished());
    assert!(f.sink.stored.lock().unwrap().is_empty());
    assert!(f.dead_letters().await.is_empty());
    let status = f.progress.snapshot();
    assert!(
        status.iter().any(|s| s
            .failing
            .as_deref()
            .is_some_and(|e| e.contains("the backend's settings"))),
        "{status:?}"
    );
    f.sink.invalid.lock().unwrap().clear();
    worker.await.unwrap().unwrap();
    assert_eq!(f.sink.stored_codes(&ALL), ["A", "B", "C", "D", "E"]);
    assert!(f.dead_letters().await.is_empty());
}

/// A kill -9 between two saves of the window: the restarted worker reads back the lines written
/// since the last save, so a resend of them that arrives after the restart is still dropped.
#[tokio::test]
async fn a_crash_between_window_saves_loses_nothing_of_the_window() {
    let stream = MemoryStream::with(vec![("s0", vec![record(1, &["A", "B"])], false)]);
    let f = Arc::new(Fixture::new(stream, FakeSink::default()));
    let parts = || {
        let mut parts = Arc::try_unwrap(f.parts("s0", &[])).ok().unwrap();
        // One save a run: the first is due at once, the next never comes.
        parts.settings.dedup_save_interval = Duration::from_secs(3600);
        Arc::new(parts)
    };
    let push = |r: Record| f.stream.push("s0", r);
    async fn wait_for_checkpoint(f: &Fixture, seq: u64) {
        while f.checkpoints.get(SinkKind::Warehouse, "s0") != Some(SequenceNumber::from(seq)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let (_stop_tx, stop) = watch::channel(false);
    let first = parts();
    let worker = tokio::spawn(async move { ShardLoop::new(first, stop).run().await });
    wait_for_checkpoint(&f, 1).await;
    while f
        .dedup
        .load(SinkKind::Warehouse, &ShardId("s0".into()))
        .await
        .unwrap()
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    push(record(2, &["C", "D"]));
    wait_for_checkpoint(&f, 2).await;
    // Killed: no stop, no last save. The saved window covers record 1 only.
    worker.abort();
    let _ = worker.await;
    // The resend of C (and A) arrives after the restart, with a new line E.
    push(record(3, &["C", "A", "E"]));
    let (stop_tx, stop) = watch::channel(false);
    let second = parts();
    let worker = tokio::spawn(async move { ShardLoop::new(second, stop).run().await });
    wait_for_checkpoint(&f, 3).await;
    stop_tx.send_replace(true);
    worker.await.unwrap().unwrap();
    let stored = f.sink.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 5, "{stored:?}");
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
}

/// The actor under actix's supervisor: a run that panics (here in the checkpoint store) is
/// restarted from the checkpoint, counted in the status, and then finishes the shard.
#[actix::test]
async fn the_supervisor_restarts_a_panicking_worker_and_counts_it() {
    use actix::Supervisor;
    let f = Fixture::new(closed_shard(), FakeSink::default());
    f.checkpoints.panicking_loads.store(2, Ordering::SeqCst);
    let parts = Arc::try_unwrap(f.parts("s0", &[])).ok().unwrap();
    f.progress
        .register(SinkKind::Warehouse, &ShardId("s0".into()));
    let addr = Supervisor::start(move |_| super::ShardSink::new(parts));
    while !f.finished("s0") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    addr.send(super::Shutdown).await.unwrap();
    let status = f.progress.snapshot();
    assert_eq!(status[0].restarts, 2, "{status:?}");
    assert_eq!(f.sink.stored_codes(&ALL), ["A", "B", "C", "D", "E"]);
}
