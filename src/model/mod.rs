//! The domain: the typed invoice line, its identity, and the parsers that turn what stores send
//! (JSON, NDJSON, CSV in any of the real export formats) into lines or per-line errors.

mod assemble;
mod error;
mod fields;
pub(crate) mod line;

pub mod csv;
pub mod datetime;
pub mod json;

pub use error::{shorten, InputError, LineError, LinePosition};
pub use fields::{
    MAX_COUNTRY_BYTES, MAX_DESCRIPTION_BYTES, MAX_INVOICE_NO_CHARS, MAX_QUANTITY,
    MAX_STOCK_CODE_BYTES, MAX_UNIT_PRICE,
};
pub use line::{
    micros_to_money, money_to_micros, pounds, IngestedLine, InvoiceLine, LineContent, LineId,
    Money, OccurrenceCounter, RequestKey, MAX_PRICE_SCALE,
};

use serde::{Deserialize, Serialize};

/// How to read a date like `01/02/2011` whose day and month could be either way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DateOrder {
    /// Month first, as in the UCI dataset (`12/1/2010 8:26` is 1 December 2010).
    #[default]
    Mdy,
    /// Day first, as in UK exports (`01/12/2010 08:26`).
    Dmy,
    /// Decided per file (or request) from the values: a day above 12 settles it; a file where no
    /// value settles it is reported as ambiguous rather than guessed.
    Auto,
}

/// The outcome of parsing one body or file: the good lines and, for every bad one, why.
#[derive(Debug, Default)]
pub struct Parsed {
    pub lines: Vec<InvoiceLine>,
    /// Where each of `lines` is in the input and the client's line number of it (same length,
    /// same order).
    pub origins: Vec<LineOrigin>,
    pub errors: Vec<LineError>,
}

/// Where a parsed line was in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineOrigin {
    pub position: LinePosition,
    /// The client's `LineNo`, when it sent one.
    pub line_no: Option<u64>,
}

/// How to read an input. Everything has a default that fits the UCI dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Day/month order of slash dates.
    pub date_order: DateOrder,
    /// CSV field delimiter; `None` detects comma, semicolon or tab from the header row.
    pub delimiter: Option<u8>,
    /// The request's `Idempotency-Key` scope: unnumbered lines then get ids from it and their
    /// position ([`LineId::from_request_key`]) instead of from their content.
    pub request_key: Option<RequestKey>,
}

/// Parses a request body by its content type: `text/csv` (any parameters) as CSV;
/// `application/json`, `application/x-ndjson` and `application/jsonl` as JSON; anything else or
/// nothing by its first non-blank byte (`{` or `[` is JSON, the rest CSV), because clients often
/// send JSON as `text/plain` or with no type at all.
///
/// # Errors
/// Those of [`json::parse_json`] and [`csv::parse_csv`].
pub fn parse_body(
    body: &[u8],
    content_type: Option<&str>,
    opts: &ParseOptions,
) -> Result<Parsed, InputError> {
    let media_type = content_type
        .and_then(|t| t.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    let is = |name: &str| media_type.eq_ignore_ascii_case(name);
    if is("text/csv") {
        csv::parse_csv(body, opts)
    } else if is("application/json")
        || is("application/x-ndjson")
        || is("application/jsonl")
        || looks_like_json(body)
    {
        json::parse_json(body, opts)
    } else {
        csv::parse_csv(body, opts)
    }
}

fn looks_like_json(body: &[u8]) -> bool {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &[u8] = b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850,United Kingdom\n";
    const JSON: &[u8] = br#"{"InvoiceNo":"536365","StockCode":"85123A","Description":"WHITE HANGING HEART T-LIGHT HOLDER","Quantity":6,"InvoiceDate":"12\/1\/2010 8:26","UnitPrice":2.55,"CustomerID":17850.0,"Country":"United Kingdom"}"#;

    #[test]
    fn content_type_or_sniffing_picks_the_parser() {
        let opts = ParseOptions::default();
        let from_csv = parse_body(CSV, Some("text/csv; charset=utf-8"), &opts).expect("csv");
        assert_eq!(from_csv.lines.len(), 1);
        for t in [
            Some("application/json"),
            Some("Application/X-NDJSON"),
            Some("application/jsonl"),
            Some("text/plain"),
            None,
        ] {
            let p = parse_body(JSON, t, &opts).expect("json");
            assert_eq!(p.lines, from_csv.lines, "{t:?}");
        }
        assert_eq!(
            parse_body(CSV, None, &opts).expect("sniffed csv").lines,
            from_csv.lines
        );
        // A declared type is believed: JSON sent as CSV fails as CSV, saying what it expected.
        assert!(matches!(
            parse_body(JSON, Some("text/csv"), &opts),
            Err(InputError::MissingColumns { .. })
        ));
        assert!(matches!(
            parse_body(b"  ", None, &opts),
            Err(InputError::Empty)
        ));
    }
}
