//! Helpers of the black-box tests: the real `shopstream` binary on an ephemeral loopback port
//! with a temporary data folder, and independent read-back of what its sinks stored.
#![allow(dead_code)]

use rust_decimal::Decimal;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shopstream");
pub const DEMO_KEY: &str = "demo-key-change-me";
/// The demo reader key of `config/default.toml`: [`client`] sends it with every request that
/// sets no `Authorization` of its own, so reads work as they would for an analyst.
pub const READER_KEY: &str = "demo-reader-key-change-me";

/// A running `shopstream serve`.
pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    /// What the server wrote to stderr (its logs), for failure messages.
    log: PathBuf,
}

/// Settings every test server gets: fast flushes so tests do not wait on timers.
pub const TEST_CONFIG: &str = r#"
[archive]
flush_age = "200ms"

[sinks]
poll_interval = "20ms"
checkpoint_interval = "100ms"
shard_refresh = "1s"

[sinks.retry]
initial_backoff = "20ms"
max_backoff = "500ms"
max_attempts = 4

[log]
level = "info,shopstream=debug"
"#;

impl Server {
    /// Starts the binary on `port` (0: any free one) with `TEST_CONFIG` plus `extra` settings.
    pub fn start(data_dir: &Path, port: u16, extra: &str) -> Server {
        std::fs::create_dir_all(data_dir).unwrap();
        let config = data_dir.with_extension("toml");
        std::fs::write(&config, merge_toml(TEST_CONFIG, extra)).unwrap();
        let log = data_dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(BIN)
            .envs(AWS_TEST_ENV.iter().copied())
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--port")
            .arg(port.to_string())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("the shopstream binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("shopstream listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "shopstream did not start within 60 s; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let port = base.rsplit(':').next().unwrap().parse().unwrap();
        Server {
            child: Some(child),
            base,
            port,
            data_dir: data_dir.to_path_buf(),
            config,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET path` as JSON, whatever the status.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        client().get(self.url(path)).send().unwrap().json().unwrap()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, as ECS stops a task; returns the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let status = child.wait().unwrap();
        (status, started.elapsed())
    }

    /// Waits until every sink has checkpointed every shard up to the newest record. Fails only
    /// when the sinks' figures (lines written, backlog) have not moved for `stall`, with the last
    /// status and the log tail.
    pub fn wait_caught_up(&self, stall: Duration) {
        self.wait_caught_up_or(stall, String::new)
    }

    /// [`Server::wait_caught_up`], with `diagnose` adding to a failure's report (the emulators'
    /// error lines).
    pub fn wait_caught_up_or(&self, stall: Duration, diagnose: impl FnOnce() -> String) {
        let client = client();
        wait_progress_or(
            "every sink to catch up",
            stall,
            || {
                let status: serde_json::Value = client
                    .get(self.url("/v1/status"))
                    .send()
                    .and_then(|r| r.json())
                    .unwrap_or_default();
                let shards = status["shards"].as_array().cloned().unwrap_or_default();
                if status["caught_up"] == true && !shards.is_empty() {
                    return Ok(());
                }
                Err(sink_figures(&shards))
            },
            || format!("log tail:\n{}\n{}", tail(&self.log(), 40), diagnose()),
        )
    }

    /// Lines written and backlog per sink, from `/v1/status`: what a failed wait reports.
    pub fn sink_figures(&self) -> String {
        let status: serde_json::Value = client()
            .get(self.url("/v1/status"))
            .send()
            .and_then(|r| r.json())
            .unwrap_or_default();
        let shards = status["shards"].as_array().cloned().unwrap_or_default();
        format!("{:?}", sink_figures(&shards))
    }
}

/// Per sink: (lines written, backlog in records), summed over the shards of a `/v1/status`.
fn sink_figures(shards: &[serde_json::Value]) -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut figures = std::collections::BTreeMap::new();
    for s in shards {
        let sink = s["sink"].as_str().unwrap_or("?").to_owned();
        let entry: &mut (u64, u64) = figures.entry(sink).or_default();
        entry.0 += s["lines_written"].as_u64().unwrap_or(0);
        entry.1 += s["backlog_records"].as_u64().unwrap_or(0);
    }
    figures
}

/// Waits on progress, not on a clock: calls `look` until it answers `Ok`. While it answers
/// `Err(figures)` the wait goes on as long as the figures keep changing, and fails only once
/// they have stood still for `stall`, naming the last figures. A slow machine is slower but
/// passes; a real stall still fails.
pub fn wait_progress<T, P: PartialEq + std::fmt::Debug>(
    what: &str,
    stall: Duration,
    look: impl FnMut() -> Result<T, P>,
) -> T {
    wait_progress_or(what, stall, look, String::new)
}

/// [`wait_progress`], with `diagnose` adding what else a failure should show (logs, the other
/// sinks' counts).
pub fn wait_progress_or<T, P: PartialEq + std::fmt::Debug>(
    what: &str,
    stall: Duration,
    mut look: impl FnMut() -> Result<T, P>,
    diagnose: impl FnOnce() -> String,
) -> T {
    let started = Instant::now();
    let mut last: Option<P> = None;
    let mut moved = Instant::now();
    loop {
        let looked = Instant::now();
        match look() {
            Ok(done) => return done,
            Err(figures) => {
                if last.as_ref() != Some(&figures) {
                    last = Some(figures);
                    moved = Instant::now();
                } else if moved.elapsed() > stall {
                    panic!(
                        "waited {:?} for {what}: nothing moved for {stall:?}; last seen: {:?}\n{}",
                        started.elapsed(),
                        last.unwrap(),
                        diagnose()
                    );
                }
            }
        }
        // An expensive look (listing a bucket) is not repeated faster than it runs, so the wait
        // does not itself load the server it waits on.
        std::thread::sleep(looked.elapsed().max(Duration::from_millis(100)));
    }
}

/// The environment of every process a test starts: dummy AWS credentials and region, no
/// instance-metadata look-ups, S3 checksums only where required. Set on the children only, never
/// on the test process (other test threads run while it would change).
pub const AWS_TEST_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_SESSION_TOKEN", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
    ("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
];

/// Held by a heavy test (one that starts emulators and several shopstream processes) for as long
/// as it runs: heavy tests run one at a time, whether the runner puts them on threads of one
/// process (`cargo test`) or in processes of their own (nextest), so the 2-core machine and the
/// emulators keep up. An exclusive `flock` on a file in cargo's temporary folder.
pub struct HeavyTest {
    _lock: std::fs::File,
}

pub fn heavy_test() -> HeavyTest {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shopstream-heavy-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor this function owns; the lock ends when it is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {}", path.display());
    HeavyTest { _lock: file }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Appends `extra` to `base`, dropping the sections of `base` that `extra` also has (tests give
/// whole sections).
fn merge_toml(base: &str, extra: &str) -> String {
    let mut out = String::new();
    let extra_sections: Vec<&str> = extra
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .map(str::trim)
        .collect();
    let mut skip = false;
    for line in base.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            skip = extra_sections.contains(&t);
        }
        if !skip {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str(extra);
    out
}

/// An HTTP client that reads with [`READER_KEY`] (a request's own `bearer_auth` replaces it).
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .default_headers(reader_headers())
        .build()
        .unwrap()
}

/// Client without any key, for tests of what an anonymous caller gets.
pub fn anonymous_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

pub fn reader_headers() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {READER_KEY}").parse().unwrap(),
    );
    headers
}

/// A free loopback port (for a server that must come back on the same one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `shopstream replay FILE --json` against `base` and returns its summary.
pub fn replay(base: &str, file: &Path, extra: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("replay")
        .arg(file)
        .arg("--url")
        .arg(base)
        .arg("--key")
        .arg(DEMO_KEY)
        .arg("--json")
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json_start = stdout.find('{').unwrap_or_else(|| {
        panic!(
            "replay printed no summary: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(&stdout[json_start..]).unwrap()
}

/// Generates `lines` lines of online-retail CSV with the real binary.
pub fn generate(path: &Path, lines: u64, extra: &[&str]) {
    let status = Command::new(BIN)
        .arg("generate")
        .arg("--lines")
        .arg(lines.to_string())
        .arg("--output")
        .arg(path)
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "generate failed");
}

/// What a CSV file holds, computed without shopstream's parser: complete rows, and the exact sum
/// of their Quantity x UnitPrice; rows with a field missing (the real export has some) are
/// counted apart, as the ones shopstream must reject.
pub struct Expected {
    pub rows: u64,
    pub ragged: u64,
    pub revenue: Decimal,
    pub invoices: std::collections::BTreeSet<String>,
}

pub fn expected_from_csv(path: &Path) -> Expected {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bytes.as_slice());
    let headers = reader.byte_headers().unwrap().clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| String::from_utf8_lossy(h).eq_ignore_ascii_case(name))
            .unwrap()
    };
    let (q, p, inv) = (col("Quantity"), col("UnitPrice"), col("InvoiceNo"));
    let mut e = Expected {
        rows: 0,
        ragged: 0,
        revenue: Decimal::ZERO,
        invoices: Default::default(),
    };
    for rec in reader.byte_records() {
        let rec = rec.unwrap();
        if rec.len() != headers.len() {
            e.ragged += 1;
            continue;
        }
        let field = |i: usize| String::from_utf8_lossy(&rec[i]).trim().to_owned();
        e.rows += 1;
        e.revenue += Decimal::from_str(&field(q)).unwrap() * Decimal::from_str(&field(p)).unwrap();
        e.invoices.insert(field(inv));
    }
    e
}

/// Lines and exact revenue in a SQLite table, plus how many line ids appear more than once.
pub fn sqlite_totals(db: &Path, table: &str) -> (u64, Decimal, u64) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (n, micros): (i64, Option<i64>) = conn
        .query_row(
            &format!("SELECT COUNT(*), SUM(line_total_micros) FROM {table}"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let dups: i64 = conn
        .query_row(
            &format!("SELECT COUNT(*) - COUNT(DISTINCT line_id) FROM {table}"),
            [],
            |r| r.get(0),
        )
        .unwrap();
    (
        n as u64,
        Decimal::new(micros.unwrap_or(0), 6).normalize(),
        dups as u64,
    )
}

/// Every line in the archive folder: line id -> how many times it is there, and the exact
/// revenue over all of them.
pub fn archive_lines(archive_dir: &Path) -> (HashMap<String, u32>, Decimal, u64) {
    let mut ids = HashMap::new();
    let mut revenue = Decimal::ZERO;
    let mut total = 0u64;
    let mut stack = vec![archive_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".ndjson.gz") {
                let mut text = String::new();
                flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
                    .read_to_string(&mut text)
                    .unwrap();
                for line in text.lines() {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    *ids.entry(v["line_id"].as_str().unwrap().to_owned())
                        .or_insert(0) += 1;
                    let q = Decimal::from(v["quantity"].as_i64().unwrap());
                    let p = Decimal::from_str(v["unit_price"].as_str().unwrap()).unwrap();
                    revenue += q * p;
                    total += 1;
                }
            }
        }
    }
    (ids, revenue.normalize(), total)
}
