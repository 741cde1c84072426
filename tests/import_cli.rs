//! Black-box: the real `shopstream` binary imports folders and a full-size generated export.

mod import_support;

use import_support::{expected, fixture, sales};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn shopstream(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shopstream"))
        .args(args)
        .env_remove("SHOPSTREAM_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn import_json(data: &Path, sources: &[&Path], extra: &[&str]) -> (bool, Value) {
    let data = data.display().to_string();
    let mut args = vec!["import", "--json", "--data-dir", data.as_str()];
    args.extend_from_slice(extra);
    let sources: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    args.extend(sources.iter().map(String::as_str));
    let out = shopstream(&args);
    let summary = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), summary)
}

#[test]
fn a_folder_imports_once_and_reports_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let drops = dir.path().join("drops/2011/01");
    std::fs::create_dir_all(&drops).unwrap();
    for name in [
        "online-retail-sample-182.csv",
        "online-retail-sample-873-iso.csv",
    ] {
        std::fs::copy(fixture(name), drops.join(name)).unwrap();
    }
    let data = dir.path().join("data");
    let root = dir.path().join("drops");

    let (ok, first) = import_json(&data, &[&root], &[]);
    assert!(ok, "{first}");
    assert_eq!(first["loaded"], 2);
    assert_eq!(first["failed"], 0);
    assert_eq!(first["rows_loaded"], 179 + 873);
    assert_eq!(first["rows_rejected"], 4);
    let reject_file = first["reject_files"][0].as_str().unwrap();
    assert!(Path::new(reject_file).starts_with(data.join("import-rejects")));
    assert_eq!(
        std::fs::read_to_string(reject_file)
            .unwrap()
            .lines()
            .count(),
        5
    );
    let warehouse = data.join("warehouse.sqlite");
    let stored = sales(&warehouse);
    assert_eq!(stored.0, first["rows_new"].as_u64().unwrap());

    let (ok, second) = import_json(&data, &[&root], &[]);
    assert!(ok, "{second}");
    assert_eq!(
        (second["loaded"].as_u64(), second["skipped"].as_u64()),
        (Some(0), Some(2))
    );
    assert_eq!(sales(&warehouse), stored);

    // A failing file makes the exit code non-zero, after the summary.
    std::fs::write(drops.join("empty.csv"), "").unwrap();
    let (ok, third) = import_json(&data, &[&root], &[]);
    assert!(!ok);
    assert_eq!(
        (third["failed"].as_u64(), third["skipped"].as_u64()),
        (Some(1), Some(2))
    );
}

#[test]
fn the_full_size_latin1_export_loads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("online-retail-latin1.csv");
    let out = shopstream(&[
        "generate",
        "--encoding",
        "latin1",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (rows, revenue) = expected(&file);
    assert_eq!(rows, 541_909);

    let data = dir.path().join("data");
    let (ok, summary) = import_json(&data, &[&file], &["--date-order", "mdy"]);
    assert!(ok, "{summary}");
    assert_eq!(summary["rows_loaded"], 541_909);
    assert_eq!(summary["rows_rejected"], 0);
    assert_eq!(sales(&data.join("warehouse.sqlite")), (rows, revenue));
}
