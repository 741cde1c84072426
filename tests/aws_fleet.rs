//! Several instances, resharding and failing AWS calls: the Kinesis consumer's promises, checked
//! through the real binary against local servers on 127.0.0.1 (Kinesis on kinesalite, which
//! models shard splits as Kinesis does; DynamoDB, S3 and Firehose on moto_server).
//!
//! - Two instances split the shards between them; the one left takes the shards of the one
//!   killed once its leases expire, and no line is lost.
//! - A shard split mid-stream: every line arrives once, and each sink starts on a child only
//!   after it has finished the parent.
//! - While ListShards is throttled, an instance still renews its leases.
//! - With a proxy failing entries of PutRecords, BatchWriteItem and PutRecordBatch, throttling
//!   whole calls and expiring shard iterators, every line still lands exactly once.

mod aws_common;
mod common;

use common::*;
use shopstream::config::Settings;
use shopstream::store::operational::dynamodb::DynamoOperationalStore;
use shopstream::store::OperationalStore;
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

/// How long the figures a wait watches may stand still before the wait fails: the local
/// emulators are slow under load, so this is generous; a real stall still fails.
const STALL: Duration = Duration::from_secs(120);

/// Every item of the lease table.
fn lease_items(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    table: &str,
) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
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
    out.items().to_vec()
}

/// Shard id -> lease owner, read from the lease table.
fn lease_owners(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    table: &str,
) -> BTreeMap<String, Option<String>> {
    lease_items(rt, clients, table)
        .iter()
        .map(|item| {
            let get = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
            (get("ShardId").unwrap(), get("LeaseOwner"))
        })
        .collect()
}

/// Waits until the lease table's owners satisfy `done`; fails once they have not changed for
/// [`STALL`], with the servers' log tails and the emulators' errors.
fn wait_owners(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    table: &str,
    what: &str,
    servers: &[&Server],
    done: impl Fn(&BTreeMap<String, Option<String>>) -> bool,
) {
    wait_progress_or(
        what,
        STALL,
        || {
            let owners = lease_owners(rt, clients, table);
            if done(&owners) {
                Ok(())
            } else {
                Err(owners)
            }
        },
        || {
            let mut out = String::new();
            for (i, server) in servers.iter().enumerate() {
                out.push_str(&format!(
                    "server {i} log tail:\n{}\n",
                    tail(&server.log(), 30)
                ));
            }
            out + &aws_common::emulator_errors()
        },
    )
}

/// Whether `instance` holds the lease of each of the four shards.
fn owns_every_shard(instance: &str) -> impl Fn(&BTreeMap<String, Option<String>>) -> bool + '_ {
    move |owners| owners.len() == 4 && owners.values().all(|o| o.as_deref() == Some(instance))
}

/// Lines written by `server`, over every sink and shard.
fn lines_written(server: &Server) -> u64 {
    status(server)["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .filter_map(|s| s["lines_written"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

fn status(server: &Server) -> serde_json::Value {
    client()
        .get(server.url("/v1/status"))
        .send()
        .and_then(|r| r.json())
        .unwrap_or_default()
}

/// Lines in DynamoDB, and line ids in the archive and the Firehose destination, as counted now:
/// what a failed wait reports beside the servers' own figures.
fn sink_counts(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    cfg: &Settings,
) -> String {
    let store = DynamoOperationalStore::from_config(clients, &cfg.aws, &cfg.operational.dynamodb);
    let dynamodb = rt.block_on(store.totals()).map(|(n, _)| n);
    let count = |prefix: &str| {
        let texts = rt.block_on(aws_common::objects(
            &clients.s3,
            &cfg.archive.s3.bucket,
            prefix,
        ));
        aws_common::count_lines(&texts).0.len()
    };
    format!(
        "DynamoDB lines {dynamodb:?}, archived line ids {}, delivered line ids {}",
        count("raw/"),
        count(&cfg.warehouse.firehose.prefix)
    )
}

/// What a failed wait of a fleet test prints: every sink's count, each server's figures and log
/// tail, the emulators' error lines.
fn diagnose(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    cfg: &Settings,
    servers: &[&Server],
) -> String {
    let mut out = format!("sinks: {}\n", sink_counts(rt, clients, cfg));
    for (i, server) in servers.iter().enumerate() {
        out.push_str(&format!(
            "server {i}: per sink (lines written, backlog) {}\nlog tail:\n{}\n",
            server.sink_figures(),
            tail(&server.log(), 30)
        ));
    }
    out.push_str(&aws_common::emulator_errors());
    out
}

/// Waits until DynamoDB holds `expected` lines, then checks every sink: DynamoDB and the archive
/// exactly once with exact revenue; the Firehose destination every line at least once (exactly
/// once unless `firehose_may_repeat`: Firehose has no idempotent put, so lines a killed instance
/// sent but had not checkpointed are sent again; Redshift's merge by line_id absorbs them).
/// Each wait lasts as long as its count grows.
fn assert_all_sinks(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    cfg: &Settings,
    expected: &Expected,
    firehose_may_repeat: bool,
    servers: &[&Server],
) {
    let store = DynamoOperationalStore::from_config(clients, &cfg.aws, &cfg.operational.dynamodb);
    let why = || diagnose(rt, clients, cfg, servers);
    wait_progress_or(
        "every line in DynamoDB",
        STALL,
        || {
            let (n, _) = rt.block_on(store.totals()).unwrap();
            if n >= expected.rows {
                Ok(())
            } else {
                Err(n)
            }
        },
        why,
    );
    let (n, revenue) = rt.block_on(store.totals()).unwrap();
    assert_eq!(
        (n, revenue.normalize()),
        (expected.rows, expected.revenue.normalize()),
        "DynamoDB"
    );

    let read = |prefix: &str| {
        let texts = rt.block_on(aws_common::objects(
            &clients.s3,
            &cfg.archive.s3.bucket,
            prefix,
        ));
        let (ids, revenue) = aws_common::count_lines(&texts);
        if ids.len() as u64 >= expected.rows {
            Ok((ids, revenue))
        } else {
            Err(ids.len())
        }
    };
    let (ids, revenue) = wait_progress_or("every line archived", STALL, || read("raw/"), why);
    assert_eq!(ids.len() as u64, expected.rows, "archive");
    let twice: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "lines archived more than once: {twice:?}");
    assert_eq!(revenue, expected.revenue.normalize(), "archive revenue");

    let (ids, _) = wait_progress_or(
        "every line delivered",
        STALL,
        || read(&cfg.warehouse.firehose.prefix),
        why,
    );
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
    cfg: Settings,
    clients: shopstream::aws::AwsClients,
    dir: tempfile::TempDir,
    file: PathBuf,
    expected: Expected,
}

fn setup(test: &str, shards: u32, lines: u64) -> Setup {
    let rt = runtime();
    let mut cfg = aws_common::on_kinesalite(aws_common::aws_config(test));
    cfg.stream.kinesis.shards = shards;
    cfg.stream.kinesis.lease_duration = Duration::from_secs(3);
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
    let _heavy = heavy_test();
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
    let (table, servers) = (&cfg.stream.kinesis.leases_table, [&a, &b]);
    wait_owners(
        &rt,
        &clients,
        table,
        "the shards split 2/2",
        &servers,
        |owners| {
            let count = |n: &str| owners.values().filter(|o| o.as_deref() == Some(n)).count();
            owners.len() == 4 && count(&name_a) == 2 && count(&name_b) == 2
        },
    );

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
    // While B has written nothing, the wait goes on as long as A writes.
    wait_progress("B to write lines", STALL, || match lines_written(&b) {
        0 => Err(lines_written(&a)),
        _ => Ok(()),
    });
    b.kill9();
    let summary = replay_thread.join().unwrap();
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");

    // A takes B's shards once their leases expire, and every line arrives.
    let owns_all = owns_every_shard(&name_a);
    let all_to_a = "A to own every shard";
    wait_owners(&rt, &clients, table, all_to_a, &[&a], &owns_all);
    assert_all_sinks(&rt, &clients, &cfg, &expected, true, &[&a]);
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
    let _heavy = heavy_test();
    let Setup { rt, mut cfg, .. } = setup("handover", 4, 100);
    // Leases far longer than the test can wait (ten minutes, against waits that fail after
    // STALL without a change): only a release on shutdown moves them in time.
    cfg.stream.kinesis.lease_duration = Duration::from_secs(600);
    let clients = rt.block_on(aws_common::clients(&cfg));
    let toml = aws_common::serve_toml(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let a = Server::start(&dir.path().join("a"), 0, &toml);
    let name_a = status(&a)["instance"].as_str().unwrap().to_owned();
    let table = &cfg.stream.kinesis.leases_table;
    let owns_all = owns_every_shard(&name_a);
    let all_to_a = "A to own every shard";
    wait_owners(&rt, &clients, table, all_to_a, &[&a], &owns_all);
    // A newcomer takes its share from A without waiting for anything to expire...
    let mut b = Server::start(&dir.path().join("b"), 0, &toml);
    let name_b = status(&b)["instance"].as_str().unwrap().to_owned();
    wait_owners(
        &rt,
        &clients,
        table,
        "B to take two shards",
        &[&a, &b],
        |owners| {
            let of_b = owners
                .values()
                .filter(|o| o.as_deref() == Some(name_b.as_str()))
                .count();
            of_b == 2
        },
    );
    // ...and on SIGTERM checkpoints, releases its leases and exits 0, so A has every shard
    // back long before the leases would have expired.
    let (exit, took) = b.terminate();
    assert!(exit.success(), "B exited with {exit}");
    let waited = Instant::now();
    let what = "A to take the released shards";
    wait_owners(&rt, &clients, table, what, &[&a], &owns_all);
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
    let _heavy = heavy_test();
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
                .stream_name(&cfg.stream.kinesis.stream_name)
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
            .stream_name(&cfg.stream.kinesis.stream_name)
            .shard_to_split(parent.shard_id())
            .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
            .send(),
    )
    .unwrap();
    let children: Vec<String> = wait_progress("the children", STALL, || {
        let out = rt.block_on(
            clients
                .kinesis
                .list_shards()
                .stream_name(&cfg.stream.kinesis.stream_name)
                .send(),
        );
        let Ok(out) = out else {
            return Err(format!("{out:?}"));
        };
        let kids: Vec<String> = out
            .shards()
            .iter()
            .filter(|s| s.parent_shard_id() == Some(parent.shard_id()))
            .map(|s| s.shard_id().to_owned())
            .collect();
        if kids.len() == 2 {
            Ok(kids)
        } else {
            Err(format!("{} shards, children {kids:?}", out.shards().len()))
        }
    });
    let sent_after = replay(&server.base, &second, &["--stores", "2", "--batch", "200"]);
    assert_eq!(
        sent["lines_accepted"].as_u64().unwrap() + sent_after["lines_accepted"].as_u64().unwrap(),
        expected.rows
    );

    assert_all_sinks(&rt, &clients, &cfg, &expected, false, &[&server]);

    // Each sink started on a child only after it had written the whole parent, and the children
    // carried lines.
    let children_written = wait_progress("the children's lines", STALL, || {
        let s = status(&server);
        let n: u64 = s["shards"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| children.iter().any(|c| e["shard"] == c.as_str()))
            .filter_map(|e| e["lines_written"].as_u64())
            .sum();
        if n > 0 {
            Ok(n)
        } else {
            Err(lines_written(&server))
        }
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
    let _heavy = heavy_test();
    let rt = runtime();
    let base = aws_common::on_kinesalite(aws_common::aws_config("faults"));
    let faults = ["--fail-rate", "0.25", "--throttle-rate", "0.05"];
    // A fifth of the reads also find their iterator expired, as after a sink outage of more
    // than five minutes.
    let kinesis_faults = [&faults[..], &["--expire-rate", "0.2"]].concat();
    let kinesis_proxy = aws_common::fault_proxy(&base.aws.kinesis_endpoint_url, &kinesis_faults);
    let moto_proxy = aws_common::fault_proxy(&base.aws.endpoint_url, &faults);
    // Resources are created directly; the pipeline goes through the proxies.
    let clients = rt.block_on(aws_common::init(&base));
    let mut cfg = base.clone();
    cfg.aws.kinesis_endpoint_url = kinesis_proxy.endpoint.clone();
    cfg.aws.dynamodb_endpoint_url = moto_proxy.endpoint.clone();
    cfg.aws.firehose_endpoint_url = moto_proxy.endpoint.clone();
    cfg.stream.kinesis.lease_duration = Duration::from_secs(10);
    let toml = aws_common::serve_toml(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.csv");
    generate(&file, 8_000, &["--seed", "13"]);
    let expected = expected_from_csv(&file);

    let server = Server::start(&dir.path().join("a"), 0, &toml);
    let summary = replay(&server.base, &file, &["--stores", "2", "--batch", "100"]);
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");
    assert_all_sinks(&rt, &clients, &base, &expected, false, &[&server]);

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

/// Shard id -> lease counter, read from the lease table.
fn lease_counters(
    rt: &tokio::runtime::Runtime,
    clients: &shopstream::aws::AwsClients,
    table: &str,
) -> BTreeMap<String, u64> {
    lease_items(rt, clients, table)
        .iter()
        .map(|item| {
            let id = item["ShardId"].as_s().unwrap().clone();
            let counter = item["LeaseCounter"].as_n().unwrap().parse().unwrap();
            (id, counter)
        })
        .collect()
}

/// While every ListShards call is refused (Kinesis' LimitExceededException), the instance still
/// renews its leases, so no other instance could take its shards; once the listing works again,
/// lines flow as before.
#[test]
fn leases_are_renewed_while_list_shards_is_throttled() {
    let _heavy = heavy_test();
    let rt = runtime();
    let base = aws_common::on_kinesalite(aws_common::aws_config("listfail"));
    let kinesis_proxy = aws_common::fault_proxy(&base.aws.kinesis_endpoint_url, &[]);
    let clients = rt.block_on(aws_common::init(&base));
    let mut cfg = base.clone();
    cfg.aws.kinesis_endpoint_url = kinesis_proxy.endpoint.clone();
    cfg.stream.kinesis.lease_duration = Duration::from_secs(2);
    let table = cfg.stream.kinesis.leases_table.clone();
    let toml = aws_common::serve_toml(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.csv");
    generate(&file, 400, &["--seed", "21"]);
    let expected = expected_from_csv(&file);

    let server = Server::start(&dir.path().join("a"), 0, &toml);
    wait_owners(
        &rt,
        &clients,
        &table,
        "every lease taken",
        &[&server],
        |o| !o.is_empty() && o.values().all(Option::is_some),
    );
    let owners = lease_owners(&rt, &clients, &table);

    let refuse = |targets: &[&str]| {
        let r = client()
            .post(format!("{}/__fault_proxy/config", kinesis_proxy.endpoint))
            .json(&serde_json::json!({ "refuse": targets }))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{:?}", r.text());
    };
    refuse(&["Kinesis_20131202.ListShards"]);
    let before = lease_counters(&rt, &clients, &table);
    // Three lease durations: without renewals every lease would have expired twice over.
    std::thread::sleep(cfg.stream.kinesis.lease_duration * 3);
    let after = lease_counters(&rt, &clients, &table);
    let refused = proxy_stats(&kinesis_proxy)["operations"]["Kinesis_20131202.ListShards"]
        ["refused"]
        .as_u64()
        .unwrap_or(0);
    assert!(refused > 0, "no ListShards call was refused");
    for (shard, counter) in &before {
        assert!(
            after[shard] > *counter,
            "the lease of {shard} was not renewed while ListShards failed ({counter} -> {}); log:\n{}",
            after[shard],
            tail(&server.log(), 40)
        );
    }
    assert_eq!(
        lease_owners(&rt, &clients, &table),
        owners,
        "no lease changed hands"
    );

    refuse(&[]);
    let summary = replay(&server.base, &file, &["--stores", "2", "--batch", "100"]);
    assert_eq!(summary["lines_accepted"], expected.rows, "{summary:#}");
    assert_all_sinks(&rt, &clients, &base, &expected, false, &[&server]);
}
