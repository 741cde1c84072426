//! The monitoring kit in `deploy/` names only series that `shopstream serve` exports: every metric
//! in the Grafana dashboard's queries, the alert rules and the rules' unit tests is looked up in
//! `/metrics` of running servers (one embedded, with a watched import folder; one on the local AWS
//! servers), after posting lines so the labelled series exist. A renamed or dropped metric fails
//! here instead of leaving an empty panel or an alert that can never fire.
//!
//! `promtool check rules` and `promtool test rules` run in scripts/test.sh.

mod aws_common;
mod common;

use common::*;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// Series Prometheus makes itself for every scrape target.
const MADE_BY_PROMETHEUS: &[&str] = &["up"];

/// Series the kit already reads that a change under way adds. Each entry must be missing from
/// `/metrics`: once the series is exported, the test asks to remove it here.
const PENDING: &[&str] = &[];

const GOOD: &str = r#"{"InvoiceNo":"536365","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":6,"InvoiceDate":"12\/1\/2010 8:26","UnitPrice":2.55,"CustomerID":17850.0,"Country":"United Kingdom"}"#;
const BAD: &str = r#"{"InvoiceNo":"536366","StockCode":"85123A","Description":"X","Quantity":"six","InvoiceDate":"12\/1\/2010 8:26","UnitPrice":2.55,"CustomerID":17850.0,"Country":"United Kingdom"}"#;

fn deploy(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// --- What the kit names -------------------------------------------------------------------------

/// The metric names a PromQL expression selects: identifiers outside label matchers, strings,
/// ranges and grouping lists that are not functions, aggregations or keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let b = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening byte to its closing one, passing over strings.
    let skip_to = |mut i: usize, close: u8| {
        while i < b.len() && b[i] != close {
            if matches!(b[i], b'"' | b'\'' | b'`') {
                let quote = b[i];
                i += 1;
                while i < b.len() && b[i] != quote {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let next_non_blank = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    while i < b.len() {
        let c = b[i];
        if matches!(c, b'"' | b'\'' | b'`') {
            i = skip_to(i + 1, c);
        } else if c == b'{' {
            i = skip_to(i + 1, b'}');
        } else if c == b'[' {
            i = skip_to(i + 1, b']');
        } else if c.is_ascii_digit() || c == b'$' {
            // Numbers, durations (5m), Grafana variables.
            while i < b.len()
                && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b'.' | b'$'))
            {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || matches!(b[i], b'_' | b':')) {
                i += 1;
            }
            let word = &expr[start..i];
            let after = next_non_blank(i);
            // `sum by (x) (...)`: an aggregation's grouping may come before its arguments.
            let grouping_follows = ["by", "without"].iter().any(|g| {
                expr[after..].starts_with(g)
                    && !b
                        .get(after + g.len())
                        .is_some_and(|&n| n.is_ascii_alphanumeric() || n == b'_')
            });
            if GROUPING.contains(&word) {
                if after < b.len() && b[after] == b'(' {
                    i = skip_to(after + 1, b')');
                }
            } else if KEYWORDS.contains(&word)
                || grouping_follows
                || (after < b.len() && b[after] == b'(')
            {
                // a keyword, or a function or aggregation
            } else {
                names.insert(word.to_owned());
            }
        } else {
            i += 1;
        }
    }
    names
}

/// Every query of the dashboard: panel targets (rows included) and template variables.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    walk(&dashboard["panels"], &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = var["query"]["query"]
                .as_str()
                .or(var["query"].as_str())
                .expect("a query variable has a query");
            // label_values(metric{...}, label): the metric is the selector before the last comma.
            let selector = query
                .strip_prefix("label_values(")
                .and_then(|q| q.rsplit_once(','))
                .map_or(query, |(selector, _)| selector);
            out.push(selector.to_owned());
        }
    }
    out
}

#[derive(Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    alert: Option<String>,
    expr: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RuleTests {
    tests: Vec<RuleTest>,
}

#[derive(Deserialize)]
struct RuleTest {
    input_series: Vec<InputSeries>,
}

#[derive(Deserialize)]
struct InputSeries {
    series: String,
}

/// Each PromQL text the kit holds, named by where it is.
fn kit_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dashboard: serde_json::Value =
        serde_json::from_str(&deploy("grafana/shopstream.json")).expect("the dashboard is JSON");
    for q in dashboard_queries(&dashboard) {
        out.push(("grafana/shopstream.json".to_owned(), q));
    }
    let rules: RuleFile =
        serde_yaml_ng::from_str(&deploy("prometheus/alerts.yml")).expect("alerts.yml parses");
    for rule in rules.groups.into_iter().flat_map(|g| g.rules) {
        let name = rule.alert.unwrap_or_default();
        out.push((format!("prometheus/alerts.yml {name}"), rule.expr));
    }
    let tests: RuleTests = serde_yaml_ng::from_str(&deploy("prometheus/alerts_test.yml"))
        .expect("alerts_test.yml parses");
    for series in tests.tests.into_iter().flat_map(|t| t.input_series) {
        out.push(("prometheus/alerts_test.yml".to_owned(), series.series));
    }
    out
}

// --- What the servers export --------------------------------------------------------------------

/// The names of the samples of a Prometheus text exposition (histograms give _bucket, _sum, _count).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn scrape(server: &Server) -> String {
    client()
        .get(server.url("/metrics"))
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .expect("GET /metrics")
}

/// Posts a good line and a bad one, probes readiness, and waits until the sinks have written.
fn exercise(server: &Server) {
    let c = client();
    for body in [GOOD, BAD] {
        let res = c
            .post(server.url("/v1/invoices"))
            .bearer_auth(DEMO_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("POST /v1/invoices");
        assert!(res.status().as_u16() < 500, "{:?}", res.text());
    }
    let ready = c.get(server.url("/health/ready")).send().expect("ready");
    assert_eq!(ready.status(), 200, "{:?}", ready.text());
    server.wait_caught_up(Duration::from_secs(60));
}

/// An embedded server that also imports the 182-line fixture from a watched folder.
fn embedded_metrics() -> String {
    let dir = tempfile::tempdir().unwrap();
    let drops = dir.path().join("drops");
    std::fs::create_dir_all(&drops).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/online-retail-sample-182.csv"),
        drops.join("sample.csv"),
    )
    .unwrap();
    let extra = format!(
        "[import]\nwatch = [{:?}]\ninterval = \"1s\"\n",
        drops.to_str().unwrap()
    );
    let server = Server::start(&dir.path().join("data"), 0, &extra);
    exercise(&server);
    // The watcher's second run (the first to see the file hold still) loads it: wait for its
    // figures.
    wait_progress(
        "the watcher to load the file",
        Duration::from_secs(60),
        || {
            let text = scrape(&server);
            if text.contains("shopstream_import_files_total{outcome=\"loaded\"} 1") {
                Ok(text)
            } else {
                Err(text
                    .lines()
                    .filter(|l| l.starts_with("shopstream_import_"))
                    .map(str::to_owned)
                    .collect::<Vec<_>>())
            }
        },
    )
}

/// A server with every stage on the local AWS server (moto; a few records are all it gets).
async fn aws_metrics() -> String {
    let mut cfg = aws_common::aws_config("monitoring");
    cfg.stream.kinesis.lease_duration = Duration::from_secs(10);
    let toml = aws_common::serve_toml(&cfg);
    aws_common::init(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    tokio::task::spawn_blocking(move || {
        let server = Server::start(&dir.path().join("data"), 0, &toml);
        exercise(&server);
        scrape(&server)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_kit_names_is_exported() {
    let _heavy = heavy_test();
    let embedded = tokio::task::spawn_blocking(embedded_metrics).await.unwrap();
    let aws = aws_metrics().await;
    let mut have = exported(&embedded);
    have.extend(exported(&aws));
    // The figures each panel family rests on, seen on the backend that has them.
    for name in [
        "shopstream_aws_calls_total",
        "shopstream_aws_billed_units_total",
        "shopstream_stream_millis_behind_latest",
        "shopstream_stream_leases_held",
    ] {
        assert!(
            exported(&aws).contains(name),
            "{name} missing on AWS:\n{aws}"
        );
    }

    let queries = kit_queries();
    assert!(
        queries.len() > 20,
        "the kit's queries were not found: {queries:?}"
    );
    let mut missing = Vec::new();
    let mut used = BTreeSet::new();
    for (place, query) in &queries {
        let names = metric_names(query);
        assert!(!names.is_empty(), "{place}: no metric found in {query:?}");
        for name in names {
            used.insert(name.clone());
            if !have.contains(&name)
                && !MADE_BY_PROMETHEUS.contains(&name.as_str())
                && !PENDING.contains(&name.as_str())
            {
                missing.push(format!("{place}: {name} (in {query:?})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "series the kit names that /metrics does not export:\n{}\nexported: {have:?}",
        missing.join("\n")
    );
    for name in PENDING {
        assert!(
            !have.contains(*name),
            "{name} is exported now: remove it from PENDING in tests/monitoring_kit.rs"
        );
        assert!(
            used.contains(*name),
            "{name} is in PENDING but the kit does not use it"
        );
    }
}

#[test]
fn every_alert_says_how_bad_and_what_to_do() {
    let rules: RuleFile =
        serde_yaml_ng::from_str(&deploy("prometheus/alerts.yml")).expect("alerts.yml parses");
    let rules: Vec<Rule> = rules.groups.into_iter().flat_map(|g| g.rules).collect();
    assert!(rules.len() >= 8);
    for rule in &rules {
        let name = rule
            .alert
            .as_deref()
            .expect("alerts only, no recording rules");
        assert!(
            matches!(
                rule.labels.get("severity").map(String::as_str),
                Some("critical" | "warning")
            ),
            "{name}: severity"
        );
        for key in ["summary", "description"] {
            assert!(
                rule.annotations.get(key).is_some_and(|t| t.len() > 20),
                "{name}: {key}"
            );
        }
    }
    // Every alert has a unit test that shows it firing.
    let tests = deploy("prometheus/alerts_test.yml");
    for rule in &rules {
        let name = rule.alert.as_deref().unwrap_or_default();
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "{name} has no test in alerts_test.yml"
        );
    }
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, sink) (rate(a_bucket{route="/x", s=~"5.."}[$__rate_interval])))"#
        ),
        ["a_bucket"]
    );
    assert_eq!(
        names("sum(rate(x_total[5m] offset 1h)) by (instance) / on (instance) group_left (job) up > 0.5"),
        ["up", "x_total"]
    );
    assert_eq!(
        names("max by (sink, shard) (a) > 900 or b unless c{l=\"}\"} and d:recorded"),
        ["a", "b", "c", "d:recorded"]
    );
    assert_eq!(names(r#"increase(x[10m]) > 0 == bool 1"#), ["x"]);
    let queries = dashboard_queries(&serde_json::json!({
        "panels": [{"type": "row", "panels": [{"targets": [{"expr": "rate(p[1m])"}]}]}],
        "templating": {"list": [{"type": "query", "query": {"query": "label_values(q{a=\"1\"}, instance)"}}]}
    }));
    assert_eq!(queries, ["rate(p[1m])", "q{a=\"1\"}"]);
    assert_eq!(
        exported("# HELP a x\n# TYPE a counter\na{b=\"1\"} 2\nc_bucket{le=\"1\"} 0\nd 1\n"),
        BTreeSet::from(["a".to_owned(), "c_bucket".to_owned(), "d".to_owned()])
    );
}
