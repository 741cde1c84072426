//! The `shopstream generate` command, run as the real binary.

use std::process::{Command, Output};

fn shopstream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(args)
        .output()
        .expect("the shopstream binary runs")
}

fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn writes_the_requested_csv_file_and_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lines.csv");
    let output = shopstream(&[
        "generate",
        "--lines",
        "2000",
        "--output",
        path.to_str().unwrap(),
    ]);
    assert_success(&output);
    assert!(output.stdout.is_empty(), "data went to stdout too");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        stderr.contains("wrote 2000 lines in ")
            && stderr.contains(&format!("{} bytes", bytes.len())),
        "summary: {stderr}"
    );

    let mut reader = csv::Reader::from_reader(&bytes[..]);
    let header: Vec<&str> = reader.headers().unwrap().iter().collect();
    assert_eq!(
        header.join(","),
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
    );
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(records.len(), 2000);
    assert!(records.iter().all(|r| r.len() == 8));
    assert_eq!(&records[0][0], "536365");
    assert!(records[0][4].starts_with("12/1/2010 "), "{:?}", &records[0]);

    // Same arguments, same bytes, this time through stdout.
    let again = shopstream(&["generate", "--lines", "2000"]);
    assert_success(&again);
    assert_eq!(again.stdout, bytes);
}

#[test]
fn writes_ndjson_with_iso_dates() {
    let output = shopstream(&[
        "generate",
        "--lines",
        "300",
        "--seed",
        "9",
        "--format",
        "ndjson",
        "--date-style",
        "iso",
    ]);
    assert_success(&output);
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.lines().count(), 300);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let date = v["InvoiceDate"].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%d %H:%M:%S").is_ok(),
            "{date}"
        );
    }
}

#[test]
fn refuses_latin1_json_with_a_clear_message() {
    let output = shopstream(&[
        "generate",
        "--lines",
        "10",
        "--format",
        "json",
        "--encoding",
        "latin1",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("--format csv only"), "{stderr}");
}

#[test]
fn help_describes_the_options() {
    let output = shopstream(&["generate", "--help"]);
    assert_success(&output);
    let help = String::from_utf8(output.stdout).unwrap();
    for option in [
        "--lines",
        "--seed",
        "--format",
        "--encoding",
        "--date-style",
        "--output",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(["generate", "--lines", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_success(&output);
    assert!(first.starts_with(b"InvoiceNo,"));
}
