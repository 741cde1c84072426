//! Test support for the AWS backends: one `moto_server` on 127.0.0.1 per test binary, and
//! settings and clients pointed at it. Each test names its own bucket, tables and streams, so
//! tests share the server and run in parallel.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shopstream::aws::AwsClients;
use shopstream::config::AwsConfig;

/// A `moto_server` child process on a free loopback port, killed on drop. The server is spawned
/// under a small shell watchdog that also kills it when the test process exits, because a
/// server kept in a `static` is never dropped.
pub struct MotoServer {
    child: Child,
    pub endpoint: String,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port on 127.0.0.1")
            .port();
        if Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            panic!("moto_server is not on PATH: run `scripts/aws-local.sh install` first");
        }
        let script = r#"moto_server -H 127.0.0.1 -p "$1" >/dev/null 2>&1 & m=$!
trap 'kill $m 2>/dev/null' EXIT TERM INT
while kill -0 "$2" 2>/dev/null && kill -0 $m 2>/dev/null; do sleep 0.5; done"#;
        let child = Command::new("sh")
            .args(["-c", script, "moto-watchdog"])
            .arg(port.to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("sh can start moto_server");
        let server = MotoServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        server.wait_until_ready(port);
        server
    }

    fn wait_until_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                use std::io::Write;
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not answer on 127.0.0.1:{port} within 30 s");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // The watchdog's trap kills moto_server.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The environment every client of the local server needs: dummy credentials, a region, no
/// instance-metadata look-ups, and S3 checksums only where required.
pub const ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_SESSION_TOKEN", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
    ("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
];

/// The server of this test binary, started on first use.
pub fn moto() -> &'static MotoServer {
    static SERVER: OnceLock<MotoServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        for (k, v) in ENV {
            std::env::set_var(k, v);
        }
        MotoServer::start()
    })
}

/// Settings of the AWS backends pointed at the local server, with resource names unique to
/// `test` and short leases and backoffs.
pub fn aws_config(test: &str) -> AwsConfig {
    let name = format!("t-{}", test.replace('_', "-"));
    AwsConfig {
        region: "us-east-1".into(),
        endpoint_url: moto().endpoint.clone(),
        stream_name: format!("{name}-stream"),
        stream_shards: 4,
        bucket: format!("{name}-bucket"),
        multipart_threshold_bytes: 6 * 1024 * 1024,
        multipart_part_bytes: 5 * 1024 * 1024,
        invoices_table: format!("{name}-invoices"),
        customers_index: "by-customer".into(),
        leases_table: format!("{name}-leases"),
        lease_duration: Duration::from_millis(800),
        delivery_stream: format!("{name}-sales"),
        firehose_role_arn: "arn:aws:iam::123456789012:role/firehose-local".into(),
        firehose_prefix: "warehouse/".into(),
        partial_retry_max_attempts: 10,
        partial_retry_initial_backoff: Duration::from_millis(10),
        partial_retry_max_backoff: Duration::from_millis(200),
    }
}

pub async fn clients(cfg: &AwsConfig) -> AwsClients {
    AwsClients::from_config(cfg).await
}

/// Clients for `cfg`, with every resource of `cfg` created by `aws init`'s code.
pub async fn init(cfg: &AwsConfig) -> AwsClients {
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
                format!("SKU{i}"),
                Some(format!("item {i}")),
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
