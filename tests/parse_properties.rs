//! Properties of the parsers over generated bodies: prices stay exact from text to line and back,
//! and totals add up without float drift, in CSV and in pandas-style NDJSON alike.

use proptest::prelude::*;
use rust_decimal::Decimal;
use shopstream::model::csv::parse_csv;
use shopstream::model::json::parse_json;
use shopstream::model::{ParseOptions, Parsed};

/// A price as a client writes it: `units` millionths written with `scale` decimal places.
fn price_text(units: i64, scale: u32) -> String {
    let divisor = 10i64.pow(6 - scale);
    let value = units / divisor; // drop the digits beyond `scale`
    let sign = if value < 0 { "-" } else { "" };
    let abs = value.unsigned_abs();
    if scale == 0 {
        format!("{sign}{abs}")
    } else {
        let p = 10u64.pow(scale);
        format!(
            "{sign}{}.{:0width$}",
            abs / p,
            abs % p,
            width = scale as usize
        )
    }
}

#[derive(Debug, Clone)]
struct Row {
    invoice: u32,
    quantity: i64,
    price: String,
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec(
        (
            536_365u32..536_400,
            -1_000i64..10_000,
            -5_000_000_000i64..50_000_000_000,
            0u32..=6,
        )
            .prop_map(|(invoice, quantity, units, scale)| Row {
                invoice,
                quantity,
                price: price_text(units, scale),
            }),
        1..60,
    )
}

/// The exact sum of quantity x price, computed with integers only: every price is a whole number
/// of millionths.
fn exact_total(rows: &[Row]) -> Decimal {
    let micros: i128 = rows
        .iter()
        .map(|r| {
            let (int, frac) = r.price.split_once('.').unwrap_or((&r.price, ""));
            let negative = int.starts_with('-');
            let int: i128 = int.trim_start_matches('-').parse().expect("digits");
            let frac: i128 = format!("{frac:0<6}").parse().expect("digits");
            let m = int * 1_000_000 + frac;
            i128::from(r.quantity) * if negative { -m } else { m }
        })
        .sum();
    Decimal::from_i128_with_scale(micros, 6)
}

fn check(parsed: &Parsed, rows: &[Row]) -> Result<(), TestCaseError> {
    prop_assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    prop_assert_eq!(parsed.lines.len(), rows.len());
    for (line, row) in parsed.lines.iter().zip(rows) {
        // Text -> Decimal -> text gives the client's text back, scale included.
        prop_assert_eq!(line.unit_price.to_string(), row.price.clone());
        prop_assert_eq!(line.quantity, row.quantity);
    }
    let total: Decimal = parsed.lines.iter().map(|l| l.line_total()).sum();
    prop_assert_eq!(total, exact_total(rows));
    Ok(())
}

proptest! {
    #[test]
    fn csv_prices_and_totals_are_exact(rows in rows()) {
        let mut body = String::from("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n");
        for r in &rows {
            body.push_str(&format!("{},85123A,\"HEART, WHITE\",{},12/1/2010 8:26,{},17850,United Kingdom\n", r.invoice, r.quantity, r.price));
        }
        check(&parse_csv(body.as_bytes(), &ParseOptions::default()).expect("csv"), &rows)?;
    }

    #[test]
    fn ndjson_number_prices_and_totals_are_exact(rows in rows()) {
        let mut body = String::new();
        for r in &rows {
            body.push_str(&format!(
                "{{\"InvoiceNo\":{},\"StockCode\":\"85123A\",\"Description\":null,\"Quantity\":{},\"InvoiceDate\":1291191960000,\"UnitPrice\":{},\"CustomerID\":17850.0,\"Country\":\"United Kingdom\"}}\n",
                r.invoice, r.quantity, r.price
            ));
        }
        check(&parse_json(body.as_bytes(), &ParseOptions::default()).expect("ndjson"), &rows)?;
    }
}

#[test]
fn price_text_helper_writes_the_scale_asked_for() {
    assert_eq!(price_text(2_550_000, 2), "2.55");
    assert_eq!(price_text(-11_062_060_000, 2), "-11062.06");
    assert_eq!(price_text(1, 6), "0.000001");
    assert_eq!(price_text(2_550_000, 0), "2");
}
