//! Test support for the AWS backends: one `moto_server` on 127.0.0.1 per test binary, and
//! settings and clients pointed at it. Each test names its own bucket, tables and streams, so
//! tests share the server. Test files that use this module also declare `mod common;`.

#![allow(dead_code)] // each test binary uses a different part

use rust_decimal::Decimal;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shopstream::aws::AwsClients;
use shopstream::config::{
    AwsConfig, DynamoDbConfig, FirehoseConfig, KinesisConfig, S3Config, Settings,
};

pub use crate::common::AWS_TEST_ENV as ENV;

/// Runs `program args...` with its output in `log`, and stops it when the test process exits
/// (a server kept in a `static` is never dropped) or when the watchdog gets SIGTERM (its trap).
const WATCHDOG: &str = r#"parent=$1; log=$2; shift 2
"$@" >"$log" 2>&1 & m=$!
trap 'kill $m 2>/dev/null' EXIT TERM INT
while kill -0 "$parent" 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done"#;

/// A helper process of a test (moto_server, kinesalite, the fault proxy) on a free loopback
/// port, run under [`WATCHDOG`]: it dies with the test process or on drop, and its output is kept
/// for failure reports ([`Helper::error_lines`]).
pub struct Helper {
    child: Child,
    pub endpoint: String,
    pub port: u16,
    what: String,
    log: PathBuf,
}

impl Helper {
    /// Starts `program args...` under the watchdog, its output in `dir/log`.
    fn spawn(program: &str, args: &[&str], what: &str, dir: &std::path::Path) -> Helper {
        let log = dir.join("log");
        let child = Command::new("sh")
            .args(["-c", WATCHDOG, "helper-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&log)
            .arg(program)
            .args(args)
            .envs(ENV.iter().copied())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .spawn()
            .expect("sh starts");
        // Owned by a `Helper` at once, so a failed start still stops it (on drop).
        Helper {
            child,
            endpoint: String::new(),
            port: 0,
            what: what.to_owned(),
            log,
        }
    }

    /// Runs `program args...` with `--port-file FILE` appended and waits (60 s) until the
    /// program has written its port there.
    pub fn start(program: &str, args: &[&str], what: &str) -> Helper {
        let dir = tempfile::tempdir().unwrap().keep();
        let port_file = dir.join("port");
        let port_file_arg = port_file.to_str().unwrap();
        let args = [args, &["--port-file", port_file_arg]].concat();
        let mut helper = Helper::spawn(program, &args, what, &dir);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                helper.port = port;
                helper.endpoint = format!("http://127.0.0.1:{port}");
                return helper;
            }
            helper.assert_alive_until(deadline);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `moto_server` on a free loopback port, once it answers HTTP.
    pub fn moto_server() -> Helper {
        if Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            panic!("moto_server is not on PATH: run `scripts/local/aws-local.sh install` first");
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        let dir = tempfile::tempdir().unwrap().keep();
        let mut helper = Helper::spawn(
            "moto_server",
            &["-H", "127.0.0.1", "-p", &port.to_string()],
            "moto_server",
            &dir,
        );
        helper.port = port;
        helper.endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return helper;
                }
            }
            helper.assert_alive_until(deadline);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn assert_alive_until(&mut self, deadline: Instant) {
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() > deadline {
            panic!(
                "{} did not start ({}; run `scripts/local/aws-local.sh install` first); its output:\n{}",
                self.what,
                if exited { "it exited" } else { "60 s" },
                self.output()
            );
        }
    }

    /// Everything the program wrote.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its output that report an error (a traceback, an exception, an
    /// answer of 4xx or 5xx), and how many such lines there were: what a failed test prints so
    /// that an emulator's limit can be told from a product bug.
    pub fn error_lines(&self, n: usize) -> String {
        let output = self.output();
        let errors: Vec<&str> = output
            .lines()
            .filter(|l| {
                l.contains("Error")
                    || l.contains("Exception")
                    || l.contains("Traceback")
                    || l.contains("\" 4")
                    || l.contains("\" 5")
            })
            .collect();
        format!(
            "{} ({} lines of output, {} error lines; the last {}):\n{}",
            self.what,
            output.lines().count(),
            errors.len(),
            n.min(errors.len()),
            errors[errors.len().saturating_sub(n)..].join("\n")
        )
    }
}

impl Drop for Helper {
    /// Stops the watchdog with SIGTERM, so that its trap stops the program too (a SIGKILL would
    /// end the watchdog alone and leave the program running); SIGKILL only if it does not end.
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this Helper owns and has not waited for yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// kinesalite (pinned in `scripts/local/kinesalite`), bound to 127.0.0.1: the Kinesis of the tests
/// that need real shard splits (moto moves a split parent's records into its children).
static KINESALITE: OnceLock<Helper> = OnceLock::new();
static MOTO: OnceLock<Helper> = OnceLock::new();

pub fn kinesalite() -> &'static Helper {
    KINESALITE.get_or_init(|| {
        Helper::start(
            "node",
            &["scripts/local/kinesalite/server.js", "0"],
            "kinesalite",
        )
    })
}

/// `scripts/testing/fault_proxy.py` in front of `upstream`: counts every call, and injects the faults
/// `faults` asks for, e.g. `["--fail-rate", "0.25", "--throttle-rate", "0.05"]` (failed entries
/// of PutRecords, BatchWriteItem and PutRecordBatch, and whole calls of them throttled) or
/// `["--expire-rate", "0.2"]` (GetRecords answered ExpiredIteratorException).
pub fn fault_proxy(upstream: &str, faults: &[&str]) -> Helper {
    let mut args = vec![
        "scripts/testing/fault_proxy.py",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
        "--seed",
        "7",
    ];
    args.extend_from_slice(faults);
    Helper::start("python3", &args, "fault_proxy.py")
}

/// The moto server of this test binary, started on first use.
pub fn moto() -> &'static Helper {
    MOTO.get_or_init(Helper::moto_server)
}

/// What a failed heavy test prints beside its own figures: the error lines of the emulators
/// this test binary started.
pub fn emulator_errors() -> String {
    let mut out = String::new();
    for server in [MOTO.get(), KINESALITE.get()].into_iter().flatten() {
        out.push_str(&server.error_lines(20));
        out.push('\n');
    }
    out
}

/// Settings of the AWS backends pointed at the local server, with resource names unique to
/// `test` and short leases and backoffs. The stages' `backend` keys keep their defaults
/// ([`serve_toml`] sets them to aws).
pub fn aws_config(test: &str) -> Settings {
    let name = format!("t-{}", test.replace('_', "-"));
    let mut s = Settings::load(None).expect("the default settings load");
    s.aws = AwsConfig {
        region: "us-east-1".into(),
        endpoint_url: moto().endpoint.clone(),
        kinesis_endpoint_url: String::new(),
        s3_endpoint_url: String::new(),
        dynamodb_endpoint_url: String::new(),
        firehose_endpoint_url: String::new(),
        partial_retry_max_attempts: 10,
        partial_retry_initial_backoff: Duration::from_millis(10),
        partial_retry_max_backoff: Duration::from_millis(200),
    };
    s.stream.kinesis = KinesisConfig {
        stream_name: format!("{name}-stream"),
        shards: 4,
        leases_table: format!("{name}-leases"),
        lease_duration: Duration::from_millis(800),
        line_index_table: format!("{name}-line-ids"),
        line_index_retention: Duration::from_secs(7 * 24 * 3600),
        // The default, as a deployment runs it.
        idle_read_interval: s.stream.kinesis.idle_read_interval,
    };
    s.archive.s3 = S3Config {
        bucket: format!("{name}-bucket"),
        multipart_threshold_bytes: 6 * 1024 * 1024,
        multipart_part_bytes: 5 * 1024 * 1024,
    };
    s.operational.dynamodb = DynamoDbConfig {
        invoices_table: format!("{name}-invoices"),
        customers_index: "by-customer".into(),
    };
    s.warehouse.firehose = FirehoseConfig {
        delivery_stream: format!("{name}-sales"),
        role_arn: "arn:aws:iam::123456789012:role/firehose-local".into(),
        prefix: "warehouse/".into(),
    };
    s
}

/// Clients of `cfg` with the test credentials given directly: the test process's environment
/// is never changed (other test threads read it).
pub async fn clients(cfg: &Settings) -> AwsClients {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .http_client(shopstream::aws::https_client())
        .region(Region::new(cfg.aws.region.clone()))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await;
    AwsClients::from_shared(&shared, &cfg.aws)
}

/// `cfg` with Kinesis on kinesalite.
pub fn on_kinesalite(mut cfg: Settings) -> Settings {
    cfg.aws.kinesis_endpoint_url = kinesalite().endpoint.clone();
    cfg
}

/// The settings of `shopstream serve` with every stage on the AWS backends of `cfg`, fast timers.
pub fn serve_toml(cfg: &Settings) -> String {
    format!(
        r#"
[stream]
backend = "aws"
[stream.kinesis]
stream_name = "{stream}"
leases_table = "{leases}"
line_index_table = "{line_ids}"
lease_duration = "{lease}ms"
[archive]
backend = "aws"
flush_age = "200ms"
[archive.s3]
bucket = "{bucket}"
[operational]
backend = "aws"
[operational.dynamodb]
invoices_table = "{invoices}"
[warehouse]
backend = "aws"
[warehouse.firehose]
delivery_stream = "{sales}"
prefix = "{prefix}"
[dead_letter]
backend = "aws"
[sinks]
poll_interval = "50ms"
checkpoint_interval = "100ms"
shard_refresh = "500ms"
[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
kinesis_endpoint_url = "{kinesis}"
s3_endpoint_url = "{s3}"
dynamodb_endpoint_url = "{dynamodb}"
firehose_endpoint_url = "{firehose}"
partial_retry_initial_backoff = "10ms"
partial_retry_max_backoff = "200ms"
"#,
        endpoint = cfg.aws.endpoint_url,
        kinesis = cfg.aws.kinesis_endpoint_url,
        s3 = cfg.aws.s3_endpoint_url,
        dynamodb = cfg.aws.dynamodb_endpoint_url,
        firehose = cfg.aws.firehose_endpoint_url,
        stream = cfg.stream.kinesis.stream_name,
        bucket = cfg.archive.s3.bucket,
        invoices = cfg.operational.dynamodb.invoices_table,
        leases = cfg.stream.kinesis.leases_table,
        line_ids = cfg.stream.kinesis.line_index_table,
        lease = cfg.stream.kinesis.lease_duration.as_millis(),
        sales = cfg.warehouse.firehose.delivery_stream,
        prefix = cfg.warehouse.firehose.prefix,
    )
}

/// Runs `scripts/ops/readback.py`, the independent boto3 read-back, against what `cfg` names and
/// the input `files`; panics with its report when a sink does not match the input.
pub fn readback(cfg: &Settings, files: &[&std::path::Path], allow_duplicates: &[&str]) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg("scripts/ops/readback.py")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--endpoint", &cfg.aws.endpoint_url])
        .args(["--region", &cfg.aws.region])
        .args(["--bucket", &cfg.archive.s3.bucket])
        .args(["--invoices-table", &cfg.operational.dynamodb.invoices_table])
        .args(["--archive-prefix", "raw/"])
        .args(["--firehose-prefix", &cfg.warehouse.firehose.prefix]);
    for f in files {
        cmd.arg("--input").arg(f);
    }
    for sink in allow_duplicates {
        cmd.args(["--allow-duplicates", sink]);
    }
    for (k, v) in ENV {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("python3 runs scripts/ops/readback.py");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "readback.py found a difference:\n{report}"
    );
    report
}

/// Clients for `cfg`, with every resource of `cfg` created by `aws init`'s code.
pub async fn init(cfg: &Settings) -> AwsClients {
    let c = clients(cfg).await;
    shopstream::cli::aws::init(&c, cfg, Duration::from_secs(30))
        .await
        .expect("aws init against moto");
    c
}

/// `n` lines of invoice `invoice_no` for `customer`, priced so totals are exact decimals that a
/// float would get wrong (quantity * 0.1 ...).
pub fn lines(
    invoice_no: &str,
    customer: Option<u64>,
    day: u32,
    n: u64,
) -> Vec<shopstream::model::IngestedLine> {
    use chrono::NaiveDate;
    (0..n)
        .map(|i| shopstream::model::IngestedLine {
            line: shopstream::model::InvoiceLine::new(
                invoice_no.into(),
                format!("SKU{i}").into(),
                Some(format!("item {i}").into()),
                (i % 7) as i64 + 1,
                NaiveDate::from_ymd_opt(2011, 3, day)
                    .unwrap()
                    .and_hms_opt(9, 30, 0)
                    .unwrap(),
                format!("0.{}", i % 10 + 1).parse().unwrap(),
                customer,
                "United Kingdom".into(),
                Some(i + 1),
                0,
            ),
            store_id: "demo".into(),
            ingested_at: chrono::Utc::now(),
        })
        .collect()
}

/// Every object under `prefix`: its bytes, gunzipped when the key says so.
pub async fn objects(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for obj in page.unwrap().contents() {
            let key = obj.key().unwrap();
            let body = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            let mut text = String::new();
            if key.ends_with(".gz") {
                flate2::read::GzDecoder::new(&body[..])
                    .read_to_string(&mut text)
                    .unwrap();
            } else {
                text = String::from_utf8(body.to_vec()).unwrap();
            }
            out.push(text);
        }
    }
    out
}

/// line id -> times seen, and the exact revenue, over NDJSON texts of lines.
pub fn count_lines(texts: &[String]) -> (HashMap<String, u32>, Decimal) {
    let mut ids = HashMap::new();
    let mut revenue = Decimal::ZERO;
    for line in texts.iter().flat_map(|t| t.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *ids.entry(v["line_id"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
        let q = Decimal::from(v["quantity"].as_i64().unwrap());
        let p: Decimal = v["unit_price"]
            .as_str()
            .map(|s| s.parse().unwrap())
            .unwrap_or_else(|| v["unit_price"].to_string().parse().unwrap());
        revenue += q * p;
    }
    (ids, revenue.normalize())
}

/// The S3 archive (`raw/`) and the Firehose destination (S3 here, Redshift in production) each
/// hold every one of `rows` lines exactly once, with `revenue` in all.
pub async fn assert_s3_sinks_hold_each_line_once(
    clients: &AwsClients,
    cfg: &shopstream::config::Settings,
    rows: u64,
    revenue: Decimal,
) {
    let bucket = &cfg.archive.s3.bucket;
    for (sink, prefix) in [
        ("archive", "raw/"),
        (
            "Firehose destination",
            cfg.warehouse.firehose.prefix.as_str(),
        ),
    ] {
        let (ids, sum) = count_lines(&objects(&clients.s3, bucket, prefix).await);
        assert_eq!(ids.len() as u64, rows, "lines in the {sink}");
        assert!(
            ids.values().all(|n| *n == 1),
            "a line is in the {sink} twice"
        );
        assert_eq!(sum, revenue.normalize(), "revenue in the {sink}");
    }
}
