//! The dashboard in a real browser: headless Chromium loads the page from the real binary, runs
//! its script against the JSON API, and the figures it shows must equal `/v1/sales/summary` and
//! `/v1/sales/customers`, for every day and for a date range given in the page's address. A
//! screenshot of each view is kept under the test's output folder
//! (`target/tmp/dashboard_browser/`) for a person to look at.
//!
//! Needs Debian's `chromium` (scripts/testing/setup-test-deps.sh installs it); the path can be
//! set with `SHOPSTREAM_TEST_CHROMIUM`.

mod common;

use common::*;
use rust_decimal::Decimal;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

fn chromium() -> String {
    let path = std::env::var("SHOPSTREAM_TEST_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    match Command::new(&path).arg("--version").output() {
        Ok(out) if out.status.success() => path,
        _ => panic!(
            "this test needs Chromium: `{path} --version` failed. Install Debian's package \
             `chromium` (bash scripts/testing/setup-test-deps.sh does) or set \
             SHOPSTREAM_TEST_CHROMIUM to its path"
        ),
    }
}

/// Runs headless Chromium on `url` with its network confined to the page's own requests, lets
/// the page's script run for a few (virtual) seconds, then either prints the DOM or saves a
/// screenshot.
fn browse(profile: &Path, url: &str, output: Option<&Path>) -> String {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match output {
        Some(png) => cmd.arg(format!("--screenshot={}", png.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of every element that carries `attr="name"`, by name (`data-figure="lines">4,766<`).
fn figures(dom: &str, attr: &str) -> Vec<(String, String)> {
    let marker = format!("{attr}=\"");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&marker) {
        rest = &rest[at + marker.len()..];
        let Some(end) = rest.find('"') else { break };
        let name = rest[..end].to_owned();
        let after = &rest[end..];
        // Only elements: `name">text<`, not the script's template text.
        if let Some(text) = after.strip_prefix("\">") {
            let text = &text[..text.find('<').unwrap_or(text.len())];
            if !name.contains('$') {
                found.push((name, text.to_owned()));
            }
        }
    }
    found
}

/// `£1,234.56` or `-£1.50` as a decimal; `4,766` as a whole number.
fn shown_number(text: &str) -> Decimal {
    let cleaned: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    Decimal::from_str(&cleaned).unwrap_or_else(|e| panic!("{text:?} is not a number: {e}"))
}

fn get_json(server: &Server, path: &str) -> serde_json::Value {
    let r = client().get(server.url(path)).send().unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().unwrap()
}

/// Checks what the page at `query` shows against the API's answers for the same range.
fn check_view(server: &Server, profile: &Path, shots: &Path, name: &str, query: &str) {
    let summary = get_json(server, &format!("/v1/sales/summary{query}"));
    let customers = get_json(server, &format!("/v1/sales/customers{query}"));
    let page = server.url(&format!("/{query}#key={READER_KEY}"));
    let dom = browse(profile, &page, None);
    assert!(
        dom.contains(r#"<form id="keyform" onsubmit="useKey(event)" hidden="">"#),
        "{name}: the page asks for a key although it was given one:\n{dom}"
    );
    let shown: std::collections::HashMap<String, String> =
        figures(&dom, "data-figure").into_iter().collect();
    for field in ["lines", "invoices", "customers", "cancellation_lines"] {
        let text = shown
            .get(field)
            .unwrap_or_else(|| panic!("{name}: the page shows no {field} card:\n{dom}"));
        assert_eq!(
            shown_number(text),
            Decimal::from(summary[field].as_u64().unwrap()),
            "{name}: {field} on the page is {text:?}, the API says {}",
            summary[field]
        );
    }
    let revenue = Decimal::from_str(summary["revenue"].as_str().unwrap()).unwrap();
    let page_revenue = shown_number(&shown["revenue"]);
    assert!(
        (page_revenue - revenue).abs() <= Decimal::new(5, 3),
        "{name}: revenue on the page is {:?}, the API says {revenue}",
        shown["revenue"]
    );
    let products: Vec<String> = figures(&dom, "data-product")
        .into_iter()
        .map(|(code, _)| code)
        .collect();
    let api_products: Vec<String> = summary["top_products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["stock_code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(products, api_products, "{name}: top products differ");
    let page_customers: Vec<String> = figures(&dom, "data-customer")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let api_customers: Vec<String> = customers["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer_id"].to_string())
        .collect();
    assert!(!api_customers.is_empty(), "{name}: no customers to compare");
    assert_eq!(
        page_customers, api_customers,
        "{name}: top customers differ"
    );

    let png = shots.join(format!("{name}.png"));
    browse(profile, &page, Some(&png));
    let size = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 20_000,
        "{name}: the screenshot {png:?} is {size} bytes"
    );
}

#[test]
fn the_dashboard_shows_what_the_api_answers_for_every_day_and_for_a_range() {
    let dir = tempfile::tempdir().unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard_browser");
    std::fs::create_dir_all(&shots).unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let csv = dir.path().join("lines.csv");
    generate(&csv, 4_000, &["--seed", "31"]);
    let replayed = replay(&server.base, &csv, &[]);
    assert_eq!(replayed["lines_accepted"], 4_000, "{replayed}");
    server.wait_caught_up(Duration::from_secs(60));

    // The API's range, checked against the file itself, read without shopstream's parser.
    let q1 = get_json(&server, "/v1/sales/summary?from=2011-01-01&to=2011-03-31");
    let own = figures_of_csv(&csv, "2011-01-01", "2011-03-31");
    assert!(
        own.0 > 0,
        "the generated file has no lines in the first quarter of 2011"
    );
    assert_eq!(
        (
            q1["lines"].as_u64().unwrap(),
            q1["invoices"].as_u64().unwrap(),
            q1["customers"].as_u64().unwrap(),
            q1["cancellation_lines"].as_u64().unwrap(),
            Decimal::from_str(q1["revenue"].as_str().unwrap()).unwrap(),
        ),
        own,
        "lines, invoices, customers, cancellation lines and revenue of 2011-01-01..=2011-03-31"
    );

    // Without a key the page shows no figures and asks for one.
    let profile = dir.path().join("chromium");
    let locked = browse(&profile, &server.url("/"), None);
    assert!(
        figures(&locked, "data-figure")
            .iter()
            .all(|(name, _)| name == "error")
            && locked.contains(r#"<form id="keyform" onsubmit="useKey(event)">"#),
        "without a key the page must ask for one and show no figures:\n{locked}"
    );
    check_view(&server, &profile, &shots, "all-days", "");
    check_view(
        &server,
        &profile,
        &shots,
        "first-quarter-2011",
        "?from=2011-01-01&to=2011-03-31",
    );
}

/// (lines, invoices, customers, cancellation lines, revenue) of the rows of a generated CSV whose
/// day (`M/D/YYYY h:mm`) is within `first..=last` (`YYYY-MM-DD`).
fn figures_of_csv(path: &Path, first: &str, last: &str) -> (u64, u64, u64, u64, Decimal) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let (mut lines, mut cancellations, mut revenue) = (0, 0, Decimal::ZERO);
    let mut invoices = std::collections::HashSet::new();
    let mut customers = std::collections::HashSet::new();
    for row in reader.records() {
        let row = row.unwrap();
        let date = row[4].split(' ').next().unwrap();
        let mdy: Vec<u32> = date.split('/').map(|p| p.parse().unwrap()).collect();
        let day = format!("{:04}-{:02}-{:02}", mdy[2], mdy[0], mdy[1]);
        if day.as_str() < first || day.as_str() > last {
            continue;
        }
        lines += 1;
        invoices.insert(row[0].to_owned());
        if row[0].starts_with('C') {
            cancellations += 1;
        }
        if !row[6].is_empty() {
            customers.insert(row[6].trim_end_matches(".0").to_owned());
        }
        revenue += Decimal::from_str(&row[3]).unwrap() * Decimal::from_str(&row[5]).unwrap();
    }
    (
        lines,
        invoices.len() as u64,
        customers.len() as u64,
        cancellations,
        revenue.normalize(),
    )
}
