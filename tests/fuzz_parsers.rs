//! Fuzzing of the parsers on stable Rust: proptest mutates a seed corpus (the real exports in
//! `tests/fixtures/*.csv` and the hostile bodies of `tests/fixtures/fuzz/`, see its README) and
//! feeds the results to the JSON, CSV and date parsers. Nothing may panic; every rejected line
//! names a line that exists in the body; a body refused as a whole says where it went wrong; every
//! accepted line is within the validation bounds and its total computes. A few thousand cases per
//! parser keep the run to seconds; set `PROPTEST_CASES` to fuzz longer.
//!
//! `tests/parse_properties.rs` holds the exactness properties of well-formed bodies.

use chrono::{NaiveDate, NaiveDateTime, TimeDelta};
use proptest::prelude::*;
use proptest::sample::Index;
use rust_decimal::Decimal;
use shopstream::model::csv::{parse_csv, CsvLines};
use shopstream::model::datetime::{from_epoch_millis, parse_date, DateError, DateValue};
use shopstream::model::json::parse_json;
use shopstream::model::{
    parse_body, DateOrder, InputError, LinePosition, ParseOptions, Parsed, MAX_QUANTITY,
    MAX_UNIT_PRICE,
};
use std::path::Path;
use std::sync::LazyLock;

// --- The corpus -----------------------------------------------------------------------------------

fn fixtures() -> &'static Path {
    static DIR: LazyLock<std::path::PathBuf> =
        LazyLock::new(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
    &DIR
}

/// Every file of `dir` whose name ends with one of `extensions`, sorted by name.
fn files(dir: &Path, extensions: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            extensions.iter().any(|x| name.ends_with(x))
        })
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}

/// The bodies every parser is fuzzed from: the real exports (the 873-row one cut to its first 60
/// rows, which keeps every shape it has and keeps a case fast) and the hostile bodies.
static BODIES: LazyLock<Vec<(String, Vec<u8>)>> = LazyLock::new(|| {
    let mut bodies = files(fixtures(), &[".csv"]);
    for (name, body) in &mut bodies {
        if name.contains("873") {
            let cut = body
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .nth(60)
                .map_or(body.len(), |(i, _)| i + 1);
            body.truncate(cut);
        }
    }
    let real = bodies.len();
    bodies.extend(files(
        &fixtures().join("fuzz"),
        &[".csv", ".json", ".ndjson"],
    ));
    assert!(
        real >= 4 && bodies.len() >= real + 20,
        "corpus not found: {:?}",
        bodies.iter().map(|b| &b.0).collect::<Vec<_>>()
    );
    bodies
});

/// Date texts: every InvoiceDate of the real exports' first rows and the hostile dates.
static DATES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut dates: Vec<String> = std::fs::read_to_string(fixtures().join("fuzz/dates.txt"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    for file in [
        "online-retail-sample-182.csv",
        "online-retail-sample-873-iso.csv",
    ] {
        let mut reader = csv::Reader::from_path(fixtures().join(file)).unwrap();
        let column = reader
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "InvoiceDate")
            .unwrap();
        for row in reader.records().take(40) {
            if let Some(date) = row.ok().and_then(|r| r.get(column).map(str::to_owned)) {
                dates.push(date);
            }
        }
    }
    dates
});

/// Tokens that break parsers: structure, quotes, encodings, numbers past every bound.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b",",
    b";",
    b"\t",
    b"\n",
    b"\r\n",
    b"\r",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b"\\",
    b"\0",
    b"\\u0000",
    b"\\ud800",
    b"\xEF\xBB\xBF",
    b"\xFF\xFE",
    b"\xE9",
    b"\xC3",
    b"\xF0\x9F\x98",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"99999999999999999999999999999999",
    b"1e400",
    b"-0",
    b"NaN",
    b"0.0000001",
    b"1000000.0001",
    b"null",
    b"true",
    b"\"\"",
    b"12/31/2010 25:61",
    b"2/30/2011",
    b"13/13/2011",
    b"2011-02-29T24:00:00+99:00",
    b"1291191960",
    b"InvoiceNo",
    b"Quantity",
    b"UnitPrice",
    b"InvoiceDate",
];

/// One edit of a body; positions are fractions of its length, so they fit any body.
#[derive(Debug, Clone)]
enum Edit {
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Token(Index, Index),
    Delete(Index, usize),
    Duplicate(Index, usize),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Token(i, t)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        1 => (any::<Index>(), 1usize..200).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        1 => (any::<Index>()).prop_map(Edit::Truncate),
    ]
}

fn apply(mut body: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len + 1) };
        match e {
            Edit::Flip(i, b) if !body.is_empty() => {
                let i = i.index(body.len());
                body[i] ^= b.max(&1);
            }
            Edit::Flip(..) => {}
            Edit::Insert(i, bytes) => {
                let i = at(i, body.len());
                body.splice(i..i, bytes.iter().copied());
            }
            Edit::Token(i, t) => {
                let i = at(i, body.len());
                body.splice(i..i, TOKENS[t.index(TOKENS.len())].iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = at(i, body.len());
                body.drain(i..(i + n).min(body.len()));
            }
            Edit::Duplicate(i, n) => {
                let i = at(i, body.len());
                let part = body[i..(i + n).min(body.len())].to_vec();
                body.splice(i..i, part);
            }
            Edit::Truncate(i) => body.truncate(at(i, body.len())),
        }
    }
    body
}

/// A seed of the corpus with a few edits.
fn mutated_body() -> impl Strategy<Value = Vec<u8>> {
    (any::<Index>(), prop::collection::vec(edit(), 0..6))
        .prop_map(|(seed, edits)| apply(BODIES[seed.index(BODIES.len())].1.clone(), &edits))
}

// --- What every outcome must satisfy ----------------------------------------------------------------

/// Physical lines of a body, counting every line end a reader may take (`\n`, `\r`).
fn line_count(body: &[u8]) -> u64 {
    1 + body.iter().filter(|&&b| b == b'\n' || b == b'\r').count() as u64
}

fn check(parser: &str, body: &[u8], outcome: Result<Parsed, InputError>) {
    let what = || format!("{parser} of {:?}", String::from_utf8_lossy(body));
    match outcome {
        Ok(parsed) => {
            for e in &parsed.errors {
                let message = e.to_string();
                match e.position {
                    LinePosition::Row(r) => assert!(
                        (1..=line_count(body)).contains(&r),
                        "{}: row {r} is not a line of the body: {message}",
                        what()
                    ),
                    LinePosition::Index(i) => assert!(
                        (i as u64) < line_count(body).max(body.len() as u64),
                        "{}: line {i} is beyond the body: {message}",
                        what()
                    ),
                }
                assert!(
                    message.starts_with(&format!("{}: ", e.position)) && !e.reason.is_empty(),
                    "{}: an error that does not name its line: {message}",
                    what()
                );
            }
            for line in &parsed.lines {
                assert!(
                    line.quantity.abs() <= MAX_QUANTITY
                        && line.unit_price.abs() <= Decimal::from(MAX_UNIT_PRICE),
                    "{}: accepted a line past the bounds: {line:?}",
                    what()
                );
                let _ = line.line_total();
            }
        }
        Err(e) => {
            let message = e.to_string();
            let located = match &e {
                InputError::Empty
                | InputError::MissingColumns { .. }
                | InputError::AmbiguousDateOrder { .. } => true,
                InputError::Json(m) => m.contains("line ") || m.contains("it starts with"),
                InputError::Csv(m) => {
                    m.contains("row ") || m.contains("header") || m.contains("first line")
                }
                InputError::Io(_) => false,
            };
            assert!(
                located,
                "{}: refused without saying where: {message}",
                what()
            );
        }
    }
}

/// Every way a body is parsed: by content type and sniffing, each parser directly with each date
/// order, and the streaming CSV reader of the import path.
fn parse_every_way(body: &[u8]) {
    for order in [DateOrder::Mdy, DateOrder::Dmy, DateOrder::Auto] {
        let opts = ParseOptions {
            date_order: order,
            ..ParseOptions::default()
        };
        check("parse_json", body, parse_json(body, &opts));
        check("parse_csv", body, parse_csv(body, &opts));
    }
    let opts = ParseOptions::default();
    check("parse_body", body, parse_body(body, None, &opts));
    check(
        "parse_body (semicolon)",
        body,
        parse_csv(
            body,
            &ParseOptions {
                delimiter: Some(b';'),
                ..opts
            },
        ),
    );
    // The import path: rows one at a time, each rejected row with its text for the reject file.
    match CsvLines::new(body, &opts) {
        Ok(rows) => {
            let mut parsed = Parsed::default();
            let mut rows = rows;
            for row in rows.by_ref() {
                match row {
                    Ok(line) => parsed.lines.push(line),
                    Err(rejected) => parsed.errors.push(rejected.error),
                }
            }
            let outcome = match rows.read_error() {
                Some(e) => Err(InputError::Csv(e.to_owned())),
                None => Ok(parsed),
            };
            check("CsvLines", body, outcome);
        }
        Err(e) => check("CsvLines", body, Err(e)),
    }
}

#[test]
fn every_seed_parses_without_panic_and_names_its_lines() {
    for (name, body) in BODIES.iter() {
        let result = std::panic::catch_unwind(|| parse_every_way(body));
        assert!(result.is_ok(), "seed {name}");
    }
    // The seeds reach the parsers' error paths, not only their happy ones.
    let opts = ParseOptions::default();
    let refused = BODIES
        .iter()
        .filter(|(_, b)| parse_body(b, None, &opts).is_err())
        .count();
    let with_bad_lines = BODIES
        .iter()
        .filter(|(_, b)| parse_body(b, None, &opts).is_ok_and(|p| !p.errors.is_empty()))
        .count();
    assert!(
        refused >= 3 && with_bad_lines >= 10,
        "seeds refused as a whole: {refused}, seeds with rejected lines: {with_bad_lines}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn mutated_bodies_never_panic_and_every_error_names_its_line(body in mutated_body()) {
        parse_every_way(&body);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        parse_every_way(&body);
    }
}

// --- Dates -------------------------------------------------------------------------------------------

/// What a date the parser accepted reads as, written back in ISO form and read again, is itself.
fn check_date(text: &str) {
    match parse_date(text) {
        Ok(DateValue::Exact(d)) => {
            if (1000..=9999).contains(&chrono::Datelike::year(&d)) {
                let again = d.format("%Y-%m-%d %H:%M:%S").to_string();
                assert_eq!(parse_date(&again), Ok(DateValue::Exact(d)), "{text:?}");
            }
        }
        Ok(DateValue::Slash(s)) => {
            let again = s.to_string();
            let reread = parse_date(&again);
            if !matches!(reread, Err(DateError::Form)) {
                assert_eq!(reread, Ok(DateValue::Slash(s)), "{text:?} -> {again:?}");
            }
        }
        Err(_) => {}
    }
    if let Ok(d) = from_epoch_millis(text) {
        let digits = text.trim().split('.').next().unwrap();
        assert_eq!(
            Ok(d.and_utc().timestamp_millis()),
            digits.parse::<i64>(),
            "{text:?}"
        );
    }
}

fn mutated_date() -> impl Strategy<Value = String> {
    (any::<Index>(), prop::collection::vec(edit(), 0..4)).prop_map(|(seed, edits)| {
        let seed = DATES[seed.index(DATES.len())].clone().into_bytes();
        String::from_utf8_lossy(&apply(seed, &edits)).into_owned()
    })
}

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<NaiveDateTime> {
    NaiveDate::from_ymd_opt(y, mo, d)?.and_hms_opt(h, mi, s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_and_arbitrary_dates_never_panic(text in mutated_date(), other in ".{0,40}") {
        check_date(&text);
        check_date(&other);
    }

    /// Slash dates read as chrono builds the same date, in both orders.
    #[test]
    fn slash_dates_agree_with_the_calendar(
        a in 0u32..40, b in 0u32..40, year in prop_oneof![0i32..100, 1000i32..10000],
        h in 0u32..30, mi in 0u32..70,
    ) {
        let text = if year < 100 { format!("{a}/{b}/{year:02} {h}:{mi:02}") } else { format!("{a}/{b}/{year} {h}:{mi:02}") };
        let full_year = if year < 100 { 2000 + year } else { year };
        let time_ok = h < 24 && mi < 60;
        match parse_date(&text) {
            Ok(DateValue::Slash(s)) => {
                prop_assert!(time_ok && a > 0 && b > 0 && (a <= 12 || b <= 12), "{}", text);
                prop_assert_eq!(s.read_as(DateOrder::Mdy), at(full_year, a, b, h, mi, 0));
                prop_assert_eq!(s.read_as(DateOrder::Dmy), at(full_year, b, a, h, mi, 0));
            }
            Ok(other) => prop_assert!(false, "{} read as {:?}", text, other),
            Err(_) => prop_assert!(
                !time_ok || a == 0 || b == 0 || (a > 12 && b > 12),
                "{} refused", text
            ),
        }
    }

    /// ISO dates and times with an offset read as chrono builds them, converted to UTC.
    #[test]
    fn iso_dates_agree_with_the_calendar(
        year in 0i32..10000, mo in 0u32..14, d in 0u32..33, h in 0u32..26, mi in 0u32..62,
        s in 0u32..62, offset in 0usize..6,
    ) {
        let (suffix, minutes) = [("", 0), ("Z", 0), ("+01:00", 60), ("-0530", -330), ("+14", 840), ("-23:59", -1439)][offset];
        let text = format!("{year:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{suffix}");
        let expected = at(year, mo, d, h, mi, s).map(|t| t - TimeDelta::minutes(minutes));
        match parse_date(&text) {
            Ok(DateValue::Exact(t)) => prop_assert_eq!(Some(t), expected, "{}", text),
            Ok(other) => prop_assert!(false, "{} read as {:?}", text, other),
            Err(_) => prop_assert_eq!(expected, None, "{} refused", text),
        }
    }

    /// Epoch milliseconds: the same instant back, seconds-sized numbers refused as such.
    #[test]
    fn epoch_milliseconds_agree_with_chrono(n in any::<i64>(), small in -100_000_000_000i64..100_000_000_000) {
        for n in [n, small, i64::MIN, i64::MAX, 0] {
            match from_epoch_millis(&n.to_string()) {
                Ok(t) => prop_assert_eq!(t.and_utc().timestamp_millis(), n),
                Err(DateError::EpochTooSmall) => prop_assert!(n.unsigned_abs() < 100_000_000_000),
                Err(DateError::NoSuchDate) => prop_assert!(chrono::DateTime::from_timestamp_millis(n).is_none()),
                Err(e) => prop_assert!(false, "{}: {:?}", n, e),
            }
        }
    }
}
