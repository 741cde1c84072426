use super::*;
use chrono::Timelike;
use std::collections::{BTreeMap, BTreeSet};

fn options(lines: u64, seed: u64) -> GenerateOptions {
    GenerateOptions { lines, seed }
}

fn csv_bytes(options: &GenerateOptions, encoding: Encoding) -> (Vec<u8>, GenerateStats) {
    let mut out = Vec::new();
    let stats = write_csv(rows(options), &mut out, encoding, DateStyle::Uci).unwrap();
    (out, stats)
}

#[test]
fn same_options_give_the_same_bytes_and_another_seed_other_data() {
    let a = csv_bytes(&options(20_000, 1), Encoding::Utf8).0;
    let b = csv_bytes(&options(20_000, 1), Encoding::Utf8).0;
    let c = csv_bytes(&options(20_000, 2), Encoding::Utf8).0;
    assert!(a == b, "same seed gave different output");
    assert_ne!(a, c);
    let first: Vec<GeneratedRow> = rows(&options(5, 1)).collect();
    assert_eq!(first.len(), 5);
    assert_eq!(first[0].invoice_no, FIRST_INVOICE.to_string());
}

#[test]
fn the_rows_have_the_shape_of_the_uci_dataset() {
    let all: Vec<GeneratedRow> = rows(&options(100_000, DEFAULT_SEED)).collect();
    assert_eq!(all.len(), 100_000);
    let n = all.len() as f64;
    let share = |f: &dyn Fn(&GeneratedRow) -> bool| all.iter().filter(|r| f(r)).count() as f64 / n;

    let invoices: Vec<&[GeneratedRow]> =
        all.chunk_by(|a, b| a.invoice_no == b.invoice_no).collect();
    let mean = n / invoices.len() as f64;
    assert!(
        (15.0..=30.0).contains(&mean),
        "mean lines per invoice {mean}"
    );
    assert!(
        invoices.iter().any(|i| i.len() >= 200),
        "no invoice with hundreds of lines"
    );

    let cancelled = share(&|r| r.invoice_no.starts_with('C'));
    assert!(
        (0.01..=0.03).contains(&cancelled),
        "cancellations {cancelled}"
    );
    assert!(all
        .iter()
        .filter(|r| r.invoice_no.starts_with('C'))
        .all(|r| r.quantity < 0));
    let anonymous = share(&|r| r.customer_id.is_none());
    assert!((0.20..=0.30).contains(&anonymous), "anonymous {anonymous}");
    let uk = share(&|r| r.country == "United Kingdom");
    assert!((0.85..=0.95).contains(&uk), "UK share {uk}");
    let countries: BTreeSet<&str> = all.iter().map(|r| r.country.as_str()).collect();
    assert!(countries.len() >= 30, "{} countries", countries.len());

    // Dates in range, in business hours, ascending with the invoice numbers.
    let first = NaiveDate::from_ymd_opt(2010, 12, 1).unwrap();
    let last = NaiveDate::from_ymd_opt(2011, 12, 9).unwrap();
    for r in &all {
        let d = r.invoice_date;
        assert!(d.date() >= first && d.date() <= last, "{d}");
        assert!((7..20).contains(&d.hour()), "{d}");
    }
    let number = |i: &[GeneratedRow]| {
        i[0].invoice_no
            .trim_start_matches(['C', 'A'])
            .parse::<u64>()
    };
    for pair in invoices.windows(2) {
        assert!(number(pair[0]).unwrap() < number(pair[1]).unwrap());
        assert!(pair[0][0].invoice_date <= pair[1][0].invoice_date);
    }

    let repeated_codes = invoices.iter().any(|i| {
        let codes: BTreeSet<&str> = i.iter().map(|r| r.stock_code.as_str()).collect();
        codes.len() < i.len()
    });
    assert!(repeated_codes, "no stock code twice on an invoice");
    let duplicates: usize = invoices
        .iter()
        .map(|i| {
            i.iter()
                .enumerate()
                .filter(|(k, r)| i[..*k].contains(r))
                .count()
        })
        .sum();
    let duplicates = duplicates as f64 / n;
    assert!(
        (0.003..=0.02).contains(&duplicates),
        "duplicates {duplicates}"
    );

    let descriptions: Vec<&str> = all
        .iter()
        .filter_map(|r| r.description.as_deref())
        .collect();
    assert!(descriptions.iter().any(|d| d.contains(',')));
    assert!(descriptions.iter().any(|d| d.contains('"')));
    assert!(descriptions.iter().any(|d| !d.is_ascii()));
    let missing: Vec<&GeneratedRow> = all.iter().filter(|r| r.description.is_none()).collect();
    assert!(!missing.is_empty());
    assert!(missing.iter().all(|r| r.unit_price.is_zero()));

    for code in ["POST", "M", "DOT", "C2"] {
        assert!(all.iter().any(|r| r.stock_code == code), "no {code} line");
    }

    // Quantities mostly small, prices mostly small, with two decimals at most except PADS.
    let small = share(&|r| (1..=24).contains(&r.quantity));
    assert!(small > 0.8, "small quantities {small}");
    let cheap =
        share(&|r| r.unit_price >= Decimal::new(19, 2) && r.unit_price <= Decimal::from(15));
    assert!(cheap > 0.85, "prices 0.19-15: {cheap}");
    assert!(all
        .iter()
        .all(|r| r.unit_price.scale() <= 2 || r.stock_code == "PADS"));

    let mut home = BTreeMap::new();
    for r in &all {
        if let Some(c) = r.customer_id {
            assert!((12_346..=18_287).contains(&c));
            let country = home.entry(c).or_insert(r.country.as_str());
            assert_eq!(*country, r.country, "customer {c} in two countries");
        }
    }
}

#[test]
fn csv_reads_back_with_eight_fields_per_row() {
    let (bytes, stats) = csv_bytes(&options(30_000, 3), Encoding::Utf8);
    assert_eq!(stats.bytes, bytes.len() as u64);
    assert_eq!(stats.lines, 30_000);
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(text.starts_with(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    ));
    assert!(
        text.contains("\"\""),
        "no doubled quote: CSV quoting not exercised"
    );

    let mut reader = ::csv::Reader::from_reader(&bytes[..]);
    let expected: Vec<GeneratedRow> = rows(&options(30_000, 3)).collect();
    let mut invoices = BTreeSet::new();
    let mut count = 0;
    for (record, row) in reader.records().zip(&expected) {
        let record = record.unwrap();
        assert_eq!(record.len(), 8);
        assert_eq!(&record[0], row.invoice_no);
        assert_eq!(&record[2], row.description.as_deref().unwrap_or(""));
        assert_eq!(record[5].parse::<Decimal>().unwrap(), row.unit_price);
        invoices.insert(record[0].to_owned());
        count += 1;
    }
    assert_eq!(count, 30_000);
    assert_eq!(stats.invoices, invoices.len() as u64);
}

#[test]
fn uci_dates_and_prices_are_written_as_in_the_original_file() {
    let row = GeneratedRow {
        invoice_no: "536365".into(),
        stock_code: "85123A".into(),
        description: Some("WHITE HANGING HEART T-LIGHT HOLDER".into()),
        quantity: 6,
        invoice_date: NaiveDate::from_ymd_opt(2010, 12, 1)
            .unwrap()
            .and_hms_opt(8, 26, 0)
            .unwrap(),
        unit_price: Decimal::new(255, 2),
        customer_id: Some(17850),
        country: "United Kingdom".into(),
    };
    let mut anonymous = row.clone();
    anonymous.customer_id = None;
    anonymous.description = None;

    let mut out = Vec::new();
    write_csv(
        [row.clone(), anonymous.clone()],
        &mut out,
        Encoding::Utf8,
        DateStyle::Uci,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1],
        "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom"
    );
    assert_eq!(
        lines[2],
        "536365,85123A,,6,12/1/2010 8:26,2.55,,United Kingdom"
    );

    let mut out = Vec::new();
    write_csv([row.clone()], &mut out, Encoding::Utf8, DateStyle::Iso).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains(",2010-12-01 08:26:00,"));

    let mut out = Vec::new();
    write_ndjson([row, anonymous], &mut out, DateStyle::Uci).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        r#"{"InvoiceNo":"536365","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":6,"InvoiceDate":"12/1/2010 8:26","UnitPrice":2.55,"CustomerID":17850.0,"Country":"United Kingdom"}"#
    );
    assert!(lines[1].contains(r#""Description":null"#));
    assert!(lines[1].contains(r#""CustomerID":null"#));
}

#[test]
fn latin1_output_decodes_to_the_utf8_text() {
    let opts = options(30_000, 4);
    let (utf8, _) = csv_bytes(&opts, Encoding::Utf8);
    let (latin1, stats) = csv_bytes(&opts, Encoding::Latin1);
    assert_ne!(
        utf8, latin1,
        "no non-ASCII text: the encodings were not exercised"
    );
    assert_eq!(stats.bytes, latin1.len() as u64);
    let (decoded, _, malformed) = encoding_rs::WINDOWS_1252.decode(&latin1);
    assert!(!malformed);
    assert_eq!(decoded, std::str::from_utf8(&utf8).unwrap());
}

#[test]
fn latin1_refuses_what_it_cannot_encode() {
    let mut row = rows(&options(1, 5)).next().unwrap();
    // The euro sign is in Windows-1252 but not in ISO-8859-1.
    row.description = Some("€5 VOUCHER".into());
    let err = write_csv([row], Vec::new(), Encoding::Latin1, DateStyle::Uci).unwrap_err();
    assert!(
        matches!(
            err,
            GenerateError::NotLatin1 {
                row: 1,
                field: "Description",
                ..
            }
        ),
        "{err}"
    );
    let json_latin1 = OutputOptions {
        format: Format::Ndjson,
        encoding: Encoding::Latin1,
        date_style: DateStyle::Uci,
    };
    assert!(matches!(
        write_rows(rows(&options(1, 5)), Vec::new(), &json_latin1),
        Err(GenerateError::EncodingNotForFormat { .. })
    ));
}

#[test]
fn ndjson_and_json_are_valid_json_with_pandas_types() {
    let opts = options(20_000, 6);
    let mut ndjson = Vec::new();
    let stats = write_ndjson(rows(&opts), &mut ndjson, DateStyle::Iso).unwrap();
    assert_eq!(stats.bytes, ndjson.len() as u64);
    let mut count = 0;
    for line in std::str::from_utf8(&ndjson).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 8);
        assert!(o["InvoiceNo"].is_string() && o["Quantity"].is_i64());
        assert!(o["UnitPrice"].is_number());
        assert!(o["CustomerID"].is_f64() || o["CustomerID"].is_null());
        assert!(o["Description"].is_string() || o["Description"].is_null());
        assert_eq!(o["InvoiceDate"].as_str().unwrap().len(), 19);
        count += 1;
    }
    assert_eq!(count, 20_000);

    let mut json = Vec::new();
    write_json(rows(&opts), &mut json, DateStyle::Iso).unwrap();
    let array: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    assert_eq!(array.len(), 20_000);
    let first: serde_json::Value = serde_json::from_str(
        std::str::from_utf8(&ndjson)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(array[0], first);

    let mut empty = Vec::new();
    write_json(rows(&options(0, 6)), &mut empty, DateStyle::Uci).unwrap();
    assert_eq!(
        serde_json::from_slice::<Vec<serde_json::Value>>(&empty)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn rows_become_pipeline_lines_with_content_ids() {
    let mut counter = crate::model::OccurrenceCounter::default();
    let lines: Vec<InvoiceLine> = rows(&options(2_000, 7))
        .map(|r| {
            let line = r.clone().into_invoice_line(0);
            let occurrence = counter.next(&line.content());
            r.into_invoice_line(occurrence)
        })
        .collect();
    let ids: BTreeSet<&str> = lines.iter().map(|l| l.line_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        lines.len(),
        "exact duplicates must still get distinct ids"
    );
}
