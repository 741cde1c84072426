//! The command line at its edges (issue 13, "smaller things"): a mistyped data folder, a closed
//! stdout, a misspelt environment override and a hostile S3 bucket name, each against the real
//! binary.

mod common;

use common::{client, free_port, AWS_TEST_ENV, BIN};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// A command with no stray `SHOPSTREAM_*` or `RUST_LOG` from the environment the tests run in.
fn shopstream() -> Command {
    let mut cmd = Command::new(BIN);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("SHOPSTREAM") || name == "RUST_LOG" {
            cmd.env_remove(&*name);
        }
    }
    cmd.envs(AWS_TEST_ENV.iter().copied());
    cmd
}

#[test]
fn dead_letter_commands_refuse_a_data_folder_that_does_not_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("mistyped-data");
    for sub in ["list", "redrive"] {
        let out = shopstream()
            .args(["dead-letter", sub])
            .env("SHOPSTREAM__DATA_DIR", &missing)
            .output()
            .unwrap();
        let text = text(&out);
        assert!(!out.status.success(), "dead-letter {sub}: {text}");
        assert!(
            text.contains(&missing.display().to_string())
                && text.contains("does not exist")
                && text.contains("data_dir"),
            "dead-letter {sub}: {text}"
        );
        assert!(!missing.exists(), "dead-letter {sub} created {missing:?}");
    }
    // An existing (empty) folder still reads as no dead letters.
    let out = shopstream()
        .args(["dead-letter", "list"])
        .env("SHOPSTREAM__DATA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 dead letters"), "{}", text(&out));
}

#[test]
fn serve_keeps_serving_when_stdout_is_closed_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = shopstream()
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the server prints where it listens: `shopstream serve | true`.
    drop(child.stdout.take());
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut s);
        s
    });
    let http = client();
    let live = format!("http://127.0.0.1:{port}/health/live");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "serve exited with {status} while stdout was closed:\n{}",
                log.join().unwrap()
            );
        }
        if http
            .get(&live)
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "serve never became live"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still up a moment later, and a clean exit on SIGTERM.
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "serve stopped");
    assert!(http.get(&live).send().unwrap().status().is_success());
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let log = log.join().unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_misspelt_environment_override_is_named_with_the_right_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let out = shopstream()
        .args(["dead-letter", "list"])
        .env("SHOPSTREAM__DATA_DIR", dir.path())
        .env("SHOPSTREAM_SERVER__PORT", "9090")
        // A real variable that is not a setting (`replay --key`): no warning for it.
        .env("SHOPSTREAM_KEY", "k")
        .output()
        .unwrap();
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("SHOPSTREAM_SERVER__PORT") && text.contains("SHOPSTREAM__SERVER__PORT"),
        "{text}"
    );
    assert!(!text.contains("SHOPSTREAM_KEY"), "{text}");
}

#[test]
fn import_refuses_a_bucket_name_outside_aws_rules_without_a_request() {
    let dir = tempfile::tempdir().unwrap();
    // Any request would land here; none may. Connections are counted and closed at once, so a
    // request that does go out fails fast instead of waiting for an answer.
    let endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", endpoint.local_addr().unwrap());
    let contacted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    std::thread::spawn({
        let contacted = contacted.clone();
        move || {
            for conn in endpoint.incoming() {
                contacted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(conn);
            }
        }
    });
    for source in ["s3://../x", "s3://../../etc/passwd"] {
        let out = shopstream()
            .args(["import", source, "--data-dir"])
            .arg(dir.path())
            .env("SHOPSTREAM__AWS__ENDPOINT_URL", &url)
            .output()
            .unwrap();
        let text = text(&out);
        assert!(!out.status.success(), "{source}: {text}");
        assert!(
            text.contains(source)
                && text.contains("not a valid name")
                && text.contains("3 to 63 characters"),
            "{source}: {text}"
        );
    }
    assert_eq!(
        contacted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the import contacted the endpoint"
    );
}

/// `replay` against an endpoint that answers every request 500 (a broken proxy in front of the
/// service) gives up after `--max-attempts` per request and reports the lines failed, instead of
/// retrying for ever.
#[test]
fn replay_gives_up_on_a_server_that_only_answers_500() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.csv");
    common::generate(&file, 20, &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counted = counted.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    // One request: headers, then a body of Content-Length bytes.
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    let answer = "{\"error\":\"internal\",\"message\":\"upstream broke\"}";
                    let _ = write!(
                        stream,
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                }
            });
        }
    });
    let started = Instant::now();
    let mut child = shopstream()
        .args(["replay", file.to_str().unwrap(), "--url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args([
            "--key",
            common::DEMO_KEY,
            "--stores",
            "1",
            "--batch",
            "1000",
            "--max-attempts",
            "3",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Before the fix it never returned: it is stopped after a minute, and the test fails.
    while child.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let all = text(&out);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "replay kept retrying: {all}"
    );
    assert!(!out.status.success(), "replay reported success: {all}");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        3,
        "one request, tried --max-attempts times: {all}"
    );
    assert!(
        all.contains("HTTP 500"),
        "the error names the answer: {all}"
    );
    assert!(all.contains("\"lines_failed\": 20"), "{all}");
}
