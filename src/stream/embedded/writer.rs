//! The one thread that writes the log's file: group commit.
//!
//! Every `put` sends its records here through a bounded queue. The writer takes everything that
//! is waiting, writes it in one transaction and commits once, so one fsync makes a whole group
//! durable; the fsync rate of the disk, not the number of callers, bounds the appends per second.
//!
//! Every other change to the file comes here too, as a [`Job`]: the sinks' checkpoints, the
//! idempotency keys, retention's deletes. Nothing else takes SQLite's write lock on the file, so a
//! commit never waits for it. (When the sinks' checkpoints had connections of their own, a commit
//! that found the lock taken slept in SQLite's busy handler, 1, 2, 5, 10 ms and on, and an append
//! that should take one millisecond took 9 to 33.)

use super::claims;
use super::schema::records_table;
use crate::metrics::{STREAM_APPEND_DURATION, STREAM_APPEND_RECORDS};
use crate::model::LineId;
use crate::stream::{PutRecord, PutResult, SequenceNumber, ShardId, StreamError};
use rusqlite::{params, Connection, TransactionBehavior};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, watch};

/// A group stops taking more waiting requests once it holds this many bytes, so one transaction
/// (and the latency of the requests in it) stays bounded; the rest go in the next group.
const GROUP_MAX_BYTES: usize = 64 * 1024 * 1024;

/// What the writer is asked to do.
pub(super) enum Write {
    Append(AppendRequest),
    Job(Job),
}

/// A change to the file other than an append: run in the next group's transaction under a
/// savepoint of its own, so that one that fails changes nothing and fails alone, and answered
/// once that transaction has committed (durable, like an append).
pub(super) struct Job {
    run: Box<dyn FnOnce(&Connection) -> Ran + Send>,
}

/// What a job did: whether it succeeded (its savepoint is kept), and how to answer its caller
/// once the group's commit is known.
struct Ran {
    ok: bool,
    answer: Box<dyn FnOnce(Result<(), String>) + Send>,
}

impl Job {
    /// A job that runs `f`, and the receiver of its answer: `f`'s value once its transaction has
    /// committed, `f`'s error, or the commit's.
    pub fn new<T: Send + 'static>(
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> (Job, oneshot::Receiver<Result<T, StreamError>>) {
        let (reply, answer) = oneshot::channel();
        let run = Box::new(move |conn: &Connection| {
            let result = f(conn);
            Ran {
                ok: result.is_ok(),
                answer: Box::new(move |committed: Result<(), String>| {
                    let answer = match (result, committed) {
                        (Err(e), _) => Err(StreamError::Backend(e.to_string())),
                        (Ok(_), Err(e)) => Err(StreamError::Backend(e)),
                        (Ok(value), Ok(())) => Ok(value),
                    };
                    // The caller may have given up waiting.
                    let _ = reply.send(answer);
                }),
            }
        });
        (Job { run }, answer)
    }
}

/// One `put`: its records, the shard of each, and where to send the answer.
pub(super) struct AppendRequest {
    pub records: Vec<PutRecord>,
    pub shards: Vec<u32>,
    /// Per record, the line ids it claims in `invoice_claims` (none for a plain `put`); a request one
    /// of whose ids is already taken writes nothing and is answered `LinesTaken`.
    pub claims: claims::Claims,
    pub reply: oneshot::Sender<Result<Vec<PutResult>, StreamError>>,
    /// This request's bytes in the queue's budget, given back when the request is dropped.
    pub _queued: QueuedBytes,
}

/// Bytes of records waiting in the append queue: a share taken by [`QueuedBytes::take`] is
/// given back when the request holding it is dropped (written, answered or abandoned).
pub(super) struct QueuedBytes {
    total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    bytes: usize,
}

impl QueuedBytes {
    /// Takes `bytes` of the budget `limit`, unless the queue holds that much already: a request
    /// larger than the whole budget still goes when the queue is empty, so nothing is refused for
    /// good.
    pub fn take(
        total: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
        bytes: usize,
        limit: usize,
    ) -> Option<QueuedBytes> {
        use std::sync::atomic::Ordering;
        let before = total.fetch_add(bytes, Ordering::AcqRel);
        if before > 0 && before + bytes > limit {
            total.fetch_sub(bytes, Ordering::AcqRel);
            return None;
        }
        Some(QueuedBytes {
            total: total.clone(),
            bytes,
        })
    }
}

impl Drop for QueuedBytes {
    fn drop(&mut self) {
        self.total
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

impl AppendRequest {
    fn bytes(&self) -> usize {
        self.records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum()
    }
}

pub(super) struct Writer {
    pub conn: Connection,
    /// Last committed sequence number per shard; the next record of a shard gets this + 1.
    pub last: Vec<u64>,
    pub shard_ids: Arc<[ShardId]>,
    /// Per shard, the last committed sequence number, for readers waiting on new records.
    pub heads: Arc<[watch::Sender<u64>]>,
    /// Cleared when the thread ends, so `health` can say the writer is gone.
    pub alive: Arc<AtomicBool>,
    /// Set by the checkpointer when the WAL should start over (between two commits, here).
    pub restart_wal: super::schema::RestartWal,
}

/// The appends and jobs of one transaction.
#[derive(Default)]
struct Group {
    appends: Vec<AppendRequest>,
    jobs: Vec<Job>,
    bytes: usize,
}

impl Group {
    fn add(&mut self, write: Write) {
        match write {
            Write::Append(request) => {
                self.bytes += request.bytes();
                self.appends.push(request);
            }
            Write::Job(job) => self.jobs.push(job),
        }
    }
}

impl Writer {
    /// Runs until every sender of `queue` is dropped (the stream is closed).
    pub fn run(mut self, queue: Receiver<Write>) {
        let _alive = AliveGuard(self.alive.clone());
        let insert_sql: Vec<String> = (0..self.last.len() as u32)
            .map(|shard| {
                format!(
                    "INSERT INTO {} (seq, partition_key, data, arrived_at_ms) VALUES (?1, ?2, ?3, ?4)",
                    records_table(shard)
                )
            })
            .collect();
        self.conn
            .set_prepared_statement_cache_capacity(insert_sql.len() + 32);
        let mut carried: Option<Write> = None;
        let mut last_arrival_ms = newest_arrival_ms(&self.conn, self.last.len() as u32);
        loop {
            let first = match carried.take() {
                Some(write) => write,
                None => match queue.recv() {
                    Ok(write) => write,
                    Err(_) => return,
                },
            };
            let mut group = Group::default();
            group.add(first);
            while group.bytes < GROUP_MAX_BYTES {
                match queue.try_recv() {
                    Ok(Write::Append(request))
                        if !group.appends.is_empty()
                            && group.bytes + request.bytes() > GROUP_MAX_BYTES =>
                    {
                        carried = Some(Write::Append(request));
                        break;
                    }
                    Ok(write) => group.add(write),
                    Err(_) => break,
                }
            }
            // An append whose caller gave up (its request timed out or the client went away) was
            // never acknowledged: it is dropped unwritten, so a queue that outlasts its callers
            // holds no memory for them and costs no writes. The client's retry appends it again.
            let waiting = group.appends.len();
            group.appends.retain(|request| !request.reply.is_closed());
            if group.appends.len() < waiting {
                let dropped = (waiting - group.appends.len()) as u64;
                crate::metrics::STREAM_APPENDS_ABANDONED.inc_by(dropped);
                tracing::debug!(
                    dropped,
                    "Dropped appends whose callers gave up before they were written."
                );
            }
            if group.appends.is_empty() && group.jobs.is_empty() {
                continue;
            }
            // Arrival times never go backwards, even when the wall clock does (from the newest in
            // the file, across restarts too), so that the records old enough for retention are
            // always a prefix of each shard (it finds their end by a binary search).
            last_arrival_ms = last_arrival_ms.max(chrono::Utc::now().timestamp_millis());
            self.commit(&insert_sql, group, last_arrival_ms);
            self.restart_wal.run_if_asked(&self.conn);
        }
    }

    fn commit(&mut self, insert_sql: &[String], group: Group, arrived_at_ms: i64) {
        let started = Instant::now();
        let mut last = self.last.clone();
        let Group { appends, jobs, .. } = group;
        let mut ran = Vec::with_capacity(jobs.len());
        let written = write_group(
            &mut self.conn,
            insert_sql,
            &mut last,
            &appends,
            jobs,
            &mut ran,
            arrived_at_ms,
        );
        match written {
            Ok((records, landed)) => {
                STREAM_APPEND_DURATION
                    .with_label_values(&["embedded"])
                    .observe(started.elapsed().as_secs_f64());
                STREAM_APPEND_RECORDS
                    .with_label_values(&["embedded"])
                    .observe(records as f64);
                for (shard, (old, new)) in self.last.iter().zip(&last).enumerate() {
                    if old != new {
                        self.heads[shard].send_replace(*new);
                    }
                }
                self.last = last;
                for (request, landed) in appends.into_iter().zip(landed) {
                    let results = landed.map(|landed| {
                        landed
                            .into_iter()
                            .map(|(shard, seq)| PutResult {
                                shard_id: self.shard_ids[shard as usize].clone(),
                                sequence_number: SequenceNumber::from(seq),
                            })
                            .collect()
                    });
                    // The caller may have given up waiting; its records are durable anyway.
                    let _ = request.reply.send(results);
                }
                for job in ran {
                    (job.answer)(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, appends = appends.len(), changes = ran.len(), "The embedded stream could not commit a group of writes.");
                let message = format!("the embedded stream could not write its file: {e}");
                for request in appends {
                    let _ = request
                        .reply
                        .send(Err(StreamError::Backend(message.clone())));
                }
                for job in ran {
                    (job.answer)(Err(message.clone()));
                }
            }
        }
    }
}

/// The newest arrival time of any shard's last record (0 for an empty file or one that cannot be
/// read; the writer's first commit then reports the error).
fn newest_arrival_ms(conn: &Connection, shards: u32) -> i64 {
    (0..shards)
        .filter_map(|shard| {
            conn.query_row(
                &format!(
                    "SELECT arrived_at_ms FROM {} ORDER BY seq DESC LIMIT 1",
                    records_table(shard)
                ),
                [],
                |row| row.get::<_, i64>(0),
            )
            .ok()
        })
        .max()
        .unwrap_or(0)
}

/// Where each record of each request landed: (shard, sequence number), or why the request was
/// not written (`LinesTaken`).
type Landed = Vec<Result<Vec<(u32, u64)>, StreamError>>;

/// Writes every record of `group` in one transaction and commits it. Advances `last` as it
/// numbers records; the caller keeps the old counters if this fails (the transaction is rolled
/// back, so no number was used). A record whose dedup key the log already holds (a retried
/// request, possibly in this very group) is not written again: it lands where the first did.
/// Returns the number of records written and where every record landed.
///
/// The jobs run first, each under a savepoint: one that fails is rolled back alone. `ran` gets
/// each job's answer as it runs, to be sent once the commit is known; a job that never ran (the
/// transaction could not begin) is dropped, and its caller told the writer did not answer.
fn write_group(
    conn: &mut Connection,
    insert_sql: &[String],
    last: &mut [u64],
    group: &[AppendRequest],
    jobs: Vec<Job>,
    ran: &mut Vec<Ran>,
    arrived_at_ms: i64,
) -> rusqlite::Result<(usize, Landed)> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in jobs {
        let savepoint = tx.savepoint()?;
        let done = (job.run)(&savepoint);
        // Dropped unreleased, a savepoint rolls back what the failed job changed.
        let kept = if done.ok { savepoint.commit() } else { Ok(()) };
        ran.push(done);
        kept?;
    }
    let mut written = 0;
    let mut landed = Vec::with_capacity(group.len());
    for request in group {
        let taken = taken_ids(&tx, &request.claims)?;
        if !taken.is_empty() {
            landed.push(Err(StreamError::LinesTaken(taken)));
            continue;
        }
        let mut places = Vec::with_capacity(request.records.len());
        for (i, (record, &shard)) in request.records.iter().zip(&request.shards).enumerate() {
            let index = shard as usize;
            let record_claims = request.claims.of_record(i);
            // A record that claims its lines is recognised by its claims (`taken_ids` above, in
            // this transaction, refuses a request any of whose ids is taken), so its content key
            // would add a random B-tree insert and nothing else. Records without claims (appends
            // through `Stream::put_records`) are recognised by their key.
            if let Some(key) = record
                .dedup_key
                .as_ref()
                .filter(|_| record_claims.is_empty())
            {
                let mut claim = tx.prepare_cached(
                    "INSERT OR IGNORE INTO record_keys (key, shard, seq, arrived_at_ms) VALUES (?1, ?2, ?3, ?4)",
                )?;
                let fresh = claim.execute(params![
                    &key[..],
                    shard,
                    (last[index] + 1) as i64,
                    arrived_at_ms
                ])? == 1;
                if !fresh {
                    let mut find =
                        tx.prepare_cached("SELECT shard, seq FROM record_keys WHERE key = ?1")?;
                    let (first_shard, seq): (u32, i64) =
                        find.query_row([&key[..]], |row| Ok((row.get(0)?, row.get(1)?)))?;
                    places.push((first_shard, seq as u64));
                    claims::insert(&tx, record_claims, first_shard, seq, arrived_at_ms)?;
                    continue;
                }
            }
            last[index] += 1;
            let mut insert = tx.prepare_cached(&insert_sql[index])?;
            insert.execute(params![
                last[index] as i64,
                record.partition_key,
                &record.data[..],
                arrived_at_ms
            ])?;
            places.push((shard, last[index]));
            claims::insert(&tx, record_claims, shard, last[index] as i64, arrived_at_ms)?;
            written += 1;
        }
        landed.push(Ok(places));
    }
    // No `shards` row is written: a shard's last number is its newest record's (see
    // `schema::prepare`).
    tx.commit()?;
    Ok((written, landed))
}

/// The ids among `claims` that `invoice_claims` holds already, or that the request claims twice.
/// One look-up per invoice of each record, not per line. A claim whose record retention has just
/// removed (their deletes are separate transactions) is as good as gone: its row is dropped here,
/// so the line is claimed anew.
fn taken_ids(
    tx: &rusqlite::Transaction<'_>,
    claims: &claims::Claims,
) -> rusqlite::Result<Vec<LineId>> {
    let mut taken = claims.twice.clone();
    let mut find =
        tx.prepare_cached("SELECT shard, seq, line_ids FROM invoice_claims WHERE invoice_no = ?1")?;
    for group in claims.records.iter().flatten() {
        // The rows of this invoice that hold any of the ids: (shard, seq, the ids).
        let mut holding: Vec<(u32, i64, Vec<&claims::RawId>)> = Vec::new();
        let mut rows = find.query([group.invoice_no.as_str()])?;
        while let Some(row) = rows.next()? {
            let stored = row.get_ref(2)?.as_blob()?;
            let held: Vec<&claims::RawId> =
                group.ids().filter(|id| claims::holds(stored, id)).collect();
            if !held.is_empty() {
                holding.push((row.get(0)?, row.get(1)?, held));
            }
        }
        for (shard, seq, held) in holding {
            let record_left = tx
                .prepare_cached(&format!(
                    "SELECT 1 FROM {} WHERE seq = ?1",
                    records_table(shard)
                ))
                .and_then(|mut stmt| stmt.exists([seq]))
                // A shard number this file does not have: treat the claim as standing.
                .unwrap_or(true);
            if record_left {
                taken.extend(held.into_iter().map(LineId::from_bytes));
            } else {
                tx.prepare_cached(
                    "DELETE FROM invoice_claims WHERE invoice_no = ?1 AND shard = ?2 AND seq = ?3",
                )?
                .execute(params![group.invoice_no.as_str(), shard, seq])?;
            }
        }
    }
    Ok(taken)
}

struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
