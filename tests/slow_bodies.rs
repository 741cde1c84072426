//! Slow request bodies (issue 13, item 4): clients that send the headers of a large body and then
//! one byte now and then hold no ingest permit, only their store's share of requests, and get 408
//! once `server.body_timeout` has passed; every other store's posts are answered meanwhile.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONFIG: &str = r#"
[server]
max_inflight_ingest = 4
body_timeout = "3s"
request_timeout = "10s"

[auth.stores]
trickle = "trickle-key-change-me"
honest = "honest-key-change-me"
"#;

const NDJSON: &str = r#"{"InvoiceNo":"536365","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":6,"InvoiceDate":"12\/1\/2010 8:26","UnitPrice":2.55,"CustomerID":17850.0,"Country":"United Kingdom"}
"#;

/// A connection that sent the headers of a 1,000,000-byte body and then sends one byte every
/// 300 ms until told to stop (or the server closes it).
struct Trickler {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
}

impl Trickler {
    fn start(addr: &str, key: &str) -> Trickler {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "POST /v1/invoices HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/x-ndjson\r\nContent-Length: 1000000\r\n\r\n{{"
        )
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = stream.try_clone().unwrap();
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(300));
                if writer.write_all(b" ").is_err() {
                    return;
                }
            }
        });
        Trickler { stream, stop }
    }

    /// The status code of the answer, once one arrives within `wait`.
    fn status(&mut self, wait: Duration) -> Option<u16> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        let deadline = Instant::now() + wait;
        while !head.ends_with(b"\r\n") && Instant::now() < deadline {
            match self.stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let line = String::from_utf8_lossy(&head);
        line.split(' ').nth(1).and_then(|code| code.parse().ok())
    }
}

impl Drop for Trickler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Posts the one line of [`NDJSON`] under invoice `invoice`.
fn post(server: &Server, key: &str, invoice: &str) -> (u16, serde_json::Value) {
    let res = client()
        .post(server.url("/v1/invoices"))
        .bearer_auth(key)
        .header("Content-Type", "application/x-ndjson")
        .body(NDJSON.replace("536365", invoice))
        .send()
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().unwrap_or(serde_json::Value::Null))
}

#[test]
fn trickling_bodies_of_one_store_shut_no_other_store_out_and_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, CONFIG);
    let addr = server.base.trim_start_matches("http://").to_owned();

    // Six slow clients of one store: more than every ingest permit there is.
    let started = Instant::now();
    let mut tricklers: Vec<Trickler> = (0..6)
        .map(|_| Trickler::start(&addr, "trickle-key-change-me"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // Another store is answered at once; the trickling store's own posts are over its share.
    let (status, body) = post(&server, "honest-key-change-me", "536365");
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["accepted"], 1, "{body:#}");
    let (status, body) = post(&server, "trickle-key-change-me", "536366");
    assert_eq!(status, 503, "{body:#}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("server.max_inflight_per_store"),
        "{body:#}"
    );

    // The slow clients: those over the store's share (half of the 4 permits) are refused at once,
    // the others get 408 once the body timeout has passed, whatever they still send.
    let mut statuses: Vec<u16> = tricklers
        .iter_mut()
        .map(|t| t.status(Duration::from_secs(30)).unwrap_or(0))
        .collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [408, 408, 503, 503, 503, 503],
        "answers to the slow clients"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "a 408 came before server.body_timeout"
    );

    // The store's slots are back once its slow requests are answered.
    let (status, body) = post(&server, "trickle-key-change-me", "536366");
    assert_eq!(status, 200, "{body:#}");
}
