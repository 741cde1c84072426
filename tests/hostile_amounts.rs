//! Hostile amounts against the real binary (issue 13, items 1-3): the extreme values validation
//! accepts, sent many times, add up exactly in every summary the stores serve, far past what a
//! 64-bit integer holds; values past the bounds, and NUL characters, are rejected per line naming
//! the field.

mod common;

use common::*;
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

const CUSTOMER: u64 = 12346;
const LINES_PER_INVOICE: usize = 25;
const DAYS: usize = 10;

/// One invoice of the test file: 3 a day for 10 days, each of 25 lines at the bounds.
struct Invoice {
    no: String,
    day: usize,
    quantity: i64,
    price: &'static str,
}

fn invoices() -> Vec<Invoice> {
    let mut out = Vec::new();
    for day in 1..=DAYS {
        for (kind, (quantity, price)) in [
            (1_000_000, "1000000"),
            (1_000_000, "999999.9999"),
            (-1_000_000, "1000000"),
        ]
        .into_iter()
        .enumerate()
        {
            let no = format!("5370{day}{kind}");
            out.push(Invoice {
                no: if quantity < 0 { format!("C{no}") } else { no },
                day,
                quantity,
                price,
            });
        }
    }
    out
}

/// The exact amount `micros` millionths, as a decimal (wider than an i64 on purpose).
fn money(micros: i128) -> Decimal {
    Decimal::from_i128_with_scale(micros, 6).normalize()
}

fn micros_of(price: &str) -> i128 {
    let (int, frac) = price.split_once('.').unwrap_or((price, ""));
    let sign = if int.starts_with('-') { -1 } else { 1 };
    let int: i128 = int.trim_start_matches('-').parse().unwrap();
    let frac: i128 = format!("{frac:0<6}").parse().unwrap();
    sign * (int * 1_000_000 + frac)
}

fn decimal(v: &serde_json::Value) -> Decimal {
    match v {
        serde_json::Value::String(s) => Decimal::from_str(s).unwrap(),
        other => Decimal::from_str(&other.to_string()).unwrap(),
    }
    .normalize()
}

fn get(server: &Server, path: &str) -> serde_json::Value {
    let res = client().get(server.url(path)).send().unwrap();
    assert_eq!(res.status().as_u16(), 200, "{path}: {:?}", res.text());
    res.json().unwrap()
}

#[test]
fn extreme_accepted_amounts_add_up_exactly_in_every_summary() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");

    let mut csv = String::from(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n",
    );
    let mut by_invoice: BTreeMap<String, i128> = BTreeMap::new();
    let mut by_day: BTreeMap<String, i128> = BTreeMap::new();
    let mut by_product = [0i128; LINES_PER_INVOICE];
    let mut quantity_by_product = [0i128; LINES_PER_INVOICE];
    let mut total = 0i128;
    for inv in invoices() {
        for (j, product) in by_product.iter_mut().enumerate() {
            csv.push_str(&format!(
                "{},BIG{j:02},EXTREME ITEM {j},{},12/{}/2010 9:00,{},{CUSTOMER},United Kingdom\n",
                inv.no, inv.quantity, inv.day, inv.price
            ));
            let line = i128::from(inv.quantity) * micros_of(inv.price);
            *by_invoice.entry(inv.no.clone()).or_default() += line;
            *by_day.entry(format!("2010-12-{:02}", inv.day)).or_default() += line;
            *product += line;
            quantity_by_product[j] += i128::from(inv.quantity);
            total += line;
        }
    }
    // Each day's revenue alone is past i64::MAX millionths, and so is every product's.
    assert!(by_day.values().all(|d| *d > i128::from(i64::MAX)));
    assert!(by_product.iter().all(|p| *p > i128::from(i64::MAX)));
    let file = dir.path().join("extreme.csv");
    std::fs::write(&file, csv).unwrap();
    let lines = invoices().len() * LINES_PER_INVOICE;

    let sent = replay(&server.base, &file, &["--stores", "2", "--batch", "40"]);
    assert_eq!(sent["lines_accepted"], lines, "{sent:#}");
    assert_eq!(sent["lines_rejected"], 0, "{sent:#}");
    server.wait_caught_up(Duration::from_secs(60));

    let summary = get(&server, "/v1/sales/summary");
    assert_eq!(summary["lines"], lines, "{summary:#}");
    assert_eq!(summary["invoices"], invoices().len());
    assert_eq!(summary["customers"], 1);
    assert_eq!(summary["cancellation_lines"], DAYS * LINES_PER_INVOICE);
    assert_eq!(decimal(&summary["revenue"]), money(total));
    let days: Vec<(String, Decimal)> = summary["by_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), decimal(&p[1])))
        .collect();
    let expected_days: Vec<(String, Decimal)> =
        by_day.iter().map(|(d, m)| (d.clone(), money(*m))).collect();
    assert_eq!(days, expected_days);
    assert_eq!(decimal(&summary["by_month"][0][1]), money(total));
    assert_eq!(decimal(&summary["by_country"][0][1]), money(total));
    let top = summary["top_products"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    assert_eq!(top[0]["stock_code"], "BIG00");
    assert_eq!(decimal(&top[0]["revenue"]), money(by_product[0]));
    assert_eq!(
        i128::from(top[0]["quantity"].as_i64().unwrap()),
        quantity_by_product[0]
    );

    let listed = get(&server, &format!("/v1/customers/{CUSTOMER}/invoices"));
    let listed = listed["invoices"].as_array().unwrap();
    assert_eq!(listed.len(), by_invoice.len());
    for i in listed {
        let no = i["invoice_no"].as_str().unwrap();
        assert_eq!(decimal(&i["total"]), money(by_invoice[no]), "{no}");
        assert_eq!(i["line_count"], LINES_PER_INVOICE, "{no}");
    }
    let some = get(
        &server,
        &format!("/v1/customers/{CUSTOMER}/invoices?from=2010-12-02&to=2010-12-03"),
    );
    assert_eq!(some["invoices"].as_array().unwrap().len(), 3);

    for (no, micros) in &by_invoice {
        let invoice = get(&server, &format!("/v1/invoices/{no}"));
        assert_eq!(decimal(&invoice["total"]), money(*micros), "{no}");
        assert_eq!(
            invoice["lines"].as_array().unwrap().len(),
            LINES_PER_INVOICE
        );
    }
}

#[test]
fn amounts_past_the_bounds_and_nul_characters_are_rejected_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), 0, "");
    let line = |quantity: &str, price: &str, description: &str, country: &str| {
        format!(
            r#"{{"InvoiceNo":"536365","StockCode":"85123A","Description":"{description}","Quantity":{quantity},"InvoiceDate":"12/1/2010 8:26","UnitPrice":{price},"CustomerID":17850,"Country":"{country}"}}"#
        )
    };
    let cases = [
        (line("1000001", "1", "X", "UK"), "Quantity", "1000000"),
        (line("-1000001", "1", "X", "UK"), "Quantity", "1000000"),
        (
            line("9223372036854775807", "0", "X", "UK"),
            "Quantity",
            "1000000",
        ),
        (line("1", "1000000.01", "X", "UK"), "UnitPrice", "1000000"),
        (line("1", "-1000001", "X", "UK"), "UnitPrice", "1000000"),
        (line("1", "1e20", "X", "UK"), "UnitPrice", "1000000"),
        (line("1", "1", "BAD\\u0000NAME", "UK"), "Description", "NUL"),
        (line("1", "1", "X", "U\\u0000K"), "Country", "NUL"),
    ];
    let body = format!(
        "[{}]",
        cases
            .iter()
            .map(|(l, _, _)| l.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    let res = client()
        .post(server.url("/v1/invoices"))
        .bearer_auth(DEMO_KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 422);
    let answer: serde_json::Value = res.json().unwrap();
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), cases.len(), "{answer:#}");
    for (i, (_, field, words)) in cases.iter().enumerate() {
        let r = &rejected[i];
        assert_eq!(r["index"], i, "{r}");
        assert_eq!(r["field"], *field, "{r}");
        assert!(r["reason"].as_str().unwrap().contains(words), "{r}");
    }

    // The bounds themselves are accepted, and a good line beside a bad one is stored alone.
    let body = format!(
        "{}\n{}\n{}",
        line("1000000", "1000000", "MAX", "UK"),
        line("-1000000", "-1000000", "MIN", "UK"),
        line("1000001", "1", "X", "UK"),
    );
    let res = client()
        .post(server.url("/v1/invoices"))
        .bearer_auth(DEMO_KEY)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let answer: serde_json::Value = res.json().unwrap();
    assert_eq!(answer["rejected"][0]["field"], "Quantity", "{answer:#}");
    server.wait_caught_up(Duration::from_secs(60));
    let invoice = get(&server, "/v1/invoices/536365");
    assert_eq!(decimal(&invoice["total"]), money(2 * 10i128.pow(18)));
}
