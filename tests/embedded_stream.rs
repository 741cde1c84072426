//! The embedded stream and its checkpoints on real SQLite files in temporary folders.

use bytes::Bytes;
use shopstream::stream::embedded::{shard_for_key, shard_id, EmbeddedStream};
use shopstream::stream::{
    CheckpointStore, Position, PutRecord, SequenceNumber, ShardId, SinkKind, Stream, StreamError,
    MAX_RECORD_BYTES,
};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

const DAY: Duration = Duration::from_secs(86_400);

fn open(dir: &Path, shards: u32) -> EmbeddedStream {
    EmbeddedStream::open(&dir.join("data/stream.sqlite"), shards, DAY, 1024).expect("open")
}

fn record(key: &str, data: &str) -> PutRecord {
    PutRecord {
        partition_key: key.to_owned(),
        data: Bytes::from(data.to_owned()),
        dedup_key: None,
    }
}

async fn read_all(stream: &EmbeddedStream, shard: &ShardId) -> Vec<(SequenceNumber, String)> {
    let batch = stream
        .read(shard, Position::TrimHorizon, usize::MAX)
        .await
        .expect("read");
    batch
        .records
        .into_iter()
        .map(|r| {
            (
                r.sequence_number,
                String::from_utf8(r.data.to_vec()).expect("utf8"),
            )
        })
        .collect()
}

#[test]
fn sharding_is_stable() {
    // Pinned: changing the hash would move invoices to other shards of an existing log.
    assert_eq!(shard_for_key("536365", 4), 2);
    assert_eq!(shard_for_key("C536379", 4), 0);
    assert_eq!(shard_for_key("581587", 16), 11);
    // xxh3_64("") is 0x2D06800538D394C2 in the reference implementation.
    assert_eq!(shard_for_key("", 4), 2);
    assert_eq!(shard_id(3).0, "shard-0003");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_are_read_back_once_in_order_with_dense_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 4);
    let tasks = 32;
    let puts_per_task = 25;
    let mut handles = Vec::new();
    for task in 0..tasks {
        let stream = stream.clone();
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for put in 0..puts_per_task {
                // Three records of one invoice per put, so order within a put is checked too.
                let key = format!("inv-{task}-{}", put % 5);
                let records = (0..3)
                    .map(|i| record(&key, &format!("{task}/{put}/{i}")))
                    .collect();
                let results = stream.put(records).await.expect("put");
                assert_eq!(results.len(), 3);
                acked.extend(
                    results
                        .into_iter()
                        .enumerate()
                        .map(|(i, r)| (r.shard_id, r.sequence_number, format!("{task}/{put}/{i}"))),
                );
            }
            acked
        }));
    }
    let mut acked = HashMap::new();
    for handle in handles {
        for (shard, seq, data) in handle.await.unwrap() {
            assert!(
                acked.insert((shard, seq), data).is_none(),
                "a number was given twice"
            );
        }
    }
    assert_eq!(acked.len(), tasks * puts_per_task * 3);

    let mut seen = 0;
    let mut last_of_writer: HashMap<String, (usize, usize)> = HashMap::new();
    for info in stream.list_shards().await.unwrap() {
        assert!(!info.closed);
        let records = read_all(&stream, &info.id).await;
        let numbers: Vec<_> = records.iter().map(|(seq, _)| seq.clone()).collect();
        let dense: Vec<_> = (1..=records.len() as u64).map(sn).collect();
        assert_eq!(
            numbers, dense,
            "sequence numbers of {} are dense from 1",
            info.id
        );
        assert_eq!(
            stream.latest(&info.id).await.unwrap(),
            numbers.last().cloned()
        );
        for (seq, data) in records {
            assert_eq!(
                acked[&(info.id.clone(), seq.clone())],
                data,
                "the record acked as {seq}"
            );
            // Records of one invoice key keep the order in which they were put.
            let parts: Vec<usize> = data.split('/').map(|p| p.parse().unwrap()).collect();
            let key = format!("{}-{}", parts[0], parts[1] % 5);
            if let Some(prev) = last_of_writer.insert(key, (parts[1], parts[2])) {
                assert!(
                    prev < (parts[1], parts[2]),
                    "order of {data} after {prev:?}"
                );
            }
            seen += 1;
        }
    }
    assert_eq!(seen, acked.len());
}

#[tokio::test]
async fn records_and_numbering_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let key_shard = shard_id(shard_for_key("536365", 2));
    {
        let stream = open(dir.path(), 2);
        stream
            .put(vec![record("536365", "a"), record("536365", "b")])
            .await
            .unwrap();
    }
    let stream = open(dir.path(), 2);
    let results = stream.put(vec![record("536365", "c")]).await.unwrap();
    assert_eq!(results[0].sequence_number, sn(3));
    assert_eq!(
        read_all(&stream, &key_shard).await,
        vec![
            (sn(1), "a".into()),
            (sn(2), "b".into()),
            (sn(3), "c".into())
        ]
    );
}

#[test]
fn reopening_with_another_shard_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), 4));
    let err = EmbeddedStream::open(&dir.path().join("data/stream.sqlite"), 8, DAY, 16)
        .err()
        .expect("a different shard count is an error");
    let message = err.to_string();
    assert!(message.contains("stream.shards"), "{message}");
    assert!(message.contains("cannot be resharded"), "{message}");
}

#[tokio::test]
async fn reads_start_where_asked_and_honour_max_records() {
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 1);
    let shard = shard_id(0);
    let records = (1..=10).map(|i| record("k", &i.to_string())).collect();
    stream.put(records).await.unwrap();

    let first = stream.read(&shard, Position::TrimHorizon, 4).await.unwrap();
    let numbers: Vec<_> = first
        .records
        .iter()
        .map(|r| r.sequence_number.clone())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4].map(sn));
    assert!(first.millis_behind_latest.is_some());
    assert!(!first.shard_ended);
    assert_eq!(first.records[0].partition_key, "k");

    let rest = stream
        .read(&shard, Position::After(sn(7)), 100)
        .await
        .unwrap();
    let numbers: Vec<_> = rest
        .records
        .iter()
        .map(|r| r.sequence_number.clone())
        .collect();
    assert_eq!(numbers, [8, 9, 10].map(sn));
    assert_eq!(rest.millis_behind_latest, Some(0));

    let none = stream
        .read(&shard, Position::After(sn(10)), 100)
        .await
        .unwrap();
    assert!(none.records.is_empty());
    assert!(matches!(
        stream
            .read(&ShardId("shard-0001".into()), Position::TrimHorizon, 1)
            .await,
        Err(StreamError::UnknownShard(_))
    ));
}

#[tokio::test]
async fn first_arrival_after_names_the_oldest_waiting_record_and_when_it_came() {
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 1);
    let shard = shard_id(0);
    assert_eq!(
        stream.first_arrival_after(&shard, None).await.unwrap(),
        None
    );
    let before = chrono::Utc::now() - chrono::Duration::milliseconds(1);
    stream
        .put(vec![record("k", "1"), record("k", "2")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.put(vec![record("k", "3")]).await.unwrap();
    let after = chrono::Utc::now();

    let (seq, first) = stream
        .first_arrival_after(&shard, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, sn(1));
    assert!(
        before <= first && first <= after,
        "{first} not in {before}..{after}"
    );
    let (seq, third) = stream
        .first_arrival_after(&shard, Some(&sn(2)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, sn(3));
    assert!(
        third >= first + chrono::Duration::milliseconds(50),
        "{first} {third}"
    );
    assert_eq!(
        stream
            .first_arrival_after(&shard, Some(&sn(3)))
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        stream
            .first_arrival_after(&ShardId("shard-0009".into()), None)
            .await,
        Err(StreamError::UnknownShard(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_records_wakes_on_commit_and_times_out_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 1);
    let shard = shard_id(0);

    let started = Instant::now();
    stream
        .wait_for_records(&shard, None, Duration::from_millis(200))
        .await;
    assert!(started.elapsed() >= Duration::from_millis(200), "timed out");

    let waiter = {
        let stream = stream.clone();
        let shard = shard.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            stream
                .wait_for_records(&shard, Some(&sn(0)), Duration::from_secs(30))
                .await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream.put(vec![record("k", "x")]).await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "woken by the commit, not the timeout"
    );

    // Already past `after`: returns at once.
    let started = Instant::now();
    stream
        .wait_for_records(&shard, Some(&sn(0)), Duration::from_secs(30))
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_queue_answers_saturated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream.sqlite");
    let stream = EmbeddedStream::open(&path, 1, DAY, 2).expect("open");
    // The writer thread blocks on its first group and the queue (2 requests) fills up behind it.
    let holder = hold_write_lock(&path, Duration::from_millis(500));
    let puts = (0..16).map(|i| stream.put(vec![record("k", &i.to_string())]));
    let results = futures::future::join_all(puts).await;
    holder.join().unwrap();

    let saturated = results
        .iter()
        .filter(|r| matches!(r, Err(StreamError::Saturated(_))))
        .count();
    assert!(saturated > 0, "puts beyond the queue were refused at once");
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted + saturated, results.len());
    assert_eq!(
        stream.latest(&shard_id(0)).await.unwrap(),
        Some(sn(accepted as u64)),
        "only the accepted puts were written"
    );
}

/// Holds SQLite's write lock on `path` from another connection for `hold`, so the stream's
/// writer blocks on its first group and what follows waits in the queue. Returns once the lock is
/// taken.
fn hold_write_lock(path: &Path, hold: Duration) -> std::thread::JoinHandle<()> {
    let path = path.to_path_buf();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(hold);
        tx.commit().unwrap();
    });
    locked_rx.recv().unwrap();
    holder
}

#[tokio::test(flavor = "current_thread")]
async fn the_queue_holds_at_most_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream.sqlite");
    let stream = EmbeddedStream::open(&path, 1, DAY, 1024).expect("open");
    stream.set_max_pending_bytes(1000);
    let holder = hold_write_lock(&path, Duration::from_millis(500));
    let data = "x".repeat(299);
    let puts = (0..10).map(|_| stream.put(vec![record("k", &data)]));
    let results = futures::future::join_all(puts).await;
    holder.join().unwrap();

    let saturated: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Err(StreamError::Saturated(m)) => Some(m.clone()),
            _ => None,
        })
        .collect();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    // 300 bytes a put (data and key): three fit in 1,000 bytes, far fewer than the 1,024 appends
    // the queue would take by count.
    assert_eq!((accepted, saturated.len()), (3, 7), "{results:?}");
    assert!(saturated[0].contains("MiB of records"), "{}", saturated[0]);
    // The budget is given back as the appends are written.
    stream.put(vec![record("k", &data)]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_whose_callers_gave_up_are_dropped_unwritten() {
    use shopstream::metrics::STREAM_APPENDS_ABANDONED;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream.sqlite");
    let stream = EmbeddedStream::open(&path, 1, DAY, 1024).expect("open");
    let before = STREAM_APPENDS_ABANDONED.get();
    let holder = hold_write_lock(&path, Duration::from_millis(800));
    // One append the writer takes and blocks on; its caller waits for it.
    let first = tokio::spawn({
        let stream = stream.clone();
        async move { stream.put(vec![record("k", "first")]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Eight appends queued behind it whose callers stop waiting after 100 ms, as ingest does at
    // its request timeout.
    let puts = (0..8).map(|i| {
        tokio::time::timeout(
            Duration::from_millis(100),
            stream.put(vec![record("k", &i.to_string())]),
        )
    });
    let results = futures::future::join_all(puts).await;
    assert!(results.iter().all(Result::is_err), "every caller gave up");
    holder.join().unwrap();
    first.await.unwrap().unwrap();

    let started = Instant::now();
    while STREAM_APPENDS_ABANDONED.get() - before < 8 && started.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        STREAM_APPENDS_ABANDONED.get() - before,
        8,
        "every abandoned append dropped"
    );
    let written: Vec<String> = read_all(&stream, &shard_id(0))
        .await
        .into_iter()
        .map(|(_, data)| data)
        .collect();
    assert_eq!(
        written,
        ["first"],
        "only the append still awaited is written"
    );
}

#[tokio::test]
async fn an_oversize_record_is_refused_and_nothing_of_its_put_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 1);
    let too_big = PutRecord {
        partition_key: "k".into(),
        data: Bytes::from(vec![b'x'; MAX_RECORD_BYTES]),
        dedup_key: None,
    };
    let err = stream
        .put(vec![record("k", "fine"), too_big])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StreamError::RecordTooLarge { size, max } if size == MAX_RECORD_BYTES + 1 && max == MAX_RECORD_BYTES)
    );
    assert_eq!(stream.latest(&shard_id(0)).await.unwrap(), None);
    assert!(read_all(&stream, &shard_id(0)).await.is_empty());
}

#[tokio::test]
async fn release_honours_retention_and_keeps_numbering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream.sqlite");
    let shard = shard_id(0);
    {
        let stream = EmbeddedStream::open(&path, 1, DAY, 16).unwrap();
        stream
            .put((1..=5).map(|i| record("k", &i.to_string())).collect())
            .await
            .unwrap();
        assert_eq!(
            stream.release(&shard, &sn(5)).await.unwrap(),
            0,
            "younger than a day"
        );
    }
    // A file of before 2026-12-08 had indexes on the arrival times; opening it drops them
    // (retention finds old records by their sequence numbers).
    let indexes = |db: &rusqlite::Connection| -> Vec<String> {
        db.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%by_arrival'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE INDEX records_0000_by_arrival ON records_0000 (arrived_at_ms);
             CREATE INDEX invoice_claims_by_arrival ON invoice_claims (arrived_at_ms);",
        )
        .unwrap();
        assert_eq!(indexes(&db).len(), 2);
    }
    let stream = EmbeddedStream::open(&path, 1, Duration::ZERO, 16).unwrap();
    assert!(indexes(&rusqlite::Connection::open(&path).unwrap()).is_empty());
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(stream.release(&shard, &sn(3)).await.unwrap(), 3);
    let left: Vec<_> = read_all(&stream, &shard)
        .await
        .iter()
        .map(|r| r.0.clone())
        .collect();
    assert_eq!(left, [4, 5].map(sn));
    assert_eq!(stream.release(&shard, &sn(5)).await.unwrap(), 2);
    assert!(read_all(&stream, &shard).await.is_empty());
    drop(stream);

    let stream = EmbeddedStream::open(&path, 1, DAY, 16).unwrap();
    assert_eq!(stream.latest(&shard).await.unwrap(), Some(sn(5)));
    let results = stream.put(vec![record("k", "6")]).await.unwrap();
    assert_eq!(
        results[0].sequence_number,
        sn(6),
        "numbers are never reused"
    );
    stream.health().await.expect("healthy");
}

#[tokio::test]
async fn checkpoints_never_go_backwards_and_keep_pending_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 2);
    let checkpoints = stream.checkpoints();
    let shard = shard_id(1);
    let sink = SinkKind::Archive;

    assert_eq!(checkpoints.load(sink, &shard).await.unwrap(), None);
    checkpoints.save(sink, &shard, sn(10)).await.unwrap();
    checkpoints.save(sink, &shard, sn(7)).await.unwrap();
    assert_eq!(checkpoints.load(sink, &shard).await.unwrap(), Some(sn(10)));
    // 255 and 256 differ in their first byte from the end: byte order matters here.
    checkpoints.save(sink, &shard, sn(256)).await.unwrap();
    checkpoints.save(sink, &shard, sn(255)).await.unwrap();
    assert_eq!(checkpoints.load(sink, &shard).await.unwrap(), Some(sn(256)));
    assert_eq!(
        checkpoints.load(SinkKind::Warehouse, &shard).await.unwrap(),
        None
    );

    // A pending range before any checkpoint, then cleared by a save that reaches its end.
    let other = SinkKind::Operational;
    checkpoints
        .save_pending(other, &shard, Some((sn(1), sn(20))))
        .await
        .unwrap();
    assert_eq!(
        checkpoints.load_pending(other, &shard).await.unwrap(),
        Some((sn(1), sn(20)))
    );
    assert_eq!(checkpoints.load(other, &shard).await.unwrap(), None);
    checkpoints.save(other, &shard, sn(19)).await.unwrap();
    assert_eq!(
        checkpoints.load_pending(other, &shard).await.unwrap(),
        Some((sn(1), sn(20)))
    );
    checkpoints.save(other, &shard, sn(20)).await.unwrap();
    assert_eq!(checkpoints.load_pending(other, &shard).await.unwrap(), None);
    checkpoints
        .save_pending(other, &shard, Some((sn(21), sn(40))))
        .await
        .unwrap();
    checkpoints.save_pending(other, &shard, None).await.unwrap();
    assert_eq!(checkpoints.load_pending(other, &shard).await.unwrap(), None);
    assert_eq!(checkpoints.load(other, &shard).await.unwrap(), Some(sn(20)));

    checkpoints
        .save(sink, &shard, SequenceNumber::shard_end())
        .await
        .unwrap();
    checkpoints.save(sink, &shard, sn(5)).await.unwrap();
    drop(checkpoints);
    drop(stream);

    // Durable: a new handle on the file sees the same state.
    let stream = open(dir.path(), 2);
    let checkpoints = stream.checkpoints();
    assert_eq!(
        checkpoints.load(sink, &shard).await.unwrap(),
        Some(SequenceNumber::shard_end())
    );
    let listed: Vec<_> = checkpoints
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.sink, c.shard.0, c.sequence_number))
        .collect();
    assert_eq!(
        listed,
        vec![
            (
                SinkKind::Archive,
                "shard-0001".to_owned(),
                SequenceNumber::shard_end()
            ),
            (SinkKind::Operational, "shard-0001".to_owned(), sn(20)),
        ]
    );
}

fn sn(n: u64) -> SequenceNumber {
    SequenceNumber::from(n)
}

#[tokio::test]
async fn a_record_put_again_with_its_dedup_key_lands_where_the_first_did() {
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 2);
    let keyed = |key: u8, data: &str| PutRecord {
        dedup_key: Some([key; 16]),
        ..record("536365", data)
    };
    let first = stream
        .put(vec![keyed(1, "a"), keyed(2, "b")])
        .await
        .unwrap();
    // A retried request: the same records again, alone and within one put together with the
    // first try, plus a new one.
    let again = stream
        .put(vec![
            keyed(1, "a"),
            keyed(2, "b"),
            keyed(3, "c"),
            keyed(3, "c"),
        ])
        .await
        .unwrap();
    assert_eq!(again[0], first[0]);
    assert_eq!(again[1], first[1]);
    assert_eq!(again[2], again[3]);
    let shard = first[0].shard_id.clone();
    assert_eq!(
        read_all(&stream, &shard).await,
        vec![
            (sn(1), "a".into()),
            (sn(2), "b".into()),
            (sn(3), "c".into())
        ]
    );
    // Unkeyed records are always appended.
    stream.put(vec![record("536365", "a")]).await.unwrap();
    assert_eq!(read_all(&stream, &shard).await.len(), 4);
}

fn invoice_line(invoice: &str, quantity: i64, line_no: u64) -> shopstream::model::InvoiceLine {
    shopstream::model::InvoiceLine::new(
        invoice.into(),
        "85123A".into(),
        Some("WHITE HANGING HEART T-LIGHT HOLDER".into()),
        quantity,
        chrono::NaiveDate::from_ymd_opt(2010, 12, 1)
            .unwrap()
            .and_hms_opt(8, 26, 0)
            .unwrap(),
        rust_decimal::Decimal::new(255, 2),
        Some(17850),
        "United Kingdom".into(),
        Some(line_no),
        0,
    )
}

/// Appends `lines` from `store` as ingest does: the records with each line's claim.
async fn append_claimed(
    stream: &EmbeddedStream,
    store: &str,
    lines: &[shopstream::model::InvoiceLine],
) -> Result<(), StreamError> {
    use shopstream::stream::line_index::{LineClaim, LineIndex};
    let mut records = Vec::new();
    let mut claims = Vec::new();
    let format = stream.record_format();
    for (record, indexes) in
        shopstream::stream::record::encode_indexed(format, store, lines).unwrap()
    {
        records.push(record);
        claims.push(
            indexes
                .iter()
                .map(|&i| LineClaim::new(store, &lines[i]))
                .collect(),
        );
    }
    LineIndex::append(stream, records, claims).await.map(|_| ())
}

#[tokio::test]
async fn a_claim_finds_its_line_in_its_record_and_a_claim_without_its_record_is_gone() {
    use shopstream::stream::line_index::{LineIndex, LineKey};
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 2);
    let (a, b) = (invoice_line("536365", 6, 1), invoice_line("536365", 4, 2));
    append_claimed(&stream, "store-1", &[a.clone(), b.clone()])
        .await
        .unwrap();

    // Claims hold no copy of the line, only its id: the line is read from the record. The two
    // lines of one invoice in one record share one claim row.
    let db = rusqlite::Connection::open(dir.path().join("data/stream.sqlite")).unwrap();
    let (rows, ids): (i64, i64) = db
        .query_row(
            "SELECT count(*), sum((length(line_ids) - 1) / 16) FROM invoice_claims",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, ids), (1, 2));
    let (c, d, e) = (
        invoice_line("536366", 1, 1),
        invoice_line("536367", 2, 1),
        invoice_line("536368", 3, 1),
    );
    append_claimed(&stream, "store-0", std::slice::from_ref(&c))
        .await
        .unwrap();
    // A claim whose record is gone (retention removed the record, the claim's own delete had
    // not run yet), in the format of before 2026-12-08 (the id's hex digits), which is still read.
    db.execute(
        "INSERT INTO invoice_claims (invoice_no, shard, seq, store_id, line_ids, arrived_at_ms)
         VALUES (?1, 0, 78, 'store-0', CAST(?2 AS BLOB), 0)",
        rusqlite::params![d.invoice_no.as_str(), d.line_id.as_str()],
    )
    .unwrap();

    let keys: Vec<LineKey<'_>> = [&a, &b, &c, &d, &e].into_iter().map(LineKey::of).collect();
    let found = stream.lookup(&keys).await.unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[&a.line_id].line, a);
    assert_eq!(found[&a.line_id].store_id, "store-1");
    assert_eq!(found[&b.line_id].line, b);
    assert_eq!(found[&c.line_id].line, c);
    assert_eq!(found[&c.line_id].store_id, "store-0");

    // The claim without its record does not block the line: it is claimed anew. A standing
    // claim does.
    append_claimed(&stream, "store-2", std::slice::from_ref(&d))
        .await
        .unwrap();
    let found = stream.lookup(&[LineKey::of(&d)]).await.unwrap();
    assert_eq!(found[&d.line_id].store_id, "store-2");
    assert_eq!(found[&d.line_id].line, d);
    match append_claimed(&stream, "store-2", std::slice::from_ref(&a)).await {
        Err(StreamError::LinesTaken(ids)) => assert_eq!(ids, vec![a.line_id.clone()]),
        other => panic!("a claimed line was appended again: {other:?}"),
    }
}

/// A request that claims one line twice (in one record, or in two) writes nothing and is told
/// which id it repeats; the same lines claimed once are then written.
#[tokio::test]
async fn a_request_claiming_a_line_twice_writes_nothing() {
    use shopstream::stream::line_index::{LineClaim, LineIndex};
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 2);
    let (a, b) = (invoice_line("536365", 6, 1), invoice_line("536370", 4, 1));
    let format = stream.record_format();
    let encoded = |lines: &[shopstream::model::InvoiceLine]| {
        shopstream::stream::record::encode_indexed(format, "store-1", lines)
            .unwrap()
            .into_iter()
            .map(|(record, _)| record)
            .collect::<Vec<_>>()
    };
    let claim = |line| LineClaim::new("store-1", line);
    for claims in [
        // `a` twice in its own record.
        vec![vec![claim(&a), claim(&a)], vec![claim(&b)]],
        // `a` in its record and again in `b`'s.
        vec![vec![claim(&a)], vec![claim(&b), claim(&a)]],
    ] {
        match LineIndex::append(&stream, encoded(&[a.clone(), b.clone()]), claims).await {
            Err(StreamError::LinesTaken(ids)) => assert_eq!(ids, vec![a.line_id.clone()]),
            other => panic!("a request claiming a line twice was written: {other:?}"),
        }
    }
    let db = rusqlite::Connection::open(dir.path().join("data/stream.sqlite")).unwrap();
    let claimed: i64 = db
        .query_row("SELECT count(*) FROM invoice_claims", [], |r| r.get(0))
        .unwrap();
    assert_eq!(claimed, 0, "a refused request left claims");
    append_claimed(&stream, "store-1", &[a.clone(), b.clone()])
        .await
        .unwrap();
    let claimed: i64 = db
        .query_row(
            "SELECT sum((length(line_ids) - 1) / 16) FROM invoice_claims",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(claimed, 2);
}

/// Retention removes the claims of the records it removes, and no others: a line whose record
/// is gone may be sent again, one whose record stays is still a repeat.
#[tokio::test]
async fn retention_removes_the_claims_of_the_records_it_removes() {
    use shopstream::stream::line_index::{LineIndex, LineKey};
    let dir = tempfile::tempdir().unwrap();
    let stream = EmbeddedStream::open(&dir.path().join("stream.sqlite"), 1, Duration::ZERO, 16)
        .expect("open");
    let old = [invoice_line("536365", 6, 1), invoice_line("536365", 8, 2)];
    let young = invoice_line("536366", 1, 1);
    append_claimed(&stream, "store-1", &old).await.unwrap();
    append_claimed(&stream, "store-1", std::slice::from_ref(&young))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let shard = shard_id(0);
    assert!(stream.release(&shard, &sn(1)).await.unwrap() > 0);

    let keys: Vec<LineKey<'_>> = old.iter().chain([&young]).map(LineKey::of).collect();
    let found = stream.lookup(&keys).await.unwrap();
    assert_eq!(
        found.keys().collect::<Vec<_>>(),
        [&young.line_id],
        "only the claim of the record left stands"
    );
    let db = rusqlite::Connection::open(dir.path().join("stream.sqlite")).unwrap();
    let rows: i64 = db
        .query_row("SELECT count(*) FROM invoice_claims", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
    append_claimed(&stream, "store-2", &old)
        .await
        .expect("the lines of a removed record are claimed anew");
    match append_claimed(&stream, "store-2", std::slice::from_ref(&young)).await {
        Err(StreamError::LinesTaken(ids)) => assert_eq!(ids, vec![young.line_id.clone()]),
        other => panic!("a claimed line was appended again: {other:?}"),
    }
}

/// The writer checkpoints within its own commit only every 64 MB of WAL; the checkpointer thread
/// copies appends back into the database file long before, so no append waits for a large
/// checkpoint. Without it, 4 MB of appends would stay in the WAL and the file would not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_reach_the_database_file_without_the_writer_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    let stream = open(dir.path(), 1);
    let file = dir.path().join("data/stream.sqlite");
    let before = std::fs::metadata(&file).unwrap().len();
    let data = "x".repeat(100_000);
    for i in 0..40 {
        stream
            .put(vec![record(&format!("k{i}"), &data)])
            .await
            .expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut size = before;
    while Instant::now() < deadline {
        size = std::fs::metadata(&file).unwrap().len();
        if size >= before + 4_000_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        size >= before + 4_000_000,
        "the database file is {size} bytes after 4 MB of appends (it was {before})"
    );
    assert_eq!(read_all(&stream, &shard_id(0)).await.len(), 40);
}
