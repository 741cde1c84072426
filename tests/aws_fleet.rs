//! Several instances, resharding and failing AWS calls: the Kinesis consumer's promises, checked
//! through the real binary against local servers on 127.0.0.1 (Kinesis on kinesalite, which
//! models shard splits as Kinesis does; DynamoDB, S3 and Firehose on moto_server).
//!
//! - Two instances split the shards between them; the one left takes the shards of the one
//!   killed once its leases expire, and no line is lost.
//! - A shard split mid-stream: every line arrives once, and each sink starts on a child only
//!   after it has finished the parent.
//! - With a proxy failing entries of PutRecords, BatchWriteItem and PutRecordBatch, throttling
//!   whole calls and expiring shard iterators, every line still lands exactly once.

mod aws_common;
mod common;

use common::*;
use shopstream::actors::operational::dynamodb::DynamoOperationalStore;
use shopstream::actors::operational::OperationalStore;
use shopstream::config::AwsConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Calls `f` every 200 ms until it gives `Some`, for at most `timeout`.
fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Shard id -> lease owner, read from the lease table.
fn lease_owners(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    table: &str,
) -> BTreeMap<String, Option<String>> {
    let out = rt
        .block_on(
            clients
                .dynamodb
                .scan()
                .table_name(table)
                .consistent_read(true)
                .send(),
        )
        .unwrap();
    out.items()
        .iter()
        .map(|item| {
            let get = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
            (get("ShardId").unwrap(), get("LeaseOwner"))
        })
        .collect()
}

fn status(server: &Server) -> serde_json::Value {
    client()
        .get(server.url("/v1/status"))
        .send()
        .and_then(|r| r.json())
        .unwrap_or_default()
}

/// Waits until DynamoDB holds `expected` lines, then checks every sink: DynamoDB and the archive
/// exactly once with exact revenue; the Firehose destination every line at least once (exactly
/// once unless `firehose_may_repeat`: Firehose has no idempotent put, so lines a killed instance
/// sent but had not checkpointed are sent again; Redshift's merge by line_id absorbs them).
fn assert_all_sinks(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    cfg: &AwsConfig,
    expected: &Expected,
    firehose_may_repeat: bool,
) {
    let store = DynamoOperationalStore::from_config(clients, cfg);
    wait_for(Duration::from_secs(180), "every line in DynamoDB", || {
        let (n, _) = rt.block_on(store.totals()).unwrap();
        (n >= expected.rows).then_some(())
    });
    let (n, revenue) = rt.block_on(store.totals()).unwrap();
    assert_eq!(
        (n, revenue.normalize()),
        (expected.rows, expected.revenue.normalize()),
        "DynamoDB"
    );

    let (ids, revenue) = wait_for(Duration::from_secs(60), "every line archived", || {
        let texts = rt.block_on(aws_common::objects(&clients.s3, &cfg.bucket, "raw/"));
        let (ids, revenue) = aws_common::count_lines(&texts);
        (ids.len() as u64 >= expected.rows).then_some((ids, revenue))
    });
    assert_eq!(ids.len() as u64, expected.rows, "archive");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "lines archived more than once: {twice:?}");
    assert_eq!(revenue, expected.revenue.normalize(), "archive revenue");

    let (ids, _) = wait_for(Duration::from_secs(60), "every line delivered", || {
        let texts = rt.block_on(aws_common::objects(
            &clients.s3,
            &cfg.bucket,
            &cfg.firehose_prefix,
        ));
        let (ids, revenue) = aws_common::count_lines(&texts);
        (ids.len() as u64 >= expected.rows).then_some((ids, revenue))
    });
    assert_eq!(ids.len() as u64, expected.rows, "Firehose destination");
    if !firehose_may_repeat {
        let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "lines delivered more than once: {twice:?}"
        );
    }
}

/// Splits a CSV (header, then rows in invoice order) into two files at the invoice boundary
/// nearest the middle.
fn split_at_invoice(file: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let invoice = |row: &str| row.split(',').next().unwrap_or_default().to_owned();
    let mut cut = rows.len() / 2;
    while cut < rows.len() && invoice(rows[cut]) == invoice(rows[cut - 1]) {
        cut += 1;
    }
    let write = |name: &str, part: &[&str]| {
        let path = dir.join(name);
        std::fs::write(&path, format!("{header}\n{}\n", part.join("\n"))).unwrap();
        path
    };
    (
        write("first.csv", &rows[..cut]),
        write("second.csv", &rows[cut..]),
    )
}

/// A test's stream (on kinesalite, `shards` shards, 3 s leases) and other resources, created,
/// and `lines` generated lines with what they hold.
struct Setup {
    rt: tokio::runtime::Runtime,
    cfg: AwsConfig,
    clients: shopstream::aws::AwsClients,
    dir: tempfile::TempDir,
    file: PathBuf,
    expected: Expected,
}

fn setup(test: &str, shards: u32, lines: u64) -> Setup {
    let rt = runtime();
    let mut cfg = aws_common::on_kinesalite(aws_common::aws_config(test));
    cfg.stream_shards = shards;
    cfg.lease_duration = Duration::from_secs(3);
    let clients = rt.block_on(aws_common::init(&cfg));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.csv");
    generate(&file, lines, &["--seed", &lines.to_string()]);
    let expected = expected_from_csv(&file);
    Setup {
        rt,
        cfg,
        clients,
        dir,
        file,
        expected,
    }
}

#[test]
fn two_instances_split_the_shards_and_the_survivor_takes_over() {
    let Setup {
        rt,
        cfg,
        clients,
        dir,
        file,
        expected,
    } = setup("fleet", 4, 20_000);
    let toml = aws_common::serve_toml(&cfg);

    let a = Server::start(&dir.path().join("a"), 0, &toml);
    let mut b = Server::start(&dir.path().join("b"), 0, &toml);
    let (name_a, name_b) = (
        status(&a)["instance"].as_str().unwrap().to_owned(),
        status(&b)["instance"].as_str().unwrap().to_owned(),
    );
    assert_ne!(name_a, name_b);

    // The four shards are split two and two.
    wait_for(Duration::from_secs(30), "the shards split 2/2", || {
        let owners = lease_owners(&rt, &clients, &cfg.leases_table);
        let count = |n: &str| owners.values().filter(|o| o.as_deref() == Some(n)).count();
        (owners.len() == 4 && count(&name_a) == 2 && count(&name_b) == 2).then_some(())
    });

    // The stores send through A (paced, so B dies mid-stream); B reads its shards until killed.
    let replay_thread = std::thread::spawn({
        let base = a.base.clone();
        let file = file.clone();
        move || {
            replay(
                &base,
                &file,
                &["--stores", "2", "--batch", "200", "--rate", "4000"],
            )
        }
    });
    wait_for(Duration::from_secs(60), "B to write lines", || {
        let s = status(&b);
        let written: u64 = s["shards"]
            .as_array()?
            .iter()
            .filter_map(|s| s["lines_written"].as_u64())
            .sum();
        (written > 0).then_some(())
    });
    b.kill9();
    let summary = replay_thread.join().unwrap();
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");

    // A takes B's shards once their leases expire, and every line arrives.
    wait_for(Duration::from_secs(60), "A to own every shard", || {
        let owners = lease_owners(&rt, &clients, &cfg.leases_table);
        owners
            .values()
            .all(|o| o.as_deref() == Some(name_a.as_str()))
            .then_some(())
    });
    assert_all_sinks(&rt, &clients, &cfg, &expected, true);
    let shards_of_a: std::collections::BTreeSet<String> = status(&a)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["shard"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        shards_of_a.len(),
        4,
        "A reports every shard: {shards_of_a:?}"
    );
    aws_common::readback(&cfg, &[&file], &["firehose"]);
}

#[test]
fn a_stopped_instance_hands_its_shards_over_at_once() {
    let Setup { rt, mut cfg, .. } = setup("handover", 4, 100);
    // Leases far longer than the test: only a release on shutdown moves them in time.
    cfg.lease_duration = Duration::from_secs(120);
    let clients = rt.block_on(aws_common::clients(&cfg));
    let toml = aws_common::serve_toml(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(&dir.path().join("a"), 0, &toml);
    let name_a = status(&a)["instance"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(30), "A to own every shard", || {
        let owners = lease_owners(&rt, &clients, &cfg.leases_table);
        (owners.len() == 4
            && owners
                .values()
                .all(|o| o.as_deref() == Some(name_a.as_str())))
        .then_some(())
    });
    // A newcomer takes its share from A without waiting for anything to expire...
    let mut b = Server::start(&dir.path().join("b"), 0, &toml);
    let name_b = status(&b)["instance"].as_str().unwrap().to_owned();
    wait_for(Duration::from_secs(30), "B to take two shards", || {
        let owners = lease_owners(&rt, &clients, &cfg.leases_table);
        let of_b = owners
            .values()
            .filter(|o| o.as_deref() == Some(name_b.as_str()))
            .count();
        (of_b == 2).then_some(())
    });
    // ...and on SIGTERM checkpoints, releases its leases and exits 0, so A has every shard
    // back long before the leases would have expired.
    let (exit, took) = b.terminate();
    assert!(exit.success(), "B exited with {exit}");
    let waited = Instant::now();
    wait_for(
        Duration::from_secs(20),
        "A to take the released shards",
        || {
            let owners = lease_owners(&rt, &clients, &cfg.leases_table);
            owners
                .values()
                .all(|o| o.as_deref() == Some(name_a.as_str()))
                .then_some(())
        },
    );
    println!(
        "B stopped in {took:?}; A had every shard {:?} later",
        waited.elapsed()
    );
}

/// The log lines (JSON) of `server` as values, in order.
fn json_log(server: &Server) -> Vec<serde_json::Value> {
    server
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn log_index(log: &[serde_json::Value], message: &str, sink: &str, shard: &str) -> Option<usize> {
    log.iter().position(|e| {
        let f = &e["fields"];
        f["message"] == message && f["sink"] == sink && f["shard"] == shard
    })
}

#[test]
fn a_shard_split_mid_stream_is_read_parent_first_and_loses_nothing() {
    let Setup {
        rt,
        cfg,
        clients,
        dir,
        file,
        expected,
    } = setup("reshard", 2, 12_000);
    let toml = format!(
        "{}\n[log]\nformat = \"json\"\nlevel = \"info\"\n",
        aws_common::serve_toml(&cfg)
    );
    let (first, second) = split_at_invoice(&file, dir.path());

    let server = Server::start(&dir.path().join("a"), 0, &toml);
    let sent = replay(&server.base, &first, &["--stores", "2", "--batch", "200"]);

    // Split the first shard in the middle of its hash range while its readers may still be busy.
    let shards = rt
        .block_on(
            clients
                .kinesis
                .list_shards()
                .stream_name(&cfg.stream_name)
                .send(),
        )
        .unwrap();
    let parent = shards.shards()[0].clone();
    let range = parent.hash_key_range().unwrap();
    let lo: u128 = range.starting_hash_key().parse().unwrap();
    let hi: u128 = range.ending_hash_key().parse().unwrap();
    rt.block_on(
        clients
            .kinesis
            .split_shard()
            .stream_name(&cfg.stream_name)
            .shard_to_split(parent.shard_id())
            .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
            .send(),
    )
    .unwrap();
    let children: Vec<String> = wait_for(Duration::from_secs(30), "the children", || {
        let out = rt
            .block_on(
                clients
                    .kinesis
                    .list_shards()
                    .stream_name(&cfg.stream_name)
                    .send(),
            )
            .ok()?;
        let kids: Vec<String> = out
            .shards()
            .iter()
            .filter(|s| s.parent_shard_id() == Some(parent.shard_id()))
            .map(|s| s.shard_id().to_owned())
            .collect();
        (kids.len() == 2).then_some(kids)
    });
    let sent_after = replay(&server.base, &second, &["--stores", "2", "--batch", "200"]);
    assert_eq!(
        sent["lines_accepted"].as_u64().unwrap() + sent_after["lines_accepted"].as_u64().unwrap(),
        expected.rows
    );

    assert_all_sinks(&rt, &clients, &cfg, &expected, false);

    // Each sink started on a child only after it had written the whole parent, and the children
    // carried lines.
    let children_written = wait_for(Duration::from_secs(30), "the children's lines", || {
        let s = status(&server);
        let n: u64 = s["shards"]
            .as_array()?
            .iter()
            .filter(|e| children.iter().any(|c| e["shard"] == c.as_str()))
            .filter_map(|e| e["lines_written"].as_u64())
            .sum();
        (n > 0).then_some(n)
    });
    assert!(children_written > 0);
    let log = json_log(&server);
    for sink in ["archive", "operational", "warehouse"] {
        let parent_done = log_index(
            &log,
            "The shard is closed and fully written.",
            sink,
            parent.shard_id(),
        )
        .unwrap_or_else(|| panic!("{sink} never finished the parent {}", parent.shard_id()));
        for child in &children {
            let started = log_index(&log, "Started a shard actor.", sink, child)
                .unwrap_or_else(|| panic!("{sink} never started child {child}"));
            assert!(
                parent_done < started,
                "{sink} started child {child} (log line {started}) before finishing the parent (line {parent_done})"
            );
        }
    }
}

fn proxy_stats(proxy: &aws_common::Helper) -> serde_json::Value {
    client()
        .get(format!("{}/__fault_proxy/stats", proxy.endpoint))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn failed_entries_throttled_calls_and_expired_iterators_still_land_every_line_once() {
    let rt = runtime();
    let base = aws_common::on_kinesalite(aws_common::aws_config("faults"));
    let faults = ["--fail-rate", "0.25", "--throttle-rate", "0.05"];
    // A fifth of the reads also find their iterator expired, as after a sink outage of more
    // than five minutes.
    let kinesis_faults = [&faults[..], &["--expire-rate", "0.2"]].concat();
    let kinesis_proxy = aws_common::fault_proxy(&base.kinesis_endpoint_url, &kinesis_faults);
    let moto_proxy = aws_common::fault_proxy(&base.endpoint_url, &faults);
    // Resources are created directly; the pipeline goes through the proxies.
    let clients = rt.block_on(aws_common::init(&base));
    let mut cfg = base.clone();
    cfg.kinesis_endpoint_url = kinesis_proxy.endpoint.clone();
    cfg.dynamodb_endpoint_url = moto_proxy.endpoint.clone();
    cfg.firehose_endpoint_url = moto_proxy.endpoint.clone();
    cfg.lease_duration = Duration::from_secs(10);
    let toml = aws_common::serve_toml(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.csv");
    generate(&file, 8_000, &["--seed", "13"]);
    let expected = expected_from_csv(&file);

    let server = Server::start(&dir.path().join("a"), 0, &toml);
    let summary = replay(&server.base, &file, &["--stores", "2", "--batch", "100"]);
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");
    assert_all_sinks(&rt, &clients, &base, &expected, false);

    let k = proxy_stats(&kinesis_proxy);
    let m = proxy_stats(&moto_proxy);
    println!("kinesis proxy: {k:#}\nmoto proxy: {m:#}");
    let counter = |stats: &serde_json::Value, op: &str, what: &str| {
        stats["operations"][op][what].as_u64().unwrap_or(0)
    };
    for (stats, op, failed) in [
        (&k, "Kinesis_20131202.PutRecords", "injected_failed"),
        (
            &m,
            "DynamoDB_20120810.BatchWriteItem",
            "injected_unprocessed",
        ),
        (&m, "Firehose_20150804.PutRecordBatch", "injected_failed"),
    ] {
        assert!(
            counter(stats, op, failed) > 0,
            "no {op} entry was failed: {stats:#}"
        );
    }
    // Throttles are drawn per call (5%): a short run can miss one operation with few calls
    // (PutRecordBatch makes a few dozen), so they are counted over all three.
    let throttled = counter(&k, "Kinesis_20131202.PutRecords", "throttled")
        + counter(&m, "DynamoDB_20120810.BatchWriteItem", "throttled")
        + counter(&m, "Firehose_20150804.PutRecordBatch", "throttled");
    assert!(throttled > 0, "no call was throttled: {k:#}\n{m:#}");
    assert!(
        counter(&k, "Kinesis_20131202.GetRecords", "injected_expired") > 0,
        "no read found its iterator expired: {k:#}"
    );
    drop(server);
}
