//! The command line as a person meets it: every command has help, the demo runs end to end, and
//! bad settings stop the start with the key named.

mod common;

use common::BIN;
use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn every_command_has_help() {
    let (ok, top) = run(&["--help"]);
    assert!(ok, "{top}");
    for command in ["serve", "demo", "replay", "generate", "dead-letter"] {
        assert!(top.contains(command), "{command} missing from\n{top}");
        let (ok, help) = run(&[command, "--help"]);
        assert!(ok && help.contains("Usage"), "{command}: {help}");
    }
}

#[test]
fn demo_replays_a_dataset_into_every_sink_and_says_where_to_look() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out) = run(&[
        "demo",
        "--lines",
        "5000",
        "--exit",
        "--port",
        "0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("in every sink"), "{out}");
    assert!(out.contains("5000 lines"), "{out}");
    assert!(out.contains("/v1/invoices/"), "{out}");
    assert!(data.join("warehouse.sqlite").is_file());
    // The story alone on the terminal, money in pounds and pence; the server's log in a file.
    assert!(!out.contains(" INFO "), "{out}");
    let revenue = out
        .split("revenue ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .unwrap();
    assert!(
        revenue.starts_with('£') && revenue.split('.').nth(1).map(str::len) == Some(2),
        "{revenue}"
    );
    let log = std::fs::read_to_string(data.join("demo.log")).unwrap();
    assert!(log.contains("INFO"), "{log}");
}

#[test]
fn bad_settings_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[stream]\nshards = 0\n").unwrap();
    let (ok, out) = run(&["--config", cfg.to_str().unwrap(), "serve", "--port", "0"]);
    assert!(!ok);
    assert!(out.contains("stream.shards"), "{out}");

    let (ok, out) = Command::new(BIN)
        .args(["serve", "--port", "0"])
        .env("SHOPSTREAM__SERVER__MAX_BODY_BYTES", "lots")
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert!(!ok);
    assert!(out.contains("max_body_bytes"), "{out}");
}
